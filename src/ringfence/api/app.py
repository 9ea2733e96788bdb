"""The FastAPI application: Binance-compatible REST, WebSocket streams, native `/v1`, operations
endpoints and the web dashboard, all served by the one process that runs the engine.

Protections on every request: a body-size limit (413), request weight per IP and per API key
(429 + `Retry-After`, then 418 bans), signatures inside `recvWindow` and never replayed, secrets
compared in constant time (in the identity service), CORS closed unless origins are configured
(and never `*` outside dev mode). Logs are structured JSON without query strings, bodies or keys.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import structlog
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.datastructures import MutableHeaders

from ..money import format_amount
from ..trading.commands import OrderRejected, Trade
from .auth import ApiGate
from .binance import ERROR_RESPONSES, BinanceApi, build_router
from .binance_errors import BinanceError
from .headers import SecurityHeaders, dashboard_csp, secured_start
from .service import Exchange
from .ws import StreamHub, build_ws_router, quiet_client_garbage

__all__ = ["create_app", "MAX_BODY_BYTES"]

MAX_BODY_BYTES = 64 * 1024
#: Where `BodyLimit` leaves the request's whole body in the scope (the same bytes its `receive` replays).
BODY_SCOPE_KEY = "ringfence.body"
NO_OTEL: Any = {"tracing": False, "metrics": False, "logs": False}
log = structlog.get_logger("ringfence.api")


class BodyLimit:
    """ASGI middleware: read the whole request body here, at most `limit` bytes, before the app
    sees the request.

    * Declared (`Content-Length`) or streamed (chunked) bodies over the limit get one 413 in
      Binance's shape, sent before the app starts, so there is never a second response start; the
      connection is closed without reading the rest (memory stays bounded by `limit`).
    * A client that hangs up before its body is complete is logged as `http.client_disconnected`
      (method and path only) and the app never runs: it is not a server error.
    """

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        replay = await whole_body(scope, receive, send, self.limit)
        if replay is not None:
            await self.app(scope, replay, send)


async def whole_body(scope: dict[str, Any], receive: Any, send: Any, limit: int) -> Any:
    """`BodyLimit`'s work on one HTTP request: its whole body read (at most `limit` bytes) and left
    in the scope (BODY_SCOPE_KEY); returns the `receive` the app is to get (the body again, then
    whatever comes after it), or None when the request was answered 413 here or its client left
    before its body was complete (logged; nothing to answer). `HotRoutes` calls it too."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                declared = limit + 1
            if declared > limit:
                await _too_large(send, limit)
                return None
    chunks: list[bytes] = []
    seen = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            log.info("http.client_disconnected", method=scope.get("method"), path=scope.get("path"), body_bytes_received=seen)
            return None
        chunk = message.get("body", b"")
        seen += len(chunk)
        if seen > limit:
            await _too_large(send, limit)
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    scope[BODY_SCOPE_KEY] = body  # read whole already: the gate takes it from here (auth.py body_text)
    delivered = False

    async def replay() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: the server's http.disconnect, when it comes

    return replay


async def _too_large(send: Any, limit: int) -> None:
    body = ('{"code":-1100,"msg":"Request body too large: at most %d bytes are accepted."}' % limit).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"connection", b"close")]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})


#: Where HEAD answers as GET without a body: public pages and read-only endpoints. Not every GET
#: route: the e-mailed links (/verify-email, /wallet/confirm-address, /wallet/confirm-withdrawal,
#: /security/confirm-factor) only check their token on GET and act on their page's POST button,
#: but a link checker's or mail scanner's HEAD on them gets 405 all the same (no need to answer it,
#: and a GET that came to act again would not be reached by a HEAD).
HEAD_PATHS = frozenset({
    "/", "/healthz", "/readyz", "/favicon.ico", "/risk", "/openapi.json", "/v1/markets", "/v1/halts",
    "/api/v3/ping", "/api/v3/time", "/api/v3/exchangeInfo", "/api/v3/depth", "/api/v3/trades", "/api/v3/klines",
    "/api/v3/ticker/price", "/api/v3/ticker/24hr", "/fapi/v1/ping", "/fapi/v1/time", "/fapi/v1/exchangeInfo",
})
HEAD_PREFIXES = ("/dashboard/",)


def _head_allowed(path: str) -> bool:
    return path in HEAD_PATHS or path.startswith(HEAD_PREFIXES)


