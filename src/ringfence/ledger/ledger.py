"""The double-entry ledger: accounts, idempotent transfers, linked chains, two-phase holds.

Invariants (asserted in `check_invariants`, property-tested after random operation sequences):

* Conservation: for every asset, the sum of `credits_posted - debits_posted` over all accounts is
  zero, and so is the sum of `credits_pending - debits_pending`. Every mutation below changes a
  debit and a credit counter of two accounts of the same asset by the same amount.
* No overdraft: an account flagged `DEBITS_MUST_NOT_EXCEED_CREDITS` never has
  `debits_posted + debits_pending > credits_posted` (and the mirror rule for the other flag).
* Idempotency: a client transfer id is applied at most once. The same id with the same body
  answers `exists`; the same id with a different body answers `exists_with_different_fields`.
* A pending transfer's `remaining` only shrinks; it is posted (in one or more parts), voided or
  expired, never both posted and returned beyond its amount.
* Nothing here reads a clock: expiry uses the sequencer's timestamp passed in as `now_ns`.

Results are TigerBeetle-style codes, one per transfer; only failures are reported.
"""

from __future__ import annotations

import heapq
from typing import Any, Iterable

from ..errors import InvariantViolation, UnknownAccount, ValidationError
from ..money import MAX_AMOUNT, Asset, AssetClass, AssetRegistry
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

__all__ = ["Ledger", "Pending", "RESULT_CODES"]

_LINKED = TransferFlags.LINKED
_PENDING = TransferFlags.PENDING
_POST = TransferFlags.POST_PENDING
_VOID = TransferFlags.VOID_PENDING
_NO_OVERDRAFT = AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
_NO_EXCESS_CREDIT = AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS

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

#: A pending transfer may live at most this long (30 days) before it must be re-placed.
MAX_TIMEOUT_NS = 30 * 24 * 3600 * 10**9


class Pending:
    """A two-phase reservation: `remaining` of `amount` is still reserved on the two accounts."""

    __slots__ = ("id", "debit", "credit", "amount", "remaining", "expires_at_ns", "status")

    def __init__(self, id: int, debit: Account, credit: Account, amount: int, expires_at_ns: int) -> None:
        self.id = id
        self.debit = debit
        self.credit = credit
        self.amount = amount
        self.remaining = amount
        self.expires_at_ns = expires_at_ns
        #: "pending" | "posted" | "voided" | "expired"
        self.status = "pending"


