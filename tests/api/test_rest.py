"""REST API with httpx against a real server: bad input, signatures, replays, Ed25519 keys, ops endpoints.

Every bad request must get Binance's error shape (`{"code": negative, "msg": ...}` naming the
parameter) and change nothing: balances, open orders and the engine's book stay as they were.
"""

import base64
import hashlib
import hmac
import time
from urllib.parse import urlencode

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


_last_ms = 0


def signed_query(secret: str, params: dict, *, ts: int | None = None) -> str:
    # a new millisecond for every request: two identical requests signed in the same millisecond (the
    # same order to /order and then /order/test) are the same bytes, which the replay guard refuses
    # (-1022), as it should
    global _last_ms
    if ts is None:
        ts = _last_ms = max(int(time.time() * 1000), _last_ms + 1)
    full = dict(params)
    full["timestamp"] = str(ts)
    full["recvWindow"] = "10000"
    payload = urlencode(full)
    sig = hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()
    return payload + "&signature=" + sig


class Client:
    def __init__(self, server, account="alice"):
        self.base = server.base
        self.key = server.keys[account]["api_key"]
        self.secret = server.keys[account]["api_secret"]
        self.http = httpx.Client(base_url=server.base, timeout=10)

    def get(self, path, params=None, signed=False, **kw):
        if signed:
            return self.http.get(path + "?" + signed_query(self.secret, params or {}), headers={"X-MBX-APIKEY": self.key}, **kw)
        return self.http.get(path, params=params, **kw)

    def post(self, path, params, **kw):
        body = signed_query(self.secret, params)
        headers = {"X-MBX-APIKEY": self.key, "Content-Type": "application/x-www-form-urlencoded"}
        headers.update(kw.pop("headers", {}))
        return self.http.post(path, content=body, headers=headers, **kw)

    def state(self):
        account = self.get("/api/v3/account", signed=True).json()
        open_orders = self.get("/api/v3/openOrders", signed=True).json()
        book = self.http.get("/v1/book", params={"symbol": "BTCUSDT"}).json()
        return account["balances"], [o["orderId"] for o in open_orders], book["bids"], book["asks"]


@pytest.fixture(scope="module")
def alice(server):
    return Client(server)


def error_of(response):
    body = response.json()
    assert set(body) == {"code", "msg"}, body
    assert body["code"] < 0
    return body


BASE_ORDER = {"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC", "quantity": "0.01", "price": "60000.00"}


@pytest.mark.parametrize(
    "change, code, word",
    [
        ({"quantity": "NaN"}, -1100, "quantity"),
        ({"quantity": "Infinity"}, -1100, "quantity"),
        ({"quantity": "-1"}, -1100, "quantity"),
        ({"quantity": "1e-2"}, -1100, "quantity"),
        ({"price": "6e4"}, -1100, "price"),
        ({"price": "60000.001"}, -1013, "PRICE_FILTER"),
        ({"price": "60000.0000001"}, -1111, "price"),
        ({"quantity": "0.000000001"}, -1111, "quantity"),
        ({"quantity": "0"}, -1100, "quantity"),
        ({"quantity": ""}, -1102, "quantity"),
        ({"price": None}, -1102, "price"),
        ({"symbol": "NOSUCH"}, -1121, "symbol"),
        ({"side": "HOLD"}, -1117, "side"),
        ({"type": "ICEBERG"}, -1116, "type"),
        ({"timeInForce": "GTD"}, -1115, "timeInForce"),
        ({"price": "60000.005"}, -1013, "PRICE_FILTER"),
        ({"price": "60000.10", "quantity": "0.00015"}, -1013, "LOT_SIZE"),
        ({"symbol": "ETHUSDT", "price": "3000.00", "quantity": "0.0001"}, -1013, "NOTIONAL"),
        ({"price": "100.00"}, -1013, "PERCENT_PRICE"),
        ({"quantity": "1000"}, -2010, "insufficient balance"),
        ({"newClientOrderId": "bad id with spaces"}, -1100, "newClientOrderId"),
    ],
)
def test_bad_orders_get_binance_errors_and_change_nothing(alice, change, code, word):
    before = alice.state()
    params = {k: v for k, v in {**BASE_ORDER, **change}.items() if v is not None}
    body = error_of(alice.post("/api/v3/order", params))
    assert body["code"] == code, body
    assert word.lower() in body["msg"].lower() or (word == "symbol" and body["msg"] == "Invalid symbol."), body
    assert alice.state() == before


