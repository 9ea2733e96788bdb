"""Proof of solvency on a schedule (issue 15, item 7) against a real `ringfence serve --demo`.

The server publishes a proof every 2 s (RINGFENCE_POR_EVERY_S) with a reserve source plugged in
through RINGFENCE_POR_RESERVE_SOURCES: LocalNet's wallets on their own local chains, where each
proof sees 50 BTC more in the hot wallet (tests/api/por_localnet_source.py). The demo's own
custody chains are off here (RINGFENCE_CUSTODY_CHAINS=none): their source would pin other chains
of the same names. The custody runtime's own source is tested in test_por_custody.py. Through httpx:
/por/history lists the proofs; every published root passes the stdlib-only verifier; each proof's
coverage is recomputed here from its own evidence file (every ownership signature re-checked,
balances summed) and matches; a user's inclusion proof from an older snapshot still verifies
against that snapshot's root (and not against a newer one). In Chromium: /por shows the coverage
chart with one point per proof per asset.

Reproduce by hand: RINGFENCE_POR_EVERY_S=2 RINGFENCE_CUSTODY_CHAINS=none PYTHONPATH=src:tests \
  RINGFENCE_POR_RESERVE_SOURCES=api.por_localnet_source:factory ringfence serve --demo --data /tmp/d
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect, sync_playwright

from ringfence.solvency.pol_verifier import check_root_document, verify_proof
from ringfence.solvency.reserves import load_claims

from .conftest import Server
from .test_rest import signed_query

TESTS = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def por_server(tmp_path_factory):
    env = {
        "RINGFENCE_POR_EVERY_S": "2",
        "RINGFENCE_POR_RESERVE_SOURCES": "api.por_localnet_source:factory",
        "RINGFENCE_CUSTODY_CHAINS": "none",
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    srv = Server(tmp_path_factory.mktemp("por") / "data", env=env)
    yield srv
    assert srv.stop() == 0, "the server did not shut down cleanly on SIGTERM"


def _history(srv, at_least: int, timeout_s: int = 90) -> list[dict]:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        proofs = httpx.get(srv.base + "/por/history", timeout=10).json()["proofs"]
        if len(proofs) >= at_least:
            return proofs
        time.sleep(0.5)
    raise AssertionError(f"fewer than {at_least} proofs after {timeout_s} s; server log:\n{srv.log_text()[-3000:]}")


def _my_proof(srv, account: str, snapshot: int | None = None) -> httpx.Response:
    key = srv.keys[account]
    params = {} if snapshot is None else {"snapshot": str(snapshot)}
    return httpx.get(srv.base + "/v1/por/proof?" + signed_query(key["api_secret"], params),
                     headers={"X-MBX-APIKEY": key["api_key"]}, timeout=10)


def _place_order(srv) -> None:
    key = srv.keys["alice"]
    params = {"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC", "quantity": "0.01",
              "price": "60000"}
    r = httpx.post(srv.base + "/api/v3/order?" + signed_query(key["api_secret"], params),
                   headers={"X-MBX-APIKEY": key["api_key"]}, timeout=10)
    assert r.status_code == 200, r.text


def test_each_scheduled_proof_verifies_and_its_coverage_comes_from_its_evidence(por_server) -> None:
    srv = por_server
    first = _history(srv, 1)[0]
    old_proof = _my_proof(srv, "alice", first["n"])
    assert old_proof.status_code == 200, old_proof.text
    _place_order(srv)  # the journal moves on: the next proofs name another snapshot
    proofs = _history(srv, 4)
    assert [p["n"] for p in proofs] == list(range(proofs[0]["n"], proofs[0]["n"] + len(proofs)))
    btc_coverage = []
    for p in proofs[:4]:
        base = f"{srv.base}/por/history/{p['n']}"
        root = httpx.get(base + "/root.json").json()
        checked = check_root_document(root)  # the stdlib-only verifier accepts the published root
        assert root["snapshot_id"] == p["snapshot_id"] and root["root"]["hash"] == p["root_hash"] == checked["root"]["hash"]
        report = httpx.get(base + "/reserves.json").json()
        evidence = httpx.get(base + "/evidence.json").json()
        assert p["reserves_proven"] and report["reserves_proven"] and evidence["snapshot_id"] == p["snapshot_id"]
        # Recompute reserves from the evidence alone: every claim's signature is re-verified for this
        # snapshot and each counted address's balance comes from the report's per-address list.
        claims = load_claims(evidence)
        assert claims and all(c.verify(p["snapshot_id"])[0] for c in claims), "a published ownership proof does not verify"
        assert {c.type for c in claims} == {"bitcoin", "bitcoin-multisig", "evm"}
        assert report["chain_heights"] == evidence["heights"]
        per_asset: dict[str, int] = {}
        for a in report["addresses"]:
            assert a["status"] == "counted", a
            per_asset[a["asset"]] = per_asset.get(a["asset"], 0) + int(a["balance_minor"])
        liabilities = dict(zip(root["assets"], (int(s) for s in root["root"]["sums"])))
        for row in p["assets"]:
            assert int(row["liabilities_minor"]) == liabilities[row["asset"]]
            if row["asset"] not in per_asset:  # no address claimed for it (AAPLX, USDT): not proven, never "0 %"
                assert row["reserves_minor"] is None and row["coverage_bp"] is None, row
                continue
            held, owed = per_asset[row["asset"]], liabilities[row["asset"]]
            assert int(row["reserves_minor"]) == held
            assert row["coverage_bp"] == (held * 10_000 // owed if owed else None)
        btc_coverage.append(next(r["coverage_bp"] for r in p["assets"] if r["asset"] == "BTC"))
        for account in ("alice", "bob"):  # each user's proof from this very proof verifies against its root
            mine = _my_proof(srv, account, p["n"])
            assert mine.status_code == 200, mine.text
            assert verify_proof(mine.json(), root) == (True, "valid")
    # each proof saw one more 50 BTC block in the hot wallet: coverage rises proof by proof
    assert btc_coverage == sorted(btc_coverage) and len(set(btc_coverage)) == len(btc_coverage), btc_coverage

    # the user's proof from the first (older) snapshot still verifies against that snapshot's root
    old_root = httpx.get(f"{srv.base}/por/history/{first['n']}/root.json").json()
    assert verify_proof(old_proof.json(), old_root) == (True, "valid")
    newest = proofs[-1]
    assert newest["snapshot_id"] != first["snapshot_id"]
    new_root = httpx.get(f"{srv.base}/por/history/{newest['n']}/root.json").json()
    ok, reason = verify_proof(old_proof.json(), new_root)
    assert not ok and "snapshot" in reason, reason


def test_history_files_and_refusals(por_server) -> None:
    srv = por_server
    proofs = _history(srv, 2)
    n = proofs[0]["n"]
    assert set(proofs[0]["files"]) == {"root.json", "reserves.json", "report.html", "evidence.json"}
    page = httpx.get(f"{srv.base}/por/history/{n}/report.html")
    assert page.status_code == 200 and "content-security-policy" in page.headers and "Shield fund" in page.text
    # the per-user store (it holds every user's nonce) is never served, nor anything outside a proof
    for bad in ("proofs", "proofs/meta.json", "history.json", "..%2Fhistory.json", "../../demo-keys.json"):
        assert httpx.get(f"{srv.base}/por/history/{n}/{bad}").status_code == 404, bad
    assert httpx.get(f"{srv.base}/por/history/99999/root.json").status_code == 404
    assert _my_proof(srv, "alice", 99999).status_code == 404
    reply = _my_proof(srv, "alice", 0)
    assert reply.status_code == 400 and "snapshot" in reply.text
    metrics = httpx.get(srv.base + "/metrics").text
    assert "ringfence_por_reserves_proven 1.0" in metrics
    assert 'ringfence_por_coverage_basis_points{asset="BTC"}' in metrics
    assert "ringfence_shield_alert" in metrics


@pytest.fixture(scope="module")
def browser():
    assert Path(CHROMIUM).exists(), "Debian chromium is missing: `make setup` installs it"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def test_por_page_shows_the_coverage_chart(por_server, browser, tmp_path) -> None:
    srv = por_server
    _history(srv, 3)
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(srv.base + "/por")
    chart = page.locator("svg#coverage-chart")
    expect(chart).to_be_visible()
    expect(page.locator('polyline.coverage-line[data-asset="BTC"]')).to_have_count(1)
    shown = page.locator('#history tbody tr').count()
    assert shown >= 3
    # one point per proof for BTC, each with its own coverage in the tooltip, rising left to right
    points = page.locator('circle.coverage-point[data-asset="BTC"]')
    assert points.count() == shown  # the page is one render: its table and its chart list the same proofs
    ys = [float(points.nth(i).get_attribute("cy")) for i in range(points.count())]  # float-ok: pixel positions
    assert ys == sorted(ys, reverse=True) and ys[0] > ys[-1], ys
    expect(page.locator("#no-evidence")).to_have_count(0)
    expect(page.locator("#shield-rule")).to_be_visible()
    expect(page.locator("#history")).to_contain_text("%")
    shot = tmp_path / "por.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"/por screenshot: {shot}")
    assert not errors, errors
