"""The double-entry ledger: accounts, idempotent transfers, linked chains, two-phase holds.

Invariants (asserted in `check_invariants`, property-tested after random operation sequences):

* Conservation: for every asset, the sum of `credits_posted - debits_posted` over all accounts is
  zero, and so is the sum of `credits_pending - debits_pending`. Every mutation below changes a
  debit and a credit counter of two accounts of the same asset by the same amount.
* No overdraft: an account flagged `DEBITS_MUST_NOT_EXCEED_CREDITS` never has
  `debits_posted + debits_pending > credits_posted` (and the mirror rule for the other flag).
* Idempotency: a client transfer id is applied at most once. The same id with the same body
  answers `exists`; the same id with a different body answers `exists_with_different_fields`.
* A pending transfer's `remaining` only shrinks (an engine-made hold may also grow, by
  `resize_hold`, within what its account has available); it is posted (in one or more parts),
  voided or expired, never both posted and returned beyond its amount.
* Nothing here reads a clock: expiry uses the sequencer's timestamp passed in as `now_ns`.

Client transfers answer with TigerBeetle-style codes, one per transfer; only failures are reported.

This is the only code that changes a balance. Trading, custody and (later) margin, funding and
liquidation call the engine-side API below (`hold`, `resize_hold`, `capture`, `release`,
`end_hold`, `move`, `settle_fill`, and the read-only `pending_hold` views); each asserts its pre-
and post-conditions and raises `InvariantViolation` (the shard halts) rather than move money
wrongly. See docs/ledger.md.
"""

from __future__ import annotations

import heapq
from typing import Any, Callable, Final, Iterable, Iterator, NamedTuple

from ..errors import InvariantViolation, UnknownAccount, ValidationError
from ..money import MAX_AMOUNT, Asset, AssetClass, AssetRegistry
from .digest import LedgerDigest
from .model import (
    CLIENT_ID_MAX,
    DEFAULT_SEGMENTS,
    INTERNAL_ID_BASE,
    MAX_ACCOUNTS,
    SYSTEM_OWNER,
    Account,
    AccountFlags,
    Transfer,
    TransferFlags,
    validate_kind,
    validate_owner,
    validate_segment,
)

try:  # (mypyc reads the decorator; it is installed with mypy, the `native` extra)
    from mypy_extensions import mypyc_attr
except ImportError:  # an install without mypy: pure Python, where the decorator does nothing

    def mypyc_attr(*args: Any, **kwargs: Any) -> Callable[[type], type]:  # type: ignore[misc]
        return lambda cls: cls


__all__ = ["Ledger", "TransferTable", "Pending", "Hold", "ClearingAccounts", "RESULT_CODES"]

_LINKED: Final = TransferFlags.LINKED
_PENDING: Final = TransferFlags.PENDING
_POST: Final = TransferFlags.POST_PENDING
_VOID: Final = TransferFlags.VOID_PENDING
_NO_OVERDRAFT: Final = AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
_NO_EXCESS_CREDIT: Final = AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS

# Stable result codes. Never renumber or rename: clients switch on them.
RESULT_CODES = (
    "ok",
    "exists",
    "exists_with_different_fields",
    "linked_event_failed",
    "linked_event_chain_open",
    "id_must_not_be_zero",
    "id_out_of_range",
    "flags_invalid",
    "flags_are_mutually_exclusive",
    "accounts_must_be_different",
    "debit_account_not_found",
    "credit_account_not_found",
    "assets_must_match",
    "amount_must_not_be_zero",
    "amount_out_of_range",
    "timeout_reserved_for_pending_transfer",
    "timeout_out_of_range",
    "pending_id_must_be_zero",
    "pending_id_must_not_be_zero",
    "pending_transfer_not_found",
    "pending_transfer_not_pending",
    "pending_transfer_already_posted",
    "pending_transfer_already_voided",
    "pending_transfer_expired",
    "pending_transfer_has_different_accounts",
    "exceeds_pending_transfer_amount",
    "exceeds_credits",
    "exceeds_debits",
    "overflows_debits",
    "overflows_credits",
)

#: Far below `MAX_AMOUNT` (2**127 - 1) and a short int when compiled: the hot paths compare a
#: counter with `MAX_AMOUNT` only past this. Compiled, a comparison with a 128-bit int takes
#: mypyc's slow path (both operands made Python ints, one of them allocated) on every call; with a
#: short one it is one machine comparison. The result is the same either way.
_FAR_BELOW_MAX: Final = 1 << 61

#: A pending transfer may live at most this long (30 days) before it must be re-placed.
MAX_TIMEOUT_NS = 30 * 24 * 3600 * 10**9


class Pending:
    """A two-phase reservation: `remaining` of `amount` is still reserved on the two accounts."""

    __slots__ = ("id", "debit", "credit", "amount", "remaining", "expires_at_ns", "status")

    id: int
    debit: Account
    credit: Account
    amount: int
    remaining: int
    expires_at_ns: int
    status: str

    def __init__(self, id: int, debit: Account, credit: Account, amount: int, expires_at_ns: int) -> None:
        self.id = id
        self.debit = debit
        self.credit = credit
        self.amount = amount
        self.remaining = amount
        self.expires_at_ns = expires_at_ns
        #: "pending" | "posted" | "voided" | "expired"
        self.status = "pending"


class Hold(NamedTuple):
    """A read-only view of a pending transfer, for code outside the ledger (which never mutates one)."""

    id: int
    debit_id: int
    credit_id: int
    asset: str
    amount: int
    remaining: int
    status: str
    expires_at_ns: int


class ClearingAccounts:
    """The accounts one market's fills settle through (see `Ledger.open_clearing`)."""

    __slots__ = ("base", "quote", "base_fees", "quote_fees", "base_shield", "quote_shield")

    def __init__(self, base: Account, quote: Account, base_fees: Account, quote_fees: Account,
                 base_shield: Account, quote_shield: Account) -> None:
        self.base = base
        self.quote = quote
        self.base_fees = base_fees
        self.quote_fees = quote_fees
        self.base_shield = base_shield
        self.quote_shield = quote_shield


#: Shards of `TransferTable`, a power of two; an id's shard is `_shard(id)`.
_TRANSFER_SHARDS: Final = 512
_SHARD_MASK: Final = _TRANSFER_SHARDS - 1


def _shard(tid: int) -> int:
    """Ids in runs of 4,096 share a shard, the runs dealt round the shards: a client's sequential
    ids land in one small dict at a time (cache-friendly, as one dict was), and no shard holds
    much more than its share (a mask and a shift, inline when compiled)."""
    return (tid >> 12) & _SHARD_MASK


