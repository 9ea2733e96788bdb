"""Withdrawals end to end on both chains through each policy outcome."""

from __future__ import annotations

import json

import pytest

from ringfence.custody.commands import ActivatePolicy, ApproveWithdrawal
from ringfence.errors import RingfenceError

from .conftest import balance
from .flows import fund_btc, fund_eth, outside_btc_address, settle

FEE = 10_000  # BTC withdrawal fee (sat)


def _w(net, wid):
    return net.state.withdrawals[wid]


def test_btc_withdrawal_allowed_signed_broadcast_settled_and_ledger_matches_chain(net) -> None:
    fund_btc(net, "alice", 200_000_000)
    dest = outside_btc_address(1)
    hot_before = net.ledger.custody("BTC", "btc_hot").balance
    assert hot_before == net.btc.balance(net.btc_hot) > 0
    net.request("w1", "alice", "BTC", dest, 30_000_000)
    assert balance(net, "alice", "BTC") == 200_000_000  # held, not moved
    assert net.ledger.find("alice", "BTC").available == 200_000_000 - 30_000_000 - FEE
    net.withdrawals.run_until_idle()
    w = _w(net, "w1")
    assert w.state == "broadcast" and w.decision == "allow" and w.rule == "hot-small", w.decision_reasons
    assert net.state.in_flight_withdrawals("BTC", "btc_hot") == 30_000_000 + w.network_fee_minor
    settle(net)
    assert w.state == "settled"
    assert balance(net, "alice", "BTC") == 200_000_000 - 30_000_000 - FEE
    assert net.ledger.fees("BTC", "spot").balance == FEE
    assert net.btc.balance(dest) == 30_000_000
    # Reconciliation property: the custody account equals the hot wallet's chain balance.
    assert net.ledger.custody("BTC", "btc_hot").balance == net.btc.balance(net.btc_hot)
    assert net.state.in_flight_withdrawals("BTC", "btc_hot") == 0
    net.node.engine.check_invariants()


def test_eth_withdrawal_settles_with_real_gas(net) -> None:
    fund_eth(net, "bob", 5 * 10**18)
    dest = "0x" + "12" * 20
    net.request("e1", "bob", "ETH", dest, 10**18)
    settle(net, "ETH")
    w = _w(net, "e1")
    assert w.state == "settled", (w.state, w.decision_reasons)
    assert net.eth.balance(dest) == 10**18
    assert net.ledger.custody("ETH", "eth_hot").balance == net.eth.balance(net.eth_hot)
    assert balance(net, "bob", "ETH") == 4 * 10**18 - 10**15
    net.node.engine.check_invariants()


def test_two_approvals_initiator_never_approves_and_approvals_expire(net) -> None:
    fund_btc(net, "tina", 400_000_000)  # tina is also an approver on the staff
    net.request("w2", "tina", "BTC", outside_btc_address(2), 150_000_000)  # > 1 BTC: rule large-btc
    net.withdrawals.run_until_idle()
    w = _w(net, "w2")
    assert w.state == "awaiting_approvals" and w.rule == "large-btc" and w.required_approvals == 2
    with pytest.raises(RingfenceError) as exc:
        net.execute(net.sign("approve_withdrawal", "w2", "tina", "approver"))
    assert "never-the-initiator" in str(exc.value)
    with pytest.raises(RingfenceError) as exc:
        net.execute(net.sign("approve_withdrawal", "w2", "ana", "approver"))
    assert "role-required" in str(exc.value)
    with pytest.raises(RingfenceError) as exc:  # the unsigned command of old is retired
        net.execute(ApproveWithdrawal("w2", "BTC", "btc_hot", "tom", "approver"))
    assert "retired" in str(exc.value)
    net.execute(net.sign("approve_withdrawal", "w2", "tom", "approver"))
    net.advance(3601)  # approval TTL is one hour: tom's approval expires
    from ringfence.staff import StaffKey

    net.execute(net.sign("add", StaffKey.generate("tess"), ["approver"], "new approver", ["tina", "tom"]))
    net.execute(net.sign("approve_withdrawal", "w2", "tess", "approver"))
    assert w.state == "awaiting_approvals"  # two approvers, but tom's approval expired: 1 of 2
    net.execute(net.sign("approve_withdrawal", "w2", "tom", "approver"))
    assert w.state == "approved"  # tom's fresh approval and tess's
    settle(net)
    assert w.state == "settled"
    net.node.engine.check_invariants()


def test_new_address_cools_for_24h(net) -> None:
    fund_btc(net, "uma", 100_000_000)
    dest = outside_btc_address(3)
    net.allow_list("uma", "BTC", dest)
    net.request("w3", "uma", "BTC", dest, 10_000_000)
    net.withdrawals.run_until_idle()
    w = _w(net, "w3")
    assert w.state == "approved" and w.rule == "new-address-cooling"
    assert not w.txid  # not signed during the delay
    net.advance(86_400)
    net.withdrawals.run_until_idle()
    assert w.state == "broadcast"


