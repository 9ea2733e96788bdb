"""Binance's WebSocket API for order entry, at `/ws-api/v3` (docs/api.md "WebSocket API").

One request per text frame, `{"id", "method", "params": {...}}`; one response per request,
`{"id", "status", "result" | "error": {"code", "msg"}, "rateLimits": [...]}`, as Binance's spot
WebSocket API. A market maker logs on once (`session.logon`, signed with an Ed25519 key) and then
places and cancels orders without signing each one; any client may instead sign every request
(`apiKey`, `timestamp`, `signature` among the params), which is what ccxt pro does.

Every method runs the REST endpoint's own code (api/binance.py): the same parameter table
(`ENDPOINT_PARAMS`: unknown parameters -1104, refused ones, empty values), the same validation and
engine command, the same answer and Binance error codes, the same request weight charged to the
same per-IP and per-key limiters as REST, the same `recvWindow` and replay checks. A logged-on
session's key is as good as a REST request's on every request (revocation, expiry, freeze, IP
allow-list, scope), so a revoked key stops the very next request here too: the key's row is read
again unless nothing has been committed to the identity database since the session last read it
(`IdentityAuthenticator.change_version`, SQLite's data_version; expiry is compared with the clock).

Signatures over params: every param except `signature`, sorted by name, `name=value` joined with
`&`; JSON strings as they are, numbers as written, booleans `true`/`false` (Binance's rule).

Requests are admitted in the order they arrive (parsed, charged, authenticated, validated, the
engine command built and queued), and answered when the engine has applied them, so one
connection can pipeline up to `MAX_IN_FLIGHT` orders; responses carry the request's `id`. A bad
frame gets an error naming what is wrong and changes nothing; a binary frame is closed with 1003,
an oversized one with 1009; a client that stops reading is closed with 1008 like the streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from starlette.concurrency import run_in_threadpool

from ..errors import RingfenceError
from ..identity.api_keys import ApiPrincipal
from ..solvency.pol_verifier import json_nesting_depth
from .binance import ENDPOINT_PARAMS, BinanceApi, EndpointParams, check_params
from .access import REVOKED_CLOSE, REVOKED_REASON, Source
from .binance_errors import BinanceError, from_ringfence, mandatory
from .gateway import Params, check_timestamp
from .ws import CLOSE_TIMEOUT_S, SLOW_CONSUMER, Connection, StreamHub

__all__ = ["build_ws_api_router", "signature_payload", "param_text", "WsApi", "METHODS"]

log = logging.getLogger("ringfence.api.ws_api")

PATH = "/ws-api/v3"
#: A request frame: at most this many characters, nested at most this deep (checked before parsing).
MAX_FRAME_CHARS = 8192
MAX_FRAME_DEPTH = 3
#: Requests of one connection admitted but not yet answered; past it the connection reads no more
#: frames until one is answered (TCP pushes back on the client).
MAX_IN_FLIGHT = 256
MAX_ID_CHARS = 64
#: Params that frame a request rather than being the endpoint's own.
FRAMING = ("apiKey", "signature", "returnRateLimits")


@dataclass(frozen=True)
class Method:
    spec: EndpointParams
    weight: int
    #: the API key scope it needs, or None for a public method
    scope: str | None
    #: "public": no key; "signed": a logged-on session or signed params; "session": logon only
    auth: str = "signed"


INTERNAL = BinanceError(-1000, "An unknown error occurred while processing the request.", 500)
_NONE = EndpointParams()
_SIGNED = EndpointParams(signed=True)
#: method -> what it reads and costs. Weights are the REST endpoints' (and Binance's).
METHODS: dict[str, Method] = {
    "ping": Method(ENDPOINT_PARAMS[("GET", "/ping")], 1, None, "public"),
    "time": Method(ENDPOINT_PARAMS[("GET", "/time")], 1, None, "public"),
    "session.logon": Method(_SIGNED, 2, None, "logon"),
    "session.status": Method(_NONE, 2, None, "public"),
    "session.logout": Method(_NONE, 2, None, "public"),
    "order.place": Method(ENDPOINT_PARAMS[("POST", "/order")], 1, "trade"),
    "order.test": Method(ENDPOINT_PARAMS[("POST", "/order/test")], 1, "trade"),
    "order.status": Method(ENDPOINT_PARAMS[("GET", "/order")], 4, "read"),
    "order.cancel": Method(ENDPOINT_PARAMS[("DELETE", "/order")], 1, "trade"),
    "openOrders.status": Method(ENDPOINT_PARAMS[("GET", "/openOrders")], 6, "read"),
    "openOrders.cancelAll": Method(ENDPOINT_PARAMS[("DELETE", "/openOrders")], 1, "trade"),
    "account.status": Method(ENDPOINT_PARAMS[("GET", "/account")], 20, "read"),
    "userDataStream.subscribe": Method(_NONE, 2, "read", "session"),
    "userDataStream.subscribe.signature": Method(_SIGNED, 2, "read"),
    "userDataStream.unsubscribe": Method(EndpointParams(("subscriptionId",)), 2, None, "public"),
}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def param_text(name: str, value: Any) -> str:
    """A JSON param value as the text it is signed and read as; objects and arrays are refused."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int)):  # floats arrive as their literal text (parse_float=str)
        return str(value)
    raise BinanceError(-1135, f"JSON sent for parameter '{name[:40]}' is not valid: send a string, a number or a boolean.")


