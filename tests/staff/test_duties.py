"""Segregation of duties in the engine: one person cannot do alone what needs two, forged, replayed
and expired decisions are refused, and every refusal names its rule and changes nothing."""

from __future__ import annotations

import json

import pytest

from ringfence.custody.commands import ApproveWithdrawal, SetApprover, custody_state
from ringfence.errors import Forbidden, ValidationError
from ringfence.risk.halts import Halt, LiftHalt, LiftHaltSigned, RegisterOperators, halts_of
from ringfence.staff import AddStaff, StaffEntry, StaffKey, StaffSignature, staff_of
from ringfence.staff.state import MAX_DECISION_TTL_NS

from .rig import POLICY, Rig


def raised(rig: Rig, halt_id: str = "h1") -> None:
    rig.run(Halt(halt_id, "venue", "*", "HALTED", "reconciliation mismatch"))


# ------------------------------------------------------------------ one person alone


def test_approving_own_withdrawal_is_refused() -> None:
    rig = Rig().custody()
    w = rig.withdrawal("w-mal", 2 * 10**18, account="mal")
    assert w.state == "awaiting_approvals"
    rig.refused(rig.desk.approve_withdrawal(rig.engine, "w-mal", "mal", "approver"), "never-the-initiator")


def test_a_staff_member_never_decides_on_the_customer_account_they_hold() -> None:
    """Staff ids and customer account ids differ ("dora" vs "alice"): the accounts a member holds are
    registered with them, signed by the quorum, and never-the-initiator reads them."""
    rig = Rig().custody()
    dora = StaffKey.generate("dora")
    bad = rig.desk.add(rig.engine, dora, ["approver"], "hired", ["ada", "ben"])
    bad = AddStaff(StaffEntry("dora", ["approver"], dora.public_hex, ["alice", "alice"]), bad.proof, bad.reason, bad.approvals)
    with pytest.raises(ValidationError) as err:
        rig.engine.precheck(bad)
    assert err.value.field == "member.accounts"
    rig.run(rig.desk.add(rig.engine, dora, ["approver"], "hired", ["ada", "ben"], accounts=["alice"]))
    assert staff_of(rig.engine).members["dora"].accounts == ("alice",)
    rig.withdrawal("w-own", 2 * 10**18, account="alice")
    rig.refused(rig.desk.approve_withdrawal(rig.engine, "w-own", "dora", "approver"), "never-the-initiator")
    rig.withdrawal("w-other", 2 * 10**18, account="mal")  # another customer's withdrawal: dora may approve
    rig.run(rig.desk.approve_withdrawal(rig.engine, "w-other", "dora", "approver"))
    assert [a.approver for a in custody_state(rig.engine).withdrawals["w-other"].approvals] == ["dora"]


def test_two_roles_held_by_one_identity_count_once() -> None:
    rig = Rig().custody()
    rig.withdrawal("w1", 2 * 10**18)
    rig.run(rig.desk.approve_withdrawal(rig.engine, "w1", "mal", "approver"))
    rig.refused(rig.desk.approve_withdrawal(rig.engine, "w1", "mal", "operator"), "distinct-people")
    assert custody_state(rig.engine).withdrawals["w1"].state == "awaiting_approvals"
    rig.run(rig.desk.approve_withdrawal(rig.engine, "w1", "ben", "operator"))
    assert custody_state(rig.engine).withdrawals["w1"].state == "approved"


def test_lifting_a_halt_with_one_signature_when_the_quorum_is_two() -> None:
    rig = Rig()
    raised(rig)
    rig.refused(rig.desk.lift(rig.engine, "h1", "fixed", ["ada"]), "quorum")
    # the same person twice is still one person
    lift = rig.desk.lift(rig.engine, "h1", "fixed", ["ada"])
    twice = LiftHaltSigned("h1", "fixed", [lift.approvals[0], rig.desk.lift(rig.engine, "h1", "fixed", ["ada"]).approvals[0]])
    rig.refused(twice, "distinct-people")
    assert "h1" in halts_of(rig.engine).active
    rig.run(rig.desk.lift(rig.engine, "h1", "fixed", ["ada", "ben"]))
    assert "h1" not in halts_of(rig.engine).active


def test_adding_a_colluder_with_one_signature_is_refused() -> None:
    rig = Rig()
    colluder = StaffKey.generate("eve")
    rig.refused(rig.desk.add(rig.engine, colluder, ["approver"], "my friend", ["ada"]), "quorum")
    assert "eve" not in staff_of(rig.engine).members
    rig.run(rig.desk.add(rig.engine, colluder, ["approver"], "hired", ["ada", "ben"]))
    assert staff_of(rig.engine).members["eve"].status == "active"


def test_analyst_role_is_required_and_non_staff_are_unknown() -> None:
    rig = Rig().custody()
    w = rig.withdrawal("w2", 6 * 10**18)
    assert w.state == "manual_review"
    rig.refused(rig.desk.manual_review(rig.engine, "w2", "ada", True, "looks fine"), "role-required")
    stranger = StaffKey.generate("zed")
    rig.desk.keys["zed"] = stranger
    rig.refused(rig.desk.manual_review(rig.engine, "w2", "zed", True, "looks fine"), "staff-registered")
    rig.run(rig.desk.manual_review(rig.engine, "w2", "ana", True, "called the user"))
    assert custody_state(rig.engine).withdrawals["w2"].state == "approved"


def test_policy_admin_never_approves_own_proposal_and_roles_may_not_conflict() -> None:
    rig = Rig().custody()
    rig.run(rig.desk.propose_policy("p2", json.dumps(POLICY), "pat"))
    rig.refused(rig.desk.approve_policy(rig.engine, "p2", "pat"), "never-the-initiator")
    rig.refused(rig.desk.add(rig.engine, StaffKey.generate("dual"), ["policy_admin", "approver"], "both", ["ada", "ben"]),
                "conflicting-roles")