class Observe:
    """Pure ASGI middleware (BaseHTTPMiddleware costs a task and a queue per request): request
    count and latency per route, and a log line for errors — method, path and status only, never
    the query string or body, which carry signatures and client data."""

    def __init__(self, app: Any, metrics: "Metrics") -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]
        outer = scope
        head = scope.get("method") == "HEAD" and _head_allowed(scope.get("path", ""))
        if head:
            # HEAD is GET without the body (RFC 9110 §9.3.2) on the public read-only pages and
            # endpoints uptime checkers probe; elsewhere it stays 405 (FastAPI's own answer): a mail
            # scanner's HEAD on an e-mailed link must not run the GET that uses the link up
            scope = dict(scope, method="GET")

        async def observed_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            elif head and message["type"] == "http.response.body":
                message = {"type": "http.response.body", "body": b"", "more_body": message.get("more_body", False)}
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            if scope is not outer and "route" in scope:
                outer["route"] = scope["route"]  # the api_call recorder outside reads the route from its own scope
            name = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(name, str(status[0])).inc()
            self.metrics.latency.labels(name).observe(time.perf_counter() - started)
            if status[0] >= 400:
                log.info("http.request", method=scope.get("method"), path=scope.get("path"), status=status[0])


#: The routes `HotRoutes` calls straight: order entry, and the unsigned connectivity checks every client
#: library sends between its orders (`GET /api/v3/ping` and `/time`, weight 1, no parameters). Through
#: FastAPI's layers a relayed ping cost the engine's event loop ~3x what its endpoint does (issue 18,
#: bench/profile_api.py --kind ping --cprofile: routing, dependency solving, the exit stack).
HOT_PATHS = ("/api/v3/order", "/api/v3/ping", "/api/v3/time")


class HotRoutes:
    """Pure ASGI, the outermost layer of the app `create_app` returns: the order-entry routes (`POST`/
    `DELETE /api/v3/order`) and the pings (`GET /api/v3/ping`, `/api/v3/time`; HOT_PATHS) straight to
    their endpoint, everything else down `app` (the security headers, the body limit, the monitoring
    recorder, the refusal of writes on a stopped node, then FastAPI).

    FastAPI's own layers (error middleware, exit stacks, the router's linear match over ~300 routes,
    dependency solving) cost more of the event loop than the order itself (py-spy, issue 18). For
    these routes the endpoint is already a plain `endpoint(request)` (binance.add_binance_route:
    weight, parameter checks, signature, replay guard, rate limits and Binance's error shape are all
    inside it), so this calls it directly with the same `Request` and keeps what the skipped layers
    did: `scope["route"]` for the api_call event and metrics (`Observe`'s counters), a 500 in
    Binance's shape for an unexpected error. Requests carrying `Origin` (browsers: CORS) take the full
    stack; with CORS configured the others get its `Vary: Origin` here, as every answer through it
    does (a shared cache must not give a browser's request an answer made without its Origin).

    The layers between the server and FastAPI are done here too for these requests, in this one
    coroutine and one `send` wrapper where each of them was a coroutine and most a wrapper of their
    own, per request and per message (issue 18: ~4% of a relayed signed order's instructions on the
    engine's loop), with each layer's own code and in their order: the body read whole or refused
    (`whole_body`: BodyLimit's), the refusal of a write on a stopped node (`refuse`, recorded), the
    endpoint, the api_call event (`recorder.record`, after the answer, not for a 413 or a client
    that left, as before), the security headers on the answer's start (`secured_start`, outermost)."""

    def __init__(self, app: Any, fastapi_app: FastAPI, metrics: "Metrics", paths: tuple[str, ...] = HOT_PATHS, *,
                 max_body_bytes: int = MAX_BODY_BYTES, refuse: RefuseWritesWhenStopped | None = None,
                 recorder: Any = None) -> None:
        from fastapi.routing import APIRoute

        self.app = app
        self.fastapi_app = fastapi_app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        #: the layers `app` holds whose checks the hot routes get here (None: not in this app)
        self.refuse = refuse
        self.recorder = recorder  # monitoring.stream.ApiCallRecorder
        self.routes: dict[tuple[str, str], Any] = {}
        def walk(routes: list[Any]) -> Any:  # FastAPI keeps included routers as branches
            for route in routes:
                inner = getattr(route, "original_router", None)
                if inner is not None:
                    context = getattr(route, "include_context", None)
                    if getattr(context, "prefix", "") or getattr(context, "dependencies", None):
                        continue  # mounted under another prefix, or with dependencies this would skip
                    yield from walk(inner.routes)
                else:
                    yield route

        for route in walk(fastapi_app.routes):
            if isinstance(route, APIRoute) and route.path in paths and not route.dependencies:
                for method in route.methods:
                    self.routes[(method, route.path)] = route
        from fastapi.middleware.cors import CORSMiddleware

        #: CORSMiddleware adds `Vary: Origin` to every answer to a request without `Origin` (review, session 22)
        self.vary_origin = any(m.cls is CORSMiddleware for m in fastapi_app.user_middleware)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        route = self.routes.get((scope.get("method", ""), scope.get("path", ""))) if scope["type"] == "http" else None
        if route is None or scope.get("root_path") or any(name == b"origin" for name, _ in scope.get("headers", ())):
            await self.app(scope, receive, send)
            return
        status = 500  # what the recorder saw go out (500: no answer started)

        async def answer(message: dict[str, Any]) -> None:  # the recorder's look, then the security headers
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = secured_start(message)
            await send(message)

        replay = await whole_body(scope, receive, answer, self.max_body_bytes)
        if replay is None:
            return  # answered 413, or the client left: not recorded (the body limit is outside the recorder)
        recorder = self.recorder
        try:
            refusal = self.refuse.refusal(scope) if self.refuse is not None else None
            if refusal is not None:
                await refusal(scope, replay, answer)
            else:
                await self._endpoint(route, scope, replay, answer)
        finally:
            if recorder is not None and recorder.records(scope):
                recorder.record(scope, status)

    async def _endpoint(self, route: Any, scope: dict[str, Any], receive: Any, send: Any) -> None:
        started = time.perf_counter()
        if self.vary_origin:
            send = _vary_origin(send)
        scope["route"] = route
        scope.setdefault("app", self.fastapi_app)
        scope.setdefault("state", {})
        status = 500
        try:
            try:
                response = await route.endpoint(Request(scope, receive))
                status = response.status_code
            except Exception:  # what ServerErrorMiddleware would have answered, in Binance's shape
                log.exception("http.unhandled", method=scope.get("method"), path=scope.get("path"))
                status = 500
                response = JSONResponse({"code": -1000, "msg": "An unknown error occurred while processing the request."}, status_code=500)
            await response(scope, receive, send)
        finally:
            requests, latency = self.metrics.route(route.path, status)
            requests.inc()
            latency.observe(time.perf_counter() - started)
            if status >= 400:
                log.info("http.request", method=scope.get("method"), path=scope.get("path"), status=status)


