"""Custody decisions made by staff, each signed by the staff member who makes it.

These replace commands that carried a bare name anyone could claim (`ApproveWithdrawal/1`,
`ResolveManualReview/1`, `ReviewQuarantine/1`, `ProposePolicy/1`, `ApprovePolicy/1` and
`SetApprover`, which granted any role without a check). The old ones still decode and replay as
they did; a new submission is refused at the edge (`refuse_unsigned`). Who holds which role is the
staff register's business now (`ringfence.staff`).

Each command carries one `StaffSignature` over a canonical subject naming exactly what is decided
(for a withdrawal approval: id, role, asset, wallet, address and amount — what the approver saw),
verified in the engine by `staff.check_decision` (registered, active, role held, not expired,
nonce unused, signature valid). On top, segregation of duties:

* `never-the-initiator`: a staff member never approves, rejects or reviews their own withdrawal
  or deposit (a staff id that is also a user's account id), nor approves their own policy proposal;
* `distinct-people`: a withdrawal counts one unexpired approval per person, whatever roles they
  hold (a second approval under another role is refused);
* `policy-role`: the role an approver signs as must be one the withdrawal's policy rule asks for;
* approvals expire after the active policy's `approval_ttl_s` (checked again before signing).

Every check runs before anything changes: a refusal leaves the state hash unchanged.
"""

from __future__ import annotations

import hashlib
from typing import Any

from ..engine.commands import Command, Event
from ..engine.core import Engine
from ..engine.module import Effect
from ..errors import Conflict, NotFound, ValidationError
from ..staff.decisions import ANALYST, APPROVER, POLICY_ADMIN, StaffSignature
from ..staff.state import StaffRefused, check_decision, consume, not_initiator
from .deposit_cmds import _known_deposit, check_reviewable, release_or_freeze
from .module import MODULE, custody_scopes, deposit_scopes
from .policy import parse_policy
from .state import POLICY_DELAY_NS, POLICY_QUORUM, ProposalRec, _check_id, _ev, _move_state, _room, _scoped, _text, _withdrawal, custody_state
from .withdrawal_cmds import _valid_approvals, _void
from .retired import refuse_unsigned
from .withdrawals import ApprovalRec

__all__ = [
    "ApproveWithdrawalSigned",
    "RejectWithdrawal",
    "ResolveManualReviewSigned",
    "ReviewQuarantineSigned",
    "ProposePolicySigned",
    "ApprovePolicySigned",
    "refuse_unsigned",
    "approve_subject",
    "reject_subject",
    "manual_review_subject",
    "quarantine_subject",
    "propose_subject",
    "policy_approve_subject",
]

MAX_REASON = 1_000


# ------------------------------------------------------------------------------- subjects


def approve_subject(w: Any, role: str) -> list[Any]:
    return [w.id, role, w.asset, w.wallet, w.address, w.amount_minor]


def reject_subject(w: Any, reason: str) -> list[Any]:
    return [w.id, w.asset, w.wallet, w.amount_minor, reason]


def manual_review_subject(w: Any, approve: bool, reason: str) -> list[Any]:
    return [w.id, w.asset, w.wallet, w.amount_minor, "approve" if approve else "reject", reason]


def quarantine_subject(key: str, amount_minor: int, decision: str, reason: str) -> list[Any]:
    return [key, amount_minor, decision, reason]


def policy_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def propose_subject(proposal_id: str, policy_text: str) -> list[Any]:
    return [proposal_id, policy_digest(policy_text)]


def policy_approve_subject(proposal_id: str, policy_text: str) -> list[Any]:
    return [proposal_id, policy_digest(policy_text)]


def _reason(value: object, field: str = "reason") -> str:
    text = _text(value, field, MAX_REASON)
    if not text.strip():
        raise ValidationError("a decision needs a reason", field=field)
    return text


# ------------------------------------------------------------------------------- withdrawals


