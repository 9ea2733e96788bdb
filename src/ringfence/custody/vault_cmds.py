"""Decisions of the staff operator quorum over the keys that guard the money: refills out of the
offline vaults, and changes of a threshold key's signer set.

* `AuthorizeVaultRefillSigned`: a warm/cold -> hot refill. The operator quorum signs
  `refill_subject` (refill id, asset, source wallet, hot wallet, amount); the node that built the
  unsigned transaction adds its txid, fee budget and the journal position it nominated the vault's
  holders from, and the engine checks the quorum (role operator, distinct people, unexpired, nonces
  unused), the wallets' tiers, that the id is new and that the source's booked custody covers amount
  and fee. The refill becomes a `TransferRec` in state `authorized`; `RecordTransferSigned` later
  signs exactly it (same wallets, amount and txid). Every transfer out of a warm or cold wallet
  must have been authorized this way or by `AuthorizeRebalance` (a precheck of `RecordTransferSigned`;
  prechecks never run on replay, so older journals replay unchanged).
* `ReshareSignersSigned`: the operator quorum decides a threshold key's next signer set (identifier
  and the SHA-256 fingerprint of each signer's pinned TLS certificate) and threshold. The engine
  verifies the decision and counts the key's generation (the subject names the generation it
  replaces, so an approval for one change never applies to a later one); the node then runs the
  reshare ceremony with the signer processes (`custody/btc_signing.py`).

Both validate everything before anything changes: a refusal leaves the state hash unchanged.
"""

from __future__ import annotations

import re
from typing import Any

from ..engine.commands import Command, Event
from ..engine.core import Engine
from ..engine.module import Effect
from ..errors import Conflict, InsufficientFunds, ValidationError
from ..ledger.model import SYSTEM_OWNER
from ..staff.decisions import OPERATOR, StaffSignature
from ..staff.state import check_quorum, consume
from .module import MODULE, custody_scopes
from .state import TransferRec, _asset_cfg, _check_amount, _check_id, _ev, _text, _wallet, custody_state

__all__ = ["AuthorizeVaultRefillSigned", "CancelVaultRefillSigned", "ReshareSignersSigned", "refill_subject",
           "cancel_refill_subject", "reshare_subject", "signer_set",
           "VAULT_TIERS", "MAX_SIGNERS"]

VAULT_TIERS = ("warm", "cold")
MAX_SIGNERS = 16
MAX_REASON = 1_000
_TXID = re.compile(r"[0-9a-f]{64}")
_FP = re.compile(r"[0-9a-f]{64}")
_KEY_ID = re.compile(r"[a-z0-9][a-z0-9._:-]{0,63}")


# ------------------------------------------------------------------------------- vault refills


def refill_subject(refill_id: str, asset: str, from_wallet: str, to_wallet: str, amount_minor: int) -> list[Any]:
    """What each operator signs (action `vault.refill`)."""
    return [refill_id, asset, from_wallet, to_wallet, amount_minor]


class AuthorizeVaultRefillSigned(Command, tag="custody.vault_refill.authorize/1", frozen=True):
    refill_id: str
    asset: str
    from_wallet: str
    to_wallet: str
    amount_minor: int
    network_fee_minor: int
    txid: str  # the unsigned transaction's id (segwit: signatures do not change it)
    approvals: list[StaffSignature]


def _held(engine: Engine, asset: str, wallet: str) -> int:
    account = engine.ledger.find(SYSTEM_OWNER, asset, "custody", wallet)
    return 0 if account is None else account.credits_posted - account.debits_posted


