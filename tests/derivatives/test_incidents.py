"""Issue 17's incident replays on the perpetual: each a seeded scenario through the engine, with
BTCUSDT's index fed by the five-venue simulator and the liquidation worker's round run every
second (what `serve` does): a scam wick on one venue, a stablecoin depeg on one venue, oracle
manipulation of a thin market (Mango), a position too large for the book (JELLY), and the insurance
fund exhausted (auto-deleveraging inside derivatives). In every one, every spot account and spot hold
is byte-identical from start to end.

Each scenario also computes what a naive design would have done (the mark following the wicked
venue, a mean of the raw quotes as the index), so the test fails if the defence under test is not
the reason nothing happened. Seed: RINGFENCE_TEST_SEED (printed)."""

from __future__ import annotations

import os
import random
from typing import Any

from ringfence.derivatives.commands import FuturesTransfer, LiquidateAccount, LiquidatePosition, PlacePerpOrder, SetLeverage
from ringfence.derivatives.liquidation import BAND_PPM, COOLDOWN_NS, liquidation_targets
from ringfence.derivatives.state import Position, account_summary, derivatives_state, maint_margin, mark_of_perp, unrealized
from ringfence.index.commands import ConfigureIndex, RegisterFeedKey
from ringfence.index.simulator import SimSettings, VenueSimulator
from ringfence.ledger.model import Transfer
from ringfence.ledger.commands import CreateTransfers
from ringfence.trading.commands import CancelAll

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from .perpworld import PERP, USDT, perp_world, price, qty, rejected

SEED = int(os.environ.get("RINGFENCE_TEST_SEED", "1717"))
SEC = 10**9
PPM = 1_000_000
QUIET = SimSettings(wick_chance_ppm=0, stale_every=10**9, stale_steps=0, depeg_every=10**9, depeg_steps=0)


