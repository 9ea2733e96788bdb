"""The dashboard's charts and the security centre's "your proof" box against a real
`ringfence serve --demo` process, in Debian's Chromium (Playwright), on the signed-in web session
(issue 19, items 2 and 3):

a newcomer signs up (as in test_web_session.py) → on the dashboard the candlestick chart
(lightweight-charts, vendored; read through its own API: `ringfenceChart.candles.data()`) holds the
same bars as /api/v3/klines → a resting bid shows in the depth chart → a market order from the
session fills: the live kline stream updates the last candle and its volume to what /klines says,
and the user's fill is a marker on that candle → in the security centre "your balances are in proof
#N": Verify recomputes the user's own inclusion proof in the browser (the offline verifier's code,
/por/verifier.js) and says VALID; the same proof with one balance changed is refused; the download
is the user's proof file, which the stdlib verifier accepts against that proof's published root.

Screenshots go to docs/img/charts-*.png.
"""

from __future__ import annotations

import json
import os
import re
import time
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect

from ringfence.money import format_amount
from ringfence.solvency.pol_verifier import verify_proof

from .conftest import Server, cli
from .test_web_session import IMG, browser, sign_up_verify_and_enable_totp  # noqa: F401 (fixture)

SYMBOL = "AAPLXUSDT"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # a proof every 2 s, so that the newcomer's balances are in one soon after the demo funds arrive
    srv = Server(tmp_path_factory.mktemp("charts") / "data", env={"RINGFENCE_POR_EVERY_S": "2"})
    srv.web = srv.base.replace("127.0.0.1", "localhost")
    yield srv
    assert srv.stop() == 0, "the server did not shut down cleanly on SIGTERM"


def shot(page, name: str) -> None:
    IMG.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(IMG / f"charts-{name}.png"), full_page=True)


