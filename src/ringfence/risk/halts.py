"""Graded, scoped halts as engine state, lifted only by an operator quorum (ARCHITECTURE §4, §10).

A halt is a journaled command: `Halt(halt_id, scope_kind, scope, level, reason, evidence)`. While it
is active, an engine guard refuses every later command that falls in its scope and level:

* scope kinds: `market` (a trading symbol), `segment` (`spot`, `derivatives`...), `asset`
  (`BTC`, or `BTC@hot1` for one wallet of an asset) and `venue` (everything);
* levels: `WITHDRAWALS_PAUSED` (withdrawal-initiating custody commands refused),
  `REDUCE_ONLY` (trading: cancels only; a new order or an amend that adds exposure is refused),
  `HALTED` (everything in scope refused except cancels and the halt commands themselves).

Lifting needs `LiftHaltSigned(halt_id, reason, approvals)`: signed staff decisions
(`staff/decisions.py`, action `halt.lift` over `[halt_id, reason, raised_seq]`) of at least the
staff register's operator quorum of distinct active operators, each with its own nonce and expiry,
verified by the staff module's checks (`staff/state.py`: role, expiry, nonce seen, signature).
`raised_seq` binds an approval to one raised instance of the halt. A staff operator raises a halt
with `RaiseHaltSigned` (one operator's signature: stopping is never the dangerous direction); the
reconciler and other workers raise with the unsigned `Halt`.

Before staff identities, operators were a list of keys registered here (`RegisterOperators`) and
lifts carried bare signatures (`LiftHalt/1`). Both stay decodable and replay exactly as they did
(their handlers are unchanged), but a new submission is refused at the edge naming the command
that replaced it. Invariants:

* a single operator never lifts a halt when M >= 2 (M is at least 2 whenever N >= 2);
* forged, unknown-operator, duplicate-operator and replayed approvals refuse the whole command and
  change nothing (the guard and handlers validate first, mutate after);
* `Halt` is idempotent: the same `halt_id` while active changes nothing (`HaltUnchanged`);
* everything here is deterministic (no clock, no randomness, no I/O): signature verification with
  `cryptography` is a pure function of its inputs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Iterable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..engine.commands import Command, Event
from ..engine.core import Engine
from ..engine.module import SCOPE_KINDS, Effect, Module
from ..errors import Forbidden, Halted, NotFound, ValidationError
from ..staff.decisions import OPERATOR, StaffSignature
from ..staff.state import check_decision, check_quorum, consume

__all__ = [
    "LEVELS",
    "SCOPE_KINDS",
    "Halt",
    "LiftHalt",
    "LiftHaltSigned",
    "RaiseHaltSigned",
    "RegisterOperators",
    "lift_subject",
    "raise_subject",
    "HaltRaised",
    "HaltUnchanged",
    "HaltLifted",
    "OperatorsRegistered",
    "HaltRecord",
    "HaltsState",
    "lift_message",
    "operators_message",
    "active_halts",
    "halt_for",
    "metrics_samples",
    "halts_of",
    "market_status",
    "MODULE",
    "raise_automatic_halt",
    "clear_automatic_halt",
    "refusal_of",
]

WITHDRAWALS_PAUSED = "WITHDRAWALS_PAUSED"
REDUCE_ONLY = "REDUCE_ONLY"
HALTED = "HALTED"
#: Levels by severity (higher = more refused).
LEVELS = {WITHDRAWALS_PAUSED: 1, REDUCE_ONLY: 2, HALTED: 3}

MAX_ACTIVE_HALTS = 10_000
MAX_LIFTED_KEPT = 1_000
MAX_OPERATORS = 64
MAX_REASON_CHARS = 500
MAX_EVIDENCE_BYTES = 65_536
_ID_RE = re.compile(r"[A-Za-z0-9_.:@-]{1,96}")
_SCOPE_RE = re.compile(r"[A-Za-z0-9_.:@/*-]{1,64}")
_HEX_RE = re.compile(r"[0-9a-f]+")

# ----------------------------------------------------------------------------------------- commands


class RegisterOperators(Command, tag="halt.operators/1"):
    """Set the operator keys (`(operator_id, ed25519_public_key_hex)`) and the quorum `threshold`.

    `approvals` are signatures over `operators_message(...)` by `threshold` operators of the
    *current* set; empty only for the genesis bootstrap (no set registered yet).
    """

    operators: list[tuple[str, str]]
    threshold: int
    approvals: list[tuple[str, str]] = []


class Halt(Command, tag="halt.raise/1"):
    halt_id: str
    scope_kind: str
    scope: str
    level: str
    reason: str
    evidence: str = "{}"


class LiftHalt(Command, tag="halt.lift/1"):
    halt_id: str
    reason: str
    approvals: list[tuple[str, str]]


class LiftHaltSigned(Command, tag="halt.lift/2", frozen=True):
    """Lift one active halt: `approvals` by the staff operator quorum over `lift_subject(...)`."""

    halt_id: str
    reason: str
    approvals: list[StaffSignature]


class RaiseHaltSigned(Command, tag="halt.raise_signed/1", frozen=True):
    """A staff operator raises a halt (`decision` signed over `raise_subject(...)`)."""

    halt_id: str
    scope_kind: str
    scope: str
    level: str
    reason: str
    decision: StaffSignature


class OperatorsRegistered(Event, tag="halt.operators_registered/1"):
    version: int
    operator_ids: list[str]
    threshold: int
    approvers: list[str]


class HaltRaised(Event, tag="halt.raised/1"):
    halt_id: str
    scope_kind: str
    scope: str
    level: str
    reason: str
    evidence: str
    raised_seq: int
    raised_ts_ns: int


class HaltUnchanged(Event, tag="halt.unchanged/1"):
    """A `Halt` for an id that is already active: nothing changed (idempotent re-submission)."""

    halt_id: str
    raised_seq: int


class HaltLifted(Event, tag="halt.lifted/1"):
    halt_id: str
    scope_kind: str
    scope: str
    level: str
    reason: str
    approvers: list[str]
    raised_seq: int
    evidence: str


# ----------------------------------------------------------------------------------------- state


@dataclass(frozen=True, slots=True)
class HaltRecord:
    halt_id: str
    scope_kind: str
    scope: str
    level: str
    reason: str
    evidence: str
    raised_seq: int
    raised_ts_ns: int
    lifted_seq: int = 0
    lift_reason: str = ""
    approvers: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "halt_id": self.halt_id,
            "scope_kind": self.scope_kind,
            "scope": self.scope,
            "level": self.level,
            "reason": self.reason,
            "evidence": self.evidence,
            "raised_seq": self.raised_seq,
            "raised_ts_ns": self.raised_ts_ns,
            "lifted_seq": self.lifted_seq,
            "lift_reason": self.lift_reason,
            "approvers": list(self.approvers),
        }

    def row(self) -> list[Any]:
        return [self.halt_id, self.scope_kind, self.scope, self.level, self.reason, self.evidence,
                self.raised_seq, self.raised_ts_ns, self.lifted_seq, self.lift_reason, list(self.approvers)]

    @classmethod
    def from_row(cls, row: list[Any]) -> "HaltRecord":
        return cls(*row[:10], tuple(row[10]))


class HaltsState:
    """Engine component "halts": the operator set and the active (and recently lifted) halts."""

    def __init__(self, engine: Engine | None = None) -> None:
        self.operators: dict[str, str] = {}
        self.threshold = 0
        self.version = 0
        self.active: dict[str, HaltRecord] = {}
        self.lifted: list[HaltRecord] = []
        # index for the guard: (scope_kind, scope) -> highest level active there
        self._index: dict[tuple[str, str], int] = {}

    def _reindex(self) -> None:
        index: dict[tuple[str, str], int] = {}
        for h in self.active.values():
            key = (h.scope_kind, h.scope)
            index[key] = max(index.get(key, 0), LEVELS[h.level])
        self._index = index

    def level_at(self, scope_kind: str, scope: str) -> int:
        return self._index.get((scope_kind, scope), 0)

    def check_invariants(self) -> None:
        assert len(self.active) <= MAX_ACTIVE_HALTS, "too many active halts"
        assert not self.operators or 1 <= self.threshold <= len(self.operators), "bad quorum"
        assert len(self.operators) < 2 or self.threshold >= 2, "a single operator could lift a halt"


def _snapshot(state: HaltsState) -> list[Any]:
    return [
        sorted([k, v] for k, v in state.operators.items()),
        state.threshold,
        state.version,
        [state.active[k].row() for k in sorted(state.active)],
        [h.row() for h in state.lifted],
    ]


def _restore(engine: Engine, data: list[Any]) -> HaltsState:
    state = HaltsState(engine)
    ops, state.threshold, state.version, active, lifted = data
    state.operators = {k: v for k, v in ops}
    state.active = {row[0]: HaltRecord.from_row(row) for row in active}
    state.lifted = [HaltRecord.from_row(row) for row in lifted]
    state._reindex()
    return state


#: The halts engine module. Its own commands are never refused by a halt (they raise and lift them).
MODULE = Module("halts", writes=("halts", "staff"))  # staff: the quorum's spent nonces
MODULE.declare_state(HaltsState, _snapshot, _restore)
MODULE.declare_events(OperatorsRegistered, HaltRaised, HaltUnchanged, HaltLifted)


def halts_of(engine: Engine) -> HaltsState:
    return engine.components["halts"]  # type: ignore[no-any-return]


# ----------------------------------------------------------------------------------------- messages


def lift_message(halt_id: str, reason: str, raised_seq: int) -> bytes:
    """The exact bytes each operator signs to approve lifting one raised instance of a halt."""
    return json.dumps(["ringfence/lift-halt/v1", halt_id, reason, raised_seq], separators=(",", ":")).encode()


def operators_message(operators: Iterable[tuple[str, str]], threshold: int, current_version: int) -> bytes:
    """The exact bytes the current operators sign to replace the operator set."""
    ops = sorted([str(a), str(b)] for a, b in operators)
    return json.dumps(["ringfence/register-operators/v1", ops, threshold, current_version], separators=(",", ":")).encode()


def _verify_quorum(state: HaltsState, approvals: list[tuple[str, str]], message: bytes) -> list[str]:
    """Check every approval and that at least `threshold` distinct operators signed. Raises; never mutates."""
    if not state.operators:
        raise Forbidden("no operators are registered; register operators first", field="approvals")
    if len(approvals) > MAX_OPERATORS:
        raise ValidationError(f"approvals holds {len(approvals)} entries; at most {MAX_OPERATORS}", field="approvals")
    seen: list[str] = []
    for i, approval in enumerate(approvals):
        operator_id, signature_hex = approval
        where = f"approvals[{i}]"
        if operator_id in seen:
            raise Forbidden(f"operator {operator_id!r} approved twice; each operator counts once", field=where)
        key_hex = state.operators.get(operator_id)
        if key_hex is None:
            raise Forbidden(f"{operator_id!r} is not a registered operator", field=where)
        if len(signature_hex) != 128 or not _HEX_RE.fullmatch(signature_hex):
            raise ValidationError("signature must be 128 lowercase hex characters (Ed25519)", field=where)
        try:
            Ed25519PublicKey.from_public_bytes(bytes.fromhex(key_hex)).verify(bytes.fromhex(signature_hex), message)
        except InvalidSignature:
            raise Forbidden(
                f"the signature of {operator_id!r} does not verify for this halt, reason and raise (forged or replayed)",
                field=where,
            ) from None
        seen.append(operator_id)
    if len(seen) < state.threshold:
        raise Forbidden(
            f"{len(seen)} valid approval(s); lifting needs {state.threshold} of {len(state.operators)} operators",
            field="approvals",
        )
    return seen


# ----------------------------------------------------------------------------------------- handlers


def _check_text(value: object, field: str, limit: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(f"{field} must be a non-empty string", field=field)
    if len(value) > limit:
        raise ValidationError(f"{field} is {len(value)} characters; at most {limit}", field=field)
    return value


def refuse_legacy_operator_commands(engine: Engine, command: Any) -> None:
    """`RegisterOperators` and `LiftHalt/1` predate staff identities: refused when newly submitted
    (their journaled records still replay: prechecks never run on replay)."""
    replacement = ("AddStaff / RemoveStaff (ringfence staff add|remove)" if isinstance(command, RegisterOperators)
                   else "LiftHaltSigned (ringfence halts lift)")
    raise Forbidden(f"{type(command).__name__} is retired: operators are staff members now; use {replacement}",
                    field="approvals")



def _precheck_register_operators(engine: Engine, c: RegisterOperators) -> None:
    state = halts_of(engine)
    n = len(c.operators)
    if not 1 <= n <= MAX_OPERATORS:
        raise ValidationError(f"operators must hold 1 to {MAX_OPERATORS} entries", field="operators")
    ids = [op for op, _ in c.operators]
    if len(set(ids)) != n:
        raise ValidationError("operator ids must be unique", field="operators")
    for i, (op, key_hex) in enumerate(c.operators):
        if not _ID_RE.fullmatch(op):
            raise ValidationError("operator id must be 1-96 characters of A-Z a-z 0-9 _ . : @ -", field=f"operators[{i}]")
        if len(key_hex) != 64 or not _HEX_RE.fullmatch(key_hex):
            raise ValidationError("public key must be 64 lowercase hex characters (Ed25519)", field=f"operators[{i}]")
        try:
            Ed25519PublicKey.from_public_bytes(bytes.fromhex(key_hex))
        except ValueError:
            raise ValidationError("not a valid Ed25519 public key", field=f"operators[{i}]") from None
    minimum = 1 if n == 1 else 2
    if not minimum <= c.threshold <= n:
        raise ValidationError(
            f"threshold must be between {minimum} and {n} (with two or more operators, one alone may never lift)",
            field="threshold",
        )
    if state.operators:
        _verify_quorum(state, c.approvals, operators_message(c.operators, c.threshold, state.version))
    elif c.approvals:
        raise ValidationError("the genesis operator set carries no approvals", field="approvals")


@MODULE.handles(RegisterOperators, precheck=refuse_legacy_operator_commands, effect=Effect.ADMIN)
def _register_operators(engine: Engine, c: RegisterOperators) -> list[Event]:
    _precheck_register_operators(engine, c)
    state = halts_of(engine)
    approvers = [op for op, _ in c.approvals]
    state.operators = {op: key for op, key in c.operators}
    state.threshold = c.threshold
    state.version += 1
    return [OperatorsRegistered(state.version, sorted(state.operators), c.threshold, approvers)]


def _precheck_halt(engine: Engine, c: Halt) -> None:
    if not _ID_RE.fullmatch(c.halt_id):
        raise ValidationError("halt_id must be 1-96 characters of A-Z a-z 0-9 _ . : @ -", field="halt_id")
    if c.scope_kind not in SCOPE_KINDS:
        raise ValidationError(f"scope_kind must be one of {', '.join(SCOPE_KINDS)}", field="scope_kind")
    if not _SCOPE_RE.fullmatch(c.scope):
        raise ValidationError("scope must be 1-64 characters of A-Z a-z 0-9 _ . : @ / * -", field="scope")
    if c.scope_kind == "venue" and c.scope != "*":
        raise ValidationError("a venue halt has scope '*'", field="scope")
    if c.level not in LEVELS:
        raise ValidationError(f"level must be one of {', '.join(LEVELS)}", field="level")
    _check_text(c.reason, "reason", MAX_REASON_CHARS)
    if len(c.evidence.encode()) > MAX_EVIDENCE_BYTES:
        raise ValidationError(f"evidence is larger than {MAX_EVIDENCE_BYTES} bytes", field="evidence")
    try:
        json.loads(c.evidence)
    except ValueError:
        raise ValidationError("evidence must be a JSON document", field="evidence") from None
    state = halts_of(engine)
    if c.halt_id not in state.active and len(state.active) >= MAX_ACTIVE_HALTS:
        raise ValidationError(f"{MAX_ACTIVE_HALTS} halts are already active", field="halt_id")


@MODULE.handles(Halt, precheck=_precheck_halt, effect=Effect.ADMIN)
def _halt(engine: Engine, c: Halt) -> list[Event]:
    _precheck_halt(engine, c)
    state = halts_of(engine)
    existing = state.active.get(c.halt_id)
    if existing is not None:
        return [HaltUnchanged(c.halt_id, existing.raised_seq)]
    record = HaltRecord(c.halt_id, c.scope_kind, c.scope, c.level, c.reason, c.evidence, engine.seq, engine.now_ns)
    state.active[c.halt_id] = record
    state._reindex()
    return [HaltRaised(c.halt_id, c.scope_kind, c.scope, c.level, c.reason, c.evidence, engine.seq, engine.now_ns)]


def _precheck_lift(engine: Engine, c: LiftHalt) -> list[str]:
    state = halts_of(engine)
    _check_text(c.reason, "reason", MAX_REASON_CHARS)
    record = state.active.get(c.halt_id)
    if record is None:
        raise NotFound(f"no active halt {c.halt_id!r} (already lifted, or never raised)", field="halt_id")
    return _verify_quorum(state, c.approvals, lift_message(c.halt_id, c.reason, record.raised_seq))


@MODULE.handles(LiftHalt, precheck=refuse_legacy_operator_commands, effect=Effect.ADMIN)
def _lift(engine: Engine, c: LiftHalt) -> list[Event]:
    approvers = _precheck_lift(engine, c)
    state = halts_of(engine)
    record = state.active.pop(c.halt_id)
    done = HaltRecord(*record.row()[:8], engine.seq, c.reason, tuple(approvers))
    state.lifted.append(done)
    del state.lifted[:-MAX_LIFTED_KEPT]
    state._reindex()
    return [HaltLifted(c.halt_id, record.scope_kind, record.scope, record.level, c.reason, approvers,
                       record.raised_seq, record.evidence)]


def lift_subject(halt_id: str, reason: str, raised_seq: int) -> list[Any]:
    """What each operator signs (action `halt.lift`) to lift one raised instance of a halt."""
    return [halt_id, reason, raised_seq]


def raise_subject(halt_id: str, scope_kind: str, scope: str, level: str, reason: str) -> list[Any]:
    """What an operator signs (action `halt.raise`) to raise a halt."""
    return [halt_id, scope_kind, scope, level, reason]


def _precheck_lift_signed(engine: Engine, c: LiftHaltSigned) -> list[str]:
    state = halts_of(engine)
    _check_text(c.reason, "reason", MAX_REASON_CHARS)
    record = state.active.get(c.halt_id)
    if record is None:
        raise NotFound(f"no active halt {c.halt_id!r} (already lifted, or never raised)", field="halt_id")
    return check_quorum(engine, "halt.lift", lift_subject(c.halt_id, c.reason, record.raised_seq), c.approvals, OPERATOR)


@MODULE.handles(LiftHaltSigned, precheck=_precheck_lift_signed, effect=Effect.ADMIN)
def _lift_signed(engine: Engine, c: LiftHaltSigned) -> list[Event]:
    approvers = _precheck_lift_signed(engine, c)
    consume(engine, c.approvals)
    state = halts_of(engine)
    record = state.active.pop(c.halt_id)
    state.lifted.append(HaltRecord(*record.row()[:8], engine.seq, c.reason, tuple(approvers)))
    del state.lifted[:-MAX_LIFTED_KEPT]
    state._reindex()
    return [HaltLifted(c.halt_id, record.scope_kind, record.scope, record.level, c.reason, approvers,
                       record.raised_seq, record.evidence)]


def _as_halt(c: RaiseHaltSigned) -> Halt:
    evidence = json.dumps({"raised_by": c.decision.staff_id}, separators=(",", ":"))
    return Halt(c.halt_id, c.scope_kind, c.scope, c.level, c.reason, evidence)


def _precheck_raise_signed(engine: Engine, c: RaiseHaltSigned) -> None:
    _precheck_halt(engine, _as_halt(c))
    check_decision(engine, "halt.raise", raise_subject(c.halt_id, c.scope_kind, c.scope, c.level, c.reason),
                   c.decision, OPERATOR)


@MODULE.handles(RaiseHaltSigned, precheck=_precheck_raise_signed, effect=Effect.ADMIN)
def _raise_signed(engine: Engine, c: RaiseHaltSigned) -> list[Event]:
    _precheck_raise_signed(engine, c)
    consume(engine, [c.decision])
    return _halt(engine, _as_halt(c))


# ----------------------------------------------------------------------------------------- the guard


def _refusal(kind: str, scope: str, level: str, name: str, state: HaltsState) -> Halted:
    ids = [h.halt_id for h in state.active.values() if h.scope_kind == kind and h.scope == scope]
    where = "the venue" if kind == "venue" else f"{kind} {scope}"
    return Halted(f"{name} refused: {where} is {level} (halt {', '.join(sorted(ids))})", field=kind)


#: The lowest level that refuses a command of each effect (None: no level refuses it).
#: HALTED refuses everything but what always reduces risk (cancels); REDUCE_ONLY what opens risk;
#: WITHDRAWALS_PAUSED what moves funds out. Facts (settle, fail, observe) are NEUTRAL: refusing a
#: fact would make the ledger disagree with the chain, so only HALTED stops them.
_REFUSED_FROM = {
    Effect.OPENS_RISK: LEVELS[REDUCE_ONLY],
    Effect.MOVES_FUNDS_OUT: LEVELS[WITHDRAWALS_PAUSED],
    Effect.NEUTRAL: LEVELS[HALTED],
    Effect.ADMIN: LEVELS[HALTED],
    Effect.REDUCES_RISK: None,
}


def _check_command(engine: Engine, state: HaltsState, command: Any) -> None:
    """Refuse `command` if a halt covers one of its declared scopes at a level its declared effect
    does not pass. Reads only what the command's module declared (scopes, effect, parts)."""
    spec = engine.spec_of(type(command))
    if spec is None or spec.module in (MODULE.name, "staff"):
        return  # halts are raised and lifted, and staff changed, whatever is halted
    if spec.parts is not None:
        for part in spec.parts(command):
            _check_command(engine, state, part)
        return
    effect = spec.effect_of(engine, command)
    refused_from = _REFUSED_FROM[effect]
    if effect is Effect.REDUCES_RISK and not isinstance(spec.effect, Effect):
        # Reduces risk only in this state (a reducing amend): passes REDUCE_ONLY, but a HALTED
        # book is frozen — only what always reduces risk (a cancel) passes there.
        refused_from = LEVELS[HALTED]
    if refused_from is None:
        return
    for kind, scope in (("venue", "*"), *spec.scopes(engine, command)):
        level = state.level_at(kind, scope)
        if level >= refused_from:
            name = next(n for n, rank in LEVELS.items() if rank == level)
            raise _refusal(kind, scope, name, type(command).__name__, state)


