"""Hypothesis properties of the index formula and of REDUCE_ONLY through the engine."""

from __future__ import annotations

from harness import SEC, VENUES, Shard, usdt
from hypothesis import given, settings
from hypothesis import strategies as st

from ringfence.index.price import PPM, compute_index, median_of

prices = st.integers(min_value=1, max_value=10**15)
clamps = st.integers(min_value=0, max_value=500_000)


@given(st.lists(st.tuples(prices, st.integers(1, 1000)), min_size=1, max_size=32), clamps)
def test_index_lies_within_the_live_clamped_sources_and_the_clamp_of_the_median(sources, clamp_ppm) -> None:  # type: ignore[no-untyped-def]
    ps, ws = [p for p, _ in sources], [w for _, w in sources]
    r = compute_index(ps, ws, clamp_ppm)
    assert min(r.clamped) <= r.index <= max(r.clamped)
    assert min(ps) <= r.median <= max(ps)
    # every clamped price, hence the index, is within clamp_ppm of the median (bounds rounded inwards)
    assert all(abs(c - r.median) * PPM <= r.median * clamp_ppm for c in r.clamped)
    assert abs(r.index - r.median) * PPM <= r.median * clamp_ppm


@given(
    st.lists(st.integers(10**9, 10**13), min_size=2, max_size=16),
    st.integers(1, 10**15),
    clamps,
    st.integers(1, 100),
)
def test_one_venues_wick_moves_the_index_at_most_its_share_of_the_clamp(honest, wick, clamp_ppm, wick_weight) -> None:  # type: ignore[no-untyped-def]
    """Honest venues agree on P; one venue prints anything at all. The index stays within the
    wick's weight share of the clamp from P (one minor unit of rounding)."""
    p = honest[0]
    n = len(honest)
    r = compute_index([p] * n + [wick], [1] * n + [wick_weight], clamp_ppm)
    assert r.median == p  # with >= 2 honest agreeing venues, the median is theirs
    share_bound = p * clamp_ppm * wick_weight // (PPM * (n + wick_weight)) + 1
    assert abs(r.index - p) <= share_bound


@given(st.lists(st.integers(10**9, 10**13), min_size=3, max_size=16), st.integers(1, 10**15), clamps)
def test_a_wick_keeps_the_index_within_the_clamped_range_of_the_other_venues(honest, wick, clamp_ppm) -> None:  # type: ignore[no-untyped-def]
    r = compute_index(honest + [wick], [1] * (len(honest) + 1), clamp_ppm)
    lo = min(honest) * (PPM - clamp_ppm) // PPM
    hi = -(-max(honest) * (PPM + clamp_ppm) // PPM)
    assert lo <= r.index <= hi
    assert min(honest) <= r.median <= max(honest)


def test_median_rounding_is_written_down() -> None:
    assert median_of([1, 2]) == 1 and median_of([1, 4]) == 2 and median_of([5, 1, 3]) == 3


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sets(st.sampled_from(VENUES)), min_size=1, max_size=25), st.integers(1, 5))
def test_reduce_only_exactly_while_fewer_than_min_sources_are_live(rounds, min_sources) -> None:  # type: ignore[no-untyped-def]
    """Each round, a random set of venues quotes, 4 s apart (staleness 10 s). After every round the
    market is REDUCE_ONLY if and only if fewer than `min_sources` venues quoted within the last 10 s."""
    s = Shard(min_sources=min_sources)
    last_quote: dict[str, int] = {}
    for venues in rounds:
        s.now += 4 * SEC
        for v in sorted(venues):
            s.submit(s.quote(v, usdt(60000), advance_ns=0), 0)
            last_quote[v] = s.now
        live = sum(1 for t in last_quote.values() if s.now - t <= 10 * SEC)
        # a command at this time (even one that changes nothing) applies the staleness first
        s.apply(_noop(), 0)
        assert s.index().live_sources == live
        assert (s.status() == "REDUCE_ONLY") == (live < min_sources), (live, min_sources)
        assert ("index:BTCUSDT" in s.engine.components["halts"].active) == (live < min_sources)


def _noop():  # type: ignore[no-untyped-def]
    from ringfence.trading.commands import SetFeeTier

    return SetFeeTier(0, 1000, 1000)
