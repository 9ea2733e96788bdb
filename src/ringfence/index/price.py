"""The index formula: median of live sources, each clamped to ± clamp of that median, weighted mean.

Pure integer arithmetic, no state, so the engine, the API, the simulation and the tests compute the
same number. Prices are integers in the quote asset's minor units per whole base unit (trading's
price unit). With live prices `p_i` and integer weights `w_i >= 1`:

1. `median`: sort the prices; odd count → the middle one; even count → `(lower + upper) // 2`
   (floor of the mean of the two middle prices).
2. clamp bounds: `lo = ceil(median * (1_000_000 - clamp_ppm) / 1_000_000)`,
   `hi = floor(median * (1_000_000 + clamp_ppm) / 1_000_000)` — rounded inwards, so a clamped
   price is never further than `clamp_ppm` from the median; `c_i = min(max(p_i, lo), hi)`.
3. `index = floor(sum(w_i * c_i) / sum(w_i))`.

Consequences (property-tested in tests/index/test_price_properties.py): the index lies within
`[min c_i, max c_i]` and within `clamp_ppm` of the median; one source, however far it prints,
moves its clamped price at most `clamp_ppm` from the median, so it moves the index by at most
its weight share of the clamp (plus one minor unit of rounding) when the others agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

__all__ = ["PPM", "IndexResult", "median_of", "clamp_bounds", "compute_index"]

PPM = 1_000_000


def median_of(prices: Sequence[int]) -> int:
    """Median of a non-empty list of integers; an even count takes the floor of the two middle ones' mean."""
    assert prices, "median of nothing"
    ordered = sorted(prices)
    n = len(ordered)
    mid = n // 2
    if n % 2:
        return ordered[mid]
    return (ordered[mid - 1] + ordered[mid]) // 2


def clamp_bounds(median: int, clamp_ppm: int) -> tuple[int, int]:
    """`[lo, hi]` around `median`, rounded inwards (never wider than ± clamp_ppm)."""
    assert median > 0 and 0 <= clamp_ppm < PPM, "bad clamp input"
    lo = -(-median * (PPM - clamp_ppm) // PPM)  # ceil
    hi = median * (PPM + clamp_ppm) // PPM  # floor
    assert lo <= median <= hi
    return lo, hi


@dataclass(frozen=True, slots=True)
class IndexResult:
    index: int
    median: int
    lo: int
    hi: int
    #: Each source's clamped price, in the order given.
    clamped: tuple[int, ...]


def compute_index(prices: Sequence[int], weights: Sequence[int], clamp_ppm: int) -> IndexResult:
    """The index of live sources `prices` with `weights` (same length, at least one)."""
    assert prices and len(prices) == len(weights), "prices and weights must pair up"
    assert all(p > 0 for p in prices) and all(w > 0 for w in weights), "prices and weights must be positive"
    median = median_of(prices)
    lo, hi = clamp_bounds(median, clamp_ppm)
    clamped = tuple(min(max(p, lo), hi) for p in prices)
    total_weight = sum(weights)
    index = sum(w * c for w, c in zip(weights, clamped)) // total_weight
    assert min(clamped) <= index <= max(clamped), "the index left the range of its sources"
    return IndexResult(index, median, lo, hi, clamped)
