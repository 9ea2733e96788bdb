"""The ledger's digest, kept incrementally: what replication checks after every batch.

`Engine.state_hash` (SHA-256 of the canonical encoding of the whole state) costs in proportion to
the whole state: with 10,000 accounts and 500,000 transfers, 30–75 ms, far too much for every
batch. The digest defined here covers exactly the same ledger data and costs in proportion to
what a batch changed, with little more than integer arithmetic per changed record:

* **accounts**: the sum modulo the prime P = 2^130 - 5 of one term per account,
  `k_a * (C0 + C1*debits_pending + C2*debits_posted + C3*credits_pending + C4*credits_posted)`,
  where `k_a = SHA-256(b"A" + encode([id, owner, asset, kind, segment, flags]))` hashes the
  account's identity (fixed once it is opened: `Account`) and C0..C4 are fixed constants
  (`_coefficient`). Two ledgers whose accounts differ in any field give, as a polynomial in the
  k's and C's, a nonzero difference of degree 2, so (taking SHA-256 outputs as random) their sums
  agree with probability at most 2/P (about 2^-129). Each account's `k_a` is hashed once and its
  current term kept: a batch costs a few multiplications per account it changed, not a SHA-256;
* **pending transfers**: the same over `k_p = SHA-256(b"P" + encode([id, debit id, credit id,
  expires_at_ns]))` and `C5 + C6*amount + C7*remaining + C8*status` (status 1..4: `_STATUS`);
* **transfers**: `SHA-256` of `encode(t) + b","` over every transfer in insertion (replay) order.
  Transfers are immutable and only ever appended between batches (a linked chain undone within
  its command is gone before any digest is taken), so a running `hashlib` object folds in only
  the new ones, encoded in one call (`encode(list)` is those encodings joined by commas);
* **the rest** (assets, segments, expiry deadlines, the next internal id, the three counts): its
  canonical encoding, hashed whole (small).

`digest = SHA-256(b"ringfence-ledger-digest-v2" | H(rest) | accounts sum | pending sum | transfers hash)`
(v1 hashed every changed account and pending row with SHA-256: about 1.7 us an account, v2 about
0.6; a replica of another version computes other digests, which replication reports as the
format mismatch it is: `Engine.state_digest`'s `STATE_DIGEST_FORMAT`, `Rf-Digest-Format`).

`full_digest(ledger)` computes the same value from nothing; `Ledger.digest()` keeps it up to date
from the objects the ledger marked dirty (`Ledger._dirty`, filled only once a digest was asked
for) and the new transfers' accounts. Tests check the two are equal after random operations
(tests/ledger/test_digest.py). The digest detects any accidental divergence between replicas; it
is not meant to resist someone choosing account states to forge a collision.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, Final

import msgspec

from .account import Account

if TYPE_CHECKING:
    from .ledger import Ledger, Pending

__all__ = ["LedgerDigest", "full_digest", "DIGEST_TAG"]

_encode = msgspec.json.Encoder().encode
DIGEST_TAG: Final = b"ringfence-ledger-digest-v2"
#: The prime the account and pending sums are taken modulo (terms are summed exactly, reduced once
#: per digest). Above 2^127 (`MAX_AMOUNT` bounds every counter), so no difference of one counter
#: is a multiple of it; small, so a term is a few short multiplications (2^255 - 19 cost 35% more).
_P: Final = (1 << 130) - 5
#: A pending transfer's status as a number in its term.
_STATUS: Final = {"pending": 1, "posted": 2, "voided": 3, "expired": 4}


def _coefficient(name: bytes) -> int:
    return int.from_bytes(hashlib.sha256(DIGEST_TAG + b" coefficient " + name).digest(), "big") % _P


_C0: Final = _coefficient(b"account")
_C1: Final = _coefficient(b"debits_pending")
_C2: Final = _coefficient(b"debits_posted")
_C3: Final = _coefficient(b"credits_pending")
_C4: Final = _coefficient(b"credits_posted")
_C5: Final = _coefficient(b"pending")
_C6: Final = _coefficient(b"amount")
_C7: Final = _coefficient(b"remaining")
_C8: Final = _coefficient(b"status")


def _account_key(a: Account) -> int:
    """`k_a`: the account's identity, hashed (its fields never change once it is opened)."""
    row = [a.id, a.owner, a.asset, a.kind, a.segment, a.flags]
    return int.from_bytes(hashlib.sha256(b"A" + _encode(row)).digest(), "big") % _P


