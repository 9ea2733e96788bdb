"""Graded, scoped halts as engine state, lifted only by an operator quorum (ARCHITECTURE §4, §10).

A halt is a journaled command: `Halt(halt_id, scope_kind, scope, level, reason, evidence)`. While it
is active, an engine guard refuses every later command that falls in its scope and level:

* scope kinds: `market` (a trading symbol), `segment` (`spot`, `derivatives`...), `asset`
  (`BTC`, or `BTC@hot1` for one wallet of an asset) and `venue` (everything);
* levels: `WITHDRAWALS_PAUSED` (withdrawal-initiating custody commands refused),
  `REDUCE_ONLY` (trading: cancels only; a new order or an amend that adds exposure is refused),
  `HALTED` (everything in scope refused except cancels and the halt commands themselves).

Lifting needs `LiftHalt(halt_id, reason, approvals)` with Ed25519 signatures of at least M of the N
registered operators over `lift_message(halt_id, reason, raised_seq)`. `raised_seq` (the sequence
number of the `Halt` that raised this instance) is the nonce: an approval signed for one lift
cannot be replayed for another halt, nor for the same halt id raised again later. Operators are set
by `RegisterOperators`, which itself needs M-of-N of the current set (a genesis bootstrap is
accepted only while no set exists). Invariants:

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
from ..engine.core import Engine, handles, register_component, register_guard
from ..errors import Forbidden, Halted, NotFound, ValidationError

__all__ = [
    "LEVELS",
    "SCOPE_KINDS",
    "Halt",
    "LiftHalt",
    "RegisterOperators",
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
    "WITHDRAWAL_COMMAND_VERBS",
    "WITHDRAWAL_COMMANDS",
]

WITHDRAWALS_PAUSED = "WITHDRAWALS_PAUSED"
REDUCE_ONLY = "REDUCE_ONLY"
HALTED = "HALTED"
#: Levels by severity (higher = more refused).
LEVELS = {WITHDRAWALS_PAUSED: 1, REDUCE_ONLY: 2, HALTED: 3}
SCOPE_KINDS = ("market", "segment", "asset", "venue")

MAX_ACTIVE_HALTS = 10_000
MAX_LIFTED_KEPT = 1_000
MAX_OPERATORS = 64
MAX_REASON_CHARS = 500
MAX_EVIDENCE_BYTES = 65_536
_ID_RE = re.compile(r"[A-Za-z0-9_.:@-]{1,96}")
_SCOPE_RE = re.compile(r"[A-Za-z0-9_.:@/*-]{1,64}")
_HEX_RE = re.compile(r"[0-9a-f]+")

#: Custody command type names that move a withdrawal towards the chain contain "Withdraw" and one
#: of these verbs (`RequestWithdrawal`, `ApproveWithdrawal`, ...). Commands that only record what happened (settle, fail, observe,
#: confirm, cancel) stay allowed: refusing a fact would make the ledger disagree with the chain.
WITHDRAWAL_COMMAND_VERBS = ("Request", "Approve", "Review", "Sign", "RecordSigned", "Broadcast", "Release", "Submit")
_CANCEL_TYPES = frozenset({"CancelOrder", "CancelAll"})
_HALT_TYPES = frozenset({"Halt", "LiftHalt", "RegisterOperators"})


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


register_component("halts", HaltsState, _snapshot, _restore)


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


@handles(RegisterOperators, precheck=_precheck_register_operators)
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


@handles(Halt, precheck=_precheck_halt)
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


@handles(LiftHalt, precheck=_precheck_lift)
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


# ----------------------------------------------------------------------------------------- the guard


def _market_info(engine: Engine, symbol: str) -> tuple[str, str, str] | None:
    trading = engine.components.get("trading")
    market = getattr(trading, "markets", {}).get(symbol) if trading is not None else None
    if market is None:
        return None
    return market.segment, market.base, market.quote


def _scopes_of(engine: Engine, command: Any) -> list[tuple[str, str]]:
    """The (scope_kind, scope) pairs a command touches, besides the venue."""
    out: list[tuple[str, str]] = []
    symbol = getattr(command, "symbol", None)
    if isinstance(symbol, str):
        out.append(("market", symbol))
        info = _market_info(engine, symbol)
        if info is not None:
            out.append(("segment", info[0]))
            out.append(("asset", info[1]))
            out.append(("asset", info[2]))
    asset = getattr(command, "asset", None)
    if isinstance(asset, str):
        out.append(("asset", asset))
        wallet = getattr(command, "wallet", None)
        if isinstance(wallet, str):
            out.append(("asset", f"{asset}@{wallet}"))
    segment = getattr(command, "segment", None)
    if isinstance(segment, str):
        out.append(("segment", segment))
    transfers = getattr(command, "transfers", None)
    if isinstance(transfers, list) and transfers:
        ledger = engine.ledger
        n = len(ledger.accounts)
        # Every account's asset and segment counts: deduplicating by asset alone let `world -> a
        # spot account` (world first, segment "-") pass a spot halt (found by the simulation).
        seen: set[tuple[str, str]] = set()
        for t in transfers:
            for aid in (getattr(t, "debit_account_id", 0), getattr(t, "credit_account_id", 0)):
                if isinstance(aid, int) and 0 < aid < n:
                    acc = ledger.accounts[aid]
                    if acc is None:
                        continue
                    for scope in (("asset", acc.asset), ("segment", acc.segment)):
                        if scope not in seen and scope[1] != "-":
                            seen.add(scope)
                            out.append(scope)
    return out


#: The custody flows' commands that move a withdrawal towards the chain (branch `custody`).
WITHDRAWAL_COMMANDS = frozenset({"RequestWithdrawal", "ApproveWithdrawal", "AuthorizeSigning", "RecordSignedTx"})


def _is_withdrawal_command(name: str) -> bool:
    if name in WITHDRAWAL_COMMANDS:
        return True
    return "Withdraw" in name and any(verb in name for verb in WITHDRAWAL_COMMAND_VERBS)


def _refusal(kind: str, scope: str, level: str, name: str, state: HaltsState) -> Halted:
    ids = [h.halt_id for h in state.active.values() if h.scope_kind == kind and h.scope == scope]
    where = "the venue" if kind == "venue" else f"{kind} {scope}"
    return Halted(f"{name} refused: {where} is {level} (halt {', '.join(sorted(ids))})", field=kind)


def _check_action(engine: Engine, state: HaltsState, command: Any) -> None:
    name = type(command).__name__
    if name in _HALT_TYPES:
        return
    if name == "TradingBatch":
        for action in getattr(command, "actions", []):
            _check_action(engine, state, action)
        return
    scopes = [("venue", "*")] + _scopes_of(engine, command)
    is_cancel = name in _CANCEL_TYPES
    is_trading = isinstance(getattr(command, "symbol", None), str)
    for kind, scope in scopes:
        level = state.level_at(kind, scope)
        if level == 0:
            continue
        if level >= LEVELS[HALTED] and not is_cancel:
            raise _refusal(kind, scope, HALTED, name, state)
        if level >= LEVELS[REDUCE_ONLY] and is_trading and not is_cancel and _adds_exposure(engine, command):
            raise _refusal(kind, scope, REDUCE_ONLY, name, state)
        if level >= LEVELS[WITHDRAWALS_PAUSED] and _is_withdrawal_command(name):
            raise _refusal(kind, scope, WITHDRAWALS_PAUSED, name, state)


def _adds_exposure(engine: Engine, command: Any) -> bool:
    """Spot has no positions to reduce: every new order adds exposure. An amend only reduces when it
    keeps the price and lowers the quantity of an order that exists."""
    if type(command).__name__ != "AmendOrder":
        return type(command).__name__ not in _CANCEL_TYPES
    existing = _order_price_qty(engine, command.symbol, command.order_id)
    if existing is None:
        return True
    price, quantity = existing
    return command.price not in (0, price) or not 0 < command.quantity < quantity


def _order_price_qty(engine: Engine, symbol: str, order_id: int) -> tuple[int, int] | None:
    trading = engine.components.get("trading")
    market = getattr(trading, "markets", {}).get(symbol) if trading is not None else None
    orders = getattr(market, "orders", None) if market is not None else None
    order = orders.get(order_id) if isinstance(orders, dict) else None
    if order is None:
        return None
    # `qty` is the order's total quantity (an amend names a new total); `Order` has no `quantity`,
    # and falling back to `leaves` refused reducing amends of partly filled orders (found by the sim).
    return getattr(order, "price", 0), getattr(order, "qty", 0)


@register_guard
def _halt_guard(engine: Engine, command: Any) -> None:
    state = engine.components.get("halts")
    if state is None or not state._index:
        return
    _check_action(engine, state, command)


# ----------------------------------------------------------------------------------------- queries


def active_halts(engine: Engine) -> list[dict[str, Any]]:
    """Every active halt, most severe first (for the API, WebSocket snapshot and dashboard)."""
    state = halts_of(engine)
    rows = sorted(state.active.values(), key=lambda h: (-LEVELS[h.level], h.raised_seq))
    return [h.as_dict() for h in rows]


def halt_for(engine: Engine, scope_kind: str, scope: str) -> str | None:
    """The most severe level active exactly at `(scope_kind, scope)` or at the venue, or None."""
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
