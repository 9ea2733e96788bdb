"""Money in and out of a real `ringfence serve --demo` process (issue 15): the unmodified ccxt client
does the whole round trip — deposit address, the faucet pays (the `ringfence chain` CLI),
confirmations progress, credited, trade, withdraw to the allow-listed address, completed, and the
destination's on-chain balance rose by the amount minus the fee. Bad withdrawal requests get a
clear Binance error and change nothing; stealing from the hot wallet behind the exchange's back
pauses withdrawals of that asset within a block.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import ccxt
import httpx
import pytest

from .conftest import Invoked, Server, cli, invoke

BLOCK_MS = "500"
ENV = {"RINGFENCE_CUSTODY_BLOCK_INTERVAL_MS": BLOCK_MS, "RINGFENCE_CUSTODY_POLL_MS": "200"}


@pytest.fixture(scope="module")
def money(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("capital") / "data", env=ENV)
    yield srv
    assert srv.stop() == 0, "the server did not shut down cleanly on SIGTERM"



def withdraw_key(data: Path) -> dict:
    entries = json.loads((data / "demo-keys.json").read_text())
    (entry,) = [e for e in entries if "withdraw" in e.get("scopes", [])]
    return entry


def client(base: str, key: dict) -> ccxt.binance:
    ex = ccxt.binance({
        "apiKey": key["api_key"], "secret": key["api_secret"],
        "options": {"fetchMarkets": ["spot"], "fetchCurrencies": True, "fetchMargins": False,
                    "adjustForTimeDifference": False, "warnOnFetchOpenOrdersWithoutSymbol": False},
    })
    for name, url in list(ex.urls["api"].items()):
        ex.urls["api"][name] = base + urlsplit(url).path
    return ex


def signed(srv: Server, key: dict, method: str, path: str, params: dict, *, local_address: str | None = None) -> httpx.Response:
    query = urlencode({**params, "timestamp": int(time.time() * 1000), "recvWindow": 10000})
    sig = hmac.new(key["api_secret"].encode(), query.encode(), hashlib.sha256).hexdigest()
    transport = httpx.HTTPTransport(local_address=local_address) if local_address else None
    with httpx.Client(transport=transport, timeout=30) as c:
        headers = {"X-MBX-APIKEY": key["api_key"]}
        if method == "POST":
            return c.post(srv.base + path, content=f"{query}&signature={sig}", headers={**headers, "Content-Type": "application/x-www-form-urlencoded"})
        return c.get(f"{srv.base}{path}?{query}&signature={sig}", headers=headers)


def chain_balance(data: Path, asset: str, address: str) -> Decimal:
    """`ringfence chain balance` in this process (conftest.invoke: polled in loops; `chain pay` runs as a process)."""
    res = invoke("chain", "balance", "--data", str(data), "--asset", asset, "--address", address)
    assert res.returncode == 0, res.stderr
    return Decimal(res.stdout.strip())


def wait_for(what: str, fn, timeout_s: float = 60.0):  # float-ok: test timing
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def test_ccxt_round_trip_deposit_trade_withdraw(money: Server) -> None:
    key = withdraw_key(money.data)
    ex = client(money.base, key)
    currencies = ex.fetch_currencies()
    assert currencies["BTC"]["networks"]["BTC"]["deposit"] is True
    fees = ex.fetch_deposit_withdraw_fees(["BTC"])
    assert fees["BTC"]["withdraw"]["fee"] == 0.0001
    assert ex.fetch_balance()["info"]["canDeposit"] is True and ex.fetch_balance()["info"]["canWithdraw"] is True

    address = ex.fetch_deposit_address("BTC")["address"]
    assert ex.fetch_deposit_address("BTC")["address"] == address, "the same address on every call"
    before = Decimal(str(ex.fetch_balance()["BTC"]["total"]))

    paid = cli("chain", "pay", "--data", str(money.data), "--asset", "BTC", "--to", address, "--amount", "0.5")
    assert paid.returncode == 0, paid.stderr
    txid = paid.stdout.strip()
    assert len(txid) == 64

    seen_states, seen_confs = set(), set()

    def credited():
        rows = [d for d in ex.fetch_deposits("BTC") if d["txid"] == txid]
        for d in rows:
            seen_states.add(d["info"]["status"])
            seen_confs.add(d["info"]["confirmTimes"])
        return rows and rows[0]["info"]["status"] == 1 and rows[0]

    row = wait_for("the deposit to become final", credited)
    assert row["amount"] == 0.5 and row["address"] == address and row["status"] == "ok"
    assert 1 in seen_states and (0 in seen_states or 6 in seen_states), seen_states
    assert len(seen_confs) >= 2, f"confirmations should be seen progressing, saw {seen_confs}"
    assert Decimal(str(ex.fetch_balance()["BTC"]["total"])) == before + Decimal("0.5")

    order = ex.create_order("BTC/USDT", "market", "sell", 0.1)
    assert order["status"] == "closed"

    dest = key["withdraw_addresses"]["BTC"]
    dest_before = chain_balance(money.data, "BTC", dest)
    result = ex.withdraw("BTC", 0.05, dest, params={"network": "BTC"})
    wid = result["id"]

    def completed():
        rows = [w for w in ex.fetch_withdrawals("BTC") if w["id"] == wid]
        return rows and rows[0]["info"]["status"] == 6 and rows[0]

    done = wait_for("the withdrawal to complete", completed, 90)
    assert done["status"] == "ok" and done["txid"] and done["fee"]["cost"] == 0.0001
    assert "completed" in done["info"]["info"]
    rose = chain_balance(money.data, "BTC", dest) - dest_before
    assert rose == Decimal("0.05") - Decimal("0.0001"), rose
    workers = httpx.get(money.base + "/readyz").json()["custody"]["workers"]
    assert {"miner", "deposits-bitcoin", "deposits-ethereum", "withdrawals", "balancer", "reconcile-chain",
            "security-relay"} <= set(workers)
    metrics = httpx.get(money.base + "/metrics").text
    assert 'ringfence_custody_worker_up{worker="withdrawals"} 1.0' in metrics
    assert 'ringfence_chain_height{chain="bitcoin"}' in metrics


def review(data: Path, base: str, *args: str) -> Invoked:
    """The staff console (`ringfence review ...`) against the live server, keys from DIR/demo-staff.json, in this
    process (conftest.invoke; tests/staff/test_review_live.py runs `review` as a process)."""
    return invoke("review", *args, "--url", base)


def staff_key(data: Path, staff_id: str) -> str:
    return f"{data / 'demo-staff.json'}#{staff_id}"


def test_large_withdrawal_waits_for_two_approvers_then_completes_on_chain(money: Server) -> None:
    """Above the demo's review threshold (2 ETH) a withdrawal waits (status 2; the user is not told the rule's
    reasons) for two approvers' signed approvals through the console; one approval is not enough,
    the same person twice counts once, a staff member without the approver role is refused; after
    ada and cy approve it is signed, broadcast and completes, and the destination's balance rises."""
    key = withdraw_key(money.data)
    policy = json.loads(cli("policy", "show", "--key", staff_key(money.data, "pat"), "--url", money.base, "--json").stdout)
    active = json.loads(policy["active_policy"]) if isinstance(policy["active_policy"], str) else policy["active_policy"]
    assert "approver" in json.dumps(active) and "treasury" not in json.dumps(active), active
    assert [(p["proposal_id"], p["proposer"], sorted(p["approvals"]), p["state"]) for p in policy["proposals"]] == [
        ("p-serve-1", "pat", ["pia", "pol"], "active")], policy["proposals"]

    dest = key["withdraw_addresses"]["ETH"]
    dest_before = chain_balance(money.data, "ETH", dest)
    res = signed(money, key, "POST", "/sapi/v1/capital/withdraw/apply", {"coin": "ETH", "address": dest, "amount": "2.5"})
    assert res.status_code == 200, res.text
    wid = res.json()["id"]

    def row() -> dict | None:
        rows = signed(money, key, "GET", "/sapi/v1/capital/withdraw/history", {"coin": "ETH"}).json()
        return next((r for r in rows if r["id"] == wid), None)

    waiting = wait_for("the large withdrawal to wait for approvals", lambda: (r := row()) and r["status"] == 2 and r)
    assert waiting["info"] == "waiting for approval", waiting["info"]  # the rule's reasons are the operators'

    listed = review(money.data, money.base, "list", "--key", staff_key(money.data, "cy"), "--json")
    assert listed.returncode == 0, listed.stderr
    (queued,) = [w for w in json.loads(listed.stdout)["withdrawals"] if w["withdrawal_id"] == wid]
    assert queued["rule"] == "review-large-ETH" and queued["required_approvals"] == 2 and queued["state"] == "awaiting_approvals"

    out = review(money.data, money.base, "approve", wid, "--key", staff_key(money.data, "ada"))
    assert out.returncode == 0 and "1/2" in out.stdout, out.stdout + out.stderr
    out = review(money.data, money.base, "approve", wid, "--key", staff_key(money.data, "ada"))
    assert out.returncode == 1 and "rule 'distinct-people'" in out.stderr, out.stderr
    out = review(money.data, money.base, "approve", wid, "--key", staff_key(money.data, "ben"))  # operator, analyst
    assert out.returncode == 1 and "rule 'role-required'" in out.stderr, out.stderr
    time.sleep(1.5)  # several withdrawal-worker passes: one approval of two sends nothing
    assert row()["status"] == 2 and chain_balance(money.data, "ETH", dest) == dest_before

    out = review(money.data, money.base, "approve", wid, "--key", staff_key(money.data, "cy"))
    assert out.returncode == 0 and "2/2" in out.stdout, out.stdout + out.stderr
    done = wait_for("the approved withdrawal to complete", lambda: (r := row()) and r["status"] == 6 and r, 90)
    assert done["txId"] and done["transactionFee"] == "0.001"
    assert chain_balance(money.data, "ETH", dest) - dest_before == Decimal("2.5") - Decimal("0.001")


