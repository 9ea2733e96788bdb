"""Order commands: place, cancel, cancel-all and amend (alone or in a `TradingBatch`).

Every action validates first and mutates after; an order-level refusal is an `OrderRejected`
event (with a reason code from `REASONS`) and changes nothing. Accepted orders run through the
matching loop in `matching.py`.
"""

from typing import Any, Callable, Final, NamedTuple, Protocol

from msgspec.structs import astuple
from ..engine.commands import Event
from ..engine.core import Engine
from ..engine.module import Effect
from ..ledger.ledger import Ledger
from .module import MODULE, market_scopes, amend_effect, batch_actions
from .admin import _band_watch
from .book import ACTIVE, HALTED, Market, Order, notional
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
from .vocabulary import OrderType, SelfTradePrevention, Side, TimeInForce
from ..risk.halts import refusal_of

__all__ = ["REASONS", "check_place"]

# Members as module constants (a global is ~10x cheaper than `OrderType.MARKET` in CPython 3.11).
# `Final`: compiled (ringfence/native.py), each is a C static rather than a module-dict lookup.
_BUY: Final = Side.BUY
_SELL: Final = Side.SELL
_LIMIT_MAKER: Final = OrderType.LIMIT_MAKER
_MARKET: Final = OrderType.MARKET
_STOP_LIMIT: Final = OrderType.STOP_LIMIT
_STOP_MARKET: Final = OrderType.STOP_MARKET
_GTC: Final = TimeInForce.GTC
_IOC: Final = TimeInForce.IOC
_FOK: Final = TimeInForce.FOK
#: Far below `MAX_PRICE` and `MAX_QTY` (10**30), and a short int when compiled (`_parse_order`).
_FAR_BELOW_LIMITS: Final = 1 << 61
#: A cancel's and an amend's fields in one call (`msgspec.structs.astuple`: one C call reading the
#: struct's slots): compiled, each `c.field` is a generic attribute lookup on a Python object
#: (~240 instructions; five of them were a fifth of an amend). Their order is the commands' field
#: order, checked (with `_PLACE_FIELDS`) so that a reordered command cannot be read wrong.
_ASTUPLE: Final = astuple
#: The events an amend emits, as C statics (an imported class is otherwise looked up in the
#: module's globals on every use).
_ORDER_AMENDED: Final = OrderAmended
_ORDER_RESTED: Final = OrderRested
_AMEND_FIELDS: Final = ("owner", "symbol", "order_id", "price", "quantity")
_CANCEL_FIELDS: Final = ("owner", "symbol", "order_id", "client_order_id")

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


class NewOrder(Protocol):
    """What placing reads of a new order: a `PlaceOrder`, or a perpetual's `PlacePerpOrder`
    (ringfence.derivatives), which `_place` takes as it is rather than as a `PlaceOrder` built
    for it (that copy was a tenth of a perpetual order's own cost). Read-only properties, so that
    a command may answer with a class attribute (`PlacePerpOrder.quote_amount` is always 0)."""

    @property
    def owner(self) -> str: ...
    @property
    def symbol(self) -> str: ...
    @property
    def side(self) -> str: ...
    @property
    def order_type(self) -> str: ...
    @property
    def tif(self) -> str: ...
    @property
    def price(self) -> int: ...
    @property
    def quantity(self) -> int: ...
    @property
    def quote_amount(self) -> int: ...
    @property
    def stop_price(self) -> int: ...
    @property
    def client_order_id(self) -> str: ...
    @property
    def stp(self) -> str: ...


class _Placed:
    """A new order's fields, read from its command once (`_fields_of`) and then read by placing's
    checks as a compiled class's own attributes: compiled, each `c.price` of a command is a generic
    attribute lookup on a Python object (~180 instructions), and placing a limit order made about
    25 of them. A `NewOrder` itself, so that helpers typed for any new order take it too."""

    def __init__(self, owner: str, symbol: str, side: str, order_type: str, tif: str, price: int, quantity: int,
                 quote_amount: int, stop_price: int, client_order_id: str, stp: str) -> None:
        self.owner = owner
        self.symbol = symbol
        self.side = side
        self.order_type = order_type
        self.tif = tif
        self.price = price
        self.quantity = quantity
        self.quote_amount = quote_amount
        self.stop_price = stop_price
        self.client_order_id = client_order_id
        self.stp = stp


#: `PlaceOrder`'s fields in the order `_fields_of` reads them by position (checked at import).
_PLACE_FIELDS: Final = ("owner", "symbol", "side", "order_type", "tif", "price", "quantity", "quote_amount",
                        "stop_price", "client_order_id", "stp")


