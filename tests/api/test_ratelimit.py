"""Request weights per IP: 429 with Retry-After past the limit, then a temporary 418 ban."""

import httpx
import pytest

from .conftest import Server


@pytest.fixture(scope="module")
def tight_server(tmp_path_factory):
    env = {"RINGFENCE_API_WEIGHT_PER_MIN": "60", "RINGFENCE_API_BAN_AFTER": "3", "RINGFENCE_API_BAN_S": "30"}
    srv = Server(tmp_path_factory.mktemp("tight") / "data", env)
    yield srv
    assert srv.stop() == 0


def test_rate_limit_then_ban(tight_server):
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
