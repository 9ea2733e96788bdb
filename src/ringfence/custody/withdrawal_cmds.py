"""Withdrawal commands: the address book, then a withdrawal from request (hold) through e-mail
confirmation, risk review, policy decision, approvals, signing and broadcast to settle (post) or
fail/cancel (void)."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac

import msgspec

from ..engine.commands import Command, Event
from ..engine.core import Engine
from ..engine.module import Effect
from .module import MODULE, custody_scopes
from ..errors import (
    Conflict,
    Forbidden,
    InsufficientFunds,
    InvalidAmount,
    ValidationError,
    WithdrawalsLocked,
)
from ..ledger.model import SYSTEM_OWNER, validate_owner
from .policy import Facts, evaluate
from .retired import refuse_unsigned
from .state import (
    ALLOW_LIST_MAX_PER_USER,
    EMAIL_CONFIRM_TTL_NS,
    MAX_RAW_TX_HEX,
    MAX_REASONS,
    CustodyEvent,
    CustodyState,
    WithdrawalRules,
    _asset_cfg,
    _check_amount,
    _check_id,
    _ev,
    _move_state,
    _norm,
    _room,
    _scoped,
    _system,
    _text,
    _user,
    _wallet,
    _withdrawal,
    custody_state,
    validate_chain_address,
)
from .withdrawals import IN_FLIGHT_STATES, OPEN_STATES, ApprovalRec, WithdrawalRec

__all__ = ["AddWithdrawalAddress", "RemoveWithdrawalAddress", "SetWithdrawalRules", "RecordSecurityChange", "withdrawal_blocker",
           "AddressNotListed", "AddressCooling", "RequestWithdrawal", "ConfirmWithdrawalEmail", "RecordRiskReview", "DecideWithdrawal", "ApproveWithdrawal", "ResolveManualReview", "AuthorizeSigning", "RecordSignedTx", "RecordSignedBatch", "MAX_BATCH", "RecordBroadcast", "SettleWithdrawal", "FailWithdrawal", "CancelWithdrawal", "policy_facts",
           "same_transaction"]


#: Longest cooling period or security lock the rules accept (30 days).
MAX_RULE_S = 30 * 86400
#: The lock after a security change when no rules were set (identity's default).
DEFAULT_SECURITY_LOCK_S = 86400


class AddressNotListed(Forbidden):
    code = "RF_ADDRESS_NOT_LISTED"
    default_message = "the address is not in the account's withdrawal address book"


class AddressCooling(Forbidden):
    code = "RF_ADDRESS_COOLING"
    default_message = "the address-book entry is still in its cooling period"


class AddWithdrawalAddress(Command, tag="custody.address_book.add/1"):
    """The gateway submits this after `identity.events.withdrawal_address_changed` (fresh 2FA, lock).

    The entry may receive funds after the cooling period of the withdrawal rules (`cooling_s` -1);
    an operator may set another period for one entry (the demo's pre-cooled entries use 0)."""

    account_id: str
    asset: str
    address: str
    cooling_s: int = -1


class SetWithdrawalRules(Command, tag="custody.withdrawal.rules/1"):
    """What every later `RequestWithdrawal` must satisfy (checked in the engine, sequencer time)."""

    require_address_book: bool
    address_cooling_s: int
    security_lock_s: int


@MODULE.handles(SetWithdrawalRules, effect=Effect.ADMIN, scopes=custody_scopes)
def _set_rules(engine: Engine, c: SetWithdrawalRules) -> list[Event]:
    for name in ("address_cooling_s", "security_lock_s"):
        value = getattr(c, name)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_RULE_S:
            raise ValidationError(f"must be an integer number of seconds 0..{MAX_RULE_S}", field=name)
    s = custody_state(engine)
    rules = WithdrawalRules(bool(c.require_address_book), c.address_cooling_s, c.security_lock_s)
    if s.rules == rules:
        return [_ev("withdrawal_rules.unchanged", "rules", "set")]
    s.rules = rules
    return [_ev("withdrawal_rules.set", "rules", "set", 0, [
        f"address book {'required' if rules.require_address_book else 'not required'}",
        f"new addresses cool for {rules.address_cooling_s} s", f"security changes lock withdrawals for {rules.security_lock_s} s"])]


class RecordSecurityChange(Command, tag="custody.security_change/1"):
    """Identity saw a password, second-factor, e-mail (or other credential) change: withdrawals of
    the account are locked for the rules' `security_lock_s` from the sequencer's time. Relayed in
    identity's event order; idempotent by `event_id` (an id at or below the last one is a retry)."""

    event_id: int
    account_id: str
    change: str


@MODULE.handles(RecordSecurityChange, effect=Effect.NEUTRAL, scopes=custody_scopes)
def _security_change(engine: Engine, c: RecordSecurityChange) -> list[Event]:
    validate_owner(c.account_id, "account_id")
    if isinstance(c.event_id, bool) or not isinstance(c.event_id, int) or c.event_id < 1:
        raise ValidationError("must be a positive integer", field="event_id")
    change = _text(c.change, "change", 64)
    s = custody_state(engine)
    if c.event_id <= s.security_relay_pos:
        return [_ev("security_change.unchanged", c.account_id, change)]
    lock_s = s.rules.security_lock_s if s.rules is not None else DEFAULT_SECURITY_LOCK_S
    until = max(s.security_locks.get(c.account_id, 0), engine.now_ns + lock_s * 10**9)
    s.security_relay_pos = c.event_id
    s.security_locks[c.account_id] = until
    return [_ev("security_change.recorded", c.account_id, change, 0, [f"withdrawals locked until {until} ns"])]


def withdrawal_blocker(s: "CustodyState", now_ns: int, account_id: str, asset: str, chain: str, address: str) -> Forbidden | None:
    """Why this account may not withdraw to `address` now (the engine's own rules), or None."""
    lock = s.security_locks.get(account_id, 0)
    if now_ns < lock:
        return WithdrawalsLocked(f"withdrawals are locked for {-(-(lock - now_ns) // 10**9)} more s after a recent "
                                 "security change (password, second factor or e-mail)", field="account_id",
                                 lock_s=s.rules.security_lock_s if s.rules is not None else DEFAULT_SECURITY_LOCK_S,
                                 locked_until_ns=lock)
    rules = s.rules
    if rules is None or not rules.require_address_book:
        return None
    key = f"{account_id}|{asset}|{_norm(chain, address)}"
    if key not in s.address_book:
        return AddressNotListed(f"{address} is not in your {asset} withdrawal address book; add it first "
                                "(fresh second factor and e-mail confirmation)", field="address")
    usable = s.address_usable_ns.get(key, s.address_book[key] + rules.address_cooling_s * 10**9)
    if now_ns < usable:
        return AddressCooling(f"this address-book entry is new: it may receive withdrawals in "
                              f"{-(-(usable - now_ns) // 10**9)} s", field="address")
    return None


@MODULE.handles(AddWithdrawalAddress, effect=Effect.ADMIN, scopes=custody_scopes)
def _add_address(engine: Engine, c: AddWithdrawalAddress) -> list[Event]:
    s = custody_state(engine)
    cfg = _asset_cfg(s, c.asset)
    addr = validate_chain_address(cfg.chain, cfg.network, c.address)
    prefix = f"{c.account_id}|{c.asset}|"
    key = prefix + _norm(cfg.chain, addr)
    if key in s.address_book:
        return [_ev("address_book.unchanged", key, "listed")]
    if sum(1 for k in s.address_book if k.startswith(prefix)) >= ALLOW_LIST_MAX_PER_USER:
        raise ValidationError(f"at most {ALLOW_LIST_MAX_PER_USER} addresses per asset", field="address")
    if isinstance(c.cooling_s, bool) or not isinstance(c.cooling_s, int) or not -1 <= c.cooling_s <= MAX_RULE_S:
        raise ValidationError(f"must be -1 (the rules' cooling period) or 0..{MAX_RULE_S} s", field="cooling_s")
    s.address_book[key] = engine.now_ns
    default_s = s.rules.address_cooling_s if s.rules is not None else 0
    s.address_usable_ns[key] = engine.now_ns + (default_s if c.cooling_s < 0 else c.cooling_s) * 10**9
    return [_ev("address_book.added", key, "listed", 0, [f"usable from {s.address_usable_ns[key]} ns"])]


class RemoveWithdrawalAddress(Command, tag="custody.address_book.remove/1"):
    """The account owner removes an entry from its withdrawal address book (the dashboard)."""

    account_id: str
    asset: str
    address: str


@MODULE.handles(RemoveWithdrawalAddress, effect=Effect.NEUTRAL, scopes=custody_scopes)
def _remove_address(engine: Engine, c: RemoveWithdrawalAddress) -> list[Event]:
    s = custody_state(engine)
    cfg = _asset_cfg(s, c.asset)
    key = f"{c.account_id}|{c.asset}|" + _norm(cfg.chain, validate_chain_address(cfg.chain, cfg.network, c.address))
    if key not in s.address_book:
        return [_ev("address_book.unchanged", key, "absent")]
    del s.address_book[key]
    s.address_usable_ns.pop(key, None)
    return [_ev("address_book.removed", key, "removed")]


# ---------------------------------------------------------------------------------- withdrawals


class RequestWithdrawal(Command, tag="custody.withdrawal.request/1"):
    withdrawal_id: str
    account_id: str
    asset: str
    wallet: str
    address: str
    amount_minor: int
    fee_minor: int
    email_token_hash: str  # sha256 hex of the e-mailed confirmation token
    device_id: str = ""
    ip: str = ""


def _pre_request(engine: Engine, c: RequestWithdrawal) -> None:
    s = custody_state(engine)
    _check_id(c.withdrawal_id, "withdrawal_id")
    validate_owner(c.account_id, "account_id")
    existing = s.withdrawals.get(c.withdrawal_id)
    if existing is not None:
        if (existing.account_id, existing.asset, existing.wallet, existing.amount_minor) != (
                c.account_id, c.asset, c.wallet, c.amount_minor):
            raise Conflict("this withdrawal id is taken by another request", field="withdrawal_id")
        return  # a retry: the handler answers `withdrawal.unchanged`
    cfg = _asset_cfg(s, c.asset)
    amount = _check_amount(c.amount_minor, "amount_minor")
    fee = _check_amount(c.fee_minor, "fee_minor", allow_zero=True)
    if amount < cfg.min_withdrawal_minor:
        raise InvalidAmount(f"is below the minimum withdrawal of {cfg.min_withdrawal_minor} minor units", field="amount_minor")
    if amount > cfg.max_withdrawal_minor:
        raise InvalidAmount(f"is above the maximum withdrawal of {cfg.max_withdrawal_minor} minor units", field="amount_minor")
    if fee != cfg.withdrawal_fee_minor:
        raise ValidationError(f"the withdrawal fee for {c.asset} is {cfg.withdrawal_fee_minor} minor units", field="fee_minor")
    w = _wallet(s, c.wallet)
    if w.chain != cfg.chain or w.tier != "hot":
        raise ValidationError(f"withdrawals of {c.asset} are paid from a hot wallet on {cfg.chain}", field="wallet")
    validate_chain_address(cfg.chain, cfg.network, c.address)
    if len(c.email_token_hash) != 64:
        raise ValidationError("must be a sha256 hex digest", field="email_token_hash")
    _text(c.device_id, "device_id", 128)
    _text(c.ip, "ip", 64)
    if c.account_id in s.withdrawals_frozen:
        raise Forbidden(f"withdrawals are frozen: {s.withdrawals_frozen[c.account_id]}", field="account_id")
    blocked = withdrawal_blocker(s, engine.now_ns, c.account_id, c.asset, cfg.chain, c.address)
    if blocked is not None:
        raise blocked
    acct = engine.ledger.find(c.account_id, c.asset, "available", "spot")
    have = acct.available if acct is not None else 0
    if have < amount + fee:
        raise InsufficientFunds(f"needs {amount + fee} (amount + fee), {have} is available", field="amount_minor")


@MODULE.handles(RequestWithdrawal, precheck=_pre_request, effect=Effect.MOVES_FUNDS_OUT, scopes=custody_scopes)
def _request(engine: Engine, c: RequestWithdrawal) -> list[Event]:
    _pre_request(engine, c)
    s = custody_state(engine)
    if c.withdrawal_id in s.withdrawals:
        w = s.withdrawals[c.withdrawal_id]
        return [_ev("withdrawal.unchanged", w.id, w.state, w.amount_minor)]
    cfg = s.assets[c.asset]
    address = validate_chain_address(cfg.chain, cfg.network, c.address)
    # ---- checked (precheck above, which found the funds): mutate from here on ----
    led = engine.ledger
    user = _user(engine, c.account_id, c.asset, "available")
    total = c.amount_minor + c.fee_minor
    hold = led.hold(user, _system(engine, c.asset, "clearing"), total)
    w = WithdrawalRec(c.withdrawal_id, c.account_id, c.asset, c.wallet, address, c.amount_minor, c.fee_minor, hold,
                      engine.now_ns, c.email_token_hash, c.device_id, c.ip)
    s.withdrawals[w.id] = w
    return [_ev("withdrawal.requested", w.id, w.state, w.amount_minor, [f"hold {total} on {c.account_id}:available"])]


def _void(engine: Engine, w: WithdrawalRec, state: str, reason: str) -> CustodyEvent:
    _move_state(w, state)
    released = engine.ledger.release(w.hold_id)
    w.end_reason, w.ended_ns = reason, engine.now_ns
    return _ev(f"withdrawal.{state}", w.id, state, w.amount_minor, [reason, f"released {released}"])


class ConfirmWithdrawalEmail(Command, tag="custody.withdrawal.confirm_email/1"):
    withdrawal_id: str
    asset: str
    wallet: str
    token: str


@MODULE.handles(ConfirmWithdrawalEmail, effect=Effect.NEUTRAL, scopes=custody_scopes)
def _confirm_email(engine: Engine, c: ConfirmWithdrawalEmail) -> list[Event]:
    s = custody_state(engine)
    w = _withdrawal(s, c.withdrawal_id)
    _scoped(w, c.asset, c.wallet)
    if w.state != "requested":
        return [_ev("withdrawal.unchanged", w.id, w.state, w.amount_minor)]
    digest = hashlib.sha256(c.token.encode()).hexdigest()
    if not hmac.compare_digest(digest, w.email_token_hash):
        raise Forbidden("the confirmation link is not valid for this withdrawal", field="token")
    if engine.now_ns - w.created_ns > EMAIL_CONFIRM_TTL_NS:
        return [_void(engine, w, "failed", "the e-mail confirmation link expired (30 min); request again")]
    # The engine owns both the address book and the withdrawal, so the rule is here: where the book is
    # required, the destination must still be in it when the link is confirmed (the user may have
    # removed it after asking). Otherwise the withdrawal fails and its hold is released, from engine
    # state alone (deterministic on replay).
    if s.rules is not None and s.rules.require_address_book and \
            f"{w.account_id}|{w.asset}|{_norm(s.assets[w.asset].chain, w.address)}" not in s.address_book:
        return [_void(engine, w, "failed", "the destination was removed from your address book after the "
                                           "withdrawal was requested; add it again and request again")]
    _move_state(w, "confirmed")
    return [_ev("withdrawal.confirmed", w.id, w.state, w.amount_minor, ["e-mail confirmation received"])]


class RecordRiskReview(Command, tag="custody.withdrawal.risk_review/1"):
    withdrawal_id: str
    asset: str
    wallet: str
    score: int
    manual_review: bool
    reasons: list[str]


@MODULE.handles(RecordRiskReview, effect=Effect.NEUTRAL, scopes=custody_scopes)
def _risk(engine: Engine, c: RecordRiskReview) -> list[Event]:
    s = custody_state(engine)
    w = _withdrawal(s, c.withdrawal_id)
    _scoped(w, c.asset, c.wallet)
    if not 0 <= c.score <= 100 or len(c.reasons) > MAX_REASONS:
        raise ValidationError("score must be 0..100 with at most 20 reasons", field="score")
    if w.state != "confirmed":
        return [_ev("withdrawal.unchanged", w.id, w.state, w.amount_minor)]
    reasons = [_text(r, "reasons") for r in c.reasons]
    _move_state(w, "reviewed")
    w.risk_score, w.manual_review, w.risk_reasons = c.score, c.manual_review, reasons
    return [_ev("withdrawal.reviewed", w.id, w.state, w.amount_minor, [f"risk score {c.score}", *c.reasons])]


def policy_facts(engine: Engine, w: WithdrawalRec) -> Facts:
    """The facts the policy sees, from engine state only (deterministic)."""
    s = custody_state(engine)
    led = engine.ledger
    chain = s.assets[w.asset].chain
    added = s.address_book.get(f"{w.account_id}|{w.asset}|{_norm(chain, w.address)}")
    policy = s.policy()
    windows = policy.velocity_windows() if policy else set()
    counted = [x for x in s.withdrawals.values() if x.id != w.id and x.asset == w.asset
               and x.state not in ("failed", "denied", "rejected")]
    uv = {win: sum(x.amount_minor for x in counted if x.account_id == w.account_id and x.created_ns > engine.now_ns - win * 10**9)
          for win in windows}
    wv = {win: sum(x.amount_minor for x in counted if x.wallet == w.wallet and x.created_ns > engine.now_ns - win * 10**9)
          for win in windows}
    user = led.find(w.account_id, w.asset, "available", "spot")
    # The user's balance before this withdrawal's hold.
    bal = (user.available if user else 0) + led.hold_remaining(w.hold_id)
    custody = led.find(SYSTEM_OWNER, w.asset, "custody", w.wallet)  # a read: never opens the account
    return Facts(asset=w.asset, amount_minor=w.amount_minor, wallet=w.wallet, wallet_tier=s.wallets[w.wallet].tier,
                 wallet_balance_minor=custody.balance if custody is not None else 0, user_balance_minor=bal,
                 allow_listed=added is not None,
                 allow_list_age_s=-1 if added is None else (engine.now_ns - added) // 10**9,
                 risk_score=w.risk_score, manual_review_flagged=w.manual_review,
                 user_velocity_minor=uv, wallet_velocity_minor=wv)


class DecideWithdrawal(Command, tag="custody.withdrawal.decide/1"):
    withdrawal_id: str
    asset: str
    wallet: str


@MODULE.handles(DecideWithdrawal, effect=Effect.NEUTRAL, scopes=custody_scopes)
def _decide(engine: Engine, c: DecideWithdrawal) -> list[Event]:
    s = custody_state(engine)
    w = _withdrawal(s, c.withdrawal_id)
    _scoped(w, c.asset, c.wallet)
    if w.state != "reviewed":
        return [_ev("withdrawal.unchanged", w.id, w.state, w.amount_minor)]
    facts = policy_facts(engine, w)
    d = evaluate(s.policy(), facts)
    w.facts_json = msgspec.json.encode({"id": w.id, "decision": "", **dataclasses.asdict(facts)}).decode()
    action, reasons = d.action, list(d.reasons)
    if w.manual_review and action in ("allow", "approvals", "delay"):
        action = "manual_review"
        reasons.append("risk review requires manual review (overrides the rule's action)")
    w.decision, w.rule, w.decision_reasons = action, d.rule, reasons
    label = f"rule {d.rule!r}" if d.rule else "default"
    if action == "deny":
        return [_void(engine, w, "denied", f"denied by {label}: " + "; ".join(reasons))]
    if action == "manual_review":
        _move_state(w, "manual_review")
    elif action == "approvals":
        _move_state(w, "awaiting_approvals")
        w.required_approvals, w.approver_roles = d.approvals, list(d.roles)
        w.not_before_ns = engine.now_ns + d.delay_s * 10**9
    else:
        _move_state(w, "approved")
        w.not_before_ns = engine.now_ns + d.delay_s * 10**9
    return [_ev("withdrawal.decided", w.id, w.state, w.amount_minor, [f"{action} by {label}", *reasons])]


def _valid_approvals(w: WithdrawalRec, now_ns: int) -> list[ApprovalRec]:
    return [a for a in w.approvals if a.expires_ns > now_ns]


class ApproveWithdrawal(Command, tag="custody.withdrawal.approve/1"):
    withdrawal_id: str
    asset: str
    wallet: str
    approver: str
    role: str


@MODULE.handles(ApproveWithdrawal, precheck=refuse_unsigned, effect=Effect.MOVES_FUNDS_OUT, scopes=custody_scopes)
def _approve(engine: Engine, c: ApproveWithdrawal) -> list[Event]:
    s = custody_state(engine)
    w = _withdrawal(s, c.withdrawal_id)
    _scoped(w, c.asset, c.wallet)
    if c.approver == w.account_id:
        raise Forbidden("the initiator never approves their own withdrawal", field="approver")
    if c.role not in s.approvers.get(c.approver, []):
        raise Forbidden(f"{c.approver} does not hold role {c.role!r}", field="role")
    if w.state != "awaiting_approvals":
        raise Conflict(f"withdrawal is {w.state}, not awaiting approvals", field="withdrawal_id")
    if c.role not in w.approver_roles:
        raise Forbidden(f"this withdrawal needs approvals from {w.approver_roles}", field="role")
    policy = s.policy()
    ttl_ns = (policy.approval_ttl_s if policy else 86400) * 10**9
    w.approvals = [a for a in w.approvals if a.approver != c.approver]
    w.approvals.append(ApprovalRec(c.approver, c.role, engine.now_ns, engine.now_ns + ttl_ns))
    valid = _valid_approvals(w, engine.now_ns)
    if len(valid) >= w.required_approvals:
        _move_state(w, "approved")
        w.not_before_ns = max(w.not_before_ns, engine.now_ns)
    return [_ev("withdrawal.approved_by", w.id, w.state, w.amount_minor, [f"{c.approver} ({c.role}): {len(valid)}/{w.required_approvals}"])]


class ResolveManualReview(Command, tag="custody.withdrawal.manual_review/1"):
    withdrawal_id: str
    asset: str
    wallet: str
    analyst: str
    approve: bool
    reason: str


@MODULE.handles(ResolveManualReview, precheck=refuse_unsigned, effect=Effect.NEUTRAL, scopes=custody_scopes)
def _manual(engine: Engine, c: ResolveManualReview) -> list[Event]:
    s = custody_state(engine)
    w = _withdrawal(s, c.withdrawal_id)
    _scoped(w, c.asset, c.wallet)
    if c.analyst == w.account_id:
        raise Forbidden("the initiator never reviews their own withdrawal", field="analyst")
    if "analyst" not in s.approvers.get(c.analyst, []):
        raise Forbidden(f"{c.analyst} does not hold the analyst role", field="analyst")
    reason = _text(c.reason, "reason")
    if not reason.strip():
        raise ValidationError("a manual review decision needs a reason", field="reason")
    if w.state != "manual_review":
        raise Conflict(f"withdrawal is {w.state}, not in manual review", field="withdrawal_id")
    w.reviewed_by = c.analyst
    if not c.approve:
        return [_void(engine, w, "rejected", f"rejected by {c.analyst}: {reason}")]
    _move_state(w, "approved")
    w.not_before_ns = max(w.not_before_ns, engine.now_ns)
    return [_ev("withdrawal.review_approved", w.id, w.state, w.amount_minor, [f"{c.analyst}: {reason}"])]


class AuthorizeSigning(Command, tag="custody.withdrawal.authorize_signing/1"):
    withdrawal_id: str
    asset: str
    wallet: str


@MODULE.handles(AuthorizeSigning, effect=Effect.MOVES_FUNDS_OUT, scopes=custody_scopes)
def _authorize(engine: Engine, c: AuthorizeSigning) -> list[Event]:
    s = custody_state(engine)
    w = _withdrawal(s, c.withdrawal_id)
    _scoped(w, c.asset, c.wallet)
    if w.state in ("signing", "signed", "broadcast", "settled"):
        return [_ev("withdrawal.unchanged", w.id, w.state, w.amount_minor)]
    if w.state != "approved":
        raise Conflict(f"withdrawal is {w.state}, not approved", field="withdrawal_id")
    if w.account_id in s.withdrawals_frozen:
        raise Forbidden(f"withdrawals are frozen: {s.withdrawals_frozen[w.account_id]}", field="account_id")
    if engine.now_ns < w.not_before_ns:
        raise Conflict(f"delayed by policy for {(w.not_before_ns - engine.now_ns) // 10**9} more s", field="withdrawal_id")
    if w.required_approvals and len(_valid_approvals(w, engine.now_ns)) < w.required_approvals:
        # Approvals expired before signing: ask for them again.
        w.state = "awaiting_approvals"
        return [_ev("withdrawal.approvals_expired", w.id, w.state, w.amount_minor)]
    _move_state(w, "signing")
    wallet = s.wallets[w.wallet]
    if wallet.chain == "ethereum":
        w.nonce = wallet.next_nonce
        wallet.next_nonce += 1
    return [_ev("withdrawal.signing", w.id, w.state, w.amount_minor, [f"nonce {w.nonce}"] if w.nonce >= 0 else [])]


class RecordSignedTx(Command, tag="custody.withdrawal.signed_tx/1"):
    """Journaled BEFORE broadcast: after this, a restart can only re-send this exact transaction."""

    withdrawal_id: str
    asset: str
    wallet: str
    txid: str
    raw_tx: str  # hex
    network_fee_minor: int


@MODULE.handles(RecordSignedTx, effect=Effect.MOVES_FUNDS_OUT, scopes=custody_scopes)
def _signed(engine: Engine, c: RecordSignedTx) -> list[Event]:
    s = custody_state(engine)
    w = _withdrawal(s, c.withdrawal_id)
    _scoped(w, c.asset, c.wallet)
    if w.txid:
        if w.txid == c.txid:
            return [_ev("withdrawal.unchanged", w.id, w.state, w.amount_minor)]
        raise Conflict(f"withdrawal already has signed transaction {w.txid}", field="txid")
    if w.state != "signing":
        raise Conflict(f"withdrawal is {w.state}, not signing", field="withdrawal_id")
    if not c.txid or len(c.raw_tx) > MAX_RAW_TX_HEX:
        raise ValidationError("a txid and at most 100 kB of raw transaction are required", field="raw_tx")
    _check_amount(c.network_fee_minor, "network_fee_minor", allow_zero=True)
    _move_state(w, "signed")
    w.txid, w.raw_tx, w.network_fee_minor = c.txid, c.raw_tx, c.network_fee_minor
    return [_ev("withdrawal.signed", w.id, w.state, w.amount_minor, [c.txid])]


#: Most withdrawals one batched transaction pays (`RecordSignedBatch`).
MAX_BATCH = 100


class RecordSignedBatch(Command, tag="custody.withdrawal.signed_batch/1"):
    """One transaction paying several withdrawals of one wallet (Bitcoin batching: one output each,
    change back to the wallet). Journaled BEFORE broadcast, for all of them at once or for none: a
    crash can never leave part of a batch recorded and the rest free to be signed into a second
    transaction. `network_fees_minor[i]` is withdrawal i's share of the transaction's fee (the shares
    add up to the fee, so the wallet's custody account follows the chain when they settle)."""

    asset: str
    wallet: str
    txid: str
    raw_tx: str  # hex
    withdrawal_ids: list[str]
    network_fees_minor: list[int]


@MODULE.handles(RecordSignedBatch, effect=Effect.MOVES_FUNDS_OUT, scopes=custody_scopes)
def _signed_batch(engine: Engine, c: RecordSignedBatch) -> list[Event]:
    s = custody_state(engine)
    ids = list(c.withdrawal_ids)
    if not 2 <= len(ids) <= MAX_BATCH or len(set(ids)) != len(ids):
        raise ValidationError(f"a batch pays 2..{MAX_BATCH} distinct withdrawals", field="withdrawal_ids")
    if len(c.network_fees_minor) != len(ids):
        raise ValidationError("one fee share per withdrawal", field="network_fees_minor")
    if not c.txid or len(c.raw_tx) > MAX_RAW_TX_HEX:
        raise ValidationError("a txid and at most 100 kB of raw transaction are required", field="raw_tx")
    for n, fee in enumerate(c.network_fees_minor):
        _check_amount(fee, f"network_fees_minor[{n}]", allow_zero=True)
    ws = [_withdrawal(s, wid) for wid in ids]
    for w in ws:
        _scoped(w, c.asset, c.wallet)
    if all(w.txid == c.txid for w in ws):
        return [_ev("withdrawal.unchanged", w.id, w.state, w.amount_minor) for w in ws]
    for w in ws:  # every check before any change: all of the batch or none of it
        if w.txid:
            raise Conflict(f"withdrawal {w.id} already has signed transaction {w.txid}", field="withdrawal_ids")
        if w.state != "signing":
            raise Conflict(f"withdrawal {w.id} is {w.state}, not signing", field="withdrawal_ids")
    out: list[Event] = []
    for w, fee in zip(ws, c.network_fees_minor):
        _move_state(w, "signed")
        w.txid, w.raw_tx, w.network_fee_minor = c.txid, c.raw_tx, fee
        out.append(_ev("withdrawal.signed", w.id, w.state, w.amount_minor, [c.txid, f"batch of {len(ws)}"]))
    return out


class RecordBroadcast(Command, tag="custody.withdrawal.broadcast/1"):
    withdrawal_id: str
    asset: str
    wallet: str
    txid: str


@MODULE.handles(RecordBroadcast, effect=Effect.NEUTRAL, scopes=custody_scopes)
def _broadcast(engine: Engine, c: RecordBroadcast) -> list[Event]:
    s = custody_state(engine)
    w = _withdrawal(s, c.withdrawal_id)
    _scoped(w, c.asset, c.wallet)
    if c.txid != w.txid:
        raise Conflict(f"withdrawal's transaction is {w.txid or 'not signed'}", field="txid")
    if w.state != "signed":
        return [_ev("withdrawal.unchanged", w.id, w.state, w.amount_minor)]
    _move_state(w, "broadcast")
    return [_ev("withdrawal.broadcast", w.id, w.state, w.amount_minor, [c.txid])]


class SettleWithdrawal(Command, tag="custody.withdrawal.settle/1"):
    withdrawal_id: str
    asset: str
    wallet: str
    txid: str
    confirmations: int
    network_fee_minor: int
    #: A token withdrawal's network fee is paid in the chain's native asset (ETH gas for USDT):
    #: that asset and amount leave the same wallet (`custody:<wallet>:<gas_asset> -> onchain`).
    gas_asset: str = ""
    gas_fee_minor: int = 0


@MODULE.handles(SettleWithdrawal, effect=Effect.NEUTRAL, scopes=custody_scopes)
def _settle(engine: Engine, c: SettleWithdrawal) -> list[Event]:
    s = custody_state(engine)
    w = _withdrawal(s, c.withdrawal_id)
    _scoped(w, c.asset, c.wallet)
    if w.state == "settled":
        return [_ev("withdrawal.unchanged", w.id, w.state, w.amount_minor)]
    if c.txid != w.txid or w.state not in IN_FLIGHT_STATES:
        raise Conflict(f"withdrawal is {w.state} with transaction {w.txid or 'none'}", field="txid")
    need = s.assets[w.asset].finality_confirmations
    if c.confirmations < need:
        raise Conflict(f"needs {need} confirmations, has {c.confirmations}", field="confirmations")
    fee_paid = _check_amount(c.network_fee_minor, "network_fee_minor", allow_zero=True)
    gas = _check_amount(c.gas_fee_minor, "gas_fee_minor", allow_zero=True)
    if c.gas_asset and (c.gas_asset == w.asset or c.gas_asset not in s.assets
                        or s.assets[c.gas_asset].chain != s.assets[w.asset].chain):
        raise ValidationError(f"must be the native asset of {s.assets[w.asset].chain}, not {c.gas_asset!r}", field="gas_asset")
    if gas and not c.gas_asset:
        raise ValidationError("a gas fee needs its asset", field="gas_asset")
    _room(engine, 3)  # the wallet's custody accounts and onchain, if this is their first movement
    led = engine.ledger
    _move_state(w, "settled")
    total = w.amount_minor + w.fee_minor
    led.capture(w.hold_id, total)
    clearing = _system(engine, w.asset, "clearing")
    led.move(clearing, led.world(w.asset), w.amount_minor)
    led.move(clearing, led.fees(w.asset, "spot"), w.fee_minor)
    led.move(led.custody(w.asset, w.wallet), _system(engine, w.asset, "onchain"), w.amount_minor + fee_paid)
    if gas:
        led.move(led.custody(c.gas_asset, w.wallet), _system(engine, c.gas_asset, "onchain"), gas)
    w.network_fee_minor, w.confirmations, w.ended_ns = fee_paid, c.confirmations, engine.now_ns
    return [_ev("withdrawal.settled", w.id, w.state, w.amount_minor, [c.txid, f"network fee {fee_paid}"])]


class FailWithdrawal(Command, tag="custody.withdrawal.fail/1"):
    """Void the hold. After signing only when the chain shows the transaction cannot confirm.

    A withdrawal paid by a batch (`RecordSignedBatch`) fails with its whole batch: every open
    withdrawal with the same transaction is voided in this one command. A member left signed or
    broadcast could re-send the bytes that still pay the refunded ones (paid twice). Refused
    (Conflict) once a member has settled: the transaction is then known to have confirmed."""

    withdrawal_id: str
    asset: str
    wallet: str
    reason: str


@MODULE.handles(FailWithdrawal, effect=Effect.NEUTRAL, scopes=custody_scopes)
def _fail(engine: Engine, c: FailWithdrawal) -> list[Event]:
    s = custody_state(engine)
    w = _withdrawal(s, c.withdrawal_id)
    _scoped(w, c.asset, c.wallet)
    if w.state not in OPEN_STATES:
        return [_ev("withdrawal.unchanged", w.id, w.state, w.amount_minor)]
    reason = _text(c.reason, "reason")
    members = same_transaction(s, w)
    for m in members:  # every check before any change: the batch moves together
        if m.state == "settled":
            raise Conflict(f"withdrawal {m.id} of the same transaction {w.txid} settled: it confirmed",
                           field="withdrawal_id")
    out: list[Event] = []
    for m in members:
        if m.state not in OPEN_STATES:
            continue
        out.append(_void(engine, m, "failed", reason if m is w else f"{reason} (batch with {w.id})"))
        if m.rule == "return-to-sender":  # the deposit goes back to analysts, as after a rejected return
            from .refund_cmds import undo_return

            undo_return(engine, m)
    return out


def same_transaction(s: CustodyState, w: WithdrawalRec) -> list[WithdrawalRec]:
    """`w` first, then the other withdrawals its signed transaction pays (a Bitcoin batch), in id order."""
    if not w.txid:
        return [w]
    others = sorted((o for o in s.withdrawals.values() if o.txid == w.txid and o is not w
                     and o.asset == w.asset and o.wallet == w.wallet), key=lambda o: o.id)
    return [w, *others]


class CancelWithdrawal(Command, tag="custody.withdrawal.cancel/1"):
    withdrawal_id: str
    asset: str
    wallet: str
    account_id: str


@MODULE.handles(CancelWithdrawal, effect=Effect.NEUTRAL, scopes=custody_scopes)
def _cancel(engine: Engine, c: CancelWithdrawal) -> list[Event]:
    s = custody_state(engine)
    w = _withdrawal(s, c.withdrawal_id)
    _scoped(w, c.asset, c.wallet)
    if w.account_id != c.account_id:
        raise Forbidden("only the requester can cancel", field="account_id")
    if w.rule == "return-to-sender":
        raise Conflict("a return to sender was decided by analysts; the user cannot cancel it", field="withdrawal_id")
    if w.state not in OPEN_STATES:
        return [_ev("withdrawal.unchanged", w.id, w.state, w.amount_minor)]
    if w.state in ("signing", "signed", "broadcast"):
        raise Conflict("the withdrawal is being signed or sent and can no longer be cancelled", field="withdrawal_id")
    return [_void(engine, w, "failed", "cancelled by the user")]