def _pre_refill(engine: Engine, c: AuthorizeVaultRefillSigned) -> list[str]:
    s = custody_state(engine)
    _check_id(c.refill_id, "refill_id")
    cfg = _asset_cfg(s, c.asset)
    src, dst = _wallet(s, c.from_wallet, "from_wallet"), _wallet(s, c.to_wallet, "to_wallet")
    if src.tier not in VAULT_TIERS:
        raise ValidationError(f"a refill comes out of a warm or cold vault, not the {src.tier} wallet {src.name}",
                              field="from_wallet")
    if dst.tier != "hot" or dst.chain != cfg.chain or src.chain != cfg.chain:
        raise ValidationError(f"a refill goes to a hot wallet on {cfg.chain}", field="to_wallet")
    amount = _check_amount(c.amount_minor, "amount_minor")
    fee = _check_amount(c.network_fee_minor, "network_fee_minor", allow_zero=True)
    if not isinstance(c.txid, str) or not _TXID.fullmatch(c.txid):
        raise ValidationError("must be a transaction id (64 lowercase hex characters)", field="txid")
    if c.refill_id in s.transfers:
        raise Conflict(f"transfer id {c.refill_id} is taken", field="refill_id")
    held = _held(engine, c.asset, c.from_wallet) - s.in_flight_transfers(c.asset, c.from_wallet)
    if amount + fee > held:
        raise InsufficientFunds(f"{c.from_wallet} has {held} {c.asset} booked and not in flight; the refill needs "
                                f"{amount + fee}", field="amount_minor")
    return check_quorum(engine, "vault.refill", refill_subject(c.refill_id, c.asset, c.from_wallet, c.to_wallet, amount),
                        c.approvals, OPERATOR)


@MODULE.handles(AuthorizeVaultRefillSigned, precheck=_pre_refill, effect=Effect.NEUTRAL, scopes=custody_scopes)
def _authorize_refill(engine: Engine, c: AuthorizeVaultRefillSigned) -> list[Event]:
    approvers = _pre_refill(engine, c)
    consume(engine, c.approvals)
    s = custody_state(engine)
    s.transfers[c.refill_id] = TransferRec(c.refill_id, c.asset, c.from_wallet, c.to_wallet, c.amount_minor,
                                           c.network_fee_minor, c.txid, "authorized")
    # the position is this command's own sequence number: the holders' quorum is nominated from it
    return [_ev("vault_refill.authorized", c.refill_id, f"{c.from_wallet}->{c.to_wallet}", c.amount_minor,
                [c.txid, f"seq={engine.seq}", *(f"approved_by={a}" for a in approvers)])]


def cancel_refill_subject(refill_id: str, reason: str) -> list[Any]:
    """What the operator signs to drop a refill nobody signed (action `vault.refill.cancel`)."""
    return [refill_id, reason]


class CancelVaultRefillSigned(Command, tag="custody.vault_refill.cancel/1", frozen=True):
    """One operator drops an authorized refill whose holders never signed (it moves nothing, so one
    signature suffices); it can never be signed afterwards."""

    refill_id: str
    asset: str
    reason: str
    decision: StaffSignature


def _pre_cancel(engine: Engine, c: CancelVaultRefillSigned) -> None:
    from ..staff.state import check_decision

    s = custody_state(engine)
    t = s.transfers.get(c.refill_id)
    if t is None or t.asset != c.asset or s.wallets.get(t.from_wallet) is None \
            or s.wallets[t.from_wallet].tier not in VAULT_TIERS:
        raise ValidationError(f"no vault refill {c.refill_id!r} of {c.asset}", field="refill_id")
    if t.state != "authorized":
        raise Conflict(f"refill {c.refill_id} is {t.state}, not authorized: only an unsigned refill is cancelled",
                       field="refill_id")
    reason = _text(c.reason, "reason", MAX_REASON)
    if not reason.strip():
        raise ValidationError("a decision needs a reason", field="reason")
    check_decision(engine, "vault.refill.cancel", cancel_refill_subject(c.refill_id, reason), c.decision, OPERATOR)


@MODULE.handles(CancelVaultRefillSigned, precheck=_pre_cancel, effect=Effect.NEUTRAL, scopes=custody_scopes)
def _cancel_refill(engine: Engine, c: CancelVaultRefillSigned) -> list[Event]:
    _pre_cancel(engine, c)
    consume(engine, [c.decision])
    t = custody_state(engine).transfers[c.refill_id]
    t.state = "cancelled"
    return [_ev("vault_refill.cancelled", c.refill_id, "cancelled", t.amount_minor, [c.reason, f"by={c.decision.staff_id}"])]


def check_vault_transfer(engine: Engine, c: Any) -> None:
    """`RecordTransferSigned`'s rule for transfers out of a vault: authorized, and exactly as authorized."""
    from ..errors import Forbidden

    s = custody_state(engine)
    t = s.transfers.get(c.transfer_id)
    if t is not None and t.state == "cancelled":
        raise Conflict(f"refill {t.id} was cancelled by an operator", field="transfer_id")
    if t is not None and t.state == "authorized" and t.txid and t.txid != c.txid:
        raise Conflict(f"transaction {c.txid} is not the one authorized for {t.id} ({t.txid})", field="txid")
    src = s.wallets.get(c.from_wallet)
    if t is None and src is not None and src.tier in VAULT_TIERS:
        raise Forbidden(f"a transfer out of the {src.tier} wallet {src.name} needs a decision first: "
                        "AuthorizeVaultRefillSigned (ringfence cold refill, operator quorum) or AuthorizeRebalance",
                        field="transfer_id")