BAD = [
    ("unknown network", {"coin": "BTC", "network": "TRX", "amount": "0.01"}, -4019),
    ("malformed address", {"coin": "BTC", "address": "bcrt1qnotanaddress", "amount": "0.01"}, -4033),
    ("below minimum", {"coin": "BTC", "amount": "0.0001"}, -4028),
    ("below minimum after the fee", {"coin": "BTC", "amount": "0.0005"}, -4022),
    ("too many decimals", {"coin": "BTC", "amount": "0.010000001"}, -4021),
    ("not a number", {"coin": "BTC", "amount": "1e-3"}, -1100),
    ("above balance", {"coin": "ETH", "amount": "60"}, -4026),
    ("unknown coin", {"coin": "DOGE", "amount": "1"}, -4018),
]


def _state(srv: Server, key: dict) -> tuple:
    account = signed(srv, key, "GET", "/api/v3/account", {}).json()
    history = signed(srv, key, "GET", "/sapi/v1/capital/withdraw/history", {}).json()
    return sorted((b["asset"], b["free"], b["locked"]) for b in account["balances"]), len(history)


@pytest.mark.parametrize("name,params,code", BAD, ids=[b[0] for b in BAD])
def test_bad_withdrawals_are_refused_and_change_nothing(money: Server, name: str, params: dict, code: int) -> None:
    key = withdraw_key(money.data)
    params = dict(params)
    params.setdefault("address", key["withdraw_addresses"].get(params["coin"], key["withdraw_addresses"]["BTC"]))
    before = _state(money, key)
    res = signed(money, key, "POST", "/sapi/v1/capital/withdraw/apply", params)
    assert res.status_code == 400 and res.json()["code"] == code, (name, res.text)
    assert res.json()["msg"]
    if code in (-4021, -1100):  # the field is named (the -4021 message did not say which)
        assert "'amount'" in res.json()["msg"], res.text
    assert _state(money, key) == before


