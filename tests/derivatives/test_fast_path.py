"""The perpetual order and fill fast path against the code it replaced (`reference_contract.py`).

Two exchanges run the same command stream: one with the engine's `Contract`, one whose perpetual
market carries `ReferenceContract` (the old `order_hold`, `_reducible` and `_side`, verbatim).
Every command must give the same events, and the two must end in the same state hash: the same
balances, the same ledger counters (so the same postings), positions, holds and orders. The
streams reach opening, increasing, reducing and flipping fills, isolated and cross margin,
reduce-only and market orders, refusals for margin, funding rounds, index moves, leverage
changes, added and removed isolated margin, transfers and liquidations (with the insurance fund).
"""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as hs

from ringfence.derivatives.commands import (
    AdjustIsolatedMargin,
    FuturesTransfer,
    LiquidateAccount,
    LiquidatePosition,
    SetLeverage,
    SetMarginType,
)
from ringfence.derivatives.state import derivatives_state, margin_check
from ringfence.trading.commands import CancelAll
from ringfence.trading.state import trading_state

from tests.derivatives.perpworld import PERP, USDT, order, perp_world, rejected, transfer, with_index
from tests.derivatives.reference_contract import ReferenceContract

OWNERS = ("a1", "a2", "a3", "a4", "a5")


class Twin:
    """The same exchange twice: `fast` with the engine's contract, `ref` with the old one."""

    def __init__(self, usdt: int) -> None:
        self.fast = perp_world(owners=OWNERS, usdt=usdt)
        self.ref = perp_world(owners=OWNERS, usdt=usdt)
        ref_engine = self.ref.engine
        trading_state(ref_engine).markets[PERP].contract = ReferenceContract(ref_engine, PERP)
        self.quotes = (with_index(self.fast), with_index(self.ref))
        self.steps = 0
        self.fills = 0
        self.market_reduce_only = 0  # makers expired because the market only reduced

    def both(self, fn: Any) -> list[Any]:
        a, b = fn(self.fast), fn(self.ref)
        assert a == b, (self.steps, a, b)
        self.steps += 1
        self.fills += sum(type(e).__name__ == "PositionChanged" for e in a)
        self.market_reduce_only += sum(type(e).__name__ == "OrderExpired" and e.reason == "MARKET_REDUCE_ONLY" for e in a)
        return a

    def quote(self, px: int) -> None:
        self.both(lambda d: self.quotes[d is self.ref](str(px)))

    def liquidate(self) -> None:
        st = derivatives_state(self.fast.engine)
        below = margin_check(self.fast.engine)
        assert below == margin_check(self.ref.engine)
        for owner, scope, _, _ in below:
            cmd = LiquidatePosition(owner, scope) if scope in st.perps else LiquidateAccount(owner, scope)
            self.both(lambda d, cmd=cmd: d.apply(cmd, advance_ns=6 * 10**9))

    def same_state(self) -> None:
        self.fast.engine.check_invariants()
        self.ref.engine.check_invariants()
        assert self.fast.engine.state_hash() == self.ref.engine.state_hash(), self.steps


