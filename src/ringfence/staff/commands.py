"""Staff commands: the genesis quorum, and adding or removing a member by an operator quorum.

* `StaffGenesis(members, quorum, signatures)` — accepted only while the register is empty (rule
  `genesis-once`): every genesis member signs it with their own key (proof that each holds the key
  registered for them), at least `quorum` of them are operators, and `quorum` is at least 2 (no
  single person ever decides alone).
* `AddStaff(member, proof, reason, approvals)` — `quorum` distinct active operators sign
  `staff.add` over the new entry, the reason and the register's version; the new member signs the
  same decision with the new key (`proof`, proof of possession). An id is never reused.
* `RemoveStaff(staff_id, reason, approvals)` — `quorum` distinct active operators sign
  `staff.remove`; refused if fewer active operators than the quorum would remain
  (`quorum-stays-reachable`). Removal takes effect on the next command: every check reads the
  register as it is when the command applies.

Each is validated completely before anything changes, so a refusal leaves the state hash as it was.
"""

from __future__ import annotations

from typing import Any

from ..engine.commands import Command, Event
from ..engine.core import Engine
from ..engine.module import Effect
from ..errors import NotFound, ValidationError
from .decisions import OPERATOR, StaffEntry, StaffSignature
from .state import (
    MAX_APPROVALS,
    MAX_STAFF,
    MODULE,
    StaffMember,
    StaffRefused,
    check_decision,
    check_quorum,
    consume,
    replace_member,
    staff_of,
    validate_entry,
)

__all__ = ["StaffGenesis", "AddStaff", "RemoveStaff", "StaffChanged", "genesis_subject", "add_subject", "remove_subject"]

MAX_REASON_CHARS = 500


class StaffGenesis(Command, tag="staff.genesis/1", frozen=True):
    members: list[StaffEntry]
    quorum: int
    signatures: list[StaffSignature]


class AddStaff(Command, tag="staff.add/1", frozen=True):
    member: StaffEntry
    proof: StaffSignature
    reason: str
    approvals: list[StaffSignature]


class RemoveStaff(Command, tag="staff.remove/1", frozen=True):
    staff_id: str
    reason: str
    approvals: list[StaffSignature]


class StaffChanged(Event, tag="staff.changed/1", frozen=True):
    kind: str  # genesis | added | removed
    staff_ids: list[str]
    version: int
    approvers: list[str]
    reason: str


MODULE.declare_events(StaffChanged)


def genesis_subject(members: list[StaffEntry], quorum: int) -> list[Any]:
    return [sorted(members, key=lambda e: e.staff_id), quorum]


def add_subject(member: StaffEntry, reason: str, version: int) -> list[Any]:
    return [member, reason, version]


def remove_subject(staff_id: str, reason: str, version: int) -> list[Any]:
    return [staff_id, reason, version]


def _reason(value: object) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_REASON_CHARS:
        raise ValidationError(f"reason must be 1-{MAX_REASON_CHARS} characters", field="reason")
    return value


def _pre_genesis(engine: Engine, c: StaffGenesis) -> None:
    state = staff_of(engine)
    if state.members:
        raise StaffRefused("genesis-once", f"the staff register already holds {len(state.members)} member(s); "
                           "add staff with an operator quorum (ringfence staff add)", field="members")
    if not 1 <= len(c.members) <= MAX_STAFF:
        raise ValidationError(f"members must hold 1 to {MAX_STAFF} entries", field="members")
    ids = [validate_entry(e, f"members[{i}]").staff_id for i, e in enumerate(c.members)]
    if len(set(ids)) != len(ids):
        raise ValidationError("staff ids must be unique", field="members")
    operators = sum(1 for e in c.members if OPERATOR in e.roles)
    if not isinstance(c.quorum, int) or isinstance(c.quorum, bool) or c.quorum < 2:
        raise StaffRefused("quorum", "the operator quorum is at least 2: no single person decides alone", field="quorum")
    if operators < c.quorum:
        raise StaffRefused("quorum", f"{operators} operator(s) cannot reach a quorum of {c.quorum}", field="quorum")
    if len(c.signatures) != len(c.members) or len(c.signatures) > MAX_STAFF:
        raise StaffRefused("genesis-signed-by-all", "every genesis member signs the genesis with their own key",
                           field="signatures")
    keys = {e.staff_id: e.public_key for e in c.members}
    subject = genesis_subject(c.members, c.quorum)
    signed: set[str] = set()
    for i, sig in enumerate(c.signatures):
        where = f"signatures[{i}]"
        staff_id = getattr(sig, "staff_id", None)
        if staff_id not in keys or staff_id in signed:
            raise StaffRefused("genesis-signed-by-all", "each genesis member signs exactly once", field=where)
        check_decision(engine, "staff.genesis", subject, sig, OPERATOR, field=where, member_key=keys[staff_id])
        signed.add(staff_id)


