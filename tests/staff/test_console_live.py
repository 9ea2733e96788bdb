"""The operator console against a real `ringfence serve --demo` process: signed requests, signed decisions.

The server runs in its own process (the same interpreter, this worktree's sources), the demo without its
chains (none is used here: conftest.NO_CHAINS); the console is the `ringfence` CLI, signing with the demo
staff keys `serve --demo` wrote to DIR/demo-staff.json: a real `ringfence` process for each command group
(`halts`, `staff`, and the HSM key's commands, whose PKCS#11 library reads its config once per process), the
other calls the same command code in this process (typer's runner: no Python start of 1-2 s of CPU per call). A lift with one operator is refused with the quorum rule and changes nothing;
two operators' signatures lift it. Requests that are unsigned, forged, stale or replayed get 401.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import stat
import subprocess
import sys
import time
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from ringfence.staff.decisions import StaffKey, read_key_file
from ringfence.staff.requests import signed_headers
from tests.api.conftest import Invoked, Server, invoke


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("staff") / "data", chains=False)
    yield srv
    assert srv.stop() == 0, "the server did not shut down cleanly on SIGTERM"


def process(*args: str) -> subprocess.CompletedProcess[str]:
    """`ringfence ARGS` in a process of its own: its real exit code and streams."""
    out = subprocess.run([sys.executable, "-m", "ringfence.cli", *args], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, COLUMNS="200"))
    return out


def cli(*args: str) -> Invoked:
    """`ringfence ARGS` in this process (tests/api/conftest.py invoke: the same command code without a Python start
    per call)."""
    return invoke(*args)


def key(server: Server, staff_id: str) -> str:
    return f"{server.data / 'demo-staff.json'}#{staff_id}"


def test_demo_staff_file_is_private_and_covers_the_roles(server) -> None:
    path = server.data / "demo-staff.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = json.loads(path.read_text())
    roles = {e["staff_id"]: set(e["roles"]) for e in doc["staff"]}
    assert len(roles) == 6 and doc["quorum"] == 2
    assert set().union(*roles.values()) >= {"operator", "approver", "analyst", "policy_admin"}
    assert sum("operator" in r for r in roles.values()) >= 2
    assert sum("approver" in r for r in roles.values()) >= 2  # a large withdrawal needs two approvers
    admins = [s for s, r in roles.items() if "policy_admin" in r]
    assert len(admins) == 3 and all(roles[s] == {"policy_admin"} for s in admins)  # proposer + 2 approvers, no conflicts


def test_console_lists_raises_and_lifts_a_halt_with_two_operators(server) -> None:
    url = ("--url", server.base)
    out = process("halts", "raise", "console-1", "--scope-kind", "market", "--scope", "BTCUSDT", "--level", "HALTED",
                  "--reason", "console test", "--key", key(server, "ada"), *url)
    assert out.returncode == 0, out.stderr
    listed = json.loads(cli("halts", "list", "--key", key(server, "cy"), "--json", *url).stdout)
    [halt] = [h for h in listed["active"] if h["halt_id"] == "console-1"]
    assert halt["level"] == "HALTED" and json.loads(halt["evidence"]) == {"raised_by": "ada"}
    status = httpx.get(server.base + "/v1/markets").json()
    assert {m["symbol"]: m["status"] for m in status}["BTCUSDT"] == "HALTED"

    # one operator alone: refused with the rule named, the halt stays
    out = process("halts", "lift", "console-1", "--reason", "fixed", "--key", key(server, "ada"), *url)
    assert out.returncode == 1 and "rule 'quorum'" in out.stderr, out.stderr
    # an approver who is not an operator cannot make up the second signature
    token = cli("halts", "lift", "console-1", "--reason", "fixed", "--key", key(server, "cy"), "--sign-only", *url).stdout.strip()
    out = cli("halts", "lift", "console-1", "--reason", "fixed", "--key", key(server, "ada"), "--approval", token, *url)
    assert out.returncode == 1 and "rule 'role-required'" in out.stderr, out.stderr
    assert any(h["halt_id"] == "console-1" for h in json.loads(cli("halts", "list", "--key", key(server, "ada"), "--json", *url).stdout)["active"])

    # ben signs on his own terminal; ada submits with his token
    token = cli("halts", "lift", "console-1", "--reason", "fixed", "--key", key(server, "ben"), "--sign-only", *url).stdout.strip()
    assert token.startswith("ben:")
    out = cli("halts", "lift", "console-1", "--reason", "fixed", "--key", key(server, "ada"), "--approval", token, *url)
    assert out.returncode == 0 and "lifted console-1 approved by ada, ben" in out.stdout, out.stderr
    listed = json.loads(cli("halts", "list", "--key", key(server, "ada"), "--json", *url).stdout)
    assert not any(h["halt_id"] == "console-1" for h in listed["active"])
    assert listed["recently_lifted"][0]["approvers"] == ["ada", "ben"]
    # the same token again: its nonce is spent
    out = cli("halts", "raise", "console-1", "--scope-kind", "market", "--scope", "BTCUSDT", "--reason", "again",
              "--key", key(server, "ben"), *url)
    assert out.returncode == 0, out.stderr
    out = cli("halts", "lift", "console-1", "--reason", "fixed", "--key", key(server, "ada"), "--approval", token, *url)
    assert out.returncode == 1 and ("nonce-once" in out.stderr or "signature-valid" in out.stderr), out.stderr
    out = cli("halts", "lift", "console-1", "--reason", "fixed", "--key", key(server, "ada"), "--key", key(server, "ben"), *url)
    assert out.returncode == 0, out.stderr


def test_staff_are_added_and_removed_by_the_quorum_only(server, tmp_path) -> None:
    url = ("--url", server.base)
    new_key = tmp_path / "dora.key"
    assert process("staff", "keygen", "dora", "--out", str(new_key)).returncode == 0
    out = process("staff", "add", "--new-key", str(new_key), "--role", "approver", "--reason", "hired",
              "--key", key(server, "ada"), *url)
    assert out.returncode == 1 and "rule 'quorum'" in out.stderr, out.stderr
    members = json.loads(cli("staff", "list", "--key", key(server, "ada"), "--json", *url).stdout)["members"]
    assert "dora" not in [m["staff_id"] for m in members]
    out = cli("staff", "add", "--new-key", str(new_key), "--role", "approver", "--reason", "hired", "--account", "u_bad id",
              "--key", key(server, "ada"), "--key", key(server, "ben"), *url)
    assert out.returncode != 0 and "member.accounts" in out.stderr, out.stderr
    out = cli("staff", "add", "--new-key", str(new_key), "--role", "approver", "--reason", "hired",
              "--account", "u_0123456789abcdef01234567", "--key", key(server, "ada"), "--key", key(server, "ben"), *url)
    assert out.returncode == 0, out.stderr
    members = json.loads(cli("staff", "list", "--key", key(server, "ada"), "--json", *url).stdout)["members"]
    assert {m["staff_id"]: m["accounts"] for m in members}["dora"] == ["u_0123456789abcdef01234567"]
    out = cli("staff", "list", "--key", str(new_key), *url)  # the new member signs requests at once
    assert out.returncode == 0 and "dora" in out.stdout
    out = cli("staff", "remove", "dora", "--reason", "left", "--key", key(server, "ada"), "--key", key(server, "ben"), *url)
    assert out.returncode == 0, out.stderr
    out = cli("staff", "list", "--key", str(new_key), *url)  # revoked: her requests are refused now
    assert out.returncode == 1 and "does not verify" in out.stderr


def test_an_operator_whose_key_is_in_an_hsm_signs_a_quorum_decision(server, tmp_path) -> None:
    """Issue 16, item 2 ("each signing with the operator's key (file or HSM)"): `staff keygen --hsm`
    makes the key inside a PKCS#11 token (SoftHSM2), not extractable; the quorum adds the member with
    the token's proof of possession; the member then lifts a halt with ada as the second operator,
    signing requests and the decision in the token (`--key pkcs11:TOKEN/LABEL#ID`)."""
    from ringfence.keys.hsm import init_softhsm_token, write_softhsm_config

    url = ("--url", server.base)
    conf = write_softhsm_config(tmp_path / "hsm")
    init_softhsm_token(conf, "staff-eve", so_pin="so-eve-test", user_pin="user-eve-test")
    env = {"SOFTHSM2_CONF": str(conf), "RINGFENCE_STAFF_HSM_PIN": "user-eve-test"}

    def hsm_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "ringfence.cli", *args], capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, COLUMNS="200", **env))

    made = hsm_cli("staff", "keygen", "eve", "--hsm", "staff-eve")
    assert made.returncode == 0, made.stderr
    public = made.stdout.strip()
    no_pin = subprocess.run([sys.executable, "-m", "ringfence.cli", "staff", "list", "--key", "pkcs11:staff-eve/eve#eve", *url],
                            capture_output=True, text=True, timeout=120, env=dict(os.environ, SOFTHSM2_CONF=str(conf)))
    assert no_pin.returncode != 0 and "RINGFENCE_STAFF_HSM_PIN" in no_pin.stderr, no_pin.stderr
    eve = "pkcs11:staff-eve/eve#eve"
    added = hsm_cli("staff", "add", "--new-key", eve, "--role", "operator", "--reason", "operator with a token",
                    "--key", key(server, "ada"), "--key", key(server, "ben"), *url)
    assert added.returncode == 0, added.stderr
    members = {m["staff_id"]: m for m in json.loads(cli("staff", "list", "--key", key(server, "ada"), "--json", *url).stdout)["members"]}
    assert members["eve"]["public_key"] == public and members["eve"]["roles"] == ["operator"]
    assert cli("halts", "raise", "hsm-1", "--reason", "hsm test", "--key", key(server, "ada"), *url).returncode == 0
    token = cli("halts", "lift", "hsm-1", "--reason", "fixed", "--key", key(server, "ada"), "--sign-only", *url).stdout.strip()
    lifted = hsm_cli("halts", "lift", "hsm-1", "--reason", "fixed", "--key", eve, "--approval", token, *url)
    assert lifted.returncode == 0 and "lifted hsm-1 approved by eve, ada" in lifted.stdout, lifted.stdout + lifted.stderr
    # the key cannot leave the token (checked in a process of its own: a PKCS#11 library reads its config once)
    probe = subprocess.run([sys.executable, "-c", "from ringfence.keys.hsm import HsmToken; t = HsmToken('staff-eve', "
                            "'user-eve-test'); print(t.public_key('eve').hex(), t.is_extractable('eve'))"],
                           capture_output=True, text=True, timeout=60, env=dict(os.environ, **env))
    assert probe.stdout.split() == [public, "False"], probe.stdout + probe.stderr
    assert hsm_cli("staff", "remove", "eve", "--reason", "done", "--key", key(server, "ada"), "--key", key(server, "ben"), *url).returncode == 0


def _get(server: Server, path: str, headers: dict[str, str]) -> httpx.Response:
    return httpx.get(server.base + path, headers=headers)


def test_admin_requests_are_authenticated_by_signature(server) -> None:
    ada = read_key_file(server.data / "demo-staff.json", "ada")
    assert _get(server, "/admin/v1/halts", {}).status_code == 401
    good = signed_headers(ada, "GET", "/admin/v1/halts", "", b"")
    assert _get(server, "/admin/v1/halts", good).status_code == 200
    assert _get(server, "/admin/v1/halts", good).status_code == 401  # replayed nonce
    forged = signed_headers(StaffKey.generate("ada"), "GET", "/admin/v1/halts", "", b"")
    assert _get(server, "/admin/v1/halts", forged).status_code == 401
    other_path = signed_headers(ada, "GET", "/admin/v1/staff", "", b"")
    assert _get(server, "/admin/v1/halts", other_path).status_code == 401
    stale = signed_headers(ada, "GET", "/admin/v1/halts", "", b"")
    stale["X-RF-Timestamp"] = str(int(stale["X-RF-Timestamp"]) - 120_000)
    assert _get(server, "/admin/v1/halts", stale).status_code == 401


# ------------------------------------------------------------------------------- markets and fees
# `ringfence market ...` run in-process (typer's CliRunner: the same command code, without a Python
# start per call) against the same live server; the server's state is read back through the public API.


def ringfence(*args: str) -> Any:
    from typer.testing import CliRunner

    from ringfence.cli import app

    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


def market_cli(*args: str) -> Any:
    return ringfence("market", *args)


def exchange_info(server: Server) -> dict[str, dict[str, Any]]:
    return {s["symbol"]: s for s in httpx.get(server.base + "/api/v3/exchangeInfo").json()["symbols"]}


def binance(server: Server, method: str, path: str, params: dict[str, Any]) -> httpx.Response:
    key = server.keys["alice"]
    query = urlencode({**params, "timestamp": int(time.time() * 1000), "recvWindow": 10000})
    sig = hmac.new(key["api_secret"].encode(), query.encode(), hashlib.sha256).hexdigest()
    headers = {"X-MBX-APIKEY": key["api_key"]}
    if method == "POST":
        return httpx.post(server.base + path, content=f"{query}&signature={sig}",
                          headers={**headers, "Content-Type": "application/x-www-form-urlencoded"})
    return httpx.get(f"{server.base}{path}?{query}&signature={sig}", headers=headers)


def btc_balance(server: Server) -> tuple[str, str]:
    [btc] = [b for b in binance(server, "GET", "/api/v3/account", {}).json()["balances"] if b["asset"] == "BTC"]
    return btc["free"], btc["locked"]


def admin_markets(server: Server) -> dict[str, Any]:
    out = market_cli("list", "--json", "--key", key(server, "cy"), "--url", server.base)
    assert out.exit_code == 0, out.output
    return json.loads(out.stdout)  # type: ignore[no-any-return]


ETHBTC = ("add", "ETHBTC", "--base", "ETH", "--quote", "BTC", "--tick-size", "0.0001", "--lot-size", "0.01",
          "--min-notional", "0.001", "--band-ppm", "200000", "--reason", "listing committee 7")


def test_a_market_is_listed_reopened_repriced_and_delisted_by_the_operator_quorum(server) -> None:
    url = ("--url", server.base)
    ada, ben, cy = key(server, "ada"), key(server, "ben"), key(server, "cy")
    version = admin_markets(server)["version"]

    # refusals change nothing: one operator; a second signer without the operator role; bad filters
    out = market_cli(*ETHBTC, "--key", ada, *url)
    assert out.exit_code == 1 and "rule 'quorum'" in out.stderr, out.output
    token = market_cli(*ETHBTC, "--key", cy, "--sign-only", *url).stdout.strip()
    out = market_cli(*ETHBTC, "--key", ada, "--approval", token, *url)
    assert out.exit_code == 1 and "rule 'role-required'" in out.stderr, out.output
    bad_lot = [("0.00001" if a == "0.01" else a) for a in ETHBTC]  # 10**4 * 10**13 is not a multiple of 10**18
    out = market_cli(*bad_lot, "--key", ada, "--key", ben, *url)
    assert out.exit_code == 1 and "lot_size" in out.stderr, out.output
    out = market_cli(*[("0.1.2" if a == "0.0001" else a) for a in ETHBTC], "--key", ada, "--key", ben, *url)
    assert out.exit_code == 2 and "--tick-size" in out.stderr, out.output
    assert "ETHBTC" not in exchange_info(server) and admin_markets(server)["version"] == version

    # ben signs on his terminal, ada submits with his token: listed with every filter
    token = market_cli(*ETHBTC, "--key", ben, "--sign-only", *url).stdout.strip()
    assert token.startswith("ben:")
    out = market_cli(*ETHBTC, "--key", ada, "--approval", token, *url)
    assert out.exit_code == 0 and "ListMarketSigned" in out.stdout, out.output
    info = exchange_info(server)["ETHBTC"]
    filters = {f["filterType"]: f for f in info["filters"]}
    assert info["status"] == "TRADING" and (info["baseAsset"], info["quoteAsset"]) == ("ETH", "BTC")
    assert filters["PRICE_FILTER"]["tickSize"] == "0.00010000"
    assert filters["LOT_SIZE"]["stepSize"] == filters["LOT_SIZE"]["minQty"] == "0.010000000000000000"
    assert filters["NOTIONAL"]["minNotional"] == "0.00100000"
    assert filters["PERCENT_PRICE_BY_SIDE"]["bidMultiplierUp"] == "1.2"
    out = market_cli(*ETHBTC, "--key", ada, "--approval", token, *url)  # the same approvals again: spent
    assert out.exit_code == 1, out.output
    assert admin_markets(server)["version"] == version + 1

    # status: one operator halts it; one operator cannot reopen it, the quorum can
    out = market_cli("status", "ETHBTC", "HALTED", "--reason", "bad prints", "--key", cy, *url)
    assert out.exit_code == 1 and "rule 'role-required'" in out.stderr, out.output
    out = market_cli("status", "ETHBTC", "HALTED", "--reason", "bad prints", "--key", ada, *url)
    assert out.exit_code == 0, out.output
    assert exchange_info(server)["ETHBTC"]["status"] == "HALT"
    out = market_cli("status", "ETHBTC", "ACTIVE", "--reason", "prints corrected", "--key", ada, *url)
    assert out.exit_code == 1 and "rule 'quorum'" in out.stderr, out.output
    assert exchange_info(server)["ETHBTC"]["status"] == "HALT"
    out = market_cli("status", "ETHBTC", "REDUCE_ONLY", "--reason", "one side only", "--key", ben, *url)
    assert out.exit_code == 0 and "stays HALTED" in out.stdout, out.output
    # two halts on the market now: ben's approvals name each (HALT_ID=TOKEN), ada submits both lifts
    tokens = market_cli("status", "ETHBTC", "ACTIVE", "--reason", "prints corrected", "--key", ben, "--sign-only", *url).stdout.split()
    assert sorted(t.split("=")[0] for t in tokens) == ["ETHBTC.status.halted", "ETHBTC.status.reduce_only"], tokens
    approvals = [a for t in tokens for a in ("--approval", t)]
    out = market_cli("status", "ETHBTC", "ACTIVE", "--reason", "prints corrected", "--key", ada, *approvals, *url)
    assert out.exit_code == 0 and "ETHBTC is now ACTIVE" in out.stdout, out.output
    assert exchange_info(server)["ETHBTC"]["status"] == "TRADING"

    # reference price: the quorum only; the band's reference moves
    price = ("ref-price", "ETHBTC", "--price", "0.05", "--reason", "no index yet")
    out = market_cli(*price, "--key", ben, *url)
    assert out.exit_code == 1 and "rule 'quorum'" in out.stderr, out.output
    out = market_cli(*price, "--key", ada, "--key", ben, *url)
    assert out.exit_code == 0, out.output
    markets = {m["symbol"]: m for m in httpx.get(server.base + "/v1/markets").json()}
    assert markets["ETHBTC"]["reference_price"] == "0.05000000"

    # alice's resting order (the delisting below cancels it and releases her BTC hold)
    free, locked = btc_balance(server)
    placed = binance(server, "POST", "/api/v3/order", {"symbol": "ETHBTC", "side": "BUY", "type": "LIMIT",
                                                       "timeInForce": "GTC", "price": "0.0500", "quantity": "1.00"})
    assert placed.status_code == 200, placed.text
    assert btc_balance(server) != (free, locked)
    assert {m["symbol"]: m["open_orders"] for m in admin_markets(server)["markets"]}["ETHBTC"] == 1
    # once the market follows an index, the same command is the index override (its own change counter)
    out = ringfence("index", "configure", "--symbol", "ETHBTC", "--source", "venue-a", "--min-sources", "1",
                    "--key", ada, "--key", ben, *url)
    assert out.exit_code == 0, out.output
    assert exchange_info(server)["ETHBTC"]["status"] == "BREAK"  # no quote yet: the index makes it REDUCE_ONLY
    out = market_cli("ref-price", "ETHBTC", "--price", "0.06", "--reason", "feed incident", "--key", ada, "--key", ben, *url)
    assert out.exit_code == 0 and "ReferenceOverridden" in out.stdout, out.output
    markets = {m["symbol"]: m for m in httpx.get(server.base + "/v1/markets").json()}
    assert markets["ETHBTC"]["reference_price"] == "0.06000000"

    # delist (it passes the REDUCE_ONLY the index's missing quotes raised: a delisting only reduces risk)
    out = market_cli("delist", "ETHBTC", "--reason", "wound down", "--key", ada, *url)
    assert out.exit_code == 1 and "rule 'quorum'" in out.stderr, out.output
    assert "ETHBTC" in exchange_info(server)
    out = market_cli("delist", "ETHBTC", "--reason", "wound down", "--key", ada, "--key", ben, *url)
    assert out.exit_code == 0 and "MarketDelisted" in out.stdout and "DELISTED" in out.stdout, out.output
    assert "ETHBTC" not in exchange_info(server)
    assert btc_balance(server) == (free, locked)
    # alice can still read the order the delisting canceled, and the market's history
    order_id = placed.json()["orderId"]
    gone = binance(server, "GET", "/api/v3/order", {"symbol": "ETHBTC", "orderId": order_id})
    assert gone.status_code == 200 and gone.json()["status"] == "CANCELED", gone.text
    assert gone.json()["origQty"] == placed.json()["origQty"] and gone.json()["price"] == placed.json()["price"]
    history = binance(server, "GET", "/api/v3/allOrders", {"symbol": "ETHBTC"})
    assert [o["orderId"] for o in history.json()] == [order_id], history.text
    assert binance(server, "GET", "/api/v3/openOrders", {"symbol": "ETHBTC"}).json() == []
    assert binance(server, "GET", "/api/v3/myTrades", {"symbol": "ETHBTC"}).json() == []
    refused = binance(server, "POST", "/api/v3/order", {"symbol": "ETHBTC", "side": "BUY", "type": "LIMIT",
                                                        "timeInForce": "GTC", "price": "0.0500", "quantity": "1.00"})
    assert refused.status_code == 400 and refused.json()["code"] == -1121, refused.text  # no new orders
    assert binance(server, "GET", "/api/v3/order", {"symbol": "NOPEBTC", "orderId": order_id}).json()["code"] == -1121


def test_fee_tiers_are_set_by_the_quorum_and_shown_on_the_account(server) -> None:
    url = ("--url", server.base)
    ada, ben = key(server, "ada"), key(server, "ben")
    before = binance(server, "GET", "/api/v3/account", {}).json()
    assert (before["makerCommission"], before["takerCommission"]) == (10, 10)
    tier = ("fees", "3", "--maker", "0.0002", "--taker", "0.0005", "--reason", "maker programme")
    out = market_cli(*tier, "--key", ada, *url)
    assert out.exit_code == 1 and "rule 'quorum'" in out.stderr, out.output
    out = market_cli("fees", "3", "--maker", "0.2", "--taker", "0.0005", "--reason", "x", "--key", ada, "--key", ben, *url)
    assert out.exit_code == 1 and "maker_rate_ppm" in out.stderr, out.output  # 20 % is over the cap
    out = market_cli("account-fee", "alice", "--tier", "3", "--reason", "mm agreement", "--key", ada, "--key", ben, *url)
    assert out.exit_code == 1 and "tier" in out.stderr, out.output  # tier 3 is not defined yet
    assert [t["tier"] for t in admin_markets(server)["fee_tiers"]] == [0]
    out = market_cli(*tier, "--key", ada, "--key", ben, *url)
    assert out.exit_code == 0, out.output
    token = market_cli("account-fee", "alice", "--tier", "3", "--reason", "mm agreement", "--key", ben, "--sign-only",
                       *url).stdout.strip()
    out = market_cli("account-fee", "alice", "--tier", "3", "--reason", "mm agreement", "--key", ada, *url)
    assert out.exit_code == 1 and "rule 'quorum'" in out.stderr, out.output
    assert binance(server, "GET", "/api/v3/account", {}).json()["makerCommission"] == 10
    out = market_cli("account-fee", "alcie", "--tier", "3", "--reason", "mm agreement", "--key", ada, "--key", ben, *url)
    assert out.exit_code == 1 and "account" in out.stderr and "alcie" in out.stderr, out.output  # a typo: no such account
    out = market_cli("account-fee", "alice", "--tier", "3", "--reason", "mm agreement", "--key", ada, "--approval", token, *url)
    assert out.exit_code == 0, out.output
    account = binance(server, "GET", "/api/v3/account", {}).json()
    assert (account["makerCommission"], account["takerCommission"]) == (2, 5)
    assert account["commissionRates"]["maker"] == "0.00020000" and account["commissionRates"]["taker"] == "0.00050000"
    view = admin_markets(server)
    assert {"account": "alice", "tier": 3} in view["account_tiers"]
    assert {"tier": 3, "maker_rate_ppm": 200, "taker_rate_ppm": 500} in view["fee_tiers"]
    table = market_cli("list", "--key", ada, "--url", server.base)
    assert table.exit_code == 0 and "tier 3: maker 0.0002 (0.02 %), taker 0.0005 (0.05 %)" in table.stdout and "alice → 3" in table.stdout
    assert "BTCUSDT" in table.stdout and "0.01" in table.stdout, table.stdout


def test_an_asset_registered_by_the_quorum_is_in_the_coin_list_and_can_be_listed(server) -> None:
    """`ringfence asset add` on the demo node: the user's coin list (`/sapi/v1/capital/config/getall`) shows the new
    asset at once, and a market on it can be listed (tests/staff/test_asset_live.py: the same on a prod node)."""
    url = ("--url", server.base)
    ada, ben = key(server, "ada"), key(server, "ben")
    coins = {c["coin"] for c in binance(server, "GET", "/sapi/v1/capital/config/getall", {}).json()}
    assert "LINK" not in coins and {"BTC", "USDT"} <= coins
    out = ringfence("asset", "add", "LINK", "--decimals", "18", "--class", "crypto", "--chain", "ethereum",
                    "--reason", "listing committee 9", "--key", ada, "--key", ben, *url)
    assert out.exit_code == 0 and "AssetRegistered" in out.stdout, out.output
    [link] = [c for c in binance(server, "GET", "/sapi/v1/capital/config/getall", {}).json() if c["coin"] == "LINK"]
    assert link["free"] == "0.000000000000000000" and link["networkList"] == [], link  # no custody configured for it
    assert link["isLegalMoney"] is False
    out = ringfence("asset", "add", "EUR", "--decimals", "2", "--class", "fiat", "--reason", "listing committee 9",
                    "--key", ada, "--key", ben, *url)
    assert out.exit_code == 0, out.output
    [eur] = [c for c in binance(server, "GET", "/sapi/v1/capital/config/getall", {}).json() if c["coin"] == "EUR"]
    assert eur["isLegalMoney"] is True and eur["free"] == "0.00", eur  # Binance's flag for a fiat currency
    out = ringfence("asset", "add", "LINK", "--decimals", "8", "--class", "crypto", "--reason", "again", "--key", ada,
                    "--key", ben, *url)
    assert out.exit_code == 2 and "CODE" in out.stderr and "already registered (18 decimals" in out.stderr, out.output
    out = market_cli("add", "LINKUSDT", "--base", "LINK", "--quote", "USDT", "--tick-size", "0.001", "--lot-size", "0.01",
                     "--reason", "listing committee 9", "--key", ada, "--key", ben, *url)
    assert out.exit_code == 0, out.output
    assert exchange_info(server)["LINKUSDT"]["baseAssetPrecision"] == 18