class Ledger:
    """All accounts of one engine shard. Single-threaded by design: only the engine calls it."""

    def __init__(self) -> None:
        self.assets = AssetRegistry()
        self.segments: list[str] = []
        self.accounts: list[Account | None] = [None]  # account ids start at 1
        self._by_key: dict[tuple[str, str, str, str], Account] = {}
        self.transfers: dict[int, Transfer] = {}
        self.pending: dict[int, Pending] = {}
        self._expiry: list[tuple[int, int]] = []
        self.next_internal_id = INTERNAL_ID_BASE
        for segment in DEFAULT_SEGMENTS:
            self.register_segment(segment)

    # ------------------------------------------------------------------ registry

    def register_asset(self, asset: Asset) -> bool:
        """Register an asset and its system accounts. Returns False if it was already registered."""
        known = asset.code in self.assets
        self.assets.register(asset)  # raises DuplicateAsset on a clash
        if known:
            return False
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
        self.segments.append(name)
        for asset in self.assets:
            self._open_segment_accounts(asset.code, name)
        return True

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

    def _open(self, owner: str, asset: str, kind: str, segment: str, flags: int) -> Account:
        key = (owner, asset, kind, segment)
        existing = self._by_key.get(key)
        if existing is not None:
            return existing
        if len(self.accounts) > MAX_ACCOUNTS:
            raise ValidationError(f"the shard holds its maximum of {MAX_ACCOUNTS} accounts", field="owner")
        account = Account(len(self.accounts), owner, asset, kind, segment, flags)
        self.accounts.append(account)
        self._by_key[key] = account
        return account

    def find(self, owner: str, asset: str, kind: str = "available", segment: str = "spot") -> Account | None:
        return self._by_key.get((owner, asset, kind, segment))

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
                    and tid not in known
                    and t.pending_id == 0
                    and t.timeout_ns == 0
                    and 0 < did < n_accounts
                    and 0 < cid < n_accounts
                    and did != cid
                    and 0 < amount <= MAX_AMOUNT
                ):
                    debit = accounts[did]
                    credit = accounts[cid]
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
                            known[tid] = t
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
            self.transfers[tid] = t
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

    # ------------------------------------------------------------------ engine-internal operations
    # Used by trading and custody inside `apply`. They raise instead of returning codes: the caller
    # has already checked what a user could get wrong, so a failure here is a bug to halt on.

    def new_internal_id(self) -> int:
        tid = self.next_internal_id
        self.next_internal_id = tid + 1
        return tid

    def move(self, debit: Account, credit: Account, amount: int) -> None:
        """Post `amount` from `debit` to `credit` (same asset), respecting the balance flags."""
        if amount <= 0:
            if amount == 0:
                return
            raise InvariantViolation("negative internal transfer")
        if debit.asset != credit.asset or debit is credit:
            raise InvariantViolation(f"bad internal transfer {debit.name} -> {credit.name}")
        code = self._check_limits(debit, credit, amount, pending=False)
        if code is not None:
            raise InvariantViolation(f"internal transfer {debit.name} -> {credit.name} failed: {code}")
        debit.debits_posted += amount
        credit.credits_posted += amount

    def can_reserve(self, debit: Account, amount: int) -> bool:
        if debit.flags & _NO_OVERDRAFT:
            return debit.debits_posted + debit.debits_pending + amount <= debit.credits_posted
        return True

    def reserve(self, debit: Account, credit: Account, amount: int, expires_at_ns: int = 0) -> int:
        """Open an engine-made pending transfer; returns its id. Caller checks `can_reserve` first."""
        if amount <= 0 or debit.asset != credit.asset or debit is credit:
            raise InvariantViolation("bad internal reservation")
        code = self._check_limits(debit, credit, amount, pending=True)
        if code is not None:
            raise InvariantViolation(f"internal reservation on {debit.name} failed: {code}")
        tid = self.new_internal_id()
        self._reserve(tid, debit, credit, amount, expires_at_ns)
        return tid

    def capture(self, pending_id: int, amount: int) -> None:
        """Post part of an engine-made pending transfer."""
        p = self.pending[pending_id]
        if p.status != "pending" or not 0 < amount <= p.remaining:
            raise InvariantViolation(f"cannot capture {amount} of pending {pending_id} ({p.status}, {p.remaining} left)")
        self._capture(p, amount)

    def release(self, pending_id: int) -> int:
        """Void what remains of an engine-made pending transfer; returns the released amount."""
        p = self.pending[pending_id]
        if p.status != "pending":
            return 0
        remaining = p.remaining
        self._release(p, remaining, "voided")
        return remaining

    # ------------------------------------------------------------------ two-phase mechanics

    def _reserve(self, tid: int, debit: Account, credit: Account, amount: int, expires_at_ns: int) -> None:
        debit.debits_pending += amount
        credit.credits_pending += amount
        self.pending[tid] = Pending(tid, debit, credit, amount, expires_at_ns)
        if expires_at_ns:
            heapq.heappush(self._expiry, (expires_at_ns, tid))

    def _capture(self, p: Pending, amount: int) -> None:
        debit, credit = p.debit, p.credit
        debit.debits_pending -= amount
        credit.credits_pending -= amount
        debit.debits_posted += amount
        credit.credits_posted += amount
        p.remaining -= amount
        if p.remaining == 0:
            p.status = "posted"

    def _release(self, p: Pending, amount: int, status: str) -> None:
        p.debit.debits_pending -= amount
        p.credit.credits_pending -= amount
        p.remaining -= amount
        p.status = status

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
        for entry in reversed(undo):
            kind = entry[0]
            if kind == "transfer":
                del self.transfers[entry[1]]
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
        ledger = cls.__new__(cls)
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
        ledger.transfers = {t.id: t for t in (Transfer(*row) if isinstance(row, list) else row for row in transfers)}
        ledger.pending = {}
        for pid, did, cid, amount, remaining, expires, status in pending:
            p = Pending(pid, ledger.account(did), ledger.account(cid), amount, expires)
            p.remaining, p.status = remaining, status
            ledger.pending[pid] = p
        ledger._expiry = [tuple(e) for e in expiry]  # type: ignore[misc]
        heapq.heapify(ledger._expiry)
        ledger.next_internal_id = next_internal_id
        return ledger
