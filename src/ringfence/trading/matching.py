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
from typing import Any, Final

from ..engine.commands import Event
from ..errors import InvariantViolation
from ..ledger.ledger import Ledger
from .book import Market, MarketContract, Order, notional
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
    MAX_QTY,
    TradingState,
)
from .vocabulary import OrderType, SelfTradePrevention, Side, TimeInForce

__all__: list[str] = []

# Members as module constants: `Side.BUY` is an attribute lookup on the enum class (~0.1 µs in
# CPython 3.11), a global is ~10x cheaper, and the matching loop reads them per fill.
# `Final`: compiled (ringfence/native.py), each is a C static rather than a module-dict lookup.
_BUY: Final = Side.BUY
_SELL: Final = Side.SELL
_GTC: Final = TimeInForce.GTC
_FOK: Final = TimeInForce.FOK
_STOP_LIMIT: Final = OrderType.STOP_LIMIT
_STP_NONE: Final = SelfTradePrevention.NONE
_EXPIRE_TAKER: Final = SelfTradePrevention.EXPIRE_TAKER
_EXPIRE_MAKER: Final = SelfTradePrevention.EXPIRE_MAKER
_EXPIRE_BOTH: Final = SelfTradePrevention.EXPIRE_BOTH


def _close(ledger: Ledger, m: Market, o: Order, ev: list[Event], cls: type, reason: str, was_resting: bool) -> None:
    released = ledger.end_hold(o.hold_id)
    leaves = o.leaves if o.qty else 0  # orders by quote amount report no base remainder
    ev.append(cls(m.symbol, o.id, o.owner, _BUY if o.is_buy else _SELL, o.price, leaves, was_resting, reason, released))



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


def _fill(st: TradingState, ledger: Ledger, m: Market, t: Order, mk: Order, price_minor: int, qty_minor: int, ev: list[Event]) -> None:
    """Settle one fill of `qty_minor` base minor units at `price_minor` (quote minor units per whole
    base unit) between taker `t` and maker `mk` (see module docstring)."""
    notional_minor = notional(price_minor, qty_minor, m.base_scale)
    tiers, account_tier = st.tiers, st.account_tier
    taker_rate_ppm = tiers[account_tier.get(t.owner, 0)][1]
    maker_rate_ppm = tiers[account_tier.get(mk.owner, 0)][0]
    if t.is_buy:
        buyer, seller, buyer_rate_ppm, seller_rate_ppm = t, mk, taker_rate_ppm, maker_rate_ppm
    else:
        buyer, seller, buyer_rate_ppm, seller_rate_ppm = mk, t, maker_rate_ppm, taker_rate_ppm
    # The price and quantity as the events carry them, boxed once: the `Trade` below and, on a
    # perpetual, its two `PositionChanged` (a Python int each per event otherwise); the fees as well.
    price_box: Any = price_minor
    qty_box: Any = qty_minor
    buyer_fee: Any
    seller_fee: Any
    if m.contract is not None:  # a perpetual: positions change, margin and fees in the quote asset
        buyer_fee, seller_fee = m.contract.fill(
            m, buyer, seller, price_minor, qty_minor, notional_minor, buyer_rate_ppm, seller_rate_ppm, ev, price_box, qty_box
        )
    else:
        buyer_fee_minor = -(-qty_minor * buyer_rate_ppm // _PPM)  # ceil: fees round up to the minor unit
        seller_fee_minor = -(-notional_minor * seller_rate_ppm // _PPM)
        buyer_shield_minor = buyer_fee_minor // 10  # the shield fund's share rounds down; fees get the rest
        seller_shield_minor = seller_fee_minor // 10
        # The ledger checks the holds cover the fill and the parts add up; it halts the shard if not.
        ledger.settle_fill(
            m.clearing,
            buyer.hold_id,
            seller.hold_id,
            buyer.recv,
            seller.recv,
            qty_minor,
            notional_minor,
            buyer_fee_minor,
            buyer_shield_minor,
            seller_fee_minor,
            seller_shield_minor,
        )
        buyer_fee, seller_fee = buyer_fee_minor, seller_fee_minor
    t.leaves -= qty_minor
    t.filled += qty_minor
    t.cum_quote += notional_minor
    qmode = not t.qty
    if qmode:
        t.quote_left -= notional_minor
    mk.leaves -= qty_minor
    mk.filled += qty_minor
    mk.cum_quote += notional_minor
    mk.level.total -= qty_minor  # type: ignore[union-attr]  # a resting order is always on a level
    m.last_price = price_minor
    tid = st.next_trade_id
    st.next_trade_id = tid + 1
    if t.is_buy:
        taker_fee_minor, maker_fee_minor = buyer_fee, seller_fee
    else:
        taker_fee_minor, maker_fee_minor = seller_fee, buyer_fee
    ev.append(
        Trade(
            m.symbol,
            tid,
            price_box,
            qty_box,
            notional_minor,
            _BUY if t.is_buy else _SELL,
            t.id,
            mk.id,
            t.owner,
            mk.owner,
            taker_fee_minor,
            maker_fee_minor,
            t.quote_left if qmode else t.leaves,
            mk.leaves,
        )
    )


def _match(st: TradingState, ledger: Ledger, m: Market, t: Order, limit_minor: int, ev: list[Event]) -> str:
    """Match taker `t` against the book up to `limit_minor`. Returns why it stopped early ('' if not)."""
    is_buy = t.is_buy
    if is_buy:
        book, prices = m.asks, m.ask_prices
    else:
        book, prices = m.bids, m.bid_prices
    lo, hi = m.band_lo, m.band_hi
    stp = t.stp
    stp_on = stp != _STP_NONE
    owner = t.owner
    qmode = not t.qty  # an order by quote amount
    scale, lot = m.base_scale, m.lot
    contract = m.contract  # a perpetual's rules: a reduce-only order never fills past its position
    # A perpetual that only reduces (REDUCE_ONLY, or its index short of sources): no fill may open or grow a
    # position, the resting makers' included (docs/derivatives.md, "Reduce-only market"). Asked at the first
    # maker reached, once (a match changes neither that nor the market's reduce-only orders): -1, not yet.
    only_reduces, capped = False, -1
    while prices:
        price_minor = prices[0] if is_buy else prices[-1]
        if (price_minor > limit_minor) if is_buy else (price_minor < limit_minor):
            return ""
        level = book[price_minor]
        mk = level.head
        if hi and not lo <= price_minor <= hi:
            # A resting price the band has left behind would print outside the band: expire it.
            while mk is not None:
                nxt = mk.next
                _take_out(m, mk)
                _close(ledger, m, mk, ev, OrderExpired, "PRICE_OUTSIDE_BAND", True)
                mk = nxt
            continue
        while mk is not None:
            if stp_on and mk.owner == owner:
                if stp == _EXPIRE_TAKER:
                    return "SELF_TRADE_PREVENTED"
                nxt = mk.next
                _take_out(m, mk)
                _close(ledger, m, mk, ev, OrderExpired, "SELF_TRADE_PREVENTED", True)
                if stp == _EXPIRE_BOTH:
                    return "SELF_TRADE_PREVENTED"
                mk = nxt
                continue
            qty_minor = mk.leaves
            if qmode:
                cap_minor = t.quote_left * scale // price_minor // lot * lot
                if not is_buy and cap_minor > t.leaves:
                    cap_minor = t.leaves
                if cap_minor == 0:
                    return "QUOTE_SPENT"
                if qty_minor > cap_minor:
                    qty_minor = cap_minor
            elif qty_minor > t.leaves:
                qty_minor = t.leaves
            if capped < 0 and contract is not None:  # 1: its fills are capped (`fill_cap`), 0: they are not
                capped = 1 if (only_reduces := contract.only_reduces(m)) or contract.has_reduce_only else 0
            if capped > 0 and contract is not None:  # (capped > 0 only with a contract)
                maker_cap = contract.fill_cap(mk, only_reduces)
                if maker_cap == 0:
                    # A reduce-only maker with nothing left to reduce, or (the market only reducing)
                    # one that would open or grow its owner's position: expired, the taker goes on.
                    nxt = mk.next
                    _take_out(m, mk)
                    _close(ledger, m, mk, ev, OrderExpired, contract.expiry_reason(mk), True)
                    mk = nxt
                    continue
                taker_cap = contract.fill_cap(t, only_reduces)
                if taker_cap == 0:
                    return "REDUCE_ONLY"
                qty_minor = min(qty_minor, maker_cap, taker_cap)
            _fill(st, ledger, m, t, mk, price_minor, qty_minor, ev)
            if mk.leaves == 0:
                nxt = mk.next
                m.unlink(mk)
                m.unindex(mk)
                ledger.end_hold(mk.hold_id)
                mk = nxt
            if t.leaves == 0:
                return ""
    return ""


def _fok_fillable_capped(m: Market, t: Order, limit_minor: int, contract: MarketContract, only_reduces: bool) -> bool:
    """`_fok_fillable` on a perpetual whose fills are capped (`_match`: reduce-only orders, or every
    order while the market only reduces): each maker counts for what it may fill, its owner's room
    to reduce shrinking as the walk fills that owner's orders (a plain maker's fill uses it up too)."""
    need_minor = t.leaves
    if contract.fill_cap(t, only_reduces) < need_minor:
        return False
    have_minor = 0
    rooms: dict[str, int] = {}
    is_buy = t.is_buy
    if is_buy:
        book, it = m.asks, iter(m.ask_prices)
    else:
        book, it = m.bids, reversed(m.bid_prices)
    lo, hi = m.band_lo, m.band_hi
    stp_on = t.stp != _STP_NONE
    for price_minor in it:
        if (price_minor > limit_minor) if is_buy else (price_minor < limit_minor):
            break
        if hi and not lo <= price_minor <= hi:
            continue
        o = book[price_minor].head
        while o is not None:
            if stp_on and o.owner == t.owner:
                if t.stp != _EXPIRE_MAKER:
                    return have_minor >= need_minor
                o = o.next
                continue
            room = rooms.get(o.owner)
            if room is None:
                room = contract.fill_cap(o, True)  # the owner's position on the other side of `o`
            q = o.leaves
            if q > room and (only_reduces or contract.fill_cap(o, False) != MAX_QTY):  # a capped maker
                q = room
            have_minor += q
            rooms[o.owner] = room - q if room > q else 0
            if have_minor >= need_minor:
                return True
            o = o.next
    return have_minor >= need_minor


def _fok_fillable(m: Market, t: Order, limit_minor: int) -> bool:
    """Could `t` fill completely right now (honouring the band and its self-trade mode)?"""
    contract = m.contract
    if contract is not None:
        only_reduces = contract.only_reduces(m)
        if only_reduces or contract.has_reduce_only:
            return _fok_fillable_capped(m, t, limit_minor, contract, only_reduces)
    need_minor = t.leaves
    have_minor = 0
    is_buy = t.is_buy
    if is_buy:
        book, it = m.asks, iter(m.ask_prices)
    else:
        book, it = m.bids, reversed(m.bid_prices)
    lo, hi = m.band_lo, m.band_hi
    per_order = t.stp != _STP_NONE and t.owner in m.by_owner
    for price_minor in it:
        if (price_minor > limit_minor) if is_buy else (price_minor < limit_minor):
            break
        if hi and not lo <= price_minor <= hi:
            continue
        level = book[price_minor]
        if not per_order:
            have_minor += level.total
        else:
            o = level.head
            while o is not None:
                if o.owner == t.owner:
                    if t.stp != _EXPIRE_MAKER:
                        return have_minor >= need_minor
                else:
                    have_minor += o.leaves
                    if have_minor >= need_minor:
                        return True
                o = o.next
        if have_minor >= need_minor:
            return True
    return have_minor >= need_minor


def _execute(st: TradingState, ledger: Ledger, m: Market, o: Order, ev: list[Event]) -> None:
    """Run an accepted (or triggered, or re-priced) order as a taker, then rest or end it."""
    limit_minor = o.price if o.type in _LIMITISH else o.protect
    if o.tif == _FOK and not _fok_fillable(m, o, limit_minor):
        _close(ledger, m, o, ev, OrderExpired, "FOK_NOT_FILLABLE", False)
        return
    stopped = _match(st, ledger, m, o, limit_minor, ev) if limit_minor else "NO_LIQUIDITY"
    if stopped == "SELF_TRADE_PREVENTED" or stopped == "REDUCE_ONLY":
        _close(ledger, m, o, ev, OrderExpired, stopped, False)
    elif not o.qty:
        # By quote amount: FILLED once the rest cannot buy (or sell for) one more lot. The last
        # Trade's `taker_leaves` is the quote left, so say so explicitly: followers (the open-orders
        # read model above all) learn here that the order is finished and what was given back.
        if o.filled and (stopped == "QUOTE_SPENT" or o.quote_left == 0 or o.leaves == 0):
            released = ledger.end_hold(o.hold_id)
            ev.append(OrderFilled(m.symbol, o.id, o.owner, _BUY if o.is_buy else _SELL, o.quote_left, released))
        else:
            # nothing filled: the quote could not buy one lot, or the book/protection price stopped it
            _close(ledger, m, o, ev, OrderExpired, "NOT_FULLY_FILLED", False)
    elif o.leaves == 0:
        ledger.end_hold(o.hold_id)  # FILLED: give back what a buy below its limit did not spend
    elif o.tif == _GTC and o.type in _LIMITISH:
        # A buy that filled below its limit gives back what its rest no longer needs.
        if o.is_buy and m.contract is None and not ledger.resize_hold_to(o.hold_id, o.pay, o.leaves * o.price // m.base_scale):
            raise InvariantViolation(f"order {o.id}: its hold cannot cover its rest")
        m.rest(o)
        m.index(o)
        ev.append(OrderRested(m.symbol, o.id, o.owner, _BUY if o.is_buy else _SELL, o.price, o.leaves))
    else:
        _close(ledger, m, o, ev, OrderExpired, "NOT_FULLY_FILLED", False)


def _trigger_stops(st: TradingState, ledger: Ledger, m: Market, ev: list[Event], held: Any = None) -> None:
    """Fire every stop order the last price has crossed, oldest first, until none is left to fire.

    `held(order)` (given while a halt is active): True for a stop a halt holds — it stays in the
    stop index, untriggered, and is looked at again at the next trade on the market."""
    while m.stops_buy or m.stops_sell:
        last = m.last_price
        sb = m.stops_buy
        ss = m.stops_sell
        i = bisect_right(sb, (last, 1 << 62)) if sb and sb[0][0] <= last else 0
        j = bisect_left(ss, (last, 0)) if ss and ss[-1][0] >= last else len(ss)
        if held is None:
            fired = [oid for _, oid in sb[:i]]
            fired.extend(oid for _, oid in ss[j:])
            del sb[:i]
            del ss[j:]
        else:
            fired = []
            kept_b: list[tuple[int, int]] = []
            kept_s: list[tuple[int, int]] = []
            for entry in sb[:i]:
                if held(m.orders[entry[1]]):
                    kept_b.append(entry)
                else:
                    fired.append(entry[1])
            for entry in ss[j:]:
                if held(m.orders[entry[1]]):
                    kept_s.append(entry)
                else:
                    fired.append(entry[1])
            sb[:i] = kept_b
            ss[j:] = kept_s
        if not fired:
            return
        fired.sort()
        for oid in fired:
            o = m.orders[oid]
            m.unindex(o)
            ev.append(OrderTriggered(m.symbol, oid, last))
            if o.type == _STOP_LIMIT:
                if not m.in_band(o.price):
                    _close(ledger, m, o, ev, OrderExpired, "PRICE_OUTSIDE_BAND", False)
                    continue
            elif m.band_hi:  # STOP_MARKET: never fill outside the band that holds now
                o.protect = min(o.protect, m.band_hi // m.tick * m.tick) if o.is_buy else max(o.protect, -(-m.band_lo // m.tick) * m.tick)
            _execute(st, ledger, m, o, ev)
