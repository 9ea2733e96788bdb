"""Order commands: place, cancel, cancel-all and amend (alone or in a `TradingBatch`).

Every action validates first and mutates after; an order-level refusal is an `OrderRejected`
event (with a reason code from `REASONS`) and changes nothing. Accepted orders run through the
matching loop in `matching.py`.
"""

from typing import Any, Callable

from ..engine.commands import Event
from ..engine.core import Engine
from ..engine.module import Effect
from .module import MODULE, market_scopes, amend_effect, batch_actions
from .admin import _band_watch
from .book import ACTIVE, HALTED, Market, Order
from .commands import (
    AmendOrder,
    CancelAll,
    CancelOrder,
    OrderAccepted,
    OrderAmended,
    OrderCanceled,
    OrderExpired,
    OrderRejected,
    OrderRested,
    PlaceOrder,
    TradingBatch,
)
from .matching import (
    _close,
    _execute,
    _take_out,
    _trigger_stops,
)
from .state import (
    _COID_RE,
    _LIMITISH,
    _OWNER_RE,
    _PPM,
    _SIDES,
    _STPS,
    _TIFS,
    _TYPES,
    _VALID_OWNERS,
    MAX_PRICE,
    MAX_QTY,
    TradingState,
)

__all__ = ["REASONS", "check_place"]

#: Every reason an action can be refused with (stable: clients switch on them).
REASONS = (
    "UNKNOWN_MARKET",
    "MARKET_NOT_ACTIVE",
    "MARKET_HALTED",
    "INVALID_PARAMETER",
    "PRICE_NOT_ON_TICK",
    "QTY_NOT_ON_LOT",
    "QTY_BELOW_MIN",
    "QTY_ABOVE_MAX",
    "BELOW_MIN_NOTIONAL",
    "PRICE_OUTSIDE_BAND",
    "POST_ONLY_WOULD_TAKE",
    "STOP_WOULD_TRIGGER_IMMEDIATELY",
    "DUPLICATE_CLIENT_ORDER_ID",
    "TOO_MANY_OPEN_ORDERS",
    "BOOK_FULL",
    "INSUFFICIENT_BALANCE",
    "UNKNOWN_ORDER",
    "ORDER_NOT_AMENDABLE",
    "SHARD_FULL",
)


def _reject(
    ev: list[Event], action: str, c: Any, reason: str, field: str, message: str, order_id: int = 0
) -> None:
    ev.append(
        OrderRejected(
            action,
            c.symbol if isinstance(c.symbol, str) else "",
            c.owner if isinstance(c.owner, str) else "",
            order_id,
            getattr(c, "client_order_id", "") or "",
            reason,
            field,
            message,
        )
    )



def _qty_problem(m: Market, qty: int) -> tuple[str, str] | None:
    """The LOT_SIZE filter: `(reason, message)` if `qty` breaks it, else None."""
    if qty % m.lot:
        return "QTY_NOT_ON_LOT", f"quantity must be a multiple of the lot size {m.lot}"
    if qty < m.min_qty:
        return "QTY_BELOW_MIN", f"quantity must be at least {m.min_qty}"
    if qty > m.max_qty:
        return "QTY_ABOVE_MAX", f"quantity must be at most {m.max_qty}"
    return None



# ------------------------------------------------------------------------------ place