def test_address_not_in_book_key_without_scope_and_wrong_ip_are_refused(money: Server) -> None:
    key = withdraw_key(money.data)
    before = _state(money, key)
    other = invoke("chain", "balance", "--data", str(money.data), "--asset", "BTC", "--address", "bcrt1qq0000000000000000000000000000000000000")
    assert other.returncode != 0 and "address" in other.stderr  # the CLI names the bad field
    res = signed(money, key, "POST", "/sapi/v1/capital/withdraw/apply",
                 {"coin": "BTC", "address": fetch_bob_deposit_address(money), "amount": "0.01"})
    assert res.json()["code"] == -4035, res.text
    plain = money.keys["alice"]  # alice's ordinary key: read and trade, no withdraw scope
    assert "withdraw" not in plain.get("scopes", [])
    res = signed(money, plain, "POST", "/sapi/v1/capital/withdraw/apply",
                 {"coin": "BTC", "address": key["withdraw_addresses"]["BTC"], "amount": "0.01"})
    assert res.status_code == 401 and res.json()["code"] == -2015, res.text
    res = signed(money, key, "POST", "/sapi/v1/capital/withdraw/apply",
                 {"coin": "BTC", "address": key["withdraw_addresses"]["BTC"], "amount": "0.01"}, local_address="127.0.0.2")
    assert res.status_code == 401 and res.json()["code"] == -2015, res.text
    assert "allow-list" in res.json()["msg"]
    assert _state(money, key) == before


def fetch_bob_deposit_address(srv: Server) -> str:
    res = signed(srv, srv.keys["bob"], "GET", "/sapi/v1/capital/deposit/address", {"coin": "BTC"})
    assert res.status_code == 200, res.text
    return res.json()["address"]


def test_embedded_default_without_chains_says_no_deposits(tmp_path) -> None:
    srv = Server(tmp_path / "plain", demo=False)
    try:
        ready = httpx.get(srv.base + "/readyz").json()
        assert ready["custody"] == {"running": False}
        assert httpx.get(srv.base + "/v1/demo/chain/balance").status_code == 404
        res = cli("chain", "pay", "--data", str(srv.data), "--asset", "BTC", "--to", "x", "--amount", "1")
        assert res.returncode == 2 and "no running demo server" in res.stderr
    finally:
        assert srv.stop() == 0


