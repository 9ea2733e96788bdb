"""`Engine.state_digest` reuses a component's last digest only while nothing that may change it ran.

Each module declares the states its handlers, hooks and timers may change (`Module.writes`); the
engine records which command types, hooks and timers ran since the last digest and recomputes
exactly the components they may have changed (the ledger keeps its own incremental digest). A
declaration that leaves out a state a path really changes would keep a stale digest: the
property below runs random batches across the standard modules (ledger transfers, two-phase holds
that expire on sequencer time, spot and perpetual orders, cancels, futures wallet moves, halts,
long jumps in time that make the funding timer run) with `check_digest_cache` on, which recomputes
every reused digest and raises if it changed, and compares every digest with that of an engine
restored from the snapshot (every part computed from nothing). Planted modules show that a wrong
declaration is caught, that a halt or a load drops every kept digest, and that the cache is used.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ringfence.app import engine_from_snapshot, new_engine
from ringfence.derivatives.commands import FuturesTransfer, ListPerpetual, PlacePerpOrder
from ringfence.derivatives.demo import BTC_BRACKETS
from ringfence.engine.commands import Command, Event
from ringfence.engine.core import Engine, ShardHalt
from ringfence.engine.module import Effect, Module
from ringfence.errors import InvariantViolation
from ringfence.ledger.commands import MODULE as LEDGER
from ringfence.ledger.commands import CreateTransfers, OpenAccount, RegisterAsset
from ringfence.ledger.model import Transfer, TransferFlags
from ringfence.risk.halts import Halt
from ringfence.trading import digest as trading_digest
from ringfence.trading.commands import AmendOrder, CancelAll, CancelOrder, ListMarket, PlaceOrder, SetReferencePrice, TradingBatch

T0_NS = 1_767_225_600_000_000_000
USDT = 10**6
OWNERS = ("a", "b", "c")
#: Two spot markets: an order on one must re-encode that market only (trading/digest.py).
SPOT = ("BTCUSDT", "XBTUSDT")


class _Driver:
    """Applies batches to an engine with increasing sequence numbers and sequencer time."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.ts_ns = max(engine.now_ns, T0_NS)

    def run(self, command: Any, advance_ns: int = 1_000_000) -> list[Any]:
        self.ts_ns += advance_ns
        return self.engine.apply(command, self.engine.last_seq + 1, self.ts_ns, b"e" * 32)


@lru_cache(maxsize=1)
def _base_snapshot() -> bytes:
    """Two assets, three funded owners, a spot market and a perpetual with funded futures wallets."""
    d = _Driver(new_engine())
    d.run(RegisterAsset("BTC", 8, "crypto", "bitcoin"))
    d.run(RegisterAsset("USDT", 6, "crypto", "ethereum"))
    for owner in OWNERS:
        for asset in ("BTC", "USDT"):
            d.run(OpenAccount(owner, asset, "available", "spot"))
    ledger = d.engine.ledger
    funding = [(o, a, amount) for o in OWNERS for a, amount in (("BTC", 10**9), ("USDT", 10**12))]
    d.run(CreateTransfers([Transfer(i + 1, ledger.world(a).id, ledger.get(o, a, "available", "spot").id, amount)
                           for i, (o, a, amount) in enumerate(funding)]))
    for symbol in SPOT:
        d.run(ListMarket(symbol=symbol, base="BTC", quote="USDT", segment="spot", tick_size=10_000,
                         lot_size=10_000, min_qty=10_000, min_notional=5 * USDT))
        d.run(SetReferencePrice(symbol, 61_000 * USDT))
    d.run(ListPerpetual("BTCUSDTPERP", "BTC", "USDT", "BTCUSDT", BTC_BRACKETS, tick_size=100_000, lot_size=100_000,
                        min_qty=100_000, max_qty=10**11, min_notional=5 * USDT, default_leverage=20,
                        impact_notional=5_000 * USDT, max_account_share_ppm=0, concentration_imr_ppm=0))
    for owner in OWNERS:
        d.run(FuturesTransfer(owner, "USDT", 10_000 * USDT, "MAIN_UMFUTURE"))
    return d.engine.snapshot_bytes()


