"""Treasury movements between the exchange's own wallets: sweeps (deposit -> hot), refills and
drains (warm/cold <-> hot), and the exchange's own capital arriving (treasury funding)."""

from __future__ import annotations

from ..engine.commands import Command, Event
from ..engine.core import Engine
from ..engine.module import Effect
from .module import MODULE, custody_scopes
from ..errors import Conflict, ValidationError
from .state import (
    MAX_RAW_TX_HEX,
    CustodyState,
    TransferRec,
    _asset_cfg,
    _check_amount,
    _check_id,
    _ev,
    _room,
    _system,
    _wallet,
    custody_state,
)

__all__ = ["RecordTransferSigned", "RecordInternalTransfer", "RecordTreasuryFunding"]


# --------------------------------------------------------------------------- sweeps and refills


class RecordInternalTransfer(Command, tag="custody.internal_transfer/1"):
    """A confirmed sweep (deposit -> hot) or refill/drain (warm/cold <-> hot) on chain."""

    transfer_id: str
    asset: str
    from_wallet: str
    to_wallet: str
    amount_minor: int
    network_fee_minor: int
    txid: str
    #: A token transfer's gas is paid in the chain's native asset by the sending address (a USDT
    #: sweep out of a deposit address burns that address's ETH): `custody:<from>:<gas_asset> -> onchain`.
    gas_asset: str = ""
    gas_fee_minor: int = 0


def _check_internal(s: CustodyState, asset: str, from_wallet: str, to_wallet: str, amount: int, fee: int) -> None:
    cfg = _asset_cfg(s, asset)
    src, dst = _wallet(s, from_wallet, "from_wallet"), _wallet(s, to_wallet, "to_wallet")
    if src.chain != cfg.chain or dst.chain != cfg.chain or src is dst:
        raise ValidationError("both wallets must be distinct wallets on the asset's chain", field="to_wallet")
    _check_amount(amount, "amount_minor")
    _check_amount(fee, "network_fee_minor", allow_zero=True)


class RecordTransferSigned(Command, tag="custody.internal_transfer.signed/1"):
    """A sweep/refill/drain signed and journaled BEFORE broadcast; `network_fee_minor` is the budget."""

    transfer_id: str
    asset: str
    from_wallet: str
    to_wallet: str
    amount_minor: int
    network_fee_minor: int
    txid: str
    raw_tx: str


def _pre_transfer_signed(engine: Engine, c: RecordTransferSigned) -> None:
    from .rebalance_cmds import check_signed_against_authorization
    from .vault_cmds import check_vault_transfer

    check_signed_against_authorization(engine, c)
    check_vault_transfer(engine, c)


@MODULE.handles(RecordTransferSigned, precheck=_pre_transfer_signed, effect=Effect.NEUTRAL, scopes=custody_scopes)
def _transfer_signed(engine: Engine, c: RecordTransferSigned) -> list[Event]:
    s = custody_state(engine)
    _check_id(c.transfer_id, "transfer_id")
    t = s.transfers.get(c.transfer_id)
    if t is not None and t.state == "authorized":  # the rebalance the engine authorized, now signed
        _pre_transfer_signed(engine, c)
    elif t is not None:
        if t.txid != c.txid:
            raise Conflict(f"transfer {c.transfer_id} already has transaction {t.txid}", field="txid")
        return [_ev("internal_transfer.unchanged", c.transfer_id, t.state, t.amount_minor)]
    _check_internal(s, c.asset, c.from_wallet, c.to_wallet, c.amount_minor, c.network_fee_minor)
    if len(c.raw_tx) > MAX_RAW_TX_HEX:
        raise ValidationError("at most 100 kB of raw transaction", field="raw_tx")
    s.transfers[c.transfer_id] = TransferRec(c.transfer_id, c.asset, c.from_wallet, c.to_wallet, c.amount_minor,
                                             c.network_fee_minor, c.txid, "signed", c.raw_tx)
    return [_ev("internal_transfer.signed", c.transfer_id, "signed", c.amount_minor, [c.txid])]