#: The fields of a new order without a quote amount or a self-trade mode of its own (a perpetual's
#: `PlacePerpOrder`: both are class attributes, 0 and "NONE"), in the order `_fields_of` reads them
#: by position; such a command type is named by `read_by_position`, which checks it.
_NO_QUOTE_FIELDS: Final = ("owner", "symbol", "side", "order_type", "tif", "price", "quantity", "stop_price",
                           "client_order_id", "reduce_only")
#: The command types `read_by_position` accepted (a perpetual's order, registered by derivatives).
_no_quote_types: set[type] = set()


def read_by_position(cls: type) -> None:
    """Let `_fields_of` read new orders of type `cls` by position with one `astuple`, as it reads a
    `PlaceOrder` (for a perpetual's order ~1,500 instructions fewer than eleven generic attribute
    reads, compiled). `cls` must have exactly `_NO_QUOTE_FIELDS` as its fields, and `quote_amount`
    0 and `stp` "NONE" as class attributes: else ImportError, as for PlaceOrder's order below."""
    if (getattr(cls, "__struct_fields__", None) != _NO_QUOTE_FIELDS or getattr(cls, "quote_amount", None) != 0
            or getattr(cls, "stp", None) != "NONE"):
        raise ImportError(f"trading.orders cannot read {cls.__name__} by field position: update _NO_QUOTE_FIELDS")
    _no_quote_types.add(cls)


def _fields_of(c: NewOrder) -> _Placed:
    """The fields of new order `c`: a `PlaceOrder`'s, or a type `read_by_position` named (a
    perpetual's `PlacePerpOrder`), with one `astuple`; another's attribute by attribute."""
    if type(c) is PlaceOrder:
        t: tuple[str, str, str, str, str, int, int, int, int, str, str] = _ASTUPLE(c)
        return _Placed(t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], t[8], t[9], t[10])
    if type(c) in _no_quote_types:
        struct: Any = c  # (a msgspec Struct: `read_by_position` checked its type)
        n: tuple[str, str, str, str, str, int, int, int, str, int] = _ASTUPLE(struct)
        return _Placed(n[0], n[1], n[2], n[3], n[4], n[5], n[6], 0, n[7], n[8], "NONE")
    return _Placed(c.owner, c.symbol, c.side, c.order_type, c.tif, c.price, c.quantity, c.quote_amount,
                   c.stop_price, c.client_order_id, c.stp)


if (AmendOrder.__struct_fields__ != _AMEND_FIELDS or CancelOrder.__struct_fields__ != _CANCEL_FIELDS
        or PlaceOrder.__struct_fields__ != _PLACE_FIELDS):
    raise ImportError("trading.orders reads PlaceOrder, AmendOrder and CancelOrder by field position: update it")


class _Refusal(NamedTuple):
    """Why a new order is refused: a stable reason (`REASONS`), the field at fault, a message."""

    reason: str
    field: str
    message: str


def _place(engine: Engine, st: TradingState, c: NewOrder, ev: list[Event], dry_run: bool = False,
           placed: _Placed | None = None) -> None:
    """Check a new order against every market rule and the owner's balance, then place it.

    With `dry_run` (`check_place`, for the API's `order/test`) it stops where placing would start
    mutating, and it does not run the band timer (which may change the market's status). Every
    check runs before the first change (validate, then execute). `placed`: `c`'s fields as
    `_fields_of` reads them, when the caller has read them already (a perpetual's handler).
    """
    f = _fields_of(c) if placed is None else placed
    m = st.markets.get(f.symbol)
    if m is None:
        return _reject(ev, "PLACE", c, "UNKNOWN_MARKET", "symbol", f"unknown market {f.symbol!r}")
    parsed = _parse_order(f)
    if isinstance(parsed, _Refusal):
        return _reject(ev, "PLACE", c, *parsed)
    is_buy, limitish = parsed[0], parsed[4]
    if (m.band_hi or m.out_of_band) and not dry_run:
        _band_watch(m, engine.now_ns, ev)
    refusal = _market_refusal(m, f, parsed)
    if refusal is not None:
        return _reject(ev, "PLACE", c, *refusal)
    if m.contract is not None:  # a perpetual: margin in the quote asset (ringfence.derivatives)
        # (handed the fields as read: `f`, a native record, where `c` is a command's generic attributes)
        contract_refusal, protect_minor, hold_minor = m.contract.order_hold(engine, m, f, parsed)
        if contract_refusal is not None:
            return _reject(ev, "PLACE", c, *contract_refusal)
    elif limitish:  # a limit buy holds what it can cost at its price, a sell its quantity
        protect_minor, hold_minor = 0, (notional(f.price, f.quantity, m.base_scale) if is_buy else f.quantity)
    else:
        protect_minor, hold_minor = _protection_and_hold(m, f, parsed)
    ledger: Ledger = engine.ledger
    segment = m.segment
    pay_asset, recv_asset = (m.quote, m.base) if is_buy else (m.base, m.quote)
    if m.contract is not None:  # a perpetual pays and receives its quote asset: the wallet its contract found
        pay_asset = recv_asset = m.quote
        pay = recv = m.contract.order_wallet
    else:
        pay, recv = ledger.find_pair(f.owner, pay_asset, recv_asset, "available", segment)
    if hold_minor:  # (a perpetual's margin was checked by its contract, which may still move some)
        if pay is None or (m.contract is None and not ledger.can_hold(pay, hold_minor)):
            return _reject(ev, "PLACE", c, "INSUFFICIENT_BALANCE", "quantity", "Account has insufficient balance for requested action.")
    if (recv is None or pay is None) and not ledger.can_open_accounts((recv is None) + (pay is None)):
        return _reject(ev, "PLACE", c, "SHARD_FULL", "owner", "this shard cannot open more accounts; contact support")
    if dry_run:
        return
    # ---- every check passed: mutate from here on ----
    if m.contract is not None:
        m.contract.before_hold(engine, m, c)
    if recv is None:
        recv = ledger.open_account(f.owner, recv_asset, "available", segment)[0]
    if pay is None:
        pay = ledger.open_account(f.owner, pay_asset, "available", segment)[0]
    _open_order(engine, st, m, f, parsed, pay, recv, protect_minor, hold_minor, ev)


