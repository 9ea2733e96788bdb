"""`HotRoutes` (api/app.py): the order-entry routes and the pings (`GET /api/v3/ping`, `/api/v3/time`)
go straight to their endpoint, not through FastAPI's layers, and answer exactly as those layers would
(status, body, headers; refusals in Binance's shape; weight charged); HEAD and browser requests
(`Origin`) still take the full stack. Issue 18: a relayed ping cost the engine's event loop ~3x its
endpoint's own time in FastAPI's routing, dependency solving and exit stack."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ringfence.api.app import HOT_PATHS, MAX_BODY_BYTES, BodyLimit, HotRoutes, RefuseWritesWhenStopped, create_app
from ringfence.api.auth import ApiGate
from ringfence.api.binance_errors import BinanceError
from ringfence.api.gateway import RateLimiter
from ringfence.api.service import Exchange
from ringfence.monitoring.stream import ApiCallRecorder, Outbox
from ringfence.store import Store


def _hot(app: Any) -> HotRoutes:
    while not isinstance(app, HotRoutes):
        app = app.app
    return app


class _Counted:
    """FastAPI's stack (under `HotRoutes` and the layers it answers for), counting the requests that reach it."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.paths: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.paths.append(scope["method"] + " " + scope["path"])
        await self.app(scope, receive, send)


def _count_fastapi(hot: HotRoutes) -> _Counted:
    """Count what reaches FastAPI's stack: the innermost layer's app (HotRoutes is outermost; the security
    headers, the body limit, the recorder and the refusal of writes sit between it and FastAPI)."""
    layer: Any = hot
    while layer.app is not hot.fastapi_app:
        layer = layer.app
    counted = layer.app = _Counted(layer.app)
    return counted


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
        counted = _count_fastapi(hot)
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
        counted = _count_fastapi(hot)
        head, browser = _answers(app, [("HEAD", "/api/v3/ping", {}), ("GET", "/api/v3/ping", {"Origin": "https://x.example"})])
        assert counted.paths == ["HEAD /api/v3/ping", "GET /api/v3/ping"]
        assert head.status_code == 200 and head.content == b"" and browser.status_code == 200 and browser.json() == {}
    finally:
        ex.close()


# ---------------------------------------------------------------- the hot pings against the full stack, request by request

_METHODS = ("GET", "GET", "GET", "HEAD", "POST", "DELETE", "OPTIONS", "get")
_PATHS = ("/api/v3/ping", "/api/v3/time", "/api/v3/ping/", "//api/v3/ping", "/API/V3/PING", "/api/v3/time/", "/api/v3/order")
_QUERIES = (b"", b"", b"x=1", b"%zz", b"symbol=BTCUSDT", b"timestamp=1&signature=ab", b"a=1&a=2", b"=")
_HEADERS = (
    (b"origin", b"https://allowed.example"), (b"origin", b"https://other.example"), (b"x-mbx-apikey", b"somekey"),
    (b"content-type", b"application/x-www-form-urlencoded"), (b"content-type", b"application/json"),
    (b"access-control-request-method", b"GET"), (b"content-length", b"999999"),
)
_BODIES = (b"", b"", b"a=1", b"{}")
_request = st.tuples(st.sampled_from(_METHODS), st.sampled_from(_PATHS), st.sampled_from(_QUERIES),
                     st.lists(st.sampled_from(_HEADERS), max_size=3, unique=True), st.sampled_from(_BODIES),
                     st.sampled_from(("10.0.0.1", "10.0.0.2")))


class _Side:
    """One app as `serve` builds it (the api_call recorder under the body limit, as `create_app` puts it
    with monitoring on), counting what reaches FastAPI's stack."""

    def __init__(self, ex: Exchange, store: Store, hot: bool) -> None:
        self.gate = ApiGate(object(), weight_per_min=1_000, key_weight_per_min=1_000)  # type: ignore[arg-type]
        app = create_app(ex, self.gate, cors_origins=("https://allowed.example",))
        self.hot = _hot(app)
        self.outbox = Outbox(store)
        body_limit = self.hot.app.app  # HotRoutes -> SecurityHeaders -> BodyLimit -> (the recorder) -> refusal of writes
        assert isinstance(body_limit, BodyLimit) and isinstance(body_limit.app, RefuseWritesWhenStopped)
        body_limit.app = self.hot.recorder = ApiCallRecorder(body_limit.app, self.outbox)
        self.counted = _count_fastapi(self.hot)
        self.kept = dict(self.hot.routes)  # what HotRoutes would call straight
        if not hot:
            self.hot.routes = {}
        self.app = app
        self.metrics = self.hot.metrics

    def reset(self, now: list[int]) -> None:
        # tight weights on a clock of the test's (a minute's window never ends between the two sides)
        self.gate.ip_limiter = RateLimiter(4, ban_after=2, ban_s=60, clock=lambda: now[0])
        self.outbox._queue.clear()
        self.counted.paths.clear()

    def requests_by_route(self) -> dict[tuple[str, ...], float]:
        return {tuple(s.labels.values()): s.value for m in self.metrics.requests.collect() for s in m.samples
                if s.name.endswith("_total")}


async def _raw(app: Any, method: str, path: str, query: bytes, headers: list[tuple[bytes, bytes]], body: bytes,
               ip: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": query, "root_path": "",
             "headers": [(b"host", b"test"), *headers, (b"content-length", str(len(body)).encode())] if body else
             [(b"host", b"test"), *headers],
             "client": (ip, 50_000), "server": ("test", 80), "state": {}}
    given = [False]

    async def receive() -> dict[str, Any]:
        if not given[0]:
            given[0] = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    content = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], sorted(start["headers"]), re.sub(rb'"serverTime":\d+', b'"serverTime":0', content)


