"""Mark and index price candles: `/fapi/v1/markPriceKlines` and `/fapi/v1/indexPriceKlines`.

A perpetual's mark is a function of the engine's state (its index, its last trade, the funding basis
that shrinks with time, the moving-average basis), not of one event, so it is sampled: after the
first batch of each second of sequencer time, every perpetual's mark (`mark_of_perp`) and its index
are read from the engine — on the sequencer thread, where the state is exactly the batch's end —
and folded into candles on the API's thread. On start the same rule runs over the journal's batches
(the read models' replay), so a restart rebuilds the same candles. Seconds without a batch have no
sample (the demo's feed quotes every second). Integers in minor units; at most `MAX_CANDLES` candles
per interval and series; the API formats them.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from ..trading.marketdata import KLINE_INTERVALS_NS

__all__ = ["PriceCandles", "SAMPLE_NS", "MAX_CANDLES"]

SAMPLE_NS = 10**9
MAX_CANDLES = 1_500  # Binance's largest `limit` for these endpoints


class PriceCandles:
    def __init__(self) -> None:
        #: ("mark", internal perpetual symbol) or ("index", index symbol) -> interval ->
        #: candles `[open_ns, open, high, low, close, samples]`, oldest first
        self.series: dict[tuple[str, str], dict[str, deque[list[int]]]] = {}
        #: the second of sequencer time last sampled (sequencer thread / replay only)
        self.last_second = -1

    def sample(self, engine: Any, ts_ns: int) -> list[tuple[str, str, int]] | None:
        """The samples due after a batch at `ts_ns` (None: this second was sampled already, or there
        is no perpetual). Reads the engine: call it where the engine is between batches."""
        second = ts_ns // SAMPLE_NS
        if second == self.last_second or engine is None:
            return None
        self.last_second = second
        st = engine.components.get("derivatives")
        if st is None or not st.perps:
            return None
        from .state import mark_of_perp

        index = engine.components.get("index")
        out: list[tuple[str, str, int]] = []
        seen: set[str] = set()
        for sym, p in sorted(st.perps.items()):
            mark = mark_of_perp(engine, p)
            if mark > 0:
                out.append(("mark", sym, mark))
            s = index.symbols.get(p.index_symbol) if index is not None else None
            if s is not None and s.index_minor > 0 and p.index_symbol not in seen:
                seen.add(p.index_symbol)
                out.append(("index", p.index_symbol, int(s.index_minor)))
        return out

    def fold(self, ts_ns: int, samples: list[tuple[str, str, int]]) -> None:
        for kind, symbol, px in samples:
            assert px > 0, "a price sample is positive"
            per = self.series.get((kind, symbol))
            if per is None:
                per = self.series[(kind, symbol)] = {iv: deque(maxlen=MAX_CANDLES) for iv in KLINE_INTERVALS_NS}
            for interval, width_ns in KLINE_INTERVALS_NS.items():
                candles = per[interval]
                open_ns = ts_ns - ts_ns % width_ns
                last = candles[-1] if candles else None
                if last is not None and last[0] == open_ns:
                    last[2] = max(last[2], px)
                    last[3] = min(last[3], px)
                    last[4] = px
                    last[5] += 1
                elif last is None or last[0] < open_ns:  # sequencer time never goes back
                    candles.append([open_ns, px, px, px, px, 1])

    def rows(self, kind: str, symbol: str, interval: str) -> list[list[int]]:
        per = self.series.get((kind, symbol))
        return [list(c) for c in per[interval]] if per is not None else []
