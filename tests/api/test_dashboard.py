"""The web dashboard in a real browser (Playwright driving Debian's Chromium, no downloads).

Sign in with a demo key, place an order, see it in the book and in open orders, cancel it, see
the balance return. A screenshot is saved next to the test's temporary files (path printed).
"""

from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    assert Path(CHROMIUM).exists(), "Debian chromium is missing: `make setup` installs it"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def test_sign_in_place_see_cancel(server, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server.base + "/")
    expect(page.locator("#markets button", has_text="BTCUSDT")).to_be_visible()
    page.locator("#markets button", has_text="AAPLXUSDT").click()
    expect(page.locator("#symbol-title")).to_have_text("AAPLXUSDT")
    expect(page.locator("#asks tbody tr").first).to_be_visible()  # the market maker's ladder

    key = server.keys["bob"]
    page.fill("#apikey", key["api_key"])
    page.fill("#apisecret", key["api_secret"])
    page.click("#signin-btn")
    expect(page.locator("#whoami")).to_have_text("signed in as bob")
    usdt_free = page.locator('#balances tr[data-asset="USDT"] td.free')
    expect(usdt_free).not_to_have_text("")
    before = usdt_free.inner_text()

    page.select_option("#side", "BUY")
    page.select_option("#otype", "LIMIT")
    page.fill("#price", "189.50")
    page.fill("#qty", "2.00")
    page.click("#place")
    expect(page.locator("#order-status")).to_contain_text("NEW")
    expect(page.locator('#bids tr[data-price="189.500000"]')).to_be_visible()
    row = page.locator("#open-orders tbody tr").filter(has_text="189.500000")
    expect(row).to_have_count(1)
    expect(usdt_free).not_to_have_text(before)  # 379 USDT are held for the order
    shot = tmp_path / "dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"dashboard screenshot: {shot}")

    row.get_by_role("button", name="Cancel").click()
    expect(page.locator("#order-status")).to_contain_text("CANCELED")
    expect(page.locator("#open-orders tbody tr").filter(has_text="189.500000")).to_have_count(0)
    expect(page.locator('#bids tr[data-price="189.500000"]')).to_have_count(0)
    expect(usdt_free).to_have_text(before)  # the hold is released
    page.screenshot(path=str(tmp_path / "dashboard-after-cancel.png"), full_page=True)
    assert not errors, errors


def test_bad_order_shows_the_servers_message(server, browser):
    page = browser.new_page()
    page.goto(server.base + "/")
    key = server.keys["alice"]
    page.fill("#apikey", key["api_key"])
    page.fill("#apisecret", key["api_secret"])
    page.click("#signin-btn")
    expect(page.locator("#whoami")).to_have_text("signed in as alice")
    page.fill("#price", "NaN")
    page.fill("#qty", "1")
    page.click("#place")
    expect(page.locator("#order-status")).to_contain_text("price")
    expect(page.locator("#order-status")).to_have_class("error")


def test_wrong_secret_does_not_sign_in(server, browser):
    page = browser.new_page()
    page.goto(server.base + "/")
    page.fill("#apikey", server.keys["alice"]["api_key"])
    page.fill("#apisecret", "0" * 64)
    page.click("#signin-btn")
    expect(page.locator("#whoami")).to_contain_text("sign-in failed")


def test_identity_pages_are_served_beside_the_dashboard(server, browser):
    page = browser.new_page()
    page.goto(server.base.replace("127.0.0.1", "localhost") + "/")
    page.click("#account-links >> text=Sign up")
    expect(page).to_have_url(server.base.replace("127.0.0.1", "localhost") + "/signup")
    expect(page.locator("form")).to_be_visible()
    response = page.request.get(server.base + "/security", max_redirects=0)
    assert response.status == 303 and response.headers["location"] == "/login"  # no session yet
    headers = page.request.get(server.base + "/login").headers
    assert "content-security-policy" in headers and headers["x-frame-options"] == "DENY"


def test_por_verifier_page_served_by_the_exchange_checks_a_users_proof(server, browser):
    import json

    import httpx

    from .test_rest import signed_query

    key = server.keys["alice"]
    proof = httpx.get(server.base + "/v1/por/proof?" + signed_query(key["api_secret"], {}), headers={"X-MBX-APIKEY": key["api_key"]}).json()
    root = httpx.get(server.base + "/por/root.json").json()
    page = browser.new_page()
    page.goto(server.base + "/por/verify")
    page.fill("#proof-text", json.dumps(proof))
    page.fill("#root-text", json.dumps(root))
    page.click("#verify")
    expect(page.locator("#verdict")).to_have_text("por: VALID")
    proof["balances"][0] = str(int(proof["balances"][0]) + 1)  # claim one more minor unit
    page.fill("#proof-text", json.dumps(proof))
    page.click("#verify")
    expect(page.locator("#verdict")).to_contain_text("por: INVALID")
