"""The in-memory order book: markets, price levels and orders, with price-time priority.

Data structure (chosen by measurement, see bench/matching.py and docs/trading.md):

* Per side a `dict price -> Level` plus a sorted Python list of the prices that have a level
  (`bisect`; best bid is the *last* element, best ask the *first*). Books have hundreds to a few
  thousand levels, where `list.insert`/`del` is a small C `memmove`, faster in CPython than a heap
  with lazy deletion or a tree written in Python.
* Each `Level` is a doubly linked FIFO of `Order` nodes (time priority), with a running total.
* `Market.orders` maps order id -> `Order` for every open order (resting or waiting stop), so a
  cancel is O(1) (plus the O(levels) list delete when a level empties).

Invariants (`Market.check_invariants`, property-tested):

* the book is never crossed at rest: best bid < best ask;
* every level is non-empty, its `total` equals the sum of its orders' `leaves`, and its price list
  entry exists exactly once; every resting order is on tick, on lot and has `0 < leaves`;
* every open order is in `orders`, in its owner's index and (if it has one) in the client id index.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from typing import Any, Callable, Final

from ..errors import InvariantViolation
from .vocabulary import MarketStatus, OrderType, SelfTradePrevention, Side, TimeInForce

try:  # (mypyc reads the decorator; it is installed with mypy, the `native` extra)
    from mypy_extensions import mypyc_attr
except ImportError:  # an install without mypy: pure Python, where the decorator does nothing

    def mypyc_attr(*args: Any, **kwargs: Any) -> Callable[[type], type]:  # type: ignore[misc]
        return lambda cls: cls


__all__ = ["notional", "OrderSeat", "Order", "Level", "Market", "MarketContract", "ACTIVE", "REDUCE_ONLY", "HALTED", "MARKET_STATUSES"]

ACTIVE: Final = MarketStatus.ACTIVE
REDUCE_ONLY: Final = MarketStatus.REDUCE_ONLY
HALTED: Final = MarketStatus.HALTED
MARKET_STATUSES = tuple(MarketStatus)

#: True when this module runs compiled (ringfence/native.py): a compiled module's file is the
#: extension module, not its `.py` source.
_COMPILED: Final = not __file__.endswith(".py")


#: What `Market.qty_cap` is at most (a short int when compiled).
_QTY_CAP: Final = 1 << 61


def _bisect_left(prices: list[int], price: int) -> int:
    """`bisect.bisect_left` of a price list, for the compiled build, where this loop reads each
    price as a machine integer and compares it in one instruction: `bisect`'s C loop compares
    Python ints through the generic protocol (a tenth of a move's cost went there, `perf`).
    Interpreted it is the slower of the two, so the pure-Python build keeps `bisect`: the same
    index either way (tests/trading/test_book_bisect.py)."""
    lo = 0
    hi = len(prices)
    while lo < hi:
        mid = (lo + hi) >> 1
        if prices[mid] < price:
            lo = mid + 1
        else:
            hi = mid
    return lo



def _bisect_near(prices: list[int], price: int, i: int) -> int:
    """`bisect_left(prices, price)` for a price near `prices[i]` (an amend moves an order by a few
    ticks): a few steps outward from `i`, a full search only if they do not reach it."""
    n = len(prices)
    if i < n and prices[i] < price:  # to the right: prices[..i] < price
        j = i + 1
        end = min(n, i + 9)
        while j < end and prices[j] < price:
            j += 1
        if j < end or j == n:
            return j
    else:  # to the left: prices[i..] >= price
        j = i
        start = max(0, i - 8)
        while j > start and prices[j - 1] >= price:
            j -= 1
        if j > start or j == 0:
            return j
    return _bisect_left(prices, price)


def notional(price: int, qty: int, scale: int) -> int:
    """`price * qty // scale` (what `qty` base minor units cost at `price`, rounded down), worked
    out as `(price // scale) * qty + (price % scale) * qty // scale`, the same integer: compiled,
    the direct product of a price and a quantity often passes 2**62 and takes mypyc's big-integer
    path (allocating, ~800 instructions; a twentieth of an amend), where these stay short."""
    return price // scale * qty + price % scale * qty // scale


class OrderSeat:
    """What a perpetual's contract keeps of one owner in its market (derivatives' `Seat` extends it)
    that the book keeps up to date: the sum of the `leaves` of the owner's indexed orders (`by_owner`:
    resting and waiting stops) on each side. An order carries its owner's seat (`Order.seat`, given
    by the contract when it is placed); `Market.index` and `unindex` add and take its `leaves`, and
    the contract takes what a resting order fills and what a reduce-only trim cuts. The contract reads
    them for the part of an order that reduces its owner's position (instead of walking the owner's
    open orders: ~50 of them an order deep into bench/risk.py's stream). Not state: a restored
    engine's orders have no seat, and the contract counts an owner's orders when it makes the seat."""

    def __init__(self) -> None:
        self.open_buy = 0
        self.open_sell = 0


class Order:
    """An open (or in-flight) order. Amounts are integers in minor units (see commands.py)."""

    __slots__ = (
        "id",
        "owner",
        "is_buy",
        "type",
        "tif",
        "price",  # limit price (0 for market orders)
        "qty",  # total base quantity (0 for orders by quote amount)
        "leaves",  # base quantity still to fill
        "filled",  # base quantity filled so far
        "cum_quote",  # quote amount traded so far
        "quote_left",  # orders by quote amount: quote still to spend/receive (else 0)
        "stop_price",
        "protect",  # market orders: worst price they may fill at
        "coid",
        "stp",
        "hold_id",  # the ledger pending transfer that holds the order's funds
        "hold",  # a perpetual's order: that transfer's record (`Ledger.last_hold`), else None
        "seat",  # a perpetual's order: its owner's record in the market's contract (`MarketContract.order_seat`)
        "pay",  # ledger account the order pays from (held)
        "recv",  # ledger account the order receives into
        "ts_ns",
        "prev",
        "next",
        "level",
    )

    id: int
    owner: str
    is_buy: bool
    type: OrderType
    tif: TimeInForce
    price: int
    qty: int
    leaves: int
    filled: int
    cum_quote: int
    quote_left: int
    stop_price: int
    protect: int
    coid: str
    stp: SelfTradePrevention
    hold_id: int
    pay: Any
    recv: Any
    ts_ns: int

    def __init__(self) -> None:
        self.prev: Order | None = None
        self.next: Order | None = None
        self.level: Level | None = None
        #: A perpetual's order: its hold's record (the ledger's `Pending`, read by each side of its
        #: fills: a lookup by `hold_id`, a 128-bit int, hashed at every one), set when the hold is
        #: made (`trading.orders._open_order`); None otherwise, and after a restore (looked up then).
        #: Not state: never in a snapshot (`row`).
        self.hold: Any = None
        #: A perpetual's order: what its market's contract keeps of the order's owner (derivatives'
        #: `Seat`: the position, the margin accounts), as the contract's `order_hold` found it when
        #: the order was placed, so that each side of its fills need not look it up by owner; else
        #: None (and after a restore). Not state either. Its `open_buy`/`open_sell` count the order
        #: while it is indexed (`OrderSeat`).
        self.seat: OrderSeat | None = None

    @property
    def side(self) -> Side:
        return Side.BUY if self.is_buy else Side.SELL

    def row(self) -> list[Any]:
        """Plain-data form for snapshots (accounts are re-derived from the ledger on restore)."""
        return [
            self.id,
            self.owner,
            self.is_buy,
            self.type,
            self.tif,
            self.price,
            self.qty,
            self.leaves,
            self.filled,
            self.cum_quote,
            self.quote_left,
            self.stop_price,
            self.protect,
            self.coid,
            self.stp,
            self.hold_id,
            self.ts_ns,
        ]

    def __repr__(self) -> str:
        return f"Order({self.id} {self.owner} {self.side} {self.type} {self.leaves}/{self.qty}@{self.price})"


class Level:
    """One price level: a FIFO of orders at `price` with the sum of their `leaves`."""

    __slots__ = ("price", "head", "tail", "total", "count")

    def __init__(self, price: int) -> None:
        self.price = price
        self.head: Order | None = None
        self.tail: Order | None = None
        self.total = 0
        self.count = 0


#: An order's words as `trading.orders` parses them (its `_Words`: is_buy, type, time in force, STP
#: mode, limit-priced, a stop), typed as a tuple so that compiled code indexes it directly.
OrderWords = tuple[bool, Any, Any, Any, bool, bool]


@mypyc_attr(allow_interpreted_subclasses=True)
class MarketContract:
    """What trading asks a perpetual market (`Market.contract`): `ringfence.derivatives`'
    `Contract` implements it. Declared here, in trading's compiled hot path, so that the matching
    loop and placing call it as native methods (a vtable call with machine-integer arguments)
    rather than as a Python object's attributes (a generic method lookup and every argument and
    result boxed, several times per order and per fill). Interpreted subclasses are allowed (the
    differential test's reference contract is one): compiled callers reach their methods too."""

    def __init__(self) -> None:
        #: The `available` account the order `order_hold` last accepted pays from and receives to
        #: (None if the owner has none yet: trading opens it).
        self.order_wallet: Any = None
        #: What the contract keeps of that order's owner (its `Seat`), or None: trading hands it to
        #: the order it opens (`Order.seat`), which its fills give back to the contract.
        self.order_seat: OrderSeat | None = None

    def order_hold(self, engine: Any, m: Market, c: Any, words: OrderWords) -> tuple[tuple[str, str, str] | None, int, int]:
        """(refusal or None, protection price, hold) of order `c` on `m` (`c`: the order's fields as
        placing read them, `trading.orders._Placed`)."""
        raise NotImplementedError

    def before_hold(self, engine: Any, m: Market, c: Any) -> None:
        """Every check passed: about to hold the order's margin."""
        raise NotImplementedError

    def after_match(self, m: Market, ev: list[Any]) -> None:
        """After an order matched."""
        raise NotImplementedError

    def only_reduces(self, m: Market) -> bool:
        """Does the market only reduce positions now?"""
        raise NotImplementedError

    @property
    def has_reduce_only(self) -> bool:
        """Does the market have an open reduce-only order?"""
        raise NotImplementedError

    def fill_cap(self, o: Order, only_reduces: bool = False) -> int:
        """How much order `o` may fill now."""
        raise NotImplementedError

    def expiry_reason(self, o: Order) -> str:
        """Why a maker with nothing it may fill is expired."""
        raise NotImplementedError

    def rest_need(self, m: Market, o: Order) -> int:
        """What a resting order's hold reserves."""
        raise NotImplementedError

    def direct_order(self, o: Order, order_type: str) -> Any:
        """The order a client would submit directly for what resting stop `o` places."""
        raise NotImplementedError

    def fill(self, m: Market, buyer: Order, seller: Order, price: int, qty: int, notional: int,
             buyer_rate_ppm: int, seller_rate_ppm: int, ev: list[Any], price_box: Any, qty_box: Any) -> tuple[Any, Any]:
        """A fill on the perpetual: (buyer's fee, seller's fee), Python ints (the `Trade` event's).
        `price_box`, `qty_box`: `price` and `qty` as the `Trade` event carries them (boxed once)."""
        raise NotImplementedError


class Market:
    """One spot market's rules, status and book. Mutated only by the trading handlers."""

    def __init__(self, symbol: str, base: str, quote: str, segment: str, base_scale: int) -> None:
        self.symbol = symbol
        self.base = base
        self.quote = quote
        self.segment = segment
        self.base_scale = base_scale  # 10 ** base decimals
        self.tick = 1
        self.lot = 1
        self.min_qty = 1
        self._max_qty = 10**30
        #: `min(max_qty, 2**61)`, kept by `max_qty`'s setter: a quantity above `max_qty` is above
        #: this too, and compiled, a comparison with it (a short int) is one instruction where one
        #: with 10**30 takes mypyc's slow path (a quarter of an amend's checks): test this first.
        self.qty_cap = _QTY_CAP
        self.min_notional = 0
        self.band_ppm = 0
        self.band_timeout_ns = 0
        self.slippage_ppm = 50_000
        self.max_open_per_account = 200
        self.max_book_orders = 200_000
        self.max_levels = 20_000
        self.status: MarketStatus = ACTIVE
        self.auto_reduce = False  # REDUCE_ONLY was entered by the band timer (lifted by it too)
        self.out_of_band = False  # the last price is outside the band (since out_of_band_since_ns)
        self.out_of_band_since_ns = 0
        self.ref_price = 0
        self.band_lo = 0
        self.band_hi = 0  # 0: no band (no reference price yet)
        self.last_price = 0
        self.bids: dict[int, Level] = {}
        self.bid_prices: list[int] = []  # ascending; best bid last
        self.asks: dict[int, Level] = {}
        self.ask_prices: list[int] = []  # ascending; best ask first
        self.orders: dict[int, Order] = {}
        self.by_owner: dict[str, dict[int, Order]] = {}
        self.coids: dict[tuple[str, str], Order] = {}
        self.book_orders = 0
        self.stops_buy: list[tuple[int, int]] = []  # (stop_price, order_id) ascending
        self.stops_sell: list[tuple[int, int]] = []
        # The ledger's `ClearingAccounts` of this market (of the engine's current ledger; re-bound
        # on restore): fills settle through them, holds pay into them.
        self.clearing: Any = None
        # A perpetual's contract rules (`ringfence.derivatives`), None for spot: its orders hold
        # margin in the quote asset and its fills change positions instead of delivering the base.
        # Not part of the trading snapshot: the derivatives module binds it (`MARKET_BINDERS`).
        self.contract: MarketContract | None = None

    @property
    def max_qty(self) -> int:
        return self._max_qty

    @max_qty.setter
    def max_qty(self, value: int) -> None:
        self._max_qty = value
        self.qty_cap = value if value < _QTY_CAP else _QTY_CAP

    # ------------------------------------------------------------------ band

    def set_reference(self, price: int) -> None:
        self.ref_price = price
        if price and self.band_ppm:
            self.band_lo = price * (1_000_000 - self.band_ppm) // 1_000_000
            self.band_hi = price * (1_000_000 + self.band_ppm) // 1_000_000
        else:
            self.band_lo = self.band_hi = 0

    def in_band(self, price: int) -> bool:
        return not self.band_hi or self.band_lo <= price <= self.band_hi

    # ------------------------------------------------------------------ book mechanics

    def rest(self, o: Order) -> None:
        """Append `o` at the back of its price level (creating the level if needed)."""
        price = o.price
        # Boxed once: compiled, each use of a machine integer as a dict key or a list item boxes it
        # again (a new int object: above 256 an allocation, then a deallocation).
        key: Any = price
        if o.is_buy:
            book, prices = self.bids, self.bid_prices
        else:
            book, prices = self.asks, self.ask_prices
        level = book.get(key)
        if level is None:
            level = Level(price)
            book[key] = level
            if _COMPILED:  # (`price` has no level: left and right insertion points are the same)
                prices.insert(_bisect_left(prices, price), key)
            else:
                insort(prices, price)
        self._attach(o, level)
        self.book_orders += 1

    def _attach(self, o: Order, level: Level) -> None:
        """Append `o` at the back of `level`'s queue and totals (`rest`'s and `move`'s last half)."""
        tail = level.tail
        o.prev = tail
        o.next = None
        o.level = level
        if tail is None:
            level.head = o
        else:
            tail.next = o
        level.tail = o
        level.total += o.leaves
        level.count += 1

    def _detach(self, o: Order) -> Level:
        """Take resting `o` out of its level's queue and totals (`unlink`'s and `move`'s first
        half); its own links and the level's place in the book are the caller's."""
        level = o.level
        assert level is not None, "an order that is not resting cannot leave its level"
        prev, nxt = o.prev, o.next
        if prev is None:
            level.head = nxt
        else:
            prev.next = nxt
        if nxt is None:
            level.tail = prev
        else:
            nxt.prev = prev
        level.total -= o.leaves
        level.count -= 1
        return level

    def unlink(self, o: Order) -> None:
        """Take a resting order out of its level (dropping the level if it empties)."""
        level = self._detach(o)
        o.prev = o.next = None
        o.level = None
        self.book_orders -= 1
        if level.head is None:
            price = level.price
            if o.is_buy:
                del self.bids[price]
                prices = self.bid_prices
            else:
                del self.asks[price]
                prices = self.ask_prices
            if prices[-1] == price:
                prices.pop()
            elif prices[0] == price:
                del prices[0]
            else:
                del prices[_bisect_left(prices, price) if _COMPILED else bisect_left(prices, price)]

    def move(self, o: Order, price: int, qty: int, leaves: int, ts_ns: int, price_obj: Any = None) -> None:
        """Re-enter resting `o` at the back of the level of `price` (not its own) with the amended
        `qty` and `leaves`: `unlink`, the new fields, then `rest`, fused for an amend's move that
        does not cross. When `o` was alone on its level and `price` has none, the emptied level is
        reused at `price`, and its entry in the price list is overwritten in place when no other
        level lies between the two prices (a move by a few ticks): no search, no insert, no delete.
        """
        level = self._detach(o)
        o.price, o.qty, o.leaves, o.ts_ns = price, qty, leaves, ts_ns
        # `price` as an int object for the dict and the list: the caller's (`price_obj`, equal to
        # `price`), or boxed once here (see `rest`)
        key: Any = price if price_obj is None else price_obj
        if o.is_buy:
            book, prices = self.bids, self.bid_prices
        else:
            book, prices = self.asks, self.ask_prices
        target = book.get(key)
        if level.head is None:  # `o` was alone: its level goes
            old = level.price
            del book[old]
            last = len(prices) - 1
            if prices[last] == old:
                i = last
            elif prices[0] == old:
                i = 0
            else:
                i = _bisect_left(prices, old) if _COMPILED else bisect_left(prices, old)
            if target is None:  # ... and comes back at `price`
                level.price = price
                book[key] = level
                target = level
                if (i == 0 or prices[i - 1] < price) and (i == last or price < prices[i + 1]):
                    prices[i] = key
                else:
                    del prices[i]
                    prices.insert(_bisect_near(prices, price, i) if _COMPILED else bisect_left(prices, price), key)
            else:
                del prices[i]
        elif target is None:
            target = Level(price)
            book[key] = target
            prices.insert(_bisect_left(prices, price) if _COMPILED else bisect_left(prices, price), key)
        self._attach(o, target)

    def index(self, o: Order) -> None:
        """Register an open order in the id, owner and client-id indexes."""
        self.orders[o.id] = o
        owned = self.by_owner.get(o.owner)
        if owned is None:
            owned = self.by_owner[o.owner] = {}
        owned[o.id] = o
        if o.coid:
            self.coids[(o.owner, o.coid)] = o
        seat = o.seat  # (a perpetual's order: its owner's open quantity on its side, `OrderSeat`)
        if seat is not None:
            if o.is_buy:
                seat.open_buy += o.leaves
            else:
                seat.open_sell += o.leaves

    def unindex(self, o: Order) -> None:
        del self.orders[o.id]
        owned = self.by_owner[o.owner]
        del owned[o.id]
        if not owned:
            del self.by_owner[o.owner]
        if o.coid:
            del self.coids[(o.owner, o.coid)]
        seat = o.seat
        if seat is not None:
            if o.is_buy:
                seat.open_buy -= o.leaves
            else:
                seat.open_sell -= o.leaves

    def add_stop(self, o: Order) -> None:
        insort(self.stops_buy if o.is_buy else self.stops_sell, (o.stop_price, o.id))

    def remove_stop(self, o: Order) -> None:
        stops = self.stops_buy if o.is_buy else self.stops_sell
        key = (o.stop_price, o.id)
        i = bisect_left(stops, key)
        if i == len(stops) or stops[i] != key:
            raise InvariantViolation(f"stop order {o.id} missing from the trigger list")
        del stops[i]

    def crosses(self, is_buy: bool, price: int) -> bool:
        """Would a `price` order on this side take liquidity right now?"""
        if is_buy:
            return bool(self.ask_prices) and self.ask_prices[0] <= price
        return bool(self.bid_prices) and self.bid_prices[-1] >= price

    def level_limit_reached(self, is_buy: bool, price: int) -> bool:
        """Would resting at `price` open a level beyond `max_levels` on that side?"""
        if is_buy:
            return price not in self.bids and len(self.bid_prices) >= self.max_levels
        return price not in self.asks and len(self.ask_prices) >= self.max_levels

    def best_bid(self) -> int:
        return self.bid_prices[-1] if self.bid_prices else 0

    def best_ask(self) -> int:
        return self.ask_prices[0] if self.ask_prices else 0

    def depth(self, limit: int = 100) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """L2: `(bids best-first, asks best-first)` as `(price, total quantity)`."""
        bids = [(p, self.bids[p].total) for p in reversed(self.bid_prices[-limit:])] if limit else []
        asks = [(p, self.asks[p].total) for p in self.ask_prices[:limit]] if limit else []
        return bids, asks

    def level_orders(self, is_buy: bool, price: int) -> list[Order]:
        level = (self.bids if is_buy else self.asks).get(price)
        out = []
        o = level.head if level else None
        while o is not None:
            out.append(o)
            o = o.next
        return out

    def resting(self) -> list[Order]:
        """Every resting order, bids best-first then asks best-first, FIFO within a level."""
        out: list[Order] = []
        for p in reversed(self.bid_prices):
            out.extend(self.level_orders(True, p))
        for p in self.ask_prices:
            out.extend(self.level_orders(False, p))
        return out

    # ------------------------------------------------------------------ invariants

    def check_invariants(self) -> None:
        bb, ba = self.best_bid(), self.best_ask()
        if bb and ba and bb >= ba:
            raise InvariantViolation(f"{self.symbol}: book crossed at rest (bid {bb} >= ask {ba})")
        seen = 0
        for is_buy, book, prices in ((True, self.bids, self.bid_prices), (False, self.asks, self.ask_prices)):
            if sorted(set(prices)) != prices or set(prices) != set(book):
                raise InvariantViolation(f"{self.symbol}: price list and levels disagree")
            for price in prices:
                level = book[price]
                total = count = 0
                o = level.head
                prev = None
                while o is not None:
                    if o.prev is not prev or o.level is not level or o.is_buy is not is_buy or o.price != price:
                        raise InvariantViolation(f"{self.symbol}: broken links at level {price}")
                    if o.leaves <= 0 or o.leaves % self.lot or o.price % self.tick:
                        raise InvariantViolation(f"{self.symbol}: bad resting order {o!r}")
                    if self.orders.get(o.id) is not o:
                        raise InvariantViolation(f"{self.symbol}: resting order {o.id} not indexed")
                    total += o.leaves
                    count += 1
                    prev = o
                    o = o.next
                if level.tail is not prev or count == 0 or total != level.total or count != level.count:
                    raise InvariantViolation(f"{self.symbol}: level {price} totals are wrong")
                seen += count
        if seen != self.book_orders:
            raise InvariantViolation(f"{self.symbol}: book_orders {self.book_orders} != {seen}")
        stops = len(self.stops_buy) + len(self.stops_sell)
        if seen + stops != len(self.orders):
            raise InvariantViolation(f"{self.symbol}: {len(self.orders)} indexed != {seen} resting + {stops} stops")
        if sum(len(v) for v in self.by_owner.values()) != len(self.orders):
            raise InvariantViolation(f"{self.symbol}: owner index disagrees with the order index")
