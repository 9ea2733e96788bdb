"""Binance USDⓈ-M futures endpoints over the `derivatives` module (the subset ccxt `binanceusdm`
needs to load markets, move collateral, set leverage and margin type, trade and read positions).

Symbols: the futures API names a perpetual as Binance does (`BTCUSDT`); inside the engine it is
`BTCUSDTPERP` (`<BASE><QUOTE>PERP`), so it never clashes with the spot market `BTCUSDT`. Amounts
are integers inside and decimal strings at this edge (the quote asset's decimals for money and
prices, the base asset's for quantities); a value with more decimals than that is refused.
"""

from __future__ import annotations

import time
from typing import Any, Awaitable, Callable

from fastapi import APIRouter, Request

from ..engine.core import CommandRejected
from ..errors import InsufficientFunds, RingfenceError
from ..money import format_amount, parse_amount
from ..trading.commands import CancelOrder, OrderAccepted, OrderRejected
from ..api.binance import EndpointParams, _doc, add_binance_route
from ..api.binance_errors import BinanceError, from_order_rejection, from_ringfence
from ..api.gateway import Params
from ..index.view import rate_text
from ..risk.halts import market_status
from .commands import (
    AdjustIsolatedMargin,
    CancelConditionalOrder,
    ConditionalOrderAccepted,
    ConditionalOrderTriggered,
    FuturesTransfer,
    PlaceConditionalOrder,
    PlacePerpOrder,
    SetLeverage,
    SetMarginType,
)
from .conditional import CONDITIONAL_TYPES, MAX_CALLBACK_BP, MIN_CALLBACK_BP, WORKING_TYPES
from .adl import adl_quantiles
from .state import (
    PPM,
    account_summary,
    bracket_for,
    ceil_div,
    derivatives_state,
    maint_margin,
    mark_of_perp,
    notional_at,
    unrealized,
)

__all__ = ["FuturesApi", "build_futures_router", "FAPI_PARAMS", "external_symbol", "SUFFIX", "adl_order_updates"]

SUFFIX = "PERP"
ADL_REFRESH_S = 1.0  # float-ok: a cache age in seconds, not money
_ORDER = ("symbol", "side", "type", "quantity", "price", "timeInForce", "reduceOnly", "newClientOrderId", "positionSide",
          "newOrderRespType", "stopPrice", "workingType", "priceProtect", "selfTradePreventionMode", "priceMatch", "goodTillDate")
#: What the algo-order API (`POST /fapi/v1/algoOrder`, ccxt 4.5's conditional orders) may send.
_ALGO = ("algoType", "symbol", "side", "positionSide", "type", "timeInForce", "quantity", "price", "triggerPrice",
         "workingType", "priceMatch", "closePosition", "priceProtect", "reduceOnly", "activatePrice", "callbackRate",
         "clientAlgoId", "selfTradePreventionMode", "goodTillDate", "newOrderRespType")
FAPI_PARAMS: dict[tuple[str, str], EndpointParams] = {
    ("POST", "/sapi/v1/asset/transfer"): EndpointParams(("type", "asset", "amount", "fromSymbol", "toSymbol"), ("type", "asset", "amount"), signed=True),
    ("GET", "/fapi/v1/exchangeInfo"): EndpointParams(),
    ("GET", "/fapi/v1/ping"): EndpointParams(),
    ("GET", "/fapi/v1/time"): EndpointParams(),
    ("POST", "/fapi/v1/order"): EndpointParams(_ORDER, ("symbol", "side", "type"), signed=True),
    ("DELETE", "/fapi/v1/order"): EndpointParams(("symbol", "orderId", "origClientOrderId"), ("symbol",), signed=True),
    ("GET", "/fapi/v1/order"): EndpointParams(("symbol", "orderId", "origClientOrderId"), ("symbol",), signed=True),
    ("GET", "/fapi/v1/openOrders"): EndpointParams(("symbol",), signed=True),
    ("POST", "/fapi/v1/leverage"): EndpointParams(("symbol", "leverage"), ("symbol", "leverage"), signed=True),
    ("POST", "/fapi/v1/marginType"): EndpointParams(("symbol", "marginType"), ("symbol", "marginType"), signed=True),
    ("POST", "/fapi/v1/positionMargin"): EndpointParams(("symbol", "amount", "type", "positionSide"), ("symbol", "amount", "type"), signed=True),
    ("POST", "/fapi/v1/algoOrder"): EndpointParams(_ALGO, ("algoType", "symbol", "side", "type"), signed=True),
    ("DELETE", "/fapi/v1/algoOrder"): EndpointParams(("symbol", "algoId", "clientAlgoId"), signed=True),
    ("GET", "/fapi/v1/algoOrder"): EndpointParams(("symbol", "algoId", "clientAlgoId"), signed=True),
    ("GET", "/fapi/v1/openAlgoOrders"): EndpointParams(("algoType", "symbol", "algoId"), signed=True),
    ("DELETE", "/fapi/v1/algoOpenOrders"): EndpointParams(("symbol",), ("symbol",), signed=True),
    ("GET", "/fapi/v1/leverageBracket"): EndpointParams(("symbol",), signed=True),
    ("GET", "/fapi/v2/positionRisk"): EndpointParams(("symbol",), signed=True),
    ("GET", "/fapi/v3/positionRisk"): EndpointParams(("symbol",), signed=True),
    ("GET", "/fapi/v1/adlQuantile"): EndpointParams(("symbol",), signed=True),
    ("GET", "/fapi/v2/account"): EndpointParams(signed=True),
    ("GET", "/fapi/v3/account"): EndpointParams(signed=True),
    # market data (public): the spot read models' views of the perpetual's market
    ("GET", "/fapi/v1/depth"): EndpointParams(("symbol", "limit"), ("symbol",)),
    ("GET", "/fapi/v1/trades"): EndpointParams(("symbol", "limit"), ("symbol",)),
    ("GET", "/fapi/v1/aggTrades"): EndpointParams(("symbol", "fromId", "startTime", "endTime", "limit"), ("symbol",)),
    ("GET", "/fapi/v1/klines"): EndpointParams(("symbol", "interval", "startTime", "endTime", "limit"), ("symbol", "interval")),
    ("GET", "/fapi/v1/markPriceKlines"): EndpointParams(("symbol", "interval", "startTime", "endTime", "limit"), ("symbol", "interval")),
    ("GET", "/fapi/v1/indexPriceKlines"): EndpointParams(("pair", "interval", "startTime", "endTime", "limit"), ("pair", "interval")),
    ("GET", "/fapi/v1/ticker/24hr"): EndpointParams(("symbol",)),
    ("GET", "/fapi/v1/ticker/price"): EndpointParams(("symbol",)),
    ("GET", "/fapi/v2/ticker/price"): EndpointParams(("symbol",)),
    ("GET", "/fapi/v1/ticker/bookTicker"): EndpointParams(("symbol",)),
    ("GET", "/fapi/v1/fundingRate"): EndpointParams(("symbol", "startTime", "endTime", "limit")),
    ("GET", "/fapi/v1/openInterest"): EndpointParams(("symbol",), ("symbol",)),
    # history (signed): the futures read model (derivatives/history.py)
    ("GET", "/fapi/v1/userTrades"): EndpointParams(("symbol", "orderId", "startTime", "endTime", "fromId", "limit"), ("symbol",), signed=True),
    ("GET", "/fapi/v1/income"): EndpointParams(("symbol", "incomeType", "startTime", "endTime", "page", "limit"), signed=True),
    # the user data stream (API key only, as Binance)
    ("POST", "/fapi/v1/listenKey"): EndpointParams(),
    ("PUT", "/fapi/v1/listenKey"): EndpointParams(("listenKey",)),
    ("DELETE", "/fapi/v1/listenKey"): EndpointParams(("listenKey",)),
}

