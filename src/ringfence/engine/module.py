"""The module protocol: how a domain package (ledger, trading, custody, halts...) plugs into an engine.

A `Module` is an explicit object that declares everything the engine needs from a domain: its
command types (each with a handler, an optional edge precheck, the scopes the command touches and
its effect), its event types, one piece of state (factory, snapshot, restore, invariant check),
guards run before every command (or only while the module's state arms them), and hooks run before every command (the ledger expires two-phase
transfers there). Nothing is registered globally: the composition root (`ringfence.app`) hands a
list of modules to `Engine(modules)`, and the engine, the journal decoders and the halts guard see
exactly those and nothing else. A `Command` subclass defined anywhere else (a test's, a plugin's)
is unknown to an engine whose modules do not declare it.

Invariants checked when a module is built and when an engine is composed: a command type has one
handler, a tag belongs to one type, a state name to one module.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from .commands import Command, Event

if TYPE_CHECKING:
    from .core import Engine

__all__ = [
    "Effect",
    "Scope",
    "SCOPE_KINDS",
    "CommandSpec",
    "StateComponent",
    "Module",
    "no_scopes",
    "NEVER",
]

#: A time no timer is due at (`Module.timer`): later than any sequencer timestamp.
NEVER = 1 << 63

#: The kinds of scope a command can touch; `("venue", "*")` is implied for every command.
SCOPE_KINDS = ("market", "segment", "asset", "venue")

Scope = tuple[str, str]
Handler = Callable[["Engine", Any], list[Event]]
Precheck = Callable[["Engine", Any], Any]
ScopesOf = Callable[["Engine", Any], Iterable[Scope]]


class Effect(str, enum.Enum):
    """What a command does to the exchange's risk, as halts see it.

    * `OPENS_RISK`: adds exposure (a new order, an amend that adds) — refused under REDUCE_ONLY;
    * `REDUCES_RISK`: only takes exposure away (a cancel; an amend that lowers quantity at the same
      price, when declared through a function of the state) — passes REDUCE_ONLY; a HALTED scope
      accepts only commands declared `REDUCES_RISK` as a constant (they always reduce: cancels);
    * `MOVES_FUNDS_OUT`: moves a withdrawal towards the chain — refused under WITHDRAWALS_PAUSED;
    * `NEUTRAL`: moves nothing out and opens no exposure (a transfer inside the ledger, recording a
      fact that already happened on a chain);
    * `ADMIN`: configuration (assets, markets, wallets, fee tiers, operators).
    """

    OPENS_RISK = "opens_risk"
    REDUCES_RISK = "reduces_risk"
    MOVES_FUNDS_OUT = "moves_funds_out"
    NEUTRAL = "neutral"
    ADMIN = "admin"


def no_scopes(engine: "Engine", command: Any) -> tuple[Scope, ...]:
    """The command touches no market, segment or asset (only the venue)."""
    return ()


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """Everything declared about one command type."""

    type: type
    module: str
    handler: Handler | None
    precheck: Precheck | None
    #: A constant, or `fn(engine, command) -> Effect` when the effect depends on state (an amend).
    effect: Effect | Callable[["Engine", Any], Effect]
    scopes: ScopesOf
    #: For a command that carries other commands (`TradingBatch`): `fn(command) -> the parts`,
    #: each checked by halts as if submitted alone.
    parts: Callable[[Any], Iterable[Any]] | None = None

    def effect_of(self, engine: "Engine", command: Any) -> Effect:
        effect = self.effect
        return effect if isinstance(effect, Effect) else effect(engine, command)


@dataclass(frozen=True, slots=True)
class StateComponent:
    """One module's piece of engine state: hashed, snapshotted and restored with the rest."""

    name: str
    factory: Callable[["Engine"], Any]
    snapshot: Callable[[Any], Any]
    restore: Callable[["Engine", Any], Any]
    check_invariants: Callable[[Any], None] | None = None
    #: Also reachable as `engine.<attribute>` (the ledger is `engine.ledger`: the hot path reads it).
    attribute: str | None = None
    #: `digest(state) -> bytes`: a digest of the whole component kept incrementally (the ledger's,
    #: ledger/digest.py), used by `Engine.state_digest` instead of hashing the snapshot each time.
    digest: Callable[[Any], bytes] | None = None
    #: `digest_of_changes(state, commands, memo) -> hex`: the same value as SHA-256 of the snapshot's
    #: canonical encoding, computed from what it kept in `memo` (a dict the engine keeps for it,
    #: emptied whenever the state is loaded) and `commands`: every command applied since its last
    #: call, when all that ran since and may change this state are command types in `narrow`
    #: (else None: anything may have changed). Trading keeps each market's encoding this way.
    digest_of_changes: Callable[[Any, Sequence[Any] | None, dict[Any, Any]], str | None] | None = None
    narrow: frozenset[type] = frozenset()


