"""The auditor's ledger: client transfers, linked chains, two-phase holds and their expiry.

TigerBeetle's rules as docs/ledger.md states them: a transfer id is applied at most once (`exists`
for the same body, `exists_with_different_fields` otherwise); a linked chain applies all or nothing
(the failing transfer names its code, the rest `linked_event_failed`; an unclosed chain fails
whole); a hold reserves, a post moves (all or part of) what remains, a void or an expiry releases it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .books import SYSTEM, Books, Key

__all__ = ["LedgerModel", "MPending"]

MAX_AMOUNT = (1 << 127) - 1
CLIENT_ID_MAX = (1 << 127) - 1
MAX_TIMEOUT_NS = 30 * 24 * 3600 * 10**9


@dataclass
class MPending:
    debit: Key
    credit: Key
    remaining: int
    expires_at: int
    status: str = "pending"


class LedgerModel(Books):
    def _init_ledger(self) -> None:
        self.transfers: dict[int, Any] = {}
        self.pending: dict[int, MPending] = {}

    def expire(self, now_ns: int) -> list[tuple[int, int]]:
        """Expire client holds whose deadline has come (sequencer time). Returns (id, released)."""
        out = []
        due = [(p.expires_at, pid) for pid, p in self.pending.items()
               if p.status == "pending" and p.expires_at and p.expires_at <= now_ns]
        for _, pid in sorted(due):  # earliest deadline first
            p = self.pending[pid]
            out.append((pid, p.remaining))
            self.release(p.debit, p.credit, p.remaining)
            p.remaining, p.status = 0, "expired"
        return out

    def unexpire(self, expired: list[tuple[int, int]]) -> None:
        """Undo `expire` when the command turned out not to be journaled (no batch, no time)."""
        for pid, amount in expired:
            p = self.pending[pid]
            p.status, p.remaining = "pending", amount
            self.reserve(p.debit, p.credit, amount)

    def create_transfers(self, transfers: list[Any], account_keys: dict[int, Key]) -> list[tuple[int, str]]:
        failures: list[tuple[int, str]] = []
        n, i = len(transfers), 0
        while i < n:
            if not transfers[i].flags & 1:
                code = self._one_transfer(transfers[i], account_keys, None)
                if code is not None:
                    failures.append((i, code))
                i += 1
                continue
            end = i
            while end < n and transfers[end].flags & 1:
                end += 1
            if end == n:
                failures.extend((j, "linked_event_chain_open") for j in range(i, n))
                break
            undo: list[Any] = []
            failed_at, failed_code = -1, ""
            for j in range(i, end + 1):
                code = self._one_transfer(transfers[j], account_keys, undo)
                if code is not None:
                    failed_at, failed_code = j, code
                    break
            if failed_at >= 0:
                for action in reversed(undo):
                    action()
                failures.extend((j, failed_code if j == failed_at else "linked_event_failed") for j in range(i, end + 1))
            i = end + 1
        return failures

    def _one_transfer(self, t: Any, keys: dict[int, Key], undo: list[Any] | None) -> str | None:
        if t.id <= 0:
            return "id_must_not_be_zero" if t.id == 0 else "id_out_of_range"
        if t.id > CLIENT_ID_MAX:
            return "id_out_of_range"
        if t.id in self.transfers:
            return "exists" if self.transfers[t.id] == t else "exists_with_different_fields"
        if t.flags & ~15:
            return "flags_invalid"
        phase = t.flags & 14
        if phase not in (0, 2, 4, 8):
            return "flags_are_mutually_exclusive"
        code = self._post_or_void(t, keys, undo) if phase in (4, 8) else self._single(t, keys, undo)
        if code is None:
            self.transfers[t.id] = t
            if undo is not None:
                undo.append(lambda tid=t.id: self.transfers.pop(tid))
        return code

    def _single(self, t: Any, keys: dict[int, Key], undo: list[Any] | None) -> str | None:
        if t.pending_id:
            return "pending_id_must_be_zero"
        debit, credit = keys.get(t.debit_account_id), keys.get(t.credit_account_id)
        if debit is None:
            return "debit_account_not_found"
        if credit is None:
            return "credit_account_not_found"
        if debit == credit:
            return "accounts_must_be_different"
        if debit[1] != credit[1]:
            return "assets_must_match"
        if t.amount <= 0:
            return "amount_must_not_be_zero" if t.amount == 0 else "amount_out_of_range"
        if t.amount > MAX_AMOUNT:
            return "amount_out_of_range"
        pending = bool(t.flags & 2)
        if t.timeout_ns:
            if not pending:
                return "timeout_reserved_for_pending_transfer"
            if not 0 < t.timeout_ns <= MAX_TIMEOUT_NS:
                return "timeout_out_of_range"
        if debit[0] != SYSTEM and self.available(debit) < t.amount:
            return "exceeds_credits"
        if pending:
            self.reserve(debit, credit, t.amount)
            self.pending[t.id] = MPending(debit, credit, t.amount, self.now_ns + t.timeout_ns if t.timeout_ns else 0)
            if undo is not None:

                def unreserve() -> None:
                    self.release(debit, credit, t.amount)
                    del self.pending[t.id]

                undo.append(unreserve)
        else:
            self.move(debit, credit, t.amount)
            if undo is not None:
                undo.append(lambda: (self._unpost(debit, credit, t.amount)))
        return None

    def _post_or_void(self, t: Any, keys: dict[int, Key], undo: list[Any] | None) -> str | None:
        if not t.pending_id:
            return "pending_id_must_not_be_zero"
        if t.pending_id > CLIENT_ID_MAX:
            return "pending_transfer_not_found"
        if t.timeout_ns:
            return "timeout_reserved_for_pending_transfer"
        p = self.pending.get(t.pending_id)
        if p is None:
            return "pending_transfer_not_found"
        if p.status != "pending":
            return {"posted": "pending_transfer_already_posted", "voided": "pending_transfer_already_voided",
                    "expired": "pending_transfer_expired"}[p.status]
        if p.expires_at and self.now_ns >= p.expires_at:
            return "pending_transfer_expired"
        if (t.debit_account_id and keys.get(t.debit_account_id) != p.debit) or (
                t.credit_account_id and keys.get(t.credit_account_id) != p.credit):
            return "pending_transfer_has_different_accounts"
        if t.amount < 0 or t.amount > MAX_AMOUNT:
            return "amount_out_of_range"
        before = (p.remaining, p.status)

        def restore() -> None:
            moved = before[0] - p.remaining
            if p.status == "voided":
                self.reserve(p.debit, p.credit, before[0])
            else:
                self.bal(p.debit).posted += moved
                self.bal(p.credit).posted -= moved
                self.reserve(p.debit, p.credit, moved)
            p.remaining, p.status = before

        if t.flags & 8:
            if t.amount not in (0, p.remaining):
                return "exceeds_pending_transfer_amount"
            self.release(p.debit, p.credit, p.remaining)
            p.remaining, p.status = 0, "voided"
        else:
            amount = t.amount or p.remaining
            if amount > p.remaining:
                return "exceeds_pending_transfer_amount"
            self.capture(p.debit, p.credit, amount)
            p.remaining -= amount
            if not p.remaining:
                p.status = "posted"
        if undo is not None:
            undo.append(restore)
        return None

    def pending_rows(self) -> dict[int, tuple[str, int]]:
        return {pid: (p.status, p.remaining) for pid, p in self.pending.items()}
