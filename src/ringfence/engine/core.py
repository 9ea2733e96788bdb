"""The deterministic engine: `apply(command) -> events` over in-memory state, composed from modules.

The engine is a pure state machine. It reads no clock, draws no randomness and does no I/O: the
sequencer stamps every command with its sequence number, a timestamp and entropy, and `apply`
sees only those. Same journal in, same state and same state hash out, on every machine.

The engine imports no domain package. `Engine(modules)` is given its modules (see
`engine/module.py`; the standard list is built by `ringfence.app`): each declares its commands
(handler, precheck, scopes, effect), events, state, guards (always run, or only while its state
arms them), before-command hooks (every command) and timers (once sequencer time reaches the
deadline they wait for).

* A handler validates first and mutates after; a `RingfenceError` it raises becomes a
  `CommandRejected` event (nothing changed).
* An `InvariantViolation`, or any exception that is not a `RingfenceError`, means the state may be
  half-changed: `apply` raises `ShardHalt` and the engine refuses to go on until its driver (the
  node, or journal replay) rebuilds the state as of the sequence number before the command and
  calls `enter_halt`. From then on the shard is halted: the halt is part of the state (and of the
  state hash), every later command is refused with `ShardHalted`, and replaying the same journal
  reproduces the same halted state. Only the code changing (a fix, then a restart) ends it.
"""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

import msgspec

from ..errors import InvariantViolation, PrecheckFailed, RingfenceError, ShardHalted
from .commands import Codec, Command, Event, encode
from .module import NEVER, CommandSpec, Handler, Module, StateComponent

__all__ = [
    "Engine",
    "CommandRejected",
    "ShardHaltedEvent",
    "ShardHalt",
    "STATE_FORMAT",
]

#: Bumped whenever the snapshot/state-hash layout changes.
STATE_FORMAT = 1
#: The most commands `state_digest` keeps for a component's `digest_of_changes` between two
#: digests; past it the component is told anything may have changed.
MAX_KEPT_COMMANDS = 100_000
#: Tag of `Engine.state_digest`'s definition (a change to what it covers changes the tag).
STATE_DIGEST_FORMAT = "state-digest-2"


class CommandRejected(Event, tag="rejected/1", frozen=True):
    """The command was valid to journal but the state did not allow it; nothing changed."""

    seq: int
    code: str
    field: str
    message: str


class ShardHaltedEvent(Event, tag="engine.shard_halted/1", frozen=True):
    """Command `seq` broke an invariant: nothing of it was kept and the shard is halted."""

    seq: int
    error: str


class ShardHalt(Exception):
    """Raised by `apply` when a command broke an invariant; the driver must call `enter_halt`.

    Not a `RingfenceError`: nothing may catch it as an ordinary refusal.
    """

    def __init__(self, seq: int, ts_ns: int, error: str, detail: str) -> None:
        super().__init__(f"shard halted at sequence {seq}: {detail}")
        self.seq = seq
        self.ts_ns = ts_ns
        #: Deterministic (the exception's class name): recorded in the state and hashed.
        self.error = error
        #: For operators and logs (may hold anything the exception said): not hashed.
        self.detail = detail


def _rearming(handler: Handler) -> Handler:
    """`handler`, followed by re-evaluating which guards are armed (its module's state arms some)."""

    def run(engine: "Engine", command: Any) -> list[Event]:
        try:
            return handler(engine, command)
        finally:
            engine._rearm()

    run.__name__ = getattr(handler, "__name__", "handler")
    return run


