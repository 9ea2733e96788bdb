"""Trading from a signed-in web session: the dashboard's endpoints under `/session/v3`.

The dashboard never holds an API secret. After signing in on the web (password and TOTP or a
passkey), the browser sends the `__Host-rf_session` cookie (HttpOnly, Secure, SameSite=Strict),
and this router runs the *same* handlers as `/api/v3` (`BinanceApi`): the same parameter table
(`ENDPOINT_PARAMS`, less the signature parameters, which are refused here), the same filters,
the same `PlaceOrder` / `CancelOrder` command path into the engine, the same answers. Only the
proof of who is calling differs, and it is checked here before any handler runs:

* the session cookie resolves to a live, fully signed-in session (`identity.sessions`);
* every request that changes state carries `X-CSRF-Token`, the synchronizer token bound to the
  session (HMAC of its digest, compared in constant time), which a page of another site cannot
  read (it comes from `GET /session/v3/me`, a same-origin JSON answer);
* every request that changes state carries an `Origin` equal to the exchange's own
  (RINGFENCE_IDENTITY_ORIGIN); a request with a foreign `Origin` or `Sec-Fetch-Site: cross-site` is
  refused whatever its method;
* the session's scopes: `read` for every signed-in session; `trade` only for a session that
  passed a second factor (TOTP or passkey) that counts — a first factor counts only once confirmed
  from the account's e-mail, so a stolen password alone cannot trade even by enrolling one. Withdrawals,
  API keys and credential changes stay in the security centre behind a fresh step-up;
* request weight per client IP (as `/api/v3`) and, the endpoint's full weight, per session (the
  per-key limit, RINGFENCE_API_KEY_WEIGHT_PER_MIN): 429 with Retry-After, then a 418 ban.

A refused request changes nothing and answers `{"code": -1002, "msg": ...}` (401 or 403). API keys
stay for programs; these endpoints accept no API key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from ..errors import RingfenceError
from ..identity import sessions
from ..identity.context import IdentityContext
from .binance import ENDPOINT_PARAMS, BinanceApi, check_params
from .binance_errors import BinanceError, from_ringfence

__all__ = ["build_session_router", "install_session_trading", "SessionCaller", "PREFIX", "CSRF_HEADER"]

PREFIX = "/session/v3"
CSRF_HEADER = "x-csrf-token"
STATE_CHANGING = ("POST", "PUT", "DELETE", "PATCH")
NO_STORE = {"Cache-Control": "no-store"}


@dataclass(frozen=True)
class SessionCaller:
    """Who a session request comes from; `ApiGate.signed` reads it from `request.state`."""

    session_id: int
    account_id: str
    email: str
    second_factor_enabled: bool
    scopes: tuple[str, ...]
    second_factor_pending: bool = False  # a first factor enrolled but not yet confirmed from the e-mail

    def why_not(self, scope: str) -> str:
        if scope == "trade" and self.second_factor_pending:
            return sessions.PENDING_FACTOR_MESSAGE + "."
        if scope == "trade" and not self.second_factor_enabled:
            return "turn on two-factor authentication (authenticator app or passkey) in the security centre, then sign in again."
        if scope == "trade":
            return "sign in again with your second factor."
        return "web sessions cannot do this; use the security centre or an API key."


def _refuse(status: int, msg: str) -> JSONResponse:
    return JSONResponse({"code": -1002, "msg": msg}, status_code=status, headers=NO_STORE)


class _Refused(Exception):
    def __init__(self, status: int, msg: str) -> None:
        super().__init__(msg)
        self.status = status
        self.msg = msg


def _check_origin(ctx: IdentityContext, request: Request) -> None:
    origin = request.headers.get("origin")
    expected = ctx.settings.identity_origin
    if request.headers.get("sec-fetch-site") == "cross-site":
        raise _Refused(403, "Cross-site request refused.")
    if origin is not None and origin != expected:
        raise _Refused(403, f"Cross-site request refused: Origin must be {expected}.")
    if request.method in STATE_CHANGING and origin is None:
        raise _Refused(403, "Cross-site request refused: a request that changes something must carry the Origin header.")


def _caller(ctx: IdentityContext, token: str | None, csrf: str | None, state_changing: bool) -> SessionCaller:
    """Resolve the session (and check the CSRF token); raises _Refused. Runs in a worker thread."""
    try:
        info = sessions.authenticate(ctx, token)
        if state_changing:
            sessions.verify_csrf(ctx, token, csrf)
    except RingfenceError as err:
        status = 401 if err.code in ("RF_UNAUTHORIZED", "RF_ACCOUNT_FROZEN") else 403
        raise _Refused(status, str(err)) from None
    can_trade = info.second_factor_enabled and info.second_factor_at_s is not None
    return SessionCaller(info.session_id, info.account_id, info.email, info.second_factor_enabled,
                         ("read", "trade") if can_trade else ("read",), info.second_factor_pending)


async def _authenticate(ctx: IdentityContext, request: Request) -> SessionCaller:
    _check_origin(ctx, request)
    token = request.cookies.get(sessions.SESSION_COOKIE_NAME)
    state_changing = request.method in STATE_CHANGING
    caller = await run_in_threadpool(_caller, ctx, token, request.headers.get(CSRF_HEADER), state_changing)
    request.state.session_caller = caller
    return caller


def build_session_router(api: BinanceApi, ctx: IdentityContext, *, demo_funds: Callable[[str], Awaitable[dict[str, Any]]] | None = None) -> APIRouter:
    router = APIRouter(prefix=PREFIX, tags=["web session"])

    def add(path: str, method: str, fn: Callable[[Request], Awaitable[Any]], weight: int) -> None:
        # The /api/v3 row for the same endpoint, without the signature parameters (refused here).
        spec = dataclasses.replace(ENDPOINT_PARAMS[(method, path)], signed=False)

        async def endpoint(request: Request) -> Response:
            try:
                await api.gate.charge(request, weight)
                caller = await _authenticate(ctx, request)
                api.gate.key_limiter.charge(f"session:{caller.session_id}", weight)
                check_params(spec, await api.gate.params(request))
                result = await fn(request)
            except _Refused as refused:
                return _refuse(refused.status, refused.msg)
            except BinanceError as err:
                return JSONResponse(err.body(), status_code=err.status, headers={**err.headers, **NO_STORE})
            except RingfenceError as err:
                mapped = from_ringfence(err)
                return JSONResponse(mapped.body(), status_code=mapped.status, headers={**mapped.headers, **NO_STORE})
            return JSONResponse(result, headers=NO_STORE)

        endpoint.__name__ = f"session_{method.lower()}_{path.strip('/').replace('/', '_')}"
        router.add_api_route(path, endpoint, methods=[method], response_model=None)

    add("/account", "GET", api.account, 20)
    add("/order", "POST", api.new_order, 1)
    add("/order", "DELETE", api.cancel_order, 1)
    add("/openOrders", "GET", api.open_orders, 6)
    add("/openOrders", "DELETE", api.cancel_all, 1)
    add("/allOrders", "GET", api.all_orders, 20)
    add("/myTrades", "GET", api.my_trades, 20)

    async def guarded(request: Request, weight: int, then: Callable[[SessionCaller], Awaitable[dict[str, Any]]]) -> Response:
        try:
            await api.gate.charge(request, weight)
            caller = await _authenticate(ctx, request)
            api.gate.key_limiter.charge(f"session:{caller.session_id}", weight)
            return JSONResponse(await then(caller), headers=NO_STORE)
        except _Refused as refused:
            return _refuse(refused.status, refused.msg)
        except BinanceError as err:
            return JSONResponse(err.body(), status_code=err.status, headers={**err.headers, **NO_STORE})
        except RingfenceError as err:
            mapped = from_ringfence(err)
            return JSONResponse(mapped.body(), status_code=mapped.status, headers={**mapped.headers, **NO_STORE})

    @router.get("/me")
    async def me(request: Request) -> Response:
        """Who is signed in, what the session may do, and the CSRF token for its state changes."""

        async def view(caller: SessionCaller) -> dict[str, Any]:
            from ..i18n import gettext_for, request_locale
            from ..identity.events import withdrawal_lock
            from ..identity.mail import event_label

            token = request.cookies.get(sessions.SESSION_COOKIE_NAME) or ""
            # the post-change withdrawal lock (a new address, API key, anti-phishing code, ...): the
            # wallet says so, and until when, before the user fills in a withdrawal
            locked_until_s, change = await run_in_threadpool(withdrawal_lock, ctx, caller.account_id)
            return {
                "email": caller.email,
                "account": caller.account_id,
                "scopes": list(caller.scopes),
                "secondFactor": caller.second_factor_enabled,
                "secondFactorPending": caller.second_factor_pending,
                "csrfToken": sessions.csrf_token_for(ctx, token),
                "demoFunds": demo_funds is not None,
                "withdrawalsLockedUntil": locked_until_s * 1000,  # ms, as Binance writes times; 0: not locked
                "withdrawalsLockedBy": event_label(change, gettext_for(request_locale(request))) if change else None,
            }

        return await guarded(request, 1, view)

    @router.post("/userDataStream")
    async def user_stream(request: Request) -> Response:
        """A listen key for the session's account (the `/ws/<listenKey>` user data stream)."""

        async def create(caller: SessionCaller) -> dict[str, Any]:
            return {"listenKey": api.gate.listen_keys.create(caller.account_id, source=("session", caller.session_id, caller.account_id))}

        return await guarded(request, 2, create)

    if demo_funds is not None:
        fund = demo_funds

        @router.post("/demoFunds")
        async def get_demo_funds(request: Request) -> Response:
            """Dev-mode demo only: fund the signed-in account once, as the demo funds alice and bob."""

            async def give(caller: SessionCaller) -> dict[str, Any]:
                return await fund(caller.account_id)

            return await guarded(request, 10, give)

    return router


def install_session_trading(app: Any, api: BinanceApi, exchange: Any, ctx: IdentityContext) -> None:
    """Mount `/session/v3` (kept out of the OpenAPI document: it is the dashboard's, not a program's,
    API). `serve --demo` in dev mode (`ctx.demo`) adds `POST /session/v3/demoFunds`."""
    funding: Callable[[str], Awaitable[dict[str, Any]]] | None = None
    if getattr(ctx, "demo", False) and ctx.settings.mode == "dev":
        from .demo import fund_web_user

        async def fund_demo_user(account_id: str) -> dict[str, Any]:
            return await fund_web_user(exchange, account_id)

        funding = fund_demo_user
    app.include_router(build_session_router(api, ctx, demo_funds=funding), include_in_schema=False)
