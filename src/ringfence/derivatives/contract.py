"""A perpetual market's contract: what trading asks a perpetual (`Market.contract`) — an order's
margin hold or why it is refused, how much a reduce-only order may fill, and each fill, which
changes positions instead of delivering the base asset (docs/derivatives.md has the rules).

This is every perpetual order's hot path, so it is compiled with trading's matching loop
(`ringfence.native.COMPILED`); like those modules it is ordinary Python that runs as it is when
nothing is built. Money moves only through the ledger's public API (`settle_margin_side`,
`capture_and_return`, `move`, `resize_hold_to`). tests/derivatives/test_fast_path.py runs it beside
the code it replaced (tests/derivatives/reference_contract.py) and compares every event and the
state hash.
"""

from __future__ import annotations

from typing import Any, Final

from msgspec.structs import astuple

from ..engine.commands import Event
from ..trading.commands import OrderAmended, OrderExpired
from ..trading.matching import _close, _take_out
from ..errors import InvariantViolation, NotFound, ValidationError
from ..ledger.account import Account
from ..ledger.ledger import Ledger, Pending
from ..trading.orders import _place as _trading_place
from ..trading.orders import _Placed, _protection_and_hold, read_by_position
from ..trading.book import ACTIVE, Market, MarketContract, Order, OrderSeat, OrderWords
from ..risk.halts import market_status
from ..trading.state import MAX_QTY, TradingState, trading_state
from .commands import PlacePerpOrder, PositionChanged
from .conditional import fire_conditionals
from .dstate import DerivativesState
from .margin import PPM, MarkCount, Perp, Position, cross_upnl_knowing, exact_product, initial_margin_at, mark_knowing
from .state import SEGMENT, ceil_div, pool_of

#: `Position` is a native (compiled) class when the hot path is compiled: its fields are C fields
#: here, and `object.__setattr__` may not bypass its `__setattr__`; in pure Python a fill sets them
#: with `object.__setattr__` (`_bypass`) and marks the key for the margin mirror itself.
_NATIVE_POSITION: Final = hasattr(Position, "__mypyc_attrs__")
_bypass: Any = object.__setattr__
#: The event class as a C static when compiled (a name imported from a module mypyc does not compile
#: is otherwise looked up in this module's globals at each use: once per fill side).
_POSITION_CHANGED: Final = PositionChanged
#: `dict`'s own `pop` and `setdefault` (the position book's, bypassing `PositionBook`'s methods),
#: C statics: `dict.pop(book, key)` written out looks the method up by name at each call.
_DICT_POP: Final = dict.pop
_DICT_SETDEFAULT: Final = dict.setdefault
#: `msgspec.structs.astuple`, a C static: a command's fields in one call (`_place_perp`).
_ASTUPLE: Final = astuple

# A perpetual's order read by position when placed, as a spot order is (`trading.orders._fields_of`).
read_by_position(PlacePerpOrder)

__all__ = ["Contract", "trim_reduce_only", "order_precheck", "place_perp_order", "handle_place_perp_order"]


def order_precheck(engine: Any, c: Any) -> None:
    """A `PlacePerpOrder` names a listed perpetual and says 0 or 1 to reduce-only (also the edge's check)."""
    _precheck(engine.components["derivatives"], c)


def _precheck(st: DerivativesState, c: Any) -> None:
    """`order_precheck` on the derivatives state already read."""
    symbol = c.symbol
    perps: dict[str, Perp] = st.perps
    if not isinstance(symbol, str) or symbol not in perps:
        raise NotFound(f"unknown perpetual {symbol!r}", field="symbol")
    if c.reduce_only not in (0, 1):
        raise ValidationError("reduce_only must be 0 or 1", field="reduce_only")


def place_perp_order(engine: Any, c: Any) -> list[Event]:
    """`PlacePerpOrder`: placed by trading on the perpetual's market, reduce-only said around it."""
    components: dict[str, Any] = engine.components
    return _place_perp(engine, components["derivatives"], components["trading"], c)


def _place_perp(engine: Any, st: DerivativesState, trading: TradingState, c: Any) -> list[Event]:
    """`place_perp_order` on the derivatives and trading states already read (`_precheck`'s
    checks in line). Every field of the command is read at once, by position (`read_by_position`
    checked the order at import), and handed to trading as the fields it reads itself
    (`trading.orders._fields_of`): compiled, `c.symbol` and `c.reduce_only` were generic attribute
    reads (~160 instructions each), and trading then read the command again, type tests first."""
    n: tuple[str, Any, str, str, str, int, int, int, str, Any] = _ASTUPLE(c)
    symbol = n[1]
    perps: dict[str, Perp] = st.perps
    if not isinstance(symbol, str) or symbol not in perps:
        raise NotFound(f"unknown perpetual {symbol!r}", field="symbol")
    reduce_only = n[9]
    ev: list[Event] = []
    if reduce_only == 0:  # (`st.reduce_only` is False outside a reduce-only placing: left as it is)
        _trading_place(engine, trading, c, ev, False, _Placed(n[0], symbol, n[2], n[3], n[4], n[5], n[6], 0, n[7], n[8], "NONE"))
        return ev
    if reduce_only != 1:
        raise ValidationError("reduce_only must be 0 or 1", field="reduce_only")
    f = _Placed(n[0], symbol, n[2], n[3], n[4], n[5], n[6], 0, n[7], n[8], "NONE")
    st.reduce_only = True
    try:
        _trading_place(engine, trading, c, ev, False, f)  # (as it is: `trading.orders.NewOrder`)
    finally:
        st.reduce_only = False
    return ev