class Engine:
    """One shard's state and its single-threaded apply loop."""

    #: The ledger module's state, set by `_set_component` (its `StateComponent.attribute` is
    #: "ledger"; the hot path reads it here). `Any`: the engine imports no domain package, so
    #: the ledger's type is known only to the modules that use it.
    ledger: Any

    def __init__(self, modules: Sequence[Module]) -> None:
        self.modules: tuple[Module, ...] = tuple(modules)
        specs: dict[type, CommandSpec] = {}
        names: set[str] = set()
        states: list[StateComponent] = []
        for module in self.modules:
            if module.name in names:
                raise RuntimeError(f"module {module.name!r} is given twice")
            names.add(module.name)
            for command_type, spec in module.commands.items():
                if command_type in specs:
                    raise RuntimeError(
                        f"{command_type.__name__} is declared by modules {specs[command_type].module!r} and {module.name!r}"
                    )
                specs[command_type] = spec
            if module.state is not None:
                if any(s.name == module.state.name for s in states):
                    raise RuntimeError(f"state {module.state.name!r} is declared twice")
                states.append(module.state)
        self.command_specs = specs
        self._handlers = {t: s.handler for t, s in specs.items() if s.handler is not None}
        #: Every guard, in module order (`precheck` runs them all) ...
        self._all_guards = tuple(g for m in self.modules for g in m.guards)
        self._guard_types = {g: types for m in self.modules for g, types in m.guard_types.items()}
        #: What `precheck` runs: every guard but those declared for other types (`Module.guard_for`)...
        self._all_untyped, self._all_by_type = self._by_type(self._all_guards)
        #: ... and `apply`: those of them armed now (see `Module.guard_while`). Set by `_rearm`.
        self._guards: tuple[Any, ...] = ()
        self._guards_by_type: dict[type, tuple[Any, ...]] = {}
        self._arming = [(m.state.name, g, armed) for m in self.modules for g, armed in m.guard_arming.items() if m.state is not None]
        for module in self.modules:
            if module.guard_arming:
                for t, spec in module.commands.items():
                    if spec.handler is not None:
                        self._handlers[t] = _rearming(spec.handler)
        self._before = tuple(h for m in self.modules for h in m.before_command)
        self._timers = tuple((m.state.name, fn, due) for m in self.modules for fn, due in m.timers if m.state is not None)
        #: Sequencer time at which `apply` next runs the before-command hooks and timers: 0 means
        #: at the next command (always, while a module has a plain before-command hook).
        self._wake_ns = 0
        #: The first module's state is the root (snapshot position 3: the ledger, for format
        #: compatibility); every other state is listed by name.
        first = self.modules[0].state if self.modules else None
        self._root = first
        self._states = sorted((s for s in states if s is not first), key=lambda s: s.name)
        self.codec = Codec.of(specs, (CommandRejected, ShardHaltedEvent, *(e for m in self.modules for e in m.events)))
        self.last_seq = 0
        #: Sequencer stamps of the command being applied (valid only inside `apply`).
        self.now_ns = 0
        self.entropy = b""
        self.seq = 0
        #: `(seq, error class name)` once a command broke an invariant; part of the state.
        self.halted: tuple[int, str] | None = None
        #: Set by `apply` when a command broke an invariant, until `enter_halt` cleans up.
        self.broken: ShardHalt | None = None
        self.components: dict[str, Any] = {}
        for state in self._all_states():
            self._set_component(state, state.factory(self))
        self._init_digest_tracking(states)
        self._rearm()

    def _init_digest_tracking(self, states: list[StateComponent]) -> None:
        """What `state_digest` needs to know what may have changed since its last call."""
        #: The states each command type, hook and timer may change (its module's `writes`; None:
        #: any): `state_digest` reuses a component's last digest only while nothing that may
        #: change it has run since.
        self._writes: dict[object, frozenset[str] | None] = {}
        for module in self.modules:
            own = {module.state.name} if module.state is not None else set()
            writes = None if module.writes is None else frozenset(module.writes) | own
            for key in (*module.commands, *module.before_command, *(fn for fn, _ in module.timers)):
                self._writes[key] = writes
        #: What ran since the last `state_digest` (command types, hooks, timers; one set add a command).
        #: Guards are not noted: they run in `precheck` too, which must not change state (what it
        #: changed would be on no replica and in no replay), so they change nothing.
        self._ran: set[object] = set()
        #: Each component's digest as of the last `state_digest` (components without their own
        #: incremental `StateComponent.digest`).
        self._digests: dict[str, str | None] = {}
        #: What components with a `digest_of_changes` keep between digests (emptied on load) ...
        self._memos: dict[str, dict[Any, Any]] = {}
        #: ... and the commands of their `narrow` types applied since the last digest (None: not
        #: known, before the first digest or past MAX_KEPT_COMMANDS).
        self._narrow_types = frozenset(t for s in states for t in s.narrow)
        self._kept: list[Any] | None = None
        #: Whether `apply` notes what ran: from the first `state_digest` until the state is loaded
        #: again. Until then nothing is known, and the next digest computes every component.
        self._tracking = False
        #: Tests and the simulation: recompute every digest `state_digest` reuses and raise
        #: `InvariantViolation` if it changed (a module's `writes` left out a state it changed).
        self.check_digest_cache = False

    def rearm_guards(self) -> None:
        """A module changed, outside its own handlers, state that arms a guard (the halts module's
        automatic halts, raised by another module's hook or handler): recompute at once, so the
        guards of this very command already see it."""
        self._rearm()

    def _rearm(self) -> None:
        """Recompute which guards `apply` runs, from the states that arm them."""
        guards = self._all_guards
        if self._arming:
            disarmed = {g for name, g, armed in self._arming if not armed(self.components[name])}
            guards = tuple(g for g in guards if g not in disarmed)
        self._guards, self._guards_by_type = self._by_type(guards)

    def _by_type(self, guards: tuple[Any, ...]) -> tuple[tuple[Any, ...], dict[type, tuple[Any, ...]]]:
        """`(for a command of a type no guard names, {named type: its guards})`, each in module order:
        a guard declared with `Module.guard_for` runs only for its own types."""
        typed = self._guard_types
        untyped = tuple(g for g in guards if g not in typed)
        by_type = {t: tuple(g for g in guards if g not in typed or t in typed[g]) for types in typed.values() for t in types}
        return untyped, by_type

    def _all_states(self) -> list[StateComponent]:
        return ([self._root] if self._root is not None else []) + self._states

    def _set_component(self, spec: StateComponent, value: Any) -> None:
        self.components[spec.name] = value
        if spec.attribute:
            setattr(self, spec.attribute, value)

    def spec_of(self, command_type: type) -> CommandSpec | None:
        return self.command_specs.get(command_type)

    # ------------------------------------------------------------------ apply

    def precheck(self, command: Command) -> None:
        """Edge validation against current state, before journaling. Raises; never mutates."""
        if self.halted is not None or self.broken is not None:
            raise ShardHalted(self._halted_message())
        spec = self.command_specs.get(type(command))
        if spec is None or spec.handler is None:
            raise RingfenceError(f"no module of this engine handles command {type(command).__name__}")
        try:
            for guard in self._all_by_type.get(type(command), self._all_untyped):
                guard(self, command)
            if spec.precheck is not None:
                spec.precheck(self, command)
        except RingfenceError:
            raise
        except Exception as err:
            # A precheck only reads, so a bug in one refuses that command and nothing else: the
            # alternative (the error escaping into the sequencer) stopped the whole node and left
            # the batch's callers waiting for ever.
            raise PrecheckFailed(
                f"{type(command).__name__} could not be checked ({type(err).__name__}); it was refused and nothing changed"
            ) from err

    def _halted_message(self) -> str:
        if self.broken is not None:
            return f"the shard halted at sequence {self.broken.seq} ({self.broken.error}); an operator must look"
        assert self.halted is not None
        return f"the shard halted at sequence {self.halted[0]} ({self.halted[1]}); an operator must look"

    def apply(self, command: Command, seq: int, ts_ns: int, entropy: bytes = b"") -> list[Event]:
        """Apply one sequenced command. Commands must arrive in strictly increasing `seq`.

        Raises `ShardHalt` when the command broke an invariant (see the module docstring).
        """
        if seq != self.last_seq + 1 or ts_ns < self.now_ns or self.broken is not None:
            self._refuse_out_of_order(seq)
        self.seq = self.last_seq = seq
        self.now_ns = ts_ns
        self.entropy = entropy
        if self.halted is not None:
            return [CommandRejected(seq, ShardHalted.code, "", self._halted_message())]
        cls = type(command)
        if self._tracking:  # only once a digest was asked for (replication): one test otherwise
            self._ran.add(cls)
            if cls in self._narrow_types and (kept := self._kept) is not None:
                if len(kept) < MAX_KEPT_COMMANDS:
                    kept.append(command)
                else:
                    self._kept = None
        due: list[Event] | None = None
        try:
            if ts_ns >= self._wake_ns:
                due = self._before_command()
            try:
                guards = self._guards_by_type.get(cls, self._guards)
                if guards:  # (most commands have none: no iterator over an empty tuple)
                    for guard in guards:
                        guard(self, command)
                # A handler returns a list of its own making: it is the answer as it is.
                events = self._handlers[cls](self, command)
            except InvariantViolation:
                raise
            except RingfenceError as err:
                events = [CommandRejected(seq, err.code, err.field or "", err.message)]
        except Exception as err:  # a broken invariant: the state may be half-changed
            self.broken = ShardHalt(seq, ts_ns, type(err).__name__, f"{type(err).__name__}: {err}")
            raise self.broken from err
        if due:  # what fell due before the command comes first
            due.extend(events)
            return due
        return events

    def _before_command(self) -> list[Event]:
        """Run the before-command hooks and the timers; set when to run them next."""
        events: list[Event] = []
        ran = self._ran
        for hook in self._before:
            ran.add(hook)
            hook_events = hook(self)
            if hook_events:
                events.extend(hook_events)
        wake = NEVER
        for name, fn, next_due in self._timers:
            ran.add(fn)
            timer_events = fn(self)
            if timer_events:
                events.extend(timer_events)
            wake = min(wake, next_due(self.components[name]))
        self._wake_ns = 0 if self._before else wake
        return events

    def wake_at(self, ns: int) -> None:
        """Something falls due at sequencer time `ns` (a module's state stored a deadline): make
        sure the timers run at the first command at or after it."""
        if ns < self._wake_ns:
            self._wake_ns = ns

    def _refuse_out_of_order(self, seq: int) -> None:
        """Why `apply` cannot take command `seq` now (one test on the hot path, the reason here)."""
        if self.broken is not None:
            raise RingfenceError(f"the engine state is broken at sequence {self.broken.seq}; call enter_halt first")
        if seq != self.last_seq + 1:
            raise RingfenceError(f"sequence gap: engine at {self.last_seq}, command {seq}")
        raise RingfenceError("sequencer time went backwards")

    def enter_halt(self, clean: "Engine", halt: ShardHalt) -> list[Event]:
        """Finish a halt: take the state of `clean` (this engine's state as of `halt.seq - 1`, rebuilt
        from snapshot + journal by the driver) and record the halt at `halt.seq`."""
        if clean.last_seq != halt.seq - 1 or clean.halted is not None:
            raise RingfenceError(f"the clean state must be at sequence {halt.seq - 1} and not halted")
        self._load_state(msgspec.json.decode(clean.snapshot_bytes()))
        self.last_seq = self.seq = halt.seq
        self.now_ns = halt.ts_ns
        self.halted = (halt.seq, halt.error)
        self.broken = None
        return [ShardHaltedEvent(halt.seq, halt.error)]

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
        root = self._root
        state = [
            STATE_FORMAT,
            self.last_seq,
            self.now_ns,
            root.snapshot(self.components[root.name]) if root is not None else None,
            # A module with nothing to keep snapshots None and is left out, so adding a module
            # leaves the state hash of every journal that never used it unchanged.
            [[spec.name, snap] for spec in self._states if (snap := spec.snapshot(self.components[spec.name])) is not None],
        ]
        if self.halted is not None:  # absent while running, so running states hash as before
            state.append(list(self.halted))
        return state

    def snapshot_bytes(self) -> bytes:
        if self.broken is not None:
            raise RingfenceError("the engine state is broken; it cannot be snapshotted")
        return encode(self.snapshot_state())

    def state_hash(self) -> str:
        """SHA-256 of the canonical encoding of the whole state, as hex."""
        return hashlib.sha256(self.snapshot_bytes()).hexdigest()

    def state_digest(self) -> str:
        """A digest of the whole state, as hex, that costs in proportion to what changed since the
        last call: replication checks it after every batch (`state_hash` costs in proportion to the
        whole state). The same parts as `snapshot_state`, each component reduced to a digest: its
        own incremental one where it declares one (the ledger's, ledger/digest.py), else SHA-256 of
        its snapshot's canonical encoding: kept from the last call while no command type, hook or
        timer whose module may write it (`Module.writes`) ran, and for trading put together from
        each market's kept encoding (`StateComponent.digest_of_changes`, trading/digest.py).
        Deterministic: equal on every replica in the same state, and equal to the digest of an
        engine restored from this one's snapshot (which computes every part from nothing;
        tests/engine/test_state_digest.py, test_digest_cache.py)."""
        if self.broken is not None:
            raise RingfenceError("the engine state is broken; it has no digest")
        ran, self._ran = self._ran, set()
        kept, self._kept = self._kept, []
        changed = self._changed_since_last_digest(ran) if self._tracking else None
        if not self._tracking:
            kept = None
            self._tracking = True
        root = self._root
        parts: list[Any] = [STATE_DIGEST_FORMAT, self.last_seq, self.now_ns,
                            self._component_digest(root, changed, ran, kept) if root is not None else None]
        for spec in self._states:
            part = self._component_digest(spec, changed, ran, kept)
            if part is not None:
                parts.append([spec.name, part])
        if self.halted is not None:
            parts.append(list(self.halted))
        return hashlib.sha256(encode(parts)).hexdigest()

    def _changed_since_last_digest(self, ran: set[object]) -> frozenset[str] | None:
        """The states that what `ran` may have changed (None: any)."""
        changed: set[str] = set()
        for key in ran:
            writes = self._writes.get(key)
            if writes is None:
                return None
            changed |= writes
        return frozenset(changed)

    def _component_digest(self, spec: StateComponent, changed: frozenset[str] | None = None,
                          ran: set[object] | None = None, commands: list[Any] | None = None) -> str | None:
        """The component's digest: its own incremental one, the last one when nothing that ran
        since may change it, what its `digest_of_changes` works out, else SHA-256 of its
        snapshot's canonical encoding."""
        state = self.components[spec.name]
        if spec.digest is not None:
            return spec.digest(state).hex()
        ran = ran or set()
        if changed is not None and spec.name not in changed and spec.name in self._digests:
            kept = self._digests[spec.name]
            if self.check_digest_cache and self._hash_component(spec, state) != kept:
                names = sorted(getattr(key, "__name__", repr(key)) for key in ran)
                raise InvariantViolation(f"state {spec.name!r} changed, but no module declaring it in `writes` ran: {names}")
            return kept
        if spec.digest_of_changes is None:
            digest = self._digests[spec.name] = self._hash_component(spec, state)
            return digest
        # Only the commands of `narrow` types may have changed it (each says what it touched):
        # else, or before its first digest, it is told anything may have changed.
        narrowed = (changed is not None and commands is not None and spec.name in self._digests
                    and all(key in spec.narrow or ((w := self._writes.get(key)) is not None and spec.name not in w)
                            for key in ran))
        memo = self._memos.setdefault(spec.name, {})
        digest = spec.digest_of_changes(state, commands if narrowed else None, memo)
        if self.check_digest_cache and digest != self._hash_component(spec, state):
            raise InvariantViolation(f"state {spec.name!r}: the digest from its changes differs from its snapshot's")
        self._digests[spec.name] = digest
        return digest

    @staticmethod
    def _hash_component(spec: StateComponent, state: Any) -> str | None:
        snap = spec.snapshot(state)
        return None if snap is None else hashlib.sha256(encode(snap)).hexdigest()

    @classmethod
    def from_snapshot_bytes(cls, data: bytes, modules: Sequence[Module]) -> "Engine":
        engine = cls(modules)
        engine._load_state(msgspec.json.decode(data))
        return engine

    def restored(self, data: bytes) -> "Engine":
        """A new engine with this one's modules and the state in `data` (a snapshot payload)."""
        return type(self).from_snapshot_bytes(data, self.modules)

    def _load_state(self, raw: list[Any]) -> None:
        fmt, last_seq, now_ns, root_state, components = raw[:5]
        if fmt != STATE_FORMAT:
            raise RingfenceError(f"snapshot format {fmt} is not supported (expected {STATE_FORMAT})")
        # Start from fresh states: a state absent from the snapshot keeps its factory value.
        self.components = {}
        self._digests = {}  # every component is new: no digest of before holds
        self._memos = {}
        self._ran = set()
        self._kept = None
        self._tracking = False
        for spec in self._all_states():
            self._set_component(spec, spec.factory(self))
        if self._root is not None and root_state is not None:
            self._set_component(self._root, self._root.restore(self, root_state))
        stored = dict((name, state) for name, state in components)
        for spec in self._states:
            if spec.name in stored:
                self._set_component(spec, spec.restore(self, stored[spec.name]))
        self.last_seq = last_seq
        self.now_ns = now_ns
        self.halted = (raw[5][0], raw[5][1]) if len(raw) > 5 else None
        self.broken = None
        self._wake_ns = 0  # the timers work out when they are next due at the next command
        self._rearm()

    def check_invariants(self) -> None:
        for spec in self._all_states():
            state = self.components[spec.name]
            if spec.check_invariants is not None:
                spec.check_invariants(state)
            else:
                check = getattr(state, "check_invariants", None)
                if check is not None:
                    check()
