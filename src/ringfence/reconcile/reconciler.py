"""Continuous reconciliation: ledger vs chain every block, engine vs an independent recomputation.

Three checks, each naming what disagrees precisely (a `Mismatch` with its evidence):

* **Chain** (`reconcile_chain`, every new block): for every custody wallet, the sum of the on-chain
  balances of its addresses at one height against its `custody:<wallet>:<asset>` ledger account.
  In-flight withdrawals (signed/broadcast, not yet settled in the ledger) may already have left the
  chain; deposits below finality may be on chain but not yet credited, or credited but reorged
  away before the watcher reverses them. So the chain must lie in
  `[ledger - in_flight - pending - tolerance, ledger + pending + tolerance]`. Below it is a
  *shortfall* (funds left outside the withdrawal flow, or a final credit that has no coins); above
  it is a surplus (an incident only: unexplained coins are not a solvency risk). A reorg that
  removes a deposit not yet final therefore cannot cause a false halt; once final, it does.
* **Internal** (`JournalFold` + `reconcile_internal`, every few seconds): the journal is read by
  its own incremental reader (`JournalTail`: header CRC, hash chain, sequence; resumes where it
  stopped) and the batch decoder, and every command is applied to a *replay engine* (a fresh
  instance fed only from the journal) while an independent balance model (`ShadowBook`, plain
  dicts, no `Ledger` code) folds the same transfers from the commands and their result events:
  client transfers (single-phase, pending, post, void, expiry) and trading fills (including the
  fee and shield-fund split). The live engine's balances and holds are compared with both. Plus:
  every asset sums to zero; user liabilities per asset <= custody holdings + known receivables;
  the same deposit (chain txid/index key) credited twice.
* **Response** (`Reconciler`): each mismatch kind maps through `RULES` to a scope and a level;
  the reconciler submits `Halt` with a halt id derived from the hash of the stable part of the
  evidence (idempotent: the same discrepancy is one halt, however often it is seen) and records an
  incident per mismatch in `DIR/reconcile/incidents.sqlite` (a write that fails is logged, noted in the
  report and `Reconciler.errors`, and the pass goes on: the halts are sent whatever the record does). A halt id a quorum has lifted is not
  raised again for the same evidence (the operators accepted exactly that discrepancy). A chain
  mismatch's id also names its *occurrence* (`Mismatch.occurrence`: the engine sequence of the pass
  that first saw it since a pass last saw that wallet whole, `Reconciler.chain_pass`): a lift
  covers the shortfall while it lasts, and one of the very same amounts after a read found the wallet
  whole again is a new occurrence, a new halt; the occurrences are kept in the incident store, so a
  restart changes nothing.

Everything here runs outside `apply` (it reads chains and files); it changes engine state only by
submitting `Halt` commands, and reads the live engine only through `node.read` (between batches,
never a command half applied), copying out plain numbers before it compares.
"""

from __future__ import annotations

import hashlib
import json
import operator
import sqlite3
import struct
import threading
import time
import zlib
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from itertools import repeat
from typing import Any, Callable, Collection, Iterable, Mapping, NamedTuple, Protocol, Sequence

import structlog

from ..engine.core import CommandRejected, Engine, ShardHalt
from ..engine.module import Module
from ..engine.node import rebuild_halted
from ..errors import JournalCorrupt, RingfenceError, ValidationError
from ..journal.journal import (GENESIS_HASH, HEADER_SIZE, MAGIC, MAX_PAYLOAD_BYTES, TRAILER_SIZE, Record, nonzero_end,
                               segment_paths)
from ..ledger.model import SYSTEM_OWNER, TransferFlags
from ..pacing import CpuPacer
from ..risk.halts import HALTED, REDUCE_ONLY, WITHDRAWALS_PAUSED, Halt, halts_of
from ..app import new_engine

__all__ = [
    "RULES",
    "Rule",
    "ReconcileSettings",
    "CustodyView",
    "WalletSpec",
    "custody_wallet_specs",
    "Mismatch",
    "ChainRow",
    "ShadowBook",
    "JournalFold",
    "JournalTail",
    "LiveView",
    "AccountIndex",
    "read_live",
    "reconcile_chain",
    "reconcile_internal",
    "IncidentStore",
    "Reconciler",
    "RunReport",
    "FOLDS",
    "register_fold",
]

log = structlog.get_logger("ringfence.reconcile")


# ----------------------------------------------------------------------------------------- rules


@dataclass(frozen=True, slots=True)
class Rule:
    scope_kind: str
    level: str | None  # None: incident only, no halt
    description: str


#: What each kind of mismatch halts. Data, not code: change a line here to change the response.
RULES: dict[str, Rule] = {
    "hot_wallet_shortfall": Rule("asset", WITHDRAWALS_PAUSED, "a wallet holds less on chain than the ledger says"),
    "hot_wallet_surplus": Rule("asset", None, "a wallet holds more on chain than the ledger and pending deposits explain"),
    "duplicate_credit": Rule("asset", WITHDRAWALS_PAUSED, "the same chain deposit was credited more than once"),
    "liabilities_exceed_reserves": Rule("asset", WITHDRAWALS_PAUSED, "user balances exceed custody holdings plus receivables"),
    "engine_journal_mismatch": Rule("venue", HALTED, "a live balance or hold differs from the journal's recomputation"),
    "ledger_not_zero_sum": Rule("venue", HALTED, "an asset's balances do not sum to zero"),
    "fees_mismatch": Rule("segment", REDUCE_ONLY, "a fees account differs from the fees of the fills"),
    "shield_mismatch": Rule("segment", REDUCE_ONLY, "an insurance (shield) fund differs from its share of the fills"),
    "world_mismatch": Rule("asset", REDUCE_ONLY, "a world account differs from the deposits and withdrawals"),
}

#: How often one internal pass tries to read the live engine and the journal at the same sequence.
MAX_ALIGN_TRIES = 200
#: The internal pass's fold is paced (`Reconciler.pacer`) only while it is at most this many
#: commands behind the live sequence when it starts: five seconds of journal at the rates a paced
#: fold keeps up with. Further behind (a start, a burst) it folds at full speed and catches up.
PACE_ONLY_WITHIN = 20_000

#: A mismatch list longer than this is cut (and says so): the first ones name the problem.
MAX_MISMATCHES = 1_000
MAX_EVIDENCE_ITEMS = 20


class _Stopped(Exception):
    """`run_forever`'s stop was set while a paced fold ran: the pass ends there."""


#: Transfer `code` that marks a deposit credit made with `CreateTransfers`; `user_data` is the
#: deposit key (e.g. a hash of txid:index). The custody flow's own command carries txid/index.
DEPOSIT_TRANSFER_CODE = 1001


@dataclass(frozen=True)
class ReconcileSettings:
    #: Per-asset tolerance in minor units (fee dust); absent = 0 (exact).
    tolerances_minor: Mapping[str, int] = field(default_factory=dict)
    #: Known receivables per asset that count towards reserves (e.g. funds in transit between wallets).
    receivables_minor: Mapping[str, int] = field(default_factory=dict)
    #: How a `custody:<wallet>:<asset>` balance maps to coins held: +1 = credit-normal (the custody
    #: flows credit it when a deposit is credited and debit it when a withdrawal settles; holdings =
    #: credits - debits), -1 = debit-normal.
    custody_balance_sign: int = 1
    deposit_transfer_code: int = DEPOSIT_TRANSFER_CODE
    #: Internal mismatches must persist across this many reads taken while the engine is quiet.
    confirm_reads: int = 2
    confirm_wait_ms: int = 50

    def __post_init__(self) -> None:
        if self.custody_balance_sign not in (1, -1):
            raise ValidationError("custody_balance_sign must be 1 or -1", field="custody_balance_sign")
        for name in ("tolerances_minor", "receivables_minor"):
            for asset, value in getattr(self, name).items():
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise ValidationError(f"{name}[{asset}] must be a non-negative integer", field=name)
        if not 1 <= self.confirm_reads <= 10:
            raise ValidationError("confirm_reads must be between 1 and 10", field="confirm_reads")

    def tolerance(self, asset: str) -> int:
        return self.tolerances_minor.get(asset, 0)


class CustodyView(Protocol):
    """What the custody flows tell reconciliation (see branch `custody`)."""

    def in_flight_withdrawals(self, asset: str, wallet: str) -> int:
        """Minor units of withdrawals from `wallet` that may have left the chain but are not yet
        debited from its custody account (signed/broadcast, unsettled), fees included."""
        ...

    def pending_deposits(self, asset: str, wallet: str) -> int:
        """Minor units of deposits to `wallet` seen on chain but not yet credited (below finality)."""
        ...


@dataclass(frozen=True)
class WalletSpec:
    wallet: str
    asset: str
    chain: str
    adapter: Any  # a ChainAdapter
    addresses: tuple[str, ...]