class Incident:
    """A perpetual exchange whose index is five seeded venues; `second()` is one second of it."""

    def __init__(self, owners: tuple[str, ...], settings: SimSettings = QUIET, usdt: int = 100_000, seed: int = SEED,
                 **perp: Any) -> None:
        print(f"seed={seed} (RINGFENCE_TEST_SEED={seed} to rerun)")
        self.rng = random.Random(seed)
        self.d = perp_world(owners=owners, usdt=usdt, **perp)
        self.sim = VenueSimulator("BTCUSDT", price("60000"), seed, tick=10_000, settings=settings)
        for s in self.sim.signers:
            assert not rejected(self.d.apply(RegisterFeedKey(s.venue, s.public_key_hex)))
        assert not rejected(self.d.apply(ConfigureIndex("BTCUSDT", [(s.venue, 1) for s in self.sim.signers], 3,
                                                         clamp_ppm=10_000, stale_after_ns=10 * SEC)))
        #: venue index -> a price it prints instead of its own (an attacker's venue)
        self.forced: dict[int, int] = {}
        self.quotes: dict[str, int] = {}
        #: every liquidation step: (the mark it was decided at, its LiquidationStep, its events)
        self.steps: list[tuple[int, Any, list[Any]]] = []
        self.owners = owners
        self.second()  # the index is live
        # every owner also has spot money and a resting spot order: neither may ever move
        for o in owners:
            self.d.fund(o, "USDT", 1_000 * USDT)
            assert not rejected(self.d.place(o, "BUY", price("30000"), qty("0.01")))

    @property
    def engine(self) -> Any:
        return self.d.engine

    def second(self) -> list[Any]:
        """Every venue quotes (the forced ones their forced price), then one round of the
        liquidation worker; returns the events of the liquidation steps."""
        self.d.ts_ns += SEC
        now = self.d.ts_ns
        for q in self.sim.step(now):
            i = next(k for k, s in enumerate(self.sim.signers) if s.venue == q.venue)
            if i in self.forced:
                q = self.sim.signers[i].quote("BTCUSDT", self.forced[i], now)
            self.quotes[q.venue] = q.price_minor
            assert not rejected(self.d.apply(q, 0)), q
        return self.liquidation_round()

    def liquidation_round(self) -> list[Any]:
        events: list[Any] = []
        perps = derivatives_state(self.engine).perps
        for owner, scope in liquidation_targets(self.engine):
            mark = self.mark()
            ev = self.d.apply(LiquidatePosition(owner, scope) if scope in perps else LiquidateAccount(owner, scope))
            assert not rejected(ev), ev
            self.steps += [(mark, e, ev) for e in ev if type(e).__name__ == "LiquidationStep"]
            events += ev
        return events

    def index(self) -> int:
        return int(self.engine.components["index"].symbols["BTCUSDT"].index_minor)

    def mark(self) -> int:
        return mark_of_perp(self.engine, derivatives_state(self.engine).perps[PERP])

    def position(self, owner: str) -> Position | None:
        return derivatives_state(self.engine).positions.get((owner, PERP))

    def size(self, owner: str) -> int:
        pos = self.position(owner)
        return pos.size if pos is not None else 0

    def set_wallet(self, owner: str, usdt: int) -> None:
        """Move futures collateral so `owner`'s futures wallet holds `usdt` whole USDT."""
        have = self.engine.ledger.get(owner, "USDT", "available", "derivatives").balance
        want = usdt * USDT
        if want > have:
            self.d.fund(owner, "USDT", want - have)
            assert not rejected(self.d.apply(FuturesTransfer(owner, "USDT", want - have, "MAIN_UMFUTURE")))
        elif want < have:
            assert not rejected(self.d.apply(FuturesTransfer(owner, "USDT", have - want, "UMFUTURE_MAIN")))

    def perp(self, owner: str, side: str, px: int, q: int, **kw: Any) -> list[Any]:
        return self.d.apply(PlacePerpOrder(owner, PERP, side, price=px, quantity=q, **kw))

    def open(self, long: str, short: str, q: int, px: int | None = None) -> None:
        """`long` buys `q` from `short` at `px` (the index by default)."""
        px = px if px is not None else self.index() // 10_000 * 10_000
        assert not rejected(self.perp(short, "SELL", px, q)), (short, q)
        assert not rejected(self.perp(long, "BUY", px, q)), (long, q)

    def spot_rows(self) -> tuple[list[Any], list[Any]]:
        ledger = self.engine.ledger
        accounts = sorted(a.as_row() for a in ledger.iter_accounts() if a.segment == "spot")
        holds = sorted((h.id, h.remaining) for h in ledger.open_holds() if ledger.account(h.debit_id).segment == "spot")
        return accounts, holds

    def money(self) -> int:
        """Σ users' derivatives equity (wallet + margins + unrealised PnL at mark) + insurance + fees."""
        ledger = self.engine.ledger
        users = sum(account_summary(self.engine, o)["equity"] for o in self.owners)
        return users + ledger.insurance("USDT", "derivatives").balance + ledger.fees("USDT", "derivatives").balance

    def below_maintenance_at(self, owner: str, mark: int) -> bool:
        """Would `owner`'s cross account be below maintenance if the mark were `mark`?"""
        st = derivatives_state(self.engine)
        p, pos = st.perps[PERP], self.position(owner)
        assert pos is not None
        s = account_summary(self.engine, owner)
        now_u, now_m = unrealized(pos, self.mark(), p.scale), maint_margin(p, pos, self.mark())
        then_u, then_m = unrealized(pos, mark, p.scale), maint_margin(p, pos, mark)
        return s["cross_equity"] - now_u + then_u < s["cross_maint"] - now_m + then_m


def _leveraged(inc: Incident, long: str, short: str, wallet_usdt: int) -> None:
    """`long` buys 2 BTC at 50x from `short` on a wallet of `wallet_usdt`: both about 3.5 % from
    maintenance (120,000 notional, maintenance 550)."""
    for o in (long, short):
        assert not rejected(inc.d.apply(SetLeverage(o, PERP, 50)))
        inc.set_wallet(o, wallet_usdt)
    inc.open(long, short, qty("2"))