def test_manual_review_of_nearly_all_funds_to_new_address(net) -> None:
    fund_btc(net, "vera", 50_000_000)
    net.request("w4", "vera", "BTC", outside_btc_address(4), 50_000_000 - FEE)  # 100% of the balance
    net.withdrawals.run_until_idle()
    w = _w(net, "w4")
    assert w.manual_review and w.state == "manual_review"
    assert any("mandatory manual review" in r for r in w.risk_reasons)
    assert any("overrides" in r for r in w.decision_reasons)
    with pytest.raises(RingfenceError) as exc:
        net.execute(net.sign("manual_review", "w4", "tina", True, "me"))
    assert "role-required" in str(exc.value)
    net.execute(net.sign("manual_review", "w4", "ana", False, "called the user: not them"))
    assert w.state == "rejected"
    assert net.ledger.find("vera", "BTC").available == 50_000_000  # hold voided, funds back
    net.node.engine.check_invariants()


def test_manual_review_approve_then_settle(net) -> None:
    fund_btc(net, "walt", 50_000_000)
    net.request("w5", "walt", "BTC", outside_btc_address(5), 49_000_000)
    net.withdrawals.run_until_idle()
    net.execute(net.sign("manual_review", "w5", "ana", True, "verified by phone"))
    settle(net)
    assert _w(net, "w5").state == "settled"


def test_policy_deny_and_default_deny(net) -> None:
    fund_btc(net, "xena", 100_000_000)
    strict = {"version": 1, "rules": [
        {"name": "no-btc-over-0.2", "when": {"asset": ["BTC"], "amount_minor_gt": 20_000_000}, "action": {"type": "deny"}},
        {"name": "eth-only", "when": {"asset": ["ETH"]}, "action": {"type": "allow"}}]}
    net.execute(net.desk.propose_policy("p-strict", json.dumps(strict), "pat"))
    net.execute(net.sign("approve_policy", "p-strict", "pia"))
    with pytest.raises(RingfenceError) as exc:
        net.execute(net.sign("approve_policy", "p-strict", "pat"))  # the proposer cannot approve
    assert "never-the-initiator" in str(exc.value)
    net.execute(net.sign("approve_policy", "p-strict", "pol"))
    with pytest.raises(RingfenceError) as exc:
        net.execute(ActivatePolicy("p-strict"))  # a policy change takes effect after 24 h
    assert "takes effect" in str(exc.value)
    net.advance(86_400)
    net.execute(ActivatePolicy("p-strict"))
    net.request("w6", "xena", "BTC", outside_btc_address(6), 30_000_000)
    net.request("w7", "xena", "BTC", outside_btc_address(7), 10_000_000)
    net.withdrawals.run_until_idle()
    assert _w(net, "w6").state == "denied" and _w(net, "w6").rule == "no-btc-over-0.2"
    assert _w(net, "w7").state == "denied" and "default deny" in _w(net, "w7").end_reason
    assert net.ledger.find("xena", "BTC").available == 100_000_000
    net.node.engine.check_invariants()


def test_velocity_window_sends_to_manual_review(net) -> None:
    fund_btc(net, "yuri", 500_000_000)
    for i, amt in enumerate((90_000_000, 90_000_000, 90_000_000)):
        net.request(f"v{i}", "yuri", "BTC", outside_btc_address(8), amt)
        settle(net)
        assert _w(net, f"v{i}").state == "settled"
    net.request("v3", "yuri", "BTC", outside_btc_address(8), 90_000_000)  # 360M in 24 h > 300M
    net.withdrawals.run_until_idle()
    assert _w(net, "v3").state == "manual_review" and _w(net, "v3").rule == "btc-daily-velocity"



def test_btc_withdrawals_signed_in_one_pass_do_not_choose_the_same_coin(net) -> None:
    """Two withdrawals signed by one worker pass, before either is broadcast: the second must not
    pick the coin the first (signed, not yet in the mempool) spends, or the chain refuses it as a
    double spend and the withdrawal fails (the custody bench's 200 BTC withdrawals hit this)."""
    fund_btc(net, "abe", 100_000_000)  # two sweeps: the hot wallet holds two confirmed coins
    fund_btc(net, "bea", 100_000_000)
    assert len(net.btc.unspent(net.btc_hot)) == 2
    net.request("w-pair-1", "abe", "BTC", outside_btc_address(11), 10_000_000)
    net.request("w-pair-2", "bea", "BTC", outside_btc_address(12), 10_000_000)
    net.withdrawals.run_until_idle()
    w1, w2 = _w(net, "w-pair-1"), _w(net, "w-pair-2")
    assert (w1.state, w2.state) == ("broadcast", "broadcast"), (w1.state, w2.state)
    settle(net)
    assert (w1.state, w2.state) == ("settled", "settled")
    assert net.btc.balance(outside_btc_address(11)) == net.btc.balance(outside_btc_address(12)) == 10_000_000
    assert net.ledger.custody("BTC", "btc_hot").balance == net.btc.balance(net.btc_hot)
