"""Liquidation by liquidity: a margin account below maintenance is reduced in partial steps, and a
bankrupt remainder the book and the insurance fund cannot absorb is auto-deleveraged.

`LiquidateAccount(owner, asset)` (a cross account) and `LiquidatePosition(owner, symbol)` (an
isolated position; the liquidation worker submits both, the engine decides):

1. refused unless the cross account's equity (for an isolated position: its margin + PnL) is below
   its maintenance margin at mark, and unless its cool-down (`COOLDOWN_NS` after the last step) is
   over;
2. the owner's open orders are cancelled: on every perpetual of that asset (cross), on that market
   (isolated);
3. the position (cross: the one with the largest notional at mark) is reduced by one IOC
   reduce-only limit order of the owner at the band edge `mark × (1 ∓ BAND_PPM)` (never deeper into
   the book), for `STEP_PPM` of the opposite side's depth inside the band (whole lots; at least one
   lot when the band holds one), at most the position — limited to the bankruptcy price instead
   when the insurance fund could not pay what the order would lose past it; an isolated position's
   order borrows its hold from the position's margin, and its fills pay the loss, the fee and the
   margin posted again only out of what that margin brought — the cross wallet is never debited;
4. a loss the collateral cannot pay is the derivatives insurance fund's (the fill's own rule);
5. auto-deleveraging (`adl.py`): if what is left is bankrupt at mark, the book holds less than it on
   the other side at its bankruptcy price or better, and the insurance fund holds less than the
   deficit, the rest is closed against the opposite positions in ADL order at the bankruptcy price.

Only `derivatives` accounts move: spot balances and holds are never touched.

Halts: a liquidation passes REDUCE_ONLY (it only reduces), but waits while its segment, margin asset,
the venue, or any market it is marked on or that market's base asset (a cross account: every market of its cross positions; an
isolated position: its own) is HALTED: a halted book is frozen, and its mark may be what the halt is
about. The worker does not submit it meanwhile (`risk.halts.refusal_of`), and it proceeds at its next
round after the lift. Auto-deleveraging happens only inside a liquidation step, so it waits too.
"""

from __future__ import annotations

from typing import Any


from ..engine.commands import Event
from ..engine.core import Engine
from ..engine.module import Effect, Scope
from ..errors import Conflict, ValidationError
from ..trading.commands import CancelAll, PlaceOrder, Trade
from ..trading.state import trading_state
from .adl import bankruptcy_price, deleverage
from .commands import AutoDeleveraged, LiquidateAccount, LiquidatePosition, LiquidationStep
from .module import MODULE
from .state import (
    PPM,
    SEGMENT,
    account_summary,
    ceil_div,
    derivatives_state,
    maint_margin,
    mark_of_perp,
    notional_at,
    unrealized,
    wallet,
)

__all__ = ["COOLDOWN_NS", "BAND_PPM", "STEP_PPM", "liquidation_targets"]

COOLDOWN_NS = 5 * 10**9
BAND_PPM = 10_000  # 1 %: never walk the book further than this from the mark
STEP_PPM = 500_000  # half of the depth inside the band per step

MODULE.declare_events(LiquidationStep, AutoDeleveraged)


def _scopes(engine: Engine, c: LiquidateAccount) -> list[Scope]:
    """The segment, the margin asset, and every market of the account's cross positions with its
    base asset: its equity is marked on all of them, so a halt on any one holds its liquidation
    (the scopes a client's order on those markets has: `trading.module.market_scopes`)."""
    st = derivatives_state(engine)
    markets = sorted(s for s, p in st.perps.items() if p.quote == c.asset and (c.owner, s) in st.positions
                     and (c.owner, s) not in st.isolated) if isinstance(c.asset, str) else []
    bases = sorted({st.perps[s].base for s in markets})
    return [("segment", SEGMENT), ("asset", c.asset), *(("asset", b) for b in bases), *(("market", s) for s in markets)]


