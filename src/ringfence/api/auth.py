"""The API gate: who is calling, may they, and how much have they asked for.

* Parameters are parsed once per request (query string plus form body) and cached.
* Signed requests: `X-MBX-APIKEY`, timestamp within `recvWindow`, signature checked by the identity
  service (HMAC keys are stored encrypted, Ed25519 keys as public keys only; IP allow-lists,
  scopes, expiry and revocation are checked on every request against a verified-key cache that
  any revocation, scope, allow-list or freeze commit empties first, so a revoked key fails on its
  very next request; identity/key_cache.py), then (key id, hash of the signed bytes) is remembered so the request cannot run
  twice, whatever spelling of the signature a replay uses.
* Behind `serve --gateways N` a gateway that was taught the key checks the signature itself and
  says so in the relayed scope; the engine then runs everything but the signature (admission on
  its own cached key, timestamp, replay guard, weights), and believes the gateway only at its
  current key generation (api/relay.py, `VerifiedKeyCache.admit_checked`).
* An unknown key is answered 401 -2015, a signature that does not verify 400 -1022; the identity
  service does the same work for both.
* `caller(scope, weight)` is the one FastAPI dependency for signed endpoints outside the Binance
  router (`/v1/account`, `/v1/por/proof`): it charges the weight, authenticates, and raises
  `BinanceError`, which the app renders in Binance's shape.
* Request weight is charged per client IP and per API key (429 with `Retry-After`, then a
  temporary 418 ban for clients that keep going).
* User data stream listen keys: random, bound to one account and to the credential that made it (an
  API key from a client IP, or a web session), valid 60 minutes after the last keep-alive or until
  that credential stops working (api/access.py).
"""

from __future__ import annotations

import secrets
import threading
import time
from typing import Any, Awaitable, Callable, Protocol

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from ..errors import RingfenceError
from ..identity.api_keys import ApiPrincipal
from ..store.data_version import CommitCounter
from .access import AccessWatch, Source
from .binance_errors import BinanceError, bad_key, from_ringfence
from .gateway import Params, RateLimiter, ReplayGuard, check_timestamp, split_signature

__all__ = ["ApiGate", "Authenticator", "ListenKeys", "IdentityAuthenticator"]

FORM = "application/x-www-form-urlencoded"


class Authenticator(Protocol):
    def verify(self, api_key: str, payload: bytes, signature: str, client_ip: str, scope: str) -> ApiPrincipal: ...

    def owner_of(self, api_key: str, client_ip: str, scope: str) -> str: ...


