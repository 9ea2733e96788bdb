"""The admin API (`/admin/v1` on the server's listener): staff read the queues and submit signed decisions.

Every request is authenticated by the caller's Ed25519 signature over it (`staff/requests.py`):
an unknown or removed member, a bad signature, a stale timestamp or a replayed nonce is answered
401 and nothing is read or submitted. A request that submits a decision must also carry that
decision's own signature(s) — staff decision tokens `STAFF_ID:NONCE:EXPIRES_NS:SIGNATURE` — and
the caller must be one of the signers (the engine verifies those signatures again, against the
register, role, expiry and the nonces it has seen; the API verifies nothing the engine does not).

The console page (`/admin` and its assets) is served only to a staff session: an identity account
`staff:<id>` signed in with its second factor, for a member the register has active
(`identity/staff_logins.py`); without one `/admin` answers 303 to `/login`, with another session 403.
An API request that carries a session cookie (the page's) must come from that same member; the
console commands (`ringfence staff|halts|review ...`) sign with the member's key and send no cookie.

The admin API never writes the journal itself: it builds a command and submits it through the
exchange like any gateway. Errors are `{"code", "message", "field"}` with the error's HTTP status;
a refusal by a segregation-of-duties rule names the rule in its message.
"""

from __future__ import annotations

import asyncio
import json
from contextvars import ContextVar
from typing import Any, Callable

import msgspec
import structlog
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ..engine.core import CommandRejected
from ..engine.node import rejection_error
from ..errors import Conflict, Forbidden, NotFound, RingfenceError, ValidationError
from ..staff.decisions import StaffEntry, StaffSignature, parse_approval
from ..staff.requests import RequestVerifier
from .service import Exchange

__all__ = ["build_admin_router", "install_admin_pages", "PREFIX", "staff_view", "halts_view", "review_view", "policy_view",
           "index_admin_view", "markets_admin_view", "assets_admin_view", "list_market_command"]

#: The staff member whose signed request is being served (journaled as "staff:ID").
_CALLER: ContextVar[str] = ContextVar("ringfence_admin_caller", default="")

PREFIX = "/admin/v1"
MAX_BODY_BYTES = 65_536
log = structlog.get_logger("ringfence.admin")
#: POST /por/publish requests in flight at once (building one proof, or waiting for the one they joined):
#: each holds a worker thread of the event loop's default pool (the console's session checks use it too)
MAX_POR_REQUESTS = 4
MAX_QUEUE = 500


# ------------------------------------------------------------------------------- views (engine reads)


def staff_view(engine: Any) -> dict[str, Any]:
    from ..staff import staff_of

    s = staff_of(engine)
    return {"version": s.version, "quorum": s.quorum,
            "members": [s.members[k].as_dict() for k in sorted(s.members)]}


def halts_view(engine: Any) -> dict[str, Any]:
    from ..risk.halts import active_halts, halts_of

    lifted = [h.as_dict() for h in halts_of(engine).lifted[-20:]]
    return {"active": active_halts(engine), "recently_lifted": lifted[::-1]}


def _amount(engine: Any, asset: str, minor: int) -> str:
    """`minor` as the decimal string people read (the asset's decimals), e.g. 150000000 BTC -> "1.5"."""
    from ..money import format_amount

    if asset not in engine.ledger.assets:
        return str(minor)
    return format_amount(minor, engine.ledger.assets.get(asset).decimals, trim=True)


def _withdrawal_row(engine: Any, w: Any) -> dict[str, Any]:
    from ..custody.state import custody_state

    s = custody_state(engine)
    history = [x for x in s.withdrawals.values() if x.account_id == w.account_id and x.id != w.id][-10:]
    return {
        "withdrawal_id": w.id, "account_id": w.account_id, "asset": w.asset, "wallet": w.wallet,
        "address": w.address, "amount_minor": str(w.amount_minor), "amount": _amount(engine, w.asset, w.amount_minor), "state": w.state, "rule": w.rule,
        "decision_reasons": list(w.decision_reasons), "risk_score": w.risk_score, "risk_reasons": list(w.risk_reasons),
        "required_approvals": w.required_approvals, "approver_roles": list(w.approver_roles),
        "approvals": [{"staff_id": a.approver, "role": a.role, "at_ns": a.at_ns, "expires_ns": a.expires_ns,
                       "valid": a.expires_ns > engine.now_ns} for a in w.approvals],
        "created_ns": w.created_ns,
        "user_history": [{"withdrawal_id": x.id, "asset": x.asset, "amount_minor": str(x.amount_minor),
                          "amount": _amount(engine, x.asset, x.amount_minor), "state": x.state}
                         for x in history],
    }


