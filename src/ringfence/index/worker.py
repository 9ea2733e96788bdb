"""Feed workers: threads outside the engine that submit signed quotes to a node.

`start_demo_feed(exchange)` is what `ringfence serve --demo` runs: it registers the simulator's
five demo venues (`sim1`..`sim5`, keys derived from their names — demo only), configures the
BTCUSDT and ETHUSDT indexes (3 of 5 live needed, ±1 % clamp, 10 s staleness), submits one round
of quotes before the server accepts requests (so the markets start ACTIVE with a live index),
then quotes once a second from a daemon thread. Idempotent across restarts: keys and indexes are
registered only when missing, and sequence numbers continue above the engine's last accepted.
A symbol whose index was configured with other venues (a real feed) is left alone.

Once staff are registered, registering keys and configuring indexes needs the staff operator
quorum: the demo feed signs with the demo operators' keys in `DIR/demo-staff.json` (written by
`serve --demo`); without that file it only quotes for indexes that exist already.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import structlog

from ..errors import RingfenceError
from .commands import ConfigureIndex, RegisterFeedKey, SubmitQuote
from .simulator import VenueSimulator, demo_venues

__all__ = ["FeedWorker", "setup_demo_feed", "start_demo_feed", "demo_feed_registered", "DEMO_SYMBOLS", "DEMO_SEED"]

log = structlog.get_logger("ringfence.index")
DEMO_SYMBOLS = ("BTCUSDT", "ETHUSDT")
DEMO_SEED = 20261203


class FeedWorker:
    """Every `interval_s`, asks each source for quotes (`fn(now_ns) -> [SubmitQuote]`) and submits them."""

    def __init__(self, node: Any, sources: Iterable[Callable[[int], list[SubmitQuote]]], *, interval_s: float = 1.0,  # float-ok: a wait, not money
                 ready: Callable[[], bool] = lambda: True) -> None:
        self.node = node
        self.sources = list(sources)
        self.interval_s = interval_s
        self.ready = ready
        self.stop = threading.Event()
        self.submitted = 0
        self.refused = 0
        self.thread: threading.Thread | None = None

    def round(self) -> None:
        from ..engine.core import CommandRejected

        now = time.time_ns()
        quotes = [q for source in self.sources for q in source(now)]
        for ack in [self.node.submit(q) for q in quotes]:
            try:
                events = ack.wait(10)
            except RingfenceError:
                self.refused += 1
                continue
            if any(isinstance(e, CommandRejected) for e in events):
                self.refused += 1
            else:
                self.submitted += 1
        if self.node.failed is not None or self.node.writer is None:
            self.stop.set()

    def run(self) -> None:
        while not self.stop.wait(self.interval_s):
            if not self.ready():
                continue
            try:
                self.round()
            except RingfenceError as err:  # the node stopped: nothing more to feed
                log.info("index.feed_stopped", error=str(err))
                return

    def start(self) -> "FeedWorker":
        self.thread = threading.Thread(target=self.run, name="ringfence-index-feed", daemon=True)
        self.thread.start()
        return self


def _demo_approvers(node: Any) -> tuple[Any, list[str]] | None:
    """A desk holding the demo operators' keys (`DIR/demo-staff.json` beside the node) and the
    quorum of them that signs, or None when the file is missing or cannot reach the quorum."""
    from ..staff.decisions import OPERATOR, read_key_file
    from ..staff.desk import StaffDesk
    from ..staff.state import staff_of

    data_dir = getattr(node, "data_dir", None)
    path = Path(data_dir).parent / "demo-staff.json" if data_dir is not None else None
    if path is None or not path.is_file():
        return None
    state = staff_of(node.engine)
    keys = []
    for m in sorted(state.active(OPERATOR), key=lambda m: m.staff_id):
        try:
            key = read_key_file(path, m.staff_id)
        except RingfenceError:
            continue
        if key.public_hex == m.public_key:
            keys.append(key)
    if len(keys) < state.quorum:
        return None
    return StaffDesk(keys, time.time_ns), [k.staff_id for k in keys[: state.quorum]]


def demo_feed_registered(engine: Any) -> bool:
    """Did a demo primary register the simulated venues' feed keys in this journal? A promoted
    standby then carries the demo's feed on (it has no `--demo` of its own; without quotes its
    perpetuals would go REDUCE_ONLY once the last ones are stale). The demo venues' keys come from
    public seeds: a production journal registers its own venues' keys, never these."""
    from .state import index_state

    registered = index_state(engine).feed_keys
    signers = VenueSimulator(DEMO_SYMBOLS[0], 1, DEMO_SEED).signers
    return bool(signers) and all(registered.get(s.venue) == s.public_key_hex for s in signers)


