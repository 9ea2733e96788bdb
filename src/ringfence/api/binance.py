"""Binance spot REST v3 subset, enough for the unmodified `ccxt.binance` class (shared binance-compat.md).

Thin layer: parse and validate parameters (gateway.Params), authenticate, turn the request into
one engine command, await it (durable + applied), and shape the answer exactly as Binance does:
decimal strings for numbers, ms timestamps, Binance's error codes and messages.

Prices are quote minor units per one whole base unit inside; at the edge they are decimal
strings with the quote asset's decimals. Quantities are base minor units inside and decimal
strings with the base asset's decimals outside.
"""

from __future__ import annotations

import functools
import json
import re
import secrets
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Awaitable, Callable, Mapping

import msgspec
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ..errors import RingfenceError
from ..money import format_amount
from ..trading.commands import CancelAll, CancelOrder, OrderAccepted, OrderRejected, PlaceOrder, Trade
from ..trading.state import MAX_PRICE
from .binance_errors import BinanceError, from_order_rejection, from_ringfence, illegal, mandatory
from .gateway import Params
from .orders import OrderRecord
from .service import Exchange, MarketInfo

__all__ = ["build_router", "STATUS_MAP", "ORDER_TYPES"]

STATUS_MAP = {"ACTIVE": "TRADING", "REDUCE_ONLY": "BREAK", "HALTED": "HALT"}
# Binance order type -> engine order type
ORDER_TYPES = {
    "LIMIT": "LIMIT",
    "LIMIT_MAKER": "LIMIT_MAKER",
    "MARKET": "MARKET",
    "STOP_LOSS_LIMIT": "STOP_LIMIT",
    "STOP_LOSS": "STOP_MARKET",
}
ENGINE_TO_BINANCE_TYPE = {v: k for k, v in ORDER_TYPES.items()}
_ORDER_TYPE_NAMES = tuple(ORDER_TYPES)
#: The parameters whose presence depends on the order type, and which ones each type reads.
TYPE_DEPENDENT_PARAMS = ("timeInForce", "price", "quantity", "quoteOrderQty", "stopPrice")
TYPE_PARAMS = {
    "LIMIT": ("timeInForce", "price", "quantity"),
    "LIMIT_MAKER": ("price", "quantity"),
    "MARKET": ("quantity", "quoteOrderQty"),
    "STOP_LOSS": ("quantity", "stopPrice"),
    "STOP_LOSS_LIMIT": ("timeInForce", "price", "quantity", "stopPrice"),
}
STP_MODES = ("NONE", "EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH")
KLINE_INTERVALS = ("1m", "5m", "15m", "1h", "4h", "1d")
DEPTH_LIMITS = (5, 10, 20, 50, 100, 500, 1000, 5000)
SYMBOL_PARAM = {"name": "symbol", "in": "query", "required": False, "schema": {"type": "string"}}
ERROR_SCHEMA = {
    "type": "object",
    "required": ["code", "msg"],
    "properties": {"code": {"type": "integer"}, "msg": {"type": "string"}},
}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# ---------------------------------------------------------------------------------- parameters
#
# The one place that says which parameters each endpoint reads. A request is checked against its
# row before anything else reads it (issue #13 item 2): a parameter the row does not name is
# refused with -1104, as Binance does, so a signed request whose bytes were re-split between
# query and body (leaving a stray `1` or `ntity` parameter) cannot change what is read; a
# parameter Binance defines that ringfence does not support is refused with its own clear error
# (`refused`), never silently ignored; a parameter sent twice is refused by `Params` (-1101).

#: The signed-request framework parameters every signed endpoint accepts (gateway.check_timestamp,
#: auth.ApiGate.signed): `timestamp` and `signature` are mandatory, `recvWindow` optional.
SIGNED_PARAMS = ("timestamp", "recvWindow", "signature")


@dataclass(frozen=True)
class EndpointParams:
    honoured: tuple[str, ...] = ()
    required: tuple[str, ...] = ()
    #: Binance defines these for the endpoint; ringfence refuses them with (code, message).
    refused: tuple[tuple[str, int, str], ...] = ()
    signed: bool = False
    #: Required or not depending on other parameters (an order's type): an empty one is "missing".
    conditional: tuple[str, ...] = ()

    def accepted(self) -> tuple[str, ...]:
        return self.honoured + (SIGNED_PARAMS if self.signed else ())

    @functools.cached_property
    def _checks(self) -> tuple[frozenset[str], frozenset[str]]:
        """(the names `accepted` gives, the names an empty value of is "missing"), as sets: what
        `check_params` asks of every parameter of every request."""
        return frozenset(self.accepted()), frozenset(self.required + self.conditional + ("timestamp", "signature"))


def _not_supported(name: str, why: str) -> tuple[str, int, str]:
    return (name, -1106, f"Parameter '{name}' sent when not required: {why}")


_ORDER_PARAMS = ("symbol", "side", "type", "timeInForce", "quantity", "quoteOrderQty", "price", "newClientOrderId", "stopPrice", "newOrderRespType", "selfTradePreventionMode")
_ORDER_REFUSED = (
    ("icebergQty", -1013, "Iceberg orders are not supported for this symbol (exchangeInfo: icebergAllowed is false)."),
    ("trailingDelta", -1013, "Trailing stop orders are not supported for this symbol (exchangeInfo: allowTrailingStop is false)."),
    ("pegPriceType", -1013, "Pegged orders are not supported for this symbol."),
    ("pegOffsetValue", -1013, "Pegged orders are not supported for this symbol."),
    ("pegOffsetType", -1013, "Pegged orders are not supported for this symbol."),
    _not_supported("strategyId", "ringfence does not record strategy ids."),
    _not_supported("strategyType", "ringfence does not record strategy types."),
)
_SYMBOLS = ("symbol", "symbols", "symbolStatus")
_BY_TYPE = TYPE_DEPENDENT_PARAMS  # required or refused depending on the order type (TYPE_PARAMS)
_ORDER_REF = ("orderId", "origClientOrderId")