class TransferTable:
    """Every transfer by id, in insertion order: the ledger's `transfers`.

    One dict holding every transfer stalls the engine when it grows: CPython copies the whole table
    on each resize, with the GIL held (11 ms at 175k entries, 22 ms at 350k; issue #18). Here the
    ids are spread over `_TRANSFER_SHARDS` small dicts, each of which resizes in microseconds, and
    the order is kept in a list of the transfers (a list grows by reallocating, no rehash).

    Behaves as a `dict[int, Transfer]` keyed by `Transfer.id` for what the code uses: `in`, `get`,
    `[]`, `[]=`, `del`, `pop`, `len`, iteration over the ids and `values()`, all in insertion order
    (snapshots, the state hash and the digest's transfer fold depend on it). Removing is cheap for
    the newest transfer (what undoing a linked chain does) and a linear search otherwise.
    `values()` is the order list itself, not a copy: read it, never change it."""

    def __init__(self, transfers: Iterable[Transfer] = ()) -> None:
        self._shards: list[dict[int, Transfer]] = [{} for _ in range(_TRANSFER_SHARDS)]
        self._order: list[Transfer] = []
        for t in transfers:
            self[t.id] = t

    def __len__(self) -> int:
        return len(self._order)

    def __bool__(self) -> bool:
        return len(self._order) > 0

    def has(self, tid: int) -> bool:
        return tid in self._shards[_shard(tid)]

    def __contains__(self, tid: object) -> bool:
        return isinstance(tid, int) and tid in self._shards[_shard(tid)]

    def get(self, tid: int) -> Transfer | None:
        return self._shards[_shard(tid)].get(tid)

    def __getitem__(self, tid: int) -> Transfer:
        return self._shards[_shard(tid)][tid]

    def add(self, tid: int, t: Transfer) -> None:
        """Store transfer `t` whose id `tid` (`t.id`, which the caller has in hand) is not stored
        yet: what the ledger does, having checked first. Unchecked, for the hot path."""
        self._shards[_shard(tid)][tid] = t
        self._order.append(t)

    def __setitem__(self, tid: int, t: Transfer) -> None:
        if tid != t.id:
            raise ValueError(f"transfer {t.id} stored under id {tid}")
        shard = self._shards[_shard(tid)]
        if tid in shard:  # a dict keeps the first position and takes the new value
            self._order[self._index(tid)] = t
        else:
            self._order.append(t)
        shard[tid] = t

    def _index(self, tid: int) -> int:
        order = self._order
        for i in range(len(order) - 1, -1, -1):  # newest first: what undo removes
            if order[i].id == tid:
                return i
        raise KeyError(tid)

    def pop(self, tid: int) -> Transfer:
        t = self._shards[_shard(tid)].pop(tid)
        order = self._order
        if order[-1] is t:
            order.pop()
        else:
            del order[self._index(tid)]
        return t

    def __delitem__(self, tid: int) -> None:
        self.pop(tid)

    def __iter__(self) -> Iterator[int]:
        return iter([t.id for t in self._order])

    def keys(self) -> list[int]:
        return [t.id for t in self._order]

    def values(self) -> list[Transfer]:
        return self._order

    def items(self) -> list[tuple[int, Transfer]]:
        return [(t.id, t) for t in self._order]

    def __repr__(self) -> str:
        return f"TransferTable({len(self._order)} transfers)"


