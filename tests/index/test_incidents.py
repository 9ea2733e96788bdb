"""Incident replays through the engine, driven by the seeded five-venue simulator."""

from __future__ import annotations

import os

from harness import BTC, SEC, Shard, usdt

from ringfence.index.simulator import SimSettings, VenueSimulator
from ringfence.trading.commands import OrderRejected, PlaceOrder, Trade

SEED = int(os.environ.get("RINGFENCE_TEST_SEED", "1717"))
QUIET = SimSettings(wick_chance_ppm=0, stale_every=10**9, stale_steps=0, depeg_every=10**9, depeg_steps=0)


def _shard_with(sim: VenueSimulator) -> Shard:
    s = Shard(signers=sim.signers)
    s.fund("alice", "USDT", usdt(1_000_000))
    s.fund("bob", "BTC", 10 * BTC)
    s.fund("mm", "USDT", usdt(1_000_000))
    s.fund("mm", "BTC", 10 * BTC)
    return s


def _step(s: Shard, sim: VenueSimulator) -> list[object]:
    s.now += SEC
    events: list[object] = []
    for q in sim.step(s.now):
        events += s.submit(q, 0)
    return events


def test_scam_wick_on_one_venue_moves_neither_index_nor_band_and_no_order_fills_at_the_wick() -> None:
    print(f"seed={SEED}")
    sim = VenueSimulator("BTCUSDT", usdt(60000), SEED, tick=10_000, settings=QUIET)
    s = _shard_with(sim)
    for _ in range(20):
        _step(s, sim)
    s.place("mm", "BUY", usdt(59900), BTC)  # a resting bid to be dumped into
    calm_index = s.index().index_minor
    calm_band = (s.market().band_lo, s.market().band_hi)
    sim.wick_venue, sim.wick_left = 0, 11  # sim1 prints -30 % for 10 s
    worst = 0
    for _ in range(10):
        _step(s, sim)
        assert s.index().quotes["sim1"].price_minor < calm_index * 75 // 100, "the wick is on the feed"
        true = sim.price
        worst = max(worst, abs(s.index().index_minor - true))
        assert s.status() == "ACTIVE"
        wick_price = s.index().quotes["sim1"].price_minor // 10_000 * 10_000
        # nobody can trade at the wick price: limit orders there are outside the band
        for side, owner in (("SELL", "bob"), ("BUY", "alice")):
            events = s.submit(PlaceOrder(owner, "BTCUSDT", side, price=wick_price, quantity=10_000))
            assert any(isinstance(e, OrderRejected) and e.reason == "PRICE_OUTSIDE_BAND" for e in events), events
            assert not any(isinstance(e, Trade) for e in events)
    # one venue of five clamped at 1 %: the index stays within 0.2 % (+ the venues' own noise)
    assert worst * 1_000_000 <= sim.price * (2_000 + 2 * QUIET.noise_ppm + QUIET.walk_ppm), (worst, sim.price)
    lo, hi = s.market().band_lo, s.market().band_hi
    assert abs(lo - calm_band[0]) * 100 <= calm_band[0] and abs(hi - calm_band[1]) * 100 <= calm_band[1]


def test_stablecoin_depeg_on_one_venue_is_clamped() -> None:
    print(f"seed={SEED}")
    settings = SimSettings(wick_chance_ppm=0, stale_every=10**9, stale_steps=0, depeg_every=50, depeg_steps=20, depeg_ppm=50_000)
    sim = VenueSimulator("BTCUSDT", usdt(60000), SEED, tick=10_000, settings=settings)
    s = _shard_with(sim)
    depegged = 0
    for i in range(60):
        _step(s, sim)
        r = s.index()
        if (r.quotes["sim4"].price_minor - sim.price) * 100 >= sim.price * 4:
            depegged += 1
        true = sim.price
        assert abs(r.index_minor - true) * 1_000_000 <= true * (2_000 + 2 * settings.noise_ppm + settings.walk_ppm), (i, r.index_minor, true)
    assert depegged >= 15, "the depeg was on the feed"


def test_a_venue_going_silent_leaves_four_live_and_the_market_active() -> None:
    settings = SimSettings(wick_chance_ppm=0, stale_every=30, stale_steps=20, depeg_every=10**9, depeg_steps=0)
    sim = VenueSimulator("BTCUSDT", usdt(60000), SEED, tick=10_000, settings=settings)
    s = _shard_with(sim)
    seen = set()
    for _ in range(30):
        _step(s, sim)
        seen.add(s.index().live_sources)
        assert s.status() == "ACTIVE"
    assert seen == {4, 5}, seen  # sim5 was silent long enough to go stale, and back