def signature_payload(params: dict[str, str]) -> bytes:
    """What a client signs: every param but `signature`, sorted by name, `name=value` joined by `&`."""
    return "&".join(f"{k}={v}" for k, v in sorted(params.items()) if k != "signature").encode()


class Session:
    """One `/ws-api/v3` connection: its logon (if any), its user data subscription, its settings."""

    def __init__(self, conn: Connection, ip: str, return_rate_limits: bool) -> None:
        self.conn = conn
        self.ip = ip
        self.connected_ms = now_ms()
        self.api_key: str | None = None
        self.principal: ApiPrincipal | None = None
        self.authorized_ms: int | None = None
        #: the identity database's change version when the logged-on key was last checked
        self.checked_version: int | None = None
        self.return_rate_limits = return_rate_limits
        self.subscription_owner: str | None = None
        #: the credential the user data subscription was made with (api/access.py `Source`)
        self.subscription_source: Source | None = None
        self.next_subscription_id = 0
        self.in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)

    def logon_source(self) -> Source | None:
        if self.api_key is None or self.principal is None:
            return None
        return ("key", self.api_key, self.ip, self.principal.account_id)

    def sources(self) -> set[Source]:
        return {s for s in (self.logon_source(), self.subscription_source) if s is not None}

    def status(self) -> dict[str, Any]:
        return {
            "apiKey": self.api_key,
            "authorizedSince": self.authorized_ms,
            "connectedSince": self.connected_ms,
            "returnRateLimits": self.return_rate_limits,
            "serverTime": now_ms(),
            "userDataStream": self.subscription_owner is not None,
        }


