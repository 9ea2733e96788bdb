"""`HotRoutes` (api/app.py): the order-entry routes and the pings (`GET /api/v3/ping`, `/api/v3/time`)
go straight to their endpoint, not through FastAPI's layers, and answer exactly as those layers would
(status, body, headers; refusals in Binance's shape; weight charged); HEAD and browser requests
(`Origin`) still take the full stack. Issue 18: a relayed ping cost the engine's event loop ~3x its
endpoint's own time in FastAPI's routing, dependency solving and exit stack."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from ringfence.api.app import HotRoutes, create_app
from ringfence.api.auth import ApiGate
from ringfence.api.service import Exchange


def _hot(app: Any) -> HotRoutes:
    while not isinstance(app, HotRoutes):
        app = app.app
    return app


class _Counted:
    """The app behind `HotRoutes` (FastAPI's stack), counting the requests that reach it."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.paths: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.paths.append(scope["method"] + " " + scope["path"])
        await self.app(scope, receive, send)


def _answers(app: Any, requests: list[tuple[str, str, dict[str, str]]]) -> list[httpx.Response]:
    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            return [await client.request(method, url, headers=headers) for method, url, headers in requests]

    return asyncio.run(run())


def _same(hot: httpx.Response, full: httpx.Response) -> None:
    assert hot.status_code == full.status_code
    assert sorted(hot.headers.items()) == sorted(full.headers.items())
    if "serverTime" in full.text:
        assert hot.json().keys() == full.json().keys() and isinstance(hot.json()["serverTime"], int)
    else:
        assert hot.content == full.content


def test_pings_skip_fastapis_layers_and_answer_as_they_would(tmp_path) -> None:
    ex = Exchange(tmp_path / "data")
    ex.open()
    try:
        gate = ApiGate(object(), weight_per_min=1_000, key_weight_per_min=1_000)  # type: ignore[arg-type]
        app = create_app(ex, gate)
        hot = _hot(app)
        counted = hot.app = _Counted(hot.app)
        asked = [
            ("GET", "/api/v3/ping", {}),
            ("GET", "/api/v3/time", {}),
            ("GET", "/api/v3/ping?symbol=BTCUSDT", {}),  # -1104: not a parameter of ping
            ("GET", "/api/v3/ping?", {}),
        ]
        hot_answers = _answers(app, asked)
        assert counted.paths == [], "GET ping and time are answered without FastAPI's stack"
        assert [r.status_code for r in hot_answers] == [200, 200, 400, 200]
        assert hot_answers[0].json() == {} and hot_answers[2].json()["code"] == -1104
        # the same requests through FastAPI's stack (no route kept hot): the same answers
        hot.routes = {key: route for key, route in hot.routes.items() if key[1] == "/api/v3/order"}
        full_answers = _answers(app, asked)
        assert len(counted.paths) == len(asked)
        for h, f in zip(hot_answers, full_answers):
            _same(h, f)
        # each ping was charged its weight either way (the IP's window: 4 + 4 requests of weight 1)
        assert gate.ip_limiter.charge("ip:127.0.0.1", 0) == 8
        # metrics by route, as Observe counts them in the full stack
        text = _answers(app, [("GET", "/metrics", {})])[0].text
        assert 'ringfence_http_requests_total{route="/api/v3/ping",status="200"} 4.0' in text
        assert 'ringfence_http_requests_total{route="/api/v3/ping",status="400"} 2.0' in text
    finally:
        ex.close()


def test_head_and_browser_pings_still_take_the_full_stack(tmp_path) -> None:
    ex = Exchange(tmp_path / "data")
    ex.open()
    try:
        app = create_app(ex, ApiGate(object(), weight_per_min=1_000, key_weight_per_min=1_000))  # type: ignore[arg-type]
        hot = _hot(app)
        counted = hot.app = _Counted(hot.app)
        head, browser = _answers(app, [("HEAD", "/api/v3/ping", {}), ("GET", "/api/v3/ping", {"Origin": "https://x.example"})])
        assert counted.paths == ["HEAD /api/v3/ping", "GET /api/v3/ping"]
        assert head.status_code == 200 and head.content == b"" and browser.status_code == 200 and browser.json() == {}
    finally:
        ex.close()
