"""Seeded trading workloads (exchange-core style) for the benchmark, the demo and soak tests.

`ExchangeCoreMix` reproduces the mix behind exchange-core's published single-book figures:
9 % GTC limit orders, 3 % IOC orders, 6 % cancels and 82 % moves (price amendments), about 6 % of
commands trading, ~1,000 accounts and ~1,000 resting orders over ~750 price levels. It follows the
book through the engine's own events (`observe`), so its cancels and moves name live orders.

Nothing here is used by the engine; it only produces commands. Randomness is a seeded
`random.Random` (not money: prices and quantities are drawn as integer tick and lot counts).
"""

from __future__ import annotations

import random
from typing import Any, Iterable

from ..engine.commands import Command
from ..ledger.commands import CreateTransfers, OpenAccount, RegisterAsset
from ..ledger.model import Transfer
from .commands import (
    AmendOrder,
    CancelOrder,
    ListMarket,
    OrderAccepted,
    OrderCanceled,
    OrderExpired,
    OrderRested,
    PlaceOrder,
    SetFeeTier,
    Trade,
)

__all__ = ["ExchangeCoreMix", "setup_commands", "fund_transfers", "TICK", "LOT"]

TICK = 10_000  # 0.01 USDT per BTC
LOT = 10_000  # 0.0001 BTC


def setup_commands(symbols: list[str], accounts: int) -> list[Command]:
    """Assets, markets (base assets named after the symbols) and funded accounts."""
    out: list[Command] = [RegisterAsset("USDT", 6, "crypto", "ethereum")]
    bases = []
    for symbol in symbols:
        base = symbol[: -len("USDT")]
        bases.append(base)
        out.append(RegisterAsset(base, 8, "crypto", "bitcoin"))
        out.append(
            ListMarket(
                symbol,
                base,
                "USDT",
                "spot",
                tick_size=TICK,
                lot_size=LOT,
                min_qty=LOT,
                band_ppm=0,
                max_open_orders_per_account=1000,
            )
        )
    out.append(SetFeeTier(0, 200, 500))
    for i in range(accounts):
        for asset in bases + ["USDT"]:
            out.append(OpenAccount(f"u{i}", asset, "available", "spot"))
    # Funding needs account ids, which exist only once these are applied: see `fund_transfers`.
    return out


def fund_transfers(engine: Any, assets: Iterable[str], accounts: int, amount: int = 10**15) -> list[Command]:
    """Deposits (from each asset's world account) for accounts `u0..` opened by `setup_commands`."""
    ledger = engine.ledger
    transfers = []
    tid = 1
    for asset in assets:
        world = ledger.world(asset)
        for i in range(accounts):
            acct = ledger.get(f"u{i}", asset, "available", "spot")
            transfers.append(Transfer(tid, world.id, acct.id, amount))
            tid += 1
    return [CreateTransfers(transfers[i : i + 8000]) for i in range(0, len(transfers), 8000)]


