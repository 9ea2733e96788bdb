"""Ledger commands and events, and the engine handlers that apply them.

The handlers are thin: they validate the command against the state, then call the `Ledger`.
Everything a client may get wrong is answered with a `RingfenceError` (whole command) or a
per-transfer result code (`CreateTransfers`), never with a half-applied change.
"""

from __future__ import annotations

from typing import Any, Sequence

from ..engine.commands import Command, Event
from ..engine.core import Engine
from ..engine.module import NEVER, Effect, Module, Scope
from ..errors import ValidationError
from ..money import MAX_DECIMALS, Asset, AssetClass, validate_asset_code
from .ledger import Ledger
from .model import Transfer, validate_kind, validate_owner, validate_segment

__all__ = [
    "RegisterAsset",
    "RegisterSegment",
    "OpenAccount",
    "CreateTransfers",
    "AssetRegistered",
    "SegmentRegistered",
    "AccountOpened",
    "TransfersCreated",
    "TransferExpired",
    "MAX_TRANSFERS_PER_COMMAND",
    "MODULE",
    "checked_asset",
]

#: The ledger's engine module (ARCHITECTURE §3): the root state, the only code that changes a balance.
MODULE = Module("ledger", writes=("ledger",))

#: TigerBeetle's batch size: one command carries at most this many transfers.
MAX_TRANSFERS_PER_COMMAND = 8190


class RegisterAsset(Command, tag="asset.register/1", frozen=True):
    code: str
    decimals: int
    asset_class: str
    chain: str = ""


class RegisterSegment(Command, tag="segment.register/1", frozen=True):
    name: str


class OpenAccount(Command, tag="account.open/1", frozen=True):
    owner: str
    asset: str
    kind: str = "available"
    segment: str = "spot"
    flags: int = 0


class CreateTransfers(Command, tag="transfers.create/1", frozen=True):
    transfers: list[Transfer]


class AssetRegistered(Event, tag="asset.registered/1", frozen=True):
    code: str
    created: bool


class SegmentRegistered(Event, tag="segment.registered/1", frozen=True):
    name: str
    created: bool


class AccountOpened(Event, tag="account.opened/1", frozen=True):
    account_id: int
    owner: str
    asset: str
    kind: str
    segment: str
    flags: int
    created: bool


class TransfersCreated(Event, tag="transfers.created/1", frozen=True):
    """Result of a `CreateTransfers`: how many there were and `(index, code)` of each failure."""

    seq: int
    count: int
    failures: list[tuple[int, str]]


class TransferExpired(Event, tag="transfer.expired/1", frozen=True):
    pending_id: int
    released: int


MODULE.declare_events(AssetRegistered, SegmentRegistered, AccountOpened, TransfersCreated, TransferExpired)


def _new_ledger(engine: Engine) -> Ledger:
    ledger = Ledger()
    ledger.wake_at = engine.wake_at  # a stored deadline wakes the expiry timer
    return ledger


def _restore_ledger(engine: Engine, data: list[Any]) -> Ledger:
    data = list(data)
    data[3] = [Transfer(*row) for row in data[3]]
    ledger = Ledger.from_snapshot(data)
    ledger.wake_at = engine.wake_at
    return ledger


MODULE.declare_state(_new_ledger, Ledger.snapshot_state, _restore_ledger, attribute="ledger", digest=Ledger.digest)


@MODULE.timer(lambda ledger: ledger.next_expiry_ns(NEVER))
def _expire_transfers(engine: Engine) -> Sequence[Event]:
    """Two-phase transfers past their timeout are voided before the command at that time runs
    (the engine runs this only once the earliest deadline the ledger stored has come)."""
    expired = engine.ledger.expire_due(engine.now_ns)
    return [TransferExpired(pid, amount) for pid, amount in expired] if expired else ()


def _account_scopes(engine: Engine, command: OpenAccount) -> list[Scope]:
    return [("asset", command.asset), ("segment", command.segment)]


def _transfer_scopes(engine: Engine, command: CreateTransfers) -> list[Scope]:
    """The assets (and segments) of the accounts the transfers touch; unknown ids touch nothing."""
    out: list[Scope] = []
    accounts = engine.ledger.accounts
    n = len(accounts)
    # Every account's asset and segment counts: deduplicating by asset alone let `world -> a spot
    # account` (world first, segment "-") pass a spot halt (found by the simulation).
    seen: set[Scope] = set()
    for t in command.transfers:
        for aid in (t.debit_account_id, t.credit_account_id):
            if isinstance(aid, int) and 0 < aid < n:
                acc = accounts[aid]
                if acc is None:
                    continue
                for scope in (("asset", acc.asset), ("segment", acc.segment)):
                    if scope[1] != "-" and scope not in seen:
                        seen.add(scope)
                        out.append(scope)
    return out