@dataclass
class Module:
    """A domain's declaration. Build it at import time of the domain package, then hand it to `Engine`."""

    name: str
    commands: dict[type, CommandSpec] = field(default_factory=dict)
    events: list[type] = field(default_factory=list)
    state: StateComponent | None = None
    guards: list[Callable[["Engine", Any], None]] = field(default_factory=list)
    #: Guards that `apply` runs only while `armed(<this module's state>)` is true (see `guard_while`).
    guard_arming: dict[Callable[["Engine", Any], None], Callable[[Any], bool]] = field(default_factory=dict)
    #: Guards that can refuse only commands of the given types (see `guard_for`).
    guard_types: dict[Callable[["Engine", Any], None], tuple[type, ...]] = field(default_factory=dict)
    #: `fn(engine) -> events`, run before every command's guards and handler (sequencer time is set).
    before_command: list[Callable[["Engine"], Sequence[Event]]] = field(default_factory=list)
    #: `(fn, next_due)`: `fn(engine) -> events` runs before a command only once sequencer time has
    #: reached `next_due(<this module's state>)` (see `timer`).
    timers: list[tuple[Callable[["Engine"], Sequence[Event]], Callable[[Any], int]]] = field(default_factory=list)
    #: The names of the states its handlers, hooks and timers may change, its own included (None:
    #: any state). `Engine.state_digest` reuses the digest of a state that no module declaring it
    #: ran since the last digest, so a state missing here would keep a stale digest: declare every
    #: state a path may write (through another module's API too: trading fills write the ledger).
    #: The engine's `check_digest_cache` recomputes every reused digest and names an omission.
    writes: tuple[str, ...] | None = None

    def handles(
        self,
        command_type: type[Command],
        *,
        effect: Effect | Callable[["Engine", Any], Effect],
        scopes: ScopesOf = no_scopes,
        precheck: Precheck | None = None,
        parts: Callable[[Any], Iterable[Any]] | None = None,
    ) -> Callable[[Handler], Handler]:
        """Decorator: `fn(engine, command) -> events` applies `command_type` in this module."""
        if not isinstance(effect, Effect) and not callable(effect):
            raise TypeError(f"effect of {command_type.__name__} must be an Effect or a function returning one")

        def register(fn: Handler) -> Handler:
            self.command(command_type, handler=fn, effect=effect, scopes=scopes, precheck=precheck, parts=parts)
            return fn

        return register

    def command(
        self,
        command_type: type[Command],
        *,
        handler: Handler | None,
        effect: Effect | Callable[["Engine", Any], Effect],
        scopes: ScopesOf = no_scopes,
        precheck: Precheck | None = None,
        parts: Callable[[Any], Iterable[Any]] | None = None,
    ) -> None:
        """Declare a command type. `handler=None` declares a type only carried inside another command."""
        if not (isinstance(command_type, type) and issubclass(command_type, Command)):
            raise TypeError(f"{command_type!r} is not a Command type")
        if command_type in self.commands:
            raise RuntimeError(f"{command_type.__name__} is already declared by module {self.name!r}")
        if not isinstance(effect, Effect) and not callable(effect):
            raise TypeError(f"effect of {command_type.__name__} must be an Effect or a function returning one")
        self.commands[command_type] = CommandSpec(command_type, self.name, handler, precheck, effect, scopes, parts)

    def declare_events(self, *event_types: type[Event]) -> None:
        for event_type in event_types:
            if not (isinstance(event_type, type) and issubclass(event_type, Event)):
                raise TypeError(f"{event_type!r} is not an Event type")
            if event_type not in self.events:
                self.events.append(event_type)

    def declare_state(
        self,
        factory: Callable[["Engine"], Any],
        snapshot: Callable[[Any], Any],
        restore: Callable[["Engine", Any], Any],
        *,
        name: str | None = None,
        check_invariants: Callable[[Any], None] | None = None,
        attribute: str | None = None,
        digest: Callable[[Any], bytes] | None = None,
    ) -> None:
        if self.state is not None:
            raise RuntimeError(f"module {self.name!r} already declares its state")
        self.state = StateComponent(name or self.name, factory, snapshot, restore, check_invariants, attribute, digest)

    def declare_digest_of_changes(
        self, fn: Callable[[Any, Sequence[Any] | None, dict[Any, Any]], str | None], narrow: Iterable[type]
    ) -> None:
        """Its state's digest is computed by `fn` from the commands of the types in `narrow` applied
        since the last digest (see `StateComponent.digest_of_changes`)."""
        if self.state is None:
            raise RuntimeError(f"module {self.name!r} declares its state before how to digest it")
        self.state = replace(self.state, digest_of_changes=fn, narrow=frozenset(narrow))

    def guard(self, fn: Callable[["Engine", Any], None]) -> Callable[["Engine", Any], None]:
        """Decorator: `fn(engine, command)` runs before every command of every module (and its precheck).

        A guard raises a `RingfenceError` (e.g. `Halted`) to refuse a command without changing anything.
        """
        self.guards.append(fn)
        return fn

    def guard_for(
        self, *command_types: type[Command]
    ) -> Callable[[Callable[["Engine", Any], None]], Callable[["Engine", Any], None]]:
        """Decorator: a guard that can only refuse commands of exactly these types, so neither
        `apply` nor `precheck` calls it for any other command (an index's reference-price guard: a
        function call on every order was a measurable part of a move's cost, to refuse nothing)."""
        if not command_types or not all(isinstance(t, type) and issubclass(t, Command) for t in command_types):
            raise TypeError("guard_for needs one or more Command types")

        def register(fn: Callable[["Engine", Any], None]) -> Callable[["Engine", Any], None]:
            self.guards.append(fn)
            self.guard_types[fn] = tuple(command_types)
            return fn

        return register

    def guard_while(
        self, armed: Callable[[Any], bool]
    ) -> Callable[[Callable[["Engine", Any], None]], Callable[["Engine", Any], None]]:
        """Decorator: a guard that can only refuse while `armed(state)` is true for this module's
        state (halts: while a halt is active), so `apply` skips it, call and all, otherwise.

        The engine re-evaluates `armed` whenever this module's state can have changed: after every
        command this module handles and whenever the state is built or loaded. So only this
        module's own handlers may change what `armed` reads. `precheck` runs the guard always.
        """
        if self.state is None:
            raise RuntimeError(f"module {self.name!r} declares its state before a guard armed by it")

        def register(fn: Callable[["Engine", Any], None]) -> Callable[["Engine", Any], None]:
            self.guards.append(fn)
            self.guard_arming[fn] = armed
            return fn

        return register

    def timer(
        self, next_due: Callable[[Any], int]
    ) -> Callable[[Callable[["Engine"], Sequence[Event]]], Callable[["Engine"], Sequence[Event]]]:
        """Decorator: `fn(engine) -> events` runs before a command (like `before_each_command`), but
        only once the command's sequencer time has reached the time the engine was told to wake.

        After the timers run, the engine sleeps until the earliest `next_due(state)` of them
        (`NEVER` when nothing is scheduled). Whatever schedules something earlier in this state
        must tell the engine at once with `engine.wake_at(ns)` (the ledger does when it stores a
        deadline). A freshly built or loaded engine runs its timers at the next command, which
        works out the wake time again. TigerBeetle's pending-transfer expiry works the same way.
        """
        if self.state is None:
            raise RuntimeError(f"module {self.name!r} declares its state before a timer that reads it")

        def register(fn: Callable[["Engine"], Sequence[Event]]) -> Callable[["Engine"], Sequence[Event]]:
            self.timers.append((fn, next_due))
            return fn

        return register

    def before_each_command(self, fn: Callable[["Engine"], Sequence[Event]]) -> Callable[["Engine"], Sequence[Event]]:
        self.before_command.append(fn)
        return fn