def test_a_scam_wick_on_one_venue_holds_the_index_and_liquidates_nobody(seed: int = SEED) -> None:
    inc = Incident(("alice", "bob", "eve"), seed=seed)
    _leveraged(inc, "alice", "bob", 4_750)
    for _ in range(10):
        assert inc.second() == []
    spot, money = inc.spot_rows(), inc.money()
    sizes = (inc.size("alice"), inc.size("bob"))
    inc.sim.wick_venue, inc.sim.wick_left = inc.rng.randrange(3), 11  # one venue prints -30 % for 10 s
    wicked = inc.sim.signers[inc.sim.wick_venue].venue
    for _ in range(10):
        assert inc.second() == [], "nobody is liquidated by the wick"
        true = inc.sim.price
        assert inc.quotes[wicked] * 100 < true * 75, "the wick is on the feed"
        assert abs(inc.index() - true) * PPM <= true * (2_000 + 2 * QUIET.noise_ppm), (inc.index(), true)
        assert abs(inc.mark() - true) * PPM <= true * (2_000 + 2 * QUIET.noise_ppm), (inc.mark(), true)
        # a mark that followed the wicked venue would have liquidated alice at once
        assert inc.below_maintenance_at("alice", inc.quotes[wicked])
    assert (inc.size("alice"), inc.size("bob")) == sizes and inc.steps == []
    assert abs(inc.money() - money) <= 4  # to the unrealised PnL's rounding
    assert inc.spot_rows() == spot
    inc.engine.check_invariants()


def test_a_stablecoin_depeg_on_one_venue_liquidates_nobody() -> None:
    # sim4's quote currency slips 5 % for 20 s: its BTC price sits 5 % above the others
    settings = SimSettings(wick_chance_ppm=0, stale_every=10**9, stale_steps=0, depeg_every=40, depeg_steps=20, depeg_ppm=50_000)
    inc = Incident(("alice", "bob", "eve"), settings=settings)
    _leveraged(inc, "alice", "bob", 4_750)  # bob is the short a +5 % price would liquidate
    spot = inc.spot_rows()
    depegged = 0
    for _ in range(45):
        assert inc.second() == [], "nobody is liquidated by the depeg"
        true = inc.sim.price
        assert abs(inc.index() - true) * PPM <= true * (2_000 + 2 * settings.noise_ppm), (inc.index(), true)
        if inc.quotes["sim4"] * 100 >= true * 104:
            depegged += 1
            assert inc.below_maintenance_at("bob", inc.quotes["sim4"]), "the depegged venue alone would liquidate bob"
    assert depegged >= 15, "the depeg was on the feed"
    assert inc.steps == [] and inc.size("bob") == -qty("2")
    assert inc.spot_rows() == spot
    inc.engine.check_invariants()


