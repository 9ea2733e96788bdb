"""Binance error shapes: `{"code": <negative int>, "msg": "..."}` with Binance's HTTP statuses.

Clients (ccxt above all) map these codes and messages to exception classes, so the exact text
matters where Binance's is matched verbatim (see shared binance-compat.md §7):
`-2010 "Account has insufficient balance for requested action."` → InsufficientFunds,
`-1022` → AuthenticationError, `-2011 "Unknown order sent."` → OrderNotFound, and so on.
Every message also names the parameter at fault where there is one.
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import RingfenceError
from ..money import format_amount

__all__ = ["BinanceError", "from_ringfence", "from_order_rejection"]


class BinanceError(Exception):
    """An error already in Binance's shape; the API turns it into the JSON response."""

    def __init__(self, code: int, msg: str, status: int = 400, headers: dict[str, str] | None = None) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.status = status
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "msg": self.msg}


def illegal(param: str, rule: str) -> BinanceError:
    return BinanceError(-1100, f"Illegal characters found in parameter '{param}'; {rule}")


def mandatory(param: str) -> BinanceError:
    return BinanceError(-1102, f"Mandatory parameter '{param}' was not sent, was empty/null, or malformed.")


def bad_signature() -> BinanceError:
    return BinanceError(-1022, "Signature for this request is not valid.")


def bad_key() -> BinanceError:
    return BinanceError(-2015, "Invalid API-key, IP, or permissions for action.", 401)


def from_ringfence(err: RingfenceError) -> BinanceError:
    """Map a ringfence error (identity, validation, rate limits) to Binance's shape."""
    code = err.code
    field = err.field or ""
    if code == "RF_RATE_LIMITED":
        retry = int(err.details.get("retry_after_s", 1) or 1)
        return BinanceError(-1003, f"Too many requests; retry after {retry} s. {err.message}", 429, {"Retry-After": str(retry)})
    if code in ("RF_UNAUTHORIZED", "RF_AUTHENTICATION_FAILED"):
        if field == "signature":
            return bad_signature()
        return BinanceError(-2015, f"Invalid API-key, IP, or permissions for action. ({err.message})", 401)
    if code in ("RF_FORBIDDEN", "RF_ACCOUNT_FROZEN", "RF_SECOND_FACTOR_REQUIRED"):
        return BinanceError(-2015, f"Invalid API-key, IP, or permissions for action. ({err.message})", 401)
    if code == "RF_HALTED":
        return BinanceError(-1013, "Market is closed.")
    if code == "RF_OUTCOME_UNKNOWN":
        # Binance's answer when the backend may or may not have executed the request: the client
        # must check (query the order by clientOrderId) before retrying, never assume failure.
        return BinanceError(-1007, "Timeout waiting for response from backend server. Send status unknown; execution status unknown.", 503)
    if code == "RF_NOT_DURABLE":
        return BinanceError(-1001, "Internal error; unable to process your request. Please try again.", 503)
    if isinstance(err, ValueError):
        return _illegal(field, err.message)
    return BinanceError(-1000, f"An unknown error occurred while processing the request. ({code})", 500)


# reason -> (code, message); messages that ccxt matches verbatim are Binance's exact text.
_REJECTIONS: dict[str, tuple[int, str]] = {
    "UNKNOWN_MARKET": (-1121, "Invalid symbol."),
    "MARKET_NOT_ACTIVE": (-1013, "Market is closed."),
    "MARKET_HALTED": (-1013, "Market is closed."),
    "PRICE_NOT_ON_TICK": (-1013, "Filter failure: PRICE_FILTER"),
    "QTY_NOT_ON_LOT": (-1013, "Filter failure: LOT_SIZE"),
    "QTY_BELOW_MIN": (-1013, "Filter failure: LOT_SIZE"),
    "QTY_ABOVE_MAX": (-1013, "Filter failure: LOT_SIZE"),
    "BELOW_MIN_NOTIONAL": (-1013, "Filter failure: NOTIONAL"),
    "PRICE_OUTSIDE_BAND": (-1013, "Filter failure: PERCENT_PRICE_BY_SIDE"),
    "POST_ONLY_WOULD_TAKE": (-2010, "Order would immediately match and take."),
    "STOP_WOULD_TRIGGER_IMMEDIATELY": (-2010, "Stop price would trigger immediately."),
    "DUPLICATE_CLIENT_ORDER_ID": (-2010, "Duplicate order sent."),
    "TOO_MANY_OPEN_ORDERS": (-2010, "Account has too many open orders."),
    "BOOK_FULL": (-2010, "The order book is full; try again later."),
    "INSUFFICIENT_BALANCE": (-2010, "Account has insufficient balance for requested action."),
    "UNKNOWN_ORDER": (-2011, "Unknown order sent."),
    "ORDER_NOT_AMENDABLE": (-2011, "Unknown order sent."),
}