@pytest.fixture(scope="module")
def sides(tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder = tmp_path_factory.mktemp("hot")
    ex = Exchange(folder / "data")
    ex.open()
    store = Store.from_url(f"sqlite:///{folder / 'm.sqlite'}")
    try:
        yield _Side(ex, store, hot=True), _Side(ex, store, hot=False)
    finally:
        store.engine.dispose()
        ex.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_request, min_size=1, max_size=8))
def test_any_request_on_the_ping_paths_answers_as_the_full_stack_would(sides: Any, requests: list[Any]) -> None:
    """Every request near the pings and the order route (methods, slashes, case, queries, bodies, Origin
    and CORS preflights, API keys, oversized declared bodies, two client IPs) through the app with its
    hot routes and through the same app without them: the same status, headers and body (byte for byte,
    the time masked), the same weight charged (tight limits: 429s, then 418 bans, with their
    Retry-After), the same api_call event (none for a 413) and the same request counters. And the hot
    path was taken: a plain ping or order never reached FastAPI's stack (HotRoutes did the body limit's,
    the recorder's and the security headers' work itself)."""
    hot, full = sides
    now = [1_000_000]
    hot.reset(now)
    full.reset(now)
    before = (hot.requests_by_route(), full.requests_by_route())

    async def run() -> None:
        for method, path, query, headers, body, ip in requests:
            h = await _raw(hot.app, method, path, query, headers, body, ip)
            f = await _raw(full.app, method, path, query, headers, body, ip)
            assert h == f, (method, path, query, headers, body)
            now[0] += 1  # a second between requests: Retry-After counts down alike

    asyncio.run(run())
    events = [[{k: v for k, v in e.items() if k != "at_ms"} for e in side.outbox._queue] for side in sides]
    inside = [r for r in requests if not any(n == b"content-length" and int(v) > MAX_BODY_BYTES for n, v in r[3])]  # not 413
    # every request on /api/ but a 413 (answered by the body limit, outside the recorder) has its event
    assert events[0] == events[1] and len(events[0]) == sum(path.startswith("/api/") for _, path, *_ in inside)
    after = (hot.requests_by_route(), full.requests_by_route())
    assert {k: v - before[0].get(k, 0) for k, v in after[0].items()} == {k: v - before[1].get(k, 0) for k, v in after[1].items()}
    plain = [r for r in inside if (r[0], r[1]) in hot.kept and not any(n == b"origin" for n, _ in r[3])]
    assert len(full.counted.paths) == len(inside)
    assert len(hot.counted.paths) == len(inside) - len(plain), "a plain ping or order went through FastAPI's stack"
    for ip in ("10.0.0.1", "10.0.0.2"):  # the weight each IP used (or its ban), alike
        assert _used(hot, ip) == _used(full, ip)


def test_a_stopped_node_refuses_hot_writes_as_the_full_stack_does(sides: Any) -> None:
    """A node that has stopped (`node.failed`): an order or a cancel through the hot route gets the same
    503 (Retry-After, the reason) and the same api_call event (route unmatched: refused before routing)
    as through the full stack, and reaches no endpoint; a ping still answers."""
    hot, full = sides
    now = [2_000_000]
    hot.reset(now)
    full.reset(now)
    ex = hot.hot.refuse.exchange
    ex.node.failed = RuntimeError("test: journal write failed")
    try:
        async def run() -> list[Any]:
            out = []
            for method, path in (("POST", "/api/v3/order"), ("DELETE", "/api/v3/order"), ("GET", "/api/v3/ping")):
                h = await _raw(hot.app, method, path, b"symbol=BTCUSDT", [(b"x-mbx-apikey", b"k")], b"", "10.0.0.3")
                f = await _raw(full.app, method, path, b"symbol=BTCUSDT", [(b"x-mbx-apikey", b"k")], b"", "10.0.0.3")
                assert h == f, (method, path)
                out.append(h[0])
            return out

        assert asyncio.run(run()) == [503, 503, 400]
    finally:
        ex.node.failed = None
    events = [[{k: v for k, v in e.items() if k != "at_ms"} for e in side.outbox._queue] for side in sides]
    assert events[0] == events[1] and [e["data"]["endpoint"] for e in events[0]] == ["unmatched", "unmatched", "/api/v3/ping"]
    assert [e["data"]["status"] for e in events[0]] == [503, 503, 400]
    assert hot.counted.paths == [], "the refusals and the ping were answered by HotRoutes"


def _used(side: _Side, ip: str) -> int | str:
    try:
        return side.gate.ip_limiter.charge("ip:" + ip, 0)
    except BinanceError as err:
        return err.status


def test_each_hot_route_is_the_route_fastapi_would_pick(sides: Any) -> None:
    """HotRoutes keys its routes by (method, path): FastAPI's router would dispatch each of those
    requests to the same route object (no earlier route, mount or path parameter catches it first)."""
    hot, full = sides
    assert {path for _, path in hot.hot.routes} == set(HOT_PATHS) and hot.hot.routes.keys() == full.kept.keys()

    async def run() -> None:
        for (method, path), route in full.kept.items():  # through the app whose HotRoutes keeps none
            scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
                     "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
                     "headers": [(b"host", b"test")], "client": ("10.0.0.9", 1), "server": ("test", 80), "state": {}}

            async def receive() -> dict[str, Any]:
                return {"type": "http.request", "body": b"", "more_body": False}

            async def send(message: dict[str, Any]) -> None:
                pass

            await full.app(scope, receive, send)
            assert scope.get("route") is route, (method, path, scope.get("route"))

    asyncio.run(run())
