"""An engine with a staff register, a funded user and an ETH hot wallet, driven command by command.

Commands go through the edge precheck and then `Engine.apply`, as the node does; `refused`
checks that a command is refused at the edge with a named rule, and that applying it anyway (as
a replay would) is rejected with the same rule and leaves the domain state hash unchanged.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import pytest

from ringfence.app import new_engine
from ringfence.custody.commands import (
    ActivatePolicy,
    AssignDepositAddress,
    CreditDeposit,
    ObserveDeposit,
    ConfigureCustodyAsset,
    ConfirmWithdrawalEmail,
    DecideWithdrawal,
    RecordRiskReview,
    RegisterWallet,
    RequestWithdrawal,
    custody_state,
)
from ringfence.engine.commands import encode
from ringfence.engine.core import CommandRejected, Engine
from ringfence.errors import RingfenceError
from ringfence.ledger.commands import OpenAccount, RegisterAsset
from ringfence.staff import StaffKey
from ringfence.staff.desk import StaffDesk

START_NS = 1_800_000_000 * 10**9
TOKEN = "t0ken"
TOKEN_HASH = hashlib.sha256(TOKEN.encode()).hexdigest()
HOT = "0x" + "c8" * 20
DEST = "0x" + "0d" * 20
#: Genesis staff: ada and ben are operators (quorum 2), cy an extra operator, mal holds approver
#: and operator (the one person who might try to count twice), ana is an analyst, pat/pia/pol
#: are policy admins.
ROLES = {
    "ada": ["operator", "approver"], "ben": ["operator", "approver"], "cy": ["operator"],
    "mal": ["approver", "operator"], "ana": ["analyst"],
    "pat": ["policy_admin"], "pia": ["policy_admin"], "pol": ["policy_admin"],
}
POLICY = {
    "version": 1,
    "approval_ttl_s": 3600,
    "rules": [
        {"name": "review-huge", "when": {"asset": ["ETH"], "amount_minor_gt": 5 * 10**18}, "action": {"type": "manual_review"}},
        {"name": "large-eth", "when": {"asset": ["ETH"], "amount_minor_gt": 10**18},
         "action": {"type": "approvals", "count": 2, "roles": ["approver", "operator"]}},
        {"name": "hot-small", "when": {"wallet_tier": ["hot"]}, "action": {"type": "allow"}},
    ],
}


def domain_hash(engine: Engine) -> str:
    """The state hash without the sequencer's stamps (`last_seq`, `now_ns`)."""
    return hashlib.sha256(encode(engine.snapshot_state()[3:])).hexdigest()


class Rig:
    """`node=None`: a bare engine on a simulated clock; with a `Node`, commands go through the node
    (journaled, wall-clock sequencer time)."""

    def __init__(self, seed: int = 1, *, staff: dict[str, list[str]] | None = None, quorum: int = 2,
                 node: Any = None, accounts: dict[str, list[str]] | None = None) -> None:
        self.node = node
        self.engine = node.engine if node is not None else new_engine()
        self.now = START_NS
        self.keys = {s: StaffKey.from_seed_hex(s, hashlib.sha256(f"{seed}/{s}".encode()).hexdigest()) for s in ROLES}
        self.desk = StaffDesk(self.keys, (lambda: self.now) if node is None else time.time_ns)
        self.run(self.desk.genesis(staff or ROLES, quorum, accounts=accounts))

    def run(self, command: Any) -> list[Any]:
        if self.node is not None:
            return self.node.execute(command)  # type: ignore[no-any-return]
        self.now += 10**6
        self.engine.precheck(command)
        events = self.engine.apply(command, self.engine.last_seq + 1, self.now)
        rejected = [e for e in events if isinstance(e, CommandRejected)]
        assert not rejected, rejected
        return events

    def apply(self, command: Any) -> list[Any]:
        """Apply without the edge precheck (as journal replay does)."""
        self.now += 10**6
        return self.engine.apply(command, self.engine.last_seq + 1, self.now)

    def refused(self, command: Any, rule: str, *, edge: bool = True) -> None:
        """Refused at the edge (unless `edge=False`: a rule checked only at apply time) and by the handler."""
        before = domain_hash(self.engine)
        if edge:
            full = self.engine.state_hash()
            with pytest.raises(RingfenceError) as err:
                self.engine.precheck(command)
            assert f"rule '{rule}'" in str(err.value), str(err.value)
            assert self.engine.state_hash() == full, "an edge refusal changed the state"
        events = self.apply(command)
        assert len(events) == 1 and isinstance(events[0], CommandRejected), events
        assert f"rule '{rule}'" in events[0].message, events[0].message
        assert domain_hash(self.engine) == before, "a refused decision changed the state"

    # ------------------------------------------------------------------ custody setup

    def custody(self) -> "Rig":
        self.run(RegisterAsset("ETH", 18, "crypto", "ethereum"))
        self.run(ConfigureCustodyAsset("ETH", "ethereum", "local", 1, 2, 1, 1, 10**20, 0))
        self.run(RegisterWallet("eth_hot", "ethereum", "hot", [HOT]))
        # Funded by credited deposits (custody holds what the users are owed: reserves match liabilities).
        for n, user in enumerate(("alice", "mal")):
            self.run(OpenAccount(user, "ETH"))
            address = "0x" + f"{n + 1:02x}" * 20
            self.run(AssignDepositAddress(user, "ethereum", "eth_hot", address))
            self.run(ObserveDeposit("ethereum", f"0x{n + 1:064x}", 0, "ETH", address, 100 * 10**18, 1, "0x" + "bb" * 32))
            self.run(CreditDeposit("ethereum", f"0x{n + 1:064x}", 0, 1, 0, []))
        self.run(self.desk.propose_policy("p1", json.dumps(POLICY), "pat"))
        self.run(self.desk.approve_policy(self.engine, "p1", "pia"))
        self.run(self.desk.approve_policy(self.engine, "p1", "pol"))
        self.run(ActivatePolicy("p1"))
        return self

    def withdrawal(self, wid: str, amount: int, account: str = "alice") -> Any:
        self.run(RequestWithdrawal(wid, account, "ETH", "eth_hot", DEST, amount, 0, TOKEN_HASH))
        self.run(ConfirmWithdrawalEmail(wid, "ETH", "eth_hot", TOKEN))
        self.run(RecordRiskReview(wid, "ETH", "eth_hot", 10, False, []))
        self.run(DecideWithdrawal(wid, "ETH", "eth_hot"))
        return custody_state(self.engine).withdrawals[wid]
