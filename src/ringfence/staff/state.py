"""The staff register as engine state, and the checks every signed staff decision passes.

Staff members (operators, approvers, analysts, policy admins, signers) are engine state: id, roles,
Ed25519 public key, status (`active` | `removed`) and the sequence numbers between which the key
was valid. A removed member stays in the register (an auditor needs the keys that were valid at
any past sequence), and an id is never given to anyone else.

`check_decision` and `check_quorum` verify signed decisions (`staff/decisions.py`) against the
register, in this order, and refuse with the rule named and nothing changed:

* `staff-registered`: the signer is in the register;
* `staff-active`: ... and not removed (revocation takes effect on the next command);
* `role-required`: ... and holds the role the decision needs;
* `not-expired`: `expires_ns` is after the sequencer time of the command;
* `expiry-bounded`: ... and at most `MAX_DECISION_TTL_NS` ahead of the command's sequencer time
  (checked by `consume`, at apply time: so nonces are remembered for a bounded time);
* `nonce-once`: the nonce was never used by this signer before (a replayed signature);
* `signature-valid`: the Ed25519 signature verifies over the decision's canonical encoding;
* `distinct-people` / `quorum`: a quorum counts each person once and needs `quorum` of them;
* `never-the-initiator`: checked by the decision's own handler (a withdrawal's owner, a policy's
  proposer) through `exclude`.

Everything is deterministic: no clock (sequencer time only), no randomness, and `cryptography`'s
Ed25519 verification is a pure function of its inputs. `consume` records nonces only after the
command's every check passed (validate, then execute).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Iterable, Sequence

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..engine.core import Engine
from ..engine.module import Module
from ..errors import DutiesViolation, Forbidden, ValidationError
from .decisions import NONCE_RE, OPERATOR, STAFF_ID_RE, POLICY_ADMIN, ROLES, SIGNER, APPROVER, StaffEntry, StaffSignature, decision_message

__all__ = [
    "MODULE",
    "StaffMember",
    "StaffState",
    "StaffRefused",
    "staff_of",
    "not_initiator",
    "check_decision",
    "check_quorum",
    "consume",
    "validate_entry",
    "CONFLICTING_ROLES",
    "MAX_DECISION_TTL_NS",
    "MAX_STAFF",
]

MAX_STAFF = 256
MAX_APPROVALS = 32
#: A signed decision may be submitted for at most this long after signing (its nonce is kept as long).
MAX_DECISION_TTL_NS = 24 * 3600 * 10**9
#: Nonces remembered at once; expired ones are dropped when the store grows past PRUNE_AT.
MAX_NONCES = 200_000
PRUNE_AT = 10_000
_ID_RE = STAFF_ID_RE  # one rule for the register and for approvals (staff/decisions.py)
_HEX64 = re.compile(r"[0-9a-f]{64}")
_ACCOUNT_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
MAX_STAFF_ACCOUNTS = 16
_HEX128 = re.compile(r"[0-9a-f]{128}")
#: Roles one person may not hold together: a policy admin could approve or sign under rules they
#: just wrote (as `keys/duties.py` has it for transfers).
CONFLICTING_ROLES: tuple[frozenset[str], ...] = (frozenset({POLICY_ADMIN, APPROVER}), frozenset({POLICY_ADMIN, SIGNER}))


class StaffRefused(DutiesViolation):
    """A staff decision refused by a segregation-of-duties or signature rule (named in the message)."""

    def __init__(self, rule: str, message: str, *, field: str) -> None:
        super().__init__(f"refused by rule '{rule}': {message}", field=field, rule=rule)
        self.rule = rule


@dataclass(frozen=True, slots=True)
class StaffMember:
    staff_id: str
    roles: tuple[str, ...]
    public_key: str
    status: str  # active | removed
    added_seq: int
    removed_seq: int = 0
    accounts: tuple[str, ...] = ()  # the customer accounts this person holds (never-the-initiator)

    def row(self) -> list[Any]:
        row = [self.staff_id, list(self.roles), self.public_key, self.status, self.added_seq, self.removed_seq]
        return row + [list(self.accounts)] if self.accounts else row  # snapshots without accounts hash as before

    @classmethod
    def from_row(cls, row: list[Any]) -> "StaffMember":
        return cls(row[0], tuple(row[1]), row[2], row[3], row[4], row[5], tuple(row[6]) if len(row) > 6 else ())

    def as_dict(self) -> dict[str, Any]:
        return {"staff_id": self.staff_id, "roles": list(self.roles), "public_key": self.public_key,
                "status": self.status, "added_seq": self.added_seq, "removed_seq": self.removed_seq,
                "accounts": list(self.accounts)}

    def holds_account(self, account_id: str) -> bool:
        """Whether `account_id` is one of this person's own customer accounts (or their staff id itself)."""
        return account_id == self.staff_id or account_id in self.accounts

    def valid_at(self, seq: int) -> bool:
        """Whether this key could sign a decision applied at sequence `seq`."""
        return self.added_seq < seq and (self.removed_seq == 0 or seq < self.removed_seq)


