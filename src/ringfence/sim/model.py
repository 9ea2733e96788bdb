"""The auditor: a second, simple, obviously-correct account of what every command should do.

TigerBeetle's VOPR checks the replica against an auditor that knows what each reply must be. This is
ours. It is written from the documented rules (docs/ledger.md, docs/trading.md, docs/custody.md,
risk/halts.py's docstring), never from the engine's code: no engine, ledger, trading or custody
module is imported here. Plain dicts and lists, linear scans, a book sorted from scratch every time.

It predicts, for one command at a time, whether the command is refused (and with which error code),
which events it produces (trading events in a normalised form, ledger result codes), and what it
does to:

* every ledger account's posted balance and pending debits/credits (users' `available`, `quarantine`
  and `frozen`, the fee and shield ("insurance") accounts, `world`, `clearing`, `custody`, `onchain`);
* open orders (owner, side, price, what is left, what is held for them, resting or armed stop);
* client two-phase transfers, deposits, withdrawals (their state machine), halts and the operator set.

The runner compares all of this with the engine after every step. Money is `int` throughout.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Model", "Expect", "Bal", "MOrder", "MarketRules", "CustodyRules", "ModelError"]

PPM = 1_000_000
MAX_AMOUNT = (1 << 127) - 1
CLIENT_ID_MAX = (1 << 127) - 1
MAX_TIMEOUT_NS = 30 * 24 * 3600 * 10**9
MAX_QTY = 10**30
EMAIL_TTL_NS = 30 * 60 * 10**9
QUARANTINE_ABOVE = 85
FREEZE_CATEGORIES = ("exploit", "sanctions")
SYSTEM = "system"
LEVELS = {"WITHDRAWALS_PAUSED": 1, "REDUCE_ONLY": 2, "HALTED": 3}
#: Withdrawal commands that move money towards the chain: paused by WITHDRAWALS_PAUSED.
WITHDRAWAL_INITIATING = frozenset({"RequestWithdrawal", "ApproveWithdrawal", "AuthorizeSigning", "RecordSignedTx"})
OPEN_WITHDRAWAL = ("requested", "confirmed", "reviewed", "awaiting_approvals", "manual_review", "approved",
                   "signing", "signed", "broadcast")
CREDITED = ("credited", "quarantined", "frozen")

Key = tuple[str, str, str, str]  # (owner, asset, kind, segment)


class ModelError(AssertionError):
    """The model itself reached an impossible state (a bug in the model or a disagreement upstream)."""


@dataclass
class Bal:
    posted: int = 0  # credits_posted - debits_posted
    debits_pending: int = 0
    credits_pending: int = 0

    def row(self) -> tuple[int, int, int]:
        return (self.posted, self.debits_pending, self.credits_pending)


@dataclass
class Expect:
    """What a command should do: refused (with `code`, or any code when None), or its events."""

    refused: bool = False
    code: str | None = None
    events: list[tuple[Any, ...]] = field(default_factory=list)
    note: str = ""


class Refuse(Exception):
    def __init__(self, code: str | None, note: str = "") -> None:
        super().__init__(note)
        self.code, self.note = code, note


@dataclass
class MOrder:
    id: int
    owner: str
    is_buy: bool
    type: str
    tif: str
    price: int
    qty: int
    leaves: int
    filled: int
    quote_left: int
    stop: int
    protect: int
    coid: str
    stp: str
    held: int
    pay: Key
    recv: Key
    resting: bool = False
    armed: bool = False  # an untriggered stop
    rest_seq: int = 0


@dataclass(frozen=True)
class MarketRules:
    symbol: str
    base: str
    quote: str
    segment: str
    scale: int  # 10**base_decimals
    tick: int
    lot: int
    min_qty: int
    max_qty: int
    slippage_ppm: int
    max_open: int
    band_ppm: int = 0  # half-width of the price band around the reference price (0: no band)
    band_timeout_ns: int = 0


@dataclass
class MMarket:
    rules: MarketRules
    orders: dict[int, MOrder] = field(default_factory=dict)
    last_price: int = 0
    status: str = "ACTIVE"
    auto_reduce: bool = False  # REDUCE_ONLY set by the band timer (lifted by it too)
    ref_price: int = 0
    out_of_band_since: int = -1  # -1: the last price is inside the band (or there is none)

    def band(self) -> tuple[int, int]:
        """(lo, hi) of the band around the reference price; (0, 0) when there is no band."""
        if not self.ref_price or not self.rules.band_ppm:
            return 0, 0
        ppm = self.rules.band_ppm
        return self.ref_price * (PPM - ppm) // PPM, self.ref_price * (PPM + ppm) // PPM

    def in_band(self, price: int) -> bool:
        lo, hi = self.band()
        return not hi or lo <= price <= hi


@dataclass(frozen=True)
class CustodyRules:
    asset: str
    chain: str
    credit_confirmations: int
    finality_confirmations: int
    min_deposit: int
    min_withdrawal: int
    max_withdrawal: int
    fee: int


@dataclass
class MPending:
    debit: Key
    credit: Key
    remaining: int
    expires_at: int
    status: str = "pending"


@dataclass
class MDeposit:
    chain: str
    asset: str
    account: str
    wallet: str
    amount: int
    height: int
    block_hash: str
    state: str = "seen"
    final: bool = False
    kind: str = ""
    declaration: str = ""


@dataclass
class MWithdrawal:
    id: str
    account: str
    asset: str
    wallet: str
    amount: int
    fee: int
    token_hash: str
    created_ns: int
    held: int
    state: str = "requested"
    manual: bool = False
    required: int = 0
    roles: tuple[str, ...] = ()
    approvals: dict[str, int] = field(default_factory=dict)  # approver -> expires_ns
    not_before: int = 0
    txid: str = ""
    address: str = ""
    nonce: int = -1  # Ethereum wallets: the nonce assigned when signing was authorised


@dataclass
class MHalt:
    kind: str
    scope: str
    level: str
    raised_seq: int


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class Model:
    """The expected state of one shard. `apply_*` methods predict and, when accepted, update."""

    def __init__(self) -> None:
        self.accounts: dict[Key, Bal] = {}
        self.now_ns = 0
        # ledger (client transfers)
        self.transfers: dict[int, Any] = {}
        self.pending: dict[int, MPending] = {}
        # trading
        self.markets: dict[str, MMarket] = {}
        self.next_order_id = 1
        self.next_trade_id = 1
        self.rest_counter = 0
        self.tiers: dict[int, tuple[int, int]] = {0: (1000, 1000)}
        self.account_tier: dict[str, int] = {}
        #: Set when a command's time alone changed state (a band timer fired): like an expiry, that
        #: is not the command's effect, so "a rejected command changes nothing" is not asked then.
        self.time_effects = False
        # custody
        self.custody: dict[str, CustodyRules] = {}
        self.wallets: dict[str, tuple[str, str]] = {}  # name -> (chain, tier)
        self.deposit_addresses: dict[str, tuple[str, str]] = {}  # "chain:address" -> (account, wallet)
        self.deposits: dict[str, MDeposit] = {}
        self.withdrawals: dict[str, MWithdrawal] = {}
        self.frozen_accounts: set[str] = set()
        self.roles: dict[str, set[str]] = {}
        #: The withdrawal policy, first match wins: (asset or "" for any, amount_gt, only to addresses
        #: not on the user's allow list, action, approvals, roles).
        self.rules: list[tuple[str, int, bool, str, int, tuple[str, ...]]] = []
        self.address_book: set[tuple[str, str, str]] = set()  # (account, asset, address)
        self.approval_ttl_ns = 86400 * 10**9
        #: sweeps/refills by id -> (state, fields); "funding:<id>" and "nonce:<id>" share the table
        self.internal_transfers: dict[str, tuple[str, tuple[Any, ...]]] = {}
        self.next_nonce: dict[str, int] = {}  # Ethereum wallet -> next nonce
        # halts
        self.halts: dict[str, MHalt] = {}
        self.operators: dict[str, str] = {}  # id -> public key hex
        self.threshold = 0
        self.operators_version = 0

    # ------------------------------------------------------------------ money primitives

    def bal(self, key: Key) -> Bal:
        b = self.accounts.get(key)
        if b is None:
            b = self.accounts[key] = Bal()
        return b

    def available(self, key: Key) -> int:
        b = self.accounts.get(key)
        return 0 if b is None else b.posted - b.debits_pending

    def move(self, debit: Key, credit: Key, amount: int) -> None:
        if amount < 0 or debit[1] != credit[1]:
            raise ModelError(f"bad move {debit} -> {credit} of {amount}")
        if debit[0] != SYSTEM and self.available(debit) < amount:
            raise ModelError(f"model would overdraw {debit} by moving {amount}")
        self.bal(debit).posted -= amount
        self.bal(credit).posted += amount

    def reserve(self, debit: Key, credit: Key, amount: int) -> None:
        self.bal(debit).debits_pending += amount
        self.bal(credit).credits_pending += amount

    def release(self, debit: Key, credit: Key, amount: int) -> None:
        self.bal(debit).debits_pending -= amount
        self.bal(credit).credits_pending -= amount

    def _unpost(self, debit: Key, credit: Key, amount: int) -> None:
        self.bal(debit).posted += amount
        self.bal(credit).posted -= amount

    def capture(self, debit: Key, credit: Key, amount: int) -> None:
        self.release(debit, credit, amount)
        self.bal(debit).posted -= amount
        self.bal(credit).posted += amount

    # ------------------------------------------------------------------ time

    def expire(self, now_ns: int) -> list[tuple[int, int]]:
        """Expire client holds whose deadline has come (sequencer time). Returns (id, released)."""
        out = []
        due = [(p.expires_at, pid) for pid, p in self.pending.items()
               if p.status == "pending" and p.expires_at and p.expires_at <= now_ns]
        for _, pid in sorted(due):  # earliest deadline first
            p = self.pending[pid]
            out.append((pid, p.remaining))
            self.release(p.debit, p.credit, p.remaining)
            p.remaining, p.status = 0, "expired"
        return out

    def unexpire(self, expired: list[tuple[int, int]]) -> None:
        """Undo `expire` when the command turned out not to be journaled (no batch, no time)."""
        for pid, amount in expired:
            p = self.pending[pid]
            p.status, p.remaining = "pending", amount
            self.reserve(p.debit, p.credit, amount)

    # ------------------------------------------------------------------ halts (the guard)

    def scopes(self, name: str, cmd: Any, account_keys: dict[int, Key]) -> list[tuple[str, str]]:
        """The (kind, scope) pairs a command touches, as its fields declare them.

        Known gaps, mirrored here so that the run stays green until issue 14's module-declared
        scopes land (then tighten this): a post or void names no accounts (ids 0), so it passes an
        asset or segment halt of the hold it settles; `CreditDeposit`, `FinalizeDeposit`,
        `ReorgDeposits`, `FileSourceOfFunds` and `ReviewQuarantine` carry no `asset`, so an asset
        halt does not stop them (while `ObserveDeposit`, which does, is refused)."""
        out = [("venue", "*")]
        symbol = getattr(cmd, "symbol", None)
        if isinstance(symbol, str):
            out.append(("market", symbol))
            m = self.markets.get(symbol)
            if m is not None:
                out += [("segment", m.rules.segment), ("asset", m.rules.base), ("asset", m.rules.quote)]
        asset = getattr(cmd, "asset", None)
        if isinstance(asset, str):
            out.append(("asset", asset))
            wallet = getattr(cmd, "wallet", None)
            if isinstance(wallet, str):
                out.append(("asset", f"{asset}@{wallet}"))
        segment = getattr(cmd, "segment", None)
        if isinstance(segment, str):
            out.append(("segment", segment))
        for t in getattr(cmd, "transfers", None) or []:
            for aid in (t.debit_account_id, t.credit_account_id):
                key = account_keys.get(aid)
                if key is not None:
                    out.append(("asset", key[1]))
                    if key[3] != "-":
                        out.append(("segment", key[3]))
        return out

    def level_at(self, kind: str, scope: str) -> int:
        return max((LEVELS[h.level] for h in self.halts.values() if (h.kind, h.scope) == (kind, scope)), default=0)

    def guard(self, cmd: Any, account_keys: dict[int, Key]) -> None:
        name = type(cmd).__name__
        if name in ("Halt", "LiftHalt", "RegisterOperators") or not self.halts:
            return
        if name == "TradingBatch":
            for action in cmd.actions:
                self.guard(action, account_keys)
            return
        is_cancel = name in ("CancelOrder", "CancelAll")
        is_trading = isinstance(getattr(cmd, "symbol", None), str)
        for kind, scope in self.scopes(name, cmd, account_keys):
            level = self.level_at(kind, scope)
            if level >= 3 and not is_cancel:
                raise Refuse("RF_HALTED", f"{kind} {scope} is HALTED")
            if level >= 2 and is_trading and not is_cancel and self._adds_exposure(cmd):
                raise Refuse("RF_HALTED", f"{kind} {scope} is REDUCE_ONLY")
            if level >= 1 and name in WITHDRAWAL_INITIATING:
                raise Refuse("RF_HALTED", f"{kind} {scope} pauses withdrawals")

    def _adds_exposure(self, cmd: Any) -> bool:
        """Spot: every new order adds exposure; an amend reduces only if it keeps the price and
        lowers the order's total quantity."""
        if type(cmd).__name__ != "AmendOrder":
            return True
        m = self.markets.get(cmd.symbol)
        o = m.orders.get(cmd.order_id) if m is not None else None
        if o is None:
            return True
        return cmd.price not in (0, o.price) or not 0 < cmd.quantity < o.qty

    # ------------------------------------------------------------------ halts (commands)

    def halt(self, cmd: Any, seq: int) -> list[tuple[Any, ...]]:
        if cmd.halt_id in self.halts:
            return [("halt_unchanged", cmd.halt_id)]
        self.halts[cmd.halt_id] = MHalt(cmd.scope_kind, cmd.scope, cmd.level, seq)
        return [("halt_raised", cmd.halt_id, cmd.level)]

    def check_quorum(self, approvals: list[tuple[str, bool]]) -> None:
        """`approvals`: (operator id, whether the runner signed the right message with that
        operator's registered key). The model knows what it signed; it does no cryptography."""
        if not self.operators:
            raise Refuse("RF_FORBIDDEN", "no operators")
        seen: list[str] = []
        for op, genuine in approvals:
            if op in seen or op not in self.operators or not genuine:
                raise Refuse("RF_FORBIDDEN", f"approval of {op} is duplicate, unknown or forged")
            seen.append(op)
        if len(seen) < self.threshold:
            raise Refuse("RF_FORBIDDEN", f"{len(seen)} of {self.threshold} approvals")

    def lift(self, halt_id: str, approvals: list[tuple[str, bool]]) -> list[tuple[Any, ...]]:
        if halt_id not in self.halts:
            raise Refuse("RF_NOT_FOUND", "no such active halt")
        self.check_quorum(approvals)
        del self.halts[halt_id]
        return [("halt_lifted", halt_id)]

    def register_operators(self, operators: dict[str, str], threshold: int, approvals: list[tuple[str, bool]]) -> list[tuple[Any, ...]]:
        if self.operators:
            self.check_quorum(approvals)
        elif approvals:
            raise Refuse("RF_VALIDATION", "genesis carries no approvals")
        self.operators, self.threshold = dict(operators), threshold
        self.operators_version += 1
        return [("operators", self.operators_version)]

    # ------------------------------------------------------------------ ledger: client transfers

    def create_transfers(self, transfers: list[Any], account_keys: dict[int, Key]) -> list[tuple[int, str]]:
        failures: list[tuple[int, str]] = []
        n, i = len(transfers), 0
        while i < n:
            if not transfers[i].flags & 1:
                code = self._one_transfer(transfers[i], account_keys, None)
                if code is not None:
                    failures.append((i, code))
                i += 1
                continue
            end = i
            while end < n and transfers[end].flags & 1:
                end += 1
            if end == n:
                failures.extend((j, "linked_event_chain_open") for j in range(i, n))
                break
            undo: list[Any] = []
            failed_at, failed_code = -1, ""
            for j in range(i, end + 1):
                code = self._one_transfer(transfers[j], account_keys, undo)
                if code is not None:
                    failed_at, failed_code = j, code
                    break
            if failed_at >= 0:
                for action in reversed(undo):
                    action()
                failures.extend((j, failed_code if j == failed_at else "linked_event_failed") for j in range(i, end + 1))
            i = end + 1
        return failures

    def _one_transfer(self, t: Any, keys: dict[int, Key], undo: list[Any] | None) -> str | None:
        if t.id <= 0:
            return "id_must_not_be_zero" if t.id == 0 else "id_out_of_range"
        if t.id > CLIENT_ID_MAX:
            return "id_out_of_range"
        if t.id in self.transfers:
            return "exists" if self.transfers[t.id] == t else "exists_with_different_fields"
        if t.flags & ~15:
            return "flags_invalid"
        phase = t.flags & 14
        if phase not in (0, 2, 4, 8):
            return "flags_are_mutually_exclusive"
        code = self._post_or_void(t, keys, undo) if phase in (4, 8) else self._single(t, keys, undo)
        if code is None:
            self.transfers[t.id] = t
            if undo is not None:
                undo.append(lambda tid=t.id: self.transfers.pop(tid))
        return code

    def _single(self, t: Any, keys: dict[int, Key], undo: list[Any] | None) -> str | None:
        if t.pending_id:
            return "pending_id_must_be_zero"
        debit, credit = keys.get(t.debit_account_id), keys.get(t.credit_account_id)
        if debit is None:
            return "debit_account_not_found"
        if credit is None:
            return "credit_account_not_found"
        if debit == credit:
            return "accounts_must_be_different"
        if debit[1] != credit[1]:
            return "assets_must_match"
        if t.amount <= 0:
            return "amount_must_not_be_zero" if t.amount == 0 else "amount_out_of_range"
        if t.amount > MAX_AMOUNT:
            return "amount_out_of_range"
        pending = bool(t.flags & 2)
        if t.timeout_ns:
            if not pending:
                return "timeout_reserved_for_pending_transfer"
            if not 0 < t.timeout_ns <= MAX_TIMEOUT_NS:
                return "timeout_out_of_range"
        if debit[0] != SYSTEM and self.available(debit) < t.amount:
            return "exceeds_credits"
        if pending:
            self.reserve(debit, credit, t.amount)
            self.pending[t.id] = MPending(debit, credit, t.amount, self.now_ns + t.timeout_ns if t.timeout_ns else 0)
            if undo is not None:
                undo.append(lambda: (self.release(debit, credit, t.amount), self.pending.pop(t.id)))
        else:
            self.move(debit, credit, t.amount)
            if undo is not None:
                undo.append(lambda: (self._unpost(debit, credit, t.amount)))
        return None

    def _post_or_void(self, t: Any, keys: dict[int, Key], undo: list[Any] | None) -> str | None:
        if not t.pending_id:
            return "pending_id_must_not_be_zero"
        if t.pending_id > CLIENT_ID_MAX:
            return "pending_transfer_not_found"
        if t.timeout_ns:
            return "timeout_reserved_for_pending_transfer"
        p = self.pending.get(t.pending_id)
        if p is None:
            return "pending_transfer_not_found"
        if p.status != "pending":
            return {"posted": "pending_transfer_already_posted", "voided": "pending_transfer_already_voided",
                    "expired": "pending_transfer_expired"}[p.status]
        if p.expires_at and self.now_ns >= p.expires_at:
            return "pending_transfer_expired"
        if (t.debit_account_id and keys.get(t.debit_account_id) != p.debit) or (
                t.credit_account_id and keys.get(t.credit_account_id) != p.credit):
            return "pending_transfer_has_different_accounts"
        if t.amount < 0 or t.amount > MAX_AMOUNT:
            return "amount_out_of_range"
        before = (p.remaining, p.status)

        def restore() -> None:
            moved = before[0] - p.remaining
            if p.status == "voided":
                self.reserve(p.debit, p.credit, before[0])
            else:
                self.bal(p.debit).posted += moved
                self.bal(p.credit).posted -= moved
                self.reserve(p.debit, p.credit, moved)
            p.remaining, p.status = before

        if t.flags & 8:
            if t.amount not in (0, p.remaining):
                return "exceeds_pending_transfer_amount"
            self.release(p.debit, p.credit, p.remaining)
            p.remaining, p.status = 0, "voided"
        else:
            amount = t.amount or p.remaining
            if amount > p.remaining:
                return "exceeds_pending_transfer_amount"
            self.capture(p.debit, p.credit, amount)
            p.remaining -= amount
            if not p.remaining:
                p.status = "posted"
        if undo is not None:
            undo.append(restore)
        return None

    # ------------------------------------------------------------------ trading

    def list_market(self, rules: MarketRules) -> None:
        self.markets[rules.symbol] = MMarket(rules)

    def rates(self, owner: str) -> tuple[int, int]:
        return self.tiers[self.account_tier.get(owner, 0)]

    @staticmethod
    def _clearing(r: MarketRules, asset: str) -> Key:
        return (SYSTEM, asset, "clr_" + r.symbol.lower(), r.segment)

    def _book(self, m: MMarket, buy_side: bool) -> list[MOrder]:
        """Resting orders of one side, best price first, then oldest first."""
        side = [o for o in m.orders.values() if o.resting and o.is_buy == buy_side]
        return sorted(side, key=lambda o: (-o.price if buy_side else o.price, o.rest_seq))

    def best(self, m: MMarket, buy_side: bool) -> int:
        book = self._book(m, buy_side)
        return book[0].price if book else 0

    def _crosses(self, m: MMarket, is_buy: bool, price: int) -> bool:
        other = self.best(m, not is_buy)
        return bool(other) and (other <= price if is_buy else other >= price)

    def trading(self, action: Any) -> list[tuple[Any, ...]]:
        ev: list[tuple[Any, ...]] = []
        name = type(action).__name__
        if name == "PlaceOrder":
            self._place(action, ev)
        elif name == "CancelOrder":
            self._cancel(action, ev)
        elif name == "CancelAll":
            self._cancel_all(action, ev)
        elif name == "AmendOrder":
            self._amend(action, ev)
        elif name == "SetMarketStatus":
            m = self.markets.get(action.symbol)
            if m is None:
                raise Refuse("RF_NOT_FOUND", "unknown market")
            m.status, m.auto_reduce = action.status, False
            ev.append(("status", m.rules.symbol, m.status, "OPERATOR"))
        elif name == "SetReferencePrice":
            m = self.markets.get(action.symbol)
            if m is None:
                raise Refuse("RF_NOT_FOUND", "unknown market")
            m.ref_price = action.price
            ev.append(("refprice", m.rules.symbol, action.price))
            self._band_watch(m, ev)
        else:
            raise ModelError(f"not a trading action: {name}")
        return ev

    def _band_watch(self, m: MMarket, ev: list) -> None:
        """The dual-price guard's timer: a last price outside the band for `band_timeout_ns` puts
        an ACTIVE market in REDUCE_ONLY; back inside the band, a market the timer reduced is ACTIVE."""
        lo, hi = m.band()
        if m.last_price and hi and not lo <= m.last_price <= hi:
            if m.out_of_band_since < 0:
                m.out_of_band_since = self.now_ns
                self.time_effects = True
            if m.status == "ACTIVE" and self.now_ns - m.out_of_band_since >= m.rules.band_timeout_ns:
                m.status, m.auto_reduce = "REDUCE_ONLY", True
                ev.append(("status", m.rules.symbol, "REDUCE_ONLY", "BAND_TIMEOUT"))
                self.time_effects = True
        elif m.out_of_band_since >= 0:
            m.out_of_band_since = -1
            self.time_effects = True
            if m.auto_reduce and m.status == "REDUCE_ONLY":
                m.status, m.auto_reduce = "ACTIVE", False
                ev.append(("status", m.rules.symbol, "ACTIVE", "BAND_RESTORED"))

    def _reject(self, ev: list, action: str, reason: str) -> None:
        ev.append(("rejected", action, reason))

    def _place(self, c: Any, ev: list) -> None:
        m = self.markets.get(c.symbol)
        if m is None:
            return self._reject(ev, "PLACE", "UNKNOWN_MARKET")
        r = m.rules
        if c.side not in ("BUY", "SELL"):
            return self._reject(ev, "PLACE", "INVALID_PARAMETER")
        is_buy = c.side == "BUY"
        typ, tif = c.order_type, c.tif
        if typ not in ("LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LIMIT", "STOP_MARKET") or tif not in ("GTC", "IOC", "FOK") \
                or c.stp not in ("NONE", "EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"):
            return self._reject(ev, "PLACE", "INVALID_PARAMETER")
        price, qty, qamt, stop = c.price, c.quantity, c.quote_amount, c.stop_price
        limitish = typ in ("LIMIT", "LIMIT_MAKER", "STOP_LIMIT")
        is_stop = typ.startswith("STOP")
        if limitish and (not price or not qty or qamt):
            return self._reject(ev, "PLACE", "INVALID_PARAMETER")
        if typ == "MARKET" and (qty > 0) == (qamt > 0):
            return self._reject(ev, "PLACE", "INVALID_PARAMETER")
        if typ == "STOP_MARKET" and (not qty or qamt or price):
            return self._reject(ev, "PLACE", "INVALID_PARAMETER")
        if is_stop != (stop > 0):
            return self._reject(ev, "PLACE", "INVALID_PARAMETER")
        if (typ == "LIMIT_MAKER" and tif != "GTC") or (not limitish and tif == "FOK"):
            return self._reject(ev, "PLACE", "INVALID_PARAMETER")
        self._band_watch(m, ev)
        if m.status != "ACTIVE":
            return self._reject(ev, "PLACE", "MARKET_NOT_ACTIVE")
        if price % r.tick or stop % r.tick:
            return self._reject(ev, "PLACE", "PRICE_NOT_ON_TICK")
        if qty:
            if qty % r.lot:
                return self._reject(ev, "PLACE", "QTY_NOT_ON_LOT")
            if qty < r.min_qty:
                return self._reject(ev, "PLACE", "QTY_BELOW_MIN")
            if qty > r.max_qty:
                return self._reject(ev, "PLACE", "QTY_ABOVE_MAX")
        if limitish and not m.in_band(price):
            return self._reject(ev, "PLACE", "PRICE_OUTSIDE_BAND")
        last = m.last_price
        if is_stop and last and (last >= stop if is_buy else last <= stop):
            return self._reject(ev, "PLACE", "STOP_WOULD_TRIGGER_IMMEDIATELY")
        if typ == "LIMIT_MAKER" and self._crosses(m, is_buy, price):
            return self._reject(ev, "PLACE", "POST_ONLY_WOULD_TAKE")
        mine = [o for o in m.orders.values() if o.owner == c.owner]
        if c.client_order_id and any(o.coid == c.client_order_id for o in mine):
            return self._reject(ev, "PLACE", "DUPLICATE_CLIENT_ORDER_ID")
        if ((limitish and tif == "GTC") or is_stop) and len(mine) >= r.max_open:
            return self._reject(ev, "PLACE", "TOO_MANY_OPEN_ORDERS")
        # The worst price a market order may fill at, and what the order must hold.
        protect = 0
        if typ == "MARKET":
            if price:
                protect = price
            else:
                best = self.best(m, not is_buy)
                if best and is_buy:
                    protect = best * (PPM + r.slippage_ppm) // PPM // r.tick * r.tick
                elif best:
                    protect = _ceil_div(best * (PPM - r.slippage_ppm) // PPM, r.tick) * r.tick
            protect = self._cap_to_band(m, is_buy, protect)
        elif typ == "STOP_MARKET":
            if is_buy:
                protect = stop * (PPM + r.slippage_ppm) // PPM // r.tick * r.tick
            else:
                protect = _ceil_div(stop * (PPM - r.slippage_ppm) // PPM, r.tick) * r.tick
        if is_buy:
            hold = qamt if qamt else (price if limitish else protect) * qty // r.scale
        elif qamt:
            hold = _ceil_div(_ceil_div(qamt * r.scale, protect), r.lot) * r.lot if protect else 0
        else:
            hold = qty
        if typ == "MARKET" and not protect:
            hold = 0
        pay_asset, recv_asset = (r.quote, r.base) if is_buy else (r.base, r.quote)
        pay, recv = (c.owner, pay_asset, "available", r.segment), (c.owner, recv_asset, "available", r.segment)
        if hold and self.available(pay) < hold:
            return self._reject(ev, "PLACE", "INSUFFICIENT_BALANCE")
        oid = self.next_order_id
        self.next_order_id += 1
        leaves = qty if qty else (hold if not is_buy else MAX_QTY)
        o = MOrder(oid, c.owner, is_buy, typ, tif if limitish else "IOC", price if limitish else 0, qty, leaves, 0,
                   qamt, stop, protect, c.client_order_id, c.stp, hold, pay, recv)
        ev.append(("accepted", oid, hold))
        if not hold:
            ev.append(("expired", oid, "NO_LIQUIDITY", 0, qty))
            return
        self.reserve(pay, self._clearing(r, pay_asset), hold)
        m.orders[oid] = o
        if is_stop:
            o.armed = True
            return
        before = self.next_trade_id
        self._execute(m, o, ev)
        if self.next_trade_id != before:
            self._trigger_stops(m, ev)

    @staticmethod
    def _cap_to_band(m: MMarket, is_buy: bool, protect: int) -> int:
        """A market order never fills outside the band: its protection price is pulled inside."""
        lo, hi = m.band()
        if not protect or not hi:
            return protect
        tick = m.rules.tick
        return min(protect, hi // tick * tick) if is_buy else max(protect, _ceil_div(lo, tick) * tick)

    def _end(self, m: MMarket, o: MOrder) -> int:
        """The order is finished: give back what it still holds and forget it."""
        r = m.rules
        released = o.held
        self.release(o.pay, self._clearing(r, r.quote if o.is_buy else r.base), released)
        o.held = 0
        o.resting = o.armed = False
        m.orders.pop(o.id, None)
        return released

    def _close(self, m: MMarket, o: MOrder, ev: list, kind: str, reason: str) -> None:
        released = self._end(m, o)
        ev.append((kind, o.id, reason, released, o.leaves if o.qty else 0))

    def _rest(self, o: MOrder) -> None:
        self.rest_counter += 1
        o.rest_seq, o.resting = self.rest_counter, True

    def _fillable(self, m: MMarket, t: MOrder, limit: int) -> bool:
        """FOK: would the book fill `t` completely right now, honouring its self-trade mode?"""
        have = 0
        for mk in self._book(m, not t.is_buy):
            if (mk.price > limit) if t.is_buy else (mk.price < limit):
                break
            if not m.in_band(mk.price):
                continue
            if t.stp != "NONE" and mk.owner == t.owner:
                if t.stp == "EXPIRE_MAKER":
                    continue
                break
            have += mk.leaves
            if have >= t.leaves:
                return True
        return have >= t.leaves

    def _execute(self, m: MMarket, o: MOrder, ev: list) -> None:
        limitish = o.type in ("LIMIT", "LIMIT_MAKER", "STOP_LIMIT")
        limit = o.price if limitish else o.protect
        if o.tif == "FOK" and not self._fillable(m, o, limit):
            return self._close(m, o, ev, "expired", "FOK_NOT_FILLABLE")
        stopped = self._match(m, o, limit, ev) if limit else "NO_LIQUIDITY"
        if stopped == "SELF_TRADE_PREVENTED":
            self._close(m, o, ev, "expired", stopped)
        elif not o.qty:
            if o.filled and (stopped == "QUOTE_SPENT" or o.quote_left == 0 or o.leaves == 0):
                self._end(m, o)
            else:
                self._close(m, o, ev, "expired", "NOT_FULLY_FILLED")
        elif o.leaves == 0:
            self._end(m, o)
        elif o.tif == "GTC" and limitish:
            r = m.rules
            if o.is_buy:
                excess = o.held - o.leaves * o.price // r.scale
                self.release(o.pay, self._clearing(r, r.quote), excess)
                o.held -= excess
            self._rest(o)
            ev.append(("rested", o.id, o.price, o.leaves))
        else:
            self._close(m, o, ev, "expired", "NOT_FULLY_FILLED")

    def _match(self, m: MMarket, t: MOrder, limit: int, ev: list) -> str:
        r = m.rules
        while True:
            book = self._book(m, not t.is_buy)
            if not book:
                return ""
            mk = book[0]
            p = mk.price
            if (p > limit) if t.is_buy else (p < limit):
                return ""
            if not m.in_band(p):  # the band has left this resting price behind: it must not print
                self._close(m, mk, ev, "expired", "PRICE_OUTSIDE_BAND")
                continue
            if t.stp != "NONE" and mk.owner == t.owner:
                if t.stp == "EXPIRE_TAKER":
                    return "SELF_TRADE_PREVENTED"
                self._close(m, mk, ev, "expired", "SELF_TRADE_PREVENTED")
                if t.stp == "EXPIRE_BOTH":
                    return "SELF_TRADE_PREVENTED"
                continue
            q = mk.leaves
            if not t.qty:
                cap = t.quote_left * r.scale // p // r.lot * r.lot
                if not t.is_buy:
                    cap = min(cap, t.leaves)
                if cap == 0:
                    return "QUOTE_SPENT"
                q = min(q, cap)
            else:
                q = min(q, t.leaves)
            self._fill(m, t, mk, p, q, ev)
            if mk.leaves == 0:
                self._end(m, mk)
            if t.leaves == 0:
                return ""

    def _fill(self, m: MMarket, t: MOrder, mk: MOrder, p: int, q: int, ev: list) -> None:
        """q base at p: the buyer pays n quote and receives q base less its fee; the seller pays q
        base and receives n quote less its fee. Fees round up; a tenth (rounded down) of each fee
        goes to the shield fund."""
        r = m.rules
        n = p * q // r.scale
        buyer, seller = (t, mk) if t.is_buy else (mk, t)
        b_rate = self.rates(buyer.owner)[1 if buyer is t else 0]
        s_rate = self.rates(seller.owner)[1 if seller is t else 0]
        b_fee = _ceil_div(q * b_rate, PPM)
        s_fee = _ceil_div(n * s_rate, PPM)
        if buyer.held < n or seller.held < q:
            raise ModelError(f"model: hold short for a fill of {q} at {p}")
        clr_b, clr_q = self._clearing(r, r.base), self._clearing(r, r.quote)
        self.capture(buyer.pay, clr_q, n)
        buyer.held -= n
        self.capture(seller.pay, clr_b, q)
        seller.held -= q
        self.move(clr_b, buyer.recv, q - b_fee)
        self.move(clr_b, (SYSTEM, r.base, "fees", r.segment), b_fee - b_fee // 10)
        self.move(clr_b, (SYSTEM, r.base, "insurance", r.segment), b_fee // 10)
        self.move(clr_q, seller.recv, n - s_fee)
        self.move(clr_q, (SYSTEM, r.quote, "fees", r.segment), s_fee - s_fee // 10)
        self.move(clr_q, (SYSTEM, r.quote, "insurance", r.segment), s_fee // 10)
        for o in (t, mk):
            o.leaves -= q
            o.filled += q
        if not t.qty:
            t.quote_left -= n
        m.last_price = p
        tid = self.next_trade_id
        self.next_trade_id += 1
        t_fee, m_fee = (b_fee, s_fee) if t.is_buy else (s_fee, b_fee)
        ev.append(("trade", tid, p, q, n, t.id, mk.id, t_fee, m_fee))

    def _trigger_stops(self, m: MMarket, ev: list) -> None:
        while True:
            last = m.last_price
            fired = sorted(o.id for o in m.orders.values() if o.armed and (o.stop <= last if o.is_buy else o.stop >= last))
            if not fired:
                return
            for oid in fired:
                m.orders[oid].armed = False
            for oid in fired:
                o = m.orders[oid]
                ev.append(("triggered", oid, last))
                if o.type == "STOP_LIMIT" and not m.in_band(o.price):
                    self._close(m, o, ev, "expired", "PRICE_OUTSIDE_BAND")
                    continue
                if o.type == "STOP_MARKET":
                    o.protect = self._cap_to_band(m, o.is_buy, o.protect)
                self._execute(m, o, ev)

    def _cancel(self, c: Any, ev: list) -> None:
        m = self.markets.get(c.symbol)
        if m is None:
            return self._reject(ev, "CANCEL", "UNKNOWN_MARKET")
        self._band_watch(m, ev)
        if m.status == "HALTED":
            return self._reject(ev, "CANCEL", "MARKET_HALTED")
        if c.order_id:
            o = m.orders.get(c.order_id)
        else:
            o = next((x for x in m.orders.values() if c.client_order_id and x.owner == c.owner and x.coid == c.client_order_id), None)
        if o is None or o.owner != c.owner:
            return self._reject(ev, "CANCEL", "UNKNOWN_ORDER")
        self._close(m, o, ev, "canceled", "USER_CANCELED")

    def _cancel_all(self, c: Any, ev: list) -> None:
        m = self.markets.get(c.symbol)
        if m is None:
            return self._reject(ev, "CANCEL_ALL", "UNKNOWN_MARKET")
        self._band_watch(m, ev)
        if m.status == "HALTED":
            return self._reject(ev, "CANCEL_ALL", "MARKET_HALTED")
        for oid in sorted(o.id for o in m.orders.values() if o.owner == c.owner):
            self._close(m, m.orders[oid], ev, "canceled", "USER_CANCELED")

    def _amend(self, c: Any, ev: list) -> None:
        m = self.markets.get(c.symbol)
        if m is None:
            return self._reject(ev, "AMEND", "UNKNOWN_MARKET")
        self._band_watch(m, ev)
        if m.status != "ACTIVE":
            return self._reject(ev, "AMEND", "MARKET_NOT_ACTIVE")
        r = m.rules
        o = m.orders.get(c.order_id)
        if o is None or o.owner != c.owner:
            return self._reject(ev, "AMEND", "UNKNOWN_ORDER")
        if not o.resting:
            return self._reject(ev, "AMEND", "ORDER_NOT_AMENDABLE")
        price, qty = c.price or o.price, c.quantity or o.qty
        if price % r.tick:
            return self._reject(ev, "AMEND", "PRICE_NOT_ON_TICK")
        if qty % r.lot:
            return self._reject(ev, "AMEND", "QTY_NOT_ON_LOT")
        if qty < r.min_qty:
            return self._reject(ev, "AMEND", "QTY_BELOW_MIN")
        if qty > r.max_qty:
            return self._reject(ev, "AMEND", "QTY_ABOVE_MAX")
        leaves = qty - o.filled
        if leaves <= 0:
            return self._reject(ev, "AMEND", "INVALID_PARAMETER")
        reprice = price != o.price
        if reprice and not m.in_band(price):
            return self._reject(ev, "AMEND", "PRICE_OUTSIDE_BAND")
        if reprice and o.type == "LIMIT_MAKER" and self._crosses(m, o.is_buy, price):
            return self._reject(ev, "AMEND", "POST_ONLY_WOULD_TAKE")
        need = leaves * price // r.scale if o.is_buy else leaves
        extra = need - o.held
        if extra > 0 and self.available(o.pay) < extra:
            return self._reject(ev, "AMEND", "INSUFFICIENT_BALANCE")
        clearing = self._clearing(r, r.quote if o.is_buy else r.base)
        if extra > 0:
            self.reserve(o.pay, clearing, extra)
        elif extra < 0:
            self.release(o.pay, clearing, -extra)
        o.held = need
        if not reprice and qty <= o.qty:
            o.leaves, o.qty = leaves, qty
            ev.append(("amended", o.id, price, qty, leaves, True))
            return
        o.resting = False
        o.price, o.qty, o.leaves = price, qty, leaves
        ev.append(("amended", o.id, price, qty, leaves, False))
        if not self._crosses(m, o.is_buy, price):
            self._rest(o)
            ev.append(("rested", o.id, price, leaves))
            return
        before = self.next_trade_id
        self._execute(m, o, ev)
        if self.next_trade_id != before:
            self._trigger_stops(m, ev)

    # ------------------------------------------------------------------ custody: deposits

    def _custody_acct(self, asset: str, wallet: str) -> Key:
        return (SYSTEM, asset, "custody", wallet)

    def _onchain(self, asset: str) -> Key:
        return (SYSTEM, asset, "onchain", "-")

    def observe_deposit(self, c: Any) -> list[tuple[Any, ...]]:
        cfg = self.custody.get(c.asset)
        if cfg is None or cfg.chain != c.chain:
            raise Refuse("RF_UNSUPPORTED_ASSET")
        if c.amount_minor <= 0:
            raise Refuse("RF_INVALID_AMOUNT")
        owner = self.deposit_addresses.get(f"{c.chain}:{c.address}")
        if owner is None:
            raise Refuse("RF_NOT_FOUND", "not a deposit address")
        key = f"{c.chain}:{c.txid}:{c.index}"
        d = self.deposits.get(key)
        if d is not None and d.state not in ("dropped", "reversed"):
            if d.state == "seen" and (d.height, d.block_hash) != (c.height, c.block_hash):
                d.height, d.block_hash = c.height, c.block_hash
            return [("deposit", key, d.state)]
        account, wallet = owner
        if c.amount_minor < cfg.min_deposit:
            self.deposits[key] = MDeposit(c.chain, c.asset, account, wallet, c.amount_minor, c.height, c.block_hash,
                                          "below_minimum")
            return [("deposit", key, "below_minimum")]
        if d is None:
            self.deposits[key] = d = MDeposit(c.chain, c.asset, account, wallet, c.amount_minor, c.height, c.block_hash)
        else:
            d.state, d.height, d.block_hash, d.final = "seen", c.height, c.block_hash, False
        return [("deposit", key, "seen")]

    def _deposit(self, c: Any) -> tuple[str, MDeposit]:
        key = f"{c.chain}:{c.txid}:{c.index}"
        d = self.deposits.get(key)
        if d is None:
            raise Refuse("RF_NOT_FOUND", "no such deposit")
        return key, d

    def credit_deposit(self, c: Any) -> list[tuple[Any, ...]]:
        key, d = self._deposit(c)
        if not 0 <= c.score <= 100:
            raise Refuse("RF_VALIDATION")
        if d.state == "seen" and c.confirmations < self.custody[d.asset].credit_confirmations:
            raise Refuse("RF_CONFLICT", "too few confirmations")
        if d.state != "seen":
            return [("deposit", key, d.state)]
        if c.category in FREEZE_CATEGORIES:
            d.kind, d.state = "frozen", "frozen"
        elif c.score > QUARANTINE_ABOVE:
            d.kind, d.state = "quarantine", "quarantined"
        else:
            d.kind, d.state = "available", "credited"
        self.move((SYSTEM, d.asset, "world", "-"), (d.account, d.asset, d.kind, "spot"), d.amount)
        self.move(self._onchain(d.asset), self._custody_acct(d.asset, d.wallet), d.amount)
        return [("deposit", key, d.state)]

    def finalize_deposit(self, c: Any) -> list[tuple[Any, ...]]:
        key, d = self._deposit(c)
        if c.confirmations < self.custody[d.asset].finality_confirmations:
            raise Refuse("RF_CONFLICT", "too few confirmations for finality")
        if not d.final and d.state in CREDITED:
            d.final = True
        return [("deposit", key, d.state)]

    def reorg(self, c: Any) -> list[tuple[Any, ...]]:
        out = []
        for key, d in self.deposits.items():
            if d.chain != c.chain or d.height < c.fork_height or d.final or d.state in ("dropped", "reversed"):
                continue
            if d.state in CREDITED:
                user = (d.account, d.asset, d.kind, "spot")
                take = min(d.amount, self.available(user))
                self.move(user, (SYSTEM, d.asset, "world", "-"), take)
                if take < d.amount:
                    self.frozen_accounts.add(d.account)
                self.move(self._custody_acct(d.asset, d.wallet), self._onchain(d.asset), d.amount)
                d.state, d.kind = "reversed", ""
            else:
                d.state = "dropped"
            out.append(("deposit", key, d.state))
        return out

    def file_source_of_funds(self, c: Any) -> list[tuple[Any, ...]]:
        key = f"{c.chain}:{c.txid}:{c.index}"
        d = self.deposits.get(key)
        if d is None or d.account != c.account_id:
            raise Refuse("RF_NOT_FOUND")
        if d.state != "quarantined":
            raise Refuse("RF_CONFLICT")
        if len(c.declaration.strip()) < 10:
            raise Refuse("RF_VALIDATION")
        d.declaration = c.declaration.strip()
        return [("deposit", key, d.state)]

    def review_quarantine(self, c: Any) -> list[tuple[Any, ...]]:
        key, d = self._deposit(c)
        if c.decision not in ("release", "freeze"):
            raise Refuse("RF_VALIDATION")
        if "analyst" not in self.roles.get(c.analyst, set()) or c.analyst == d.account:
            raise Refuse("RF_FORBIDDEN")
        if d.state != "quarantined" or (c.decision == "release" and not d.declaration):
            raise Refuse("RF_CONFLICT")
        kind = "available" if c.decision == "release" else "frozen"
        self.move((d.account, d.asset, "quarantine", "spot"), (d.account, d.asset, kind, "spot"), d.amount)
        d.kind, d.state = kind, ("credited" if kind == "available" else "frozen")
        return [("deposit", key, d.state)]

    def _check_internal(self, c: Any) -> None:
        cfg = self.custody.get(c.asset)
        if cfg is None:
            raise Refuse("RF_UNSUPPORTED_ASSET")
        src, dst = self.wallets.get(c.from_wallet), self.wallets.get(c.to_wallet)
        if src is None or dst is None:
            raise Refuse("RF_NOT_FOUND")
        if src[0] != cfg.chain or dst[0] != cfg.chain or c.from_wallet == c.to_wallet:
            raise Refuse("RF_VALIDATION")
        if c.amount_minor <= 0:
            raise Refuse("RF_INVALID_AMOUNT")

    def transfer_signed(self, c: Any) -> list[tuple[Any, ...]]:
        """A sweep signed and journaled before broadcast: recorded as in flight, no money moves yet."""
        fields = (c.txid, c.asset, c.from_wallet, c.to_wallet, c.amount_minor)
        known = self.internal_transfers.get(c.transfer_id)
        if known is not None:
            if known[1][0] != c.txid:
                raise Refuse("RF_CONFLICT", "another transaction for this transfer id")
            return [("internal", c.transfer_id, known[0])]
        self._check_internal(c)
        self.internal_transfers[c.transfer_id] = ("signed", fields)
        return [("internal", c.transfer_id, "signed")]

    def reserve_nonce(self, c: Any) -> list[tuple[Any, ...]]:
        w = self.wallets.get(c.wallet)
        if w is None:
            raise Refuse("RF_NOT_FOUND")
        if w[0] != "ethereum":
            raise Refuse("RF_VALIDATION")
        key = "nonce:" + c.purpose_id
        if key not in self.internal_transfers:
            self.internal_transfers[key] = ("nonce", (self.next_nonce.get(c.wallet, 0),))
            self.next_nonce[c.wallet] = self.next_nonce.get(c.wallet, 0) + 1
        return [("nonce", c.purpose_id)]

    def internal_transfer(self, c: Any) -> list[tuple[Any, ...]]:
        known = self.internal_transfers.get(c.transfer_id)
        if known is not None and known[0] == "recorded":
            return [("internal", c.transfer_id)]
        if known is not None and known[1] != (c.txid, c.asset, c.from_wallet, c.to_wallet, c.amount_minor):
            raise Refuse("RF_CONFLICT", "does not match the signed transfer")
        cfg = self.custody.get(c.asset)
        if cfg is None:
            raise Refuse("RF_UNSUPPORTED_ASSET")
        src, dst = self.wallets.get(c.from_wallet), self.wallets.get(c.to_wallet)
        if src is None or dst is None:
            raise Refuse("RF_NOT_FOUND")
        if src[0] != cfg.chain or dst[0] != cfg.chain or c.from_wallet == c.to_wallet:
            raise Refuse("RF_VALIDATION")
        if c.amount_minor <= 0:
            raise Refuse("RF_INVALID_AMOUNT")
        self.move(self._custody_acct(c.asset, c.from_wallet), self._custody_acct(c.asset, c.to_wallet), c.amount_minor)
        self.move(self._custody_acct(c.asset, c.from_wallet), self._onchain(c.asset), c.network_fee_minor)
        self.internal_transfers[c.transfer_id] = ("recorded", (c.txid, c.asset, c.from_wallet, c.to_wallet, c.amount_minor))
        return [("internal", c.transfer_id)]

    def treasury_funding(self, c: Any) -> list[tuple[Any, ...]]:
        key = "funding:" + c.funding_id
        if key in self.internal_transfers:
            return [("internal", key)]
        cfg = self.custody.get(c.asset)
        if cfg is None:
            raise Refuse("RF_UNSUPPORTED_ASSET")
        w = self.wallets.get(c.wallet)
        if w is None:
            raise Refuse("RF_NOT_FOUND")
        if w[0] != cfg.chain:
            raise Refuse("RF_VALIDATION")
        if c.amount_minor <= 0:
            raise Refuse("RF_INVALID_AMOUNT")
        self.move(self._onchain(c.asset), self._custody_acct(c.asset, c.wallet), c.amount_minor)
        self.internal_transfers[key] = ("recorded", (c.txid, c.asset, "", c.wallet, c.amount_minor))
        return [("internal", key)]

    # ------------------------------------------------------------------ custody: withdrawals

    def _clearing_w(self, asset: str) -> Key:
        return (SYSTEM, asset, "clearing", "-")

    def _w(self, c: Any) -> MWithdrawal:
        w = self.withdrawals.get(c.withdrawal_id)
        if w is None:
            raise Refuse("RF_NOT_FOUND")
        if (c.asset, c.wallet) != (w.asset, w.wallet):
            raise Refuse("RF_VALIDATION")
        return w

    def _void(self, w: MWithdrawal, state: str) -> list[tuple[Any, ...]]:
        self.release((w.account, w.asset, "available", "spot"), self._clearing_w(w.asset), w.held)
        w.held, w.state = 0, state
        return [("withdrawal", w.id, state)]

    def request_withdrawal(self, c: Any, address_ok: bool) -> list[tuple[Any, ...]]:
        existing = self.withdrawals.get(c.withdrawal_id)
        if existing is not None:
            if (existing.account, existing.asset, existing.wallet, existing.amount) != (
                    c.account_id, c.asset, c.wallet, c.amount_minor):
                raise Refuse("RF_CONFLICT")
            return [("withdrawal", existing.id, existing.state)]
        cfg = self.custody.get(c.asset)
        if cfg is None:
            raise Refuse("RF_UNSUPPORTED_ASSET")
        if c.amount_minor <= 0 or c.fee_minor < 0:
            raise Refuse("RF_INVALID_AMOUNT")
        if not cfg.min_withdrawal <= c.amount_minor <= cfg.max_withdrawal:
            raise Refuse("RF_INVALID_AMOUNT")
        if c.fee_minor != cfg.fee:
            raise Refuse("RF_VALIDATION")
        w = self.wallets.get(c.wallet)
        if w is None:
            raise Refuse("RF_NOT_FOUND")
        if w != (cfg.chain, "hot"):
            raise Refuse("RF_VALIDATION")
        if not address_ok:
            raise Refuse(None, "bad address")
        if len(c.email_token_hash) != 64:
            raise Refuse("RF_VALIDATION")
        if c.account_id in self.frozen_accounts:
            raise Refuse("RF_FORBIDDEN")
        user = (c.account_id, c.asset, "available", "spot")
        total = c.amount_minor + c.fee_minor
        if self.available(user) < total:
            raise Refuse("RF_INSUFFICIENT_FUNDS")
        self.reserve(user, self._clearing_w(c.asset), total)
        self.withdrawals[c.withdrawal_id] = MWithdrawal(c.withdrawal_id, c.account_id, c.asset, c.wallet, c.amount_minor,
                                                        c.fee_minor, c.email_token_hash, self.now_ns, total,
                                                        address=c.address)
        return [("withdrawal", c.withdrawal_id, "requested")]

    def add_withdrawal_address(self, c: Any, address_ok: bool) -> list[tuple[Any, ...]]:
        if c.asset not in self.custody:
            raise Refuse("RF_UNSUPPORTED_ASSET")
        if not address_ok:
            raise Refuse("RF_INVALID_ADDRESS")
        key = (c.account_id, c.asset, c.address.lower())
        if key not in self.address_book:
            if sum(1 for a, asset, _ in self.address_book if (a, asset) == key[:2]) >= 100:
                raise Refuse("RF_VALIDATION", "allow list full")
            self.address_book.add(key)
        return [("address_book", key)]

    def confirm_email(self, c: Any) -> list[tuple[Any, ...]]:
        w = self._w(c)
        if w.state != "requested":
            return [("withdrawal", w.id, w.state)]
        if hashlib.sha256(c.token.encode()).hexdigest() != w.token_hash:
            raise Refuse("RF_FORBIDDEN", "wrong e-mail token")
        if self.now_ns - w.created_ns > EMAIL_TTL_NS:
            return self._void(w, "failed")
        w.state = "confirmed"
        return [("withdrawal", w.id, w.state)]

    def risk_review(self, c: Any) -> list[tuple[Any, ...]]:
        w = self._w(c)
        if not 0 <= c.score <= 100:
            raise Refuse("RF_VALIDATION")
        if w.state == "confirmed":
            w.state, w.manual = "reviewed", c.manual_review
        return [("withdrawal", w.id, w.state)]

    def decide(self, c: Any) -> list[tuple[Any, ...]]:
        w = self._w(c)
        if w.state != "reviewed":
            return [("withdrawal", w.id, w.state)]
        action, count, roles = "deny", 0, ()
        listed = (w.account, w.asset, w.address.lower()) in self.address_book
        for asset, amount_gt, unlisted_only, rule_action, rule_count, rule_roles in self.rules:
            if asset in ("", w.asset) and w.amount > amount_gt and not (unlisted_only and listed):
                action, count, roles = rule_action, rule_count, rule_roles
                break
        if w.manual and action in ("allow", "approvals", "delay"):
            action = "manual_review"
        if action == "deny":
            return self._void(w, "denied")
        if action == "manual_review":
            w.state = "manual_review"
        elif action == "approvals":
            w.state, w.required, w.roles, w.not_before = "awaiting_approvals", count, roles, self.now_ns
        else:
            w.state, w.not_before = "approved", self.now_ns
        return [("withdrawal", w.id, w.state)]

    def approve(self, c: Any) -> list[tuple[Any, ...]]:
        w = self._w(c)
        if c.approver == w.account or c.role not in self.roles.get(c.approver, set()):
            raise Refuse("RF_FORBIDDEN")
        if w.state != "awaiting_approvals":
            raise Refuse("RF_CONFLICT")
        if c.role not in w.roles:
            raise Refuse("RF_FORBIDDEN")
        w.approvals[c.approver] = self.now_ns + self.approval_ttl_ns
        if sum(1 for exp in w.approvals.values() if exp > self.now_ns) >= w.required:
            w.state, w.not_before = "approved", max(w.not_before, self.now_ns)
        return [("withdrawal", w.id, w.state)]

    def manual_review(self, c: Any) -> list[tuple[Any, ...]]:
        w = self._w(c)
        if c.analyst == w.account or "analyst" not in self.roles.get(c.analyst, set()):
            raise Refuse("RF_FORBIDDEN")
        if not c.reason.strip():
            raise Refuse("RF_VALIDATION")
        if w.state != "manual_review":
            raise Refuse("RF_CONFLICT")
        if not c.approve:
            return self._void(w, "rejected")
        w.state, w.not_before = "approved", max(w.not_before, self.now_ns)
        return [("withdrawal", w.id, w.state)]

    def authorize(self, c: Any) -> list[tuple[Any, ...]]:
        w = self._w(c)
        if w.state in ("signing", "signed", "broadcast", "settled"):
            return [("withdrawal", w.id, w.state)]
        if w.state != "approved":
            raise Refuse("RF_CONFLICT")
        if w.account in self.frozen_accounts:
            raise Refuse("RF_FORBIDDEN")
        if self.now_ns < w.not_before:
            raise Refuse("RF_CONFLICT")
        if w.required and sum(1 for exp in w.approvals.values() if exp > self.now_ns) < w.required:
            w.state = "awaiting_approvals"
        else:
            w.state = "signing"
            if self.wallets[w.wallet][0] == "ethereum":  # one nonce sequence per wallet, never reused
                w.nonce = self.next_nonce.get(w.wallet, 0)
                self.next_nonce[w.wallet] = w.nonce + 1
        return [("withdrawal", w.id, w.state)]

    def signed(self, c: Any) -> list[tuple[Any, ...]]:
        w = self._w(c)
        if w.txid:
            if w.txid == c.txid:
                return [("withdrawal", w.id, w.state)]
            raise Refuse("RF_CONFLICT")
        if w.state != "signing":
            raise Refuse("RF_CONFLICT")
        if not c.txid:
            raise Refuse("RF_VALIDATION")
        w.state, w.txid = "signed", c.txid
        return [("withdrawal", w.id, w.state)]

    def broadcast(self, c: Any) -> list[tuple[Any, ...]]:
        w = self._w(c)
        if c.txid != w.txid:
            raise Refuse("RF_CONFLICT")
        if w.state == "signed":
            w.state = "broadcast"
        return [("withdrawal", w.id, w.state)]

    def settle(self, c: Any) -> list[tuple[Any, ...]]:
        w = self._w(c)
        if w.state == "settled":
            return [("withdrawal", w.id, w.state)]
        if c.txid != w.txid or w.state not in ("signed", "broadcast"):
            raise Refuse("RF_CONFLICT")
        if c.confirmations < self.custody[w.asset].finality_confirmations:
            raise Refuse("RF_CONFLICT")
        if c.network_fee_minor < 0:
            raise Refuse("RF_INVALID_AMOUNT")
        user, clearing = (w.account, w.asset, "available", "spot"), self._clearing_w(w.asset)
        self.capture(user, clearing, w.held)
        self.move(clearing, (SYSTEM, w.asset, "world", "-"), w.amount)
        self.move(clearing, (SYSTEM, w.asset, "fees", "spot"), w.fee)
        self.move(self._custody_acct(w.asset, w.wallet), self._onchain(w.asset), w.amount + c.network_fee_minor)
        w.held, w.state = 0, "settled"
        return [("withdrawal", w.id, w.state)]

    def fail(self, c: Any) -> list[tuple[Any, ...]]:
        w = self._w(c)
        if w.state not in OPEN_WITHDRAWAL:
            return [("withdrawal", w.id, w.state)]
        return self._void(w, "failed")

    def cancel_withdrawal(self, c: Any) -> list[tuple[Any, ...]]:
        w = self._w(c)
        if w.account != c.account_id:
            raise Refuse("RF_FORBIDDEN")
        if w.state not in OPEN_WITHDRAWAL:
            return [("withdrawal", w.id, w.state)]
        if w.state in ("signing", "signed", "broadcast"):
            raise Refuse("RF_CONFLICT")
        return self._void(w, "failed")

    # ------------------------------------------------------------------ views for comparison

    def account_rows(self) -> dict[Key, tuple[int, int, int]]:
        return {k: b.row() for k, b in self.accounts.items() if b.row() != (0, 0, 0)}

    def market_rows(self) -> dict[str, tuple[Any, ...]]:
        return {s: (m.status, m.auto_reduce, m.out_of_band_since >= 0, m.ref_price, m.last_price)
                for s, m in self.markets.items()}

    def order_rows(self) -> dict[str, dict[int, tuple[Any, ...]]]:
        return {s: {o.id: (o.owner, "BUY" if o.is_buy else "SELL", o.price, o.leaves, o.held, o.resting)
                    for o in m.orders.values()} for s, m in self.markets.items()}

    def withdrawal_rows(self) -> dict[str, tuple[str, int]]:
        return {w.id: (w.state, w.nonce) for w in self.withdrawals.values()}

    def internal_rows(self) -> dict[str, tuple[str, int]]:
        """id -> (state, amount) of sweeps and fundings; for reserved nonces (state, the nonce)."""
        return {k: ("recorded" if state == "nonce" else state, fields[0] if state == "nonce" else fields[4])
                for k, (state, fields) in self.internal_transfers.items()}

    def pending_rows(self) -> dict[int, tuple[str, int]]:
        return {pid: (p.status, p.remaining) for pid, p in self.pending.items()}