#: (method, path under /api/v3) -> its parameters. Everything not listed is refused.
ENDPOINT_PARAMS: dict[tuple[str, str], EndpointParams] = {
    ("GET", "/ping"): EndpointParams(),
    ("GET", "/time"): EndpointParams(),
    ("GET", "/exchangeInfo"): EndpointParams(
        _SYMBOLS,
        refused=(
            _not_supported("permissions", "every ringfence market is SPOT; filter with 'symbolStatus' or 'symbols'."),
            _not_supported("showPermissionSets", "ringfence lists 'permissions' (always [\"SPOT\"]), not permission sets."),
        ),
    ),
    ("GET", "/depth"): EndpointParams(("symbol", "limit"), required=("symbol",)),
    ("GET", "/trades"): EndpointParams(("symbol", "limit"), required=("symbol",)),
    ("GET", "/aggTrades"): EndpointParams(("symbol", "fromId", "startTime", "endTime", "limit"), required=("symbol",)),
    ("GET", "/klines"): EndpointParams(("symbol", "interval", "startTime", "endTime", "timeZone", "limit"), required=("symbol", "interval")),
    ("GET", "/ticker/24hr"): EndpointParams(_SYMBOLS + ("type",)),
    ("GET", "/ticker/price"): EndpointParams(_SYMBOLS),
    ("GET", "/ticker/bookTicker"): EndpointParams(_SYMBOLS),
    ("GET", "/account"): EndpointParams(("omitZeroBalances",), signed=True),
    ("POST", "/order"): EndpointParams(_ORDER_PARAMS, ("symbol", "side", "type"), _ORDER_REFUSED, signed=True, conditional=_BY_TYPE),
    ("POST", "/order/test"): EndpointParams(_ORDER_PARAMS + ("computeCommissionRates",), ("symbol", "side", "type"), _ORDER_REFUSED, signed=True, conditional=_BY_TYPE),
    ("GET", "/order"): EndpointParams(("symbol", "orderId", "origClientOrderId"), ("symbol",), signed=True, conditional=_ORDER_REF),
    ("DELETE", "/order"): EndpointParams(("symbol", "orderId", "origClientOrderId", "newClientOrderId", "cancelRestrictions"), ("symbol",), signed=True, conditional=_ORDER_REF),
    ("GET", "/openOrders"): EndpointParams(("symbol",), signed=True),
    ("DELETE", "/openOrders"): EndpointParams(("symbol",), ("symbol",), signed=True),
    ("GET", "/allOrders"): EndpointParams(("symbol", "orderId", "startTime", "endTime", "limit"), ("symbol",), signed=True),
    ("GET", "/myTrades"): EndpointParams(("symbol", "orderId", "startTime", "endTime", "fromId", "limit"), ("symbol",), signed=True),
    ("POST", "/userDataStream"): EndpointParams(),
    ("PUT", "/userDataStream"): EndpointParams(("listenKey",), ("listenKey",)),
    ("DELETE", "/userDataStream"): EndpointParams(("listenKey",), ("listenKey",)),
}


def check_params(spec: EndpointParams, params: Params) -> None:
    """Refuse what the endpoint does not read (-1104), what it refuses, and empty values."""
    sent = params.as_sent()  # name -> value, in the order sent
    for name, code, message in spec.refused:
        if name in sent:
            raise BinanceError(code, message)
    accepted, mandatory_names = spec._checks
    unknown = [name for name in sent if name not in accepted]
    if unknown:
        named = ", ".join("'" + name[:40] + "'" for name in unknown[:5])
        raise BinanceError(
            -1104,
            f"Not all sent parameters were read; read {len(sent) - len(unknown)} parameter(s) but was sent {len(sent)}. "
            f"Not defined for this endpoint: {named}.",
        )
    for name, value in sent.items():
        if value == "":
            if name in mandatory_names:
                raise mandatory(name)
            raise illegal(name, "an empty value is not allowed: omit the parameter or send a value.")


def _doc(spec: EndpointParams, key_only: bool = False) -> dict[str, Any]:
    params = [{"name": n, "in": "query", "required": n in spec.required, "schema": {"type": "string"}} for n in spec.honoured]
    if spec.signed:
        params += [
            {"name": "timestamp", "in": "query", "required": True, "schema": {"type": "string"}},
            {"name": "recvWindow", "in": "query", "required": False, "schema": {"type": "string"}},
            {"name": "signature", "in": "query", "required": True, "schema": {"type": "string"}},
        ]
    if spec.signed or key_only:
        params.append({"name": "X-MBX-APIKEY", "in": "header", "required": True, "schema": {"type": "string"}})
    return {"parameters": params, "responses": dict(ERROR_RESPONSES)}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ERROR_SCHEMA}}}


#: Every error status the gateway can answer with, in Binance's shape (documented on every route).
ERROR_RESPONSES: dict[str, Any] = {
    "400": _error("Binance error: bad parameter, filter failure, bad signature, unknown order"),
    "401": _error("Invalid or missing API key"),
    "413": _error("Body too large"),
    "415": _error("Wrong content type"),
    "418": _error("Banned after repeated rate-limit violations"),
    "429": _error("Rate limited (see Retry-After)"),
    "500": _error("Internal error (never expected)"),
    "503": _error("The engine cannot accept commands (halted or not durable)"),
}


