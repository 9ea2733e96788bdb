"""Proof of solvency and the shield fund wired to the custody runtime, in a real `ringfence serve --demo`
(issue 15, items 6-7): no test-only reserve source, no hand-written evidence.

The server proves reserves from its own wallets (deposit addresses, hot, warm, cold, the 2-of-3
shield vault) every 2 s (RINGFENCE_POR_EVERY_S) and runs the shield sweeper every second
(RINGFENCE_SHIELD_SWEEP_EVERY_S) as a supervised custody worker. Checked from outside:

* every published root passes the stdlib-only verifier, and users' proofs verify against it;
* every ownership claim in a proof's evidence verifies for that proof's snapshot (single keys,
  EIP-191 and the multisig vault's script and signatures), and covers the wallets that hold coins;
* coverage per asset (BTC, ETH, USDT) = the claimed addresses' on-chain balances at the proof's
  pinned heights, read back through `ringfence chain balance --height` / liabilities in the root;
* after a trade accrues fees into `insurance:spot`, the sweep moves exactly that share into the
  vault on chain (`ringfence chain balance`) and in the ledger (the proof's shield section), chain
  reconciliation stays clean, and /por shows coverage and the shield rule with its verdict.
"""

from __future__ import annotations

import json
import time
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from ringfence.solvency.pol_verifier import check_root_document, verify_proof
from ringfence.solvency.reserves import load_claims

from .conftest import Server, cli, invoke
from .test_rest import signed_query

ENV = {
    "RINGFENCE_POR_EVERY_S": "2",
    "RINGFENCE_SHIELD_SWEEP_EVERY_S": "1",
    "RINGFENCE_CUSTODY_BLOCK_INTERVAL_MS": "500",
    "RINGFENCE_CUSTODY_POLL_MS": "200",
}
DECIMALS = {"BTC": 8, "ETH": 18, "USDT": 6}
ASSETS_OF_CHAIN = {"bitcoin": ("BTC",), "ethereum": ("ETH", "USDT")}


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("por-custody") / "data", env=ENV)
    yield srv
    assert srv.stop() == 0, "the server did not shut down cleanly on SIGTERM"



def chain_balance(data: Path, asset: str, address: str, height: int | None = None) -> int:
    """`ringfence chain balance` (at the tip, or at a past height), in minor units, in this process (conftest.invoke)."""
    extra = ("--height", str(height)) if height is not None else ()
    res = invoke("chain", "balance", "--data", str(data), "--asset", asset, "--address", address, *extra)
    assert res.returncode == 0, res.stderr
    return int(Decimal(res.stdout.strip()).scaleb(DECIMALS[asset]))


def signed(srv: Server, account_key: dict, method: str, path: str, params: dict) -> httpx.Response:
    query = signed_query(account_key["api_secret"], params)
    headers = {"X-MBX-APIKEY": account_key["api_key"]}
    if method == "POST":
        return httpx.post(f"{srv.base}{path}?{query}", headers=headers, timeout=30)
    return httpx.get(f"{srv.base}{path}?{query}", headers=headers, timeout=30)


def history(srv: Server) -> list[dict]:
    return httpx.get(srv.base + "/por/history", timeout=10).json()["proofs"]  # type: ignore[no-any-return]


def wait_for(what: str, fn, srv: Server, timeout_s: int = 90):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}; server log:\n{srv.log_text()[-3000:]}")


def proof_files(srv: Server, n: int) -> tuple[dict, dict, dict]:
    base = f"{srv.base}/por/history/{n}"
    return tuple(httpx.get(f"{base}/{name}", timeout=10).json() for name in ("root.json", "reserves.json", "evidence.json"))  # type: ignore[return-value]


def deposit_address(srv: Server, key: dict, coin: str) -> str:
    r = signed(srv, key, "GET", "/sapi/v1/capital/deposit/address", {"coin": coin})
    assert r.status_code == 200, r.text
    return str(r.json()["address"])