class ApproveWithdrawalSigned(Command, tag="custody.withdrawal.approve/2", frozen=True):
    withdrawal_id: str
    asset: str
    wallet: str
    role: str
    decision: StaffSignature


def _pre_approve(engine: Engine, c: ApproveWithdrawalSigned) -> None:
    s = custody_state(engine)
    w = _withdrawal(s, c.withdrawal_id)
    _scoped(w, c.asset, c.wallet)
    who = getattr(c.decision, "staff_id", "")
    not_initiator(engine, who, w.account_id, "withdrawal")
    if w.state != "awaiting_approvals":
        raise Conflict(f"withdrawal is {w.state}, not awaiting approvals", field="withdrawal_id")
    if c.role not in w.approver_roles:
        raise StaffRefused("policy-role", f"rule {w.rule!r} asks for approvals from {w.approver_roles}, not {c.role!r}",
                           field="role")
    check_decision(engine, "withdrawal.approve", approve_subject(w, c.role), c.decision, c.role)
    earlier = [a for a in _valid_approvals(w, engine.now_ns) if a.approver == who]
    if earlier:
        raise StaffRefused("distinct-people", f"{who!r} already approved this withdrawal (as {earlier[0].role}); "
                           "each person counts once, whatever roles they hold", field="decision")


@MODULE.handles(ApproveWithdrawalSigned, precheck=_pre_approve, effect=Effect.MOVES_FUNDS_OUT, scopes=custody_scopes)
def _approve(engine: Engine, c: ApproveWithdrawalSigned) -> list[Event]:
    _pre_approve(engine, c)
    consume(engine, [c.decision])
    s = custody_state(engine)
    w = s.withdrawals[c.withdrawal_id]
    policy = s.policy()
    ttl_ns = (policy.approval_ttl_s if policy else 86400) * 10**9
    who = c.decision.staff_id
    w.approvals = [a for a in w.approvals if a.approver != who]
    w.approvals.append(ApprovalRec(who, c.role, engine.now_ns, engine.now_ns + ttl_ns))
    valid = _valid_approvals(w, engine.now_ns)
    if len(valid) >= w.required_approvals:
        _move_state(w, "approved")
        w.not_before_ns = max(w.not_before_ns, engine.now_ns)
    return [_ev("withdrawal.approved_by", w.id, w.state, w.amount_minor,
                [f"{who} ({c.role}, signed): {len(valid)}/{w.required_approvals}"])]


class RejectWithdrawal(Command, tag="custody.withdrawal.reject/1", frozen=True):
    """An approver rejects a withdrawal awaiting approvals: its hold is released (one signature)."""

    withdrawal_id: str
    asset: str
    wallet: str
    reason: str
    decision: StaffSignature


def _pre_reject(engine: Engine, c: RejectWithdrawal) -> None:
    s = custody_state(engine)
    w = _withdrawal(s, c.withdrawal_id)
    _scoped(w, c.asset, c.wallet)
    reason = _reason(c.reason)
    not_initiator(engine, getattr(c.decision, "staff_id", ""), w.account_id, "withdrawal")
    if w.state != "awaiting_approvals":
        raise Conflict(f"withdrawal is {w.state}, not awaiting approvals", field="withdrawal_id")
    check_decision(engine, "withdrawal.reject", reject_subject(w, reason), c.decision, APPROVER)


@MODULE.handles(RejectWithdrawal, precheck=_pre_reject, effect=Effect.NEUTRAL, scopes=custody_scopes)
def _reject(engine: Engine, c: RejectWithdrawal) -> list[Event]:
    _pre_reject(engine, c)
    consume(engine, [c.decision])
    w = custody_state(engine).withdrawals[c.withdrawal_id]
    w.reviewed_by = c.decision.staff_id
    return [_void(engine, w, "rejected", f"rejected by {c.decision.staff_id}: {c.reason}")]


