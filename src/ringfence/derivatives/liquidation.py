"""Liquidation by liquidity: an account below maintenance is reduced in partial steps.

`LiquidateAccount(owner, asset)` (the liquidation worker submits it; the engine decides):

1. refused unless the owner's cross account in `asset` has equity < maintenance margin at mark, and
   unless its cool-down (`COOLDOWN_NS` after the last step) is over;
2. the owner's open orders on every perpetual of that asset are cancelled (their holds released);
3. the position with the largest notional at mark is reduced by one IOC reduce-only limit order of
   the owner at the band edge `mark × (1 ∓ BAND_PPM)` (never deeper into the book), for
   `STEP_PPM` of the opposite side's depth inside the band (whole lots; at least one lot when
   the band holds one), at most the position;
4. a loss the wallet cannot pay is the derivatives insurance fund's (the fill's own rule).

Only `derivatives` accounts move: spot balances and holds are never touched.
"""

from __future__ import annotations


from ..engine.commands import Event
from ..engine.core import Engine
from ..engine.module import Effect, Scope
from ..errors import Conflict, ValidationError
from ..trading.commands import CancelAll, PlaceOrder, Trade
from ..trading.state import trading_state
from .commands import LiquidateAccount, LiquidationStep
from .module import MODULE
from .state import PPM, SEGMENT, account_summary, ceil_div, derivatives_state, mark_of_perp, notional_at

__all__ = ["COOLDOWN_NS", "BAND_PPM", "STEP_PPM", "liquidation_targets"]

COOLDOWN_NS = 5 * 10**9
BAND_PPM = 10_000  # 1 %: never walk the book further than this from the mark
STEP_PPM = 500_000  # half of the depth inside the band per step

MODULE.declare_events(LiquidationStep)


def _scopes(engine: Engine, c: LiquidateAccount) -> list[Scope]:
    return [("segment", SEGMENT), ("asset", c.asset)]


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


@MODULE.handles(LiquidateAccount, effect=Effect.REDUCES_RISK, scopes=_scopes,
                precheck=lambda e, c: (_check(e, c), None)[1])
def _liquidate(engine: Engine, c: LiquidateAccount) -> list[Event]:
    from ..trading.orders import _cancel_all, _place

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
    p = st.perps[best]
    pos = st.positions[(c.owner, best)]
    m = ts.markets[best]
    mark = mark_of_perp(engine, p) or m.last_price
    selling = pos.size > 0
    if selling:  # sell into the bids, no lower than the band edge (rounded up to a tick)
        limit = ceil_div(mark * (PPM - BAND_PPM) // PPM, m.tick) * m.tick
        depth = sum(m.bids[px].total for px in m.bid_prices if px >= limit)
    else:
        limit = mark * (PPM + BAND_PPM) // PPM // m.tick * m.tick
        depth = sum(m.asks[px].total for px in m.ask_prices if px <= limit)
    step = depth * STEP_PPM // PPM // m.lot * m.lot
    if not step and depth >= m.lot:
        step = m.lot
    step = min(step, abs(pos.size))
    nxt = engine.now_ns + COOLDOWN_NS
    st.liq_next_ns[(c.owner, c.asset)] = nxt
    filled = 0
    if step and limit > 0:
        st.reduce_only = True
        try:
            order: list[Event] = []
            _place(engine, ts, PlaceOrder(c.owner, best, "SELL" if selling else "BUY", "LIMIT", "IOC", limit, step), order)
        finally:
            st.reduce_only = False
        filled = sum(e.quantity for e in order if isinstance(e, Trade))
        ev.extend(order)
    ev.append(LiquidationStep(c.owner, best, summary["cross_equity"], summary["cross_maint"], "SELL" if selling else "BUY",
                              step, filled, limit, depth, nxt))
    return ev


def liquidation_targets(engine: Engine) -> list[tuple[str, str]]:
    """(owner, asset) of every cross account below maintenance and not cooling down: what the
    liquidation worker submits (`margin_check`, read between batches)."""
    from .state import margin_check

    st = derivatives_state(engine)
    out = []
    for owner, scope, _, _ in margin_check(engine):
        if scope in st.perps:  # an isolated position: not liquidated yet
            continue
        if engine.now_ns >= st.liq_next_ns.get((owner, scope), 0):
            out.append((owner, scope))
    return out
