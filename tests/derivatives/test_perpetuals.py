"""Perpetuals in the engine: transfers, positions, margin, funding, concentration, invariants, replay."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from ringfence.derivatives.commands import AdjustIsolatedMargin, SetLeverage, SetMarginType
from ringfence.derivatives.module import funding_rate, impact_prices
from ringfence.derivatives.state import account_summary, derivatives_state
from ringfence.engine.core import CommandRejected
from ringfence.trading.commands import CancelAll
from ringfence.trading.state import market_of

from .perpworld import PERP, USDT, order, perp_world, price, qty, rejected, transfer, with_index

HOUR = 3600 * 10**9


def _spot(d, owner):
    return d.balance(owner, "USDT", "spot")[0]


def _fut(d, owner):
    return d.balance(owner, "USDT", "derivatives")[0]


def test_transfer_moves_collateral_between_spot_and_derivatives_only_on_command():
    d = perp_world(owners=("alice",), usdt=1_000)
    assert _spot(d, "alice") == 0 and _fut(d, "alice") == 1_000 * USDT
    assert not rejected(transfer(d, "alice", 400 * USDT, "UMFUTURE_MAIN"))
    assert _spot(d, "alice") == 400 * USDT and _fut(d, "alice") == 600 * USDT
    before = d.engine.state_hash()
    for bad in (transfer(d, "alice", 601 * USDT, "UMFUTURE_MAIN"), transfer(d, "alice", 401 * USDT),
                transfer(d, "alice", 1, "SIDEWAYS"), transfer(d, "alice", 0)):
        assert isinstance(rejected(bad), CommandRejected), bad
    # a rejected command changes nothing but the sequence counters
    assert d.engine.snapshot_state()[3:] == _without_seq(d.engine, before)


def _without_seq(engine, _):
    return engine.snapshot_state()[3:]


def test_positions_open_reduce_flip_with_realised_pnl_and_fees_at_the_quote():
    d = perp_world()
    order(d, "alice", "BUY", "60000", "1")
    order(d, "bob", "SELL", "60000", "1")  # alice long 1 @ 60000, bob short 1
    st = derivatives_state(d.engine)
    a, b = st.positions[("alice", PERP)], st.positions[("bob", PERP)]
    assert (a.size, a.cost, b.size, b.cost) == (qty("1"), 60_000 * USDT, -qty("1"), 60_000 * USDT)
    assert a.margin == 6_000 * USDT  # 10x
    # alice sells 1.5 at 61000 to carol: closes 1 (+1000 USDT), opens short 0.5
    order(d, "carol", "BUY", "61000", "1.5")
    ev = order(d, "alice", "SELL", "61000", "1.5")
    ch = [e for e in ev if type(e).__name__ == "PositionChanged" and e.owner == "alice"][0]
    assert ch.realized_pnl == 1_000 * USDT and ch.size == -qty("0.5") and ch.cost == 30_500 * USDT
    d.engine.check_invariants()
    assert market_of(d.engine, PERP).last_price == price("61000")


def test_rounding_against_the_user_on_partial_close():
    d = perp_world()
    # three buys at prices whose average is not a whole minor unit per lot
    for px in ("60000.01", "60000.02", "60000.02"):
        order(d, "bob", "SELL", px, "0.0001")
        order(d, "alice", "BUY", px, "0.0001")
    pos = derivatives_state(d.engine).positions[("alice", PERP)]
    cost = pos.cost
    order(d, "bob", "BUY", "60000.00", "0.0001")
    ev = order(d, "alice", "SELL", "60000.00", "0.0001")
    ch = [e for e in ev if type(e).__name__ == "PositionChanged" and e.owner == "alice"][0]
    assert cost % 3  # the average entry is not a whole minor unit
    closed = -(-cost // 3)  # the closed third of the cost, rounded up: a long's PnL rounds down
    assert ch.realized_pnl == 6_000_000 - closed and ch.realized_pnl * 3 < 3 * 6_000_000 - cost
    assert ch.cost == cost - closed
    d.engine.check_invariants()


def test_margin_insufficient_names_the_limit_and_changes_nothing():
    d = perp_world(owners=("alice", "bob"), usdt=1_000)
    before = d.engine.snapshot_state()[3:]
    ev = order(d, "alice", "BUY", "60000", "1")  # 60k notional at 10x needs 6k
    r = rejected(ev)
    assert r.reason == "MARGIN_INSUFFICIENT" and "Margin is insufficient" in r.message
    assert d.engine.snapshot_state()[3:] == before


def test_leverage_from_brackets_and_isolated_margin():
    d = perp_world()
    assert isinstance(rejected(d.apply(SetLeverage("alice", PERP, 126))), CommandRejected)
    assert not rejected(d.apply(SetLeverage("alice", PERP, 20)))
    assert not rejected(d.apply(SetMarginType("alice", PERP, "ISOLATED")))
    order(d, "bob", "SELL", "60000", "1")
    order(d, "alice", "BUY", "60000", "1")
    pos = derivatives_state(d.engine).positions[("alice", PERP)]
    assert pos.margin == 3_000 * USDT
    iso = d.engine.ledger.get("alice", "USDT", "isolated", "derivatives")
    assert iso.balance == pos.margin
    assert not rejected(d.apply(AdjustIsolatedMargin("alice", PERP, 500 * USDT, 1)))
    assert iso.balance == 3_500 * USDT
    assert isinstance(rejected(d.apply(AdjustIsolatedMargin("alice", PERP, 501 * USDT, 2))), CommandRejected)
    assert not rejected(d.apply(AdjustIsolatedMargin("alice", PERP, 500 * USDT, 2)))
    # margin type cannot change with a position
    assert isinstance(rejected(d.apply(SetMarginType("alice", PERP, "CROSSED"))), CommandRejected)
    # leverage 100 is above the bracket of 60k notional (100x only up to 250k: allowed); 126 never
    assert not rejected(d.apply(SetLeverage("alice", PERP, 50)))
    assert derivatives_state(d.engine).positions[("alice", PERP)].margin == 1_200 * USDT
    d.engine.check_invariants()


def test_concentration_limits_reject_with_the_limit_named():
    d = perp_world(max_open_interest=qty("3"), max_account_share_ppm=500_000, share_floor_qty=qty("1"))
    order(d, "bob", "SELL", "60000", "1")
    order(d, "alice", "BUY", "60000", "1")
    r = rejected(order(d, "alice", "BUY", "60000", "2"))  # alice would hold 3 of OI 3
    assert r.reason == "CONCENTRATION_LIMIT" and "open interest" in r.message
    r = rejected(order(d, "carol", "BUY", "60000", "2.5"))
    assert r.reason == "OPEN_INTEREST_CAP" and "cap" in r.message


def test_concentration_raises_initial_margin():
    d = perp_world(concentration_imr_ppm=500_000)
    order(d, "bob", "SELL", "60000", "1")
    order(d, "alice", "BUY", "60000", "1")
    # alice holds all the OI: rate max(10 %, 100 % × 0.5) = 50 %
    assert derivatives_state(d.engine).positions[("alice", PERP)].margin == 30_000 * USDT


def test_funding_every_8h_is_zero_sum_through_the_ledger():
    d = perp_world()
    quote = with_index(d)
    quote("60000")
    order(d, "bob", "SELL", "60000", "1")
    order(d, "alice", "BUY", "60000", "1")
    # a book above the index: premium positive, longs pay
    order(d, "carol", "BUY", "60300", "0.1")
    order(d, "bob", "SELL", "60400", "0.1")
    before = {o: _fut(d, o) + d.engine.ledger.find(o, "USDT", "margin", "derivatives").balance for o in ("alice", "bob")}
    st = derivatives_state(d.engine)
    nxt = st.perps[PERP].next_funding_ns
    d.ts_ns = nxt - 10**9
    quote("60000")  # the index, fresh at funding time
    assert not [e for e in d.log[-1][2] if type(e).__name__ == "FundingSettled"]
    ev = d.apply(CancelAll("carol", PERP), advance_ns=10**9)
    f = [e for e in ev if type(e).__name__ == "FundingSettled"][0]
    assert f.rate_ppm > 0 and f.paid >= f.received and f.paid - f.received == f.to_insurance
    assert sum(f.amounts) == -f.to_insurance
    after = {o: _fut(d, o) + d.engine.ledger.find(o, "USDT", "margin", "derivatives").balance for o in ("alice", "bob")}
    assert after["alice"] < before["alice"] and after["bob"] > before["bob"]
    assert st.perps[PERP].next_funding_ns == nxt + 8 * HOUR
    d.engine.check_invariants()


def test_funding_rate_formula():
    d = perp_world()
    p = derivatives_state(d.engine).perps[PERP]
    assert funding_rate(p, 100, 0, 0) == (100, 0)  # no book: interest only
    assert funding_rate(p, 1_000_000, 1_010_000, 1_020_000) == (7_500, 10_000)  # capped
    # premium 300 ppm: the interest term (100 − 300 = −200) is inside the ±500 clamp → rate 100
    assert funding_rate(p, 1_000_000, 1_000_300, 1_000_400) == (100, 300)
    # premium 1000 ppm: clamp(100 − 1000) = −500 → rate 500
    assert funding_rate(p, 1_000_000, 1_001_000, 1_001_500) == (500, 1000)
    # a book below the index: negative premium, shorts are paid... no: shorts pay
    assert funding_rate(p, 1_000_000, 998_000, 999_000) == (-500, -1000)
    m = market_of(d.engine, PERP)
    assert impact_prices(m, 1_000 * USDT, 10**8) == (0, 0)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hs.integers(0, 2**32))
def test_random_trading_keeps_every_invariant_and_replays(seed):
    print("seed", seed)
    rng = random.Random(seed)
    d = perp_world(owners=("a1", "a2", "a3", "a4"), usdt=20_000, max_account_share_ppm=rng.choice([0, 800_000]),
                   share_floor_qty=qty("0.5"), concentration_imr_ppm=rng.choice([0, 200_000]))
    owners = ("a1", "a2", "a3", "a4")
    for _ in range(40):
        o = rng.choice(owners)
        kind = rng.random()
        before = d.engine.snapshot_state()[3:]
        if kind < 0.7:
            px = str(rng.randint(59_000, 61_000))
            q = f"0.{rng.randint(1, 9999):04d}"
            ev = order(d, o, rng.choice(["BUY", "SELL"]), px, q, reduce_only=int(rng.random() < 0.2),
                       **({"order_type": "MARKET"} if rng.random() < 0.2 else {}))
        elif kind < 0.8:
            ev = d.apply(CancelAll(o, PERP))
        elif kind < 0.9:
            ev = d.apply(SetLeverage(o, PERP, rng.choice([1, 5, 20, 125])))
        else:
            ev = transfer(d, o, rng.randint(1, 30_000) * USDT, rng.choice(["MAIN_UMFUTURE", "UMFUTURE_MAIN"]))
        d.engine.check_invariants()
        if isinstance(rejected(ev), CommandRejected) or (ev and type(ev[0]).__name__ == "OrderRejected"):
            assert d.engine.snapshot_state()[3:] == before  # a rejected command changes nothing
    # replay: the same commands on a fresh engine give the same state hash
    d2 = perp_world(owners=("a1",), usdt=1)
    from ringfence.app import new_engine

    e2 = new_engine()
    for i, (cmd, ts, _) in enumerate(d.log):
        e2.apply(cmd, i + 1, ts, b"\x00" * 32)
    assert e2.state_hash() == d.engine.state_hash()
    del d2
    from ringfence.app import engine_from_snapshot

    restored = engine_from_snapshot(d.engine.snapshot_bytes())  # and a snapshot restores it exactly
    restored.check_invariants()
    assert restored.state_hash() == d.engine.state_hash()
    for o in owners:
        s = account_summary(d.engine, o)
        assert s["equity"] == s["cross_equity"] + s["isolated_margin"] + s["isolated_upnl"]


def test_derivatives_equity_is_in_the_proof_of_liabilities_and_a_negative_one_is_a_debt():
    from ringfence.solvency.ledger_source import liability_entries, snapshot_from_engine

    d = perp_world(owners=("alice", "bob", "carol"), usdt=10_000)
    quote = with_index(d)
    quote("60000")
    order(d, "bob", "SELL", "60000", "1")
    order(d, "alice", "BUY", "60000", "1")  # alice long 1 BTC on a 10,000 USDT wallet
    # the index (and so the mark) falls far: alice's unrealised loss is larger than her wallet
    quote("45000")
    order(d, "carol", "BUY", "45000", "0.0001")
    order(d, "carol", "SELL", "45000", "0.0001")  # last trade at 45000: the mark's median follows
    from ringfence.derivatives.state import account_summary

    s = account_summary(d.engine, "alice")
    assert s["equity"] < 0
    rows = [r for r in liability_entries(d.engine) if r[0] == "alice" and r[1] == "USDT"]
    assert sum(r[2] for r in rows) == s["equity"]
    snap = snapshot_from_engine(d.engine)
    assert snap.debts_minor["USDT"] == -s["equity"]  # listed as a debt, not netted against bob's gain
    bob = account_summary(d.engine, "bob")
    assert bob["equity"] > 10_000 * USDT


def test_margin_check_agrees_with_the_account_summary():
    from ringfence.derivatives.state import margin_check

    d = perp_world(owners=("alice", "bob", "carol"), usdt=10_000)
    quote = with_index(d)
    quote("60000")
    order(d, "bob", "SELL", "60000", "1")
    order(d, "alice", "BUY", "60000", "1")
    assert margin_check(d.engine) == []
    quote("50000")
    order(d, "carol", "BUY", "50000", "0.0001")
    order(d, "carol", "SELL", "50000", "0.0001")
    s = account_summary(d.engine, "alice")
    below = margin_check(d.engine)
    assert below == [("alice", "USDT", s["cross_equity"], s["cross_maint"])] and s["cross_equity"] < s["cross_maint"]


def test_risk_benchmark_smoke():
    import json
    import subprocess
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[2] / "bench" / "risk.py"
    out = subprocess.run([sys.executable, str(bench), "--smoke"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    line = json.loads(out.stdout.strip().splitlines()[-1])
    assert line["bench"] == "risk" and line["smoke"] is True and "seed=1" in out.stderr
    assert line["margin_check"]["positions"] >= 10_000 and line["orders"]["perp"]["trades"] > 0
    assert line["orders"]["perp"]["trades"] == line["orders"]["baseline"]["trades"]  # the same stream matched alike
    for side in ("perp", "baseline"):  # the collector's CPU time is counted apart, never more than the side's own
        o = line["orders"][side]
        assert 0 <= o["gc_cpu_ms"] and o["orders_per_cpu_s_without_gc"] >= o["orders_per_cpu_s"], o
    assert line["orders"]["perp_vs_spot_cpu_without_gc"] > 0


def test_a_stale_index_makes_the_perpetual_reduce_only():
    d = perp_world()
    quote = with_index(d)
    quote("60000")
    order(d, "bob", "SELL", "60000", "1")
    order(d, "alice", "BUY", "60000", "1")
    d.ts_ns += 2 * 3600 * 10**9  # the only source goes stale: the index module marks it short
    order(d, "carol", "BUY", "59000", "0.0001")
    assert d.engine.components["index"].symbols["BTCUSDT"].short
    r = rejected(order(d, "carol", "BUY", "59000", "0.1"))
    assert r.reason == "MARKET_NOT_ACTIVE" and "index" in r.message
    order(d, "bob", "BUY", "60100", "0.5")  # bob reduces his short: accepted and rests
    assert not rejected(order(d, "alice", "SELL", "60100", "0.5", reduce_only=1))
    assert derivatives_state(d.engine).positions[("alice", PERP)].size == qty("0.5")


def test_a_position_holding_the_whole_wallet_can_still_be_closed():
    d = perp_world(owners=("alice", "bob"), usdt=10_000)
    assert not rejected(d.apply(SetLeverage("alice", PERP, 1)))
    # at 1x, 0.16 BTC at 60000 is 9,600 USDT of margin and ~9.6 of fees: nearly the whole wallet
    order(d, "bob", "SELL", "60000", "0.16")
    order(d, "alice", "BUY", "60000", "0.16")
    w = d.engine.ledger.get("alice", "USDT", "available", "derivatives")
    transfer(d, "alice", w.available, "UMFUTURE_MAIN")  # nothing free is left in the wallet
    assert w.available == 0
    assert rejected(order(d, "alice", "BUY", "60000", "0.0001")).reason == "MARGIN_INSUFFICIENT"
    order(d, "bob", "BUY", "60000", "0.16")
    ev = order(d, "alice", "SELL", "60000", "0.16", reduce_only=1)
    assert not rejected(ev), ev
    assert ("alice", PERP) not in derivatives_state(d.engine).positions
    d.engine.check_invariants()


def test_snapshot_restore_keeps_the_contracts_bound_and_the_same_future():
    from ringfence.app import engine_from_snapshot

    d = perp_world()
    order(d, "bob", "SELL", "60000", "1")
    order(d, "alice", "BUY", "60100", "0.4")
    order(d, "carol", "BUY", "59000", "0.5")  # rests: its hold is its pro-rata share
    restored = engine_from_snapshot(d.engine.snapshot_bytes())
    assert restored.state_hash() == d.engine.state_hash()
    assert market_of(restored, PERP).contract is not None and market_of(restored, "BTCUSDT").contract is None
    restored.check_invariants()
    from ringfence.derivatives.commands import PlacePerpOrder

    more = [PlacePerpOrder("bob", PERP, "SELL", price=price("59000"), quantity=qty("0.5")),
            PlacePerpOrder("alice", PERP, "SELL", price=price("59000"), quantity=qty("0.4"), reduce_only=1)]
    for cmd in more:
        seq, ts = d.engine.last_seq + 1, d.ts_ns + 1_000
        d.ts_ns = ts
        a = d.engine.apply(cmd, seq, ts, b"\x00" * 32)
        b = restored.apply(cmd, seq, ts, b"\x00" * 32)
        assert a == b and not rejected(a)
    assert restored.state_hash() == d.engine.state_hash()
    assert derivatives_state(restored).positions[("carol", PERP)].size == qty("0.5")


def test_a_spot_market_cannot_be_listed_in_the_derivatives_segment():
    """The attacker review: a spot listing in `derivatives` would hold users' margin with a plain spot
    hold, past the margin check. It is refused (plain and quorum-signed listings share the rule);
    the perpetual beside it still lists, and nothing of the refusal changes the state."""
    from ringfence.trading.commands import ListMarket

    import pytest

    from ringfence.errors import ValidationError

    from tests.staff.rig import domain_hash

    d = perp_world()
    spot_in_margin = ListMarket("BTCUSDX", "BTC", "USDT", "derivatives", 10_000, 10_000, 10_000)
    before, full = domain_hash(d.engine), d.engine.state_hash()
    with pytest.raises(ValidationError, match="holds margin"):
        d.engine.precheck(spot_in_margin)  # at the edge
    assert d.engine.state_hash() == full
    r = rejected(d.apply(spot_in_margin))  # and by the handler
    assert r is not None and r.field == "segment" and "margin" in r.message
    assert domain_hash(d.engine) == before
    assert not any(isinstance(e, CommandRejected) for e in d.apply(ListMarket("BTCUSDX", "BTC", "USDT", "spot", 10_000, 10_000, 10_000)))