def test_theft_from_the_hot_wallet_pauses_withdrawals_within_a_block(tmp_path) -> None:
    """Someone who stole two of the hot wallet's three signer shares moves coins out behind the
    exchange's back: chain reconciliation sees the shortfall at the next block and pauses BTC
    withdrawals; the dashboard's banner (trading page and withdraw page, in Chromium) shows it."""
    from ringfence.chains.bitcoin.adapter import BitcoinAdapter
    from ringfence.chains.bitcoin.simulator import BitcoinSimulator
    from ringfence.custody.runtime import CustodyKeys
    from ringfence.custody.wallets import build_btc_payment

    from .frost_shares import StolenTaprootKey

    srv = Server(tmp_path / "theft", env=ENV)
    try:
        key = withdraw_key(srv.data)
        keys = CustodyKeys((srv.data / "custody" / "seed").read_text().strip())
        sim = BitcoinSimulator.load(srv.data / "chains" / "bitcoin.json")  # the chain as the server saved it
        adapter = BitcoinAdapter(sim, "regtest")
        thief = StolenTaprootKey(srv.data)
        hot = json.loads((srv.data / "custody" / "btc-hot.json").read_text())["address"]
        raw, theft_txid, _fee = build_btc_payment(adapter, from_address=hot, key_id="hot", signer=thief,
                                             outputs=[(keys.outside_address("bitcoin", "thief"), 5 * 10**8)],
                                             fee_rate_sat_per_vb=5, request_id="theft", reason="theft")
        sent = cli("chain", "broadcast", "--data", str(srv.data), "--asset", "BTC", "--raw-tx", raw.hex())
        assert sent.returncode == 0, sent.stderr

        def paused():
            halts = httpx.get(srv.base + "/v1/halts").json()
            return [h for h in halts if h["scope"] == "BTC" and h["level"] == "WITHDRAWALS_PAUSED"
                    and "hot_wallet_shortfall" in h["halt_id"]]

        (halt,) = wait_for("withdrawals of BTC to pause", paused, 30)
        evidence = json.loads(halt["evidence"])
        mined_at = BitcoinSimulator.load(srv.data / "chains" / "bitcoin.json").tx_height[theft_txid]
        # reconciled at the block that mined the theft, or at the latest the one after it
        assert mined_at <= evidence["details"]["height"] <= mined_at + 1, (evidence["details"]["height"], mined_at)
        assert evidence["subject"] == "custody:btc_hot:BTC"
        chain = httpx.get(srv.base + "/v1/reconcile").json()["chain"]
        assert chain["wallets"] > 0
        res = signed(srv, key, "POST", "/sapi/v1/capital/withdraw/apply",
                     {"coin": "BTC", "address": key["withdraw_addresses"]["BTC"], "amount": "0.01"})
        assert res.json()["code"] == -4019, res.text
        coins = signed(srv, key, "GET", "/sapi/v1/capital/config/getall", {}).json()
        btc = next(c for c in coins if c["coin"] == "BTC")
        assert btc["networkList"][0]["withdrawEnable"] is False and btc["withdrawAllEnable"] is False
        eth = next(c for c in coins if c["coin"] == "ETH")
        assert eth["networkList"][0]["withdrawEnable"] is True, "only the affected asset pauses"
        # the banner, in Chromium (its own Playwright, closed here: a module-wide one keeps an event
        # loop running that the asyncio tests below would trip over)
        from playwright.sync_api import expect, sync_playwright

        from .test_web_session import ARGS, CHROMIUM

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            try:
                page = browser.new_page()
                for path in ("/", "/wallet/withdraw"):  # the withdraw page shows it signed out too
                    page.goto(srv.base + path)
                    banner = page.locator("#halts")
                    expect(banner).to_be_visible()
                    expect(banner).to_contain_text(f"WITHDRAWALS_PAUSED ({halt['scope_kind']} BTC)")
                    expect(banner).to_contain_text(halt["reason"][:40])
            finally:
                browser.close()
    finally:
        assert srv.stop() == 0


