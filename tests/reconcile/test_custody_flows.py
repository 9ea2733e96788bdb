"""With the custody flows: the real deposit/sweep flow reconciles, the custody component is the
CustodyView, and a leaked hot key pauses withdrawals of the asset."""

from __future__ import annotations

import pytest

from eth_utils import to_checksum_address

import ringfence.custody.localnet as localnet

from ringfence.errors import Halted
from ringfence.risk.halts import active_halts
from ringfence.reconcile.reconciler import ReconcileSettings, Reconciler, custody_wallet_specs


def test_real_custody_flows_reconcile_and_a_leak_pauses_eth_withdrawals(tmp_path):
    net = localnet.LocalNet(tmp_path / "node", key_seed="recon-flows")
    net.bootstrap()
    addrs = net.open_user("bob")
    net.eth_send(addrs["ethereum"], 10**18)
    net.eth_mine(3)
    net.eth_watcher.poll()
    net.eth_balancer.sweep("ETH", "eth_deposit", "eth_hot", net.eth_hot, 10**15)
    net.eth_mine(8)
    net.eth_balancer.record_confirmed("ETH", 1)
    net.eth_watcher.poll()
    specs = custody_wallet_specs(net.state, {"ethereum": net.eth}, {"ethereum": ["ETH"]})
    # sweeps pay network fees out of custody: fee dust is an explicit per-asset tolerance
    settings = ReconcileSettings(tolerances_minor={"ETH": 10**15})
    rec = Reconciler(net.node, wallets=specs, custody=net.state, settings=settings)
    report = rec.run_once()
    assert [r.status for r in report.chain_rows] == ["OK"] * len(report.chain_rows)
    assert any(r.wallet == "eth_hot" and r.chain_minor > 0 for r in report.chain_rows)
    assert report.mismatches == [] and active_halts(net.node.engine) == []
    net.eth.broadcast(net.dev.sign_transfer(net.keys["eth-hot"], to_checksum_address("0x" + "77" * 20), 10**16))
    report = rec.run_once(internal=False)
    assert [(m.kind, m.subject) for m in report.mismatches] == [("hot_wallet_shortfall", "custody:eth_hot:ETH")]
    assert [(h["scope_kind"], h["scope"], h["level"]) for h in active_halts(net.node.engine)] == [
        ("asset", "ETH", "WITHDRAWALS_PAUSED")]
    with pytest.raises(Halted):
        net.request("w1", "bob", "ETH", to_checksum_address("0x" + "88" * 20), 10**15)
