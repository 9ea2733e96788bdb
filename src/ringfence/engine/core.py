"""The deterministic engine: `apply(command) -> events` over in-memory state.

The engine is a pure state machine. It reads no clock, draws no randomness and does no I/O: the
sequencer stamps every command with its sequence number, a timestamp and entropy, and `apply`
sees only those. Same journal in, same state and same state hash out, on every machine.

Domain packages plug in with two registries:

* `@handles(CommandType)` registers `fn(engine, command) -> list[Event]`. A handler validates
  first and mutates after; if it raises a `RingfenceError` before mutating, the engine turns it into
  a `CommandRejected` event and nothing changed. Optionally `precheck=fn(engine, command)` runs at
  the edge, before journaling, so that most bad commands never reach the journal.
* `register_component(name, factory, snapshot, restore)` adds a piece of state (order books,
  halts...) that is hashed and snapshotted with the ledger.

An `InvariantViolation` (or any non-ringfence exception) escaping a handler is not handled: the
shard stops and an operator looks, because continuing could move money wrongly.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Callable

import msgspec

from ..errors import RingfenceError
from ..ledger.ledger import Ledger
from .commands import Command, Event, encode

__all__ = [
    "Engine",
    "CommandRejected",
    "handles",
    "register_component",
    "register_guard",
    "STATE_FORMAT",
]

#: Bumped whenever the snapshot/state-hash layout changes.
STATE_FORMAT = 1


class CommandRejected(Event, tag="rejected/1"):
    """The command was valid to journal but the state did not allow it; nothing changed."""

    seq: int
    code: str
    field: str
    message: str


@dataclass(frozen=True)
class _Handler:
    fn: Callable[["Engine", Any], list[Event]]
    precheck: Callable[["Engine", Any], None] | None


@dataclass(frozen=True)
class _Component:
    factory: Callable[["Engine"], Any]
    snapshot: Callable[[Any], Any]
    restore: Callable[["Engine", Any], Any]


_HANDLERS: dict[type, _Handler] = {}
_COMPONENTS: dict[str, _Component] = {}
_GUARDS: list[Callable[["Engine", Any], None]] = []


def register_guard(fn: Callable[["Engine", Any], None]) -> Callable[["Engine", Any], None]:
    """Register `fn(engine, command)`, run before every handler (and every precheck).

    A guard raises a `RingfenceError` (e.g. `Halted`) to refuse a command without changing
    anything; halts use this so that every later command in a halted scope is checked.
    """
    _GUARDS.append(fn)
    return fn


def handles(
    command_type: type[Command], *, precheck: Callable[["Engine", Any], None] | None = None
) -> Callable[[Callable[["Engine", Any], list[Event]]], Callable[["Engine", Any], list[Event]]]:
    def register(fn: Callable[["Engine", Any], list[Event]]) -> Callable[["Engine", Any], list[Event]]:
        if command_type in _HANDLERS:
            raise RuntimeError(f"{command_type.__name__} already has a handler")
        _HANDLERS[command_type] = _Handler(fn, precheck)
        return fn

    return register


def register_component(
    name: str,
    factory: Callable[["Engine"], Any],
    snapshot: Callable[[Any], Any],
    restore: Callable[["Engine", Any], Any],
) -> None:
    if name in _COMPONENTS or name == "ledger":
        raise RuntimeError(f"component {name!r} is already registered")
    _COMPONENTS[name] = _Component(factory, snapshot, restore)


class Engine:
    """One shard's state and its single-threaded apply loop."""

    def __init__(self) -> None:
        from . import registry  # noqa: F401  (imports every package that registers handlers)

        self.ledger = Ledger()
        self.last_seq = 0
        #: Sequencer stamps of the command being applied (valid only inside `apply`).
        self.now_ns = 0
        self.entropy = b""
        self.seq = 0
        self.components: dict[str, Any] = {}
        for name in sorted(_COMPONENTS):
            self.components[name] = _COMPONENTS[name].factory(self)

    # ------------------------------------------------------------------ apply

    def precheck(self, command: Command) -> None:
        """Edge validation against current state, before journaling. Raises; never mutates."""
        handler = _HANDLERS.get(type(command))
        if handler is None:
            raise RingfenceError(f"no handler for command {type(command).__name__}")
        for guard in _GUARDS:
            guard(self, command)
        if handler.precheck is not None:
            handler.precheck(self, command)

    def apply(self, command: Command, seq: int, ts_ns: int, entropy: bytes = b"") -> list[Event]:
        """Apply one sequenced command. Commands must arrive in strictly increasing `seq`."""
        if seq != self.last_seq + 1:
            raise RingfenceError(f"sequence gap: engine at {self.last_seq}, command {seq}")
        if ts_ns < self.now_ns:
            raise RingfenceError("sequencer time went backwards")
        self.seq = seq
        self.now_ns = ts_ns
        self.entropy = entropy
        self.last_seq = seq
        events: list[Event] = []
        expired = self.ledger.expire_due(ts_ns)
        if expired:
            from ..ledger.commands import TransferExpired

            events.extend(TransferExpired(pid, amount) for pid, amount in expired)
        handler = _HANDLERS[type(command)]
        try:
            for guard in _GUARDS:
                guard(self, command)
            events.extend(handler.fn(self, command))
        except RingfenceError as err:
            events.append(CommandRejected(seq, err.code, err.field or "", err.message))
        return events

    def random_bytes(self, label: bytes, n: int = 32) -> bytes:
        """Deterministic randomness for the current command, derived from the sequencer's entropy."""
        out = b""
        counter = 0
        while len(out) < n:
            out += hashlib.sha256(
                self.entropy + self.seq.to_bytes(8, "big") + label + counter.to_bytes(4, "big")
            ).digest()
            counter += 1
        return out[:n]

    # ------------------------------------------------------------------ state hash & snapshots

    def snapshot_state(self) -> list[Any]:
        return [
            STATE_FORMAT,
            self.last_seq,
            self.now_ns,
            self.ledger.snapshot_state(),
            [[name, _COMPONENTS[name].snapshot(self.components[name])] for name in sorted(self.components)],
        ]

    def snapshot_bytes(self) -> bytes:
        return encode(self.snapshot_state())

    def state_hash(self) -> str:
        """SHA-256 of the canonical encoding of the whole state, as hex."""
        return hashlib.sha256(self.snapshot_bytes()).hexdigest()

    @classmethod
    def from_snapshot_bytes(cls, data: bytes) -> "Engine":
        from ..ledger.model import Transfer

        raw = msgspec.json.decode(data)
        fmt, last_seq, now_ns, ledger_state, components = raw
        if fmt != STATE_FORMAT:
            raise RingfenceError(f"snapshot format {fmt} is not supported (expected {STATE_FORMAT})")
        engine = cls()
        ledger_state[3] = [Transfer(*row) for row in ledger_state[3]]
        engine.ledger = Ledger.from_snapshot(ledger_state)
        engine.last_seq = last_seq
        engine.now_ns = now_ns
        stored = dict((name, state) for name, state in components)
        for name, spec in sorted(_COMPONENTS.items()):
            if name in stored:
                engine.components[name] = spec.restore(engine, stored[name])
        return engine

    def check_invariants(self) -> None:
        self.ledger.check_invariants()
        for name in sorted(self.components):
            check = getattr(self.components[name], "check_invariants", None)
            if check is not None:
                check()