def poll(what: str, fn, timeout_s: float = 20.0, every_s: float = 0.1):
    """fn() until it returns something truthy; fail naming `what` and the last value after the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = fn()
        if value and not (isinstance(value, tuple) and value[0] is None):
            return value
        assert time.monotonic() < deadline, f"{what}: still {value!r} after {timeout_s} s"
        time.sleep(every_s)


def as_bar(row: list) -> dict:
    """A /klines row as the chart holds it (time in seconds; prices as drawn)."""
    return {"time": row[0] // 1000, "open": float(row[1]), "high": float(row[2]), "low": float(row[3]), "close": float(row[4]),
            "volume": float(row[5])}


CHART_BARS = """() => {
  const c = window.ringfenceChart, vol = new Map(c.volume.data().map((v) => [v.time, v.value]));
  return c.candles.data().map((b) => ({time: b.time, open: b.open, high: b.high, low: b.low, close: b.close,
                                        volume: vol.get(b.time)}));
}"""


def test_candles_volume_depth_fills_and_own_proof_verified(server, browser):  # noqa: F811
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)  # CSP refusals show here
    base = server.web
    totp = sign_up_verify_and_enable_totp(page, base, "charts@example.com")
    errors.clear()  # the sign-up pages are test_web_session's business

    page.goto(base + "/")
    expect(page.locator("#whoami")).to_have_text("signed in as charts@example.com")
    page.click("#demo-funds")
    expect(page.locator("#order-status")).to_contain_text("Demo funds added")
    page.locator("#markets button", has_text=SYMBOL).click()
    expect(page.locator("#symbol-title")).to_have_text(SYMBOL)
    balances_each_whole_and_readable(page)
    expect(page.locator("#price")).to_be_visible()
    page.select_option("#otype", "MARKET")  # a market order has no price: the field goes away
    expect(page.locator("#price")).to_be_hidden()
    page.select_option("#otype", "LIMIT")
    expect(page.locator("#price")).to_be_visible()
    links_readable(page)
    # a price outside the band: the refusal says which prices a buy may use now (decimals, the market's)
    page.select_option("#side", "BUY")
    page.fill("#price", "1.00")
    page.fill("#qty", "1.00")
    seen = len(errors)
    page.click("#place")
    status = page.locator("#order-status.error")
    expect(status).to_contain_text("Filter failure: PERCENT_PRICE_BY_SIDE. The price of a BUY order must be between ")
    lo, hi = re.search(r"must be between (\d+(?:\.\d+)?) and (\d+(?:\.\d+)?) now", status.inner_text()).groups()
    assert Decimal(lo) < Decimal("188.00") < Decimal(hi), (lo, hi)  # the resting bid placed below is inside
    # the refused POST is logged by the browser as a failed load: that one, and only it, is expected
    assert errors[seen:] == ["Failed to load resource: the server responded with a status of 400 (Bad Request)"], errors[seen:]
    del errors[seen:]

    # the chart is lightweight-charts, served by the exchange itself (no CDN), with /klines' bars
    lib = httpx.get(server.base + "/dashboard/vendor/lightweight-charts.js")
    assert lib.status_code == 200 and "Lightweight Charts" in lib.text[:400] and "5.2.1" in lib.text[:400]
    assert page.evaluate("typeof window.LightweightCharts.createChart") == "function"
    assert page.locator("#chart canvas").count() >= 1

    def klines() -> list:
        return httpx.get(server.base + "/api/v3/klines", params={"symbol": SYMBOL, "interval": "1m", "limit": "120"}).json()

    def chart_matches_klines():
        rest, drawn = [as_bar(r) for r in klines()], page.evaluate(CHART_BARS)
        return [rest] if drawn == rest else (None, "chart", drawn[-2:], "klines", rest[-2:])

    poll("the chart's bars equal /api/v3/klines", chart_matches_klines)

    # a resting bid from the session shows in the depth chart (cumulative, from the book)
    page.select_option("#side", "BUY")
    page.select_option("#otype", "LIMIT")
    page.fill("#price", "188.00")
    page.fill("#qty", "3.00")
    page.click("#place")
    expect(page.locator("#order-status")).to_contain_text("NEW")
    depth = poll("the bid at 188 in the depth chart",
                 lambda: (d := page.evaluate("window.ringfenceChart.depth")) and any(p == "188.000000" for p, _ in d["bids"]) and d)
    bids = depth["bids"]
    assert [q for _, q in bids] == sorted(q for _, q in bids), "the depth is cumulative"
    i = next(k for k, (p, _) in enumerate(bids) if p == "188.000000")
    assert bids[i][1] - (bids[i - 1][1] if i else 0) == 3.0, bids  # the level adds the order's 3.00
    assert depth["asks"] and float(depth["asks"][0][0]) > float(bids[0][0])

    # a market order from the session: the kline stream moves the last candle, the fill is marked
    updates_before = page.evaluate("window.ringfenceChart.liveUpdates")
    page.select_option("#otype", "MARKET")
    page.fill("#qty", "1.00")
    page.click("#place")
    expect(page.locator("#order-status")).to_contain_text("FILLED")
    fills = page.evaluate(f"fetch('/session/v3/myTrades?symbol={SYMBOL}').then(r => r.json())")
    assert len(fills) == 1 and fills[0]["isBuyer"], fills
    fill = fills[0]
    bar_time = fill["time"] // 60_000 * 60

    poll("a live kline update after the fill", lambda: page.evaluate("window.ringfenceChart.liveUpdates") > updates_before)
    [rest] = poll("the chart's bars equal /api/v3/klines after the fill", chart_matches_klines)
    last = next(b for b in rest if b["time"] == bar_time)
    assert last["volume"] >= float(fill["qty"]) and last["low"] <= float(fill["price"]) <= last["high"], (last, fill)

    markers = poll("the fill's marker", lambda: page.evaluate("window.ringfenceChart.markers.markers()"))
    assert markers == [{"time": bar_time, "id": str(fill["id"]), "position": "belowBar", "shape": "arrowUp", "color": "#4fc3f7",
                        "text": f"bought {fill['qty']} @ {fill['price']}"}], markers
    assert page.evaluate("window.ringfenceChart.candles.data().some(b => b.time === %d)" % bar_time)
    shot(page, "1-candles-volume-depth-fill")

    # ---- the security centre: "your balances are in proof #N", verified in the browser
    # Proofs are built one at a time, each from a snapshot taken after the one before was published: a proof numbered
    # above the newest one published now holds the balances after the fill (an older one may predate the demo funds).
    published = httpx.get(server.base + "/por/history").json()["proofs"]
    after_fill = int(published[-1]["n"]) if published else 0

    def included():
        page.goto(base + "/security")
        status = page.locator("#proof-status")
        expect(status).not_to_contain_text("Looking for")
        n = status.get_attribute("data-n")
        return status.get_attribute("data-state") == "included" and n and int(n) > after_fill and n

    n = int(poll("the newcomer's balances in a proof taken after the fill", included, timeout_s=40, every_s=0.5))
    expect(page.locator("#proof-status")).to_contain_text(f"Your balances are in proof #{n}")
    page.click("#verify-proof")
    verdict = page.locator("#proof-verdict[data-done]")
    expect(verdict).to_have_text(f"Verified: your balances are included in proof #{n} (por: VALID).", timeout=30_000)
    assert verdict.get_attribute("data-ok") == "1"
    account = page.inner_text("#account-id")
    expect(page.locator("#proof-output")).to_contain_text(f"account:  {account}")
    expect(page.locator("#proof-output")).to_contain_text("USDT")
    # the page shows the proof's balances as amounts with their asset codes, not minor units
    usdt = page.locator('#proof-balances tr[data-asset="USDT"]')
    expect(usdt).to_have_count(1)
    minor = int(usdt.get_attribute("data-minor"))
    assert minor > 0
    expect(usdt.locator("td").nth(1)).to_have_text(f"{format_amount(minor, 6, trim=True)} USDT")
    expect(page.locator("#proof-balances")).not_to_contain_text("minor")
    shot(page, "2-proof-verified")

    # the same check refuses a proof whose balance was changed on the way (one minor unit more)
    def tamper(route):
        doc = route.fetch().json()
        k = next(i for i, b in enumerate(doc["balances"]) if int(b) > 0)
        doc["balances"][k] = str(int(doc["balances"][k]) + 1)
        route.fulfill(status=200, content_type="application/json", body=json.dumps(doc))

    page.route("**/session/v3/por/proof?*", tamper)
    page.reload()
    expect(page.locator("#proof-status")).to_contain_text("Your balances are in proof #")
    page.click("#verify-proof")
    expect(verdict).to_contain_text("por: INVALID: root.hash: the path does not lead to the root hash", timeout=60_000)
    assert verdict.get_attribute("data-ok") == "0"
    shot(page, "3-tampered-proof-refused")
    page.unroute("**/session/v3/por/proof?*")

    # the download is the user's own proof file; the stdlib verifier accepts it against its root
    page.reload()
    n = int(poll("proof status", lambda: page.locator("#proof-status").get_attribute("data-n")))
    with page.expect_download() as dl:
        page.click("#download-proof")
    download = dl.value
    assert download.suggested_filename == f"ringfence-proof-{n}.json"
    proof = Path(download.path()).read_text()
    assert json.loads(proof)["account_id"] == account
    root = httpx.get(server.base + f"/por/history/{n}/root.json").text
    assert verify_proof(proof, root) == (True, "valid")
    assert verify_proof(proof.replace(account, account + "x"), root)[0] is False  # another account's claim: refused

    # the session endpoints need a session
    r = httpx.get(server.base + "/session/v3/por/proof")
    assert r.status_code == 401 and r.json()["code"] == -1002
    assert not errors, errors

    languages_and_fiat(server, page, base, totp)
    assert not errors, errors
    context.close()


def balances_each_whole_and_readable(page) -> None:
    """Every asset held is listed (not only the market's two), each row's total is that asset's own free +
    locked, and amounts show at display precision: ETH's 18 ledger decimals are not all shown."""
    eth = page.locator('#balances tr[data-asset="ETH"]')
    expect(eth).to_have_count(1)  # the demo funds' ETH, though the market is AAPLX/USDT
    account = page.evaluate("fetch('/session/v3/account').then(r => r.json())")
    held = {b["asset"] for b in account["balances"] if Decimal(b["free"]) + Decimal(b["locked"]) > 0}
    rows = page.locator("#balances tbody tr")
    assert {r.get_attribute("data-asset") for r in rows.all()} == held | {"AAPLX", "USDT"}
    for r in rows.all():
        assert Decimal(r.get_attribute("data-total")) == Decimal(r.get_attribute("data-free")) + Decimal(r.get_attribute("data-locked"))
    expect(page.locator("#balances thead th").nth(3)).to_have_text("total")
    expect(eth.locator("td.free")).to_have_text("5.00")  # 5.000000000000000000 in the API
    expect(eth.locator("td.free")).to_have_attribute("title", "5.000000000000000000")  # the exact amount on hover
    expect(page.locator('#balances tr[data-asset="BTC"] td.total')).to_have_text("0.50")


CONTRAST = r"""() => {
  const lum = (c) => { const [r, g, b] = c.match(/[\d.]+/g).slice(0, 3).map((v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
                       return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
  const background = (el) => { for (; el; el = el.parentElement) { const c = getComputedStyle(el).backgroundColor;
                                 if (!/rgba\(.*, 0\)$/.test(c) && c !== "transparent") return c; } return "rgb(255, 255, 255)"; };
  return [...document.querySelectorAll("a")].filter((a) => a.offsetParent !== null).map((a) => {
    const [x, y] = [lum(getComputedStyle(a).color), lum(background(a))];
    return { text: a.textContent, ratio: (Math.max(x, y) + 0.05) / (Math.min(x, y) + 0.05) };
  });
}"""


def links_readable(page) -> None:
    """Every link on the dashboard, the trade hints' "Security centre" ones too, is at least 4.5:1 (WCAG AA)."""
    page.evaluate("for (const id of ['trade-hint', 'trade-hint-pending']) document.getElementById(id).hidden = false")
    links = page.evaluate(CONTRAST)
    assert sum(1 for link in links if link["text"] == "Security centre") >= 3, links
    assert all(link["ratio"] >= 4.5 for link in links), [link for link in links if link["ratio"] < 4.5]
    page.evaluate("for (const id of ['trade-hint', 'trade-hint-pending']) document.getElementById(id).hidden = true")


def languages_and_fiat(server, page, base: str, totp) -> None:
    """Issue 19 item 6, on the same signed-in session: Arabic (right to left) and German through the
    selector, the profile keeps the choice (the next e-mail is German, with the anti-phishing code),
    balances also in a fiat currency from the display rates, and the rates feed command against
    this live node. Screenshots: docs/img/i18n-*.png."""
    def i18n_shot(name: str) -> None:
        IMG.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(IMG / f"i18n-{name}.png"), full_page=True)

    # ---- Arabic from the selector on the security centre: translated, laid out right to left
    page.goto(base + "/security")
    with page.expect_navigation():
        page.select_option("#lang-select", "ar")  # identity.js sends the form on change
    html = page.locator("html")
    expect(html).to_have_attribute("dir", "rtl")
    expect(html).to_have_attribute("lang", "ar")
    expect(page.locator("h1")).to_have_text("مركز الأمان")
    # identity.js's text, from the JSON catalogue (a proof every 2 s here: the number moves on)
    expect(page.locator("#proof-status")).to_contain_text(re.compile(r"أرصدتك موجودة في الإثبات رقم \d+"))
    who = page.locator("#who").bounding_box()
    assert who and who["x"] > 700, who  # the signed-in line starts at the right
    i18n_shot("1-security-centre-ar")

    page.goto(base + "/")
    expect(html).to_have_attribute("dir", "rtl")
    expect(page.locator("#book-panel h2")).to_contain_text("دفتر الأوامر")
    expect(page.locator("#whoami")).to_have_text("مسجّل الدخول باسم charts@example.com")
    page.locator("#markets button", has_text=SYMBOL).click()
    expect(page.locator('#balances tr[data-asset="ETH"]')).to_have_count(1)
    book, trade = page.locator("#book-panel").bounding_box(), page.locator("#trade-panel").bounding_box()
    assert book and trade and book["x"] > trade["x"], (book, trade)  # the grid mirrored: the book on the right
    # fiat: the demo's offline rates, the values the server computes (integers, floored), formatted for Arabic
    with page.expect_navigation():
        page.select_option("#fiat-select", "EUR")
    expect(page.locator("#fiat-head")).to_have_text("القيمة (EUR)")
    total = page.locator("#fiat-total")
    expect(total).to_contain_text("€")
    rows = page.locator("#balances tbody tr")
    amounts = ",".join(f"{r.get_attribute('data-asset')}:{Decimal(r.get_attribute('data-free')) + Decimal(r.get_attribute('data-locked'))}"
                       for r in rows.all())  # each balance whole (free + locked), as the page sends it
    want = httpx.get(server.base + "/v1/fiat/value", params={"amounts": amounts, "currency": "EUR", "locale": "ar"}).json()
    assert want["complete"] and int(want["totalMinor"]) > 0, want
    expect(total).to_have_attribute("data-minor", want["totalMinor"])
    expect(total).to_have_text(want["totalFormatted"])
    i18n_shot("2-dashboard-ar-eur")
    assert page.evaluate("document.documentElement.scrollWidth") <= 1400

    # ---- German: the dashboard and its script's strings, numbers with a decimal comma
    with page.expect_navigation():
        page.select_option("#lang-select", "de")
    expect(html).to_have_attribute("dir", "ltr")
    expect(html).to_have_attribute("lang", "de")
    expect(page.locator("#book-panel h2")).to_contain_text("Orderbuch")
    expect(page.locator("#whoami")).to_have_text("angemeldet als charts@example.com")
    page.locator("#markets button", has_text=SYMBOL).click()
    usdt = page.locator('#balances tr[data-asset="USDT"]')
    whole, frac = usdt.get_attribute("data-free").split(".")  # shown to at most 8 decimals, trailing zeros down to 2
    expect(usdt.locator("td.free")).to_have_text(f"{whole},{frac[:8].rstrip('0').ljust(2, '0')}")
    expect(total).to_have_text(re.compile(r"^[0-9.]+,[0-9]{2}\xa0€$"))
    i18n_shot("3-dashboard-de-eur")
    assert page.evaluate("document.documentElement.scrollWidth") <= 1400  # longer words, still no sideways scrolling

    # the rates feed command against this live node: new rates show; a wrong token changes nothing
    token_file = str(server.data / "rates-token")
    pushed = cli("fiat", "feed", "--url", server.base, "--token-file", token_file, "--rates", str(write_rates(server.data)))
    assert pushed.returncode == 0 and "1 fiat rates, 2 asset prices accepted" in pushed.stdout, pushed.stdout + pushed.stderr
    rates = httpx.get(server.base + "/v1/fiat/rates").json()
    assert rates["fiat"]["EUR"] == "0.5" and rates["assets"]["USDT"] == "1" and rates["source"] == "test feed"
    # `fiat rates` finds the node through $RINGFENCE_URL (no --url) and prints the time as a date
    os.environ["RINGFENCE_URL"] = server.base
    try:
        shown = cli("fiat", "rates", "--currency", "EUR")
    finally:
        del os.environ["RINGFENCE_URL"]
    assert shown.returncode == 0 and "1 USD = 0.5 EUR" in shown.stdout, shown.stdout + shown.stderr
    assert re.search(r"as of \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", shown.stdout), shown.stdout
    refused = cli("fiat", "feed", "--target", server.base, "--token", "wrong", "--demo")
    assert refused.returncode == 1 and "rates token" in refused.stderr, refused.stderr
    assert httpx.get(server.base + "/v1/fiat/rates").json() == rates
    page.reload()
    page.locator("#markets button", has_text=SYMBOL).click()
    want = httpx.get(server.base + "/v1/fiat/value", params={"amounts": amounts, "currency": "EUR", "locale": "de"}).json()
    expect(total).to_have_attribute("data-minor", want["totalMinor"])
    expect(total).to_have_text(want["totalFormatted"])
    currencies = httpx.get(server.base + "/v1/fiat/currencies", params={"locale": "de"}).json()
    assert currencies["count"] >= 90 and len(currencies["currencies"]) == currencies["count"]
    assert {"code": "JPY", "name": "Japanischer Yen", "minorUnits": 0} in currencies["currencies"]
    assert page.locator("#fiat-select option").count() == currencies["count"]

    # the profile kept German: the security centre is German, and so is the next e-mail, with the code
    page.goto(base + "/security")
    expect(page.locator("h1")).to_have_text("Sicherheitscenter")
    # the next step's code: the current one may be the one TOTP was just turned on with (a code works once);
    # the server accepts one step of drift either side
    page.fill("#step-up-code", totp.at(int(time.time()) + 30))
    page.click("#step-up")
    expect(page.locator("#fresh-status")).to_have_text("bestätigt")
    page.fill("#apc-code", "Rhein-Otter_7")
    page.click("#set-apc")
    expect(page.locator("#apc")).to_have_text("Rhein-Otter_7")
    i18n_shot("4-security-centre-de")
    mail = poll("the German security mail", lambda: (page.goto(base + "/dev/mail") or True) and (
        m := page.locator('section.mail[data-to="charts@example.com"]').filter(has_text="[Rhein-Otter_7]")).count() and m.first, every_s=0.5)
    expect(mail.locator(".mail-subject")).to_contain_text("[Rhein-Otter_7] Sicherheitsänderung an Ihrem Konto: Anti-Phishing-Code geändert")
    expect(mail.locator(".mail-body")).to_contain_text("Anti-Phishing-Code: Rhein-Otter_7")
    expect(mail.locator(".mail-body")).to_contain_text("frieren Sie Ihr Konto jetzt mit einem Klick ein")
    i18n_shot("5-mail-de")

    # the proof page follows the language too
    page.goto(base + "/por")
    expect(page.locator("h1")).to_have_text("Solvenznachweis")
    expect(page.locator("#history thead")).to_contain_text("veröffentlicht (UTC)")


def write_rates(data: Path) -> Path:
    path = data.parent / "rates.json"
    path.write_text(json.dumps({"source": "test feed", "fiat": {"EUR": "0.5"}, "assets": {"USDT": "1", "AAPLX": "200"}}))
    return path