def _step(t: Twin, rng: random.Random, px: int) -> int:
    o = rng.choice(OWNERS)
    r = rng.random()
    if r < 0.55:
        p = px + rng.randint(-300, 300)
        side = rng.choice(["BUY", "SELL"])
        q = f"0.{rng.randint(1, 3000):04d}"
        kw: dict[str, Any] = {"reduce_only": int(rng.random() < 0.15)}
        if rng.random() < 0.15:
            kw["order_type"] = "MARKET"
        t.both(lambda d: order(d, o, side, str(p), q, **kw))
    elif r < 0.63:
        px = max(1_000, px + rng.randint(-1_500, 1_500))
        t.quote(px)
    elif r < 0.67:
        t.both(lambda d: d.apply(CancelAll(o, PERP)))
    elif r < 0.72:
        lev = rng.choice([5, 20, 50, 125])
        t.both(lambda d: d.apply(SetLeverage(o, PERP, lev)))
    elif r < 0.75:
        mt = rng.choice(["ISOLATED", "CROSSED"])
        t.both(lambda d: d.apply(SetMarginType(o, PERP, mt)))
    elif r < 0.81:
        amount, action = rng.randint(1, 50) * USDT, rng.choice([1, 1, 2])
        t.both(lambda d: d.apply(AdjustIsolatedMargin(o, PERP, amount, action)))
    elif r < 0.87:
        amount, direction = rng.randint(1, 2_000) * USDT, rng.choice(["MAIN_UMFUTURE", "UMFUTURE_MAIN"])
        t.both(lambda d: transfer(d, o, amount, direction))
    elif r < 0.9:
        t.both(lambda d: d.apply(FuturesTransfer(o, "USDT", 1, "MAIN_UMFUTURE"), advance_ns=3 * 3600 * 10**9))  # funding
    t.liquidate()
    return px


def _run(seed: int, steps: int, usdt: int) -> Twin:
    rng = random.Random(seed)
    t = Twin(usdt)
    px = 60_000
    t.quote(px)
    for o in OWNERS[:2]:
        t.both(lambda d, o=o: d.apply(SetMarginType(o, PERP, "ISOLATED")))
    for o in OWNERS:
        lev = rng.choice([20, 50, 125])
        t.both(lambda d, o=o, lev=lev: d.apply(SetLeverage(o, PERP, lev)))
    for i in range(steps):
        px = _step(t, rng, px)
        if i % 25 == 24:
            t.same_state()
    t.same_state()
    return t


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=hs.integers(0, 2**32 - 1), usdt=hs.sampled_from([300, 1_000, 20_000]))
# A purely reducing order that borrows its fee reserve from its position's margin (`before_hold`):
# compiled, the margin's write did not reach the margin sweep's mirror (the columns disagreed).
@example(seed=38, usdt=300)
def test_the_fast_path_gives_the_old_paths_events_and_state(seed: int, usdt: int) -> None:
    print("seed", seed, "usdt", usdt)
    _run(seed, 60, usdt)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_long_streams_reach_every_kind_of_fill_and_agree(seed: int) -> None:
    print("seed", seed)
    t = _run(seed, 300, 1_000)
    # The stream traded (opens, reductions, flips, liquidations). A funding jump leaves the index's
    # one venue stale until the next quote: meanwhile the market only reduces and makers that would
    # open are expired instead of filled (issue 17), so a little fewer fill than before.
    assert t.fills >= 90, t.fills


def test_a_market_that_only_reduces_matches_the_same_in_both() -> None:
    """Streams with a REDUCE_ONLY halt on the perpetual (or its segment, or the venue) raised and
    lifted now and then: the engine's contract and the reference apply the reduce-only-market rule
    (docs/derivatives.md, "Reduce-only market") to the same makers, with the same events and state."""
    from ringfence.risk.halts import Halt

    from tests.derivatives.test_reduce_only_market import _desk

    expired = 0
    for seed in range(3):
        rng = random.Random(1000 + seed)
        t = Twin(1_000)
        # (the same nonces on both sides: the nonces seen are part of the state hash)
        desks = {id(d.engine): _desk(d, nonce=(lambda n=itertools.count(): f"{next(n):032x}")) for d in (t.fast, t.ref)}
        px = 60_000
        t.quote(px)
        raised = ""
        for i in range(200):
            if rng.random() < 0.08:
                if raised:
                    hid = raised
                    t.both(lambda d, hid=hid, desks=desks: d.apply(desks[id(d.engine)].lift(d.engine, hid, "checked", ["op0", "op1"])))
                    raised = ""
                else:
                    raised = f"h{i}"
                    kind, where = rng.choice([("market", PERP), ("segment", "derivatives"), ("venue", "*")])
                    halt = Halt(raised, kind, where, "REDUCE_ONLY", "differential")
                    t.both(lambda d, halt=halt: d.apply(halt))
                continue
            px = _step(t, rng, px)
            if i % 25 == 24:
                t.same_state()
        t.same_state()
        expired += t.market_reduce_only
    assert expired > 0  # the rule was exercised, not only agreed on while idle