def _account_term(key: int, a: Account) -> int:
    return key * (_C0 + _C1 * a.debits_pending + _C2 * a.debits_posted + _C3 * a.credits_pending
                  + _C4 * a.credits_posted)


def _pending_key(p: "Pending") -> int:
    row = [p.id, p.debit.id, p.credit.id, p.expires_at_ns]
    return int.from_bytes(hashlib.sha256(b"P" + _encode(row)).digest(), "big") % _P


def _pending_term(key: int, p: "Pending") -> int:
    return key * (_C5 + _C6 * p.amount + _C7 * p.remaining + _C8 * _STATUS[p.status])


def _fold_transfers(h: Any, transfers: list[Any]) -> None:
    """Fold `encode(t) + b","` of each transfer into `h`, in one encoding call."""
    if transfers:
        h.update(memoryview(_encode(transfers))[1:-1])  # the encodings, comma-joined, without [ ]
        h.update(b",")


def _rest(ledger: "Ledger") -> bytes:
    return hashlib.sha256(_encode([
        [[a.code, a.decimals, a.asset_class.value, a.chain or ""] for a in ledger.assets],
        list(ledger.segments), sorted(ledger._expiry), ledger.next_internal_id,
        len(ledger.accounts) - 1, len(ledger.pending), len(ledger.transfers),
    ])).digest()


def _combine(rest: bytes, accounts: int, pending: int, transfers: bytes) -> bytes:
    return hashlib.sha256(DIGEST_TAG + rest + (accounts % _P).to_bytes(32, "big") + (pending % _P).to_bytes(32, "big")
                          + transfers).digest()


def full_digest(ledger: "Ledger") -> bytes:
    """The digest computed from nothing (what `LedgerDigest.update` must always equal)."""
    accounts = sum(_account_term(_account_key(a), a) for a in ledger.iter_accounts())
    pending = sum(_pending_term(_pending_key(p), p) for p in ledger.pending.values())
    transfers = hashlib.sha256()
    _fold_transfers(transfers, list(ledger.transfers.values()))
    return _combine(_rest(ledger), accounts, pending, transfers.digest())


