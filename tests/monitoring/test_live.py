"""Monitoring in a real `ringfence serve --demo`: events from the web sign-in form and the Binance API
reach the stream, the rules raise alerts with explanations, and an analyst works the case through
staff-signed requests to `/admin/v1/...` and in the staff console page in Chromium."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from playwright.sync_api import expect, sync_playwright

from ringfence.staff.decisions import format_approval, read_key_file
from ringfence.staff.requests import signed_headers
from tests.api.conftest import Server
from tests.staff.staff_login import demo_login, staff_sign_in

# the SQL store (identity, read models) is exercised: `make test` runs this file again on PostgreSQL
pytestmark = pytest.mark.store

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # the shipped rules, with the per-address stuffing threshold at 8 so the test signs in wrongly 8 times, not 20
    # (a wrong password costs an argon2 hash, seconds on a busy machine)
    from ringfence.monitoring.rules import default_rules  # noqa: F401  (the file below must stay valid)

    rules = json.loads((Path(__file__).resolve().parents[2] / "src/ringfence/monitoring/data/default-rules.json").read_text())
    for rule in rules["rules"]:
        if rule["name"] == "failed-sign-ins-per-ip":
            rule["count_gte"] = 8
        if rule["type"] == "behaviour":  # a device or network is familiar after 1 s here (an hour by default)
            rule["settle_s"] = 1
    path = tmp_path_factory.mktemp("rules") / "rules.json"
    path.write_text(json.dumps(rules))
    from ringfence.monitoring.geoip import write_country_db  # a small country database made here: nothing downloaded

    geo = write_country_db(path.with_name("country.mmdb"), {"127.0.0.0/8": "ZZ", "185.1.2.0/24": "RU"})
    srv = Server(tmp_path_factory.mktemp("mon") / "data", env={"RINGFENCE_MONITORING_POLL_MS": "50",
                                                                      "RINGFENCE_TRADING_STP_MARKETS": "ETHUSDT=NONE",
                                                                      "RINGFENCE_MONITORING_RULES": str(path),
                                                                      "RINGFENCE_MONITORING_GEOIP": str(geo)})
    yield srv
    assert srv.stop() == 0, "the server did not shut down cleanly on SIGTERM"


def admin(server: Server, method: str, path: str, body: dict | None = None, staff: str = "cy") -> httpx.Response:
    key = read_key_file(server.data / "demo-staff.json", staff)
    full, _, query = path.partition("?")
    raw = json.dumps(body).encode() if body is not None else b""
    headers = signed_headers(key, method, full, query, raw)
    if body is not None:
        headers["Content-Type"] = "application/json"
    return httpx.request(method, server.base + path, headers=headers, content=raw or None)


def poll(fn, what: str, timeout_s: float = 15):
    deadline = time.monotonic() + timeout_s
    while True:
        out = fn()
        if out:
            return out
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def alerts_for(server: Server, rule: str, account: str) -> list[dict]:
    r = admin(server, "GET", "/admin/v1/alerts?limit=100")
    assert r.status_code == 200, r.text
    return [a for a in r.json()["alerts"] if a["rule"] == rule and a["account_id"] == account]


def test_admin_monitoring_needs_a_signed_staff_request(server) -> None:
    assert httpx.get(server.base + "/admin/v1/alerts").status_code == 401
    assert httpx.get(server.base + "/admin/v1/cases").status_code == 401
    status = admin(server, "GET", "/admin/v1/monitoring").json()
    assert {r["name"] for r in status["rules"]} >= {"failed-sign-ins", "new-device-then-api-key", "wash-trade", "spoofing"}
    assert admin(server, "GET", "/admin/v1/cases?status=weird").json()["field"] == "status"
    # what monitoring knows about customers is for analysts: an operator (ada) and a policy admin (pat) are refused
    for staff in ("ada", "pat"):
        for path in ("/admin/v1/alerts", "/admin/v1/cases", "/admin/v1/cases/1", "/admin/v1/links",
                     "/admin/v1/baselines?account_id=alice"):
            r = admin(server, "GET", path, staff=staff)
            assert r.status_code == 403 and "analyst" in r.json()["message"], (staff, path, r.text)


@pytest.fixture(scope="module")
def bob_guessed(server) -> None:
    """Five wrong passwords for bob through the real sign-in form (once per module)."""
    web = server.base.replace("127.0.0.1", "localhost")  # the origin the sign-in pages belong to
    for _ in range(5):
        r = httpx.post(web + "/login", data={"email": "bob@demo.ringfence.local", "password": "not the password"},
                       headers={"Origin": web, "User-Agent": "guesser/1.0"})
        assert r.status_code in (401, 429), r.text


def test_failed_sign_ins_raise_an_alert_that_an_analyst_works_to_a_close(server, bob_guessed) -> None:
    [alert] = poll(lambda: alerts_for(server, "failed-sign-ins", "bob"), "the failed-sign-ins alert")
    assert "5 sign_in_failed events for account_id bob" in alert["explanation"] and len(alert["evidence"]) == 5

    case_id = alert["case_id"]
    cases = admin(server, "GET", "/admin/v1/cases?status=active").json()["cases"]
    assert [c for c in cases if c["case_id"] == case_id][0]["account_id"] == "bob"
    path = f"/admin/v1/cases/{case_id}"
    assert admin(server, "POST", path + "/assign", {"assignee": "nobody"}).json()["field"] == "assignee"
    assert admin(server, "POST", path + "/assign", {"assignee": "ada"}).json()["field"] == "assignee"  # no analyst
    for outsider in ("ada", "pat"):  # operator/approver, policy admin: a case is an analyst's to work or close
        refused = admin(server, "POST", path + "/close", {"reason": "false_positive", "note": "not mine"}, staff=outsider)
        assert refused.status_code == 403 and "role-required" in refused.text, refused.text
    assert admin(server, "POST", path + "/assign", {"assignee": "cy"}).json()["assignee"] == "cy"
    assert admin(server, "POST", path + "/note", {"note": "guessing from one address"}).status_code == 200
    assert admin(server, "POST", path + "/escalate", {"note": "needs a second look"}).json()["status"] == "escalated"

    # pausing withdrawals needs the analyst's own signed decision over (case, account, reason)
    cy = read_key_file(server.data / "demo-staff.json", "cy")
    expires = time.time_ns() + 600 * 10**9
    token = format_approval(cy.sign("monitoring.pause_withdrawals", [case_id, "bob", "guessing"], expires))
    wrong = format_approval(cy.sign("monitoring.pause_withdrawals", [case_id, "bob", "other reason"], expires))
    refused = admin(server, "POST", path + "/actions", {"action": "pause_withdrawals", "reason": "guessing", "decision": wrong})
    assert refused.status_code in (400, 401, 403) and refused.json()["field"] == "decision", refused.text
    ada = read_key_file(server.data / "demo-staff.json", "ada")  # an operator without the analyst role
    not_analyst = format_approval(ada.sign("monitoring.pause_withdrawals", [case_id, "bob", "guessing"], expires))
    r = admin(server, "POST", path + "/actions", {"action": "pause_withdrawals", "reason": "guessing", "decision": not_analyst},
              staff="ada")
    assert r.status_code == 403 and "role-required" in r.json()["message"], r.text
    done = admin(server, "POST", path + "/actions", {"action": "pause_withdrawals", "reason": "guessing", "decision": token})
    assert done.status_code == 200, done.text
    assert done.json()["actions"][-1]["decision"] == token
    again = admin(server, "POST", path + "/actions", {"action": "pause_withdrawals", "reason": "guessing", "decision": token})
    assert again.status_code == 409, again.text

    # a suspicious-activity report: the analyst's signed decision over its narrative, exported as a JSON document
    assert admin(server, "GET", path + "/report").status_code == 404  # none filed yet
    narrative = "five wrong passwords from one client within seconds"
    sar = format_approval(cy.sign("monitoring.report", [case_id, "bob", narrative], expires))
    filed = admin(server, "POST", path + "/actions", {"action": "report", "reason": narrative, "decision": sar})
    assert filed.status_code == 200 and filed.json()["accepted"] == "case.report", filed.text
    report = admin(server, "GET", path + "/report").json()["report"]
    assert report["format"] == "ringfence-suspicious-activity-report/1" and report["subject"] == {"account_id": "bob"}
    [entry] = report["reports"]
    assert entry["filed_by"] == "cy" and entry["narrative"] == narrative and entry["signed_decision"] == sar
    assert entry["signed_subject"] == [case_id, "bob", narrative]
    assert [a["rule"] for a in report["alerts"]] == ["failed-sign-ins"] and len(report["alerts"][0]["evidence"]) == 5
    assert admin(server, "GET", path + "/report", staff="ada").status_code == 403  # customer data: analysts only
    out = ringfence("monitoring", "report", str(case_id), "--key", f"{server.data / 'demo-staff.json'}#cy", "--url", server.base)
    assert out.returncode == 0 and json.loads(out.stdout)["reports"][0]["signed_decision"] == sar, out.output

    assert admin(server, "POST", path + "/close", {"reason": "maybe", "note": "x"}).json()["field"] == "reason"
    closed = admin(server, "POST", path + "/close", {"reason": "resolved", "note": "user reset the password"}).json()
    assert closed["status"] == "closed" and closed["closed_reason"].startswith("resolved")
    assert [a["action"] for a in closed["actions"]] == ["assign", "note", "escalate", "pause_withdrawals", "report", "close"]
    assert admin(server, "POST", path + "/note", {"note": "late"}).status_code == 409


def _signed(secret: str, params: dict) -> str:
    full = dict(params, timestamp=str(int(time.time() * 1000)), recvWindow="10000")
    payload = urlencode(full)
    return payload + "&signature=" + hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()


def _inside_spread(server: Server) -> str:
    book = httpx.get(server.base + "/api/v3/depth", params={"symbol": "BTCUSDT", "limit": 1}).json()
    bid, ask = (int(round(float(book[side][0][0]) * 100)) for side in ("bids", "asks"))  # float-ok: test reads a price
    assert ask - bid >= 2, book
    return f"{(ask - 1) // 100}.{(ask - 1) % 100:02d}"  # a buy at this price meets a sell at it before the book's asks


def test_self_trades_are_prevented_by_default_expire_taker_configurable_per_market(server) -> None:
    info = {s["symbol"]: s for s in httpx.get(server.base + "/api/v3/exchangeInfo").json()["symbols"]}
    assert info["BTCUSDT"]["defaultSelfTradePreventionMode"] == "EXPIRE_TAKER"
    assert info["ETHUSDT"]["defaultSelfTradePreventionMode"] == "NONE"  # RINGFENCE_TRADING_STP_MARKETS
    bob = server.keys["bob"]
    headers = {"X-MBX-APIKEY": bob["api_key"], "Content-Type": "application/x-www-form-urlencoded"}
    price = _inside_spread(server)
    sent = {}
    for side in ("SELL", "BUY"):  # no selfTradePreventionMode: the market's default applies
        body = _signed(bob["api_secret"], {"symbol": "BTCUSDT", "side": side, "type": "LIMIT", "timeInForce": "GTC",
                                           "price": price, "quantity": "0.0010"})
        r = httpx.post(server.base + "/api/v3/order", content=body, headers=headers)
        assert r.status_code == 200, r.text
        sent[side] = r.json()
    assert sent["BUY"]["status"] == "EXPIRED_IN_MATCH" and sent["BUY"]["fills"] == [], sent["BUY"]
    assert sent["SELL"]["status"] == "NEW"
    r = httpx.delete(server.base + "/api/v3/order?" + _signed(bob["api_secret"], {"symbol": "BTCUSDT", "orderId": sent["SELL"]["orderId"]}),
                     headers={"X-MBX-APIKEY": bob["api_key"]})
    assert r.status_code == 200, r.text


def test_a_self_trade_through_the_api_is_flagged_as_wash_trading(server) -> None:
    alice = server.keys["alice"]
    headers = {"X-MBX-APIKEY": alice["api_key"], "Content-Type": "application/x-www-form-urlencoded"}
    price = _inside_spread(server)
    for side in ("SELL", "BUY"):
        body = _signed(alice["api_secret"], {"symbol": "BTCUSDT", "side": side, "type": "LIMIT", "timeInForce": "GTC",
                                             "price": price, "quantity": "0.0010", "selfTradePreventionMode": "NONE"})
        r = httpx.post(server.base + "/api/v3/order", content=body, headers=headers)
        assert r.status_code == 200, r.text
    [alert] = poll(lambda: alerts_for(server, "wash-trade", "alice"), "the wash-trade alert")
    assert "same account on both sides (self-trade)" in alert["explanation"]
    # the API calls themselves are on the stream too, with the caller's account and weight
    status = admin(server, "GET", "/admin/v1/monitoring").json()
    assert status["events_scored"] > 0 and status["outbox"]["dropped"] == 0


def _order(server: Server, who: str, params: dict) -> dict:
    k = server.keys[who]
    r = httpx.post(server.base + "/api/v3/order", content=_signed(k["api_secret"], {"symbol": "BTCUSDT", **params}),
                   headers={"X-MBX-APIKEY": k["api_key"], "Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def _links_checked(server: Server, trades: int) -> dict:
    """The worker's status once its link graph has seen `trades` trades and its cluster check after
    them has stored its alerts."""
    def done() -> dict | None:
        status = admin(server, "GET", "/admin/v1/monitoring").json()
        linking = status["linking"]
        return status if linking["trades"] >= trades and not linking["pending"] else None

    return poll(done, "the cluster check after the trades")  # type: ignore[no-any-return]


def test_trading_with_the_market_maker_from_one_address_links_nobody(server) -> None:
    """alice and bob each buy from the demo market maker, both from 127.0.0.1: no linked-cluster alert
    (a loopback or private address links nobody, and neither does trading with the market maker)."""
    before = admin(server, "GET", "/admin/v1/monitoring").json()["linking"]
    assert before["liquidity_accounts"] == ["mm"], before
    for who in ("alice", "bob"):
        assert _order(server, who, {"side": "BUY", "type": "MARKET", "quantity": "0.0010"})["fills"]
    after = _links_checked(server, before["trades"] + 2)["linking"]
    assert after["liquidity_trades"] == before["liquidity_trades"] + 2, after  # both were against the market maker
    assert admin(server, "GET", "/admin/v1/alerts?rule=linked-cluster").json()["alerts"] == []
    for who in ("alice", "bob"):
        cluster = admin(server, "GET", f"/admin/v1/links?account_id={who}").json()["cluster"]
        assert cluster is None or "mm" not in cluster["members"], cluster


def test_two_linked_accounts_trading_with_each_other_raise_wash_trade_and_a_flagged_cluster(server) -> None:
    """bob sells, alice buys from him; both call the API from this test (one client: the same device)."""
    def trade() -> None:
        price = _inside_spread(server)
        for who, side in (("bob", "SELL"), ("alice", "BUY")):
            out = _order(server, who, {"side": side, "type": "LIMIT", "timeInForce": "GTC", "price": price, "quantity": "0.0010",
                                       "selfTradePreventionMode": "NONE"})
        assert out["fills"], out

    def raised() -> list[dict]:
        alerts = admin(server, "GET", "/admin/v1/alerts?rule=linked-cluster").json()["alerts"]
        return [a for a in alerts if "traded with each other" in a["explanation"]]

    trade()
    [alert] = poll(raised, "the linked-cluster alert")
    assert "alice" in alert["explanation"] and "bob" in alert["explanation"] and alert["severity"] == "high"
    cluster = admin(server, "GET", "/admin/v1/links?account_id=bob").json()["cluster"]
    assert alert["evidence"] and set(alert["evidence"]) <= set(cluster["evidence"]), (alert, cluster)  # the links' event ids
    # another trade inside the same cluster: no new alert (raised once per cluster, again only if it grows)
    trade()
    checked = admin(server, "GET", "/admin/v1/monitoring").json()["linking"]
    poll(lambda: admin(server, "GET", "/admin/v1/links?account_id=bob").json()["cluster"]["internal_trades"] != cluster["internal_trades"],
         "the second trade linked")
    _links_checked(server, checked["trades"])
    assert len(admin(server, "GET", "/admin/v1/alerts?rule=linked-cluster").json()["alerts"]) == 1
    wash = poll(lambda: [a for a in admin(server, "GET", "/admin/v1/alerts?rule=wash-trade").json()["alerts"]
                         if "linked accounts" in a["explanation"]], "the linked wash-trade alert")
    assert "shared device=python-httpx" in wash[0]["explanation"], wash

def _capital(server: Server, key: dict, method: str, path: str, params: dict, agent: str) -> httpx.Response:
    body = _signed(key["api_secret"], params)
    headers = {"X-MBX-APIKEY": key["api_key"], "User-Agent": agent}
    if method == "POST":
        return httpx.post(server.base + path, content=body, headers={**headers, "Content-Type": "application/x-www-form-urlencoded"})
    return httpx.get(f"{server.base}{path}?{body}", headers=headers)


def test_a_takeover_like_session_and_withdrawal_raise_a_behaviour_alert_with_its_features(server) -> None:
    """alice's usual client reads her account; then a client she never used explores the wallet
    endpoints and withdraws: the behavioural model scores it against her own history and the analyst
    sees the features that drove the score on the alert."""
    usual = server.keys["alice"]
    for _ in range(6):
        r = _capital(server, usual, "GET", "/api/v3/account", {}, "python-httpx/usual")
        assert r.status_code == 200, r.text
    poll(lambda: (admin(server, "GET", "/admin/v1/baselines?account_id=alice").json()["baseline"] or {}).get("events", 0) >= 6,
         "alice's baseline")
    time.sleep(1.1)  # the rule file's settle_s: her usual client is familiar from now on
    entries = json.loads((server.data / "demo-keys.json").read_text())
    [wkey] = [e for e in entries if "withdraw" in e.get("scopes", [])]
    intruder = "Mallory/6.6"
    assert _capital(server, wkey, "GET", "/sapi/v1/capital/config/getall", {}, intruder).status_code == 200
    assert _capital(server, wkey, "GET", "/sapi/v1/capital/deposit/address", {"coin": "BTC"}, intruder).status_code == 200
    r = _capital(server, wkey, "POST", "/sapi/v1/capital/withdraw/apply",
                 {"coin": "BTC", "address": wkey["withdraw_addresses"]["BTC"], "amount": "0.01", "network": "BTC"}, intruder)
    assert r.status_code == 200, r.text

    [alert] = poll(lambda: alerts_for(server, "behaviour-account-takeover", "alice"), "the behaviour alert")
    assert alert["severity"] == "high" and alert["score"] >= 8_000 and "behaviour score" in alert["explanation"]
    features = {f["feature"]: f for f in alert["features"]}
    assert "Mallory/6.6" in features["device"]["detail"] and features["device"]["contribution"] > 0, features
    assert "endpoint" in features and sum(f["contribution"] for f in alert["features"]) <= alert["score"]
    assert [f["contribution"] for f in alert["features"]] == sorted((f["contribution"] for f in alert["features"]), reverse=True)
    baseline = admin(server, "GET", "/admin/v1/baselines?account_id=alice").json()["baseline"]
    assert any(d == "python-httpx/usual" for d, _ in baseline["devices"]), baseline
    assert baseline["countries"] and baseline["countries"][0][0] == "ZZ", baseline  # the GeoIP database's country for 127/8
    assert admin(server, "GET", "/admin/v1/baselines").json()["field"] == "account_id"
    # the same through the CLI against the live node (signed with the analyst's key)
    staff_key = f"{server.data / 'demo-staff.json'}#cy"
    out = ringfence("monitoring", "alerts", "--key", staff_key, "--url", server.base, "--rule", "behaviour-account-takeover",
                    "--account", "alice")
    assert out.returncode == 0 and "behaviour-account-takeover" in out.stdout and "Mallory/6.6" in out.stdout, out.output
    out = ringfence("monitoring", "baseline", "alice", "--key", staff_key, "--url", server.base)
    assert out.returncode == 0 and json.loads(out.stdout)["account_id"] == "alice", out.output


def test_the_staff_console_shows_cases_and_alerts_in_chromium(server) -> None:
    poll(lambda: alerts_for(server, "wash-trade", "alice"), "an alert to show")
    doc = json.loads(Path(server.data / "demo-staff.json").read_text())
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        staff_sign_in(page, server.base, demo_login(server.data, "ben"))  # /admin needs a staff session with a second factor
        page.fill("#keyfile", json.dumps(doc))
        page.fill("#staffid", "ben")
        page.click("#signin")
        expect(page.locator("#who")).to_have_text("signed in as ben")
        row = page.locator('#alerts tr[data-rule="wash-trade"]', has_text="self-trade").first
        expect(row).to_contain_text("alice")
        # the behaviour alert shows its score and the features that drove it
        model = page.locator('#alerts tr[data-rule="behaviour-account-takeover"]', has_text="alice").first
        expect(model.locator('.alert-features li[data-feature="device"]')).to_contain_text("Mallory/6.6")
        case_id = row.locator("td").nth(5).inner_text()
        case_row = page.locator(f'#cases tr[data-case="{case_id}"]')
        expect(case_row).to_contain_text("alice")
        case_row.locator(".case-assign").click()
        expect(page.locator("#status")).to_contain_text("accepted (case.assign)")
        expect(page.locator(f'#cases tr[data-case="{case_id}"]')).to_contain_text("ben")
        case_row = page.locator(f'#cases tr[data-case="{case_id}"]')
        case_row.locator(".case-note").fill("alice bought her own offer")  # the narrative of a signed report
        case_row.locator(".case-report").click()
        expect(page.locator("#status")).to_contain_text("accepted (case.report)")
        case_row = page.locator(f'#cases tr[data-case="{case_id}"]')
        case_row.locator(".case-note").fill("own orders crossed")
        case_row.locator(".case-freeze-account").click()
        expect(page.locator("#status")).to_contain_text("accepted (case.freeze_account)")
        browser.close()
        assert not errors, errors
    detail = admin(server, "GET", f"/admin/v1/cases/{case_id}").json()
    assert detail["actions"][-1]["action"] == "freeze_account" and detail["actions"][-1]["staff_id"] == "ben"
    assert detail["actions"][-2]["action"] == "report" and detail["actions"][-2]["detail"] == "alice bought her own offer"
    # the freeze is real: alice's API key no longer works
    alice = server.keys["alice"]
    r = httpx.get(server.base + "/api/v3/account?" + _signed(alice["api_secret"], {}), headers={"X-MBX-APIKEY": alice["api_key"]})
    assert r.status_code in (400, 401), r.text


def ringfence(*args: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    """`ringfence ARGS` in this process (typer's runner: the same command code, no interpreter start-up);
    `env`: variables set while it runs (a server's `store_env`)."""
    from typer.testing import CliRunner

    from ringfence.cli import app

    result = CliRunner().invoke(app, list(args), env=env)
    result.returncode = result.exit_code
    return result


def test_backtest_replays_the_recorded_stream_with_a_rule_file(server, bob_guessed, tmp_path) -> None:
    from tests.api.conftest import cli

    poll(lambda: alerts_for(server, "failed-sign-ins", "bob"), "the recorded failed sign-ins")
    stream = tmp_path / "stream.jsonl"
    out = cli("monitoring", "export", "--data", str(server.data), "--out", str(stream), env=server.store_env)
    assert out.returncode == 0, out.stderr
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"version": 1, "rules": [
        {"name": "three-failures", "type": "threshold", "match": {"kind": ["sign_in_failed"]}, "window_s": 600, "count_gte": 3}]}))
    for source in (("--events", str(stream)), ("--data", str(server.data))):
        out = ringfence("monitoring", "backtest", "--rules", str(rules), *source, "--from", "2020-01-01T00:00:00Z", "--json",
                        env=server.store_env)
        assert out.returncode == 0, out.output
        lines = [json.loads(x) for x in out.stdout.splitlines()]
        assert lines[-1]["hits_per_rule"] == {"three-failures": 1} and lines[-1]["events_scored"] > 5
        assert lines[0]["account_id"] == "bob" and "3 sign_in_failed events" in lines[0]["explanation"]
    rules.write_text('{"version": 1, "rules": [{"name": "x", "type": "threshold", "window_s": -1}]}')
    out = ringfence("monitoring", "backtest", "--rules", str(rules), "--events", str(stream))
    assert out.returncode == 2 and "error: rules[0].window_s" in out.stderr, out.output