def test_killed_between_signing_and_broadcast_sends_exactly_one_transaction(tmp_path) -> None:
    """SIGKILL the server right after the signed withdrawal is journaled and before it is
    broadcast; after a restart the withdrawal completes with exactly one transaction on chain."""
    import signal

    from ringfence.chains.bitcoin.address import address_to_script
    from ringfence.chains.bitcoin.simulator import BitcoinSimulator

    data = tmp_path / "crash"
    srv = Server(data, env={**ENV, "RINGFENCE_CUSTODY_CRASH_AT": "after_record_signed"})
    key = withdraw_key(data)
    dest = key["withdraw_addresses"]["BTC"]
    res = signed(srv, key, "POST", "/sapi/v1/capital/withdraw/apply", {"coin": "BTC", "address": dest, "amount": "0.03"})
    assert res.status_code == 200, res.text
    wid = res.json()["id"]
    assert srv.proc.wait(60) == -signal.SIGKILL, "the crash point was not reached:\n" + srv.log_text()[-2000:]
    srv.log.close()
    journaled = BitcoinSimulator.load(data / "chains" / "bitcoin.json")
    spk = address_to_script(dest, "regtest")

    def paying(sim) -> int:
        txs = [tx for h in range(1, sim.height + 1) for tx in sim.block_at(h).txs]
        txs += [c.tx for c in sim.mempool.values()]
        return sum(1 for tx in txs if any(bytes(o.scriptPubKey) == spk for o in tx.vout))

    assert paying(journaled) == 0, "nothing was broadcast before the kill"

    again = Server(data, env=ENV)
    try:
        def completed():
            rows = signed(again, key, "GET", "/sapi/v1/capital/withdraw/history", {"coin": "BTC"}).json()
            row = next((r for r in rows if r["id"] == wid), None)
            return row if row and row["status"] == 6 else None

        row = wait_for("the withdrawal to complete after the restart", completed, 90)
        assert chain_balance(data, "BTC", dest) == Decimal("0.03") - Decimal("0.0001") == Decimal(row["amount"])
        # both chains came back (bitcoin from its file, ethereum replayed from its log) and agree with
        # the ledger: chain reconciliation ran after the restart and halted nothing
        status = httpx.get(again.base + "/readyz").json()["custody"]
        assert status["chain_reconciliation"]["mismatches"] == [], status
        assert httpx.get(again.base + "/v1/halts").json() == []
    finally:
        assert again.stop() == 0
    assert paying(BitcoinSimulator.load(data / "chains" / "bitcoin.json")) == 1


def test_usdt_deposit_then_withdrawal_pays_gas_in_eth_and_reconciles(money: Server) -> None:
    """An ERC-20 round trip: the token's gas is booked in ETH from the same hot wallet, so the ETH
    and USDT wallets both still match the chain (no mismatch, no halt)."""
    key = withdraw_key(money.data)
    address = signed(money, key, "GET", "/sapi/v1/capital/deposit/address", {"coin": "USDT", "network": "ETH"}).json()["address"]
    record = json.loads((money.data / "custody" / "eth-hot.json").read_text())
    hot, shield = record["address"], record["shield"]["address"]
    # the demo's shield sweeper may move the earlier trades' USDT fee share from hot to the shield vault
    # meanwhile (every minute): count both, the exchange's own wallets
    def own_usdt() -> Decimal:
        """hot + shield, read twice until the two reads agree: a sweep landing between the two balances of one
        read counted its amount twice (hot before it, shield after it), as a CI run saw (250 - 0.609998)."""
        while True:
            first = (chain_balance(money.data, "USDT", hot), chain_balance(money.data, "USDT", shield))
            if first == (chain_balance(money.data, "USDT", hot), chain_balance(money.data, "USDT", shield)):
                return first[0] + first[1]

    hot_before = own_usdt()
    paid = invoke("chain", "pay", "--data", str(money.data), "--asset", "USDT", "--to", address, "--amount", "250")
    assert paid.returncode == 0, paid.stderr
    txid = paid.stdout.strip()

    def credited():
        rows = signed(money, key, "GET", "/sapi/v1/capital/deposit/hisrec", {"coin": "USDT"}).json()
        return next((r for r in rows if r["txId"] == txid and r["status"] in (6, 1)), None)

    row = wait_for("the USDT deposit to be credited", credited)
    assert row["amount"] == "250" and row["network"] == "ETH"
    # the sweep: the hot wallet sends the deposit address gas, then the address sends its USDT to hot
    wait_for("the USDT to be swept out of the deposit address", lambda: chain_balance(money.data, "USDT", address) == 0)
    assert own_usdt() == hot_before + 250
    assert chain_balance(money.data, "ETH", address) > 0, "the gas top-up's change stays at the address"
    sweeps = httpx.get(money.base + "/readyz").json()["custody"]["token_sweeps"]["USDT"]
    assert sweeps["gas_top_ups"] >= 1 and sweeps["sweeps"] >= 1, sweeps
    # the deposit address's key is in the HSM process: the sweep was signed there, with the policy's yes
    ops = [json.loads(line) for line in (money.data / "custody" / "hsm" / "keyops.jsonl").read_text().splitlines()]
    swept = [o for o in ops if o.get("action") == "hsm_sign" and f"sweep-USDT-{address}" in o.get("reason", "")]
    assert len(swept) == 1 and swept[0]["key_id"].startswith("dep-eth-") and swept[0]["approved_by"] == "custody-policy", swept
    dest = key["withdraw_addresses"]["USDT"]
    before = chain_balance(money.data, "USDT", dest)
    res = signed(money, key, "POST", "/sapi/v1/capital/withdraw/apply", {"coin": "USDT", "address": dest, "amount": "20", "network": "ETH"})
    assert res.status_code == 200, res.text
    wid = res.json()["id"]

    def completed():
        rows = signed(money, key, "GET", "/sapi/v1/capital/withdraw/history", {"coin": "USDT"}).json()
        return next((r for r in rows if r["id"] == wid and r["status"] == 6), None)

    wait_for("the USDT withdrawal to complete", completed, 90)
    assert chain_balance(money.data, "USDT", dest) - before == Decimal("19")

    def reconciled_after():
        status = httpx.get(money.base + "/readyz").json()["custody"]
        return status.get("chain_reconciliation", {}).get("seq", 0) > 0 and status

    status = wait_for("a chain reconciliation pass", reconciled_after)
    assert status["chain_reconciliation"]["mismatches"] == []
    assert [h for h in httpx.get(money.base + "/v1/halts").json() if h["scope"] in ("ETH", "USDT")] == []


