"""The staff console page in a real browser (Playwright driving Debian's Chromium) against a real
`serve --demo`: sign in with a demo staff key, see the halt, fail to lift it alone (the quorum rule
is shown), lift it with a second operator's approval token; see the markets with their filters and
set a fee tier with an approval signed on the command line; the key never leaves the page (every
request and decision is signed with WebCrypto Ed25519 and verified by the server and the engine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from tests.api.conftest import Server

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("admin-page") / "data")
    yield srv
    assert srv.stop() == 0


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ringfence.cli", *args], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, COLUMNS="200"))


def test_lift_a_halt_from_the_console_page(server, tmp_path) -> None:
    assert Path(CHROMIUM).exists(), "Debian chromium is missing"
    staff_file = server.data / "demo-staff.json"
    url = ("--url", server.base)
    # a feed key registered from the command line by the operator quorum (ada submits, ben approves),
    # before the halt (a halt stops admin changes); the page lists it
    feed_key = "ab" * 32
    feed = ("index", "register-feed", "--venue", "pagevenue", "--public-key", feed_key)
    approval = cli(*feed, "--key", f"{staff_file}#ben", "--sign-only", *url)
    assert approval.returncode == 0, approval.stderr
    done = cli(*feed, "--key", f"{staff_file}#ada", "--approval", approval.stdout.strip(), *url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert cli("halts", "raise", "page-1", "--reason", "page test", "--key", f"{staff_file}#ada", *url).returncode == 0
    token = cli("halts", "lift", "page-1", "--reason", "fixed", "--key", f"{staff_file}#ada", "--sign-only", *url).stdout.strip()
    assert token.startswith("ada:")
    # ada's approval of a fee tier, signed on the command line; ben submits it from the page, which signs
    # the same decision in the browser (the two encodings must agree to the byte for the engine to accept)
    fee_token = cli("market", "fees", "2", "--maker", "0.0002", "--taker", "0.0004", "--reason", "page tier",
                    "--key", f"{staff_file}#ada", "--sign-only", *url).stdout.strip()
    assert fee_token.startswith("ada:")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server.base + "/admin")
        page.fill("#keyfile", staff_file.read_text())
        page.fill("#staffid", "ben")
        page.click("#signin")
        expect(page.locator("#who")).to_have_text("signed in as ben")
        row = page.locator('#halts tr[data-halt="page-1"]')
        expect(row).to_contain_text("HALTED")
        row.locator(".lift-reason").fill("fixed")
        row.locator(".lift-submit").click()  # ben alone
        expect(page.locator("#status")).to_contain_text("rule 'quorum'")
        expect(page.locator('#halts tr[data-halt="page-1"]')).to_have_count(1)
        row = page.locator('#halts tr[data-halt="page-1"]')
        row.locator(".lift-reason").fill("fixed")
        row.locator(".lift-approvals").fill(token)
        row.locator(".lift-submit").click()
        expect(page.locator("#status")).to_contain_text("accepted (LiftHaltSigned)")
        expect(page.locator('#halts tr[data-halt="page-1"]')).to_have_count(0)
        market = page.locator('#markets tr[data-symbol="BTCUSDT"]')  # the markets with their filters
        expect(market).to_contain_text("ACTIVE")
        expect(market).to_contain_text("0.01")
        form = page.locator("#fee-tier")
        for name, value in (("tier", "2"), ("maker_rate_ppm", "200"), ("taker_rate_ppm", "400"), ("reason", "page tier")):
            form.locator(f'[name="{name}"]').fill(value)
        form.locator(".fee-tier-approvals").fill(fee_token)
        form.locator(".fee-tier-submit").click()
        expect(page.locator("#status")).to_contain_text("accepted (SetFeeTierSigned)")
        expect(page.locator('#fee-tiers tr[data-tier="2"]')).to_contain_text("400")
        expect(page.locator("#staff")).to_contain_text("ada")
        expect(page.locator('#feed-keys tr[data-venue="pagevenue"]')).to_contain_text(feed_key)
        page.screenshot(path=str(tmp_path / "admin.png"), full_page=True)
        print(f"screenshot: {tmp_path / 'admin.png'}")
        assert not errors, errors
        browser.close()
    lifted = json.loads(cli("halts", "list", "--key", f"{staff_file}#ada", "--json", *url).stdout)["recently_lifted"][0]
    assert lifted["halt_id"] == "page-1" and lifted["approvers"] == ["ben", "ada"]
