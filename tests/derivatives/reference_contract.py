"""The perpetual contract as it was before the fast path (main at 6aee71b8), kept verbatim as the
reference the differential test (test_fast_path.py) runs beside the engine's `Contract`.

`ReferenceContract` is the old `Contract` class, and the helpers it called are the old
`initial_margin`, `effective_leverage` and `cross_upnl`, renamed `*_ref`. It stands alone (the
engine's `Contract` may be compiled, and a compiled class cannot be subclassed from Python; it
subclasses trading's `MarketContract`, the interface `Market.contract` is typed with, which allows it).
Do not "tidy" this file: its value is that it is the old code. One addition since: the rule for a
market that only reduces (issue 17), restated from docs/derivatives.md ("Reduce-only market") rather
than copied — `only_reduces`, the `only_reduces` argument of `fill_cap`, and `expiry_reason`.
"""

# ruff: noqa
from __future__ import annotations

from typing import Any

from ringfence.derivatives.commands import PositionChanged
from ringfence.derivatives.module import trim_reduce_only
from ringfence.derivatives.state import (
    PPM, SEGMENT, DerivativesState, Perp, Position, bracket_for, ceil_div, concentration_imr_ppm, derivatives_state,
    mark_of_perp, pool_of, unrealized, wallet,
)
from ringfence.engine.commands import Event
from ringfence.engine.core import Engine
from ringfence.trading.book import MarketContract
from ringfence.trading.commands import PlaceOrder
from ringfence.trading.orders import _protection_and_hold
from ringfence.trading.state import MAX_QTY, trading_state

__all__ = ["ReferenceContract"]


def effective_leverage_ref(st: DerivativesState, p: Perp, owner: str, notional: int) -> int:
    """The owner's leverage setting, lowered to the bracket's maximum for `notional`."""
    lev = st.leverage.get((owner, p.symbol), p.default_leverage)
    b = bracket_for(p, notional) or p.brackets[-1]
    return min(lev, b.max_leverage)


def concentration_imr_ppm(p: Perp, size_abs: int, open_interest: int) -> int:
    """dYdX-style: the initial margin rate a concentrated position needs, share × factor."""
    if not p.conc_imr_ppm or open_interest <= 0:
        return 0
    share_ppm = ceil_div(size_abs * PPM, open_interest)
    return ceil_div(share_ppm * p.conc_imr_ppm, PPM)


def initial_margin_ref(st: DerivativesState, p: Perp, owner: str, size_abs: int, cost: int, open_interest: int) -> int:
    """IM of a position (or an order's opening part) of entry notional `cost`:
    `max(ceil(cost / leverage), ceil(cost × concentration_rate))`."""
    if cost <= 0:
        return 0
    im = ceil_div(cost, effective_leverage_ref(st, p, owner, cost))
    conc = concentration_imr_ppm(p, size_abs, open_interest)
    if conc:
        im = max(im, ceil_div(cost * conc, PPM))
    return im


def cross_upnl_ref(engine: Engine, st: DerivativesState, owner: str, asset: str) -> int:
    total = 0
    for sym, p in st.perps.items():
        pos = st.positions.get((owner, sym))
        if pos is not None and (owner, sym) not in st.isolated and p.quote == asset:
            total += unrealized(pos, mark_of_perp(engine, p), p.scale)
    return total