def custody_wallet_specs(custody: Any, adapters: Mapping[str, Any], assets_by_chain: Mapping[str, Sequence[str]]) -> list[WalletSpec]:
    """Wallet specs from the custody component (branch `custody`): every registered wallet with its
    own addresses plus the user deposit addresses assigned to it, once per asset of its chain."""
    deposit: dict[str, list[str]] = {}
    for _key, (_account, wallet, address) in sorted(getattr(custody, "deposit_addresses", {}).items()):
        deposit.setdefault(wallet, []).append(address)
    specs = []
    for w in sorted(custody.wallets.values(), key=lambda w: w.name):
        if w.chain not in adapters:
            continue
        addresses = tuple(sorted(set(w.addresses) | set(deposit.get(w.name, ()))))
        for asset in assets_by_chain.get(w.chain, ()):
            specs.append(WalletSpec(w.name, asset, w.chain, adapters[w.chain], addresses))
    return specs


# ----------------------------------------------------------------------------------------- mismatch


@dataclass(frozen=True)
class Mismatch:
    kind: str
    scope: str
    subject: str
    expected_minor: int
    actual_minor: int
    details: Mapping[str, Any] = field(default_factory=dict)
    #: A chain mismatch's occurrence (`Reconciler.chain_pass`): the engine sequence of the pass that first
    #: saw it since that wallet was last seen whole; 0 for the checks that have none (the halt id omits it)
    occurrence: int = 0

    @property
    def rule(self) -> Rule:
        return RULES[self.kind]

    @property
    def delta_minor(self) -> int:
        return self.actual_minor - self.expected_minor

    def evidence(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "scope_kind": self.rule.scope_kind,
            "scope": self.scope,
            "subject": self.subject,
            "expected_minor": str(self.expected_minor),
            "actual_minor": str(self.actual_minor),
            "delta_minor": str(self.delta_minor),
            "details": dict(self.details),
            **({"occurrence": self.occurrence} if self.occurrence else {}),
        }

    def evidence_json(self) -> str:
        return json.dumps(self.evidence(), sort_keys=True, separators=(",", ":"), default=str)

    @property
    def halt_id(self) -> str:
        """Deterministic from the stable part of the evidence (not the block height it was seen at) and
        the occurrence (a chain mismatch's: the same amounts missing again later are another halt)."""
        parts = [self.kind, self.rule.scope_kind, self.scope, self.subject, str(self.expected_minor), str(self.actual_minor)]
        stable = json.dumps(parts + [self.occurrence] if self.occurrence else parts, separators=(",", ":"))
        return f"rc.{self.kind}.{hashlib.sha256(stable.encode()).hexdigest()[:16]}"

    def halt_command(self) -> Halt | None:
        rule = self.rule
        if rule.level is None:
            return None
        reason = f"{rule.description}: {self.subject} expected {self.expected_minor}, found {self.actual_minor}"
        return Halt(self.halt_id, rule.scope_kind, self.scope, rule.level, reason[:500], self.evidence_json())


# ----------------------------------------------------------------------------------------- chain


@dataclass(frozen=True)
class ChainRow:
    wallet: str
    asset: str
    chain: str
    height: int
    chain_minor: int
    ledger_minor: int
    in_flight_minor: int
    pending_minor: int
    tolerance_minor: int

    @property
    def status(self) -> str:
        # Deposits below finality widen both sides: uncredited ones are on chain but not in the
        # ledger; credited ones may be reorged off the chain before the watcher reverses them.
        if self.chain_minor < self.ledger_minor - self.in_flight_minor - self.pending_minor - self.tolerance_minor:
            return "SHORTFALL"
        if self.chain_minor > self.ledger_minor + self.pending_minor + self.tolerance_minor:
            return "SURPLUS"
        return "OK"


class _PostedTotals(NamedTuple):
    """A read-only copy of one account's posted totals (shaped like the ledger's `Account` for
    `custody_holdings`); immutable, so it can never be mistaken for a live balance to write."""

    credits_posted: int
    debits_posted: int


class _CustodyAccounts:
    """A copy of the custody accounts' posted totals, taken between batches; answers `find` like
    the ledger for `custody_holdings`, so the chain check never touches live engine objects."""

    def __init__(self, accounts: Mapping[tuple[str, str], tuple[int, int]]) -> None:
        self._accounts = dict(accounts)

    def find(self, owner: str, asset: str, kind: str = "available", segment: str = "spot") -> _PostedTotals | None:
        assert owner == SYSTEM_OWNER and kind == "custody", "only custody accounts are copied"
        totals = self._accounts.get((asset, segment))
        return None if totals is None else _PostedTotals(*totals)


class _CustodyFigures:
    """A copy of what the custody flows said (in flight, pending) at the same moment."""

    def __init__(self, figures: Mapping[tuple[str, str], tuple[int, int]]) -> None:
        self._figures = dict(figures)

    def in_flight_withdrawals(self, asset: str, wallet: str) -> int:
        return self._figures[(asset, wallet)][0]

    def pending_deposits(self, asset: str, wallet: str) -> int:
        return self._figures[(asset, wallet)][1]


def custody_holdings(ledger: Any, asset: str, wallet: str, sign: int) -> int:
    account = ledger.find(SYSTEM_OWNER, asset, "custody", wallet)
    return 0 if account is None else sign * (account.credits_posted - account.debits_posted)


def reconcile_chain(
    ledger: Any,
    wallets: Sequence[WalletSpec],
    custody: CustodyView,
    settings: ReconcileSettings,
    heights: Mapping[str, int] | None = None,
    pace: Callable[[], None] | None = None,
    known_halts: Collection[str] = (),
    occurrence: Callable[[str, str, int, int], int] | None = None,
) -> tuple[list[ChainRow], list[Mismatch]]:
    """Compare every wallet's on-chain balance at one height per chain with its custody account.

    Every balance is read at one height per chain: `heights[chain]`, or for a chain not in it, its
    tip when the call starts (every chain's, before the first read). A caller that pauses (`pace`)
    passes the heights it took together with the engine's figures (`Reconciler.chain_pass`), so a
    block mined, a withdrawal broadcast or a deposit seen during a pause is in neither.

    `pace` is called between two balance reads (a paced pass pauses there: one read of an in-process
    chain is a few ms of CPU, a wallet of many addresses a long burst otherwise), never once a
    mismatch was found: the rest of the read runs without a pause (the caller's pauses free the chain
    lock, which the response to a shortfall keeps until the halt is submitted). A shortfall whose halt is
    in `known_halts` (the halt is active already, or operators lifted it by quorum: `Reconciler._respond`
    raises it no more) stops no pause: the response submits nothing for it, and holding the lock would
    only make every pass while it lasts one unpaced burst. `occurrence(kind, subject, expected, actual)`
    names each mismatch's occurrence (`Reconciler.chain_pass`); without it, 0."""
    rows: list[ChainRow] = []
    mismatches: list[Mismatch] = []
    tips: dict[int, int] = {}
    for spec in wallets:
        key = id(spec.adapter)
        if key not in tips:
            tips[key] = heights[spec.chain] if heights and spec.chain in heights else spec.adapter.current_height()
    first = True
    halting = False  # a mismatch found that would halt (a surplus only records an incident): no more pauses
    for spec in wallets:
        height = tips[id(spec.adapter)]
        chain_minor = 0
        for address in spec.addresses:
            if pace is not None and not first and not halting:
                pace()
            first = False
            chain_minor += _balance(spec.adapter, address, height, spec.asset)
        row = ChainRow(
            spec.wallet, spec.asset, spec.chain, height, chain_minor,
            custody_holdings(ledger, spec.asset, spec.wallet, settings.custody_balance_sign),
            custody.in_flight_withdrawals(spec.asset, spec.wallet),
            custody.pending_deposits(spec.asset, spec.wallet),
            settings.tolerance(spec.asset),
        )
        rows.append(row)
        status = row.status
        if status == "OK":
            continue
        details = {
            "wallet": spec.wallet, "chain": spec.chain, "height": height,
            "block_hash": _block_hash(spec.adapter, height),
            "addresses": list(spec.addresses[:MAX_EVIDENCE_ITEMS]), "address_count": len(spec.addresses),
            "in_flight_withdrawals_minor": str(row.in_flight_minor), "pending_deposits_minor": str(row.pending_minor),
            "tolerance_minor": str(row.tolerance_minor),
        }
        kind = "hot_wallet_shortfall" if status == "SHORTFALL" else "hot_wallet_surplus"
        subject = f"custody:{spec.wallet}:{spec.asset}"
        since = occurrence(kind, subject, row.ledger_minor, chain_minor) if occurrence is not None else 0
        mismatch = Mismatch(kind, spec.asset, subject, row.ledger_minor, chain_minor, details, since)
        mismatches.append(mismatch)
        halting = halting or _halts_anew(mismatch, known_halts)
    return rows, mismatches