def _vary_origin(send: Any) -> Any:
    """`send` with CORSMiddleware's `Vary: Origin` on the response start (its answer without `Origin`)."""
    async def sender(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            headers = MutableHeaders(scope=message)
            headers["Vary"] = ", ".join([*headers.getlist("Vary"), "Origin"])
        await send(message)

    return sender


class RefuseWritesWhenStopped:
    """Pure ASGI: once the engine node has stopped (`node.failed`: a deposed or fenced primary, a
    failed journal write), every write — identity (sign-up, sign-in, password reset, API keys...),
    REST, admin — answers 503 with the reason, before it reaches a store: a deposed primary must not
    take writes the new primary will never see. Reads (GET, HEAD, OPTIONS) still answer."""

    READS = frozenset({"GET", "HEAD", "OPTIONS"})

    def __init__(self, app: Any, exchange: Any) -> None:
        self.app = app
        self.exchange = exchange

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        refusal = self.refusal(scope)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def refusal(self, scope: dict[str, Any]) -> Response | None:
        """The 503 for a write (an HTTP request not in READS) once the node has stopped, else None
        (`HotRoutes` asks too)."""
        if scope["type"] == "http" and scope.get("method") not in self.READS:
            reason = self.exchange.node.stopped_reason(detailed=False)
            if reason is not None:
                body = {"code": -1001, "msg": f"This node has stopped and takes no writes: {reason}", "stopped": reason}
                return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})
        return None


def _custody_readiness(custody: Any, detailed: bool) -> dict[str, Any]:
    """Custody in /readyz: each worker's state for everyone (a load balancer's question); the rest
    (chain heights, errors, reconciliation evidence, the shield vault) only to whoever may read
    /metrics: a worker's last error could name an RPC endpoint, and an outsider needs none of it."""
    if custody is None:
        return {"running": False}
    status: dict[str, Any] = custody.status()
    if detailed:
        return status
    return {"running": True, "workers": {name: w["state"] for name, w in status.get("workers", {}).items()},
            "detail": "the rest with the metrics token (RINGFENCE_API_METRICS_TOKEN), as /metrics"}


class MetricsGate:
    """Who may read /metrics: with a token configured, only `Authorization: Bearer <token>`
    (compared in constant time, over digests so the length does not leak either); without one,
    everybody in dev mode and nobody in prod mode. Metrics name routes, rejection reasons and
    halts: an outsider has no business reading them."""

    def __init__(self, token: str, *, open_without_token: bool) -> None:
        self._digest = hashlib.sha256(token.encode()).digest() if token else None
        self.open_without_token = open_without_token

    def refusal(self, authorization: str | None) -> Response | None:
        if self._digest is None:
            if self.open_without_token:
                return None
            return self._refuse("/metrics is closed: set RINGFENCE_API_METRICS_TOKEN and send it as a bearer token.")
        scheme, _, sent = (authorization or "").partition(" ")
        ok = hmac.compare_digest(hashlib.sha256(sent.strip().encode()).digest(), self._digest)
        if scheme.lower() != "bearer" or not ok:
            return self._refuse("Send the metrics token as 'Authorization: Bearer <token>'.")
        return None

    @staticmethod
    def _refuse(msg: str) -> Response:
        return JSONResponse({"code": -2015, "msg": msg}, status_code=401, headers={"WWW-Authenticate": 'Bearer realm="metrics"'})


