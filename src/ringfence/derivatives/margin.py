"""The margin arithmetic a perpetual order and fill ask for: initial margin, the mark price,
unrealised PnL, an owner's cross PnL (docs/derivatives.md, "Margin" and "Rounding").

Integers only; every division rounds against the user (`ceil` is `-(-a // b)`). Compiled with
the contract (`ringfence.native.COMPILED`), which calls these on every order and fill;
`derivatives.state` re-exports them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from ..index.mark import ma_basis, mark_price
from ..trading.book import Market
from ..trading.state import TradingState

if TYPE_CHECKING:  # (mypyc's native 64-bit int: only its annotations are used)
    from mypy_extensions import i64

    from .dstate import DerivativesState  # (it imports this module)

__all__ = ["PPM", "Bracket", "Perp", "Position", "MarkCount", "initial_margin", "mark_of_perp", "unrealized", "cross_upnl",
           "cross_upnl_knowing", "exact_product", "initial_margin_at", "mark_knowing"]

PPM: Final = 1_000_000


def exact_product(a: int, b: int) -> int:
    """`a * b`, exactly (any ints). Compiled, `a * b` multiplies natively only while both are
    below 2**30 (mypyc's overflow test is that coarse): a price (~6e10 minor units) times a
    quantity, a cost times a size, never is, and its slow path makes three Python ints each time.
    Here a product that fits in 62 bits is one 64-bit machine multiplication — told by comparing
    the operands with constants (both below 2**31 in magnitude), else by one machine division
    (|a| <= (2**62 - 1) // |b|): a few instructions, where two `bit_length` calls cost a call
    each; a larger one is Python's. Pure Python: the same product."""
    if -_B31 < a < _B31 and -_B31 < b < _B31:
        x: i64 = a
        y: i64 = b
        return x * y
    if -_M62 <= a <= _M62 and -_M62 <= b <= _M62:  # (short ints compiled: each converts to 64 bits as it is)
        x2: i64 = a
        y2: i64 = b
        ax: i64 = x2 if x2 >= 0 else -x2
        ay: i64 = y2 if y2 >= 0 else -y2
        if ay == 0 or ax <= _M62 // ay:  # |a × b| <= 2**62 - 1
            return x2 * y2
    return a * b


#: `exact_product`'s bounds: operands below 2**31 in magnitude multiply within 62 bits; up to
#: `_M62` (compiled, the largest short int: a comparison with it is a machine one) they fit in 64
#: bits, and their product fits in 62 when |a| <= `_M62` // |b|.
_B31: Final = 1 << 31
_M62: Final = (1 << 62) - 1


# A perpetual's listing and its brackets: compiled here (native classes, so the order and fill
# path reads their fields directly); `derivatives.state` re-exports them.



class MarkCount:
    """How many times a position book's `dirty` set has been emptied (by the margin sweep's mirror,
    `columns.py`, which bumps `n` each time it does): a position whose `_marked_at` is the count now
    has its key in the set already, so a fill need not add it again (a tuple hashed per fill side).
    One per `PositionBook`, never replaced (the contract keeps it, as it keeps the book's `dirty`)."""

    def __init__(self) -> None:
        self.n = 0


class Position:
    """One owner's position in one perpetual. Setting `size`, `cost` or `margin` (what the margin
    sweep reads) while the position is in a `PositionBook` marks it for the book's columnar mirror
    (`columns.py`), so every change, wherever it is made, reaches the sweep. Reads are plain slots.
    Compiled with the contract (a native class: its fields are read as C fields there); the
    contract writes a fill's fields with `object.__setattr__` and marks the key itself."""

    __slots__ = ("size", "cost", "margin", "extra", "realized", "_book", "_key", "_seq", "_marked_at")

    size: int  # signed: > 0 long, < 0 short (base minor units)
    cost: int  # entry notional of the open size (quote minor units, >= 0)
    margin: int  # posted into the owner's `margin` (cross) or `isolated` account for this position
    extra: int  # isolated only: margin added by hand on top of the initial margin
    realized: int  # cumulative realised PnL (report only)
    _book: Any  # its `PositionBook` (derivatives/state.py), or None
    #: The key the book holds it under, (owner, symbol). `Any`, not `tuple[str, str]`: compiled, a
    #: tuple-typed field is stored unboxed and every read builds a new tuple, which the book's
    #: `dirty` set then compares item by item; kept as the object, the set finds it by identity.
    _key: Any
    _seq: int
    #: The book's `marks.n` when a fill last put this position's key in the book's `dirty` set, else
    #: -1: while the two are equal the key is there (see `MarkCount`). Not state (not in `row`).
    _marked_at: int

    def __init__(self, size: int = 0, cost: int = 0, margin: int = 0, extra: int = 0, realized: int = 0) -> None:
        self._book = None  # (first: a new position is in no book, nothing is marked)
        self._key = ("", "")
        self._seq = 0  # the book's insertion order (its dict order)
        self._marked_at = -1
        self.size = size
        self.cost = cost
        self.margin = margin
        self.extra = extra
        self.realized = realized

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        if name == "size" or name == "cost" or name == "margin":  # (what the margin sweep reads)
            book: Any = self._book
            if book is not None:
                book.dirty.add(self._key)

    def row(self) -> list[int]:
        return [self.size, self.cost, self.margin, self.extra, self.realized]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Position) and self.row() == other.row()

    def __repr__(self) -> str:
        return f"Position(size={self.size}, cost={self.cost}, margin={self.margin}, extra={self.extra}, realized={self.realized})"

    def __reduce__(self) -> tuple[Any, ...]:  # a copy is detached from any book
        return (Position, tuple(self.row()))


@dataclass(slots=True)
class Bracket:
    cap: int  # largest position notional (quote minor units) of this bracket
    max_leverage: int
    mmr_ppm: int  # maintenance margin rate
    maint_amount: int  # Binance's "cum": MM = notional × mmr − maint_amount

    def row(self) -> list[int]:
        return [self.cap, self.max_leverage, self.mmr_ppm, self.maint_amount]


@dataclass(slots=True)
class Perp:
    symbol: str
    base: str
    quote: str
    index_symbol: str
    brackets: list[Bracket]
    default_leverage: int
    impact_notional: int
    interest_ppm: int
    clamp_ppm: int
    cap_ppm: int
    interval_ns: int
    max_oi: int
    max_share_ppm: int
    share_floor: int
    conc_imr_ppm: int
    scale: int  # 10 ** base decimals
    open_interest: int = 0  # sum of the long sizes (= the short sizes)
    last_rate_ppm: int = 0
    last_funding_ns: int = 0
    next_funding_ns: int = 0

    def row(self) -> list[Any]:
        return [self.symbol, self.base, self.quote, self.index_symbol, [b.row() for b in self.brackets],
                self.default_leverage, self.impact_notional, self.interest_ppm, self.clamp_ppm, self.cap_ppm,
                self.interval_ns, self.max_oi, self.max_share_ppm, self.share_floor, self.conc_imr_ppm, self.scale,
                self.open_interest, self.last_rate_ppm, self.last_funding_ns, self.next_funding_ns]

    @classmethod
    def from_row(cls, r: list[Any]) -> "Perp":
        p = cls(r[0], r[1], r[2], r[3], [Bracket(*b) for b in r[4]], r[5], r[6], r[7], r[8], r[9], r[10], r[11], r[12],
                r[13], r[14], r[15])
        p.open_interest, p.last_rate_ppm, p.last_funding_ns, p.next_funding_ns = r[16:20]
        return p


def initial_margin(st: DerivativesState, p: Perp, owner: str, size_abs: int, cost: int, open_interest: int) -> int:
    """IM of a position (or an order's opening part) of entry notional `cost`:
    `max(ceil(cost / leverage), ceil(cost × concentration_rate))`, the leverage being the owner's
    setting lowered to the bracket's maximum for `cost` (`effective_leverage` and
    `concentration_imr_ppm`, inlined: every order and every fill asks)."""
    if cost <= 0:
        return 0
    leverage: dict[tuple[str, str], int] = st.leverage  # (typed: a direct dict lookup, not a method call)
    return initial_margin_at(p, leverage.get((owner, p.symbol), p.default_leverage), size_abs, cost, open_interest)


def initial_margin_at(p: Perp, lev: int, size_abs: int, cost: int, open_interest: int) -> int:
    """`initial_margin` at the owner's leverage setting `lev` already looked up (the contract keeps
    it in the owner's `Seat`)."""
    if cost <= 0:
        return 0
    for b in p.brackets:  # the first bracket whose cap holds `cost`, else the last
        if cost <= b.cap:
            break
    if b.max_leverage < lev:
        lev = b.max_leverage
    im: int = -(-cost // lev)
    rate_ppm: int = p.conc_imr_ppm
    if rate_ppm and open_interest > 0:
        share_ppm = -(-(size_abs * PPM) // open_interest)  # (negated after the product: mypyc's fast path)
        conc = -(-(share_ppm * rate_ppm) // PPM)
        if conc:
            conc_im = -(-exact_product(cost, conc) // PPM)
            if conc_im > im:
                im = conc_im
    return im


def mark_of_perp(engine: Any, p: Perp) -> int:
    """The perpetual's mark price (docs/index.md's formula with this market's last trade and its
    funding basis `last rate × time left / interval`), else its last trade price, else 0."""
    components: dict[str, Any] = engine.components  # (read once, typed: direct dict lookups)
    trading: TradingState | None = components.get("trading")  # (typed: native classes, C fields compiled)
    m: Market | None = trading.markets.get(p.symbol) if trading is not None else None
    last: int = m.last_price if m is not None else 0
    index = components.get("index")
    if index is not None:
        symbols: dict[str, Any] = index.symbols  # (typed: a direct dict lookup, not a method call)
        s = symbols.get(p.index_symbol)
    else:
        s = None
    return mark_knowing(engine, p, last, s)


def mark_knowing(engine: Any, p: Perp, last: int, s: Any) -> int:
    """`mark_of_perp` with the market's last trade price `last` and the index's entry for the
    perpetual's index symbol `s` (None when there is none) already looked up."""
    if s is None or not s.index_minor:
        return int(last)
    left = max(0, p.next_funding_ns - engine.now_ns)
    basis_ppm = p.last_rate_ppm * left // p.interval_ns if p.interval_ns else 0
    ma, _ = ma_basis(s, engine.now_ns)
    return mark_price(s.index_minor, basis_ppm, ma, last)


def unrealized(pos: Any, mark: int, scale: int) -> int:
    """Unrealised PnL at `mark`: the position's value rounded against the owner."""
    if not pos.size or not mark:
        return 0
    if pos.size > 0:
        return pos.size * mark // scale - pos.cost
    return pos.cost + pos.size * mark // scale  # pos.cost - ceil(|size| × mark / scale)


def cross_upnl(engine: Any, st: DerivativesState, owner: str, asset: str) -> int:
    """The unrealised PnL at mark of the owner's cross positions margined in `asset`."""
    return cross_upnl_knowing(engine, st, owner, asset, "", None)


def cross_upnl_knowing(engine: Any, st: DerivativesState, owner: str, asset: str, known_symbol: str, known: Position | None) -> int:
    """`cross_upnl`, the owner's position in perpetual `known_symbol` already looked up (`known`,
    None when there is none): what an order's margin check asks, without that lookup again. Walks
    the owner's positions (the book's owner index), not every listed perpetual."""
    total: int = 0
    # (the properties' storage, typed: direct dict and set lookups, no call per order)
    by_owner: dict[str, dict[str, Position]] = st._positions.by_owner
    isolated: set[tuple[str, str]] = st._isolated
    perps: dict[str, Perp] = st.perps
    mine: dict[str, Position] | None = by_owner.get(owner)
    if mine is not None:
        for sym, pos in mine.items():
            if sym != known_symbol:
                total += _cross_upnl_of(engine, perps, isolated, owner, asset, sym, pos)
    if known is not None:
        total += _cross_upnl_of(engine, perps, isolated, owner, asset, known_symbol, known)
    return total


def _cross_upnl_of(engine: Any, perps: dict[str, Perp], isolated: set[tuple[str, str]], owner: str, asset: str,
                   sym: str, pos: Position) -> int:
    """The owner's position `pos` in `sym`'s unrealised PnL at mark if it is a listed cross
    position margined in `asset`, else 0 (`cross_upnl_knowing`'s term)."""
    p: Perp | None = perps.get(sym)
    if p is None or p.quote != asset or (isolated and (owner, sym) in isolated):  # (no tuple while none is isolated)
        return 0
    # `unrealized`, inlined on the typed position (its fields read as C fields compiled)
    size: int = pos.size
    if size:
        mark = mark_of_perp(engine, p)
        if mark:
            value = exact_product(size, mark) // p.scale
            return value - pos.cost if size > 0 else pos.cost + value
    return 0
