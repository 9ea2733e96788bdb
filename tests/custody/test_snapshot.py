"""The custody component snapshots and restores exactly (same state hash), mid-flow, and the flow
continues from the snapshot; a halt-style engine guard can scope withdrawal commands by asset/wallet."""

from __future__ import annotations

import pytest

from ringfence.custody.commands import RecordSignedTx, RequestWithdrawal
from ringfence.engine.core import Engine, register_guard
from ringfence.errors import Halted

from .flows import fund_btc, outside_btc_address

PAUSED: set[tuple[str, str]] = set()


@register_guard
def _withdrawals_paused(engine, command) -> None:  # what issue #9's halts guard does, in miniature
    if isinstance(command, (RequestWithdrawal, RecordSignedTx)) and (command.asset, command.wallet) in PAUSED:
        raise Halted(f"withdrawals of {command.asset} from {command.wallet} are paused", field="wallet")


def test_snapshot_restore_mid_flow(net) -> None:
    fund_btc(net, "alice", 100_000_000)
    net.request("s1", "alice", "BTC", outside_btc_address(60), 20_000_000)
    net.request("s2", "alice", "BTC", outside_btc_address(61), 70_000_000)  # big share: needs an approval
    net.withdrawals.run_until_idle()
    h = net.node.engine.state_hash()
    restored = Engine.from_snapshot_bytes(net.node.engine.snapshot_bytes())
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


def test_a_guard_can_pause_withdrawals_per_asset_and_wallet(net) -> None:
    fund_btc(net, "bob", 100_000_000)
    PAUSED.add(("BTC", "btc_hot"))
    try:
        with pytest.raises(Halted):
            net.request("g1", "bob", "BTC", outside_btc_address(62), 10_000_000)
        assert "g1" not in net.state.withdrawals and not [p for p in net.ledger.pending.values() if p.status == "pending"]
    finally:
        PAUSED.clear()
    net.request("g1", "bob", "BTC", outside_btc_address(62), 10_000_000)
    assert net.state.withdrawals["g1"].state == "confirmed"