def _asset_of(command: RegisterAsset) -> Asset:
    try:
        klass = AssetClass(command.asset_class)
    except ValueError:
        raise ValidationError("asset_class must be one of crypto, tokenized, fiat", field="asset_class") from None
    return Asset(command.code, command.decimals, klass, command.chain or None)


def checked_asset(command: RegisterAsset) -> Asset:
    """The asset `command` registers, each of its fields checked by the rules `Asset` applies (`_asset_of`),
    but every refusal naming the command's own field (`code`, `decimals`, `asset_class`, `chain`):
    what an operator's `ringfence asset add` is told. Raises `ValidationError`; changes nothing."""
    validate_asset_code(command.code, "code")
    decimals = command.decimals
    if not isinstance(decimals, int) or isinstance(decimals, bool) or not 0 <= decimals <= MAX_DECIMALS:
        raise ValidationError(f"decimals must be an integer between 0 and {MAX_DECIMALS}", field="decimals")
    if not isinstance(command.asset_class, str) or command.asset_class not in {c.value for c in AssetClass}:
        raise ValidationError(f"asset_class must be one of {', '.join(c.value for c in AssetClass)}",
                              field="asset_class")
    chain = command.chain
    if not isinstance(chain, str) or len(chain) > 32:
        raise ValidationError("chain must be a name of 1-32 characters, or empty for none", field="chain")
    return _asset_of(command)


def _precheck_register_asset(engine: Engine, command: RegisterAsset) -> None:
    asset = _asset_of(command)
    if asset.code in engine.ledger.assets and engine.ledger.assets.get(asset.code) != asset:
        engine.ledger.assets.register(asset)  # raises DuplicateAsset with a clear message


@MODULE.handles(RegisterAsset, precheck=_precheck_register_asset, effect=Effect.ADMIN)
def _register_asset(engine: Engine, command: RegisterAsset) -> list[Event]:
    created = engine.ledger.register_asset(_asset_of(command))
    return [AssetRegistered(command.code, created)]


def _precheck_register_segment(engine: Engine, command: RegisterSegment) -> None:
    validate_segment(command.name, "name")
    if command.name == "-":
        raise ValidationError("'-' is not a segment name", field="name")


@MODULE.handles(RegisterSegment, precheck=_precheck_register_segment, effect=Effect.ADMIN)
def _register_segment(engine: Engine, command: RegisterSegment) -> list[Event]:
    created = engine.ledger.register_segment(command.name)
    return [SegmentRegistered(command.name, created)]


def _precheck_open_account(engine: Engine, command: OpenAccount) -> None:
    ledger = engine.ledger
    validate_owner(command.owner)
    ledger.assets.get(command.asset)
    validate_kind(command.kind)
    validate_segment(command.segment)
    if command.segment != "-" and command.segment not in ledger.segments:
        raise ValidationError(f"unknown segment {command.segment!r}", field="segment")


@MODULE.handles(OpenAccount, precheck=_precheck_open_account, effect=Effect.NEUTRAL, scopes=_account_scopes)
def _open_account(engine: Engine, command: OpenAccount) -> list[Event]:
    account, created = engine.ledger.open_account(
        command.owner, command.asset, command.kind, command.segment, command.flags
    )
    return [
        AccountOpened(account.id, account.owner, account.asset, account.kind, account.segment, account.flags, created)
    ]


def _precheck_create_transfers(engine: Engine, command: CreateTransfers) -> None:
    n = len(command.transfers)
    if n == 0:
        raise ValidationError("transfers must contain at least one transfer", field="transfers")
    if n > MAX_TRANSFERS_PER_COMMAND:
        raise ValidationError(
            f"transfers holds {n} transfers; at most {MAX_TRANSFERS_PER_COMMAND} per command", field="transfers"
        )


@MODULE.handles(
    CreateTransfers, precheck=_precheck_create_transfers, effect=Effect.NEUTRAL, scopes=_transfer_scopes
)
def _create_transfers(engine: Engine, command: CreateTransfers) -> list[Event]:
    _precheck_create_transfers(engine, command)
    failures = engine.ledger.create_transfers(command.transfers, engine.now_ns)
    return [TransfersCreated(engine.seq, len(command.transfers), failures)]
