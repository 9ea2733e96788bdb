"""The columnar margin sweep (`columns.py`) against the plain loop it replaces
(`margin_check_reference`): the same accounts below maintenance, the same numbers, the same order.

1. Hypothesis: positions of any size (up to far past int64), margins, isolated or cross, wallets and
   marks (three perpetuals, two margin assets), changed in place, removed and re-added between
   sweeps — the mirror follows the book through every kind of change.
2. Seeded command streams through `Engine.apply` (orders, reduce-only, leverage, margin type,
   isolated margin, transfers, index moves, liquidation steps, funding): every place the engine
   changes a position reaches the sweep.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from ringfence.app import new_engine
from ringfence.derivatives.columns import columns_of
from ringfence.derivatives.commands import (
    AdjustIsolatedMargin,
    FuturesTransfer,
    LiquidateAccount,
    LiquidatePosition,
    ListPerpetual,
    SetLeverage,
    SetMarginType,
)
from ringfence.derivatives.state import Position, derivatives_state, margin_check, margin_check_reference
from ringfence.engine.core import Engine
from ringfence.ledger.commands import RegisterAsset
from ringfence.trading.commands import CancelAll
from ringfence.trading.state import trading_state

from tests.derivatives.perpworld import BRACKETS, PERP, USDT, order, perp_world, rejected, transfer, with_index

PERPS = (("BTCUSDTPERP", "BTC", "USDT"), ("ETHUSDTPERP", "ETH", "USDT"), ("BTCUSDCPERP", "BTC", "USDC"))
OWNERS = tuple(f"o{i}" for i in range(12))


def _world() -> Engine:
    engine = new_engine()
    seq = [0]

    def apply(cmd: Any) -> None:
        seq[0] += 1
        ev = engine.apply(cmd, seq[0], 1_700_000_000 * 10**9 + seq[0] * 1_000, b"\0" * 32)
        assert not rejected(ev), ev

    for code, dec in (("BTC", 8), ("ETH", 18), ("USDT", 6), ("USDC", 6)):
        apply(RegisterAsset(code, dec, "crypto", "ethereum"))
    for sym, base, quote in PERPS:  # ETH of 18 decimals: a scale the int64 columns leave to Python ints
        lot = 10**14 if base == "ETH" else 10_000
        apply(ListPerpetual(sym, base, quote, base + quote, BRACKETS, tick_size=10_000, lot_size=lot, min_qty=lot))
    ledger = engine.ledger
    for o in OWNERS:
        for asset in ("USDT", "USDC"):
            ledger.open_account(o, asset, "available", "derivatives")
    return engine


_ENGINE: list[Engine] = []


def _engine() -> Engine:
    if not _ENGINE:
        _ENGINE.append(_world())
    return _ENGINE[0]


_int = hs.one_of(hs.integers(0, 10**12), hs.integers(0, 2**70), hs.sampled_from([0, 1, 2**59, 2**62 - 1, 2**62, 2**63, 2**64]))
_margin = hs.one_of(hs.integers(0, 10**6), _int)  # small ones often: many accounts end below maintenance
_pos = hs.tuples(hs.sampled_from(OWNERS), hs.integers(0, len(PERPS) - 1), hs.integers(-(10**13), 10**13) | hs.integers(-(2**80), 2**80),
                 _int, _margin, hs.booleans())
_step = hs.lists(hs.tuples(hs.sampled_from(["set", "size", "cost", "margin", "pop", "readd", "iso"]),
                           hs.integers(0, 10**6), _int | hs.integers(-(10**12), 10**12)), max_size=12)
_mark = hs.one_of(hs.integers(0, 10**12), hs.integers(0, 2**64), hs.just(0))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(positions=hs.lists(_pos, max_size=40), marks=hs.tuples(_mark, _mark, _mark),
       wallets=hs.lists(hs.integers(0, 10**13) | hs.integers(0, 2**66), min_size=len(OWNERS) * 2, max_size=len(OWNERS) * 2),
       steps=hs.lists(_step, max_size=4))
def test_columns_agree_with_the_reference_loop(positions, marks, wallets, steps):
    engine = _engine()
    st = derivatives_state(engine)
    ledger = engine.ledger
    st.positions = {}  # a fresh book (and with it a fresh mirror)
    st.isolated = set()
    markets = trading_state(engine).markets
    for (sym, _, _), mark in zip(PERPS, marks):
        markets[sym].last_price = mark  # no index configured: the mark is the last trade
    for i, o in enumerate(OWNERS):  # the wallets as drawn (through the ledger)
        for j, asset in enumerate(("USDT", "USDC")):
            w = ledger.get(o, asset, "available", "derivatives")
            want = wallets[2 * i + j]
            if want > w.balance:
                ledger.move(ledger.world(asset), w, want - w.balance)
            elif want < w.balance:
                ledger.move(w, ledger.world(asset), w.balance - want)
    for owner, k, size, cost, margin, iso in positions:
        key = (owner, PERPS[k][0])
        if iso:
            st.isolated.add(key)
        else:
            st.isolated.discard(key)
        st.positions[key] = Position(size, cost, margin)
    assert margin_check(engine) == margin_check_reference(engine)
    for batch in steps:
        for what, pick, value in batch:
            keys = list(st.positions)
            key = keys[pick % len(keys)] if keys else (OWNERS[pick % len(OWNERS)], PERPS[pick % len(PERPS)][0])
            pos = st.positions.get(key)
            if what == "set":
                st.positions[key] = Position(value - 2**40, abs(value), pick)
            elif pos is None:
                continue
            elif what == "size":
                pos.size = value if pick % 2 else -value
            elif what == "cost":
                pos.cost = abs(value)
            elif what == "margin":
                pos.margin = abs(value)
            elif what == "pop":
                st.positions.pop(key)
            elif what == "readd":  # removed and inserted again: it moves to the end of the dict order
                del st.positions[key]
                st.positions[key] = pos
            elif what == "iso":
                (st.isolated.discard if key in st.isolated else st.isolated.add)(key)
        assert margin_check(engine) == margin_check_reference(engine)
        columns_of(st).verify()


@pytest.mark.parametrize("seed", [11, 12])
def test_columns_follow_the_engine_through_every_command(seed):
    print("seed", seed)
    rng = random.Random(seed)
    owners = ("a1", "a2", "a3", "a4", "a5")
    d = perp_world(owners=owners, usdt=1_000)
    quote = with_index(d)
    px = 60_000
    quote(str(px))
    for o in owners:  # high leverage: small index moves put accounts below maintenance
        d.apply(SetLeverage(o, PERP, rng.choice([50, 100, 125])))
    for o in owners[:2]:
        assert not rejected(d.apply(SetMarginType(o, PERP, "ISOLATED")))
    st = derivatives_state(d.engine)
    seen_below = most = adjusted = 0
    for step in range(70):
        o = rng.choice(owners)
        r = rng.random()
        if r < 0.5:
            p = px + rng.randint(-300, 300)
            order(d, o, rng.choice(["BUY", "SELL"]), str(p), f"0.{rng.randint(1, 3000):04d}", reduce_only=int(rng.random() < 0.15),
                  **({"order_type": "MARKET"} if rng.random() < 0.15 else {}))
        elif r < 0.6:
            px = max(1_000, px + rng.randint(-1_500, 1_500))
            quote(str(px))
        elif r < 0.65:
            d.apply(CancelAll(o, PERP))
        elif r < 0.7:
            d.apply(SetLeverage(o, PERP, rng.choice([5, 50, 125])))
        elif r < 0.72:
            d.apply(SetMarginType(o, PERP, rng.choice(["ISOLATED", "CROSSED"])))
        elif r < 0.8:
            o = rng.choice([x for x in owners if (x, PERP) in st.isolated and (x, PERP) in st.positions] or [o])
            adjusted += not rejected(d.apply(AdjustIsolatedMargin(o, PERP, rng.randint(1, 50) * USDT, rng.choice([1, 1, 2]))))
        elif r < 0.85:
            transfer(d, o, rng.randint(1, 2_000) * USDT, rng.choice(["MAIN_UMFUTURE", "UMFUTURE_MAIN"]))
        elif r < 0.9:
            d.apply(FuturesTransfer(o, "USDT", 1, "MAIN_UMFUTURE"), advance_ns=3 * 3600 * 10**9)  # funding rounds pass
        for owner, scope, _, _ in margin_check(d.engine):
            seen_below += 1
            d.apply(LiquidatePosition(owner, scope) if scope in st.perps else LiquidateAccount(owner, scope), advance_ns=6 * 10**9)
        most = max(most, len(st.positions))
        assert margin_check(d.engine) == margin_check_reference(d.engine), step
        d.engine.check_invariants()  # with the mirror built: it holds exactly the book
    assert most >= 3 and seen_below and adjusted, (most, seen_below, adjusted)  # the stream reached positions and liquidations


def test_the_order_is_the_books_through_removals_and_reinsertions():
    """Isolated positions first, then cross accounts, each in the book's dict order — which a key
    removed and inserted again, or a slot of the mirror used again, must not disturb."""
    engine = _engine()
    st = derivatives_state(engine)
    st.positions = {}
    st.isolated = set()
    for sym, _, _ in PERPS:
        trading_state(engine).markets[sym].last_price = 60_000 * USDT
    ledger = engine.ledger
    for o in OWNERS:
        for asset in ("USDT", "USDC"):
            w = ledger.get(o, asset, "available", "derivatives")
            if w.balance:
                ledger.move(w, ledger.world(asset), w.balance)
    for i, o in enumerate(OWNERS):  # every one far below maintenance: long 1 BTC bought at 90,000
        if i % 3 == 0:
            st.isolated.add((o, PERPS[0][0]))
        st.positions[(o, PERPS[0][0])] = Position(10**8, 90_000 * USDT, 0)
    assert len(margin_check(engine)) == len(OWNERS)
    for o in (OWNERS[0], OWNERS[4], OWNERS[3]):  # to the end of the dict order
        pos = st.positions.pop((o, PERPS[0][0]))
        st.positions[(o, PERPS[0][0])] = pos
    del st.positions[(OWNERS[6], PERPS[0][0])]  # a slot freed, then used by a later key
    st.positions[(OWNERS[1], PERPS[2][0])] = Position(-(10**8), 30_000 * USDT, 0)
    st.positions[(OWNERS[6], PERPS[0][0])] = Position(10**8, 90_000 * USDT, 0)
    got = margin_check(engine)
    assert got == margin_check_reference(engine)
    assert [r[0] for r in got] == ["o9", "o0", "o3", "o6", "o1", "o2", "o5", "o7", "o8", "o10", "o11", "o4", "o1"]
