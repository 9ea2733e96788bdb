"""The ledger's digest, kept incrementally: what replication checks after every batch.

`Engine.state_hash` (SHA-256 of the canonical encoding of the whole state) costs in proportion to
the whole state: with 10,000 accounts and 500,000 transfers, 30–75 ms, far too much for every
batch. The digest defined here covers exactly the same ledger data and costs in proportion to
what a batch changed:

* **accounts**: the sum modulo 2^256 of `SHA-256(b"A" + encode(row))` over every account row
  (`Account.as_row`, the snapshot's row) — a multiset hash, so a changed account moves the sum by
  its new leaf minus its old one;
* **pending transfers**: the same sum over `SHA-256(b"P" + encode(row))` of the snapshot's pending rows;
* **transfers**: `SHA-256` of the concatenated canonical encodings of every transfer in insertion
  (replay) order. Transfers are immutable and only ever appended between batches (a linked chain
  undone within its command is gone before any digest is taken), so a running `hashlib` object
  folds in only the new ones;
* **the rest** (assets, segments, expiry deadlines, the next internal id, the three counts): its
  canonical encoding, hashed whole (small).

`digest = SHA-256(b"ringfence-ledger-digest-v1" | H(rest) | accounts sum | pending sum | transfers hash)`.

`full_digest(ledger)` computes the same value from nothing; `Ledger.digest()` keeps it up to date
from the objects the ledger marked dirty (`Ledger._dirty`, filled only once a digest was asked
for) and the new transfers' accounts. Tests check the two are equal after random operations
(tests/ledger/test_digest.py). The sum of hashes detects any accidental divergence between
replicas; it is not meant to resist someone choosing many account states to forge a collision.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from .ledger import Ledger

__all__ = ["LedgerDigest", "full_digest"]

_encode = msgspec.json.Encoder().encode
_MOD = 1 << 256
_TAG = b"ringfence-ledger-digest-v1"
_sha256 = hashlib.sha256


def _account_leaf(row: Any) -> int:
    return int.from_bytes(_sha256(b"A" + _encode(row)).digest(), "big")


def _pending_row(p: Any) -> list[Any]:
    return [p.id, p.debit.id, p.credit.id, p.amount, p.remaining, p.expires_at_ns, p.status]


def _pending_leaf(p: Any) -> int:
    return int.from_bytes(_sha256(b"P" + _encode(_pending_row(p))).digest(), "big")


def _rest(ledger: "Ledger") -> bytes:
    return _sha256(_encode([
        [[a.code, a.decimals, a.asset_class.value, a.chain or ""] for a in ledger.assets],
        list(ledger.segments), sorted(ledger._expiry), ledger.next_internal_id,
        len(ledger.accounts) - 1, len(ledger.pending), len(ledger.transfers),
    ])).digest()


def _combine(rest: bytes, accounts: int, pending: int, transfers: bytes) -> bytes:
    return _sha256(_TAG + rest + accounts.to_bytes(32, "big") + pending.to_bytes(32, "big") + transfers).digest()


def full_digest(ledger: "Ledger") -> bytes:
    """The digest computed from nothing (what `LedgerDigest.update` must always equal)."""
    accounts = sum(_account_leaf(a.as_row()) for a in ledger.iter_accounts()) % _MOD
    pending = sum(_pending_leaf(p) for p in ledger.pending.values()) % _MOD
    transfers = _sha256(b"".join(_encode(t) for t in ledger.transfers.values())).digest()
    return _combine(_rest(ledger), accounts, pending, transfers)


class LedgerDigest:
    """The incremental state behind `Ledger.digest()`: one leaf per account and pending transfer,
    their sums, and the running hash of the transfers folded so far."""

    def __init__(self, ledger: "Ledger") -> None:
        self.accounts: dict[int, int] = {}
        self.pending: dict[int, int] = {}
        for a in ledger.iter_accounts():
            self.accounts[a.id] = _account_leaf(a.as_row())
        for p in ledger.pending.values():
            self.pending[p.id] = _pending_leaf(p)
        self.account_sum = sum(self.accounts.values()) % _MOD
        self.pending_sum = sum(self.pending.values()) % _MOD
        self.transfers = _sha256(b"".join(_encode(t) for t in ledger.transfers.values()))
        self.transfers_folded = len(ledger.transfers)

    def update(self, ledger: "Ledger", dirty: set[Any]) -> bytes:
        """Fold in what changed since the last call (`dirty`: the accounts and pending transfers the
        ledger touched) and return the digest."""
        from .ledger import Pending

        accounts = ledger.accounts
        transfers = ledger.transfers
        new = len(transfers) - self.transfers_folded
        touched: set[Any] = set()
        if new:
            it = reversed(transfers.values())
            fresh = [next(it) for _ in range(new)]
            fresh.reverse()
            self.transfers.update(b"".join(map(_encode, fresh)))
            self.transfers_folded += new
            for t in fresh:
                if t.debit_account_id:
                    touched.add(accounts[t.debit_account_id])
                if t.credit_account_id:
                    touched.add(accounts[t.credit_account_id])
        leaves, total = self.pending, self.pending_sum
        current = ledger.pending
        for obj in dirty:
            if type(obj) is Pending:
                old = leaves.pop(obj.id, None)
                if old is not None:
                    total -= old
                touched.add(obj.debit)
                touched.add(obj.credit)
                p = current.get(obj.id)
                if p is not None:
                    leaf = leaves[p.id] = _pending_leaf(p)
                    total += leaf
                    touched.add(p.debit)
                    touched.add(p.credit)
            else:
                touched.add(obj)
        self.pending_sum = total % _MOD
        leaves, total = self.accounts, self.account_sum
        for a in touched:
            leaf = _account_leaf(a.as_row())
            total += leaf - leaves.get(a.id, 0)
            leaves[a.id] = leaf
        self.account_sum = total % _MOD
        return _combine(_rest(ledger), self.account_sum, self.pending_sum, self.transfers.copy().digest())
