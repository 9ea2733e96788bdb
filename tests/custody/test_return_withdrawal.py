"""A return to sender is the analysts' decision, not the user's (the attack review of session 5):
the user cannot cancel it, and when it fails on chain the deposit goes back to the analysts
(quarantined again, its return signatures cleared), as after a rejected return. Before this, a
cancel or a failure released the hold but left the deposit `returned` for good: nobody could
release it, return it again, or file a declaration for it."""

from __future__ import annotations

from ringfence.custody.commands import CancelWithdrawal, CreditDeposit, FailWithdrawal, ObserveDeposit, custody_state
from ringfence.custody.deposits import deposit_key
from ringfence.custody.refund_cmds import ReturnDepositSigned, return_subject, return_withdrawal_id
from ringfence.engine.core import CommandRejected
from tests.staff.rig import ROLES, Rig, domain_hash

SENDER = "0x" + "5e" * 20
TXID = "0x" + "77" * 32
AMOUNT = 3 * 10**18


def returned(rig: Rig) -> str:
    """mal's tainted deposit (score 90: quarantined), returned to its sender by two analysts."""
    rig.run(ObserveDeposit("ethereum", TXID, 0, "ETH", "0x" + "02" * 20, AMOUNT, 1, "0x" + "cc" * 32))
    rig.run(CreditDeposit("ethereum", TXID, 0, 1, 90, ["1 hop from a mixer"], "", SENDER))
    key = deposit_key("ethereum", TXID, 0)
    assert custody_state(rig.engine).deposits[key].state == "quarantined"
    for analyst in ("ana", "cy"):
        sig = rig.desk.sign(analyst, "deposit.return", return_subject(key, AMOUNT, SENDER, "tainted"))
        rig.run(ReturnDepositSigned("ethereum", TXID, 0, SENDER, "tainted", sig))
    assert custody_state(rig.engine).deposits[key].state == "returned"
    return key


def test_the_user_cannot_cancel_a_return_and_a_failed_return_goes_back_to_the_analysts() -> None:
    rig = Rig(staff={**ROLES, "cy": ["operator", "analyst"]}).custody()
    key = returned(rig)
    wid = return_withdrawal_id(key)
    before = domain_hash(rig.engine)
    events = rig.apply(CancelWithdrawal(wid, "ETH", "eth_hot", "mal"))
    assert len(events) == 1 and isinstance(events[0], CommandRejected) and "analysts" in events[0].message, events
    assert domain_hash(rig.engine) == before, "a refused cancel changed the state"

    rig.run(FailWithdrawal(wid, "ETH", "eth_hot", "the chain refused the transaction"))
    s = custody_state(rig.engine)
    d = s.deposits[key]
    assert s.withdrawals[wid].state == "failed"
    assert (d.state, d.return_id, d.return_by) == ("quarantined", "", []), (d.state, d.return_id, d.return_by)
    quarantine = rig.engine.ledger.find("mal", "ETH", d.credited_kind, "spot")
    assert quarantine is not None and quarantine.debits_pending == 0  # the hold came back
    assert quarantine.credits_posted - quarantine.debits_posted == AMOUNT
