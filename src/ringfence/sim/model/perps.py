"""The auditor's linear perpetuals (docs/derivatives.md), restated from the documented rules.

Collateral moves between a user's spot and derivatives wallets; a perpetual order holds margin in
the quote asset: `max(1, initial margin of the part that opens + ceil(ceil(notional) × taker rate))`,
and a purely reducing order may borrow its hold from the position's own margin. At a fill each
side: gets back what the fill frees of its hold (pro rata of what is left, rounded up), gets its
posted margin back, changes its position (open, increase, reduce, flip; a closed long's cost share
rounds up, a short's down), settles realised PnL through the market's PnL pool (a loss the owner
cannot pay is the insurance fund's), pays the fee `ceil(notional × rate)` (at most its wallet; a
tenth, rounded down, to the insurance fund) and posts again the initial margin of what remains
(`ceil(cost / leverage)`, the leverage lowered to the bracket's maximum; isolated: plus the margin
added by hand), as much as the wallet has.

The mark price is `median(index × (1 + funding basis), index + MA basis, last trade or index)`
(docs/index.md); the perps workload never trades the spot market the index samples, so the MA
basis is 0. Funding, at every interval: `rate = premium + clamp(interest − premium, ±clamp)`,
capped; payers (longs when positive) pay `ceil(|size| × mark × |rate|)`, receivers get the floor;
a payer's shortfall comes from the insurance fund, the rounding dust goes to it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from fractions import Fraction
from types import SimpleNamespace
from typing import Any

from .books import PPM, SYSTEM, Books, Key, ModelError, Refuse, ceil_div

__all__ = ["PerpsModel", "PerpRules", "MPosition", "SEGMENT"]

SEGMENT = "derivatives"


@dataclass(frozen=True)
class PerpRules:
    symbol: str
    base: str
    quote: str
    index_symbol: str
    scale: int
    brackets: tuple[tuple[int, int, int, int], ...]  # (cap, max leverage, mmr ppm, maint amount)
    default_leverage: int
    impact_notional: int
    interest_ppm: int
    clamp_ppm: int
    cap_ppm: int
    interval_ns: int


@dataclass
class MPerp:
    rules: PerpRules
    next_funding_ns: int
    open_interest: int = 0
    last_rate_ppm: int = 0
    last_funding_ns: int = 0


@dataclass
class MPosition:
    size: int = 0
    cost: int = 0
    margin: int = 0
    extra: int = 0
    realized: int = 0

    def row(self) -> tuple[int, int, int, int, int]:
        return (self.size, self.cost, self.margin, self.extra, self.realized)


class PerpsModel(Books):
    markets: dict[str, Any]  # from TradingModel
    indexes: dict[str, Any]  # from IndexModel
    now_ns: int
    time_effects: bool

    def _init_perps(self) -> None:
        self.perps: dict[str, MPerp] = {}
        self.positions: dict[tuple[str, str], MPosition] = {}
        self.leverage: dict[tuple[str, str], int] = {}
        self.isolated: set[tuple[str, str]] = set()
        self.next_tran_id = 1
        self._borrow = 0
        #: (owner, scope) -> sequencer time before which no next liquidation step runs
        self.liq_next_ns: dict[tuple[str, str], int] = {}
        #: Set around a liquidation step's order: it only reduces (reduce_only), its hold is capped
        #: at the collateral left (liquidating) and, isolated, only the position's margin pays.
        self.reduce_only = False
        self.liquidating: tuple[str, str] | None = None
        self.liquidating_isolated: tuple[str, str] | None = None

    # ------------------------------------------------------------------ accounts

    @staticmethod
    def wallet_key(owner: str, asset: str) -> Key:
        return (owner, asset, "available", SEGMENT)

    def _margin_key(self, owner: str, r: PerpRules) -> Key:
        kind = "isolated" if (owner, r.symbol) in self.isolated else "margin"
        return (owner, r.quote, kind, SEGMENT)

    @staticmethod
    def _pool(r: PerpRules) -> Key:
        return (SYSTEM, r.quote, "pnl_" + r.symbol.lower(), SEGMENT)

    @staticmethod
    def _fees(r: PerpRules) -> Key:
        return (SYSTEM, r.quote, "fees", SEGMENT)

    @staticmethod
    def _insurance(r: PerpRules) -> Key:
        return (SYSTEM, r.quote, "insurance", SEGMENT)

    # ------------------------------------------------------------------ arithmetic

    def list_perp(self, r: PerpRules, now_ns: int) -> None:
        self.perps[r.symbol] = MPerp(r, (now_ns // r.interval_ns + 1) * r.interval_ns)

    @staticmethod
    def _bracket(r: PerpRules, notional: int) -> tuple[int, int, int, int] | None:
        for b in r.brackets:
            if notional <= b[0]:
                return b
        return None

    def _im(self, owner: str, r: PerpRules, cost: int) -> int:
        if cost <= 0:
            return 0
        b = self._bracket(r, cost) or r.brackets[-1]
        lev = min(self.leverage.get((owner, r.symbol), r.default_leverage), b[1])
        return ceil_div(cost, lev)

    def mark(self, p: MPerp) -> int:
        r = p.rules
        last = self.markets[r.symbol].last_price
        x = self.indexes.get(r.index_symbol)
        if x is None or not x.index:
            return int(last)
        left = max(0, p.next_funding_ns - self.now_ns)
        basis = p.last_rate_ppm * left // r.interval_ns
        index = x.index
        return sorted((index + index * basis // PPM, index, last if last > 0 else index))[1]

    @staticmethod
    def _upnl(pos: MPosition, mark: int, scale: int) -> int:
        if not pos.size or not mark:
            return 0
        if pos.size > 0:
            return pos.size * mark // scale - pos.cost
        return pos.cost - ceil_div(-pos.size * mark, scale)

    def cross_upnl(self, owner: str, asset: str) -> int:
        total = 0
        for sym, p in self.perps.items():
            pos = self.positions.get((owner, sym))
            if pos is not None and (owner, sym) not in self.isolated and p.rules.quote == asset:
                total += self._upnl(pos, self.mark(p), p.rules.scale)
        return total

    # ------------------------------------------------------------------ commands

    def perp_command(self, c: Any) -> list[tuple[Any, ...]]:
        name = type(c).__name__
        if name == "FuturesTransfer":
            return self._futures_transfer(c)
        if name == "SetLeverage":
            return self._set_leverage(c)
        if name == "SetMarginType":
            return self._set_margin_type(c)
        if name == "AdjustIsolatedMargin":
            return self._adjust(c)
        if name == "LiquidateAccount":
            return self._liquidate_account(c)
        if name == "LiquidatePosition":
            return self._liquidate_position(c)
        if name == "PlacePerpOrder":
            if c.symbol not in self.perps:
                raise Refuse("RF_NOT_FOUND", "unknown perpetual")
            order = SimpleNamespace(owner=c.owner, symbol=c.symbol, side=c.side, order_type=c.order_type, tif=c.tif,
                                    price=c.price, quantity=c.quantity, quote_amount=0, stop_price=c.stop_price,
                                    client_order_id=c.client_order_id, stp="NONE")
            ev: list[tuple[Any, ...]] = []
            self._place(order, ev)  # type: ignore[attr-defined]  # TradingModel's
            return ev
        raise ModelError(f"not a derivatives command: {name}")

    def _futures_transfer(self, c: Any) -> list[tuple[Any, ...]]:
        if c.direction not in ("MAIN_UMFUTURE", "UMFUTURE_MAIN"):
            raise Refuse("RF_VALIDATION", "direction")
        if not 1 <= c.amount:
            raise Refuse("RF_VALIDATION", "amount")
        if not any(p.rules.quote == c.asset for p in self.perps.values()):
            raise Refuse("RF_VALIDATION", "not a margin asset")
        spot, fut = (c.owner, c.asset, "available", "spot"), self.wallet_key(c.owner, c.asset)
        into = c.direction == "MAIN_UMFUTURE"
        free = self.available(spot if into else fut)
        if not into:
            free += min(0, self.cross_upnl(c.owner, c.asset))
        if c.amount > free:
            raise Refuse("RF_INSUFFICIENT_FUNDS", f"{free} free, {c.amount} asked")
        if into:
            self.move(spot, fut, c.amount)
        else:
            self.move(fut, spot, c.amount)
        self.next_tran_id += 1
        return [("futures_transfer", c.owner, c.amount, c.direction)]

    def _perp(self, symbol: str) -> MPerp:
        p = self.perps.get(symbol)
        if p is None:
            raise Refuse("RF_NOT_FOUND", "unknown perpetual")
        return p

    def _set_leverage(self, c: Any) -> list[tuple[Any, ...]]:
        p = self._perp(c.symbol)
        r = p.rules
        if not 1 <= c.leverage <= 125:
            raise Refuse("RF_VALIDATION", "leverage out of range")
        key = (c.owner, c.symbol)
        pos = self.positions.get(key)
        b = self._bracket(r, pos.cost if pos is not None else 0) or r.brackets[-1]
        if c.leverage > b[1]:
            raise Refuse("RF_VALIDATION", f"leverage above {b[1]}")
        grow = 0
        if pos is not None:
            old = self.leverage.get(key)
            self.leverage[key] = c.leverage
            target = self._im(c.owner, r, pos.cost) + pos.extra
            if old is None:
                del self.leverage[key]
            else:
                self.leverage[key] = old
            grow = target - pos.margin
            if grow > 0 and grow > self.available(self.wallet_key(c.owner, r.quote)):
                raise Refuse("RF_INSUFFICIENT_FUNDS", "margin for this leverage")
        self.leverage[key] = c.leverage
        if pos is not None and grow:
            w, acct = self.wallet_key(c.owner, r.quote), self._margin_key(c.owner, r)
            if grow > 0:
                self.move(w, acct, grow)
            else:
                self.move(acct, w, -grow)
            pos.margin += grow
        return [("leverage", c.owner, c.symbol, c.leverage)]

    def _set_margin_type(self, c: Any) -> list[tuple[Any, ...]]:
        self._perp(c.symbol)
        if c.margin_type not in ("ISOLATED", "CROSSED"):
            raise Refuse("RF_VALIDATION", "margin type")
        key = (c.owner, c.symbol)
        if key in self.positions:
            raise Refuse("RF_VALIDATION", "a position exists")
        if any(o.owner == c.owner for o in self.markets[c.symbol].orders.values()):
            raise Refuse("RF_VALIDATION", "open orders exist")
        if c.margin_type == "ISOLATED":
            self.isolated.add(key)
        else:
            self.isolated.discard(key)
        return [("margin_type", c.owner, c.symbol, c.margin_type)]

    def _adjust(self, c: Any) -> list[tuple[Any, ...]]:
        p = self._perp(c.symbol)
        if c.amount < 1:
            raise Refuse("RF_VALIDATION", "amount")
        if c.action not in (1, 2):
            raise Refuse("RF_VALIDATION", "type")
        key = (c.owner, c.symbol)
        if key not in self.isolated:
            raise Refuse("RF_VALIDATION", "not isolated")
        pos = self.positions.get(key)
        if pos is None:
            raise Refuse("RF_VALIDATION", "no position")
        w, acct = self.wallet_key(c.owner, p.rules.quote), (c.owner, p.rules.quote, "isolated", SEGMENT)
        if c.action == 1:
            if c.amount > self.available(w):
                raise Refuse("RF_INSUFFICIENT_FUNDS", "margin is insufficient")
            self.move(w, acct, c.amount)
            pos.margin += c.amount
            pos.extra += c.amount
        else:
            if c.amount > pos.extra:
                raise Refuse("RF_INSUFFICIENT_FUNDS", "more than was added")
            self.move(acct, w, c.amount)
            pos.margin -= c.amount
            pos.extra -= c.amount
        return [("isolated_margin", c.owner, c.symbol, c.amount, c.action)]

    # ------------------------------------------------------------------ orders (called by TradingModel)

    def perp_order_hold(self, m: Any, c: Any, is_buy: bool, price: int, market_order: bool) -> tuple[str | None, int]:
        """(rejection reason or None, hold) of a perpetual order at `price` (a market order's
        protection price; 0: an empty book, accepted and expired with nothing held)."""
        p = self.perps[c.symbol]
        r = p.rules
        self._borrow = 0
        if market_order and not price:
            return None, 0
        qty = c.quantity
        pos = self.positions.get((c.owner, c.symbol))
        reducible = 0
        if pos is not None and (pos.size > 0) != is_buy:
            covered = sum(o.leaves for o in m.orders.values() if o.owner == c.owner and o.is_buy == is_buy)
            reducible = max(0, abs(pos.size) - covered)
        close_q = min(qty, reducible)
        open_q = qty - close_q
        if self.reduce_only and open_q:
            return "REDUCE_ONLY_REJECTED", 0
        size_now = abs(pos.size) if pos is not None else 0
        if open_q:
            x = self.indexes.get(r.index_symbol)
            if x is not None and x.short:
                return "MARKET_NOT_ACTIVE", 0
            mine = size_now + open_q if not close_q else open_q
            if self._bracket(r, ceil_div(price * mine, r.scale)) is None:
                return "CONCENTRATION_LIMIT", 0
        open_notional = ceil_div(price * open_q, r.scale)
        im = self._im(c.owner, r, open_notional)
        taker_ppm = self.rates(c.owner)[1]  # type: ignore[attr-defined]  # TradingModel's
        hold = max(1, im + ceil_div(ceil_div(price * qty, r.scale) * taker_ppm, PPM))
        free_wallet = self.available(self.wallet_key(c.owner, r.quote))
        if self.liquidating == (c.owner, c.symbol) and not open_q and pos is not None:
            hold = max(1, min(hold, free_wallet + pos.margin))
        if not open_q and pos is not None and hold <= free_wallet + pos.margin:
            self._borrow = max(0, hold - free_wallet)
            if self.liquidating_isolated == (c.owner, c.symbol):  # its own margin pays its liquidation
                self._borrow = min(hold, pos.margin)
            return None, hold
        free = free_wallet + min(0, self.cross_upnl(c.owner, r.quote))
        if hold > free:
            return "MARGIN_INSUFFICIENT", 0
        return None, hold

    def perp_only_reduces(self, m: Any) -> bool:
        """Does the perpetual only reduce now: its own status is not ACTIVE, a halt of REDUCE_ONLY or
        above covers the venue, the market, the derivatives segment or one of its assets, or its index
        is short of live sources."""
        if m.status != "ACTIVE":
            return True
        r = m.rules
        scopes = (("venue", "*"), ("market", r.symbol), ("segment", r.segment), ("asset", r.base), ("asset", r.quote))
        if any(self.level_at(kind, scope) >= 2 for kind, scope in scopes):  # type: ignore[attr-defined]  # HaltsModel's
            return True
        x = self.indexes.get(self.perps[r.symbol].rules.index_symbol)
        return x is not None and x.short

    def perp_reducing_room(self, symbol: str, o: Any) -> int:
        """How much `o` may fill while its market only reduces: the owner's position, when `o` is on
        the other side of it; else nothing."""
        pos = self.positions.get((o.owner, symbol))
        if pos is None or pos.size == 0 or (pos.size > 0) == o.is_buy:
            return 0
        return abs(pos.size)

    def perp_before_hold(self, c: Any) -> None:
        """A purely reducing order's hold borrowed from its position's margin goes to the wallet first."""
        if not self._borrow:
            return
        r = self.perps[c.symbol].rules
        pos = self.positions[(c.owner, c.symbol)]
        self.move(self._margin_key(c.owner, r), self.wallet_key(c.owner, r.quote), self._borrow)
        pos.margin -= self._borrow
        pos.extra = min(pos.extra, pos.margin)
        self._borrow = 0

    def perp_side(self, m: Any, o: Any, is_buy: bool, price: int, qty: int, notional: int, rate_ppm: int) -> int:
        """One side of a fill (before the order's `leaves` drop): returns its fee."""
        r = self.perps[m.rules.symbol].rules
        p = self.perps[r.symbol]
        w = o.pay
        clearing = (SYSTEM, r.quote, "clr_" + r.symbol.lower(), SEGMENT)
        take = o.held - ceil_div(o.hold_amount * (o.leaves - qty), o.qty)
        if take > 0:
            self.capture(w, clearing, take)
            o.held -= take
            self.move(clearing, w, take)
        key = (o.owner, r.symbol)
        iso = key in self.isolated
        own_margin_only = self.liquidating_isolated == key
        pos = self.positions.get(key) or MPosition()
        acct = self._margin_key(o.owner, r)
        released = pos.margin
        self.move(acct, w, released)
        pos.margin = 0
        longs_before = max(pos.size, 0)
        realized = 0
        if pos.size == 0 or (pos.size > 0) == is_buy:
            pos.size += qty if is_buy else -qty
            pos.cost += notional
        else:
            size_abs = abs(pos.size)
            close_q = min(qty, size_abs)
            close_notional = price * close_q // r.scale
            if pos.size > 0:
                closed_cost = ceil_div(pos.cost * close_q, size_abs)
                realized = close_notional - closed_cost
            else:
                closed_cost = pos.cost * close_q // size_abs
                realized = closed_cost - close_notional
            pos.cost -= closed_cost
            pos.size += close_q if is_buy else -close_q
            open_q = qty - close_q
            if open_q:
                pos.size += open_q if is_buy else -open_q
                pos.cost = price * open_q // r.scale
        p.open_interest += max(pos.size, 0) - longs_before
        pos.realized += realized
        if realized > 0:
            self.move(self._pool(r), w, realized)
        covered = 0
        if realized < 0:
            loss = -realized
            budget = self.available(w)
            if iso:
                budget = min(budget, released + max(take, 0) if own_margin_only else released)
            paid = min(loss, budget)
            self.move(w, self._pool(r), paid)
            covered = loss - paid
            if covered:
                self.move(self._insurance(r), self._pool(r), covered)
        fee = min(ceil_div(notional * rate_ppm, PPM), self.available(w))
        own_left = released + max(take, 0) - (-realized - covered if realized < 0 else 0)
        if own_margin_only:
            fee = max(0, min(fee, own_left))
        self.move(w, self._fees(r), fee - fee // 10)
        self.move(w, self._insurance(r), fee // 10)
        if pos.size:
            target = self._im(o.owner, r, pos.cost) + (pos.extra if iso else 0)
            post = min(target, self.available(w))
            if own_margin_only:
                post = max(0, min(post, own_left - fee))
            self.move(w, acct, post)
            pos.margin = post
            self.positions[key] = pos
        else:
            self.positions.pop(key, None)
        return fee

    # ------------------------------------------------------------------ liquidation (docs/derivatives.md)

    COOLDOWN_NS = 5 * 10**9
    BAND_PPM = 10_000
    STEP_PPM = 500_000

    def _maint(self, p: MPerp, pos: MPosition, mark: int) -> int:
        r = p.rules
        if not pos.size:
            return 0
        n = ceil_div(abs(pos.size) * (mark or pos.cost * r.scale // abs(pos.size)), r.scale)
        b = self._bracket(r, n) or r.brackets[-1]
        return max(0, ceil_div(n * b[2], PPM) - b[3])

    def cross_figures(self, owner: str, asset: str) -> tuple[int, int]:
        """(equity, maintenance) of a cross account: wallet + cross margins + unrealised PnL at mark."""
        equity = self.bal(self.wallet_key(owner, asset)).posted if self.wallet_key(owner, asset) in self.accounts else 0
        maint = 0
        for sym, p in sorted(self.perps.items()):
            pos = self.positions.get((owner, sym))
            if pos is None or (owner, sym) in self.isolated or p.rules.quote != asset:
                continue
            mark = self.mark(p)
            equity += pos.margin + self._upnl(pos, mark, p.rules.scale)
            maint += self._maint(p, pos, mark)
        return equity, maint

    def isolated_figures(self, owner: str, symbol: str) -> tuple[int, int]:
        p = self.perps[symbol]
        pos = self.positions[(owner, symbol)]
        mark = self.mark(p)
        return pos.margin + self._upnl(pos, mark, p.rules.scale), self._maint(p, pos, mark)

    def liquidatable(self) -> list[tuple[str, str, bool]]:
        """(owner, scope, isolated) below maintenance and not cooling down: what the worker submits."""
        out = []
        for owner in sorted({o for o, _ in self.positions}):
            for asset in sorted({p.rules.quote for p in self.perps.values()}):
                if any((owner, s) in self.positions and (owner, s) not in self.isolated for s in self.perps):
                    eq, mm = self.cross_figures(owner, asset)
                    if eq < mm and self.now_ns >= self.liq_next_ns.get((owner, asset), 0):
                        out.append((owner, asset, False))
            for sym in sorted(self.perps):
                if (owner, sym) in self.positions and (owner, sym) in self.isolated:
                    eq, mm = self.isolated_figures(owner, sym)
                    if eq < mm and self.now_ns >= self.liq_next_ns.get((owner, sym), 0):
                        out.append((owner, sym, True))
        return out

    def _liquidate_account(self, c: Any) -> list[tuple[Any, ...]]:
        if not any(p.rules.quote == c.asset for p in self.perps.values()):
            raise Refuse("RF_VALIDATION", "not a margin asset")
        syms = sorted(s for s, p in self.perps.items() if p.rules.quote == c.asset and (c.owner, s) in self.positions
                      and (c.owner, s) not in self.isolated)
        if not syms:
            raise Refuse("RF_CONFLICT", "no cross position")
        equity, maint = self.cross_figures(c.owner, c.asset)
        if equity >= maint:
            raise Refuse("RF_CONFLICT", f"equity {equity} is not below maintenance {maint}")
        if self.now_ns < self.liq_next_ns.get((c.owner, c.asset), 0):
            raise Refuse("RF_CONFLICT", "cooling down")
        ev: list[tuple[Any, ...]] = []
        for sym in sorted(self.perps):
            if self.perps[sym].rules.quote == c.asset:
                self._cancel_all(SimpleNamespace(owner=c.owner, symbol=sym), ev)  # type: ignore[attr-defined]
        best = max(syms, key=lambda s: (ceil_div(abs(self.positions[(c.owner, s)].size) * (self.mark(self.perps[s]) or 1),
                                                 self.perps[s].rules.scale), s))
        self._step(c.owner, best, (c.owner, c.asset), ev)
        return ev

    def _liquidate_position(self, c: Any) -> list[tuple[Any, ...]]:
        if c.symbol not in self.perps:
            raise Refuse("RF_VALIDATION", "unknown perpetual")
        key = (c.owner, c.symbol)
        if key not in self.positions or key not in self.isolated:
            raise Refuse("RF_CONFLICT", "no isolated position")
        equity, maint = self.isolated_figures(c.owner, c.symbol)
        if equity >= maint:
            raise Refuse("RF_CONFLICT", f"margin + PnL {equity} is not below maintenance {maint}")
        if self.now_ns < self.liq_next_ns.get(key, 0):
            raise Refuse("RF_CONFLICT", "cooling down")
        ev: list[tuple[Any, ...]] = []
        self._cancel_all(SimpleNamespace(owner=c.owner, symbol=c.symbol), ev)  # type: ignore[attr-defined]
        self._step(c.owner, c.symbol, key, ev)
        return ev

    def _depth(self, m: Any, selling: bool, limit: int) -> dict[int, int]:
        """The opposite side's resting quantity per price, at `limit` or better."""
        levels: dict[int, int] = {}
        for o in m.orders.values():
            if o.resting and o.is_buy == selling and (o.price >= limit if selling else o.price <= limit):
                levels[o.price] = levels.get(o.price, 0) + o.leaves
        return levels

    def _step_size(self, m: Any, selling: bool, limit: int, size: int) -> int:
        depth = sum(self._depth(m, selling, limit).values())
        lot = m.rules.lot
        step = depth * self.STEP_PPM // PPM // lot * lot
        if not step and depth >= lot:
            step = lot
        return min(step, size)

    @staticmethod
    def _bankruptcy(r: PerpRules, size: int, cost: int, collateral: int, tick: int) -> int:
        if size > 0:
            raw = ceil_div(max(0, cost - collateral) * r.scale, size)
            return max(tick, ceil_div(raw, tick) * tick)
        return max(tick, (cost + collateral) * r.scale // -size // tick * tick)

    def _collateral(self, owner: str, sym: str) -> int:
        pos = self.positions[(owner, sym)]
        if (owner, sym) in self.isolated:
            return pos.margin
        w = self.wallet_key(owner, self.perps[sym].rules.quote)
        return (self.bal(w).posted if w in self.accounts else 0) + pos.margin

    def _step(self, owner: str, sym: str, cool_key: tuple[str, str], ev: list[tuple[Any, ...]]) -> None:
        p = self.perps[sym]
        r = p.rules
        m = self.markets[sym]
        tick = m.rules.tick
        pos = self.positions[(owner, sym)]
        mark = self.mark(p) or m.last_price
        selling = pos.size > 0
        if selling:
            limit = ceil_div(mark * (PPM - self.BAND_PPM) // PPM, tick) * tick
        else:
            limit = mark * (PPM + self.BAND_PPM) // PPM // tick * tick
        step = self._step_size(m, selling, limit, abs(pos.size))
        bk = self._bankruptcy(r, pos.size, pos.cost, self._collateral(owner, sym), tick)
        # what filling `step` down to `limit` would lose past the bankruptcy price
        loss, left = 0, step
        depth = self._depth(m, selling, limit)
        for px in sorted(depth, reverse=selling):
            if not left:
                break
            q = min(left, depth[px])
            left -= q
            beyond = (bk - px) if selling else (px - bk)
            if beyond > 0:
                loss += beyond * q
        if self.bal(self._insurance(r)).posted < ceil_div(loss, r.scale):
            limit = bk
            step = self._step_size(m, selling, limit, abs(pos.size))
        self.liq_next_ns[cool_key] = self.now_ns + self.COOLDOWN_NS
        isolated = (owner, sym) in self.isolated
        w = self.wallet_key(owner, r.quote)
        advance = 0
        if step and limit > 0 and self.available(w) + pos.margin < 1:
            if self.bal(self._insurance(r)).posted >= 1:
                self.move(self._insurance(r), w, 1)
                advance = 1
            else:
                step = 0
        if step and limit > 0:
            self.reduce_only = True
            self.liquidating_isolated = (owner, sym) if isolated else None
            self.liquidating = (owner, sym)
            try:
                order = SimpleNamespace(owner=owner, symbol=sym, side="SELL" if selling else "BUY", order_type="LIMIT",
                                        tif="IOC", price=limit, quantity=step, quote_amount=0, stop_price=0,
                                        client_order_id="", stp="NONE")
                self._place(order, ev)  # type: ignore[attr-defined]  # TradingModel's
            finally:
                self.reduce_only = False
                self.liquidating_isolated = self.liquidating = None
        if advance:
            self.move(w, self._insurance(r), min(advance, self.available(w)))
        # auto-deleveraging: what is left is bankrupt at mark, the fund cannot cover the deficit and
        # the book cannot take it at the bankruptcy price or better
        rest = self.positions.get((owner, sym))
        if rest is None:
            return
        mark = self.mark(p) or m.last_price
        collateral = self._collateral(owner, sym)
        if isolated:
            equity = rest.margin + self._upnl(rest, mark, r.scale)
        else:
            equity = self.cross_figures(owner, r.quote)[0]
        if -equity <= 0 or self.bal(self._insurance(r)).posted >= -equity:
            return
        bk = self._bankruptcy(r, rest.size, rest.cost, collateral, tick)
        if sum(self._depth(m, rest.size > 0, bk).values()) >= abs(rest.size):
            return
        self._deleverage(owner, sym, bk, ev)

    def _equity_behind(self, owner: str, p: MPerp, pos: MPosition, upnl: int) -> int:
        if (owner, p.rules.symbol) in self.isolated:
            return pos.margin + upnl
        return self.cross_figures(owner, p.rules.quote)[0]

    def adl_ranking(self, p: MPerp, long_side: bool) -> list[tuple[str, Fraction]]:
        """One side's positions, first deleveraged first: score = upnl × notional / (cost × equity)
        in profit, upnl × equity / (cost × notional) otherwise (each at least 1); ties by owner."""
        r = p.rules
        mark = self.mark(p)
        rows = []
        for (owner, sym), pos in sorted(self.positions.items()):
            if sym != r.symbol or (pos.size > 0) != long_side:
                continue
            upnl = self._upnl(pos, mark, r.scale)
            notional = max(1, ceil_div(abs(pos.size) * mark, r.scale) if mark else pos.cost)
            equity = max(1, self._equity_behind(owner, p, pos, upnl))
            cost = max(1, pos.cost)
            score = Fraction(upnl * notional, cost * equity) if upnl > 0 else Fraction(upnl * equity, cost * notional)
            rows.append((owner, score))
        rows.sort(key=lambda row: row[1], reverse=True)  # stable: owners in order among equals
        return rows

    def _deleverage(self, owner: str, sym: str, price: int, ev: list[tuple[Any, ...]]) -> None:
        p = self.perps[sym]
        pos = self.positions[(owner, sym)]
        left = abs(pos.size)
        for other, _ in [row for row in self.adl_ranking(p, pos.size < 0) if row[0] != owner]:
            if not left:
                break
            q = min(left, abs(self.positions[(other, sym)].size))
            self._close_at(p, other, q, price)
            self._close_at(p, owner, q, price)
            left -= q
        if left or (owner, sym) in self.positions:
            raise ModelError("auto-deleveraging left part of the position open")
        ev.append(("adl", owner, sym, price))

    def _close_at(self, p: MPerp, owner: str, qty: int, price: int) -> None:
        """An ADL close at `price`, no fee: like one side of a fill."""
        r = p.rules
        key = (owner, r.symbol)
        pos = self.positions[key]
        iso = key in self.isolated
        w, acct = self.wallet_key(owner, r.quote), self._margin_key(owner, r)
        released = pos.margin
        self.move(acct, w, released)
        pos.margin = 0
        size_abs = abs(pos.size)
        notional = price * qty // r.scale
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
        if realized > 0:
            self.move(self._pool(r), w, realized)
        elif realized < 0:
            budget = min(self.available(w), released) if iso else self.available(w)
            paid = min(-realized, budget)
            self.move(w, self._pool(r), paid)
            if -realized > paid:
                self.move(self._insurance(r), self._pool(r), -realized - paid)
        if pos.size:
            post = min(self._im(owner, r, pos.cost) + (pos.extra if iso else 0), self.available(w))
            self.move(w, acct, post)
            pos.margin = post
        else:
            del self.positions[key]

    # ------------------------------------------------------------------ funding (a timer)

    def _impact(self, m: Any, notional: int, scale: int, is_bid: bool) -> int:
        levels: dict[int, int] = {}
        for o in m.orders.values():
            if o.resting and o.is_buy == is_bid:
                levels[o.price] = levels.get(o.price, 0) + o.leaves
        need, qty, spent = notional, 0, 0
        for price in sorted(levels, reverse=is_bid):
            level_notional = price * levels[price] // scale
            if level_notional >= need:
                qty += ceil_div(need * scale, price)
                spent += need
                need = 0
                break
            qty += levels[price]
            spent += level_notional
            need -= level_notional
        if need > 0 or not qty:
            return 0
        return spent * scale // qty if is_bid else ceil_div(spent * scale, qty)

    def perp_tick(self) -> Any:
        """The funding timer at `now_ns`: a saved state to restore if the command is not journaled
        (None when no round was due)."""
        due = [s for s in sorted(self.perps) if self.now_ns >= self.perps[s].next_funding_ns]
        if not due:
            return None
        saved = copy.deepcopy((self.accounts, self.perps, self.positions))
        for sym in due:
            self._fund(self.perps[sym])
        self.time_effects = True
        return saved

    def perp_restore(self, saved: Any) -> None:
        if saved is not None:
            self.accounts, self.perps, self.positions = saved

    def _fund(self, p: MPerp) -> None:
        r = p.rules
        x = self.indexes.get(r.index_symbol)
        index = x.index if x is not None else 0
        mark = self.mark(p)
        p.last_funding_ns = p.next_funding_ns
        p.next_funding_ns = (self.now_ns // r.interval_ns + 1) * r.interval_ns
        if not index or not mark:
            p.last_rate_ppm = 0
            return
        m = self.markets[r.symbol]
        bid = self._impact(m, r.impact_notional, r.scale, True) if r.impact_notional > 0 else 0
        ask = self._impact(m, r.impact_notional, r.scale, False) if r.impact_notional > 0 else 0
        premium = 0 if not bid or not ask else (max(0, bid - index) - max(0, index - ask)) * PPM // index
        rate = premium + max(-r.clamp_ppm, min(r.clamp_ppm, r.interest_ppm - premium))
        rate = max(-r.cap_ppm, min(r.cap_ppm, rate))
        p.last_rate_ppm = rate
        if not rate:
            return
        pool, insurance = (SYSTEM, r.quote, "funding", SEGMENT), self._insurance(r)
        rows = sorted((o, pos) for (o, s), pos in self.positions.items() if s == r.symbol)
        for payer_pass in (True, False):
            for owner, pos in rows:
                pays = (pos.size > 0) == (rate > 0)
                if pays != payer_pass:
                    continue
                base = abs(pos.size) * mark * abs(rate)
                iso = (owner, r.symbol) in self.isolated
                w = self.wallet_key(owner, r.quote)
                acct = (owner, r.quote, "isolated", SEGMENT)
                if pays:
                    due = ceil_div(base, r.scale * PPM)
                    if iso:
                        take = min(due, pos.margin)
                        self.move(acct, pool, take)
                        pos.margin -= take
                        pos.extra = min(pos.extra, pos.margin)
                    else:
                        take = min(due, self.available(w))
                        self.move(w, pool, take)
                    if due > take:
                        self.move(insurance, pool, due - take)
                else:
                    got = base // (r.scale * PPM)
                    self.move(pool, acct if iso else w, got)
                    if iso:
                        pos.margin += got
        self.move(pool, insurance, self.bal(pool).posted)

    # ------------------------------------------------------------------ rows for the comparison

    def position_rows(self) -> dict[tuple[str, str], tuple[int, ...]]:
        return {k: pos.row() for k, pos in self.positions.items()}

    def perp_rows(self) -> dict[str, tuple[int, ...]]:
        return {s: (p.open_interest, p.last_rate_ppm, p.last_funding_ns, p.next_funding_ns) for s, p in self.perps.items()}

    def perp_settings(self) -> tuple[dict[tuple[str, str], int], set[tuple[str, str]]]:
        return dict(self.leverage), set(self.isolated)

    def cooldown_rows(self) -> dict[tuple[str, str], int]:
        return dict(self.liq_next_ns)