@MODULE.handles(StaffGenesis, precheck=_pre_genesis, effect=Effect.ADMIN)
def _genesis(engine: Engine, c: StaffGenesis) -> list[Event]:
    _pre_genesis(engine, c)
    consume(engine, c.signatures)
    state = staff_of(engine)
    for e in c.members:
        state.members[e.staff_id] = StaffMember(e.staff_id, tuple(sorted(e.roles)), e.public_key, "active", engine.seq,
                                               accounts=tuple(sorted(e.accounts)))
    state.quorum = c.quorum
    state.version += 1
    ids = sorted(e.staff_id for e in c.members)
    return [StaffChanged("genesis", ids, state.version, ids, "genesis")]


def _pre_add(engine: Engine, c: AddStaff) -> list[str]:
    state = staff_of(engine)
    reason = _reason(c.reason)
    entry = validate_entry(c.member, "member")
    if entry.staff_id in state.members:
        raise StaffRefused("id-never-reused", f"staff id {entry.staff_id!r} is (or was) taken; ids are never reused",
                           field="member.staff_id")
    if len(state.members) >= MAX_STAFF:
        raise ValidationError(f"the register holds {MAX_STAFF} members (removed ones included)", field="member")
    subject = add_subject(entry, reason, state.version)
    approvers = check_quorum(engine, "staff.add", subject, c.approvals, OPERATOR, exclude=[entry.staff_id])
    check_decision(engine, "staff.add", subject, c.proof, OPERATOR, field="proof", member_key=entry.public_key)
    if c.proof.staff_id != entry.staff_id:
        raise StaffRefused("proof-of-possession", "the new member signs the decision with the new key", field="proof")
    return approvers


@MODULE.handles(AddStaff, precheck=_pre_add, effect=Effect.ADMIN)
def _add(engine: Engine, c: AddStaff) -> list[Event]:
    approvers = _pre_add(engine, c)
    consume(engine, [*c.approvals, c.proof])
    state = staff_of(engine)
    e = c.member
    state.members[e.staff_id] = StaffMember(e.staff_id, tuple(sorted(e.roles)), e.public_key, "active", engine.seq,
                                               accounts=tuple(sorted(e.accounts)))
    state.version += 1
    return [StaffChanged("added", [e.staff_id], state.version, approvers, c.reason)]


def _pre_remove(engine: Engine, c: RemoveStaff) -> list[str]:
    state = staff_of(engine)
    reason = _reason(c.reason)
    member = state.members.get(c.staff_id)
    if member is None or member.status != "active":
        raise NotFound(f"no active staff member {c.staff_id!r}", field="staff_id")
    if len(c.approvals) > MAX_APPROVALS:
        raise ValidationError(f"at most {MAX_APPROVALS} approvals", field="approvals")
    approvers = check_quorum(engine, "staff.remove", remove_subject(c.staff_id, reason, state.version), c.approvals,
                             OPERATOR)
    remaining = sum(1 for m in state.active(OPERATOR) if m.staff_id != c.staff_id)
    if remaining < state.quorum:
        raise StaffRefused("quorum-stays-reachable", f"removing {c.staff_id!r} would leave {remaining} operator(s) "
                           f"for a quorum of {state.quorum}; add an operator first", field="staff_id")
    return approvers


@MODULE.handles(RemoveStaff, precheck=_pre_remove, effect=Effect.ADMIN)
def _remove(engine: Engine, c: RemoveStaff) -> list[Event]:
    approvers = _pre_remove(engine, c)
    consume(engine, c.approvals)
    state = staff_of(engine)
    replace_member(state, state.members[c.staff_id], status="removed", removed_seq=engine.seq)
    state.version += 1
    return [StaffChanged("removed", [c.staff_id], state.version, approvers, c.reason)]