def test_eth_withdrawal_is_signed_in_the_hsm_process_and_mined(money: Server) -> None:
    """Issue 16, item 3: the ETH hot wallet's key is in a PKCS#11 token (SoftHSM2) held by its own
    process; serve never loads the token's library. A withdrawal through the Binance API is signed
    there behind the policy side's attestation and paid on the local chain from the HSM's key; the
    HSM process refuses a digest with no attestation or with a used one."""
    import socket as socketlib

    from eth_account import Account
    from eth_utils import keccak

    record = json.loads((money.data / "custody" / "eth-hot.json").read_text())
    hot = record["address"]
    signers = httpx.get(money.base + "/readyz").json()["custody"]["wallet_signers"]
    assert signers["eth_hot"].startswith("hsm secp256k1"), signers
    key = withdraw_key(money.data)
    dest = key["withdraw_addresses"]["ETH"]
    before = chain_balance(money.data, "ETH", dest)
    res = signed(money, key, "POST", "/sapi/v1/capital/withdraw/apply", {"coin": "ETH", "address": dest, "amount": "0.05"})
    assert res.status_code == 200, res.text
    wid = res.json()["id"]

    def completed():
        rows = signed(money, key, "GET", "/sapi/v1/capital/withdraw/history", {"coin": "ETH"}).json()
        return next((r for r in rows if r["id"] == wid and r["status"] == 6 and r.get("txId")), None)

    row = wait_for("the ETH withdrawal to complete", completed, 90)
    fee = Decimal(row["transactionFee"])
    assert chain_balance(money.data, "ETH", dest) - before == Decimal("0.05") - fee, "paid on the local chain"
    raws = [bytes.fromhex(json.loads(line)["tx"]) for line in (money.data / "chains" / "ethereum.jsonl").read_text().splitlines()
            if '"tx"' in line]
    (raw,) = [r for r in raws if "0x" + keccak(r).hex() == row["txId"].lower()]
    assert Account.recover_transaction(raw).lower() == hot.lower(), "the transaction is signed by the HSM's key"
    hsm = money.data / "custody" / "hsm"
    ops = [json.loads(line) for line in (hsm / "keyops.jsonl").read_text().splitlines()]
    signed_ops = [o for o in ops if o.get("action") == "hsm_sign" and f"wd-{wid}-" in o.get("reason", "")]
    assert len(signed_ops) == 1 and signed_ops[0]["approved_by"] == "custody-policy", signed_ops
    # the token's library is loaded in the HSM process and nowhere in serve
    maps = Path(f"/proc/{money.proc.pid}/maps").read_text()
    assert "libsofthsm2" not in maps, "serve loaded the HSM's library: the key could be in its memory"
    (hsm_pid,) = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _is_hsm_child(p, money.proc.pid)]
    assert "libsofthsm2" in Path(f"/proc/{hsm_pid}/maps").read_text(), "positive control: the HSM process has it"

    def ask(request: dict) -> dict:
        with socketlib.socket(socketlib.AF_UNIX) as s:
            s.connect(str(hsm / "hsm.sock"))
            s.sendall(json.dumps(request).encode() + b"\n")
            return json.loads(s.makefile("rb").readline())

    digest = keccak(b"not a transfer the policy approved")
    bare = ask({"op": "sign", "request_id": "t-1", "digest": digest.hex(), "requested_by": "test", "reason": "x"})
    assert bare["error"]["code"] == "RF_ATTESTATION_INVALID", bare
    # only the exchange's own user reaches the socket and the tokens' PINs
    assert (hsm / "hsm.sock").stat().st_mode & 0o777 == 0o600 and hsm.stat().st_mode & 0o777 == 0o700
    assert (hsm / "rf-eth-hot.pin").stat().st_mode & 0o777 == 0o600