class ReferenceContract(MarketContract):  # (the interface trading calls: `Market.contract` is typed with it)
    """What trading asks a perpetual market (see `Market.contract`)."""

    def __init__(self, engine: Engine, symbol: str) -> None:
        self.engine = engine
        self.symbol = symbol
        self._ledger: Any = None
        self._borrow = 0  # set by `order_hold`, spent by `before_hold` within the same order
        self._accounts: tuple[Any, Any, Any] = (None, None, None)
        self._touched: set[str] = set()  # owners whose position a fill changed in the current match
        self.order_wallet: Any = None  # what trading's `_place` pays from (the plain lookup, each order)
        self.order_seat: Any = None  # (`MarketContract`'s field since session 20: none here, its fills look up)

    @property
    def has_reduce_only(self) -> bool:
        """Does this market have an open reduce-only order (trading's matching loop asks first)?"""
        return bool(derivatives_state(self.engine).reduce_only_orders.get(self.symbol))

    def _system(self, p: Perp) -> tuple[Any, Any, Any]:
        """(PnL pool, fees, insurance) of this market, looked up once per ledger object."""
        ledger = self.engine.ledger
        if self._ledger is not ledger:
            self._accounts = (pool_of(ledger, p), ledger.fees(p.quote, SEGMENT), ledger.insurance(p.quote, SEGMENT))
            self._ledger = ledger
        return self._accounts

    # -- placing: how much margin an order holds, or why it is refused

    def order_hold(self, engine: Engine, m: Any, c: PlaceOrder, words: Any) -> tuple[tuple[str, str, str] | None, int, int]:
        st = derivatives_state(engine)
        p = st.perps[self.symbol]
        self.order_wallet = wallet(engine.ledger, c.owner, p.quote)
        is_buy, limitish = words[0], words[4]
        if c.quote_amount:
            return ("INVALID_PARAMETER", "quote_amount", "perpetual orders are sized by quantity, not quote amount"), 0, 0
        protect = 0
        if limitish:
            price = c.price
        else:
            protect, _ = _protection_and_hold(m, c, words)
            price = protect
            if not price:  # an empty book: trading accepts and expires it at once, nothing held
                return (None, 0, 0) if not st.reduce_only or self._reducible(st, m, c.owner, is_buy) else (
                    ("REDUCE_ONLY_REJECTED", "reduce_only", "ReduceOnly Order is rejected."), 0, 0)
        qty = c.quantity
        pos = st.positions.get((c.owner, self.symbol))
        reducible = self._reducible(st, m, c.owner, is_buy)
        close_q = min(qty, reducible)
        open_q = qty - close_q
        if st.reduce_only and open_q:
            return ("REDUCE_ONLY_REJECTED", "reduce_only", "ReduceOnly Order is rejected."), 0, 0
        size_now = abs(pos.size) if pos is not None else 0
        if open_q:
            index = engine.components.get("index")
            s = index.symbols.get(p.index_symbol) if index is not None else None
            if s is not None and s.short:  # the index lost its sources: the perpetual only reduces
                return ("MARKET_NOT_ACTIVE", "symbol",
                        f"the {p.index_symbol} index has fewer than {s.min_sources} live sources: only reducing orders are accepted"), 0, 0
            oi_after = p.open_interest + open_q
            if p.max_oi and oi_after > p.max_oi:
                return ("OPEN_INTEREST_CAP", "quantity",
                        f"the order would take {self.symbol}'s open interest to {oi_after}, above its cap {p.max_oi}"), 0, 0
            mine = size_now + open_q if not close_q else open_q
            if p.max_share_ppm and oi_after > p.share_floor and mine * PPM > p.max_share_ppm * oi_after:
                return ("CONCENTRATION_LIMIT", "quantity",
                        f"the position would hold {mine * PPM // oi_after} ppm of {self.symbol}'s open interest, "
                        f"above the per-account limit {p.max_share_ppm} ppm"), 0, 0
            notional_after = ceil_div(price * mine, p.scale)
            if bracket_for(p, notional_after) is None:
                return ("CONCENTRATION_LIMIT", "quantity",
                        f"the position's notional {notional_after} would exceed the largest bracket {p.brackets[-1].cap}"), 0, 0
        open_notional = ceil_div(price * open_q, p.scale)
        im = initial_margin_ref(st, p, c.owner, size_now + open_q, open_notional, p.open_interest + open_q)
        taker_ppm = trading_state(engine).rates(c.owner)[1]
        fee_reserve = ceil_div(ceil_div(price * qty, p.scale) * taker_ppm, PPM)
        hold = max(1, im + fee_reserve)
        w = wallet(engine.ledger, c.owner, p.quote)
        wallet_free = w.available if w is not None else 0
        self._borrow = 0
        if st.liquidating == (c.owner, self.symbol) and not open_q and pos is not None:
            # The liquidation engine's own order: its fee reserve is capped at the collateral left
            # (a fill's fee is capped at the wallet anyway), so a bankrupt account can still be
            # closed in the book; with nothing left, the step advanced one minor unit.
            hold = max(1, min(hold, wallet_free + pos.margin))
        if not open_q and pos is not None and hold <= wallet_free + pos.margin:
            # A purely reducing order never adds risk: an unrealised loss does not stop it, and it
            # may take its hold (the fee reserve) out of the position's own margin when the wallet
            # has too little free — closing never needs fresh collateral (`before_hold`).
            self._borrow = max(0, hold - wallet_free)
            if st.liquidating_isolated == (c.owner, self.symbol):  # its own margin pays its liquidation
                self._borrow = min(hold, pos.margin)
            return None, protect, hold
        free = wallet_free + min(0, cross_upnl_ref(engine, st, c.owner, p.quote))
        if hold > free:
            return ("MARGIN_INSUFFICIENT", "quantity",
                    f"Margin is insufficient: the order needs {hold} {p.quote} minor units, {max(free, 0)} are free"), 0, 0
        return None, protect, hold

    def before_hold(self, engine: Engine, m: Any, c: PlaceOrder) -> None:
        """Every check passed and trading is about to hold the order's margin: remember a
        reduce-only order's id (the next one trading gives), and move what a purely reducing order
        borrows from its position's margin back to the wallet first."""
        st = derivatives_state(engine)
        if st.reduce_only:
            st.reduce_only_orders.setdefault(self.symbol, set()).add(trading_state(engine).next_order_id)
        if not self._borrow:
            return
        p = st.perps[self.symbol]
        key = (c.owner, self.symbol)
        pos = st.positions[key]
        ledger = engine.ledger
        acct = ledger.get(c.owner, p.quote, "isolated" if key in st.isolated else "margin", SEGMENT)
        ledger.move(acct, ledger.get(c.owner, p.quote, "available", SEGMENT), self._borrow)
        pos.margin -= self._borrow
        pos.extra = min(pos.extra, pos.margin)
        self._borrow = 0

    def _reducible(self, st: DerivativesState, m: Any, owner: str, is_buy: bool) -> int:
        """How much of an order on side `is_buy` would reduce the owner's position: the position's
        size on the other side less what the owner's open orders on this side already cover."""
        pos = st.positions.get((owner, self.symbol))
        if pos is None:
            return 0
        size = pos.size
        if (size > 0) == is_buy:
            return 0
        left = -size if size < 0 else size
        owned = m.by_owner.get(owner)
        if owned:
            for o in owned.values():  # (stops at the first order that covers the rest)
                if o.is_buy == is_buy:
                    left -= o.leaves
                    if left <= 0:
                        return 0
        return left

    def only_reduces(self, m: Any) -> bool:
        """The documented rule: the market's own status is not ACTIVE, or an active halt at
        REDUCE_ONLY or above covers the venue, the market, its segment or one of its assets, or the
        perpetual's index is short of live sources. Read from the halt records themselves."""
        if str(m.status) != "ACTIVE":
            return True
        halts = self.engine.components.get("halts")
        covering = {("venue", "*"), ("market", m.symbol), ("segment", m.segment), ("asset", m.base), ("asset", m.quote)}
        for h in (halts.active.values() if halts is not None else ()):
            if (h.scope_kind, h.scope) in covering and h.level in ("REDUCE_ONLY", "HALTED"):
                return True
        index = self.engine.components.get("index")
        p = derivatives_state(self.engine).perps[self.symbol]
        s = index.symbols.get(p.index_symbol) if index is not None else None
        return bool(s is not None and s.short)

    def expiry_reason(self, o: Any) -> str:
        if o.id in derivatives_state(self.engine).reduce_only_orders.get(self.symbol, ()):
            return "REDUCE_ONLY"
        return "MARKET_REDUCE_ONLY"

    def fill_cap(self, o: Any, only_reduces: bool = False) -> int:
        """How much order `o` may fill now: a reduce-only order (or any order, while the market only
        reduces) at most the position it reduces (0 when the position is gone or on its own side),
        any other order without limit."""
        st = derivatives_state(self.engine)
        if o.id not in st.reduce_only_orders.get(self.symbol, ()) and not only_reduces:
            return MAX_QTY
        pos = st.positions.get((o.owner, self.symbol))
        if pos is None or (pos.size > 0) == o.is_buy:
            return 0
        return abs(pos.size)

    def after_match(self, m: Any, ev: list[Event]) -> None:
        """After an order has matched (its fills and the stops they fired): the reduce-only orders
        of every owner whose position changed are cut down to it (Binance expires them)."""
        touched, self._touched = self._touched, set()
        st = derivatives_state(self.engine)
        ids = st.reduce_only_orders.get(self.symbol)
        if not ids:
            return
        for owner in sorted(touched):
            trim_reduce_only(self.engine, st, m, owner, ev)
        ids.intersection_update(m.orders)
        if not ids:
            del st.reduce_only_orders[self.symbol]

    def rest_need(self, m: Any, o: Any) -> int:
        """What a resting order's hold reserves: its first hold pro rata of what is left, rounded up."""
        h = self.engine.ledger.pending_hold(o.hold_id)
        return ceil_div(h.amount * o.leaves, o.qty)

    # -- a fill

    def fill(self, m: Any, buyer: Any, seller: Any, price: int, qty: int, notional: int,
             buyer_rate_ppm: int, seller_rate_ppm: int, ev: list[Event], price_box: Any = None,
             qty_box: Any = None) -> tuple[int, int]:  # (the boxes: `MarketContract.fill`'s since session 20, unused)
        engine = self.engine
        st = derivatives_state(engine)
        p = st.perps[self.symbol]
        buyer_fee = self._side(st, p, m, buyer, True, price, qty, notional, buyer_rate_ppm, ev)
        seller_fee = self._side(st, p, m, seller, False, price, qty, notional, seller_rate_ppm, ev)
        return buyer_fee, seller_fee

    def _side(self, st: DerivativesState, p: Perp, m: Any, o: Any, is_buy: bool, price: int, qty: int,
              notional: int, rate_ppm: int, ev: list[Event]) -> int:
        ledger = self.engine.ledger
        owner = o.owner
        w = o.pay
        # 1. What the fill frees of the order's hold goes back to the wallet (capture, pay back).
        h = ledger.pending_hold(o.hold_id)
        leaves_after = o.leaves - qty
        take = h.remaining - ceil_div(h.amount * leaves_after, o.qty)
        if take > 0:
            ledger.capture(o.hold_id, take)
            ledger.move(m.clearing.quote, w, take)
        key = (owner, p.symbol)
        iso = key in st.isolated
        own_margin_only = st.liquidating_isolated == key  # a LiquidatePosition step: the wallet never pays
        pos = st.positions.get(key) or Position()
        kind = "isolated" if iso else "margin"
        acct = ledger.find(owner, p.quote, kind, SEGMENT) or ledger.open_account(owner, p.quote, kind, SEGMENT)[0]
        # 2. The position's margin comes back to the wallet; it is posted again for what remains.
        released = pos.margin
        ledger.move(acct, w, released)
        pos.margin = 0
        # 3. The position: open, increase, reduce or flip (docs/derivatives.md, "Positions").
        longs_before = pos.size if pos.size > 0 else 0
        signed = qty if is_buy else -qty
        realized = 0
        if pos.size == 0 or (pos.size > 0) == is_buy:
            pos.size += signed
            pos.cost += notional
        else:
            size_abs = abs(pos.size)
            close_q = min(qty, size_abs)
            close_notional = price * close_q // p.scale
            if pos.size > 0:  # closing a long: its cost share rounds up (less profit)
                closed_cost = ceil_div(pos.cost * close_q, size_abs)
                realized = close_notional - closed_cost
            else:  # closing a short: its cost share rounds down (less profit)
                closed_cost = pos.cost * close_q // size_abs
                realized = closed_cost - close_notional
            pos.cost -= closed_cost
            pos.size += close_q if is_buy else -close_q
            open_q = qty - close_q
            if open_q:  # a flip: the position was closed whole (cost 0), the rest opens
                pos.size += open_q if is_buy else -open_q
                pos.cost = price * open_q // p.scale
        p.open_interest += (pos.size if pos.size > 0 else 0) - longs_before
        pos.realized += realized
        # 4. Realised PnL through the market's pool; a loss the owner cannot pay is the insurance
        #    fund's (an isolated position pays only from its own margin).
        covered = 0
        pool, fees, insurance = self._system(p)
        if realized > 0:
            ledger.move(pool, w, realized)
        elif realized < 0:
            loss = -realized
            budget = min(w.available, released + max(take, 0) if own_margin_only else released) if iso else w.available
            paid = min(loss, budget)
            ledger.move(w, pool, paid)
            covered = loss - paid
            if covered:
                ledger.move(insurance, pool, covered)
        # 5. The fee, in the quote asset: ceil(notional × rate); the shield fund's tenth rounds down.
        fee = min(ceil_div(notional * rate_ppm, PPM), w.available)
        # What the position's margin (and its order's hold, borrowed from it) brought and the loss left.
        own_left = released + max(take, 0) - (-realized - covered if realized < 0 else 0)
        if own_margin_only:
            fee = max(0, min(fee, own_left))
        shield = fee // 10
        ledger.move(w, fees, fee - shield)
        ledger.move(w, insurance, shield)
        # 6. Initial margin of what remains (plus isolated margin added by hand), posted again.
        if pos.size:
            target = initial_margin_ref(st, p, owner, abs(pos.size), pos.cost, p.open_interest)
            if iso:
                target += pos.extra
            post = min(target, w.available)
            if own_margin_only:
                post = max(0, min(post, own_left - fee))
            ledger.move(w, acct, post)
            pos.margin = post
            st.positions[key] = pos
        else:
            st.positions.pop(key, None)
            pos.extra = 0
        ev.append(PositionChanged(owner, p.symbol, price, signed, pos.size, pos.cost, pos.margin, realized, fee, covered))
        self._touched.add(owner)
        return fee