owners = st.sampled_from(OWNERS)
sides = st.sampled_from(("BUY", "SELL"))
_transfer = st.tuples(st.just("transfer"), owners, owners, st.sampled_from(("BTC", "USDT")), st.integers(1, 10**6))
_hold = st.tuples(st.just("hold"), owners, owners, st.integers(1, 10**6), st.integers(1, 10**10))
spot = st.sampled_from(SPOT)
_order = st.tuples(st.just("order"), owners, spot, sides, st.integers(-30, 30), st.integers(1, 5))
_amend = st.tuples(st.just("amend"), spot, st.integers(0, 40), st.integers(-30, 30), st.integers(0, 5))
_cancel_all = st.tuples(st.just("cancel_all"), owners, st.sampled_from((*SPOT, "BTCUSDTPERP")))
_batch = st.tuples(st.just("batch"), st.lists(st.tuples(owners, spot, sides, st.integers(-30, 30), st.integers(1, 5)), min_size=1, max_size=3))
_perp = st.tuples(st.just("perp"), owners, sides, st.integers(-30, 30), st.integers(1, 5))
_cancel = st.tuples(st.just("cancel"), st.sampled_from((*SPOT, "BTCUSDTPERP")), st.integers(0, 40))
_wallet = st.tuples(st.just("wallet"), owners, st.integers(1, 10**9), st.sampled_from(("MAIN_UMFUTURE", "UMFUTURE_MAIN")))
_halt = st.tuples(st.just("halt"), st.sampled_from((*SPOT, "BTCUSDTPERP")), st.sampled_from(("REDUCE_ONLY", "HALTED")))
_wait = st.tuples(st.just("wait"), st.integers(1, 10 * 3600 * 10**9))  # up to 10 h: funding falls due
# halts are rarer: a halted market refuses what follows
operations = st.one_of(_transfer, _hold, _order, _order, _perp, _perp, _cancel, _wallet, _wait, _amend, _cancel_all, _batch,
                       st.integers(0, 3).flatmap(lambda k: _halt if k == 0 else _order))


def _spot_order(owner: str, symbol: str, side: str, ticks: int, lots: int) -> PlaceOrder:
    return PlaceOrder(owner, symbol, side, price=61_000 * USDT + ticks * 10_000 * 20, quantity=lots * 10_000)


def _command(engine: Engine, op: tuple[Any, ...], n: int) -> tuple[Any, int]:
    """The command for `op` and how far to move sequencer time before it."""
    ledger = engine.ledger
    kind = op[0]
    if kind == "transfer":
        _, src, dst, asset, amount = op
        return CreateTransfers([Transfer(10**9 + n, ledger.get(src, asset, "available", "spot").id,
                                         ledger.get(dst, asset, "available", "spot").id, amount)]), 1
    if kind == "hold":  # two-phase, expires on sequencer time (the ledger's timer)
        _, src, dst, amount, timeout_ns = op
        return CreateTransfers([Transfer(10**9 + n, ledger.get(src, "USDT", "available", "spot").id,
                                         ledger.get(dst, "USDT", "available", "spot").id, amount,
                                         timeout_ns=timeout_ns, flags=TransferFlags.PENDING)]), 1
    if kind == "order":
        _, owner, symbol, side, ticks, lots = op
        return _spot_order(owner, symbol, side, ticks, lots), 1
    if kind == "batch":  # a gateway's batch of orders, on one or both spot markets
        return TradingBatch([_spot_order(*action) for action in op[1]]), 1
    if kind == "amend":
        _, symbol, k, ticks, lots = op
        resting = sorted(engine.components["trading"].markets[symbol].orders.items())
        owner, order_id = (resting[k % len(resting)][1].owner, resting[k % len(resting)][0]) if resting else ("a", 1)
        return AmendOrder(owner, symbol, order_id, price=61_000 * USDT + ticks * 10_000 * 20, quantity=lots * 10_000), 1
    if kind == "cancel_all":
        return CancelAll(op[1], op[2]), 1
    if kind == "perp":
        _, owner, side, ticks, lots = op
        return PlacePerpOrder(owner, "BTCUSDTPERP", side, price=61_000 * USDT + ticks * 100_000 * 10,
                              quantity=lots * 100_000), 1
    if kind == "cancel":  # the k-th open order of the market (trading's CancelOrder, a perpetual's too)
        _, symbol, k = op
        resting = sorted(engine.components["trading"].markets[symbol].orders.items())
        owner, order_id = (resting[k % len(resting)][1].owner, resting[k % len(resting)][0]) if resting else ("a", 1)
        return CancelOrder(owner, symbol, order_id=order_id), 1
    if kind == "wallet":
        _, owner, amount, direction = op
        return FuturesTransfer(owner, "USDT", amount, direction), 1
    if kind == "halt":
        _, symbol, level = op
        return Halt(f"h{n}", "market", symbol, level, "property test"), 1
    _, wait_ns = op  # only time moves: a transfer that is refused (an unknown account) carries it
    return CreateTransfers([Transfer(10**9 + n, 10**12, 10**12 + 1, 1)]), wait_ns


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=st.lists(st.lists(operations, min_size=1, max_size=4), min_size=1, max_size=10),
       digest_after=st.lists(st.booleans(), min_size=10, max_size=10))
