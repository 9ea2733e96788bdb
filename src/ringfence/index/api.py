"""HTTP surface of the index: `GET /v1/index`, `GET /fapi/v1/premiumIndex` and `POST /v1/index/quote`.

Reads go through `Exchange.read` (whole batches only). A quote POST needs no API key: its Ed25519
feed signature is the authentication, checked by the engine (a forged one is refused at the edge
and never journaled); the caller's IP pays request weight like every public endpoint.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ..engine.core import CommandRejected
from ..errors import RingfenceError
from .commands import SubmitQuote
from .view import index_symbols, index_view, premium_index_symbols, premium_index_view

__all__ = ["build_index_router"]

_INVALID_SYMBOL = {"code": -1121, "msg": "Invalid symbol."}


#: A refused quote: HTTP status and Binance-style code by what was wrong (docs/index.md).
_REFUSALS = {
    "RF_VALIDATION": (400, -1100),
    "RF_NOT_FOUND": (404, -1121),
    "RF_FORBIDDEN": (403, -2015),
    "RF_CONFLICT": (409, -1013),
}


def _error(err: RingfenceError) -> JSONResponse:
    if err.field == "signature_hex":
        return JSONResponse({"code": -1022, "msg": f"Signature for this quote is not valid: {err.message}", "field": "signature"}, status_code=401)
    if err.code in _REFUSALS:
        status, code = _REFUSALS[err.code]
        return JSONResponse({"code": code, "msg": f"quote refused: {err.message}", "field": err.field or ""}, status_code=status)
    from ..api.binance_errors import from_ringfence

    mapped = from_ringfence(err)
    return JSONResponse(mapped.body(), status_code=mapped.status, headers=mapped.headers)


def _as_error(rejected: CommandRejected) -> RingfenceError:
    from ..errors import Conflict, Forbidden, NotFound, ValidationError

    kind = {"RF_VALIDATION": ValidationError, "RF_NOT_FOUND": NotFound, "RF_FORBIDDEN": Forbidden, "RF_CONFLICT": Conflict}
    return kind.get(rejected.code, RingfenceError)(rejected.message, field=rejected.field or None)


def _openapi(params: list[tuple[str, bool]], extra_errors: dict[str, str]) -> dict[str, Any]:
    from ..api.binance import ERROR_RESPONSES, ERROR_SCHEMA

    responses = dict(ERROR_RESPONSES)
    for status, description in extra_errors.items():
        responses[status] = {"description": description, "content": {"application/json": {"schema": ERROR_SCHEMA}}}
    return {
        "parameters": [{"name": n, "in": "query", "required": required, "schema": {"type": "string"}} for n, required in params],
        "responses": responses,
    }


_QUOTE_FIELDS = [("venue", True), ("symbol", True), ("price_minor", True), ("source_ts_ns", True), ("seq", True), ("signature", True)]


def build_index_router(exchange: Any, gate: Any) -> APIRouter:
    router = APIRouter(tags=["index"])

    async def _one_or_all(request: Request, view: Any, weight: int, symbols: Any = index_symbols) -> JSONResponse:
        from ..api.binance_errors import BinanceError

        try:
            await gate.charge(request, weight)
            params = await gate.params(request)
        except BinanceError as err:
            return JSONResponse(err.body(), status_code=err.status, headers=err.headers)
        except RingfenceError as err:
            return _error(err)
        symbol = params.get("symbol")
        if symbol:
            row = exchange.read(lambda engine: view(engine, symbol))
            return JSONResponse(row) if row is not None else JSONResponse(_INVALID_SYMBOL, status_code=400)
        rows = exchange.read(lambda engine: [view(engine, s) for s in symbols(engine)])
        return JSONResponse(rows)

    @router.get("/v1/index", summary="Index and mark price of a symbol with its sources, weights and staleness (all without symbol)",
                openapi_extra=_openapi([("symbol", False)], {}))
    async def v1_index(request: Request) -> JSONResponse:
        return await _one_or_all(request, index_view, 2)

    @router.get("/fapi/v1/premiumIndex", summary="Mark and index price, last funding rate and next funding time of a perpetual (Binance USDⓈ-M shape)",
                openapi_extra=_openapi([("symbol", False)], {}))
    async def premium_index(request: Request) -> JSONResponse:
        return await _one_or_all(request, premium_index_view, 1, premium_index_symbols)

    @router.post("/v1/index/quote", summary="Submit one venue quote signed by its registered feed key (feed workers)",
                 openapi_extra=_openapi(_QUOTE_FIELDS, {"403": "The venue is not a source of the index, or has no feed key",
                                                        "404": "No index for the symbol",
                                                        "409": "Replayed or out-of-order quote (sequence or source time)"}))
    async def post_quote(request: Request) -> JSONResponse:
        from ..api.binance_errors import BinanceError

        try:
            await gate.charge(request, 1)
            p = await gate.params(request)
            command = SubmitQuote(
                venue=p.require("venue"),
                symbol=p.require("symbol"),
                price_minor=p.integer("price_minor", low=1, high=10**30),
                source_ts_ns=p.integer("source_ts_ns", low=1),
                seq=p.integer("seq", low=1),
                signature_hex=p.require("signature"),
            )
            events = await exchange.submit(command)
        except BinanceError as err:
            return JSONResponse(err.body(), status_code=err.status, headers=err.headers)
        except RingfenceError as err:
            return _error(err)
        rejected = next((e for e in events if isinstance(e, CommandRejected)), None)
        if rejected is not None:  # refused by the handler (stale, ahead of time): journaled, changed nothing
            return _error(_as_error(rejected))
        return JSONResponse({"accepted": True, "venue": command.venue, "symbol": command.symbol, "seq": command.seq})

    return router