def refusal_of(engine: Engine, command: Any) -> Halted | None:
    """The refusal the halt guard would give `command` now, or None when it would pass.

    For what a module does on its own that a client could also ask for directly: a conditional
    order reaching its trigger, a resting stop triggering. The module builds the command a client
    would submit for it and asks here, so the same rules (`_check_command`: scopes, levels,
    effects) decide both ways; there is no second copy of them. Pure: reads state only."""
    state = engine.components.get("halts")
    if state is None or not state._index:
        return None
    try:
        _check_command(engine, state, command)
    except Halted as refused:
        return refused
    return None


@MODULE.guard_while(lambda state: bool(state._index))  # `apply` skips it while no halt is active
def _halt_guard(engine: Engine, command: Any) -> None:
    state = engine.components.get("halts")
    if state is None or not state._index:
        return
    _check_command(engine, state, command)


# ----------------------------------------------------------------------------------------- queries


def _shard_halt(engine: Engine) -> HaltRecord | None:
    """A shard halted by a broken invariant (`Engine.halted`) shows as a venue-wide HALTED halt.

    It is not in the halts state and no quorum lifts it: the engine refuses every command until
    an operator fixes the cause and restarts (docs/engine.md)."""
    if engine.halted is None:
        return None
    seq, error = engine.halted
    reason = f"engine invariant broken at sequence {seq} ({error}); the shard refuses every command"
    evidence = json.dumps({"seq": seq, "error": error}, separators=(",", ":"))
    return HaltRecord("shard-halted", "venue", "*", HALTED, reason, evidence, seq, 0)