#: Binance's income types; ringfence writes TRANSFER, REALIZED_PNL, COMMISSION and FUNDING_FEE.
INCOME_TYPES = ("TRANSFER", "WELCOME_BONUS", "REALIZED_PNL", "FUNDING_FEE", "COMMISSION", "INSURANCE_CLEAR", "REFERRAL_KICKBACK",
                "COMMISSION_REBATE", "API_REBATE", "CONTEST_REWARD", "CROSS_COLLATERAL_TRANSFER", "OPTIONS_PREMIUM_FEE",
                "OPTIONS_SETTLE_PROFIT", "INTERNAL_TRANSFER", "AUTO_EXCHANGE", "DELIVERED_SETTELMENT", "COIN_SWAP_DEPOSIT",
                "COIN_SWAP_WITHDRAW", "POSITION_LIMIT_INCREASE_FEE", "STRATEGY_UMFUTURES_TRANSFER", "FEE_RETURN", "BFUSD_REWARD")


#: Order rejections of a perpetual -> Binance futures codes.
_REJECTIONS = {
    "MARGIN_INSUFFICIENT": (-2019, "Margin is insufficient."),
    "REDUCE_ONLY_REJECTED": (-2022, "ReduceOnly Order is rejected."),
    "CONCENTRATION_LIMIT": (-2027, "Exceeded the maximum allowable position at current leverage."),
    "OPEN_INTEREST_CAP": (-2027, "Exceeded the maximum allowable position at current leverage."),
    "STOP_WOULD_TRIGGER_IMMEDIATELY": (-2021, "Order would immediately trigger."),
}


def external_symbol(internal: str) -> str:
    return internal[: -len(SUFFIX)] if internal.endswith(SUFFIX) else internal


def _ms(ns: int) -> int:
    return ns // 1_000_000


def _price_and_tif(params: Params, qd: int, priced: bool, market_tif: str) -> tuple[int, str]:
    """A priced order's limit price and time in force; a market-priced one sends no price and gets
    `market_tif` (plain orders and conditional ones alike)."""
    if priced:
        return (parse_amount(params.require("price"), qd, field="price"),
                params.choice("timeInForce", ("GTC", "IOC", "FOK"), default="GTC"))
    if params.get("price") is not None:
        raise BinanceError(-1106, "Parameter 'price' sent when not required.")
    return 0, market_tif


def _order_error(e: OrderRejected) -> BinanceError:
    if e.reason in _REJECTIONS:
        code, text = _REJECTIONS[e.reason]
        return BinanceError(code, f"{text} ({e.message})" if e.message and e.message != text else text)
    return from_order_rejection(e.reason, e.message, e.field)


#: The engine's names of conditional-order fields -> the algo-order API's (errors name what was sent).
_ALGO_FIELDS = {"trigger_price": "triggerPrice", "activation_price": "activatePrice", "callback_bp": "callbackRate",
                "close_position": "closePosition", "reduce_only": "reduceOnly", "client_algo_id": "clientAlgoId",
                "working_type": "workingType", "order_type": "type"}


def _binance_names(message: str) -> str:
    for inner, outer in _ALGO_FIELDS.items():
        message = message.replace(inner, outer)
    return message


def _refusal(err: RingfenceError) -> BinanceError:
    if err.code == "RF_WOULD_TRIGGER":
        return BinanceError(-2021, f"Order would immediately trigger. ({err.message})")
    if err.code == "RF_LOT_SIZE":  # a plain order's LOT_SIZE answer (-1013), with what is wrong
        base = from_order_rejection("QTY_ABOVE_MAX", err.message, err.field or "quantity")
        return BinanceError(base.code, f"{base.msg} ({err.message})")
    if err.code == "RF_VALIDATION" and "tick size" in err.message:
        return BinanceError(-4014, f"Price not increased by tick size. ({err.message})")
    if err.code == "RF_VALIDATION" and "lot size" in err.message:
        return BinanceError(-4023, f"Quantity not increased by step size. ({err.message})")
    if isinstance(err, InsufficientFunds) or err.code == "RF_INSUFFICIENT_FUNDS":
        return BinanceError(-2019 if err.field != "leverage" else -4028, f"Margin is insufficient. ({err.message})")
    if err.field == "symbol" and err.code == "RF_NOT_FOUND":
        return BinanceError(-1121, "Invalid symbol.")
    if err.code == "RF_VALIDATION":
        codes = {"leverage": -4028, "marginType": -4048, "type": -1100, "amount": -4003}
        return BinanceError(codes.get(err.field or "", -1100), err.message)
    return from_ringfence(err)