class ResolveManualReviewSigned(Command, tag="custody.withdrawal.manual_review/2", frozen=True):
    withdrawal_id: str
    asset: str
    wallet: str
    approve: bool
    reason: str
    decision: StaffSignature


def _pre_manual(engine: Engine, c: ResolveManualReviewSigned) -> None:
    s = custody_state(engine)
    w = _withdrawal(s, c.withdrawal_id)
    _scoped(w, c.asset, c.wallet)
    reason = _reason(c.reason)
    if not isinstance(c.approve, bool):
        raise ValidationError("approve must be true or false", field="approve")
    not_initiator(engine, getattr(c.decision, "staff_id", ""), w.account_id, "withdrawal")
    if w.state != "manual_review":
        raise Conflict(f"withdrawal is {w.state}, not in manual review", field="withdrawal_id")
    check_decision(engine, "withdrawal.manual_review", manual_review_subject(w, c.approve, reason), c.decision, ANALYST)


@MODULE.handles(ResolveManualReviewSigned, precheck=_pre_manual, effect=Effect.NEUTRAL, scopes=custody_scopes)
def _manual(engine: Engine, c: ResolveManualReviewSigned) -> list[Event]:
    _pre_manual(engine, c)
    consume(engine, [c.decision])
    w = custody_state(engine).withdrawals[c.withdrawal_id]
    who = c.decision.staff_id
    w.reviewed_by = who
    if not c.approve:
        voided = _void(engine, w, "rejected", f"rejected by {who}: {c.reason}")
        if w.rule == "return-to-sender":
            from .refund_cmds import undo_return

            undo_return(engine, w)
        return [voided]
    _move_state(w, "approved")
    w.not_before_ns = max(w.not_before_ns, engine.now_ns)
    return [_ev("withdrawal.review_approved", w.id, w.state, w.amount_minor, [f"{who} (signed): {c.reason}"])]


# ------------------------------------------------------------------------------- deposits


class ReviewQuarantineSigned(Command, tag="custody.deposit.review/2", frozen=True):
    chain: str
    txid: str
    index: int
    decision_kind: str  # release | freeze
    reason: str
    decision: StaffSignature


def _pre_quarantine(engine: Engine, c: ReviewQuarantineSigned) -> str:
    s, key, d = _known_deposit(engine, c)
    if c.decision_kind not in ("release", "freeze"):
        raise ValidationError("must be release or freeze", field="decision_kind")
    reason = _reason(c.reason)
    not_initiator(engine, getattr(c.decision, "staff_id", ""), d.account_id, "deposit")
    check_decision(engine, "deposit.review", quarantine_subject(key, d.amount_minor, c.decision_kind, reason),
                   c.decision, ANALYST)
    check_reviewable(d.state, c.decision_kind, "txid")
    if c.decision_kind == "release" and not d.declaration:
        raise Conflict("the user has not filed a source-of-funds declaration yet", field="decision_kind")
    if c.decision_kind == "release" and d.state == "frozen" and c.decision.staff_id in d.release_by:
        raise StaffRefused("distinct-people", f"{c.decision.staff_id!r} already signed this release; a second analyst "
                           "must decide", field="decision")
    _room(engine, 1)
    return key


#: Distinct analysts who must sign before a frozen deposit (a sanctions or exploit hit, or an analyst's
#: freeze) becomes spendable: the same quorum as its return to the sender (refund_cmds.RETURN_QUORUM).
#: A quarantined deposit (taint by hops) is released by one analyst.
RELEASE_FROZEN_QUORUM = 2


