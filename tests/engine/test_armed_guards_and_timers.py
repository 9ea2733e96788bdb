"""The engine's two hot-path economies change nothing a command sees (issue 14, "no worse speed").

* A guard declared with `Module.guard_while(armed)` runs in `apply` only while its module's state
  arms it (halts: while a halt is active). It must refuse exactly as an always-run guard would:
  right after the module's own command arms it, after a snapshot restore, and never once disarmed.
* A `Module.timer` runs only once sequencer time reaches the wake time its state reported, and
  whatever stores an earlier deadline wakes it (`Engine.wake_at`). The ledger's expiry is one: a
  pending transfer expires at the first command at or after its deadline, before that command,
  on a running engine and on one restored from a snapshot alike.
* A guard declared with `Module.guard_for(types)` runs (in `apply` and in `precheck`) for commands
  of exactly those types and no other, in module order with the rest.
"""

from __future__ import annotations

from typing import Any

from ringfence.app import new_engine
from ringfence.engine.commands import Command, Event
from ringfence.engine.core import CommandRejected, Engine
from ringfence.engine.module import NEVER, Effect, Module
from ringfence.errors import Halted
from ringfence.ledger.commands import CreateTransfers, OpenAccount, RegisterAsset, TransferExpired
from ringfence.ledger.model import Transfer, TransferFlags
from ringfence.risk.halts import Halt
from ringfence.trading.commands import ListMarket, OrderAccepted, PlaceOrder


class Gate(Command, tag="test.gate/1", frozen=True):
    closed: bool


class Ping(Command, tag="test.ping/1", frozen=True):
    pass


class Pinged(Event, tag="test.pinged/1", frozen=True):
    pass


class GateState:
    def __init__(self) -> None:
        self.closed = False
        self.checked = 0  # how often the guard ran in apply or precheck


def _gate_module() -> Module:
    module = Module("gate")
    module.declare_state(lambda engine: GateState(), lambda s: [s.closed], _restore_gate)
    module.declare_events(Pinged)

    @module.guard_while(lambda s: s.closed)
    def _guard(engine: Engine, command: Any) -> None:
        state = engine.components["gate"]
        state.checked += 1
        if state.closed and not isinstance(command, Gate):
            raise Halted("the gate is closed", field="gate")

    @module.handles(Gate, effect=Effect.ADMIN)
    def _gate(engine: Engine, c: Gate) -> list[Event]:
        engine.components["gate"].closed = c.closed
        return []

    @module.handles(Ping, effect=Effect.NEUTRAL)
    def _ping(engine: Engine, c: Ping) -> list[Event]:
        return [Pinged()]

    return module


def _restore_gate(engine: Engine, data: list[Any]) -> GateState:
    state = GateState()
    state.closed = data[0]
    return state


class Runner:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.ts_ns = 1_000_000

    def run(self, command: Any, advance_ns: int = 1_000) -> list[Any]:
        self.ts_ns += advance_ns
        return self.engine.apply(command, self.engine.last_seq + 1, self.ts_ns)


def _refused(events: list[Any]) -> bool:
    return any(isinstance(e, CommandRejected) and e.code == Halted.code for e in events)


def test_an_armed_guard_refuses_from_the_command_that_arms_it_until_the_one_that_disarms_it() -> None:
    r = Runner(new_engine(_gate_module()))
    state = r.engine.components["gate"]
    assert r.run(Ping()) == [Pinged()] and state.checked == 0  # disarmed: apply does not even call it
    r.run(Gate(True))
    assert _refused(r.run(Ping())) and state.checked == 1
    restored = Runner(r.engine.restored(r.engine.snapshot_bytes()))  # armed again by the restore
    restored.ts_ns = r.ts_ns
    assert _refused(restored.run(Ping()))
    r.run(Gate(False))
    checked = state.checked
    assert r.run(Ping()) == [Pinged()] and state.checked == checked
    try:
        r.engine.precheck(Ping())  # precheck runs every guard, armed or not
    finally:
        assert state.checked == checked + 1


def test_a_halt_refuses_orders_at_once_and_after_a_restore() -> None:
    r = Runner(new_engine())
    r.run(RegisterAsset("BTC", 8, "crypto", "bitcoin"))
    r.run(RegisterAsset("USDT", 6, "crypto", "ethereum"))
    listed = r.run(ListMarket("BTCUSDT", "BTC", "USDT", "spot", tick_size=10_000, lot_size=10_000, min_qty=10_000, band_ppm=0))
    assert type(listed[0]).__name__ == "MarketListed", listed
    r.run(OpenAccount("alice", "USDT"))
    usdt = r.engine.ledger
    r.run(CreateTransfers([Transfer(1, usdt.world("USDT").id, usdt.get("alice", "USDT").id, 10**12)]))
    order = PlaceOrder("alice", "BTCUSDT", "BUY", price=30_000 * 10**6, quantity=10**8)  # 1 BTC at 30,000 USDT
    events = r.run(order)
    assert any(isinstance(e, OrderAccepted) for e in events), events
    r.run(Halt("h1", "market", "BTCUSDT", "HALTED", "test"))
    assert _refused(r.run(order))
    restored = Runner(r.engine.restored(r.engine.snapshot_bytes()))
    restored.ts_ns = r.ts_ns
    assert _refused(restored.run(order))


