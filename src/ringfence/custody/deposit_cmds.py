"""Deposit commands: observe on chain, reorg, credit (available, quarantine or frozen by KYT),
finalize, source-of-funds declarations and the analyst's review of a quarantined deposit."""

from __future__ import annotations

from typing import Any

from ..engine.commands import Command, Event
from ..engine.core import Engine
from ..engine.module import Effect
from .module import MODULE, chain_scopes, custody_scopes, deposit_scopes
from ..errors import Conflict, Forbidden, NotFound, UnsupportedAsset, ValidationError
from .deposits import CREDITED_STATES, DepositRec, deposit_key
from .kyt import FREEZE_CATEGORIES, QUARANTINE_ABOVE
from .retired import refuse_unsigned
from .state import (
    CHAINS,
    MAX_REASONS,
    CustodyState,
    DepositReported,
    _asset_cfg,
    _check_amount,
    _ev,
    _room,
    _system,
    _text,
    _user,
    custody_state,
)

__all__ = ["ObserveDeposit", "RelocateDeposit", "ReorgDeposits", "CreditDeposit", "FinalizeDeposit", "FileSourceOfFunds", "ReviewQuarantine"]


# ------------------------------------------------------------------------------------ deposits


class ObserveDeposit(Command, tag="custody.deposit.observe/1"):
    chain: str
    txid: str
    index: int
    asset: str
    address: str
    amount_minor: int
    height: int
    block_hash: str


def _pre_observe(engine: Engine, c: ObserveDeposit) -> None:
    s = custody_state(engine)
    cfg = _asset_cfg(s, c.asset)
    if cfg.chain != c.chain:
        raise UnsupportedAsset(f"asset {c.asset} is on {cfg.chain}, not {c.chain}", field="asset")
    _check_amount(c.amount_minor, "amount_minor")
    if s.owner_of(c.chain, c.address) is None:
        raise NotFound("not a deposit address of any account", field="address")


@MODULE.handles(ObserveDeposit, precheck=_pre_observe, effect=Effect.NEUTRAL, scopes=custody_scopes)
def _observe(engine: Engine, c: ObserveDeposit) -> list[Event]:
    _pre_observe(engine, c)
    s = custody_state(engine)
    key = deposit_key(c.chain, c.txid, c.index)
    d = s.deposits.get(key)
    if d is not None and d.state not in ("dropped", "reversed"):
        if d.state == "seen" and (d.height, d.block_hash) != (c.height, c.block_hash):
            d.height, d.block_hash = c.height, c.block_hash
            return [_ev("deposit.moved", key, d.state, d.amount_minor, [f"now in block {c.height}"])]
        return [_ev("deposit.unchanged", key, d.state, d.amount_minor)]
    cfg = s.assets[c.asset]
    account_id, wallet, address = s.owner_of(c.chain, c.address)  # type: ignore[misc]
    if c.amount_minor < cfg.min_deposit_minor:
        # Dust below the minimum is recorded (reconciliation sees it on chain) but never credited.
        rec = DepositRec(key, c.chain, c.txid, c.index, c.asset, account_id, wallet, address, c.amount_minor,
                         c.height, c.block_hash, state="below_minimum", seen_ns=engine.now_ns)
        s.deposits[key] = rec
        return [_ev("deposit.below_minimum", key, rec.state, c.amount_minor, [f"minimum is {cfg.min_deposit_minor}"])]
    if d is None:
        d = DepositRec(key, c.chain, c.txid, c.index, c.asset, account_id, wallet, address, c.amount_minor, c.height, c.block_hash)
        d.seen_ns = engine.now_ns
        s.deposits[key] = d
    else:  # re-mined after a reorg: start over (its credit, if any, was reversed)
        d.state, d.height, d.block_hash, d.final = "seen", c.height, c.block_hash, False
    return [_ev("deposit.seen", key, "seen", c.amount_minor, [f"block {c.height}"])]