class IdentityAuthenticator:
    """Authenticates against the identity service's API keys (SQLite or PostgreSQL), through the
    verified-key cache (identity/key_cache.py): SQL is read on a miss only, and any commit that
    could withdraw a key's access empties the cache before the next request is checked."""

    def __init__(self, ctx: Any, *, cache: bool = True) -> None:
        self.ctx = ctx
        self._versions: CommitCounter | None = None  # made on first use (change_version)
        self._versions_made = threading.Lock()
        self.cache = None
        if cache:
            from ..identity.key_cache import VerifiedKeyCache

            self.cache = VerifiedKeyCache(ctx)
            self.cache.start()

    def verify_cached(self, api_key: str, payload: bytes, signature: str, client_ip: str, scope: str) -> ApiPrincipal | None:
        """The answer without I/O (fit for the event loop), or None: call `verify` in a thread."""
        return self.cache.verify_cached(api_key, payload, signature, client_ip, scope) if self.cache is not None else None

    def verify(self, api_key: str, payload: bytes, signature: str, client_ip: str, scope: str) -> ApiPrincipal:
        if self.cache is not None:
            return self.cache.verify(api_key, payload, signature, client_ip, scope)
        from ..identity.api_keys import verify_api_request

        return verify_api_request(self.ctx, api_key, payload, signature, client_ip, scope)

    # gateways (api/relay.py): what they are taught, and the engine's check of their claims

    def key_generation(self) -> list[int] | None:
        return self.cache.generation() if self.cache is not None else None

    def key_material(self, api_key: str) -> list[object] | None:
        return self.cache.material(api_key) if self.cache is not None else None

    def admit_checked(self, api_key: str, client_ip: str, scope: str, generation: object) -> ApiPrincipal | None:
        return self.cache.admit_checked(api_key, client_ip, scope, generation) if self.cache is not None else None

    def owner_of_now(self, api_key: str, client_ip: str, scope: str) -> str:
        """`owner_of` after reading the key generation now: a change committed by another process a
        moment ago is seen even before the cache's watcher polls."""
        if self.cache is not None:
            self.cache.sync()
        return self.owner_of(api_key, client_ip, scope)

    def owner_of(self, api_key: str, client_ip: str, scope: str) -> str:
        if self.cache is not None:
            return self.cache.principal(api_key, client_ip, scope).account_id
        from ..identity.api_keys import principal_for_key

        return principal_for_key(self.ctx, api_key, client_ip, scope).account_id

    def session_live(self, session_id: int, account_id: str) -> bool:
        """Whether web session `session_id` still signs `account_id` in (not revoked, not expired, the
        account not frozen): a listen key the dashboard made with it lives as long (api/access.py)."""
        from sqlalchemy import select

        from ..store.models import AuthSession, User

        now = self.ctx.now()
        with self.ctx.store.tx() as db:
            row = db.execute(select(AuthSession.revoked_at_s, AuthSession.expires_at_s, User.frozen, User.account_id)
                             .join(User, User.id == AuthSession.user_id).where(AuthSession.id == session_id)).first()
        return row is not None and row[0] is None and row[1] > now and not row[2] and row[3] == account_id

    def change_version(self) -> int | None:
        """A number that changes whenever any connection, of any process, commits to the identity
        database: SQLite's `PRAGMA data_version` read on a connection of our own (which itself never
        writes), followed to the file now at the database's path after a restore by rename, and never
        going back to a value returned before (store/data_version.py). None where there is no such
        counter (PostgreSQL, an in-memory database): callers then read the key row itself. While it
        is unchanged, no key, user or allow-list row has changed, so a key checked at that version is
        still what it was (the WebSocket API's logged-on sessions use this to skip the SQL
        transaction per order, api/ws_api.py)."""
        if self._versions is None:
            with self._versions_made:
                if self._versions is None:
                    self._versions = CommitCounter(self.ctx.store.engine.url)
        return self._versions.read()


class ListenKeys:
    """Listen keys of user data streams. A key is of one kind: `spot` (`/api/v3/userDataStream`,
    executionReport) or `futures` (`/fapi/v1/listenKey`, ORDER_TRADE_UPDATE / ACCOUNT_UPDATE); each
    stream publishes only to keys of its kind. As on Binance, an account has one futures key: asking
    for one again returns it, extended."""

    VALID_S = 3600
    MAX_PER_ACCOUNT = 10
    KINDS = ("spot", "futures")

    def __init__(self) -> None:
        #: key -> (owner, monotonic expiry, kind, the credential that made it: api/access.py `Source`)
        self._keys: dict[str, tuple[str, float, str, Source | None]] = {}  # float-ok: monotonic expiry time
        self._lock = threading.Lock()

    def create(self, owner: str, kind: str = "spot", source: Source | None = None) -> str:
        """A new key of `owner` (a futures one: the account's, extended), made with `source`."""
        assert kind in self.KINDS, kind
        with self._lock:
            self._purge()
            mine = [k for k, entry in self._keys.items() if entry[0] == owner]
            if kind == "futures":
                for k in mine:
                    if self._keys[k][2] == kind:
                        self._keys[k] = (owner, time.monotonic() + self.VALID_S, kind, source)
                        return k
            if len(mine) >= self.MAX_PER_ACCOUNT:
                del self._keys[mine[0]]
            key = secrets.token_urlsafe(45)[:60]
            self._keys[key] = (owner, time.monotonic() + self.VALID_S, kind, source)
            return key

    def sources(self) -> set[Source]:
        """The credentials live keys were made with."""
        with self._lock:
            return {entry[3] for entry in self._keys.values() if entry[3] is not None}

    def drop_sources(self, dead: set[Source]) -> set[str]:
        """Forget every key made with a credential in `dead`; returns them."""
        with self._lock:
            gone = {k for k, entry in self._keys.items() if entry[3] in dead}
            for key in gone:
                del self._keys[key]
            return gone

    def keepalive(self, key: str, owner: str) -> None:
        with self._lock:
            entry = self._keys.get(key)
            if entry is None or entry[0] != owner:
                raise BinanceError(-1125, "This listenKey does not exist.")
            self._keys[key] = (owner, time.monotonic() + self.VALID_S, entry[2], entry[3])

    def close(self, key: str, owner: str) -> None:
        with self._lock:
            entry = self._keys.get(key)
            if entry is None or entry[0] != owner:
                raise BinanceError(-1125, "This listenKey does not exist.")
            del self._keys[key]

    def futures_key(self, owner: str) -> str:
        """The owner's live futures key (PUT/DELETE /fapi/v1/listenKey name none), or -1125."""
        with self._lock:
            now = time.monotonic()
            for k, (o, exp, kd, _src) in self._keys.items():
                if o == owner and kd == "futures" and exp >= now:
                    return k
        raise BinanceError(-1125, "This listenKey does not exist.")

    def owner(self, key: str, kind: str | None = "spot") -> str | None:
        """Whose key this is (None: unknown, expired, or of another kind; `kind=None`: any kind)."""
        with self._lock:
            entry = self._keys.get(key)
            if entry is None or entry[1] < time.monotonic() or (kind is not None and entry[2] != kind):
                return None
            return entry[0]

    def _purge(self) -> None:
        now = time.monotonic()
        for key in [k for k, entry in self._keys.items() if entry[1] < now]:
            del self._keys[key]