class LedgerDigest:
    """The incremental state behind `Ledger.digest()`: the account objects it tracks (by id; each
    one's key and its counters as last folded in kept on the record itself, `Account.digest_key`,
    `Account.digest_debits_posted`, ...), each pending transfer's key and current term (by id), the
    exact sums of the terms, and the running hash of the transfers folded so far. A cached key is
    used only for the very object it was computed from (`is`): anything else at that id is hashed
    afresh.

    An account's term is linear in its counters, so the accounts' sum is kept as five exact sums,
    `sum k_a` and, per counter i, `sum k_a * counter_i`, multiplied by C0..C4 and added up only when
    the digest is taken (`_account_total`: the very same integer). A counter that moved by `d` since
    it was last folded in adds `k_a * d` to its sum: one product (of a key by a small number) for the
    one counter a transfer moves on each side, where `k_a * (C_i * d)` took two, the second of two
    130-bit-or-wider numbers (session 19: about a third of the digest's instructions); a counter that
    did not move costs a comparison of two fields. Why on the record: a batch's digest
    reads each account the batch changed, a record the batch has just written (in the cache), where
    a key and a term in tables of their own are memory the batch did not touch: reading them cost
    about as much as the arithmetic (session 17, docs/resilience.md). So a ledger has one: its own
    (`Ledger._digest`); a second one tracking the same records would overwrite the first's."""

    def __init__(self, ledger: "Ledger") -> None:
        self.account_objs: list[Account | None] = [None]
        # sum k_a, and sum k_a * counter per counter, over the accounts tracked (`_account_total`)
        self.keys_sum = 0
        self.debits_pending_sum = 0
        self.debits_posted_sum = 0
        self.credits_pending_sum = 0
        self.credits_posted_sum = 0
        for a in ledger.iter_accounts():
            self._track_account(a)
        self.pending: dict[int, tuple[Pending, int, int]] = {}  # id -> (the Pending, its key, its term)
        self.pending_sum = 0
        for p in ledger.pending.values():
            key = _pending_key(p)
            term = _pending_term(key, p)
            self.pending[p.id] = (p, key, term)
            self.pending_sum += term
        self.transfers: Any = hashlib.sha256()
        _fold_transfers(self.transfers, list(ledger.transfers.values()))
        self.transfers_folded = len(ledger.transfers)

    def _track_account(self, a: Account) -> None:
        """Start keeping account `a` (new, or not the object tracked at its id: what that one added
        to the sum is taken out). Its key is hashed afresh (what a record carries from an earlier
        digest is not trusted)."""
        objs = self.account_objs
        aid = a.id
        while len(objs) <= aid:
            objs.append(None)
        old = objs[aid]
        if old is not None:  # its term as folded in
            k = old.digest_key
            self.keys_sum -= k
            self.debits_pending_sum -= k * old.digest_debits_pending
            self.debits_posted_sum -= k * old.digest_debits_posted
            self.credits_pending_sum -= k * old.digest_credits_pending
            self.credits_posted_sum -= k * old.digest_credits_posted
        key = _account_key(a)
        self.keys_sum += key
        self.debits_pending_sum += key * a.debits_pending
        self.debits_posted_sum += key * a.debits_posted
        self.credits_pending_sum += key * a.credits_pending
        self.credits_posted_sum += key * a.credits_posted
        objs[aid] = a
        a.digest_key = key
        a.digest_debits_pending = a.debits_pending
        a.digest_debits_posted = a.debits_posted
        a.digest_credits_pending = a.credits_pending
        a.digest_credits_posted = a.credits_posted

    def update(self, ledger: "Ledger", dirty: set[Any]) -> bytes:
        """Fold in what changed since the last call (`dirty`: the accounts and pending transfers the
        ledger touched) and return the digest. Each changed account is folded in where it is met (a
        new transfer's two accounts, a dirty record's), with no set of them first: an account met
        again has nothing left to fold (its counters equal the ones folded in), at the cost of four
        comparisons, where a set costs a hash and an insert for every one (session 19)."""
        accounts = ledger.accounts
        transfers = ledger.transfers
        new = len(transfers) - self.transfers_folded
        if new:
            it = reversed(transfers.values())
            fresh = [next(it) for _ in range(new)]
            fresh.reverse()
            _fold_transfers(self.transfers, fresh)
            self.transfers_folded += new
            for t in fresh:
                if t.debit_account_id:
                    self._fold_account(accounts[t.debit_account_id])  # type: ignore[arg-type]  # ids start at 1
                if t.credit_account_id:
                    self._fold_account(accounts[t.credit_account_id])  # type: ignore[arg-type]
        cached = self.pending
        current = ledger.pending
        total = self.pending_sum
        for obj in dirty:
            if isinstance(obj, Account):
                self._fold_account(obj)
                continue
            old = cached.pop(obj.id, None)
            if old is not None:
                total -= old[2]
            self._fold_account(obj.debit)
            self._fold_account(obj.credit)
            p = current.get(obj.id)
            if p is not None:
                key = old[1] if old is not None and old[0] is p else _pending_key(p)
                term = _pending_term(key, p)
                cached[p.id] = (p, key, term)
                total += term
                self._fold_account(p.debit)
                self._fold_account(p.credit)
        self.pending_sum = total
        return _combine(_rest(ledger), self._account_total(), self.pending_sum, self.transfers.copy().digest())

    def _account_total(self) -> int:
        """The sum of every tracked account's `_account_term`, from the five sums (the same integer)."""
        return (_C0 * self.keys_sum + _C1 * self.debits_pending_sum + _C2 * self.debits_posted_sum
                + _C3 * self.credits_pending_sum + _C4 * self.credits_posted_sum)

    def _fold_account(self, a: Account) -> None:
        """Bring account `a`'s share of the sums up to date: its key times the change of each
        counter that moved since it was last folded in (none moved: four comparisons); an account
        not tracked (new, or another object at its id) is tracked afresh."""
        objs = self.account_objs
        aid = a.id
        if aid >= len(objs) or objs[aid] is not a:
            self._track_account(a)
            return
        x, y = a.debits_posted, a.digest_debits_posted
        if x != y:
            self.debits_posted_sum += a.digest_key * (x - y)
            a.digest_debits_posted = x
        x, y = a.credits_posted, a.digest_credits_posted
        if x != y:
            self.credits_posted_sum += a.digest_key * (x - y)
            a.digest_credits_posted = x
        x, y = a.debits_pending, a.digest_debits_pending
        if x != y:
            self.debits_pending_sum += a.digest_key * (x - y)
            a.digest_debits_pending = x
        x, y = a.credits_pending, a.digest_credits_pending
        if x != y:
            self.credits_pending_sum += a.digest_key * (x - y)
            a.digest_credits_pending = x
