"""Custody set-up commands: enable an asset for custody, register wallets, assign deposit
addresses, and reserve an Ethereum wallet's nonces for non-withdrawal transactions."""

from __future__ import annotations

from ..engine.commands import Command, Event
from ..engine.core import Engine
from ..engine.module import Effect
from .module import MODULE, custody_scopes
from ..errors import Conflict, ValidationError
from ..ledger.model import validate_owner
from .state import (
    CHAINS,
    TIERS,
    AssetCfg,
    CustodyState,
    TransferRec,
    WalletRec,
    _check_amount,
    _check_id,
    _ev,
    _norm,
    _room,
    _system,
    _wallet,
    custody_state,
)

__all__ = ["ConfigureCustodyAsset", "RegisterWallet", "AssignDepositAddress", "ReserveWalletNonce", "reserved_nonce"]


# ------------------------------------------------------------------------------ configuration


class ConfigureCustodyAsset(Command, tag="custody.asset.configure/1"):
    asset: str
    chain: str
    network: str
    credit_confirmations: int
    finality_confirmations: int
    min_deposit_minor: int
    min_withdrawal_minor: int
    max_withdrawal_minor: int
    withdrawal_fee_minor: int


def _pre_configure(engine: Engine, c: ConfigureCustodyAsset) -> None:
    engine.ledger.assets.get(c.asset)
    if c.chain not in CHAINS:
        raise ValidationError(f"must be one of {', '.join(CHAINS)}", field="chain")
    if not 1 <= c.credit_confirmations <= c.finality_confirmations <= 10_000:
        raise ValidationError("need 1 <= credit_confirmations <= finality_confirmations <= 10000", field="credit_confirmations")
    for f in ("min_deposit_minor", "min_withdrawal_minor", "max_withdrawal_minor", "withdrawal_fee_minor"):
        _check_amount(getattr(c, f), f, allow_zero=True)
    if c.max_withdrawal_minor < c.min_withdrawal_minor:
        raise ValidationError("must be at least min_withdrawal_minor", field="max_withdrawal_minor")


@MODULE.handles(ConfigureCustodyAsset, precheck=_pre_configure, effect=Effect.ADMIN, scopes=custody_scopes)
def _configure(engine: Engine, c: ConfigureCustodyAsset) -> list[Event]:
    _pre_configure(engine, c)
    _room(engine, 2)
    s = custody_state(engine)
    s.assets[c.asset] = AssetCfg(c.asset, c.chain, c.network, c.credit_confirmations, c.finality_confirmations,
                                 c.min_deposit_minor, c.min_withdrawal_minor, c.max_withdrawal_minor,
                                 c.withdrawal_fee_minor)
    for kind in ("onchain", "clearing"):
        _system(engine, c.asset, kind)
    return [_ev("asset.configured", c.asset, "enabled")]


class RegisterWallet(Command, tag="custody.wallet.register/1"):
    name: str
    chain: str
    tier: str
    addresses: list[str]
    public: bool = False


def _pre_wallet(engine: Engine, c: RegisterWallet) -> None:
    from ..ledger.model import validate_segment

    validate_segment(c.name, "name")
    if c.name == "-":
        raise ValidationError("a wallet needs a name", field="name")
    if c.chain not in CHAINS:
        raise ValidationError(f"must be one of {', '.join(CHAINS)}", field="chain")
    if c.tier not in TIERS:
        raise ValidationError(f"must be one of {', '.join(TIERS)}", field="tier")
    if not 0 <= len(c.addresses) <= 1000:
        raise ValidationError("at most 1000 addresses", field="addresses")
    s = custody_state(engine)
    existing = s.wallets.get(c.name)
    if existing is not None and (existing.chain != c.chain or existing.tier != c.tier):
        raise Conflict("a wallet with this name exists with another chain or tier", field="name")


@MODULE.handles(RegisterWallet, precheck=_pre_wallet, effect=Effect.ADMIN, scopes=custody_scopes)
def _register_wallet(engine: Engine, c: RegisterWallet) -> list[Event]:
    _pre_wallet(engine, c)
    s = custody_state(engine)
    _room(engine, len(s.assets))
    w = s.wallets.get(c.name)
    if w is None:
        w = s.wallets[c.name] = WalletRec(c.name, c.chain, c.tier, [], c.public)
    for a in c.addresses:
        if a not in w.addresses:
            w.addresses.append(a)
    for cfg in s.assets.values():
        if cfg.chain == c.chain:
            engine.ledger.custody(cfg.asset, c.name)
    return [_ev("wallet.registered", c.name, c.tier, 0, w.addresses)]


class AssignDepositAddress(Command, tag="custody.deposit_address.assign/1"):
    account_id: str
    chain: str
    wallet: str
    address: str


def _pre_assign(engine: Engine, c: AssignDepositAddress) -> None:
    validate_owner(c.account_id, "account_id")
    s = custody_state(engine)
    w = _wallet(s, c.wallet)
    if w.chain != c.chain:
        raise ValidationError(f"wallet {c.wallet} is on {w.chain}", field="chain")
    owner = s.owner_of(c.chain, c.address)
    if owner is not None and owner[0] != c.account_id:
        raise Conflict("this address belongs to another account", field="address")


@MODULE.handles(AssignDepositAddress, precheck=_pre_assign, effect=Effect.ADMIN, scopes=custody_scopes)
def _assign(engine: Engine, c: AssignDepositAddress) -> list[Event]:
    _pre_assign(engine, c)
    s = custody_state(engine)
    s.deposit_addresses[f"{c.chain}:{_norm(c.chain, c.address)}"] = [c.account_id, c.wallet, c.address]
    return [_ev("deposit_address.assigned", c.address, c.account_id)]




class ReserveWalletNonce(Command, tag="custody.wallet.reserve_nonce/1"):
    """An Ethereum wallet's next nonce for a non-withdrawal transaction (a drain to cold), assigned by
    the engine like withdrawal nonces so the two never collide. Idempotent by `purpose_id`."""

    wallet: str
    purpose_id: str


@MODULE.handles(ReserveWalletNonce, effect=Effect.NEUTRAL, scopes=custody_scopes)
def _reserve_nonce(engine: Engine, c: ReserveWalletNonce) -> list[Event]:
    s = custody_state(engine)
    w = _wallet(s, c.wallet)
    if w.chain != "ethereum":
        raise ValidationError("only Ethereum wallets use nonces", field="wallet")
    key = "nonce:" + _check_id(c.purpose_id, "purpose_id")
    if key in s.transfers:
        return [_ev("nonce.unchanged", c.purpose_id, c.wallet, s.transfers[key].amount_minor)]
    nonce = w.next_nonce
    w.next_nonce += 1
    s.transfers[key] = TransferRec(key, "", c.wallet, "", nonce, 0, "")
    return [_ev("nonce.reserved", c.purpose_id, c.wallet, nonce)]


def reserved_nonce(state: CustodyState, purpose_id: str) -> int | None:
    rec = state.transfers.get("nonce:" + purpose_id)
    return rec.amount_minor if rec is not None else None