def _trades_to_reduce(engine: Engine, c: Any) -> Effect:
    """A liquidation reduces risk, so it passes REDUCE_ONLY; but it trades (and may deleverage
    others), so a HALTED scope holds it. Declared through a function on purpose: the halt guard lets
    only a *constant* REDUCES_RISK (a cancel) through HALTED (risk/halts.py `_check_command`)."""
    return Effect.REDUCES_RISK


def _check(engine: Engine, c: LiquidateAccount) -> tuple[dict[str, int], list[str]]:
    st = derivatives_state(engine)
    if not isinstance(c.asset, str) or not any(p.quote == c.asset for p in st.perps.values()):
        raise ValidationError(f"{c.asset!r} is not the margin asset of a perpetual", field="asset")
    syms = sorted(s for s, p in st.perps.items() if p.quote == c.asset and (c.owner, s) in st.positions
                  and (c.owner, s) not in st.isolated)
    if not syms:
        raise Conflict(f"{c.owner} has no cross position in {c.asset}", field="owner")
    s = account_summary(engine, c.owner, c.asset)
    if s["cross_equity"] >= s["cross_maint"]:
        raise Conflict(f"{c.owner}'s equity {s['cross_equity']} is not below maintenance {s['cross_maint']}", field="owner")
    until = st.liq_next_ns.get((c.owner, c.asset), 0)
    if engine.now_ns < until:
        raise Conflict(f"{c.owner} is cooling down after a liquidation step until {until}", field="owner")
    return s, syms


@MODULE.handles(LiquidateAccount, effect=_trades_to_reduce, scopes=_scopes,
                precheck=lambda e, c: (_check(e, c), None)[1])
def _liquidate(engine: Engine, c: LiquidateAccount) -> list[Event]:
    from ..trading.orders import _cancel_all

    summary, syms = _check(engine, c)
    st = derivatives_state(engine)
    ts = trading_state(engine)
    ev: list[Event] = []
    for sym, p in sorted(st.perps.items()):
        if p.quote == c.asset and ts.markets[sym].by_owner.get(c.owner):
            _cancel_all(engine, ts, CancelAll(c.owner, sym), ev)
    # the largest position at mark
    best = max(syms, key=lambda s: (notional_at(st.positions[(c.owner, s)], mark_of_perp(engine, st.perps[s]) or 1,
                                                st.perps[s].scale), s))
    _step(engine, c.owner, best, (c.owner, c.asset), summary["cross_equity"], summary["cross_maint"], ev)
    return ev