def test_removed_staff_can_no_longer_decide() -> None:
    rig = Rig()
    raised(rig)
    rig.run(rig.desk.remove(rig.engine, "cy", "left the company", ["ada", "ben"]))
    rig.refused(rig.desk.lift(rig.engine, "h1", "fixed", ["cy", "ada"]), "staff-active")
    # and the quorum can never become unreachable
    rig.run(rig.desk.remove(rig.engine, "mal", "left", ["ada", "ben"]))
    rig.refused(rig.desk.remove(rig.engine, "ben", "left", ["ada", "ben"]), "quorum-stays-reachable")


# ------------------------------------------------------------------ forged, replayed, expired


def test_forged_approval_is_refused() -> None:
    rig = Rig()
    raised(rig)
    good = rig.desk.lift(rig.engine, "h1", "fixed", ["ada", "ben"])
    impostor = StaffKey.generate("ben")  # claims ben's id, signs with another key
    forged = impostor.sign("halt.lift", ["h1", "fixed", halts_of(rig.engine).active["h1"].raised_seq], good.approvals[1].expires_ns)
    rig.refused(LiftHaltSigned("h1", "fixed", [good.approvals[0], forged]), "signature-valid")
    # a genuine signature for another reason (another decision) does not verify either
    other = rig.desk.lift(rig.engine, "h1", "something else", ["ben"]).approvals[0]
    rig.refused(LiftHaltSigned("h1", "fixed", [good.approvals[0], other]), "signature-valid")


def test_replayed_approval_is_refused() -> None:
    rig = Rig()
    raised(rig)
    lift = rig.desk.lift(rig.engine, "h1", "fixed", ["ada", "ben"])
    rig.run(lift)
    raised(rig)  # the same halt id again: a new raise, and the old signatures cannot lift it
    rig.refused(lift, "nonce-once")
    # same nonces re-signed over the new raise: still refused (the nonce is spent)
    seq = halts_of(rig.engine).active["h1"].raised_seq
    resigned = [rig.keys[a.staff_id].sign("halt.lift", ["h1", "fixed", seq], a.expires_ns, a.nonce) for a in lift.approvals]
    rig.refused(LiftHaltSigned("h1", "fixed", resigned), "nonce-once")


def test_expired_approval_is_refused() -> None:
    rig = Rig().custody()
    rig.withdrawal("w1", 2 * 10**18)
    w = custody_state(rig.engine).withdrawals["w1"]
    from ringfence.custody.staff_cmds import ApproveWithdrawalSigned, approve_subject

    late = rig.keys["ada"].sign("withdrawal.approve", approve_subject(w, "approver"), rig.now)  # expires now
    rig.refused(ApproveWithdrawalSigned("w1", "ETH", "eth_hot", "approver", late), "not-expired")
    far = rig.keys["ada"].sign("withdrawal.approve", approve_subject(w, "approver"), rig.now + MAX_DECISION_TTL_NS + 10**10)
    rig.refused(ApproveWithdrawalSigned("w1", "ETH", "eth_hot", "approver", far), "expiry-bounded", edge=False)


def test_recorded_approvals_expire_before_signing() -> None:
    from ringfence.custody.commands import AuthorizeSigning

    rig = Rig().custody()
    rig.withdrawal("w1", 2 * 10**18)
    rig.run(rig.desk.approve_withdrawal(rig.engine, "w1", "ada", "approver"))
    rig.run(rig.desk.approve_withdrawal(rig.engine, "w1", "ben", "operator"))
    rig.now += 3601 * 10**9  # the policy's approval_ttl_s is 3600
    events = rig.run(AuthorizeSigning("w1", "ETH", "eth_hot"))
    assert events[-1].kind == "withdrawal.approvals_expired"


def test_genesis_only_once_and_quorum_of_two() -> None:
    rig = Rig()
    rig.refused(rig.desk.genesis({"ada": ["operator"], "ben": ["operator"]}, 2), "genesis-once")
    solo = Rig.__new__(Rig)
    from ringfence.app import new_engine

    solo.engine, solo.now, solo.keys = new_engine(), rig.now, rig.keys
    solo.desk = rig.desk
    solo.refused(rig.desk.genesis({"ada": ["operator"]}, 1), "quorum")
    solo.refused(rig.desk.genesis({"ada": ["operator"], "ana": ["analyst"]}, 2), "quorum")


# ------------------------------------------------------------------ the retired unsigned commands


@pytest.mark.parametrize("command", [
    SetApprover("eve", ["approver"]),
    ApproveWithdrawal("w1", "ETH", "eth_hot", "eve", "approver"),
    RegisterOperators([("op1", "00" * 32)], 1),
    LiftHalt("h1", "fixed", [("op1", "00" * 64)]),
])
def test_unsigned_identity_commands_are_refused_at_the_edge(command) -> None:  # type: ignore[no-untyped-def]
    rig = Rig()
    with pytest.raises(Forbidden, match="retired"):
        rig.engine.precheck(command)


def test_signature_struct_is_part_of_the_journal_encoding() -> None:
    """A signed command round-trips through the engine's journal codec (what replay decodes)."""
    from ringfence.engine.commands import encode

    rig = Rig()
    raised(rig)
    lift = rig.desk.lift(rig.engine, "h1", "fixed", ["ada", "ben"])
    decoded = rig.engine.codec.command.decode(encode(lift))
    assert decoded == lift and isinstance(decoded.approvals[0], StaffSignature)