def _parse_order(c: _Placed) -> "_Words | _Refusal":
    """The order's own fields, each checked and its words turned into value types (`_Words`).
    Needs no market; changes nothing but the owner-name cache."""
    words = _WORDS.get((c.side, c.order_type, c.tif, c.stp))
    if words is None:
        return _word_refusal(c)
    _, typ, tif, _, limitish, is_stop = words
    owner, coid = c.owner, c.client_order_id
    if owner not in _VALID_OWNERS:
        if not _OWNER_RE.fullmatch(owner):
            return _Refusal("INVALID_PARAMETER", "owner", "owner must be 1-64 characters of a-z, 0-9, '_', '.', '-'")
        if len(_VALID_OWNERS) >= 1_000_000:
            _VALID_OWNERS.clear()
        _VALID_OWNERS.add(owner)
    if coid and not _COID_RE.fullmatch(coid):
        return _Refusal("INVALID_PARAMETER", "client_order_id", "client_order_id must match ^[.A-Za-z0-9:/_-]{1,36}$")
    price_minor, qty_minor, quote_minor, stop_minor = c.price, c.quantity, c.quote_amount, c.stop_price
    # (A Python int ORed with a negative one is negative: one test for "none is below zero"; the
    # OR of non-negative ones is at least each: the limits, 10**30, are asked only past 2**61. A
    # comparison with so large an int takes mypyc's slow path, one with a short int does not.)
    bits = price_minor | stop_minor | qty_minor | quote_minor
    if bits < 0 or (bits > _FAR_BELOW_LIMITS and (price_minor > MAX_PRICE or stop_minor > MAX_PRICE or qty_minor > MAX_QTY or quote_minor > MAX_QTY)):
        for value, name, hi in ((price_minor, "price", MAX_PRICE), (stop_minor, "stop_price", MAX_PRICE), (qty_minor, "quantity", MAX_QTY), (quote_minor, "quote_amount", MAX_QTY)):
            if not 0 <= value <= hi:
                return _Refusal("INVALID_PARAMETER", name, f"{name} must be between 0 and {hi}")
    if limitish:
        if not price_minor or not qty_minor or quote_minor:
            return _Refusal("INVALID_PARAMETER", "price" if not price_minor else "quantity", f"{typ} needs price and quantity (and no quote_amount)")
    elif typ == _MARKET:
        if (qty_minor > 0) == (quote_minor > 0):
            return _Refusal("INVALID_PARAMETER", "quantity", "MARKET needs exactly one of quantity and quote_amount")
    elif not qty_minor or quote_minor or price_minor:  # STOP_MARKET
        return _Refusal("INVALID_PARAMETER", "quantity", "STOP_MARKET needs quantity and stop_price only")
    if is_stop != (stop_minor > 0):
        return _Refusal("INVALID_PARAMETER", "stop_price", "stop_price is required for stop orders and only for them")
    if typ == _LIMIT_MAKER and tif != _GTC:
        return _Refusal("INVALID_PARAMETER", "tif", "LIMIT_MAKER is always GTC")
    if not limitish and tif == _FOK:
        return _Refusal("INVALID_PARAMETER", "tif", "market orders are IOC; FOK needs a limit price")
    return words