def review_view(engine: Any) -> dict[str, Any]:
    from ..custody.state import custody_state

    s = custody_state(engine)
    waiting = [w for w in s.withdrawals.values() if w.state in ("awaiting_approvals", "manual_review")][:MAX_QUEUE]
    quarantined = [d for d in s.deposits.values() if d.state in ("quarantined", "frozen")][:MAX_QUEUE]
    return {
        "withdrawals": [_withdrawal_row(engine, w) for w in waiting],
        "deposits": [{"chain": d.chain, "txid": d.txid, "index": d.index, "key": d.key, "account_id": d.account_id,
                      "asset": d.asset, "amount_minor": str(d.amount_minor), "amount": _amount(engine, d.asset, d.amount_minor), "score": d.score, "reasons": list(d.reasons),
                      "declaration": d.declaration, "state": d.state, "sender": d.sender,
                      "return_by": list(d.return_by), "release_by": list(d.release_by)} for d in quarantined],
    }


def withdrawal_view(engine: Any, withdrawal_id: str) -> dict[str, Any]:
    from ..custody.state import custody_state

    w = custody_state(engine).withdrawals.get(withdrawal_id)
    if w is None:
        raise NotFound(f"no withdrawal {withdrawal_id!r}", field="withdrawal_id")
    return _withdrawal_row(engine, w)


def policy_view(engine: Any) -> dict[str, Any]:
    from ..custody.state import custody_state

    s = custody_state(engine)
    return {"active_policy": s.policy_text,
            "proposals": [{"proposal_id": p.id, "proposer": p.proposer, "state": p.state, "approvals": list(p.approvals),
                           "effective_ns": p.effective_ns, "policy": p.text} for p in s.proposals.values()]}


# ------------------------------------------------------------------------------- the router


_ERROR_BODY = {"content": {"application/json": {"schema": {"type": "object", "required": ["code", "message"], "properties": {
    "code": {"type": "string"}, "message": {"type": "string"}, "field": {"type": "string"}}}}}}
#: Every admin endpoint answers errors as `{"code", "message", "field"}` with the error's status.
_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"description": what, **_ERROR_BODY} for status, what in (
        (400, "invalid request or decision token"), (401, "not a correctly signed, fresh request of an active staff member"),
        (403, "refused by a segregation-of-duties rule (named) or not the decision's signer"), (404, "not found"),
        (409, "the state does not allow it"), (429, "the engine queue is full"), (500, "the node could not make it durable"),
        (503, "halted"))
}


def _error(err: RingfenceError) -> JSONResponse:
    return JSONResponse(err.to_dict(), status_code=err.http_status)


def _sig(body: dict[str, Any], name: str) -> StaffSignature:
    value = body.get(name)
    if not isinstance(value, str):
        raise ValidationError("a staff decision token STAFF_ID:NONCE:EXPIRES_NS:SIGNATURE is required", field=name)
    return parse_approval(value, name)


def _callers_decision(caller: str, body: dict[str, Any]) -> StaffSignature:
    """The body's `decision` token, which the request's own signer must have signed."""
    decision = _sig(body, "decision")
    _caller_signed(caller, [decision])
    return decision


def _callers_approvals(caller: str, body: dict[str, Any]) -> list[StaffSignature]:
    """The body's `approvals` tokens (a quorum decision), one of which the request's own signer
    must have signed: nobody submits a decision they are not part of."""
    approvals = _sigs(body)
    _caller_signed(caller, approvals)
    return approvals


def _sigs(body: dict[str, Any], name: str = "approvals") -> list[StaffSignature]:
    values = body.get(name)
    if not isinstance(values, list) or not 1 <= len(values) <= 32 or not all(isinstance(v, str) for v in values):
        raise ValidationError("a list of 1-32 staff decision tokens is required", field=name)
    return [parse_approval(v, f"{name}[{i}]") for i, v in enumerate(values)]