def _is_hsm_child(proc: Path, parent: int) -> bool:
    try:
        argv = (proc / "cmdline").read_bytes().split(b"\0")
        ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return False
    return b"ringfence.keys.hsm_server" in argv and ppid == parent


def test_balance_update_on_the_user_data_stream(money: Server) -> None:
    import asyncio

    import websockets

    key = withdraw_key(money.data)
    address = signed(money, key, "GET", "/sapi/v1/capital/deposit/address", {"coin": "ETH"}).json()["address"]

    async def run() -> dict:
        async with httpx.AsyncClient(base_url=money.base) as http:
            listen = (await http.post("/api/v3/userDataStream", headers={"X-MBX-APIKEY": key["api_key"]})).json()["listenKey"]
        async with websockets.connect(money.base.replace("http", "ws") + "/ws/" + listen) as ws:
            paid = await asyncio.to_thread(cli, "chain", "pay", "--data", str(money.data), "--asset", "ETH", "--to", address, "--amount", "0.25")
            assert paid.returncode == 0, paid.stderr
            deadline = time.time() + 60
            while time.time() < deadline:
                msg = json.loads(await asyncio.wait_for(ws.recv(), 60))
                if msg.get("e") == "balanceUpdate":
                    return msg
        raise AssertionError("no balanceUpdate")

    msg = asyncio.run(run())
    assert msg["a"] == "ETH" and msg["d"] == "0.25" and isinstance(msg["E"], int) and isinstance(msg["T"], int)


def test_chains_from_settings_without_demo(tmp_path) -> None:
    """`RINGFENCE_CUSTODY_CHAINS` picks the custodied assets without --demo: the workers run for
    BTC only, other coins are not offered, and there is no faucet (demo only). No staff or policy
    is invented: serve says that no withdrawal policy is active, and real policy admins (a genesis
    made with `ringfence staff init`) propose, approve and activate one through the console."""
    data, keys = tmp_path / "btc-only", tmp_path / "keys"
    made = cli("staff", "init", "--data", str(data), "--member", "ada:operator,approver", "--member", "ben:operator",
               "--member", "pat:policy_admin", "--member", "pia:policy_admin", "--member", "pol:policy_admin",
               "--out-dir", str(keys))
    assert made.returncode == 0, made.stdout + made.stderr
    srv = Server(data, env={**ENV, "RINGFENCE_CUSTODY_CHAINS": "BTC=local"}, demo=False)
    try:
        custody = httpx.get(srv.base + "/readyz").json()["custody"]
        assert set(custody["chains"]) == {"bitcoin"} and "deposits-bitcoin" in custody["workers"]
        assert "deposits-ethereum" not in custody["workers"]
        assert not (srv.data / "custody" / "admin.json").exists()
        assert httpx.post(srv.base + "/v1/demo/chain/pay", json={}).status_code == 404
        assert "custody: no active withdrawal policy" in " ".join(srv.log_text().split()), srv.log_text()[-2000:]
        url = ("--url", srv.base)
        shown = json.loads(invoke("policy", "show", "--key", str(keys / "pat.key"), "--json", *url).stdout)
        assert shown == {"active_policy": "", "proposals": []}, "bootstrap proposed nothing"

        from ringfence.custody.localnet import DEFAULT_POLICY

        policy = tmp_path / "policy.json"
        policy.write_text(json.dumps(DEFAULT_POLICY))
        assert invoke("policy", "propose", "p-1", str(policy), "--key", str(keys / "pat.key"), *url).returncode == 0
        out = invoke("policy", "activate", "p-1", "--key", str(keys / "pat.key"), *url)
        assert out.returncode == 1 and "approvals first" in out.stderr, out.stderr  # no quorum yet
        for admin in ("pia", "pol"):
            out = invoke("policy", "approve", "p-1", "--key", str(keys / f"{admin}.key"), *url)
            assert out.returncode == 0, out.stderr
        out = invoke("policy", "activate", "p-1", "--key", str(keys / "ada.key"), *url)  # staff, but not a policy admin
        assert out.returncode != 0 and "policy admins" in " ".join(out.stderr.split()), out.stdout + out.stderr
        out = invoke("policy", "activate", "p-1", "--key", str(keys / "pat.key"), *url)
        assert out.returncode == 0 and "policy.activated" in out.stdout, out.stdout + out.stderr
        shown = json.loads(invoke("policy", "show", "--key", str(keys / "ada.key"), "--json", *url).stdout)
        assert shown["active_policy"] and [p["state"] for p in shown["proposals"]] == ["active"]
    finally:
        assert srv.stop() == 0