def test_a_new_device_then_an_api_key_in_the_browser_raises_the_sequence_alert(server) -> None:
    from tests.api.test_web_session import PASSWORD, sign_up_verify_and_enable_totp

    web = server.base.replace("127.0.0.1", "localhost")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        own = browser.new_context(user_agent="HomeLaptop/1.0")
        totp = sign_up_verify_and_enable_totp(own.new_page(), web, "victim@example.com")  # the first device: learnt silently
        other = browser.new_context(user_agent="Mallory/6.6")  # someone else's machine, with the password and a code
        page = other.new_page()
        page.goto(web + "/login")
        page.fill("#email", "victim@example.com")
        page.fill("#password", PASSWORD)
        page.click("#signin")
        page.wait_for_url(web + "/login/2fa")
        page.fill("#code", totp.at(time.time() + 30))  # the next step's code (the confirm used this one)
        page.click("#verify-totp")
        page.wait_for_url(web + "/security")
        page.fill("#key-label", "bot")
        page.click("#create-key")
        expect(page.locator("h1")).to_contain_text("API key")
        browser.close()

    def hit() -> list[dict]:
        alerts = admin(server, "GET", "/admin/v1/alerts?rule=new-device-then-api-key").json()["alerts"]
        return alerts

    [alert] = poll(hit, "the new-device-then-api-key alert")
    assert "new_country_sign_in/new_device_sign_in, then api_key_created" in alert["explanation"], alert
    case = admin(server, "GET", f"/admin/v1/cases/{alert['case_id']}").json()
    assert case["account_id"] == alert["account_id"] and case["status"] == "open"

    # the analyst requires a second-factor reset (signed): the authenticator app is gone, the user signs in with
    # the password alone and must enrol a factor again (a first factor: confirmed from the e-mail) before anything sensitive
    cy = read_key_file(server.data / "demo-staff.json", "cy")
    reason = "new device then an API key"
    subject = [alert["case_id"], alert["account_id"], reason]
    token = format_approval(cy.sign("monitoring.require_2fa_reset", subject, time.time_ns() + 600 * 10**9))
    r = admin(server, "POST", f"/admin/v1/cases/{alert['case_id']}/actions",
              {"action": "require_2fa_reset", "reason": reason, "decision": token})
    assert r.status_code == 200 and r.json()["actions"][-1]["action"] == "require_2fa_reset", r.text
    signed_in = httpx.post(web + "/login", data={"email": "victim@example.com", "password": PASSWORD},
                           headers={"Origin": web, "User-Agent": "HomeLaptop/1.0"})
    assert signed_in.status_code == 303 and signed_in.headers["location"] == "/security", signed_in.headers  # no /login/2fa
    [cookie] = [c.split(";", 1)[0] for c in signed_in.headers.get_list("set-cookie") if c.startswith("__Host-rf_session=")]
    page_html = httpx.get(web + "/security", headers={"Cookie": cookie, "User-Agent": "HomeLaptop/1.0"}).text
    assert 'id="totp-status" data-state="off"' in page_html and "second_factor_reset" in page_html


