"""The auditor's index: signed quotes, staleness, the clamped median, REDUCE_ONLY, the band.

Restated from docs/index.md (never imported from `ringfence.index`): a source is live while
`now - min(source time, time applied) <= stale_after_ns`; the index of the live sources is
`floor(sum(w * clamp(p)) / sum(w))` with each price clamped to `[ceil(m * (1 - c)), floor(m * (1 + c))]`
around their median `m` (an even count: the floor of the mean of the two middle ones); fewer than
`min_sources` live → the index freezes and the market gets the halt `index:<SYMBOL>` (REDUCE_ONLY),
lifted when enough are live again; the market's reference price follows the index. Quotes are
refused in the engine's order: at the edge (fields, symbol, venue, key, sequence, source time
order, signature), then in apply (ahead of time, stale). The model knows which signatures the
runner made genuinely; it does no cryptography. Feed keys and configuration are changed by the
staff operator quorum once staff exist (the halts model's `check_quorum`), over the index change
counter `index_version`, which every accepted admin change moves.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from .books import PPM, Books, Refuse

__all__ = ["IndexModel", "MIndex"]


@dataclass
class MIndex:
    sources: dict[str, int]  # venue -> weight
    min_sources: int
    clamp_ppm: int
    stale_after_ns: int
    max_ahead_ns: int
    quotes: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)  # venue -> (price, source ts, applied, seq)
    index: int = 0
    short: bool = False
    live: tuple[str, ...] = ()


class IndexModel(Books):
    markets: dict[str, Any]  # from TradingModel
    halts: dict[str, Any]  # from HaltsModel
    now_ns: int
    time_effects: bool

    def _init_index(self) -> None:
        self.feed_keys: set[str] = set()  # venues whose key the runner registered
        self.indexes: dict[str, MIndex] = {}
        self.index_version = 0  # the engine's IndexState.version: what index approvals sign

    # ------------------------------------------------------------------ the formula, restated

    @staticmethod
    def index_of(prices: list[int], weights: list[int], clamp_ppm: int) -> int:
        ordered = sorted(prices)
        n = len(ordered)
        median = ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) // 2
        lo = -(-median * (PPM - clamp_ppm) // PPM)
        hi = median * (PPM + clamp_ppm) // PPM
        clamped = [min(max(p, lo), hi) for p in prices]
        return sum(w * c for w, c in zip(weights, clamped)) // sum(weights)

    def _recompute(self, symbol: str, seq: int, ev: list[tuple[Any, ...]]) -> None:
        x = self.indexes[symbol]
        live = [(v, q) for v, q in sorted(x.quotes.items()) if v in x.sources and self.now_ns - min(q[1], q[2]) <= x.stale_after_ns]
        halt_id = f"index:{symbol}"
        if tuple(v for v, _ in live) != x.live:  # the engine's hook did work: a source went stale
            x.live = tuple(v for v, _ in live)
            self.time_effects = True
        if len(live) < x.min_sources:
            if not x.short:
                x.short = True
                self.time_effects = True
                if halt_id not in self.halts:
                    from .halts import MHalt

                    self.halts[halt_id] = MHalt("market", symbol, "REDUCE_ONLY", seq)
            return
        index = self.index_of([q[0] for _, q in live], [x.sources[v] for v, _ in live], x.clamp_ppm)
        if index != x.index:
            x.index = index
            self.time_effects = True
        if x.short:
            x.short = False
            self.halts.pop(halt_id, None)
            self.time_effects = True
        m = self.markets.get(symbol)
        if m is not None and m.ref_price != index:
            m.ref_price = index
            ev.append(("refprice", symbol, index))
            self._band_watch(m, ev)  # type: ignore[attr-defined]  # TradingModel's

    def index_tick(self, seq: int) -> list[tuple[Any, ...]]:
        """What the engine's before-command hook does at `now_ns`: drop stale sources everywhere."""
        ev: list[tuple[Any, ...]] = []
        for symbol in sorted(self.indexes):
            self._recompute(symbol, seq, ev)
        return ev

    def index_save(self) -> Any:
        return copy.deepcopy((self.indexes, {k: v for k, v in self.halts.items() if k.startswith("index:")},
                              {s: m.ref_price for s, m in self.markets.items()}))

    def index_restore(self, saved: Any) -> None:
        """Undo `index_tick` when the command was refused before journaling (the hook never ran)."""
        indexes, halts, refs = saved
        self.indexes = indexes
        for k in [k for k in self.halts if k.startswith("index:")]:
            del self.halts[k]
        self.halts.update(halts)
        for s, ref in refs.items():
            self.markets[s].ref_price = ref

    # ------------------------------------------------------------------ commands

    def register_feed_key(self, venue: str) -> list[tuple[Any, ...]]:
        self.feed_keys.add(venue)
        self.index_version += 1
        return []

    def rotate_feed_key(self, venue: str, approvals: list[tuple[str, bool]]) -> list[tuple[Any, ...]]:
        """RegisterFeedKey once staff exist: the operator quorum (`approvals` as `check_quorum` takes them)."""
        self.check_quorum(approvals)  # type: ignore[attr-defined]  # HaltsModel's
        return self.register_feed_key(venue)

    def configure_index(self, symbol: str, sources: dict[str, int], min_sources: int, clamp_ppm: int,
                        stale_after_ns: int, max_ahead_ns: int, seq: int) -> list[tuple[Any, ...]]:
        self.indexes[symbol] = MIndex(dict(sources), min_sources, clamp_ppm, stale_after_ns, max_ahead_ns)
        self.index_version += 1
        ev: list[tuple[Any, ...]] = []
        self._recompute(symbol, seq, ev)
        return ev

    def quote(self, cmd: Any, genuine: bool, seq: int) -> list[tuple[Any, ...]]:
        x = self.indexes.get(cmd.symbol)
        if x is None:
            raise Refuse("RF_NOT_FOUND", "no index for the symbol")
        if cmd.venue not in x.sources or cmd.venue not in self.feed_keys:
            raise Refuse("RF_FORBIDDEN", "not a source, or no key")
        last = x.quotes.get(cmd.venue)
        if last is not None and (cmd.seq <= last[3] or cmd.source_ts_ns < last[1]):
            raise Refuse("RF_CONFLICT", "replayed or out of order")
        if not genuine:
            raise Refuse("RF_FORBIDDEN", "forged signature")
        if cmd.source_ts_ns > self.now_ns + x.max_ahead_ns or self.now_ns - cmd.source_ts_ns > x.stale_after_ns:
            raise Refuse("RF_VALIDATION", "ahead of time or stale")
        x.quotes[cmd.venue] = (cmd.price_minor, cmd.source_ts_ns, self.now_ns, cmd.seq)
        ev: list[tuple[Any, ...]] = []
        self._recompute(cmd.symbol, seq, ev)
        return ev

    def reference_follows_index(self, symbol: str) -> None:
        """A plain SetReferencePrice on an indexed symbol is refused (after the halts guard)."""
        if symbol in self.indexes:
            raise Refuse("RF_FORBIDDEN", "the band follows the index")

    def index_rows(self) -> dict[str, tuple[int, bool, tuple[str, ...]]]:
        return {s: (x.index, x.short, tuple(sorted(x.quotes))) for s, x in self.indexes.items()}