def test_duplicate_and_missing_parameters(alice):
    before = alice.state()
    # signed *with* the duplicate, so only the duplicate check can refuse it
    payload = urlencode({**BASE_ORDER, "timestamp": str(int(time.time() * 1000)), "recvWindow": "10000"}).replace("side=BUY", "side=BUY&side=SELL")
    body = payload + "&signature=" + hmac.new(alice.secret.encode(), payload.encode(), hashlib.sha256).hexdigest()
    r = alice.http.post("/api/v3/order", content=body, headers={"X-MBX-APIKEY": alice.key, "Content-Type": "application/x-www-form-urlencoded"})
    assert error_of(r)["code"] == -1101 and "'side'" in r.json()["msg"]
    r = alice.get("/api/v3/depth")
    assert error_of(r)["code"] == -1102 and "symbol" in r.json()["msg"]
    r = alice.get("/api/v3/klines", {"symbol": "BTCUSDT", "interval": "7m"})
    assert error_of(r)["code"] == -1100 and "interval" in r.json()["msg"]
    r = alice.get("/api/v3/depth", {"symbol": "BTCUSDT", "limit": "-5"})
    assert error_of(r)["code"] == -1100 and "limit" in r.json()["msg"]
    assert alice.state() == before


def test_signature_problems(alice, server):
    # wrong secret
    query = signed_query("f" * 64, {})
    r = alice.http.get("/api/v3/account?" + query, headers={"X-MBX-APIKEY": alice.key})
    assert error_of(r)["code"] == -1022
    # tampered payload after signing
    query = signed_query(alice.secret, {"symbol": "BTCUSDT"}).replace("BTCUSDT", "ETHUSDT")
    r = alice.http.get("/api/v3/openOrders?" + query, headers={"X-MBX-APIKEY": alice.key})
    assert error_of(r)["code"] == -1022
    # unknown key
    r = alice.http.get("/api/v3/account?" + signed_query(alice.secret, {}), headers={"X-MBX-APIKEY": "a" * 64})
    # as Binance and docs/api.md: an unknown key is 401 -2015, a bad signature 400 -1022
    assert (r.status_code, error_of(r)["code"]) == (401, -2015)
    # no key at all
    r = alice.http.get("/api/v3/account?" + signed_query(alice.secret, {}))
    assert r.status_code == 401 and error_of(r)["code"] == -2014
    # expired timestamp and one from the future
    old = signed_query(alice.secret, {}, ts=int(time.time() * 1000) - 60_000)
    r = alice.http.get("/api/v3/account?" + old, headers={"X-MBX-APIKEY": alice.key})
    assert error_of(r)["code"] == -1021
    future = signed_query(alice.secret, {}, ts=int(time.time() * 1000) + 30_000)
    r = alice.http.get("/api/v3/account?" + future, headers={"X-MBX-APIKEY": alice.key})
    assert error_of(r)["code"] == -1021
    # missing signature
    r = alice.http.get("/api/v3/account?timestamp=%d" % int(time.time() * 1000), headers={"X-MBX-APIKEY": alice.key})
    assert error_of(r)["code"] == -1102


def test_a_signed_request_cannot_be_replayed(alice):
    before = alice.state()
    body = signed_query(alice.secret, {**BASE_ORDER, "price": "60900.00"})
    headers = {"X-MBX-APIKEY": alice.key, "Content-Type": "application/x-www-form-urlencoded"}
    first = alice.http.post("/api/v3/order", content=body, headers=headers)
    assert first.status_code == 200, first.text
    second = alice.http.post("/api/v3/order", content=body, headers=headers)
    assert error_of(second)["code"] == -1022 and "replay" in second.json()["msg"]
    order_id = first.json()["orderId"]
    assert alice.state()[1] == sorted(before[1] + [order_id])
    r = alice.http.delete("/api/v3/order?" + signed_query(alice.secret, {"symbol": "BTCUSDT", "orderId": str(order_id)}), headers={"X-MBX-APIKEY": alice.key})
    assert r.json()["status"] == "CANCELED"
    assert alice.state() == before


