"""Segregation of duties: nobody completes a transfer alone; every step is journaled."""

from __future__ import annotations

import random
from pathlib import Path

import coincurve
import pytest
from hypothesis import given, settings, strategies as st

from ringfence.keys.duties import Operator, Role, Roster, TransferState, TransferWorkflow
from ringfence.keys.interface import Scheme
from ringfence.keys.keylog import KeyOperationLog
from ringfence.errors import AttestationInvalid, DutiesViolation


def roster(tmp: Path) -> Roster:
    ops = {
        "rita": Operator("rita", frozenset({Role.REQUESTER})),
        "ann": Operator("ann", frozenset({Role.APPROVER})),
        "abe": Operator("abe", frozenset({Role.APPROVER, Role.REQUESTER})),
        "sam": Operator("sam", frozenset({Role.SIGNER, Role.APPROVER})),
        "pat": Operator("pat", frozenset({Role.POLICY_ADMIN, Role.REQUESTER})),
        "aud": Operator("aud", frozenset({Role.AUDITOR})),
    }
    return Roster(KeyOperationLog(tmp / "keyops.jsonl"), ops)


def test_conflicting_roles_cannot_be_held() -> None:
    with pytest.raises(DutiesViolation):
        Operator("x", frozenset({Role.POLICY_ADMIN, Role.SIGNER}))
    with pytest.raises(DutiesViolation):
        Operator("y", frozenset({Role.AUDITOR, Role.REQUESTER}))


def test_full_transfer_needs_four_people_and_hsm_enforces_attestation(tmp_path: Path, hsm: dict) -> None:
    r = roster(tmp_path)
    digest = coincurve.utils.sha256(b"eth tx 1")
    wf = TransferWorkflow.request(r, "rita", transfer_id="t-1", key_id="eth-hot", digest=digest,
                                  scheme=Scheme.ECDSA_SECP256K1, reason="customer withdrawal 1")
    with pytest.raises(DutiesViolation):
        wf.approve("aud", "auditors cannot approve")
    wf.approve("ann", "looks fine")
    with pytest.raises(DutiesViolation):
        wf.approve("ann", "twice")
    with pytest.raises(DutiesViolation):
        wf.release_for_signing("sam", "too early")
    wf.approve("abe", "second approval")
    assert wf.state is TransferState.APPROVED
    # skipping the policy engine: the HSM refuses a request without its attestation
    from ringfence.keys.interface import SigningRequest

    with pytest.raises(AttestationInvalid):
        hsm["signer"].sign(SigningRequest(request_id="t-1", key_id="eth-hot", digest=digest,
                                          scheme=Scheme.ECDSA_SECP256K1, requested_by="rita", reason="bypass"))
    wf.attach_attestation(hsm["policy"].approve(attestation_id="att-t-1", key_id="eth-hot", transfer_digest=digest,
                                                now_ms=hsm["clock"]["now"], validity_ms=60_000,
                                                decided_by="policy-engine-1", reason="limits ok"))
    with pytest.raises(DutiesViolation):
        wf.release_for_signing("abe", "an approver may not sign")  # abe lacks SIGNER anyway
    req = wf.release_for_signing("sam", "release")
    sig = hsm["signer"].sign(req)
    assert coincurve.PublicKey.from_signature_and_message(sig.signature, digest, hasher=None).format() == sig.public_key
    wf.mark_signed()
    actions = [e["action"] for e in r.log.entries() if e.get("transfer_id") == "t-1"]
    assert actions[0] == "transfer_requested" and "transfer_signed" == actions[-1]
    assert "approve_refused" in actions and "release_refused" in actions
    assert all(e["actor"] and e["reason"] for e in r.log.entries())


def test_signer_who_approved_is_refused(tmp_path: Path) -> None:
    r = roster(tmp_path)
    wf = TransferWorkflow.request(r, "rita", transfer_id="t-2", key_id="k", digest=b"\x01" * 32,
                                  scheme=Scheme.ECDSA_SECP256K1, reason="x", approvals_required=2)
    wf.approve("sam", "sam approves")
    wf.approve("ann", "ann approves")
    from ringfence.keys.attestation import ApprovalAttestation

    wf.attach_attestation(ApprovalAttestation("a", "k", b"\x01" * 32, 0, 1, "pe"))
    with pytest.raises(DutiesViolation, match="neither"):
        wf.release_for_signing("sam", "sam signs")