# ------------------------------------------------------------------------------- signer sets


def signer_set(engine: Engine, key_id: str) -> tuple[int, list[list[Any]], int]:
    """(generation, [[identifier, certificate fingerprint], ...], threshold) of a key; generation 0 and
    no signers before its first reshare decision (the key's first set came from its DKG)."""
    rec = custody_state(engine).signer_sets.get(key_id)
    return (0, [], 0) if rec is None else (int(rec[0]), [list(x) for x in rec[1]], int(rec[2]))


def reshare_subject(key_id: str, generation: int, signers: list[list[Any]], threshold: int, reason: str) -> list[Any]:
    """What each operator signs (action `keys.reshare`): the key, the generation it replaces, the new
    signers (identifier and pinned certificate fingerprint, sorted), the new threshold and why."""
    return [key_id, generation, [[int(i), str(fp)] for i, fp in sorted(signers)], threshold, reason]


class ReshareSignersSigned(Command, tag="custody.keys.reshare/1", frozen=True):
    key_id: str
    generation: int  # the generation this decision replaces (signer_set's first item)
    signers: list[list[int | str]]  # [[identifier, sha256 fingerprint of its TLS certificate], ...]
    threshold: int
    reason: str
    approvals: list[StaffSignature]


def _pre_reshare(engine: Engine, c: ReshareSignersSigned) -> list[str]:
    if not isinstance(c.key_id, str) or not _KEY_ID.fullmatch(c.key_id):
        raise ValidationError("must match [a-z0-9][a-z0-9._:-]{0,63}", field="key_id")
    generation = signer_set(engine, c.key_id)[0]
    if c.generation != generation:
        raise Conflict(f"{c.key_id} is at generation {generation}, the decision replaces {c.generation}: sign it again",
                       field="generation")
    if not isinstance(c.signers, list) or not 2 <= len(c.signers) <= MAX_SIGNERS:
        raise ValidationError(f"2..{MAX_SIGNERS} signers", field="signers")
    ids = []
    for n, pair in enumerate(c.signers):
        if (not isinstance(pair, list) or len(pair) != 2 or isinstance(pair[0], bool) or not isinstance(pair[0], int)
                or not 1 <= pair[0] <= 255 or not isinstance(pair[1], str) or not _FP.fullmatch(pair[1])):
            raise ValidationError("each signer is [identifier 1..255, certificate SHA-256 as 64 hex characters]",
                                  field=f"signers[{n}]")
        ids.append(pair[0])
    if len(set(ids)) != len(ids):
        raise ValidationError("signer identifiers must be distinct", field="signers")
    if isinstance(c.threshold, bool) or not isinstance(c.threshold, int) or not 2 <= c.threshold <= len(ids):
        raise ValidationError(f"must be 2..{len(ids)} (no single signer may sign alone)", field="threshold")
    reason = _text(c.reason, "reason", MAX_REASON)
    if not reason.strip():
        raise ValidationError("a decision needs a reason", field="reason")
    return check_quorum(engine, "keys.reshare", reshare_subject(c.key_id, c.generation, c.signers, c.threshold, reason),
                        c.approvals, OPERATOR)


@MODULE.handles(ReshareSignersSigned, precheck=_pre_reshare, effect=Effect.ADMIN)
def _reshare(engine: Engine, c: ReshareSignersSigned) -> list[Event]:
    approvers = _pre_reshare(engine, c)
    consume(engine, c.approvals)
    generation = c.generation + 1
    custody_state(engine).signer_sets[c.key_id] = [generation, sorted([int(i), str(fp)] for i, fp in c.signers), c.threshold]
    return [_ev("keys.reshare_decided", c.key_id, f"generation={generation}", 0,
                [f"threshold={c.threshold}", "signers=" + ",".join(str(i) for i, _ in sorted(c.signers)),
                 *(f"approved_by={a}" for a in approvers)])]
