"""Auto-deleveraging (ADL): when a liquidation cannot close a position in the book and the
derivatives insurance fund cannot cover its loss, the most profitable, most leveraged positions on
the other side are closed against it, at its bankruptcy price, inside the `derivatives` segment.

Ranking (Binance's): `score = PnL% × effective leverage` for a position in profit, `PnL% ÷
effective leverage` for one at a loss, with `PnL% = unrealised PnL / entry notional` and
`effective leverage = notional at mark / equity` (the isolated position's margin + its PnL, or the
owner's cross equity). Scores are exact fractions of integers (no float); ties go to the owner's
name, so the order is the same on every replay. The ADL quantile (0..4, 4 = first in line) is the
position's place in that ranking among the positions on its side of the market.

Money (per counterparty, through the ledger's public API only: `move`): both positions close the
same quantity at the same price, so the market's PnL pool pays the counterparty exactly what the
bankrupt side pays in (at most the collateral it has) — no fee, no insurance, nothing created.
"""

from __future__ import annotations

from fractions import Fraction

from ..engine.commands import Event
from ..engine.core import Engine
from .commands import AutoDeleveraged, PositionChanged
from .state import (
    SEGMENT,
    DerivativesState,
    Perp,
    ceil_div,
    derivatives_state,
    initial_margin,
    mark_of_perp,
    notional_at,
    pool_of,
    unrealized,
    wallet,
)

__all__ = ["adl_score", "adl_ranking", "adl_quantile", "adl_quantiles", "bankruptcy_price", "deleverage", "ADL_QUANTILES"]

ADL_QUANTILES = 5  # 0..4, Binance's `adlQuantile`


def adl_score(upnl: int, notional: int, cost: int, equity: int) -> Fraction:
    """The ranking score of a position (higher: deleveraged first): its unrealised PnL, notional at
    mark and entry cost, and the equity behind it (cross equity, or the isolated margin + PnL)."""
    equity = max(1, equity)  # no equity left: the highest leverage a minor unit gives
    cost = max(1, cost)
    notional = max(1, notional)
    if upnl > 0:
        return Fraction(upnl * notional, cost * equity)
    return Fraction(upnl * equity, cost * notional)


def adl_ranking(engine: Engine, p: Perp, long_side: bool) -> list[tuple[str, Fraction]]:
    """The positions on one side of `p`, first deleveraged first: `(owner, score)`. One pass over the
    market's positions; the marks of the owner's other markets (its cross equity) computed once."""
    st = derivatives_state(engine)
    marks = {sym: mark_of_perp(engine, q) for sym, q in st.perps.items() if q.quote == p.quote}
    mark = marks[p.symbol]
    ledger = engine.ledger
    rows = []
    for (owner, sym), pos in st.positions.items():
        if sym != p.symbol or (pos.size > 0) != long_side:
            continue
        upnl = unrealized(pos, mark, p.scale)
        notional = notional_at(pos, mark, p.scale) if mark else pos.cost
        if (owner, sym) in st.isolated:
            equity = pos.margin + upnl
        else:  # the owner's cross equity: its wallet, cross margins and cross PnL in this asset
            w = wallet(ledger, owner, p.quote)
            equity = w.balance if w is not None else 0
            for other, m in marks.items():
                q = st.positions.get((owner, other))
                if q is not None and (owner, other) not in st.isolated:
                    equity += q.margin + unrealized(q, m, st.perps[other].scale)
        rows.append((owner, adl_score(upnl, notional, pos.cost, equity)))
    rows.sort(key=lambda r: r[0])  # ties: by owner (a stable sort keeps this order among equals)
    rows.sort(key=lambda r: r[1], reverse=True)
    return rows


def adl_quantile(ranking: list[tuple[str, Fraction]], owner: str) -> int:
    """0..4: where `owner` stands in `ranking` (4: among the first fifth to be deleveraged)."""
    n = len(ranking)
    for place, (o, _) in enumerate(ranking):
        if o == owner:
            return ADL_QUANTILES - 1 - ADL_QUANTILES * place // n
    return 0