class RelocateDeposit(Command, tag="custody.deposit.relocate/1"):
    """A non-final deposit's transaction is on the chain in another block than the one recorded
    (the chain replaced that block while the watcher was not looking, e.g. across a restart, and
    the same transaction was mined again): confirmations count from the new block. The credit, if
    any, stays: the coins are on the canonical chain; finality waits for the new block's depth."""

    chain: str
    txid: str
    index: int
    height: int
    block_hash: str


def _pre_relocate(engine: Engine, c: RelocateDeposit) -> None:
    _s, key, d = _known_deposit(engine, c)
    if isinstance(c.height, bool) or c.height < 0:
        raise ValidationError("must be a block height >= 0", field="height")
    _text(c.block_hash, "block_hash", 130)
    if not c.block_hash:
        raise ValidationError("must name the block", field="block_hash")
    if d.final:
        raise Conflict(f"deposit {key} is final: its block cannot move", field="txid")
    if d.state in ("dropped", "reversed", "below_minimum", "returned"):
        raise Conflict(f"deposit {key} is {d.state}", field="txid")


@MODULE.handles(RelocateDeposit, precheck=_pre_relocate, effect=Effect.NEUTRAL, scopes=deposit_scopes)
def _relocate(engine: Engine, c: RelocateDeposit) -> list[Event]:
    _pre_relocate(engine, c)
    _s, key, d = _known_deposit(engine, c)
    if (d.height, d.block_hash) == (c.height, c.block_hash):
        return [_ev("deposit.unchanged", key, d.state, d.amount_minor)]
    d.height, d.block_hash = c.height, c.block_hash
    return [_ev("deposit.moved", key, d.state, d.amount_minor, [f"now in block {c.height}"])]


class ReorgDeposits(Command, tag="custody.deposit.reorg/1"):
    """Blocks from `fork_height` up were replaced: reverse every non-final deposit in them."""

    chain: str
    fork_height: int


def _reverse(engine: Engine, s: CustodyState, d: DepositRec) -> list[str]:
    led = engine.ledger
    user = _user(engine, d.account_id, d.asset, d.credited_kind)
    take = min(d.amount_minor, user.available)
    if take:
        led.move(user, led.world(d.asset), take)
    d.shortfall_minor = d.amount_minor - take
    led.move(led.custody(d.asset, d.wallet), _system(engine, d.asset, "onchain"), d.amount_minor)
    d.times_reversed += 1
    notes = [f"reversed {take} from {d.account_id}:{d.credited_kind}"]
    if d.shortfall_minor:
        s.withdrawals_frozen[d.account_id] = f"deposit {d.key} reversed with a shortfall of {d.shortfall_minor}"
        notes.append(f"shortfall {d.shortfall_minor}: withdrawals of {d.account_id} frozen")
    d.credited_kind = ""
    return notes


def _pre_reorg(engine: Engine, c: ReorgDeposits) -> None:
    if c.chain not in CHAINS:
        raise ValidationError(f"must be one of {', '.join(CHAINS)}", field="chain")
    if c.fork_height < 0:
        raise ValidationError("must be >= 0", field="fork_height")


@MODULE.handles(ReorgDeposits, precheck=_pre_reorg, effect=Effect.NEUTRAL, scopes=chain_scopes)
def _reorg(engine: Engine, c: ReorgDeposits) -> list[Event]:
    s = custody_state(engine)
    events: list[Event] = []
    for d in s.deposits.values():
        if d.chain != c.chain or d.height < c.fork_height or d.final or d.state in ("dropped", "reversed"):
            continue
        if d.state in CREDITED_STATES:
            notes = _reverse(engine, s, d)
            d.state = "reversed"
            events.append(_ev("deposit.reversed", d.key, d.state, d.amount_minor, notes))
        else:
            d.state = "dropped"
            events.append(_ev("deposit.dropped", d.key, d.state, d.amount_minor, [f"block {d.height} replaced"]))
    return events


