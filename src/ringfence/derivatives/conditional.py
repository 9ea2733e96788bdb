"""Conditional (algo) orders on perpetuals: Binance's STOP, STOP_MARKET, TAKE_PROFIT,
TAKE_PROFIT_MARKET and TRAILING_STOP_MARKET (`POST /fapi/v1/algoOrder`).

An untriggered conditional order holds no margin and is not in the book: it waits in
`DerivativesState.conditional` (part of the snapshot and the state hash). It is checked against
its working price — the market's last trade (CONTRACT_PRICE) or its mark price (MARK_PRICE) — at
the end of every perpetual order and before every command while any is armed (the mark moves with
index quotes and with time). Nothing here reads a clock: the prices are the engine's own, so
replaying the journal fires the same orders at the same commands.

Trigger rules (integers only):
* a stop fires when the price reaches its trigger against the position: a BUY at price ≥ trigger,
  a SELL at price ≤ trigger; a take-profit the other way (a SELL at price ≥ trigger, a BUY at ≤);
* a trailing stop is active once the price reaches its activation price (a SELL at ≥, a BUY at ≤;
  none given: at once), then follows the extreme price seen since (the highest for a SELL, the
  lowest for a BUY) and fires when the price has come back `callback_bp` basis points from it:
  a SELL when `price × 10⁴ ≤ extreme × (10⁴ − bp)`, a BUY when `price × 10⁴ ≥ extreme × (10⁴ + bp)`.

When it fires the order is removed and placed through trading as a MARKET order (the *_MARKET
types and the trailing stop) or a LIMIT order at its price (STOP, TAKE_PROFIT), reduce-only when it
was; `close_position` sizes it to the whole position then (none left in its direction: it expires).
A placement trading refuses (margin, the band) ends the conditional order with the reason.

Halts: a reached trigger fires only if the order a client would submit for it directly — a
`PlacePerpOrder` of the placed type, side and symbol, reduce-only when the conditional order is
reduce-only or close_position — passes the halt guard now (`risk.halts.refusal_of`, the guard's own
check). Blocked, it does not fire and stays open, unchanged and silent (no event: it is checked
again at every check while the halt lasts), and fires at the first check after the halt lifts if
its working price is still beyond the trigger (Binance: a conditional order does not trigger while
its market is halted). So a HALTED market, segment, asset or venue fires nothing; a REDUCE_ONLY
one fires reduce-only and close_position orders (they are trimmed to the position when placed)
and holds every other one.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from typing import Any, Final

from ..engine.commands import Event
from ..engine.core import Engine
from ..engine.module import NEVER, Effect
from ..errors import NotFound, ValidationError
from ..money import format_amount
from ..risk.halts import refusal_of
from ..trading.commands import OrderAccepted, OrderRejected, PlaceOrder
from ..trading.module import market_scopes
from ..trading.orders import _place as _trading_place
from ..trading.orders import _qty_problem
from ..trading.state import _COID_RE, _OWNER_RE, MAX_PRICE, MAX_QTY, trading_state
from .commands import (
    CancelConditionalOrder,
    PlacePerpOrder,
    ConditionalOrderAccepted,
    ConditionalOrderEnded,
    ConditionalOrderTriggered,
    PlaceConditionalOrder,
)
from .state import DerivativesState, derivatives_state, mark_of_perp

__all__ = [
    "ConditionalOrder", "WouldTrigger", "CONDITIONAL_TYPES", "MAX_CONDITIONAL_PER_MARKET", "MIN_CALLBACK_BP",
    "MAX_CALLBACK_BP", "CHECK_EVERY_NS", "reached", "trail", "working_price", "fire_conditionals", "register", "add_conditional", "TriggerIndex",
    "remove_conditional", "as_direct_order",
]

#: type -> (a take-profit (fires the other way from a stop), a trailing stop, what it places)
CONDITIONAL_TYPES: Final = {
    "STOP_MARKET": (False, False, "MARKET"),
    "STOP": (False, False, "LIMIT"),
    "TAKE_PROFIT_MARKET": (True, False, "MARKET"),
    "TAKE_PROFIT": (True, False, "LIMIT"),
    "TRAILING_STOP_MARKET": (False, True, "MARKET"),
}
WORKING_TYPES: Final = ("CONTRACT_PRICE", "MARK_PRICE")
MIN_CALLBACK_BP: Final = 10  # 0.1 %
MAX_CALLBACK_BP: Final = 1_000  # 10 %
_BP: Final = 10_000
#: Sequencer time between two checks of every conditional order before a command (the mark moves
#: with index quotes and with time; a trade on the market is checked at once, in its command).
CHECK_EVERY_NS: Final = 100_000_000
#: Untriggered conditional orders one owner may have on one market (a limit on everything).
MAX_CONDITIONAL_PER_MARKET: Final = 100


class WouldTrigger(ValidationError):
    """The trigger (or a trailing stop's activation price) is already reached: Binance's -2021."""

    code = "RF_WOULD_TRIGGER"


class LotSizeRefused(ValidationError):
    """The quantity breaks the market's LOT_SIZE filter the way a plain order's would (its maxQty):
    refused at placement, not when the order fires. The API answers as for a plain order (-1013)."""

    code = "RF_LOT_SIZE"


class ConditionalOrder:
    """One untriggered conditional order. `activated`/`extreme`: a trailing stop's state."""

    __slots__ = ("id", "owner", "symbol", "is_buy", "order_type", "quantity", "trigger", "price", "tif", "mark",
                 "reduce_only", "close_position", "callback_bp", "activation", "activated", "extreme", "client_id")

    def __init__(self, id: int, owner: str, symbol: str, is_buy: bool, order_type: str, quantity: int, trigger: int,
                 price: int, tif: str, mark: bool, reduce_only: bool, close_position: bool, callback_bp: int,
                 activation: int, activated: bool = False, extreme: int = 0, client_id: str = "") -> None:
        self.id, self.owner, self.symbol, self.is_buy, self.order_type = id, owner, symbol, is_buy, order_type
        self.quantity, self.trigger, self.price, self.tif, self.mark = quantity, trigger, price, tif, mark
        self.reduce_only, self.close_position, self.callback_bp = reduce_only, close_position, callback_bp
        self.activation, self.activated, self.extreme, self.client_id = activation, activated, extreme, client_id

    def row(self) -> list[Any]:
        return [self.id, self.owner, self.symbol, int(self.is_buy), self.order_type, self.quantity, self.trigger,
                self.price, self.tif, int(self.mark), int(self.reduce_only), int(self.close_position), self.callback_bp,
                self.activation, int(self.activated), self.extreme, self.client_id]

    @classmethod
    def from_row(cls, r: list[Any]) -> "ConditionalOrder":
        return cls(r[0], r[1], r[2], bool(r[3]), r[4], r[5], r[6], r[7], r[8], bool(r[9]), bool(r[10]), bool(r[11]),
                   r[12], r[13], bool(r[14]), r[15], r[16])


# ------------------------------------------------------------------------------ the rules (pure)


def reached(take_profit: bool, is_buy: bool, trigger: int, price: int) -> bool:
    """Has `price` reached the trigger? A stop: a BUY at ≥, a SELL at ≤; a take-profit the other way.
    No price yet (0) reaches nothing."""
    if price <= 0:
        return False
    if is_buy != take_profit:  # a buy stop or a sell take-profit: fires at or above
        return price >= trigger
    return price <= trigger


def trail(o: ConditionalOrder, price: int) -> bool:
    """Show a trailing stop the working price `price`: activate it, follow the extreme; True when
    it fires. Seeing the same price twice changes nothing (so evaluating again is harmless)."""
    if price <= 0:
        return False
    if not o.activated:
        if o.activation and (price < o.activation if not o.is_buy else price > o.activation):
            return False
        o.activated, o.extreme = True, price
        return False
    if o.is_buy:
        if price < o.extreme:
            o.extreme = price
        return price * _BP >= o.extreme * (_BP + o.callback_bp)
    if price > o.extreme:
        o.extreme = price
    return price * _BP <= o.extreme * (_BP - o.callback_bp)


def working_price(engine: Engine, st: DerivativesState, symbol: str, mark: bool) -> int:
    if mark:
        return mark_of_perp(engine, st.perps[symbol])
    return int(trading_state(engine).markets[symbol].last_price)


# ------------------------------------------------------------------------------ place and cancel


def _check(engine: Engine, c: PlaceConditionalOrder) -> tuple[bool, bool, str]:
    """Every check of a new conditional order (no change): (take-profit, trailing, placed type)."""
    st = derivatives_state(engine)
    p = st.perps.get(c.symbol)
    if p is None:
        raise NotFound(f"unknown perpetual {c.symbol!r}", field="symbol")
    kind = CONDITIONAL_TYPES.get(c.order_type)
    if kind is None:
        raise ValidationError(f"order_type must be one of {', '.join(CONDITIONAL_TYPES)}", field="order_type")
    take_profit, trailing, places = kind
    if c.side not in ("BUY", "SELL"):
        raise ValidationError("side must be BUY or SELL", field="side")
    if not _OWNER_RE.fullmatch(c.owner):
        raise ValidationError("owner must be 1-64 characters of a-z, 0-9, '_', '.', '-'", field="owner")
    if c.client_algo_id and not _COID_RE.fullmatch(c.client_algo_id):
        raise ValidationError("client_algo_id must match ^[.A-Za-z0-9:/_-]{1,36}$", field="client_algo_id")
    if c.working_type not in WORKING_TYPES:
        raise ValidationError("working_type must be CONTRACT_PRICE or MARK_PRICE", field="working_type")
    if c.tif not in ("GTC", "IOC", "FOK"):
        raise ValidationError("tif must be GTC, IOC or FOK", field="tif")
    for name in ("reduce_only", "close_position"):
        if getattr(c, name) not in (0, 1):
            raise ValidationError(f"{name} must be 0 or 1", field=name)
    for name, hi in (("quantity", MAX_QTY), ("trigger_price", MAX_PRICE), ("price", MAX_PRICE), ("activation_price", MAX_PRICE)):
        if not 0 <= getattr(c, name) <= hi:
            raise ValidationError(f"{name} must be within 0..{hi}", field=name)
    m = trading_state(engine).markets[c.symbol]
    qd, bd = engine.ledger.assets.get(p.quote).decimals, engine.ledger.assets.get(p.base).decimals
    if c.close_position:
        if places != "MARKET" or trailing:
            raise ValidationError("close_position is for STOP_MARKET and TAKE_PROFIT_MARKET only", field="close_position")
        if c.quantity or c.reduce_only:
            raise ValidationError("close_position takes no quantity and no reduce_only (it closes the whole position)",
                                  field="quantity" if c.quantity else "reduce_only")
    elif not c.quantity or c.quantity % m.lot or c.quantity < m.min_qty:
        raise ValidationError(f"quantity must be a positive multiple of the lot size {format_amount(m.lot, bd, trim=True)}, "
                              f"at least {format_amount(m.min_qty, bd, trim=True)}", field="quantity")
    elif _qty_problem(m, c.quantity) is not None:  # the rest of a plain order's LOT_SIZE filter: maxQty
        raise LotSizeRefused(f"quantity must be at most {format_amount(m.max_qty, bd, trim=True)}", field="quantity")
    if (places == "LIMIT") != (c.price > 0):
        raise ValidationError("price is required for STOP and TAKE_PROFIT and only for them", field="price")
    if trailing:
        if c.trigger_price:
            raise ValidationError("a trailing stop has no trigger_price (activation_price and callback_bp)", field="trigger_price")
        if not MIN_CALLBACK_BP <= c.callback_bp <= MAX_CALLBACK_BP:
            raise ValidationError(f"callback_bp must be within {MIN_CALLBACK_BP}..{MAX_CALLBACK_BP} (0.1 %..10 %)", field="callback_bp")
    else:
        if c.trigger_price <= 0:
            raise ValidationError("trigger_price is required", field="trigger_price")
        if c.callback_bp or c.activation_price:
            raise ValidationError("callback_bp and activation_price are for TRAILING_STOP_MARKET only",
                                  field="callback_bp" if c.callback_bp else "activation_price")
    for name in ("trigger_price", "price", "activation_price"):
        if getattr(c, name) % m.tick:
            raise ValidationError(f"{name} must be a multiple of the tick size {format_amount(m.tick, qd, trim=True)}", field=name)
    if st.conditional_count.get((c.owner, c.symbol), 0) >= MAX_CONDITIONAL_PER_MARKET:
        raise ValidationError(f"at most {MAX_CONDITIONAL_PER_MARKET} open conditional orders per market", field="symbol")
    if c.client_algo_id and (c.owner, c.client_algo_id) in st.conditional_ids:
        raise ValidationError("client_algo_id is already used by an open conditional order", field="client_algo_id")
    # Binance's -2021: a trigger (an activation price) the working price has already reached
    now = working_price(engine, st, c.symbol, c.working_type == "MARK_PRICE")
    is_buy = c.side == "BUY"
    edge, name = (c.activation_price, "activation_price") if trailing else (c.trigger_price, "trigger_price")
    # (a trailing stop's activation price is reached the way a take-profit's trigger is)
    if edge and reached(take_profit or trailing, is_buy, edge, now):
        raise WouldTrigger(f"the {c.working_type.lower().replace('_', ' ')} "
                           f"{format_amount(now, qd, trim=True)} has already reached {name} {format_amount(edge, qd, trim=True)}",
                           field=name)
    return take_profit, trailing, places


def _precheck(engine: Engine, c: PlaceConditionalOrder) -> None:
    _check(engine, c)


def _effect(engine: Engine, c: PlaceConditionalOrder) -> Effect:
    return Effect.REDUCES_RISK if c.reduce_only == 1 or c.close_position == 1 else Effect.OPENS_RISK


def _place_conditional(engine: Engine, c: PlaceConditionalOrder) -> list[Event]:
    _, trailing, _ = _check(engine, c)
    st = derivatives_state(engine)
    ts = trading_state(engine)
    # ---- checked: the id comes from trading's order ids, so an algo id is never an order id
    algo_id = ts.next_order_id
    ts.next_order_id += 1
    mark = c.working_type == "MARK_PRICE"
    o = ConditionalOrder(algo_id, c.owner, c.symbol, c.side == "BUY", c.order_type, c.quantity, c.trigger_price, c.price,
                         c.tif, mark, c.reduce_only == 1, c.close_position == 1, c.callback_bp, c.activation_price,
                         client_id=c.client_algo_id)
    if trailing:
        trail(o, working_price(engine, st, c.symbol, mark))  # no activation price: active at today's price
    add_conditional(st, o)
    if len(st.conditional) == 1:  # the first: the periodic check starts
        st.conditional_check_ns = engine.now_ns + CHECK_EVERY_NS
        engine.wake_at(st.conditional_check_ns)
    return [ConditionalOrderAccepted(c.symbol, algo_id, c.owner, c.client_algo_id, c.side, c.order_type, c.quantity,
                                     c.trigger_price, c.price, c.tif, c.working_type, c.reduce_only, c.close_position,
                                     c.callback_bp, c.activation_price)]


def _find(engine: Engine, c: CancelConditionalOrder) -> ConditionalOrder:
    o = derivatives_state(engine).conditional.get(c.algo_id)
    if o is None or o.owner != c.owner or o.symbol != c.symbol:
        raise NotFound("no such open conditional order", field="algo_id")
    return o


def _cancel(engine: Engine, c: CancelConditionalOrder) -> list[Event]:
    o = _find(engine, c)
    remove_conditional(derivatives_state(engine), o)
    return [ConditionalOrderEnded(o.symbol, o.id, o.owner, "CANCELED", "")]


# ------------------------------------------------------------------------------ firing


def fire_conditionals(engine: Engine, ev: list[Event], symbol: str | None = None) -> None:
    """Fire every conditional order (of `symbol`, or all) whose working price has reached it,
    oldest first, again after each placement (it may have traded), until none fires."""
    st = derivatives_state(engine)
    if not st.conditional or st.firing:
        return
    st.firing = True
    try:
        for _ in range(len(st.conditional) + 1):  # each round fires at least one, or ends
            due = _due(engine, st, symbol)
            if not due:
                return
            for o, price in due:
                remove_conditional(st, o)
                _trigger(engine, st, o, price, ev)
    finally:
        st.firing = False


class TriggerIndex:
    """One (market, working type) group's untriggered orders, derived (never in a snapshot):
    `rising` fire when the price rises to their trigger (a BUY stop, a SELL take-profit),
    `falling` when it falls to it (a SELL stop, a BUY take-profit), each `(trigger, id)` ascending,
    so a check is two bisections; trailing stops (their trigger moves) are looked at one by one.
    `seen`: the price the group was last checked at (None: not yet)."""

    __slots__ = ("rising", "falling", "trailing", "seen", "bounds")

    def __init__(self) -> None:
        self.rising: list[tuple[int, int]] = []
        self.falling: list[tuple[int, int]] = []
        self.trailing: list[int] = []
        self.seen: int | None = None
        #: The trailing stops' bounds from their last look (None: look at all of them next time):
        #: (SELL: lowest extreme, highest fire level × 10⁴, lowest activation price;
        #:  BUY: highest extreme, lowest fire level × 10⁴, highest activation price).
        #: A price inside all of them changes no trailing stop, so they are not looked at. An order
        #: removed since leaves them wider than they need be (a look too many, never one too few).
        self.bounds: tuple[int, int, int, int, int, int] | None = None

    def __len__(self) -> int:
        return len(self.rising) + len(self.falling) + len(self.trailing)


def _slot(g: TriggerIndex, o: ConditionalOrder) -> list[tuple[int, int]] | None:
    take_profit, trailing, _ = CONDITIONAL_TYPES[o.order_type]
    if trailing:
        return None
    return g.rising if o.is_buy != take_profit else g.falling


def add_conditional(st: DerivativesState, o: ConditionalOrder) -> None:
    st.conditional[o.id] = o
    mine = (o.owner, o.symbol)
    st.conditional_count[mine] = st.conditional_count.get(mine, 0) + 1
    if o.client_id:
        st.conditional_ids[(o.owner, o.client_id)] = o.id
    key = (o.symbol, o.mark)
    g = st.conditional_groups.get(key)
    if g is None:
        g = st.conditional_groups[key] = TriggerIndex()
    slot = _slot(g, o)
    if slot is None:
        g.trailing.append(o.id)
        g.bounds = None
    else:
        insort(slot, (o.trigger, o.id))
    g.seen = None  # looked at again at the next check


def remove_conditional(st: DerivativesState, o: ConditionalOrder) -> None:
    del st.conditional[o.id]
    mine = (o.owner, o.symbol)
    left = st.conditional_count[mine] - 1
    if left:
        st.conditional_count[mine] = left
    else:
        del st.conditional_count[mine]
    if o.client_id:
        del st.conditional_ids[(o.owner, o.client_id)]
    key = (o.symbol, o.mark)
    g = st.conditional_groups[key]
    slot = _slot(g, o)
    if slot is None:
        g.trailing.remove(o.id)
    else:
        i = bisect_left(slot, (o.trigger, o.id))
        assert slot[i] == (o.trigger, o.id), "the trigger index lost an order"
        del slot[i]
    if not len(g):
        del st.conditional_groups[key]


def _due(engine: Engine, st: DerivativesState, symbol: str | None) -> list[tuple[ConditionalOrder, int]]:
    """The orders that fire now, each with the working price it fired at, oldest first.

    A group whose price has not moved since its last check is skipped: its orders have seen that
    price already (or were placed at it, and `seen` is reset then), and seeing a price again
    changes nothing (`reached` is a pure test, `trail` idempotent), so skipping changes no outcome,
    only the work. The bisections fire exactly what `reached` says (tests/derivatives)."""
    due: list[tuple[ConditionalOrder, int]] = []
    orders = st.conditional
    for key, g in st.conditional_groups.items():
        if symbol is not None and key[0] != symbol:
            continue
        price = working_price(engine, st, key[0], key[1])
        if g.seen == price:
            continue
        g.seen = price
        if price <= 0:
            continue  # no price yet reaches nothing
        rising, falling = g.rising, g.falling
        if rising and rising[0][0] <= price:
            due.extend((orders[oid], price) for _, oid in rising[: bisect_right(rising, (price, 1 << 62))])
        if falling and falling[-1][0] >= price:
            due.extend((orders[oid], price) for _, oid in falling[bisect_left(falling, (price, -1)):])
        if g.trailing and _trailing_may_act(g.bounds, price):
            g.bounds = _look_at_trailing(g, orders, price, due)
    due.sort(key=lambda d: d[0].id)
    if due:
        due = _not_halted(engine, st, due)
    return due


def as_direct_order(o: ConditionalOrder) -> PlacePerpOrder:
    """The order a client would submit directly for what `o` places when it fires (what the halt
    guard is asked about: its symbol, side, type and whether it is reduce-only)."""
    places = CONDITIONAL_TYPES[o.order_type][2]
    limit = places == "LIMIT"
    return PlacePerpOrder(o.owner, o.symbol, "BUY" if o.is_buy else "SELL", places, o.tif if limit else "IOC",
                          o.price if limit else 0, o.quantity, 0, "", int(o.reduce_only or o.close_position))


def _not_halted(engine: Engine, st: DerivativesState,
                due: list[tuple[ConditionalOrder, int]]) -> list[tuple[ConditionalOrder, int]]:
    """`due` without the orders a halt holds. A held order stays armed: its group is looked at
    again at the next check (`seen`, and the trailing bounds that left it out, are forgotten), so
    it fires once the halt lifts if its price is still beyond the trigger."""
    kept: list[tuple[ConditionalOrder, int]] = []
    for o, price in due:
        if refusal_of(engine, as_direct_order(o)) is None:
            kept.append((o, price))
            continue
        g = st.conditional_groups[(o.symbol, o.mark)]
        g.seen, g.bounds = None, None
    return kept


_FAR: Final = 1 << 200


def _trailing_may_act(b: tuple[int, int, int, int, int, int] | None, price: int) -> bool:
    """Could `price` activate, move the extreme of or fire any trailing stop within bounds `b`?"""
    if b is None:
        return True
    s_ext, s_fire, s_act, b_ext, b_fire, b_act = b
    p = price * _BP
    return price > s_ext or p <= s_fire or price >= s_act or price < b_ext or p >= b_fire or price <= b_act


def _look_at_trailing(g: TriggerIndex, orders: dict[int, ConditionalOrder], price: int,
                      due: list[tuple[ConditionalOrder, int]]) -> tuple[int, int, int, int, int, int]:
    """Show every trailing stop of `g` the price; collect those that fire; the bounds of the rest."""
    s_ext, s_fire, s_act, b_ext, b_fire, b_act = _FAR, -_FAR, _FAR, -_FAR, _FAR, -_FAR
    for oid in g.trailing:
        o = orders[oid]
        if trail(o, price):
            due.append((o, price))
        elif not o.activated:
            if o.is_buy:
                b_act = max(b_act, o.activation or _FAR)  # (no activation price: any price activates it)
            else:
                s_act = min(s_act, o.activation)
        elif o.is_buy:
            b_ext, b_fire = max(b_ext, o.extreme), min(b_fire, o.extreme * (_BP + o.callback_bp))
        else:
            s_ext, s_fire = min(s_ext, o.extreme), max(s_fire, o.extreme * (_BP - o.callback_bp))
    return s_ext, s_fire, s_act, b_ext, b_fire, b_act


def _trigger(engine: Engine, st: DerivativesState, o: ConditionalOrder, price: int, ev: list[Event]) -> None:
    """Place what `o` becomes; its own rejection ends it here (not as an `OrderRejected`, which
    the API of whatever command this runs in would take for its own)."""
    qty, reduce_only = o.quantity, o.reduce_only
    side = "BUY" if o.is_buy else "SELL"
    if o.close_position:
        pos = st.positions.get((o.owner, o.symbol))
        size = pos.size if pos is not None else 0
        qty, reduce_only = (abs(size), True) if (size < 0) == o.is_buy and size else (0, True)
        if not qty:
            ev.append(ConditionalOrderTriggered(o.symbol, o.id, o.owner, price, 0, "NO_POSITION"))
            return
    places = CONDITIONAL_TYPES[o.order_type][2]
    order = PlaceOrder(o.owner, o.symbol, side, places, o.tif if places == "LIMIT" else "IOC", o.price if places == "LIMIT" else 0,
                       qty, 0, 0, "")
    mine: list[Event] = []
    st.reduce_only = reduce_only
    try:
        _trading_place(engine, trading_state(engine), order, mine)
    finally:
        st.reduce_only = False
    order_id, reason = 0, ""
    for e in mine:
        if type(e) is OrderRejected and not order_id:
            reason = e.reason
            continue
        if type(e) is OrderAccepted and not order_id:
            order_id = e.order_id
        ev.append(e)
    ev.append(ConditionalOrderTriggered(o.symbol, o.id, o.owner, price, order_id, reason))


def _check_cancel(engine: Engine, c: CancelConditionalOrder) -> None:
    _find(engine, c)


def register(module: Any) -> None:
    """Declare the commands, events and the watch on `module` (the derivatives module)."""
    module.declare_events(ConditionalOrderAccepted, ConditionalOrderTriggered, ConditionalOrderEnded)
    module.handles(PlaceConditionalOrder, precheck=_precheck, scopes=market_scopes, effect=_effect)(_place_conditional)
    module.handles(CancelConditionalOrder, precheck=_check_cancel, scopes=market_scopes, effect=Effect.REDUCES_RISK)(_cancel)

    @module.timer(lambda st: st.conditional_check_ns if st.conditional else NEVER)
    def _watch(engine: Engine) -> list[Event]:
        st = derivatives_state(engine)
        if not st.conditional or engine.now_ns < st.conditional_check_ns:
            return []  # (the module's other timer woke the engine)
        st.conditional_check_ns = engine.now_ns + CHECK_EVERY_NS
        ev: list[Event] = []
        fire_conditionals(engine, ev)
        return ev