def test_a_margin_refusal_says_the_same_as_before() -> None:
    t = Twin(100)
    t.quote(60_000)
    ev = t.both(lambda d: order(d, "a1", "BUY", "60000", "5"))
    assert rejected(ev) is not None and "Margin is insufficient" in rejected(ev).message


def test_an_accepted_order_pays_from_its_own_owners_wallet() -> None:
    """Trading pays an accepted perpetual order from the wallet its contract found in `order_hold`
    (`Contract.order_wallet`, not a second lookup): after alice's order, dave — who has no
    derivatives wallet — places a market buy on an empty ask side (accepted, nothing held, expired
    at once): his own wallet is opened for it, alice's is not taken for his."""
    d = perp_world()
    assert not rejected(order(d, "alice", "BUY", "60000", "0.1"))
    ledger = d.engine.ledger
    assert ledger.find("dave", "USDT", "available", "derivatives") is None
    alice = ledger.find("alice", "USDT", "available", "derivatives")
    alice_before = (alice.credits_posted, alice.debits_posted, alice.debits_pending)
    ev = order(d, "dave", "BUY", "", "0.1", order_type="MARKET")
    assert not rejected(ev), ev
    assert [type(e).__name__ for e in ev if type(e).__name__.startswith("Order")] == ["OrderAccepted", "OrderExpired"], ev
    assert ledger.find("dave", "USDT", "available", "derivatives") is not None
    assert (alice.credits_posted, alice.debits_posted, alice.debits_pending) == alice_before
    d.engine.check_invariants()


def test_a_restore_binds_new_contracts_to_the_restored_states() -> None:
    """A perpetual's contract reads the engine's states at its first use and keeps them
    (`Contract._bind`): a restore, which replaces every state, gives the restored markets new
    contracts. The same orders after a snapshot give the same events and state on the engine that
    took it, on an engine restored from it, and on the first engine again once it has loaded the
    snapshot itself (its old contracts, bound to the states it dropped, no longer reached)."""
    import msgspec

    from tests.trading.scenario import Driver

    rng = random.Random(7)

    def orders(n: int) -> list[tuple[str, str, str, str]]:
        return [(rng.choice(OWNERS), rng.choice(["BUY", "SELL"]), str(60_000 + rng.randint(-300, 300)),
                 f"0.{rng.randint(1, 3000):04d}") for _ in range(n)]

    d = perp_world(owners=OWNERS, usdt=20_000)
    for o, side, px, q in orders(80):  # (the contract binds itself at the first of these)
        order(d, o, side, px, q)
    snap, ts_ns = d.engine.snapshot_bytes(), d.ts_ns
    old_contract = trading_state(d.engine).markets[PERP].contract
    restored = Driver(d.engine.restored(snap), ts_ns=ts_ns)
    more = orders(80)
    after = [order(d, *x) for x in more]
    assert sum(type(e).__name__ == "PositionChanged" for ev in after for e in ev) > 10  # (fills, not only rests)
    assert [order(restored, *x) for x in more] == after
    assert restored.engine.state_hash() == d.engine.state_hash()
    d.engine._load_state(msgspec.json.decode(snap))  # (what `Engine.enter_halt` does with a clean state)
    d.ts_ns = ts_ns
    assert trading_state(d.engine).markets[PERP].contract is not old_contract
    assert [order(d, *x) for x in more] == after
    assert d.engine.state_hash() == restored.engine.state_hash()