class StaffState:
    """Engine component "staff": the register, the operator quorum and the nonces seen."""

    def __init__(self, engine: Engine | None = None) -> None:
        self.members: dict[str, StaffMember] = {}
        self.quorum = 0
        self.version = 0
        #: "staff_id/nonce" -> expires_ns of the signature that used it
        self.nonces: dict[str, int] = {}

    def active(self, role: str | None = None) -> list[StaffMember]:
        return [m for m in self.members.values() if m.status == "active" and (role is None or role in m.roles)]

    def check_invariants(self) -> None:
        assert len(self.members) <= MAX_STAFF, "too many staff members"
        assert len(self.nonces) <= MAX_NONCES, "nonce store over its bound"
        if self.members:
            operators = len(self.active(OPERATOR))
            assert self.quorum >= 2, "a single operator could decide alone"
            assert operators >= self.quorum, "fewer active operators than the quorum: nothing could be decided"


def _snapshot(state: StaffState) -> list[Any]:
    return [
        [state.members[k].row() for k in sorted(state.members)],
        state.quorum,
        state.version,
        sorted([k, v] for k, v in state.nonces.items()),
    ]


def _restore(engine: Engine, data: list[Any]) -> StaffState:
    state = StaffState(engine)
    members, state.quorum, state.version, nonces = data
    state.members = {row[0]: StaffMember.from_row(row) for row in members}
    state.nonces = {k: v for k, v in nonces}
    return state


#: The staff engine module (commands in `staff/commands.py`).
MODULE = Module("staff", writes=("staff",))
MODULE.declare_state(StaffState, _snapshot, _restore)


def staff_of(engine: Engine) -> StaffState:
    state = engine.components.get("staff")
    if state is None:
        raise Forbidden("this engine runs no staff module: staff decisions cannot be verified", field="approvals")
    return state  # type: ignore[no-any-return]


# ------------------------------------------------------------------------------------- checks


def not_initiator(engine: Engine, staff_id: str, account_id: str, what: str) -> None:
    """Rule never-the-initiator: refused when `account_id` is the decider's own — their staff id, or a
    customer account registered with them (`StaffEntry.accounts`)."""
    member = staff_of(engine).members.get(staff_id)
    if staff_id == account_id or (member is not None and member.holds_account(account_id)):
        raise StaffRefused("never-the-initiator", f"{staff_id!r} may not decide on their own {what}", field="decision")


def validate_entry(entry: Any, field: str) -> StaffEntry:
    """A new member's id, roles and key are well-formed and the roles do not conflict. Raises."""
    if not isinstance(entry, StaffEntry):
        raise ValidationError("a staff entry is [staff_id, roles, public_key]", field=field)
    if not _ID_RE.fullmatch(entry.staff_id):
        raise ValidationError("staff_id must be 1-64 characters of a-z 0-9 _ . -, starting with a letter or digit",
                              field=f"{field}.staff_id")
    roles = entry.roles
    if not roles or len(roles) != len(set(roles)) or any(r not in ROLES for r in roles):
        raise ValidationError(f"roles must be distinct names from {', '.join(ROLES)} (at least one)", field=f"{field}.roles")
    for pair in CONFLICTING_ROLES:
        if pair <= set(roles):
            raise StaffRefused("conflicting-roles", f"one person may not hold both {' and '.join(sorted(pair))}",
                               field=f"{field}.roles")
    if len(entry.accounts) > MAX_STAFF_ACCOUNTS or len(set(entry.accounts)) != len(entry.accounts) \
            or any(not isinstance(a, str) or not _ACCOUNT_RE.fullmatch(a) for a in entry.accounts):
        raise ValidationError(f"accounts must be at most {MAX_STAFF_ACCOUNTS} distinct account ids of 1-64 characters"
                              " of A-Z a-z 0-9 _ . : -", field=f"{field}.accounts")
    if not _HEX64.fullmatch(entry.public_key):
        raise ValidationError("public_key must be 64 lowercase hex characters (Ed25519)", field=f"{field}.public_key")
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(entry.public_key))
    except ValueError:
        raise ValidationError("not a valid Ed25519 public key", field=f"{field}.public_key") from None
    return entry


def _verify_signature(public_key_hex: str, sig: StaffSignature, message: bytes, field: str) -> None:
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key_hex)).verify(bytes.fromhex(sig.signature), message)
    except InvalidSignature:
        raise StaffRefused("signature-valid", f"the signature of {sig.staff_id!r} does not verify for this decision "
                           "(forged, signed for something else, or signed against a change counter that has "
                           "since moved: an approval is good for one change, so sign again against the current "
                           "one)", field=field) from None