def test_incremental_digest_equals_the_digest_from_nothing_after_random_batches(batches, digest_after):
    engine = engine_from_snapshot(_base_snapshot())
    engine.check_digest_cache = True  # a reused digest that no longer holds raises InvariantViolation
    engine.state_digest()
    driver = _Driver(engine)
    n = 0
    for i, batch in enumerate(batches):
        for op in batch:
            n += 1
            command, advance_ns = _command(engine, op, n)
            driver.run(command, advance_ns)
        if digest_after[i] or i == len(batches) - 1:  # digests now and then: changes accumulate between
            live = engine.state_digest()
            assert live == engine.restored(engine.snapshot_bytes()).state_digest(), f"after batch {i}: {batch}"


# ------------------------------------------------------------------------------ planted modules


class Box:
    """A planted module's state: one counter."""

    def __init__(self) -> None:
        self.value = 0


def _box_state(module: Module) -> None:
    def restore(engine: Engine, data: Any) -> Box:
        box = Box()
        box.value = data
        return box

    module.declare_state(lambda engine: Box(), lambda box: box.value, restore)


class BumpVictim(Command, tag="test.digest.bump_victim/1"):
    by: int


class Sneak(Command, tag="test.digest.sneak/1"):
    """Handled by the `sneaky` module, which changes the `victim` state."""

    by: int


class SneakThenBreak(Command, tag="test.digest.sneak_break/1"):
    by: int


class Noted(Event, tag="test.digest.noted/1"):
    value: int


def _planted(sneaky_writes: tuple[str, ...] | None) -> tuple[Module, Module, list[str]]:
    """`victim` (its own counter) and `sneaky` (declares `sneaky_writes`, changes victim's counter);
    the names of the states whose snapshot was taken, in order."""
    snapshots: list[str] = []
    victim = Module("victim", writes=("victim",))
    sneaky = Module("sneaky", writes=sneaky_writes)
    for module in (victim, sneaky):
        _box_state(module)
        spec = module.state
        assert spec is not None

        def counting(box: Box, name: str = module.name) -> int:
            snapshots.append(name)
            return box.value

        module.state = type(spec)(spec.name, spec.factory, counting, spec.restore)
    victim.declare_events(Noted)

    @victim.handles(BumpVictim, effect=Effect.NEUTRAL)
    def _bump(engine: Engine, c: BumpVictim) -> list[Event]:
        engine.components["victim"].value += c.by
        return [Noted(engine.components["victim"].value)]

    @sneaky.handles(Sneak, effect=Effect.NEUTRAL)
    def _sneak(engine: Engine, c: Sneak) -> list[Event]:
        engine.components["sneaky"].value += 1
        engine.components["victim"].value += c.by  # another module's state
        return []

    @sneaky.handles(SneakThenBreak, effect=Effect.NEUTRAL)
    def _sneak_then_break(engine: Engine, c: SneakThenBreak) -> list[Event]:
        engine.components["victim"].value += c.by
        raise InvariantViolation("planted: broke half-way")

    return victim, sneaky, snapshots


def _engine(*modules: Module) -> tuple[Engine, _Driver]:
    engine = Engine((LEDGER, *modules))
    engine.check_digest_cache = True
    return engine, _Driver(engine)


def test_a_state_changed_by_a_module_that_does_not_declare_it_is_caught():
    victim, sneaky, _ = _planted(("sneaky",))  # wrong: it changes `victim` too
    engine, d = _engine(victim, sneaky)
    d.run(BumpVictim(1))
    engine.state_digest()
    d.run(Sneak(5))
    with pytest.raises(InvariantViolation, match=r"state 'victim' changed, but no module declaring it in `writes` ran: \['Sneak'\]"):
        engine.state_digest()


