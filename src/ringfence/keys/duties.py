"""Segregation of duties for transfers: requester, approver, signer, policy admin, auditor.

No role — and no person — can complete a transfer alone:
- a transfer is requested by a REQUESTER, approved by `approvals_required` distinct APPROVERs none of
  whom is the requester, attested by the policy engine (a service, not a person), and released for
  signing by a SIGNER who is neither the requester nor an approver;
- POLICY_ADMIN changes rules but may hold neither APPROVER nor SIGNER (it could otherwise approve
  under rules it just wrote); AUDITOR is read-only and may hold no other role.
Every step (allowed or refused) is journaled with who, what and why in the key-operation log.

Invariant (property-tested): whenever a transfer reaches SIGNED, requester, approvers and signer are
pairwise distinct people who each held the role for their step at that time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Mapping

from ..errors import DutiesViolation, ValidationError
from .attestation import ApprovalAttestation
from .interface import Scheme, SigningRequest
from .keylog import KeyOperationLog

__all__ = ["Role", "Operator", "Roster", "TransferState", "TransferWorkflow", "CONFLICTING_ROLES"]

MAX_APPROVALS = 10


class Role(StrEnum):
    REQUESTER = "requester"
    APPROVER = "approver"
    SIGNER = "signer"
    POLICY_ADMIN = "policy_admin"
    AUDITOR = "auditor"


CONFLICTING_ROLES: tuple[frozenset[Role], ...] = (
    frozenset({Role.POLICY_ADMIN, Role.APPROVER}),
    frozenset({Role.POLICY_ADMIN, Role.SIGNER}),
    *(frozenset({Role.AUDITOR, r}) for r in Role if r is not Role.AUDITOR),
)


@dataclass(frozen=True)
class Operator:
    operator_id: str
    roles: frozenset[Role]

    def __post_init__(self) -> None:
        if not 1 <= len(self.operator_id) <= 64:
            raise ValidationError("must be 1-64 characters", field="operator_id")
        for pair in CONFLICTING_ROLES:
            if pair <= self.roles:
                raise DutiesViolation(f"roles {sorted(pair)} may not be held by one person", field="roles")


class Roster:
    """Who holds which roles; changes are journaled and need a policy admin."""

    def __init__(self, log: KeyOperationLog, operators: Mapping[str, Operator] | None = None) -> None:
        self.log = log
        self._ops = dict(operators or {})

    def get(self, operator_id: str) -> Operator:
        op = self._ops.get(operator_id)
        if op is None:
            raise DutiesViolation("unknown operator", field="operator_id")
        return op

    def grant(self, by: str, operator_id: str, roles: frozenset[Role], reason: str) -> Operator:
        admin = self.get(by)
        if Role.POLICY_ADMIN not in admin.roles or by == operator_id:
            self.log.append(actor=by, action="roster_refused", key_id="roster", reason=reason, target=operator_id)
            raise DutiesViolation("only another policy admin may change someone's roles", field="by")
        op = Operator(operator_id, roles)
        self._ops[operator_id] = op
        self.log.append(actor=by, action="roster_grant", key_id="roster", reason=reason, target=operator_id,
                        roles=sorted(roles))
        return op


class TransferState(StrEnum):
    REQUESTED = "requested"
    APPROVED = "approved"
    ATTESTED = "attested"
    RELEASED = "released"  # released to the signer service; the signature itself comes from a Signer
    SIGNED = "signed"


@dataclass
class TransferWorkflow:
    transfer_id: str
    key_id: str
    digest: bytes = field(repr=False)
    scheme: Scheme
    roster: Roster
    approvals_required: int = 2
    state: TransferState = TransferState.REQUESTED
    requester: str = ""
    approvers: list[str] = field(default_factory=list)
    signer: str = ""
    attestation: ApprovalAttestation | None = None

    @classmethod
    def request(cls, roster: Roster, by: str, *, transfer_id: str, key_id: str, digest: bytes, scheme: Scheme,
                reason: str, approvals_required: int = 2) -> "TransferWorkflow":
        if not 1 <= approvals_required <= MAX_APPROVALS:
            raise ValidationError(f"must be 1..{MAX_APPROVALS}", field="approvals_required")
        wf = cls(transfer_id, key_id, digest, Scheme(scheme), roster, approvals_required)
        wf._need(by, Role.REQUESTER, "request", reason)
        wf.requester = by
        wf._journal(by, "transfer_requested", reason)
        return wf

    def _journal(self, by: str, action: str, reason: str, **extra: object) -> None:
        self.roster.log.append(actor=by, action=action, key_id=self.key_id, reason=reason,
                               transfer_id=self.transfer_id, digest=self.digest.hex(), **extra)

    def _need(self, by: str, role: Role, step: str, reason: str) -> None:
        try:
            op = self.roster.get(by)
        except DutiesViolation:
            self._journal(by, f"{step}_refused", reason, why="unknown operator")
            raise
        if role not in op.roles:
            self._journal(by, f"{step}_refused", reason, why=f"lacks role {role.value}")
            raise DutiesViolation(f"{step} needs the {role.value} role", field="by")

    def _refuse(self, by: str, step: str, reason: str, why: str) -> DutiesViolation:
        self._journal(by, f"{step}_refused", reason, why=why)
        return DutiesViolation(why, field="by")

    def approve(self, by: str, reason: str) -> None:
        self._need(by, Role.APPROVER, "approve", reason)
        if self.state is not TransferState.REQUESTED:
            raise self._refuse(by, "approve", reason, f"transfer is {self.state.value}, not awaiting approval")
        if by == self.requester:
            raise self._refuse(by, "approve", reason, "the requester may not approve their own transfer")
        if by in self.approvers:
            raise self._refuse(by, "approve", reason, "each approver counts once")
        self.approvers.append(by)
        self._journal(by, "transfer_approved", reason, approvals=len(self.approvers))
        if len(self.approvers) >= self.approvals_required:
            self.state = TransferState.APPROVED

    def attach_attestation(self, att: ApprovalAttestation) -> None:
        """The policy engine's attestation (a service decision, signed with its HSM key)."""
        if self.state is not TransferState.APPROVED:
            raise DutiesViolation("the policy engine attests only after human approvals", field="state")
        if att.transfer_digest != self.digest or att.key_id != self.key_id:
            raise DutiesViolation("attestation is for another transfer", field="approval")
        self.attestation = att
        self.state = TransferState.ATTESTED
        self._journal(att.issued_by, "transfer_attested", "policy engine decision", attestation_id=att.attestation_id)

    def release_for_signing(self, by: str, reason: str) -> SigningRequest:
        self._need(by, Role.SIGNER, "release", reason)
        if self.state is not TransferState.ATTESTED:
            raise self._refuse(by, "release", reason, f"transfer is {self.state.value}, not attested")
        if by == self.requester or by in self.approvers:
            raise self._refuse(by, "release", reason, "the signer may be neither the requester nor an approver")
        self.signer = by
        self.state = TransferState.RELEASED
        self._journal(by, "transfer_released", reason)
        return SigningRequest(request_id=self.transfer_id, key_id=self.key_id, digest=self.digest, scheme=self.scheme,
                              requested_by=self.requester, reason=reason, approval=self.attestation)

    def mark_signed(self) -> None:
        assert self.state is TransferState.RELEASED, "only a released transfer can be signed"
        people = [self.requester, *self.approvers, self.signer]
        assert len(set(people)) == len(people), "segregation of duties broken"
        self.state = TransferState.SIGNED
        self._journal(self.signer, "transfer_signed", "signature returned by the signer")
