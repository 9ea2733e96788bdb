"""Ledger value types: accounts, transfers, flags and result codes (TigerBeetle's model).

An account is `(owner, asset, kind, segment)` with four integer counters. Its balance is
`credits_posted - debits_posted`; what it can still spend is that minus `debits_pending`. Every
transfer adds the same amount to one account's debits and another's credits of the *same asset*,
so for every asset the sum of all balances is zero at all times: the `world` account's negative
balance mirrors everything that entered from outside.

Transfer ids are chosen by the client in `1 .. 2**127 - 1`; ids from `2**127` up are reserved for
transfers the engine makes itself (fills, fees, expiries), so the two can never collide.
"""

from __future__ import annotations

import re

import msgspec

from ..errors import ValidationError
from .account import SYSTEM_OWNER, Account

__all__ = [
    "Account",
    "Transfer",
    "AccountFlags",
    "TransferFlags",
    "SYSTEM_OWNER",
    "DEFAULT_SEGMENTS",
    "CLIENT_ID_MAX",
    "INTERNAL_ID_BASE",
    "validate_owner",
    "validate_kind",
    "validate_segment",
]

DEFAULT_SEGMENTS = ("spot", "derivatives", "tokenized")
#: Client-chosen transfer ids live below this bound; engine-made ids at or above it.
INTERNAL_ID_BASE = 1 << 127
CLIENT_ID_MAX = INTERNAL_ID_BASE - 1
MAX_ACCOUNTS = 50_000_000

_OWNER_RE = re.compile(r"[a-z0-9][a-z0-9_.\-]{0,63}")
_KIND_RE = re.compile(r"[a-z][a-z0-9_]{0,23}")
_SEGMENT_RE = re.compile(r"[a-z][a-z0-9_]{0,23}|-")


def validate_owner(owner: object, field: str = "owner") -> str:
    if not isinstance(owner, str) or not _OWNER_RE.fullmatch(owner):
        raise ValidationError(
            "owner must be 1-64 characters of a-z, 0-9, '_', '.', '-', starting with a letter or digit",
            field=field,
        )
    return owner


def validate_kind(kind: object, field: str = "kind") -> str:
    if not isinstance(kind, str) or not _KIND_RE.fullmatch(kind):
        raise ValidationError("kind must be 1-24 characters of a-z, 0-9, '_', starting with a letter", field=field)
    return kind


def validate_segment(segment: object, field: str = "segment") -> str:
    if not isinstance(segment, str) or not _SEGMENT_RE.fullmatch(segment):
        raise ValidationError(
            "segment must be 1-24 characters of a-z, 0-9, '_', starting with a letter (or '-' for none)",
            field=field,
        )
    return segment


class AccountFlags:
    #: The account may never spend more than it has (every user account carries this flag).
    DEBITS_MUST_NOT_EXCEED_CREDITS = 1
    #: The account may never receive more than it has paid out (e.g. a liability mirror).
    CREDITS_MUST_NOT_EXCEED_DEBITS = 2
    ALL = 3


class TransferFlags:
    #: This transfer and the next one succeed or fail together (a chain ends at the first unlinked one).
    LINKED = 1
    #: Reserve the amount (two-phase, phase one); `timeout_ns` > 0 makes it expire.
    PENDING = 2
    #: Post `amount` (0 = all that remains) of the pending transfer `pending_id`.
    POST_PENDING = 4
    #: Release what remains of the pending transfer `pending_id`.
    VOID_PENDING = 8
    ALL = 15


class Transfer(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True, gc=False):
    """One transfer request. For post/void, the accounts may be 0 (taken from the pending one).

    `gc=False`: a transfer holds only integers, so it can never be part of a reference cycle; keeping
    millions of them out of the cyclic garbage collector's scans keeps replay and latency steady.
    """

    id: int
    debit_account_id: int
    credit_account_id: int
    amount: int
    pending_id: int = 0
    timeout_ns: int = 0
    flags: int = 0
    code: int = 0
    user_data: int = 0