def active_halts(engine: Engine) -> list[dict[str, Any]]:
    """Every active halt, most severe first (for the API, WebSocket snapshot and dashboard); a shard
    halted by a broken invariant comes first, as `shard-halted`."""
    state = halts_of(engine)
    rows = sorted(state.active.values(), key=lambda h: (-LEVELS[h.level], h.raised_seq))
    shard = _shard_halt(engine)
    return ([shard.as_dict()] if shard is not None else []) + [h.as_dict() for h in rows]


def halt_for(engine: Engine, scope_kind: str, scope: str) -> str | None:
    """The most severe level active exactly at `(scope_kind, scope)` or at the venue, or None."""
    if engine.halted is not None:
        return HALTED
    state = halts_of(engine)
    level = max(state.level_at(scope_kind, scope), state.level_at("venue", "*"))
    for name, rank in LEVELS.items():
        if rank == level:
            return name
    return None


def metrics_samples(engine: Engine) -> list[tuple[dict[str, str], int]]:
    """Samples for a `ringfence_halt_active{scope_kind,scope,level}` gauge (1 per active halt)."""
    state = halts_of(engine)
    return [({"scope_kind": h.scope_kind, "scope": h.scope, "level": h.level, "halt_id": h.halt_id}, 1)
            for h in sorted(state.active.values(), key=lambda h: h.halt_id)]