def _place(engine: Engine, st: TradingState, c: PlaceOrder, ev: list[Event], dry_run: bool = False) -> None:
    """Check a new order against every market rule and the owner's balance, then place it.

    With `dry_run` (`check_place`, for the API's `order/test`) it stops where placing would start
    mutating, and it does not run the band timer (which may change the market's status).
    """
    m = st.markets.get(c.symbol)
    if m is None:
        return _reject(ev, "PLACE", c, "UNKNOWN_MARKET", "symbol", f"unknown market {c.symbol!r}")
    is_buy = _SIDES.get(c.side)
    if is_buy is None:
        return _reject(ev, "PLACE", c, "INVALID_PARAMETER", "side", "side must be BUY or SELL")
    typ, tif, stp, owner, coid = c.order_type, c.tif, c.stp, c.owner, c.client_order_id
    if typ not in _TYPES:
        return _reject(ev, "PLACE", c, "INVALID_PARAMETER", "order_type", f"type must be one of {', '.join(sorted(_TYPES))}")
    if tif not in _TIFS:
        return _reject(ev, "PLACE", c, "INVALID_PARAMETER", "tif", "tif must be GTC, IOC or FOK")
    if stp not in _STPS:
        return _reject(ev, "PLACE", c, "INVALID_PARAMETER", "stp", f"stp must be one of {', '.join(sorted(_STPS))}")
    if owner not in _VALID_OWNERS:
        if not _OWNER_RE.fullmatch(owner):
            return _reject(ev, "PLACE", c, "INVALID_PARAMETER", "owner", "owner must be 1-64 characters of a-z, 0-9, '_', '.', '-'")
        if len(_VALID_OWNERS) >= 1_000_000:
            _VALID_OWNERS.clear()
        _VALID_OWNERS.add(owner)
    if coid and not _COID_RE.fullmatch(coid):
        return _reject(ev, "PLACE", c, "INVALID_PARAMETER", "client_order_id", "client_order_id must match ^[.A-Za-z0-9:/_-]{1,36}$")
    price, qty, qamt, stop = c.price, c.quantity, c.quote_amount, c.stop_price
    if not (0 <= price <= MAX_PRICE and 0 <= stop <= MAX_PRICE and 0 <= qty <= MAX_QTY and 0 <= qamt <= MAX_QTY):
        for value, name, hi in ((price, "price", MAX_PRICE), (stop, "stop_price", MAX_PRICE), (qty, "quantity", MAX_QTY), (qamt, "quote_amount", MAX_QTY)):
            if not 0 <= value <= hi:
                return _reject(ev, "PLACE", c, "INVALID_PARAMETER", name, f"{name} must be between 0 and {hi}")
    limitish = typ in _LIMITISH
    if limitish:
        if not price or not qty or qamt:
            return _reject(ev, "PLACE", c, "INVALID_PARAMETER", "price" if not price else "quantity", f"{typ} needs price and quantity (and no quote_amount)")
    elif typ == "MARKET":
        if (qty > 0) == (qamt > 0):
            return _reject(ev, "PLACE", c, "INVALID_PARAMETER", "quantity", "MARKET needs exactly one of quantity and quote_amount")
    elif not qty or qamt or price:  # STOP_MARKET
        return _reject(ev, "PLACE", c, "INVALID_PARAMETER", "quantity", "STOP_MARKET needs quantity and stop_price only")
    is_stop = typ == "STOP_LIMIT" or typ == "STOP_MARKET"
    if is_stop != (stop > 0):
        return _reject(ev, "PLACE", c, "INVALID_PARAMETER", "stop_price", "stop_price is required for stop orders and only for them")
    if typ == "LIMIT_MAKER" and tif != "GTC":
        return _reject(ev, "PLACE", c, "INVALID_PARAMETER", "tif", "LIMIT_MAKER is always GTC")
    if not limitish and tif == "FOK":
        return _reject(ev, "PLACE", c, "INVALID_PARAMETER", "tif", "market orders are IOC; FOK needs a limit price")
    if (m.band_hi or m.out_of_band) and not dry_run:
        _band_watch(m, engine.now_ns, ev)
    if m.status != ACTIVE:
        return _reject(ev, "PLACE", c, "MARKET_NOT_ACTIVE", "symbol", f"{m.symbol} is {m.status}; only cancels are accepted")
    tick, scale = m.tick, m.base_scale
    if price % tick:
        return _reject(ev, "PLACE", c, "PRICE_NOT_ON_TICK", "price", f"price must be a multiple of the tick size {tick}")
    if stop % tick:
        return _reject(ev, "PLACE", c, "PRICE_NOT_ON_TICK", "stop_price", f"stop_price must be a multiple of the tick size {tick}")
    if qty:
        problem = _qty_problem(m, qty)
        if problem is not None:
            return _reject(ev, "PLACE", c, problem[0], "quantity", problem[1])
    if limitish and m.band_hi and not m.band_lo <= price <= m.band_hi:
        return _reject(ev, "PLACE", c, "PRICE_OUTSIDE_BAND", "price", f"price must lie within {m.band_lo}..{m.band_hi} (the band around the reference price)")
    # A stop price gets the limit price's checks: a trigger the band could never reach is refused
    # now rather than resting for ever (and holding funds against an absurd price).
    if is_stop and m.band_hi and not m.band_lo <= stop <= m.band_hi:
        return _reject(ev, "PLACE", c, "PRICE_OUTSIDE_BAND", "stop_price", f"stop_price must lie within {m.band_lo}..{m.band_hi} (the band around the reference price)")
    if m.min_notional:
        if limitish:
            notional = price * qty // scale
        elif qamt:
            notional = qamt
        elif typ == "STOP_MARKET":
            notional = stop * qty // scale
        else:
            ref = m.ref_price or m.last_price
            notional = ref * qty // scale if ref else m.min_notional
        if notional < m.min_notional:
            return _reject(ev, "PLACE", c, "BELOW_MIN_NOTIONAL", "quantity", f"price * quantity must be at least {m.min_notional}")
    last = m.last_price
    if is_stop and last and ((is_buy and last >= stop) or (not is_buy and last <= stop)):
        return _reject(ev, "PLACE", c, "STOP_WOULD_TRIGGER_IMMEDIATELY", "stop_price", f"the last price {last} has already reached stop_price")
    if typ == "LIMIT_MAKER" and m.crosses(is_buy, price):
        return _reject(ev, "PLACE", c, "POST_ONLY_WOULD_TAKE", "price", "a post-only order must not take liquidity")
    if coid and (owner, coid) in m.coids:
        return _reject(ev, "PLACE", c, "DUPLICATE_CLIENT_ORDER_ID", "client_order_id", "an open order of this account already uses this client_order_id")
    can_rest = (limitish and tif == "GTC") or is_stop
    if can_rest:
        owned = m.by_owner.get(owner)
        if owned is not None and len(owned) >= m.max_open_per_account:
            return _reject(ev, "PLACE", c, "TOO_MANY_OPEN_ORDERS", "symbol", f"at most {m.max_open_per_account} open orders per account in {m.symbol}")
        if limitish and not is_stop:
            if m.book_orders >= m.max_book_orders or m.level_limit_reached(is_buy, price):
                return _reject(ev, "PLACE", c, "BOOK_FULL", "price", f"the {m.symbol} book is at its size limit")
    # The protection price of market orders, and what to hold.
    protect = 0
    if typ == "MARKET":
        if price:
            protect = price
        else:
            best = (m.ask_prices[0] if m.ask_prices else 0) if is_buy else (m.bid_prices[-1] if m.bid_prices else 0)
            if best:
                if is_buy:
                    protect = best * (_PPM + m.slippage_ppm) // _PPM // tick * tick
                else:
                    protect = -(-best * (_PPM - m.slippage_ppm) // _PPM // tick) * tick
        if protect and m.band_hi:
            protect = min(protect, m.band_hi // tick * tick) if is_buy else max(protect, -(-m.band_lo // tick) * tick)
    elif typ == "STOP_MARKET":
        protect = stop * (_PPM + m.slippage_ppm) // _PPM // tick * tick if is_buy else -(-stop * (_PPM - m.slippage_ppm) // _PPM // tick) * tick
    if is_buy:
        hold = qamt if qamt else (price if limitish else protect) * qty // scale
    elif qamt:
        # Enough base to raise `quote_amount` even at the protection price, rounded up to a lot.
        base_needed = -(-qamt * scale // protect) if protect else 0
        hold = -(-base_needed // m.lot) * m.lot
    else:
        hold = qty
    if typ == "MARKET" and not protect:
        hold = 0  # an empty opposite side: accepted and expired at once, nothing held
    ledger = engine.ledger
    segment = m.segment
    pay_asset, recv_asset = (m.quote, m.base) if is_buy else (m.base, m.quote)
    find = ledger.find
    pay = find(owner, pay_asset, "available", segment)
    if hold:
        if pay is None or not ledger.can_hold(pay, hold):
            return _reject(ev, "PLACE", c, "INSUFFICIENT_BALANCE", "quantity", "Account has insufficient balance for requested action.")
    recv = find(owner, recv_asset, "available", segment)
    if (recv is None or pay is None) and not ledger.can_open_accounts((recv is None) + (pay is None)):
        return _reject(ev, "PLACE", c, "SHARD_FULL", "owner", "this shard cannot open more accounts; contact support")
    if dry_run:
        return
    # ---- every check passed: mutate from here on ----
    if recv is None:
        recv = ledger.open_account(owner, recv_asset, "available", segment)[0]
    if pay is None:
        pay = ledger.open_account(owner, pay_asset, "available", segment)[0]
    o = Order()
    oid = st.next_order_id
    st.next_order_id = oid + 1
    o.id = oid
    o.owner = owner
    o.is_buy = is_buy
    o.type = typ
    o.tif = "IOC" if not limitish else tif
    o.price = price if limitish else 0
    o.qty = qty
    # By quote amount the base quantity is open-ended: a sell may deliver at most what it holds;
    # a buy is bounded by its quote (the match loop stops when the quote cannot buy one more lot).
    o.leaves = qty if qty else (hold if not is_buy else MAX_QTY)
    o.filled = 0
    o.cum_quote = 0
    o.quote_left = qamt
    o.stop_price = stop
    o.protect = protect
    o.coid = coid
    o.stp = stp
    o.pay = pay
    o.recv = recv
    o.ts_ns = engine.now_ns
    o.hold_id = ledger.hold(pay, m.clearing.quote if is_buy else m.clearing.base, hold) if hold else 0
    ev.append(OrderAccepted(m.symbol, oid, owner, coid, c.side, typ, o.tif, price, qty, qamt, stop, stp, hold))
    if not hold:  # a market order that met an empty book: nothing was held, nothing can fill
        ev.append(OrderExpired(m.symbol, oid, owner, c.side, 0, qty, False, "NO_LIQUIDITY", 0))
        return
    if is_stop:
        m.index(o)
        m.add_stop(o)
        return
    before = st.next_trade_id
    _execute(st, ledger, m, o, ev)
    if st.next_trade_id != before and (m.stops_buy or m.stops_sell):
        _trigger_stops(st, ledger, m, ev)


# ------------------------------------------------------------------------------ cancel / amend


def _cancel(engine: Engine, st: TradingState, c: CancelOrder, ev: list[Event]) -> None:
    m = st.markets.get(c.symbol)
    if m is None:
        return _reject(ev, "CANCEL", c, "UNKNOWN_MARKET", "symbol", f"unknown market {c.symbol!r}", c.order_id)
    if m.band_hi or m.out_of_band:
        _band_watch(m, engine.now_ns, ev)
    if m.status == HALTED:
        return _reject(ev, "CANCEL", c, "MARKET_HALTED", "symbol", f"{m.symbol} is HALTED; nothing can change until it is lifted", c.order_id)
    o = m.orders.get(c.order_id) if c.order_id else (m.coids.get((c.owner, c.client_order_id)) if c.client_order_id else None)
    if o is None or o.owner != c.owner:
        return _reject(ev, "CANCEL", c, "UNKNOWN_ORDER", "order_id", "Unknown order sent.", c.order_id)
    resting = _take_out(m, o)
    _close(engine.ledger, m, o, ev, OrderCanceled, "USER_CANCELED", resting)


def _cancel_all(engine: Engine, st: TradingState, c: CancelAll, ev: list[Event]) -> None:
    m = st.markets.get(c.symbol)
    if m is None:
        return _reject(ev, "CANCEL_ALL", c, "UNKNOWN_MARKET", "symbol", f"unknown market {c.symbol!r}")
    if m.band_hi or m.out_of_band:
        _band_watch(m, engine.now_ns, ev)
    if m.status == HALTED:
        return _reject(ev, "CANCEL_ALL", c, "MARKET_HALTED", "symbol", f"{m.symbol} is HALTED")
    owned = m.by_owner.get(c.owner)
    if not owned:
        return
    ledger = engine.ledger
    for oid in sorted(owned):
        o = m.orders[oid]
        resting = _take_out(m, o)
        _close(ledger, m, o, ev, OrderCanceled, "USER_CANCELED", resting)


def _amend(engine: Engine, st: TradingState, c: AmendOrder, ev: list[Event]) -> None:
    m = st.markets.get(c.symbol)
    oid = c.order_id
    if m is None:
        return _reject(ev, "AMEND", c, "UNKNOWN_MARKET", "symbol", f"unknown market {c.symbol!r}", oid)
    if m.band_hi or m.out_of_band:
        _band_watch(m, engine.now_ns, ev)
    if m.status != ACTIVE:
        return _reject(ev, "AMEND", c, "MARKET_NOT_ACTIVE", "symbol", f"{m.symbol} is {m.status}; only cancels are accepted", oid)
    o = m.orders.get(oid)
    if o is None or o.owner != c.owner:
        return _reject(ev, "AMEND", c, "UNKNOWN_ORDER", "order_id", "Unknown order sent.", oid)
    if o.level is None:
        return _reject(ev, "AMEND", c, "ORDER_NOT_AMENDABLE", "order_id", "only resting limit orders can be amended", oid)
    price = c.price or o.price
    qty = c.quantity or o.qty
    if not 0 < price <= MAX_PRICE or not 0 < qty <= MAX_QTY:
        return _reject(ev, "AMEND", c, "INVALID_PARAMETER", "price" if not 0 < price <= MAX_PRICE else "quantity", "price and quantity must be positive", oid)
    if price % m.tick:
        return _reject(ev, "AMEND", c, "PRICE_NOT_ON_TICK", "price", f"price must be a multiple of the tick size {m.tick}", oid)
    problem = _qty_problem(m, qty)
    if problem is not None:
        return _reject(ev, "AMEND", c, problem[0], "quantity", problem[1], oid)
    leaves = qty - o.filled
    if leaves <= 0:
        return _reject(ev, "AMEND", c, "INVALID_PARAMETER", "quantity", f"quantity must exceed the {o.filled} already filled", oid)
    reprice = price != o.price
    if reprice:
        if m.band_hi and not m.band_lo <= price <= m.band_hi:
            return _reject(ev, "AMEND", c, "PRICE_OUTSIDE_BAND", "price", f"price must lie within {m.band_lo}..{m.band_hi}", oid)
        if m.min_notional and price * qty // m.base_scale < m.min_notional:
            return _reject(ev, "AMEND", c, "BELOW_MIN_NOTIONAL", "price", f"price * quantity must be at least {m.min_notional}", oid)
        if o.type == "LIMIT_MAKER" and m.crosses(o.is_buy, price):
            return _reject(ev, "AMEND", c, "POST_ONLY_WOULD_TAKE", "price", "a post-only order must not take liquidity", oid)
        if m.level_limit_reached(o.is_buy, price):
            return _reject(ev, "AMEND", c, "BOOK_FULL", "price", f"the {m.symbol} book is at its size limit", oid)
    ledger = engine.ledger
    is_buy = o.is_buy
    need = leaves * price // m.base_scale if is_buy else leaves
    extra = need - ledger.hold_remaining(o.hold_id)
    if extra > 0:
        if not ledger.can_hold(o.pay, extra):
            return _reject(ev, "AMEND", c, "INSUFFICIENT_BALANCE", "quantity", "Account has insufficient balance for requested action.", oid)
    # ---- mutate ----
    if extra:
        ledger.resize_hold(o.hold_id, extra)
    if not reprice and qty <= o.qty:  # a reduction keeps time priority
        o.level.total -= o.leaves - leaves
        o.leaves = leaves
        o.qty = qty
        ev.append(OrderAmended(m.symbol, oid, price, qty, leaves, True))
        return
    m.unlink(o)
    o.price, o.qty, o.leaves = price, qty, leaves
    o.ts_ns = engine.now_ns
    ev.append(OrderAmended(m.symbol, oid, price, qty, leaves, False))
    if not m.crosses(is_buy, price):
        # It does not cross: straight to the back of its new level (the common "move").
        m.rest(o)
        ev.append(OrderRested(m.symbol, oid, o.owner, "BUY" if is_buy else "SELL", price, leaves))
        return
    m.unindex(o)
    before = st.next_trade_id
    _execute(st, ledger, m, o, ev)
    if st.next_trade_id != before and (m.stops_buy or m.stops_sell):
        _trigger_stops(st, ledger, m, ev)



# ------------------------------------------------------------------------------ handlers

# Order actions have no edge precheck: message sizes are enforced by the command types
# (`Annotated[..., Meta(max_length=...)]`) in the node's strict decode, before journaling, and
# market rules are answered by events in `apply`.


_DISPATCH: dict[type, Callable[[Engine, TradingState, Any, list[Event]], None]] = {
    PlaceOrder: _place,
    CancelOrder: _cancel,
    CancelAll: _cancel_all,
    AmendOrder: _amend,
}


def _single(fn: Callable[[Engine, TradingState, Any, list[Event]], None]) -> Callable[[Engine, Any], list[Event]]:
    def handler(engine: Engine, c: Any) -> list[Event]:
        ev: list[Event] = []
        fn(engine, engine.components["trading"], c, ev)
        return ev

    handler.__name__ = fn.__name__
    return handler


_EFFECTS: dict[type, Effect | Callable[[Engine, Any], Effect]] = {
    PlaceOrder: Effect.OPENS_RISK, CancelOrder: Effect.REDUCES_RISK, CancelAll: Effect.REDUCES_RISK, AmendOrder: amend_effect,
}
for _type, _fn in _DISPATCH.items():
    MODULE.handles(_type, effect=_EFFECTS[_type], scopes=market_scopes)(_single(_fn))


@MODULE.handles(TradingBatch, effect=Effect.NEUTRAL, parts=batch_actions)
def _batch(engine: Engine, c: TradingBatch) -> list[Event]:
    ev: list[Event] = []
    st = engine.components["trading"]
    dispatch = _DISPATCH
    for action in c.actions:
        dispatch[type(action)](engine, st, action, ev)
    return ev


def check_place(engine: Engine, c: PlaceOrder) -> OrderRejected | None:
    """Run every check placing `c` would run, change nothing; the rejection, or None if it passes.

    Engine-level refusals (halts, malformed commands) are raised by `engine.precheck`, which the
    caller runs first. Read-only: call it between batches (`Node.query`), never during one.
    """
    ev: list[Event] = []
    _place(engine, engine.components["trading"], c, ev, dry_run=True)
    for e in ev:
        if isinstance(e, OrderRejected):
            return e
    return None