def test_live_proofs_prove_the_custody_wallets_at_pinned_heights(live: Server) -> None:
    srv = live
    alice = srv.keys["alice"]
    btc_dep, eth_dep = deposit_address(srv, alice, "BTC"), deposit_address(srv, alice, "ETH")
    # deposits on chain: the deposit addresses hold coins (USDT stays in the deposit address)
    for asset, to, amount in (("BTC", btc_dep, "0.3"), ("ETH", eth_dep, "2"), ("USDT", eth_dep, "50")):
        paid = cli("chain", "pay", "--data", str(srv.data), "--asset", asset, "--to", to, "--amount", amount)
        assert paid.returncode == 0, paid.stderr
    start = history(srv)[-1]["n"]

    def proofs_with_deposits() -> list[dict]:
        """Proofs whose pinned heights see the USDT deposit (a token deposit stays in its address)."""
        out = []
        for p in history(srv):
            if p["n"] <= start:
                continue
            _, report, _ = proof_files(srv, p["n"])
            held = {(a["asset"], a["address"].lower()): int(a["balance_minor"]) for a in report["addresses"]}
            if held.get(("USDT", eth_dep.lower()), 0) >= 50 * 10**6 and ("BTC", btc_dep) in held:
                out.append(p)
        return out if len(out) >= 2 else []

    proofs = wait_for("two proofs that see the deposits on chain", proofs_with_deposits, srv)
    vault = httpx.get(srv.base + "/readyz", timeout=10).json()["custody"]["shield"]["routes"][0]["vault_address"]
    hsm_vault = json.loads((srv.data / "custody" / "eth-hot.json").read_text())["shield_btc"]  # its keys: one HSM token each
    assert vault == hsm_vault["address"]
    for i, p in enumerate(proofs[-2:]):
        root, report, evidence = proof_files(srv, p["n"])
        checked = check_root_document(root)  # the stdlib-only verifier
        assert checked["root"]["hash"] == p["root_hash"] and root["snapshot_id"] == p["snapshot_id"]
        for account in ("alice", "bob"):
            mine = signed(srv, srv.keys[account], "GET", "/v1/por/proof", {"snapshot": str(p["n"])})
            assert mine.status_code == 200, mine.text
            assert verify_proof(mine.json(), root) == (True, "valid")
        # every claim re-verified independently for this snapshot; the wallets that hold coins are in it
        claims = load_claims(evidence)
        assert claims and all(c.verify(p["snapshot_id"])[0] for c in claims), [c.verify(p["snapshot_id"]) for c in claims]
        assert {c.type for c in claims} == {"bitcoin", "bitcoin-multisig", "bitcoin-taproot", "evm"}
        hot = json.loads((srv.data / "custody" / "btc-hot.json").read_text())["address"]
        assert [c.address for c in claims if c.type == "bitcoin-taproot"] == [hot], "the FROST hot wallet signs its claim"
        by_asset: dict[str, set[str]] = {}
        for c in claims:
            by_asset.setdefault(c.asset, set()).add(c.address)
        assert {btc_dep, vault} <= by_asset["BTC"]
        (shield_claim,) = [c for c in claims if c.address == vault]  # signed by two of the vault's HSM keys
        assert sorted(shield_claim.pubkeys) == sorted(k["public_key"] for k in hsm_vault["keys"].values())
        assert shield_claim.threshold == 2 and len(shield_claim.signatures) == 2
        assert {a.lower() for a in by_asset["ETH"]} >= {eth_dep.lower()} and by_asset["USDT"] == by_asset["ETH"]
        assert all(a["status"] == "counted" for a in report["addresses"]), report["addresses"]
        heights = evidence["heights"]
        assert report["chain_heights"] == heights == p["chain_heights"] and set(heights) == {"bitcoin", "ethereum"}
        liabilities = dict(zip(root["assets"], (int(s) for s in root["root"]["sums"])))
        rows = {r["asset"]: r for r in p["assets"]}
        for chain, assets in ASSETS_OF_CHAIN.items():
            for asset in assets:
                addresses = sorted(by_asset[asset])
                if i == 0:  # one proof through the CLI a user would run...
                    held = sum(chain_balance(srv.data, asset, a, heights[chain]) for a in addresses)
                else:  # ...the other through the same loopback endpoint directly (faster)
                    held = sum(_balance_at(srv, asset, a, heights[chain]) for a in addresses)
                assert held > 0
                assert int(rows[asset]["reserves_minor"]) == held, (asset, rows[asset], held)
                assert rows[asset]["coverage_bp"] == held * 10_000 // liabilities[asset], rows[asset]
    # the tip moved on since: reading at the pinned height is what makes the numbers reproducible
    assert all(p["chain_heights"]["bitcoin"] < httpx.get(srv.base + "/readyz", timeout=10).json()["custody"]["chains"]["bitcoin"]
               for p in proofs[-2:])
    # every proof the live server published passes the stdlib verifier
    for p in history(srv):
        assert check_root_document(httpx.get(f"{srv.base}/por/history/{p['n']}/root.json").json())["root"]["hash"] == p["root_hash"]
        assert p["reserves_proven"], p["reserves_note"]


