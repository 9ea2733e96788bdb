"""The ledger's account record (re-exported by `ledger.model`, where the rest of its model lives).

Its own module because it is compiled with the hot path (`ringfence.native.COMPILED`): the ledger's
postings and a perpetual's fill read and write its four counters on every order, and a compiled
caller reads a native class's fields as C fields (a plain Python object's take a slow path there).
`ledger.model` keeps the msgspec `Transfer`, which mypyc does not compile. Pure Python when nothing
is built: the same class, slotted.
"""

from __future__ import annotations

from typing import Final

__all__ = ["Account", "SYSTEM_OWNER"]

SYSTEM_OWNER: Final = "system"


class Account:
    """One ledger account. Mutable counters; identity fields never change after opening."""

    __slots__ = (
        "id",
        "owner",
        "asset",
        "kind",
        "segment",
        "flags",
        "debits_pending",
        "debits_posted",
        "credits_pending",
        "credits_posted",
        "digest_key",
        "digest_debits_pending",
        "digest_debits_posted",
        "digest_credits_pending",
        "digest_credits_posted",
    )

    id: int
    owner: str
    asset: str
    kind: str
    segment: str
    flags: int
    debits_pending: int
    debits_posted: int
    credits_pending: int
    credits_posted: int
    #: Kept by the ledger's incremental digest (ledger/digest.py, `LedgerDigest`), on the record the
    #: ledger has just touched rather than in tables of its own (a batch's digest then reads little
    #: memory the batch did not already): this account's identity hash `k_a` (0: not hashed yet) and
    #: its four counters as last folded into the digest's sum. None of them is the account's state.
    digest_key: int
    digest_debits_pending: int
    digest_debits_posted: int
    digest_credits_pending: int
    digest_credits_posted: int

    def __init__(self, id: int, owner: str, asset: str, kind: str, segment: str, flags: int) -> None:
        self.id = id
        self.owner = owner
        self.asset = asset
        self.kind = kind
        self.segment = segment
        self.flags = flags
        self.debits_pending = 0
        self.debits_posted = 0
        self.credits_pending = 0
        self.credits_posted = 0
        self.digest_key = 0
        self.digest_debits_pending = 0
        self.digest_debits_posted = 0
        self.digest_credits_pending = 0
        self.digest_credits_posted = 0

    @property
    def balance(self) -> int:
        """Posted balance: credits minus debits (negative for the world account)."""
        return self.credits_posted - self.debits_posted

    @property
    def available(self) -> int:
        """What the account can still spend: posted balance minus what pending transfers reserve."""
        return self.credits_posted - self.debits_posted - self.debits_pending

    @property
    def name(self) -> str:
        if self.owner == SYSTEM_OWNER:
            return f"{self.kind}:{self.segment}:{self.asset}" if self.segment != "-" else f"{self.kind}:{self.asset}"
        return f"{self.owner}:{self.asset}:{self.kind}:{self.segment}"

    def as_row(self) -> tuple[int, str, str, str, str, int, int, int, int, int]:
        return (
            self.id,
            self.owner,
            self.asset,
            self.kind,
            self.segment,
            self.flags,
            self.debits_pending,
            self.debits_posted,
            self.credits_pending,
            self.credits_posted,
        )

    def __repr__(self) -> str:
        return f"Account({self.name}, balance={self.balance}, pending={self.debits_pending})"