def _halts_anew(mismatch: Mismatch, known_halts: Collection[str]) -> bool:
    """Would the response submit a halt for `mismatch`? (It would halt, and its halt is neither active
    nor lifted by quorum already.)"""
    return mismatch.rule.level is not None and mismatch.halt_id not in known_halts


def _balance(adapter: Any, address: str, height: int, asset: str) -> int:
    try:
        return int(adapter.balance(address, height, asset))
    except TypeError:  # adapters of one asset may not take `asset`
        return int(adapter.balance(address, height))


def _block_hash(adapter: Any, height: int) -> str:
    try:
        return str(adapter.block_hash(height))
    except Exception:  # evidence only; a missing hash must not hide the mismatch
        return ""


# ----------------------------------------------------------------------------------------- shadow book


class ShadowBook:
    """An independent balance model folded from journaled commands and their result events.

    Plain dicts keyed by account id; no `Ledger` code. `balance[id]` is credits minus debits
    posted; `held[id]` is what pending transfers reserve on the debit side (open-order holds and
    withdrawal holds made with client transfers).
    """

    def __init__(self) -> None:
        self.balance: dict[int, int] = {}
        self.held: dict[int, int] = {}
        self.pending: dict[int, list[int]] = {}  # id -> [debit, credit, remaining]
        self.deposit_keys: dict[tuple[str, str], int] = {}
        self.duplicates: list[dict[str, Any]] = []
        self.markets: dict[str, tuple[str, str, str]] = {}
        self.trading_owners: set[str] = set()
        self.unmodelled: dict[str, int] = {}
        #: Perpetual markets (derivatives/) -> their margin asset. Their fills are folded from the
        #: `PositionChanged` events (realised PnL through the market's PnL pool, the loss the insurance
        #: fund covered, the fee and its insurance tenth), not as spot fills; funding rounds from
        #: `FundingSettled`. Margin posted and released moves between a user's own derivatives
        #: accounts (wallet, `margin`, `isolated`), so those are folded, and compared, as one figure
        #: per (owner, asset), kept on the wallet's id (`derivatives_wallets`).
        self.perps: dict[str, str] = {}
        #: account id of a user's derivatives wallet -> ids of that owner's derivatives accounts in the asset
        self.derivatives_wallets: dict[int, set[int]] = {}

    def add(self, aid: int, amount: int) -> None:
        self.balance[aid] = self.balance.get(aid, 0) + amount

    def unmodelled_once(self, what: str) -> None:
        self.unmodelled[what] = self.unmodelled.get(what, 0) + 1

    def post(self, debit: int, credit: int, amount: int) -> None:
        b = self.balance
        b[debit] = b.get(debit, 0) - amount
        b[credit] = b.get(credit, 0) + amount

    def reserve(self, tid: int, debit: int, credit: int, amount: int) -> None:
        self.held[debit] = self.held.get(debit, 0) + amount
        self.pending[tid] = [debit, credit, amount]

    def capture(self, tid: int, amount: int) -> None:
        p = self.pending[tid]
        amount = amount or p[2]
        self.held[p[0]] -= amount
        p[2] -= amount
        self.post(p[0], p[1], amount)

    def release(self, tid: int, amount: int | None = None) -> None:
        p = self.pending.get(tid)
        if p is None:
            return
        amount = p[2] if amount is None else amount
        self.held[p[0]] -= amount
        p[2] -= amount

    def note_deposit(self, key: tuple[str, str], seq: int, where: str) -> None:
        first = self.deposit_keys.get(key)
        if first is None:
            self.deposit_keys[key] = seq
        elif len(self.duplicates) < MAX_MISMATCHES:
            self.duplicates.append({"asset": key[0], "deposit": key[1], "first_seq": first, "again_seq": seq, "via": where})


_MODELLED = {
    # no money moves (or moves only through events folded below)
    "RegisterAsset", "RegisterSegment", "OpenAccount", "Halt", "LiftHalt", "RegisterOperators",
    "LiftHaltSigned", "RaiseHaltSigned", "StaffGenesis", "AddStaff", "RemoveStaff",
    "ListMarket", "SetMarketStatus", "SetReferencePrice", "SetFeeTier", "SetAccountFeeTier",
    # their signed forms (trading/staff_cmds.py); a delisting only ends holds (OrderCanceled)
    "ListMarketSigned", "DelistMarketSigned", "SetReferencePriceSigned", "SetFeeTierSigned", "SetAccountFeeTierSigned",
    "RegisterAssetSigned",
    "CreateTransfers", "PlaceOrder", "CancelOrder", "CancelAll", "AmendOrder", "TradingBatch",
    # the index (index/): feed keys, parameters, quotes and overrides move no money
    "RegisterFeedKey", "ConfigureIndex", "SubmitQuote", "OverrideReferencePrice",
    # perpetuals (derivatives/): listing and settings move no money; leverage, isolated margin and
    # a reducing order's borrowed hold move it between one owner's own derivatives accounts (one
    # figure here); orders and liquidation steps move it through the events folded in `_fold`
    "ListPerpetual", "FuturesTransfer", "SetLeverage", "SetMarginType", "AdjustIsolatedMargin", "PlacePerpOrder",
    "LiquidateAccount", "LiquidatePosition",
    # custody and policy configuration: wallets, addresses and rules move no money
    "ConfigureCustodyAsset", "RegisterWallet", "AssignDepositAddress", "ProposePolicySigned", "ApprovePolicySigned",
    "ActivatePolicy",
}


#: Folds for other domains' commands: `fn(fold, command, events, seq)` moves the shadow book the
#: way the command moved the ledger (the custody flows register theirs). Commands with neither a
#: fold nor an entry in `_MODELLED` make the shadow per-account check stand down (the replay check
#: still runs) rather than raise a false halt.
FOLDS: dict[str, Callable[["JournalFold", Any, list[Any], int], None]] = {}


def register_fold(command_name: str, fn: Callable[["JournalFold", Any, list[Any], int], None]) -> None:
    FOLDS[command_name] = fn


_HEAD = struct.Struct(">4sHHIIQ32s")
_CRC = struct.Struct(">II")


#: `JournalTail` reads a segment this much at a time, and stops at a chunk that is all zeros.
TAIL_READ_CHUNK_BYTES = 1 << 20


class JournalTail:
    """Reads the journal's records from where it stopped last time, verifying each one.

    A second reader of the on-disk format (see `ringfence.journal.journal`): magic, header CRC,
    the hash chain from the last record it verified, sequence continuity and the record hash. A
    record still being written (shorter than its declared length, or in a pre-zeroed segment
    followed by nothing but zeros) ends this read; the next call resumes there; so does the zero
    space after a pre-zeroed segment's last record. A complete record that fails verification with
    data after it is corruption.
    """

    def __init__(self, journal_dir: Path) -> None:
        self.journal_dir = journal_dir
        self.segment: str | None = None
        self.offset = 0
        self.prev_hash = GENESIS_HASH
        self.next_seq = 1

    def read_new(self) -> Iterable[Record]:
        paths = segment_paths(self.journal_dir)
        names = [p.name for p in paths]
        start = names.index(self.segment) if self.segment in names else 0
        if self.segment is not None and self.segment not in names:
            raise JournalCorrupt(f"journal segment {self.segment} disappeared while being reconciled")
        for path in paths[start:]:
            offset = self.offset if path.name == self.segment else 0
            with open(path, "rb") as fh:
                fh.seek(offset)
                chunks: list[bytes] = []
                while chunk := fh.read(TAIL_READ_CHUNK_BYTES):
                    chunks.append(chunk)
                    if chunk.count(0) == len(chunk):  # a pre-zeroed segment's unwritten space (a record's
                        break  # JSON payload has no zero byte): not the rest of its 64 MiB each time
                data = b"".join(chunks)
            data_end = nonzero_end(data)  # beyond it, only the zeros of a pre-zeroed segment
            pos = 0
            while len(data) - pos >= HEADER_SIZE and pos < data_end:
                magic, _version, _flags, length, count, first_seq, prev = _HEAD.unpack_from(data, pos)
                crc, _ = _CRC.unpack_from(data, pos + 56)
                where = f"{path.name}:{offset + pos}"
                if magic != MAGIC or zlib.crc32(data[pos:pos + 56]) != crc or length > MAX_PAYLOAD_BYTES:
                    if data_end - pos < HEADER_SIZE:
                        break  # a header still being written over the zeros
                    raise JournalCorrupt(f"journal record at {where}: bad header")
                end = pos + HEADER_SIZE + length + TRAILER_SIZE
                if end > len(data):
                    break  # still being written
                payload = data[pos + HEADER_SIZE:pos + HEADER_SIZE + length]
                digest = hashlib.sha256(data[pos:pos + 56] + payload).digest()
                if digest != data[end - TRAILER_SIZE:end] and end >= data_end:
                    break  # still being written over the zeros
                if digest != data[end - TRAILER_SIZE:end] or prev != self.prev_hash or first_seq != self.next_seq:
                    raise JournalCorrupt(f"journal record at {where}: hash chain or sequence broken")
                yield Record(first_seq, count, payload, digest, path.name, offset + pos)
                self.prev_hash = digest
                self.next_seq = first_seq + count
                pos = end
                self.segment, self.offset = path.name, offset + pos
            if path.name != self.segment and pos:
                self.segment, self.offset = path.name, offset + pos