class FuturesApi:
    def __init__(self, exchange: Any, gate: Any, spot: Any = None) -> None:
        from ..api.binance import BinanceApi

        self.ex = exchange
        self.gate = gate
        #: The spot API: its market-data views (depth, trades, klines, ticker) serve a perpetual's
        #: market too, from the same read models; this API names the symbol as Binance USDⓈ-M does.
        self.spot = spot if spot is not None else BinanceApi(exchange, gate)
        #: (symbol, long side) -> (when, {owner: ADL quantile}): a ranking is one pass over
        #: the market's positions, so it is recomputed at most every ADL_REFRESH_S (Binance: 30 s),
        #: or at once for a position it does not list yet. One entry per market side: bounded.
        self._adl: dict[tuple[str, bool], tuple[float, dict[str, int]]] = {}

    def _adl_quantile(self, engine: Any, p: Any, owner: str, long_side: bool) -> int:
        key = (p.symbol, long_side)
        hit = self._adl.get(key)
        now = time.monotonic()
        if hit is None or now - hit[0] > ADL_REFRESH_S or owner not in hit[1]:
            hit = (now, adl_quantiles(engine, p, long_side))
            self._adl[key] = hit
        return hit[1].get(owner, 0)

    # ------------------------------------------------------------------ helpers

    def _perp(self, params: Params, engine: Any | None = None) -> Any:
        symbol = params.require("symbol")
        internal = symbol + SUFFIX

        def find(engine: Any) -> Any:
            st = derivatives_state(engine)
            p = st.perps.get(internal)
            if p is None:
                return None
            ledger = engine.ledger
            return (p.symbol, p.quote, ledger.assets.get(p.quote).decimals, ledger.assets.get(p.base).decimals)

        found = find(engine) if engine is not None else self.ex.read(find)
        if found is None:
            raise BinanceError(-1121, "Invalid symbol.")
        return found

    async def _submit(self, command: Any) -> list[Any]:
        try:
            events = await self.ex.submit(command)
        except RingfenceError as err:
            raise _refusal(err) from err
        for e in events:
            if isinstance(e, CommandRejected):
                raise _refusal(_as_error(e))
        return events  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ public

    async def ping(self, request: Request) -> dict[str, Any]:
        return {}

    async def server_time(self, request: Request) -> dict[str, Any]:
        return {"serverTime": time.time_ns() // 1_000_000}

    async def exchange_info(self, request: Request) -> dict[str, Any]:
        def read(engine: Any) -> list[dict[str, Any]]:
            st = derivatives_state(engine)
            trading = engine.components["trading"]
            ledger = engine.ledger
            out = []
            for sym in sorted(st.perps):
                p = st.perps[sym]
                m = trading.markets[sym]
                qd, bd = ledger.assets.get(p.quote).decimals, ledger.assets.get(p.base).decimals
                # the graded halts on the market, its segment, assets or the venue count too (as on
                # spot's exchangeInfo), not only the market's own band state
                status = {"ACTIVE": "TRADING", "REDUCE_ONLY": "SETTLING", "HALTED": "HALT"}.get(market_status(engine, sym), "HALT")
                price_precision = qd - (len(str(m.tick)) - len(str(m.tick).rstrip("0")))
                qty_precision = bd - (len(str(m.lot)) - len(str(m.lot).rstrip("0")))
                b0 = p.brackets[0]
                out.append({
                    "symbol": external_symbol(sym), "pair": external_symbol(sym), "contractType": "PERPETUAL",
                    "deliveryDate": 4133404800000, "onboardDate": 1569398400000, "status": status,
                    "maintMarginPercent": format_amount(b0.mmr_ppm * 100, 6), "requiredMarginPercent": format_amount(ceil_div(100 * PPM, b0.max_leverage), 6),
                    "baseAsset": p.base, "quoteAsset": p.quote, "marginAsset": p.quote,
                    "pricePrecision": max(price_precision, 0), "quantityPrecision": max(qty_precision, 0),
                    "baseAssetPrecision": bd, "quotePrecision": qd, "underlyingType": "COIN", "underlyingSubType": [],
                    "settlePlan": 0, "triggerProtect": "0.0500", "liquidationFee": "0.012500", "marketTakeBound": "0.05",
                    "maxMoveOrderLimit": 10000,
                    "filters": [
                        {"filterType": "PRICE_FILTER", "minPrice": format_amount(m.tick, qd), "maxPrice": format_amount(10**30 // 10**qd * 10**qd, qd),
                         "tickSize": format_amount(m.tick, qd)},
                        {"filterType": "LOT_SIZE", "minQty": format_amount(m.min_qty, bd), "maxQty": format_amount(m.max_qty, bd),
                         "stepSize": format_amount(m.lot, bd)},
                        {"filterType": "MARKET_LOT_SIZE", "minQty": format_amount(m.min_qty, bd), "maxQty": format_amount(m.max_qty, bd),
                         "stepSize": format_amount(m.lot, bd)},
                        {"filterType": "MAX_NUM_ORDERS", "limit": m.max_open_per_account},
                        {"filterType": "MIN_NOTIONAL", "notional": format_amount(m.min_notional, qd)},
                    ],
                    "orderTypes": ["LIMIT", "MARKET", *CONDITIONAL_TYPES], "timeInForce": ["GTC", "IOC", "FOK"],
                    "internalSymbol": sym,
                })
            return out

        symbols = self.ex.read(read)
        assets = sorted({s["marginAsset"] for s in symbols})
        return {
            "timezone": "UTC", "serverTime": time.time_ns() // 1_000_000, "futuresType": "U_MARGINED",
            "rateLimits": [{"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 2400}],
            "exchangeFilters": [], "assets": [{"asset": a, "marginAvailable": True, "autoAssetExchange": None} for a in assets],
            "symbols": symbols,
        }

    # ------------------------------------------------------------------ collateral

    async def transfer(self, request: Request) -> dict[str, Any]:
        params, owner = await self.gate.signed(request, "trade", weight=1)
        kind = params.choice("type", ("MAIN_UMFUTURE", "UMFUTURE_MAIN"), code=-1100)
        for unsupported in ("fromSymbol", "toSymbol"):
            if params.get(unsupported) is not None:
                raise BinanceError(-1106, f"Parameter '{unsupported}' sent when not required: isolated margin accounts are not transferable here.")
        asset = params.require("asset").upper()
        decimals = self.ex.read(lambda e: e.ledger.assets.get(asset).decimals if asset in e.ledger.assets else None)
        if decimals is None:
            raise BinanceError(-4003, f"Unknown asset {asset}.")
        amount = parse_amount(params.require("amount"), decimals, field="amount")
        if amount <= 0:
            raise BinanceError(-4003, "Quantity less than or equal to zero.")
        events = await self._submit(FuturesTransfer(owner, asset, amount, kind))
        return {"tranId": next(e.tran_id for e in events if hasattr(e, "tran_id"))}

    async def leverage(self, request: Request) -> dict[str, Any]:
        params, owner = await self.gate.signed(request, "trade", weight=1)
        sym, quote, qd, _ = self._perp(params)
        lev = params.integer("leverage", low=1, high=125)
        events = await self._submit(SetLeverage(owner, sym, lev))
        e = next(e for e in events if hasattr(e, "max_notional"))
        return {"leverage": e.leverage, "maxNotionalValue": format_amount(e.max_notional, qd, trim=True), "symbol": external_symbol(sym)}

    async def margin_type(self, request: Request) -> dict[str, Any]:
        params, owner = await self.gate.signed(request, "trade", weight=1)
        sym, *_ = self._perp(params)
        kind = params.require("marginType").upper()
        if kind == "CROSS":
            kind = "CROSSED"
        await self._submit(SetMarginType(owner, sym, kind))
        return {"code": 200, "msg": "success"}

    async def position_margin(self, request: Request) -> dict[str, Any]:
        params, owner = await self.gate.signed(request, "trade", weight=1)
        sym, quote, qd, _ = self._perp(params)
        action = params.integer("type", low=1, high=2)
        amount = parse_amount(params.require("amount"), qd, field="amount")
        if amount <= 0:
            raise BinanceError(-4003, "Quantity less than or equal to zero.")
        await self._submit(AdjustIsolatedMargin(owner, sym, amount, action))
        return {"amount": format_amount(amount, qd, trim=True), "code": 200,
                "msg": "Successfully modify position margin.", "type": action}

    # ------------------------------------------------------------------ orders

    async def new_order(self, request: Request) -> dict[str, Any]:
        params, owner = await self.gate.signed(request, "trade", weight=1)
        sym, quote, qd, bd = self._perp(params)
        side = params.choice("side", ("BUY", "SELL"))
        typ = params.choice("type", ("LIMIT", "MARKET"), code=-1116)
        if (params.get("positionSide") or "BOTH") != "BOTH":
            raise BinanceError(-4061, "Order's position side does not match user's setting: one-way mode only (positionSide BOTH).")
        for unsupported in ("stopPrice", "priceMatch", "goodTillDate"):
            if params.get(unsupported) is not None:
                raise BinanceError(-1106, f"Parameter '{unsupported}' sent when not required: {typ} orders only here.")
        qty = parse_amount(params.require("quantity"), bd, field="quantity")
        reduce_only = params.boolean("reduceOnly", default=False)
        price, tif = _price_and_tif(params, qd, typ == "LIMIT", "IOC")
        coid = params.get("newClientOrderId") or ""
        stp = params.get("selfTradePreventionMode")
        if stp not in (None, "NONE", "EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"):
            raise BinanceError(-1100, "Illegal characters found in parameter 'selfTradePreventionMode'.")
        record = await self._place(PlacePerpOrder(owner, sym, side, typ, tif, price, qty, 0, coid, int(reduce_only)))
        return self._order_view(record, qd, bd, reduce_only)

    async def _place(self, command: PlacePerpOrder) -> Any:
        """Submit a perpetual order; its order record, or the Binance error of its rejection."""
        events = await self._submit(command)
        # the orders conditional orders became in the same command (before it, or fired by its
        # trades) are not this one
        fired = {e.order_id for e in events if isinstance(e, ConditionalOrderTriggered)}
        accepted = None
        for e in events:
            if isinstance(e, OrderRejected):
                raise _order_error(e)
            if isinstance(e, OrderAccepted) and e.order_id not in fired and accepted is None:
                accepted = e
        if accepted is None:
            raise BinanceError(-1000, "The order was not accepted; try again.", 500)
        record = self.ex.history.orders.get(accepted.order_id)
        if record is None:
            raise BinanceError(-1000, "The order was accepted but its record is not available yet.", 500)
        return record

    # ------------------------------------------------------------------ algo (conditional) orders

    async def new_algo_order(self, request: Request) -> dict[str, Any]:
        """A conditional order (ccxt 4.5 sends every stop, take-profit and trailing stop here):
        `PlaceConditionalOrder` (derivatives/conditional.py); `algoId` is its id, and the order it
        becomes when it fires is `actualOrderId`."""
        params, owner = await self.gate.signed(request, "trade", weight=1)
        if params.require("algoType") != "CONDITIONAL":
            raise BinanceError(-1100, "Illegal characters found in parameter 'algoType'; legal value: CONDITIONAL.")
        sym, quote, qd, bd = self._perp(params)
        side = params.choice("side", ("BUY", "SELL"))
        typ = params.require("type")
        if typ not in CONDITIONAL_TYPES:
            raise BinanceError(-1116, f"Invalid orderType: {typ[:40]}; the algo-order API takes {', '.join(CONDITIONAL_TYPES)}.")
        take_profit, trailing, places = CONDITIONAL_TYPES[typ]
        if (params.get("positionSide") or "BOTH") != "BOTH":
            raise BinanceError(-4061, "Order's position side does not match user's setting: one-way mode only (positionSide BOTH).")
        working = params.choice("workingType", WORKING_TYPES, default="CONTRACT_PRICE")
        if params.boolean("priceProtect", default=False):
            raise BinanceError(-1106, "Parameter 'priceProtect' is not supported: the market's price band protects every triggered order.")
        for unsupported in ("priceMatch", "goodTillDate"):
            if params.get(unsupported) not in (None, "NONE", "0"):
                raise BinanceError(-1106, f"Parameter '{unsupported}' sent when not required.")
        close = params.boolean("closePosition", default=False)
        reduce_only = params.boolean("reduceOnly", default=False)
        if close:
            if places != "MARKET" or trailing:
                raise BinanceError(-4136, f"Target strategy invalid for orderType {typ},closePosition true")
            if params.get("quantity") is not None:
                raise BinanceError(-4137, "Quantity must be zero with closePosition equals true (parameter 'quantity').")
            if params.get("reduceOnly") is not None:
                raise BinanceError(-1106, "Parameter 'reduceOnly' sent when not required (closePosition closes the whole position).")
        qty = 0 if close else params.amount("quantity", bd)
        trigger = callback_bp = activation = 0
        if trailing:
            if params.get("triggerPrice") is not None:
                raise BinanceError(-1106, "Parameter 'triggerPrice' sent when not required (TRAILING_STOP_MARKET: callbackRate, activatePrice).")
            callback_bp = params.amount("callbackRate", 2)  # percent with 2 decimals = basis points
            if not MIN_CALLBACK_BP <= callback_bp <= MAX_CALLBACK_BP:
                raise BinanceError(-1100, f"Illegal characters found in parameter 'callbackRate'; legal range is '0.1' to '10' (percent), "
                                          f"got '{params.get('callbackRate')}'.")
            activation = params.amount("activatePrice", qd, required=False)
        else:
            for trailing_only in ("callbackRate", "activatePrice"):
                if params.get(trailing_only) is not None:
                    raise BinanceError(-1106, f"Parameter '{trailing_only}' sent when not required (TRAILING_STOP_MARKET only).")
            trigger = params.amount("triggerPrice", qd)
        price, tif = _price_and_tif(params, qd, places == "LIMIT", "GTC")
        coid = params.get("clientAlgoId") or ""
        try:
            events = await self._submit(PlaceConditionalOrder(owner, sym, side, typ, qty, trigger, price, tif, working, int(reduce_only),
                                                              int(close), callback_bp, activation, coid))
        except BinanceError as err:
            raise BinanceError(err.code, _binance_names(err.msg), err.status) from err
        accepted = next(e for e in events if isinstance(e, ConditionalOrderAccepted))
        record = self.ex.futures.algos.get(accepted.algo_id)
        if record is None:
            raise BinanceError(-1000, "The order was accepted but its record is not available yet.", 500)
        return self._algo_view(record, qd, bd)

    def _find_algo(self, params: Params, owner: str) -> tuple[Any, int, int]:
        algo_id = params.integer("algoId", default=0)
        caid = params.get("clientAlgoId") or ""
        if not algo_id and not caid:
            raise BinanceError(-1102, "Param 'algoId' or 'clientAlgoId' must be sent, but both were empty/null!")
        algos = self.ex.futures.algos
        record = algos.get(algo_id) if algo_id else next(
            (algos[i] for i in reversed(self.ex.futures.algos_of.get(owner, ())) if algos[i].accepted.client_algo_id == caid), None)
        a = record.accepted if record is not None else None
        if a is None or a.owner != owner or (params.get("symbol") and external_symbol(a.symbol) != params.get("symbol")):
            raise BinanceError(-2013, "Order does not exist.")
        qd, bd = self.ex.read(lambda e: _decimals(e, a.symbol))
        return record, qd, bd

    async def cancel_algo_order(self, request: Request) -> dict[str, Any]:
        params, owner = await self.gate.signed(request, "trade", weight=1)
        record, qd, bd = self._find_algo(params, owner)
        if record.status != "NEW":
            raise BinanceError(-2011, f"Unknown order sent: the conditional order is {record.status} "
                                      "(a triggered one is cancelled as the order it became, with DELETE /fapi/v1/order).")
        a = record.accepted
        try:
            await self._submit(CancelConditionalOrder(owner, a.symbol, a.algo_id))
        except BinanceError as err:
            raise BinanceError(-2011, f"Unknown order sent. ({err.msg})") from err
        # Binance answers with the ids only; the algo order's own fields as well here, so a client
        # (ccxt's cancelOrder) reads its status from the answer
        return self._algo_view(record, qd, bd) | {"code": "200", "msg": "success"}

    async def get_algo_order(self, request: Request) -> dict[str, Any]:
        params, owner = await self.gate.signed(request, "read", weight=1)
        record, qd, bd = self._find_algo(params, owner)
        return self._algo_view(record, qd, bd)

    def _open_algos(self, owner: str, symbol: str | None) -> list[tuple[Any, int, int]]:
        """The owner's untriggered conditional orders (of the futures `symbol`, or all), oldest first."""
        algos = self.ex.futures.algos
        rows = [algos[i] for i in self.ex.futures.algos_of.get(owner, ()) if algos[i].status == "NEW"
                and (not symbol or external_symbol(algos[i].accepted.symbol) == symbol)]
        decimals: dict[str, tuple[int, int]] = {}
        out = []
        for r in rows:
            sym = r.accepted.symbol
            if sym not in decimals:
                decimals[sym] = self.ex.read(lambda e, s=sym: _decimals(e, s))
            out.append((r, *decimals[sym]))
        return out

    async def open_algo_orders(self, request: Request) -> list[dict[str, Any]]:
        params, owner = await self.gate.signed(request, "read", weight=1)
        symbol = params.get("symbol")
        if symbol:
            self._perp(params)
        return [self._algo_view(r, qd, bd) for r, qd, bd in self._open_algos(owner, symbol)]

    async def cancel_open_algo_orders(self, request: Request) -> dict[str, Any]:
        params, owner = await self.gate.signed(request, "trade", weight=1)
        self._perp(params)
        for r, _, _ in self._open_algos(owner, params.require("symbol")):
            try:
                await self._submit(CancelConditionalOrder(owner, r.accepted.symbol, r.accepted.algo_id))
            except BinanceError:
                pass  # it fired or was cancelled meanwhile
        return {"code": 200, "msg": "The operation of cancel all open order is done."}

    def _algo_view(self, r: Any, qd: int, bd: int) -> dict[str, Any]:
        """Binance's algo-order shape. Untriggered: NEW; cancelled or expired untriggered: CANCELED /
        EXPIRED; fired: TRIGGERED while the order it became works, FINISHED once that order is done
        (or was refused: `actualOrderId` empty)."""
        a = r.accepted
        status = r.status
        actual = self.ex.history.orders.get(r.order_id) if r.order_id else None
        executed, cum_quote = (actual.executed, actual.cum_quote) if actual is not None else (0, 0)
        if status == "TRIGGERED" and (actual is None or str(actual.status) in ("FILLED", "CANCELED", "EXPIRED", "REJECTED")):
            status = "FINISHED"
        avg = cum_quote * 10**bd // executed if executed else 0
        fmt = format_amount
        return {
            "algoId": a.algo_id, "clientAlgoId": a.client_algo_id or f"rf-{a.algo_id}", "algoType": "CONDITIONAL",
            "orderType": a.order_type, "symbol": external_symbol(a.symbol), "side": a.side, "positionSide": "BOTH",
            "timeInForce": a.tif, "quantity": fmt(a.quantity, bd), "algoStatus": status,
            "triggerPrice": fmt(a.trigger_price, qd), "price": fmt(a.price, qd),
            "icebergQuantity": None, "selfTradePreventionMode": "NONE", "workingType": a.working_type,
            "priceMatch": "NONE", "closePosition": bool(a.close_position), "priceProtect": False, "reduceOnly": bool(a.reduce_only),
            "activatePrice": fmt(a.activation_price, qd) if a.activation_price else None,
            "callbackRate": fmt(a.callback_bp, 2, trim=True) if a.callback_bp else None,
            "createTime": r.time_ms, "updateTime": r.update_ms, "triggerTime": r.trigger_ms, "goodTillDate": 0,
            "actualOrderId": str(r.order_id) if r.order_id else "", "actualPrice": fmt(avg, qd) if executed else "",
            "actualQty": fmt(executed, bd) if executed else "", "rejectReason": r.reason or None,
        }

    def _order_view(self, r: Any, qd: int, bd: int, reduce_only: bool = False) -> dict[str, Any]:
        executed = r.executed
        avg = r.cum_quote * 10**bd // executed if executed else 0
        typ = str(r.order_type.value)
        return {
            "orderId": r.order_id, "symbol": external_symbol(r.symbol), "status": str(r.status),
            "clientOrderId": r.client_order_id or f"rf-{r.order_id}", "price": format_amount(r.price, qd),
            "avgPrice": format_amount(avg, qd), "origQty": format_amount(r.quantity, bd),
            "executedQty": format_amount(executed, bd), "cumQty": format_amount(executed, bd),
            "cumQuote": format_amount(r.cum_quote, qd), "timeInForce": str(r.tif.value), "type": typ,
            "reduceOnly": reduce_only, "closePosition": False, "side": str(r.side.value), "positionSide": "BOTH",
            "stopPrice": "0", "workingType": "CONTRACT_PRICE", "priceProtect": False, "origType": typ,
            "priceMatch": "NONE", "selfTradePreventionMode": "NONE", "goodTillDate": 0,
            "updateTime": r.update_ms, "time": r.time_ms,
        }

    def _find(self, params: Params, owner: str, sym: str) -> Any:
        order_id = params.integer("orderId", default=0)
        coid = params.get("origClientOrderId") or ""
        if not order_id and not coid:
            raise BinanceError(-1102, "Param 'origClientOrderId' or 'orderId' must be sent, but both were empty/null!")
        orders = self.ex.history.orders
        record = orders.get(order_id) if order_id else next(
            (o for o in reversed(list(orders.values())) if o.owner == owner and o.symbol == sym and o.client_order_id == coid), None)
        if record is None or record.owner != owner or record.symbol != sym:
            raise BinanceError(-2013, "Order does not exist.")
        return record

    async def cancel_order(self, request: Request) -> dict[str, Any]:
        params, owner = await self.gate.signed(request, "trade", weight=1)
        sym, quote, qd, bd = self._perp(params)
        record = self._find(params, owner, sym)
        events = await self._submit(CancelOrder(owner, sym, record.order_id))
        for e in events:
            if isinstance(e, OrderRejected):
                raise BinanceError(-2011, "Unknown order sent.") if e.reason == "UNKNOWN_ORDER" else _order_error(e)
        return self._order_view(self.ex.history.orders.get(record.order_id) or record, qd, bd)

    async def get_order(self, request: Request) -> dict[str, Any]:
        params, owner = await self.gate.signed(request, "read", weight=1)
        sym, quote, qd, bd = self._perp(params)
        record = self._find(params, owner, sym)
        return self._order_view(record, qd, bd, self.ex.read(lambda e: _is_reduce_only(e, sym, record.order_id)))

    async def open_orders(self, request: Request) -> list[dict[str, Any]]:
        params, owner = await self.gate.signed(request, "read", weight=1)

        def read(engine: Any) -> list[tuple[int, str, int, int, bool]]:
            st = derivatives_state(engine)
            rows = []
            for sym, p in st.perps.items():
                if params.get("symbol") and external_symbol(sym) != params.get("symbol"):
                    continue
                m = engine.components["trading"].markets[sym]
                qd, bd = engine.ledger.assets.get(p.quote).decimals, engine.ledger.assets.get(p.base).decimals
                ro = st.reduce_only_orders.get(sym, set())
                rows += [(oid, sym, qd, bd, oid in ro) for oid in sorted(m.by_owner.get(owner, {}))]
            return rows

        out = []
        for oid, _, qd, bd, reduce_only in self.ex.read(read):
            record = self.ex.history.orders.get(oid)
            if record is not None and record.working:  # untriggered stops: /fapi/v1/openAlgoOrders
                out.append(self._order_view(record, qd, bd, reduce_only))
        return out

    # ------------------------------------------------------------------ market data (public)

    def _market(self, params: Params) -> Any:
        """The perpetual's `MarketInfo` (internal symbol) for the futures symbol sent, or -1121."""
        sym = self._perp(params)[0]
        return self.ex.market(sym)

    def _perp_symbols(self, params: Params) -> tuple[list[str], bool]:
        """(internal symbols, one asked for): `symbol` or every perpetual."""
        if params.get("symbol"):
            return [self._perp(params)[0]], True
        return self.ex.read(lambda engine: sorted(derivatives_state(engine).perps)), False

    async def depth(self, request: Request) -> dict[str, Any]:
        params = await self.gate.params(request)
        m = self._market(params)
        now = time.time_ns() // 1_000_000
        return self.spot.depth_view(m, params) | {"E": now, "T": now}  # type: ignore[no-any-return]

    async def trades(self, request: Request) -> list[dict[str, Any]]:
        params = await self.gate.params(request)
        rows = self.spot.trades_view(self._market(params), params)
        for r in rows:
            del r["isBestMatch"]  # spot only
        return rows  # type: ignore[no-any-return]

    async def agg_trades(self, request: Request) -> list[dict[str, Any]]:
        params = await self.gate.params(request)
        return self.spot.agg_trades_view(self._market(params), params, best_match=False)  # type: ignore[no-any-return]

    async def klines(self, request: Request) -> list[list[Any]]:
        params = await self.gate.params(request)
        return self.spot.klines_view(self._market(params), params)  # type: ignore[no-any-return]

    async def mark_price_klines(self, request: Request) -> list[list[Any]]:
        """Candles of the perpetual's mark price, sampled once a second (derivatives/price_history.py)."""
        params = await self.gate.params(request)
        sym, _, qd, _ = self._perp(params)
        return self._price_klines(params, "mark", sym, qd)

    async def index_price_klines(self, request: Request) -> list[list[Any]]:
        """Candles of the index a perpetual is marked against; `pair` names it (`BTCUSDT`), as on Binance."""
        params = await self.gate.params(request)
        pair = params.require("pair")

        def find(engine: Any) -> int | None:
            for p in derivatives_state(engine).perps.values():
                if p.index_symbol == pair:
                    return int(engine.ledger.assets.get(p.quote).decimals)
            return None

        qd = self.ex.read(find)
        if qd is None:
            raise BinanceError(-1121, "Invalid symbol.")
        return self._price_klines(params, "index", pair, qd)

    def _price_klines(self, params: Params, kind: str, series: str, qd: int) -> list[list[Any]]:
        """Binance's price-kline rows: open time, OHLC, "0" volume, close time, "0", the number of
        samples, then three "0" fields."""
        from ..api.binance import KLINE_INTERVALS
        from ..trading.marketdata import KLINE_INTERVALS_NS

        interval = params.choice("interval", KLINE_INTERVALS)
        limit = params.integer("limit", default=500, low=1, high=1500)
        start = params.integer("startTime", default=0)
        end = params.integer("endTime", default=2**62)
        width_ms = KLINE_INTERVALS_NS[interval] // 1_000_000
        rows = [r for r in self.ex.futures.prices.rows(kind, series, interval) if start <= r[0] // 1_000_000 <= end]
        rows = rows[:limit] if start else rows[-limit:]
        return [[r[0] // 1_000_000, format_amount(r[1], qd), format_amount(r[2], qd), format_amount(r[3], qd),
                 format_amount(r[4], qd), "0", r[0] // 1_000_000 + width_ms - 1, "0", r[5], "0", "0", "0"] for r in rows]

    def _ticker(self, sym: str) -> dict[str, Any]:
        t = self.spot.ticker_view(self.ex.market(sym))
        t["symbol"] = external_symbol(sym)
        return t

    async def ticker_24hr(self, request: Request) -> Any:
        params = await self.gate.params(request)
        syms, single = self._perp_symbols(params)
        views = []
        for sym in syms:
            t = self._ticker(sym)
            # Binance USDⓈ-M's 24 h ticker has no book fields (ccxt reads `bidQty` as a spot ticker)
            for k in ("bidPrice", "bidQty", "askPrice", "askQty", "prevClosePrice"):
                del t[k]
            views.append(t)
        return views[0] if single else views

    async def ticker_price(self, request: Request) -> Any:
        params = await self.gate.params(request)
        syms, single = self._perp_symbols(params)
        views = [{"symbol": t["symbol"], "price": t["lastPrice"], "time": t["closeTime"]} for t in map(self._ticker, syms)]
        return views[0] if single else views

    async def book_ticker(self, request: Request) -> Any:
        params = await self.gate.params(request)
        syms, single = self._perp_symbols(params)
        views = [{k: t[k] for k in ("symbol", "bidPrice", "bidQty", "askPrice", "askQty")} | {"time": t["closeTime"]}
                 for t in map(self._ticker, syms)]
        return views[0] if single else views

    async def funding_rate(self, request: Request) -> list[dict[str, Any]]:
        """Past funding rounds (`FundingSettled`), oldest first: the last `limit`, or from `startTime`."""
        params = await self.gate.params(request)
        syms, _ = self._perp_symbols(params)
        limit = params.integer("limit", default=100, low=1, high=1000)
        start = params.integer("startTime", default=0)
        end = params.integer("endTime", default=2**62)
        qd = self.ex.read(lambda engine: {s: engine.ledger.assets.get(derivatives_state(engine).perps[s].quote).decimals for s in syms})
        rows = sorted((r for s in syms for r in self.ex.futures.funding_of(s) if start <= r["time"] <= end),
                      key=lambda r: (r["time"], r["symbol"]))
        rows = rows[:limit] if start else rows[-limit:]
        return [{"symbol": external_symbol(r["symbol"]), "fundingTime": r["time"],
                 "fundingRate": rate_text(r["rate_ppm"]), "markPrice": format_amount(r["mark"], qd[r["symbol"]])} for r in rows]

    async def open_interest(self, request: Request) -> dict[str, Any]:
        params = await self.gate.params(request)
        sym, _, _, bd = self._perp(params)
        oi = self.ex.read(lambda engine: derivatives_state(engine).perps[sym].open_interest)
        return {"symbol": external_symbol(sym), "openInterest": format_amount(oi, bd), "time": time.time_ns() // 1_000_000}

    # ------------------------------------------------------------------ history (signed)

    async def user_trades(self, request: Request) -> list[dict[str, Any]]:
        params, owner = await self.gate.signed(request, "read", weight=5)
        sym, quote, qd, bd = self._perp(params)
        limit = params.integer("limit", default=500, low=1, high=1000)
        start = params.integer("startTime", default=0)
        end = params.integer("endTime", default=2**62)
        order_id = params.integer("orderId", default=0)
        from_id = params.integer("fromId", default=0)
        if from_id and (params.get("startTime") or params.get("endTime")):
            raise BinanceError(-1106, "Parameter 'fromId' sent when not required: send it without 'startTime' and 'endTime'.")
        rows = [t for t in self.ex.futures.user_trades(owner, sym)
                if start <= t["time"] <= end and (not order_id or t["orderId"] == order_id) and t["id"] >= from_id]
        rows = rows[:limit] if (start or from_id) else rows[-limit:]
        return [{
            "symbol": external_symbol(sym), "id": t["id"], "orderId": t["orderId"], "side": t["side"],
            "price": format_amount(t["price"], qd), "qty": format_amount(t["qty"], bd),
            "realizedPnl": format_amount(t["realizedPnl"], qd), "marginAsset": t["marginAsset"],
            "quoteQty": format_amount(t["quoteQty"], qd), "commission": format_amount(t["commission"], qd),
            "commissionAsset": t["commissionAsset"], "time": t["time"], "positionSide": "BOTH",
            "buyer": t["buyer"], "maker": t["maker"],
        } for t in rows]

    async def income(self, request: Request) -> list[dict[str, Any]]:
        """The futures wallet's income ledger: realised PnL, commissions, funding, transfers."""
        params, owner = await self.gate.signed(request, "read", weight=30)
        sym = self._perp(params)[0] if params.get("symbol") else None
        kind = params.choice("incomeType", INCOME_TYPES) if params.get("incomeType") else None
        limit = params.integer("limit", default=100, low=1, high=1000)
        page = params.integer("page", default=1, low=1, high=10_000)
        start = params.integer("startTime", default=0)
        end = params.integer("endTime", default=2**62)
        rows = [r for r in self.ex.futures.income_of(owner)
                if (sym is None or r["symbol"] == sym) and (kind is None or r["incomeType"] == kind) and start <= r["time"] <= end]
        if start:
            rows = rows[(page - 1) * limit: page * limit]
        else:  # the most recent `limit` (page 1), the `limit` before them (page 2) ...
            stop = max(0, len(rows) - (page - 1) * limit)
            rows = rows[max(0, stop - limit): stop]
        decimals = self.ex.read(lambda engine: {r["asset"]: engine.ledger.assets.get(r["asset"]).decimals for r in rows})
        return [r | {"symbol": external_symbol(r["symbol"]), "income": format_amount(r["income"], decimals[r["asset"]])} for r in rows]

    # ------------------------------------------------------------------ user data stream

    async def listen_key_new(self, request: Request) -> dict[str, Any]:
        owner = await self.gate.key_only(request)
        return {"listenKey": self.gate.listen_keys.create(owner, kind="futures", source=self.gate.key_source(request))}

    async def listen_key_keepalive(self, request: Request) -> dict[str, Any]:
        owner = await self.gate.key_only(request)
        key = self._own_key(await self.gate.params(request), owner)
        self.gate.listen_keys.keepalive(key, owner)
        return {"listenKey": key}

    async def listen_key_close(self, request: Request) -> dict[str, Any]:
        owner = await self.gate.key_only(request)
        self.gate.listen_keys.close(self._own_key(await self.gate.params(request), owner), owner)
        return {}

    def _own_key(self, params: Params, owner: str) -> str:
        """Binance's futures endpoints name no key (an account has one); a key sent must be it."""
        key = self.gate.listen_keys.futures_key(owner)
        sent = params.get("listenKey")
        if sent is not None and sent != key:
            raise BinanceError(-1125, "This listenKey does not exist.")
        return key  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ positions and account

    async def leverage_bracket(self, request: Request) -> list[dict[str, Any]]:
        params, owner = await self.gate.signed(request, "read", weight=1)

        def read(engine: Any) -> list[dict[str, Any]]:
            st = derivatives_state(engine)
            out = []
            for sym in sorted(st.perps):
                if params.get("symbol") and external_symbol(sym) != params.get("symbol"):
                    continue
                p = st.perps[sym]
                qd = engine.ledger.assets.get(p.quote).decimals
                floor = 0
                rows = []
                for i, b in enumerate(p.brackets):
                    # Binance sends JSON numbers here; decimal strings say the same without a float
                    rows.append({"bracket": i + 1, "initialLeverage": b.max_leverage,
                                 "notionalCap": format_amount(b.cap, qd, trim=True), "notionalFloor": format_amount(floor, qd, trim=True),
                                 "maintMarginRatio": format_amount(b.mmr_ppm, 6, trim=True), "cum": format_amount(b.maint_amount, qd, trim=True)})
                    floor = b.cap
                out.append({"symbol": external_symbol(sym), "notionalCoef": "1", "brackets": rows})
            return out

        return self.ex.read(read)  # type: ignore[no-any-return]

    def _positions(self, engine: Any, owner: str, symbol: str | None) -> list[dict[str, Any]]:
        st = derivatives_state(engine)
        ledger = engine.ledger
        out = []
        summary_by_asset: dict[str, dict[str, int]] = {}
        for sym in sorted(st.perps):
            if symbol and external_symbol(sym) != symbol:
                continue
            p = st.perps[sym]
            qd, bd = ledger.assets.get(p.quote).decimals, ledger.assets.get(p.base).decimals
            key = (owner, sym)
            pos = st.positions.get(key)
            mark = mark_of_perp(engine, p)
            iso = key in st.isolated
            lev = st.leverage.get(key, p.default_leverage)
            adl = 0
            if pos is None:
                size = cost = margin = upnl = mm = notional = 0
                liq = 0
            else:
                adl = self._adl_quantile(engine, p, owner, pos.size > 0)
                size, cost, margin = pos.size, pos.cost, pos.margin
                upnl = unrealized(pos, mark, p.scale)
                mm = maint_margin(p, pos, mark)
                notional = notional_at(pos, mark, p.scale) * (1 if size > 0 else -1)
                if iso:
                    collateral = margin
                else:
                    if p.quote not in summary_by_asset:
                        summary_by_asset[p.quote] = account_summary(engine, owner, p.quote)
                    s = summary_by_asset[p.quote]
                    collateral = s["cross_equity"] - upnl - (s["cross_maint"] - mm)
                b = bracket_for(p, abs(notional)) or p.brackets[-1]
                liq = _liquidation_price(size, cost, collateral, b.mmr_ppm, b.maint_amount, p.scale)
            entry = cost * p.scale // abs(size) if size else 0
            m = engine.components["trading"].markets[sym]
            open_im = sum(ledger.hold_remaining(o.hold_id) for o in m.by_owner.get(owner, {}).values())
            out.append({
                "symbol": external_symbol(sym), "positionSide": "BOTH", "positionAmt": format_amount(size, bd),
                "entryPrice": format_amount(entry, qd), "breakEvenPrice": format_amount(entry, qd),
                "markPrice": format_amount(mark, qd), "unRealizedProfit": format_amount(upnl, qd),
                "liquidationPrice": format_amount(liq, qd), "isolatedMargin": format_amount(margin + upnl if iso else 0, qd),
                "notional": format_amount(notional, qd), "marginAsset": p.quote,
                "isolatedWallet": format_amount(margin if iso else 0, qd),
                "initialMargin": format_amount(margin + open_im, qd), "maintMargin": format_amount(mm, qd),
                "positionInitialMargin": format_amount(margin, qd), "openOrderInitialMargin": format_amount(open_im, qd),
                "adl": adl, "bidNotional": "0", "askNotional": "0", "updateTime": _ms(engine.now_ns),
                "marginType": "isolated" if iso else "cross", "leverage": str(lev), "isolated": iso,
                "maxNotionalValue": format_amount(max((b.cap for b in p.brackets if b.max_leverage >= lev), default=0), qd),
                "isAutoAddMargin": "false",
            })
        return out

    async def position_risk(self, request: Request) -> list[dict[str, Any]]:
        params, owner = await self.gate.signed(request, "read", weight=5)
        symbol = params.get("symbol")
        rows = self.ex.read(lambda engine: self._positions(engine, owner, symbol))
        if symbol and not rows:
            raise BinanceError(-1121, "Invalid symbol.")
        return rows if symbol else [r for r in rows if r["positionAmt"].strip("0.-")]  # type: ignore[no-any-return]

    async def adl_quantile_endpoint(self, request: Request) -> list[dict[str, Any]]:
        """Binance's `GET /fapi/v1/adlQuantile`: for each symbol the owner holds a position on, its
        place in the ADL ranking, 0..4 (4: deleveraged first); one-way mode, so `BOTH` is the
        position's and the side it is on has the same value."""
        params, owner = await self.gate.signed(request, "read", weight=5)
        symbol = params.get("symbol")

        def read(engine: Any) -> list[dict[str, Any]]:
            st = derivatives_state(engine)
            out = []
            for sym in sorted(st.perps):
                pos = st.positions.get((owner, sym))
                if pos is None or (symbol and external_symbol(sym) != symbol):
                    continue
                q = self._adl_quantile(engine, st.perps[sym], owner, pos.size > 0)
                out.append({"symbol": external_symbol(sym),
                            "adlQuantile": {"LONG": q if pos.size > 0 else 0, "SHORT": q if pos.size < 0 else 0, "BOTH": q}})
            return out

        return self.ex.read(read)  # type: ignore[no-any-return]

    async def account(self, request: Request) -> dict[str, Any]:
        params, owner = await self.gate.signed(request, "read", weight=5)

        def read(engine: Any) -> dict[str, Any]:
            st = derivatives_state(engine)
            ledger = engine.ledger
            assets = sorted({p.quote for p in st.perps.values()})
            rows = []
            totals: dict[str, int] = {}
            for a in assets:
                qd = ledger.assets.get(a).decimals
                s = account_summary(engine, owner, a)
                wallet_balance = s["wallet"] + s["cross_margin"] + s["isolated_margin"]
                upnl = s["cross_upnl"] + s["isolated_upnl"]
                im = s["cross_margin"] + s["isolated_margin"] + s["order_margin"]
                row: dict[str, Any] = {
                    "asset": a, "walletBalance": wallet_balance, "unrealizedProfit": upnl, "marginBalance": wallet_balance + upnl,
                    "maintMargin": s["cross_maint"], "initialMargin": im, "positionInitialMargin": s["cross_margin"] + s["isolated_margin"],
                    "openOrderInitialMargin": s["order_margin"], "crossWalletBalance": s["wallet"] + s["cross_margin"],
                    "crossUnPnl": s["cross_upnl"], "availableBalance": s["withdrawable"], "maxWithdrawAmount": s["withdrawable"],
                }
                for k, v in row.items():
                    if k != "asset":
                        totals[k] = totals.get(k, 0) + v  # type: ignore[operator]
                rows.append({k: (format_amount(v, qd) if k != "asset" else v) for k, v in row.items()} | {
                    "marginAvailable": True, "updateTime": _ms(engine.now_ns)})
            qd = ledger.assets.get(assets[0]).decimals if assets else 6
            positions = [{k: r[k] for k in ("symbol", "positionSide", "positionAmt", "unRealizedProfit", "isolatedMargin", "notional",
                                            "isolatedWallet", "initialMargin", "maintMargin", "updateTime")}
                         for r in self._positions(engine, owner, None) if r["positionAmt"].strip("0.-")]
            t = lambda k: format_amount(totals.get(k, 0), qd)  # noqa: E731
            return {
                "totalInitialMargin": t("initialMargin"), "totalMaintMargin": t("maintMargin"),
                "totalWalletBalance": t("walletBalance"), "totalUnrealizedProfit": t("unrealizedProfit"),
                "totalMarginBalance": t("marginBalance"), "totalPositionInitialMargin": t("positionInitialMargin"),
                "totalOpenOrderInitialMargin": t("openOrderInitialMargin"), "totalCrossWalletBalance": t("crossWalletBalance"),
                "totalCrossUnPnl": t("crossUnPnl"), "availableBalance": t("availableBalance"),
                "maxWithdrawAmount": t("maxWithdrawAmount"), "assets": rows, "positions": positions,
                "canTrade": True, "canDeposit": True, "canWithdraw": True, "feeTier": 0, "multiAssetsMargin": False,
            }

        return self.ex.read(read)  # type: ignore[no-any-return]


def _liquidation_price(size: int, cost: int, collateral: int, mmr_ppm: int, maint_amount: int, scale: int) -> int:
    """Where equity meets maintenance margin, for this position alone against `collateral`:
    long `(cost − collateral − cum) / (size × (1 − mmr))`, short `(cost + collateral + cum) / (|size| × (1 + mmr))`
    (rounded towards the mark: up for a long, down for a short); 0 when there is none."""
    if not size:
        return 0
    if size > 0:
        num = (cost - collateral - maint_amount) * scale * PPM
        return max(0, ceil_div(num, size * (PPM - mmr_ppm))) if num > 0 else 0
    num = (cost + collateral + maint_amount) * scale * PPM
    return max(0, num // (-size * (PPM + mmr_ppm)))


def adl_order_updates(e: Any, base_decimals: int, quote_decimals: int, event_ms: int) -> list[tuple[str, dict[str, Any]]]:
    """An `AutoDeleveraged` event as Binance's futures `ORDER_TRADE_UPDATE`, one for each side
    (client order id `adl_autoclose`, as Binance marks ADL closes; no order id: none was placed)."""
    q, px = format_amount(e.quantity, base_decimals), format_amount(e.price, quote_decimals)
    out = []
    for owner, side, realized in ((e.owner, e.side, e.owner_realized_pnl),
                                  (e.counterparty, "BUY" if e.side == "SELL" else "SELL", e.counterparty_realized_pnl)):
        out.append((owner, {"e": "ORDER_TRADE_UPDATE", "E": event_ms, "T": event_ms, "o": {
            "s": external_symbol(e.symbol), "c": "adl_autoclose", "S": side, "o": "LIMIT", "f": "IOC", "q": q, "p": px,
            "ap": px, "sp": "0", "x": "TRADE", "X": "FILLED", "i": 0, "l": q, "z": q, "L": px, "N": "USDT", "n": "0",
            "T": event_ms, "t": 0, "b": "0", "a": "0", "m": False, "R": True, "wt": "CONTRACT_PRICE", "ot": "LIMIT",
            "ps": "BOTH", "cp": False, "rp": format_amount(realized, quote_decimals), "pP": False, "si": 0, "ss": 0,
            "V": "NONE", "pm": "NONE", "gtd": 0}}))
    return out


def _is_reduce_only(engine: Any, symbol: str, order_id: int) -> bool:
    """Is `order_id` an open reduce-only order (a closed one is no longer known as such)?"""
    return order_id in derivatives_state(engine).reduce_only_orders.get(symbol, ())


def _as_error(rejected: CommandRejected) -> RingfenceError:
    from ..errors import Conflict, Forbidden, NotFound, ValidationError

    kind = {"RF_VALIDATION": ValidationError, "RF_NOT_FOUND": NotFound, "RF_FORBIDDEN": Forbidden, "RF_CONFLICT": Conflict,
            "RF_INSUFFICIENT_FUNDS": InsufficientFunds}
    err = kind.get(rejected.code, RingfenceError)(rejected.message, field=rejected.field or None)
    err.code = rejected.code
    return err


def build_futures_router(api: FuturesApi) -> APIRouter:
    router = APIRouter(tags=["binance usd-m futures"])

    def add(path: str, method: str, fn: Callable[[Request], Awaitable[Any]], weight: int, summary: str) -> None:
        spec = FAPI_PARAMS[(method, path)]
        add_binance_route(router, api.gate, spec, path, method, fn, weight, summary,
                          name=f"fapi_{method.lower()}_{path.strip('/').replace('/', '_')}",
                          openapi_extra=_doc(spec, key_only=path.endswith("/listenKey")))

    add("/sapi/v1/asset/transfer", "POST", api.transfer, 1, "Move collateral between spot and USDⓈ-M futures (MAIN_UMFUTURE / UMFUTURE_MAIN; signed)")
    add("/fapi/v1/ping", "GET", api.ping, 1, "Test connectivity (futures)")
    add("/fapi/v1/time", "GET", api.server_time, 1, "Server time (futures)")
    add("/fapi/v1/exchangeInfo", "GET", api.exchange_info, 1, "Perpetual markets, filters and margin assets")
    add("/fapi/v1/order", "POST", api.new_order, 1, "New perpetual order: LIMIT / MARKET, reduceOnly (signed)")
    add("/fapi/v1/order", "DELETE", api.cancel_order, 1, "Cancel a perpetual order (signed)")
    add("/fapi/v1/order", "GET", api.get_order, 1, "Query a perpetual order (signed)")
    add("/fapi/v1/openOrders", "GET", api.open_orders, 1, "Open perpetual orders (signed)")
    add("/fapi/v1/algoOrder", "POST", api.new_algo_order, 1, "New conditional order: STOP, STOP_MARKET, TAKE_PROFIT, TAKE_PROFIT_MARKET, "
        "TRAILING_STOP_MARKET; on the last trade or the mark price (workingType; signed)")
    add("/fapi/v1/algoOrder", "DELETE", api.cancel_algo_order, 1, "Cancel an untriggered conditional order (signed)")
    add("/fapi/v1/algoOrder", "GET", api.get_algo_order, 1, "Query a conditional order (signed)")
    add("/fapi/v1/openAlgoOrders", "GET", api.open_algo_orders, 1, "Untriggered conditional orders (signed)")
    add("/fapi/v1/algoOpenOrders", "DELETE", api.cancel_open_algo_orders, 1, "Cancel every untriggered conditional order of a symbol (signed)")
    add("/fapi/v1/leverage", "POST", api.leverage, 1, "Set a symbol's leverage, within its brackets (signed)")
    add("/fapi/v1/marginType", "POST", api.margin_type, 1, "ISOLATED or CROSSED, with no position or open order (signed)")
    add("/fapi/v1/positionMargin", "POST", api.position_margin, 1, "Add (type 1) or remove (type 2) isolated margin (signed)")
    add("/fapi/v1/leverageBracket", "GET", api.leverage_bracket, 1, "Leverage brackets: notional caps, max leverage, maintenance rates (signed)")
    add("/fapi/v2/positionRisk", "GET", api.position_risk, 5, "Positions with mark price, unrealised PnL, liquidation price (signed)")
    add("/fapi/v3/positionRisk", "GET", api.position_risk, 5, "Positions with mark price, unrealised PnL, margins (signed)")
    add("/fapi/v1/adlQuantile", "GET", api.adl_quantile_endpoint, 5, "ADL quantile of each position, 0..4 (signed)")
    add("/fapi/v2/account", "GET", api.account, 5, "Futures account: wallet, margins, unrealised PnL, positions (signed)")
    add("/fapi/v3/account", "GET", api.account, 5, "Futures account: wallet, margins, unrealised PnL, positions (signed)")
    add("/fapi/v1/depth", "GET", api.depth, 5, "Order book of a perpetual")
    add("/fapi/v1/trades", "GET", api.trades, 5, "Recent trades of a perpetual")
    add("/fapi/v1/aggTrades", "GET", api.agg_trades, 20, "Aggregate trades of a perpetual (one per fill)")
    add("/fapi/v1/klines", "GET", api.klines, 5, "Candlesticks of a perpetual's trades")
    add("/fapi/v1/markPriceKlines", "GET", api.mark_price_klines, 1, "Candlesticks of a perpetual's mark price (sampled each second)")
    add("/fapi/v1/indexPriceKlines", "GET", api.index_price_klines, 1, "Candlesticks of the index price of a pair (sampled each second)")
    add("/fapi/v1/ticker/24hr", "GET", api.ticker_24hr, 1, "24 h statistics of a perpetual (all without symbol)")
    add("/fapi/v1/ticker/price", "GET", api.ticker_price, 1, "Last price of a perpetual (all without symbol)")
    add("/fapi/v2/ticker/price", "GET", api.ticker_price, 1, "Last price of a perpetual (all without symbol)")
    add("/fapi/v1/ticker/bookTicker", "GET", api.book_ticker, 1, "Best bid and ask of a perpetual (all without symbol)")
    add("/fapi/v1/fundingRate", "GET", api.funding_rate, 1, "Funding rate history: the rounds settled, with their mark price")
    add("/fapi/v1/openInterest", "GET", api.open_interest, 1, "Open interest of a perpetual (the sum of long positions)")
    add("/fapi/v1/userTrades", "GET", api.user_trades, 5, "The account's perpetual fills with realised PnL (signed)")
    add("/fapi/v1/income", "GET", api.income, 30, "Income history: realised PnL, commission, funding fee, transfer (signed)")
    add("/fapi/v1/listenKey", "POST", api.listen_key_new, 1, "Start (or extend) the futures user data stream; API key only")
    add("/fapi/v1/listenKey", "PUT", api.listen_key_keepalive, 1, "Keep the futures user data stream alive; API key only")
    add("/fapi/v1/listenKey", "DELETE", api.listen_key_close, 1, "Close the futures user data stream; API key only")
    return router


def _decimals(engine: Any, sym: str) -> tuple[int, int]:
    p = derivatives_state(engine).perps[sym]
    return int(engine.ledger.assets.get(p.quote).decimals), int(engine.ledger.assets.get(p.base).decimals)