def test_deidentified_export_of_the_live_stream(server, bob_guessed, tmp_path) -> None:
    poll(lambda: alerts_for(server, "failed-sign-ins", "bob"), "events to export")
    key, out = tmp_path / "pseudo.key", tmp_path / "deid.jsonl"
    run = ringfence("monitoring", "deidentify", "--data", str(server.data), "--key-file", str(key), "--new-key", "--k", "1",
                    "--out", str(out), env=server.store_env)
    assert run.returncode == 0, run.output
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["k_achieved"] >= 1 and report["records_out"] > 0 and oct(key.stat().st_mode)[-3:] == "600"
    text = out.read_text()
    for secret in ('"alice"', '"bob"', "127.0.0.1", '"::1"', "guesser/1.0", server.keys["alice"]["api_key"][:8]):
        assert secret not in text, secret
    rows = [json.loads(x) for x in text.splitlines()]
    # the loopback of either family: serve listens on 127.0.0.1 and [::1], and localhost may resolve to either
    assert {r["network"] for r in rows if r["network"]} <= {"127.0.0.0/24", "::/48"}
    dictionary = json.loads((tmp_path / "deid.jsonl.dictionary.json").read_text())
    assert set().union(*(r.keys() for r in rows)) <= set(dictionary["fields"])
    # a stricter k suppresses more; a new key gives unlinkable pseudonyms; an existing key file is never overwritten
    strict = ringfence("monitoring", "deidentify", "--data", str(server.data), "--key-file", str(key), "--k", "50", "--out", str(out),
                       env=server.store_env)
    assert json.loads(strict.stdout.strip().splitlines()[-1])["suppressed"] > report["suppressed"]