#: Market statuses as the API shows them (Binance `TRADING` / `BREAK`-like views of halts).
MARKET_STATUSES = ("ACTIVE", REDUCE_ONLY, HALTED)


def market_status(engine: Engine, symbol: str) -> str:
    """What trading in `symbol` may do now: `ACTIVE`, `REDUCE_ONLY` or `HALTED`.

    One view over both sources: halts covering the market, its segment, its assets or the venue
    (a `WITHDRAWALS_PAUSED` halt does not affect trading), and the market's own automatic state
    (the price-band circuit breaker sets REDUCE_ONLY; markets left non-ACTIVE by a journaled
    `SetMarketStatus` from before halts owned that decision). The most severe wins. Stable for the
    API (`exchangeInfo`, `/v1/markets`).
    """
    trading = engine.components.get("trading")
    market = getattr(trading, "markets", {}).get(symbol) if trading is not None else None
    if market is None:
        raise NotFound(f"unknown market {symbol!r}", field="symbol")
    rank = {"ACTIVE": 0, REDUCE_ONLY: LEVELS[REDUCE_ONLY], HALTED: LEVELS[HALTED]}.get(str(market.status), 0)
    if engine.halted is not None:
        return HALTED
    state = halts_of(engine)
    scopes = [("venue", "*"), ("market", symbol), ("segment", market.segment), ("asset", market.base), ("asset", market.quote)]
    for kind, scope in scopes:
        level = state.level_at(kind, scope)
        if level >= LEVELS[REDUCE_ONLY]:
            rank = max(rank, level)
    return "ACTIVE" if rank == 0 else next(n for n, r in LEVELS.items() if r == rank)


