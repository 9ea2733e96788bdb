"""The custody component snapshots and restores exactly (same state hash), mid-flow, and the flow
continues from the snapshot; the halts guard scopes withdrawal commands by the asset and wallet
custody declares for them."""

from __future__ import annotations

import pytest

from ringfence.errors import Halted
from ringfence.risk.halts import Halt

from .flows import fund_btc, outside_btc_address
from ringfence.app import engine_from_snapshot

def test_snapshot_restore_mid_flow(net) -> None:
    fund_btc(net, "alice", 100_000_000)
    net.request("s1", "alice", "BTC", outside_btc_address(60), 20_000_000)
    net.request("s2", "alice", "BTC", outside_btc_address(61), 70_000_000)  # big share: needs an approval
    net.withdrawals.run_until_idle()
    h = net.node.engine.state_hash()
    restored = engine_from_snapshot(net.node.engine.snapshot_bytes())
    assert restored.state_hash() == h
    restored.check_invariants()
    net.node.snapshot()
    net.crash_and_restart()  # recovery now starts from the snapshot
    assert net.node.recovery.snapshot_seq == net.node.engine.last_seq  # restored from the snapshot, nothing replayed
    assert net.node.engine.state_hash() == h
    net.btc_mine(6)
    net.withdrawals.run_until_idle()
    assert net.state.withdrawals["s1"].state == "settled"
    assert net.state.withdrawals["s2"].facts_json


def test_a_halt_pauses_withdrawals_per_asset_and_wallet(net) -> None:
    fund_btc(net, "bob", 100_000_000)
    net.node.execute(Halt("cold-paused", "asset", "BTC@btc_cold", "WITHDRAWALS_PAUSED", "test: another wallet"))
    net.node.execute(Halt("hot-paused", "asset", "BTC@btc_hot", "WITHDRAWALS_PAUSED", "test: this wallet"))
    with pytest.raises(Halted):
        net.request("g1", "bob", "BTC", outside_btc_address(62), 10_000_000)
    assert "g1" not in net.state.withdrawals and not [p for p in net.ledger.pending.values() if p.status == "pending"]


def test_a_halt_on_another_wallet_does_not_pause_this_one(net) -> None:
    fund_btc(net, "bob", 100_000_000)
    net.node.execute(Halt("cold-paused", "asset", "BTC@btc_cold", "WITHDRAWALS_PAUSED", "test: another wallet"))
    net.request("g1", "bob", "BTC", outside_btc_address(62), 10_000_000)
    assert net.state.withdrawals["g1"].state == "confirmed"
