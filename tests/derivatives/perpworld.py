"""A small perpetuals exchange for tests: BTC/USDT spot, the BTCUSDTPERP perpetual, funded accounts."""

from __future__ import annotations

from typing import Any

from ringfence.derivatives.commands import FuturesTransfer, ListPerpetual, PlacePerpOrder
from ringfence.engine.core import CommandRejected

from tests.trading.scenario import Driver, btcusdt, price, qty

__all__ = ["PERP", "BRACKETS", "USDT", "perp_world", "Driver", "price", "qty", "order", "transfer", "rejected", "with_index"]

PERP = "BTCUSDTPERP"
USDT = 10**6
#: Binance-like BTCUSDT brackets (notional caps in USDT minor units).
BRACKETS = [
    [50_000 * USDT, 125, 4_000, 0],
    [250_000 * USDT, 100, 5_000, 50 * USDT],
    [3_000_000 * USDT, 50, 10_000, 1_300 * USDT],
    [20_000_000 * USDT, 20, 25_000, 46_300 * USDT],
]


def perp_world(owners: tuple[str, ...] = ("alice", "bob", "carol"), usdt: int = 100_000, **perp: Any) -> Driver:
    d = btcusdt()
    cfg: dict[str, Any] = dict(tick_size=10_000, lot_size=10_000, min_qty=10_000, default_leverage=10,
                               impact_notional=1_000 * USDT)
    cfg.update(perp)
    ev = d.apply(ListPerpetual(PERP, "BTC", "USDT", "BTCUSDT", BRACKETS, **cfg))
    assert not any(isinstance(e, CommandRejected) for e in ev), ev
    for o in owners:
        d.fund(o, "USDT", usdt * USDT)
        ev = d.apply(FuturesTransfer(o, "USDT", usdt * USDT, "MAIN_UMFUTURE"))
        assert not any(isinstance(e, CommandRejected) for e in ev), ev
    return d


def order(d: Driver, owner: str, side: str, px: str, q: str, **kw: Any) -> list[Any]:
    kw.setdefault("order_type", "LIMIT")
    if kw["order_type"] == "MARKET":
        kw.setdefault("tif", "IOC")
        return d.apply(PlacePerpOrder(owner, PERP, side, quantity=qty(q), **kw))
    return d.apply(PlacePerpOrder(owner, PERP, side, price=price(px), quantity=qty(q), **kw))


def transfer(d: Driver, owner: str, amount: int, direction: str = "MAIN_UMFUTURE") -> list[Any]:
    return d.apply(FuturesTransfer(owner, "USDT", amount, direction))


def rejected(events: list[Any]) -> Any:
    """The CommandRejected or OrderRejected among `events`, or None."""
    for e in events:
        if type(e).__name__ in ("CommandRejected", "OrderRejected"):
            return e
    return None


def with_index(d: Driver) -> Any:
    """Give BTCUSDT an index of one signed venue (v1); returns `quote(price_str)` that moves it."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from ringfence.index.commands import ConfigureIndex, RegisterFeedKey
    from ringfence.index.feeds import FeedSigner

    signer = FeedSigner("v1", Ed25519PrivateKey.from_private_bytes(b"\x07" * 32))
    for cmd in (RegisterFeedKey("v1", signer.public_key_hex),
                ConfigureIndex("BTCUSDT", [("v1", 1)], 1, stale_after_ns=3600 * 10**9)):
        assert not rejected(d.apply(cmd)), cmd

    def quote(px: str) -> list[Any]:
        ev = d.apply(signer.quote("BTCUSDT", price(px), d.ts_ns + 1_000))
        assert not rejected(ev), ev
        return ev

    return quote
