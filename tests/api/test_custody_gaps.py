"""Custody gaps of issue 15, driven on real `ringfence serve --demo` processes:

* an ETH deposit credited but not final when the server stops becomes final after the restart (the
  replayed local chain has new block hashes: the watcher resumes from the journal, finds the
  transaction in its new block and journals `RelocateDeposit`; before, it stayed "credited,
  cannot withdraw" for ever);
* a halt raised with the staff console on the asset's deposit wallet (`ETH@eth_deposit`) stops
  the deposit watcher's `CreditDeposit` (the command has no asset field: its scope is read from
  the deposit), and the deposit is credited once the operator quorum lifts the halt.
"""

from __future__ import annotations

import json

from decimal import Decimal

import httpx

from ringfence.app import new_node
from ringfence.custody.commands import custody_state

from .conftest import Server, invoke  # the commands in this process: `chain pay` and `halts` run as processes in test_capital.py, test_console_live.py
from .test_capital import signed, wait_for, withdraw_key

SLOW = {"RINGFENCE_CUSTODY_BLOCK_INTERVAL_MS": "2500", "RINGFENCE_CUSTODY_POLL_MS": "150"}
FAST = {"RINGFENCE_CUSTODY_BLOCK_INTERVAL_MS": "400", "RINGFENCE_CUSTODY_POLL_MS": "150"}


def _row(srv: Server, key: dict, txid: str) -> dict | None:
    rows = signed(srv, key, "GET", "/sapi/v1/capital/deposit/hisrec", {"coin": "ETH"}).json()
    return next((r for r in rows if r["txId"] == txid), None)


def _eth(srv: Server, key: dict) -> Decimal:
    bal = signed(srv, key, "GET", "/api/v3/account", {}).json()["balances"]
    return next((Decimal(b["free"]) + Decimal(b["locked"]) for b in bal if b["asset"] == "ETH"), Decimal(0))


def test_a_deposit_not_final_at_a_restart_becomes_final_and_an_asset_halt_holds_its_credit(tmp_path) -> None:
    data = tmp_path / "data"
    srv = Server(data, env=SLOW)
    key = withdraw_key(data)
    try:
        address = signed(srv, key, "GET", "/sapi/v1/capital/deposit/address", {"coin": "ETH"}).json()["address"]
        before = _eth(srv, key)
        paid = invoke("chain", "pay", "--data", str(data), "--asset", "ETH", "--to", address, "--amount", "0.25")
        assert paid.returncode == 0, paid.stderr
        txid = paid.stdout.strip()
        wait_for("the deposit to be credited (status 6)", lambda: (r := _row(srv, key, txid)) and r["status"] == 6)
    finally:
        assert srv.stop() == 0
    node = new_node(data / "engine")
    node.open()
    (d,) = [d for d in custody_state(node.engine).deposits.values() if d.txid == txid]
    stopped_at = (d.state, d.final, d.height, d.block_hash)
    node.close()
    assert stopped_at[:2] == ("credited", False), f"the test needs a credited, non-final deposit at the stop: {stopped_at}"

    again = Server(data, env=FAST)
    try:
        row = wait_for("the deposit to become final after the restart", lambda: (r := _row(again, key, txid)) and r["status"] == 1
                       and r, 30)
        assert row["confirmTimes"] == "4/4" and row["amount"] == "0.25"
        assert _eth(again, key) == before + Decimal("0.25"), "credited exactly once"

        # a halt of the asset's deposit wallet holds the credit of a deposit that has its
        # confirmations (ObserveDeposit names no wallet, so the deposit is still seen) ...
        staff = f"{data / 'demo-staff.json'}"
        url = ("--url", again.base)
        out = invoke("halts", "raise", "eth-test", "--scope-kind", "asset", "--scope", "ETH@eth_deposit", "--level", "HALTED",
                  "--reason", "test", "--key", staff + "#ada", *url)
        assert out.returncode == 0, out.stderr
        paid = invoke("chain", "pay", "--data", str(data), "--asset", "ETH", "--to", address, "--amount", "0.1")
        assert paid.returncode == 0, paid.stderr
        second = paid.stdout.strip()
        held = wait_for("the halted deposit to reach its confirmations", lambda: (r := _row(again, key, second))
                        and r["confirmTimes"] == "4/4" and r)
        assert held["status"] == 0, f"credited under an ETH halt: {held}"
        assert _eth(again, key) == before + Decimal("0.25")
        # ... and the watcher is not stopped by the refusal: it keeps running for everything else
        workers = httpx.get(again.base + "/readyz").json()["custody"]["workers"]
        assert workers["deposits-ethereum"]["state"] == "running", workers
        out = invoke("halts", "lift", "eth-test", "--reason", "done", "--key", staff + "#ada", "--key", staff + "#ben", *url)
        assert out.returncode == 0, out.stderr
        wait_for("the deposit to be credited after the lift", lambda: (r := _row(again, key, second)) and r["status"] == 1, 30)
        assert _eth(again, key) == before + Decimal("0.35")
    finally:
        assert again.stop() == 0


def test_hot_wallets_drain_to_cold_by_the_policy_band(tmp_path) -> None:
    """`RINGFENCE_DEMO_HOT_BAND=4000,5000,6000` puts a band for ETH and USDT in the demo's policy.
    The treasury fills the hot wallet (100 % of reserves, above 60 %): the rebalancer proposes, the
    engine authorizes and the chain executes a drain of each asset to cold down to 50 %, recorded
    in the ledger, with chain reconciliation clean afterwards."""
    from ringfence.custody.runtime import DEMO_TREASURY

    from .test_capital import chain_balance

    data = tmp_path / "data"
    srv = Server(data, env={**FAST, "RINGFENCE_DEMO_HOT_BAND": "4000,5000,6000"})
    try:
        cold = json.loads((data / "custody" / "eth-hot.json").read_text())["cold"]["address"]  # a key in the HSM process

        def drained() -> dict | None:
            custody = httpx.get(srv.base + "/readyz").json()["custody"]
            rb = custody.get("rebalancer", {})
            return custody if rb.get("executed", 0) >= 2 else None

        wait_for("both drains to be executed", drained, 60)
        eth, usdt = DEMO_TREASURY["ETH"] // 2, DEMO_TREASURY["USDT"] // 2
        wait_for("the cold wallet to hold half the ETH and USDT on chain",
                 lambda: chain_balance(data, "ETH", cold) == Decimal(eth) / 10**18
                 and chain_balance(data, "USDT", cold) == Decimal(usdt) / 10**6, 60)

        def recorded_and_reconciled() -> dict | None:
            custody = httpx.get(srv.base + "/readyz").json()["custody"]
            rec = custody.get("chain_reconciliation", {})
            return custody if rec.get("seq", 0) > 0 and rec.get("mismatches") == [] and custody["workers"]["rebalancer"]["state"] == "running" else None

        wait_for("a clean chain reconciliation after the drains", recorded_and_reconciled, 30)
        assert [h for h in httpx.get(srv.base + "/v1/halts").json() if h["scope"] in ("ETH", "USDT")] == []
        assert httpx.get(srv.base + "/readyz").json()["custody"]["rebalancer"]["proposed"] == 2
    finally:
        assert srv.stop() == 0