def test_without_the_check_an_undeclared_write_would_keep_a_stale_digest():
    """Why the declarations matter (and why the check exists): the kept digest is the old one."""
    victim, sneaky, _ = _planted(("sneaky",))
    engine, d = _engine(victim, sneaky)
    engine.check_digest_cache = False
    engine.state_digest()
    d.run(Sneak(5))
    assert engine.state_digest() != engine.restored(engine.snapshot_bytes()).state_digest()


@pytest.mark.parametrize("writes", [("sneaky", "victim"), None])
def test_a_declared_or_undeclared_writer_makes_the_engine_recompute(writes):
    victim, sneaky, _ = _planted(writes)  # None: the module may write any state
    engine, d = _engine(victim, sneaky)
    engine.state_digest()
    d.run(Sneak(5))
    assert engine.state_digest() == engine.restored(engine.snapshot_bytes()).state_digest()


def test_the_kept_digest_is_used_for_what_did_not_run_and_only_for_that():
    victim, sneaky, snapshots = _planted(("sneaky", "victim"))
    engine, d = _engine(victim, sneaky)
    engine.check_digest_cache = False  # the check would take every snapshot itself
    engine.state_digest()
    assert sorted(snapshots) == ["sneaky", "victim"]  # the first digest computes everything
    snapshots.clear()
    d.run(CreateTransfers([Transfer(1, 10**12, 10**12 + 1, 1)]))  # the ledger only (refused: no account)
    engine.state_digest()
    assert snapshots == []
    d.run(BumpVictim(2))
    engine.state_digest()
    assert snapshots == ["victim"]
    snapshots.clear()
    d.run(Sneak(1))
    engine.state_digest()
    assert sorted(snapshots) == ["sneaky", "victim"]


def test_a_halt_rebuild_and_a_load_drop_every_kept_digest():
    victim, sneaky, _ = _planted(("sneaky", "victim"))
    engine, d = _engine(victim, sneaky)
    d.run(BumpVictim(3))
    engine.state_digest()
    clean = engine.snapshot_bytes()
    with pytest.raises(ShardHalt) as halt:
        d.run(SneakThenBreak(100))  # changed `victim`, then broke: the rebuild undoes it
    engine.enter_halt(engine.restored(clean), halt.value)
    assert engine.state_digest() == engine.restored(engine.snapshot_bytes()).state_digest()
    assert engine.components["victim"].value == 3
    # a load replaces every state object: even a state nothing ran on is recomputed
    other, od = _engine(*_planted(("sneaky", "victim"))[:2])
    od.run(BumpVictim(7))
    engine.state_digest()
    engine._load_state(__import__("msgspec").json.decode(other.snapshot_bytes()))
    assert engine.state_digest() == other.state_digest()


class Tick(Command, tag="test.digest.tick/1"):
    pass


def test_what_a_timer_changes_is_recomputed():
    """A timer runs before a command of another module, on sequencer time: its module's states
    count as changed (here the ledger's refused transfer carries the time)."""
    clock = Module("clock", writes=("clock",))
    _box_state(clock)

    @clock.timer(lambda box: T0_NS + 10**12 if box.value == 0 else 1 << 63)
    def _ring(engine: Engine) -> list[Event]:
        if engine.now_ns >= T0_NS + 10**12:
            engine.components["clock"].value = 1
        return []

    engine, d = _engine(clock)
    d.run(CreateTransfers([Transfer(1, 10**12, 10**12 + 1, 1)]))
    before = engine.state_digest()
    d.run(CreateTransfers([Transfer(2, 10**12, 10**12 + 1, 1)]), advance_ns=2 * 10**12)
    assert engine.components["clock"].value == 1
    after = engine.state_digest()
    assert after != before
    assert after == engine.restored(engine.snapshot_bytes()).state_digest()


def test_every_standard_module_declares_only_states_that_exist():
    """A misspelt name in `writes` would leave the real state undeclared."""
    engine = new_engine()
    names = set(engine.components)
    for module in engine.modules:
        assert module.writes is not None, f"{module.name} declares no writes (every batch would recompute everything)"
        assert set(module.writes) <= names, f"{module.name}: {sorted(set(module.writes) - names)}"


# ------------------------------------------------------------------------- trading, market by market