@mypyc_attr(allow_interpreted_subclasses=True)
class Ledger:
    """All accounts of one engine shard. Single-threaded by design: only the engine calls it.

    Compiled with the hot path (`ringfence.native.COMPILED`). A compiled class cannot be patched in
    place; it may be subclassed in Python (`allow_interpreted_subclasses`), and a subclass's
    override is what every caller reaches, compiled or not: tests that plant a bug in a ledger
    method run the engine on such a subclass (tests/conftest.py, `use_ledger_class`)."""

    def __init__(self) -> None:
        self.assets = AssetRegistry()
        self.segments: list[str] = []
        self.accounts: list[Account | None] = [None]  # account ids start at 1
        self._by_key: dict[tuple[str, str, str, str], Account] = {}
        self.transfers = TransferTable()
        self.pending: dict[int, Pending] = {}
        self._expiry: list[tuple[int, int]] = []
        self.next_internal_id = INTERNAL_ID_BASE
        #: Told every deadline stored (`Engine.wake_at`, wired by the ledger module): the engine
        #: runs the expiry timer only when one is due. Not state (never snapshotted).
        self.wake_at: Callable[[int], None] | None = None
        #: A limit, not state (never snapshotted): tests lower it to reach it.
        self.max_accounts = MAX_ACCOUNTS
        #: The incremental digest (`digest`), and what changed since it was last taken; both None
        #: until the first `digest()` call (a ledger nobody digests tracks nothing). Not state.
        self._digest: LedgerDigest | None = None
        self._dirty: set[Any] | None = None
        #: The record of the hold `hold` made last (trading keeps a perpetual order's: its fills read
        #: it without a lookup by id). Not state (never snapshotted).
        self.last_hold: Pending | None = None
        for segment in DEFAULT_SEGMENTS:
            self.register_segment(segment)

    # ------------------------------------------------------------------ registry

    def register_asset(self, asset: Asset) -> bool:
        """Register an asset and its system accounts. Returns False if it was already registered."""
        known = asset.code in self.assets
        if known:
            self.assets.register(asset)  # raises DuplicateAsset on a clash
            return False
        self._require_room(1 + 2 * len(self.segments), "code")
        self.assets.register(asset)
        self._open_system(asset.code, "world", "-")
        for segment in self.segments:
            self._open_segment_accounts(asset.code, segment)
        return True

    def register_segment(self, name: str) -> bool:
        validate_segment(name, "segment")
        if name == "-":
            raise ValidationError("'-' is not a segment name", field="segment")
        if name in self.segments:
            return False
        self._require_room(2 * len(self.assets), "segment")
        self.segments.append(name)
        for asset in self.assets:
            self._open_segment_accounts(asset.code, name)
        return True

    def _require_room(self, n: int, field: str) -> None:
        if not self.can_open_accounts(n):
            raise ValidationError(f"the shard holds its maximum of {self.max_accounts} accounts", field=field)

    def _open_segment_accounts(self, asset: str, segment: str) -> None:
        self._open_system(asset, "fees", segment)
        self._open_system(asset, "insurance", segment)

    def _open_system(self, asset: str, kind: str, segment: str) -> Account:
        return self._open(SYSTEM_OWNER, asset, kind, segment, 0)

    def open_account(self, owner: str, asset: str, kind: str, segment: str, flags: int = 0) -> tuple[Account, bool]:
        """Open (or find) an account. User accounts always get the no-overdraft flag.

        Returns `(account, created)`. Opening an existing account with the same flags is a no-op.
        """
        validate_owner(owner)
        self.assets.get(asset)
        validate_kind(kind)
        validate_segment(segment)
        if segment != "-" and segment not in self.segments:
            raise ValidationError(f"unknown segment {segment!r}; known: {', '.join(self.segments)}", field="segment")
        if isinstance(flags, bool) or not isinstance(flags, int) or flags & ~AccountFlags.ALL:
            raise ValidationError("flags must be a combination of the account flags", field="flags")
        if flags & _NO_OVERDRAFT and flags & _NO_EXCESS_CREDIT:
            raise ValidationError("an account cannot carry both balance flags", field="flags")
        if owner != SYSTEM_OWNER:
            flags |= _NO_OVERDRAFT
            if flags & _NO_EXCESS_CREDIT:
                raise ValidationError("user accounts must not be flagged credits-must-not-exceed-debits", field="flags")
        existing = self._by_key.get((owner, asset, kind, segment))
        if existing is not None:
            if existing.flags != flags:
                raise ValidationError("this account already exists with other flags", field="flags")
            return existing, False
        return self._open(owner, asset, kind, segment, flags), True

    def open_beside(self, account: Account, kind: str) -> Account:
        """`find(account.owner, account.asset, kind, account.segment)`, else that account opened as
        `open_account` opens it: the account of `kind` beside `account` (its owner's, in its asset
        and segment), without checking again the owner, asset and segment the ledger checked when
        it opened `account` (a perpetual fill opens its owner's margin account so, at the owner's
        first fill: the three checks were most of the cost)."""
        owner = account.owner
        existing = self._by_key.get((owner, account.asset, kind, account.segment))
        if existing is not None:
            return existing
        validate_kind(kind)
        return self._open(owner, account.asset, kind, account.segment, 0 if owner == SYSTEM_OWNER else _NO_OVERDRAFT)

    def _open(self, owner: str, asset: str, kind: str, segment: str, flags: int) -> Account:
        key = (owner, asset, kind, segment)
        existing = self._by_key.get(key)
        if existing is not None:
            return existing
        if len(self.accounts) > self.max_accounts:
            raise ValidationError(f"the shard holds its maximum of {self.max_accounts} accounts", field="owner")
        account = Account(len(self.accounts), owner, asset, kind, segment, flags)
        self.accounts.append(account)
        self._by_key[key] = account
        if self._dirty is not None:  # the incremental digest (ledger/digest.py)
            self._dirty.add(account)
        return account

    def find(self, owner: str, asset: str, kind: str = "available", segment: str = "spot") -> Account | None:
        return self._by_key.get((owner, asset, kind, segment))

    def find_pair(self, owner: str, asset: str, other_asset: str, kind: str, segment: str) -> tuple[Account | None, Account | None]:
        """`find` of two assets of one owner at once (what pays and what receives, for an order)."""
        by_key = self._by_key
        first = by_key.get((owner, asset, kind, segment))
        if other_asset == asset:  # (a perpetual pays and receives its quote asset: one lookup)
            return first, first
        return first, by_key.get((owner, other_asset, kind, segment))

    def get(self, owner: str, asset: str, kind: str = "available", segment: str = "spot") -> Account:
        account = self._by_key.get((owner, asset, kind, segment))
        if account is None:
            raise UnknownAccount(f"no account {owner}:{asset}:{kind}:{segment}", field="account")
        return account

    def account(self, account_id: int) -> Account:
        if isinstance(account_id, int) and 0 < account_id < len(self.accounts):
            account = self.accounts[account_id]
            if account is not None:
                return account
        raise UnknownAccount(f"no account with id {account_id}", field="account_id")

    def custody(self, asset: str, wallet: str) -> Account:
        """The system account mirroring what wallet `wallet` holds of `asset` on chain
        (`custody:<wallet>:<asset>`), opened on first use. Reconciliation compares it with the chain."""
        validate_segment(wallet, "wallet")
        if wallet == "-":
            raise ValidationError("a wallet needs a name", field="wallet")
        self.assets.get(asset)
        return self._open_system(asset, "custody", wallet)

    def world(self, asset: str) -> Account:
        return self.get(SYSTEM_OWNER, asset, "world", "-")

    def fees(self, asset: str, segment: str) -> Account:
        return self.get(SYSTEM_OWNER, asset, "fees", segment)

    def insurance(self, asset: str, segment: str) -> Account:
        return self.get(SYSTEM_OWNER, asset, "insurance", segment)

    def iter_accounts(self) -> Iterable[Account]:
        for account in self.accounts:
            if account is not None:
                yield account

    # ------------------------------------------------------------------ client transfers

    def create_transfers(self, transfers: list[Transfer], now_ns: int) -> list[tuple[int, str]]:
        """Apply a batch of client transfers in order. Returns `(index, code)` for each failure.

        Linked chains apply all or nothing: on the first failure every transfer of the chain is
        undone, the failing one reports its own code and the others `linked_event_failed`.
        """
        failures: list[tuple[int, str]] = []
        apply_one = self._apply_client_transfer
        n = len(transfers)
        i = 0
        accounts = self.accounts
        n_accounts = len(accounts)
        known = self.transfers
        while i < n:
            t = transfers[i]
            if t.flags == 0:
                # Fast path for the common case, a plain single-phase transfer that succeeds. Any
                # doubt falls through to the full path below, which also names the failure.
                tid, did, cid, amount = t.id, t.debit_account_id, t.credit_account_id, t.amount
                if (
                    0 < tid <= CLIENT_ID_MAX
                    and not known.has(tid)
                    and t.pending_id == 0
                    and t.timeout_ns == 0
                    and 0 < did < n_accounts
                    and 0 < cid < n_accounts
                    and did != cid
                    and 0 < amount <= MAX_AMOUNT
                ):
                    debit = accounts[did]
                    credit = accounts[cid]
                    # `accounts[0]` is the `None` placeholder (ids start at 1) and 0 < did, cid are
                    # checked above, so neither is None: the union-attr ignores below say so
                    # without an assert or a cast on the hot path.
                    if debit.asset == credit.asset:  # type: ignore[union-attr]
                        debits = debit.debits_posted + debit.debits_pending + amount  # type: ignore[union-attr]
                        credits = credit.credits_posted + credit.credits_pending + amount  # type: ignore[union-attr]
                        if (
                            debits <= MAX_AMOUNT
                            and credits <= MAX_AMOUNT
                            and not (debit.flags & _NO_OVERDRAFT and debits > debit.credits_posted)  # type: ignore[union-attr]
                            and not (credit.flags & _NO_EXCESS_CREDIT and credits > credit.debits_posted)  # type: ignore[union-attr]
                        ):
                            debit.debits_posted += amount  # type: ignore[union-attr]
                            credit.credits_posted += amount  # type: ignore[union-attr]
                            known.add(tid, t)
                            i += 1
                            continue
            if not t.flags & _LINKED:
                undo: list[Any] = []
                code = apply_one(t, now_ns, undo)
                if code is not None:
                    failures.append((i, code))
                i += 1
                continue
            # A linked chain: from i up to and including the first transfer without LINKED.
            end = i
            while end < n and transfers[end].flags & _LINKED:
                end += 1
            if end == n:  # the chain never closes
                failures.extend((j, "linked_event_chain_open") for j in range(i, n))
                break
            undo = []
            failed_at = -1
            failed_code = ""
            for j in range(i, end + 1):
                code = apply_one(transfers[j], now_ns, undo)
                if code is not None:
                    failed_at, failed_code = j, code
                    break
            if failed_at >= 0:
                self._undo(undo)
                for j in range(i, end + 1):
                    failures.append((j, failed_code if j == failed_at else "linked_event_failed"))
            i = end + 1
        return failures

    def _apply_client_transfer(self, t: Transfer, now_ns: int, undo: list[Any]) -> str | None:
        tid = t.id
        if tid <= 0:
            return "id_must_not_be_zero" if tid == 0 else "id_out_of_range"
        if tid > CLIENT_ID_MAX:
            return "id_out_of_range"
        existing = self.transfers.get(tid)
        if existing is not None:
            return "exists" if existing == t else "exists_with_different_fields"
        flags = t.flags
        if flags & ~TransferFlags.ALL:
            return "flags_invalid"
        phase = flags & (_PENDING | _POST | _VOID)
        if phase and phase not in (_PENDING, _POST, _VOID):
            return "flags_are_mutually_exclusive"
        if phase == _POST or phase == _VOID:
            code = self._post_or_void(t, now_ns, undo)
        else:
            code = self._single_phase_or_pending(t, now_ns, undo)
        if code is None:
            self.transfers.add(tid, t)
            undo.append(("transfer", tid))
        return code

    def _single_phase_or_pending(self, t: Transfer, now_ns: int, undo: list[Any]) -> str | None:
        if t.pending_id != 0:
            return "pending_id_must_be_zero"
        accounts = self.accounts
        n_accounts = len(accounts)
        did, cid = t.debit_account_id, t.credit_account_id
        if not (isinstance(did, int) and 0 < did < n_accounts):
            return "debit_account_not_found"
        if not (isinstance(cid, int) and 0 < cid < n_accounts):
            return "credit_account_not_found"
        if did == cid:
            return "accounts_must_be_different"
        debit = accounts[did]
        credit = accounts[cid]
        assert debit is not None and credit is not None
        if debit.asset != credit.asset:
            return "assets_must_match"
        amount = t.amount
        if amount <= 0:
            return "amount_must_not_be_zero" if amount == 0 else "amount_out_of_range"
        if amount > MAX_AMOUNT:
            return "amount_out_of_range"
        is_pending = t.flags & _PENDING
        if t.timeout_ns:
            if not is_pending:
                return "timeout_reserved_for_pending_transfer"
            if not 0 < t.timeout_ns <= MAX_TIMEOUT_NS:
                return "timeout_out_of_range"
        if is_pending:
            code = self._check_limits(debit, credit, amount, pending=True)
            if code is not None:
                return code
            expires = now_ns + t.timeout_ns if t.timeout_ns else 0
            self._reserve(t.id, debit, credit, amount, expires)
            undo.append(("pending", t.id))
            return None
        code = self._check_limits(debit, credit, amount, pending=False)
        if code is not None:
            return code
        debit.debits_posted += amount
        credit.credits_posted += amount
        undo.append(("posted", debit, credit, amount))
        return None

    def _post_or_void(self, t: Transfer, now_ns: int, undo: list[Any]) -> str | None:
        if t.pending_id == 0:
            return "pending_id_must_not_be_zero"
        if t.pending_id >= INTERNAL_ID_BASE:
            # Engine-made reservations (order holds) are the engine's alone to post or void.
            return "pending_transfer_not_found"
        if t.timeout_ns:
            return "timeout_reserved_for_pending_transfer"
        p = self.pending.get(t.pending_id)
        if p is None:
            return "pending_transfer_not_found"
        if p.status != "pending":
            return {
                "posted": "pending_transfer_already_posted",
                "voided": "pending_transfer_already_voided",
                "expired": "pending_transfer_expired",
            }[p.status]
        if p.expires_at_ns and now_ns >= p.expires_at_ns:  # expiry not swept yet in this batch
            return "pending_transfer_expired"
        if (t.debit_account_id and t.debit_account_id != p.debit.id) or (
            t.credit_account_id and t.credit_account_id != p.credit.id
        ):
            return "pending_transfer_has_different_accounts"
        amount = t.amount
        if amount < 0 or amount > MAX_AMOUNT:
            return "amount_out_of_range"
        if t.flags & _VOID:
            if amount not in (0, p.remaining):
                return "exceeds_pending_transfer_amount"
            undo.append(("release", p, p.remaining, p.status))
            self._release(p, p.remaining, "voided")
            return None
        if amount == 0:
            amount = p.remaining
        if amount > p.remaining:
            return "exceeds_pending_transfer_amount"
        code = self._check_overflow(p.debit, p.credit, amount)
        if code is not None:
            return code
        undo.append(("capture", p, amount, p.status))
        self._capture(p, amount)
        return None

    # ------------------------------------------------------------------ engine-side API
    # The only way code outside `ledger/` changes a balance (trading, custody, and later margin,
    # funding, liquidation). Callers check first what a user could get wrong (`can_hold`,
    # `can_open_accounts`, their own rules) and then call these, which cannot fail on valid state:
    # a failed pre- or post-condition is an `InvariantViolation`, a bug that halts the shard.
    # Every operation adds the same amount to a debit and a credit counter of two accounts of one
    # asset, so none creates or destroys a minor unit (tests/ledger/test_engine_api.py).

    def new_internal_id(self) -> int:
        tid = self.next_internal_id
        self.next_internal_id = tid + 1
        return tid

    def can_open_accounts(self, n: int) -> bool:
        """Could `n` more accounts be opened (the shard holds at most `max_accounts`)?"""
        return len(self.accounts) - 1 + n <= self.max_accounts

    def open_system_account(self, asset: str, kind: str, segment: str) -> Account:
        """Open (or find) the system account `kind:segment:asset` (a market's clearing, `onchain`,
        a withdrawal `clearing`, later margin pools). `segment` may name a wallet or be `-`."""
        validate_kind(kind)
        validate_segment(segment)
        self.assets.get(asset)
        return self._open_system(asset, kind, segment)

    def open_clearing(self, name: str, base: str, quote: str, segment: str) -> "ClearingAccounts":
        """The accounts one market's fills settle through: its own clearing account per asset
        (`clr_<name>:<segment>:<asset>`) and the segment's fee and shield (insurance) accounts."""
        kind = "clr_" + name
        return ClearingAccounts(
            self.open_system_account(base, kind, segment),
            self.open_system_account(quote, kind, segment),
            self.fees(base, segment),
            self.fees(quote, segment),
            self.insurance(base, segment),
            self.insurance(quote, segment),
        )

    def move(self, debit: Account, credit: Account, amount: int) -> None:
        """Post `amount` from `debit` to `credit` (same asset), respecting the balance flags.
        A zero amount moves nothing (a fee of zero, a reversal that finds nothing to take)."""
        if amount <= 0:
            if amount == 0:
                return
            raise InvariantViolation("negative internal transfer")
        if debit.asset != credit.asset or debit is credit:
            raise InvariantViolation(f"bad internal transfer {debit.name} -> {credit.name}")
        # Post-conditions, checked on the counters as they will be (so a failure changes nothing):
        # `_check_limits`' tests, inlined (this is every perpetual fill's path, several times). The
        # debit is not the credit, so the debit's no-overdraft test is the post-state's, and the
        # two counters grow by the same amount: the asset is conserved by construction.
        debits = debit.debits_posted + amount
        credits = credit.credits_posted + amount
        if (
            (debit.flags & _NO_OVERDRAFT and debits + debit.debits_pending > debit.credits_posted)
            or (credit.flags & _NO_EXCESS_CREDIT and credits + credit.credits_pending > credit.debits_posted)
            or ((top := debits + debit.debits_pending) > _FAR_BELOW_MAX and top > MAX_AMOUNT)
            or ((top := credits + credit.credits_pending) > _FAR_BELOW_MAX and top > MAX_AMOUNT)
        ):
            code = self._check_limits(debit, credit, amount, pending=False)
            raise InvariantViolation(f"internal transfer {debit.name} -> {credit.name} failed: {code}")
        debit.debits_posted = debits
        credit.credits_posted = credits
        if self._dirty is not None:  # the incremental digest (ledger/digest.py)
            self._dirty.update((debit, credit))

    def can_hold(self, debit: Account, amount: int) -> bool:
        """Could `amount` more be held on `debit` now without overdrawing it (counting its holds)?"""
        if debit.flags & _NO_OVERDRAFT:
            return debit.debits_posted + debit.debits_pending + amount <= debit.credits_posted
        return True

    def hold(self, debit: Account, credit: Account, amount: int, expires_at_ns: int = 0) -> int:
        """Open an engine-made pending transfer (an order's or a withdrawal's hold); returns its id.
        The caller checked `can_hold` first."""
        # Pre-conditions: a positive amount within 128 bits between two accounts of one asset.
        if amount <= 0 or (amount > _FAR_BELOW_MAX and amount > MAX_AMOUNT) or debit.asset != credit.asset or debit is credit:
            raise InvariantViolation(f"bad hold of {amount} {debit.name} -> {credit.name}")
        # Post-conditions, checked on the counters as they will be (so a failure changes nothing):
        # the debit is not overdrawn, the credit not over-credited, neither counter passes 128 bits.
        debits = debit.debits_posted + debit.debits_pending + amount
        credits = credit.credits_posted + credit.credits_pending + amount
        if (
            ((debits > _FAR_BELOW_MAX or credits > _FAR_BELOW_MAX) and (debits > MAX_AMOUNT or credits > MAX_AMOUNT))
            or (debit.flags & _NO_OVERDRAFT and debits > debit.credits_posted)
            or (credit.flags & _NO_EXCESS_CREDIT and credits > credit.debits_posted)
        ):
            code = self._check_limits(debit, credit, amount, pending=True)
            raise InvariantViolation(f"hold on {debit.name} failed: {code}")
        tid = self.next_internal_id
        self.next_internal_id = tid + 1
        # `_reserve`, inlined: this is the hot path of every order placed.
        debit.debits_pending += amount
        credit.credits_pending += amount
        p = self.pending[tid] = Pending(tid, debit, credit, amount, expires_at_ns)
        self.last_hold = p
        if self._dirty is not None:  # the incremental digest (ledger/digest.py)
            self._dirty.add(p)
        if expires_at_ns:
            self._schedule_expiry(expires_at_ns, tid)
        return tid

    def resize_hold(self, hold_id: int, delta: int) -> None:
        """Grow (`delta > 0`, the caller checked `can_hold`) or partly release (`delta < 0`) an open
        hold, keeping its id: an amended order keeps one hold instead of a void plus a new one."""
        p = self._open_hold(hold_id)
        if not self.resize_hold_to(hold_id, p.debit, p.remaining + delta):
            raise InvariantViolation(f"growing hold {hold_id} on {p.debit.name} failed: exceeds_credits")

    def resize_hold_to(self, hold_id: int, payer: Account, need_minor: int) -> bool:
        """Make the hold `hold_id` of `payer` reserve `need_minor` (an amended order's new need).

        Returns False, changing nothing, when growing it would overdraw `payer` (the caller refuses
        the amend); shrinking always succeeds. A hold that already reserves `need_minor` (or one
        that is no longer open, asked for nothing) is left as it is. One call on the amend path:
        what `hold_remaining`, `can_hold` and `resize_hold` would check, in that order.
        """
        p = self.pending.get(hold_id)
        if p is None or p.status != "pending":
            if not need_minor:
                return True
            if not self.can_hold(payer, need_minor):
                return False
            raise InvariantViolation(f"hold {hold_id} is not open ({p.status if p else 'unknown'})")
        delta = need_minor - p.remaining
        if not delta:
            return True
        # Pre-condition: the hold is the payer's.
        debit = p.debit
        if debit is not payer:
            raise InvariantViolation(f"hold {hold_id} is not {payer.name}'s")
        credit = p.credit
        if delta > 0:
            # Growing is what can break a limit: check the counters as they will be (so a failure
            # changes nothing). `amount` grows with `remaining`: `remaining <= amount` still holds.
            debits = debit.debits_posted + debit.debits_pending + delta
            if debit.flags & _NO_OVERDRAFT and debits > debit.credits_posted:
                return False
            credits = credit.credits_posted + credit.credits_pending + delta
            if ((debits > _FAR_BELOW_MAX or credits > _FAR_BELOW_MAX) and (debits > MAX_AMOUNT or credits > MAX_AMOUNT)) or (
                credit.flags & _NO_EXCESS_CREDIT and credits > credit.debits_posted
            ):
                code = self._check_limits(debit, credit, delta, pending=True)
                raise InvariantViolation(f"growing hold {hold_id} on {debit.name} failed: {code}")
            p.amount += delta
        elif need_minor <= 0:  # shrinking can only break this: a hold left reserving nothing
            raise InvariantViolation(f"cannot resize hold {hold_id} ({p.remaining} left) to {need_minor}")
        debit.debits_pending += delta
        credit.credits_pending += delta
        p.remaining = need_minor
        if self._dirty is not None:  # the incremental digest (ledger/digest.py)
            self._dirty.add(p)
        return True

    def capture(self, hold_id: int, amount: int) -> None:
        """Post `amount` of an open hold (a withdrawal settled, part of an order filled)."""
        p = self._open_hold(hold_id)
        if not 0 < amount <= p.remaining:
            raise InvariantViolation(f"cannot capture {amount} of hold {hold_id} ({p.remaining} left)")
        self._capture(p, amount)
        if p.remaining < 0 or p.debit.debits_pending < 0 or p.credit.credits_pending < 0:
            raise InvariantViolation(f"capturing hold {hold_id} left a negative reservation")

    def capture_and_return(self, hold_id: int, amount: int) -> None:
        """Post `amount` of an open hold to its credit account and pay it straight back to the
        hold's payer: what a perpetual fill frees of its order's margin hold. The same two postings,
        and the same counters, as `capture(hold_id, amount)` then `move(credit, debit, amount)`, in
        one call (every perpetual fill's path, once per side)."""
        p = self.pending.get(hold_id)
        if p is None or p.status != "pending":
            raise InvariantViolation(f"hold {hold_id} is not open ({p.status if p else 'unknown'})")
        # Pre-conditions: a positive amount within what the hold still reserves. The credit's
        # debits grow by what its credits grow (it ends where it began); the payer's posted
        # counters both grow by `amount` (its balance is unchanged, what it can spend grows).
        if not 0 < amount <= p.remaining:
            raise InvariantViolation(f"cannot capture {amount} of hold {hold_id} ({p.remaining} left)")
        debit, credit = p.debit, p.credit
        top = credit.debits_posted + amount
        top2 = debit.credits_posted + amount
        if (top > _FAR_BELOW_MAX or top2 > _FAR_BELOW_MAX) and (top > MAX_AMOUNT or top2 > MAX_AMOUNT):
            raise InvariantViolation(f"{debit.name}/{credit.name}: counters overflow 128 bits")
        debit.debits_pending -= amount
        credit.credits_pending -= amount
        debit.debits_posted += amount
        credit.credits_posted += amount
        p.remaining -= amount
        if p.remaining == 0:
            p.status = "posted"
        credit.debits_posted += amount
        debit.credits_posted += amount
        if self._dirty is not None:  # the incremental digest (ledger/digest.py)
            self._dirty.update((p, debit, credit))
        # Post-condition: no negative reservation.
        if debit.debits_pending < 0 or credit.credits_pending < 0:
            raise InvariantViolation(f"capturing hold {hold_id} left a negative reservation")

    def settle_margin_side(
        self,
        hold_id: int,
        take: int,
        wallet: Account,
        margin: Account,
        released: int,
        pool: Account,
        gain: int,
        paid: int,
        insurance: Account,
        covered: int,
        fees: Account,
        fee_net: int,
        shield: int,
        post: int,
        hold: Pending | None = None,
    ) -> None:
        """One side of a perpetual fill: one linked set of postings, in this order (a zero amount posts nothing):

        capture `take` of hold `hold_id` (the wallet's) and pay it back from its credit account;
        margin -> wallet `released`; pool -> wallet `gain`; wallet -> pool `paid`; insurance ->
        pool `covered`; wallet -> fees `fee_net`; wallet -> insurance `shield`; wallet -> margin
        `post`. `hold`: hold `hold_id`'s record (`open_hold_record`'s), if given: not looked up again.

        The same postings and counters as `capture_and_return` and `move` one by one (amounts by
        derivatives' rules); every check those would make is made first, on the counters as they will
        be, so a failure changes nothing. With an account that may not be credited beyond its debits
        among them (never a user's or a derivatives system account) it posts them one by one instead.
        """
        if (take | released | gain | paid | covered | fee_net | shield | post) < 0:
            raise InvariantViolation("negative internal transfer")
        h, flags = self._margin_side_hold(hold_id, take, wallet, margin, pool, insurance, fees, hold)
        if flags & _NO_EXCESS_CREDIT:
            if take:
                self.capture_and_return(hold_id, take)
            for debit, credit, amount in ((margin, wallet, released), (pool, wallet, gain), (wallet, pool, paid),
                                          (insurance, pool, covered), (wallet, fees, fee_net), (wallet, insurance, shield),
                                          (wallet, margin, post)):
                self.move(debit, credit, amount)
            return
        # Every counter only grows (what is held only shrinks), so the final counters are the
        # largest; no overdraft where the flag says so: the wallet's credits all come before its
        # debits, so its last state is its lowest; the margin account and the insurance fund are
        # debited before they are credited, so their state after the debit is; the pool goes one way.
        w_debits = wallet.debits_posted + take + paid + fee_net + shield + post
        w_credits = wallet.credits_posted + take + released + gain
        w_pending = wallet.debits_pending - take
        m_debits = margin.debits_posted + released
        p_debits = pool.debits_posted + gain
        p_credits = pool.credits_posted + paid + covered
        i_debits = insurance.debits_posted + covered
        i_credits = insurance.credits_posted + shield
        if (
            (wallet.flags & _NO_OVERDRAFT and w_debits + w_pending > w_credits)
            or (margin.flags & _NO_OVERDRAFT and m_debits + margin.debits_pending > margin.credits_posted)
            or (pool.flags & _NO_OVERDRAFT and p_debits + pool.debits_pending > p_credits)
            or (insurance.flags & _NO_OVERDRAFT and i_debits + insurance.debits_pending > insurance.credits_posted)
            # 128 bits (`MAX_AMOUNT` is all ones: an OR of non-negative counters passes it iff one does)
            or ((top := w_debits + w_pending | w_credits | m_debits + margin.debits_pending | margin.credits_posted + margin.credits_pending + post
                 | p_debits + pool.debits_pending | p_credits + pool.credits_pending | i_debits + insurance.debits_pending
                 | i_credits + insurance.credits_pending | fees.credits_posted + fees.credits_pending + fee_net) > _FAR_BELOW_MAX and top > MAX_AMOUNT)
        ):
            raise InvariantViolation(f"margin settlement of {wallet.name} would overdraw an account or overflow 128 bits")
        if h is not None:
            self._capture_and_return_to_clearing(h, take)
        wallet.debits_posted = w_debits
        wallet.credits_posted = w_credits
        wallet.debits_pending = w_pending
        margin.debits_posted = m_debits
        margin.credits_posted += post
        pool.debits_posted = p_debits
        pool.credits_posted = p_credits
        insurance.debits_posted = i_debits
        insurance.credits_posted = i_credits
        fees.credits_posted += fee_net
        if self._dirty is not None:  # the incremental digest (ledger/digest.py)
            self._dirty.update((wallet, margin, pool, insurance, fees))
            if h is not None:
                self._dirty.update((h, h.credit))

    def _margin_side_hold(self, hold_id: int, take: int, wallet: Account, margin: Account, pool: Account,
                          insurance: Account, fees: Account, hold: Pending | None = None) -> tuple[Pending | None, int]:
        """`settle_margin_side`'s pre-conditions: one asset, distinct accounts, an open hold of the
        wallet's that covers `take` (paid into an account none of the others is). Returns the hold
        (None when `take` is 0) and the accounts' flags, OR-ed. `hold`: the hold's record if the
        caller has it, else None (looked up)."""
        asset = wallet.asset
        if (margin.asset != asset or pool.asset != asset or insurance.asset != asset or fees.asset != asset
                or wallet is margin or wallet is pool or wallet is insurance or wallet is fees or margin is pool
                or margin is insurance or margin is fees or pool is insurance or pool is fees or insurance is fees):
            raise InvariantViolation(f"bad margin settlement accounts for {wallet.name}")
        flags = wallet.flags | margin.flags | pool.flags | insurance.flags | fees.flags
        if not take:
            return None, flags
        # (`is` first: the record's id is the very int the order carries, compared without a 128-bit compare)
        h = self.pending.get(hold_id) if hold is None or (hold.id is not hold_id and hold.id != hold_id) else hold
        if h is None or h.status != "pending" or take > h.remaining or h.debit is not wallet:
            raise InvariantViolation(f"cannot capture {take} of hold {hold_id} of {wallet.name}")
        clearing = h.credit
        if clearing is margin or clearing is pool or clearing is insurance or clearing is fees or clearing.credits_pending < take:
            raise InvariantViolation(f"hold {hold_id} cannot be captured into {clearing.name}")
        return h, flags | clearing.flags

    @staticmethod
    def _capture_and_return_to_clearing(h: Pending, take: int) -> None:
        """The clearing side of `settle_margin_side`'s capture: `take` of hold `h` posted into its
        credit account, which pays it straight back (its debits grow by what its credits grow)."""
        clearing = h.credit
        debits = clearing.debits_posted + take
        if (debits > _FAR_BELOW_MAX and debits > MAX_AMOUNT) or (
                clearing.flags & _NO_OVERDRAFT and debits + clearing.debits_pending > clearing.credits_posted + take):
            raise InvariantViolation(f"{clearing.name}: overdrawn or past 128 bits")
        clearing.credits_pending -= take
        clearing.credits_posted += take
        clearing.debits_posted = debits
        remaining = h.remaining - take
        h.remaining = remaining
        if not remaining:
            h.status = "posted"

    def open_hold_record(self, hold_id: int) -> Pending:
        """Hold `hold_id`'s own record, to read (a perpetual fill reads its `amount` and `remaining`
        once per side, and hands it to `settle_margin_side`): never to be written outside the
        ledger. Raises for an unknown hold (KeyError)."""
        return self.pending[hold_id]

    def release(self, hold_id: int) -> int:
        """Void what remains of a hold; returns the released amount (0 if it is no longer open)."""
        p = self.pending.get(hold_id)
        if p is None:
            raise InvariantViolation(f"no hold {hold_id}")
        if p.status != "pending":
            return 0
        remaining = p.remaining
        self._release(p, remaining, "voided")
        if p.remaining != 0 or p.debit.debits_pending < 0 or p.credit.credits_pending < 0:
            raise InvariantViolation(f"releasing hold {hold_id} left a negative reservation")
        return remaining

    def end_hold(self, hold_id: int) -> int:
        """Void what a finished engine-made hold still reserves and forget it; returns the amount.

        Finished engine-made holds are not needed for idempotency (no client can name them), and
        keeping one per order ever placed would grow the state and every snapshot without bound.
        """
        # Pre-conditions: an engine-made hold that exists, and is open or fully posted or voided.
        if hold_id < INTERNAL_ID_BASE:
            raise InvariantViolation(f"hold {hold_id} is a client's pending transfer; it is kept")
        pending = self.pending
        p = pending.get(hold_id)
        if p is None:
            raise InvariantViolation(f"no hold {hold_id}")
        released = 0
        if p.status == "pending":
            released = p.remaining
            debit, credit = p.debit, p.credit
            debit.debits_pending -= released
            credit.credits_pending -= released
            p.remaining = 0
            p.status = "voided"
            # Post-condition: releasing never leaves a negative reservation.
            if debit.debits_pending < 0 or credit.credits_pending < 0:
                raise InvariantViolation(f"releasing hold {hold_id} left a negative reservation")
        elif p.remaining or (p.status != "posted" and p.status != "voided"):
            raise InvariantViolation(f"hold {hold_id} ended as {p.status} with {p.remaining} left")
        del pending[hold_id]
        if self._dirty is not None:  # the incremental digest (ledger/digest.py)
            self._dirty.add(p)
        return released

    def settle_fill(
        self,
        c: "ClearingAccounts",
        buyer_hold: int,
        seller_hold: int,
        buyer_recv: Account,
        seller_recv: Account,
        base_minor: int,
        quote_minor: int,
        buyer_fee_minor: int,
        buyer_shield_minor: int,
        seller_fee_minor: int,
        seller_shield_minor: int,
    ) -> None:
        """Settle one spot fill as one linked set of posted transfers (delivery versus payment):

        buyer's hold -> quote clearing `quote_minor`; seller's hold -> base clearing `base_minor`;
        base clearing -> buyer `base - fee`, -> base fees `fee - shield`, -> base shield `shield`;
        quote clearing -> seller `quote - fee`, -> quote fees `fee - shield`, -> quote shield `shield`.
        Both clearing accounts end where they began. The fee rule (rates, rounding, the shield's
        share) is the caller's; the ledger checks only that the parts add up.
        """
        pending = self.pending
        hb = pending.get(buyer_hold)
        hs = pending.get(seller_hold)
        cb, cq = c.base, c.quote
        # Pre-conditions: the holds are open, cover the fill and pay into this market's clearing;
        # each fee fits in what its payer receives and the shield's share fits in the fee.
        if hb is None or hs is None or hb.status != "pending" or hs.status != "pending":
            raise InvariantViolation(f"fill settles against holds {buyer_hold}/{seller_hold} that are not open")
        # The holds' remainders and the six payouts, as they will be. A Python int ORed with a
        # negative one is negative, so one test says "the holds cover the fill (each side delivers
        # something), each fee fits in what its payer receives and the shield's share in the fee".
        buyer_left, seller_left = hb.remaining - quote_minor, hs.remaining - base_minor
        buyer_gets, base_fees = base_minor - buyer_fee_minor, buyer_fee_minor - buyer_shield_minor
        seller_gets, quote_fees = quote_minor - seller_fee_minor, seller_fee_minor - seller_shield_minor
        if (buyer_left | seller_left | (quote_minor - 1) | (base_minor - 1) | buyer_gets | base_fees | buyer_shield_minor
                | seller_gets | quote_fees | seller_shield_minor) < 0:
            raise InvariantViolation(
                f"fill of {base_minor} for {quote_minor} (holds {hb.remaining} quote, {hs.remaining} base; fees "
                f"{buyer_fee_minor}/{seller_fee_minor}, shield {buyer_shield_minor}/{seller_shield_minor}) does not add up"
            )
        if hb.credit is not cq or hs.credit is not cb or buyer_recv.asset != cb.asset or seller_recv.asset != cq.asset:
            raise InvariantViolation("fill legs do not match the market's clearing accounts")
        # Post-condition, checked up front (so a failure changes nothing): no counter passes 128
        # bits. Clearing's debits are the largest counters this fill grows — every credit paid out
        # of clearing is part of what clearing is debited — so checking them covers the rest.
        base_debits = cb.debits_posted + base_minor
        quote_debits = cq.debits_posted + quote_minor
        if (base_debits > _FAR_BELOW_MAX or quote_debits > _FAR_BELOW_MAX) and (base_debits > MAX_AMOUNT or quote_debits > MAX_AMOUNT):
            raise InvariantViolation(f"{cb.name}/{cq.name}: clearing counters overflow 128 bits")
        # Capture both holds into clearing and pay out of clearing (`_capture` and `move`, inlined:
        # this is the hot path). Each leg adds the same amount to one debit and one credit counter,
        # and clearing is credited exactly what it is debited: it ends where it began.
        bpay, spay = hb.debit, hs.debit
        bpay.debits_pending -= quote_minor
        bpay.debits_posted += quote_minor
        cq.credits_pending -= quote_minor
        cq.credits_posted += quote_minor
        hb.remaining = buyer_left
        if not buyer_left:
            hb.status = "posted"
        spay.debits_pending -= base_minor
        spay.debits_posted += base_minor
        cb.credits_pending -= base_minor
        cb.credits_posted += base_minor
        hs.remaining = seller_left
        if not seller_left:
            hs.status = "posted"
        cb.debits_posted = base_debits
        buyer_recv.credits_posted += buyer_gets
        c.base_fees.credits_posted += base_fees
        c.base_shield.credits_posted += buyer_shield_minor
        cq.debits_posted = quote_debits
        seller_recv.credits_posted += seller_gets
        c.quote_fees.credits_posted += quote_fees
        c.quote_shield.credits_posted += seller_shield_minor
        if self._dirty is not None:  # the incremental digest (ledger/digest.py)
            self._dirty.update((hb, hs, cb, cq, buyer_recv, seller_recv, c.base_fees, c.base_shield, c.quote_fees,
                                c.quote_shield))

    # ------------------------------------------------------------------ engine-side reads

    def pending_hold(self, hold_id: int) -> "Hold | None":
        """A read-only view of a pending transfer (open, posted, voided or expired), or None."""
        p = self.pending.get(hold_id)
        if p is None:
            return None
        return Hold(p.id, p.debit.id, p.credit.id, p.debit.asset, p.amount, p.remaining, p.status, p.expires_at_ns)

    def hold_remaining(self, hold_id: int) -> int:
        """What a hold still reserves (0 once it is posted, voided, expired or forgotten)."""
        p = self.pending.get(hold_id)
        return p.remaining if p is not None and p.status == "pending" else 0

    def open_holds(self) -> Iterator["Hold"]:
        """Views of every open pending transfer, client-made and engine-made, oldest first."""
        for p in self.pending.values():
            if p.status == "pending":
                yield Hold(p.id, p.debit.id, p.credit.id, p.debit.asset, p.amount, p.remaining, p.status, p.expires_at_ns)

    def _open_hold(self, hold_id: int) -> Pending:
        p = self.pending.get(hold_id)
        if p is None or p.status != "pending":
            raise InvariantViolation(f"hold {hold_id} is not open ({p.status if p else 'unknown'})")
        return p

    # ------------------------------------------------------------------ two-phase mechanics

    def _reserve(self, tid: int, debit: Account, credit: Account, amount: int, expires_at_ns: int) -> None:
        debit.debits_pending += amount
        credit.credits_pending += amount
        p = self.pending[tid] = Pending(tid, debit, credit, amount, expires_at_ns)
        if self._dirty is not None:  # the incremental digest (ledger/digest.py)
            self._dirty.add(p)
        if expires_at_ns:
            self._schedule_expiry(expires_at_ns, tid)

    def _schedule_expiry(self, expires_at_ns: int, tid: int) -> None:
        heapq.heappush(self._expiry, (expires_at_ns, tid))
        if self.wake_at is not None:
            self.wake_at(expires_at_ns)

    def next_expiry_ns(self, never: int) -> int:
        """The earliest deadline stored (perhaps of a transfer already gone), or `never`."""
        return self._expiry[0][0] if self._expiry else never

    def _capture(self, p: Pending, amount: int) -> None:
        debit, credit = p.debit, p.credit
        debit.debits_pending -= amount
        credit.credits_pending -= amount
        debit.debits_posted += amount
        credit.credits_posted += amount
        p.remaining -= amount
        if p.remaining == 0:
            p.status = "posted"
        if self._dirty is not None:  # the incremental digest (ledger/digest.py)
            self._dirty.add(p)

    def _release(self, p: Pending, amount: int, status: str) -> None:
        p.debit.debits_pending -= amount
        p.credit.credits_pending -= amount
        p.remaining -= amount
        p.status = status
        if self._dirty is not None:  # the incremental digest (ledger/digest.py)
            self._dirty.add(p)

    def expire_due(self, now_ns: int) -> list[tuple[int, int]]:
        """Expire every pending transfer whose deadline is at or before `now_ns` (sequencer time)."""
        heap = self._expiry
        if not heap or heap[0][0] > now_ns:
            return []
        expired: list[tuple[int, int]] = []
        while heap and heap[0][0] <= now_ns:
            deadline, tid = heapq.heappop(heap)
            p = self.pending.get(tid)
            # A stale entry (its reservation undone and the id reused) must not expire the new one.
            if p is not None and p.status == "pending" and p.expires_at_ns == deadline:
                released = p.remaining
                self._release(p, released, "expired")
                expired.append((tid, released))
        return expired

    # ------------------------------------------------------------------ checks

    @staticmethod
    def _check_limits(debit: Account, credit: Account, amount: int, *, pending: bool) -> str | None:
        if debit.flags & _NO_OVERDRAFT:
            if debit.debits_posted + debit.debits_pending + amount > debit.credits_posted:
                return "exceeds_credits"
        if credit.flags & _NO_EXCESS_CREDIT:
            if credit.credits_posted + credit.credits_pending + amount > credit.debits_posted:
                return "exceeds_debits"
        if debit.debits_posted + debit.debits_pending + amount > MAX_AMOUNT:
            return "overflows_debits"
        if credit.credits_posted + credit.credits_pending + amount > MAX_AMOUNT:
            return "overflows_credits"
        return None

    @staticmethod
    def _check_overflow(debit: Account, credit: Account, amount: int) -> str | None:
        # Posting a reservation moves amounts from pending to posted: totals do not grow.
        if debit.debits_posted + amount > MAX_AMOUNT:
            return "overflows_debits"
        if credit.credits_posted + amount > MAX_AMOUNT:
            return "overflows_credits"
        return None

    def _undo(self, undo: list[Any]) -> None:
        for i in range(len(undo) - 1, -1, -1):  # newest first (mypyc 2.4.1 fails on `reversed` of a list[Any])
            entry = undo[i]
            kind = entry[0]
            if kind == "transfer":
                self.transfers.pop(entry[1])
            elif kind == "posted":
                _, debit, credit, amount = entry
                debit.debits_posted -= amount
                credit.credits_posted -= amount
            elif kind == "pending":
                p = self.pending.pop(entry[1])
                p.debit.debits_pending -= p.amount
                p.credit.credits_pending -= p.amount
                # its heap entry, if any, finds no pending transfer and is skipped
            elif kind == "capture":
                _, p, amount, status = entry
                p.debit.debits_pending += amount
                p.credit.credits_pending += amount
                p.debit.debits_posted -= amount
                p.credit.credits_posted -= amount
                p.remaining += amount
                p.status = status
            elif kind == "release":
                _, p, amount, status = entry
                p.debit.debits_pending += amount
                p.credit.credits_pending += amount
                p.remaining += amount
                p.status = status
            else:  # pragma: no cover - a new undo kind without its reversal is a bug
                raise InvariantViolation(f"unknown undo entry {kind}")

    def check_invariants(self) -> None:
        """Prove conservation per asset and that no flagged account is overdrawn; raise if not."""
        posted: dict[str, int] = {}
        pending: dict[str, int] = {}
        for a in self.iter_accounts():
            posted[a.asset] = posted.get(a.asset, 0) + a.credits_posted - a.debits_posted
            pending[a.asset] = pending.get(a.asset, 0) + a.credits_pending - a.debits_pending
            if min(a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted) < 0:
                raise InvariantViolation(f"negative counter on {a.name}")
            if a.flags & _NO_OVERDRAFT and a.debits_posted + a.debits_pending > a.credits_posted:
                raise InvariantViolation(f"overdraft on no-overdraft account {a.name}")
            if a.flags & _NO_EXCESS_CREDIT and a.credits_posted + a.credits_pending > a.debits_posted:
                raise InvariantViolation(f"excess credit on {a.name}")
        for asset, total in posted.items():
            if total != 0:
                raise InvariantViolation(f"asset {asset} does not sum to zero: {total}")
        for asset, total in pending.items():
            if total != 0:
                raise InvariantViolation(f"pending amounts of {asset} do not sum to zero: {total}")
        reserved: dict[int, int] = {}
        for p in self.pending.values():
            if p.status == "pending":
                if not 0 < p.remaining <= p.amount:
                    raise InvariantViolation(f"pending transfer {p.id} has remaining {p.remaining}")
                reserved[p.debit.id] = reserved.get(p.debit.id, 0) + p.remaining
            elif p.remaining != 0 and p.status == "posted":
                raise InvariantViolation(f"posted pending transfer {p.id} still reserves {p.remaining}")
        for a in self.iter_accounts():
            if a.debits_pending != reserved.get(a.id, 0):
                raise InvariantViolation(f"{a.name}: debits_pending {a.debits_pending} != open reservations")

    # ------------------------------------------------------------------ snapshot

    def snapshot_state(self) -> list[Any]:
        """Canonical plain-data form of the whole ledger (insertion order is replay order)."""
        return [
            [[a.code, a.decimals, a.asset_class.value, a.chain or ""] for a in self.assets],
            list(self.segments),
            [a.as_row() for a in self.iter_accounts()],
            list(self.transfers.values()),
            [
                [p.id, p.debit.id, p.credit.id, p.amount, p.remaining, p.expires_at_ns, p.status]
                for p in self.pending.values()
            ],
            sorted(self._expiry),
            self.next_internal_id,
        ]

    @classmethod
    def from_snapshot(cls, data: list[Any]) -> "Ledger":
        assets, segments, accounts, transfers, pending, expiry, next_internal_id = data
        ledger = cls()  # (a ledger with no asset opens no account: everything below replaces it)
        ledger.assets = AssetRegistry(
            Asset(code, decimals, AssetClass(klass), chain or None) for code, decimals, klass, chain in assets
        )
        ledger.segments = list(segments)
        ledger.accounts = [None]
        ledger._by_key = {}
        for row in accounts:
            aid, owner, asset, kind, segment, flags, dpend, dpost, cpend, cpost = row
            if aid != len(ledger.accounts):
                raise ValidationError("snapshot account ids are not contiguous", field="accounts")
            account = Account(aid, owner, asset, kind, segment, flags)
            account.debits_pending, account.debits_posted = dpend, dpost
            account.credits_pending, account.credits_posted = cpend, cpost
            ledger.accounts.append(account)
            ledger._by_key[(owner, asset, kind, segment)] = account
        ledger.transfers = TransferTable(Transfer(*row) if isinstance(row, list) else row for row in transfers)
        ledger.pending = {}
        for pid, did, cid, amount, remaining, expires, status in pending:
            p = Pending(pid, ledger.account(did), ledger.account(cid), amount, expires)
            p.remaining, p.status = remaining, status
            ledger.pending[pid] = p
        ledger._expiry = [tuple(e) for e in expiry]
        heapq.heapify(ledger._expiry)
        ledger.next_internal_id = next_internal_id
        ledger.max_accounts = MAX_ACCOUNTS
        ledger.wake_at = None
        ledger._digest = None
        ledger._dirty = None
        return ledger

    def digest(self) -> bytes:
        """SHA-256 digest of the whole ledger (ledger/digest.py), updated from what changed since the
        last call: equal to `full_digest(self)`, at a cost in proportion to the change."""
        dirty, self._dirty = self._dirty, set()
        if self._digest is None or dirty is None:
            self._digest = LedgerDigest(self)
            dirty = set()
        return self._digest.update(self, dirty)
