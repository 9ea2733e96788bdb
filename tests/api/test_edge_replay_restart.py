"""A signed request runs once — also across a restart and when the replay memory is full; and what
`serve` writes is readable by its own user only.

Found by an attack on a running server: the replay guard lived only in memory, so an order resent
after `serve` restarted created a second order. Now a request signed before the guard could
remember it (before this server started, or at or before an entry the bound forced out inside its
window) is refused with -1021 and changes nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import urlencode

import httpx
import pytest

from ringfence.api.binance_errors import BinanceError
from ringfence.api.gateway import ReplayGuard

from .conftest import Server


def _mode(path) -> int:
    """Permission bits, or 0 for a file the running server replaced meanwhile (its atomic writes' .tmp files)."""
    try:
        return path.stat().st_mode
    except FileNotFoundError:
        return 0


def _sign(secret: str, payload: str) -> str:
    return hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()


def test_the_guard_refuses_what_it_cannot_remember() -> None:
    guard = ReplayGuard(max_entries=2, started_ms=1_000)
    with pytest.raises(BinanceError) as err:  # signed before the server started
        guard.check_and_remember(1, b"a", now_ms=1_500, timestamp_ms=999)
    assert err.value.code == -1021
    guard.check_and_remember(1, b"a", now_ms=1_500, timestamp_ms=1_400)
    with pytest.raises(BinanceError) as err:  # the same bytes again
        guard.check_and_remember(1, b"a", now_ms=1_501, timestamp_ms=1_400)
    assert err.value.code == -1022
    guard.check_and_remember(1, b"b", now_ms=1_502, timestamp_ms=1_450)
    guard.check_and_remember(1, b"c", now_ms=1_503, timestamp_ms=1_460)  # forces "a" out inside its window
    with pytest.raises(BinanceError) as err:  # "a" is no longer remembered, so it may not run again
        guard.check_and_remember(1, b"a", now_ms=1_504, timestamp_ms=1_400)
    assert err.value.code == -1021
    guard.check_and_remember(1, b"d", now_ms=1_505, timestamp_ms=1_505)  # a fresh request still runs


def test_an_order_resent_after_a_restart_is_refused(tmp_path) -> None:
    data = tmp_path / "data"
    server = Server(data, chains=False)
    key = server.keys["alice"]
    headers = {"X-MBX-APIKEY": key["api_key"], "Content-Type": "application/x-www-form-urlencoded"}

    def open_orders(base: str) -> list[int]:
        payload = urlencode({"symbol": "BTCUSDT", "timestamp": int(time.time() * 1000), "recvWindow": "60000"})
        r = httpx.get(f"{base}/api/v3/openOrders?{payload}&signature={_sign(key['api_secret'], payload)}", headers=headers)
        assert r.status_code == 200, r.text
        return sorted(o["orderId"] for o in r.json())

    payload = urlencode({"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC", "quantity": "0.0010",
                         "price": "58000.00", "recvWindow": "60000", "timestamp": int(time.time() * 1000)})
    body = f"{payload}&signature={_sign(key['api_secret'], payload)}"
    try:
        # what serve creates is for its own user only (the identity database holds password hashes
        # and sealed secrets; found readable by every local user)
        created = [p for p in data.rglob("*") if p.is_file()]
        on_sqlite = server.database_url.startswith("sqlite:")  # the suite's PostgreSQL profile keeps it in a database
        assert any(p.name.startswith("identity.sqlite3") for p in created) == on_sqlite
        assert any(p.suffix == ".seg" or "journal" in p.parts for p in created)
        assert [str(p) for p in created if _mode(p) & 0o077] == []
        first = httpx.post(server.base + "/api/v3/order", content=body, headers=headers)
        assert first.status_code == 200, first.text
        assert httpx.post(server.base + "/api/v3/order", content=body, headers=headers).json()["code"] == -1022
    finally:
        assert server.stop() == 0
    time.sleep(0.01)
    again = Server(data, chains=False)
    try:
        before = open_orders(again.base)
        resent = httpx.post(again.base + "/api/v3/order", content=body, headers=headers)
        assert (resent.status_code, resent.json()["code"]) == (400, -1021), resent.text
        assert open_orders(again.base) == before and first.json()["orderId"] in before
    finally:
        assert again.stop() == 0