# ----------------------------------------------------------------------------------------- for other modules
# A module whose own condition makes a scope unsafe (the index: too few live price sources) raises
# a halt here and clears it itself when the condition ends. It is an ordinary halt for everything
# else (the guard, market_status, /v1/halts, LiftHaltSigned by the staff operator quorum); only its
# automatic lift carries no approvers.


def raise_automatic_halt(engine: Engine, halt_id: str, scope_kind: str, scope: str, level: str,
                         reason: str, evidence: str) -> list[Event]:
    """Raise `halt_id` unless it is active already (then nothing changes)."""
    assert scope_kind in SCOPE_KINDS and level in LEVELS and _ID_RE.fullmatch(halt_id), "malformed automatic halt"
    state = halts_of(engine)
    if halt_id in state.active or len(state.active) >= MAX_ACTIVE_HALTS:
        return []
    state.active[halt_id] = HaltRecord(halt_id, scope_kind, scope, level, reason, evidence, engine.seq, engine.now_ns)
    state._reindex()
    engine.rearm_guards()  # raised from another module: the halts guard must run from now on
    return [HaltRaised(halt_id, scope_kind, scope, level, reason, evidence, engine.seq, engine.now_ns)]


def clear_automatic_halt(engine: Engine, halt_id: str, reason: str) -> list[Event]:
    """Lift `halt_id` (no approvers: the condition that raised it has ended); nothing if it is not active."""
    state = halts_of(engine)
    record = state.active.pop(halt_id, None)
    if record is None:
        return []
    state.lifted.append(HaltRecord(*record.row()[:8], engine.seq, reason, ()))
    del state.lifted[:-MAX_LIFTED_KEPT]
    state._reindex()
    engine.rearm_guards()
    return [HaltLifted(halt_id, record.scope_kind, record.scope, record.level, reason, [], record.raised_seq, record.evidence)]