def _balance_at(srv: Server, asset: str, address: str, height: int) -> int:
    admin = json.loads((srv.data / "custody" / "admin.json").read_text())
    r = httpx.get(admin["url"] + "/v1/demo/chain/balance", params={"asset": asset, "address": address, "height": str(height)},
                  headers={"Authorization": f"Bearer {admin['token']}"}, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["height"] == height
    return int(r.json()["balance_minor"])


def _commission_minor(fills: list[dict], asset: str) -> list[int]:
    return [int(Decimal(f["commission"]).scaleb(DECIMALS[asset])) for f in fills if f["commissionAsset"] == asset]


def test_fees_reach_the_shield_vault_on_chain_and_in_the_ledger(live: Server) -> None:
    srv = live
    status = httpx.get(srv.base + "/readyz", timeout=10).json()["custody"]
    routes = {r["asset"]: r for r in status["shield"]["routes"]}
    assert {a: (r["from_wallet"], r["to_wallet"]) for a, r in routes.items()} == {
        "BTC": ("btc_hot", "shield_btc"), "ETH": ("eth_hot", "shield_eth"), "USDT": ("eth_hot", "shield_eth")}
    route = routes["BTC"]
    assert status["workers"]["shield-sweeper"]["state"] == "running"
    vault = route["vault_address"]
    # the demo's treasury paid its shield capital into the vault at start (CoinEx's rule holds)
    from ringfence.custody.runtime import DEMO_SHIELD_FUND

    capital = DEMO_SHIELD_FUND["BTC"]
    assert chain_balance(srv.data, "BTC", vault) == capital
    # bob rests 1 BTC inside the market maker's spread, alice takes it: alice pays the BTC fee
    sell = signed(srv, srv.keys["bob"], "POST", "/api/v3/order", {"symbol": "BTCUSDT", "side": "SELL", "type": "LIMIT",
                                                                   "timeInForce": "GTC", "quantity": "1", "price": "61000.01"})
    assert sell.status_code == 200, sell.text
    buy = signed(srv, srv.keys["alice"], "POST", "/api/v3/order", {"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT",
                                                                    "timeInForce": "IOC", "quantity": "1", "price": "61000.01",
                                                                    "newOrderRespType": "FULL"})
    assert buy.status_code == 200, buy.text
    assert buy.json()["status"] == "FILLED", buy.json()
    fees = _commission_minor(buy.json()["fills"], "BTC")
    assert fees and sum(fees) == 100_000  # 0.1 % of 1 BTC
    accrued = sum(f // 10 for f in fees)  # a tenth of each fill's fee to insurance:spot

    def swept_on_chain() -> int:
        return chain_balance(srv.data, "BTC", vault)

    assert wait_for("the sweep into the shield vault on chain", lambda: swept_on_chain() - capital or None, srv, 60) == accrued

    def recorded() -> dict | None:
        newest = history(srv)[-1]
        _, report, _ = proof_files(srv, newest["n"])
        btc = next(r for r in report["shield"]["assets"] if r["asset"] == "BTC")
        return report if btc["vault_minor"] == str(capital + accrued) else None

    report = wait_for("the ledger to record the sweep (custody:shield_btc)", recorded, srv, 60)
    shield = report["shield"]
    btc = next(r for r in shield["assets"] if r["asset"] == "BTC")
    # the fund's claim is untouched, the coins behind it are in the vault, nothing is due or in flight
    assert (btc["accrued_minor"], btc["vault_minor"], btc["capital_minor"], btc["due_minor"], btc["in_flight_minor"]) == (
        str(accrued), str(capital + accrued), str(capital), "0", "0")
    assert btc["vault_wallets"] == ["shield_btc"]
    # CoinEx's rule with its verdict: the vault valued at the last BTCUSDT price vs every hot wallet
    # (the maker's USDT fee share goes to the Ethereum vault, USDT is the value asset itself)
    usdt_vault = int(next(r for r in shield["assets"] if r["asset"] == "USDT")["vault_minor"])
    eth_vault = int(next((r for r in shield["assets"] if r["asset"] == "ETH"), {"vault_minor": "0"})["vault_minor"])
    if eth_vault == 0:
        assert shield["shield_value_minor"] == str((capital + accrued) * 61_000_010_000 // 10**8 + usdt_vault)
    assert shield["applicable"] and shield["ok"] is (int(shield["shield_value_minor"]) >= int(shield["hot_value_minor"]))
    assert shield["ok"] is True and shield["alert"] is False  # the demo's vault is worth more than its hot wallets
    # the vault's coins are reserves of the newest proof, counted through its 2-of-3 multisig claim
    vault_rows = [a for a in report["addresses"] if a["address"] == vault]
    assert vault_rows == [{**vault_rows[0], "asset": "BTC", "type": "bitcoin-multisig", "status": "counted",
                           "balance_minor": str(capital + accrued)}]
    ledger_hot = int(btc["hot_minor"])
    status = httpx.get(srv.base + "/readyz", timeout=10).json()["custody"]
    assert status["workers"]["shield-sweeper"]["restarts"] == 0
    assert status["shield"]["last_step"]["errors"] == {}

    # chain reconciliation still agrees with the ledger after the sweep (no halt of BTC withdrawals)
    def clean_after() -> dict | None:
        rec = httpx.get(srv.base + "/readyz", timeout=10).json()["custody"].get("chain_reconciliation")
        return rec if rec and rec["seq"] > 0 and not rec["mismatches"] else None

    wait_for("a clean chain reconciliation", clean_after, srv, 30)
    hot = httpx.get(srv.base + "/readyz", timeout=10).json()["custody"]
    assert hot["chain_reconciliation"]["halts_submitted"] == []
    assert ledger_hot > 0
    # /por shows coverage per asset and the shield rule with its verdict
    page = httpx.get(srv.base + "/por", timeout=10).text
    for asset in ("BTC", "ETH", "USDT"):
        assert f'polyline class="coverage-line" data-asset="{asset}"' in page, asset
    verdict = 'id="shield-rule" class="rule-alert"' if shield["alert"] else 'id="shield-rule" class="rule-ok"'
    # the rule's values as amounts of the valuation asset (its decimals from its own row), written here
    # from the minor units with Decimal, not with the page's own formatter
    value_decimals = int(next(r for r in shield["assets"] if r["asset"] == shield["value_asset"])["decimals"])
    shown = f"{Decimal(int(shield['shield_value_minor'])).scaleb(-value_decimals):f}"
    shown = shown.rstrip("0").rstrip(".") if "." in shown else shown
    assert verdict in page and f"shield fund {shown} {shield['value_asset']}" in page, (shown, page[page.find("shield-rule"):][:300])
    metrics = httpx.get(srv.base + "/metrics", timeout=10).text
    assert 'ringfence_custody_worker_up{worker="shield-sweeper"} 1.0' in metrics
    for asset in ("BTC", "ETH", "USDT"):
        assert f'ringfence_por_coverage_basis_points{{asset="{asset}"}}' in metrics


def test_chain_balance_at_a_height_refuses_bad_heights(live: Server) -> None:
    vault = httpx.get(live.base + "/readyz", timeout=10).json()["custody"]["shield"]["routes"][0]["vault_address"]
    above = cli("chain", "balance", "--data", str(live.data), "--asset", "BTC", "--address", vault, "--height", "999999999")
    assert above.returncode == 2 and "height" in above.stderr and "tip" in above.stderr, above.stderr
    negative = cli("chain", "balance", "--data", str(live.data), "--asset", "BTC", "--address", vault, "--height", "-1")
    assert negative.returncode == 2 and "--height" in negative.stderr, negative.stderr
    admin = json.loads((live.data / "custody" / "admin.json").read_text())
    r = httpx.get(admin["url"] + "/v1/demo/chain/balance", params={"asset": "BTC", "address": vault, "height": "1e3"},
                  headers={"Authorization": f"Bearer {admin['token']}"}, timeout=10)
    assert r.status_code == 400 and "height" in r.json()["msg"]
    # height 0 (genesis): nothing was in the vault yet
    assert chain_balance(live.data, "BTC", vault, 0) == 0


def test_por_page_shows_coverage_per_asset_and_the_shield_verdict(live: Server, tmp_path) -> None:
    from playwright.sync_api import expect, sync_playwright

    chromium = "/usr/bin/chromium"
    assert Path(chromium).exists(), "Debian chromium is missing: `make setup` installs it"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(live.base + "/por")
            expect(page.locator("svg#coverage-chart")).to_be_visible()
            for asset in ("BTC", "ETH", "USDT"):
                expect(page.locator(f'polyline.coverage-line[data-asset="{asset}"]')).to_have_count(1)
                assert page.locator(f'circle.coverage-point[data-asset="{asset}"]').count() >= 2
            expect(page.locator("#no-evidence")).to_have_count(0)
            rule = page.locator("#shield-rule")
            expect(rule).to_be_visible()
            newest = history(live)[-1]
            expect(rule).to_contain_text("ALERT" if newest["shield_alert"] else "holds")
            page.screenshot(path=str(tmp_path / "por-live.png"), full_page=True)
            print(f"/por screenshot: {tmp_path / 'por-live.png'}")
            assert not errors, errors
        finally:
            browser.close()


def test_eth_and_usdt_fee_shares_reach_the_ethereum_shield_vault(live: Server) -> None:
    """The fee share accrued in ETH and USDT is swept from the Ethereum hot wallet into the shield
    fund's Ethereum vault (`shield_eth`) by real transactions (the USDT one pays its gas in ETH),
    recorded in the ledger, and the vault is proven in the newest proof of reserves."""
    srv = live
    routes = {r["asset"]: r for r in httpx.get(srv.base + "/readyz", timeout=10).json()["custody"]["shield"]["routes"]}
    vault = routes["ETH"]["vault_address"]
    assert routes["USDT"]["vault_address"] == vault
    eth_before, usdt_before = chain_balance(srv.data, "ETH", vault), chain_balance(srv.data, "USDT", vault)
    # bob rests 1 ETH inside the spread, alice takes it: alice pays 0.001 ETH, bob about 3 USDT of fees
    book = httpx.get(srv.base + "/api/v3/depth", params={"symbol": "ETHUSDT", "limit": 5}).json()
    price = str(Decimal(book["asks"][0][0]) - Decimal("0.01")) if book["asks"] else "3000.00"
    assert not book["bids"] or Decimal(book["bids"][0][0]) < Decimal(price), book  # bob's order rests
    sell = signed(srv, srv.keys["bob"], "POST", "/api/v3/order", {"symbol": "ETHUSDT", "side": "SELL", "type": "LIMIT",
                                                                   "timeInForce": "GTC", "quantity": "1", "price": price})
    assert sell.status_code == 200, sell.text
    buy = signed(srv, srv.keys["alice"], "POST", "/api/v3/order", {"symbol": "ETHUSDT", "side": "BUY", "type": "LIMIT",
                                                                    "timeInForce": "IOC", "quantity": "1", "price": price,
                                                                    "newOrderRespType": "FULL"})
    assert buy.status_code == 200 and buy.json()["status"] == "FILLED", buy.text
    eth_fee_share = sum(f // 10 for f in _commission_minor(buy.json()["fills"], "ETH"))
    assert eth_fee_share == 10**14  # a tenth of 0.1 % of 1 ETH

    wait_for("the ETH and USDT fee shares in the Ethereum shield vault on chain",
             lambda: chain_balance(srv.data, "ETH", vault) - eth_before >= eth_fee_share
             and chain_balance(srv.data, "USDT", vault) > usdt_before or None, srv, 60)

    def recorded() -> dict | None:
        newest = history(srv)[-1]
        _, report, _ = proof_files(srv, newest["n"])
        rows = {r["asset"]: r for r in report["shield"]["assets"]}
        ok = all(a in rows and rows[a]["due_minor"] == "0" and rows[a]["in_flight_minor"] == "0"
                 and int(rows[a]["vault_minor"]) > 0 for a in ("ETH", "USDT"))
        return report if ok else None

    report = wait_for("the ledger to record both sweeps (custody:shield_eth)", recorded, srv, 60)
    rows = {r["asset"]: r for r in report["shield"]["assets"]}
    assert rows["ETH"]["vault_wallets"] == rows["USDT"]["vault_wallets"] == ["shield_eth"]
    held = {(a["asset"], a["address"].lower()): a for a in report["addresses"]}
    for asset in ("ETH", "USDT"):  # proven by the vault key's signature; on chain what the ledger booked
        row = held[(asset, vault.lower())]
        assert row["status"] == "counted" and row["balance_minor"] == rows[asset]["vault_minor"], (row, rows[asset])
    status = httpx.get(srv.base + "/readyz", timeout=10).json()["custody"]
    assert status["shield"]["last_step"]["errors"] == {}
    assert [h for h in httpx.get(srv.base + "/v1/halts").json() if h["scope"] in ("ETH", "USDT")] == []
