"""Withdrawal records, the state machine's legal transitions, and the risk review.

States (each transition is one journaled command, see withdrawal_cmds.py):

    requested ─ConfirmWithdrawalEmail─► confirmed ─RecordRiskReview─► reviewed ─DecideWithdrawal─►
        ├─ denied (hold voided)                       ├─ awaiting_approvals ─ApproveWithdrawal×N─► approved
        ├─ manual_review ─ResolveManualReview─► approved | rejected (voided)
        └─ approved (not_before_ns = now + delay)
    approved ─AuthorizeSigning (delay elapsed, approvals unexpired)─► signing
    approved (a return to sender) ─ScreenReturn (destination KYT hit)─► manual_review
    signing ─RecordSignedTx─► signed ─RecordBroadcast─► broadcast ─SettleWithdrawal─► settled (posted)
    any state before `signed` ─FailWithdrawal/CancelWithdrawal─► failed (voided)
    signed/broadcast ─FailWithdrawal (tx rejected/reverted/vanished)─► failed (voided); every
        open withdrawal of the same (batch) transaction fails in that command too

Invariants: a withdrawal holds its funds (a two-phase reservation `<user>:available ->
clearing`) from `requested` until it is settled (posted) or ends (voided) — exactly once. A
withdrawal has at most one signed transaction (its txid and raw bytes are journaled before any
broadcast), so a restart can only ever re-send that same transaction.

The risk review (`assess_risk`) is pure: the worker gathers facts (engine history + identity
facts such as the last credential change and device/IP novelty) and journals the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

__all__ = ["WithdrawalRec", "ApprovalRec", "RiskFacts", "RiskReview", "assess_risk", "TRANSITIONS", "OPEN_STATES",
           "IN_FLIGHT_STATES", "MANUAL_REVIEW_SHARE_BP", "confirmation_mail_params"]

TRANSITIONS: dict[str, tuple[str, ...]] = {
    "requested": ("confirmed", "failed"),
    "confirmed": ("reviewed", "failed"),
    "reviewed": ("denied", "awaiting_approvals", "manual_review", "approved", "failed"),
    "awaiting_approvals": ("approved", "rejected", "failed"),
    "manual_review": ("approved", "rejected", "failed"),
    "approved": ("signing", "manual_review", "failed"),  # manual_review: a return to a KYT-flagged sender
    "signing": ("signed", "failed"),
    "signed": ("broadcast", "settled", "failed"),
    "broadcast": ("settled", "failed"),
    "settled": (),
    "failed": (),
    "denied": (),
    "rejected": (),
}
#: Funds are held in these states.
OPEN_STATES = tuple(s for s, nxt in TRANSITIONS.items() if nxt)
#: A transaction exists and may be on the chain.
IN_FLIGHT_STATES = ("signed", "broadcast")
#: A withdrawal of at least this share of the user's balance to a new address needs a human.
MANUAL_REVIEW_SHARE_BP = 9_500


class ApprovalRec(msgspec.Struct, array_like=True):
    approver: str
    role: str
    at_ns: int
    expires_ns: int


class WithdrawalRec(msgspec.Struct, array_like=True):
    id: str
    account_id: str
    asset: str
    wallet: str
    address: str
    amount_minor: int
    fee_minor: int
    hold_id: int
    created_ns: int
    email_token_hash: str
    device_id: str
    ip: str
    state: str = "requested"
    risk_score: int = 0
    risk_reasons: list[str] = []
    manual_review: bool = False
    decision: str = ""
    rule: str = ""
    decision_reasons: list[str] = []
    required_approvals: int = 0
    approver_roles: list[str] = []
    approvals: list[ApprovalRec] = []
    not_before_ns: int = 0
    nonce: int = -1
    txid: str = ""
    raw_tx: str = ""  # hex
    network_fee_minor: int = 0
    confirmations: int = 0
    end_reason: str = ""
    ended_ns: int = 0
    reviewed_by: str = ""
    facts_json: str = ""  # the policy facts the decision saw (for `ringfence policy test --journal`)
    screened: bool = False  # a return to sender: destination KYT has looked at it (refund_cmds.ScreenReturn)


@dataclass(frozen=True)
class RiskFacts:
    amount_minor: int
    balance_minor: int  # the user's available balance before the hold
    past_amounts_minor: tuple[int, ...]  # the user's earlier settled withdrawals of this asset
    known_address: bool  # the user sent here before or allow-listed it
    seconds_since_credential_change: int  # -1 when never changed
    new_device: bool
    new_ip: bool


@dataclass(frozen=True)
class RiskReview:
    score: int
    manual_review: bool
    reasons: tuple[str, ...]


def assess_risk(f: RiskFacts) -> RiskReview:
    """Score a withdrawal 0..100 against the user's own history; every point has a reason."""
    score = 0
    reasons: list[str] = []
    share_bp = f.amount_minor * 10_000 // f.balance_minor if f.balance_minor > 0 else 10_000
    if f.past_amounts_minor:
        ordered = sorted(f.past_amounts_minor)
        median = ordered[len(ordered) // 2]
        if median > 0 and f.amount_minor > 5 * median:
            score += 25
            reasons.append(f"amount is {f.amount_minor * 10 // median / 10:.1f}x the user's median withdrawal")  # float-ok: display ratio only
        else:
            reasons.append("amount is in line with the user's history")
    else:
        score += 10
        reasons.append("first withdrawal of this asset")
    if share_bp >= 5_000:
        score += 15
        reasons.append(f"{share_bp / 100:.2f}% of the balance")  # float-ok: display only
    if not f.known_address:
        score += 20
        reasons.append("new destination address")
    if 0 <= f.seconds_since_credential_change < 7 * 86400:
        score += 20
        reasons.append(f"credentials changed {f.seconds_since_credential_change} s ago")
    if f.new_device:
        score += 10
        reasons.append("new device")
    if f.new_ip:
        score += 10
        reasons.append("new IP address")
    score = min(score, 100)
    manual = share_bp >= MANUAL_REVIEW_SHARE_BP and not f.known_address
    if manual:
        reasons.append(f"mandatory manual review: {share_bp / 100:.2f}% of the balance to a new address")  # float-ok: display only
    return RiskReview(score, manual, tuple(reasons))


# ---------------------------------------------------------------------------------- the gateway


def parse_withdrawal(engine: "Any", *, asset: str, address: str, amount: object) -> tuple[str, str, int]:
    """Edge validation of a user's withdrawal form: returns (asset, canonical address, amount_minor).

    `amount` is a decimal string; NaN, infinities, exponents, negatives, zero and too many decimals
    are refused with an error naming the field. Nothing is changed.
    """
    from ..errors import UnsupportedAsset
    from ..money import parse_amount
    from .commands import custody_state, validate_chain_address

    state = custody_state(engine)
    cfg = state.assets.get(asset) if isinstance(asset, str) else None
    if cfg is None:
        raise UnsupportedAsset(f"asset {asset!r} cannot be withdrawn; supported: {', '.join(sorted(state.assets))}",
                               field="asset")
    decimals = engine.ledger.assets.get(asset).decimals
    amount_minor = parse_amount(amount, decimals, field="amount", allow_zero=False)
    return asset, validate_chain_address(cfg.chain, cfg.network, address, "address"), amount_minor


def submit_withdrawal(node: "Any", ctx: "Any", session_token: object, *, asset: str, address: str, amount: object,
                      device_id: str = "", ip: str = "",
                      confirm_url: str = "https://ringfence.local/withdrawals/confirm") -> str:
    """Gateway side of `RequestWithdrawal`: identity checks (valid session, a second factor passed in
    the last 5 minutes, no freeze, no post-credential-change lock), edge validation, the hold (one
    journaled command), then the confirmation e-mail carrying the user's anti-phishing code. Returns
    the withdrawal id. A refused request leaves no hold and sends no mail."""
    import hashlib
    import secrets

    from sqlalchemy import select

    from ..identity import events, mail
    from ..money import format_amount
    from ..store.models import User
    from .commands import RequestWithdrawal, custody_state

    account_id = events.authorize_withdrawal(ctx, session_token)

    def edge(engine: Any) -> tuple[str, str, int, str, int, int]:  # one consistent read (Node.read)
        code, to, amount_minor = parse_withdrawal(engine, asset=asset, address=address, amount=amount)
        state = custody_state(engine)
        wallet = next((w.name for w in sorted(state.wallets.values(), key=lambda w: w.name)
                       if w.tier == "hot" and w.chain == state.assets[code].chain), "")
        return code, to, amount_minor, wallet, state.assets[code].withdrawal_fee_minor, engine.ledger.assets.get(code).decimals

    asset, address, amount_minor, wallet, fee_minor, decimals = node.read(edge)
    wid = "w-" + secrets.token_hex(8)
    token = secrets.token_urlsafe(24)
    node.execute(RequestWithdrawal(wid, account_id, asset, wallet, address, amount_minor,
                                   fee_minor, hashlib.sha256(token.encode()).hexdigest(),
                                   device_id[:128], ip[:64]))
    created_ns = node.read(lambda engine: custody_state(engine).withdrawals[wid].created_ns)
    with ctx.store.tx() as db:
        user = db.scalars(select(User).where(User.account_id == account_id)).first()
        assert user is not None
        # the account pays amount + fee; the address receives the amount
        mail.enqueue(ctx, db, user, "withdrawal_confirmation", confirmation_mail_params(
            format_amount(amount_minor + fee_minor, decimals, trim=True), format_amount(fee_minor, decimals, trim=True),
            format_amount(amount_minor, decimals, trim=True), asset, address, created_ns,
            f"{confirm_url}?id={wid}&token={token}", events.freeze_link(ctx, db, user, reason="withdrawal_requested")))
    return wid


def confirmation_mail_params(amount: str, fee: str, received: str, asset: str, address: str, created_ns: int,
                             link: str, freeze_link: str) -> dict[str, object]:
    """The `withdrawal_confirmation` e-mail's parameters (here and on the web session's withdraw page):
    the amount taken from the account, the fee and what the address receives (decimal strings of the
    engine's minor units), when the link stops working (`EMAIL_CONFIRM_TTL_NS` after the request: the
    engine voids it then) and the one-click freeze link for a reader who did not ask for it."""
    from .state import EMAIL_CONFIRM_TTL_NS

    return {"amount": amount, "fee": fee, "received": received, "asset": asset, "address": address, "link": link,
            "expires_at": (created_ns + EMAIL_CONFIRM_TTL_NS) // 10**9, "freeze_link": freeze_link}


_CREDENTIAL_SUFFIXES = ("_changed", "_added", "_removed", "_enabled", "_disabled", "_regenerated", "_created")


def identity_risk_facts(ctx: "Any", *, known_after_s: int = 86_400) -> "Any":
    """Risk facts from the identity store for `WithdrawalWorker(identity_facts=...)`:
    (seconds since the last credential change or -1, new device, new IP). A device is new when a
    `new_device_sign_in` happened in the last `known_after_s`; an IP is new when no sign-in older than
    that came from it."""
    from sqlalchemy import select

    from ..store.models import SecurityEvent, User

    def facts(w: WithdrawalRec) -> tuple[int, bool, bool]:
        now = ctx.now()
        with ctx.store.tx() as db:
            user = db.scalars(select(User).where(User.account_id == w.account_id)).first()
            if user is None:
                return (-1, True, True)
            rows = list(db.scalars(select(SecurityEvent).where(SecurityEvent.user_id == user.id)
                                   .order_by(SecurityEvent.at_s.desc()).limit(1000)))
        changes = [r.at_s for r in rows if r.kind.endswith(_CREDENTIAL_SUFFIXES)]
        since = now - changes[0] if changes else -1
        new_device = any(r.kind == "new_device_sign_in" and now - r.at_s < known_after_s for r in rows)
        old_ips = {r.ip for r in rows if r.kind == "sign_in" and now - r.at_s >= known_after_s}
        return (since, new_device, bool(w.ip) and w.ip not in old_ips)

    return facts
