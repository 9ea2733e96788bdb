"""Property: no sequence of staff decisions signed by fewer than the quorum of distinct, active
operators — with valid, unexpired, unused signatures — lifts a halt, adds or removes staff.

Hypothesis draws sequences of lift / add / remove attempts, each carrying approvals drawn from:
genuine operators, an approver who is no operator, a stranger, a forged key under an operator's id,
a signature over another decision, an expired one, a replayed nonce, a removed operator. The test
keeps its own account of who is an active operator and which nonces were spent, and checks that a
command succeeds exactly when its approvals are all valid and at least the quorum of distinct
people signed; a refused command leaves the state hash as it was. Commands go straight to
`Engine.apply` (the handler's own checks, as on journal replay). Seeded: hypothesis prints the
failing example; rerun with the same seed.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from ringfence.engine.core import CommandRejected
from ringfence.errors import RingfenceError
from ringfence.risk.halts import Halt, LiftHaltSigned, halts_of, lift_subject
from ringfence.staff import AddStaff, RemoveStaff, StaffKey, add_subject, remove_subject, staff_of
from ringfence.staff.decisions import StaffSignature

from .rig import Rig, domain_hash

SIGNERS = ["ada", "ben", "cy", "mal", "ana", "stranger", "forged-ben", "other-decision", "expired-ada", "replay", "removed"]
QUORUM = 2


class World:
    def __init__(self) -> None:
        self.rig = Rig(seed=7)
        self.active_ops = {"ada", "ben", "cy", "mal"}
        self.removed: set[str] = set()
        self.spent: dict[str, StaffSignature] = {}  # staff_id -> a signature whose nonce is spent
        self.serial = 0
        self.rig.run(Halt("h", "venue", "*", "HALTED", "incident"))

    def key(self, staff_id: str) -> StaffKey:
        return self.rig.keys[staff_id]

    def approval(self, who: str, action: str, subject: list, other_subject: list) -> tuple[StaffSignature, str | None]:
        """(signature, the person it validly counts for, or None if it must not count)."""
        rig = self.rig
        ttl = rig.now + 600 * 10**9
        if who in self.active_ops or who in ("ana",):
            sig = self.key(who).sign(action, subject, ttl)
            return sig, who if who in self.active_ops else None
        if who == "stranger":
            return StaffKey.generate("zoe").sign(action, subject, ttl), None
        if who == "forged-ben":
            return StaffKey("ben", StaffKey.generate("x").private_key).sign(action, subject, ttl), None
        if who == "other-decision":
            return self.key("ada").sign(action, other_subject, ttl), None
        if who == "expired-ada":
            return self.key("ada").sign(action, subject, rig.now), None  # apply moves the clock past it
        if who == "replay" and self.spent:
            staff_id, old = sorted(self.spent.items())[0]
            return self.key(staff_id).sign(action, subject, ttl, old.nonce), None
        if who == "removed" and self.removed:
            gone = sorted(self.removed)[0]
            return self.key(gone).sign(action, subject, ttl), None
        return StaffKey.generate("nobody").sign(action, subject, ttl), None

    def attempt(self, command, counted: list[str | None]) -> bool:
        """Apply; check success <=> every approval valid and >= quorum distinct people; return success."""
        before = domain_hash(self.rig.engine)
        people = [c for c in counted if c is not None]
        expected = bool(counted) and None not in counted and len(set(people)) == len(people) >= QUORUM
        try:  # the edge agrees with the handler
            self.rig.engine.precheck(command)
            edge_ok = True
        except RingfenceError:
            edge_ok = False
        assert edge_ok == expected, (command, counted)
        events = self.rig.apply(command)
        ok = not any(isinstance(e, CommandRejected) for e in events)
        assert ok == expected, (command, counted, events)
        if not ok:
            assert domain_hash(self.rig.engine) == before, "a refused decision changed the state"
        else:
            for sig in command.approvals:
                self.spent[sig.staff_id] = sig
        return ok


GENUINE, BAD = SIGNERS[:5], SIGNERS[5:]
#: Approvals: mostly genuine members (so a quorum is often reached), sometimes a bad one mixed in.
signers = st.tuples(st.lists(st.sampled_from(GENUINE), max_size=3),
                    st.lists(st.sampled_from(BAD), max_size=1)).flatmap(lambda t: st.permutations(t[0] + t[1]))
step = st.tuples(st.sampled_from(["lift", "add", "remove", "raise"]), signers, st.sampled_from(["ada", "ben", "cy", "mal"]))


@seed(20261203)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(step, min_size=1, max_size=10))
def test_fewer_than_quorum_distinct_staff_never_lift_a_halt_or_change_staff(steps) -> None:
    w = World()
    engine = w.rig.engine
    for kind, signers, target in steps:
        if kind == "raise":
            w.rig.run(Halt("h", "venue", "*", "HALTED", "incident"))
            continue
        if kind == "lift":
            record = halts_of(engine).active.get("h")
            if record is None:
                continue
            subject = lift_subject("h", "fixed", record.raised_seq)
            other = lift_subject("h", "fixed", record.raised_seq + 1)
            pairs = [w.approval(s, "halt.lift", subject, other) for s in signers]
            if w.attempt(LiftHaltSigned("h", "fixed", [p[0] for p in pairs]), [p[1] for p in pairs]):
                assert "h" not in halts_of(engine).active
            else:
                assert "h" in halts_of(engine).active
        elif kind == "add":
            w.serial += 1
            new = StaffKey.generate(f"new{w.serial}")
            entry = new.entry(["operator"])
            subject = add_subject(entry, "hire", staff_of(engine).version)
            other = add_subject(entry, "hire", staff_of(engine).version + 1)
            pairs = [w.approval(s, "staff.add", subject, other) for s in signers]
            proof = new.sign("staff.add", subject, w.rig.now + 600 * 10**9)
            command = AddStaff(entry, proof, "hire", [p[0] for p in pairs])
            if w.attempt(command, [p[1] for p in pairs]):
                w.rig.keys[new.staff_id] = new
                w.active_ops.add(new.staff_id)
            assert (new.staff_id in staff_of(engine).members) == (new.staff_id in w.active_ops)
        else:
            if target not in w.active_ops or len(w.active_ops) <= QUORUM:
                continue  # removal below the quorum is its own rule (tested in test_duties)
            subject = remove_subject(target, "left", staff_of(engine).version)
            other = remove_subject(target, "left", staff_of(engine).version + 1)
            pairs = [w.approval(s, "staff.remove", subject, other) for s in signers]
            if w.attempt(RemoveStaff(target, "left", [p[0] for p in pairs]), [p[1] for p in pairs]):
                w.active_ops.discard(target)
                w.removed.add(target)
        assert {m.staff_id for m in staff_of(engine).active("operator")} == w.active_ops
    engine.check_invariants()