def handle_place_perp_order(engine: Any, c: Any) -> list[Event]:
    """The engine's handler of `PlacePerpOrder` (registered by `derivatives.module`; compiled, so
    an order enters the hot path without a Python frame): place it, then fire the conditional
    orders its trades may have reached."""
    components: dict[str, Any] = engine.components  # (read once per order)
    st: DerivativesState = components["derivatives"]  # (a native class: its fields are C fields)
    trading = st.trading  # (`components["trading"]`, read at the first order: see `DerivativesState.trading`)
    if trading is None:
        trading = st.trading = components["trading"]
    ev = _place_perp(engine, st, trading, c)
    if st.conditional:
        fire_conditionals(engine, ev, c.symbol)
    return ev


class Seat(OrderSeat):
    """One owner's place in one perpetual market, kept by the market's `Contract` (per ledger
    object, like its accounts): what an order and each side of a fill look up, found with one
    lookup by owner instead of one per dict (the position book's by (owner, symbol), the wallets',
    the margin accounts'), and the position found last time, kept only as a hint (`position`).
    As an `OrderSeat`, the owner's open quantity on each side of the market (`Contract._new_seat`)."""

    def __init__(self, key: Any = None) -> None:
        super().__init__()
        #: (owner, symbol), the key of the owner's position in this market: one tuple for every
        #: lookup and mark of this seat's (a new equal tuple per fill side was hashed, and compared
        #: item by item where the book and its `dirty` set hold another; `Any`: see `position`).
        self.key: Any = key
        #: The owner (`key[0]`, then the very string object of the last order `Contract._seat` looked
        #: the seat up for): what `Contract._side` compares, by identity, with a filling order's owner
        #: (`_hint`), so that the taker of the order being placed finds its seat without a lookup.
        self.owner: str = key[0] if key is not None else ""
        self.pos: Position | None = None  # the position last found: a hint, checked before use
        self.wallet: Account | None = None  # the owner's `available` account in the quote asset, once found
        self.margin: Account | None = None  # the owner's cross `margin` account, once found or opened
        self.isolated: Account | None = None  # the owner's `isolated` account, once found or opened
        #: The owner's leverage setting here (0: none, the market's default), as read from the state's
        #: `leverage` dict `lev_of` at its `leverage_version` `lev_version` (`leverage`, which checks).
        self.lev: int = 0
        self.lev_of: Any = None
        self.lev_version: int = -1

    def leverage(self, st: DerivativesState, key: Any, default: int) -> int:
        """The owner's leverage setting in this market (`key`: the owner and the market), else
        `default`: the one read last while the state's `leverage` dict is the same and unchanged
        (`SetLeverage` counts its changes), else read again."""
        book: dict[tuple[str, str], int] = st.leverage
        if self.lev_of is not book or self.lev_version != st.leverage_version:
            self.lev = book.get(key, 0)
            self.lev_of = book
            self.lev_version = st.leverage_version
        lev: int = self.lev
        return lev if lev else default

    def position(self, positions: dict[tuple[str, str], Position], key: Any) -> Position | None:
        """The owner's position now (`key`: the owner and this market): the one found last time
        while it is still in the book (a position leaves the book, or is replaced, only through
        `PositionBook`, which unlinks it: `_book` None; and it is in the book under one key, its
        owner's and market's), else the book's answer. (`key`, the (owner, symbol) tuple, is typed
        `Any` here and by the callers: compiled, a tuple-typed value is kept unboxed and boxed again,
        a new tuple, at each dict or set lookup.)"""
        pos = self.pos
        if pos is not None and pos._book is positions:
            return pos
        pos = self.pos = positions.get(key)
        return pos


