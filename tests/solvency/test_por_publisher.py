"""The scheduled publisher over LocalNet (real local chains, a real journaled node).

Each publication: the stdlib-only verifier accepts every user's proof against that proof's root;
coverage per asset equals what the wallets hold on chain at the pinned heights divided by what the
ledger owes; older proofs stay valid for their own root after newer ones appear; `keep` prunes the
oldest (history first, then disk); numbering continues after a restart; a failing reserve source
leaves an honest liabilities-only proof; the shield rule's alert is in the report and on /por.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from ringfence.chains.ethereum import EthereumAdapter, EthereumSettings
from ringfence.custody.commands import RecordTreasuryFunding
from ringfence.custody.localnet import LocalNet
from ringfence.custody.shield import ShieldSweeper, localnet_shield_routes
from ringfence.solvency import ProofStore
from ringfence.solvency.history_page import render_por_page
from ringfence.solvency.pol_builder import DEV_SECRET
from ringfence.solvency.pol_verifier import check_root_document, verify_proof
from ringfence.solvency.publisher import PorPublisher, read_history
from ringfence.solvency.reserve_source import ReserveEvidence, localnet_reserve_source
from ringfence.trading.commands import ListMarket, PlaceOrder

BTC, ETH = 10**8, 10**18


@pytest.fixture(scope="module")
def eth_chain() -> EthereumAdapter:
    return EthereumAdapter.from_settings(EthereumSettings(rpc_url=None))


@pytest.fixture
def net(tmp_path, eth_chain, request) -> LocalNet:
    n = LocalNet(tmp_path / "node", eth=eth_chain, key_seed=request.node.name)
    n.bootstrap()
    return n


def _fund(net: LocalNet) -> None:
    """alice deposits 3 BTC, bob 50 ETH (real deposits, credited, swept into the hot wallets)."""
    addrs = net.open_user("alice")
    net.btc_fund_miner()
    net.btc_send(addrs["bitcoin"], 3 * BTC)
    net.btc_mine(2)
    net.btc_watcher.poll()
    net.btc_balancer.sweep("BTC", "btc_deposit", "btc_hot", net.btc_hot, 10_000)
    net.btc_mine(6)
    net.btc_balancer.record_confirmed("BTC", 1)
    net.btc_watcher.poll()
    addrs = net.open_user("bob")
    net.eth_send(addrs["ethereum"], 50 * ETH)
    net.eth_mine(3)
    net.eth_watcher.poll()
    net.eth_balancer.sweep("ETH", "eth_deposit", "eth_hot", net.eth_hot, 10**15)
    net.eth_mine(8)
    net.eth_balancer.record_confirmed("ETH", 1)
    net.eth_watcher.poll()


def _on_chain(net: LocalNet, chain: str, height: int) -> int:
    adapter = net.btc if chain == "bitcoin" else net.eth
    addresses = [a for a in net.deposit_keys if (a.startswith("0x")) == (chain == "ethereum")]
    if chain == "bitcoin":
        addresses += [net.btc_hot, net.btc_warm, net.cold["btc"], net.cold["shield"]]
    else:
        addresses += [net.eth_hot, net.cold["eth"]]
    return sum(adapter.balance(a, height) for a in addresses)


def test_each_publication_verifies_and_coverage_is_chain_over_ledger(net, tmp_path) -> None:
    _fund(net)
    out = tmp_path / "por"
    pub = PorPublisher(net.node.read, out, DEV_SECRET, sources=[localnet_reserve_source(net)], keep=3, every_s=60)
    entries = []
    for i in range(5):
        entries.append(pub.publish())
        amount = 1_000_000 * (i + 1)  # the treasury's own coins arrive: reserves grow, the journal moves on
        txid = net.btc_send(net.btc_hot, amount)
        net.btc_mine(1)
        net.execute(RecordTreasuryFunding(f"f-{i}", "BTC", "btc_hot", amount, txid))
    history = read_history(out)
    assert [p["n"] for p in history["proofs"]] == [3, 4, 5]
    assert sorted(x.name for x in out.iterdir() if x.is_dir()) == ["3", "4", "5"]  # 1 and 2 pruned from disk
    for p in history["proofs"]:
        folder = out / str(p["n"])
        root = json.loads((folder / "root.json").read_text())
        check_root_document(root)
        store = ProofStore(folder / "proofs")
        for account in ("alice", "bob"):
            assert verify_proof(store.proof_for(account), root) == (True, "valid")
        report = json.loads((folder / "reserves.json").read_text())
        liabilities = dict(zip(root["assets"], (int(s) for s in root["root"]["sums"])))
        for chain, asset in (("bitcoin", "BTC"), ("ethereum", "ETH")):
            held = _on_chain(net, chain, report["chain_heights"][chain])
            row = next(r for r in p["assets"] if r["asset"] == asset)
            assert int(row["reserves_minor"]) == held
            assert row["coverage_bp"] == held * 10_000 // liabilities[asset]
    # an older snapshot's proof stays valid for its own root and only for it
    r3 = json.loads((out / "3" / "root.json").read_text())
    r5 = json.loads((out / "5" / "root.json").read_text())
    alice3 = ProofStore(out / "3" / "proofs").proof_for("alice")
    assert verify_proof(alice3, r3) == (True, "valid") and not verify_proof(alice3, r5)[0]
    bps = [next(r["coverage_bp"] for r in p["assets"] if r["asset"] == "BTC") for p in history["proofs"]]
    assert bps[0] < bps[1] < bps[2]
    # a restart continues the numbering from history.json
    again = PorPublisher(net.node.read, out, DEV_SECRET, keep=3)
    assert again.publish()["n"] == 6 and [p["n"] for p in read_history(out)["proofs"]] == [4, 5, 6]
    assert not read_history(out)["proofs"][-1]["reserves_proven"]  # that one had no source: said so


class BrokenSource:
    name = "broken"

    def evidence(self, snapshot_id_hex: str) -> ReserveEvidence:
        raise ConnectionError("chain RPC unreachable")


def test_a_failing_source_gives_an_honest_liabilities_only_proof(net, tmp_path) -> None:
    _fund(net)
    entry = PorPublisher(net.node.read, tmp_path / "por", DEV_SECRET, sources=[BrokenSource()]).publish()
    assert not entry["reserves_proven"] and "ConnectionError" in entry["reserves_note"]
    assert all(r["coverage_bp"] is None and r["reserves_minor"] is None for r in entry["assets"])
    html = (tmp_path / "por" / "1" / "report.html").read_text()
    assert 'id="no-evidence"' in html and "No reserve evidence" in html
    assert not (tmp_path / "por" / "1" / "evidence.json").exists() and "evidence.json" not in entry["files"]


def test_the_shield_alert_is_in_the_report_and_on_the_page(net, tmp_path) -> None:
    _fund(net)
    net.execute(ListMarket("BTCETH", "BTC", "ETH", "spot", tick_size=10**15, lot_size=10**5, min_qty=10**5, band_ppm=0))
    net.execute(PlaceOrder("alice", "BTCETH", "SELL", "LIMIT", "GTC", price=20 * ETH, quantity=2 * BTC))
    net.execute(PlaceOrder("bob", "BTCETH", "BUY", "LIMIT", "GTC", price=20 * ETH, quantity=2 * BTC))
    sweeper = ShieldSweeper(net.node, {"bitcoin": net.btc}, localnet_shield_routes(net, 10_000), value_asset="BTC")
    sweeper.step()
    net.btc_mine(6)
    sweeper.step()
    out = tmp_path / "por"
    pub = PorPublisher(net.node.read, out, DEV_SECRET, sources=[localnet_reserve_source(net)], value_asset="ETH")
    entry = pub.publish()
    report = json.loads((out / "1" / "reserves.json").read_text())
    shield = report["shield"]
    # valued in ETH: the BTC sides need a BTCETH price — the last trade gives one (20 ETH per BTC)
    assert shield["ok"] is False and shield["alert"] and entry["shield_alert"]
    assert int(shield["shield_value_minor"]) == 20_000 * 20 * ETH // BTC
    btc_row = next(r for r in report["assets"] if r["asset"] == "BTC")
    assert btc_row["shield_fund_minor"] == "20000"  # the accrued share, shown beside (not in) the liabilities
    html = (out / "1" / "report.html").read_text()
    assert 'id="shield-rule" class="rule-alert"' in html and "ALERT" in html
    page = render_por_page(read_history(out), report, read_history(out))
    assert "ALERT" in page and 'id="coverage-chart"' in page
    from prometheus_client import CollectorRegistry, generate_latest

    from ringfence.solvency.publisher import PorMetrics

    registry = CollectorRegistry()
    registry.register(PorMetrics(net.node.read, out, "ETH"))
    metrics = generate_latest(registry).decode()
    assert "ringfence_shield_alert 1.0" in metrics and "ringfence_shield_rule_applicable 1.0" in metrics
    assert 'ringfence_por_coverage_basis_points{asset="BTC"}' in metrics


def test_the_sweep_worker_runs_steps_on_its_schedule(net) -> None:
    _fund(net)
    net.execute(ListMarket("BTCETH", "BTC", "ETH", "spot", tick_size=10**15, lot_size=10**5, min_qty=10**5, band_ppm=0))
    net.execute(PlaceOrder("alice", "BTCETH", "SELL", "LIMIT", "GTC", price=20 * ETH, quantity=2 * BTC))
    net.execute(PlaceOrder("bob", "BTCETH", "BUY", "LIMIT", "GTC", price=20 * ETH, quantity=2 * BTC))
    import threading

    from ringfence.custody.runtime import Supervised

    def sweeps() -> list[str]:
        return net.node.read(lambda e: sorted(t.state for k, t in e.components["custody"].transfers.items()
                                              if k.startswith("shield-")))

    # the same supervised wrapper `serve`'s custody runtime runs it in (its `shield-sweeper` worker)
    sweeper = ShieldSweeper(net.node, {"bitcoin": net.btc}, localnet_shield_routes(net, 10_000))
    worker = Supervised("shield-sweeper", sweeper.step, 200, threading.RLock())
    stop = threading.Event()
    worker.start(stop)
    try:
        deadline = time.time() + 30
        while sweeps() != ["signed"] and time.time() < deadline:
            time.sleep(0.2)
        assert sweeps() == ["signed"], f"no sweep ({worker.status()})"
        with worker.lock:
            net.btc_mine(6)
        while sweeps() != ["recorded"] and time.time() < deadline:
            time.sleep(0.2)
        assert sweeps() == ["recorded"], f"sweep not recorded ({worker.status()})"
    finally:
        stop.set()
        worker.join(10)
    assert worker.steps >= 2 and worker.restarts == 0
    assert net.btc.balance(net.cold["shield"]) == net.ledger.custody("BTC", "shield_btc").balance == 20_000


def test_shield_status_cli_reads_a_live_node(net, tmp_path) -> None:
    import os
    import subprocess
    import sys

    _fund(net)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[2] / "src"), os.environ.get("PYTHONPATH", "")]))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "ringfence.cli", "shield", "status", "--data", str(net.data_dir), *args],
                              capture_output=True, text=True, env=env, timeout=120)

    out = run("--json", "--value-asset", "BTC")
    assert out.returncode == 1, out.stderr  # ETH hot has no BTC price: the rule cannot be checked -> alert
    doc = json.loads(out.stdout)
    assert doc["unpriced"] == ["ETH"] and doc["alert"] and doc["seq"] == net.node.last_seq
    hot = next(r for r in doc["assets"] if r["asset"] == "BTC")["hot_minor"]
    assert int(hot) == net.btc.balance(net.btc_hot)
    text = run("--value-asset", "BTC")
    assert text.returncode == 1 and "ALERT" in text.stdout and "shield fund at sequence" in text.stdout
    bad = run("--value-asset", "no such!")
    assert bad.returncode == 2 and "--value-asset" in bad.stderr
