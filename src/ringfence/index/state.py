"""The index module's engine state: feed keys, per-symbol parameters, each source's last quote,
the current index, the moving-average basis samples and the operator override.

Snapshot is `None` while nothing is configured (the engine then leaves the component out, so a
journal that never used the index hashes exactly as before the module existed).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ..engine.core import Engine

__all__ = ["SourceQuote", "SymbolIndex", "IndexState", "index_state", "MAX_SOURCES", "MAX_SYMBOLS",
           "MAX_VENUES", "MAX_SAMPLES"]

MAX_SOURCES = 32  # per symbol
MAX_SYMBOLS = 1_000
MAX_VENUES = 256
MAX_SAMPLES = 3_600  # moving-average basis samples kept per symbol (window / sample period)


@dataclass(slots=True)
class SourceQuote:
    """The last accepted quote of one venue for one symbol."""

    price_minor: int
    source_ts_ns: int
    received_ns: int
    seq: int

    @property
    def at_ns(self) -> int:
        """When the price was true: the source's time, never later than when the engine got it."""
        return min(self.source_ts_ns, self.received_ns)

    def row(self) -> list[int]:
        return [self.price_minor, self.source_ts_ns, self.received_ns, self.seq]


@dataclass(slots=True)
class SymbolIndex:
    symbol: str
    sources: dict[str, int]  # venue -> weight
    min_sources: int
    clamp_ppm: int
    stale_after_ns: int
    max_ahead_ns: int
    ma_window_ns: int
    ma_sample_ns: int
    quotes: dict[str, SourceQuote] = field(default_factory=dict)
    #: The last good index (0: none yet); frozen while fewer than `min_sources` are live.
    index_minor: int = 0
    median_minor: int = 0
    index_ts_ns: int = 0
    live_sources: int = 0
    #: Fewer than `min_sources` live (the index's REDUCE_ONLY halt was raised).
    short: bool = False
    #: Operator override of the band reference (0: the band follows the index).
    override_minor: int = 0
    #: `(ts_ns, basis_minor)`: (mid or last) − index, at most one per `ma_sample_ns`.
    samples: deque[tuple[int, int]] = field(default_factory=deque)
    next_sample_ns: int = 0

    def is_live(self, q: SourceQuote, now_ns: int) -> bool:
        return now_ns - q.at_ns <= self.stale_after_ns

    def live(self, now_ns: int) -> list[tuple[str, SourceQuote]]:
        """Live sources, by venue name (a fixed order: the result never depends on dict history)."""
        return [(v, self.quotes[v]) for v in sorted(self.quotes) if v in self.sources and self.is_live(self.quotes[v], now_ns)]

    def row(self) -> list[Any]:
        return [
            self.symbol, sorted([v, w] for v, w in self.sources.items()), self.min_sources, self.clamp_ppm,
            self.stale_after_ns, self.max_ahead_ns, self.ma_window_ns, self.ma_sample_ns,
            [[v, self.quotes[v].row()] for v in sorted(self.quotes)],
            self.index_minor, self.median_minor, self.index_ts_ns, self.live_sources, self.short,
            self.override_minor, [list(s) for s in self.samples], self.next_sample_ns,
        ]

    @classmethod
    def from_row(cls, row: list[Any]) -> "SymbolIndex":
        s = cls(row[0], {v: w for v, w in row[1]}, *row[2:8])
        s.quotes = {v: SourceQuote(*q) for v, q in row[8]}
        (s.index_minor, s.median_minor, s.index_ts_ns, s.live_sources, s.short, s.override_minor) = row[9:15]
        s.samples = deque((t, b) for t, b in row[15])
        s.next_sample_ns = row[16]
        return s


class IndexState:
    """Engine component "index"."""

    def __init__(self, engine: Engine | None = None) -> None:
        self.feed_keys: dict[str, str] = {}  # venue -> Ed25519 public key (hex)
        #: Never rebound on a live state (a restore makes a new state): a perpetual's contract keeps
        #: this dict from its first use (derivatives/contract.py, `Contract._index_symbols`).
        self.symbols: dict[str, SymbolIndex] = {}
        #: Admin change counter: the nonce in every approval (an approval is good for one change).
        self.version = 0
        #: The earliest sequencer time at which a live source goes stale (0: none is live).
        self.next_check_ns = 0

    def next_expiry(self, now_ns: int) -> int:
        """The earliest time after `now_ns` at which a source that is live now goes stale (0: none)."""
        soonest = 0
        for s in self.symbols.values():
            for venue, q in s.quotes.items():
                due = q.at_ns + s.stale_after_ns + 1
                if venue in s.sources and due > now_ns and (soonest == 0 or due < soonest):
                    soonest = due
        return soonest

    def check_invariants(self) -> None:
        assert len(self.symbols) <= MAX_SYMBOLS and len(self.feed_keys) <= MAX_VENUES, "index limits"
        for s in self.symbols.values():
            assert 1 <= s.min_sources <= len(s.sources) <= MAX_SOURCES, f"{s.symbol}: bad source counts"
            assert len(s.samples) <= MAX_SAMPLES, f"{s.symbol}: too many basis samples"
            assert s.index_minor >= 0 and s.override_minor >= 0


def snapshot(state: IndexState) -> list[Any] | None:
    if not state.feed_keys and not state.symbols and not state.version:
        return None
    return [
        sorted([v, k] for v, k in state.feed_keys.items()),
        [state.symbols[s].row() for s in sorted(state.symbols)],
        state.version,
        state.next_check_ns,
    ]


def restore(engine: Engine, data: list[Any]) -> IndexState:
    state = IndexState(engine)
    keys, symbols, state.version, state.next_check_ns = data
    state.feed_keys = {v: k for v, k in keys}
    state.symbols = {row[0]: SymbolIndex.from_row(row) for row in symbols}
    return state


def index_state(engine: Engine) -> IndexState:
    return engine.components["index"]  # type: ignore[no-any-return]