class Contract(MarketContract):
    """What trading asks a perpetual market (see `Market.contract`)."""

    def __init__(self, engine: Any, symbol: str) -> None:
        super().__init__()
        self.engine = engine
        self.symbol = symbol
        self._ledger: Ledger | None = None
        #: What every order and fill reads of the engine, read at the contract's first use (`_bind`).
        self._st: DerivativesState | None = None
        self._trading: TradingState | None = None
        self._index: Any = None  # the engine's `index` state, if it has one
        #: Its `symbols` dict (index symbol -> entry), read with it: an `IndexState` is given its
        #: `symbols` when it is made (or restored, a new state), never another one.
        self._index_symbols: dict[str, Any] | None = None
        self._halts: Any = None  # the engine's `halts` state, if it has one
        self._perp: Perp | None = None
        self._borrow = 0  # set by `order_hold`, spent by `before_hold` within the same order
        #: Set by `order_hold` (to `DerivativesState.reduce_only`, which holds for the whole placing):
        #: with `_borrow` 0 it tells `before_hold` it has nothing to do, without reading the state.
        self._placing_reduce_only = False
        self._accounts: tuple[Account, Account, Account] | None = None
        self._touched: set[str] = set()  # owners whose position a fill changed in the current match
        #: owner -> the owner's `Seat` here: the position last found, the wallet and the margin
        #: accounts (accounts are never closed; kept for one ledger object, like `_accounts`;
        #: keyed by the owner alone: a string's hash is cached, a tuple's is computed at every lookup)
        self._seats: dict[str, Seat] = {}
        #: The seat `order_hold` found last (the order being placed, the taker of its fills): a fill
        #: side whose order's owner is that very string object takes it without the dict lookup
        #: (it is one of `_seats`, dropped with them).
        self._hint: Seat | None = None
        #: The position book's `dirty` set and owner index `by_owner` (slots a book sets once, when
        #: it is made) and the book they were read from: read again only for another book
        #: (`_book_slots`; a generic attribute read each per order or fill otherwise).
        self._dirty_book: Any = None
        self._dirty: set[tuple[str, str]] = set()
        self._marks: MarkCount = MarkCount()  # (the book's `marks`: see `MarkCount`)
        self._by_owner: dict[str, dict[str, Position]] = {}
        #: What the order `order_hold` last accepted pays from and receives to: its owner's
        #: `available` account in the quote asset, None if there is none yet (trading opens it).
        #: Set on every accepted return of `order_hold` (it looks the account up anyway), so that
        #: trading's `_place` does not look it up again (`Ledger.find_pair`, a generic call).
        self.order_wallet = None  # (`MarketContract`'s field: an `Account` or None)
        self.order_seat = None  # (`MarketContract`'s field: the `Seat` `order_hold` accepted last)

    def direct_order(self, o: Order, order_type: str) -> PlacePerpOrder:
        """The order a client would submit directly for what resting stop `o` places when it
        triggers (what the halt guard is asked about: reduce-only when `o` is)."""
        st: DerivativesState = self.engine.components["derivatives"]
        ro = o.id in st.reduce_only_orders.get(self.symbol, ())
        return PlacePerpOrder(o.owner, self.symbol, "BUY" if o.is_buy else "SELL", order_type, reduce_only=int(ro))

    @property
    def has_reduce_only(self) -> bool:
        """Does this market have an open reduce-only order (trading's matching loop asks first)?"""
        st = self._st
        if st is None:
            st = self._bind()
        orders: dict[str, set[int]] = st.reduce_only_orders
        return bool(orders) and bool(orders.get(self.symbol))

    def _system_of(self, p: Any, ledger: Any) -> tuple[Account, Account, Account]:
        """(PnL pool, fees, insurance) of this market in `ledger`, looked up once per ledger object."""
        accounts = self._accounts
        if self._ledger is not ledger or accounts is None:
            accounts = self._accounts = (pool_of(ledger, p), ledger.fees(p.quote, SEGMENT), ledger.insurance(p.quote, SEGMENT))
            self._seats = {}
            self._hint = None
            self._ledger = ledger
        return accounts

    def _bind(self) -> DerivativesState:
        """Read, at this contract's first use, what every order and fill asks of the engine: its
        states (`engine.components`), the derivatives and trading states, the ledger with this
        market's system accounts (`_system_of`) and the perpetual's listing; returns the
        derivatives state. A contract is made when its market is listed or restored
        (`module._bind`), and the engine replaces its states only all at once, by a restore
        (`Engine._load_state`), which binds new contracts to the new markets: what is read here is
        the engine's for the contract's whole life, and an order and a fill read C fields where
        they made generic attribute reads of the engine (`engine.components`, `engine.ledger`).
        At the first use, not in `__init__`: a restore binds contracts while it is still building
        the trading state (its `Perp` is the one listed: `st.perps` never replaces one)."""
        engine = self.engine
        components: dict[str, Any] = engine.components
        st: DerivativesState = components["derivatives"]
        perps: dict[str, Perp] = st.perps
        p = perps[self.symbol]
        self._system_of(p, engine.ledger)
        self._trading = components["trading"]
        index = self._index = components.get("index")
        self._index_symbols = index.symbols if index is not None else None
        self._halts = components.get("halts")
        self._perp = p
        self._st = st
        return st

    def _book_slots(self, positions: Any) -> None:
        """Read position book `positions`' `dirty` set, its count of emptyings and its owner index
        (see `_dirty_book`)."""
        self._dirty = positions.dirty
        self._marks = positions.marks
        self._by_owner = positions.by_owner
        self._dirty_book = positions

    def _seat(self, owner: str, p: Perp) -> Seat:
        """The owner's `Seat` in this market (made at the owner's first order here; all of them
        dropped for a new ledger object, by `_system_of`)."""
        if self._st is None:
            self._bind()
        seat = self._seats.get(owner)
        if seat is None:
            seat = self._new_seat(owner)
        else:
            # This order's very string object, the one its `Order` will carry: what `_side` compares
            # the taker with, by identity. (Each command brings its own, equal string: kept as the
            # seat's first, the taker missed the hint and looked its seat up again at every fill.)
            seat.owner = owner
        self._hint = seat
        return seat

    def _new_seat(self, owner: str) -> Seat:
        """A new `Seat` for `owner`, kept in `_seats` (the contract is bound): its open quantities
        counted from the owner's indexed orders in this market (none, but after a restore), each of
        which is given the seat, so that the book keeps the counts from now on (`OrderSeat`)."""
        seat = self._seats[owner] = Seat((owner, self.symbol))
        trading = self._trading
        m = trading.markets.get(self.symbol) if trading is not None else None
        owned = m.by_owner.get(owner) if m is not None else None
        if owned is not None:
            for o in owned.values():
                o.seat = seat
                if o.is_buy:
                    seat.open_buy += o.leaves
                else:
                    seat.open_sell += o.leaves
        return seat

    def check_seats(self, m: Market) -> None:
        """Every seat's open quantities are its owner's indexed orders' `leaves` on each side in
        market `m` (this contract's), and each of those orders carries the seat (the invariant the
        book's counting rests on; `derivatives.state.check_invariants`)."""
        for owner, seat in self._seats.items():
            buy = sell = 0
            owned = m.by_owner.get(owner)
            for o in owned.values() if owned is not None else ():
                if o.seat is not seat:
                    raise InvariantViolation(f"{self.symbol}: open order {o.id} of {owner} does not carry its owner's seat")
                if o.is_buy:
                    buy += o.leaves
                else:
                    sell += o.leaves
            if buy != seat.open_buy or sell != seat.open_sell:
                raise InvariantViolation(f"{self.symbol}: {owner}'s seat counts {seat.open_buy}/{seat.open_sell} open "
                                         f"(buy/sell), the book {buy}/{sell}")

    def _wallet_of(self, seat: Seat, owner: str, p: Perp) -> Account | None:
        """The seat's owner's `available` account in this market's quote asset, or None if it has
        none (found once per ledger object, like `_system`'s: accounts are never closed)."""
        w = seat.wallet
        if w is None:
            w = seat.wallet = self.engine.ledger.find(owner, p.quote, "available", SEGMENT)
        return w

    def _wallet(self, owner: str, p: Perp) -> Account | None:
        """`_wallet_of` the owner's seat."""
        return self._wallet_of(self._seat(owner, p), owner, p)

    # -- placing: how much margin an order holds, or why it is refused

    def order_hold(self, engine: Any, m: Market, c: Any, words: OrderWords) -> tuple[tuple[str, str, str] | None, int, int]:
        # `c`: the order's fields as trading's `_place` read them (a native `_Placed`: its fields are C
        # fields here, where a command's are generic attribute reads, ~160 instructions each). (The
        # parameters named as `MarketContract.order_hold`'s: other names make mypyc call it through a glue function.)
        placed: _Placed = c
        st = self._st  # (`_bind`: read at the first use)
        if st is None:
            st = self._bind()
        p = self._perp
        assert p is not None
        symbol = self.symbol
        is_buy: bool = words[0]
        limitish: bool = words[4]
        self._placing_reduce_only = st.reduce_only  # (for `before_hold`; first: before any return)
        qty: int = placed.quantity
        # Trading asks only of an order its checks passed (`_parse_order`): one with a quote amount
        # has no quantity, so the quote amount is read only without one.
        if not qty and placed.quote_amount:
            return ("INVALID_PARAMETER", "quote_amount", "perpetual orders are sized by quantity, not quote amount"), 0, 0
        protect: int = 0
        owner: str = placed.owner
        price: int
        if limitish:
            price = placed.price
        else:
            protect, _ = _protection_and_hold(m, placed, words)
            price = protect
            if not price:  # an empty book: trading accepts and expires it at once, nothing held
                if st.reduce_only and not self._reducible(st, m, owner, is_buy):
                    return ("REDUCE_ONLY_REJECTED", "reduce_only", "ReduceOnly Order is rejected."), 0, 0
                self.order_wallet = self._wallet(owner, p)
                self.order_seat = None  # (nothing held: the order cannot fill)
                return None, 0, 0
        seat = self._seat(owner, p)  # (one lookup: the position, the wallet)
        key: Any = seat.key  # (`Any`: one tuple, see `Seat.position`)
        size_now: int
        close_q: int
        positions: dict[tuple[str, str], Position] = st._positions  # (`positions`' storage: a property call less)
        pos: Position | None = seat.position(positions, key)
        if pos is None:
            size_now = close_q = 0
        else:
            size: int = pos.size
            size_now = size if size > 0 else -size
            close_q = 0
            if (size > 0) != is_buy:  # what the owner's open orders on this side do not already reduce
                # (`_reducible_of`, from the seat's count of them: no walk of the owner's open orders)
                covered_q: int = seat.open_buy if is_buy else seat.open_sell
                if covered_q < size_now:
                    close_q = size_now - covered_q
            if close_q > qty:
                close_q = qty
        open_q: int = qty - close_q
        if st.reduce_only and open_q:
            return ("REDUCE_ONLY_REJECTED", "reduce_only", "ReduceOnly Order is rejected."), 0, 0
        scale: int = p.scale
        order_notional: int = -(-exact_product(price, qty) // scale)  # ceil
        im: int
        s: Any = None  # the index's entry for the perpetual's index symbol, once looked up (`looked`)
        looked = False
        if open_q:
            symbols = self._index_symbols  # (typed: a direct dict lookup, not a method call)
            if symbols is not None:
                s = symbols.get(p.index_symbol)
            looked = True
            if s is not None and s.short:  # the index lost its sources: the perpetual only reduces
                return ("MARKET_NOT_ACTIVE", "symbol",
                        f"the {p.index_symbol} index has fewer than {s.min_sources} live sources: only reducing orders are accepted"), 0, 0
            oi_after = p.open_interest + open_q
            if p.max_oi and oi_after > p.max_oi:
                return ("OPEN_INTEREST_CAP", "quantity",
                        f"the order would take {symbol}'s open interest to {oi_after}, above its cap {p.max_oi}"), 0, 0
            mine = size_now + open_q if not close_q else open_q
            if p.max_share_ppm and oi_after > p.share_floor and mine * PPM > p.max_share_ppm * oi_after:
                return ("CONCENTRATION_LIMIT", "quantity",
                        f"the position would hold {mine * PPM // oi_after} ppm of {symbol}'s open interest, "
                        f"above the per-account limit {p.max_share_ppm} ppm"), 0, 0
            notional_after = order_notional if mine == qty else -(-exact_product(price, mine) // scale)
            if notional_after > p.brackets[-1].cap:  # (no bracket holds it)
                return ("CONCENTRATION_LIMIT", "quantity",
                        f"the position's notional {notional_after} would exceed the largest bracket {p.brackets[-1].cap}"), 0, 0
            im = initial_margin_at(p, seat.leverage(st, key, p.default_leverage), size_now + open_q,
                                   order_notional if open_q == qty else -(-exact_product(price, open_q) // scale),
                                   p.open_interest + open_q)
        else:
            im = 0  # (`initial_margin` of a zero notional)
        trading = self._trading
        assert trading is not None
        # `trading.rates(owner)[1]`, in line (typed: direct dict lookups, no call and no tuple per order)
        tiers: dict[int, tuple[int, int]] = trading.tiers
        account_tier: dict[str, int] = trading.account_tier
        # (no lookup while no account has a tier: the common case, a hashed probe and a boxed default less)
        taker_ppm: int = tiers[account_tier.get(owner, 0) if len(account_tier) != 0 else 0][1]
        # im + ceil(notional × taker rate): the fee reserve (the products through `exact_product`: a
        # price or a notional is past mypyc's native fast path for `*`)
        hold: int = im - (-exact_product(order_notional, taker_ppm) // PPM)
        if hold < 1:
            hold = 1
        w = self._wallet_of(seat, owner, p)
        self.order_wallet = w  # (what trading's `_place` pays from and receives to, if accepted below)
        self.order_seat = seat  # (what trading's `_open_order` gives the order: `Order.seat`)
        wallet_free: int = w.credits_posted - w.debits_posted - w.debits_pending if w is not None else 0
        self._borrow = 0
        if not open_q and pos is not None:
            liquidating = st.liquidating
            if liquidating is not None and liquidating == key:
                # The liquidation engine's own order: its fee reserve is capped at the collateral left
                # (a fill's fee is capped at the wallet anyway), so a bankrupt account can still be
                # closed in the book; with nothing left, the step advanced one minor unit.
                hold = max(1, min(hold, wallet_free + pos.margin))
            if hold <= wallet_free + pos.margin:
                # A purely reducing order never adds risk: an unrealised loss does not stop it, and it
                # may take its hold (the fee reserve) out of the position's own margin when the wallet
                # has too little free — closing never needs fresh collateral (`before_hold`).
                self._borrow = max(0, hold - wallet_free)
                liq_iso = st.liquidating_isolated
                if liq_iso is not None and liq_iso == key:  # its own margin pays its liquidation
                    self._borrow = min(hold, pos.margin)
                return None, protect, hold
        free: int = wallet_free
        if hold <= free or free > 0:  # (the message names what is free: the loss is needed either way, unless nothing is)
            # `cross_upnl_knowing(engine, st, owner, p.quote, symbol, pos)`: the owner's other
            # positions walked only when there are any, this one's term with this market and the
            # index entry already found (`_cross_upnl_of` and `mark_of_perp`, in line).
            upnl: int = 0
            if self._dirty_book is not positions:
                self._book_slots(positions)
            owned = self._by_owner.get(owner)
            if owned is not None and (pos is None or len(owned) > 1):  # (with `pos`, `owned` holds it)
                upnl = cross_upnl_knowing(engine, st, owner, p.quote, symbol, None)
            if pos is not None:
                held: int = pos.size
                isolated: set[tuple[str, str]] = st._isolated
                if held and not (len(isolated) != 0 and key in isolated):
                    if not looked:
                        index_symbols = self._index_symbols
                        if index_symbols is not None:
                            s = index_symbols.get(p.index_symbol)
                    mark = mark_knowing(engine, p, m.last_price, s)
                    if mark:
                        value = exact_product(held, mark) // scale
                        upnl += value - pos.cost if held > 0 else pos.cost + value
            if upnl < 0:
                free += upnl
        if hold > free:
            return ("MARGIN_INSUFFICIENT", "quantity",
                    f"Margin is insufficient: the order needs {hold} {p.quote} minor units, {max(free, 0)} are free"), 0, 0
        return None, protect, hold

    def before_hold(self, engine: Any, m: Market, c: Any) -> None:
        """Every check passed and trading is about to hold the order's margin: remember a
        reduce-only order's id (the next one trading gives), and move what a purely reducing order
        borrows from its position's margin back to the wallet first."""
        if not self._borrow and not self._placing_reduce_only:  # (the common case: nothing to do)
            return
        st = self._st
        if st is None:
            st = self._bind()
        if st.reduce_only:
            st.reduce_only_orders.setdefault(self.symbol, set()).add(trading_state(engine).next_order_id)
        if not self._borrow:
            return
        p = st.perps[self.symbol]
        key = (c.owner, self.symbol)
        pos: Position = st.positions[key]
        ledger = engine.ledger
        acct = ledger.get(c.owner, p.quote, "isolated" if key in st.isolated else "margin", SEGMENT)
        ledger.move(acct, ledger.get(c.owner, p.quote, "available", SEGMENT), self._borrow)
        pos.margin -= self._borrow
        pos.extra = min(pos.extra, pos.margin)
        # Compiled, the write above sets the native field directly (mypyc does not route it through
        # `Position.__setattr__`): mark the key for the margin sweep's mirror as that would have.
        st.positions.dirty.add(key)
        self._borrow = 0

    def _reducible(self, st: DerivativesState, m: Market, owner: str, is_buy: bool) -> int:
        """How much of an order on side `is_buy` would reduce the owner's position: the position's
        size on the other side less what the owner's open orders on this side already cover."""
        positions: dict[tuple[str, str], Position] = st._positions
        pos: Position | None = positions.get((owner, self.symbol))
        if pos is None:
            return 0
        return _reducible_of(pos.size, m, owner, is_buy)

    def only_reduces(self, m: Market) -> bool:
        """Does this perpetual only reduce now? True while `market_status` is not ACTIVE (a
        REDUCE_ONLY or HALTED halt on the market, the `derivatives` segment, its base or margin
        asset or the venue; or the band timer's state) or while its index has fewer than its
        minimum of live sources. The matching loop asks once per taker: then every fill, on both
        sides, is capped at what reduces that side's position (`fill_cap`). Pure: reads state only,
        all of it journaled (halts, index quotes, sequencer time), so replay matches the same way."""
        status = m.status
        # (`is` first: the market's status is the enum member itself unless restored as a plain string;
        # `!=` alone is a generic rich comparison of a `StrEnum`, ~75 instructions a taker)
        if status is not ACTIVE and status != ACTIVE:
            return True
        if self._st is None:
            self._bind()
        p = self._perp
        assert p is not None
        halts = self._halts
        if halts is not None and halts._index and market_status(self.engine, self.symbol) != "ACTIVE":
            return True
        symbols = self._index_symbols  # (`_bind`'s: the index state's, a direct dict lookup)
        if symbols is None:
            return False
        s = symbols.get(p.index_symbol)
        return s is not None and bool(s.short)

    def fill_cap(self, o: Order, only_reduces: bool = False) -> int:
        """How much order `o` may fill now: at most the position it reduces (0 when the position is
        gone or on its own side) for a reduce-only order, or for any order while the market only
        reduces (`only_reduces`); otherwise without limit."""
        st = self._st
        if st is None:
            st = self._bind()
        if not only_reduces and o.id not in st.reduce_only_orders.get(self.symbol, ()):
            return MAX_QTY
        pos: Position | None = st._positions.get((o.owner, self.symbol))
        if pos is None or (pos.size > 0) == o.is_buy:
            return 0
        return abs(pos.size)

    def expiry_reason(self, o: Order) -> str:
        """Why a maker with nothing it may fill is expired: `REDUCE_ONLY` for a reduce-only order,
        `MARKET_REDUCE_ONLY` for an order that would open or grow its owner's position while the
        market only reduces."""
        st = self._st
        if st is None:
            st = self._bind()
        ids = st.reduce_only_orders.get(self.symbol, ())
        return "REDUCE_ONLY" if o.id in ids else "MARKET_REDUCE_ONLY"

    def after_match(self, m: Market, ev: list[Any]) -> None:
        """After an order has matched (its fills and the stops they fired): the reduce-only orders
        of every owner whose position changed are cut down to it (Binance expires them)."""
        st = self._st
        if st is None:
            st = self._bind()
        orders: dict[str, set[int]] = st.reduce_only_orders
        ids = orders.get(self.symbol) if orders else None
        if not ids:  # (the common case: nothing to trim, and no new set per order)
            if self._touched:
                self._touched.clear()
            return
        touched, self._touched = self._touched, set()
        for owner in sorted(touched):
            trim_reduce_only(self.engine, st, m, owner, ev)
        ids.intersection_update(m.orders)
        if not ids:
            del st.reduce_only_orders[self.symbol]

    def rest_need(self, m: Market, o: Order) -> int:
        """What a resting order's hold reserves: its first hold pro rata of what is left, rounded up."""
        h = self.engine.ledger.pending_hold(o.hold_id)
        return ceil_div(h.amount * o.leaves, o.qty)

    # -- a fill

    def fill(self, m: Market, buyer: Order, seller: Order, price: int, qty: int, notional: int,
             buyer_rate_ppm: int, seller_rate_ppm: int, ev: list[Any], price_box: Any, qty_box: Any) -> tuple[Any, Any]:
        # (`MarketContract.fill`'s signature exactly, defaults included: a different one makes mypyc
        # call this through a glue function, ~120 instructions a fill)
        st = self._st  # (what the engine holds, read at the contract's first use: `_bind`)
        if st is None:
            st = self._bind()
        p = self._perp
        ledger = self._ledger
        system = self._accounts
        assert p is not None and ledger is not None and system is not None
        # What both sides read of the state, read once per fill.
        positions, isolated, liq_iso = st._positions, st._isolated, st.liquidating_isolated
        if self._dirty_book is not positions:
            self._book_slots(positions)
        dirty: set[tuple[str, str]] = self._dirty
        # Owners whose position changed matter to `after_match` only while some market has an open
        # reduce-only order (none can be placed within a match: `before_hold` adds them, before it).
        touch = bool(st.reduce_only_orders)
        # The isolated set, or None while it is empty (the common case): a side then makes no set test.
        # (Typed here, once per fill: `IsolatedSet` subclasses `set`, so the type test walks its bases.)
        iso_set: set[tuple[str, str]] = isolated
        iso_any: Any = iso_set if len(iso_set) != 0 else None
        buyer_fee = self._side(st, p, m, buyer, True, price, qty, notional, buyer_rate_ppm, ev, ledger, system, positions,
                               iso_any, liq_iso, dirty, touch, price_box, qty_box)
        seller_fee = self._side(st, p, m, seller, False, price, qty, notional, seller_rate_ppm, ev, ledger, system,
                                positions, iso_any, liq_iso, dirty, touch, price_box)
        return buyer_fee, seller_fee

    def _side(self, st: DerivativesState, p: Perp, m: Market, o: Order, is_buy: bool, price: int, qty: int,
              notional: int, rate_ppm: int, ev: list[Event], ledger: Ledger, system: tuple[Account, Account, Account],
              positions: Any, isolated: Any, liq_iso: Any, dirty: set[tuple[str, str]], touch: bool = True,
              price_box: Any = None, qty_box: Any = None) -> Any:
        """One side of a fill: the hold it frees, the position, realised PnL, the fee, the margin.

        The hot path of every perpetual fill, written on locals: the position's fields are set
        once at the end (`Position`'s tracking `__setattr__` is bypassed, and the key marked for
        the margin sweep's mirror by hand), the wallet's free balance is followed arithmetically
        between postings, and the postings are the same, in the same order and amounts, as the
        step-by-step version this replaced (tests/derivatives/test_fast_path.py runs the two side
        by side and compares every event and the state hash)."""
        owner: str = o.owner
        w: Account = o.pay
        # 1. What the fill frees of the order's hold goes back to the wallet (capture, pay back).
        hold_id: int = o.hold_id
        # The hold's record (read only: its two figures, and handed back to the settlement): the one
        # trading kept when it made the hold (`Order.hold`; the ledger checks it is hold `hold_id`'s),
        # else looked up by id (an order restored from a snapshot).
        held: Pending | None = o.hold
        h: Pending = held if held is not None else ledger.open_hold_record(hold_id)
        remaining: int = h.remaining
        # remaining - ceil(amount × leaves after / qty); the product through `exact_product` (a hold's
        # amount is past 2**30: compiled, `*` took mypyc's slow path, three Python ints, ~600 instructions)
        take: int = remaining + exact_product(h.amount, qty - o.leaves) // o.qty
        took: int = take if take > 0 else 0
        symbol: str = p.symbol
        # The owner's seat: the one the order was given when placed (`Order.seat`: this contract's
        # `order_hold` found it for this owner), else the order being placed's (the taker's side of
        # its fills), else looked up (an order restored from a snapshot).
        given: Any = o.seat  # (an `OrderSeat` to trading: this contract's are `Seat`s, checked here)
        seat: Seat | None = given
        if seat is None or seat.owner != owner:
            seat = self._hint
            if seat is None or seat.owner is not owner:  # (the same string object: the same owner)
                seat = self._seats.get(owner)  # (this ledger's: `_bind`)
                if seat is None:
                    seat = self._new_seat(owner)
            # (not indexed: the taker of a stop restored from a snapshot; the book counts it in the
            # seat's open quantity if it rests, `OrderSeat`)
            o.seat = seat
        if o.level is not None:  # resting: a maker, whose `leaves` trading's fill lowers by `qty`
            if is_buy:
                seat.open_buy -= qty
            else:
                seat.open_sell -= qty
        key: Any = seat.key  # (`Any`: one tuple for every lookup below, see `Seat.position`)
        iso: bool = False
        if isolated is not None:  # (`fill`: the isolated set, None while it is empty)
            iso_set: set[tuple[str, str]] = isolated  # (typed: a direct set lookup)
            iso = key in iso_set
        own_margin_only: bool = liq_iso is not None and liq_iso == key  # a LiquidatePosition step: the wallet never pays
        # `seat.position(positions, key)`, in line: the position found last while it is in the book.
        got: Position | None = seat.pos
        if got is None or got._book is not positions:
            # (declared where assigned: `positions` is `Any`, and an `Any` assigned to `got` would make
            # it, and `pos`, `Any` below: each field read boxed and unboxed again)
            found: Position | None = positions.get(key)
            got = seat.pos = found
        pos: Position
        size: int
        cost: int
        released: int
        if got is None:
            pos = Position()
            size = cost = released = 0
        else:
            pos = got
            size, cost, released = pos.size, pos.cost, pos.margin
        pool, fees, insurance = system
        acct: Account | None = seat.isolated if iso else seat.margin
        if acct is None:  # (the owner's first fill here)
            quote = p.quote
            kind = "isolated" if iso else "margin"
            if w.owner == owner and w.asset == quote and w.segment == SEGMENT:  # (the order's wallet: always)
                acct = ledger.open_beside(w, kind)
            else:
                acct = ledger.find(owner, quote, kind, SEGMENT) or ledger.open_account(owner, quote, kind, SEGMENT)[0]
            if iso:
                seat.isolated = acct
            else:
                seat.margin = acct
        # 2. The position's margin comes back to the wallet (`released`); it is posted again for what remains.
        # 3. The position: open, increase, reduce or flip (docs/derivatives.md, "Positions").
        longs_before: int = size if size > 0 else 0
        signed: int = qty if is_buy else -qty
        realized: int = 0
        scale: int = p.scale
        if size == 0 or (size > 0) == is_buy:
            size += signed
            cost += notional
        else:
            size_abs = size if size > 0 else -size
            close_q = qty if qty < size_abs else size_abs
            close_notional = exact_product(price, close_q) // scale
            if size > 0:  # closing a long: its cost share rounds up (less profit)
                closed_cost = -(-exact_product(cost, close_q) // size_abs)
                realized = close_notional - closed_cost
                size -= close_q
            else:  # closing a short: its cost share rounds down (less profit)
                closed_cost = exact_product(cost, close_q) // size_abs
                realized = closed_cost - close_notional
                size += close_q
            cost -= closed_cost
            open_q = qty - close_q
            if open_q:  # a flip: the position was closed whole (cost 0), the rest opens
                size += signed - (close_q if is_buy else -close_q)
                cost = exact_product(price, open_q) // scale
        p.open_interest += (size if size > 0 else 0) - longs_before
        # 4. Realised PnL through the market's pool; a loss the owner cannot pay is the insurance
        #    fund's (an isolated position pays only from its own margin).
        covered: int = 0
        gain: int = 0
        paid: int = 0
        # The wallet's `available` as each posting below will leave it (capture and release first).
        free: int = w.credits_posted - w.debits_posted - w.debits_pending + took + released
        if realized > 0:
            gain = realized
            free += realized
        elif realized < 0:
            loss = -realized
            if iso:
                budget = released + took if own_margin_only else released
                if free < budget:
                    budget = free
            else:
                budget = free
            paid = loss if loss < budget else budget
            free -= paid
            covered = loss - paid
        # 5. The fee, in the quote asset: ceil(notional × rate); the shield fund's tenth rounds down.
        fee = -(-exact_product(notional, rate_ppm) // PPM)  # (`exact_product`: a notional may pass 2**30)
        if fee > free:
            fee = free
        # What the position's margin (and its order's hold, borrowed from it) brought and the loss
        # left: what a `LiquidatePosition` step's fill may spend (`own_margin_only`; 0 otherwise, unread).
        own_left: int = 0
        if own_margin_only:
            own_left = released + took - (-realized - covered if realized < 0 else 0)
            fee = max(0, min(fee, own_left))
        shield = fee // 10
        free -= fee
        # 6. Initial margin of what remains (plus isolated margin added by hand), posted again.
        post: int = 0
        if size:
            target = initial_margin_at(p, seat.leverage(st, key, p.default_leverage), size if size > 0 else -size, cost,
                                       p.open_interest)
            if iso:
                target += pos.extra
            post = target if target < free else free
            if own_margin_only:
                post = max(0, min(post, own_left - fee))
        # Steps 1-6 as one linked set of postings (the ledger checks them all before the first).
        ledger.settle_margin_side(hold_id, took, w, acct, released, pool, gain, paid, insurance, covered, fees,
                                  fee - shield, shield, post, h)
        if _NATIVE_POSITION:  # compiled: written through its own `__setattr__` (a native call; it marks the key)
            pos.realized += realized
            pos.size = size
            pos.cost = cost
            pos.margin = post
        else:  # pure Python: its tracking `__setattr__` (a Python call each) bypassed, the key marked below
            _bypass(pos, "realized", pos.realized + realized)
            _bypass(pos, "size", size)
            _bypass(pos, "cost", cost)
            _bypass(pos, "margin", post)
        if size:
            if pos._book is not positions:  # a new position (`got` was None): into the book
                _book_insert(positions, key, pos, self._by_owner, owner, symbol)
                seat.pos = pos
            # What `Position.__setattr__`, or the book's `__setitem__`, would have marked: the key
            # as the book holds it (`_key`, the same tuple: the set finds it by identity, where an
            # equal new tuple is compared item by item) — unless a fill marked it since the mirror
            # last emptied the set (`MarkCount`: the key is there; adding it again hashed a tuple).
            marks_n: int = self._marks.n  # (`fill` read the book's slots)
            if pos._marked_at != marks_n:
                book_key: Any = pos._key
                dirty.add(book_key)
                if _NATIVE_POSITION:
                    pos._marked_at = marks_n
                else:
                    _bypass(pos, "_marked_at", marks_n)
        else:
            if pos._book is positions:  # the book's `pop(key)`, natively (and its owner index's)
                _DICT_POP(positions, key)
                pos._book = None
                by_owner = self._by_owner  # (`fill` read the book's slots)
                mine_left = by_owner.get(owner)
                if mine_left is not None:
                    mine_left.pop(symbol, None)
                    if not mine_left:
                        del by_owner[owner]
                book_key = pos._key
                dirty.add(book_key)
            seat.pos = None
            pos.extra = 0
        # The event, with what the `Trade` carries boxed once (the price; the buyer's quantity, `qty`),
        # and the fee as a Python int once, for it and for the `Trade` (what this returns).
        fee_box: Any = fee
        ev.append(_POSITION_CHANGED(owner, symbol, price if price_box is None else price_box,
                                    qty_box if is_buy and qty_box is not None else signed, size, cost, post, realized,
                                    fee_box, covered))
        if touch:
            self._touched.add(owner)
        return fee_box


def _book_insert(positions: Any, key: Any, pos: Position, by_owner: dict[str, dict[str, Position]], owner: str,
                 symbol: str) -> None:
    """`PositionBook.__setitem__` of a key the book does not hold, natively (its Python method set
    four fields through `Position`'s tracking `__setattr__`: a tenth of a fill side's cost when it
    opens a position): the next insertion number, the link to the book, the key, the owner index
    (`by_owner`: the book's `by_owner`, as `Contract._book_slots` read it); the caller marks the key
    dirty. The key is not in the book, so `dict.setdefault` inserts it, as `dict.__setitem__` would
    (a slot wrapper: called from here, its arguments went through a new tuple). `owner` and `symbol`:
    the key's two items (`key` is `Any`: indexing it is a generic call each)."""
    seq: int = positions.next_seq
    positions.next_seq = seq + 1
    pos._seq = seq
    pos._book = positions
    pos._key = key
    _DICT_SETDEFAULT(positions, key, pos)
    mine = by_owner.get(owner)
    if mine is None:
        mine = by_owner[owner] = {}
    mine[symbol] = pos


def _reducible_of(size: int, m: Market, owner: str, is_buy: bool) -> int:
    """`Contract._reducible` of the owner's position of signed `size` (already looked up)."""
    if (size > 0) == is_buy:
        return 0
    left: int = -size if size < 0 else size
    owned = m.by_owner.get(owner)
    if owned:
        for o in owned.values():  # (stops at the first order that covers the rest)
            if o.is_buy == is_buy:
                left -= o.leaves
                if left <= 0:
                    return 0
    return left


def trim_reduce_only(engine: Any, st: DerivativesState, m: Any, owner: str, ev: list[Event]) -> None:
    """Cut `owner`'s open reduce-only orders on market `m` down to the position, oldest first: one
    on the side that would open or grow it is expired; on the reducing side they keep, together, at
    most the position's size — the one that straddles it is cut down (`OrderAmended`, keeping its
    place; its hold shrinks to its pro-rata share through the ledger), the later ones are expired."""
    ids = st.reduce_only_orders.get(m.symbol)
    if not ids:
        return
    mine = sorted(i for i in ids if i in m.orders and m.orders[i].owner == owner)
    if not mine:
        return
    pos = st.positions.get((owner, m.symbol))
    room = abs(pos.size) if pos is not None else 0
    ledger = engine.ledger
    for oid in mine:
        o = m.orders[oid]
        keep = min(o.leaves, room) if pos is not None and (pos.size > 0) != o.is_buy else 0
        room -= keep
        if keep == o.leaves:
            continue
        if keep == 0:
            resting = _take_out(m, o)
            _close(ledger, m, o, ev, OrderExpired, "REDUCE_ONLY", resting)
            ids.discard(oid)
            continue
        if o.level is not None:
            o.level.total -= o.leaves - keep
        seat = o.seat  # (the owner's open quantity on the order's side, `OrderSeat`)
        if seat is not None:
            if o.is_buy:
                seat.open_buy -= o.leaves - keep
            else:
                seat.open_sell -= o.leaves - keep
        o.leaves = keep
        o.qty = o.filled + keep
        h = ledger.pending_hold(o.hold_id)
        ledger.resize_hold_to(o.hold_id, o.pay, ceil_div(h.amount * keep, o.qty))  # shrinks: always succeeds
        ev.append(OrderAmended(m.symbol, oid, o.price, o.qty, keep, True))