#: An order's words as value types, and what its type implies:
#: (is_buy, type, time in force, STP mode, limit-priced, a stop).
_Words = tuple[bool, OrderType, TimeInForce, SelfTradePrevention, bool, bool]

#: Every well-formed (side, order type, time in force, STP mode) of a command -> its `_Words`:
#: one lookup checks and converts all four (on a miss `_word_refusal` says which is wrong).
_WORDS: Final[dict[tuple[str, str, str, str], _Words]] = {
    (side.value, typ.value, tif.value, stp.value): (
        _SIDES[side], typ, tif, stp, typ in _LIMITISH, typ == _STOP_LIMIT or typ == _STOP_MARKET
    )
    for side in Side for typ in OrderType for tif in TimeInForce for stp in SelfTradePrevention
}


def _word_refusal(c: NewOrder) -> _Refusal:
    """Which of the order's words is not one of ours, checked in the order the API documents."""
    if c.side not in _SIDES:
        return _Refusal("INVALID_PARAMETER", "side", "side must be BUY or SELL")
    if c.order_type not in _TYPES:
        return _Refusal("INVALID_PARAMETER", "order_type", f"type must be one of {', '.join(sorted(_TYPES))}")
    if c.tif not in _TIFS:
        return _Refusal("INVALID_PARAMETER", "tif", "tif must be GTC, IOC or FOK")
    return _Refusal("INVALID_PARAMETER", "stp", f"stp must be one of {', '.join(sorted(_STPS))}")


def _market_refusal(m: Market, c: _Placed, words: _Words) -> _Refusal | None:
    """The market's rules for a well-formed order: status, tick, lot, band (price and stop price),
    minimum notional, stop trigger, post-only, duplicate client id, open-order and book limits."""
    price_minor, qty_minor, quote_minor, stop_minor = c.price, c.quantity, c.quote_amount, c.stop_price
    is_buy, typ, tif, _, limitish, is_stop = words
    if m.status is not ACTIVE:
        return _Refusal("MARKET_NOT_ACTIVE", "symbol", f"{m.symbol} is {m.status}; only cancels are accepted")
    tick, scale = m.tick, m.base_scale
    if price_minor % tick:
        return _Refusal("PRICE_NOT_ON_TICK", "price", f"price must be a multiple of the tick size {tick}")
    if stop_minor % tick:
        return _Refusal("PRICE_NOT_ON_TICK", "stop_price", f"stop_price must be a multiple of the tick size {tick}")
    # The LOT_SIZE filter, tested in line; `_qty_problem` only says what is wrong.
    if qty_minor and (qty_minor % m.lot or qty_minor < m.min_qty or (qty_minor > m.qty_cap and qty_minor > m.max_qty)):
        problem = _qty_problem(m, qty_minor)
        if problem is not None:
            return _Refusal(problem[0], "quantity", problem[1])
    if limitish and m.band_hi and not m.band_lo <= price_minor <= m.band_hi:
        return _Refusal("PRICE_OUTSIDE_BAND", "price", f"price must lie within {m.band_lo}..{m.band_hi} (the band around the reference price)")
    # A stop price gets the limit price's checks: a trigger the band could never reach is refused
    # now rather than resting for ever (and holding funds against an absurd price).
    if is_stop and m.band_hi and not m.band_lo <= stop_minor <= m.band_hi:
        return _Refusal("PRICE_OUTSIDE_BAND", "stop_price", f"stop_price must lie within {m.band_lo}..{m.band_hi} (the band around the reference price)")
    if m.min_notional:
        if limitish:
            notional_minor = price_minor * qty_minor // scale
        elif quote_minor:
            notional_minor = quote_minor
        elif typ == _STOP_MARKET:
            notional_minor = stop_minor * qty_minor // scale
        else:
            ref = m.ref_price or m.last_price
            notional_minor = ref * qty_minor // scale if ref else m.min_notional
        if notional_minor < m.min_notional:
            return _Refusal("BELOW_MIN_NOTIONAL", "quantity", f"price * quantity must be at least {m.min_notional}")
    last = m.last_price
    if is_stop and last and ((is_buy and last >= stop_minor) or (not is_buy and last <= stop_minor)):
        return _Refusal("STOP_WOULD_TRIGGER_IMMEDIATELY", "stop_price", f"the last price {last} has already reached stop_price")
    if typ == _LIMIT_MAKER and m.crosses(is_buy, price_minor):
        return _Refusal("POST_ONLY_WOULD_TAKE", "price", "a post-only order must not take liquidity")
    owner, coid = c.owner, c.client_order_id
    if coid and (owner, coid) in m.coids:
        return _Refusal("DUPLICATE_CLIENT_ORDER_ID", "client_order_id", "an open order of this account already uses this client_order_id")
    if (limitish and tif == _GTC) or is_stop:  # it can rest
        owned = m.by_owner.get(owner)
        if owned is not None and len(owned) >= m.max_open_per_account:
            return _Refusal("TOO_MANY_OPEN_ORDERS", "symbol", f"at most {m.max_open_per_account} open orders per account in {m.symbol}")
        if limitish and not is_stop:
            if m.book_orders >= m.max_book_orders or (
                len(m.bid_prices if is_buy else m.ask_prices) >= m.max_levels and m.level_limit_reached(is_buy, price_minor)
            ):
                return _Refusal("BOOK_FULL", "price", f"the {m.symbol} book is at its size limit")
    return None