class JournalFold:
    """Reads the journal incrementally into a replay engine and a `ShadowBook`.

    `advance()` decodes only records after what it has already folded, so calling it every few
    seconds costs what was appended since. The replay engine starts empty (no snapshot), so it
    depends on nothing the live engine wrote except the journal itself.
    """

    def __init__(
        self, data_dir: Path | str, settings: ReconcileSettings | None = None, modules: Sequence[Module] | None = None
    ) -> None:
        self.data_dir = Path(data_dir)
        self.settings = settings or ReconcileSettings()
        self.engine = Engine(modules) if modules is not None else new_engine()
        self.book = ShadowBook()
        self.last_seq = 0
        self.tail = JournalTail(self.data_dir / "journal")
        self._index = AccountIndex()
        self._view: LiveView | None = None

    def view(self) -> LiveView:
        """The replay engine's balances, read once per sequence number folded."""
        if self._view is None or self._view.last_seq != self.last_seq:
            self._view = read_live(self.engine, self._index)
        return self._view

    def advance(self, progress: Callable[[int], None] | None = None, until_seq: int | None = None,
                tick: Callable[[], None] | None = None) -> int:
        """Fold every record after `last_seq` (with `until_seq`, only the records that end at or
        before it: the live engine's batch boundary); returns how many commands were folded.
        `progress(n)` is called after each record of n commands, `tick()` after every command (a
        paced fold pauses there: a record is a whole batch, dozens of orders when the engine is
        busy, and a pause only between records let one record be a burst of many ms)."""
        engine = self.engine
        decoder = engine.codec.batch
        folded = 0
        for record in self.tail.read_new():
            if until_seq is not None and record.first_seq > until_seq:
                break  # the tail resumes at this record next time
            if record.first_seq != self.last_seq + 1:
                raise JournalCorrupt(f"journal record starts at {record.first_seq}; folded up to {self.last_seq}")
            batch = decoder.decode(record.payload)
            for i, command in enumerate(batch.commands):
                seq = batch.first_seq + i
                try:
                    events = engine.apply(command, seq, batch.ts_ns, batch.entropy)
                except ShardHalt as halt:  # the shard halted here too: same rebuild as the node's
                    events = rebuild_halted(self.data_dir, engine, halt)
                self._fold(command, events, seq)
                if tick is not None:
                    tick()
            self.last_seq = record.last_seq
            folded += len(batch.commands)
            if progress is not None:
                progress(len(batch.commands))
        return folded

    # -------------------------------------------------------------- the independent fold

    def _fold(self, command: Any, events: list[Any], seq: int) -> None:
        book = self.book
        name = type(command).__name__
        rejected = any(isinstance(e, CommandRejected) for e in events)
        for ev in events:
            ename = type(ev).__name__
            if ename == "TransferExpired":
                book.release(ev.pending_id, ev.released)
            elif ename == "MarketListed":
                book.markets[ev.symbol] = (ev.base, ev.quote, ev.segment)
            elif ename == "PerpetualListed":
                book.perps[ev.symbol] = ev.quote
            elif ename == "Trade":
                if ev.symbol not in book.perps:  # a perpetual's fill: its PositionChanged events
                    self._fold_trade(ev)
            elif ename == "PositionChanged":
                self._fold_position(ev)
            elif ename == "FundingSettled":
                self._fold_funding(ev)
            elif ename == "FuturesTransferred":
                self._fold_futures_transfer(ev)
            elif ename == "LiquidationStep" and ev.advance_kept:
                # a bankrupt account kept (part of) the unit the insurance fund advanced for its
                # step's order (its fills are folded from their PositionChanged events)
                quote = book.perps[ev.symbol]
                book.add(self._derivatives_wallet(ev.owner, quote), ev.advance_kept)
                book.add(self._system(quote, "insurance"), -ev.advance_kept)
            elif ename in ("OrderAccepted",):
                book.trading_owners.add(ev.owner)
        if rejected:
            return
        if "Deposit" in name and "Credit" in name:
            txid, index = getattr(command, "txid", None), getattr(command, "index", None)
            if txid is not None:
                book.note_deposit((self._deposit_asset(command), f"{txid}:{index}"), seq, name)
        fold = FOLDS.get(name)
        if fold is not None:
            fold(self, command, events, seq)
        elif name == "CreateTransfers":
            failed = set()
            for ev in events:
                if type(ev).__name__ == "TransfersCreated":
                    failed = {i for i, _ in ev.failures}
            for i, t in enumerate(command.transfers):
                if i not in failed:
                    self._fold_transfer(t, seq)
        elif name not in _MODELLED:
            book.unmodelled[name] = book.unmodelled.get(name, 0) + 1

    def _deposit_asset(self, command: Any) -> str:
        """The asset of a deposit credit: its `asset` field, or the custody component's record of
        the deposit (`chain:txid:index`), or the chain name as a last resort (still a valid scope)."""
        asset = getattr(command, "asset", None)
        if isinstance(asset, str) and asset:
            return asset
        custody = self.engine.components.get("custody")
        deposits = getattr(custody, "deposits", None)
        chain = str(getattr(command, "chain", "") or "unknown")
        if isinstance(deposits, dict):
            rec = deposits.get(f"{chain}:{command.txid}:{command.index}")
            if rec is not None and getattr(rec, "asset", None):
                return str(rec.asset)
        return chain

    def _fold_transfer(self, t: Any, seq: int) -> None:
        book = self.book
        flags = t.flags
        if flags & TransferFlags.POST_PENDING:
            book.capture(t.pending_id, t.amount)
        elif flags & TransferFlags.VOID_PENDING:
            book.release(t.pending_id)
        elif flags & TransferFlags.PENDING:
            book.reserve(t.id, t.debit_account_id, t.credit_account_id, t.amount)
        else:
            book.post(t.debit_account_id, t.credit_account_id, t.amount)
        if t.code == self.settings.deposit_transfer_code and t.user_data and not flags & TransferFlags.VOID_PENDING:
            asset = self.engine.ledger.account(t.credit_account_id).asset
            book.note_deposit((asset, f"{t.user_data:x}"), seq, "CreateTransfers")

    # -------------------------------------------------------------- perpetuals

    def _derivatives_wallet(self, owner: str, asset: str) -> int:
        """The id the shadow keeps `owner`'s derivatives money in `asset` on (wallet + margin +
        isolated), remembering which live accounts make up that figure."""
        find = self.engine.ledger.find  # name -> id only; balances come from the fold
        w = find(owner, asset, "available", "derivatives")
        assert w is not None, f"{owner} has no derivatives wallet in {asset}"
        ids = self.book.derivatives_wallets.setdefault(w.id, {w.id})
        for kind in ("margin", "isolated"):
            a = find(owner, asset, kind, "derivatives")
            if a is not None:
                ids.add(a.id)
        return int(w.id)

    def _system(self, asset: str, kind: str) -> int:
        a = self.engine.ledger.find(SYSTEM_OWNER, asset, kind, "derivatives")
        assert a is not None, f"no derivatives {kind} account in {asset}"
        return int(a.id)

    def _fold_futures_transfer(self, ev: Any) -> None:
        spot = self.engine.ledger.find(ev.owner, ev.asset, "available", "spot")
        assert spot is not None, f"{ev.owner} has no spot wallet in {ev.asset}"
        wallet = self._derivatives_wallet(ev.owner, ev.asset)
        if ev.direction == "MAIN_UMFUTURE":
            self.book.post(spot.id, wallet, ev.amount)
        else:
            self.book.post(wallet, spot.id, ev.amount)

    def _fold_position(self, ev: Any) -> None:
        """One side of a perpetual fill: the realised PnL through the market's PnL pool (a loss the
        owner could not pay, `insurance_covered`, from the insurance fund), then the fee, a tenth
        (rounded down) of it to the insurance fund. The margin posted again stays the owner's."""
        book = self.book
        quote = book.perps[ev.symbol]
        wallet = self._derivatives_wallet(ev.owner, quote)
        pool = self._system(quote, "pnl_" + ev.symbol.lower())
        insurance, fees = self._system(quote, "insurance"), self._system(quote, "fees")
        book.add(pool, -ev.realized_pnl)
        book.add(insurance, -ev.insurance_covered + ev.fee // 10)
        book.add(fees, ev.fee - ev.fee // 10)
        book.add(wallet, ev.realized_pnl + ev.insurance_covered - ev.fee)

    def _fold_funding(self, ev: Any) -> None:
        """A funding round: each owner's amount (negative: paid) less what the insurance fund paid
        for it (`covered[i]`: a payer who had less than its due), and the rounding dust to the
        insurance fund."""
        book = self.book
        quote = book.perps[ev.symbol]
        covered = list(ev.covered) or [0] * len(ev.owners)
        if len(covered) != len(ev.owners) or sum(covered) != ev.insurance_covered:
            book.unmodelled_once("FundingSettled")  # not the shape this fold knows: replay check only
            return
        for owner, amount, cover in zip(ev.owners, ev.amounts, covered):
            book.add(self._derivatives_wallet(owner, quote), amount + cover)
        book.add(self._system(quote, "insurance"), ev.to_insurance - ev.insurance_covered)

    def _fold_trade(self, ev: Any) -> None:
        book = self.book
        base, quote, segment = book.markets[ev.symbol]
        find = self.engine.ledger.find  # name -> id only; balances come from the fold
        taker_buys = ev.taker_side == "BUY"
        buyer, seller = (ev.taker_owner, ev.maker_owner) if taker_buys else (ev.maker_owner, ev.taker_owner)
        b_fee, s_fee = (ev.taker_fee, ev.maker_fee) if taker_buys else (ev.maker_fee, ev.taker_fee)
        q, n = ev.quantity, ev.quote_qty
        book.trading_owners.update((buyer, seller))

        def acc(owner: str, asset: str, kind: str = "available", seg: str = segment) -> int:
            a = find(owner, asset, kind, seg)
            assert a is not None, f"trade {ev.trade_id} names an account that does not exist"
            return a.id

        bal = book.balance
        for aid, delta in (
            (acc(buyer, quote), -n), (acc(buyer, base), q - b_fee),
            (acc(seller, base), -q), (acc(seller, quote), n - s_fee),
            (acc(SYSTEM_OWNER, base, "fees"), b_fee - b_fee // 10), (acc(SYSTEM_OWNER, base, "insurance"), b_fee // 10),
            (acc(SYSTEM_OWNER, quote, "fees"), s_fee - s_fee // 10), (acc(SYSTEM_OWNER, quote, "insurance"), s_fee // 10),
        ):
            bal[aid] = bal.get(aid, 0) + delta


# ----------------------------------------------------------------------------------------- internal


class AccountIndex:
    """Who each account is, and account ids grouped per asset; grown as accounts are opened.

    Account identity never changes after opening, so this is built once and extended, not rebuilt
    on every pass (it is most of the cost of a pass otherwise)."""

    def __init__(self) -> None:
        self.meta: list[tuple[str, str, str, str]] = [("", "", "", "")]  # (owner, asset, kind, segment)
        self.by_asset: dict[str, list[int]] = {}
        self.users: dict[str, list[int]] = {}
        self.custody: dict[str, list[int]] = {}

    def extend(self, ledger: Any) -> None:
        accounts = ledger.accounts
        for aid in range(len(self.meta), len(accounts)):
            a = accounts[aid]
            meta = (a.owner, a.asset, a.kind, a.segment)
            self.meta.append(meta)
            self.by_asset.setdefault(a.asset, []).append(aid)
            if a.owner != SYSTEM_OWNER:
                self.users.setdefault(a.asset, []).append(aid)
            elif a.kind == "custody":
                self.custody.setdefault(a.asset, []).append(aid)


@dataclass
class LiveView:
    """Balances and holds of an engine read at one sequence number, indexed by account id."""

    last_seq: int
    balance: list[int]
    held: list[int]
    credits_pending: list[int]
    index: AccountIndex

    @property
    def meta(self) -> list[tuple[str, str, str, str]]:
        return self.index.meta


def read_live(engine: Engine, index: AccountIndex | None = None) -> LiveView:
    index = index or AccountIndex()
    ledger = engine.ledger
    last_seq = engine.last_seq
    accounts = ledger.accounts[1:]
    index.extend(ledger)
    # map + attrgetter keeps the per-account loop in C: about twice as fast as comprehensions
    balance = [0]
    balance.extend(map(operator.sub, map(_CREDITS_POSTED, accounts), map(_DEBITS_POSTED, accounts)))
    held = [0]
    held.extend(map(_DEBITS_PENDING, accounts))
    credits_pending = [0]
    credits_pending.extend(map(_CREDITS_PENDING, accounts))
    return LiveView(last_seq, balance, held, credits_pending, index)


_CREDITS_POSTED = operator.attrgetter("credits_posted")
_DEBITS_POSTED = operator.attrgetter("debits_posted")
_DEBITS_PENDING = operator.attrgetter("debits_pending")
_CREDITS_PENDING = operator.attrgetter("credits_pending")


def _kind_for_account(meta: tuple[str, str, str, str]) -> tuple[str, str]:
    owner, asset, kind, segment = meta
    if owner == SYSTEM_OWNER and kind == "fees":
        return "fees_mismatch", segment
    if owner == SYSTEM_OWNER and kind == "insurance":
        return "shield_mismatch", segment
    if owner == SYSTEM_OWNER and kind == "world":
        return "world_mismatch", asset
    return "engine_journal_mismatch", "*"


def _name(meta: tuple[str, str, str, str]) -> str:
    owner, asset, kind, segment = meta
    return f"{owner}:{asset}:{kind}:{segment}"


def reconcile_internal(
    live: LiveView,
    fold: JournalFold,
    settings: ReconcileSettings,
    reserves_minor: Mapping[str, int] | None = None,
) -> list[Mismatch]:
    """Compare the live view with the replay engine and the shadow book (both at `live.last_seq`)."""
    if fold.last_seq != live.last_seq:
        raise ValidationError(
            f"the fold is at sequence {fold.last_seq} but the live view at {live.last_seq}; advance first",
            field="last_seq",
        )
    out: list[Mismatch] = []
    replay = fold.view()
    n = len(live.balance)
    if len(replay.balance) != n:
        out.append(Mismatch("engine_journal_mismatch", "*", "account_count", len(replay.balance) - 1, n - 1, {}))
    # (1) the replay engine (Ledger code, fresh instance, journal only) vs live memory
    if replay.balance != live.balance or replay.held != live.held or replay.credits_pending != live.credits_pending:
        for aid in range(1, min(n, len(replay.balance))):
            for what, a, b in (("balance", replay.balance, live.balance), ("held", replay.held, live.held),
                               ("credits_pending", replay.credits_pending, live.credits_pending)):
                if a[aid] != b[aid] and len(out) < MAX_MISMATCHES:
                    kind, scope = _kind_for_account(live.meta[aid])
                    out.append(Mismatch(kind, scope, _name(live.meta[aid]), a[aid], b[aid],
                                        {"field": what, "account_id": aid, "path": "replay", "seq": live.last_seq}))
    # (2) the shadow book (independent fold) vs live memory
    book = fold.book
    modelled_all = not book.unmodelled
    shadow_balance = list(map(book.balance.get, range(n), repeat(0, n)))
    shadow_balance[0] = 0
    # A user's derivatives wallet, margin and isolated accounts are one figure (on the wallet's id).
    live_balance = live.balance
    if book.derivatives_wallets:
        live_balance = list(live.balance)
        for wallet, ids in book.derivatives_wallets.items():
            for aid in ids:
                if aid != wallet and aid < n:
                    live_balance[wallet] += live_balance[aid]
                    live_balance[aid] = 0
                    shadow_balance[wallet] += shadow_balance[aid]
                    shadow_balance[aid] = 0
    if modelled_all and shadow_balance != live_balance:
        for aid in range(1, n):
            if shadow_balance[aid] != live_balance[aid] and len(out) < MAX_MISMATCHES:
                if aid in book.derivatives_wallets:
                    owner, asset, _, _ = live.meta[aid]
                    out.append(Mismatch("engine_journal_mismatch", "*", f"{owner}:{asset}:derivatives(wallet+margin)",
                                        shadow_balance[aid], live_balance[aid],
                                        {"field": "balance", "account_id": aid, "path": "shadow", "seq": live.last_seq,
                                         "accounts": sorted(book.derivatives_wallets[aid])}))
                    continue
                kind, scope = _kind_for_account(live.meta[aid])
                out.append(Mismatch(kind, scope, _name(live.meta[aid]), shadow_balance[aid], live_balance[aid],
                                    {"field": "balance", "account_id": aid, "path": "shadow", "seq": live.last_seq}))
    if modelled_all:
        traders = book.trading_owners
        for aid in range(1, n):
            if live.meta[aid][0] in traders:
                continue  # open-order holds are engine-made; the replay comparison covers them
            if book.held.get(aid, 0) != live.held[aid] and len(out) < MAX_MISMATCHES:
                out.append(Mismatch("engine_journal_mismatch", "*", _name(live.meta[aid]), book.held.get(aid, 0),
                                    live.held[aid], {"field": "held", "account_id": aid, "path": "shadow", "seq": live.last_seq}))
    # (3) zero sum per asset, liabilities vs reserves
    index = live.index
    get = live.balance.__getitem__
    sums = {asset: sum(map(get, ids)) for asset, ids in index.by_asset.items()}
    users = {asset: sum(map(get, ids)) for asset, ids in index.users.items()}
    custody = {asset: settings.custody_balance_sign * sum(map(get, ids)) for asset, ids in index.custody.items()}
    for asset, total in sorted(sums.items()):
        if total != 0:
            out.append(Mismatch("ledger_not_zero_sum", "*", f"asset:{asset}", 0, total, {"asset": asset}))
    for asset, liabilities in sorted(users.items()):
        if asset not in custody and asset not in (reserves_minor or {}):
            continue  # no wallet holds this asset yet: nothing to compare with (see docs/reconcile.md)
        held = (reserves_minor or {}).get(asset, custody.get(asset, 0))
        receivable = settings.receivables_minor.get(asset, 0)
        if liabilities > held + receivable + settings.tolerance(asset):
            out.append(Mismatch("liabilities_exceed_reserves", asset, f"liabilities:{asset}", held + receivable, liabilities,
                                {"custody_minor": str(held), "receivables_minor": str(receivable),
                                 "source": "chain" if reserves_minor and asset in reserves_minor else "ledger"}))
    # (4) the same deposit credited twice
    for dup in book.duplicates:
        out.append(Mismatch("duplicate_credit", dup["asset"], f"deposit:{dup['deposit']}", 1, 2, dup))
    return out[:MAX_MISMATCHES]


# ----------------------------------------------------------------------------------------- incidents


class IncidentStore:
    """One SQLite file under the data dir: an incident per mismatch (upserted by halt id) and runs."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        with self._connect() as db:
            db.executescript(
                """
                CREATE TABLE IF NOT EXISTS incidents (
                  halt_id TEXT PRIMARY KEY, kind TEXT NOT NULL, scope_kind TEXT NOT NULL, scope TEXT NOT NULL,
                  level TEXT, subject TEXT NOT NULL, expected_minor TEXT NOT NULL, actual_minor TEXT NOT NULL,
                  first_seen_ms INTEGER NOT NULL, last_seen_ms INTEGER NOT NULL, seen_count INTEGER NOT NULL,
                  action TEXT NOT NULL, evidence TEXT NOT NULL);
                CREATE TABLE IF NOT EXISTS runs (
                  id INTEGER PRIMARY KEY AUTOINCREMENT, at_ms INTEGER NOT NULL, duration_ms INTEGER NOT NULL,
                  seq INTEGER NOT NULL, wallets INTEGER NOT NULL, accounts INTEGER NOT NULL,
                  mismatches INTEGER NOT NULL, notes TEXT NOT NULL);
                CREATE TABLE IF NOT EXISTS chain_occurrences (
                  id INTEGER PRIMARY KEY CHECK (id = 1), doc TEXT NOT NULL);
                """
            )

    def load_occurrences(self) -> str | None:
        """The chain mismatches' occurrences as of the last completed chain pass (`Reconciler._occurrence`),
        as saved; None if no chain pass ever completed here."""
        with self._connect() as db:
            row = db.execute("SELECT doc FROM chain_occurrences WHERE id = 1").fetchone()
        return None if row is None else str(row[0])

    def save_occurrences(self, doc: str) -> None:
        with self._lock, self._connect() as db:
            db.execute("INSERT INTO chain_occurrences VALUES (1, ?) ON CONFLICT(id) DO UPDATE SET doc=excluded.doc", (doc,))

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=5)

    def record(self, m: Mismatch, action: str, now_ms: int) -> None:
        rule = m.rule
        with self._lock, self._connect() as db:
            db.execute(
                """INSERT INTO incidents VALUES (?,?,?,?,?,?,?,?,?,?,1,?,?)
                   ON CONFLICT(halt_id) DO UPDATE SET last_seen_ms=excluded.last_seen_ms,
                   seen_count=seen_count+1, action=excluded.action, evidence=excluded.evidence""",
                (m.halt_id, m.kind, rule.scope_kind, m.scope, rule.level, m.subject, str(m.expected_minor),
                 str(m.actual_minor), now_ms, now_ms, action, m.evidence_json()),
            )

    def record_run(self, at_ms: int, duration_ms: int, seq: int, wallets: int, accounts: int, mismatches: int, notes: str) -> None:
        with self._lock, self._connect() as db:
            db.execute("INSERT INTO runs (at_ms,duration_ms,seq,wallets,accounts,mismatches,notes) VALUES (?,?,?,?,?,?,?)",
                       (at_ms, duration_ms, seq, wallets, accounts, mismatches, notes))
            db.execute("DELETE FROM runs WHERE id <= (SELECT MAX(id) FROM runs) - 10000")

    def incidents(self, limit: int = 100) -> list[dict[str, Any]]:
        with self._connect() as db:
            db.row_factory = sqlite3.Row
            rows = db.execute("SELECT * FROM incidents ORDER BY last_seen_ms DESC, halt_id LIMIT ?", (limit,)).fetchall()
        return [dict(r) for r in rows]

    def runs(self, limit: int = 20) -> list[dict[str, Any]]:
        with self._connect() as db:
            db.row_factory = sqlite3.Row
            rows = db.execute("SELECT * FROM runs ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [dict(r) for r in rows]


# ----------------------------------------------------------------------------------------- worker


@dataclass
class RunReport:
    seq: int
    chain_rows: list[ChainRow]
    mismatches: list[Mismatch]
    halts_submitted: list[str]
    halts_already_active: list[str]
    acknowledged: list[str]
    accounts_checked: int
    duration_ms: int
    notes: list[str]


def _confirm_key(m: Mismatch) -> tuple[Any, ...]:
    return (m.kind, m.scope, m.subject, m.details.get("field"), m.details.get("path"), m.delta_minor)



@dataclass
class _Run:
    """One occurrence of a wallet's chain mismatch (`Reconciler._occurrence`): its number, and the
    occurrence each pair of amounts seen in it named (an active halt's, or its own)."""

    occurrence: int
    halts: dict[tuple[int, int], int]


def _runs_doc(runs: Mapping[tuple[str, str], _Run]) -> str:
    """`Reconciler._runs` as saved in the incident store (amounts as decimal strings)."""
    return json.dumps([{"kind": kind, "subject": subject, "occurrence": run.occurrence,
                        "halts": [[str(e), str(a), occ] for (e, a), occ in sorted(run.halts.items())]}
                       for (kind, subject), run in sorted(runs.items())], separators=(",", ":"))


def _runs_of(doc: str) -> dict[tuple[str, str], _Run]:
    out: dict[tuple[str, str], _Run] = {}
    for item in json.loads(doc):
        out[(str(item["kind"]), str(item["subject"]))] = _Run(
            int(item["occurrence"]), {(int(e), int(a)): int(occ) for e, a, occ in item["halts"]})
    return out


class _HaltedOccurrences(NamedTuple):
    """The chain mismatches halted already, by their evidence (kind, subject, expected, actual), with the
    occurrence each names: those of active halts and of halts lifted by a quorum; and the engine's
    sequence at the read (a new occurrence's number)."""

    seq: int
    active: Mapping[tuple[str, str, int, int], int]
    lifted: Mapping[tuple[str, str, int, int], int]


def _occurrences_of(records: Iterable[Any]) -> dict[tuple[str, str, int, int], int]:
    """(kind, subject, expected, actual) -> occurrence, from the evidence of the reconciler's halts among
    `records` (`HaltRecord`s); a newer halt (raised later) for the same evidence wins."""
    out: dict[tuple[str, str, int, int], int] = {}
    for record in sorted(records, key=lambda r: r.raised_seq):
        if not record.halt_id.startswith("rc."):
            continue
        try:
            doc = json.loads(record.evidence)
            key = (str(doc["kind"]), str(doc["subject"]), int(doc["expected_minor"]), int(doc["actual_minor"]))
            out[key] = int(doc.get("occurrence", 0))
        except (ValueError, KeyError, TypeError):  # not a reconciler's evidence: nothing to take from it
            continue
    return out

class Reconciler:
    """Runs the checks against a live `Node` and halts what disagrees.

    `run_once()` does one chain pass and one internal pass; `run_forever()` polls every chain's
    tip every `poll_ms` (a chain pass on each new block) and runs the internal pass every
    `internal_every_ms`.
    """

    def __init__(
        self,
        node: Any,
        *,
        wallets: Sequence[WalletSpec] = (),
        custody: CustodyView | None = None,
        settings: ReconcileSettings | None = None,
        incidents: IncidentStore | None = None,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        pacer: CpuPacer | None = None,
    ) -> None:
        if wallets and custody is None:
            raise ValidationError("a custody view is needed to reconcile wallets", field="custody")
        self.node = node
        self.wallets = list(wallets)
        self.custody = custody
        self.settings = settings or ReconcileSettings()
        self.incidents = incidents or IncidentStore(Path(node.data_dir) / "reconcile" / "incidents.sqlite")
        self.fold = JournalFold(node.data_dir, self.settings, node.modules)
        self.clock_ms = clock_ms
        self._tips: dict[str, int] = {}
        self._live_index = AccountIndex()
        self.last_report: RunReport | None = None
        #: Internal passes that found the engine too busy to line up with the journal (shown in notes).
        self.unaligned_passes = 0
        self.errors: list[str] = []
        #: In a serving process: the internal pass's share of the GIL while it folds the journal
        #: (ringfence/pacing.py), so a fold never holds up the requests for its whole length.
        #: None: full speed. The chain pass is paced by it too, between two balance reads while it
        #: has found nothing: the custody runtime gives its reconciler a pacer whose pauses release
        #: the chain lock (`pacing.unlocked_sleep`), which the pass runs under.
        self.pacer = pacer
        #: Whether this pass's fold is paced: not while it catches up from far behind (the first
        #: pass after a start folds the journal from genesis: at a tenth of a core that would leave
        #: the exchange without internal reconciliation for minutes), only the few seconds of
        #: journal a pass folds while it keeps up (`PACE_ONLY_WITHIN`).
        self._pacing = True
        #: `run_forever`'s stop event: a fold in progress ends at its next record once it is set.
        self._stopping: threading.Event | None = None
        #: Set when a chain read found a mismatch: no more pauses until the pass has responded
        #: (`run_once`): a pause frees the chain lock, and the withdrawal worker must not sign and
        #: broadcast more of a short asset before its halt is submitted.
        self._holding = False
        #: The occurrence each wallet in mismatch at the last completed chain pass is in, by (kind, subject)
        #: (`_occurrence`): a mismatch of a wallet not in it starts a new one. None before the first completed pass.
        #: Saved in the incident store after each completed chain pass that changed it, so a restarted
        #: reconciler knows which wallets the last pass found whole (a shortfall after that is a new
        #: occurrence, even of amounts a quorum lifted before). None: no chain pass ever completed here.
        self._runs: dict[tuple[str, str], _Run] | None = None
        self._saved_runs = self.incidents.load_occurrences()
        if self._saved_runs is not None:
            try:
                self._runs = _runs_of(self._saved_runs)
            except (ValueError, KeyError, TypeError):  # unreadable: as if no pass completed (the first pass's rule)
                self._saved_runs = None

    def _pace(self, _folded: int = 0) -> None:
        if self._stopping is not None and self._stopping.is_set():
            raise _Stopped
        if self.pacer is not None and self._pacing and not self._holding:
            self.pacer.tick()

    def _pace_command(self) -> None:
        """Between two commands of a record: a pause, never a stop (the record is folded whole)."""
        if (self.pacer is not None and self._pacing and not self._holding
                and not (self._stopping is not None and self._stopping.is_set())):
            self.pacer.tick()

    def _pace_chain(self) -> None:
        if self.pacer is not None and not self._holding:
            self.pacer.tick()

    # -------------------------------------------------------------- passes

    def chain_pass(self) -> tuple[list[ChainRow], list[Mismatch]]:
        """Compare every wallet with the chain; a mismatch must be seen again on a second read.

        The custody view and the ledger are read a moment apart; a withdrawal settling between the
        two reads could look like a shortfall once, never twice with the same amounts.

        Each read takes the engine's figures and then every chain's height, both before its first
        pause (the chain lock is held then: no custody worker moves a chain or the figures between
        the two), and reads every balance at those heights: what the workers do while a pause frees
        the lock (a withdrawal recorded and mined, a deposit seen) is in neither side.

        A read pauses (the lock free) only while it has found nothing to halt: from its first mismatch
        whose halt the response would submit on, the rest of it, the confirming reads and the response
        (`run_once`: the halt submitted) run without a pause, as one hold of the lock, so the withdrawal
        worker signs and broadcasts no more of a short asset before its halt. A surplus (an incident) or
        a shortfall whose halt is active already or was lifted by quorum (`_respond` raises it no more)
        keeps no lock.

        Each mismatch carries its occurrence (`_occurrence`), kept from pass to pass while the wallet
        stays in mismatch; a pass that finds the wallet whole ends it."""
        self._holding = False
        if not self.wallets:
            return [], []
        ledger, custody, known, halted = self._engine_side()
        runs: dict[tuple[str, str], _Run] = {}
        occurrence = partial(self._occurrence, halted, runs)  # the first read's, for the confirming reads too
        rows, mismatches = reconcile_chain(ledger, self.wallets, custody, self.settings, heights=self._heights(),
                                           pace=self._pace_chain, known_halts=known, occurrence=occurrence)
        # only a mismatch whose halt the response would submit keeps the lock (a persistent surplus, an
        # incident only, or a shortfall already halted or lifted by quorum must not make every later pass
        # one unpaced burst again)
        self._holding = any(_halts_anew(m, known) for m in mismatches)
        # the wallets no read of this pass found whole (in that mismatch): their occurrences go on, even
        # when the reads disagree on the amounts (nothing confirmed: the wallet was not seen whole)
        lasting = {(m.kind, m.subject) for m in mismatches}
        for _ in range(self.settings.confirm_reads - 1):
            if not mismatches:
                break
            time.sleep(self.settings.confirm_wait_ms / 1000)
            ledger, custody, known, _ = self._engine_side()
            rows, again = reconcile_chain(ledger, self.wallets, custody, self.settings, heights=self._heights(),
                                          pace=None if self._holding else self._pace_chain, known_halts=known,
                                          occurrence=occurrence)
            keep = {m.halt_id for m in again}
            mismatches = [m for m in mismatches if m.halt_id in keep]
            lasting &= {(m.kind, m.subject) for m in again}
        # an occurrence keeps the amounts it named before and those this pass confirmed: amounts only one
        # read saw are no evidence (they would name a halt a later lift acknowledges, for amounts never confirmed)
        confirmed = {(m.kind, m.subject, m.expected_minor, m.actual_minor) for m in mismatches}
        kept: dict[tuple[str, str], _Run] = {}
        for key in sorted(lasting):
            run, before = runs[key], (self._runs or {}).get(key)
            kept[key] = _Run(run.occurrence, {amounts: occ for amounts, occ in run.halts.items()
                                              if (before is not None and amounts in before.halts) or key + amounts in confirmed})
        self._runs = kept
        doc = _runs_doc(self._runs)
        if doc != self._saved_runs:
            try:
                self.incidents.save_occurrences(doc)
                self._saved_runs = doc
            except (sqlite3.Error, OSError) as err:  # kept in memory; saved on a later pass: never stops a halt
                self.errors.append(f"occurrences not saved: {type(err).__name__}: {err}"[:500])
                del self.errors[:-100]
        return rows, mismatches

    def _occurrence(self, halted: "_HaltedOccurrences", runs: dict[tuple[str, str], "_Run"], kind: str, subject: str,
                    expected: int, actual: int) -> int:
        """The occurrence a chain mismatch's halt names (`runs`: this pass's, by kind and subject).

        A wallet stays in one occurrence from the pass that finds it in mismatch until a read finds it
        whole (the occurrences are saved, so across restarts too). One that starts is new, numbered by
        the engine's sequence at this pass. Within an occurrence, amounts seen before name the halt
        they named then (active, or lifted: not raised again); new amounts name an active halt for
        the same evidence if there is one (it is in force for them), else the occurrence's own. Only
        where no chain pass ever completed (`_runs` None: nothing saved, e.g. the first start after
        an upgrade) do new amounts with no active halt name the newest halt a quorum lifted for the
        same evidence: nothing says the wallet was whole since."""
        evidence = (kind, subject, expected, actual)
        run = runs.get((kind, subject))
        if run is None:
            before = self._runs.get((kind, subject)) if self._runs is not None else None
            run = _Run(before.occurrence, dict(before.halts)) if before is not None else _Run(halted.seq, {})
            runs[(kind, subject)] = run
        if (expected, actual) not in run.halts:
            named = halted.active.get(evidence)
            if named is None and self._runs is None:
                named = halted.lifted.get(evidence)
            run.halts[(expected, actual)] = run.occurrence if named is None else named
        return run.halts[(expected, actual)]

    def _heights(self) -> dict[str, int]:
        """Every chain's tip, taken right after `_engine_side` (before any pause)."""
        adapters = {spec.chain: spec.adapter for spec in self.wallets}
        return {chain: adapter.current_height() for chain, adapter in adapters.items()}

    def _engine_side(self) -> tuple[_CustodyAccounts, _CustodyFigures, frozenset[str], "_HaltedOccurrences"]:
        """The engine's half of the chain check (custody accounts, in-flight withdrawals, pending
        deposits), all read between the same two batches; the chain is read afterwards, outside. With
        them the halts known already (active, or lifted by quorum): their shortfalls keep no lock; and
        the occurrences their evidence names (`_occurrence`)."""
        custody = self.custody
        assert custody is not None
        keys = sorted({(spec.asset, spec.wallet) for spec in self.wallets})

        def read(engine: Engine) -> tuple[_CustodyAccounts, _CustodyFigures, frozenset[str], _HaltedOccurrences]:
            accounts: dict[tuple[str, str], tuple[int, int]] = {}
            for asset, wallet in keys:
                account = engine.ledger.find(SYSTEM_OWNER, asset, "custody", wallet)
                if account is not None:
                    accounts[(asset, wallet)] = (account.credits_posted, account.debits_posted)
            figures = {k: (custody.in_flight_withdrawals(*k), custody.pending_deposits(*k)) for k in keys}
            halts = halts_of(engine)
            known = frozenset(halts.active) | {h.halt_id for h in halts.lifted}
            halted = _HaltedOccurrences(engine.last_seq, _occurrences_of(halts.active.values()),
                                        _occurrences_of(h for h in halts.lifted if h.approvers))
            return _CustodyAccounts(accounts), _CustodyFigures(figures), known, halted

        return self.node.read(read)  # type: ignore[no-any-return]

    def _stable_live(self) -> LiveView:
        """The live engine's balances between two batches (`node.read`): never a command half
        applied, and `last_seq` is the last command of the batch they include."""
        return self.node.read(lambda engine: read_live(engine, self._live_index))  # type: ignore[no-any-return]

    def internal_pass(self, reserves: Mapping[str, int] | None = None) -> tuple[int, list[Mismatch]]:
        """Fold the journal up to the live sequence and compare; a mismatch must persist across
        `confirm_reads` quiet reads (a read racing the sequencer thread is not evidence)."""
        mismatches: list[Mismatch] = []
        live: LiveView | None = None
        for attempt in range(self.settings.confirm_reads):
            if attempt:
                time.sleep(self.settings.confirm_wait_ms / 1000)
            # the live view stands at a batch boundary, and the journal (written before a batch
            # is applied) already holds every record up to it: fold exactly that far. A record
            # not yet readable (still in the writer's buffer) is waited for, boundedly.
            for _ in range(MAX_ALIGN_TRIES):
                live = self._stable_live()
                self._pacing = live.last_seq - self.fold.last_seq <= PACE_ONLY_WITHIN
                self.fold.advance(self._pace, until_seq=live.last_seq, tick=self._pace_command)
                if self.fold.last_seq == live.last_seq:
                    break
                time.sleep(0.001)
            else:
                self.unaligned_passes += 1
                return (len(live.balance) - 1 if live else 0), []
            found = reconcile_internal(live, self.fold, self.settings, reserves)
            if attempt == 0:
                mismatches = found
            else:
                # confirmed by what is wrong (the same account and difference), not by absolute
                # values, which move on between reads of a busy engine; the newest read is kept
                before = {_confirm_key(m) for m in mismatches}
                mismatches = [m for m in found if _confirm_key(m) in before]
            if not mismatches:
                break
        return (len(live.balance) - 1 if live else 0), mismatches

    def run_once(self, *, chain: bool = True, internal: bool = True) -> RunReport:
        started = time.perf_counter()
        if self.pacer is not None:
            self.pacer.restart()  # the thread waited since its last pass: a fresh slice
        self._holding = False  # set by the chain pass when it finds a mismatch that halts, until the response below
        try:
            return self._run_once(started, chain=chain, internal=internal)
        finally:
            self._holding = False

    def _run_once(self, started: float, *, chain: bool, internal: bool) -> RunReport:  # float-ok: perf_counter
        notes: list[str] = []
        rows, mismatches = self.chain_pass() if chain else ([], [])
        reserves = self._reserves(rows)
        accounts = 0
        if internal:
            skipped = self.unaligned_passes
            accounts, found = self.internal_pass(reserves)
            mismatches = mismatches + found
            if self.unaligned_passes != skipped:
                notes.append("internal check skipped: the engine never stood still at the journal's sequence")
            if self.fold.book.unmodelled:
                notes.append("shadow per-account check skipped (replay check ran): unmodelled commands "
                             + ", ".join(f"{k}x{v}" for k, v in sorted(self.fold.book.unmodelled.items())))
        report = self._respond(mismatches, rows, accounts, notes)
        self._holding = False
        report.duration_ms = int((time.perf_counter() - started) * 1000)
        try:
            self.incidents.record_run(self.clock_ms(), report.duration_ms, report.seq, len(rows), accounts,
                                      len(mismatches), "; ".join(notes))
        except (sqlite3.Error, OSError) as err:  # the pass's halts are sent and its report stands
            log.error("reconcile.run_not_recorded", seq=report.seq, error=f"{type(err).__name__}: {err}")
            self.errors.append(f"run not recorded: {type(err).__name__}: {err}"[:500])
            del self.errors[:-100]
        self.last_report = report
        return report

    def _reserves(self, rows: list[ChainRow]) -> dict[str, int] | None:
        """Chain-observed holdings per asset, plus what the custody flows say is in flight (left the
        chain, still a liability until settled) and deposits below finality (credited, or about
        to be, and possibly reorged off the chain until final)."""
        if not rows:
            return None
        out: dict[str, int] = {}
        for row in rows:
            out[row.asset] = out.get(row.asset, 0) + row.chain_minor + row.in_flight_minor + row.pending_minor
        return out

    def _respond(self, mismatches: list[Mismatch], rows: list[ChainRow], accounts: int, notes: list[str]) -> RunReport:
        active, lifted = self.node.read(lambda engine: (set(halts_of(engine).active), {h.halt_id for h in halts_of(engine).lifted}))
        submitted, already, acknowledged = [], [], []
        now = self.clock_ms()
        seen: set[str] = set()
        for m in mismatches:
            if m.halt_id in seen:
                continue
            seen.add(m.halt_id)
            command = m.halt_command()
            if command is None:
                action = "incident"
            elif m.halt_id in active:
                action = "halt active"
                already.append(m.halt_id)
            elif m.halt_id in lifted:
                action = "lifted by quorum (same evidence; not raised again)"
                acknowledged.append(m.halt_id)
            else:
                try:
                    self.node.execute(command)
                    action = "halt raised"
                    submitted.append(m.halt_id)
                except RingfenceError as err:  # e.g. the node stopped: keep the incident, say why
                    action = f"halt NOT raised: {err}"[:300]
                    notes.append(f"{m.halt_id}: {action}")
            try:
                self.incidents.record(m, action, now)
            except (sqlite3.Error, OSError) as err:  # the record only: the next mismatches' halts are still sent
                failed = f"{m.halt_id}: incident not recorded ({action}): {type(err).__name__}: {err}"[:500]
                log.error("reconcile.incident_not_recorded", halt_id=m.halt_id, action=action, error=f"{type(err).__name__}: {err}")
                notes.append(failed)
                self.errors.append(failed)
                del self.errors[:-100]
        return RunReport(self.node.last_seq, rows, mismatches, submitted, already, acknowledged, accounts, 0, notes)

    # -------------------------------------------------------------- loop

    def new_blocks(self) -> bool:
        changed = False
        adapters = {spec.chain: spec.adapter for spec in self.wallets}
        for chain, adapter in adapters.items():
            tip = adapter.current_height()
            if self._tips.get(chain) != tip:
                self._tips[chain] = tip
                changed = True
        return changed

    def run_forever(self, stop: threading.Event, *, poll_ms: int = 200, internal_every_ms: int = 5_000,
                    on_report: Callable[[RunReport], None] | None = None) -> None:
        if not 10 <= poll_ms <= 60_000 or not 100 <= internal_every_ms <= 600_000:
            raise ValidationError("poll_ms must be 10..60000 and internal_every_ms 100..600000", field="poll_ms")
        next_internal = 0.0  # float-ok: monotonic seconds
        self._stopping = stop
        while not stop.is_set():
            due_internal = time.monotonic() >= next_internal
            try:
                if self.new_blocks() or due_internal:
                    report = self.run_once(chain=True, internal=due_internal)
                    if due_internal:
                        next_internal = time.monotonic() + internal_every_ms / 1000
                    if on_report is not None:
                        on_report(report)
            except _Stopped:
                return  # stopping: a fold in progress ends at its next record
            except JournalCorrupt:
                raise  # the journal itself is broken: stop loudly, recovery must look at it
            except Exception as err:  # a chain RPC down must not stop reconciliation of the rest
                self.errors.append(f"{type(err).__name__}: {err}"[:500])
                del self.errors[:-100]
            stop.wait(poll_ms / 1000)
