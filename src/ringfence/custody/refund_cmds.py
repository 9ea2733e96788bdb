"""Return to sender: an alternative to releasing a quarantined (or frozen) deposit.

Two different analysts each sign `ReturnDepositSigned` naming the deposit, its amount and the
address the coins go back to (the deposit's first sender, as KYT read it from the chain, kept on
the deposit record). The first signature is recorded (1/2); the second, by another analyst, turns
the deposit into a withdrawal of the exchange's hot wallet to that address:

* the ledger: a hold of the whole deposit on the user's `quarantine` (or `frozen`) account into
  `clearing`, so the amount is never spendable on the way; the withdrawal pipeline then signs
  (journaled before broadcast: `RecordSignedTx`), broadcasts, and on settlement the hold is
  captured, `clearing -> world` (amount − fee) and `clearing -> fees` (the asset's withdrawal fee);
* the deposit becomes `returned` with the withdrawal id and both analysts' reasons.

Destination KYT screens a return as it screens every withdrawal: before signing, the withdrawal
worker journals `ScreenReturn` with the KYT result for the sender's address. A hit (the sender is on
the blacklist, e.g. the exploit that funded a frozen deposit) sends the return to `manual_review`
with KYT's reasons: nothing is signed until an analyst approves it (`ringfence review approve`); a
rejection voids it, the coins go back to the deposit's quarantine/frozen account and the deposit is
`quarantined`/`frozen` again (its return signatures cleared), for a release or another decision.

The withdrawal starts `approved` (two analysts decided it, so no address book, e-mail step or
policy: the destination is where the coins came from, not a place the user chose). Checks, all
before anything changes (a refusal leaves the state hash unchanged): the signer holds `analyst`,
is not the depositor, has not signed this return already (`distinct-people`), the deposit exists,
is `quarantined` or `frozen`, has a known sender, and is larger than the withdrawal fee.
"""

from __future__ import annotations

import hashlib
from typing import Any

from ..engine.commands import Command, Event
from ..engine.core import Engine
from ..engine.module import Effect
from ..errors import Conflict, ValidationError
from ..staff.decisions import ANALYST, StaffSignature
from ..staff.state import StaffRefused, check_decision, consume, not_initiator
from .deposit_cmds import _known_deposit
from .module import MODULE, custody_scopes, deposit_scopes
from .state import _ev, _move_state, _room, _scoped, _system, _text, _user, _withdrawal, custody_state
from .withdrawals import WithdrawalRec

__all__ = ["ReturnDepositSigned", "ScreenReturn", "undo_return", "return_subject", "RETURN_QUORUM", "RETURNABLE_STATES", "return_withdrawal_id"]

#: Distinct analysts who must sign before coins leave for the sender.
RETURN_QUORUM = 2
RETURNABLE_STATES = ("quarantined", "frozen")
MAX_REASON = 1_000


def return_subject(key: str, amount_minor: int, address: str, reason: str) -> list[Any]:
    return [key, amount_minor, address, reason]


def return_withdrawal_id(key: str) -> str:
    return "rts-" + hashlib.sha256(key.encode()).hexdigest()[:24]


class ReturnDepositSigned(Command, tag="custody.deposit.return/1", frozen=True):
    chain: str
    txid: str
    index: int
    address: str  # must be the deposit's recorded sender: the analyst signs what they saw
    reason: str
    decision: StaffSignature


def _hot_wallet(s: Any, chain: str) -> str:
    hot = sorted(w.name for w in s.wallets.values() if w.chain == chain and w.tier == "hot")
    if not hot:
        raise Conflict(f"no hot wallet on {chain} to pay the return from", field="chain")
    return hot[0]


def _pre_return(engine: Engine, c: ReturnDepositSigned) -> tuple[str, str]:
    s, key, d = _known_deposit(engine, c)
    reason = _text(c.reason, "reason", MAX_REASON)
    if not reason.strip():
        raise ValidationError("a decision needs a reason", field="reason")
    who = getattr(c.decision, "staff_id", "")
    not_initiator(engine, who, d.account_id, "deposit")
    if d.state not in RETURNABLE_STATES:
        raise Conflict(f"deposit is {d.state}, not quarantined or frozen", field="txid")
    if not d.sender:
        raise Conflict("the deposit's sender is unknown: it cannot be returned", field="txid")
    if c.address != d.sender:
        raise ValidationError(f"the deposit's sender is {d.sender}", field="address")
    check_decision(engine, "deposit.return", return_subject(key, d.amount_minor, c.address, reason), c.decision, ANALYST)
    if who in d.return_by:
        raise StaffRefused("distinct-people", f"{who!r} already signed this return; a second analyst must decide",
                           field="decision")
    fee = s.assets[d.asset].withdrawal_fee_minor
    if d.amount_minor <= fee:
        raise Conflict(f"the deposit ({d.amount_minor}) does not cover the withdrawal fee ({fee})", field="txid")
    wallet = _hot_wallet(s, d.chain)
    if len(d.return_by) + 1 >= RETURN_QUORUM:
        wid = return_withdrawal_id(key)
        if wid in s.withdrawals:
            raise Conflict(f"withdrawal id {wid} is taken", field="txid")
        _room(engine, 2)
        led = engine.ledger
        src = led.find(d.account_id, d.asset, d.credited_kind, "spot")
        if src is None or not led.can_hold(src, d.amount_minor):
            raise Conflict(f"{d.account_id}:{d.credited_kind} does not hold the deposit's {d.amount_minor}", field="txid")
    return key, wallet