def _counting_markets(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    encoded: list[str] = []
    real = trading_digest.market_snapshot

    def counting(symbol: str, m: Any) -> Any:
        encoded.append(symbol)
        return real(symbol, m)

    monkeypatch.setattr(trading_digest, "market_snapshot", counting)
    return encoded


def test_an_order_re_encodes_its_own_spot_market_only(monkeypatch):
    engine = engine_from_snapshot(_base_snapshot())
    engine.check_digest_cache = True
    d = _Driver(engine)
    encoded = _counting_markets(monkeypatch)
    d.run(CreateTransfers([Transfer(10**9, 10**12, 10**12 + 1, 1)]))  # a loaded engine runs every timer first
    engine.state_digest()
    assert sorted(encoded) == ["BTCUSDT", "BTCUSDTPERP", "XBTUSDT"]  # the first digest: every market
    for command, expected in [
        (CreateTransfers([Transfer(10**9 + 1, 10**12, 10**12 + 1, 1)]), []),  # the ledger only: trading's kept
        (_spot_order("a", "XBTUSDT", "BUY", -5, 1), ["XBTUSDT"]),
        (TradingBatch([_spot_order("b", "BTCUSDT", "SELL", 5, 1), CancelAll("a", "XBTUSDT")]), ["BTCUSDT", "XBTUSDT"]),
        (PlaceOrder("a", "NOSUCH", "BUY", price=1, quantity=1), []),  # refused: no market to encode
        (CancelOrder("a", "BTCUSDTPERP", order_id=1), ["BTCUSDT", "BTCUSDTPERP", "XBTUSDT"]),  # a perpetual: all
        (PlacePerpOrder("a", "BTCUSDTPERP", "BUY", price=60_000 * USDT, quantity=100_000), ["BTCUSDT", "BTCUSDTPERP", "XBTUSDT"]),
        (SetReferencePrice("XBTUSDT", 61_010 * USDT), ["BTCUSDT", "BTCUSDTPERP", "XBTUSDT"]),  # not narrowed: all
    ]:
        encoded.clear()
        d.run(command)
        live = engine.state_digest()
        assert sorted(encoded) == expected, command
        assert live == engine.restored(engine.snapshot_bytes()).state_digest()


def test_a_market_touched_but_not_re_encoded_is_caught(monkeypatch):
    """If the narrowing missed a market (here: it is told no market was named), the kept encoding
    is stale: the check compares with the snapshot's hash and raises."""
    engine = engine_from_snapshot(_base_snapshot())
    engine.check_digest_cache = True
    d = _Driver(engine)
    d.run(CreateTransfers([Transfer(10**9, 10**12, 10**12 + 1, 1)]))  # a loaded engine runs every timer first
    engine.state_digest()
    monkeypatch.setattr(trading_digest, "_named_symbols", lambda commands: set())
    d.run(_spot_order("a", "BTCUSDT", "BUY", -5, 1))
    with pytest.raises(InvariantViolation, match="'trading': the digest from its changes differs from its snapshot's"):
        engine.state_digest()


def test_the_trading_digest_is_the_hash_of_its_snapshot():
    """The same value as hashing the snapshot whole (the definition did not change)."""
    import hashlib

    from ringfence.engine.commands import encode

    engine = engine_from_snapshot(_base_snapshot())
    d = _Driver(engine)
    d.run(_spot_order("a", "XBTUSDT", "BUY", -5, 1))
    state = engine.components["trading"]
    spec = next(s for s in engine._states if s.name == "trading")
    expected = hashlib.sha256(encode(spec.snapshot(state))).hexdigest()
    assert trading_digest.digest_of_changes(state, None, {}) == expected


def test_an_engine_never_asked_for_a_digest_notes_nothing_and_its_first_digest_computes_everything(monkeypatch):
    """Without replication nothing is noted on the hot path; the first digest (and the first after
    a load) computes every component, whatever was cached by anything before."""
    engine = engine_from_snapshot(_base_snapshot())
    d = _Driver(engine)
    for k in range(5):
        d.run(_spot_order("a", "BTCUSDT", "BUY", -k, 1))
    assert not any(isinstance(key, type) for key in engine._ran) and engine._kept is None
    encoded = _counting_markets(monkeypatch)
    spec = next(s for s in engine._states if s.name == "trading")
    engine._digests["trading"] = "stale"  # whatever was kept before the first digest is not used
    live = engine.state_digest()
    assert sorted(encoded) == ["BTCUSDT", "BTCUSDTPERP", "XBTUSDT"]
    assert live == engine.restored(engine.snapshot_bytes()).state_digest()
    assert engine._digests["trading"] == engine._hash_component(spec, engine.components["trading"])