def _step(engine: Engine, owner: str, sym: str, cool_key: tuple[str, str], equity: int, maintenance: int,
          ev: list[Event]) -> None:
    """Steps 3-5 of a liquidation, for the position `owner` holds on `sym`: one IOC at the band edge,
    then auto-deleveraging if the book cannot take the rest and the insurance fund cannot cover it."""
    from ..trading.orders import _place

    st = derivatives_state(engine)
    ts = trading_state(engine)
    p = st.perps[sym]
    pos = st.positions[(owner, sym)]
    m = ts.markets[sym]
    mark = mark_of_perp(engine, p) or m.last_price
    selling = pos.size > 0
    if selling:  # sell into the bids, no lower than the band edge (rounded up to a tick)
        limit = ceil_div(mark * (PPM - BAND_PPM) // PPM, m.tick) * m.tick
    else:
        limit = mark * (PPM + BAND_PPM) // PPM // m.tick * m.tick
    step, depth = _step_size(m, selling, limit, abs(pos.size))
    # Past the bankruptcy price every fill is a loss beyond the collateral, the insurance fund's:
    # when the fund could not pay what this step would lose there (walking the book as the order
    # would), the order goes no further than the bankruptcy price; what the book cannot take there
    # is auto-deleveraged below.
    bk = bankruptcy_price(p, pos.size, pos.cost, _collateral(engine, owner, sym), m.tick)
    if engine.ledger.insurance(p.quote, SEGMENT).balance < _beyond_bankruptcy(m, selling, limit, step, bk, p.scale):
        limit = bk
        step, depth = _step_size(m, selling, limit, abs(pos.size))
    nxt = engine.now_ns + COOLDOWN_NS
    st.liq_next_ns[cool_key] = nxt
    filled = 0
    isolated = (owner, sym) in st.isolated
    w = wallet(engine.ledger, owner, p.quote)
    advance = 0
    if step and limit > 0 and w is not None and w.available + pos.margin < 1:
        # Nothing left to hold the step's order with (a bankrupt cross account: its wallet and
        # margin went to its losses): the insurance fund advances one minor unit, and takes back
        # what the order leaves of it. Without it the position could never be closed in the book.
        fund = engine.ledger.insurance(p.quote, SEGMENT)
        if fund.balance >= 1:
            engine.ledger.move(fund, w, 1)
            advance = 1
        else:
            step = 0
    if step and limit > 0:
        st.reduce_only = True
        st.liquidating_isolated = (owner, sym) if isolated else None
        st.liquidating = (owner, sym)
        try:
            order: list[Event] = []
            _place(engine, ts, PlaceOrder(owner, sym, "SELL" if selling else "BUY", "LIMIT", "IOC", limit, step), order)
        finally:
            st.reduce_only = False
            st.liquidating_isolated = None
            st.liquidating = None
        filled = sum(e.quantity for e in order if isinstance(e, Trade))
        ev.extend(order)
    kept = 0
    if advance and w is not None:
        back = min(advance, w.available)
        engine.ledger.move(w, engine.ledger.insurance(p.quote, SEGMENT), back)
        kept = advance - back
    ev.append(LiquidationStep(owner, sym, equity, maintenance, "SELL" if selling else "BUY", step, filled, limit, depth, nxt,
                              kept))
    _auto_deleverage_if_needed(engine, owner, sym, ev)


def _step_size(m: Any, selling: bool, limit: int, size: int) -> tuple[int, int]:
    """(quantity of the step's order, depth of the opposite side at `limit` or better): `STEP_PPM` of
    that depth in whole lots, at least one lot when there is one, at most the position."""
    if selling:
        depth = sum(m.bids[px].total for px in m.bid_prices if px >= limit)
    else:
        depth = sum(m.asks[px].total for px in m.ask_prices if px <= limit)
    step = depth * STEP_PPM // PPM // m.lot * m.lot
    if not step and depth >= m.lot:
        step = m.lot
    return min(step, size), depth


def _beyond_bankruptcy(m: Any, selling: bool, limit: int, qty: int, bk: int, scale: int) -> int:
    """What filling `qty` against the book, best price first down to `limit`, would lose past the
    bankruptcy price `bk` (rounded up): Σ |bk − price| × fill over the fills on the wrong side of it."""
    loss = 0
    left = qty
    prices = reversed(m.bid_prices) if selling else iter(m.ask_prices)
    for px in prices:
        if not left or (px < limit if selling else px > limit):
            break
        q = min(left, (m.bids if selling else m.asks)[px].total)
        left -= q
        beyond = (bk - px) if selling else (px - bk)
        if beyond > 0:
            loss += beyond * q
    return ceil_div(loss, scale)


def _collateral(engine: Engine, owner: str, sym: str) -> int:
    """What the position can pay its loss with: an isolated position's margin; for a cross one the
    wallet and the position's margin (the owner's orders on the asset are cancelled by then)."""
    st = derivatives_state(engine)
    pos = st.positions[(owner, sym)]
    if (owner, sym) in st.isolated:
        return pos.margin
    w = wallet(engine.ledger, owner, st.perps[sym].quote)
    return (w.balance if w is not None else 0) + pos.margin


def _auto_deleverage_if_needed(engine: Engine, owner: str, sym: str, ev: list[Event]) -> None:
    """ADL (docs/derivatives.md): the position left is bankrupt at mark (its collateral + PnL < 0),
    the book holds less than it on the other side at its bankruptcy price or better, and the
    derivatives insurance fund holds less than the deficit: close it against the opposite side in
    ADL order at the bankruptcy price."""
    st = derivatives_state(engine)
    pos = st.positions.get((owner, sym))
    if pos is None:
        return
    p = st.perps[sym]
    m = trading_state(engine).markets[sym]
    mark = mark_of_perp(engine, p) or m.last_price
    ledger = engine.ledger
    collateral = _collateral(engine, owner, sym)
    if (owner, sym) in st.isolated:
        equity = pos.margin + unrealized(pos, mark, p.scale)
    else:
        equity = account_summary(engine, owner, p.quote)["cross_equity"]
    deficit = -equity
    if deficit <= 0 or ledger.insurance(p.quote, SEGMENT).balance >= deficit:
        return
    price = bankruptcy_price(p, pos.size, pos.cost, collateral, m.tick)
    if pos.size > 0:
        book = sum(m.bids[px].total for px in m.bid_prices if px >= price)
    else:
        book = sum(m.asks[px].total for px in m.ask_prices if px <= price)
    if book >= abs(pos.size):
        return
    deleverage(engine, owner, sym, collateral, ev)


# ------------------------------------------------------------------------------ isolated positions


def _check_isolated(engine: Engine, c: LiquidatePosition) -> tuple[int, int]:
    st = derivatives_state(engine)
    p = st.perps.get(c.symbol) if isinstance(c.symbol, str) else None
    if p is None:
        raise ValidationError(f"unknown perpetual {c.symbol!r}", field="symbol")
    key = (c.owner, c.symbol)
    pos = st.positions.get(key)
    if pos is None or key not in st.isolated:
        raise Conflict(f"{c.owner} has no isolated position on {c.symbol}", field="owner")
    mark = mark_of_perp(engine, p)
    equity = pos.margin + unrealized(pos, mark, p.scale)
    maint = maint_margin(p, pos, mark)
    if equity >= maint:
        raise Conflict(f"{c.owner}'s {c.symbol} margin + PnL {equity} is not below maintenance {maint}", field="owner")
    until = st.liq_next_ns.get(key, 0)
    if engine.now_ns < until:
        raise Conflict(f"{c.owner}'s {c.symbol} position is cooling down after a liquidation step until {until}", field="owner")
    return equity, maint


def _isolated_scopes(engine: Engine, c: LiquidatePosition) -> list[Scope]:
    st = derivatives_state(engine)
    p = st.perps.get(c.symbol) if isinstance(c.symbol, str) else None
    return [("segment", SEGMENT), ("asset", p.quote if p is not None else "USDT"),
            *((("asset", p.base), ("market", c.symbol)) if p is not None else ())]


@MODULE.handles(LiquidatePosition, effect=_trades_to_reduce, scopes=_isolated_scopes,
                precheck=lambda e, c: (_check_isolated(e, c), None)[1])
def _liquidate_isolated(engine: Engine, c: LiquidatePosition) -> list[Event]:
    """An isolated position's liquidation step: only its orders on that market are cancelled, and
    only its own margin pays (the order's hold is borrowed from it; the loss, the fee and the margin
    posted again are capped at what the position's margin brought)."""
    from ..trading.orders import _cancel_all

    equity, maint = _check_isolated(engine, c)
    ts = trading_state(engine)
    ev: list[Event] = []
    if ts.markets[c.symbol].by_owner.get(c.owner):
        _cancel_all(engine, ts, CancelAll(c.owner, c.symbol), ev)
    _step(engine, c.owner, c.symbol, (c.owner, c.symbol), equity, maint, ev)
    return ev


def liquidation_targets(engine: Engine) -> list[tuple[str, str]]:
    """(owner, asset) of every cross account and (owner, symbol) of every isolated position below
    maintenance and not cooling down: what the liquidation worker submits (`LiquidateAccount`,
    `LiquidatePosition`; `margin_check`, read between batches)."""
    from .state import margin_check

    st = derivatives_state(engine)
    out = []
    for owner, scope, _, _ in margin_check(engine):
        if engine.now_ns >= st.liq_next_ns.get((owner, scope), 0):
            out.append((owner, scope))
    return out
