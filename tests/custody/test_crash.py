"""Crash at every step of a withdrawal: abandon the node (as a killed process would: no close, no
flush beyond what was journaled) and the workers, recover from the journal, resume. The destination
receives the amount exactly once and the hot wallet sends exactly one transaction."""

from __future__ import annotations

import pytest

from ringfence.custody.workers import SimulatedCrash

from .conftest import balance
from .flows import fund_btc, fund_eth, outside_btc_address

#: (steps of the worker before the crash, injected crash point inside the worker or None)
CRASHES = [(k, None) for k in range(0, 7)] + [
    (0, "after_sign"), (0, "after_record_signed"), (0, "after_broadcast")]


def _drive_to_crash(net, steps: int, point: str | None) -> None:
    for _ in range(steps):
        net.withdrawals.step()
    if point is not None:
        net.withdrawals.crash_at = point
        with pytest.raises(SimulatedCrash):
            for _ in range(10):
                net.withdrawals.step()


@pytest.mark.parametrize("steps,point", CRASHES)
def test_btc_crash_at_each_step_sends_once(net, steps, point) -> None:
    fund_btc(net, "alice", 100_000_000)
    dest = outside_btc_address(9)
    net.request("c1", "alice", "BTC", dest, 20_000_000)
    _drive_to_crash(net, steps, point)
    state_hash = net.node.engine.state_hash()
    net.crash_and_restart()
    assert net.node.engine.state_hash() == state_hash  # recovered exactly what was journaled
    net.withdrawals.run_until_idle()
    net.btc_mine(6)
    net.withdrawals.run_until_idle()
    w = net.state.withdrawals["c1"]
    assert w.state == "settled"
    assert net.btc.balance(dest) == 20_000_000
    spends = [b for h in range(1, net.sim.height + 1) for b in net.sim.block_at(h).txs if b.GetTxid() and any(
        bytes(o.scriptPubKey) == net.btc.script_of_address(dest) for o in b.vout)]
    assert len(spends) == 1
    assert net.ledger.custody("BTC", "btc_hot").balance == net.btc.balance(net.btc_hot)
    assert balance(net, "alice", "BTC") == 100_000_000 - 20_000_000 - 10_000
    net.node.engine.check_invariants()


@pytest.mark.parametrize("point", ["after_sign", "after_broadcast"])
def test_eth_crash_between_effect_and_record_sends_once(net, point) -> None:
    fund_eth(net, "bob", 3 * 10**18)
    dest = "0x" + ("34" if point == "after_sign" else "35") * 20
    nonce_before = net.eth.w3.eth.get_transaction_count(net.eth_hot)
    net.request("c2", "bob", "ETH", dest, 10**18)
    _drive_to_crash(net, 0, point)
    net.crash_and_restart()
    net.withdrawals.run_until_idle()
    net.eth_mine(8)
    net.withdrawals.run_until_idle()
    assert net.state.withdrawals["c2"].state == "settled"
    assert net.eth.balance(dest) == 10**18
    assert net.eth.w3.eth.get_transaction_count(net.eth_hot) == nonce_before + 1
    assert net.ledger.custody("ETH", "eth_hot").balance == net.eth.balance(net.eth_hot)