def test_bodies_content_types_and_sizes(alice):
    before = alice.state()
    headers = {"X-MBX-APIKEY": alice.key}
    r = alice.http.post("/api/v3/order", content=signed_query(alice.secret, BASE_ORDER), headers={**headers, "Content-Type": "application/json"})
    assert r.status_code == 415 and error_of(r)["code"] == -1100
    r = alice.http.post("/api/v3/order", content=b"x=" + b"a" * 70_000, headers={**headers, "Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 413 and error_of(r)["code"] == -1100
    r = alice.http.post("/api/v3/order", content=b"\xff\xfe=1", headers={**headers, "Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 400 and error_of(r)
    assert alice.state() == before


def test_ed25519_key_signs_requests(server, alice):
    from ringfence.identity.api_keys import issue_demo_key
    from ringfence.identity.context import IdentityContext
    from ringfence.settings import load_settings
    from ringfence.store import Store

    private = Ed25519PrivateKey.generate()
    public_pem = private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    settings = load_settings(database_url=server.database_url)
    ctx = IdentityContext(store=Store.from_url(settings.database_url), settings=settings)
    created = issue_demo_key(ctx, "alice", "alice@demo.ringfence.local", kind="ed25519", public_key=public_pem)
    assert created.secret is None
    payload = urlencode({"timestamp": str(int(time.time() * 1000)), "recvWindow": "10000"})
    signature = base64.b64encode(private.sign(payload.encode())).decode()
    r = alice.http.get("/api/v3/account", params={"timestamp": payload.split("=")[1].split("&")[0], "recvWindow": "10000", "signature": signature}, headers={"X-MBX-APIKEY": created.api_key})
    assert r.status_code == 200, r.text
    assert r.json()["uid"] == "alice"
    other = Ed25519PrivateKey.generate()
    payload = urlencode({"timestamp": str(int(time.time() * 1000)), "recvWindow": "10000"})
    forged = base64.b64encode(other.sign(payload.encode())).decode()
    r = alice.http.get("/api/v3/account?" + payload + "&signature=" + forged.replace("+", "%2B").replace("/", "%2F").replace("=", "%3D"), headers={"X-MBX-APIKEY": created.api_key})
    assert error_of(r)["code"] == -1022


def test_operations_endpoints_and_closed_cors(alice):
    assert alice.http.get("/healthz").json() == {"status": "ok"}
    ready = alice.http.get("/readyz").json()
    assert ready["ready"] is True and ready["last_seq"] > 0
    metrics = alice.http.get("/metrics").text
    assert "ringfence_journal_fsync_seconds_total" in metrics and "ringfence_http_request_seconds_bucket" in metrics
    assert "ringfence_order_rejections_total" in metrics
    r = alice.http.get("/api/v3/ping", headers={"Origin": "https://evil.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    r = alice.http.options("/api/v3/order", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in r.headers
    openapi = alice.http.get("/openapi.json").json()
    assert "/api/v3/order" in openapi["paths"] and "/v1/markets" in openapi["paths"]


def test_native_api(alice):
    markets = {m["symbol"]: m for m in alice.http.get("/v1/markets").json()}
    assert markets["AAPLXUSDT"]["segment"] == "tokenized" and markets["BTCUSDT"]["segment"] == "spot"
    segments = {s["segment"] for s in alice.http.get("/v1/segments").json()}
    assert segments == {"spot", "derivatives", "tokenized"}
    r = alice.get("/v1/account", signed=True)
    rows = {(b["segment"], b["asset"]) for b in r.json()["balances"]}
    assert ("tokenized", "AAPLX") in rows and ("spot", "BTC") in rows


def test_public_endpoints_shapes(alice):
    assert alice.get("/api/v3/ping").json() == {}
    assert abs(alice.get("/api/v3/time").json()["serverTime"] - time.time() * 1000) < 10_000
    tickers = alice.get("/api/v3/ticker/24hr").json()
    assert {t["symbol"] for t in tickers} == {"BTCUSDT", "ETHUSDT", "AAPLXUSDT"}
    assert all("baseVolume" not in t and "time" not in t for t in tickers)
    some = alice.get("/api/v3/ticker/price", {"symbols": '["BTCUSDT","ETHUSDT"]'}).json()
    assert [p["symbol"] for p in some] == ["BTCUSDT", "ETHUSDT"]
    book = alice.get("/api/v3/ticker/bookTicker", {"symbol": "BTCUSDT"}).json()
    assert book["bidPrice"] < book["askPrice"]
    r = alice.get("/api/v3/ticker/price", {"symbols": "not json"})
    assert error_of(r)["code"] == -1100


def test_proof_of_liabilities_on_the_api(alice, server):
    from ringfence.solvency.pol import verify_proof

    root = alice.http.get("/por/root.json").json()
    assert root["version"] == "ringfence-por-v1"
    assert "coverage" in alice.http.get("/por").text.lower()
    page = alice.http.get("/por/verify")
    assert page.status_code == 200 and "<script" in page.text
    mine = alice.get("/v1/por/proof", signed=True)
    assert mine.status_code == 200 and mine.json()["account_id"] == "alice"
    assert verify_proof(mine.json(), root)[0] is True
    bob = Client(server, "bob").get("/v1/por/proof", signed=True).json()
    assert bob["account_id"] == "bob" and bob["nonce"] != mine.json()["nonce"]
    # the account comes from the signature: a parameter cannot ask for someone else's proof
    other = alice.get("/v1/por/proof", {"account_id": "bob"}, signed=True).json()
    assert other["account_id"] == "alice"
    assert alice.http.get("/v1/por/proof").status_code == 401


def test_serve_says_which_matching_hot_path_runs(server):
    # `ringfence serve` prints at start-up whether the order book and matching loop run compiled
    # (mypyc) or as pure Python; `ringfence version` against the same sources says the same.
    from .conftest import cli

    lines = [line for line in server.log_text().splitlines() if "matching hot path:" in line]
    assert len(lines) == 1, server.log_text()[-2000:]
    version = cli("version")
    assert version.returncode == 0, version.stderr
    assert lines[0] == f"ringfence: matching {version.stdout.splitlines()[1]}"