class CreditDeposit(Command, tag="custody.deposit.credit/1"):
    chain: str
    txid: str
    index: int
    confirmations: int
    score: int
    reasons: list[str]
    category: str = ""
    sender: str = ""  # the first sending address (KYT's graph), kept for "return to sender"


def _known_deposit(engine: Engine, c: Any) -> tuple[Any, str, Any]:
    """(custody state, deposit key, deposit) for a command naming `chain`, `txid`, `index`; NotFound if unseen."""
    s = custody_state(engine)
    key = deposit_key(c.chain, c.txid, c.index)
    d = s.deposits.get(key)
    if d is None:
        raise NotFound(f"no deposit {key}", field="txid")
    return s, key, d


def _pre_credit(engine: Engine, c: CreditDeposit) -> None:
    s, key, d = _known_deposit(engine, c)
    if not 0 <= c.score <= 100:
        raise ValidationError("must be 0..100", field="score")
    if len(c.reasons) > MAX_REASONS:
        raise ValidationError(f"at most {MAX_REASONS} reasons", field="reasons")
    _text(c.sender, "sender", 128)
    if d.state == "seen" and c.confirmations < s.assets[d.asset].credit_confirmations:
        raise Conflict(f"needs {s.assets[d.asset].credit_confirmations} confirmations, has {c.confirmations}",
                       field="confirmations")


@MODULE.handles(CreditDeposit, precheck=_pre_credit, effect=Effect.NEUTRAL, scopes=deposit_scopes)
def _credit(engine: Engine, c: CreditDeposit) -> list[Event]:
    _pre_credit(engine, c)
    s = custody_state(engine)
    d = s.deposits[deposit_key(c.chain, c.txid, c.index)]
    if d.state != "seen":
        return [_ev("deposit.unchanged", d.key, d.state, d.amount_minor)]
    _room(engine, 3)  # the user's account of this kind, onchain and the wallet's custody account
    d.score, d.reasons, d.category = c.score, list(c.reasons), c.category
    d.sender = c.sender
    events: list[Event] = []
    if c.category in FREEZE_CATEGORIES:
        kind, state = "frozen", "frozen"
        events.append(DepositReported(d.key, d.account_id, d.asset, d.amount_minor, c.category, list(c.reasons)))
    elif c.score > QUARANTINE_ABOVE:
        kind, state = "quarantine", "quarantined"
    else:
        kind, state = "available", "credited"
    led = engine.ledger
    led.move(led.world(d.asset), _user(engine, d.account_id, d.asset, kind), d.amount_minor)
    led.move(_system(engine, d.asset, "onchain"), led.custody(d.asset, d.wallet), d.amount_minor)
    d.credited_kind, d.state = kind, state
    d.times_credited += 1
    events.insert(0, _ev(f"deposit.{state}", d.key, state, d.amount_minor, [f"KYT score {c.score}", *c.reasons]))
    return events


class FinalizeDeposit(Command, tag="custody.deposit.finalize/1"):
    chain: str
    txid: str
    index: int
    confirmations: int


@MODULE.handles(FinalizeDeposit, effect=Effect.NEUTRAL, scopes=deposit_scopes)
def _finalize(engine: Engine, c: FinalizeDeposit) -> list[Event]:
    s, key, d = _known_deposit(engine, c)
    need = s.assets[d.asset].finality_confirmations
    if c.confirmations < need:
        raise Conflict(f"needs {need} confirmations for finality, has {c.confirmations}", field="confirmations")
    if d.final or d.state not in CREDITED_STATES:
        return [_ev("deposit.unchanged", key, d.state, d.amount_minor)]
    d.final = True
    return [_ev("deposit.final", key, d.state, d.amount_minor)]


class FileSourceOfFunds(Command, tag="custody.deposit.source_of_funds/1"):
    chain: str
    txid: str
    index: int
    account_id: str
    declaration: str