def adl_quantiles(engine: Engine, p: Perp, long_side: bool) -> dict[str, int]:
    """Every position's ADL quantile on one side of `p` (one ranking pass)."""
    ranking = adl_ranking(engine, p, long_side)
    n = len(ranking)
    return {o: ADL_QUANTILES - 1 - ADL_QUANTILES * place // n for place, (o, _) in enumerate(ranking)}


def bankruptcy_price(p: Perp, size: int, cost: int, collateral: int, tick: int) -> int:
    """The price at which closing the whole position loses exactly `collateral`, on a tick, rounded
    so that the bankrupt side never loses more than it has: up for a long, down for a short."""
    if size > 0:
        raw = ceil_div(max(0, cost - collateral) * p.scale, size)
        return max(tick, ceil_div(raw, tick) * tick)
    raw = (cost + collateral) * p.scale // -size
    return max(tick, raw // tick * tick)


def _close_at(engine: Engine, st: DerivativesState, p: Perp, owner: str, qty: int, price: int, ev: list[Event]) -> int:
    """Close `qty` of `owner`'s position at `price` (no fee): margin back to the wallet, realised
    PnL through the pool (a loss paid from the wallet — for an isolated position, from its own
    margin — the rest, if any, from the insurance fund), the margin of what remains posted again.
    Returns the realised PnL."""
    ledger = engine.ledger
    key = (owner, p.symbol)
    pos = st.positions[key]
    iso = key in st.isolated
    assert 0 < qty <= abs(pos.size), "ADL closes at most the position"
    w = wallet(ledger, owner, p.quote)
    acct = ledger.get(owner, p.quote, "isolated" if iso else "margin", SEGMENT)
    released = pos.margin
    ledger.move(acct, w, released)
    pos.margin = 0
    size_abs = abs(pos.size)
    signed = -qty if pos.size > 0 else qty  # closing a long sells, closing a short buys
    notional = price * qty // p.scale  # exact: tick × lot is a multiple of the scale
    if pos.size > 0:
        closed = ceil_div(pos.cost * qty, size_abs)
        realized = notional - closed
        pos.size -= qty
        p.open_interest -= qty
    else:
        closed = pos.cost * qty // size_abs
        realized = closed - notional
        pos.size += qty
    pos.cost -= closed
    pos.realized += realized
    pool = pool_of(ledger, p)
    covered = 0
    if realized > 0:
        ledger.move(pool, w, realized)
    elif realized < 0:
        budget = min(w.available, released) if iso else w.available
        paid = min(-realized, budget)
        ledger.move(w, pool, paid)
        covered = -realized - paid
        if covered:
            ledger.move(ledger.insurance(p.quote, SEGMENT), pool, covered)
    if pos.size:
        target = initial_margin(st, p, owner, abs(pos.size), pos.cost, p.open_interest) + (pos.extra if iso else 0)
        post = min(target, w.available)
        ledger.move(w, acct, post)
        pos.margin = post
    else:
        del st.positions[key]
        pos.extra = 0
    ev.append(PositionChanged(owner, p.symbol, price, signed, pos.size, pos.cost, pos.margin, realized, 0, covered))
    return realized


def deleverage(engine: Engine, owner: str, symbol: str, collateral: int, ev: list[Event]) -> int:
    """Close the whole of `owner`'s position on `symbol` against the opposite side's positions in
    ADL order, at the bankruptcy price for `collateral`. Returns the quantity deleveraged."""
    from ..trading.state import trading_state
    from .module import trim_reduce_only

    st = derivatives_state(engine)
    p = st.perps[symbol]
    m = trading_state(engine).markets[symbol]
    pos = st.positions[(owner, symbol)]
    long_side = pos.size > 0
    price = bankruptcy_price(p, pos.size, pos.cost, collateral, m.tick)
    left = abs(pos.size)
    ranking = [r for r in adl_ranking(engine, p, not long_side) if r[0] != owner]
    done = 0
    touched = [owner]
    for rank, (other, _) in enumerate(ranking):
        if not left:
            break
        theirs = st.positions[(other, symbol)]
        q = min(left, abs(theirs.size))
        # both legs at one price and one notional: what the pool pays one side it takes from the other
        r_other = _close_at(engine, st, p, other, q, price, ev)
        r_owner = _close_at(engine, st, p, owner, q, price, ev)
        after = st.positions.get((other, symbol))
        ev.append(AutoDeleveraged(symbol, owner, other, "SELL" if long_side else "BUY", q, price, rank, r_owner, r_other,
                                  after.size if after is not None else 0))
        left -= q
        done += q
        touched.append(other)
    assert not left and (owner, symbol) not in st.positions, "longs = shorts: the other side holds at least the position"
    for o in sorted(set(touched)):
        trim_reduce_only(engine, st, m, o, ev)
    return done