def _text(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise ValidationError("a non-empty string is required", field=name)
    return value


#: ConfigureIndex's fields with defaults (nanoseconds, ppm): optional in the request body.
_INDEX_OPTIONAL = ("clamp_ppm", "stale_after_ns", "max_ahead_ns", "ma_window_ns", "ma_sample_ns")


def _int(value: object, name: str) -> int:
    """A JSON integer, or a string of decimal digits (large minor-unit amounts from JavaScript)."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19:
        return int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValidationError("an integer (or a string of decimal digits) is required", field=name)
    return value


def index_admin_view(engine: Any) -> dict[str, Any]:
    from ..index.state import index_state

    st = index_state(engine)
    return {"version": st.version, "feed_keys": dict(sorted(st.feed_keys.items())), "symbols": sorted(st.symbols)}


#: ListMarket's integer fields (minor units, nanoseconds, ppm, counts): optional in a request body.
LIST_MARKET_INTS = ("tick_size", "lot_size", "min_qty", "max_qty", "min_notional", "band_ppm", "band_timeout_ns",
                    "market_slippage_ppm", "max_open_orders_per_account", "max_book_orders", "max_price_levels")


def _big_int(value: object, name: str) -> int:
    """Like `_int`, for limits up to 10**30 (`max_qty`): a digit string of up to 39 characters."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 39:
        return int(value)
    return _int(value, name)


def list_market_command(body: dict[str, Any]) -> Any:
    """The `ListMarket` a request body describes (the engine validates the values and names the field)."""
    from ..trading.commands import ListMarket

    market = body.get("market")
    if not isinstance(market, dict):
        raise ValidationError("market is {symbol, base, quote, segment, tick_size, lot_size, ...}", field="market")
    unknown = sorted(set(market) - {"symbol", "base", "quote", "segment", *LIST_MARKET_INTS})
    if unknown:
        raise ValidationError(f"unknown field(s) {', '.join(unknown)}", field=f"market.{unknown[0]}")
    ints = {k: _big_int(market[k], f"market.{k}") for k in LIST_MARKET_INTS if k in market}
    return ListMarket(_text(market, "symbol"), _text(market, "base"), _text(market, "quote"),
                      str(market.get("segment") or "spot"), **ints)


def markets_admin_view(engine: Any) -> dict[str, Any]:
    """What an operator needs to decide on markets and fees: every market's rules (minor units),
    status (halts included), reference price and open orders; the fee tiers, the accounts on a tier,
    and the change counter the next decision signs."""
    from ..risk.halts import market_status
    from ..trading.state import trading_state

    st = trading_state(engine)
    index = engine.components.get("index")
    indexed = set(getattr(index, "symbols", {}) or ())
    markets = []
    for symbol in sorted(st.markets):
        m = st.markets[symbol]
        markets.append({
            "symbol": symbol, "base": m.base, "quote": m.quote, "segment": m.segment,
            "kind": "perpetual" if m.contract is not None else "spot",
            "status": market_status(engine, symbol), "tick_size": str(m.tick), "lot_size": str(m.lot),
            "min_qty": str(m.min_qty), "max_qty": str(m.max_qty), "min_notional": str(m.min_notional),
            "band_ppm": m.band_ppm, "band_timeout_ns": m.band_timeout_ns, "market_slippage_ppm": m.slippage_ppm,
            "max_open_orders_per_account": m.max_open_per_account, "max_book_orders": m.max_book_orders,
            "max_price_levels": m.max_levels, "reference_price": str(m.ref_price), "indexed": symbol in indexed,
            "open_orders": len(m.orders),
        })
    ledger = engine.ledger
    return {"version": st.admin_version, "markets": markets,
            "assets": {a.code: a.decimals for a in list(ledger.assets)}, "segments": list(ledger.segments),
            "fee_tiers": [{"tier": t, "maker_rate_ppm": mk, "taker_rate_ppm": tk} for t, (mk, tk) in sorted(st.tiers.items())],
            "account_tiers": [{"account": o, "tier": t} for o, t in sorted(st.account_tier.items())][:MAX_QUEUE]}


def assets_admin_view(engine: Any) -> dict[str, Any]:
    """Every registered asset (code, decimals, class, chain) and the markets that trade it, with the trading
    change counter an asset registration signs (`RegisterAssetSigned`, the same counter as a listing)."""
    from ..trading.state import trading_state

    st = trading_state(engine)
    used: dict[str, list[str]] = {}
    for symbol in sorted(st.markets):
        m = st.markets[symbol]
        for code in (m.base, m.quote):
            used.setdefault(code, []).append(symbol)
    return {"version": st.admin_version, "segments": list(engine.ledger.segments),
            "assets": [{"code": a.code, "decimals": a.decimals, "asset_class": a.asset_class.value, "chain": a.chain or "",
                        "markets": used.get(a.code, [])} for a in list(engine.ledger.assets)]}


def _caller_signed(caller: str, sigs: list[StaffSignature]) -> None:
    if caller not in {s.staff_id for s in sigs}:
        raise Forbidden("the caller must be one of the decision's signers", field="X-RF-Staff")


def _active_staff(exchange: Exchange, staff_id: str) -> bool:
    def read(engine: Any) -> bool:
        from ..staff import staff_of

        m = staff_of(engine).members.get(staff_id)
        return m is not None and m.status == "active"

    return bool(exchange.read(read))


def session_staff(identity_ctx: Any, exchange: Exchange, request: Request) -> str:
    """The active staff member of the request's staff session (second factor passed), or refused."""
    from ..errors import Unauthorized
    from ..identity.sessions import SESSION_COOKIE_NAME
    from ..identity.staff_logins import staff_of_session

    token = request.cookies.get(SESSION_COOKIE_NAME)
    if identity_ctx is None:
        raise Forbidden("the staff console needs the identity service (staff sign in there)", field="session")
    if not token:
        raise Unauthorized("sign in first: the staff console needs a staff session", field="session")
    staff_id = staff_of_session(identity_ctx, token)
    if not _active_staff(exchange, staff_id):
        raise Forbidden(f"{staff_id} is not an active member of the staff register", field="session")
    return staff_id


def install_admin_pages(app: Any, identity_ctx: Any = None, exchange: Exchange | None = None) -> None:
    """The staff console page at /admin (static; it signs requests and decisions in the browser),
    served to a staff session only (module doc)."""
    from importlib import resources
    from pathlib import Path

    from fastapi.responses import FileResponse, RedirectResponse

    from ..errors import Unauthorized
    from .headers import dashboard_csp

    pages = Path(str(resources.files("ringfence.web") / "admin"))

    def headers(request: Request) -> dict[str, str]:
        return {"Content-Security-Policy": dashboard_csp(request.headers.get("host"), request.url.scheme == "https"),
                "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
                "Cache-Control": "no-store"}

    def gate(request: Request) -> Any:
        if exchange is None:
            return JSONResponse({"code": "RF_FORBIDDEN", "message": "the staff console is not served here"}, status_code=403)
        try:
            staff_id = session_staff(identity_ctx, exchange, request)
        except Unauthorized:
            return RedirectResponse("/login", status_code=303, headers=headers(request))
        except RingfenceError as err:
            return JSONResponse(err.to_dict(), status_code=err.http_status, headers=headers(request))
        return staff_id

    @app.get("/admin", include_in_schema=False)
    async def admin_page(request: Request) -> Any:
        staff_id = await asyncio.to_thread(gate, request)
        if not isinstance(staff_id, str):
            return staff_id
        return FileResponse(pages / "index.html", headers={**headers(request), "X-RF-Staff-Session": staff_id})

    @app.get("/admin/assets/{name}", include_in_schema=False)
    async def admin_asset(request: Request, name: str) -> Any:
        if name not in ("admin.js", "admin.css"):
            return JSONResponse({"code": "RF_NOT_FOUND", "message": "not found"}, status_code=404)
        staff_id = await asyncio.to_thread(gate, request)
        if not isinstance(staff_id, str):
            return staff_id
        return FileResponse(pages / name, headers=headers(request))


def build_admin_router(exchange: Exchange, verifier: RequestVerifier | None = None, monitor: Any = None,
                       custody: Any = None, identity_ctx: Any = None,
                       por_publisher: Callable[[], Any] | None = None) -> APIRouter:
    """`por_publisher`: the serving process's `PorPublisher` once started (api/serve.py), or None
    (proof of solvency is off or not started yet): POST /por/publish answers 409 then."""
    verifier = verifier or RequestVerifier()
    router = APIRouter(prefix=PREFIX, tags=["admin"])

    def key_of(staff_id: str) -> str | None:
        def read(engine: Any) -> str | None:
            from ..staff import staff_of

            m = staff_of(engine).members.get(staff_id)
            return m.public_key if m is not None and m.status == "active" else None

        return exchange.read(read)  # type: ignore[no-any-return]

    async def authenticate(request: Request) -> tuple[str, dict[str, Any]]:
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            raise ValidationError(f"the body is larger than {MAX_BODY_BYTES} bytes", field="body")
        headers = {k.lower(): v for k, v in request.headers.items()}
        caller = verifier.verify(headers, request.method, request.url.path, request.url.query, body, key_of)
        from ..identity.sessions import SESSION_COOKIE_NAME

        if request.cookies.get(SESSION_COOKIE_NAME):  # the console page's request: its session is the same member's
            staff_id = await asyncio.to_thread(session_staff, identity_ctx, exchange, request)
            if staff_id != caller:
                raise Forbidden(f"the request is signed by {caller}, the session is {staff_id}'s", field="X-RF-Staff")
        if request.method == "GET":
            return caller, {"__query__": dict(request.query_params)}
        try:
            parsed = json.loads(body or b"{}")
        except ValueError:
            raise ValidationError("the body must be a JSON object", field="body") from None
        if not isinstance(parsed, dict):
            raise ValidationError("the body must be a JSON object", field="body")
        return caller, parsed

    async def submit(command: Any) -> dict[str, Any]:
        events = await exchange.submit(command, source=f"staff:{_CALLER.get()}")
        for e in events:
            if isinstance(e, CommandRejected):
                raise rejection_error(e)
        return {"accepted": type(command).__name__,
                "events": [{"type": type(e).__name__, **msgspec.to_builtins(msgspec.structs.asdict(e))} for e in events]}

    def endpoint(method: str, path: str, summary: str) -> Callable[[Callable[..., Any]], Any]:
        def register(fn: Callable[..., Any]) -> Any:
            async def handler(request: Request) -> JSONResponse:
                try:
                    caller, body = await authenticate(request)
                    _CALLER.set(caller)  # journaled as the source of what this request submits
                    return JSONResponse(await fn(caller, body, **request.path_params))
                except RingfenceError as err:
                    return _error(err)

            handler.__name__ = fn.__name__
            router.add_api_route(path, handler, methods=[method], summary=summary, responses=_RESPONSES)
            return fn

        return register

    # ---- reads

    @endpoint("GET", "/staff", "The staff register: members, roles, keys, status, the operator quorum")
    async def get_staff(caller: str, body: dict[str, Any]) -> Any:
        return exchange.read(staff_view)

    @endpoint("GET", "/halts", "Active halts (with raised_seq, what lift approvals sign) and recent lifts")
    async def get_halts(caller: str, body: dict[str, Any]) -> Any:
        return exchange.read(halts_view)

    @endpoint("GET", "/review", "Withdrawals awaiting approvals or manual review (reasons, user history); quarantined deposits")
    async def get_review(caller: str, body: dict[str, Any]) -> Any:
        return exchange.read(review_view)

    @endpoint("GET", "/withdrawals/{withdrawal_id}", "One withdrawal as a reviewer sees it")
    async def get_withdrawal(caller: str, body: dict[str, Any], withdrawal_id: str) -> Any:
        return exchange.read(lambda engine: withdrawal_view(engine, withdrawal_id))

    audit_scan = asyncio.Lock()  # one journal read at a time

    @endpoint("GET", "/audit", "The audit trail: staff decisions journaled lately (who submitted, who signed, what, why), "
              "newest first; ?limit=1..500 (default 100)")
    async def get_audit(caller: str, body: dict[str, Any]) -> Any:
        from starlette.concurrency import run_in_threadpool

        from ..staff.audit import AUDIT_MAX_ROWS, AUDIT_WINDOW, recent_decisions

        text = body.get("__query__", {}).get("limit", "100")
        if not (text.isascii() and text.isdigit() and 1 <= int(text) <= AUDIT_MAX_ROWS):
            raise ValidationError(f"1..{AUDIT_MAX_ROWS}", field="limit")
        upto = exchange.read(lambda e: e.seq)
        async with audit_scan:
            rows = await run_in_threadpool(recent_decisions, exchange.data_dir / "engine", upto, int(text))
        return {"upto_seq": upto, "window": AUDIT_WINDOW, "decisions": rows}

    @endpoint("GET", "/policy", "The active withdrawal policy and the proposals")
    async def get_policy(caller: str, body: dict[str, Any]) -> Any:
        return exchange.read(policy_view)

    # ---- staff

    @endpoint("POST", "/staff", "Add a staff member (AddStaff: operator quorum + the new key's proof)")
    async def add_staff(caller: str, body: dict[str, Any]) -> Any:
        from ..staff import AddStaff

        member = body.get("member")
        if not isinstance(member, dict):
            raise ValidationError("member is {staff_id, roles, public_key, accounts}", field="member")
        roles = member.get("roles")
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise ValidationError("roles is a list of role names", field="member.roles")
        accounts = member.get("accounts", [])
        if not isinstance(accounts, list) or not all(isinstance(a, str) for a in accounts):
            raise ValidationError("accounts is a list of the new member's own customer account ids", field="member.accounts")
        entry = StaffEntry(_text(member, "staff_id"), list(roles), _text(member, "public_key"), list(accounts))
        approvals = _callers_approvals(caller, body)
        return await submit(AddStaff(entry, _sig(body, "proof"), _text(body, "reason"), approvals))

    @endpoint("POST", "/staff/{staff_id}/remove", "Remove a staff member (RemoveStaff: operator quorum)")
    async def remove_staff(caller: str, body: dict[str, Any], staff_id: str) -> Any:
        from ..staff import RemoveStaff

        approvals = _callers_approvals(caller, body)
        return await submit(RemoveStaff(staff_id, _text(body, "reason"), approvals))

    # ---- halts

    @endpoint("POST", "/halts", "Raise a halt (RaiseHaltSigned: one operator)")
    async def raise_halt(caller: str, body: dict[str, Any]) -> Any:
        from ..risk.halts import RaiseHaltSigned

        decision = _callers_decision(caller, body)
        return await submit(RaiseHaltSigned(_text(body, "halt_id"), _text(body, "scope_kind"), _text(body, "scope"),
                                            _text(body, "level"), _text(body, "reason"), decision))

    @endpoint("POST", "/halts/{halt_id}/lift", "Lift a halt (LiftHaltSigned: operator quorum)")
    async def lift_halt(caller: str, body: dict[str, Any], halt_id: str) -> Any:
        from ..risk.halts import LiftHaltSigned

        approvals = _callers_approvals(caller, body)
        return await submit(LiftHaltSigned(halt_id, _text(body, "reason"), approvals))

    # ---- proof of solvency (docs/por.md): one now, besides the schedule

    por_requests = [0]  # POST /por/publish requests in flight (MAX_POR_REQUESTS)

    @endpoint("POST", "/por/publish", "Publish a proof of solvency now (an operator; not a decision: no command is "
              "journaled); answers the proof's history entry. A request for a snapshot whose proof is being built "
              "(by the schedule or another request) joins that build and gets its entry; one requested build at a "
              "time (429 while another request's proof of a different state is being built)")
    async def publish_por(caller: str, body: dict[str, Any]) -> Any:
        from ..errors import RateLimited
        from ..staff import staff_of
        from ..staff.decisions import OPERATOR

        roles = exchange.read(lambda e: list(m.roles) if (m := staff_of(e).members.get(caller)) else [])
        if OPERATOR not in roles:
            raise Forbidden(f"publishing a proof of solvency is for operators; {caller!r} holds {roles or 'no role'}",
                            field="X-RF-Staff")
        if body:
            raise ValidationError(f"this request takes no fields (got {sorted(body)[:5]}); send {{}}", field="body")
        publisher = por_publisher() if por_publisher is not None else None
        if publisher is None:
            raise Conflict("proof of solvency is off on this node (see its start-up log: RINGFENCE_POR_SECRET)",
                           field="por")
        if por_requests[0] >= MAX_POR_REQUESTS:
            raise RateLimited(f"{MAX_POR_REQUESTS} requests for a proof of solvency are in progress; retry once they "
                              "are answered", field="por")
        por_requests[0] += 1
        try:  # built off the event loop, unpaced (asked for now)
            entry = await asyncio.to_thread(publisher.publish, requested=True)
        except RingfenceError:
            raise
        except Exception as exc:  # a failed build (a write, the tree): nothing was published (publisher.py); said
            log.error("por.publish_failed", requested_by=caller, error=f"{type(exc).__name__}: {exc}"[:500])
            raise RingfenceError(f"the proof of solvency was not built, nothing was published: {type(exc).__name__}: "
                                 f"{exc}"[:500], field="por") from exc
        finally:
            por_requests[0] -= 1
        return {"entry": entry, "history": "/por/history"}

    # ---- withdrawals and deposits

    async def _scoped(withdrawal_id: str) -> dict[str, Any]:
        return exchange.read(lambda engine: withdrawal_view(engine, withdrawal_id))  # type: ignore[no-any-return]

    @endpoint("POST", "/withdrawals/{withdrawal_id}/approve", "Approve a withdrawal awaiting approvals (signed, one role)")
    async def approve_withdrawal(caller: str, body: dict[str, Any], withdrawal_id: str) -> Any:
        from ..custody.staff_cmds import ApproveWithdrawalSigned

        w = await _scoped(withdrawal_id)
        decision = _callers_decision(caller, body)
        return await submit(ApproveWithdrawalSigned(withdrawal_id, w["asset"], w["wallet"], _text(body, "role"), decision))

    @endpoint("POST", "/withdrawals/{withdrawal_id}/reject", "Reject a withdrawal awaiting approvals (signed approver)")
    async def reject_withdrawal(caller: str, body: dict[str, Any], withdrawal_id: str) -> Any:
        from ..custody.staff_cmds import RejectWithdrawal

        w = await _scoped(withdrawal_id)
        decision = _callers_decision(caller, body)
        return await submit(RejectWithdrawal(withdrawal_id, w["asset"], w["wallet"], _text(body, "reason"), decision))

    @endpoint("POST", "/withdrawals/{withdrawal_id}/review", "Resolve a manual review (signed analyst)")
    async def review_withdrawal(caller: str, body: dict[str, Any], withdrawal_id: str) -> Any:
        from ..custody.staff_cmds import ResolveManualReviewSigned

        w = await _scoped(withdrawal_id)
        approve = body.get("approve")
        if not isinstance(approve, bool):
            raise ValidationError("approve must be true or false", field="approve")
        decision = _callers_decision(caller, body)
        return await submit(ResolveManualReviewSigned(withdrawal_id, w["asset"], w["wallet"], approve,
                                                      _text(body, "reason"), decision))

    @endpoint("POST", "/deposits/review", "Release or freeze a quarantined deposit (signed analyst)")
    async def review_deposit(caller: str, body: dict[str, Any]) -> Any:
        from ..custody.staff_cmds import ReviewQuarantineSigned

        index = body.get("index")
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise ValidationError("index is a non-negative integer", field="index")
        decision = _callers_decision(caller, body)
        return await submit(ReviewQuarantineSigned(_text(body, "chain"), _text(body, "txid"), index,
                                                   _text(body, "decision_kind"), _text(body, "reason"), decision))

    @endpoint("POST", "/deposits/return", "Return a quarantined or frozen deposit to its sender (two signed analysts)")
    async def return_deposit(caller: str, body: dict[str, Any]) -> Any:
        from ..custody.refund_cmds import ReturnDepositSigned

        index = body.get("index")
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise ValidationError("index is a non-negative integer", field="index")
        decision = _callers_decision(caller, body)
        return await submit(ReturnDepositSigned(_text(body, "chain"), _text(body, "txid"), index, _text(body, "address"),
                                                _text(body, "reason"), decision))

    # ---- policy

    @endpoint("POST", "/policy/proposals", "Propose a withdrawal policy (signed policy admin)")
    async def propose_policy(caller: str, body: dict[str, Any]) -> Any:
        from ..custody.staff_cmds import ProposePolicySigned

        decision = _callers_decision(caller, body)
        return await submit(ProposePolicySigned(_text(body, "proposal_id"), _text(body, "policy_json"), decision))

    @endpoint("POST", "/policy/proposals/{proposal_id}/approve", "Approve a policy proposal (signed, another policy admin)")
    async def approve_policy(caller: str, body: dict[str, Any], proposal_id: str) -> Any:
        from ..custody.staff_cmds import ApprovePolicySigned

        decision = _callers_decision(caller, body)
        return await submit(ApprovePolicySigned(proposal_id, decision))

    @endpoint("POST", "/policy/proposals/{proposal_id}/activate", "Activate a scheduled policy once its delay passed")
    async def activate_policy(caller: str, body: dict[str, Any], proposal_id: str) -> Any:
        from ..custody.commands import ActivatePolicy
        from ..staff import staff_of
        from ..staff.decisions import POLICY_ADMIN

        # the decision was the proposal and its approvals (signed); switching it on after its delay
        # is the policy admins' step, and the engine refuses to activate anything older than the
        # policy in force (no rollback through an old, approved proposal)
        roles = exchange.read(lambda e: list(m.roles) if (m := staff_of(e).members.get(caller)) else [])
        if POLICY_ADMIN not in roles:
            raise Forbidden(f"activating a policy is for policy admins; {caller!r} holds {roles or 'no role'}", field="X-RF-Staff")
        return await submit(ActivatePolicy(proposal_id))

    # ---- index (docs/index.md): every change a decision of the staff operator quorum

    @endpoint("GET", "/index", "The index change counter (what index approvals sign), feed keys and indexed symbols")
    async def get_index(caller: str, body: dict[str, Any]) -> Any:
        return exchange.read(index_admin_view)

    @endpoint("POST", "/index/feed-keys", "Register or rotate a venue's feed key (RegisterFeedKey: operator quorum)")
    async def register_feed_key(caller: str, body: dict[str, Any]) -> Any:
        from ..index.commands import RegisterFeedKey

        approvals = _callers_approvals(caller, body)
        return await submit(RegisterFeedKey(_text(body, "venue"), _text(body, "public_key"), approvals))

    @endpoint("POST", "/index/configure", "Set a symbol's index parameters (ConfigureIndex: operator quorum)")
    async def configure_index(caller: str, body: dict[str, Any]) -> Any:
        from ..index.commands import ConfigureIndex

        sources = body.get("sources")
        if not isinstance(sources, list) or not all(
                isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) for p in sources):
            raise ValidationError("sources is a list of [venue, weight] pairs", field="sources")
        pairs = [(v, _int(w, f"sources[{i}].weight")) for i, (v, w) in enumerate(sources)]
        optional = {k: _int(body[k], k) for k in _INDEX_OPTIONAL if k in body}
        approvals = _callers_approvals(caller, body)
        return await submit(ConfigureIndex(_text(body, "symbol"), pairs, _int(body.get("min_sources"), "min_sources"),
                                           approvals=approvals, **optional))

    @endpoint("POST", "/index/override", "Pin or release the band's reference price (OverrideReferencePrice: operator quorum)")
    async def override_reference(caller: str, body: dict[str, Any]) -> Any:
        from ..index.commands import OverrideReferencePrice

        approvals = _callers_approvals(caller, body)
        return await submit(OverrideReferencePrice(_text(body, "symbol"), _int(body.get("price_minor"), "price_minor"),
                                                   _text(body, "reason"), approvals))

    # ---- assets, markets and fees (docs/staff.md, "Markets and fees"): system-wide changes, operator quorum

    @endpoint("GET", "/assets", "Registered assets (decimals, class, chain, markets); the trading change counter")
    async def get_assets(caller: str, body: dict[str, Any]) -> Any:
        return exchange.read(assets_admin_view)

    @endpoint("POST", "/assets", "Register an asset (RegisterAssetSigned: operator quorum)")
    async def register_asset(caller: str, body: dict[str, Any]) -> Any:
        from ..ledger.commands import RegisterAsset
        from ..trading.staff_cmds import RegisterAssetSigned

        chain = body.get("chain", "")
        if not isinstance(chain, str):
            raise ValidationError("chain is a string (empty for none)", field="chain")
        asset = RegisterAsset(_text(body, "code"), _int(body.get("decimals"), "decimals"), _text(body, "asset_class"), chain)
        approvals = _callers_approvals(caller, body)
        return await submit(RegisterAssetSigned(asset, _text(body, "reason"), approvals))

    @endpoint("GET", "/markets", "Markets with their filters, status and reference price; fee tiers; the trading change counter")
    async def get_markets(caller: str, body: dict[str, Any]) -> Any:
        return exchange.read(markets_admin_view)

    @endpoint("POST", "/markets", "List a market with its filters (ListMarketSigned: operator quorum)")
    async def list_market(caller: str, body: dict[str, Any]) -> Any:
        from ..trading.staff_cmds import ListMarketSigned

        approvals = _callers_approvals(caller, body)
        return await submit(ListMarketSigned(list_market_command(body), _text(body, "reason"), approvals))

    @endpoint("POST", "/markets/{symbol}/delist", "Delist a market: its open orders are canceled and their holds "
              "released (DelistMarketSigned: operator quorum)")
    async def delist_market(caller: str, body: dict[str, Any], symbol: str) -> Any:
        from ..trading.staff_cmds import DelistMarketSigned

        approvals = _callers_approvals(caller, body)
        return await submit(DelistMarketSigned(symbol, _text(body, "reason"), approvals))

    @endpoint("POST", "/markets/{symbol}/reference", "Set a market's band reference price (SetReferencePriceSigned: "
              "operator quorum; a market that follows an index takes POST /index/override)")
    async def set_reference(caller: str, body: dict[str, Any], symbol: str) -> Any:
        from ..trading.staff_cmds import SetReferencePriceSigned

        approvals = _callers_approvals(caller, body)
        return await submit(SetReferencePriceSigned(symbol, _int(body.get("price_minor"), "price_minor"),
                                                    _text(body, "reason"), approvals))

    @endpoint("POST", "/fees/tiers", "Define a fee tier's maker and taker rates (SetFeeTierSigned: operator quorum)")
    async def set_fee_tier(caller: str, body: dict[str, Any]) -> Any:
        from ..trading.commands import SetFeeTier
        from ..trading.staff_cmds import SetFeeTierSigned

        tier = SetFeeTier(_int(body.get("tier"), "tier"), _int(body.get("maker_rate_ppm"), "maker_rate_ppm"),
                          _int(body.get("taker_rate_ppm"), "taker_rate_ppm"))
        approvals = _callers_approvals(caller, body)
        return await submit(SetFeeTierSigned(tier, _text(body, "reason"), approvals))

    @endpoint("POST", "/fees/accounts", "Put an account on a fee tier (SetAccountFeeTierSigned: operator quorum)")
    async def set_account_fee_tier(caller: str, body: dict[str, Any]) -> Any:
        from ..trading.commands import SetAccountFeeTier
        from ..trading.staff_cmds import SetAccountFeeTierSigned

        assignment = SetAccountFeeTier(_text(body, "account"), _int(body.get("tier"), "tier"))
        approvals = _callers_approvals(caller, body)
        return await submit(SetAccountFeeTierSigned(assignment, _text(body, "reason"), approvals))

    if monitor is not None:  # monitoring: alerts, cases, the analyst workflow (docs/monitoring.md)
        from ..monitoring.api import install as install_monitoring

        install_monitoring(endpoint, exchange, monitor, _callers_decision)
    if custody is not None:  # vault refills and threshold keys' signer sets (api/custody_admin.py)
        from .custody_admin import install as install_custody

        install_custody(endpoint, exchange, custody, _callers_approvals, submit, _callers_decision)
    return router
