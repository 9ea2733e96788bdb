"""A small exchange for tests: assets, a market, funded accounts, and a driver over `Engine.apply`."""

from __future__ import annotations

from typing import Any

from ringfence.engine.core import Engine
from ringfence.ledger.commands import CreateTransfers, OpenAccount, RegisterAsset
from ringfence.ledger.model import Transfer
from ringfence.money import parse_amount
from ringfence.trading.commands import ListMarket, PlaceOrder
from ringfence.app import new_engine

BTC_SCALE = 10**8  # BTC has 8 decimals
USDT = 10**6  # USDT has 6 decimals


class Driver:
    """Applies commands to an in-memory engine with increasing sequence numbers and time."""

    def __init__(self, engine: Engine | None = None, ts_ns: int = 1_700_000_000_000_000_000) -> None:
        self.engine = engine or new_engine()
        self.ts_ns = ts_ns
        self.tid = 1
        self.log: list[tuple[Any, int, list[Any]]] = []

    def apply(self, command: Any, advance_ns: int = 1_000) -> list[Any]:
        self.ts_ns += advance_ns
        seq = self.engine.last_seq + 1
        events = self.engine.apply(command, seq, self.ts_ns, b"\x00" * 32)
        self.log.append((command, self.ts_ns, events))
        return events

    def fund(self, owner: str, asset: str, amount: int, segment: str = "spot") -> None:
        self.apply(OpenAccount(owner, asset, "available", segment))
        ledger = self.engine.ledger
        world = ledger.world(asset)
        acct = ledger.get(owner, asset, "available", segment)
        self.apply(CreateTransfers([Transfer(self.tid, world.id, acct.id, amount)]))
        self.tid += 1

    def balance(self, owner: str, asset: str, segment: str = "spot") -> tuple[int, int]:
        """(posted balance, held) of an owner's available account (0, 0 if it does not exist)."""
        acct = self.engine.ledger.find(owner, asset, "available", segment)
        if acct is None:
            return (0, 0)
        return (acct.balance, acct.debits_pending)

    def place(self, owner: str, side: str, price: int, qty: int, **kw: Any) -> list[Any]:
        return self.apply(PlaceOrder(owner, kw.pop("symbol", "BTCUSDT"), side, price=price, quantity=qty, **kw))


def btcusdt(driver: Driver | None = None, **market: Any) -> Driver:
    """BTC (8 dp) / USDT (6 dp): tick 0.01 USDT (10_000), lot 0.0001 BTC (10_000)."""
    d = driver or Driver()
    d.apply(RegisterAsset("BTC", 8, "crypto", "bitcoin"))
    d.apply(RegisterAsset("USDT", 6, "crypto", "ethereum"))
    cfg: dict[str, Any] = dict(tick_size=10_000, lot_size=10_000, min_qty=10_000, min_notional=0, band_ppm=0)
    cfg.update(market)
    ev = d.apply(ListMarket("BTCUSDT", "BTC", "USDT", "spot", **cfg))
    assert type(ev[0]).__name__ == "MarketListed", ev
    return d


def price(usdt: str) -> int:
    """'61000.5' USDT per BTC -> quote minor units per whole BTC."""
    return parse_amount(usdt, 6, field="price")


def qty(btc: str) -> int:
    return parse_amount(btc, 8, field="quantity")
