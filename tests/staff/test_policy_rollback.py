"""An approved policy proposal cannot be switched on behind a newer one (a rollback through an old
approval): activating a proposal supersedes every older one still waiting, and an older proposal is
refused while a newer policy is in force. Activation through the admin API is the policy admins' step."""

from __future__ import annotations

import json

from ringfence.custody.commands import ActivatePolicy, custody_state
from ringfence.engine.core import CommandRejected

from .rig import POLICY, Rig, domain_hash

HOUR_NS = 3600 * 10**9
LENIENT = {"version": 1, "approval_ttl_s": 3600, "rules": [{"name": "allow-all", "when": {}, "action": {"type": "allow"}}]}


def _approved(r: Rig, pid: str, policy: dict, proposer: str, approvers: tuple[str, str]) -> None:
    r.run(r.desk.propose_policy(pid, json.dumps(policy), proposer))
    for who in approvers:
        r.run(r.desk.approve_policy(r.engine, pid, who))


def test_an_old_approved_proposal_cannot_roll_back_a_newer_policy() -> None:
    r = Rig().custody()
    _approved(r, "p_old", LENIENT, "pat", ("pia", "pol"))
    r.now += HOUR_NS
    strict = dict(POLICY, approval_ttl_s=1800)
    _approved(r, "p_new", strict, "pia", ("pat", "pol"))
    r.now += 25 * HOUR_NS
    r.run(ActivatePolicy("p_new"))
    states = {p.id: p.state for p in custody_state(r.engine).proposals.values()}
    # the older proposal, approved but never switched on, is superseded with the policy it replaced
    assert states == {"p1": "superseded", "p_old": "superseded", "p_new": "active"}, states
    r.now += 240 * HOUR_NS
    before = domain_hash(r.engine)
    events = r.apply(ActivatePolicy("p_old"))
    assert len(events) == 1 and isinstance(events[0], CommandRejected), events
    assert domain_hash(r.engine) == before
    assert json.loads(custody_state(r.engine).policy_text)["approval_ttl_s"] == 1800


def test_a_superseded_proposal_cannot_be_approved_back_to_life() -> None:
    r = Rig().custody()
    r.run(r.desk.propose_policy("p_old", json.dumps(LENIENT), "pat"))  # proposed, one approval short
    r.run(r.desk.approve_policy(r.engine, "p_old", "pia"))
    r.now += HOUR_NS
    _approved(r, "p_new", dict(POLICY, approval_ttl_s=1800), "pia", ("pat", "pol"))
    r.now += 25 * HOUR_NS
    r.run(ActivatePolicy("p_new"))
    assert custody_state(r.engine).proposals["p_old"].state == "superseded"
    before = domain_hash(r.engine)
    events = r.apply(r.desk.approve_policy(r.engine, "p_old", "pol"))
    assert len(events) == 1 and isinstance(events[0], CommandRejected), events
    assert domain_hash(r.engine) == before
