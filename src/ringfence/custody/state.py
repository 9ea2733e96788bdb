"""Custody state: the `custody` engine component, its records, events and the checks handlers share.

Every custody step is a journaled command applied by the handlers in `*_cmds.py`: handlers
validate first and mutate after, do no I/O and read no clock (only `engine.now_ns`, the sequencer's
stamp). Chain scanning, KYT scoring, risk facts from identity, signing and broadcasting run in
workers (workers.py) that submit these commands. Each command is idempotent by its id: a deposit
by `(chain, txid, index)`, a withdrawal by `withdrawal_id` — a retried command answers with a
`*Unchanged` event, never a second effect.

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

from typing import Any

import msgspec

from ..engine.commands import Event
from ..engine.core import Engine
from .module import MODULE
from ..errors import (
    Conflict,
    InvalidAddress,
    InvalidAmount,
    NotFound,
    UnsupportedAsset,
    ValidationError,
)
from ..money import MAX_AMOUNT
from .deposits import ACTIVE_STATES, CREDITED_STATES, DepositRec
from .policy import Policy, parse_policy
from .withdrawals import IN_FLIGHT_STATES, TRANSITIONS, WithdrawalRec

__all__ = [
    "CustodyState", "custody_state", "validate_chain_address", "CustodyEvent", "DepositReported",
    "AssetCfg", "WalletRec", "ProposalRec", "TransferRec", "WithdrawalRules",
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
    #: "authorized" (a rebalance or vault refill decided) | "signed" (journaled before broadcast) |
    #: "recorded" (confirmed, in the ledger) | "cancelled" (a vault refill dropped unsigned)
    state: str = "recorded"
    raw_tx: str = ""


class WithdrawalRules(msgspec.Struct, array_like=True):
    """Rules the engine enforces on every `RequestWithdrawal` (with the sequencer's time)."""

    require_address_book: bool
    address_cooling_s: int  # a new address-book entry may receive funds only after this long
    security_lock_s: int  # withdrawals are locked this long after a password/2FA/e-mail change


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
        #: Withdrawal rules (`SetWithdrawalRules`); None until configured: then the address book is
        #: not required (the library's behaviour before the rules existed). `ringfence serve` always sets them.
        self.rules: WithdrawalRules | None = None
        self.address_usable_ns: dict[str, int] = {}  # "account|asset|addr" -> first ns it may receive
        self.security_locks: dict[str, int] = {}  # account_id -> ns until which withdrawals are locked
        self.security_relay_pos = 0  # the last identity security event id recorded
        #: key_id -> [generation, [[identifier, certificate fingerprint], ...], threshold] (vault_cmds.py)
        self.signer_sets: dict[str, list[Any]] = {}
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
            self.rules,
            sorted(self.address_usable_ns.items()),
            sorted(self.security_locks.items()),
            self.security_relay_pos,
            # appended only once a key has a decided signer set: snapshots before it hash as they did
            *([sorted(self.signer_sets.items())] if self.signer_sets else []),
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
        if len(data) > 11:  # snapshots from before the withdrawal rules have 11 parts
            s.rules = conv(data[11], WithdrawalRules | None)
            s.address_usable_ns = dict((k, v) for k, v in data[12])
            s.security_locks = dict((k, v) for k, v in data[13])
            s.security_relay_pos = data[14]
        if len(data) > 15:
            s.signer_sets = {k: v for k, v in data[15]}
        return s


MODULE.declare_state(lambda engine: CustodyState(), lambda s: s.snapshot(),
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
    return engine.ledger.open_system_account(asset, kind, "-")


def _room(engine: Engine, accounts: int) -> None:
    """Refuse, before anything changes, a step that may open up to `accounts` ledger accounts in a
    full shard (handlers open user, custody and system accounts on first use)."""
    if not engine.ledger.can_open_accounts(accounts):
        raise ValidationError("the shard cannot open more accounts; contact the operator", field="account_id")


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


MODULE.declare_events(CustodyEvent, DepositReported)