def _state(request: Request) -> dict[str, Any]:
    """`request.state`'s own dict: a missing name is a dict miss, not Starlette's AttributeError
    (raising one per lookup was a visible share of a signed order's time)."""
    state: dict[str, Any] = request.scope.setdefault("state", {})
    return state


def _query(request: Request) -> str:
    """`request.url.query` without building the URL (Host parsing, urlsplit) for the usual query
    string; anything unusual (a '#', non-ASCII bytes) still goes through Starlette's own parse.
    (`raw.find`, not `b"#" in raw`: bytes' `in` first tries its operand as an integer and raises and
    clears a TypeError every time.)"""
    raw: bytes = request.scope.get("query_string", b"")
    if raw.find(b"#") >= 0 or not raw.isascii():
        return request.url.query
    return raw.decode("ascii")


def _header(request: Request, name: bytes) -> str | None:
    """`request.headers.get(name)` for a lower-case `name`: the first header of that name, its value
    decoded as Latin-1 (Starlette's rule), or None; without building Starlette's `Headers` (twice per
    signed request: the API key and the body's content type)."""
    for key, value in request.scope["headers"]:
        if key == name:
            return value.decode("latin-1")  # type: ignore[no-any-return]
    return None


class ApiGate:
    def __init__(self, authenticator: Authenticator, *, weight_per_min: int, key_weight_per_min: int, ban_after: int = 20, ban_s: int = 120) -> None:
        self.auth = authenticator
        self.weight_per_min = weight_per_min
        self.ip_limiter = RateLimiter(weight_per_min, ban_after=ban_after, ban_s=ban_s)
        self.key_limiter = RateLimiter(key_weight_per_min, ban_after=ban_after, ban_s=ban_s)
        self.replays = ReplayGuard()
        self.listen_keys = ListenKeys()
        #: ends listen keys, user data sockets and WebSocket API logons of credentials that stop working
        self.access = AccessWatch(authenticator)
        self.access.add(self.listen_keys.sources, self._drop_listen_keys)
        #: called with the listen keys dropped (the stream hub closes their sockets)
        self.on_listen_keys_dropped: list[Callable[[set[str]], None]] = []

    def _drop_listen_keys(self, dead: set[Source]) -> None:
        gone = self.listen_keys.drop_sources(dead)
        if gone:
            for closer in self.on_listen_keys_dropped:
                closer(gone)

    @staticmethod
    def key_source(request: Request) -> Source | None:
        """The credential `key_only` admitted for this request (what its listen key lives as long as)."""
        return _state(request).get("rf_key_source")

    @staticmethod
    def client_ip(request: Request) -> str:
        # `request.client.host` without building Starlette's Address each time (twice per signed order)
        client = request.scope.get("client")
        return client[0] if client else "127.0.0.1"

    async def charge(self, request: Request, weight: int) -> None:
        state = _state(request)
        state["rf_weight"] = state.get("rf_weight", 0) + weight  # monitoring: api_call events
        self.ip_limiter.charge("ip:" + self.client_ip(request), weight)

    async def body_text(self, request: Request) -> str:
        cached = _state(request).get("body_text")
        if cached is not None:
            return cached
        # `BodyLimit` (app.py) read the whole body before the app ran and left it in the scope: the
        # same bytes `request.body()` would get back from its replay, without the trip through it
        body = request.scope.get("ringfence.body")
        if not isinstance(body, bytes):
            body = await request.body()
        if body:
            ctype = (_header(request, b"content-type") or "").split(";")[0].strip().lower()
            if ctype != FORM:
                raise BinanceError(-1100, f"Content-Type must be {FORM} for a request body, not '{ctype[:60] or 'none'}'.", 415)
        try:
            text = body.decode("ascii")
        except UnicodeDecodeError:
            raise BinanceError(-1100, "Illegal characters found in the request body; send URL-encoded ASCII.") from None
        _state(request)["body_text"] = text
        return text

    async def params(self, request: Request) -> Params:
        cached = _state(request).get("params")
        if cached is not None:
            return cached
        body = await self.body_text(request)
        params = Params.parse(_query(request), body)
        _state(request)["params"] = params
        return params

    async def signed(self, request: Request, scope: str, *, weight: int = 0) -> tuple[Params, str]:
        state = _state(request)
        session = state.get("session_caller")
        if session is not None:
            # A web session already authenticated by api/session_trading.py (cookie, CSRF token,
            # Origin; it charged the endpoint's weight to the session): the same handler and
            # checks run, only the caller proof differs.
            if scope not in session.scopes:
                raise BinanceError(-1002, f"This session may not '{scope}': {session.why_not(scope)}", 403)
            state["rf_account"] = session.account_id  # monitoring: api_call events
            return await self.params(request), session.account_id
        api_key = _header(request, b"x-mbx-apikey")
        if not api_key:
            raise BinanceError(-2014, "API-key format invalid.", 401)
        body = await self.body_text(request)
        params = await self.params(request)
        payload, signature = split_signature(_query(request), body)
        if not signature:
            raise BinanceError(-1102, "Mandatory parameter 'signature' was not sent, was empty/null, or malformed.")
        now_ms = time.time_ns() // 1_000_000
        timestamp_ms = check_timestamp(params, now_ms)
        ip = self.client_ip(request)
        # Relayed by a gateway (api/relay.py): it may have checked the signature already, with the key
        # as it was at a generation; believed only if that is still the current one.
        claim = state.get("rf_gateway")
        try:
            principal: ApiPrincipal | None = None
            admit_checked = getattr(self.auth, "admit_checked", None)
            if claim is not None and admit_checked is not None and claim.claims(api_key, signature):
                principal = admit_checked(api_key, ip, scope, claim.generation)
                claim.accepted = principal is not None
            if principal is None:
                # A cached key is checked right here (microseconds, no I/O); a miss reads SQL in a thread.
                cached = getattr(self.auth, "verify_cached", None)
                principal = cached(api_key, payload, signature, ip, scope) if cached is not None else None
                if principal is None:
                    principal = await run_in_threadpool(self.auth.verify, api_key, payload, signature, ip, scope)
                if claim is not None:
                    claim.teach(api_key)  # verified here: the gateway can check this key's next requests
        except RingfenceError as err:
            raise from_ringfence(err) from None
        self.replays.check_and_remember(principal.key_id, payload, now_ms, timestamp_ms)
        state["rf_account"] = principal.account_id  # monitoring: api_call events
        if weight:
            self.key_limiter.charge("key:" + api_key, weight)
        return params, principal.account_id

    def caller(self, scope: str, *, weight: int) -> Callable[[Request], Awaitable[str]]:
        """A FastAPI dependency: the account of a signed request, or a `BinanceError`."""

        async def signed_caller(request: Request) -> str:
            await self.charge(request, weight)
            _, owner = await self.signed(request, scope)
            return owner

        return signed_caller

    async def key_only(self, request: Request) -> str:
        """The account of an API key alone (the listen key endpoints; settled first, so a listen key of
        a credential revoked a moment ago is gone before its keep-alive runs)."""
        api_key = request.headers.get("x-mbx-apikey")
        if not api_key:
            raise BinanceError(-2014, "API-key format invalid.", 401)
        await self.access.settle()
        ip = self.client_ip(request)
        try:
            owner: str = await run_in_threadpool(self.auth.owner_of, api_key, ip, "read")
        except Exception as err:  # every failure looks the same from outside
            from ..errors import RingfenceError

            if isinstance(err, RingfenceError):
                raise bad_key() from None
            raise
        _state(request)["rf_key_source"] = ("key", api_key, ip, owner)
        return owner
