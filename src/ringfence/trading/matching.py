"""The spot matching loop inside the engine's `apply`: price-time matching, fills, fees, stops.

Order commands (`orders.py`) check an order and open its hold; this module runs it as a taker,
settles each fill, rests or ends it, and fires the stop orders a trade has crossed.

Money flow of one order (all through the ledger, so conservation is checked by the ledger):

* **Hold.** Accepting an order opens a two-phase pending transfer from the owner's `available`
  account of the paying asset to the market's clearing account: `price * qty / 10**base_decimals`
  quote for a limit buy, the quote amount for a market buy by quote, `qty` base for a sell, and for
  a market buy by quantity `qty * protection_price` (the worst price it may fill at).
* **Fill** of `q` base at the maker's price `p`, notional `n = p * q / 10**base_decimals` (exact:
  `tick * lot` is a multiple of `10**base_decimals`): the buyer's hold posts `n` quote and the
  seller's hold posts `q` base into clearing; clearing pays the buyer `q - buyer_fee` base and the
  seller `n - seller_fee` quote. Fees are charged in the asset each side receives (Binance),
  `fee = ceil(amount * rate_ppm / 1_000_000)`; `floor(fee / 10)` goes to the segment's insurance
  ("shield") fund and the rest to `fees`, so the split never creates or destroys a minor unit.
  After every fill the clearing accounts' posted balances are back to zero.
* **Rest / end.** A buy that filled below its limit gives back the unused quote as it rests
  (Binance G12); cancel, expiry or completion voids whatever the hold still reserves.

Self-trade prevention (the taker's mode): `EXPIRE_TAKER` expires the incoming order's remainder,
`EXPIRE_MAKER` expires the resting order and carries on, `EXPIRE_BOTH` does both. `NONE` lets an
account trade with itself (it pays both fees).

Dual-price guard: limit prices must lie inside the band around the reference price; market orders
never fill outside it; a resting order whose price has left the band is expired when a taker
reaches it, so nothing ever prints outside the band. If the last price sits outside the band for
`band_timeout_ns` the market goes `REDUCE_ONLY` (cancels only) until the band holds again.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from typing import Any

from ..engine.commands import Event
from .book import Market, Order
from .commands import (
    OrderExpired,
    OrderFilled,
    OrderRested,
    OrderTriggered,
    Trade,
)
from .state import (
    _LIMITISH,
    _PPM,
    TradingState,
)

__all__: list[str] = []


def _close(ledger: Any, m: Market, o: Order, ev: list[Event], cls: type, reason: str, was_resting: bool) -> None:
    released = ledger.end_hold(o.hold_id)
    leaves = o.leaves if o.qty else 0  # orders by quote amount report no base remainder
    ev.append(cls(m.symbol, o.id, o.owner, "BUY" if o.is_buy else "SELL", o.price, leaves, was_resting, reason, released))



def _take_out(m: Market, o: Order) -> bool:
    """Remove an open order from the book (or the stop list) and the indexes; True if it was resting."""
    resting = o.level is not None
    if resting:
        m.unlink(o)
    else:
        m.remove_stop(o)
    m.unindex(o)
    return resting


# ------------------------------------------------------------------------------ matching


def _fill(st: TradingState, ledger: Any, m: Market, t: Order, mk: Order, p: int, q: int, ev: list[Event]) -> None:
    """Settle one fill of `q` base at `p` between taker `t` and maker `mk` (see module docstring)."""
    n = p * q // m.base_scale
    tiers, account_tier = st.tiers, st.account_tier
    t_rate = tiers[account_tier.get(t.owner, 0)][1]
    m_rate = tiers[account_tier.get(mk.owner, 0)][0]
    if t.is_buy:
        buyer, seller, b_rate, s_rate = t, mk, t_rate, m_rate
    else:
        buyer, seller, b_rate, s_rate = mk, t, m_rate, t_rate
    b_fee = -(-q * b_rate // _PPM)  # ceil: fees round up to the minor unit
    s_fee = -(-n * s_rate // _PPM)
    b_shield = b_fee // 10  # the shield fund's share rounds down; fees get the rest
    s_shield = s_fee // 10
    # The ledger checks the holds cover the fill and the parts add up; it halts the shard if not.
    ledger.settle_fill(m.clearing, buyer.hold_id, seller.hold_id, buyer.recv, seller.recv, q, n, b_fee, b_shield, s_fee, s_shield)
    t.leaves -= q
    t.filled += q
    t.cum_quote += n
    qmode = not t.qty
    if qmode:
        t.quote_left -= n
    mk.leaves -= q
    mk.filled += q
    mk.cum_quote += n
    mk.level.total -= q  # type: ignore[union-attr]  # a resting maker is always on a level
    m.last_price = p
    tid = st.next_trade_id
    st.next_trade_id = tid + 1
    if t.is_buy:
        t_fee, m_fee = b_fee, s_fee
    else:
        t_fee, m_fee = s_fee, b_fee
    ev.append(
        Trade(
            m.symbol,
            tid,
            p,
            q,
            n,
            "BUY" if t.is_buy else "SELL",
            t.id,
            mk.id,
            t.owner,
            mk.owner,
            t_fee,
            m_fee,
            t.quote_left if qmode else t.leaves,
            mk.leaves,
        )
    )


def _match(st: TradingState, ledger: Any, m: Market, t: Order, limit: int, ev: list[Event]) -> str:
    """Match taker `t` against the book up to `limit`. Returns why it stopped early ('' if not)."""
    is_buy = t.is_buy
    if is_buy:
        book, prices = m.asks, m.ask_prices
    else:
        book, prices = m.bids, m.bid_prices
    lo, hi = m.band_lo, m.band_hi
    stp = t.stp
    stp_on = stp != "NONE"
    owner = t.owner
    qmode = not t.qty  # an order by quote amount
    scale, lot = m.base_scale, m.lot
    while prices:
        p = prices[0] if is_buy else prices[-1]
        if (p > limit) if is_buy else (p < limit):
            return ""
        level = book[p]
        mk = level.head
        if hi and not lo <= p <= hi:
            # A resting price the band has left behind would print outside the band: expire it.
            while mk is not None:
                nxt = mk.next
                _take_out(m, mk)
                _close(ledger, m, mk, ev, OrderExpired, "PRICE_OUTSIDE_BAND", True)
                mk = nxt
            continue
        while mk is not None:
            if stp_on and mk.owner == owner:
                if stp == "EXPIRE_TAKER":
                    return "SELF_TRADE_PREVENTED"
                nxt = mk.next
                _take_out(m, mk)
                _close(ledger, m, mk, ev, OrderExpired, "SELF_TRADE_PREVENTED", True)
                if stp == "EXPIRE_BOTH":
                    return "SELF_TRADE_PREVENTED"
                mk = nxt
                continue
            q = mk.leaves
            if qmode:
                cap = t.quote_left * scale // p // lot * lot
                if not is_buy and cap > t.leaves:
                    cap = t.leaves
                if cap == 0:
                    return "QUOTE_SPENT"
                if q > cap:
                    q = cap
            elif q > t.leaves:
                q = t.leaves
            _fill(st, ledger, m, t, mk, p, q, ev)
            if mk.leaves == 0:
                nxt = mk.next
                m.unlink(mk)
                m.unindex(mk)
                ledger.end_hold(mk.hold_id)
                mk = nxt
            if t.leaves == 0:
                return ""
    return ""


def _fok_fillable(m: Market, t: Order, limit: int) -> bool:
    """Could `t` fill completely right now (honouring the band and its self-trade mode)?"""
    need = t.leaves
    have = 0
    is_buy = t.is_buy
    if is_buy:
        book, it = m.asks, iter(m.ask_prices)
    else:
        book, it = m.bids, reversed(m.bid_prices)
    lo, hi = m.band_lo, m.band_hi
    per_order = t.stp != "NONE" and t.owner in m.by_owner
    for p in it:
        if (p > limit) if is_buy else (p < limit):
            break
        if hi and not lo <= p <= hi:
            continue
        level = book[p]
        if not per_order:
            have += level.total
        else:
            o = level.head
            while o is not None:
                if o.owner == t.owner:
                    if t.stp != "EXPIRE_MAKER":
                        return have >= need
                else:
                    have += o.leaves
                    if have >= need:
                        return True
                o = o.next
        if have >= need:
            return True
    return have >= need


def _execute(st: TradingState, ledger: Any, m: Market, o: Order, ev: list[Event]) -> None:
    """Run an accepted (or triggered, or re-priced) order as a taker, then rest or end it."""
    limit = o.price if o.type in _LIMITISH else o.protect
    if o.tif == "FOK" and not _fok_fillable(m, o, limit):
        _close(ledger, m, o, ev, OrderExpired, "FOK_NOT_FILLABLE", False)
        return
    stopped = _match(st, ledger, m, o, limit, ev) if limit else "NO_LIQUIDITY"
    if stopped == "SELF_TRADE_PREVENTED":
        _close(ledger, m, o, ev, OrderExpired, stopped, False)
    elif not o.qty:
        # By quote amount: FILLED once the rest cannot buy (or sell for) one more lot. The last
        # Trade's `taker_leaves` is the quote left, so say so explicitly: followers (the open-orders
        # read model above all) learn here that the order is finished and what was given back.
        if o.filled and (stopped == "QUOTE_SPENT" or o.quote_left == 0 or o.leaves == 0):
            released = ledger.end_hold(o.hold_id)
            ev.append(OrderFilled(m.symbol, o.id, o.owner, "BUY" if o.is_buy else "SELL", o.quote_left, released))
        else:
            # nothing filled: the quote could not buy one lot, or the book/protection price stopped it
            _close(ledger, m, o, ev, OrderExpired, "NOT_FULLY_FILLED", False)
    elif o.leaves == 0:
        ledger.end_hold(o.hold_id)  # FILLED: give back what a buy below its limit did not spend
    elif o.tif == "GTC" and o.type in _LIMITISH:
        if o.is_buy:
            excess = ledger.hold_remaining(o.hold_id) - o.leaves * o.price // m.base_scale
            if excess:
                ledger.resize_hold(o.hold_id, -excess)
        m.rest(o)
        m.index(o)
        ev.append(OrderRested(m.symbol, o.id, o.owner, "BUY" if o.is_buy else "SELL", o.price, o.leaves))
    else:
        _close(ledger, m, o, ev, OrderExpired, "NOT_FULLY_FILLED", False)


def _trigger_stops(st: TradingState, ledger: Any, m: Market, ev: list[Event]) -> None:
    """Fire every stop order the last price has crossed, oldest first, until none is left to fire."""
    while m.stops_buy or m.stops_sell:
        last = m.last_price
        fired: list[int] = []
        sb = m.stops_buy
        if sb and sb[0][0] <= last:
            i = bisect_right(sb, (last, 1 << 62))
            fired.extend(oid for _, oid in sb[:i])
            del sb[:i]
        ss = m.stops_sell
        if ss and ss[-1][0] >= last:
            j = bisect_left(ss, (last, 0))
            fired.extend(oid for _, oid in ss[j:])
            del ss[j:]
        if not fired:
            return
        fired.sort()
        for oid in fired:
            o = m.orders[oid]
            m.unindex(o)
            ev.append(OrderTriggered(m.symbol, oid, last))
            if o.type == "STOP_LIMIT":
                if not m.in_band(o.price):
                    _close(ledger, m, o, ev, OrderExpired, "PRICE_OUTSIDE_BAND", False)
                    continue
            elif m.band_hi:  # STOP_MARKET: never fill outside the band that holds now
                o.protect = min(o.protect, m.band_hi // m.tick * m.tick) if o.is_buy else max(o.protect, -(-m.band_lo // m.tick) * m.tick)
            _execute(st, ledger, m, o, ev)