class BinanceApi:
    def __init__(self, exchange: Exchange, gate: Any) -> None:
        self.ex = exchange
        self.gate = gate  # ApiGate: authentication, rate limits, replay guard
        self.capital: Any = None  # api.capital.CapitalApi: what canDeposit / canWithdraw say
        #: Self-trade prevention when an order names none: EXPIRE_TAKER as Binance's, per market
        #: overrides from RINGFENCE_TRADING_STP_MARKETS (`stp_defaults`).
        self.stp_default = "EXPIRE_TAKER"
        self.stp_markets: dict[str, str] = {}

    def stp_for(self, symbol: str) -> str:
        return self.stp_markets.get(symbol, self.stp_default)

    # ------------------------------------------------------------------ helpers

    def market(self, params: Params) -> MarketInfo:
        m = self.ex.listed_market(params.require("symbol"))
        if m is None:
            raise BinanceError(-1121, "Invalid symbol.")
        return m

    def readable_market(self, params: Params) -> MarketInfo:
        """`market` for reading orders and trades: a market delisted since still answers (status
        DELISTED), so a user can see the orders its delisting canceled."""
        m = self.ex.listed_or_delisted(params.require("symbol"))
        if m is None:
            raise BinanceError(-1121, "Invalid symbol.")
        return m

    def px(self, m: MarketInfo, value: int) -> str:
        return format_amount(value, m.quote_decimals)

    def qty(self, m: MarketInfo, value: int) -> str:
        return format_amount(value, m.base_decimals)

    def order_view(self, m: MarketInfo, r: OrderRecord, *, transact: bool = False) -> dict[str, Any]:
        orig = r.quantity if r.quantity else r.executed
        view: dict[str, Any] = {
            "symbol": r.symbol,
            "orderId": r.order_id,
            "orderListId": -1,
            "clientOrderId": r.client_order_id,
            "price": self.px(m, r.price),
            "origQty": self.qty(m, orig),
            "executedQty": self.qty(m, r.executed),
            "cummulativeQuoteQty": self.px_amount(m, r.cum_quote),
            "status": r.status,
            "timeInForce": r.tif if r.order_type != "MARKET" else "GTC",
            "type": ENGINE_TO_BINANCE_TYPE.get(r.order_type, r.order_type),
            "side": r.side,
            "stopPrice": self.px(m, r.stop_price),
            "workingTime": r.time_ms if r.working else -1,
            "selfTradePreventionMode": r.stp,
            "origQuoteOrderQty": self.px_amount(m, r.quote_amount),
        }
        if transact:
            view["transactTime"] = r.update_ms
        else:
            view.update({"time": r.time_ms, "updateTime": r.update_ms, "isWorking": r.working, "icebergQty": self.qty(m, 0)})
        return view

    def px_amount(self, m: MarketInfo, value: int) -> str:
        """An amount of the quote asset (not a price): same decimals, named for clarity."""
        return format_amount(value, m.quote_decimals)

    # ------------------------------------------------------------------ public

    async def ping(self, request: Request) -> dict[str, Any]:
        return {}

    async def time(self, request: Request) -> dict[str, Any]:
        return {"serverTime": now_ms()}

    async def exchange_info(self, request: Request) -> dict[str, Any]:
        params = await self.gate.params(request)
        status = _symbol_status(params)
        if status is not None and (params.get("symbol") or params.get("symbols")):
            raise BinanceError(-1106, "Parameter 'symbolStatus' sent when not required: it cannot be combined with 'symbol' or 'symbols'.")
        markets, _ = self._wanted_markets(params)
        if status is not None:
            markets = [m for m in markets if STATUS_MAP[m.status] == status]
        return {
            "timezone": "UTC",
            "serverTime": now_ms(),
            "rateLimits": [
                {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": self.gate.weight_per_min},
            ],
            "exchangeFilters": [],
            "symbols": [self.symbol_info(m) for m in markets],
        }

    def symbol_info(self, m: MarketInfo) -> dict[str, Any]:
        max_price = MAX_PRICE
        filters: list[dict[str, Any]] = [
            {"filterType": "PRICE_FILTER", "minPrice": self.px(m, m.tick), "maxPrice": self.px(m, max_price - max_price % m.tick), "tickSize": self.px(m, m.tick)},
            {"filterType": "LOT_SIZE", "minQty": self.qty(m, m.min_qty), "maxQty": self.qty(m, m.max_qty), "stepSize": self.qty(m, m.lot)},
            {"filterType": "MARKET_LOT_SIZE", "minQty": self.qty(m, m.min_qty), "maxQty": self.qty(m, m.max_qty), "stepSize": self.qty(m, m.lot)},
            {"filterType": "NOTIONAL", "minNotional": self.px_amount(m, m.min_notional), "applyMinToMarket": True, "maxNotional": self.px_amount(m, 10**30), "applyMaxToMarket": False, "avgPriceMins": 0},
        ]
        if m.band_ppm:
            # The dual-price band (trading/matching.py): a limit or stop price must lie within
            # ref * (1 -/+ band_ppm / 10^6), the same for both sides. Binance measures from the
            # average price of the last `avgPriceMins` minutes; ringfence from the market's
            # reference price (GET /v1/markets `reference_price`), hence avgPriceMins 0.
            up = format_amount(1_000_000 + m.band_ppm, 6, trim=True)
            down = format_amount(1_000_000 - m.band_ppm, 6, trim=True)
            filters.append({"filterType": "PERCENT_PRICE_BY_SIDE", "bidMultiplierUp": up, "bidMultiplierDown": down, "askMultiplierUp": up, "askMultiplierDown": down, "avgPriceMins": 0})
        return {
            "symbol": m.symbol,
            "status": STATUS_MAP[m.status],
            "baseAsset": m.base,
            "baseAssetPrecision": m.base_decimals,
            "quoteAsset": m.quote,
            "quotePrecision": m.quote_decimals,
            "quoteAssetPrecision": m.quote_decimals,
            "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS", "STOP_LOSS_LIMIT"],
            "icebergAllowed": False,
            "ocoAllowed": False,
            "quoteOrderQtyMarketAllowed": True,
            "allowTrailingStop": False,
            "cancelReplaceAllowed": False,
            "isSpotTradingAllowed": True,
            "isMarginTradingAllowed": False,
            "pegInstructionsAllowed": False,
            "filters": filters,
            "permissions": ["SPOT"],
            "defaultSelfTradePreventionMode": self.stp_for(m.symbol),
            "allowedSelfTradePreventionModes": list(STP_MODES),
            "segment": m.segment,
        }

    async def depth(self, request: Request) -> dict[str, Any]:
        params = await self.gate.params(request)
        return self.depth_view(self.market(params), params)

    def depth_view(self, m: MarketInfo, params: Params) -> dict[str, Any]:
        """The book snapshot of `m` (spot here, a perpetual in the futures API)."""
        limit = params.integer("limit", default=100, low=1, high=5000)
        snap = self.ex.marketdata[m.symbol].snapshot(limit) if m.symbol in self.ex.marketdata.symbols else {"last_update_id": 0, "bids": [], "asks": []}
        return {
            "lastUpdateId": snap["last_update_id"],
            "bids": [[self.px(m, p), self.qty(m, q)] for p, q in snap["bids"]],
            "asks": [[self.px(m, p), self.qty(m, q)] for p, q in snap["asks"]],
        }

    def _trades(self, m: MarketInfo, params: Params) -> list[dict[str, Any]]:
        limit = params.integer("limit", default=500, low=1, high=1000)
        sd = self.ex.marketdata.symbols.get(m.symbol)
        rows = list(sd.trades) if sd is not None else []
        start = params.integer("startTime", default=0)
        end = params.integer("endTime", default=2**62)
        from_id = params.integer("fromId", default=0)
        rows = [t for t in rows if start <= t["ts_ns"] // 1_000_000 <= end and t["id"] >= from_id]
        return rows[:limit] if (start or from_id) else rows[-limit:]

    async def trades(self, request: Request) -> list[dict[str, Any]]:
        params = await self.gate.params(request)
        return self.trades_view(self.market(params), params)

    def trades_view(self, m: MarketInfo, params: Params) -> list[dict[str, Any]]:
        return [
            {
                "id": t["id"],
                "price": self.px(m, t["price"]),
                "qty": self.qty(m, t["qty"]),
                "quoteQty": self.px_amount(m, t["quote_qty"]),
                "time": t["ts_ns"] // 1_000_000,
                "isBuyerMaker": t["is_buyer_maker"],
                "isBestMatch": True,
            }
            for t in self._trades(m, params)
        ]

    async def agg_trades(self, request: Request) -> list[dict[str, Any]]:
        params = await self.gate.params(request)
        return self.agg_trades_view(self.market(params), params)

    def agg_trades_view(self, m: MarketInfo, params: Params, *, best_match: bool = True) -> list[dict[str, Any]]:
        """`best_match` False leaves out `M` (Binance's futures aggTrades has none; ccxt reads it as spot)."""
        rows = [
            {
                "a": t["id"],
                "p": self.px(m, t["price"]),
                "q": self.qty(m, t["qty"]),
                "f": t["id"],
                "l": t["id"],
                "T": t["ts_ns"] // 1_000_000,
                "m": t["is_buyer_maker"],
                "M": True,
            }
            for t in self._trades(m, params)
        ]
        if not best_match:
            for r in rows:
                del r["M"]
        return rows

    async def klines(self, request: Request) -> list[list[Any]]:
        params = await self.gate.params(request)
        return self.klines_view(self.market(params), params)

    def klines_view(self, m: MarketInfo, params: Params) -> list[list[Any]]:
        interval = params.choice("interval", KLINE_INTERVALS)
        tz = params.get("timeZone")
        if tz is not None and tz not in UTC_NAMES:
            raise illegal("timeZone", "only UTC is supported: send '0' or '+00:00', or omit it.")
        limit = params.integer("limit", default=500, low=1, high=1000)
        start = params.integer("startTime", default=0)
        end = params.integer("endTime", default=2**62)
        sd = self.ex.marketdata.symbols.get(m.symbol)
        rows = sd.kline_rows(interval, 1000) if sd is not None else []
        from ..trading.marketdata import KLINE_INTERVALS_NS

        width_ms = KLINE_INTERVALS_NS[interval] // 1_000_000
        rows = [r for r in rows if start <= r[0] // 1_000_000 <= end]
        rows = rows[:limit] if start else rows[-limit:]
        return [
            [
                r[0] // 1_000_000,
                self.px(m, r[1]),
                self.px(m, r[2]),
                self.px(m, r[3]),
                self.px(m, r[4]),
                self.qty(m, r[5]),
                r[0] // 1_000_000 + width_ms - 1,
                self.px_amount(m, r[6]),
                r[7],
                self.qty(m, r[8]),  # taker buy base volume
                self.px_amount(m, r[9]),  # taker buy quote volume
                "0",  # Binance's "ignore" field
            ]
            for r in rows
        ]

    def ticker_view(self, m: MarketInfo) -> dict[str, Any]:
        sd = self.ex.marketdata.symbols.get(m.symbol)
        if sd is None:
            t: dict[str, Any] = {k: 0 for k in ("last_price", "open_price", "high_price", "low_price", "volume", "quote_volume", "count", "price_change", "bid_price", "bid_qty", "ask_price", "ask_qty", "close_time_ns")}
            last_qty = 0
            first_id = last_id = -1
        else:
            t = sd.ticker()
            trades = list(sd.trades)
            last_qty = trades[-1]["qty"] if trades else 0
            first_id = trades[0]["id"] if trades else -1
            last_id = trades[-1]["id"] if trades else -1
        open_price, change = t["open_price"], t["price_change"]
        # percent with two decimals, exact integer arithmetic (rounded toward zero)
        pct_hundredths = (change * 10_000 // open_price if change >= 0 else -((-change) * 10_000 // open_price)) if open_price else 0
        weighted = t["quote_volume"] * 10**m.base_decimals // t["volume"] if t["volume"] else 0
        close_ms = t["close_time_ns"] // 1_000_000
        return {
            "symbol": m.symbol,
            "priceChange": _signed(self.px(m, abs(change)), change),
            "priceChangePercent": _signed(format_amount(abs(pct_hundredths), 2), pct_hundredths),
            "weightedAvgPrice": self.px(m, weighted),
            "prevClosePrice": self.px(m, open_price),
            "lastPrice": self.px(m, t["last_price"]),
            "lastQty": self.qty(m, last_qty),
            "bidPrice": self.px(m, t["bid_price"]),
            "bidQty": self.qty(m, t["bid_qty"]),
            "askPrice": self.px(m, t["ask_price"]),
            "askQty": self.qty(m, t["ask_qty"]),
            "openPrice": self.px(m, open_price),
            "highPrice": self.px(m, t["high_price"]),
            "lowPrice": self.px(m, t["low_price"]),
            "volume": self.qty(m, t["volume"]),
            "quoteVolume": self.px_amount(m, t["quote_volume"]),
            "openTime": max(0, close_ms - 86_400_000),
            "closeTime": close_ms,
            "firstId": first_id,
            "lastId": last_id,
            "count": t["count"],
        }

    def _wanted_markets(self, params: Params) -> tuple[list[MarketInfo], bool]:
        if params.get("symbol") and params.get("symbols"):
            raise BinanceError(-1106, "Parameter 'symbols' sent when not required: send 'symbol' or 'symbols', not both.")
        if params.get("symbol"):
            return [self.market(params)], True
        if params.get("symbols"):
            out = []
            for symbol in _symbol_list(params.require("symbols")):
                if not self.ex.has_market(symbol):
                    raise BinanceError(-1121, "Invalid symbol.")
                out.append(self.ex.market(symbol))
            return out, False
        return self.ex.markets(), False

    def _ticker_markets(self, params: Params) -> tuple[list[MarketInfo], bool]:
        """`symbol` / `symbols` / all, filtered by `symbolStatus` as Binance's ticker endpoints do."""
        markets, single = self._wanted_markets(params)
        status = _symbol_status(params)
        if status is not None:
            if single and STATUS_MAP[markets[0].status] != status:
                raise BinanceError(-1220, "The symbol's status does not match the requested symbolStatus.")
            markets = [m for m in markets if STATUS_MAP[m.status] == status]
        return markets, single

    async def ticker_24hr(self, request: Request) -> Any:
        params = await self.gate.params(request)
        markets, single = self._ticker_markets(params)
        mini = params.choice("type", ("FULL", "MINI"), default="FULL") == "MINI"
        views = [self.ticker_view(m) for m in markets]
        if mini:
            views = [{k: v[k] for k in MINI_TICKER_FIELDS} for v in views]
        return views[0] if single else views

    async def ticker_price(self, request: Request) -> Any:
        params = await self.gate.params(request)
        markets, single = self._ticker_markets(params)
        views = [{"symbol": m.symbol, "price": self.ticker_view(m)["lastPrice"]} for m in markets]
        return views[0] if single else views

    async def book_ticker(self, request: Request) -> Any:
        params = await self.gate.params(request)
        markets, single = self._ticker_markets(params)
        views = []
        for m in markets:
            t = self.ticker_view(m)
            views.append({k: t[k] for k in ("symbol", "bidPrice", "bidQty", "askPrice", "askQty")})
        return views[0] if single else views

    # ------------------------------------------------------------------ private

    async def account(self, request: Request) -> dict[str, Any]:
        params, owner = await self.gate.signed(request, "read")
        return self.account_view(params, owner)

    def account_view(self, params: Params, owner: str) -> dict[str, Any]:
        omit_zero = params.boolean("omitZeroBalances", default=False)
        balances = [
            {"asset": code, "free": format_amount(free, d), "locked": format_amount(locked, d)}
            for code, d, free, locked in self.ex.balances(owner)
            if not (omit_zero and free == 0 and locked == 0)
        ]
        # the owner's fee tier (`ringfence market fees|account-fee`): Binance's commissions in basis
        # points (whole ones, rounded down: display only) and the exact rates as fractions
        maker_ppm, taker_ppm = self.ex.rates(owner)
        return {
            "makerCommission": maker_ppm // 100,
            "takerCommission": taker_ppm // 100,
            "buyerCommission": 0,
            "sellerCommission": 0,
            "commissionRates": {"maker": format_amount(maker_ppm * 100, 8), "taker": format_amount(taker_ppm * 100, 8),
                                "buyer": "0.00000000", "seller": "0.00000000"},
            "canTrade": True,
            "canWithdraw": self.capital is not None and self.capital.can_withdraw(owner),
            "canDeposit": self.capital is not None and self.capital.can_deposit(owner),
            "brokered": False,
            "requireSelfTradePrevention": False,
            "preventSor": False,
            "updateTime": now_ms(),
            "accountType": "SPOT",
            "balances": balances,
            "permissions": ["SPOT"],
            "uid": owner,
        }

    def place_command(self, params: Params, owner: str) -> tuple[MarketInfo, PlaceOrder, str]:
        m = self.market(params)
        side = params.choice("side", ("BUY", "SELL"), code=-1117)
        btype = params.choice("type", _ORDER_TYPE_NAMES, code=-1116)
        etype = ORDER_TYPES[btype]
        # Which of the type-dependent parameters this type reads; any other one sent is refused
        # (-1106) before its value is even parsed, as Binance does: `stopPrice=-1` on a LIMIT.
        wanted = TYPE_PARAMS[btype]
        for name in TYPE_DEPENDENT_PARAMS:
            if name not in wanted and name in params:
                raise BinanceError(-1106, f"Parameter '{name}' sent when not required.")
        tif = "GTC"
        price = quantity = quote = stop = 0
        if "timeInForce" in wanted:
            tif = params.choice("timeInForce", ("GTC", "IOC", "FOK"), code=-1115)
        if "price" in wanted:
            price = params.amount("price", m.quote_decimals)
        if btype == "MARKET":
            has_qty, has_quote = params.get("quantity") is not None, params.get("quoteOrderQty") is not None
            if has_qty == has_quote:
                raise BinanceError(-1102, "Param 'quantity' or 'quoteOrderQty' must be sent, but not both.")
            if has_qty:
                quantity = params.amount("quantity", m.base_decimals)
            else:
                quote = params.amount("quoteOrderQty", m.quote_decimals)
            tif = "IOC"
        else:
            quantity = params.amount("quantity", m.base_decimals)
        if "stopPrice" in wanted:
            stop = params.amount("stopPrice", m.quote_decimals)
        coid = params.get("newClientOrderId") or "rf-" + secrets.token_hex(10)
        if not _valid_coid(coid):
            raise BinanceError(-1100, "Illegal characters found in parameter 'newClientOrderId'; legal range is '^[\\.A-Z\\:/a-z0-9_-]{1,36}$'.")
        stp = params.choice("selfTradePreventionMode", STP_MODES, default=self.stp_for(m.symbol))
        resp_type = params.choice("newOrderRespType", ("ACK", "RESULT", "FULL"), default="FULL")
        command = PlaceOrder(
            owner=owner,
            symbol=m.symbol,
            side=side,
            order_type=etype,
            tif=tif,
            price=price,
            quantity=quantity,
            quote_amount=quote,
            stop_price=stop,
            client_order_id=coid,
            stp=stp,
        )
        return m, command, resp_type

    async def new_order(self, request: Request) -> dict[str, Any]:
        params, owner = await self.gate.signed(request, "trade", weight=1)
        m, command, resp_type = self.place_command(params, owner)
        return await self.submit_order(m, command, resp_type)

    async def submit_order(self, m: MarketInfo, command: PlaceOrder, resp_type: str) -> dict[str, Any]:
        """Journal a validated `place_command` and answer as Binance does (REST and WebSocket API)."""
        events = await self.ex.submit(command)
        accepted = None
        for e in events:
            if isinstance(e, OrderRejected):
                raise from_order_rejection(e.reason, e.message, e.field, market=m, side=str(command.side))
            if isinstance(e, OrderAccepted):
                accepted = e
        if accepted is None:
            raise BinanceError(-1000, "The order was not accepted; try again.", 500)
        record = self.ex.history.orders.get(accepted.order_id)
        if record is None:
            raise BinanceError(-1000, "The order was accepted but its record is not available yet.", 500)
        if resp_type == "ACK":
            return {"symbol": m.symbol, "orderId": record.order_id, "orderListId": -1, "clientOrderId": record.client_order_id, "transactTime": record.time_ms}
        view = self.order_view(m, record, transact=True)
        if resp_type == "FULL":
            view["fills"] = [
                {
                    "price": self.px(m, t.price),
                    "qty": self.qty(m, t.quantity),
                    "commission": format_amount(t.taker_fee, m.base_decimals if t.taker_side == "BUY" else m.quote_decimals),
                    "commissionAsset": m.base if t.taker_side == "BUY" else m.quote,
                    "tradeId": t.trade_id,
                }
                for t in events
                if isinstance(t, Trade) and t.taker_order_id == record.order_id
            ]
        return view

    async def test_order(self, request: Request) -> dict[str, Any]:
        """Every check `POST order` runs (parameters, filters, band, market status, halts),
        against one consistent engine state, then nothing: no command is journaled.

        Like Binance's, the test order never reaches the matching engine, so the account's
        balance is not checked (`-2010 insufficient balance` can only come from `POST order`).
        """
        params, owner = await self.gate.signed(request, "trade", weight=1)
        return await self.check_test_order(params, owner)

    async def check_test_order(self, params: Params, owner: str) -> dict[str, Any]:
        m, command, _ = self.place_command(params, owner)
        with_rates = params.boolean("computeCommissionRates", default=False)
        rejected = await self.ex.check_order(command)
        if rejected is not None and rejected.reason != "INSUFFICIENT_BALANCE":
            raise from_order_rejection(rejected.reason, rejected.message, rejected.field, market=m, side=str(command.side))
        if not with_rates:
            return {}
        maker_ppm, taker_ppm = self.ex.rates(owner)
        rate = lambda ppm: format_amount(ppm, 6)  # noqa: E731 - millionths as a decimal fraction
        return {
            "standardCommissionForOrder": {"maker": rate(maker_ppm), "taker": rate(taker_ppm)},
            "specialCommissionForOrder": {"maker": rate(0), "taker": rate(0)},
            "taxCommissionForOrder": {"maker": rate(0), "taker": rate(0)},
            "discount": {"enabledForAccount": False, "enabledForSymbol": False, "discountAsset": None, "discount": rate(0)},
        }

    def _find(self, params: Params, owner: str, m: MarketInfo, missing_code: int) -> OrderRecord:
        order_id = params.integer("orderId", default=0)
        coid = params.get("origClientOrderId") or ""
        if not order_id and not coid:
            raise BinanceError(-1102, "Param 'origClientOrderId' or 'orderId' must be sent, but both were empty/null!")
        record = self.ex.history.get(owner, m.symbol, order_id, coid)
        if record is None:
            raise BinanceError(missing_code, "Order does not exist." if missing_code == -2013 else "Unknown order sent.")
        return record

    async def get_order(self, request: Request) -> dict[str, Any]:
        params, owner = await self.gate.signed(request, "read", weight=4)
        return self.order_status(params, owner)

    def order_status(self, params: Params, owner: str) -> dict[str, Any]:
        m = self.readable_market(params)
        return self.order_view(m, self._find(params, owner, m, -2013))

    async def cancel_order(self, request: Request) -> dict[str, Any]:
        params, owner = await self.gate.signed(request, "trade", weight=1)
        return await self.submit_cancel(*self.cancel_command(params, owner))

    def cancel_command(self, params: Params, owner: str) -> tuple[MarketInfo, OrderRecord, str | None, CancelOrder]:
        """Validate a cancel and find its order; nothing is submitted yet."""
        m = self.market(params)
        cancel_id = params.get("newClientOrderId")
        if cancel_id is not None and not _valid_coid(cancel_id):
            raise BinanceError(-1100, "Illegal characters found in parameter 'newClientOrderId'; legal range is '^[\\.A-Z\\:/a-z0-9_-]{1,36}$'.")
        restriction = params.choice("cancelRestrictions", ("ONLY_NEW", "ONLY_PARTIALLY_FILLED"), default="") if params.get("cancelRestrictions") else ""
        record = self._find(params, owner, m, -2011)
        if restriction and record.status in ("NEW", "PARTIALLY_FILLED") and record.status != restriction[len("ONLY_") :]:
            raise BinanceError(-2011, "Order was not canceled due to cancel restrictions.")
        return m, record, cancel_id, CancelOrder(owner=owner, symbol=m.symbol, order_id=record.order_id)

    async def submit_cancel(self, m: MarketInfo, record: OrderRecord, cancel_id: str | None, command: CancelOrder) -> dict[str, Any]:
        events = await self.ex.submit(command)
        for e in events:
            if isinstance(e, OrderRejected):
                raise from_order_rejection(e.reason, e.message, e.field)
        view = self.order_view(m, record, transact=True)
        view["origClientOrderId"] = record.client_order_id
        # Binance: `clientOrderId` of a cancel is the cancel's own id (sent, or made up)
        view["clientOrderId"] = cancel_id or "rf-" + secrets.token_hex(10)
        return view

    async def cancel_all(self, request: Request) -> list[dict[str, Any]]:
        params, owner = await self.gate.signed(request, "trade", weight=1)
        return await self.submit_cancel_all(*self.cancel_all_command(params, owner))

    def cancel_all_command(self, params: Params, owner: str) -> tuple[MarketInfo, set[int], CancelAll]:
        m = self.market(params)
        before = {r.order_id for r in self.ex.history.open_orders(owner, m.symbol)}
        return m, before, CancelAll(owner=owner, symbol=m.symbol)

    async def submit_cancel_all(self, m: MarketInfo, before: set[int], command: CancelAll) -> list[dict[str, Any]]:
        events = await self.ex.submit(command)
        for e in events:
            if isinstance(e, OrderRejected):
                raise from_order_rejection(e.reason, e.message, e.field)
        out = []
        for order_id in sorted(before):
            record = self.ex.history.orders.get(order_id)
            if record is not None:
                view = self.order_view(m, record, transact=True)
                view["origClientOrderId"] = record.client_order_id
                out.append(view)
        return out

    async def open_orders(self, request: Request) -> list[dict[str, Any]]:
        params, owner = await self.gate.signed(request, "read", weight=6)
        return self.open_orders_of(params, owner)

    def open_orders_of(self, params: Params, owner: str) -> list[dict[str, Any]]:
        symbol = params.get("symbol")
        if symbol is not None:
            self.readable_market(params)  # a delisted market has no open orders: [] rather than -1121
        records = self.ex.history.open_orders(owner, symbol)
        return [self.order_view(self.ex.market(r.symbol), r) for r in sorted(records, key=lambda r: r.order_id)]

    async def all_orders(self, request: Request) -> list[dict[str, Any]]:
        params, owner = await self.gate.signed(request, "read", weight=20)
        m = self.readable_market(params)
        limit = params.integer("limit", default=500, low=1, high=1000)
        start = params.integer("startTime", default=0)
        end = params.integer("endTime", default=2**62)
        from_id = params.integer("orderId", default=0)
        rows = [r for r in self.ex.history.all_orders(owner, m.symbol) if start <= r.time_ms <= end and r.order_id >= from_id]
        rows = rows[:limit] if (start or from_id) else rows[-limit:]
        return [self.order_view(m, r) for r in rows]

    async def my_trades(self, request: Request) -> list[dict[str, Any]]:
        params, owner = await self.gate.signed(request, "read", weight=20)
        m = self.readable_market(params)
        limit = params.integer("limit", default=500, low=1, high=1000)
        start = params.integer("startTime", default=0)
        end = params.integer("endTime", default=2**62)
        order_id = params.integer("orderId", default=0)
        from_id = params.integer("fromId", default=0)
        rows = [
            t
            for t in self.ex.history.my_trades(owner, m.symbol)
            if start <= t["time"] <= end and (not order_id or t["orderId"] == order_id) and t["id"] >= from_id
        ]
        rows = rows[:limit] if (start or from_id) else rows[-limit:]
        out = []
        for t in rows:
            asset_decimals = m.base_decimals if t["commissionAsset"] == m.base else m.quote_decimals
            out.append(
                {
                    "symbol": t["symbol"],
                    "id": t["id"],
                    "orderId": t["orderId"],
                    "orderListId": -1,
                    "price": self.px(m, t["price"]),
                    "qty": self.qty(m, t["qty"]),
                    "quoteQty": self.px_amount(m, t["quoteQty"]),
                    "commission": format_amount(t["commission"], asset_decimals),
                    "commissionAsset": t["commissionAsset"],
                    "time": t["time"],
                    "isBuyer": t["isBuyer"],
                    "isMaker": t["isMaker"],
                    "isBestMatch": True,
                }
            )
        return out

    async def user_stream_new(self, request: Request) -> dict[str, Any]:
        owner = await self.gate.key_only(request)
        return {"listenKey": self.gate.listen_keys.create(owner, source=self.gate.key_source(request))}

    async def user_stream_keepalive(self, request: Request) -> dict[str, Any]:
        owner = await self.gate.key_only(request)
        params = await self.gate.params(request)
        self.gate.listen_keys.keepalive(params.require("listenKey"), owner)
        return {}

    async def user_stream_close(self, request: Request) -> dict[str, Any]:
        owner = await self.gate.key_only(request)
        params = await self.gate.params(request)
        self.gate.listen_keys.close(params.require("listenKey"), owner)
        return {}


#: Binance's `symbolStatus` values (what `exchangeInfo` reports as `status`).
SYMBOL_STATUSES = ("TRADING", "HALT", "BREAK", "PRE_TRADING", "POST_TRADING", "END_OF_DAY", "AUCTION_MATCH")
UTC_NAMES = ("0", "+0", "-0", "00:00", "+00:00", "-00:00", "0:00", "+0:00")
MINI_TICKER_FIELDS = ("symbol", "openPrice", "highPrice", "lowPrice", "lastPrice", "volume", "quoteVolume", "openTime", "closeTime", "firstId", "lastId", "count")


def _symbol_status(params: Params) -> str | None:
    if params.get("symbolStatus") is None:
        return None
    return params.choice("symbolStatus", SYMBOL_STATUSES)


def _signed(text: str, value: int) -> str:
    return "-" + text if value < 0 else text


_COID = re.compile(r"[.A-Za-z0-9:/_\-]{1,36}")


def _valid_coid(coid: str) -> bool:
    return _COID.fullmatch(coid) is not None


def _symbol_list(raw: str) -> list[str]:
    try:
        value = json.loads(raw)
    except ValueError:
        raise BinanceError(-1100, "Illegal characters found in parameter 'symbols'; send a JSON array such as [\"BTCUSDT\",\"ETHUSDT\"].") from None
    if not isinstance(value, list) or not value or len(value) > 100 or not all(isinstance(s, str) for s in value):
        raise BinanceError(-1100, "Illegal characters found in parameter 'symbols'; send a JSON array of 1-100 symbol strings.")
    return value


def stp_defaults(default: str, per_market: str) -> tuple[str, dict[str, str]]:
    """Parse the STP settings: a mode, and `SYMBOL=MODE,...` overrides; a ConfigError names the setting."""
    from ..errors import ConfigError

    if default not in STP_MODES:
        raise ConfigError(f"must be one of {', '.join(STP_MODES)}", field="RINGFENCE_TRADING_STP_DEFAULT")
    out: dict[str, str] = {}
    for item in filter(None, (x.strip() for x in per_market.split(","))):
        symbol, _, mode = item.partition("=")
        if not symbol.strip() or mode.strip() not in STP_MODES:
            raise ConfigError(f"must be SYMBOL=MODE pairs, MODE one of {', '.join(STP_MODES)}; got {item!r}",
                              field="RINGFENCE_TRADING_STP_MARKETS")
        out[symbol.strip()] = mode.strip()
    return default, out


_encode_json = msgspec.json.Encoder().encode
#: Types both encoders write alike; StrEnum subclasses join as they are met (few: trading/vocabulary.py).
_JSON_SCALARS: set[type] = {str, int, bool, type(None)}


def _plain(value: Any, depth: int = 0) -> bool:
    """Whether msgspec writes `value` exactly as `json.dumps(ensure_ascii=False, separators=(",", ":"))`
    (Starlette's JSONResponse) does: strings, integers, booleans, None, and lists and str-keyed dicts
    of them. Not floats (the two spell some differently: 1e+16 and 1e16; NaN), nor any other type."""
    t = type(value)
    if t in _JSON_SCALARS:
        return True
    if isinstance(value, StrEnum):  # the vocabulary's enums: both write the value (`str` of it)
        _JSON_SCALARS.add(t)
        return True
    if depth > 8:
        return False
    if t is dict:
        for k, v in value.items():
            if type(k) is not str or not (type(v) in _JSON_SCALARS or _plain(v, depth + 1)):
                return False
        return True
    if t is list:
        return all(type(v) in _JSON_SCALARS or _plain(v, depth + 1) for v in value)
    return False


class BinanceJSON(JSONResponse):
    """Starlette's JSONResponse, the same bytes, rendered by msgspec when the content is plain (see
    `_plain`): json.dumps was ~3% of a signed order's time on the engine's event loop (issue 18)."""

    def render(self, content: Any) -> bytes:
        if _plain(content):
            return _encode_json(content)
        return super().render(content)

    def init_headers(self, headers: Mapping[str, str] | None = None) -> None:
        """Starlette's headers, the same list: for an answer without headers of its own (every success)
        its content-length and `application/json`, built here at once; otherwise Starlette builds them."""
        if headers is None and self.media_type == "application/json" and 200 <= self.status_code and self.status_code not in (204, 304):
            self.raw_headers = [(b"content-length", str(len(self.body)).encode("latin-1")), (b"content-type", b"application/json")]
            return
        super().init_headers(headers)


def add_binance_route(router: APIRouter, gate: Any, spec: EndpointParams, path: str, method: str,
                      fn: Callable[[Request], Awaitable[Any]], weight: int, summary: str, *, name: str,
                      openapi_extra: dict[str, Any]) -> None:
    """One Binance-style endpoint: charge its weight, check its parameters against `spec`, run `fn`,
    and answer every refusal in Binance's {code, msg} form (the spot and the capital routers)."""

    async def endpoint(request: Request) -> Response:
        try:
            await gate.charge(request, weight)
            check_params(spec, await gate.params(request))
            result = await fn(request)
        except BinanceError as err:
            return BinanceJSON(err.body(), status_code=err.status, headers=err.headers)
        except RingfenceError as err:
            mapped = from_ringfence(err)
            return BinanceJSON(mapped.body(), status_code=mapped.status, headers=mapped.headers)
        return BinanceJSON(result)

    endpoint.__name__ = name
    router.add_api_route(path, endpoint, methods=[method], summary=summary, openapi_extra=openapi_extra, response_model=None)


def build_router(api: BinanceApi) -> APIRouter:
    router = APIRouter(prefix="/api/v3", tags=["binance spot v3"])

    def add(path: str, method: str, fn: Callable[[Request], Awaitable[Any]], weight: int, summary: str, *, key_only: bool = False) -> None:
        spec = ENDPOINT_PARAMS[(method, path)]
        add_binance_route(router, api.gate, spec, path, method, fn, weight, summary,
                          name=f"{method.lower()}_{path.strip('/').replace('/', '_') or 'root'}", openapi_extra=_doc(spec, key_only))

    add("/ping", "GET", api.ping, 1, "Test connectivity")
    add("/time", "GET", api.time, 1, "Server time (ms)")
    add("/exchangeInfo", "GET", api.exchange_info, 20, "Markets, filters and rate limits")
    add("/depth", "GET", api.depth, 5, "Order book snapshot")
    add("/trades", "GET", api.trades, 10, "Recent trades")
    add("/aggTrades", "GET", api.agg_trades, 2, "Aggregate trades")
    add("/klines", "GET", api.klines, 2, "Candlesticks")
    add("/ticker/24hr", "GET", api.ticker_24hr, 2, "24 h statistics")
    add("/ticker/price", "GET", api.ticker_price, 2, "Last price")
    add("/ticker/bookTicker", "GET", api.book_ticker, 2, "Best bid and ask")
    add("/account", "GET", api.account, 20, "Balances (signed)")
    add("/order", "POST", api.new_order, 1, "New order (signed)")
    add("/order/test", "POST", api.test_order, 1, "Run every check of a new order without placing it (signed)")
    add("/order", "GET", api.get_order, 4, "Query order (signed)")
    add("/order", "DELETE", api.cancel_order, 1, "Cancel order (signed)")
    add("/openOrders", "GET", api.open_orders, 6, "Open orders (signed)")
    add("/openOrders", "DELETE", api.cancel_all, 1, "Cancel all open orders on a symbol (signed)")
    add("/allOrders", "GET", api.all_orders, 20, "All orders (signed)")
    add("/myTrades", "GET", api.my_trades, 20, "Account trades (signed)")
    add("/userDataStream", "POST", api.user_stream_new, 2, "Start a user data stream", key_only=True)
    add("/userDataStream", "PUT", api.user_stream_keepalive, 2, "Keep a user data stream alive", key_only=True)
    add("/userDataStream", "DELETE", api.user_stream_close, 2, "Close a user data stream", key_only=True)
    return router