def _pre_sof(engine: Engine, c: FileSourceOfFunds) -> str:
    s = custody_state(engine)
    key = deposit_key(c.chain, c.txid, c.index)
    d = s.deposits.get(key)
    if d is None or d.account_id != c.account_id:
        raise NotFound(f"no deposit {key} for this account", field="txid")
    if d.state not in ("quarantined", "frozen"):
        raise Conflict(f"deposit is {d.state}, not quarantined or frozen", field="txid")
    text = _text(c.declaration, "declaration", 4000).strip()
    if len(text) < 10:
        raise ValidationError("describe where the funds come from (at least 10 characters)", field="declaration")
    return text


@MODULE.handles(FileSourceOfFunds, precheck=_pre_sof, effect=Effect.NEUTRAL, scopes=deposit_scopes)
def _file_sof(engine: Engine, c: FileSourceOfFunds) -> list[Event]:
    text = _pre_sof(engine, c)
    d = custody_state(engine).deposits[deposit_key(c.chain, c.txid, c.index)]
    key = d.key
    if text != d.declaration:  # release signatures were given on the old text: each analyst signs the new one afresh
        d.release_by = []
    d.declaration = text
    return [_ev("deposit.source_of_funds_filed", key, d.state, d.amount_minor)]


class ReviewQuarantine(Command, tag="custody.deposit.review/1"):
    chain: str
    txid: str
    index: int
    analyst: str
    decision: str  # release | freeze
    reason: str


@MODULE.handles(ReviewQuarantine, precheck=refuse_unsigned, effect=Effect.NEUTRAL, scopes=deposit_scopes)
def _review_quarantine(engine: Engine, c: ReviewQuarantine) -> list[Event]:
    s, key, d = _known_deposit(engine, c)
    if c.decision not in ("release", "freeze"):
        raise ValidationError("must be release or freeze", field="decision")
    if "analyst" not in s.approvers.get(c.analyst, []):
        raise Forbidden(f"{c.analyst} does not hold the analyst role", field="analyst")
    if c.analyst == d.account_id:
        raise Forbidden("the depositor cannot review their own deposit", field="analyst")
    check_reviewable(d.state, c.decision, "txid")
    if c.decision == "release" and not d.declaration:
        raise Conflict("the user has not filed a source-of-funds declaration yet", field="decision")
    reason = _text(c.reason, "reason")
    _room(engine, 1)
    return release_or_freeze(engine, key, d, c.decision, c.analyst, reason)


def check_reviewable(state: str, decision: str, field: str) -> None:
    """A quarantined deposit is released or frozen; a frozen one (KYT's direct hit, or an analyst's
    freeze) can only be released, after the user's declaration, or returned to its sender."""
    if state == "frozen" and decision == "release":
        return
    if state == "frozen":
        raise Conflict("deposit is already frozen: release it or return it to its sender", field=field)
    if state != "quarantined":
        raise Conflict(f"deposit is {state}, not quarantined or frozen", field=field)


def release_or_freeze(engine: Engine, key: str, d: Any, decision: str, analyst: str, reason: str) -> list[Event]:
    """Move a reviewed quarantined (or frozen) deposit to available (release), or a quarantined one
    to frozen; checks are the caller's."""
    led = engine.ledger
    src = _user(engine, d.account_id, d.asset, "frozen" if d.state == "frozen" else "quarantine")
    if decision == "release":
        led.move(src, _user(engine, d.account_id, d.asset, "available"), d.amount_minor)
        d.credited_kind, d.state = "available", "credited"
    else:
        led.move(src, _user(engine, d.account_id, d.asset, "frozen"), d.amount_minor)
        d.credited_kind, d.state = "frozen", "frozen"
    d.reviewed_by = analyst
    return [_ev(f"deposit.{'released' if decision == 'release' else 'frozen'}", key, d.state, d.amount_minor,
                [reason])]