@MODULE.handles(ReturnDepositSigned, precheck=_pre_return, effect=Effect.MOVES_FUNDS_OUT, scopes=deposit_scopes)
def _return(engine: Engine, c: ReturnDepositSigned) -> list[Event]:
    key, wallet = _pre_return(engine, c)
    consume(engine, [c.decision])
    s = custody_state(engine)
    d = s.deposits[key]
    who = c.decision.staff_id
    d.return_by = [*d.return_by, who]
    d.return_reasons = [*d.return_reasons, f"{who}: {c.reason}"]
    if len(d.return_by) < RETURN_QUORUM:
        return [_ev("deposit.return_signed", key, d.state, d.amount_minor,
                    [f"{who} (analyst, signed): {c.reason}", f"{len(d.return_by)}/{RETURN_QUORUM} analysts"])]
    led = engine.ledger
    fee = s.assets[d.asset].withdrawal_fee_minor
    src = _user(engine, d.account_id, d.asset, d.credited_kind)
    hold = led.hold(src, _system(engine, d.asset, "clearing"), d.amount_minor)
    wid = return_withdrawal_id(key)
    w = WithdrawalRec(wid, d.account_id, d.asset, wallet, d.sender, d.amount_minor - fee, fee, hold, engine.now_ns,
                      "", "", "", state="approved", decision="return-to-sender", rule="return-to-sender",
                      decision_reasons=list(d.return_reasons), reviewed_by=",".join(d.return_by),
                      not_before_ns=engine.now_ns)
    s.withdrawals[wid] = w
    was = d.state
    d.state, d.return_id, d.reviewed_by = "returned", wid, ",".join(d.return_by)
    return [_ev("deposit.returned", key, d.state, d.amount_minor,
                [f"was {was}; returned to sender {d.sender} by withdrawal {wid} (amount {w.amount_minor} + fee {fee})",
                 *d.return_reasons]),
            _ev("withdrawal.approved", wid, w.state, w.amount_minor, ["return to sender", *d.return_reasons])]


class ScreenReturn(Command, tag="custody.withdrawal.screen_return/1", frozen=True):
    """The withdrawal worker's destination-KYT result for a return to sender (score 0 = no hit)."""

    withdrawal_id: str
    asset: str
    wallet: str
    score: int
    reasons: list[str]


@MODULE.handles(ScreenReturn, effect=Effect.NEUTRAL, scopes=custody_scopes)
def _screen_return(engine: Engine, c: ScreenReturn) -> list[Event]:
    s = custody_state(engine)
    w = _withdrawal(s, c.withdrawal_id)
    _scoped(w, c.asset, c.wallet)
    if isinstance(c.score, bool) or not 0 <= c.score <= 100 or len(c.reasons) > 20:
        raise ValidationError("score must be 0..100 with at most 20 reasons", field="score")
    reasons = [_text(r, "reasons") for r in c.reasons]
    if w.rule != "return-to-sender" or w.state != "approved" or w.screened:
        return [_ev("withdrawal.unchanged", w.id, w.state, w.amount_minor)]
    w.screened = True
    if c.score == 0:
        return [_ev("withdrawal.screened", w.id, w.state, w.amount_minor, ["destination KYT: no hit"])]
    _move_state(w, "manual_review")
    w.risk_score, w.manual_review, w.risk_reasons = c.score, True, reasons
    w.decision_reasons = [*reasons, *w.decision_reasons]
    return [_ev("withdrawal.decided", w.id, w.state, w.amount_minor,
                ["return to sender held for manual review: destination KYT", *reasons])]


def undo_return(engine: Engine, w: Any) -> None:
    """A rejected return: its deposit is quarantined/frozen again (the void released the hold back to
    that account), its return signatures cleared, so analysts decide afresh."""
    s = custody_state(engine)
    for d in s.deposits.values():
        if d.return_id == w.id and d.state == "returned":
            d.state = "frozen" if d.credited_kind == "frozen" else "quarantined"
            d.return_id, d.return_by, d.return_reasons, d.reviewed_by = "", [], [], ""
            return