def test_requester_cannot_approve_own_and_roster_changes_need_other_admin(tmp_path: Path) -> None:
    r = roster(tmp_path)
    wf = TransferWorkflow.request(r, "abe", transfer_id="t-3", key_id="k", digest=b"\x02" * 32,
                                  scheme=Scheme.ECDSA_SECP256K1, reason="x")
    with pytest.raises(DutiesViolation, match="own"):
        wf.approve("abe", "self-approval")
    with pytest.raises(DutiesViolation):
        r.grant("pat", "pat", frozenset({Role.REQUESTER, Role.POLICY_ADMIN}), "self-grant")
    with pytest.raises(DutiesViolation):
        r.grant("rita", "ann", frozenset({Role.SIGNER}), "not an admin")
    r.grant("pat", "newbie", frozenset({Role.APPROVER}), "hired")
    assert r.log.verify() == len(r.log.entries())


ACTIONS = ["approve", "attest", "release"]


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), steps=st.lists(st.tuples(st.sampled_from(ACTIONS), st.integers(0, 6)), max_size=12))
def test_property_signed_transfers_always_have_distinct_people(tmp_path_factory, seed: int, steps) -> None:  # type: ignore[no-untyped-def]
    print("seed", seed)
    rng = random.Random(seed)
    tmp = tmp_path_factory.mktemp("duties")
    r = roster(tmp)
    people = ["rita", "ann", "abe", "sam", "pat", "aud", "mallory"]
    signers = {"sam"}  # the roster's only SIGNER
    from ringfence.keys.attestation import ApprovalAttestation

    requester = rng.choice(["rita", "abe", "pat"])
    wf = TransferWorkflow.request(r, requester, transfer_id="p", key_id="k", digest=b"\x03" * 32,
                                  scheme=Scheme.ECDSA_SECP256K1, reason="prop", approvals_required=rng.choice([1, 2]))
    for action, who in steps:
        person = people[who]
        try:
            if action == "approve":
                wf.approve(person, "p")
            elif action == "attest":
                wf.attach_attestation(ApprovalAttestation("a", "k", b"\x03" * 32, 0, 1, "pe"))
            else:
                wf.release_for_signing(person, "p")
                wf.mark_signed()
        except DutiesViolation:
            pass  # refused attempts are part of the property: they must change nothing that matters
    # Random steps rarely reach SIGNED on their own, so finish the transfer with whoever the rules
    # allow: the invariant is then checked on every example, after any prefix of attempts.
    if wf.state is not TransferState.SIGNED:
        for person in sorted(people, key=lambda p: p in signers):  # keep the signer for last
            try:
                wf.approve(person, "complete")
            except DutiesViolation:
                continue
        try:
            wf.attach_attestation(ApprovalAttestation("a", "k", b"\x03" * 32, 0, 1, "pe"))
        except DutiesViolation:
            pass
        for person in people:
            try:
                wf.release_for_signing(person, "complete")
                wf.mark_signed()
                break
            except DutiesViolation:
                continue
    if signers - set(wf.approvers) - {wf.requester}:  # someone may still sign: it must have worked
        assert wf.state is TransferState.SIGNED, f"seed {seed}: {wf.state} after {steps}"
    else:
        assert wf.state is not TransferState.SIGNED  # nobody allowed to sign is left
    if wf.state is TransferState.SIGNED:
        chain = [wf.requester, *wf.approvers, wf.signer]
        assert len(set(chain)) == len(chain) >= 1 + wf.approvals_required + 1
        assert Role.SIGNER in r.get(wf.signer).roles and Role.REQUESTER in r.get(wf.requester).roles
        assert all(Role.APPROVER in r.get(a).roles for a in wf.approvers)