def test_bad_chain_settings_refuse_to_start(tmp_path) -> None:
    env = dict(os.environ, RINGFENCE_CUSTODY_CHAINS="DOGE=local", PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"))
    res = subprocess.run([sys.executable, "-m", "ringfence.cli", "serve", "--data", str(tmp_path / "d"), "--port", str(_free_port())],
                         capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 2 and "RINGFENCE_CUSTODY_CHAINS" in res.stdout + res.stderr, res.stdout + res.stderr
    # an operator KYT list that cannot be read refuses the start too (no silent fallback to the sample)
    env.update(RINGFENCE_CUSTODY_CHAINS="BTC=local", RINGFENCE_KYT_BLACKLIST=str(tmp_path / "missing.csv"))
    res = subprocess.run([sys.executable, "-m", "ringfence.cli", "serve", "--data", str(tmp_path / "k"), "--port", str(_free_port())],
                         capture_output=True, text=True, env=env, timeout=60)
    out = res.stdout + res.stderr
    assert res.returncode == 2 and "RINGFENCE_KYT_BLACKLIST" in out and "missing.csv" in out, out


def _free_port() -> int:
    from .conftest import free_port

    return free_port()


def test_a_mid_sized_eth_withdrawal_waits_for_the_policy_delay_then_is_sent(money: Server) -> None:
    """The demo policy delays ETH withdrawals above 1 ETH (up to the review threshold) by
    DEMO_DELAY_S: status 4 with "a security delay" (not its rule) as the reason, nothing on chain before the
    delay is over, then it completes."""
    from ringfence.custody.runtime import DEMO_DELAY_S

    key = withdraw_key(money.data)
    dest = key["withdraw_addresses"]["ETH"]
    dest_before = chain_balance(money.data, "ETH", dest)
    res = signed(money, key, "POST", "/sapi/v1/capital/withdraw/apply", {"coin": "ETH", "address": dest, "amount": "1.5"})
    assert res.status_code == 200, res.text
    wid, asked = res.json()["id"], time.monotonic()

    def row() -> dict | None:
        rows = signed(money, key, "GET", "/sapi/v1/capital/withdraw/history", {"coin": "ETH"}).json()
        return next((r for r in rows if r["id"] == wid), None)

    held = wait_for("the policy delay", lambda: (r := row()) and r["info"] == "approved; sent after a security delay" and r)
    assert held["status"] == 4 and not held["txId"], held  # the rule's reasons stay the operators'
    assert chain_balance(money.data, "ETH", dest) == dest_before
    done = wait_for("the delayed withdrawal to complete", lambda: (r := row()) and r["status"] == 6 and r, 90)
    assert time.monotonic() - asked >= DEMO_DELAY_S, "sent before the policy's delay was over"
    assert done["txId"] and chain_balance(money.data, "ETH", dest) - dest_before == Decimal("1.5") - Decimal("0.001")


def test_chain_commands_find_the_demo_that_make_serve_demo_started(tmp_path) -> None:
    """Without --data, `chain pay` looks in ./ringfence-data and, when no demo runs there, in
    ./ringfence-data/serve (where `make serve-demo` puts it). A demo whose server is gone is named
    by its URL, so the message shows which directory was read."""
    admin = tmp_path / "ringfence-data" / "serve" / "custody" / "admin.json"
    admin.parent.mkdir(parents=True)
    admin.write_text(json.dumps({"url": "http://127.0.0.1:9", "token": "t"}))
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"))
    args = [sys.executable, "-m", "ringfence.cli", "chain", "pay", "--asset", "BTC", "--to", "x", "--amount", "1"]
    res = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert res.returncode == 2 and "cannot reach the server at http://127.0.0.1:9" in res.stderr, res.stderr
    (tmp_path / "ringfence-data" / "custody").mkdir(parents=True)  # a demo in ./ringfence-data itself wins
    (tmp_path / "ringfence-data" / "custody" / "admin.json").write_text(json.dumps({"url": "http://127.0.0.1:7", "token": "t"}))
    res = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert res.returncode == 2 and "cannot reach the server at http://127.0.0.1:7" in res.stderr, res.stderr


def test_chain_pay_with_a_token_left_by_an_earlier_demo_says_so(money, tmp_path) -> None:
    """DIR/custody/admin.json left by an earlier demo, while another demo now answers at its address:
    the faucet names the file and the running server instead of echoing the endpoint's own hint."""
    stale = tmp_path / "old"
    (stale / "custody").mkdir(parents=True)
    (stale / "custody" / "admin.json").write_text(json.dumps({"url": money.base, "token": "left-from-an-earlier-demo"}))
    res = cli("chain", "pay", "--data", str(stale), "--asset", "BTC", "--to", fetch_bob_deposit_address(money), "--amount", "0.1")
    text = " ".join(res.stderr.split())
    assert res.returncode == 2 and f"the server at {money.base} refused the token in {stale}/custody/admin.json" in text, res.stderr