P = TransferFlags.PENDING


def _ledger_runner() -> tuple[Runner, int, int]:
    r = Runner(new_engine())
    r.run(RegisterAsset("BTC", 8, "crypto", "bitcoin"))
    r.run(OpenAccount("alice", "BTC"))
    r.run(OpenAccount("bob", "BTC"))
    led = r.engine.ledger
    alice, bob = led.get("alice", "BTC").id, led.get("bob", "BTC").id
    r.run(CreateTransfers([Transfer(1, led.world("BTC").id, alice, 10_000)]))
    return r, alice, bob


def _expired(events: list[Any]) -> list[int]:
    return [e.pending_id for e in events if isinstance(e, TransferExpired)]


def test_a_pending_transfer_expires_at_the_first_command_at_or_after_its_deadline() -> None:
    r, alice, bob = _ledger_runner()
    r.run(CreateTransfers([Transfer(10, alice, bob, 500, flags=P, timeout_ns=10_000)]))
    deadline = r.ts_ns + 10_000
    r.run(CreateTransfers([Transfer(11, alice, bob, 100, flags=P, timeout_ns=3_000)]))  # an earlier deadline wakes it
    assert r.engine._wake_ns == r.ts_ns + 3_000
    events = r.run(CreateTransfers([]), advance_ns=3_000)
    assert _expired(events) == [11] and r.engine._wake_ns == deadline
    r.ts_ns = deadline - 1_001
    assert _expired(r.run(CreateTransfers([]))) == []  # one nanosecond early
    events = r.run(CreateTransfers([Transfer(10, 0, 0, 0, pending_id=10, flags=TransferFlags.POST_PENDING)]), advance_ns=1)
    assert _expired(events) == [10] and isinstance(events[0], TransferExpired)  # before the command itself
    assert r.engine._wake_ns == NEVER
    r.engine.check_invariants()


def test_a_restored_engine_expires_the_same_transfers_at_the_same_commands() -> None:
    live, alice, bob = _ledger_runner()
    live.run(CreateTransfers([Transfer(10, alice, bob, 500, flags=P, timeout_ns=5_000)]))
    restored = Runner(live.engine.restored(live.engine.snapshot_bytes()))
    restored.ts_ns = live.ts_ns
    for step in range(8):
        command = CreateTransfers([Transfer(100 + step, alice, bob, 1)])
        assert _expired(live.run(command)) == _expired(restored.run(command)) == ([10] if step == 4 else [])
    assert live.engine.state_hash() == restored.engine.state_hash()


def test_a_guard_for_some_types_runs_for_those_types_only_in_apply_and_precheck() -> None:
    calls: list[str] = []
    module = Module("typed")

    @module.guard
    def _every(engine: Engine, command: Any) -> None:
        calls.append("every:" + type(command).__name__)

    @module.guard_for(Gate)
    def _gates_only(engine: Engine, command: Any) -> None:
        calls.append("gate:" + type(command).__name__)
        if command.closed:
            raise Halted("no closing here", field="closed")

    gate = _gate_module()
    r = Runner(new_engine(module, gate))
    assert r.run(Ping()) == [Pinged()]
    assert calls == ["every:Ping"]  # the typed guard is not even called for a Ping
    calls.clear()
    assert _refused(r.run(Gate(True)))  # ... but refuses its own type, after the earlier guard
    assert calls == ["every:Gate", "gate:Gate"] and not r.engine.components["gate"].closed
    calls.clear()
    r.engine.precheck(Ping())
    assert calls == ["every:Ping"]
    calls.clear()
    try:
        r.engine.precheck(Gate(True))
        raise AssertionError("precheck let a refused Gate through")
    except Halted:
        pass
    assert calls == ["every:Gate", "gate:Gate"]
    restored = Runner(r.engine.restored(r.engine.snapshot_bytes()))  # the selection survives a restore
    restored.ts_ns = r.ts_ns
    calls.clear()
    assert _refused(restored.run(Gate(True))) and calls == ["every:Gate", "gate:Gate"]


def test_guard_for_needs_command_types() -> None:
    module = Module("typed")
    for bad in ((), (int,)):
        try:
            module.guard_for(*bad)
            raise AssertionError(f"guard_for{bad} was accepted")
        except TypeError:
            pass
