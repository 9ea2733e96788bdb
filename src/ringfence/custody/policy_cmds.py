"""Approvers and the withdrawal policy: roles, and policy changes proposed, approved by a quorum
and activated after a delay."""

from __future__ import annotations

from ..engine.commands import Command, Event
from ..engine.core import Engine
from ..engine.module import Effect
from .module import MODULE, custody_scopes
from ..errors import Conflict, Forbidden, NotFound, ValidationError
from ..ledger.model import validate_owner
from .policy import parse_policy
from .retired import refuse_unsigned
from .state import (
    POLICY_DELAY_NS,
    POLICY_QUORUM,
    ProposalRec,
    _check_id,
    _ev,
    custody_state,
)

__all__ = ["SetApprover", "ProposePolicy", "ApprovePolicy", "ActivatePolicy"]


# ------------------------------------------------------------------------ approvers and policy


class SetApprover(Command, tag="custody.approver.set/1"):
    approver: str
    roles: list[str]


@MODULE.handles(SetApprover, precheck=refuse_unsigned, effect=Effect.ADMIN, scopes=custody_scopes)
def _set_approver(engine: Engine, c: SetApprover) -> list[Event]:
    validate_owner(c.approver, "approver")
    if len(c.roles) > 10 or not all(isinstance(r, str) and 1 <= len(r) <= 32 for r in c.roles):
        raise ValidationError("at most 10 role names of 1-32 characters", field="roles")
    custody_state(engine).approvers[c.approver] = sorted(set(c.roles))
    return [_ev("approver.set", c.approver, ",".join(sorted(set(c.roles))))]


class ProposePolicy(Command, tag="custody.policy.propose/1"):
    proposal_id: str
    proposer: str
    policy_json: str


def _pre_propose(engine: Engine, c: ProposePolicy) -> None:
    _check_id(c.proposal_id, "proposal_id")
    s = custody_state(engine)
    if "policy_admin" not in s.approvers.get(c.proposer, []):
        raise Forbidden(f"{c.proposer} does not hold the policy_admin role", field="proposer")
    parse_policy(c.policy_json)


@MODULE.handles(ProposePolicy, precheck=refuse_unsigned, effect=Effect.ADMIN, scopes=custody_scopes)
def _propose(engine: Engine, c: ProposePolicy) -> list[Event]:
    s = custody_state(engine)
    p = s.proposals.get(c.proposal_id)
    if p is not None:
        if p.text == parse_policy(c.policy_json).text and p.proposer == c.proposer:
            return [_ev("policy.unchanged", c.proposal_id, p.state)]
        raise Conflict("this proposal id is taken", field="proposal_id")
    _pre_propose(engine, c)
    s.proposals[c.proposal_id] = ProposalRec(c.proposal_id, c.proposer, parse_policy(c.policy_json).text, engine.now_ns)
    # The first policy of a fresh shard (no policy yet) still needs the quorum, but no delay.
    return [_ev("policy.proposed", c.proposal_id, "proposed", 0, [f"needs {POLICY_QUORUM} approvals other than {c.proposer}"])]


class ApprovePolicy(Command, tag="custody.policy.approve/1"):
    proposal_id: str
    approver: str


@MODULE.handles(ApprovePolicy, precheck=refuse_unsigned, effect=Effect.ADMIN, scopes=custody_scopes)
def _approve_policy(engine: Engine, c: ApprovePolicy) -> list[Event]:
    s = custody_state(engine)
    p = s.proposals.get(c.proposal_id)
    if p is None:
        raise NotFound(f"no policy proposal {c.proposal_id!r}", field="proposal_id")
    if "policy_admin" not in s.approvers.get(c.approver, []):
        raise Forbidden(f"{c.approver} does not hold the policy_admin role", field="approver")
    if c.approver == p.proposer:
        raise Forbidden("the proposer cannot approve their own policy change", field="approver")
    if p.state != "proposed":
        return [_ev("policy.unchanged", p.id, p.state)]
    if c.approver not in p.approvals:
        p.approvals.append(c.approver)
    if len(p.approvals) >= POLICY_QUORUM:
        p.state = "scheduled"
        p.effective_ns = engine.now_ns + (POLICY_DELAY_NS if s.policy_text else 0)
        return [_ev("policy.scheduled", p.id, p.state, 0, [f"takes effect at {p.effective_ns} ns"])]
    return [_ev("policy.approved", p.id, p.state, 0, [f"{len(p.approvals)}/{POLICY_QUORUM} approvals"])]


class ActivatePolicy(Command, tag="custody.policy.activate/1"):
    proposal_id: str


def _proposed_after(a: ProposalRec, b: ProposalRec) -> bool:
    """`a` was proposed after `b` (sequencer time; the id orders two proposals of one batch)."""
    return (a.proposed_ns, a.id) > (b.proposed_ns, b.id)


@MODULE.handles(ActivatePolicy, effect=Effect.ADMIN, scopes=custody_scopes)
def _activate_policy(engine: Engine, c: ActivatePolicy) -> list[Event]:
    s = custody_state(engine)
    p = s.proposals.get(c.proposal_id)
    if p is None:
        raise NotFound(f"no policy proposal {c.proposal_id!r}", field="proposal_id")
    if p.state == "active":
        return [_ev("policy.unchanged", p.id, p.state)]
    if p.state != "scheduled":
        raise Conflict(f"proposal is {p.state}; it needs {POLICY_QUORUM} approvals first", field="proposal_id")
    if engine.now_ns < p.effective_ns:
        raise Conflict(f"the policy takes effect in {(p.effective_ns - engine.now_ns) // 10**9} s", field="proposal_id")
    for other in s.proposals.values():
        # the active policy and every older proposal still waiting are superseded: none of them can
        # be switched on later behind the new one's back (a rollback is a new proposal, with its
        # approvals and delay)
        if other is not p and (other.state == "active" or (other.state in ("proposed", "scheduled") and _proposed_after(p, other))):
            other.state = "superseded"
    p.state = "active"
    s.policy_text = p.text
    s._policy = None
    return [_ev("policy.activated", p.id, "active")]
