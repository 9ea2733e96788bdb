"""Request weights per IP: 429 with Retry-After past the limit, then a temporary 418 ban."""

import httpx
import pytest

from .conftest import Server, early_in_a_window



@pytest.fixture(scope="module")
def tight_server(tmp_path_factory):
    env = {"RINGFENCE_API_WEIGHT_PER_MIN": "60", "RINGFENCE_API_BAN_AFTER": "3", "RINGFENCE_API_BAN_S": "30"}
    srv = Server(tmp_path_factory.mktemp("tight") / "data", env, chains=False)
    yield srv
    assert srv.stop() == 0


def test_rate_limit_then_ban(tight_server):
    early_in_a_window()
    http = httpx.Client(base_url=tight_server.base, timeout=5)
    statuses = []
    for _ in range(40):
        r = http.get("/api/v3/ticker/price", params={"symbol": "BTCUSDT"})  # weight 2
        statuses.append(r.status_code)
        if r.status_code == 429:
            assert int(r.headers["Retry-After"]) >= 1
            assert r.json()["code"] == -1003
        if r.status_code == 418:
            assert r.json()["code"] == -1003 and "banned" in r.json()["msg"]
            assert int(r.headers["Retry-After"]) > 0
            break
    assert statuses[:30] == [200] * 30, statuses  # 30 x weight 2 = the 60 allowed
    assert 429 in statuses and statuses[-1] == 418, statuses
    # the ban holds for every endpoint from that client; health checks are not rate-limited
    assert http.get("/api/v3/ping").status_code == 418
    assert http.get("/healthz").status_code == 200


def test_websocket_api_shares_the_ip_budget_and_answers_in_binance_shape(tight_server):
    """`/ws-api/v3` requests are charged to the same per-IP weight as REST: past it the response
    frame has status 429 (418 once banned), -1003 and `error.data.retryAfter`, and REST from that
    address is refused as well. Works whether or not the test above has already used the budget."""
    import asyncio
    import json

    import websockets

    async def scenario():
        async with websockets.connect(tight_server.base.replace("http://", "ws://") + "/ws-api/v3") as ws:
            counts = []
            for i in range(200):
                await ws.send(json.dumps({"id": i, "method": "ping"}))
                reply = json.loads(await ws.recv())
                assert reply["id"] == i
                if reply["status"] != 200:
                    return reply, counts
                counts.append(reply["rateLimits"][0]["count"])
            raise AssertionError("never rate limited")

    early_in_a_window()
    refused, counts = asyncio.run(scenario())
    assert refused["status"] in (429, 418) and refused["error"]["code"] == -1003, refused
    assert refused["error"]["data"]["retryAfter"] > refused["error"]["data"]["serverTime"]
    assert counts == sorted(counts) and all(c <= 60 for c in counts)  # the REST limit, counted per request weight
    assert httpx.get(tight_server.base + "/api/v3/ping").status_code in (429, 418)
