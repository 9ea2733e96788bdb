"""The web dashboard in a real browser (Playwright driving Debian's Chromium, no downloads).

The market view without signing in, the server's message for a bad order, the identity pages and
the proof verifier beside it. Trading on the web session (sign up, TOTP, place, cancel, CSRF) is
tests/api/test_web_session.py.
"""

from pathlib import Path

import httpx
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


def test_market_view_needs_no_sign_in_and_no_secret_box_exists(server, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server.base + "/")
    expect(page.locator("#markets button", has_text="BTCUSDT")).to_be_visible()
    page.locator("#markets button", has_text="AAPLXUSDT").click()
    expect(page.locator("#symbol-title")).to_have_text("AAPLXUSDT")
    expect(page.locator("#asks tbody tr").first).to_be_visible()  # the market maker's ladder
    expect(page.locator("#whoami")).to_have_text("not signed in")
    # the dashboard trades on the web session: nowhere to paste an API key or its secret
    assert page.locator("input[type=password]").count() == 0 and page.locator("#apikey, #apisecret").count() == 0
    page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
    assert not errors, errors


def test_bad_order_shows_the_servers_message(server, browser):
    from .test_web_session import sign_up_by_http

    web = server.base.replace("127.0.0.1", "localhost")  # the origin the session cookie belongs to
    context = browser.new_context()
    page = context.new_page()
    sign_up_by_http(context, web, "bad-order@example.com")  # the sign-up's pages: test_web_session.py
    page.goto(web + "/")
    expect(page.locator("#whoami")).to_have_text("signed in as bad-order@example.com")
    page.fill("#price", "NaN")
    page.fill("#qty", "1")
    page.click("#place")
    expect(page.locator("#order-status")).to_contain_text("price")
    expect(page.locator("#order-status")).to_have_class("error")
    context.close()


def test_identity_pages_are_served_beside_the_dashboard(server, browser):
    page = browser.new_page()
    page.goto(server.base.replace("127.0.0.1", "localhost") + "/")
    page.click("#signed-out >> text=Sign up")
    expect(page).to_have_url(server.base.replace("127.0.0.1", "localhost") + "/signup")
    expect(page.locator("form[action='/signup']")).to_be_visible()  # beside the language selector's form
    page.goto(server.base + "/")
    expect(page.locator("#whoami")).to_have_text("not signed in")
    header = page.locator("header")
    # signed out, the header offers each way in once (it said "Sign in · Sign up" twice), and the Risk page
    assert header.locator("a:visible", has_text="Sign in").count() == 1 and header.locator("a:visible", has_text="Sign up").count() == 1
    expect(page.locator("#account-links a", has_text="Risk")).to_be_visible()
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
    # balances as amounts with the asset (the exchange wrote the assets' decimals into the page), the
    # exact minor units the proof holds beside them
    reserves = httpx.get(server.base + "/por/reserves.json").json()
    decimals = {row["asset"]: row["decimals"] for row in reserves["assets"]}
    output = page.inner_text("#output")
    for code, minor, total in zip(proof["assets"], proof["balances"], root["root"]["sums"]):
        amount = f"{int(minor) // 10 ** decimals[code]}"
        if int(minor) % 10 ** decimals[code]:
            amount += "." + str(int(minor) % 10 ** decimals[code]).rjust(decimals[code], "0").rstrip("0")
        assert f"your balance {amount} {code}, included in total " in output and f"(minor units: {minor} of {total})" in output, output
    assert "(minor units)" not in output
    proof["balances"][0] = str(int(proof["balances"][0]) + 1)  # claim one more minor unit
    page.fill("#proof-text", json.dumps(proof))
    page.click("#verify")
    expect(page.locator("#verdict")).to_contain_text("por: INVALID")


@pytest.mark.parametrize("path", ["/", "/api/v3/ping", "/api/v3/depth?symbol=BTCUSDT", "/favicon.ico"])
def test_head_answers_as_get_without_a_body(server, path):
    """HEAD on a GET route: GET's status and headers, no body (it was 405 on every route)."""
    got = httpx.get(server.base + path, timeout=10)
    head = httpx.head(server.base + path, timeout=10)
    assert head.status_code == got.status_code == 200, (head.status_code, got.status_code)
    assert head.headers["content-type"] == got.headers["content-type"]
    assert head.content == b""
    assert httpx.head(server.base + "/api/v3/userDataStream", timeout=10).status_code == 405  # POST/PUT/DELETE only


@pytest.mark.parametrize("path", ["/verify-email?token=" + "x" * 32, "/wallet/confirm-address?token=" + "x" * 32,
                                  "/wallet/confirm-withdrawal?id=1&token=" + "x" * 32, "/api/v3/account", "/security"])
def test_head_stays_405_on_mailed_links_and_where_a_caller_is_needed(server, path):
    """A scanner's HEAD on an e-mailed link gets 405 (the intruder review once used up an address
    confirmation with `curl -I`; the links' GET now only shows a button, and HEAD stays out anyway);
    signed and session routes are not probed by HEAD either."""
    assert httpx.head(server.base + path, timeout=10).status_code == 405


