"""The auditor's custody: deposits (credit, quarantine, reorg), sweeps, nonces and withdrawals.

From docs/custody.md: a credit moves `world -> user` and `onchain -> custody:<wallet>`, a reversal
undoes both (taking what the user still has; a shortfall freezes their withdrawals); a withdrawal
holds amount + fee from `requested` until it settles (post; amount to `world`, fee to `fees:spot`,
amount + network fee from custody to `onchain`) or ends (void), and walks its state machine one
journaled command at a time under a first-match policy.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from .books import SYSTEM, Books, Key, Refuse

__all__ = ["CustodyModel", "CustodyRules", "MDeposit", "MWithdrawal"]

EMAIL_TTL_NS = 30 * 60 * 10**9
QUARANTINE_ABOVE = 85
FREEZE_CATEGORIES = ("exploit", "sanctions")
OPEN_WITHDRAWAL = ("requested", "confirmed", "reviewed", "awaiting_approvals", "manual_review", "approved",
                   "signing", "signed", "broadcast")
CREDITED = ("credited", "quarantined", "frozen")


@dataclass(frozen=True)
class CustodyRules:
    asset: str
    chain: str
    credit_confirmations: int
    finality_confirmations: int
    min_deposit: int
    min_withdrawal: int
    max_withdrawal: int
    fee: int


@dataclass
class MDeposit:
    chain: str
    asset: str
    account: str
    wallet: str
    amount: int
    height: int
    block_hash: str
    state: str = "seen"
    final: bool = False
    kind: str = ""
    declaration: str = ""
    release_by: tuple[str, ...] = ()  # analysts who signed a frozen deposit's release (two must)


@dataclass
class MWithdrawal:
    id: str
    account: str
    asset: str
    wallet: str
    amount: int
    fee: int
    token_hash: str
    created_ns: int
    held: int
    state: str = "requested"
    manual: bool = False
    required: int = 0
    roles: tuple[str, ...] = ()
    approvals: dict[str, int] = field(default_factory=dict)  # approver -> expires_ns
    not_before: int = 0
    txid: str = ""
    address: str = ""
    nonce: int = -1  # Ethereum wallets: the nonce assigned when signing was authorised


class CustodyModel(Books):
    def _init_custody(self) -> None:
        self.custody: dict[str, CustodyRules] = {}
        self.wallets: dict[str, tuple[str, str]] = {}  # name -> (chain, tier)
        self.deposit_addresses: dict[str, tuple[str, str]] = {}  # "chain:address" -> (account, wallet)
        self.deposits: dict[str, MDeposit] = {}
        self.withdrawals: dict[str, MWithdrawal] = {}
        self.frozen_accounts: set[str] = set()
        self.roles: dict[str, set[str]] = {}
        self.staff_accounts: dict[str, set[str]] = {}  # staff id -> the customer accounts they hold
        #: The withdrawal policy, first match wins: (asset or "" for any, amount_gt, only to addresses
        #: not on the user's allow list, (window_s, gt) the user's withdrawals in the window plus
        #: this one must exceed or None, action, approvals, roles).
        self.rules: list[tuple[str, int, bool, tuple[int, int] | None, str, int, tuple[str, ...]]] = []
        self.address_book: set[tuple[str, str, str]] = set()  # (account, asset, address)
        self.approval_ttl_ns = 86400 * 10**9
        #: sweeps/refills by id -> (state, fields); "funding:<id>" and "nonce:<id>" share the table
        self.internal_transfers: dict[str, tuple[str, tuple[Any, ...]]] = {}
        self.next_nonce: dict[str, int] = {}  # Ethereum wallet -> next nonce

    def _custody_acct(self, asset: str, wallet: str) -> Key:
        return (SYSTEM, asset, "custody", wallet)

    def _onchain(self, asset: str) -> Key:
        return (SYSTEM, asset, "onchain", "-")

    def observe_deposit(self, c: Any) -> list[tuple[Any, ...]]:
        cfg = self.custody.get(c.asset)
        if cfg is None or cfg.chain != c.chain:
            raise Refuse("RF_UNSUPPORTED_ASSET")
        if c.amount_minor <= 0:
            raise Refuse("RF_INVALID_AMOUNT")
        owner = self.deposit_addresses.get(f"{c.chain}:{c.address}")
        if owner is None:
            raise Refuse("RF_NOT_FOUND", "not a deposit address")
        key = f"{c.chain}:{c.txid}:{c.index}"
        d = self.deposits.get(key)
        if d is not None and d.state not in ("dropped", "reversed"):
            if d.state == "seen" and (d.height, d.block_hash) != (c.height, c.block_hash):
                d.height, d.block_hash = c.height, c.block_hash
            return [("deposit", key, d.state)]
        account, wallet = owner
        if c.amount_minor < cfg.min_deposit:
            self.deposits[key] = MDeposit(c.chain, c.asset, account, wallet, c.amount_minor, c.height, c.block_hash,
                                          "below_minimum")
            return [("deposit", key, "below_minimum")]
        if d is None:
            self.deposits[key] = d = MDeposit(c.chain, c.asset, account, wallet, c.amount_minor, c.height, c.block_hash)
        else:
            d.state, d.height, d.block_hash, d.final = "seen", c.height, c.block_hash, False
        return [("deposit", key, "seen")]

    def _deposit(self, c: Any) -> tuple[str, MDeposit]:
        key = f"{c.chain}:{c.txid}:{c.index}"
        d = self.deposits.get(key)
        if d is None:
            raise Refuse("RF_NOT_FOUND", "no such deposit")
        return key, d

    def credit_deposit(self, c: Any) -> list[tuple[Any, ...]]:
        key, d = self._deposit(c)
        if not 0 <= c.score <= 100:
            raise Refuse("RF_VALIDATION")
        if d.state == "seen" and c.confirmations < self.custody[d.asset].credit_confirmations:
            raise Refuse("RF_CONFLICT", "too few confirmations")
        if d.state != "seen":
            return [("deposit", key, d.state)]
        if c.category in FREEZE_CATEGORIES:
            d.kind, d.state = "frozen", "frozen"
        elif c.score > QUARANTINE_ABOVE:
            d.kind, d.state = "quarantine", "quarantined"
        else:
            d.kind, d.state = "available", "credited"
        self.move((SYSTEM, d.asset, "world", "-"), (d.account, d.asset, d.kind, "spot"), d.amount)
        self.move(self._onchain(d.asset), self._custody_acct(d.asset, d.wallet), d.amount)
        return [("deposit", key, d.state)]

    def finalize_deposit(self, c: Any) -> list[tuple[Any, ...]]:
        key, d = self._deposit(c)
        if c.confirmations < self.custody[d.asset].finality_confirmations:
            raise Refuse("RF_CONFLICT", "too few confirmations for finality")
        if not d.final and d.state in CREDITED:
            d.final = True
        return [("deposit", key, d.state)]

    def reorg(self, c: Any) -> list[tuple[Any, ...]]:
        out = []
        for key, d in self.deposits.items():
            if d.chain != c.chain or d.height < c.fork_height or d.final or d.state in ("dropped", "reversed"):
                continue
            if d.state in CREDITED:
                user = (d.account, d.asset, d.kind, "spot")
                take = min(d.amount, self.available(user))
                self.move(user, (SYSTEM, d.asset, "world", "-"), take)
                if take < d.amount:
                    self.frozen_accounts.add(d.account)
                self.move(self._custody_acct(d.asset, d.wallet), self._onchain(d.asset), d.amount)
                d.state, d.kind = "reversed", ""
            else:
                d.state = "dropped"
            out.append(("deposit", key, d.state))
        return out

    def file_source_of_funds(self, c: Any) -> list[tuple[Any, ...]]:
        key = f"{c.chain}:{c.txid}:{c.index}"
        d = self.deposits.get(key)
        if d is None or d.account != c.account_id:
            raise Refuse("RF_NOT_FOUND")
        if d.state not in ("quarantined", "frozen"):
            raise Refuse("RF_CONFLICT")
        if len(c.declaration.strip()) < 10:
            raise Refuse("RF_VALIDATION")
        if d.declaration != c.declaration.strip():
            d.release_by = ()
        d.declaration = c.declaration.strip()
        return [("deposit", key, d.state)]

    def _own(self, who: str, account: str) -> bool:
        """never-the-initiator: the account is the decider's own (their id, or one registered with them)."""
        return who == account or account in self.staff_accounts.get(who, set())

    def review_quarantine(self, c: Any) -> list[tuple[Any, ...]]:
        key, d = self._deposit(c)
        if c.decision_kind not in ("release", "freeze"):
            raise Refuse("RF_VALIDATION")
        who = c.decision.staff_id  # a signed staff decision (the engine verifies the signature)
        if self._own(who, d.account) or "analyst" not in self.roles.get(who, set()):
            raise Refuse("RF_SEGREGATION_OF_DUTIES")
        # a quarantined deposit is released or frozen, a frozen one only released; release needs the declaration
        reviewable = d.state == "quarantined" or (d.state == "frozen" and c.decision_kind == "release")
        if not reviewable or (c.decision_kind == "release" and not d.declaration):
            raise Refuse("RF_CONFLICT")
        if d.state == "frozen":  # a frozen deposit's release is a two-analyst decision
            if who in d.release_by:
                raise Refuse("RF_SEGREGATION_OF_DUTIES")
            d.release_by = (*d.release_by, who)
            if len(d.release_by) < 2:
                return [("deposit", key, d.state)]
        kind = "available" if c.decision_kind == "release" else "frozen"
        source = "frozen" if d.state == "frozen" else "quarantine"
        self.move((d.account, d.asset, source, "spot"), (d.account, d.asset, kind, "spot"), d.amount)
        d.kind, d.state = kind, ("credited" if kind == "available" else "frozen")
        return [("deposit", key, d.state)]

    def _check_internal(self, c: Any) -> None:
        cfg = self.custody.get(c.asset)
        if cfg is None:
            raise Refuse("RF_UNSUPPORTED_ASSET")
        src, dst = self.wallets.get(c.from_wallet), self.wallets.get(c.to_wallet)
        if src is None or dst is None:
            raise Refuse("RF_NOT_FOUND")
        if src[0] != cfg.chain or dst[0] != cfg.chain or c.from_wallet == c.to_wallet:
            raise Refuse("RF_VALIDATION")
        if c.amount_minor <= 0:
            raise Refuse("RF_INVALID_AMOUNT")

    def transfer_signed(self, c: Any) -> list[tuple[Any, ...]]:
        """A sweep signed and journaled before broadcast: recorded as in flight, no money moves yet."""
        fields = (c.txid, c.asset, c.from_wallet, c.to_wallet, c.amount_minor)
        known = self.internal_transfers.get(c.transfer_id)
        if known is not None:
            if known[1][0] != c.txid:
                raise Refuse("RF_CONFLICT", "another transaction for this transfer id")
            return [("internal", c.transfer_id, known[0])]
        self._check_internal(c)
        self.internal_transfers[c.transfer_id] = ("signed", fields)
        return [("internal", c.transfer_id, "signed")]

    def reserve_nonce(self, c: Any) -> list[tuple[Any, ...]]:
        w = self.wallets.get(c.wallet)
        if w is None:
            raise Refuse("RF_NOT_FOUND")
        if w[0] != "ethereum":
            raise Refuse("RF_VALIDATION")
        key = "nonce:" + c.purpose_id
        if key not in self.internal_transfers:
            self.internal_transfers[key] = ("nonce", (self.next_nonce.get(c.wallet, 0),))
            self.next_nonce[c.wallet] = self.next_nonce.get(c.wallet, 0) + 1
        return [("nonce", c.purpose_id)]

    def internal_transfer(self, c: Any) -> list[tuple[Any, ...]]:
        known = self.internal_transfers.get(c.transfer_id)
        if known is not None and known[0] == "recorded":
            return [("internal", c.transfer_id)]
        if known is not None and known[1] != (c.txid, c.asset, c.from_wallet, c.to_wallet, c.amount_minor):
            raise Refuse("RF_CONFLICT", "does not match the signed transfer")
        cfg = self.custody.get(c.asset)
        if cfg is None:
            raise Refuse("RF_UNSUPPORTED_ASSET")
        src, dst = self.wallets.get(c.from_wallet), self.wallets.get(c.to_wallet)
        if src is None or dst is None:
            raise Refuse("RF_NOT_FOUND")
        if src[0] != cfg.chain or dst[0] != cfg.chain or c.from_wallet == c.to_wallet:
            raise Refuse("RF_VALIDATION")
        if c.amount_minor <= 0:
            raise Refuse("RF_INVALID_AMOUNT")
        self.move(self._custody_acct(c.asset, c.from_wallet), self._custody_acct(c.asset, c.to_wallet), c.amount_minor)
        self.move(self._custody_acct(c.asset, c.from_wallet), self._onchain(c.asset), c.network_fee_minor)
        self.internal_transfers[c.transfer_id] = ("recorded", (c.txid, c.asset, c.from_wallet, c.to_wallet, c.amount_minor))
        return [("internal", c.transfer_id)]

    def treasury_funding(self, c: Any) -> list[tuple[Any, ...]]:
        key = "funding:" + c.funding_id
        if key in self.internal_transfers:
            return [("internal", key)]
        cfg = self.custody.get(c.asset)
        if cfg is None:
            raise Refuse("RF_UNSUPPORTED_ASSET")
        w = self.wallets.get(c.wallet)
        if w is None:
            raise Refuse("RF_NOT_FOUND")
        if w[0] != cfg.chain:
            raise Refuse("RF_VALIDATION")
        if c.amount_minor <= 0:
            raise Refuse("RF_INVALID_AMOUNT")
        self.move(self._onchain(c.asset), self._custody_acct(c.asset, c.wallet), c.amount_minor)
        self.internal_transfers[key] = ("recorded", (c.txid, c.asset, "", c.wallet, c.amount_minor))
        return [("internal", key)]

    def _clearing_w(self, asset: str) -> Key:
        return (SYSTEM, asset, "clearing", "-")

    def _w(self, c: Any) -> MWithdrawal:
        w = self.withdrawals.get(c.withdrawal_id)
        if w is None:
            raise Refuse("RF_NOT_FOUND")
        if (c.asset, c.wallet) != (w.asset, w.wallet):
            raise Refuse("RF_VALIDATION")
        return w

    def _void(self, w: MWithdrawal, state: str) -> list[tuple[Any, ...]]:
        self.release((w.account, w.asset, "available", "spot"), self._clearing_w(w.asset), w.held)
        w.held, w.state = 0, state
        return [("withdrawal", w.id, state)]

    def request_withdrawal(self, c: Any, address_ok: bool) -> list[tuple[Any, ...]]:
        existing = self.withdrawals.get(c.withdrawal_id)
        if existing is not None:
            if (existing.account, existing.asset, existing.wallet, existing.amount) != (
                    c.account_id, c.asset, c.wallet, c.amount_minor):
                raise Refuse("RF_CONFLICT")
            return [("withdrawal", existing.id, existing.state)]
        cfg = self.custody.get(c.asset)
        if cfg is None:
            raise Refuse("RF_UNSUPPORTED_ASSET")
        if c.amount_minor <= 0 or c.fee_minor < 0:
            raise Refuse("RF_INVALID_AMOUNT")
        if not cfg.min_withdrawal <= c.amount_minor <= cfg.max_withdrawal:
            raise Refuse("RF_INVALID_AMOUNT")
        if c.fee_minor != cfg.fee:
            raise Refuse("RF_VALIDATION")
        w = self.wallets.get(c.wallet)
        if w is None:
            raise Refuse("RF_NOT_FOUND")
        if w != (cfg.chain, "hot"):
            raise Refuse("RF_VALIDATION")
        if not address_ok:
            raise Refuse(None, "bad address")
        if len(c.email_token_hash) != 64:
            raise Refuse("RF_VALIDATION")
        if c.account_id in self.frozen_accounts:
            raise Refuse("RF_FORBIDDEN")
        user = (c.account_id, c.asset, "available", "spot")
        total = c.amount_minor + c.fee_minor
        if self.available(user) < total:
            raise Refuse("RF_INSUFFICIENT_FUNDS")
        self.reserve(user, self._clearing_w(c.asset), total)
        self.withdrawals[c.withdrawal_id] = MWithdrawal(c.withdrawal_id, c.account_id, c.asset, c.wallet, c.amount_minor,
                                                        c.fee_minor, c.email_token_hash, self.now_ns, total,
                                                        address=c.address)
        return [("withdrawal", c.withdrawal_id, "requested")]

    def add_withdrawal_address(self, c: Any, address_ok: bool) -> list[tuple[Any, ...]]:
        if c.asset not in self.custody:
            raise Refuse("RF_UNSUPPORTED_ASSET")
        if not address_ok:
            raise Refuse("RF_INVALID_ADDRESS")
        key = (c.account_id, c.asset, c.address.lower())
        if key not in self.address_book:
            if sum(1 for a, asset, _ in self.address_book if (a, asset) == key[:2]) >= 100:
                raise Refuse("RF_VALIDATION", "allow list full")
            self.address_book.add(key)
        return [("address_book", key)]

    def confirm_email(self, c: Any) -> list[tuple[Any, ...]]:
        w = self._w(c)
        if w.state != "requested":
            return [("withdrawal", w.id, w.state)]
        if hashlib.sha256(c.token.encode()).hexdigest() != w.token_hash:
            raise Refuse("RF_FORBIDDEN", "wrong e-mail token")
        if self.now_ns - w.created_ns > EMAIL_TTL_NS:
            return self._void(w, "failed")
        w.state = "confirmed"
        return [("withdrawal", w.id, w.state)]

    def risk_review(self, c: Any) -> list[tuple[Any, ...]]:
        w = self._w(c)
        if not 0 <= c.score <= 100:
            raise Refuse("RF_VALIDATION")
        if w.state == "confirmed":
            w.state, w.manual = "reviewed", c.manual_review
        return [("withdrawal", w.id, w.state)]

    def decide(self, c: Any) -> list[tuple[Any, ...]]:
        w = self._w(c)
        if w.state != "reviewed":
            return [("withdrawal", w.id, w.state)]
        action, count = "deny", 0  # no rule matched: default deny
        roles_needed: tuple[str, ...] = ()
        listed = (w.account, w.asset, w.address.lower()) in self.address_book
        for asset, amount_gt, unlisted_only, velocity, rule_action, rule_count, rule_roles in self.rules:
            if velocity is not None and self._user_velocity(w, velocity[0]) + w.amount <= velocity[1]:
                continue
            if asset in ("", w.asset) and w.amount > amount_gt and not (unlisted_only and listed):
                action, count, roles_needed = rule_action, rule_count, rule_roles
                break
        if w.manual and action in ("allow", "approvals", "delay"):
            action = "manual_review"
        if action == "deny":
            return self._void(w, "denied")
        if action == "manual_review":
            w.state = "manual_review"
        elif action == "approvals":
            w.state, w.required, w.roles, w.not_before = "awaiting_approvals", count, roles_needed, self.now_ns
        else:
            w.state, w.not_before = "approved", self.now_ns
        return [("withdrawal", w.id, w.state)]

    def _user_velocity(self, w: MWithdrawal, window_s: int) -> int:
        """What the same user asked to withdraw of the same asset in the window (not counting this
        one, nor withdrawals that failed, were denied or rejected)."""
        since = self.now_ns - window_s * 10**9
        return sum(x.amount for x in self.withdrawals.values()
                   if x.id != w.id and x.account == w.account and x.asset == w.asset
                   and x.state not in ("failed", "denied", "rejected") and x.created_ns > since)

    def approve(self, c: Any) -> list[tuple[Any, ...]]:
        w = self._w(c)
        who = c.decision.staff_id
        if self._own(who, w.account):
            raise Refuse("RF_SEGREGATION_OF_DUTIES")  # never the initiator
        if w.state != "awaiting_approvals":
            raise Refuse("RF_CONFLICT")
        if c.role not in w.roles or c.role not in self.roles.get(who, set()):
            raise Refuse("RF_SEGREGATION_OF_DUTIES")  # the policy's role, held by the signer
        if w.approvals.get(who, 0) > self.now_ns:
            raise Refuse("RF_SEGREGATION_OF_DUTIES")  # distinct people: one unexpired approval each
        w.approvals[who] = self.now_ns + self.approval_ttl_ns
        if sum(1 for exp in w.approvals.values() if exp > self.now_ns) >= w.required:
            w.state, w.not_before = "approved", max(w.not_before, self.now_ns)
        return [("withdrawal", w.id, w.state)]

    def manual_review(self, c: Any) -> list[tuple[Any, ...]]:
        w = self._w(c)
        if not c.reason.strip():
            raise Refuse("RF_VALIDATION")
        who = c.decision.staff_id
        if self._own(who, w.account):
            raise Refuse("RF_SEGREGATION_OF_DUTIES")
        if w.state != "manual_review":
            raise Refuse("RF_CONFLICT")
        if "analyst" not in self.roles.get(who, set()):
            raise Refuse("RF_SEGREGATION_OF_DUTIES")
        if not c.approve:
            return self._void(w, "rejected")
        w.state, w.not_before = "approved", max(w.not_before, self.now_ns)
        return [("withdrawal", w.id, w.state)]

    def authorize(self, c: Any) -> list[tuple[Any, ...]]:
        w = self._w(c)
        if w.state in ("signing", "signed", "broadcast", "settled"):
            return [("withdrawal", w.id, w.state)]
        if w.state != "approved":
            raise Refuse("RF_CONFLICT")
        if w.account in self.frozen_accounts:
            raise Refuse("RF_FORBIDDEN")
        if self.now_ns < w.not_before:
            raise Refuse("RF_CONFLICT")
        if w.required and sum(1 for exp in w.approvals.values() if exp > self.now_ns) < w.required:
            w.state = "awaiting_approvals"
        else:
            w.state = "signing"
            if self.wallets[w.wallet][0] == "ethereum":  # one nonce sequence per wallet, never reused
                w.nonce = self.next_nonce.get(w.wallet, 0)
                self.next_nonce[w.wallet] = w.nonce + 1
        return [("withdrawal", w.id, w.state)]

    def signed(self, c: Any) -> list[tuple[Any, ...]]:
        w = self._w(c)
        if w.txid:
            if w.txid == c.txid:
                return [("withdrawal", w.id, w.state)]
            raise Refuse("RF_CONFLICT")
        if w.state != "signing":
            raise Refuse("RF_CONFLICT")
        if not c.txid:
            raise Refuse("RF_VALIDATION")
        w.state, w.txid = "signed", c.txid
        return [("withdrawal", w.id, w.state)]

    def broadcast(self, c: Any) -> list[tuple[Any, ...]]:
        w = self._w(c)
        if c.txid != w.txid:
            raise Refuse("RF_CONFLICT")
        if w.state == "signed":
            w.state = "broadcast"
        return [("withdrawal", w.id, w.state)]

    def settle(self, c: Any) -> list[tuple[Any, ...]]:
        w = self._w(c)
        if w.state == "settled":
            return [("withdrawal", w.id, w.state)]
        if c.txid != w.txid or w.state not in ("signed", "broadcast"):
            raise Refuse("RF_CONFLICT")
        if c.confirmations < self.custody[w.asset].finality_confirmations:
            raise Refuse("RF_CONFLICT")
        if c.network_fee_minor < 0:
            raise Refuse("RF_INVALID_AMOUNT")
        user, clearing = (w.account, w.asset, "available", "spot"), self._clearing_w(w.asset)
        self.capture(user, clearing, w.held)
        self.move(clearing, (SYSTEM, w.asset, "world", "-"), w.amount)
        self.move(clearing, (SYSTEM, w.asset, "fees", "spot"), w.fee)
        self.move(self._custody_acct(w.asset, w.wallet), self._onchain(w.asset), w.amount + c.network_fee_minor)
        w.held, w.state = 0, "settled"
        return [("withdrawal", w.id, w.state)]

    def fail(self, c: Any) -> list[tuple[Any, ...]]:
        w = self._w(c)
        if w.state not in OPEN_WITHDRAWAL:
            return [("withdrawal", w.id, w.state)]
        return self._void(w, "failed")

    def cancel_withdrawal(self, c: Any) -> list[tuple[Any, ...]]:
        w = self._w(c)
        if w.account != c.account_id:
            raise Refuse("RF_FORBIDDEN")
        if w.state not in OPEN_WITHDRAWAL:
            return [("withdrawal", w.id, w.state)]
        if w.state in ("signing", "signed", "broadcast"):
            raise Refuse("RF_CONFLICT")
        return self._void(w, "failed")

    def withdrawal_rows(self) -> dict[str, tuple[str, int]]:
        return {w.id: (w.state, w.nonce) for w in self.withdrawals.values()}

    def internal_rows(self) -> dict[str, tuple[str, int]]:
        """id -> (state, amount) of sweeps and fundings; for reserved nonces (state, the nonce)."""
        return {k: ("recorded" if state == "nonce" else state, fields[0] if state == "nonce" else fields[4])
                for k, (state, fields) in self.internal_transfers.items()}