def test_the_taker_finds_its_seat_by_its_own_orders_owner_string() -> None:
    """Each command brings its own owner string (decoded from its bytes): equal to the one that made
    the owner's seat, seldom the same object. Placing an order points the owner's seat at this
    order's string (`Contract._seat`), the one its `Order` carries, so that the order's fills find
    the taker's seat by identity (`Contract._hint`) instead of looking it up again at every fill
    (kept at the seat's first string, the hint missed for every order but the owner's first)."""
    d = perp_world()
    contract = trading_state(d.engine).markets[PERP].contract

    def fresh(s: str) -> str:  # an equal string, another object
        return "".join(list(s))

    bob_first, bob_now = fresh("bob"), fresh("bob")
    assert bob_first is not bob_now and bob_first == bob_now == "bob"
    assert not rejected(order(d, fresh("alice"), "SELL", "60000", "0.1"))
    assert not rejected(order(d, bob_first, "BUY", "59000", "0.1"))  # bob's seat made with this string
    assert contract._seats["bob"].owner is bob_first
    ev = order(d, bob_now, "BUY", "60000", "0.1")  # takes alice's ask
    assert [e.owner for e in ev if type(e).__name__ == "PositionChanged"] == ["bob", "alice"], ev
    seat = contract._seats["bob"]
    assert contract._hint is seat and seat.owner is bob_now  # what `_side` compared the taker with
    assert seat.key == ("bob", PERP) and seat.pos is derivatives_state(d.engine).positions[("bob", PERP)]
    d.engine.check_invariants()


def test_the_handler_reads_the_order_once_and_refuses_as_before() -> None:
    """`_place_perp` reads a `PlacePerpOrder`'s fields once, by position, and hands them to trading
    (`trading.orders._place(..., placed=...)`) instead of trading reading the command again: the
    same refusals, naming the same fields, and nothing changed by them (an unknown perpetual, a
    reduce-only flag other than 0 or 1, a spot symbol); a reduce-only order is still placed as one
    (remembered, and cut down to the position); an ordinary one as before."""
    from ringfence.derivatives.commands import PlacePerpOrder
    from ringfence.trading.commands import PlaceOrder

    def state() -> list[Any]:  # all but the sequence number and the time, which every command moves
        return d.engine.snapshot_state()[3:]

    d = perp_world()
    before = state()
    for c, field in ((PlacePerpOrder("alice", "NOPEUSDTPERP", "BUY", price=60_000 * USDT, quantity=10**7), "symbol"),
                     (PlacePerpOrder("alice", "BTCUSDT", "BUY", price=60_000 * USDT, quantity=10**7), "symbol"),
                     (PlacePerpOrder("alice", PERP, "BUY", price=60_000 * USDT, quantity=10**7, reduce_only=2), "reduce_only")):
        e = rejected(d.apply(c))
        assert e is not None and e.field == field, (c, e)
        assert state() == before
    assert not rejected(order(d, "alice", "SELL", "60000", "0.1"))
    assert not rejected(order(d, "bob", "BUY", "60000", "0.1"))  # bob long 0.1
    assert rejected(order(d, "bob", "SELL", "61000", "0.3", reduce_only=1)).reason == "REDUCE_ONLY_REJECTED"
    ev = order(d, "bob", "SELL", "61000", "0.1", reduce_only=1)  # rests, reduce-only
    assert not rejected(ev), ev
    st = derivatives_state(d.engine)
    oid = next(e.order_id for e in ev if type(e).__name__ == "OrderAccepted")
    assert st.reduce_only_orders[PERP] == {oid} and not st.reduce_only
    assert not rejected(order(d, "carol", "BUY", "60000", "0.04"))
    assert not rejected(order(d, "bob", "SELL", "60000", "0.04"))  # bob long 0.06: his reduce-only order cut to it
    m = trading_state(d.engine).markets[PERP]
    assert st.positions[("bob", PERP)].size == m.orders[oid].leaves == 6 * 10**6
    # A spot order is read by trading itself, as before (no fields handed in).
    assert d.apply(PlaceOrder("alice", "BTCUSDT", "BUY", price=1, quantity=1))
    d.engine.check_invariants()