def test_linked_accounts_from_the_live_stream(server, bob_guessed) -> None:
    # alice and bob call the API from this test's address and client: the same IP and device
    for who in ("alice", "bob"):
        k = server.keys[who]
        r = httpx.get(server.base + "/api/v3/account?" + _signed(k["api_secret"], {}), headers={"X-MBX-APIKEY": k["api_key"]})
        assert r.status_code in (200, 401), r.text  # alice may be frozen by the console test

    def linked() -> dict | None:
        c = admin(server, "GET", "/admin/v1/links?account_id=bob").json()["cluster"]
        return c if c and "alice" in c["members"] else None

    cluster = poll(linked, "alice and bob linked")
    assert any(link["attribute"] == "device" and link["value"].startswith("python-httpx") for link in cluster["links"]), cluster
    # 127.0.0.1 links nobody: the user who signed up in the browser (same address) joins only through a device it
    # shares (the takeover test's "Mallory/6.6" client was used on alice's key and on that user's account)
    assert not any(link["attribute"] == "ip" for link in cluster["links"]), cluster
    for other in set(cluster["members"]) - {"alice", "bob"}:
        assert any(other in link["accounts"] and link["value"] == "Mallory/6.6" for link in cluster["links"]), cluster



def test_guessing_across_unknown_e_mails_from_one_address_is_credential_stuffing(server) -> None:
    web = server.base.replace("127.0.0.1", "localhost")
    statuses = set()
    for i in range(8):
        r = httpx.post(web + "/login", data={"email": f"nobody{i}@example.com", "password": "hunter2"},
                       headers={"Origin": web, "User-Agent": "stuffer/2.0"})
        statuses.add(r.status_code)
    assert statuses <= {401, 429}, statuses

    def hit() -> list[dict]:
        return admin(server, "GET", "/admin/v1/alerts?rule=failed-sign-ins-per-ip").json()["alerts"]

    [alert] = poll(hit, "the failed-sign-ins-per-ip alert")
    assert alert["account_id"] == "ip:127.0.0.1" and "8 sign_in_failed/sign_in_failed_unknown events" in alert["explanation"]
    assert "threshold: 8 in 600 s" in alert["explanation"]  # the server runs the rule file it was given
