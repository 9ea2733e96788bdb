"""Binance spot REST v3 subset, enough for the unmodified `ccxt.binance` class (shared binance-compat.md).

Thin layer: parse and validate parameters (gateway.Params), authenticate, turn the request into
one engine command, await it (durable + applied), and shape the answer exactly as Binance does:
decimal strings for numbers, ms timestamps, Binance's error codes and messages.

Prices are quote minor units per one whole base unit inside; at the edge they are decimal
strings with the quote asset's decimals. Quantities are base minor units inside and decimal
strings with the base asset's decimals outside.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any, Awaitable, Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ..errors import RingfenceError
from ..money import format_amount
from ..trading.commands import CancelAll, CancelOrder, OrderAccepted, OrderRejected, PlaceOrder, Trade
from .binance_errors import BinanceError, from_order_rejection, from_ringfence
from .gateway import Params, check_timestamp, split_signature
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


def _doc(*names: str, required: tuple[str, ...] = (), signed: bool = False) -> dict[str, Any]:
    params = [{"name": n, "in": "query", "required": n in required, "schema": {"type": "string"}} for n in names]
    if signed:
        params += [
            {"name": "timestamp", "in": "query", "required": True, "schema": {"type": "string"}},
            {"name": "recvWindow", "in": "query", "required": False, "schema": {"type": "string"}},
            {"name": "signature", "in": "query", "required": True, "schema": {"type": "string"}},
            {"name": "X-MBX-APIKEY", "in": "header", "required": True, "schema": {"type": "string"}},
        ]
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

    # ------------------------------------------------------------------ helpers

    def market(self, params: Params) -> MarketInfo:
        symbol = params.require("symbol")
        if not self.ex.has_market(symbol):
            raise BinanceError(-1121, "Invalid symbol.")
        return self.ex.market(symbol)

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
        wanted: list[str] | None = None
        if params.get("symbol"):
            wanted = [params.require("symbol")]
        elif params.get("symbols"):
            wanted = _symbol_list(params.require("symbols"))
        markets = self.ex.markets()
        if wanted is not None:
            known = {m.symbol for m in markets}
            for symbol in wanted:
                if symbol not in known:
                    raise BinanceError(-1121, "Invalid symbol.")
            markets = [m for m in markets if m.symbol in wanted]
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
        max_price = 10**30 // 10**0
        return {
            "symbol": m.symbol,
            "status": STATUS_MAP.get(m.status, "HALT"),
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
            "filters": [
                {"filterType": "PRICE_FILTER", "minPrice": self.px(m, m.tick), "maxPrice": self.px(m, max_price - max_price % m.tick), "tickSize": self.px(m, m.tick)},
                {"filterType": "LOT_SIZE", "minQty": self.qty(m, m.min_qty), "maxQty": self.qty(m, m.max_qty), "stepSize": self.qty(m, m.lot)},
                {"filterType": "MARKET_LOT_SIZE", "minQty": self.qty(m, m.min_qty), "maxQty": self.qty(m, m.max_qty), "stepSize": self.qty(m, m.lot)},
                {"filterType": "NOTIONAL", "minNotional": self.px_amount(m, m.min_notional), "applyMinToMarket": True, "maxNotional": self.px_amount(m, 10**30), "applyMaxToMarket": False, "avgPriceMins": 0},
            ],
            "permissions": ["SPOT"],
            "defaultSelfTradePreventionMode": "NONE",
            "allowedSelfTradePreventionModes": list(STP_MODES),
            "segment": m.segment,
        }

    async def depth(self, request: Request) -> dict[str, Any]:
        params = await self.gate.params(request)
        m = self.market(params)
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
        m = self.market(params)
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
        m = self.market(params)
        return [
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

    async def klines(self, request: Request) -> list[list[Any]]:
        params = await self.gate.params(request)
        m = self.market(params)
        interval = params.choice("interval", KLINE_INTERVALS)
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

    async def ticker_24hr(self, request: Request) -> Any:
        params = await self.gate.params(request)
        markets, single = self._wanted_markets(params)
        views = [self.ticker_view(m) for m in markets]
        return views[0] if single else views

    async def ticker_price(self, request: Request) -> Any:
        params = await self.gate.params(request)
        markets, single = self._wanted_markets(params)
        views = [{"symbol": m.symbol, "price": self.ticker_view(m)["lastPrice"]} for m in markets]
        return views[0] if single else views

    async def book_ticker(self, request: Request) -> Any:
        params = await self.gate.params(request)
        markets, single = self._wanted_markets(params)
        views = []
        for m in markets:
            t = self.ticker_view(m)
            views.append({k: t[k] for k in ("symbol", "bidPrice", "bidQty", "askPrice", "askQty")})
        return views[0] if single else views

    # ------------------------------------------------------------------ private

    async def account(self, request: Request) -> dict[str, Any]:
        params, owner = await self.gate.signed(request, "read")
        balances = [
            {"asset": code, "free": format_amount(free, d), "locked": format_amount(locked, d)}
            for code, d, free, locked in self.ex.balances(owner)
        ]
        return {
            "makerCommission": 10,
            "takerCommission": 10,
            "buyerCommission": 0,
            "sellerCommission": 0,
            "commissionRates": {"maker": "0.00100000", "taker": "0.00100000", "buyer": "0.00000000", "seller": "0.00000000"},
            "canTrade": True,
            "canWithdraw": False,
            "canDeposit": False,
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
        btype = params.choice("type", tuple(ORDER_TYPES), code=-1116)
        etype = ORDER_TYPES[btype]
        tif = "GTC"
        price = quantity = quote = stop = 0
        if btype in ("LIMIT", "STOP_LOSS_LIMIT"):
            tif = params.choice("timeInForce", ("GTC", "IOC", "FOK"), code=-1115)
        elif params.get("timeInForce") is not None and btype != "MARKET":
            raise BinanceError(-1106, "Parameter 'timeInForce' sent when not required.")
        if btype in ("LIMIT", "LIMIT_MAKER", "STOP_LOSS_LIMIT"):
            price = params.amount("price", m.quote_decimals)
            quantity = params.amount("quantity", m.base_decimals)
        elif btype == "MARKET":
            has_qty, has_quote = params.get("quantity") is not None, params.get("quoteOrderQty") is not None
            if has_qty == has_quote:
                raise BinanceError(-1102, "Param 'quantity' or 'quoteOrderQty' must be sent, but not both.")
            if has_qty:
                quantity = params.amount("quantity", m.base_decimals)
            else:
                quote = params.amount("quoteOrderQty", m.quote_decimals)
            tif = "IOC"
        else:  # STOP_LOSS (stop-market)
            quantity = params.amount("quantity", m.base_decimals)
        if btype in ("STOP_LOSS", "STOP_LOSS_LIMIT"):
            stop = params.amount("stopPrice", m.quote_decimals)
        coid = params.get("newClientOrderId") or "rf-" + secrets.token_hex(10)
        if not _valid_coid(coid):
            raise BinanceError(-1100, "Illegal characters found in parameter 'newClientOrderId'; legal range is '^[\\.A-Z\\:/a-z0-9_-]{1,36}$'.")
        stp = params.choice("selfTradePreventionMode", STP_MODES, default="NONE")
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
        events = await self.ex.submit(command)
        accepted = None
        for e in events:
            if isinstance(e, OrderRejected):
                raise from_order_rejection(e.reason, e.message, e.field)
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
        params, owner = await self.gate.signed(request, "trade", weight=1)
        self.place_command(params, owner)  # validation only; nothing is journaled
        return {}

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
        m = self.market(params)
        return self.order_view(m, self._find(params, owner, m, -2013))

    async def cancel_order(self, request: Request) -> dict[str, Any]:
        params, owner = await self.gate.signed(request, "trade", weight=1)
        m = self.market(params)
        record = self._find(params, owner, m, -2011)
        events = await self.ex.submit(CancelOrder(owner=owner, symbol=m.symbol, order_id=record.order_id))
        for e in events:
            if isinstance(e, OrderRejected):
                raise from_order_rejection(e.reason, e.message, e.field)
        view = self.order_view(m, record, transact=True)
        view["origClientOrderId"] = record.client_order_id
        return view

    async def cancel_all(self, request: Request) -> list[dict[str, Any]]:
        params, owner = await self.gate.signed(request, "trade", weight=1)
        m = self.market(params)
        before = {r.order_id for r in self.ex.history.open_orders(owner, m.symbol)}
        events = await self.ex.submit(CancelAll(owner=owner, symbol=m.symbol))
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
        symbol = params.get("symbol")
        if symbol is not None and not self.ex.has_market(symbol):
            raise BinanceError(-1121, "Invalid symbol.")
        records = self.ex.history.open_orders(owner, symbol)
        return [self.order_view(self.ex.market(r.symbol), r) for r in sorted(records, key=lambda r: r.order_id)]

    async def all_orders(self, request: Request) -> list[dict[str, Any]]:
        params, owner = await self.gate.signed(request, "read", weight=20)
        m = self.market(params)
        limit = params.integer("limit", default=500, low=1, high=1000)
        start = params.integer("startTime", default=0)
        end = params.integer("endTime", default=2**62)
        from_id = params.integer("orderId", default=0)
        rows = [r for r in self.ex.history.all_orders(owner, m.symbol) if start <= r.time_ms <= end and r.order_id >= from_id]
        rows = rows[:limit] if (start or from_id) else rows[-limit:]
        return [self.order_view(m, r) for r in rows]

    async def my_trades(self, request: Request) -> list[dict[str, Any]]:
        params, owner = await self.gate.signed(request, "read", weight=20)
        m = self.market(params)
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
        return {"listenKey": self.gate.listen_keys.create(owner)}

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


def _signed(text: str, value: int) -> str:
    return "-" + text if value < 0 else text


def _valid_coid(coid: str) -> bool:
    import re

    return re.fullmatch(r"[.A-Za-z0-9:/_\-]{1,36}", coid) is not None


def _symbol_list(raw: str) -> list[str]:
    try:
        value = json.loads(raw)
    except ValueError:
        raise BinanceError(-1100, "Illegal characters found in parameter 'symbols'; send a JSON array such as [\"BTCUSDT\",\"ETHUSDT\"].") from None
    if not isinstance(value, list) or not value or len(value) > 100 or not all(isinstance(s, str) for s in value):
        raise BinanceError(-1100, "Illegal characters found in parameter 'symbols'; send a JSON array of 1-100 symbol strings.")
    return value


def build_router(api: BinanceApi) -> APIRouter:
    router = APIRouter(prefix="/api/v3", tags=["binance spot v3"])

    def add(path: str, method: str, fn: Callable[[Request], Awaitable[Any]], weight: int, doc: dict[str, Any], summary: str) -> None:
        async def endpoint(request: Request) -> Response:
            try:
                await api.gate.charge(request, weight)
                result = await fn(request)
            except BinanceError as err:
                return JSONResponse(err.body(), status_code=err.status, headers=err.headers)
            except RingfenceError as err:
                mapped = from_ringfence(err)
                return JSONResponse(mapped.body(), status_code=mapped.status, headers=mapped.headers)
            return JSONResponse(result)

        endpoint.__name__ = f"{method.lower()}_{path.strip('/').replace('/', '_') or 'root'}"
        router.add_api_route(path, endpoint, methods=[method], summary=summary, openapi_extra=doc, response_model=None)

    add("/ping", "GET", api.ping, 1, _doc(), "Test connectivity")
    add("/time", "GET", api.time, 1, _doc(), "Server time (ms)")
    add("/exchangeInfo", "GET", api.exchange_info, 20, _doc("symbol", "symbols"), "Markets, filters and rate limits")
    add("/depth", "GET", api.depth, 5, _doc("symbol", "limit", required=("symbol",)), "Order book snapshot")
    add("/trades", "GET", api.trades, 10, _doc("symbol", "limit", required=("symbol",)), "Recent trades")
    add("/aggTrades", "GET", api.agg_trades, 2, _doc("symbol", "limit", "startTime", "endTime", "fromId", required=("symbol",)), "Aggregate trades")
    add("/klines", "GET", api.klines, 2, _doc("symbol", "interval", "limit", "startTime", "endTime", required=("symbol", "interval")), "Candlesticks")
    add("/ticker/24hr", "GET", api.ticker_24hr, 2, _doc("symbol", "symbols"), "24 h statistics")
    add("/ticker/price", "GET", api.ticker_price, 2, _doc("symbol", "symbols"), "Last price")
    add("/ticker/bookTicker", "GET", api.book_ticker, 2, _doc("symbol", "symbols"), "Best bid and ask")
    add("/account", "GET", api.account, 20, _doc(signed=True), "Balances (signed)")
    order_params = ("symbol", "side", "type", "timeInForce", "quantity", "quoteOrderQty", "price", "newClientOrderId", "stopPrice", "newOrderRespType", "selfTradePreventionMode")
    add("/order", "POST", api.new_order, 1, _doc(*order_params, required=("symbol", "side", "type"), signed=True), "New order (signed)")
    add("/order/test", "POST", api.test_order, 1, _doc(*order_params, required=("symbol", "side", "type"), signed=True), "Validate a new order without placing it (signed)")
    add("/order", "GET", api.get_order, 4, _doc("symbol", "orderId", "origClientOrderId", required=("symbol",), signed=True), "Query order (signed)")
    add("/order", "DELETE", api.cancel_order, 1, _doc("symbol", "orderId", "origClientOrderId", required=("symbol",), signed=True), "Cancel order (signed)")
    add("/openOrders", "GET", api.open_orders, 6, _doc("symbol", signed=True), "Open orders (signed)")
    add("/openOrders", "DELETE", api.cancel_all, 1, _doc("symbol", required=("symbol",), signed=True), "Cancel all open orders on a symbol (signed)")
    add("/allOrders", "GET", api.all_orders, 20, _doc("symbol", "orderId", "startTime", "endTime", "limit", required=("symbol",), signed=True), "All orders (signed)")
    add("/myTrades", "GET", api.my_trades, 20, _doc("symbol", "orderId", "startTime", "endTime", "fromId", "limit", required=("symbol",), signed=True), "Account trades (signed)")
    key_doc = {"parameters": [{"name": "X-MBX-APIKEY", "in": "header", "required": True, "schema": {"type": "string"}}], "responses": dict(ERROR_RESPONSES)}
    add("/userDataStream", "POST", api.user_stream_new, 2, key_doc, "Start a user data stream")
    add("/userDataStream", "PUT", api.user_stream_keepalive, 2, _doc("listenKey", required=("listenKey",)), "Keep a user data stream alive")
    add("/userDataStream", "DELETE", api.user_stream_close, 2, _doc("listenKey", required=("listenKey",)), "Close a user data stream")
    return router