def _check_form(sig: Any, field: str) -> StaffSignature:
    if not isinstance(sig, StaffSignature):
        raise ValidationError("a signed decision is [staff_id, nonce, expires_ns, signature]", field=field)
    if not NONCE_RE.fullmatch(sig.nonce):
        raise ValidationError("nonce must be 16-64 lowercase hex characters", field=f"{field}.nonce")
    if not _HEX128.fullmatch(sig.signature):
        raise ValidationError("signature must be 128 lowercase hex characters (Ed25519)", field=f"{field}.signature")
    if not isinstance(sig.expires_ns, int) or isinstance(sig.expires_ns, bool) or sig.expires_ns < 0:
        raise ValidationError("expires_ns must be a non-negative integer (sequencer time, ns)", field=f"{field}.expires_ns")
    return sig


def check_decision(engine: Engine, action: str, subject: Sequence[Any], sig: Any, role: str, *,
                   field: str = "decision", member_key: str | None = None) -> StaffMember | None:
    """Verify one signed decision by a registered, active member holding `role`. Raises; never mutates.

    `member_key` verifies a proof of possession by a key not registered yet (a new member): the
    register checks are skipped and None is returned."""
    sig = _check_form(sig, field)
    state = staff_of(engine)
    member = None
    key = member_key
    if member_key is None:
        member = state.members.get(sig.staff_id)
        if member is None:
            raise StaffRefused("staff-registered", f"{sig.staff_id!r} is not a registered staff member", field=field)
        if member.status != "active":
            raise StaffRefused("staff-active", f"{sig.staff_id!r} was removed at sequence {member.removed_seq}", field=field)
        if role not in member.roles:
            raise StaffRefused("role-required", f"{sig.staff_id!r} does not hold the {role} role", field=field)
        key = member.public_key
    if sig.expires_ns <= engine.now_ns:
        raise StaffRefused("not-expired", f"the decision signed by {sig.staff_id!r} expired "
                           f"{(engine.now_ns - sig.expires_ns) // 10**9} s ago; sign it again", field=field)
    if f"{sig.staff_id}/{sig.nonce}" in state.nonces:
        raise StaffRefused("nonce-once", f"this signature of {sig.staff_id!r} was already used (a replay)", field=field)
    assert key is not None
    _verify_signature(key, sig, decision_message(action, subject, sig.staff_id, sig.nonce, sig.expires_ns), field)
    return member


def check_quorum(engine: Engine, action: str, subject: Sequence[Any], approvals: Sequence[Any], role: str, *,
                 needed: int | None = None, exclude: Iterable[str] = (), exclude_rule: str = "never-the-initiator",
                 field: str = "approvals") -> list[str]:
    """Verify `approvals` and that `needed` (default: the operator quorum) distinct people signed.

    Raises; never mutates. Returns the approvers' ids in the order given."""
    state = staff_of(engine)
    if not state.members:
        raise StaffRefused("staff-registered", "no staff are registered yet (ringfence staff init)", field=field)
    needed = state.quorum if needed is None else needed
    if not isinstance(approvals, list) or len(approvals) > MAX_APPROVALS:
        raise ValidationError(f"approvals must be a list of at most {MAX_APPROVALS} signed decisions", field=field)
    excluded = set(exclude)
    seen: list[str] = []
    for i, sig in enumerate(approvals):
        where = f"{field}[{i}]"
        sig = _check_form(sig, where)
        if sig.staff_id in excluded:
            raise StaffRefused(exclude_rule, f"{sig.staff_id!r} may not approve this decision", field=where)
        if sig.staff_id in seen:
            raise StaffRefused("distinct-people", f"{sig.staff_id!r} signed twice; each person counts once", field=where)
        check_decision(engine, action, subject, sig, role, field=where)
        seen.append(sig.staff_id)
    if len(seen) < needed:
        raise StaffRefused("quorum", f"{len(seen)} valid signature(s); this decision needs {needed} distinct "
                           f"{role}s (of {len(state.active(role))})", field=field)
    return seen


def consume(engine: Engine, sigs: Iterable[StaffSignature]) -> None:
    """Remember the nonces of signatures a command has just used (after every check passed)."""
    state = staff_of(engine)
    sigs = list(sigs)
    for sig in sigs:
        # Checked here, at apply time, not in `check_decision`: at the edge the engine's clock is
        # the last command's time, which may be long ago on a quiet node.
        if sig.expires_ns > engine.now_ns + MAX_DECISION_TTL_NS:
            raise StaffRefused("expiry-bounded", f"a decision may be valid for at most {MAX_DECISION_TTL_NS // 10**9} s "
                               f"after it is applied; {sig.staff_id!r} signed one valid for longer", field="approvals")
    nonces = state.nonces
    if len(nonces) + len(sigs) > PRUNE_AT:
        now = engine.now_ns
        nonces = {k: v for k, v in nonces.items() if v > now}
    if len(nonces) + len(sigs) > MAX_NONCES:  # refused before anything is assigned: nothing changed
        raise StaffRefused("nonce-store-bounded", f"{MAX_NONCES} unexpired decisions are remembered; retry later",
                           field="approvals")
    state.nonces = nonces
    for sig in sigs:
        state.nonces[f"{sig.staff_id}/{sig.nonce}"] = sig.expires_ns


def replace_member(state: StaffState, member: StaffMember, **changes: Any) -> None:
    state.members[member.staff_id] = replace(member, **changes)