class WsApi:
    def __init__(self, api: BinanceApi, hub: StreamHub) -> None:
        self.api = api
        self.gate = api.gate
        self.hub = hub
        #: the open connections: one whose logon or subscription key stops working is closed (api/access.py)
        self.sessions: set[Session] = set()
        self.gate.access.add(self.sources, self.end_revoked)

    def sources(self) -> set[Source]:
        return {source for session in self.sessions for source in session.sources()}

    def end_revoked(self, dead: set[Source]) -> None:
        """Close every connection logged on or subscribed with a credential in `dead`: its user data
        subscription ends and its logon is forgotten at once, before the close frame goes out."""
        for session in list(self.sessions):
            if session.sources() & dead:
                if session.subscription_owner is not None:
                    self._unsubscribe(session)
                session.api_key = session.principal = session.authorized_ms = session.checked_version = None
                session.conn.end(REVOKED_CLOSE, REVOKED_REASON)

    # ------------------------------------------------------------------ frames

    @staticmethod
    def parse(message: str) -> tuple[Any, Any, Any]:
        """(id, method, params) of a request frame, or a BinanceError naming what is wrong."""
        if json_nesting_depth(message, MAX_FRAME_DEPTH) > MAX_FRAME_DEPTH:
            raise BinanceError(-1135, f"Invalid JSON Request: nested deeper than {MAX_FRAME_DEPTH} levels.")
        try:
            request = json.loads(message, parse_float=str, parse_constant=_reject_constant)
        except ValueError:
            raise BinanceError(-1135, 'Invalid JSON Request: expected {"id": ..., "method": "...", "params": {...}}.') from None
        if not isinstance(request, dict):
            raise BinanceError(-1135, 'Invalid JSON Request: expected an object {"id": ..., "method": "...", "params": {...}}.')
        unknown = [k for k in request if k not in ("id", "method", "params")]
        if unknown:
            raise BinanceError(-1135, f"Invalid JSON Request: unknown field '{str(unknown[0])[:40]}'; a request has 'id', 'method' and 'params'.")
        return request.get("id"), request.get("method"), request.get("params", {})

    @staticmethod
    def valid_id(rid: Any) -> bool:
        if rid is None:
            return True
        if isinstance(rid, str):
            return 0 < len(rid) <= MAX_ID_CHARS
        return isinstance(rid, int) and not isinstance(rid, bool) and -(2**63) <= rid < 2**63

    def frame(self, rid: Any, status: int, *, result: Any = None, error: BinanceError | None = None,
              weight_used: int | None = None, rate_limits: bool = True) -> str:
        out: dict[str, Any] = {"id": rid, "status": status}
        if error is not None:
            body: dict[str, Any] = error.body()
            retry = error.headers.get("Retry-After")
            if retry is not None:
                body["data"] = {"serverTime": now_ms(), "retryAfter": now_ms() + int(retry) * 1000}
            out["error"] = body
        else:
            out["result"] = result
        if rate_limits and weight_used is not None:
            out["rateLimits"] = [
                {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": self.gate.weight_per_min, "count": weight_used}
            ]
        return json.dumps(out, separators=(",", ":"))

    # ------------------------------------------------------------------ one request

    async def admit(self, session: Session, message: str) -> str | Awaitable[str]:
        """Everything up to the engine, in arrival order: the reply, or an awaitable of it."""
        rid: Any = None
        rate_limits = session.return_rate_limits
        used: int | None = None
        try:
            rid, method_name, raw = self.parse(message)
            if not self.valid_id(rid):
                bad_id, rid = rid, None
                raise BinanceError(-1135, f"Invalid JSON Request: 'id' must be an integer, a string of 1-{MAX_ID_CHARS} characters or null, not {json.dumps(bad_id)[:40]}.")
            if not isinstance(method_name, str) or not method_name:
                raise mandatory("method")
            method = METHODS.get(method_name)
            if method is None:
                raise BinanceError(-1020, f"This operation is not supported: unknown method '{method_name[:60]}'. Methods: {', '.join(METHODS)}.")
            if not isinstance(raw, dict):
                raise BinanceError(-1135, "Invalid 'params' in JSON request; expected an object.")
            texts = {str(k): param_text(str(k), v) for k, v in raw.items()}
            if "returnRateLimits" in texts:
                choice = texts["returnRateLimits"]
                if choice not in ("true", "false"):
                    raise BinanceError(-1100, "Illegal characters found in parameter 'returnRateLimits'; legal values are true and false.")
                rate_limits = choice == "true"
            # the IP's request weight, shared with REST, before anything else is read
            used = self.gate.ip_limiter.charge("ip:" + session.ip, method.weight)
            params = Params((k, v) for k, v in texts.items() if k not in FRAMING)
            check_params(method.spec, params)
            owner = await self.authenticate(session, method_name, method, texts, params)
            outcome = self.dispatch(session, method_name, params, owner)
        except BinanceError as err:
            return self.frame(rid, err.status, error=err, weight_used=used, rate_limits=rate_limits)
        except RingfenceError as err:
            mapped = from_ringfence(err)
            return self.frame(rid, mapped.status, error=mapped, weight_used=used, rate_limits=rate_limits)
        except Exception:  # a bug, never a client's doing: answer it and keep the connection
            log.exception("ws_api.request_failed")
            return self.frame(rid, 500, error=INTERNAL, weight_used=used, rate_limits=rate_limits)
        if not asyncio.iscoroutine(outcome):
            return self.frame(rid, 200, result=outcome, weight_used=used, rate_limits=rate_limits)

        async def finish(pending: Any = outcome) -> str:
            try:
                result = await pending
            except BinanceError as err:
                return self.frame(rid, err.status, error=err, weight_used=used, rate_limits=rate_limits)
            except RingfenceError as err:
                mapped = from_ringfence(err)
                return self.frame(rid, mapped.status, error=mapped, weight_used=used, rate_limits=rate_limits)
            except Exception:  # a fault of ours: logged, this request answered 500, the connection lives on
                log.exception("ws_api.request_failed")
                return self.frame(rid, 500, error=INTERNAL, weight_used=used, rate_limits=rate_limits)
            return self.frame(rid, 200, result=result, weight_used=used, rate_limits=rate_limits)

        return finish()

    async def authenticate(self, session: Session, name: str, method: Method, texts: dict[str, str], params: Params) -> str | None:
        """The account the request acts for (None for public methods), or a BinanceError."""
        if method.auth == "public":
            return None
        signed = "signature" in texts or "apiKey" in texts or method.auth == "logon"
        if method.auth == "session" and session.principal is None:
            raise BinanceError(-1002, f"You are not authorized to execute this request: '{name}' needs a session logged on with session.logon "
                                      "(or use userDataStream.subscribe.signature with signed params).", 401)
        if signed:
            version = self.change_version() if method.auth == "logon" else None
            principal = await self.verify_signed(session, texts, params, method.scope or "read")
            if method.auth == "logon":
                if principal.kind != "ed25519":
                    raise BinanceError(-2015, "Invalid API-key, IP, or permissions for action: session.logon accepts Ed25519 API keys only; "
                                              "sign each request with this key instead (apiKey, timestamp, signature in params).", 401)
                if session.subscription_owner not in (None, principal.account_id):
                    self._unsubscribe(session)  # another account logs on: the previous one's events stop here
                session.api_key, session.principal, session.authorized_ms = texts["apiKey"], principal, now_ms()
                session.checked_version = version
            elif name == "userDataStream.subscribe.signature" and session.subscription_owner is None:
                session.subscription_source = ("key", texts["apiKey"], session.ip, principal.account_id)
            self.gate.key_limiter.charge("key:" + texts["apiKey"], method.weight)
            return principal.account_id
        if session.principal is None or session.api_key is None:
            raise mandatory("apiKey")
        # A logged-on session: no signature, but the request's own timestamp, and the key as it is
        # now (revoked, expired, frozen, IP allow-list, scope: the identity service's live row).
        if method.spec.signed:
            check_timestamp(params, now_ms())
        scope = method.scope or "read"
        version = self.change_version()
        principal = session.principal
        if (version is not None and version == session.checked_version and scope in principal.scopes
                and (principal.expires_at_s is None or time.time_ns() // 1_000_000_000 < principal.expires_at_s)):
            # Nothing committed to the identity database since this key was last checked: its row,
            # its user and its allow-list are as they were, so the check would answer the same.
            owner = principal.account_id
        else:
            try:
                check = getattr(self.gate.auth, "owner_of_now", self.gate.auth.owner_of)  # the database changed: no cached answer
                owner = await run_in_threadpool(check, session.api_key, session.ip, scope)
            except RingfenceError as err:
                raise from_ringfence(err) from None
            session.checked_version = version  # read before the check: a commit during it forces another
        self.gate.key_limiter.charge("key:" + session.api_key, method.weight)
        return owner

    def change_version(self) -> int | None:
        probe = getattr(self.gate.auth, "change_version", None)
        return probe() if probe is not None else None

    async def verify_signed(self, session: Session, texts: dict[str, str], params: Params, scope: str) -> ApiPrincipal:
        api_key = texts.get("apiKey")
        if not api_key:
            raise mandatory("apiKey")
        signature = texts.get("signature")
        if not signature:
            raise mandatory("signature")
        now = now_ms()
        check_timestamp(params, now)
        payload = signature_payload(texts)
        try:
            principal: ApiPrincipal = await run_in_threadpool(self.gate.auth.verify, api_key, payload, signature, session.ip, scope)
        except RingfenceError as err:
            raise from_ringfence(err) from None
        self.gate.replays.check_and_remember(principal.key_id, payload, now, params.integer("timestamp"))
        return principal

    def dispatch(self, session: Session, name: str, params: Params, owner: str | None) -> Any:
        """Run the method: a result now, or a coroutine that submits the engine command."""
        api = self.api
        if name == "ping":
            return {}
        if name == "time":
            return {"serverTime": now_ms()}
        if name in ("session.logon", "session.status"):
            return session.status()
        if name == "session.logout":
            if session.subscription_owner is not None and session.principal is not None:
                self._unsubscribe(session)
            session.api_key = session.principal = session.authorized_ms = session.checked_version = None
            return session.status()
        if name == "userDataStream.unsubscribe":
            wanted = params.integer("subscriptionId") if params.get("subscriptionId") is not None else None
            if session.subscription_owner is None or (wanted is not None and wanted != session.conn.subscription_id):
                raise BinanceError(-2035, "User Data Stream subscription not active.")
            self._unsubscribe(session)
            return {}
        assert owner is not None, name
        if name == "order.place":
            m, command, resp_type = api.place_command(params, owner)
            return api.submit_order(m, command, resp_type)
        if name == "order.test":
            return api.check_test_order(params, owner)
        if name == "order.status":
            return api.order_status(params, owner)
        if name == "order.cancel":
            return api.submit_cancel(*api.cancel_command(params, owner))
        if name == "openOrders.status":
            return api.open_orders_of(params, owner)
        if name == "openOrders.cancelAll":
            return api.submit_cancel_all(*api.cancel_all_command(params, owner))
        if name == "account.status":
            return api.account_view(params, owner)
        if name in ("userDataStream.subscribe", "userDataStream.subscribe.signature"):
            if session.subscription_owner is not None:
                if session.subscription_owner != owner:
                    raise BinanceError(-1002, "You are not authorized to execute this request: this connection already receives another account's "
                                              "user data stream; unsubscribe first.", 401)
                assert session.conn.subscription_id is not None
                return {"subscriptionId": session.conn.subscription_id}
            subscription_id = session.next_subscription_id
            session.next_subscription_id += 1
            self.hub.subscribe_user(session.conn, owner, subscription_id)
            session.subscription_owner = owner
            if name == "userDataStream.subscribe":
                session.subscription_source = session.logon_source()
            return {"subscriptionId": subscription_id}
        raise BinanceError(-1020, f"This operation is not supported: '{name}'.")  # not reached: METHODS lists what runs

    def _unsubscribe(self, session: Session) -> None:
        self.hub.unsubscribe_user(session.conn)
        session.subscription_owner = session.subscription_source = None


def build_ws_api_router(api: BinanceApi, hub: StreamHub) -> APIRouter:
    router = APIRouter()
    wsapi = WsApi(api, hub)

    async def close(ws: WebSocket, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(code=code, reason=reason), CLOSE_TIMEOUT_S)

    async def answer_later(session: Session, pending: Awaitable[str]) -> None:
        try:
            text = await pending  # finish() answers every outcome, errors included
        finally:
            session.in_flight.release()
        session.conn.offer(text)

    async def read_requests(ws: WebSocket, session: Session, tasks: set[asyncio.Task[None]]) -> tuple[int, str] | None:
        while True:
            frame = await ws.receive()
            if frame["type"] == "websocket.disconnect":
                return None
            message = frame.get("text")
            if message is None:
                return 1003, "send requests as JSON text frames"
            if len(message) > MAX_FRAME_CHARS:
                return 1009, f"requests are at most {MAX_FRAME_CHARS} characters"
            await session.in_flight.acquire()
            outcome = await wsapi.admit(session, message)
            if isinstance(outcome, str):
                session.in_flight.release()
                if not session.conn.offer(outcome):
                    return SLOW_CONSUMER
            else:
                task = asyncio.create_task(answer_later(session, outcome))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

    async def send_queued(ws: WebSocket, conn: Connection) -> None:
        while True:
            await ws.send_text(await conn.next())

    @router.websocket(PATH)
    async def ws_api(ws: WebSocket) -> None:
        ip = ws.client.host if ws.client else ""
        conn = Connection(ws, False, ip)
        refusal = hub.admit(conn)
        if refusal is not None:
            with contextlib.suppress(Exception):
                await ws.accept()
                await close(ws, 1013, refusal)
            return
        return_limits = ws.query_params.get("returnRateLimits", "true") != "false"
        session = Session(conn, ip, return_limits)
        wsapi.sessions.add(session)
        pending: set[asyncio.Task[None]] = set()
        tasks: list[asyncio.Task[Any]] = []
        try:
            await ws.accept()
            reader = asyncio.create_task(read_requests(ws, session, pending))
            sender = asyncio.create_task(send_queued(ws, conn))
            slow = asyncio.create_task(conn.slow.wait())
            tasks = [reader, sender, slow]
            for task in tasks:
                task.add_done_callback(lambda t: t.cancelled() or t.exception())
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if conn.close_reason is not None:
                reason: tuple[int, str] | None = conn.close_reason
            elif conn.dropped:
                reason = SLOW_CONSUMER
            elif reader.done() and not reader.cancelled() and reader.exception() is None:
                reason = reader.result()
            else:
                reason = None
            for task in tasks:
                task.cancel()
            hub.drop(conn)
            if reason is not None:
                await close(ws, *reason)
        except WebSocketDisconnect:
            pass
        finally:
            for task in tasks:
                task.cancel()
            # Orders already handed to the engine complete there; their answers have nowhere to go.
            hub.drop(conn)
            wsapi.sessions.discard(session)

    return router