def setup_demo_feed(node: Any, seed: int = DEMO_SEED) -> list[VenueSimulator]:
    """Register the demo venues and indexes where missing; one simulator per demo symbol."""
    from .auth import approved_by, staff_registered
    from .state import index_state

    engine = node.engine
    state = index_state(engine)
    venues = demo_venues("")
    sims = [VenueSimulator(symbol, 1, seed + i) for i, symbol in enumerate(DEMO_SYMBOLS)]
    commands: list[Any] = [RegisterFeedKey(s.venue, s.public_key_hex) for s in sims[0].signers
                           if state.feed_keys.get(s.venue) != s.public_key_hex]
    wanted = []
    markets = engine.components["trading"].markets
    for sim in sims:
        s = state.symbols.get(sim.symbol)
        if sim.symbol not in markets or (s is not None and set(s.sources) != set(venues)):
            continue
        if s is None:
            commands.append(ConfigureIndex(sim.symbol, [(v, 1) for v in venues], 3))
        wanted.append(sim)
    if commands and staff_registered(engine):
        signing = _demo_approvers(node)
        if signing is None:
            log.info("index.demo_feed_skipped", reason="staff are registered and DIR/demo-staff.json cannot reach "
                     "the operator quorum: index changes need their signatures")
            keys_missing = any(isinstance(c, RegisterFeedKey) for c in commands)
            wanted = [] if keys_missing else [sim for sim in wanted if sim.symbol in state.symbols]
            commands = []
        else:
            desk, approvers = signing
            commands = [approved_by(desk, approvers, c, state.version + i) for i, c in enumerate(commands)]
    if commands:
        node.execute_many(commands)
    for sim in wanted:
        m = markets[sim.symbol]
        s = state.symbols[sim.symbol]
        sim.tick = m.tick
        sim.price = s.index_minor or m.ref_price or m.last_price or 1
        for signer in sim.signers:
            q = s.quotes.get(signer.venue)
            signer.last_seq[sim.symbol] = q.seq if q else 0
    return wanted


def _feed_enabled() -> bool:
    return os.environ.get("RINGFENCE_DEMO_FEED", "1") != "0"


def refresh_demo_feed(node: Any, clock: Callable[[], int] = time.time_ns) -> None:
    """Before the demo seeds its books on a restart: one fresh round for the symbols the demo feed
    already runs, so stale sources do not leave their markets REDUCE_ONLY while the market maker's
    ladder is placed again. Nothing on a first start (no demo market is listed yet)."""
    if not _feed_enabled():
        return
    sims = [sim for sim in setup_demo_feed(node) if sim.symbol in index_symbols_of(node)]
    if sims:
        node.execute_many([q for sim in sims for q in sim.step(clock())], raise_rejected=False)


def index_symbols_of(node: Any) -> set[str]:
    from .state import index_state

    return set(index_state(node.engine).symbols)


def start_demo_feed(exchange: Any) -> FeedWorker | None:
    """Set up the demo feed, submit one round now, then quote every second once the node runs."""
    if not _feed_enabled():
        return None  # RINGFENCE_DEMO_FEED=0: no feed, no index (the demo as before issue 17)
    seed = int(os.environ.get("RINGFENCE_DEMO_FEED_SEED", DEMO_SEED))
    # every command of the feed is journaled as the worker's, its set-up and first round too: a promoted
    # standby's first writes are these, and `ringfence journal sources` showed them with no submitter
    node = exchange.node.as_source("worker:index-feed")
    sims = setup_demo_feed(node, seed)
    if not sims:
        return None
    first = [q for sim in sims for q in sim.step(time.time_ns())]
    node.execute_many(first, raise_rejected=False)
    worker = FeedWorker(node, [sim.step for sim in sims], ready=lambda: exchange.loop is not None)
    worker.seed = seed  # type: ignore[attr-defined]
    return worker.start()