class Metrics:
    def __init__(self, exchange: Exchange) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("ringfence_http_requests_total", "HTTP requests", ["route", "status"], registry=r)
        self.latency = Histogram(
            "ringfence_http_request_seconds", "HTTP request latency", ["route"], registry=r,
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
        )
        self.orders = Counter("ringfence_orders_total", "Orders by outcome", ["outcome"], registry=r)
        self.rejections = Counter("ringfence_order_rejections_total", "Order rejections by reason", ["reason"], registry=r)
        self.trades = Counter("ringfence_trades_total", "Trades", ["symbol"], registry=r)
        self.commands = Gauge("ringfence_engine_commands_committed", "Commands journaled and applied", registry=r)
        self.batches = Gauge("ringfence_engine_batches_committed", "Journal records written", registry=r)
        self.fsync = Gauge("ringfence_journal_fsync_seconds_total", "Time spent in fsync", registry=r)
        self.last_seq = Gauge("ringfence_engine_last_seq", "Sequence number of the last applied command", registry=r)
        self.ws = Gauge("ringfence_ws_connections", "Open WebSocket connections", registry=r)
        self.ws_messages = Gauge("ringfence_ws_messages_sent_total", "WebSocket messages queued to subscribers", registry=r)
        self.halted = Gauge("ringfence_engine_halted", "1 when the shard has stopped after an invariant violation", registry=r)
        self.halts = Gauge("ringfence_halt_active", "Active graded halts (1 each)", ["scope_kind", "scope", "level", "halt_id"], registry=r)
        exchange.batch_subscribers.append(self.on_batch)
        # The labelled children the hot paths count with, looked up once: `labels()` checks and
        # locks on every call (three per order, ~3% of an order's time on the event loop).
        self._routes: dict[tuple[str, int], tuple[Any, Any]] = {}
        self._outcomes: dict[str, Any] = {}  # created on first use, as before (no zero series at start)

    def route(self, path: str, status: int) -> tuple[Any, Any]:
        """The request counter and latency histogram of one route path and status (children kept)."""
        children = self._routes.get((path, status))
        if children is None:
            children = (self.requests.labels(path, str(status)), self.latency.labels(path))
            if len(self._routes) < 10_000:  # route paths and statuses are few; a bound all the same
                self._routes[(path, status)] = children
        return children

    def on_batch(self, first_seq: int, ts_ns: int, outputs: list[list[Any]], before: dict[str, int]) -> None:
        for events in outputs:
            for e in events:
                t = type(e)
                if t is OrderRejected:
                    self.rejections.labels(e.reason).inc()
                    self._outcome("rejected").inc()
                elif t is Trade:
                    self.trades.labels(e.symbol).inc()
                elif t.__name__ == "OrderAccepted":
                    self._outcome("accepted").inc()

    def _outcome(self, outcome: str) -> Any:
        child = self._outcomes.get(outcome)
        if child is None:
            child = self._outcomes[outcome] = self.orders.labels(outcome)
        return child


