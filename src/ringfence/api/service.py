"""The exchange as a service: one durable engine node plus the read models the API serves.

Threads: the node's sequencer thread journals and applies commands; everything else (HTTP and
WebSocket handlers, read models, fan-out) runs on the asyncio loop thread. Once a batch is durable
the node hands its events to the loop, which first updates the read models (market data, order
history) and only then answers the requests of that batch — so a client that got its answer
always sees its own order in `openOrders` — and then publishes to WebSocket subscribers. With the
pipelined group commit (`pipeline=True`, `serve --pipeline`) the sequencer is
already applying later batches by then: what the read models need from the engine's state as of a
batch (the perpetuals' price samples) is read in an apply hook, right after that batch is applied.

Engine state (markets, balances, halts, the engine's own book) is read only through `read(fn)`,
which runs `fn(engine)` between batches (`Node.read`): the loop thread may wait for the batch being
applied, never sees it half applied, and gets plain values back, never live engine objects.
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import structlog

from ..engine.commands import Command, Event
from ..engine.node import Ack
from ..errors import NotDurable, RingfenceError
from ..risk.halts import market_status
from ..trading.book import Market
from ..trading.marketdata import MarketData
from ..trading.commands import OrderRejected, PlaceOrder
from ..trading.orders import check_place
from ..trading.state import trading_state
from .orders import OrderHistory
from ..derivatives.history import FuturesHistory
from ..app import new_node

__all__ = ["Exchange", "MarketInfo"]

log = structlog.get_logger("ringfence.api")
#: How long `check_order` waits for the sequencer to run its check between two batches.


@dataclass(frozen=True)
class MarketInfo:
    symbol: str
    base: str
    quote: str
    segment: str
    base_decimals: int
    quote_decimals: int
    tick: int
    lot: int
    min_qty: int
    max_qty: int
    min_notional: int
    status: str
    band_ppm: int
    ref_price: int


#: How many of the last replayed batches recovery keeps for the monitoring relay (a batch is many commands
#: under load; the relay's queue holds at most 100,000 events).
RECOVERED_BATCHES = 4096
#: serve --pipeline: journal batches written and not yet acknowledged before the sequencer waits (Node.wait_room)
PIPELINE_BATCHES_IN_FLIGHT = 4


class ReadModels:
    """The API's read models, fed every journal batch in order: market data, order history, futures
    history, and the last batches for the monitoring relay. Recovery feeds them while it replays;
    a hot standby (`serve --standby`) feeds them as it follows the stream, so a promoted standby
    serves at once, without replaying the journal (`Exchange.open(warm=...)`)."""

    def __init__(self) -> None:
        self.marketdata = MarketData()
        self.history = OrderHistory()
        #: Perpetual fills with realised PnL, income, funding rounds (derivatives/history.py).
        self.futures = FuturesHistory()
        #: The last batches replayed (first_seq, ts_ns, outputs), for the monitoring relay.
        self.recovered: collections.deque[tuple[int, int, list[list[Event]]]] = collections.deque(maxlen=RECOVERED_BATCHES)
        self.last_seq = 0

    def feed(self, engine: Any, batch: Any, outputs: list[list[Event]]) -> None:
        self.recovered.append((batch.first_seq, batch.ts_ns, outputs))
        self.marketdata.on_replay(engine, batch, outputs)
        self.futures.on_replay(engine, batch, outputs)
        self.history.on_replay(engine, batch, outputs)
        self.last_seq = engine.last_seq


@dataclass
class WarmStart:
    """What a promoted standby hands to its exchange: the engine it kept current, its journal
    writer's position, its data directory's lock, and the read models it fed as it followed."""

    engine: Any
    position: tuple[int, bytes, Path | None, int]
    lock: Any
    models: ReadModels


class Exchange:
    def __init__(self, data_dir: Path, *, fsync: bool = True, pipeline: bool = False) -> None:
        self.data_dir = Path(data_dir)
        # Reads run on the event loop, which must never wait for an fsync: with the pipelined group
        # commit they may show a batch up to one fsync before it is durable (never acknowledged to
        # anyone yet); everything pushed (answers, read models, feeds) waits for it (docs/journal.md).
        # prezero_segments: each record's fdatasync writes over zeros and commits no file-size metadata
        # (2-3x faster on ext4; docs/latency.md, "Pre-zeroed segments")
        # max_batches_in_flight: a pipelined sequencer waits while PIPELINE_BATCHES_IN_FLIGHT batches are
        # written and unacknowledged, so each batch gathers what arrives meanwhile instead of queueing
        # ever more small batches behind the disk (bench/matching.py's pipelined runs use the same cap)
        self.node = new_node(self.data_dir / "engine", fsync=fsync, pipeline=pipeline, durable_reads=False,
                             prezero_segments=True, max_batches_in_flight=PIPELINE_BATCHES_IN_FLIGHT if pipeline else 0)
        #: price samples read right after a batch was applied (apply hook), by first sequence number,
        #: until the batch is durable and reaches the read models (`_from_sequencer`)
        self._samples: dict[int, list[tuple[str, str, int]] | None] = {}
        self.marketdata = MarketData()
        self.history = OrderHistory()
        #: Perpetual fills with realised PnL, income, funding rounds (derivatives/history.py).
        self.futures = FuturesHistory()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._ready: collections.deque[tuple[asyncio.Future[list[Event]], Ack]] = collections.deque()
        #: Called on the loop thread after read models absorbed a batch: fn(first_seq, ts_ns, outputs, md_before).
        self.batch_subscribers: list[Callable[[int, int, list[list[Event]], dict[str, int]], None]] = []
        #: The last batches recovery replayed (first_seq, ts_ns, outputs): the monitoring relay re-sends from
        #: them what a crash kept from its stream (monitoring/stream.py `relay_recovered`), then drops them.
        self.recovered: collections.deque[tuple[int, int, list[list[Event]]]] = collections.deque(maxlen=RECOVERED_BATCHES)
        self.started_at = time.time()
        #: symbol -> (the sequence number it was read at, its MarketInfo): `listed_market`
        self._markets: dict[str, tuple[int, MarketInfo]] = {}

    # ------------------------------------------------------------------ lifecycle

    def open(self, warm: WarmStart | None = None) -> None:
        """Recover the engine and rebuild the read models from the journal (before serving); with
        `warm` (a promoted standby), take its engine and read models as they are, replaying nothing."""
        if warm is not None:
            if warm.models.last_seq != warm.engine.last_seq:
                raise RuntimeError(f"the standby's read models are at sequence {warm.models.last_seq}, "
                                   f"its engine at {warm.engine.last_seq}")
            self.node.adopt(warm.engine, warm.position, warm.lock)
            models = warm.models
        else:
            models = ReadModels()
            self.node.open(on_replay=models.feed)
        self.marketdata, self.history, self.futures = models.marketdata, models.history, models.futures
        self.recovered = models.recovered
        # From here on every batch reaches the read models, also one committed directly before
        # start() (the demo feed's first round): a restart replays it, so the live models must
        # have it too, or a restart would change history (a mark candle's open, say).
        if self._from_sequencer not in self.node.listeners:
            self.node.apply_hooks.append(self._sample_prices)
            self.node.listeners.append(self._from_sequencer)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self._from_sequencer in self.node.listeners, "open() the exchange first"
        self.loop = loop
        self.node.start()

    def close(self) -> None:
        self.node.close()

    def read(self, fn: Callable[[Any], Any]) -> Any:
        """`fn(engine)` between batches (see `Node.read`); return copies, not live objects."""
        return self.node.read(fn)

    @property
    def last_seq(self) -> int:
        """The last sequence number applied, as of the end of the last batch."""
        return self.node.last_seq

    # ------------------------------------------------------------------ commands

    #: Who this exchange's gateway is ("gateway:NODE"), journaled with each command it submits.
    source = ""

    async def submit(self, command: Command, source: str = "") -> list[Event]:
        """Journal and apply a command; return its events once read models include them. `source`
        (default: this gateway) is journaled with the command: who submitted it."""
        loop = self.loop
        assert loop is not None, "start() the exchange first"
        fut: asyncio.Future[list[Event]] = loop.create_future()
        ack = self.node.submit(command, source or self.source)

        def done(a: Ack) -> None:
            if a.error is not None:  # refused before the journal: no batch will follow
                loop.call_soon_threadsafe(_settle, fut, a)
            else:
                self._ready.append((fut, a))

        ack.add_done_callback(done)
        return await fut

    def _sample_prices(self, engine: Any, first_seq: int, ts_ns: int) -> None:
        """Apply hook, on the sequencer thread right after the batch: the perpetuals' mark and index,
        once a second, from the state as of this batch; kept until the batch is durable."""
        try:
            samples = self.futures.prices.sample(engine, ts_ns)
        except Exception:  # a read model's sampling must never stop the sequencer; it is logged
            log.exception("price_samples.failed")
            samples = None
        if samples:
            self._samples[first_seq] = samples

    def _from_sequencer(self, first_seq: int, ts_ns: int, commands: list[Command], outputs: list[list[Event]]) -> None:
        """Listener: the batch is durable (its acknowledgements are resolved): on to the loop.
        Before start() (a command run directly, on the calling thread, with no loop and no client
        connected yet) the read models absorb it at once, as a replay of the journal would; batch
        subscribers, which push to clients, are not called."""
        samples = self._samples.pop(first_seq, None)
        if self.loop is None:
            self._into_models(first_seq, ts_ns, commands, outputs, samples)
            self.futures.touched.clear()  # nobody listens yet (as in a replay)
            return
        self.loop.call_soon_threadsafe(self._absorb, first_seq, ts_ns, commands, outputs, samples)

    def _into_models(self, first_seq: int, ts_ns: int, commands: list[Command], outputs: list[list[Event]],
                     price_samples: list[tuple[str, str, int]] | None) -> None:
        """One durable batch into the read models (its price sample first)."""
        if price_samples:
            self.futures.prices.fold(ts_ns, price_samples)
        self.marketdata.on_batch(first_seq, ts_ns, commands, outputs)
        self.futures.on_batch(first_seq, ts_ns, commands, outputs)  # before history: its user-stream callbacks read fill PnL
        self.history.on_batch(first_seq, ts_ns, commands, outputs)

    def _absorb(self, first_seq: int, ts_ns: int, commands: list[Command], outputs: list[list[Event]],
                price_samples: list[tuple[str, str, int]] | None = None) -> None:
        before = {s: sd.update_id for s, sd in self.marketdata.symbols.items()}
        self._into_models(first_seq, ts_ns, commands, outputs, price_samples)
        ready = self._ready
        while ready:
            fut, ack = ready[0]
            if ack.seq > first_seq + len(outputs) - 1:
                break  # belongs to a later batch
            ready.popleft()
            _settle(fut, ack)
        for fn in self.batch_subscribers:
            try:
                fn(first_seq, ts_ns, outputs, before)
            except Exception:  # a subscriber must never stop the read models; it is logged
                log.exception("batch_subscriber.failed", subscriber=getattr(fn, "__qualname__", repr(fn)))

    async def check_order(self, command: PlaceOrder) -> OrderRejected | None:
        """Every check placing `command` would run, against one consistent state; places nothing.

        Runs between two batches (`Node.read`): the strict decode and the engine's guards (halts)
        raise as `submit` would; market rules and the balance come back as the `OrderRejected`
        placing would have produced, or None. A node that has stopped refuses as `submit` does.
        """
        if self.node.failed is not None:
            raise NotDurable(f"the node has stopped: {self.node.failed}")
        prepared, _ = self.node.prepare(command)

        def check(engine: Any) -> OrderRejected | None:
            engine.precheck(prepared)
            return check_place(engine, prepared)

        return self.read(check)

    # ------------------------------------------------------------------ queries (loop thread)

    def markets(self) -> list[MarketInfo]:
        """The spot-style markets (spot, tokenized). Perpetuals (`Market.contract`) are listed by the
        futures API (`/fapi/v1/exchangeInfo`): in a Binance spot listing `BTCUSDTPERP` would read as
        a second BTC/USDT market."""
        return self.read(lambda engine: [_market_info(engine, s) for s, m in sorted(trading_state(engine).markets.items())
                                         if m.contract is None])

    def market(self, symbol: str) -> MarketInfo:
        """Raises KeyError for an unknown symbol (callers check `has_market` first)."""
        info = self.listed_market(symbol)
        if info is None:
            raise KeyError(symbol)
        return info

    def listed_market(self, symbol: str) -> MarketInfo | None:
        """`market(symbol)`, or None for a symbol not listed: the state after the last batch applied.

        Kept per symbol with the sequence number it was read at (`MarketInfo` is immutable) and
        reused while no batch has been applied since (`node.last_seq`, which moves only once a
        whole batch is in): every order, and the read models' and monitoring's handling of its
        events, asked the engine for the same market two or three times, each a read between batches
        with the halt checks of `market_status` (~8% of an order's time on the event loop, issue 18).
        A read that would have waited for the batch being applied gets the state just before it,
        as if it had come a moment earlier; whoever has seen a later batch's answer sees a later
        `last_seq`, so never a market older than what it has seen. Unknown symbols are not kept."""
        cache = self._markets
        cached = cache.get(symbol)
        if cached is not None and cached[0] == self.node.last_seq:
            return cached[1]

        def read(engine: Any) -> tuple[int, MarketInfo | None]:
            if symbol not in trading_state(engine).markets:
                return engine.last_seq, None
            return engine.last_seq, _market_info(engine, symbol)

        seq, info = self.read(read)
        if info is not None:
            cache[symbol] = (seq, info)
        return info

    def rates(self, owner: str) -> tuple[int, int]:
        """(maker, taker) fee rates of `owner`, in millionths."""
        return self.read(lambda engine: trading_state(engine).rates(owner))

    def listed_or_delisted(self, symbol: str) -> MarketInfo | None:
        """A market for reading its orders and trades: a listed one, or one delisted since (its spec
        as the delisting event gave it, status DELISTED); None for a symbol never listed."""
        def read(engine: Any) -> MarketInfo | None:
            if symbol in trading_state(engine).markets:
                return _market_info(engine, symbol)
            d = self.history.delisted.get(symbol)
            if d is None or not d.base:
                return None
            assets = engine.ledger.assets
            return MarketInfo(symbol, d.base, d.quote, d.segment, assets.get(d.base).decimals, assets.get(d.quote).decimals,
                              d.tick, d.lot, 0, 0, 0, "DELISTED", 0, 0)
        info: MarketInfo | None = self.read(read)
        return info

    def has_market(self, symbol: str) -> bool:
        cached = self._markets.get(symbol)
        if cached is not None and cached[0] == self.node.last_seq:
            return True
        return self.read(lambda engine: symbol in trading_state(engine).markets)

    def balances(self, owner: str) -> list[tuple[str, int, int, int]]:
        """(asset, decimals, free, locked) per asset, summed over the owner's segments.

        Binance's account has one balance per asset; ringfence keeps one per segment (spot,
        tokenized, ...). The Binance view shows what the user owns in total; `/v1/account` shows
        the split, which is what each market can use. Read in one go between batches, so a hold
        moving funds from free to locked is never seen half done. The `derivatives` segment is
        the futures wallet (Binance's USDⓈ-M account, `/fapi/v2/account`), not part of this one:
        collateral enters and leaves it only by `/sapi/v1/asset/transfer`.
        """

        def read(engine: Any) -> list[tuple[str, int, int, int]]:
            ledger = engine.ledger
            out = []
            for asset in list(ledger.assets):
                free = locked = 0
                found = False
                for segment in ledger.segments:
                    if segment == "derivatives":
                        continue
                    account = ledger.find(owner, asset.code, "available", segment)
                    if account is not None:
                        found = True
                        free += account.available
                        locked += account.debits_pending
                if found:
                    out.append((asset.code, asset.decimals, free, locked))
            return out

        return self.read(read)

    def segment_balances(self, owner: str) -> list[tuple[str, str, int, int, int]]:
        """(segment, asset, decimals, free, locked) for each of the owner's available accounts."""

        def read(engine: Any) -> list[tuple[str, str, int, int, int]]:
            ledger = engine.ledger
            rows = []
            for segment in ledger.segments:
                for asset in list(ledger.assets):
                    account = ledger.find(owner, asset.code, "available", segment)
                    if account is not None:
                        rows.append((segment, asset.code, asset.decimals, account.available, account.debits_pending))
            return rows

        return self.read(read)


def _market_info(engine: Any, symbol: str) -> MarketInfo:
    m: Market = trading_state(engine).markets[symbol]
    assets = engine.ledger.assets
    return MarketInfo(
        m.symbol,
        m.base,
        m.quote,
        m.segment,
        assets.get(m.base).decimals,
        assets.get(m.quote).decimals,
        m.tick,
        m.lot,
        m.min_qty,
        m.max_qty,
        m.min_notional,
        market_status(engine, symbol),  # halts, the band breaker and a halted shard, most severe first
        m.band_ppm,
        m.ref_price,
    )


def _settle(fut: asyncio.Future[list[Event]], ack: Ack) -> None:
    if fut.done():
        return
    if ack.error is not None:
        fut.set_exception(ack.error if isinstance(ack.error, BaseException) else RingfenceError(str(ack.error)))
    else:
        assert ack.events is not None
        fut.set_result(ack.events)
