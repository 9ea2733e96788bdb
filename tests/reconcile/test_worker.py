"""The reconciler worker against a node whose sequencer thread is running, as in a server."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from eth_account import Account

from ringfence.ledger.commands import CreateTransfers
from ringfence.ledger.model import Transfer
from ringfence.solvency.halts import active_halts
from ringfence.solvency.reconcile import ReconcileSettings, Reconciler, WalletSpec

from .custody_sim import SimCreditDeposit, SimCustody

ONE_ETH = 10**18


def test_worker_pauses_withdrawals_within_one_block_of_a_leak(node, eth):
    node.start()  # the sequencer thread applies commands while the worker reads
    custody = SimCustody()
    sent = eth.adapter.broadcast(eth.dev.sign_transfer(eth.dev.dev_key(1), eth.hot_address, 3 * ONE_ETH))
    node.execute(SimCreditDeposit("ETH", "hot1", "alice", 3 * ONE_ETH, sent.txid, 0))
    wallet = WalletSpec("hot1", "ETH", "ethereum", eth.adapter, (eth.hot_address,))
    rec = Reconciler(node, wallets=[wallet], custody=custody)
    reports = []
    stop = threading.Event()
    worker = threading.Thread(target=rec.run_forever, args=(stop,),
                              kwargs={"poll_ms": 20, "internal_every_ms": 200, "on_report": reports.append})
    worker.start()
    try:
        # busy traffic while the worker compares: no false mismatch from reading mid-batch
        world, alice, bob = (node.engine.ledger.world("BTC").id, node.engine.ledger.get("alice", "BTC").id,
                             node.engine.ledger.get("bob", "BTC").id)
        for i in range(200):
            node.submit(CreateTransfers([Transfer(10_000 + 2 * i, world, alice, 5),
                                         Transfer(10_001 + 2 * i, alice, bob, 3)]))
        node.execute(CreateTransfers([Transfer(99_999, world, bob, 1)]))
        time.sleep(0.6)
        assert active_halts(node.engine) == [], [m.evidence() for r in reports for m in r.mismatches]
        assert any(r.accounts_checked for r in reports)
        attacker = Account.from_key(bytes([0x66]) * 32).address
        leak = eth.adapter.broadcast(eth.dev.sign_transfer(eth.hot_key, attacker, ONE_ETH))
        leak_height = eth.adapter.tx_status(leak.txid).block_height
        deadline = time.monotonic() + 5
        while not active_halts(node.engine) and time.monotonic() < deadline:
            time.sleep(0.01)
        [halt] = active_halts(node.engine)
        evidence = json.loads(halt["evidence"])
        assert evidence["details"]["height"] == leak_height  # seen at the leak's own block
        assert eth.adapter.current_height() == leak_height
        assert (halt["scope_kind"], halt["scope"], halt["level"]) == ("asset", "ETH", "WITHDRAWALS_PAUSED")
    finally:
        stop.set()
        worker.join()


def test_bench_smoke(tmp_path):
    bench = Path(__file__).resolve().parents[2] / "bench" / "reconcile.py"
    out = subprocess.run([sys.executable, str(bench), "--smoke", "--seed", "3"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    line = json.loads(out.stdout.strip().splitlines()[-1])
    assert line["bench"] == "reconcile" and line["smoke"] is True and line["seed"] == 3
    assert line["workload"]["accounts"] == 2_000 and line["baseline"]["seconds"] >= 0
