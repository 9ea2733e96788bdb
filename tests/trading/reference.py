"""A small, slow, obviously-correct spot matcher: the oracle for the differential test.

No linked lists, no indexes, no incremental totals: the book is a plain dict of orders, and the
best maker is found by sorting every time. FOK runs the match on a deep copy and keeps it only if
the order filled completely. Balances are tracked per owner as plain numbers.

Scope (what the differential stream exercises): LIMIT GTC/IOC/FOK, LIMIT_MAKER, MARKET by base
quantity, cancel, cancel-all, amend, self-trade prevention, fees, tick/lot/min checks, client order
ids. Stops, orders by quote amount and the price band are covered by the property and unit tests.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

PPM = 1_000_000


@dataclass
class RefOrder:
    id: int
    owner: str
    is_buy: bool
    type: str
    tif: str
    price: int
    qty: int
    leaves: int
    filled: int
    time: int
    stp: str
    coid: str


@dataclass
class RefMarket:
    tick: int
    lot: int
    min_qty: int
    scale: int
    slippage_ppm: int
    maker_ppm: int
    taker_ppm: int
    book: dict[int, RefOrder] = field(default_factory=dict)
    next_id: int = 1
    clock: int = 0
    # owner -> asset -> posted balance; fees collected per asset
    balances: dict[str, dict[str, int]] = field(default_factory=dict)
    fees: dict[str, int] = field(default_factory=lambda: {"BASE": 0, "QUOTE": 0})
    out: list[tuple[Any, ...]] = field(default_factory=list)

    # ------------------------------------------------------------------ helpers

    def makers_for(self, is_buy: bool) -> list[RefOrder]:
        """Resting orders on the other side, best price first, then oldest first."""
        other = [o for o in self.book.values() if o.is_buy != is_buy]
        if is_buy:
            return sorted(other, key=lambda o: (o.price, o.time))
        return sorted(other, key=lambda o: (-o.price, o.time))

    def crosses(self, is_buy: bool, price: int) -> bool:
        makers = self.makers_for(is_buy)
        if not makers:
            return False
        return makers[0].price <= price if is_buy else makers[0].price >= price

    def tick_time(self) -> int:
        self.clock += 1
        return self.clock

    def fill(self, taker: RefOrder, maker: RefOrder, q: int) -> None:
        p = maker.price
        n = p * q // self.scale
        assert n * self.scale == p * q, "fractional notional"
        buyer, seller = (taker, maker) if taker.is_buy else (maker, taker)
        b_rate = self.taker_ppm if buyer is taker else self.maker_ppm
        s_rate = self.taker_ppm if seller is taker else self.maker_ppm
        b_fee = (q * b_rate + PPM - 1) // PPM
        s_fee = (n * s_rate + PPM - 1) // PPM
        bb = self.balances.setdefault(buyer.owner, {"BASE": 0, "QUOTE": 0})
        sb = self.balances.setdefault(seller.owner, {"BASE": 0, "QUOTE": 0})
        bb["QUOTE"] -= n
        bb["BASE"] += q - b_fee
        sb["BASE"] -= q
        sb["QUOTE"] += n - s_fee
        self.fees["BASE"] += b_fee
        self.fees["QUOTE"] += s_fee
        taker.leaves -= q
        taker.filled += q
        maker.leaves -= q
        maker.filled += q
        t_fee, m_fee = (b_fee, s_fee) if taker.is_buy else (s_fee, b_fee)
        self.out.append(("trade", p, q, taker.id, maker.id, t_fee, m_fee, taker.leaves, maker.leaves))
        if maker.leaves == 0:
            del self.book[maker.id]

    def match(self, taker: RefOrder, limit: int) -> str:
        while taker.leaves > 0:
            makers = self.makers_for(taker.is_buy)
            if not makers:
                return ""
            maker = makers[0]
            if (maker.price > limit) if taker.is_buy else (maker.price < limit):
                return ""
            if maker.owner == taker.owner and taker.stp != "NONE":
                if taker.stp == "EXPIRE_TAKER":
                    return "STP"
                del self.book[maker.id]
                self.out.append(("expired", maker.id, "SELF_TRADE_PREVENTED", maker.leaves, True))
                if taker.stp == "EXPIRE_BOTH":
                    return "STP"
                continue
            self.fill(taker, maker, min(taker.leaves, maker.leaves))
        return ""

    def run_taker(self, o: RefOrder, limit: int) -> None:
        if o.tif == "FOK":
            trial = copy.deepcopy(self)
            trial.out = []
            t2 = copy.deepcopy(o)
            stopped = trial.match(t2, limit)
            if stopped or t2.leaves:
                self.out.append(("expired", o.id, "FOK_NOT_FILLABLE", o.leaves, False))
                return
        stopped = self.match(o, limit)
        if stopped:
            self.out.append(("expired", o.id, "SELF_TRADE_PREVENTED", o.leaves, False))
        elif o.leaves == 0:
            pass
        elif o.tif == "GTC" and o.type in ("LIMIT", "LIMIT_MAKER"):
            o.time = self.tick_time()
            self.book[o.id] = o
            self.out.append(("rested", o.id, o.price, o.leaves))
        else:
            self.out.append(("expired", o.id, "NOT_FULLY_FILLED", o.leaves, False))

    # ------------------------------------------------------------------ commands

    def place(self, owner: str, side: str, typ: str, tif: str, price: int, qty: int, coid: str, stp: str) -> None:
        is_buy = side == "BUY"
        if typ == "LIMIT_MAKER" and tif != "GTC":
            return self.reject("INVALID_PARAMETER")
        if typ == "MARKET" and tif == "FOK":
            return self.reject("INVALID_PARAMETER")
        if price % self.tick:
            return self.reject("PRICE_NOT_ON_TICK")
        if qty % self.lot:
            return self.reject("QTY_NOT_ON_LOT")
        if qty < self.min_qty:
            return self.reject("QTY_BELOW_MIN")
        if typ == "LIMIT_MAKER" and self.crosses(is_buy, price):
            return self.reject("POST_ONLY_WOULD_TAKE")
        if coid and any(o.owner == owner and o.coid == coid for o in self.book.values()):
            return self.reject("DUPLICATE_CLIENT_ORDER_ID")
        oid = self.next_id
        self.next_id += 1
        self.out.append(("accepted", oid))
        o = RefOrder(oid, owner, is_buy, typ, tif if typ != "MARKET" else "IOC", price if typ != "MARKET" else 0, qty, qty, 0, 0, stp, coid)
        if typ == "MARKET":
            makers = self.makers_for(is_buy)
            if price:
                limit = price
            elif not makers:
                self.out.append(("expired", oid, "NO_LIQUIDITY", qty, False))
                return
            else:
                best = makers[0].price
                if is_buy:
                    limit = best * (PPM + self.slippage_ppm) // PPM // self.tick * self.tick
                else:
                    limit = -(-best * (PPM - self.slippage_ppm) // PPM // self.tick) * self.tick
            self.run_taker(o, limit)
        else:
            self.run_taker(o, price)

    def reject(self, reason: str) -> None:
        self.out.append(("rejected", reason))

    def cancel(self, owner: str, oid: int) -> None:
        o = self.book.get(oid)
        if o is None or o.owner != owner:
            return self.reject("UNKNOWN_ORDER")
        del self.book[oid]
        self.out.append(("canceled", oid, o.leaves, True))

    def cancel_all(self, owner: str) -> None:
        for oid in sorted(k for k, o in self.book.items() if o.owner == owner):
            self.cancel(owner, oid)

    def amend(self, owner: str, oid: int, price: int, qty: int) -> None:
        o = self.book.get(oid)
        if o is None or o.owner != owner:
            return self.reject("UNKNOWN_ORDER")
        price = price or o.price
        qty = qty or o.qty
        if price % self.tick:
            return self.reject("PRICE_NOT_ON_TICK")
        if qty % self.lot:
            return self.reject("QTY_NOT_ON_LOT")
        if qty < self.min_qty:
            return self.reject("QTY_BELOW_MIN")
        leaves = qty - o.filled
        if leaves <= 0:
            return self.reject("INVALID_PARAMETER")
        if price != o.price and o.type == "LIMIT_MAKER":
            del self.book[oid]
            would = self.crosses(o.is_buy, price)
            self.book[oid] = o
            if would:
                return self.reject("POST_ONLY_WOULD_TAKE")
        if price == o.price and qty <= o.qty:
            o.qty, o.leaves = qty, leaves
            self.out.append(("amended", oid, price, qty, leaves, True))
            return
        del self.book[oid]
        o.price, o.qty, o.leaves = price, qty, leaves
        self.out.append(("amended", oid, price, qty, leaves, False))
        self.run_taker(o, price)

    def book_rows(self) -> list[tuple[int, bool, int, int]]:
        bids = sorted((o for o in self.book.values() if o.is_buy), key=lambda o: (-o.price, o.time))
        asks = sorted((o for o in self.book.values() if not o.is_buy), key=lambda o: (o.price, o.time))
        return [(o.id, o.is_buy, o.price, o.leaves) for o in bids + asks]