def _pre_internal(engine: Engine, c: RecordInternalTransfer) -> int:
    """The amounts, wallets and gas fields (all before anything changes). Returns the gas fee."""
    s = custody_state(engine)
    _check_internal(s, c.asset, c.from_wallet, c.to_wallet, c.amount_minor, c.network_fee_minor)
    gas = _check_amount(c.gas_fee_minor, "gas_fee_minor", allow_zero=True)
    if c.gas_asset and (c.gas_asset == c.asset or c.gas_asset not in s.assets
                        or s.assets[c.gas_asset].chain != s.assets[c.asset].chain):
        raise ValidationError(f"must be the native asset of {s.assets[c.asset].chain}, not {c.gas_asset!r}", field="gas_asset")
    if gas and not c.gas_asset:
        raise ValidationError("a gas fee needs its asset", field="gas_asset")
    return gas


@MODULE.handles(RecordInternalTransfer, precheck=_pre_internal, effect=Effect.NEUTRAL, scopes=custody_scopes)
def _internal(engine: Engine, c: RecordInternalTransfer) -> list[Event]:
    s = custody_state(engine)
    _check_id(c.transfer_id, "transfer_id")
    t = s.transfers.get(c.transfer_id)
    if t is not None and t.state == "recorded":
        return [_ev("internal_transfer.unchanged", c.transfer_id, "recorded", c.amount_minor)]
    if t is not None and (t.txid, t.asset, t.from_wallet, t.to_wallet, t.amount_minor) != (
            c.txid, c.asset, c.from_wallet, c.to_wallet, c.amount_minor):
        raise Conflict("does not match the signed transfer with this id", field="transfer_id")
    gas = _pre_internal(engine, c)
    _room(engine, 5 if gas else 3)  # both wallets' custody accounts and onchain (and the gas asset's), on first use
    led = engine.ledger
    led.move(led.custody(c.asset, c.from_wallet), led.custody(c.asset, c.to_wallet), c.amount_minor)
    led.move(led.custody(c.asset, c.from_wallet), _system(engine, c.asset, "onchain"), c.network_fee_minor)
    if gas:
        led.move(led.custody(c.gas_asset, c.from_wallet), _system(engine, c.gas_asset, "onchain"), gas)
    s.transfers[c.transfer_id] = TransferRec(c.transfer_id, c.asset, c.from_wallet, c.to_wallet, c.amount_minor,
                                             c.network_fee_minor, c.txid)
    return [_ev("internal_transfer.recorded", c.transfer_id, f"{c.from_wallet}->{c.to_wallet}", c.amount_minor, [c.txid])]


class RecordTreasuryFunding(Command, tag="custody.treasury_funding/1"):
    """The exchange's own capital arrived in one of its wallets (not a user deposit): `onchain ->
    custody:<wallet>`. Custody then exceeds user liabilities by exactly this equity."""

    funding_id: str
    asset: str
    wallet: str
    amount_minor: int
    txid: str


@MODULE.handles(RecordTreasuryFunding, effect=Effect.NEUTRAL, scopes=custody_scopes)
def _treasury(engine: Engine, c: RecordTreasuryFunding) -> list[Event]:
    s = custody_state(engine)
    _check_id(c.funding_id, "funding_id")
    key = "funding:" + c.funding_id
    if key in s.transfers:
        return [_ev("treasury_funding.unchanged", c.funding_id, "recorded", c.amount_minor)]
    cfg = _asset_cfg(s, c.asset)
    if _wallet(s, c.wallet).chain != cfg.chain:
        raise ValidationError(f"wallet {c.wallet} is not on {cfg.chain}", field="wallet")
    _check_amount(c.amount_minor, "amount_minor")
    _room(engine, 2)
    engine.ledger.move(_system(engine, c.asset, "onchain"), engine.ledger.custody(c.asset, c.wallet), c.amount_minor)
    s.transfers[key] = TransferRec(key, c.asset, "", c.wallet, c.amount_minor, 0, c.txid)
    return [_ev("treasury_funding.recorded", c.funding_id, c.wallet, c.amount_minor, [c.txid])]