def test_oracle_manipulation_of_a_thin_market_is_stopped_by_the_clamp_and_the_open_interest_cap() -> None:
    """Mango Markets (October 2022): one trader held both sides of a thin perpetual, pushed the
    oracle's few spot venues up, and borrowed against the unrealised profit. Here the attacker
    owns two of the five venues and prints whatever it likes on the perpetual's own thin book."""
    inc = Incident(("alice", "bob", "carol", "dave", "frank", "gina", "mallory", "mallet"), usdt=100_000,
                   max_open_interest=qty("10"), max_account_share_ppm=400_000, share_floor_qty=qty("5"))
    inc.open("alice", "bob", qty("3"))  # honest open interest (a young market: not limited below 5 BTC)
    # the attacker builds both sides with two accounts: the share limit and the OI cap stop it
    inc.open("mallory", "mallet", qty("2"))
    share = inc.perp("mallet", "SELL", inc.index() // 10_000 * 10_000, qty("1.5"))
    assert rejected(share).reason == "CONCENTRATION_LIMIT" and "ppm" in rejected(share).message, share
    inc.open("carol", "dave", qty("2"))
    inc.open("frank", "gina", qty("2"))
    capped = inc.perp("mallet", "SELL", inc.index() // 10_000 * 10_000, qty("1.5"))
    assert rejected(capped).reason == "OPEN_INTEREST_CAP" and "cap" in rejected(capped).message, capped
    assert derivatives_state(inc.engine).perps[PERP].open_interest <= qty("10")
    spot, money = inc.spot_rows(), inc.money()
    wallet = inc.engine.ledger.get("mallory", "USDT", "available", "derivatives").balance
    start = inc.sim.price
    # the pump: two venues print +100 %, and mallory buys from mallet at twice the price on the perp
    pumped = sorted(inc.rng.sample(range(5), 2))
    for _ in range(20):
        for i in pumped:
            inc.forced[i] = inc.sim.price * 2 // 10_000 * 10_000
        assert inc.second() == []
        inc.open("mallory", "mallet", qty("0.001"), px=inc.sim.price * 2 // 10_000 * 10_000)
        true = inc.sim.price
        raw_mean = sum(inc.quotes.values()) // len(inc.quotes)
        assert raw_mean * 100 >= true * 130, "a mean of the raw quotes would have moved 40 %"
        # two venues clamped at +1 % of the median move the index at most 2/5 of it
        assert abs(inc.index() - true) * PPM <= true * (4_000 + 2 * QUIET.noise_ppm), (inc.index(), true)
        assert abs(inc.mark() - true) * PPM <= true * (4_000 + 2 * QUIET.noise_ppm), (inc.mark(), true)
    st = derivatives_state(inc.engine)
    gain = unrealized(st.positions[("mallory", PERP)], inc.mark(), st.perps[PERP].scale)
    # the "profit": at most what 0.4 % + the walk gives on ~2 BTC, nowhere near the pump's 60,000 a BTC
    assert gain * PPM <= 2 * start * (4_000 + 2 * QUIET.noise_ppm + 20 * QUIET.walk_ppm) // 10**8 + USDT * 10, gain
    # and unrealised profit is never collateral that can leave: one minor unit above the wallet's
    # free balance is refused
    free = inc.engine.ledger.get("mallory", "USDT", "available", "derivatives")
    out = inc.d.apply(FuturesTransfer("mallory", "USDT", free.balance - free.debits_pending + 1, "UMFUTURE_MAIN"))
    assert rejected(out) is not None, out
    assert free.balance <= wallet, "mallory's wallet did not grow from the pump"
    assert inc.steps == [], "nobody honest was liquidated"
    assert abs(inc.money() - money) <= 10
    assert inc.spot_rows() == spot
    inc.engine.check_invariants()


def _jelly(fund_usdt: int, seed: int = SEED) -> tuple[Incident, list[Any], int, int]:
    """JELLY (Hyperliquid, March 2025): a short too large for a thin book, then the price runs up.
    The whale is capped by the per-account share of open interest; the market maker quotes 5 levels
    of 0.2 BTC around the mark, refreshed every second; the price rises 0.25 % a second."""
    inc = Incident(("whale", "alice", "bob", "carol", "dan", "eve", "frank", "gina", "mm"), usdt=400_000, seed=seed,
                   max_account_share_ppm=400_000, share_floor_qty=qty("10"))
    inc.set_wallet("mm", 2_000_000)
    for long, short, q in (("alice", "eve", "4"), ("bob", "frank", "3"), ("carol", "gina", "3")):
        inc.open(long, short, qty(q))  # honest open interest: 10 BTC, the share limit's floor
    assert not rejected(inc.d.apply(SetLeverage("whale", PERP, 20)))
    inc.set_wallet("whale", 9_500)
    too_big = inc.perp("whale", "SELL", inc.index() // 10_000 * 10_000, qty("8"))
    assert rejected(too_big).reason == "CONCENTRATION_LIMIT", too_big  # 8 of 18 BTC: above 40 %
    inc.open("dan", "whale", qty("3"))  # 3 of 13 BTC: under the limit, 180,000 at 20x on 9,500
    ins = inc.engine.ledger.insurance("USDT", "derivatives")
    if fund_usdt:
        world = inc.engine.ledger.world("USDT")
        inc.d.apply(CreateTransfers([Transfer(9_000_001, world.id, ins.id, fund_usdt * USDT)]))
    spot, money = inc.spot_rows(), inc.money()
    events: list[Any] = []
    for _ in range(120):
        inc.sim.price = inc.sim.price * (PPM + 2_500) // PPM
        # the market maker's thin ladder around the mark, before the worker's round
        inc.d.apply(CancelAll("mm", PERP))
        m = inc.mark() // 10_000 * 10_000
        for k in range(1, 6):
            inc.perp("mm", "SELL", m + m * k // 1_000 // 10_000 * 10_000, qty("0.2"))
            inc.perp("mm", "BUY", m - m * k // 1_000 // 10_000 * 10_000, qty("0.2"))
        events += inc.second()
        if inc.size("whale") == 0:
            break
    assert inc.size("whale") == 0, "the whale's short was closed"
    assert inc.spot_rows() == spot, "spot balances and holds byte-identical"
    return inc, events, money, ins.balance


def _check_steps(inc: Incident) -> None:
    steps = [(m, s, ev) for m, s, ev in inc.steps if s.owner == "whale"]
    assert len(steps) >= 3, f"partial steps, not one sweep: {[s for _, s, _ in steps]}"
    for (_, a, _), (_, b, _) in zip(steps, steps[1:]):
        assert b.next_ns - a.next_ns >= COOLDOWN_NS, "a cool-down between steps"
    for mark, s, ev in steps:
        assert s.side == "BUY" and s.filled <= s.ordered
        assert s.ordered <= s.depth_in_band // 2 + qty("0.0001"), s  # half of the depth inside the band
        # never deeper than the band: the limit within 1 % of the mark (a tick), every fill at or under it
        assert s.limit_price <= mark + mark * BAND_PPM // PPM + 10_000, (mark, s)
        assert all(e.trade_price <= s.limit_price for e in ev if type(e).__name__ == "PositionChanged" and e.owner == "whale")
    assert sum(s.filled for _, s, _ in steps) > 0, "the book took part of it"


def test_a_position_too_large_for_the_book_is_closed_in_steps_and_the_insurance_fund_pays() -> None:
    inc, events, money, fund_after = _jelly(fund_usdt=200_000)
    _check_steps(inc)
    covered = sum(e.insurance_covered for e in events if type(e).__name__ == "PositionChanged")
    assert covered > 0, "the bankrupt remainder was the insurance fund's"
    assert not [e for e in events if type(e).__name__ == "AutoDeleveraged"], "the fund could pay: no ADL"
    # the whale lost its collateral and no more; what it could not pay came from the fund
    assert inc.engine.ledger.get("whale", "USDT", "available", "derivatives").balance >= 0
    _check_conserved(inc, events, money)
    inc.engine.check_invariants()


def test_the_insurance_fund_exhausted_deleverages_inside_derivatives_only() -> None:
    inc, events, money, fund_after = _jelly(fund_usdt=0)
    adl = [e for e in events if type(e).__name__ == "AutoDeleveraged"]
    assert adl, "the fund could not pay: the rest was auto-deleveraged"
    assert {e.owner for e in adl} == {"whale"} and {e.counterparty for e in adl} <= {"alice", "bob", "carol"}
    assert [e.rank for e in adl] == list(range(len(adl)))
    assert fund_after >= 0
    inc.engine.check_invariants()
    _check_conserved(inc, events, money)


def _check_conserved(inc: Incident, events: list[Any], money: int) -> None:
    """Users' derivatives equity + insurance + fees: the price run only moves value between the
    sides (longs = shorts), so the sum holds to a minor unit of rounding per position and fill."""
    fills = sum(1 for e in events if type(e).__name__ in ("PositionChanged", "AutoDeleveraged"))
    assert abs(inc.money() - money) <= 2 * fills + 20, (inc.money() - money, fills)


@settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None)
@given(seed=hs.integers(0, 2**32 - 1))
def test_any_seed_a_wick_liquidates_nobody(seed: int) -> None:
    test_a_scam_wick_on_one_venue_holds_the_index_and_liquidates_nobody(seed)


@settings(max_examples=10, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None)
@given(seed=hs.integers(0, 2**32 - 1), fund_usdt=hs.sampled_from([0, 5_000, 200_000]))
def test_any_seed_a_jelly_closes_the_whale_inside_derivatives_and_conserves_money(seed: int, fund_usdt: int) -> None:
    inc, events, money, fund_after = _jelly(fund_usdt, seed)  # the whale closed, spot byte-identical (checked inside)
    _check_conserved(inc, events, money)
    assert fund_after >= 0
    inc.engine.check_invariants()