def _protection_and_hold(m: Market, c: NewOrder, words: _Words) -> tuple[int, int]:
    """(protection price, amount to hold) of a new order, in quote minor units per base unit and in
    the paying asset's minor units. A market order's protection price is the best opposite price
    moved by the market's slippage (clamped to the band); a buy holds what its limit, protection
    price or quote amount can cost, a sell its quantity (by quote amount: enough base to raise the
    quote at the protection price, rounded up to a lot). Every rounding is against the user.
    (`_place` works out a limit order's hold itself, the common case: what this says for it.)"""
    price_minor, qty_minor, quote_minor, stop_minor = c.price, c.quantity, c.quote_amount, c.stop_price
    is_buy, typ = words[0], words[1]
    tick, scale = m.tick, m.base_scale
    protect_minor = 0
    if typ == _MARKET:
        if price_minor:
            protect_minor = price_minor
        else:
            best = (m.ask_prices[0] if m.ask_prices else 0) if is_buy else (m.bid_prices[-1] if m.bid_prices else 0)
            if best:
                if is_buy:
                    protect_minor = best * (_PPM + m.slippage_ppm) // _PPM // tick * tick
                else:
                    protect_minor = -(-best * (_PPM - m.slippage_ppm) // _PPM // tick) * tick
        if protect_minor and m.band_hi:
            protect_minor = min(protect_minor, m.band_hi // tick * tick) if is_buy else max(protect_minor, -(-m.band_lo // tick) * tick)
    elif typ == _STOP_MARKET:
        protect_minor = stop_minor * (_PPM + m.slippage_ppm) // _PPM // tick * tick if is_buy else -(-stop_minor * (_PPM - m.slippage_ppm) // _PPM // tick) * tick
    if is_buy:
        hold_minor = quote_minor if quote_minor else (price_minor if typ in _LIMITISH else protect_minor) * qty_minor // scale
    elif quote_minor:
        # Enough base to raise `quote_amount` even at the protection price, rounded up to a lot.
        base_needed_minor = -(-quote_minor * scale // protect_minor) if protect_minor else 0
        hold_minor = -(-base_needed_minor // m.lot) * m.lot
    else:
        hold_minor = qty_minor
    if typ == _MARKET and not protect_minor:
        hold_minor = 0  # an empty opposite side: accepted and expired at once, nothing held
    return protect_minor, hold_minor


def _open_order(
    engine: Engine, st: TradingState, m: Market, c: _Placed, words: _Words,
    pay: Any, recv: Any, protect_minor: int, hold_minor: int, ev: list[Event],
) -> None:
    """Create the checked order, hold its funds through the ledger, then rest it (a stop) or match it."""
    is_buy, typ, tif, stp, limitish, is_stop = words
    ledger: Ledger = engine.ledger
    owner, coid = c.owner, c.client_order_id
    price_minor, qty_minor, quote_minor, stop_minor = c.price, c.quantity, c.quote_amount, c.stop_price
    o = Order()
    oid = st.next_order_id
    st.next_order_id = oid + 1
    o.id = oid
    o.owner = owner
    o.is_buy = is_buy
    o.type = typ
    o.tif = _IOC if not limitish else tif
    o.price = price_minor if limitish else 0
    o.qty = qty_minor
    # By quote amount the base quantity is open-ended: a sell may deliver at most what it holds;
    # a buy is bounded by its quote (the match loop stops when the quote cannot buy one more lot).
    o.leaves = qty_minor if qty_minor else (hold_minor if not is_buy else MAX_QTY)
    o.filled = 0
    o.cum_quote = 0
    o.quote_left = quote_minor
    o.stop_price = stop_minor
    o.protect = protect_minor
    o.coid = coid
    o.stp = stp
    o.pay = pay
    o.recv = recv
    o.ts_ns = engine.now_ns
    contract = m.contract
    if contract is not None:  # a perpetual's fills read the hold's record (`Order.hold`): made below, if any
        ledger.last_hold = None  # (so a hold not made by `Ledger.hold` itself, an override's, leaves None)
    o.hold_id = ledger.hold(pay, m.clearing.quote if is_buy or contract is not None else m.clearing.base, hold_minor) if hold_minor else 0
    if contract is not None:
        o.hold = ledger.last_hold
        o.seat = contract.order_seat  # (set by its `order_hold` for this very order, just before)
    ev.append(OrderAccepted(m.symbol, oid, owner, coid, c.side, typ, o.tif, price_minor, qty_minor, quote_minor, stop_minor, stp, hold_minor))
    if not hold_minor:  # a market order that met an empty book: nothing was held, nothing can fill
        ev.append(OrderExpired(m.symbol, oid, owner, c.side, 0, qty_minor, False, "NO_LIQUIDITY", 0))
        return
    if is_stop:
        m.index(o)
        m.add_stop(o)
        return
    before = st.next_trade_id
    _execute(st, ledger, m, o, ev)
    if st.next_trade_id != before and (m.stops_buy or m.stops_sell):
        _trigger_stops(st, ledger, m, ev, _stops_held(engine, m))
    if m.contract is not None:  # a perpetual: cut down reduce-only orders the fills left too large
        m.contract.after_match(m, ev)


def _stops_held(engine: Engine, m: Market) -> Callable[[Order], bool] | None:
    """While a halt is active: which reached stops of `m` it holds. A stop triggers only if the
    order it places, submitted directly (`PlaceOrder`; on a perpetual `PlacePerpOrder`, reduce-only
    when the stop is), would pass the halt guard now — the guard's own check (`refusal_of`). A held
    stop stays resting, untriggered, and is looked at again at the next trade on the market."""
    halts = engine.components.get("halts")
    if halts is None or not halts._index:
        return None

    def held(o: Order) -> bool:
        typ = "LIMIT" if o.type == _STOP_LIMIT else "MARKET"
        direct = (m.contract.direct_order(o, typ) if m.contract is not None
                  else PlaceOrder(o.owner, m.symbol, "BUY" if o.is_buy else "SELL", typ))
        return refusal_of(engine, direct) is not None

    return held


# ------------------------------------------------------------------------------ cancel / amend


def _cancel(engine: Engine, st: TradingState, c: CancelOrder, ev: list[Event]) -> None:
    fields: tuple[str, str, int, str] = _ASTUPLE(c)  # (see _CANCEL_FIELDS)
    owner, symbol, oid, coid = fields
    m = st.markets.get(symbol)
    if m is None:
        return _reject(ev, "CANCEL", c, "UNKNOWN_MARKET", "symbol", f"unknown market {symbol!r}", oid)
    if m.band_hi or m.out_of_band:
        _band_watch(m, engine.now_ns, ev)
    if m.status == HALTED:
        return _reject(ev, "CANCEL", c, "MARKET_HALTED", "symbol", f"{m.symbol} is HALTED; nothing can change until it is lifted", oid)
    o = m.orders.get(oid) if oid else (m.coids.get((owner, coid)) if coid else None)
    if o is None or o.owner != owner:
        return _reject(ev, "CANCEL", c, "UNKNOWN_ORDER", "order_id", "Unknown order sent.", oid)
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
    ledger: Ledger = engine.ledger
    for oid in sorted(owned):
        o = m.orders[oid]
        resting = _take_out(m, o)
        _close(ledger, m, o, ev, OrderCanceled, "USER_CANCELED", resting)


def _amend(engine: Engine, st: TradingState, c: AmendOrder, ev: list[Event]) -> None:
    _amend_at(engine, st, engine.ledger, engine.now_ns, c, ev)


def _amend_at(engine: Engine, st: TradingState, ledger: Ledger, now_ns: int, c: AmendOrder, ev: list[Event]) -> None:
    """Amend, given the engine's ledger and sequencer time (a batch reads them once for all its
    actions: compiled, each is a generic attribute lookup on the engine, a Python object)."""
    # (The order id, and the new price when there is one, stay the command's own int objects:
    # compiled, the events, the order index and the book take them as they are, where a machine
    # integer is boxed again (a new int object) for each of them.)
    fields: tuple[str, str, Any, Any, int] = _ASTUPLE(c)  # (see _AMEND_FIELDS)
    owner, symbol, oid_obj, price_obj, new_qty = fields
    oid: int = oid_obj
    new_price: int = price_obj
    m = st.markets.get(symbol)
    if m is None:
        return _reject(ev, "AMEND", c, "UNKNOWN_MARKET", "symbol", f"unknown market {symbol!r}", oid)
    if m.band_hi or m.out_of_band:
        _band_watch(m, now_ns, ev)
    if m.status is not ACTIVE:  # (members are singletons: `is` is a pointer test, `!=` compares strings)
        return _reject(ev, "AMEND", c, "MARKET_NOT_ACTIVE", "symbol", f"{m.symbol} is {m.status}; only cancels are accepted", oid)
    o = m.orders.get(oid_obj)
    if o is None or o.owner != owner:
        return _reject(ev, "AMEND", c, "UNKNOWN_ORDER", "order_id", "Unknown order sent.", oid)
    if o.level is None:
        return _reject(ev, "AMEND", c, "ORDER_NOT_AMENDABLE", "order_id", "only resting limit orders can be amended", oid)
    if m.contract is not None:
        return _reject(ev, "AMEND", c, "ORDER_NOT_AMENDABLE", "order_id", "perpetual orders cannot be amended yet: cancel and place again", oid)
    price_minor = new_price or o.price
    qty_minor = new_qty or o.qty
    # (Both positive, and the limits (10**30) asked only past 2**61, as in `_parse_order`: a
    # compiled comparison with so large an int takes mypyc's slow path, on every amend.)
    if price_minor <= 0 or qty_minor <= 0 or (
        (price_minor | qty_minor) > _FAR_BELOW_LIMITS and (price_minor > MAX_PRICE or qty_minor > MAX_QTY)
    ):
        return _reject(ev, "AMEND", c, "INVALID_PARAMETER", "price" if not 0 < price_minor <= MAX_PRICE else "quantity", "price and quantity must be positive", oid)
    if price_minor % m.tick:
        return _reject(ev, "AMEND", c, "PRICE_NOT_ON_TICK", "price", f"price must be a multiple of the tick size {m.tick}", oid)
    # LOT_SIZE, in line (`qty_cap` first: a short int, `max_qty` is 10**30 unless set lower)
    if qty_minor % m.lot or qty_minor < m.min_qty or (qty_minor > m.qty_cap and qty_minor > m.max_qty):
        problem = _qty_problem(m, qty_minor)
        if problem is not None:
            return _reject(ev, "AMEND", c, problem[0], "quantity", problem[1], oid)
    leaves_minor = qty_minor - o.filled
    if leaves_minor <= 0:
        return _reject(ev, "AMEND", c, "INVALID_PARAMETER", "quantity", f"quantity must exceed the {o.filled} already filled", oid)
    reprice = price_minor != o.price
    if reprice:
        if m.band_hi and not m.band_lo <= price_minor <= m.band_hi:
            return _reject(ev, "AMEND", c, "PRICE_OUTSIDE_BAND", "price", f"price must lie within {m.band_lo}..{m.band_hi}", oid)
        if m.min_notional and notional(price_minor, qty_minor, m.base_scale) < m.min_notional:
            return _reject(ev, "AMEND", c, "BELOW_MIN_NOTIONAL", "price", f"price * quantity must be at least {m.min_notional}", oid)
        if o.type is _LIMIT_MAKER and m.crosses(o.is_buy, price_minor):
            return _reject(ev, "AMEND", c, "POST_ONLY_WOULD_TAKE", "price", "a post-only order must not take liquidity", oid)
        # (`level_limit_reached` can only say yes while that side has `max_levels` levels.)
        if len(m.bid_prices if o.is_buy else m.ask_prices) >= m.max_levels and m.level_limit_reached(o.is_buy, price_minor):
            return _reject(ev, "AMEND", c, "BOOK_FULL", "price", f"the {m.symbol} book is at its size limit", oid)
    is_buy = o.is_buy
    need_minor = notional(price_minor, leaves_minor, m.base_scale) if is_buy else leaves_minor
    # The last check is the first change: the ledger resizes the hold to the new need, or refuses
    # (changing nothing) when growing it would overdraw the payer.
    if not ledger.resize_hold_to(o.hold_id, o.pay, need_minor):
        return _reject(ev, "AMEND", c, "INSUFFICIENT_BALANCE", "quantity", "Account has insufficient balance for requested action.", oid)
    if not new_price:
        price_obj = price_minor  # (the order's own price, boxed)
    _amended(engine, st, ledger, now_ns, m, o, oid_obj, price_obj, price_minor, qty_minor, leaves_minor, reprice, ev)


def _amended(engine: Engine, st: TradingState, ledger: Ledger, now_ns: int, m: Market, o: Order, oid_obj: Any,
             price_obj: Any, price_minor: int, qty_minor: int, leaves_minor: int, reprice: bool, ev: list[Event]) -> None:
    """The checked amend of resting order `o` (its hold already resized): change it in place (a
    reduction keeps time priority) or re-enter it at the back of its level, trading if it crosses.
    `price_obj` is `price_minor` as an int object (the command's own, or boxed once)."""
    is_buy = o.is_buy
    if not reprice and qty_minor <= o.qty:  # a reduction keeps time priority
        o.level.total -= o.leaves - leaves_minor  # type: ignore[union-attr]  # a resting order is always on a level
        o.leaves = leaves_minor
        o.qty = qty_minor
        ev.append(_ORDER_AMENDED(m.symbol, oid_obj, price_obj, qty_minor, leaves_minor, True))
        return
    symbol = m.symbol
    # Boxed once for both events (compiled, each use of a machine integer as an object boxes it).
    leaves_obj: Any = leaves_minor
    ev.append(_ORDER_AMENDED(symbol, oid_obj, price_obj, qty_minor, leaves_obj, False))
    opposite = m.ask_prices if is_buy else m.bid_prices  # `m.crosses`, in line: a move's hot path
    if not opposite or (opposite[0] > price_minor if is_buy else opposite[-1] < price_minor):
        # It does not cross: straight to the back of its new level (the common "move"). (A new
        # price, or the same price with a larger quantity: `move` needs another level.)
        if reprice:
            m.move(o, price_minor, qty_minor, leaves_minor, now_ns, price_obj)
        else:
            m.unlink(o)
            o.qty, o.leaves = qty_minor, leaves_minor
            o.ts_ns = now_ns
            m.rest(o)
        ev.append(_ORDER_RESTED(symbol, oid_obj, o.owner, _BUY if is_buy else _SELL, price_obj, leaves_obj))
        return
    m.unlink(o)
    o.price, o.qty, o.leaves = price_minor, qty_minor, leaves_minor
    o.ts_ns = now_ns
    m.unindex(o)
    before = st.next_trade_id
    _execute(st, ledger, m, o, ev)
    if st.next_trade_id != before and (m.stops_buy or m.stops_sell):
        _trigger_stops(st, ledger, m, ev, _stops_held(engine, m))



# ------------------------------------------------------------------------------ handlers

# Order actions have no edge precheck: message sizes are enforced by the command types
# (`Annotated[..., Meta(max_length=...)]`) in the node's strict decode, before journaling, and
# market rules are answered by events in `apply`.


_DISPATCH: Final[dict[type, Callable[[Engine, TradingState, Any, list[Event]], None]]] = {
    PlaceOrder: _place,
    CancelOrder: _cancel,
    CancelAll: _cancel_all,
    AmendOrder: _amend,
}


# One handler per command type, each calling its action directly: compiled, these are native
# calls (a handler made by a closure over the action called it as a Python object: the arguments
# checked and converted again on every command).


def _handle_place(engine: Engine, c: PlaceOrder) -> list[Event]:
    ev: list[Event] = []
    _place(engine, engine.components["trading"], c, ev)
    return ev


def _handle_cancel(engine: Engine, c: CancelOrder) -> list[Event]:
    ev: list[Event] = []
    _cancel(engine, engine.components["trading"], c, ev)
    return ev


def _handle_cancel_all(engine: Engine, c: CancelAll) -> list[Event]:
    ev: list[Event] = []
    _cancel_all(engine, engine.components["trading"], c, ev)
    return ev


def _handle_amend(engine: Engine, c: AmendOrder) -> list[Event]:
    ev: list[Event] = []
    _amend(engine, engine.components["trading"], c, ev)
    return ev


_HANDLERS: dict[type, Callable[[Engine, Any], list[Event]]] = {
    PlaceOrder: _handle_place, CancelOrder: _handle_cancel, CancelAll: _handle_cancel_all, AmendOrder: _handle_amend,
}
_EFFECTS: dict[type, Effect | Callable[[Engine, Any], Effect]] = {
    PlaceOrder: Effect.OPENS_RISK, CancelOrder: Effect.REDUCES_RISK, CancelAll: Effect.REDUCES_RISK, AmendOrder: amend_effect,
}
for _type, _handler in _HANDLERS.items():
    MODULE.handles(_type, effect=_EFFECTS[_type], scopes=market_scopes)(_handler)


@MODULE.handles(TradingBatch, effect=Effect.NEUTRAL, parts=batch_actions)
def _batch(engine: Engine, c: TradingBatch) -> list[Event]:
    ev: list[Event] = []
    st: TradingState = engine.components["trading"]
    ledger: Ledger = engine.ledger
    now_ns = engine.now_ns
    for action in c.actions:
        # Tested by type in the order of a batch's usual mix (moves first); compiled, each branch
        # is a native call. `_DISPATCH` answers for any other type (none today).
        if type(action) is AmendOrder:
            _amend_at(engine, st, ledger, now_ns, action, ev)
        elif type(action) is PlaceOrder:
            _place(engine, st, action, ev)
        elif type(action) is CancelOrder:
            _cancel(engine, st, action, ev)
        else:
            _DISPATCH[type(action)](engine, st, action, ev)
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