def test_the_browser_gets_the_exchanges_icon(server, browser):
    """The dashboard's implicit /favicon.ico request is answered (an SVG), so no page logs a 404 for it."""
    r = httpx.get(server.base + "/favicon.ico", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("image/svg+xml") and b"<svg" in r.content
    page = browser.new_page()
    missing: list[str] = []
    page.on("response", lambda resp: missing.append(resp.url) if resp.status == 404 else None)
    page.goto(server.base + "/")
    page.wait_for_load_state("networkidle")
    assert missing == [], missing
    page.close()


def test_por_pages_show_the_shield_rule_and_reserve_balances_as_amounts(server):
    """/por and the proof's report.html: amounts with their asset; the minor units stay in reserves.json."""
    import re

    reserves = httpx.get(server.base + "/por/reserves.json").json()
    shield = reserves["shield"]
    decimals = {row["asset"]: row["decimals"] for row in reserves["assets"]}[shield["value_asset"]]
    page = httpx.get(server.base + "/por").text
    rule = re.search(r'<p id="shield-rule"[^>]*>(.*?)</p>', page, re.S)
    assert rule is not None and "minor units" not in rule.group(1), rule
    hot = int(shield["hot_value_minor"])
    hot_text = str(hot // 10 ** decimals) + ("." + str(hot % 10 ** decimals).rjust(decimals, "0").rstrip("0") if hot % 10 ** decimals else "")
    assert f"hot wallets {hot_text} {shield['value_asset']}" in rule.group(1)
    # one time format on the page: the table writes each proof's time as the sentence above it does
    latest_time = re.search(r"published (.*?) at journal position", page)
    newest = re.search(r'<td class="published" title="([^"]+)">([^<]+)</td>', page)
    assert latest_time and newest and newest.group(2) == latest_time.group(1) and newest.group(1).endswith("Z"), (latest_time, newest)
    n = httpx.get(server.base + "/por/history").json()["proofs"][-1]["n"]
    report = httpx.get(server.base + f"/por/history/{n}/report.html").text
    assert "balance (minor units)" not in report
    for a in reserves["addresses"]:
        assert f'title="{a["balance_minor"]} minor units"' in report


def _at_step(value: str, step: str) -> str:
    """A decimal string at a tick/step size's decimals with thousands separators (English)."""
    places = len(step.split(".")[1].rstrip("0")) if "." in step else 0
    whole, _, frac = value.partition(".")
    assert set(frac[places:]) <= {"0"}, (value, step)
    text = f"{int(whole):,}"
    return text + ("." + frac[:places].ljust(places, "0") if places else "")


def test_book_shows_each_markets_tick_and_step_with_separators_and_depth_ignores_a_far_bid(server, browser):
    from .test_rest import signed_query

    info = httpx.get(server.base + "/api/v3/exchangeInfo").json()
    filters = {s["symbol"]: {f["filterType"]: f for f in s["filters"]} for s in info["symbols"]}
    # one far bid (at the price band's edge, 10 % under) on BTCUSDT: the depth chart keeps to the book around the mid price
    key = server.keys["bob"]
    placed = httpx.post(server.base + "/api/v3/order?" + signed_query(key["api_secret"], {
        "symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC", "quantity": "0.0010", "price": "55000"}),
        headers={"X-MBX-APIKEY": key["api_key"]})
    assert placed.status_code == 200, placed.text
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(server.base + "/")
    for symbol in ("BTCUSDT", "ETHUSDT", "AAPLXUSDT"):
        page.locator("#markets button", has_text=symbol).click()
        expect(page.locator("#symbol-title")).to_have_text(symbol)
        best_bid = httpx.get(server.base + "/api/v3/depth", params={"symbol": symbol, "limit": 5}).json()["bids"][0][0]
        expect(page.locator("#bids tbody tr").first).to_have_attribute("data-price", best_bid)  # this market's book, drawn
        tick, step = filters[symbol]["PRICE_FILTER"]["tickSize"], filters[symbol]["LOT_SIZE"]["stepSize"]
        row = page.locator("#bids tbody tr").first
        price = row.get_attribute("data-price")
        cells = row.locator("td")
        expect(cells.nth(0)).to_have_text(_at_step(price, tick))
        qty = cells.nth(1).get_attribute("title")
        expect(cells.nth(1)).to_have_text(_at_step(qty, step))
        if symbol == "BTCUSDT":
            assert "," in _at_step(price, tick)  # 60,000-ish: the separator shows
            depth = page.evaluate("({lo: ringfenceChart.depth.lo, hi: ringfenceChart.depth.hi, bids: ringfenceChart.depth.bids.map((l) => l[0])})")
            assert "55000.000000" not in depth["bids"] and depth["lo"] > 55000, depth
            mid = (depth["lo"] + depth["hi"]) / 2
            assert depth["hi"] - depth["lo"] <= mid * 0.1 + 1e-6, depth