def _illegal(field: str, message: str) -> BinanceError:
    """-1100 naming the field; too many decimals is -1111 wherever it is found (as the edge's own
    amount check answers it, gateway.Params.amount), so a client sees one code for one mistake."""
    param = f" '{field}'" if field else ""
    if "decimal places" in message:
        return BinanceError(-1111, f"Parameter{param} has too much precision: {message}.")
    return BinanceError(-1100, f"Illegal parameter{param}: {message}")


#: The engine's band refusal names the band in integer price units (trading/orders.py, `_market_refusal`):
#: "price must lie within LO..HI ...". The edge writes them as the market's decimal prices.
_BAND = re.compile(r"within (\d+)\.\.(\d+)")
_PARAM_NAMES = {"price": "price", "stop_price": "stopPrice"}


def _filter_detail(reason: str, message: str, field: str, m: Any, side: str) -> str:
    """What a filter refusal allows, in the market's decimals (`m`: the market's `MarketInfo`: tick,
    lot, min_qty, max_qty, min_notional and the two assets' decimals), or "" when it has nothing to add."""
    px = lambda v: format_amount(v, m.quote_decimals, trim=True)  # noqa: E731  (for people: "0.01", not "0.010000")
    qty = lambda v: format_amount(v, m.base_decimals, trim=True)  # noqa: E731
    param = _PARAM_NAMES.get(field, field or "price")
    if reason == "PRICE_NOT_ON_TICK":
        return f". The {param} must be a multiple of the tick size {px(m.tick)}."
    if reason == "QTY_NOT_ON_LOT":
        return f". The quantity must be a multiple of the step size {qty(m.lot)}."
    if reason == "QTY_BELOW_MIN":
        return f". The quantity must be at least {qty(m.min_qty)}."
    if reason == "QTY_ABOVE_MAX":
        return f". The quantity must be at most {qty(m.max_qty)}."
    if reason == "BELOW_MIN_NOTIONAL":
        return f". The order's value (price x quantity) must be at least {px(m.min_notional)}."
    band = _BAND.search(message) if reason == "PRICE_OUTSIDE_BAND" else None
    if band is None:
        return ""
    lo, hi = (int(v) for v in band.groups())
    tick = m.tick
    lo, hi = -(-lo // tick) * tick, hi // tick * tick  # the prices on the tick that the band allows
    who = f"a {side} order" if side in ("BUY", "SELL") else "an order"
    return f". The {param} of {who} must be between {px(lo)} and {px(hi)} now (the band around the reference price)."


def from_order_rejection(reason: str, message: str, field: str, *, market: Any = None, side: str = "") -> BinanceError:
    """Binance's code and text for an engine refusal. A filter refusal (PRICE_FILTER, LOT_SIZE,
    NOTIONAL, PERCENT_PRICE_BY_SIDE) keeps Binance's code and its text's start (what clients match)
    and, when the `market` is given, adds what is allowed, as decimals: the tick, the step, the
    minimum or maximum, or the prices the band allows now for the order's side (on the tick)."""
    code, text = _REJECTIONS.get(reason, (-1013, f"Order rejected: {reason}"))
    if reason == "INVALID_PARAMETER":
        return _illegal(field, message)
    if market is not None:
        text += _filter_detail(reason, message, field, market, side)
    return BinanceError(code, text)
