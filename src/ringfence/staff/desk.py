"""A staff desk: signed staff commands built from the keys the desk holds (demo, tests, simulation).

A real deployment never has one process holding every staff member's key: each member signs on
their own machine (`ringfence staff|halts|review|policy ... --key FILE`). The desk exists for the
places where one process plays every part — `serve --demo`'s genesis, the custody local network,
the simulation and the tests — and builds exactly the commands those members would send.
Subjects are read from the engine the command will be applied to (`engine`), so what is signed is
what the engine will check.
"""

from __future__ import annotations

import secrets
from typing import Any, Callable, Iterable, Mapping, Sequence

from ..engine.core import Engine
from .commands import AddStaff, RemoveStaff, StaffGenesis, add_subject, genesis_subject, remove_subject
from .decisions import StaffKey, StaffSignature
from .state import staff_of

__all__ = ["StaffDesk"]

DEFAULT_TTL_NS = 600 * 10**9


class StaffDesk:
    def __init__(self, keys: Mapping[str, StaffKey] | Iterable[StaffKey], clock: Callable[[], int], *,
                 ttl_ns: int = DEFAULT_TTL_NS, nonce: Callable[[], str] | None = None) -> None:
        items = keys.values() if isinstance(keys, Mapping) else keys
        self.keys: dict[str, StaffKey] = {k.staff_id: k for k in items}
        self.clock = clock
        self.ttl_ns = ttl_ns
        #: Nonces are random per signature; a seeded simulation passes its own source.
        self.nonce = nonce or (lambda: secrets.token_hex(16))

    def key(self, staff_id: str) -> StaffKey:
        return self.keys[staff_id]

    def sign(self, staff_id: str, action: str, subject: Sequence[Any], *, expires_ns: int | None = None) -> StaffSignature:
        expires = self.clock() + self.ttl_ns if expires_ns is None else expires_ns
        return self.keys[staff_id].sign(action, subject, expires, self.nonce())

    def signs(self, staff_ids: Iterable[str], action: str, subject: Sequence[Any]) -> list[StaffSignature]:
        return [self.sign(s, action, subject) for s in staff_ids]

    # ------------------------------------------------------------------ staff

    def genesis(self, roles: Mapping[str, Sequence[str]], quorum: int,
                accounts: Mapping[str, Sequence[str]] | None = None) -> StaffGenesis:
        """`accounts`: the customer accounts each member holds here (never-the-initiator)."""
        members = [self.keys[s].entry(r, (accounts or {}).get(s, ())) for s, r in roles.items()]
        subject = genesis_subject(members, quorum)
        return StaffGenesis(members, quorum, [self.sign(s, "staff.genesis", subject) for s in roles])

    def add(self, engine: Engine, new: StaffKey, roles: Sequence[str], reason: str, approvers: Iterable[str],
            accounts: Sequence[str] = ()) -> AddStaff:
        entry = new.entry(roles, accounts)
        subject = add_subject(entry, reason, staff_of(engine).version)
        proof = new.sign("staff.add", subject, self.clock() + self.ttl_ns, self.nonce())
        self.keys[new.staff_id] = new
        return AddStaff(entry, proof, reason, self.signs(approvers, "staff.add", subject))

    def remove(self, engine: Engine, staff_id: str, reason: str, approvers: Iterable[str]) -> RemoveStaff:
        subject = remove_subject(staff_id, reason, staff_of(engine).version)
        return RemoveStaff(staff_id, reason, self.signs(approvers, "staff.remove", subject))

    # ------------------------------------------------------------------ halts

    def raise_halt(self, staff_id: str, halt_id: str, scope_kind: str, scope: str, level: str, reason: str) -> Any:
        from ..risk.halts import RaiseHaltSigned, raise_subject

        sig = self.sign(staff_id, "halt.raise", raise_subject(halt_id, scope_kind, scope, level, reason))
        return RaiseHaltSigned(halt_id, scope_kind, scope, level, reason, sig)

    def lift(self, engine: Engine, halt_id: str, reason: str, approvers: Iterable[str]) -> Any:
        from ..risk.halts import LiftHaltSigned, halts_of, lift_subject

        raised_seq = halts_of(engine).active[halt_id].raised_seq
        return LiftHaltSigned(halt_id, reason, self.signs(approvers, "halt.lift", lift_subject(halt_id, reason, raised_seq)))

    # ------------------------------------------------------------------ custody

    def approve_withdrawal(self, engine: Engine, withdrawal_id: str, staff_id: str, role: str) -> Any:
        from ..custody.staff_cmds import ApproveWithdrawalSigned, approve_subject
        from ..custody.state import custody_state

        w = custody_state(engine).withdrawals[withdrawal_id]
        sig = self.sign(staff_id, "withdrawal.approve", approve_subject(w, role))
        return ApproveWithdrawalSigned(w.id, w.asset, w.wallet, role, sig)

    def reject_withdrawal(self, engine: Engine, withdrawal_id: str, staff_id: str, reason: str) -> Any:
        from ..custody.staff_cmds import RejectWithdrawal, reject_subject
        from ..custody.state import custody_state

        w = custody_state(engine).withdrawals[withdrawal_id]
        return RejectWithdrawal(w.id, w.asset, w.wallet, reason,
                                self.sign(staff_id, "withdrawal.reject", reject_subject(w, reason)))

    def manual_review(self, engine: Engine, withdrawal_id: str, staff_id: str, approve: bool, reason: str) -> Any:
        from ..custody.staff_cmds import ResolveManualReviewSigned, manual_review_subject
        from ..custody.state import custody_state

        w = custody_state(engine).withdrawals[withdrawal_id]
        sig = self.sign(staff_id, "withdrawal.manual_review", manual_review_subject(w, approve, reason))
        return ResolveManualReviewSigned(w.id, w.asset, w.wallet, approve, reason, sig)

    def review_deposit(self, engine: Engine, chain: str, txid: str, index: int, staff_id: str, decision: str,
                       reason: str) -> Any:
        from ..custody.deposits import deposit_key
        from ..custody.staff_cmds import ReviewQuarantineSigned, quarantine_subject
        from ..custody.state import custody_state

        key = deposit_key(chain, txid, index)
        d = custody_state(engine).deposits.get(key)
        amount = d.amount_minor if d is not None else 0
        sig = self.sign(staff_id, "deposit.review", quarantine_subject(key, amount, decision, reason))
        return ReviewQuarantineSigned(chain, txid, index, decision, reason, sig)

    def propose_policy(self, proposal_id: str, policy_json: str, staff_id: str) -> Any:
        from ..custody.policy import parse_policy
        from ..custody.staff_cmds import ProposePolicySigned, propose_subject

        text = parse_policy(policy_json).text
        return ProposePolicySigned(proposal_id, policy_json, self.sign(staff_id, "policy.propose", propose_subject(proposal_id, text)))

    def approve_policy(self, engine: Engine, proposal_id: str, staff_id: str) -> Any:
        from ..custody.staff_cmds import ApprovePolicySigned, policy_approve_subject
        from ..custody.state import custody_state

        p = custody_state(engine).proposals[proposal_id]
        return ApprovePolicySigned(proposal_id, self.sign(staff_id, "policy.approve", policy_approve_subject(p.id, p.text)))