def create_app(
    exchange: Exchange,
    gate: ApiGate,
    *,
    cors_origins: tuple[str, ...] = (),
    max_body_bytes: int = MAX_BODY_BYTES,
    identity_ctx: Any = None,
    por_dir: Path | None = None,
    reconcile_every_ms: int = 0,
    metrics_token: str = "",
    metrics_open_without_token: bool = True,
    custody: Any = None,
    chain_admin_token: str = "",
    monitoring_rules: str = "",
    monitoring_poll_ms: int = 200,
    monitoring_flush_ms: int = 100,
    monitoring_geoip: str = "",
    monitoring_scorer: str = "thread",
    monitoring_scorer_missed_answers: int = 18,
    stp: tuple[str, dict[str, str]] = ("EXPIRE_TAKER", {}),
    fiat_rates: Any = None,
    rates_token: str = "",
    por_publisher: Callable[[], Any] | None = None,
) -> FastAPI:
    """`por_publisher`: the `PorPublisher` once `serve` started it (it starts after the app is built), or None;
    POST /admin/v1/por/publish reaches it."""
    metrics = Metrics(exchange)
    monitor = None
    if identity_ctx is not None and monitoring_poll_ms:  # monitoring: the event stream and rules (docs/monitoring.md)
        from ..monitoring.service import Monitor, load_rules
        from ..monitoring.stream import engine_subscriber, relay_recovered
        from ..pacing import MONITOR_SHARE_PERMILLE, OUTBOX_SHARE_PERMILLE, CpuPacer

        from .demo import MARKET_MAKER

        # the demo's market maker: every demo trade is against it, which links nobody
        liquidity = (MARKET_MAKER,) if getattr(identity_ctx, "demo", False) else ()
        scorer_process = None
        if monitoring_scorer == "process":  # the scoring in a process of its own (monitoring/scorer_process.py)
            from ..monitoring.scorer_process import ScorerConfig, ScorerProcess

            scorer_process = ScorerProcess(ScorerConfig(
                database_url=identity_ctx.store.engine.url.render_as_string(hide_password=False), rules=monitoring_rules,
                poll_ms=monitoring_poll_ms, geoip=monitoring_geoip, liquidity_accounts=liquidity),
                missed_answers=monitoring_scorer_missed_answers)
        monitor = Monitor(identity_ctx.store, exchange, load_rules(monitoring_rules), poll_ms=monitoring_poll_ms,
                          flush_ms=monitoring_flush_ms,
                          geoip=monitoring_geoip, identity=identity_ctx,
                          liquidity_accounts=liquidity,
                          pacer=CpuPacer(share_permille=MONITOR_SHARE_PERMILLE),
                          outbox_pacer=CpuPacer(share_permille=OUTBOX_SHARE_PERMILLE), process=scorer_process)
        exchange.batch_subscribers.append(engine_subscriber(exchange, monitor.outbox))
        relay_recovered(exchange, monitor.outbox, identity_ctx.store)  # what a crash kept from the stream, from the journal
    hub = StreamHub(exchange, gate.listen_keys)
    hub.access = gate.access  # a revoked credential's listen keys go, and their sockets close (api/access.py)
    gate.on_listen_keys_dropped.append(hub.end_listen_keys)
    hub.fanout_seconds = Histogram("ringfence_ws_fanout_seconds", "Time to write one market-data message to all its subscribers",
                                   buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0), registry=metrics.registry)
    api = BinanceApi(exchange, gate)
    api.stp_default, api.stp_markets = stp[0], dict(stp[1])  # self-trade prevention defaults (docs/trading.md)
    # ---- custody (issue 15): capital endpoints, balanceUpdate, the custody runtime's workers
    from .capital import CapitalApi, balance_updates, build_capital_router

    capital = CapitalApi(exchange, gate, custody, identity_ctx)
    api.capital = capital
    exchange.batch_subscribers.append(balance_updates(exchange, hub))
    custody_gauges = (
        Gauge("ringfence_custody_worker_up", "1 while a custody worker runs, 0 while it backs off after an error", ["worker"], registry=metrics.registry),
        Gauge("ringfence_custody_worker_restarts_total", "Custody worker restarts after errors", ["worker"], registry=metrics.registry),
        Gauge("ringfence_chain_height", "Tip height of each chain the custody runtime watches", ["chain"], registry=metrics.registry),
    )

    reconciler_state: dict[str, Any] = {"reconciler": None, "last": None}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        import threading

        exchange.start(asyncio.get_running_loop())
        if custody is not None:
            custody.start(exchange.node)
        if monitor is not None:
            monitor.start()
        quiet_client_garbage()
        access_watch = asyncio.get_running_loop().create_task(gate.access.run())
        stop = threading.Event()
        worker = None
        if reconcile_every_ms:
            # Continuous internal reconciliation: a second code path folds the journal and compares
            # it with the live engine; a mismatch is submitted as a Halt command (docs/reconcile.md).
            from ..pacing import RECONCILER_SHARE_PERMILLE, CpuPacer
            from ..reconcile.reconciler import Reconciler

            # paced: its fold of five seconds of journal is ~100+ ms of CPU at a few hundred orders
            # a second, which held the GIL from the requests in one burst (docs/latency.md, session 17)
            reconciler = Reconciler(exchange.node, pacer=CpuPacer(share_permille=RECONCILER_SHARE_PERMILLE))
            reconciler_state["reconciler"] = reconciler

            def keep(report: Any) -> None:
                reconciler_state["last"] = report

            worker = threading.Thread(
                target=reconciler.run_forever,
                args=(stop,),
                kwargs={"poll_ms": 500, "internal_every_ms": reconcile_every_ms, "on_report": keep},
                name="ringfence-reconciler",
                daemon=True,
            )
            worker.start()
        log.info("ringfence.started", last_seq=exchange.last_seq, markets=len(exchange.markets()))
        try:
            yield
        finally:
            access_watch.cancel()
            stop.set()
            if worker is not None:
                worker.join(10)
            if custody is not None:
                custody.stop()
            if monitor is not None:
                monitor.stop()
            exchange.close()
            log.info("ringfence.stopped")

    app = FastAPI(
        title="ringfence",
        version="0.1.0",
        description="Binance-compatible spot API (`/api/v3`), native API (`/v1`), WebSocket streams (`/ws`, `/stream`), WebSocket API (`/ws-api/v3`).",
        lifespan=lifespan,
        # FastAPI's /docs and /redoc pages load their scripts from a CDN; nothing here may. The
        # OpenAPI document itself is served at /openapi.json (load it into any OpenAPI viewer).
        docs_url=None,
        redoc_url=None,
        # FastAPI's built-in OpenTelemetry hook: off. Nothing here configures a provider, yet
        # asking whether one is configured read os.environ three times per request (~10% of the
        # event loop's time under signed-order load, py-spy; /metrics is our telemetry).
        telemetry=NO_OTEL,
    )
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST", "DELETE", "PUT"], allow_headers=["X-MBX-APIKEY", "Content-Type"])
    app.state.exchange = exchange
    app.state.monitor = monitor
    app.state.hub = hub
    app.state.metrics = metrics

    app.add_middleware(Observe, metrics=metrics)

    @app.exception_handler(BinanceError)
    async def binance_error(request: Request, exc: BinanceError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x not in ("query", "body"))
        return JSONResponse({"code": -1100, "msg": f"Illegal parameter '{where}': {first.get('msg', 'invalid')}"}, status_code=400)

    app.include_router(build_router(api))
    app.include_router(build_capital_router(capital))
    if custody is not None and chain_admin_token:
        from .chain_admin import build_chain_admin_router

        app.include_router(build_chain_admin_router(custody, chain_admin_token))
    from .admin import build_admin_router, install_admin_pages  # staff console: signed requests and decisions (docs/staff.md)

    app.include_router(build_admin_router(exchange, monitor=monitor, custody=custody, identity_ctx=identity_ctx,
                                          por_publisher=por_publisher))
    install_admin_pages(app, identity_ctx, exchange)
    app.include_router(build_ws_router(hub))
    from .ws_api import build_ws_api_router  # Binance's WebSocket API: order entry at /ws-api/v3

    app.include_router(build_ws_api_router(api, hub))
    from ..index.api import build_index_router  # index and mark price (docs/index.md)

    app.include_router(build_index_router(exchange, gate))
    from ..derivatives.api import FuturesApi, build_futures_router  # perpetuals, Binance USDⓈ-M (docs/derivatives.md)

    futures = FuturesApi(exchange, gate, api)
    app.include_router(build_futures_router(futures))
    from ..derivatives.stream import FuturesUserStream  # ORDER_TRADE_UPDATE / ACCOUNT_UPDATE to futures listen keys

    FuturesUserStream(futures, hub)
    if por_dir is not None:
        from .por import build_por_router

        app.include_router(build_por_router(por_dir, gate))
    if identity_ctx is not None:
        from ..identity.web import install as install_identity_pages

        install_identity_pages(app, identity_ctx)
        from .session_trading import install_session_trading  # the dashboard trades on the web session

        install_session_trading(app, api, exchange, identity_ctx)
        from .session_money import install_session_money  # wallet pages: deposit, withdraw, address book

        install_session_money(app, capital, identity_ctx)
        if por_dir is not None:  # the security centre's "your proof": the user's own proof on the session
            from .por import build_session_por_router

            app.include_router(build_session_por_router(por_dir, gate, identity_ctx), include_in_schema=False)

    from ..i18n.api import build_i18n_router  # languages, fiat currencies, display rates (docs/i18n.md)
    from ..i18n.fiat import FiatRates

    app.state.fiat_rates = fiat_rates if fiat_rates is not None else FiatRates()
    app.include_router(build_i18n_router(app.state.fiat_rates, rates_token, identity_ctx))

    @app.get("/healthz", tags=["operations"], summary="Liveness")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], summary="Readiness: the engine accepts commands", responses={503: {"description": "not ready"}})
    async def readyz(request: Request) -> JSONResponse:
        node = exchange.node
        from ..risk.halts import active_halts

        # a broken invariant (shard_halted): every command is refused
        shard_halted, active_count = exchange.read(lambda engine: (engine.halted, len(active_halts(engine))))
        ready = node.failed is None and node.writer is not None and shard_halted is None
        detailed = metrics_gate.refusal(request.headers.get("authorization")) is None

        body: dict[str, Any] = {
            "ready": ready,
            "last_seq": exchange.last_seq,
            "halted": node.failed is not None or shard_halted is not None,
            "active_halts": active_count,
            # why the node stopped (deposed, fenced, a failed write), else null
            "stopped": node.stopped_reason(detailed),
            "custody": _custody_readiness(custody, detailed),
        }
        lease_state = getattr(getattr(node, "replica", None), "lease_state", None)
        if lease_state is not None:  # a replicated primary: whether it still renews its leadership lease
            body["lease"] = lease_state()
        return JSONResponse(body, status_code=200 if ready else 503)

    metrics_gate = MetricsGate(metrics_token, open_without_token=metrics_open_without_token)

    @app.get(
        "/metrics", tags=["operations"], response_class=PlainTextResponse,
        summary="Prometheus metrics (bearer token from RINGFENCE_API_METRICS_TOKEN; open only in dev mode without one)",
        responses={"401": {"description": "missing or wrong bearer token"}},
    )
    async def prometheus(request: Request) -> Response:
        refusal = metrics_gate.refusal(request.headers.get("authorization"))
        if refusal is not None:
            return refusal
        node = exchange.node
        metrics.commands.set(node.commands_committed)
        metrics.batches.set(node.batches_committed)
        metrics.fsync.set(node.writer.fsync_seconds_total if node.writer else 0)
        metrics.last_seq.set(exchange.last_seq)
        metrics.ws.set(len(hub.connections))
        metrics.ws_messages.set(hub.messages_sent)
        metrics.halted.set(1 if node.failed is not None or exchange.read(lambda engine: engine.halted) is not None else 0)
        from ..risk.halts import metrics_samples

        metrics.halts.clear()
        for labels, value in exchange.read(metrics_samples):
            metrics.halts.labels(**labels).set(value)
        if custody is not None:
            status = custody.status()
            for name, w in status["workers"].items():
                custody_gauges[0].labels(name).set(1 if w["state"] == "running" else 0)
                custody_gauges[1].labels(name).set(w["restarts"])
            for chain, height in status["chains"].items():
                custody_gauges[2].labels(chain).set(height)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # ------------------------------------------------------------------ native API

    @app.get("/v1/markets", tags=["native"], summary="Markets with their segment, status, band and reference price")
    async def v1_markets() -> list[dict[str, Any]]:
        out = []
        for m in exchange.markets():
            out.append(
                {
                    "symbol": m.symbol,
                    "base": m.base,
                    "quote": m.quote,
                    "segment": m.segment,
                    "status": m.status,
                    "tick_size": format_amount(m.tick, m.quote_decimals),
                    "lot_size": format_amount(m.lot, m.base_decimals),
                    "min_notional": format_amount(m.min_notional, m.quote_decimals),
                    "band_ppm": m.band_ppm,
                    "reference_price": format_amount(m.ref_price, m.quote_decimals),
                }
            )
        return out

    @app.get("/v1/book", tags=["native"], summary="The engine's own order book (L2), not the read model: for auditors and tests", responses=ERROR_RESPONSES)
    async def v1_book(symbol: str, limit: str = "100") -> JSONResponse:
        from ..trading.state import trading_state
        from .binance_errors import BinanceError
        from .gateway import Params

        if not exchange.has_market(symbol):
            return JSONResponse({"code": -1121, "msg": "Invalid symbol."}, status_code=400)
        try:  # the edge's one integer parser: ASCII digits only (pydantic's int takes "1_0", " 5")
            depth = Params([("limit", limit)]).integer("limit", low=1, high=5000)
        except BinanceError as err:
            return JSONResponse(err.body(), status_code=err.status)
        m = exchange.market(symbol)
        # the book and its sequence number from the same moment (markets are never delisted)
        last_seq, (bids, asks) = exchange.read(lambda engine: (engine.last_seq, trading_state(engine).markets[symbol].depth(depth)))
        return JSONResponse(
            {
                "symbol": symbol,
                "last_seq": last_seq,
                "bids": [[format_amount(p, m.quote_decimals), format_amount(q, m.base_decimals)] for p, q in bids],
                "asks": [[format_amount(p, m.quote_decimals), format_amount(q, m.base_decimals)] for p, q in asks],
            }
        )

    @app.get("/v1/halts", tags=["native"], summary="Active graded halts with their scope, level, reason and evidence")
    async def v1_halts() -> list[dict[str, Any]]:
        from ..risk.halts import active_halts

        return exchange.read(active_halts)

    @app.get("/v1/reconcile", tags=["native"], summary="The continuous reconciler: last run, mismatches, errors")
    async def v1_reconcile() -> dict[str, Any]:
        reconciler, last = reconciler_state["reconciler"], reconciler_state["last"]
        chain = custody.status().get("chain_reconciliation") if custody is not None else None  # custody: per block
        if reconciler is None:
            return {"running": False, "chain": chain}
        out: dict[str, Any] = {"running": True, "every_ms": reconcile_every_ms, "errors": list(reconciler.errors[-10:]),
                               "chain": chain}
        if last is not None:
            out["last_run"] = {
                "seq": last.seq,
                "accounts_checked": last.accounts_checked,
                "duration_ms": last.duration_ms,
                "mismatches": [m.evidence() for m in last.mismatches],
                "halts_submitted": list(last.halts_submitted),
                "notes": list(last.notes),
            }
        return out

    @app.get("/v1/segments", tags=["native"], summary="Risk segments and their shield (insurance) fund balances")
    async def v1_segments() -> list[dict[str, Any]]:
        from ..derivatives.risk_view import insurance_funds

        return exchange.read(insurance_funds)  # type: ignore[no-any-return]

    from ..derivatives.risk_view import CachedRiskView

    risk_cache = CachedRiskView(exchange)

    @app.get("/v1/risk", tags=["native"], summary="Risk: insurance fund per segment; per perpetual mark, index, open interest, "
             "funding; the positions nearest to liquidation (without owners)")
    async def v1_risk() -> dict[str, Any]:
        return risk_cache.get()

    @app.get("/v1/account", tags=["native"], summary="Balances per segment (signed like /api/v3/account)", responses=ERROR_RESPONSES)
    async def v1_account(owner: str = Depends(gate.caller("read", weight=20))) -> JSONResponse:
        rows = [
            {"segment": segment, "asset": code, "free": format_amount(free, d), "locked": format_amount(locked, d)}
            for segment, code, d, free, locked in exchange.segment_balances(owner)
        ]
        return JSONResponse({"account": owner, "balances": rows})

    # ------------------------------------------------------------------ web

    static_dir = Path(str(resources.files("ringfence.web") / "dashboard"))

    @app.get("/", include_in_schema=False)
    async def dashboard(request: Request) -> Response:
        from ..web.pages import render_page  # in the visitor's language (docs/i18n.md)

        return HTMLResponse(await render_page(request, "index.html"), headers=_page_headers(request))

    @app.get("/dashboard/{name}", include_in_schema=False)
    async def dashboard_asset(request: Request, name: str) -> Response:
        if name not in ("app.js", "i18n.js", "style.css", "risk.js"):
            return JSONResponse({"code": -1000, "msg": "not found"}, status_code=404)
        return FileResponse(static_dir / name, headers=_page_headers(request))

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon(request: Request) -> Response:
        """The exchange's icon (an SVG, which browsers take at this address too)."""
        return FileResponse(static_dir / "favicon.svg", media_type="image/svg+xml", headers=_page_headers(request))

    @app.get("/risk", include_in_schema=False)
    async def risk_page(request: Request) -> Response:
        """Insurance funds, open interest, funding and the positions nearest liquidation (/v1/risk)."""
        from ..web.pages import render_page  # in the visitor's language, with the selector (docs/i18n.md)

        return HTMLResponse(await render_page(request, "risk.html"), headers=_page_headers(request))

    vendor_dir = Path(str(resources.files("ringfence.web") / "static" / "vendor"))
    vendored = {"lightweight-charts.js": ("lightweight-charts.standalone.production.js", "application/javascript"),
                "LICENSE.lightweight-charts": ("LICENSE.lightweight-charts", "text/plain")}

    @app.get("/dashboard/vendor/{name}", include_in_schema=False)
    async def dashboard_vendor(request: Request, name: str) -> Response:
        """Third-party files shipped in the package (web/static/vendor/README.md): no CDN at run time."""
        if name not in vendored:
            return JSONResponse({"code": -1000, "msg": "not found"}, status_code=404)
        file, media = vendored[name]
        return FileResponse(vendor_dir / file, media_type=media, headers=_page_headers(request))

    # outermost first: HotRoutes (answers its routes itself, with the checks of the layers below), then
    # the security headers, the body limit, the api_call recorder (with monitoring), the refusal of
    # writes on a stopped node, FastAPI
    refuse = RefuseWritesWhenStopped(app, exchange)
    inner: Any = refuse
    recorder = None
    if monitor is not None:
        from ..monitoring.stream import ApiCallRecorder

        inner = recorder = ApiCallRecorder(refuse, monitor.outbox)
    stack = SecurityHeaders(BodyLimit(inner, max_body_bytes))
    return HotRoutes(stack, app, metrics, max_body_bytes=max_body_bytes, refuse=refuse, recorder=recorder)  # type: ignore[return-value]


def _page_headers(request: Request) -> dict[str, str]:
    return {
        "Content-Security-Policy": dashboard_csp(request.headers.get("host"), request.url.scheme == "https"),
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }
