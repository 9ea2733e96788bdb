"""The auditor's spot trading: a book sorted from scratch for every fill, holds, fees, stops, bands.

From docs/trading.md: price-time priority at the maker's price; a buy holds price x quantity (a
market buy its protection price x quantity, or its quote amount), a sell its quantity; fees round up
to the minor unit and are charged in what each side receives, a tenth of each (rounded down) goes
to the shield fund; self-trade prevention by the taker's mode; FOK fills whole or not at all; stops
fire oldest first once the last price reaches them; the price band keeps every print inside it and
its timer reduces a market whose last price stays outside.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .books import PPM, SYSTEM, Books, Key, ModelError, Refuse, ceil_div as _ceil_div

__all__ = ["TradingModel", "MarketRules", "MMarket", "MOrder"]

MAX_QTY = 10**30


@dataclass
class MOrder:
    id: int
    owner: str
    is_buy: bool
    type: str
    tif: str
    price: int
    qty: int
    leaves: int
    filled: int
    quote_left: int
    stop: int
    protect: int
    coid: str
    stp: str
    held: int
    pay: Key
    recv: Key
    resting: bool = False
    armed: bool = False  # an untriggered stop
    rest_seq: int = 0
    hold_amount: int = 0  # what it held when accepted (a perpetual's fills free it pro rata)


@dataclass(frozen=True)
class MarketRules:
    symbol: str
    base: str
    quote: str
    segment: str
    scale: int  # 10**base_decimals
    tick: int
    lot: int
    min_qty: int
    max_qty: int
    slippage_ppm: int
    max_open: int
    band_ppm: int = 0  # half-width of the price band around the reference price (0: no band)
    band_timeout_ns: int = 0


@dataclass
class MMarket:
    rules: MarketRules
    orders: dict[int, MOrder] = field(default_factory=dict)
    last_price: int = 0
    status: str = "ACTIVE"
    auto_reduce: bool = False  # REDUCE_ONLY set by the band timer (lifted by it too)
    ref_price: int = 0
    out_of_band_since: int = -1  # -1: the last price is inside the band (or there is none)

    def band(self) -> tuple[int, int]:
        """(lo, hi) of the band around the reference price; (0, 0) when there is no band."""
        if not self.ref_price or not self.rules.band_ppm:
            return 0, 0
        ppm = self.rules.band_ppm
        return self.ref_price * (PPM - ppm) // PPM, self.ref_price * (PPM + ppm) // PPM

    def in_band(self, price: int) -> bool:
        lo, hi = self.band()
        return not hi or lo <= price <= hi


class TradingModel(Books):
    def _init_trading(self) -> None:
        self.markets: dict[str, MMarket] = {}
        self.next_order_id = 1
        self.next_trade_id = 1
        self.rest_counter = 0
        self.tiers: dict[int, tuple[int, int]] = {0: (1000, 1000)}
        self.account_tier: dict[str, int] = {}

    def list_market(self, rules: MarketRules) -> None:
        self.markets[rules.symbol] = MMarket(rules)

    def rates(self, owner: str) -> tuple[int, int]:
        return self.tiers[self.account_tier.get(owner, 0)]

    @staticmethod
    def _clearing(r: MarketRules, asset: str) -> Key:
        return (SYSTEM, asset, "clr_" + r.symbol.lower(), r.segment)

    def _book(self, m: MMarket, buy_side: bool) -> list[MOrder]:
        """Resting orders of one side, best price first, then oldest first."""
        side = [o for o in m.orders.values() if o.resting and o.is_buy == buy_side]
        return sorted(side, key=lambda o: (-o.price if buy_side else o.price, o.rest_seq))

    def best(self, m: MMarket, buy_side: bool) -> int:
        book = self._book(m, buy_side)
        return book[0].price if book else 0

    def _crosses(self, m: MMarket, is_buy: bool, price: int) -> bool:
        other = self.best(m, not is_buy)
        return bool(other) and (other <= price if is_buy else other >= price)

    def trading(self, action: Any) -> list[tuple[Any, ...]]:
        ev: list[tuple[Any, ...]] = []
        name = type(action).__name__
        if name == "PlaceOrder":
            self._place(action, ev)
        elif name == "CancelOrder":
            self._cancel(action, ev)
        elif name == "CancelAll":
            self._cancel_all(action, ev)
        elif name == "AmendOrder":
            self._amend(action, ev)
        elif name == "SetMarketStatus":
            # Retired: a second, quorum-less halt. Refused at the edge (after the halt guard);
            # markets are halted with Halt and reopened with LiftHalt.
            raise Refuse("RF_FORBIDDEN", "SetMarketStatus is retired; use Halt / LiftHalt")
        elif name == "SetReferencePrice":
            m = self.markets.get(action.symbol)
            if m is None:
                raise Refuse("RF_NOT_FOUND", "unknown market")
            m.ref_price = action.price
            ev.append(("refprice", m.rules.symbol, action.price))
            self._band_watch(m, ev)
        else:
            raise ModelError(f"not a trading action: {name}")
        return ev

    def _band_watch(self, m: MMarket, ev: list) -> None:
        """The dual-price guard's timer: a last price outside the band for `band_timeout_ns` puts
        an ACTIVE market in REDUCE_ONLY; back inside the band, a market the timer reduced is ACTIVE."""
        lo, hi = m.band()
        if m.last_price and hi and not lo <= m.last_price <= hi:
            if m.out_of_band_since < 0:
                m.out_of_band_since = self.now_ns
                self.time_effects = True
            if m.status == "ACTIVE" and self.now_ns - m.out_of_band_since >= m.rules.band_timeout_ns:
                m.status, m.auto_reduce = "REDUCE_ONLY", True
                ev.append(("status", m.rules.symbol, "REDUCE_ONLY", "BAND_TIMEOUT"))
                self.time_effects = True
        elif m.out_of_band_since >= 0:
            m.out_of_band_since = -1
            self.time_effects = True
            if m.auto_reduce and m.status == "REDUCE_ONLY":
                m.status, m.auto_reduce = "ACTIVE", False
                ev.append(("status", m.rules.symbol, "ACTIVE", "BAND_RESTORED"))

    def _reject(self, ev: list, action: str, reason: str) -> None:
        ev.append(("rejected", action, reason))

    def _place(self, c: Any, ev: list) -> None:
        m = self.markets.get(c.symbol)
        if m is None:
            return self._reject(ev, "PLACE", "UNKNOWN_MARKET")
        r = m.rules
        if c.side not in ("BUY", "SELL"):
            return self._reject(ev, "PLACE", "INVALID_PARAMETER")
        is_buy = c.side == "BUY"
        typ, tif = c.order_type, c.tif
        if typ not in ("LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LIMIT", "STOP_MARKET") or tif not in ("GTC", "IOC", "FOK") \
                or c.stp not in ("NONE", "EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"):
            return self._reject(ev, "PLACE", "INVALID_PARAMETER")
        price, qty, qamt, stop = c.price, c.quantity, c.quote_amount, c.stop_price
        limitish = typ in ("LIMIT", "LIMIT_MAKER", "STOP_LIMIT")
        is_stop = typ.startswith("STOP")
        if limitish and (not price or not qty or qamt):
            return self._reject(ev, "PLACE", "INVALID_PARAMETER")
        if typ == "MARKET" and (qty > 0) == (qamt > 0):
            return self._reject(ev, "PLACE", "INVALID_PARAMETER")
        if typ == "STOP_MARKET" and (not qty or qamt or price):
            return self._reject(ev, "PLACE", "INVALID_PARAMETER")
        if is_stop != (stop > 0):
            return self._reject(ev, "PLACE", "INVALID_PARAMETER")
        if (typ == "LIMIT_MAKER" and tif != "GTC") or (not limitish and tif == "FOK"):
            return self._reject(ev, "PLACE", "INVALID_PARAMETER")
        self._band_watch(m, ev)
        if m.status != "ACTIVE":
            return self._reject(ev, "PLACE", "MARKET_NOT_ACTIVE")
        if price % r.tick or stop % r.tick:
            return self._reject(ev, "PLACE", "PRICE_NOT_ON_TICK")
        if qty:
            if qty % r.lot:
                return self._reject(ev, "PLACE", "QTY_NOT_ON_LOT")
            if qty < r.min_qty:
                return self._reject(ev, "PLACE", "QTY_BELOW_MIN")
            if qty > r.max_qty:
                return self._reject(ev, "PLACE", "QTY_ABOVE_MAX")
        if limitish and not m.in_band(price):
            return self._reject(ev, "PLACE", "PRICE_OUTSIDE_BAND")
        if is_stop and not m.in_band(stop):  # a stop price gets the limit price's band check
            return self._reject(ev, "PLACE", "PRICE_OUTSIDE_BAND")
        last = m.last_price
        if is_stop and last and (last >= stop if is_buy else last <= stop):
            return self._reject(ev, "PLACE", "STOP_WOULD_TRIGGER_IMMEDIATELY")
        if typ == "LIMIT_MAKER" and self._crosses(m, is_buy, price):
            return self._reject(ev, "PLACE", "POST_ONLY_WOULD_TAKE")
        mine = [o for o in m.orders.values() if o.owner == c.owner]
        if c.client_order_id and any(o.coid == c.client_order_id for o in mine):
            return self._reject(ev, "PLACE", "DUPLICATE_CLIENT_ORDER_ID")
        if ((limitish and tif == "GTC") or is_stop) and len(mine) >= r.max_open:
            return self._reject(ev, "PLACE", "TOO_MANY_OPEN_ORDERS")
        # The worst price a market order may fill at, and what the order must hold.
        protect = 0
        if typ == "MARKET":
            if price:
                protect = price
            else:
                best = self.best(m, not is_buy)
                if best and is_buy:
                    protect = best * (PPM + r.slippage_ppm) // PPM // r.tick * r.tick
                elif best:
                    protect = _ceil_div(best * (PPM - r.slippage_ppm) // PPM, r.tick) * r.tick
            protect = self._cap_to_band(m, is_buy, protect)
        elif typ == "STOP_MARKET":
            if is_buy:
                protect = stop * (PPM + r.slippage_ppm) // PPM // r.tick * r.tick
            else:
                protect = _ceil_div(stop * (PPM - r.slippage_ppm) // PPM, r.tick) * r.tick
        if is_buy:
            hold = qamt if qamt else (price if limitish else protect) * qty // r.scale
        elif qamt:
            hold = _ceil_div(_ceil_div(qamt * r.scale, protect), r.lot) * r.lot if protect else 0
        else:
            hold = qty
        if typ == "MARKET" and not protect:
            hold = 0
        perp = r.segment == "derivatives"
        if perp:  # a perpetual: margin in the quote asset (PerpsModel)
            reason, hold = self.perp_order_hold(m, c, is_buy, price if limitish else protect, typ == "MARKET")  # type: ignore[attr-defined]
            if reason is not None:
                return self._reject(ev, "PLACE", reason)
        pay_asset, recv_asset = (r.quote, r.base) if is_buy and not perp else (r.quote, r.quote) if perp else (r.base, r.quote)
        pay, recv = (c.owner, pay_asset, "available", r.segment), (c.owner, recv_asset, "available", r.segment)
        if hold and not perp and self.available(pay) < hold:
            return self._reject(ev, "PLACE", "INSUFFICIENT_BALANCE")
        oid = self.next_order_id
        self.next_order_id += 1
        leaves = qty if qty else (hold if not is_buy else MAX_QTY)
        o = MOrder(oid, c.owner, is_buy, typ, tif if limitish else "IOC", price if limitish else 0, qty, leaves, 0,
                   qamt, stop, protect, c.client_order_id, c.stp, hold, pay, recv)
        o.hold_amount = hold
        ev.append(("accepted", oid, hold))
        if not hold:
            ev.append(("expired", oid, "NO_LIQUIDITY", 0, qty))
            return
        if perp:
            self.perp_before_hold(c)  # type: ignore[attr-defined]
        self.reserve(pay, self._clearing(r, pay_asset), hold)
        m.orders[oid] = o
        if is_stop:
            o.armed = True
            return
        before = self.next_trade_id
        self._execute(m, o, ev)
        if self.next_trade_id != before:
            self._trigger_stops(m, ev)

    @staticmethod
    def _cap_to_band(m: MMarket, is_buy: bool, protect: int) -> int:
        """A market order never fills outside the band: its protection price is pulled inside."""
        lo, hi = m.band()
        if not protect or not hi:
            return protect
        tick = m.rules.tick
        return min(protect, hi // tick * tick) if is_buy else max(protect, _ceil_div(lo, tick) * tick)

    def _end(self, m: MMarket, o: MOrder) -> int:
        """The order is finished: give back what it still holds and forget it."""
        r = m.rules
        released = o.held
        self.release(o.pay, self._clearing(r, r.quote if o.is_buy or r.segment == "derivatives" else r.base), released)
        o.held = 0
        o.resting = o.armed = False
        m.orders.pop(o.id, None)
        return released

    def _close(self, m: MMarket, o: MOrder, ev: list, kind: str, reason: str) -> None:
        released = self._end(m, o)
        ev.append((kind, o.id, reason, released, o.leaves if o.qty else 0))

    def _rest(self, o: MOrder) -> None:
        self.rest_counter += 1
        o.rest_seq, o.resting = self.rest_counter, True

    def _fillable(self, m: MMarket, t: MOrder, limit: int) -> bool:
        """FOK: would the book fill `t` completely right now, honouring its self-trade mode? (A
        perpetual that only reduces: each side at most what reduces its owner's position, an owner's
        room used up by its earlier makers in the walk.)"""
        have = 0
        shrink = m.rules.segment == "derivatives" and self.perp_only_reduces(m)  # type: ignore[attr-defined]
        if shrink and self.perp_reducing_room(m.rules.symbol, t) < t.leaves:  # type: ignore[attr-defined]
            return False
        used: dict[str, int] = {}
        for mk in self._book(m, not t.is_buy):
            if (mk.price > limit) if t.is_buy else (mk.price < limit):
                break
            if not m.in_band(mk.price):
                continue
            if t.stp != "NONE" and mk.owner == t.owner:
                if t.stp == "EXPIRE_MAKER":
                    continue
                break
            q = mk.leaves
            if shrink:
                room = self.perp_reducing_room(m.rules.symbol, mk) - used.get(mk.owner, 0)  # type: ignore[attr-defined]
                q = max(0, min(q, room))
                used[mk.owner] = used.get(mk.owner, 0) + q
            have += q
            if have >= t.leaves:
                return True
        return have >= t.leaves

    def _execute(self, m: MMarket, o: MOrder, ev: list) -> None:
        limitish = o.type in ("LIMIT", "LIMIT_MAKER", "STOP_LIMIT")
        limit = o.price if limitish else o.protect
        if o.tif == "FOK" and not self._fillable(m, o, limit):
            return self._close(m, o, ev, "expired", "FOK_NOT_FILLABLE")
        stopped = self._match(m, o, limit, ev) if limit else "NO_LIQUIDITY"
        if stopped in ("SELF_TRADE_PREVENTED", "REDUCE_ONLY"):
            self._close(m, o, ev, "expired", stopped)
        elif not o.qty:
            if o.filled and (stopped == "QUOTE_SPENT" or o.quote_left == 0 or o.leaves == 0):
                # FILLED by quote amount: said explicitly, with the unspent quote and what came back
                released = self._end(m, o)
                ev.append(("filled", o.id, o.quote_left, released))
            else:
                self._close(m, o, ev, "expired", "NOT_FULLY_FILLED")
        elif o.leaves == 0:
            self._end(m, o)
        elif o.tif == "GTC" and limitish:
            r = m.rules
            if o.is_buy and r.segment != "derivatives":  # a perpetual's hold is margin: kept pro rata
                excess = o.held - o.leaves * o.price // r.scale
                self.release(o.pay, self._clearing(r, r.quote), excess)
                o.held -= excess
            self._rest(o)
            ev.append(("rested", o.id, o.price, o.leaves))
        else:
            self._close(m, o, ev, "expired", "NOT_FULLY_FILLED")

    def _match(self, m: MMarket, t: MOrder, limit: int, ev: list) -> str:
        r = m.rules
        # A perpetual that only reduces: each side of a fill at most the position it reduces; a
        # maker with nothing to reduce is expired (docs/derivatives.md, "Reduce-only market").
        shrink = r.segment == "derivatives" and self.perp_only_reduces(m)  # type: ignore[attr-defined]
        while True:
            book = self._book(m, not t.is_buy)
            if not book:
                return ""
            mk = book[0]
            p = mk.price
            if (p > limit) if t.is_buy else (p < limit):
                return ""
            if not m.in_band(p):  # the band has left this resting price behind: it must not print
                self._close(m, mk, ev, "expired", "PRICE_OUTSIDE_BAND")
                continue
            if t.stp != "NONE" and mk.owner == t.owner:
                if t.stp == "EXPIRE_TAKER":
                    return "SELF_TRADE_PREVENTED"
                self._close(m, mk, ev, "expired", "SELF_TRADE_PREVENTED")
                if t.stp == "EXPIRE_BOTH":
                    return "SELF_TRADE_PREVENTED"
                continue
            q = mk.leaves
            if not t.qty:
                cap = t.quote_left * r.scale // p // r.lot * r.lot
                if not t.is_buy:
                    cap = min(cap, t.leaves)
                if cap == 0:
                    return "QUOTE_SPENT"
                q = min(q, cap)
            else:
                q = min(q, t.leaves)
            if shrink:
                room = self.perp_reducing_room(r.symbol, mk)  # type: ignore[attr-defined]
                if room == 0:
                    self._close(m, mk, ev, "expired", "MARKET_REDUCE_ONLY")
                    continue
                t_room = self.perp_reducing_room(r.symbol, t)  # type: ignore[attr-defined]
                if t_room == 0:
                    return "REDUCE_ONLY"
                q = min(q, room, t_room)
            self._fill(m, t, mk, p, q, ev)
            if mk.leaves == 0:
                self._end(m, mk)
            if t.leaves == 0:
                return ""

    def _fill(self, m: MMarket, t: MOrder, mk: MOrder, p: int, q: int, ev: list) -> None:
        """q base at p: the buyer pays n quote and receives q base less its fee; the seller pays q
        base and receives n quote less its fee. Fees round up; a tenth (rounded down) of each fee
        goes to the shield fund."""
        r = m.rules
        n = p * q // r.scale
        buyer, seller = (t, mk) if t.is_buy else (mk, t)
        b_rate = self.rates(buyer.owner)[1 if buyer is t else 0]
        s_rate = self.rates(seller.owner)[1 if seller is t else 0]
        if r.segment == "derivatives":  # positions change; margin and fees in the quote asset
            b_fee = self.perp_side(m, buyer, True, p, q, n, b_rate)  # type: ignore[attr-defined]
            s_fee = self.perp_side(m, seller, False, p, q, n, s_rate)  # type: ignore[attr-defined]
            self._filled(m, t, mk, p, q, n, b_fee, s_fee, ev)
            return
        b_fee = _ceil_div(q * b_rate, PPM)
        s_fee = _ceil_div(n * s_rate, PPM)
        if buyer.held < n or seller.held < q:
            raise ModelError(f"model: hold short for a fill of {q} at {p}")
        clr_b, clr_q = self._clearing(r, r.base), self._clearing(r, r.quote)
        self.capture(buyer.pay, clr_q, n)
        buyer.held -= n
        self.capture(seller.pay, clr_b, q)
        seller.held -= q
        self.move(clr_b, buyer.recv, q - b_fee)
        self.move(clr_b, (SYSTEM, r.base, "fees", r.segment), b_fee - b_fee // 10)
        self.move(clr_b, (SYSTEM, r.base, "insurance", r.segment), b_fee // 10)
        self.move(clr_q, seller.recv, n - s_fee)
        self.move(clr_q, (SYSTEM, r.quote, "fees", r.segment), s_fee - s_fee // 10)
        self.move(clr_q, (SYSTEM, r.quote, "insurance", r.segment), s_fee // 10)
        self._filled(m, t, mk, p, q, n, b_fee, s_fee, ev)

    def _filled(self, m: MMarket, t: MOrder, mk: MOrder, p: int, q: int, n: int, b_fee: int, s_fee: int, ev: list) -> None:
        for o in (t, mk):
            o.leaves -= q
            o.filled += q
        if not t.qty:
            t.quote_left -= n
        m.last_price = p
        tid = self.next_trade_id
        self.next_trade_id += 1
        t_fee, m_fee = (b_fee, s_fee) if t.is_buy else (s_fee, b_fee)
        ev.append(("trade", tid, p, q, n, t.id, mk.id, t_fee, m_fee))

    def _trigger_stops(self, m: MMarket, ev: list) -> None:
        while True:
            last = m.last_price
            fired = sorted(o.id for o in m.orders.values() if o.armed and (o.stop <= last if o.is_buy else o.stop >= last))
            if not fired:
                return
            for oid in fired:
                m.orders[oid].armed = False
            for oid in fired:
                o = m.orders[oid]
                ev.append(("triggered", oid, last))
                if o.type == "STOP_LIMIT" and not m.in_band(o.price):
                    self._close(m, o, ev, "expired", "PRICE_OUTSIDE_BAND")
                    continue
                if o.type == "STOP_MARKET":
                    o.protect = self._cap_to_band(m, o.is_buy, o.protect)
                self._execute(m, o, ev)

    def _cancel(self, c: Any, ev: list) -> None:
        m = self.markets.get(c.symbol)
        if m is None:
            return self._reject(ev, "CANCEL", "UNKNOWN_MARKET")
        self._band_watch(m, ev)
        if m.status == "HALTED":
            return self._reject(ev, "CANCEL", "MARKET_HALTED")
        if c.order_id:
            o = m.orders.get(c.order_id)
        else:
            o = next((x for x in m.orders.values() if c.client_order_id and x.owner == c.owner and x.coid == c.client_order_id), None)
        if o is None or o.owner != c.owner:
            return self._reject(ev, "CANCEL", "UNKNOWN_ORDER")
        self._close(m, o, ev, "canceled", "USER_CANCELED")

    def _cancel_all(self, c: Any, ev: list) -> None:
        m = self.markets.get(c.symbol)
        if m is None:
            return self._reject(ev, "CANCEL_ALL", "UNKNOWN_MARKET")
        self._band_watch(m, ev)
        if m.status == "HALTED":
            return self._reject(ev, "CANCEL_ALL", "MARKET_HALTED")
        for oid in sorted(o.id for o in m.orders.values() if o.owner == c.owner):
            self._close(m, m.orders[oid], ev, "canceled", "USER_CANCELED")

    def _amend(self, c: Any, ev: list) -> None:
        m = self.markets.get(c.symbol)
        if m is None:
            return self._reject(ev, "AMEND", "UNKNOWN_MARKET")
        self._band_watch(m, ev)
        if m.status != "ACTIVE":
            return self._reject(ev, "AMEND", "MARKET_NOT_ACTIVE")
        r = m.rules
        o = m.orders.get(c.order_id)
        if o is None or o.owner != c.owner:
            return self._reject(ev, "AMEND", "UNKNOWN_ORDER")
        if not o.resting:
            return self._reject(ev, "AMEND", "ORDER_NOT_AMENDABLE")
        price, qty = c.price or o.price, c.quantity or o.qty
        if price % r.tick:
            return self._reject(ev, "AMEND", "PRICE_NOT_ON_TICK")
        if qty % r.lot:
            return self._reject(ev, "AMEND", "QTY_NOT_ON_LOT")
        if qty < r.min_qty:
            return self._reject(ev, "AMEND", "QTY_BELOW_MIN")
        if qty > r.max_qty:
            return self._reject(ev, "AMEND", "QTY_ABOVE_MAX")
        leaves = qty - o.filled
        if leaves <= 0:
            return self._reject(ev, "AMEND", "INVALID_PARAMETER")
        reprice = price != o.price
        if reprice and not m.in_band(price):
            return self._reject(ev, "AMEND", "PRICE_OUTSIDE_BAND")
        if reprice and o.type == "LIMIT_MAKER" and self._crosses(m, o.is_buy, price):
            return self._reject(ev, "AMEND", "POST_ONLY_WOULD_TAKE")
        need = leaves * price // r.scale if o.is_buy else leaves
        extra = need - o.held
        if extra > 0 and self.available(o.pay) < extra:
            return self._reject(ev, "AMEND", "INSUFFICIENT_BALANCE")
        clearing = self._clearing(r, r.quote if o.is_buy else r.base)
        if extra > 0:
            self.reserve(o.pay, clearing, extra)
        elif extra < 0:
            self.release(o.pay, clearing, -extra)
        o.held = need
        if not reprice and qty <= o.qty:
            o.leaves, o.qty = leaves, qty
            ev.append(("amended", o.id, price, qty, leaves, True))
            return
        o.resting = False
        o.price, o.qty, o.leaves = price, qty, leaves
        ev.append(("amended", o.id, price, qty, leaves, False))
        if not self._crosses(m, o.is_buy, price):
            self._rest(o)
            ev.append(("rested", o.id, price, leaves))
            return
        before = self.next_trade_id
        self._execute(m, o, ev)
        if self.next_trade_id != before:
            self._trigger_stops(m, ev)

    def market_rows(self) -> dict[str, tuple[Any, ...]]:
        return {s: (m.status, m.auto_reduce, m.out_of_band_since >= 0, m.ref_price, m.last_price)
                for s, m in self.markets.items()}

    def order_rows(self) -> dict[str, dict[int, tuple[Any, ...]]]:
        return {s: {o.id: (o.owner, "BUY" if o.is_buy else "SELL", o.price, o.leaves, o.held, o.resting)
                    for o in m.orders.values()} for s, m in self.markets.items()}
