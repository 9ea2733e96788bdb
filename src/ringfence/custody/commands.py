"""Custody engine commands, events, the `custody` state component and its handlers.

Every custody step is a journaled command applied here: handlers validate first and mutate after,
do no I/O and read no clock (only `engine.now_ns`, the sequencer's stamp). Chain scanning, KYT
scoring, risk facts from identity, signing and broadcasting run in workers (workers.py) that submit
these commands. Each command is idempotent by its id: a deposit by `(chain, txid, index)`, a
withdrawal by `withdrawal_id` — a retried command answers with a `*Unchanged` event, never a second
effect.

Money flow (docs/custody.md):
* deposit credit: `world -> <user>:<available|quarantine|frozen>` and `onchain -> custody:<wallet>`;
  a reversal (reorg before finality) undoes both.
* withdrawal: hold = reservation `<user>:available -> clearing` of amount + fee; settle = post the
  hold, `clearing -> world` (amount), `clearing -> fees:spot` (fee), `custody:<wallet> -> onchain`
  (amount + network fee); fail = void the hold.
* sweep/refill: `custody:<from> -> custody:<to>` (amount) and `custody:<from> -> onchain` (fee).

Withdrawal commands carry `asset` and `wallet` so engine guards (halts) can scope them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from typing import Any

import msgspec

from ..engine.commands import Command, Event
from ..engine.core import Engine, handles, register_component
from ..errors import Conflict, InsufficientFunds, InvalidAddress, InvalidAmount, NotFound, UnsupportedAsset, ValidationError, Forbidden
from ..ledger.model import SYSTEM_OWNER, validate_owner
from ..money import MAX_AMOUNT
from .deposits import ACTIVE_STATES, CREDITED_STATES, DepositRec, deposit_key
from .kyt import FREEZE_CATEGORIES, QUARANTINE_ABOVE
from .policy import Facts, Policy, evaluate, parse_policy
from .withdrawals import IN_FLIGHT_STATES, OPEN_STATES, TRANSITIONS, ApprovalRec, WithdrawalRec

__all__ = [
    "CustodyState", "custody_state",
    "ConfigureCustodyAsset", "RegisterWallet", "AssignDepositAddress", "ObserveDeposit", "ReorgDeposits",
    "CreditDeposit", "FinalizeDeposit", "FileSourceOfFunds", "ReviewQuarantine", "SetApprover",
    "AddWithdrawalAddress", "ProposePolicy", "ApprovePolicy", "ActivatePolicy", "RequestWithdrawal",
    "ConfirmWithdrawalEmail", "RecordRiskReview", "DecideWithdrawal", "ApproveWithdrawal", "ResolveManualReview",
    "AuthorizeSigning", "RecordSignedTx", "RecordBroadcast", "SettleWithdrawal", "FailWithdrawal",
    "CancelWithdrawal", "RecordInternalTransfer", "RecordTransferSigned", "RecordTreasuryFunding", "ReserveWalletNonce",
    "CustodyEvent", "DepositReported",
]

TIERS = ("deposit", "hot", "warm", "cold", "shield")
CHAINS = ("bitcoin", "ethereum")
MAX_REASONS = 20
MAX_TEXT = 512
MAX_RAW_TX_HEX = 200_000
POLICY_QUORUM = 2
POLICY_DELAY_NS = 24 * 3600 * 10**9
ALLOW_LIST_MAX_PER_USER = 100
ID_MAX = 64
EMAIL_CONFIRM_TTL_NS = 30 * 60 * 10**9


# ---------------------------------------------------------------------------------------- state


class AssetCfg(msgspec.Struct, array_like=True):
    asset: str
    chain: str
    network: str
    credit_confirmations: int
    finality_confirmations: int
    min_deposit_minor: int
    min_withdrawal_minor: int
    max_withdrawal_minor: int
    withdrawal_fee_minor: int


class WalletRec(msgspec.Struct, array_like=True):
    name: str
    chain: str
    tier: str
    addresses: list[str]
    public: bool
    next_nonce: int = 0


class ProposalRec(msgspec.Struct, array_like=True):
    id: str
    proposer: str
    text: str
    proposed_ns: int
    approvals: list[str] = []
    effective_ns: int = 0  # set when the quorum is reached
    state: str = "proposed"  # proposed | scheduled | active | superseded


class TransferRec(msgspec.Struct, array_like=True):
    id: str
    asset: str
    from_wallet: str
    to_wallet: str
    amount_minor: int
    network_fee_minor: int
    txid: str
    state: str = "recorded"  # "signed" (journaled before broadcast) | "recorded" (confirmed, in the ledger)
    raw_tx: str = ""


class CustodyState:
    """All custody state of one shard. Read-only queries are safe to call from workers between batches."""

    def __init__(self) -> None:
        self.assets: dict[str, AssetCfg] = {}
        self.wallets: dict[str, WalletRec] = {}
        self.deposit_addresses: dict[str, list[str]] = {}  # "chain:addr" -> [account_id, wallet, address]
        self.deposits: dict[str, DepositRec] = {}
        self.withdrawals: dict[str, WithdrawalRec] = {}
        self.address_book: dict[str, int] = {}  # "account|asset|addr" -> added_ns
        self.approvers: dict[str, list[str]] = {}
        self.policy_text = ""
        self.proposals: dict[str, ProposalRec] = {}
        self.transfers: dict[str, TransferRec] = {}
        self.withdrawals_frozen: dict[str, str] = {}  # account_id -> reason (a reversal left a shortfall)
        self._policy: Policy | None = None

    # --- queries for reconciliation (issue #9) and workers --------------------------------------

    def in_flight_withdrawals(self, asset: str, wallet: str) -> int:
        """Signed or broadcast but not settled, in minor units including network fees."""
        return sum(w.amount_minor + w.network_fee_minor for w in self.withdrawals.values()
                   if w.asset == asset and w.wallet == wallet and w.state in IN_FLIGHT_STATES)

    def in_flight_transfers(self, asset: str, wallet: str) -> int:
        """Sweeps/refills/drains out of `wallet` signed (and maybe broadcast) but not yet recorded,
        in minor units including the fee budget."""
        return sum(t.amount_minor + t.network_fee_minor for t in self.transfers.values()
                   if t.state == "signed" and t.asset == asset and t.from_wallet == wallet)

    def pending_deposits(self, asset: str, wallet: str) -> int:
        """Seen on chain but not yet final (credited or not), in minor units."""
        return sum(d.amount_minor for d in self.deposits.values()
                   if d.asset == asset and d.wallet == wallet and d.state in ACTIVE_STATES and not d.final)

    def public_addresses(self) -> dict[str, list[str]]:
        """Addresses of wallets published for proof of reserves (the shield fund's cold multisig)."""
        return {w.name: list(w.addresses) for w in sorted(self.wallets.values(), key=lambda w: w.name) if w.public}

    def policy(self) -> Policy | None:
        if self._policy is None and self.policy_text:
            self._policy = parse_policy(self.policy_text)
        return self._policy

    def owner_of(self, chain: str, address: str) -> list[str] | None:
        return self.deposit_addresses.get(f"{chain}:{_norm(chain, address)}")

    def watched(self, chain: str) -> list[str]:
        out = [v[2] for k, v in self.deposit_addresses.items() if k.startswith(chain + ":")]
        for w in self.wallets.values():
            if w.chain == chain:
                out.extend(w.addresses)
        return sorted(set(out))

    def history(self, account_id: str, asset: str) -> list[WithdrawalRec]:
        return [w for w in self.withdrawals.values() if w.account_id == account_id and w.asset == asset]

    def check_invariants(self) -> None:
        for d in self.deposits.values():
            net = d.times_credited - d.times_reversed
            if net not in (0, 1):
                raise AssertionError(f"deposit {d.key} credited {d.times_credited}x, reversed {d.times_reversed}x")
            if (net == 1) != (d.state in CREDITED_STATES):
                raise AssertionError(f"deposit {d.key} state {d.state} does not match its credits")

    # --- snapshot ------------------------------------------------------------------------------

    def snapshot(self) -> list[Any]:
        return msgspec.to_builtins([
            sorted(self.assets.values(), key=lambda a: a.asset),
            sorted(self.wallets.values(), key=lambda w: w.name),
            sorted(self.deposit_addresses.items()),
            list(self.deposits.values()),
            list(self.withdrawals.values()),
            sorted(self.address_book.items()),
            sorted(self.approvers.items()),
            self.policy_text,
            list(self.proposals.values()),
            list(self.transfers.values()),
            sorted(self.withdrawals_frozen.items()),
        ])

    @classmethod
    def restore(cls, data: list[Any]) -> "CustodyState":
        s = cls()
        conv = msgspec.convert
        s.assets = {a.asset: a for a in conv(data[0], list[AssetCfg])}
        s.wallets = {w.name: w for w in conv(data[1], list[WalletRec])}
        s.deposit_addresses = dict((k, v) for k, v in data[2])
        s.deposits = {d.key: d for d in conv(data[3], list[DepositRec])}
        s.withdrawals = {w.id: w for w in conv(data[4], list[WithdrawalRec])}
        s.address_book = dict((k, v) for k, v in data[5])
        s.approvers = dict((k, v) for k, v in data[6])
        s.policy_text = data[7]
        s.proposals = {p.id: p for p in conv(data[8], list[ProposalRec])}
        s.transfers = {t.id: t for t in conv(data[9], list[TransferRec])}
        s.withdrawals_frozen = dict((k, v) for k, v in data[10])
        return s


register_component("custody", lambda engine: CustodyState(), lambda s: s.snapshot(),
                   lambda engine, data: CustodyState.restore(data))


def custody_state(engine: Engine) -> CustodyState:
    return engine.components["custody"]


def _norm(chain: str, address: str) -> str:
    return address.lower() if chain == "ethereum" else address


def validate_chain_address(chain: str, network: str, address: str, field: str = "address") -> str:
    """Pure address check (checksum, network) for a chain; returns the canonical form."""
    if not isinstance(address, str) or not address or len(address) > 128:
        raise InvalidAddress("must be a non-empty address string of at most 128 characters", field=field)
    if chain == "bitcoin":
        from ..chains.bitcoin.address import validate_address

        return validate_address(address, network, field)
    from ..chains.ethereum import validate_eth_address

    return validate_eth_address(address, field)


# --------------------------------------------------------------------------------------- events


class CustodyEvent(Event, tag="custody.event/1"):
    """One custody state change: `kind` names it (e.g. `deposit.credited`), `ref` the deposit or
    withdrawal id, `state` the new state, `detail` the reasons."""

    kind: str
    ref: str
    state: str
    amount_minor: int
    detail: list[str]


class DepositReported(Event, tag="custody.deposit_reported/1"):
    """A deposit from a blacklisted sender was frozen; compliance must file a report."""

    ref: str
    account_id: str
    asset: str
    amount_minor: int
    category: str
    reasons: list[str]


def _ev(kind: str, ref: str, state: str, amount: int = 0, detail: list[str] | tuple[str, ...] = ()) -> CustodyEvent:
    return CustodyEvent(kind, ref, state, amount, list(detail))


# ------------------------------------------------------------------------------------- helpers


def _check_id(value: object, field: str) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= ID_MAX or not value.isprintable() or "|" in value:
        raise ValidationError(f"must be 1-{ID_MAX} printable characters (no '|')", field=field)
    return value


def _check_amount(value: object, field: str, *, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidAmount("must be an integer number of minor units", field=field)
    if value < 0:
        raise InvalidAmount("must not be negative", field=field)
    if value == 0 and not allow_zero:
        raise InvalidAmount("must be greater than zero", field=field)
    if value > MAX_AMOUNT:
        raise InvalidAmount("is too large", field=field)
    return value


def _text(value: object, field: str, max_len: int = MAX_TEXT) -> str:
    if not isinstance(value, str) or len(value) > max_len:
        raise ValidationError(f"must be text of at most {max_len} characters", field=field)
    return value


def _asset_cfg(s: CustodyState, asset: str) -> AssetCfg:
    cfg = s.assets.get(asset)
    if cfg is None:
        raise UnsupportedAsset(f"asset {asset!r} is not enabled for custody; supported: {', '.join(sorted(s.assets)) or 'none'}",
                               field="asset")
    return cfg


def _wallet(s: CustodyState, name: str, field: str = "wallet") -> WalletRec:
    w = s.wallets.get(name)
    if w is None:
        raise NotFound(f"no wallet {name!r}; known: {', '.join(sorted(s.wallets)) or 'none'}", field=field)
    return w


def _user(engine: Engine, account_id: str, asset: str, kind: str):
    acct, _ = engine.ledger.open_account(account_id, asset, kind, "spot")
    return acct


def _system(engine: Engine, asset: str, kind: str):
    acct, _ = engine.ledger.open_account(SYSTEM_OWNER, asset, kind, "-")
    return acct


def _withdrawal(s: CustodyState, wid: str) -> WithdrawalRec:
    w = s.withdrawals.get(wid)
    if w is None:
        raise NotFound(f"no withdrawal {wid!r}", field="withdrawal_id")
    return w


def _move_state(w: WithdrawalRec, new: str) -> None:
    if new not in TRANSITIONS[w.state]:
        raise Conflict(f"withdrawal {w.id} is {w.state}; it cannot become {new}", field="withdrawal_id", state=w.state)
    w.state = new


def _scoped(w: WithdrawalRec, asset: str, wallet: str) -> None:
    if asset != w.asset or wallet != w.wallet:
        raise ValidationError(f"withdrawal {w.id} is {w.asset} from {w.wallet}", field="asset")


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


@handles(ConfigureCustodyAsset, precheck=_pre_configure)
def _configure(engine: Engine, c: ConfigureCustodyAsset) -> list[Event]:
    _pre_configure(engine, c)
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


@handles(RegisterWallet, precheck=_pre_wallet)
def _register_wallet(engine: Engine, c: RegisterWallet) -> list[Event]:
    _pre_wallet(engine, c)
    s = custody_state(engine)
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


@handles(AssignDepositAddress, precheck=_pre_assign)
def _assign(engine: Engine, c: AssignDepositAddress) -> list[Event]:
    _pre_assign(engine, c)
    s = custody_state(engine)
    s.deposit_addresses[f"{c.chain}:{_norm(c.chain, c.address)}"] = [c.account_id, c.wallet, c.address]
    return [_ev("deposit_address.assigned", c.address, c.account_id)]


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


@handles(ObserveDeposit, precheck=_pre_observe)
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
                         c.height, c.block_hash, state="below_minimum")
        s.deposits[key] = rec
        return [_ev("deposit.below_minimum", key, rec.state, c.amount_minor, [f"minimum is {cfg.min_deposit_minor}"])]
    if d is None:
        d = DepositRec(key, c.chain, c.txid, c.index, c.asset, account_id, wallet, address, c.amount_minor, c.height, c.block_hash)
        s.deposits[key] = d
    else:  # re-mined after a reorg: start over (its credit, if any, was reversed)
        d.state, d.height, d.block_hash, d.final = "seen", c.height, c.block_hash, False
    return [_ev("deposit.seen", key, "seen", c.amount_minor, [f"block {c.height}"])]


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


@handles(ReorgDeposits, precheck=_pre_reorg)
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
    if d.state == "seen" and c.confirmations < s.assets[d.asset].credit_confirmations:
        raise Conflict(f"needs {s.assets[d.asset].credit_confirmations} confirmations, has {c.confirmations}",
                       field="confirmations")


@handles(CreditDeposit, precheck=_pre_credit)
def _credit(engine: Engine, c: CreditDeposit) -> list[Event]:
    _pre_credit(engine, c)
    s = custody_state(engine)
    d = s.deposits[deposit_key(c.chain, c.txid, c.index)]
    if d.state != "seen":
        return [_ev("deposit.unchanged", d.key, d.state, d.amount_minor)]
    d.score, d.reasons, d.category = c.score, list(c.reasons), c.category
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


@handles(FinalizeDeposit)
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


@handles(FileSourceOfFunds)
def _file_sof(engine: Engine, c: FileSourceOfFunds) -> list[Event]:
    s = custody_state(engine)
    key = deposit_key(c.chain, c.txid, c.index)
    d = s.deposits.get(key)
    if d is None or d.account_id != c.account_id:
        raise NotFound(f"no deposit {key} for this account", field="txid")
    if d.state != "quarantined":
        raise Conflict(f"deposit is {d.state}, not quarantined", field="txid")
    text = _text(c.declaration, "declaration", 4000).strip()
    if len(text) < 10:
        raise ValidationError("describe where the funds come from (at least 10 characters)", field="declaration")
    d.declaration = text
    return [_ev("deposit.source_of_funds_filed", key, d.state, d.amount_minor)]


class ReviewQuarantine(Command, tag="custody.deposit.review/1"):
    chain: str
    txid: str
    index: int
    analyst: str
    decision: str  # release | freeze
    reason: str


@handles(ReviewQuarantine)
def _review_quarantine(engine: Engine, c: ReviewQuarantine) -> list[Event]:
    s, key, d = _known_deposit(engine, c)
    if c.decision not in ("release", "freeze"):
        raise ValidationError("must be release or freeze", field="decision")
    if "analyst" not in s.approvers.get(c.analyst, []):
        raise Forbidden(f"{c.analyst} does not hold the analyst role", field="analyst")
    if c.analyst == d.account_id:
        raise Forbidden("the depositor cannot review their own deposit", field="analyst")
    if d.state != "quarantined":
        raise Conflict(f"deposit is {d.state}, not quarantined", field="txid")
    if c.decision == "release" and not d.declaration:
        raise Conflict("the user has not filed a source-of-funds declaration yet", field="decision")
    led = engine.ledger
    src = _user(engine, d.account_id, d.asset, "quarantine")
    if c.decision == "release":
        led.move(src, _user(engine, d.account_id, d.asset, "available"), d.amount_minor)
        d.credited_kind, d.state = "available", "credited"
    else:
        led.move(src, _user(engine, d.account_id, d.asset, "frozen"), d.amount_minor)
        d.credited_kind, d.state = "frozen", "frozen"
    d.reviewed_by = c.analyst
    return [_ev(f"deposit.{'released' if c.decision == 'release' else 'frozen'}", key, d.state, d.amount_minor,
                [_text(c.reason, "reason")])]


# ------------------------------------------------------------------------ approvers and policy


class SetApprover(Command, tag="custody.approver.set/1"):
    approver: str
    roles: list[str]


@handles(SetApprover)
def _set_approver(engine: Engine, c: SetApprover) -> list[Event]:
    validate_owner(c.approver, "approver")
    if len(c.roles) > 10 or not all(isinstance(r, str) and 1 <= len(r) <= 32 for r in c.roles):
        raise ValidationError("at most 10 role names of 1-32 characters", field="roles")
    custody_state(engine).approvers[c.approver] = sorted(set(c.roles))
    return [_ev("approver.set", c.approver, ",".join(sorted(set(c.roles))))]


class ProposePolicy(Command, tag="custody.policy.propose/1"):
    proposal_id: str
    proposer: str
    policy_json: str


def _pre_propose(engine: Engine, c: ProposePolicy) -> None:
    _check_id(c.proposal_id, "proposal_id")
    s = custody_state(engine)
    if "policy_admin" not in s.approvers.get(c.proposer, []):
        raise Forbidden(f"{c.proposer} does not hold the policy_admin role", field="proposer")
    parse_policy(c.policy_json)


@handles(ProposePolicy, precheck=_pre_propose)
def _propose(engine: Engine, c: ProposePolicy) -> list[Event]:
    s = custody_state(engine)
    p = s.proposals.get(c.proposal_id)
    if p is not None:
        if p.text == parse_policy(c.policy_json).text and p.proposer == c.proposer:
            return [_ev("policy.unchanged", c.proposal_id, p.state)]
        raise Conflict("this proposal id is taken", field="proposal_id")
    _pre_propose(engine, c)
    s.proposals[c.proposal_id] = ProposalRec(c.proposal_id, c.proposer, parse_policy(c.policy_json).text, engine.now_ns)
    # The first policy of a fresh shard (no policy yet) still needs the quorum, but no delay.
    return [_ev("policy.proposed", c.proposal_id, "proposed", 0, [f"needs {POLICY_QUORUM} approvals other than {c.proposer}"])]


class ApprovePolicy(Command, tag="custody.policy.approve/1"):
    proposal_id: str
    approver: str


@handles(ApprovePolicy)
def _approve_policy(engine: Engine, c: ApprovePolicy) -> list[Event]:
    s = custody_state(engine)
    p = s.proposals.get(c.proposal_id)
    if p is None:
        raise NotFound(f"no policy proposal {c.proposal_id!r}", field="proposal_id")
    if "policy_admin" not in s.approvers.get(c.approver, []):
        raise Forbidden(f"{c.approver} does not hold the policy_admin role", field="approver")
    if c.approver == p.proposer:
        raise Forbidden("the proposer cannot approve their own policy change", field="approver")
    if p.state != "proposed":
        return [_ev("policy.unchanged", p.id, p.state)]
    if c.approver not in p.approvals:
        p.approvals.append(c.approver)
    if len(p.approvals) >= POLICY_QUORUM:
        p.state = "scheduled"
        p.effective_ns = engine.now_ns + (POLICY_DELAY_NS if s.policy_text else 0)
        return [_ev("policy.scheduled", p.id, p.state, 0, [f"takes effect at {p.effective_ns} ns"])]
    return [_ev("policy.approved", p.id, p.state, 0, [f"{len(p.approvals)}/{POLICY_QUORUM} approvals"])]


class ActivatePolicy(Command, tag="custody.policy.activate/1"):
    proposal_id: str


@handles(ActivatePolicy)
def _activate_policy(engine: Engine, c: ActivatePolicy) -> list[Event]:
    s = custody_state(engine)
    p = s.proposals.get(c.proposal_id)
    if p is None:
        raise NotFound(f"no policy proposal {c.proposal_id!r}", field="proposal_id")
    if p.state == "active":
        return [_ev("policy.unchanged", p.id, p.state)]
    if p.state != "scheduled":
        raise Conflict(f"proposal is {p.state}; it needs {POLICY_QUORUM} approvals first", field="proposal_id")
    if engine.now_ns < p.effective_ns:
        raise Conflict(f"the policy takes effect in {(p.effective_ns - engine.now_ns) // 10**9} s", field="proposal_id")
    for other in s.proposals.values():
        if other.state == "active":
            other.state = "superseded"
    p.state = "active"
    s.policy_text = p.text
    s._policy = None
    return [_ev("policy.activated", p.id, "active")]


class AddWithdrawalAddress(Command, tag="custody.address_book.add/1"):
    """The gateway submits this after `identity.events.withdrawal_address_changed` (fresh 2FA, lock)."""

    account_id: str
    asset: str
    address: str


@handles(AddWithdrawalAddress)
def _add_address(engine: Engine, c: AddWithdrawalAddress) -> list[Event]:
    s = custody_state(engine)
    cfg = _asset_cfg(s, c.asset)
    addr = validate_chain_address(cfg.chain, cfg.network, c.address)
    prefix = f"{c.account_id}|{c.asset}|"
    key = prefix + _norm(cfg.chain, addr)
    if key in s.address_book:
        return [_ev("address_book.unchanged", key, "listed")]
    if sum(1 for k in s.address_book if k.startswith(prefix)) >= ALLOW_LIST_MAX_PER_USER:
        raise ValidationError(f"at most {ALLOW_LIST_MAX_PER_USER} addresses per asset", field="address")
    s.address_book[key] = engine.now_ns
    return [_ev("address_book.added", key, "listed")]


# ---------------------------------------------------------------------------------- withdrawals


class RequestWithdrawal(Command, tag="custody.withdrawal.request/1"):
    withdrawal_id: str
    account_id: str
    asset: str
    wallet: str
    address: str
    amount_minor: int
    fee_minor: int
    email_token_hash: str  # sha256 hex of the e-mailed confirmation token
    device_id: str = ""
    ip: str = ""


def _pre_request(engine: Engine, c: RequestWithdrawal) -> None:
    s = custody_state(engine)
    _check_id(c.withdrawal_id, "withdrawal_id")
    validate_owner(c.account_id, "account_id")
    existing = s.withdrawals.get(c.withdrawal_id)
    if existing is not None:
        if (existing.account_id, existing.asset, existing.wallet, existing.amount_minor) != (
                c.account_id, c.asset, c.wallet, c.amount_minor):
            raise Conflict("this withdrawal id is taken by another request", field="withdrawal_id")
        return  # a retry: the handler answers `withdrawal.unchanged`
    cfg = _asset_cfg(s, c.asset)
    amount = _check_amount(c.amount_minor, "amount_minor")
    fee = _check_amount(c.fee_minor, "fee_minor", allow_zero=True)
    if amount < cfg.min_withdrawal_minor:
        raise InvalidAmount(f"is below the minimum withdrawal of {cfg.min_withdrawal_minor} minor units", field="amount_minor")
    if amount > cfg.max_withdrawal_minor:
        raise InvalidAmount(f"is above the maximum withdrawal of {cfg.max_withdrawal_minor} minor units", field="amount_minor")
    if fee != cfg.withdrawal_fee_minor:
        raise ValidationError(f"the withdrawal fee for {c.asset} is {cfg.withdrawal_fee_minor} minor units", field="fee_minor")
    w = _wallet(s, c.wallet)
    if w.chain != cfg.chain or w.tier != "hot":
        raise ValidationError(f"withdrawals of {c.asset} are paid from a hot wallet on {cfg.chain}", field="wallet")
    validate_chain_address(cfg.chain, cfg.network, c.address)
    if len(c.email_token_hash) != 64:
        raise ValidationError("must be a sha256 hex digest", field="email_token_hash")
    if c.account_id in s.withdrawals_frozen:
        raise Forbidden(f"withdrawals are frozen: {s.withdrawals_frozen[c.account_id]}", field="account_id")
    acct = engine.ledger.find(c.account_id, c.asset, "available", "spot")
    have = acct.available if acct is not None else 0
    if have < amount + fee:
        raise InsufficientFunds(f"needs {amount + fee} (amount + fee), {have} is available", field="amount_minor")


@handles(RequestWithdrawal, precheck=_pre_request)
def _request(engine: Engine, c: RequestWithdrawal) -> list[Event]:
    _pre_request(engine, c)
    s = custody_state(engine)
    if c.withdrawal_id in s.withdrawals:
        w = s.withdrawals[c.withdrawal_id]
        return [_ev("withdrawal.unchanged", w.id, w.state, w.amount_minor)]
    cfg = s.assets[c.asset]
    led = engine.ledger
    user = _user(engine, c.account_id, c.asset, "available")
    total = c.amount_minor + c.fee_minor
    assert led.can_reserve(user, total), "precheck guaranteed the funds"
    hold = led.reserve(user, _system(engine, c.asset, "clearing"), total)
    address = validate_chain_address(cfg.chain, cfg.network, c.address)
    w = WithdrawalRec(c.withdrawal_id, c.account_id, c.asset, c.wallet, address, c.amount_minor, c.fee_minor, hold,
                      engine.now_ns, c.email_token_hash, _text(c.device_id, "device_id", 128), _text(c.ip, "ip", 64))
    s.withdrawals[w.id] = w
    return [_ev("withdrawal.requested", w.id, w.state, w.amount_minor, [f"hold {total} on {c.account_id}:available"])]


def _void(engine: Engine, w: WithdrawalRec, state: str, reason: str) -> CustodyEvent:
    _move_state(w, state)
    released = engine.ledger.release(w.hold_id)
    w.end_reason, w.ended_ns = reason, engine.now_ns
    return _ev(f"withdrawal.{state}", w.id, state, w.amount_minor, [reason, f"released {released}"])


class ConfirmWithdrawalEmail(Command, tag="custody.withdrawal.confirm_email/1"):
    withdrawal_id: str
    asset: str
    wallet: str
    token: str


@handles(ConfirmWithdrawalEmail)
def _confirm_email(engine: Engine, c: ConfirmWithdrawalEmail) -> list[Event]:
    s = custody_state(engine)
    w = _withdrawal(s, c.withdrawal_id)
    _scoped(w, c.asset, c.wallet)
    if w.state != "requested":
        return [_ev("withdrawal.unchanged", w.id, w.state, w.amount_minor)]
    digest = hashlib.sha256(c.token.encode()).hexdigest()
    if not hmac.compare_digest(digest, w.email_token_hash):
        raise Forbidden("the confirmation link is not valid for this withdrawal", field="token")
    if engine.now_ns - w.created_ns > EMAIL_CONFIRM_TTL_NS:
        return [_void(engine, w, "failed", "the e-mail confirmation link expired (30 min); request again")]
    _move_state(w, "confirmed")
    return [_ev("withdrawal.confirmed", w.id, w.state, w.amount_minor, ["e-mail confirmation received"])]


class RecordRiskReview(Command, tag="custody.withdrawal.risk_review/1"):
    withdrawal_id: str
    asset: str
    wallet: str
    score: int
    manual_review: bool
    reasons: list[str]


@handles(RecordRiskReview)
def _risk(engine: Engine, c: RecordRiskReview) -> list[Event]:
    s = custody_state(engine)
    w = _withdrawal(s, c.withdrawal_id)
    _scoped(w, c.asset, c.wallet)
    if not 0 <= c.score <= 100 or len(c.reasons) > MAX_REASONS:
        raise ValidationError("score must be 0..100 with at most 20 reasons", field="score")
    if w.state != "confirmed":
        return [_ev("withdrawal.unchanged", w.id, w.state, w.amount_minor)]
    _move_state(w, "reviewed")
    w.risk_score, w.manual_review, w.risk_reasons = c.score, c.manual_review, [_text(r, "reasons") for r in c.reasons]
    return [_ev("withdrawal.reviewed", w.id, w.state, w.amount_minor, [f"risk score {c.score}", *c.reasons])]


def policy_facts(engine: Engine, w: WithdrawalRec) -> Facts:
    """The facts the policy sees, from engine state only (deterministic)."""
    s = custody_state(engine)
    led = engine.ledger
    chain = s.assets[w.asset].chain
    added = s.address_book.get(f"{w.account_id}|{w.asset}|{_norm(chain, w.address)}")
    policy = s.policy()
    windows = policy.velocity_windows() if policy else set()
    counted = [x for x in s.withdrawals.values() if x.id != w.id and x.asset == w.asset
               and x.state not in ("failed", "denied", "rejected")]
    uv = {win: sum(x.amount_minor for x in counted if x.account_id == w.account_id and x.created_ns > engine.now_ns - win * 10**9)
          for win in windows}
    wv = {win: sum(x.amount_minor for x in counted if x.wallet == w.wallet and x.created_ns > engine.now_ns - win * 10**9)
          for win in windows}
    user = led.find(w.account_id, w.asset, "available", "spot")
    # The user's balance before this withdrawal's hold.
    bal = (user.available if user else 0) + (led.pending[w.hold_id].remaining if w.hold_id in led.pending else 0)
    return Facts(asset=w.asset, amount_minor=w.amount_minor, wallet=w.wallet, wallet_tier=s.wallets[w.wallet].tier,
                 wallet_balance_minor=led.custody(w.asset, w.wallet).balance, user_balance_minor=bal,
                 allow_listed=added is not None,
                 allow_list_age_s=-1 if added is None else (engine.now_ns - added) // 10**9,
                 risk_score=w.risk_score, manual_review_flagged=w.manual_review,
                 user_velocity_minor=uv, wallet_velocity_minor=wv)


class DecideWithdrawal(Command, tag="custody.withdrawal.decide/1"):
    withdrawal_id: str
    asset: str
    wallet: str


@handles(DecideWithdrawal)
def _decide(engine: Engine, c: DecideWithdrawal) -> list[Event]:
    s = custody_state(engine)
    w = _withdrawal(s, c.withdrawal_id)
    _scoped(w, c.asset, c.wallet)
    if w.state != "reviewed":
        return [_ev("withdrawal.unchanged", w.id, w.state, w.amount_minor)]
    facts = policy_facts(engine, w)
    d = evaluate(s.policy(), facts)
    w.facts_json = msgspec.json.encode({"id": w.id, "decision": "", **dataclasses.asdict(facts)}).decode()
    action, reasons = d.action, list(d.reasons)
    if w.manual_review and action in ("allow", "approvals", "delay"):
        action = "manual_review"
        reasons.append("risk review requires manual review (overrides the rule's action)")
    w.decision, w.rule, w.decision_reasons = action, d.rule, reasons
    label = f"rule {d.rule!r}" if d.rule else "default"
    if action == "deny":
        return [_void(engine, w, "denied", f"denied by {label}: " + "; ".join(reasons))]
    if action == "manual_review":
        _move_state(w, "manual_review")
    elif action == "approvals":
        _move_state(w, "awaiting_approvals")
        w.required_approvals, w.approver_roles = d.approvals, list(d.roles)
        w.not_before_ns = engine.now_ns + d.delay_s * 10**9
    else:
        _move_state(w, "approved")
        w.not_before_ns = engine.now_ns + d.delay_s * 10**9
    return [_ev("withdrawal.decided", w.id, w.state, w.amount_minor, [f"{action} by {label}", *reasons])]


def _valid_approvals(w: WithdrawalRec, now_ns: int) -> list[ApprovalRec]:
    return [a for a in w.approvals if a.expires_ns > now_ns]


class ApproveWithdrawal(Command, tag="custody.withdrawal.approve/1"):
    withdrawal_id: str
    asset: str
    wallet: str
    approver: str
    role: str


@handles(ApproveWithdrawal)
def _approve(engine: Engine, c: ApproveWithdrawal) -> list[Event]:
    s = custody_state(engine)
    w = _withdrawal(s, c.withdrawal_id)
    _scoped(w, c.asset, c.wallet)
    if c.approver == w.account_id:
        raise Forbidden("the initiator never approves their own withdrawal", field="approver")
    if c.role not in s.approvers.get(c.approver, []):
        raise Forbidden(f"{c.approver} does not hold role {c.role!r}", field="role")
    if w.state != "awaiting_approvals":
        raise Conflict(f"withdrawal is {w.state}, not awaiting approvals", field="withdrawal_id")
    if c.role not in w.approver_roles:
        raise Forbidden(f"this withdrawal needs approvals from {w.approver_roles}", field="role")
    policy = s.policy()
    ttl_ns = (policy.approval_ttl_s if policy else 86400) * 10**9
    w.approvals = [a for a in w.approvals if a.approver != c.approver]
    w.approvals.append(ApprovalRec(c.approver, c.role, engine.now_ns, engine.now_ns + ttl_ns))
    valid = _valid_approvals(w, engine.now_ns)
    if len(valid) >= w.required_approvals:
        _move_state(w, "approved")
        w.not_before_ns = max(w.not_before_ns, engine.now_ns)
    return [_ev("withdrawal.approved_by", w.id, w.state, w.amount_minor, [f"{c.approver} ({c.role}): {len(valid)}/{w.required_approvals}"])]


class ResolveManualReview(Command, tag="custody.withdrawal.manual_review/1"):
    withdrawal_id: str
    asset: str
    wallet: str
    analyst: str
    approve: bool
    reason: str


@handles(ResolveManualReview)
def _manual(engine: Engine, c: ResolveManualReview) -> list[Event]:
    s = custody_state(engine)
    w = _withdrawal(s, c.withdrawal_id)
    _scoped(w, c.asset, c.wallet)
    if c.analyst == w.account_id:
        raise Forbidden("the initiator never reviews their own withdrawal", field="analyst")
    if "analyst" not in s.approvers.get(c.analyst, []):
        raise Forbidden(f"{c.analyst} does not hold the analyst role", field="analyst")
    reason = _text(c.reason, "reason")
    if not reason.strip():
        raise ValidationError("a manual review decision needs a reason", field="reason")
    if w.state != "manual_review":
        raise Conflict(f"withdrawal is {w.state}, not in manual review", field="withdrawal_id")
    w.reviewed_by = c.analyst
    if not c.approve:
        return [_void(engine, w, "rejected", f"rejected by {c.analyst}: {reason}")]
    _move_state(w, "approved")
    w.not_before_ns = max(w.not_before_ns, engine.now_ns)
    return [_ev("withdrawal.review_approved", w.id, w.state, w.amount_minor, [f"{c.analyst}: {reason}"])]


class AuthorizeSigning(Command, tag="custody.withdrawal.authorize_signing/1"):
    withdrawal_id: str
    asset: str
    wallet: str


@handles(AuthorizeSigning)
def _authorize(engine: Engine, c: AuthorizeSigning) -> list[Event]:
    s = custody_state(engine)
    w = _withdrawal(s, c.withdrawal_id)
    _scoped(w, c.asset, c.wallet)
    if w.state in ("signing", "signed", "broadcast", "settled"):
        return [_ev("withdrawal.unchanged", w.id, w.state, w.amount_minor)]
    if w.state != "approved":
        raise Conflict(f"withdrawal is {w.state}, not approved", field="withdrawal_id")
    if w.account_id in s.withdrawals_frozen:
        raise Forbidden(f"withdrawals are frozen: {s.withdrawals_frozen[w.account_id]}", field="account_id")
    if engine.now_ns < w.not_before_ns:
        raise Conflict(f"delayed by policy for {(w.not_before_ns - engine.now_ns) // 10**9} more s", field="withdrawal_id")
    if w.required_approvals and len(_valid_approvals(w, engine.now_ns)) < w.required_approvals:
        # Approvals expired before signing: ask for them again.
        w.state = "awaiting_approvals"
        return [_ev("withdrawal.approvals_expired", w.id, w.state, w.amount_minor)]
    _move_state(w, "signing")
    wallet = s.wallets[w.wallet]
    if wallet.chain == "ethereum":
        w.nonce = wallet.next_nonce
        wallet.next_nonce += 1
    return [_ev("withdrawal.signing", w.id, w.state, w.amount_minor, [f"nonce {w.nonce}"] if w.nonce >= 0 else [])]


class RecordSignedTx(Command, tag="custody.withdrawal.signed_tx/1"):
    """Journaled BEFORE broadcast: after this, a restart can only re-send this exact transaction."""

    withdrawal_id: str
    asset: str
    wallet: str
    txid: str
    raw_tx: str  # hex
    network_fee_minor: int


@handles(RecordSignedTx)
def _signed(engine: Engine, c: RecordSignedTx) -> list[Event]:
    s = custody_state(engine)
    w = _withdrawal(s, c.withdrawal_id)
    _scoped(w, c.asset, c.wallet)
    if w.txid:
        if w.txid == c.txid:
            return [_ev("withdrawal.unchanged", w.id, w.state, w.amount_minor)]
        raise Conflict(f"withdrawal already has signed transaction {w.txid}", field="txid")
    if w.state != "signing":
        raise Conflict(f"withdrawal is {w.state}, not signing", field="withdrawal_id")
    if not c.txid or len(c.raw_tx) > MAX_RAW_TX_HEX:
        raise ValidationError("a txid and at most 100 kB of raw transaction are required", field="raw_tx")
    _check_amount(c.network_fee_minor, "network_fee_minor", allow_zero=True)
    _move_state(w, "signed")
    w.txid, w.raw_tx, w.network_fee_minor = c.txid, c.raw_tx, c.network_fee_minor
    return [_ev("withdrawal.signed", w.id, w.state, w.amount_minor, [c.txid])]


class RecordBroadcast(Command, tag="custody.withdrawal.broadcast/1"):
    withdrawal_id: str
    asset: str
    wallet: str
    txid: str


@handles(RecordBroadcast)
def _broadcast(engine: Engine, c: RecordBroadcast) -> list[Event]:
    s = custody_state(engine)
    w = _withdrawal(s, c.withdrawal_id)
    _scoped(w, c.asset, c.wallet)
    if c.txid != w.txid:
        raise Conflict(f"withdrawal's transaction is {w.txid or 'not signed'}", field="txid")
    if w.state != "signed":
        return [_ev("withdrawal.unchanged", w.id, w.state, w.amount_minor)]
    _move_state(w, "broadcast")
    return [_ev("withdrawal.broadcast", w.id, w.state, w.amount_minor, [c.txid])]


class SettleWithdrawal(Command, tag="custody.withdrawal.settle/1"):
    withdrawal_id: str
    asset: str
    wallet: str
    txid: str
    confirmations: int
    network_fee_minor: int


@handles(SettleWithdrawal)
def _settle(engine: Engine, c: SettleWithdrawal) -> list[Event]:
    s = custody_state(engine)
    w = _withdrawal(s, c.withdrawal_id)
    _scoped(w, c.asset, c.wallet)
    if w.state == "settled":
        return [_ev("withdrawal.unchanged", w.id, w.state, w.amount_minor)]
    if c.txid != w.txid or w.state not in IN_FLIGHT_STATES:
        raise Conflict(f"withdrawal is {w.state} with transaction {w.txid or 'none'}", field="txid")
    need = s.assets[w.asset].finality_confirmations
    if c.confirmations < need:
        raise Conflict(f"needs {need} confirmations, has {c.confirmations}", field="confirmations")
    fee_paid = _check_amount(c.network_fee_minor, "network_fee_minor", allow_zero=True)
    led = engine.ledger
    _move_state(w, "settled")
    total = w.amount_minor + w.fee_minor
    led.capture(w.hold_id, total)
    clearing = _system(engine, w.asset, "clearing")
    led.move(clearing, led.world(w.asset), w.amount_minor)
    led.move(clearing, led.fees(w.asset, "spot"), w.fee_minor)
    led.move(led.custody(w.asset, w.wallet), _system(engine, w.asset, "onchain"), w.amount_minor + fee_paid)
    w.network_fee_minor, w.confirmations, w.ended_ns = fee_paid, c.confirmations, engine.now_ns
    return [_ev("withdrawal.settled", w.id, w.state, w.amount_minor, [c.txid, f"network fee {fee_paid}"])]


class FailWithdrawal(Command, tag="custody.withdrawal.fail/1"):
    """Void the hold. After signing only when the chain shows the transaction cannot confirm."""

    withdrawal_id: str
    asset: str
    wallet: str
    reason: str


@handles(FailWithdrawal)
def _fail(engine: Engine, c: FailWithdrawal) -> list[Event]:
    s = custody_state(engine)
    w = _withdrawal(s, c.withdrawal_id)
    _scoped(w, c.asset, c.wallet)
    if w.state not in OPEN_STATES:
        return [_ev("withdrawal.unchanged", w.id, w.state, w.amount_minor)]
    return [_void(engine, w, "failed", _text(c.reason, "reason"))]


class CancelWithdrawal(Command, tag="custody.withdrawal.cancel/1"):
    withdrawal_id: str
    asset: str
    wallet: str
    account_id: str


@handles(CancelWithdrawal)
def _cancel(engine: Engine, c: CancelWithdrawal) -> list[Event]:
    s = custody_state(engine)
    w = _withdrawal(s, c.withdrawal_id)
    _scoped(w, c.asset, c.wallet)
    if w.account_id != c.account_id:
        raise Forbidden("only the requester can cancel", field="account_id")
    if w.state not in OPEN_STATES:
        return [_ev("withdrawal.unchanged", w.id, w.state, w.amount_minor)]
    if w.state in ("signing", "signed", "broadcast"):
        raise Conflict("the withdrawal is being signed or sent and can no longer be cancelled", field="withdrawal_id")
    return [_void(engine, w, "failed", "cancelled by the user")]


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


@handles(RecordTransferSigned)
def _transfer_signed(engine: Engine, c: RecordTransferSigned) -> list[Event]:
    s = custody_state(engine)
    _check_id(c.transfer_id, "transfer_id")
    t = s.transfers.get(c.transfer_id)
    if t is not None:
        if t.txid != c.txid:
            raise Conflict(f"transfer {c.transfer_id} already has transaction {t.txid}", field="txid")
        return [_ev("internal_transfer.unchanged", c.transfer_id, t.state, t.amount_minor)]
    _check_internal(s, c.asset, c.from_wallet, c.to_wallet, c.amount_minor, c.network_fee_minor)
    if len(c.raw_tx) > MAX_RAW_TX_HEX:
        raise ValidationError("at most 100 kB of raw transaction", field="raw_tx")
    s.transfers[c.transfer_id] = TransferRec(c.transfer_id, c.asset, c.from_wallet, c.to_wallet, c.amount_minor,
                                             c.network_fee_minor, c.txid, "signed", c.raw_tx)
    return [_ev("internal_transfer.signed", c.transfer_id, "signed", c.amount_minor, [c.txid])]


@handles(RecordInternalTransfer)
def _internal(engine: Engine, c: RecordInternalTransfer) -> list[Event]:
    s = custody_state(engine)
    _check_id(c.transfer_id, "transfer_id")
    t = s.transfers.get(c.transfer_id)
    if t is not None and t.state == "recorded":
        return [_ev("internal_transfer.unchanged", c.transfer_id, "recorded", c.amount_minor)]
    if t is not None and (t.txid, t.asset, t.from_wallet, t.to_wallet, t.amount_minor) != (
            c.txid, c.asset, c.from_wallet, c.to_wallet, c.amount_minor):
        raise Conflict("does not match the signed transfer with this id", field="transfer_id")
    _check_internal(s, c.asset, c.from_wallet, c.to_wallet, c.amount_minor, c.network_fee_minor)
    led = engine.ledger
    led.move(led.custody(c.asset, c.from_wallet), led.custody(c.asset, c.to_wallet), c.amount_minor)
    led.move(led.custody(c.asset, c.from_wallet), _system(engine, c.asset, "onchain"), c.network_fee_minor)
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


@handles(RecordTreasuryFunding)
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
    engine.ledger.move(_system(engine, c.asset, "onchain"), engine.ledger.custody(c.asset, c.wallet), c.amount_minor)
    s.transfers[key] = TransferRec(key, c.asset, "", c.wallet, c.amount_minor, 0, c.txid)
    return [_ev("treasury_funding.recorded", c.funding_id, c.wallet, c.amount_minor, [c.txid])]


class ReserveWalletNonce(Command, tag="custody.wallet.reserve_nonce/1"):
    """An Ethereum wallet's next nonce for a non-withdrawal transaction (a drain to cold), assigned by
    the engine like withdrawal nonces so the two never collide. Idempotent by `purpose_id`."""

    wallet: str
    purpose_id: str


@handles(ReserveWalletNonce)
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
