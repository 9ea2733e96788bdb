"""A BTCUSDT spot shard with an index of five signed venues, driven like the node drives an engine:
precheck at the edge (a refusal is never journaled), then `apply` with the sequencer's time."""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ringfence.app import new_engine
from ringfence.engine.core import CommandRejected, Engine
from ringfence.errors import RingfenceError
from ringfence.index.commands import ConfigureIndex, RegisterFeedKey, SubmitQuote
from ringfence.index.feeds import FeedSigner
from ringfence.ledger.commands import CreateTransfers, OpenAccount, RegisterAsset
from ringfence.ledger.model import Transfer
from ringfence.trading.commands import ListMarket, PlaceOrder

USDT = 10**6
BTC = 10**8
T0 = 1_700_000_000_000_000_000
SEC = 10**9
VENUES = ("v1", "v2", "v3", "v4", "v5")


def usdt(x: int | str) -> int:
    from ringfence.money import parse_amount

    return parse_amount(str(x), 6)


class Shard:
    def __init__(self, *, venues: tuple[str, ...] = VENUES, min_sources: int = 3, clamp_ppm: int = 10_000,
                 stale_after_s: int = 10, band_ppm: int = 100_000, index: bool = True,
                 signers: list[FeedSigner] | None = None) -> None:
        self.engine: Engine = new_engine()
        self.now = T0
        self.log: list[tuple[Any, int]] = []  # what was journaled: (command, ts_ns)
        if signers is not None:
            venues = tuple(f.venue for f in signers)
            self.signers = {f.venue: f for f in signers}
        else:
            self.signers = {v: FeedSigner(v, Ed25519PrivateKey.from_private_bytes(bytes([i + 1]) * 32)) for i, v in enumerate(venues)}
        self.apply(RegisterAsset("BTC", 8, "crypto", "bitcoin"))
        self.apply(RegisterAsset("USDT", 6, "crypto", "ethereum"))
        self.apply(ListMarket("BTCUSDT", "BTC", "USDT", "spot", tick_size=10_000, lot_size=10_000, min_qty=10_000, band_ppm=band_ppm))
        self.tid = 1
        if index:
            for v, s in self.signers.items():
                self.apply(RegisterFeedKey(v, s.public_key_hex))
            self.apply(ConfigureIndex("BTCUSDT", [(v, 1) for v in venues], min_sources, clamp_ppm=clamp_ppm,
                                      stale_after_ns=stale_after_s * SEC))

    def submit(self, command: Any, advance_ns: int = 1_000) -> list[Any]:
        """Precheck (raises, nothing journaled) then apply; returns the events."""
        self.engine.precheck(command)
        return self.apply(command, advance_ns)

    def apply(self, command: Any, advance_ns: int = 1_000) -> list[Any]:
        self.now += advance_ns
        self.log.append((command, self.now))
        return self.engine.apply(command, self.engine.last_seq + 1, self.now, b"\x00" * 32)

    def refused(self, command: Any, advance_ns: int = 1_000) -> str:
        """The code a command is refused with, at the edge or by the handler; asserts it was refused."""
        try:
            self.engine.precheck(command)
        except RingfenceError as err:
            return err.code
        events = self.apply(command, advance_ns)
        rejected = [e for e in events if isinstance(e, CommandRejected)]
        assert rejected, f"{type(command).__name__} was accepted: {events}"
        return rejected[0].code

    def quote(self, venue: str, price_minor: int, *, age_ns: int = 0, advance_ns: int = 1_000) -> SubmitQuote:
        return self.signers[venue].quote("BTCUSDT", price_minor, self.now + advance_ns - age_ns)

    def round(self, prices: dict[str, int], advance_ns: int = SEC) -> list[Any]:
        """Every venue in `prices` quotes at the same sequencer time (the first one advances it)."""
        events: list[Any] = []
        for i, (venue, p) in enumerate(prices.items()):
            step = advance_ns if i == 0 else 0
            events += self.submit(self.quote(venue, p, advance_ns=step), step)
        return events

    def fund(self, owner: str, asset: str, amount: int) -> None:
        self.apply(OpenAccount(owner, asset, "available", "spot"))
        ledger = self.engine.ledger
        self.apply(CreateTransfers([Transfer(self.tid, ledger.world(asset).id, ledger.get(owner, asset, "available", "spot").id, amount)]))
        self.tid += 1

    def place(self, owner: str, side: str, price_minor: int, qty: int) -> list[Any]:
        return self.submit(PlaceOrder(owner, "BTCUSDT", side, price=price_minor, quantity=qty))

    def index(self) -> Any:
        return self.engine.components["index"].symbols["BTCUSDT"]

    def market(self) -> Any:
        return self.engine.components["trading"].markets["BTCUSDT"]

    def status(self) -> str:
        from ringfence.risk.halts import market_status

        return market_status(self.engine, "BTCUSDT")