class ExchangeCoreMix:
    """Generates one market's commands and follows its book from the engine's events."""

    def __init__(
        self,
        symbol: str,
        *,
        seed: int,
        accounts: int = 1000,
        center_ticks: int = 3_000_000,
        target_orders: int = 1000,
        spread_levels: int = 750,
        shares: tuple[float, float, float, float] = (0.09, 0.03, 0.06, 0.0),  # float-ok: probabilities
    ) -> None:
        self.symbol = symbol
        #: (GTC limit, IOC, cancel, market) shares of commands; the rest are moves (amends).
        self.gtc, self.ioc, self.cancel, self.market = shares
        self.rng = random.Random(seed)
        self.accounts = accounts
        self.center = center_ticks
        self.target = target_orders
        self.spread = spread_levels
        self.live: list[int] = []  # order ids resting in the book
        self.pos: dict[int, int] = {}
        self.info: dict[int, list[Any]] = {}  # id -> [owner, is_buy, price_ticks]
        self.best_bid = center_ticks - 1
        self.best_ask = center_ticks + 1
        #: Share of moves that cross the spread (tuned so ~6 % of all commands trade).
        self.cross_rate = 0.026

    # ------------------------------------------------------------------ model upkeep

    def _add(self, oid: int, owner: str, is_buy: bool, price_ticks: int) -> None:
        if oid in self.pos:
            self.info[oid][2] = price_ticks
            return
        self.pos[oid] = len(self.live)
        self.live.append(oid)
        self.info[oid] = [owner, is_buy, price_ticks]

    def _drop(self, oid: int) -> None:
        i = self.pos.pop(oid, None)
        if i is None:
            return
        last = self.live.pop()
        if last != oid:
            self.live[i] = last
            self.pos[last] = i
        del self.info[oid]

    def observe(self, events: list[Any]) -> None:
        """Follow the book: which orders rest, which are gone, where the touch is."""
        for e in events:
            t = type(e)
            if t is OrderRested:
                self._add(e.order_id, e.owner, e.side == "BUY", e.price // TICK)
            elif t is Trade:
                if e.maker_leaves == 0:
                    self._drop(e.maker_order_id)
                if e.taker_side == "BUY":
                    self.best_ask = max(self.best_ask, e.price // TICK)
                else:
                    self.best_bid = min(self.best_bid, e.price // TICK)
                self._drop(e.taker_order_id) if e.taker_leaves == 0 else None
            elif t is OrderCanceled or t is OrderExpired:
                self._drop(e.order_id)
            elif t is OrderAccepted:
                pass

    def touch(self, market: Any) -> None:
        """Read the true best bid/ask from the live market (cheap; keeps prices realistic)."""
        if market.bid_prices:
            self.best_bid = market.bid_prices[-1] // TICK
        if market.ask_prices:
            self.best_ask = market.ask_prices[0] // TICK

    # ------------------------------------------------------------------ generation

    def _owner(self) -> str:
        return f"u{self.rng.randrange(self.accounts)}"

    def _qty(self) -> int:
        """A taker-sized quantity (lots, long-tailed)."""
        return (1 + int(self.rng.paretovariate(2.0) * 3)) * LOT

    def _maker_qty(self) -> int:
        """Resting orders are larger than takers, so a fill often leaves the maker in the book."""
        return self._qty() * 8

    def passive_price(self, is_buy: bool) -> int:
        """A resting price a few levels behind the touch (depth of hundreds of levels)."""
        depth = int(self.rng.expovariate(1 / (self.spread / 2)))
        if depth > self.spread:
            depth = self.rng.randrange(self.spread)
        if is_buy:
            return max(1, min(self.best_bid, self.best_ask - 1) - depth)
        return max(self.best_ask, self.best_bid + 1) + depth

    def prefill(self) -> list[Command]:
        out: list[Command] = []
        for _ in range(self.target):
            is_buy = self.rng.random() < 0.5
            out.append(PlaceOrder(self._owner(), self.symbol, "BUY" if is_buy else "SELL", price=self.passive_price(is_buy) * TICK, quantity=self._maker_qty()))
        return out

    def next(self) -> Command:
        rng = self.rng
        r = rng.random()
        live = self.live
        gtc_end = self.gtc
        ioc_end = gtc_end + self.ioc
        cancel_end = ioc_end + self.cancel
        market_end = cancel_end + self.market
        # Keep the book near its target size the way exchange-core's generator does: a cancel
        # becomes a placement while the book is short, and a placement a cancel while it is long.
        if ioc_end <= r < cancel_end and len(live) < self.target:
            r = 0.0
        elif r < gtc_end and len(live) > self.target * 1.1:
            r = ioc_end
        if r < gtc_end or not live:
            is_buy = rng.random() < 0.5
            if rng.random() < 0.12:  # a marketable limit that trades and rests the rest
                p = (self.best_ask + rng.randrange(3)) if is_buy else (self.best_bid - rng.randrange(3))
                return PlaceOrder(self._owner(), self.symbol, "BUY" if is_buy else "SELL", price=max(1, p) * TICK, quantity=self._qty())
            p = self.passive_price(is_buy)
            return PlaceOrder(self._owner(), self.symbol, "BUY" if is_buy else "SELL", price=max(1, p) * TICK, quantity=self._maker_qty())
        if r < ioc_end:
            is_buy = rng.random() < 0.5
            p = (self.best_ask + rng.randrange(4)) if is_buy else (self.best_bid - rng.randrange(4))
            return PlaceOrder(self._owner(), self.symbol, "BUY" if is_buy else "SELL", tif="IOC", price=max(1, p) * TICK, quantity=self._qty())
        if cancel_end <= r < market_end:
            is_buy = rng.random() < 0.5
            if rng.random() < 0.5:
                return PlaceOrder(self._owner(), self.symbol, "BUY" if is_buy else "SELL", "MARKET", quantity=self._qty())
            return PlaceOrder(self._owner(), self.symbol, "BUY" if is_buy else "SELL", "MARKET", quote_amount=rng.randrange(10, 2000) * 10**6)
        oid = live[rng.randrange(len(live))]
        owner, is_buy, p = self.info[oid]
        if r < cancel_end:
            return CancelOrder(owner, self.symbol, oid)
        # A move: mostly a small step; sometimes across the spread (it trades).
        if rng.random() < self.cross_rate:
            np_ = (self.best_ask + rng.randrange(2)) if is_buy else (self.best_bid - rng.randrange(2))
        else:
            step = rng.randrange(1, 6)
            np_ = p + step if rng.random() < 0.5 else p - step
            if is_buy and np_ >= self.best_ask:
                np_ = self.best_ask - 1
            elif not is_buy and np_ <= self.best_bid:
                np_ = self.best_bid + 1
            if np_ == p:
                np_ = p - 1 if is_buy else p + 1
        return AmendOrder(owner, self.symbol, oid, price=max(1, np_) * TICK)