@MODULE.handles(ReviewQuarantineSigned, precheck=_pre_quarantine, effect=Effect.NEUTRAL, scopes=deposit_scopes)
def _review_quarantine(engine: Engine, c: ReviewQuarantineSigned) -> list[Event]:
    key = _pre_quarantine(engine, c)
    consume(engine, [c.decision])
    d = custody_state(engine).deposits[key]
    who = c.decision.staff_id
    if c.decision_kind == "release" and d.state == "frozen":
        d.release_by = [*d.release_by, who]
        if len(d.release_by) < RELEASE_FROZEN_QUORUM:
            return [_ev("deposit.release_signed", key, d.state, d.amount_minor,
                        [f"{who} (analyst, signed): {c.reason}", f"{len(d.release_by)}/{RELEASE_FROZEN_QUORUM} analysts"])]
        return release_or_freeze(engine, key, d, "release", ",".join(d.release_by), c.reason)
    return release_or_freeze(engine, key, d, c.decision_kind, who, c.reason)


# ------------------------------------------------------------------------------- policy


class ProposePolicySigned(Command, tag="custody.policy.propose/2", frozen=True):
    proposal_id: str
    policy_json: str
    decision: StaffSignature


def _pre_propose(engine: Engine, c: ProposePolicySigned) -> str:
    _check_id(c.proposal_id, "proposal_id")
    text = parse_policy(c.policy_json).text
    s = custody_state(engine)
    if c.proposal_id in s.proposals:
        raise Conflict("this proposal id is taken", field="proposal_id")
    check_decision(engine, "policy.propose", propose_subject(c.proposal_id, text), c.decision, POLICY_ADMIN)
    return text


@MODULE.handles(ProposePolicySigned, precheck=_pre_propose, effect=Effect.ADMIN, scopes=custody_scopes)
def _propose(engine: Engine, c: ProposePolicySigned) -> list[Event]:
    text = _pre_propose(engine, c)
    consume(engine, [c.decision])
    s = custody_state(engine)
    who = c.decision.staff_id
    s.proposals[c.proposal_id] = ProposalRec(c.proposal_id, who, text, engine.now_ns)
    return [_ev("policy.proposed", c.proposal_id, "proposed", 0,
                [f"proposed by {who} (signed); needs {POLICY_QUORUM} approvals by other policy admins"])]


class ApprovePolicySigned(Command, tag="custody.policy.approve/2", frozen=True):
    proposal_id: str
    decision: StaffSignature


def _pre_approve_policy(engine: Engine, c: ApprovePolicySigned) -> None:
    s = custody_state(engine)
    p = s.proposals.get(c.proposal_id)
    if p is None:
        raise NotFound(f"no policy proposal {c.proposal_id!r}", field="proposal_id")
    who = getattr(c.decision, "staff_id", "")
    if who == p.proposer:
        raise StaffRefused("never-the-initiator", "the proposer never approves their own policy change", field="decision")
    if p.state != "proposed":
        raise Conflict(f"proposal is {p.state}, not awaiting approvals", field="proposal_id")
    if who in p.approvals:
        raise StaffRefused("distinct-people", f"{who!r} already approved this proposal", field="decision")
    check_decision(engine, "policy.approve", policy_approve_subject(p.id, p.text), c.decision, POLICY_ADMIN)


@MODULE.handles(ApprovePolicySigned, precheck=_pre_approve_policy, effect=Effect.ADMIN, scopes=custody_scopes)
def _approve_policy(engine: Engine, c: ApprovePolicySigned) -> list[Event]:
    _pre_approve_policy(engine, c)
    consume(engine, [c.decision])
    s = custody_state(engine)
    p = s.proposals[c.proposal_id]
    p.approvals.append(c.decision.staff_id)
    if len(p.approvals) >= POLICY_QUORUM:
        p.state = "scheduled"
        p.effective_ns = engine.now_ns + (POLICY_DELAY_NS if s.policy_text else 0)
        return [_ev("policy.scheduled", p.id, p.state, 0, [f"takes effect at {p.effective_ns} ns"])]
    return [_ev("policy.approved", p.id, p.state, 0, [f"{len(p.approvals)}/{POLICY_QUORUM} approvals"])]
