"""What the simulation sends: the simulated exchange (assets, markets, wallets, policy, operators)
and one generator per action, each building a command (valid or deliberately not) and handing it
to the audited step `self.do(command, predict)` with the model's prediction.

Every choice comes from `self.rng`, so a seed replays the same workload. `ACTIONS` weighs the
actions; the runner draws one per step.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
from typing import TYPE_CHECKING, Any, Callable

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ..custody.commands import (
    ActivatePolicy,
    AddWithdrawalAddress,
    AssignDepositAddress,
    AuthorizeSigning,
    CancelWithdrawal,
    ConfigureCustodyAsset,
    ConfirmWithdrawalEmail,
    CreditDeposit,
    DecideWithdrawal,
    FailWithdrawal,
    FileSourceOfFunds,
    FinalizeDeposit,
    ObserveDeposit,
    RecordBroadcast,
    RecordInternalTransfer,
    RecordRiskReview,
    RecordSignedTx,
    RecordTransferSigned,
    RecordTreasuryFunding,
    RegisterWallet,
    ReorgDeposits,
    RequestWithdrawal,
    ReserveWalletNonce,
    SettleWithdrawal,
)
from ..derivatives.commands import (
    AdjustIsolatedMargin,
    FuturesTransfer,
    LiquidateAccount,
    LiquidatePosition,
    ListPerpetual,
    PlacePerpOrder,
    SetLeverage,
    SetMarginType,
)
from ..engine.node import Node
from ..ledger.commands import CreateTransfers, OpenAccount, RegisterAsset
from ..ledger.model import Transfer, TransferFlags
from ..index.auth import admin_action, admin_subject
from ..index.commands import ConfigureIndex, RegisterFeedKey, SubmitQuote, quote_message
from ..risk.halts import Halt, LiftHaltSigned, lift_subject
from ..staff import AddStaff, RemoveStaff, StaffKey, StaffSignature, add_subject, remove_subject
from ..staff.desk import StaffDesk
from ..trading.commands import (
    AmendOrder,
    CancelAll,
    CancelOrder,
    ListMarket,
    PlaceOrder,
    SetAccountFeeTier,
    SetFeeTier,
    SetMarketStatus,
    SetReferencePrice,
    TradingBatch,
)
from .model import CustodyRules, MarketRules, Model, PerpRules, Refuse

__all__ = ["Workload", "ACTIONS", "PERP_ACTIONS"]

USERS = ("ann", "ben", "cat", "dan", "eve")
ASSETS = (("BTC", 8, "crypto", "bitcoin"), ("USDT", 6, "crypto", "ethereum"), ("AAPLX", 4, "tokenized", ""))
MARKETS = (
    MarketRules("BTCUSDT", "BTC", "USDT", "spot", 10**8, 10**6, 10**5, 10**5, 10**9, 50_000, 12),
    # A ±0.2 % band around the reference price (±38 ticks at 190 USDT); the timer fires after 20 ms.
    MarketRules("AAPLXUSDT", "AAPLX", "USDT", "tokenized", 10**4, 10**4, 100, 100, 10**7, 50_000, 12, 2_000, 20_000_000),
)
MID = {"BTCUSDT": 60_000 * 10**6, "AAPLXUSDT": 190 * 10**6}
#: BTCUSDT's index: five signed venues, 3 live needed, ±1 % clamp, stale after 1 s of sequencer time
#: (a few hundred steps), so sources go stale now and then and the market goes REDUCE_ONLY and back.
FEED_VENUES = ("fx1", "fx2", "fx3", "fx4", "fx5")
INDEX = {"symbol": "BTCUSDT", "min_sources": 3, "clamp_ppm": 10_000, "stale_after_ns": 10**9, "max_ahead_ns": 2 * 10**9}
CUSTODY = (
    CustodyRules("BTC", "bitcoin", 1, 3, 1_000, 10_000, 5 * 10**8, 500),
    CustodyRules("USDT", "ethereum", 1, 3, 10_000, 10**6, 10**11, 10**6),
)
WALLETS = (("btc_deposit", "bitcoin", "deposit"), ("btc_hot", "bitcoin", "hot"), ("btc_cold", "bitcoin", "cold"),
           ("eth_deposit", "ethereum", "deposit"), ("eth_hot", "ethereum", "hot"))
HOT = {"BTC": "btc_hot", "USDT": "eth_hot"}
DEPOSIT_WALLET = {"BTC": "btc_deposit", "USDT": "eth_deposit"}
CHAIN = {"BTC": "bitcoin", "USDT": "ethereum"}
#: The genesis staff (signed decisions, `ringfence.staff`): op1..op3 are the operator quorum (2).
ROLES = {"ops1": ["approver"], "ops2": ["approver"], "ops3": ["approver"], "ana1": ["analyst"], "ana2": ["analyst"],
         "pa1": ["policy_admin"], "pa2": ["policy_admin"], "pa3": ["policy_admin"],
         "op1": ["operator"], "op2": ["operator"], "op3": ["operator"]}
QUORUM = 2
#: Staff who are also customers here: never-the-initiator refuses their decisions on these accounts.
STAFF_ACCOUNTS = {"ops3": ["ann"], "ana2": ["ben"]}
#: The withdrawal policy (first match wins): deny above 4 BTC / 90k USDT; two approvers above 0.5 BTC /
#: 20k USDT; one approver for more than 0.05 BTC to an address not on the allow list, or when a user's
#: USDT withdrawals in the last hour would pass 12k; allow the rest. MODEL_RULES is the same policy in
#: the auditor's terms.
POLICY = {"version": 1, "approval_ttl_s": 86400, "rules": [
    {"name": "btc-huge", "when": {"asset": ["BTC"], "amount_minor_gt": 400_000_000}, "action": {"type": "deny"}},
    {"name": "usdt-huge", "when": {"asset": ["USDT"], "amount_minor_gt": 90_000 * 10**6}, "action": {"type": "deny"}},
    {"name": "btc-big", "when": {"asset": ["BTC"], "amount_minor_gt": 50_000_000},
     "action": {"type": "approvals", "count": 2, "roles": ["approver"]}},
    {"name": "usdt-big", "when": {"asset": ["USDT"], "amount_minor_gt": 20_000 * 10**6},
     "action": {"type": "approvals", "count": 2, "roles": ["approver"]}},
    {"name": "btc-new-address", "when": {"asset": ["BTC"], "allow_listed": False, "amount_minor_gt": 5_000_000},
     "action": {"type": "approvals", "count": 1, "roles": ["approver"]}},
    {"name": "usdt-velocity", "when": {"asset": ["USDT"], "user_velocity": {"window_s": 3600, "amount_minor_gt": 12_000 * 10**6}},
     "action": {"type": "approvals", "count": 1, "roles": ["approver"]}},
    {"name": "small", "when": {}, "action": {"type": "allow"}},
]}
MODEL_RULES = [("BTC", 400_000_000, False, None, "deny", 0, ()), ("USDT", 90_000 * 10**6, False, None, "deny", 0, ()),
               ("BTC", 50_000_000, False, None, "approvals", 2, ("approver",)),
               ("USDT", 20_000 * 10**6, False, None, "approvals", 2, ("approver",)),
               ("BTC", 5_000_000, True, None, "approvals", 1, ("approver",)),
               ("USDT", -1, False, (3600, 12_000 * 10**6), "approvals", 1, ("approver",)),
               ("", -1, False, None, "allow", 0, ())]
HALT_SCOPES = (("venue", "*"), ("market", "BTCUSDT"), ("market", "AAPLXUSDT"), ("segment", "spot"),
               ("segment", "tokenized"), ("asset", "BTC"), ("asset", "USDT"), ("asset", "AAPLX"),
               ("asset", "BTC@btc_hot"), ("asset", "USDT@eth_hot"))

#: Every action the workload draws from, with its weight (crash weight is a parameter).
ACTIONS: dict[str, int] = {
    "ledger.deposit": 5, "ledger.transfer": 4, "ledger.withdraw": 2, "ledger.hold": 3, "ledger.post": 2,
    "ledger.void": 2, "ledger.linked": 2, "ledger.duplicate": 2, "ledger.bad_transfer": 2, "edge.invalid": 2,
    "trade.limit": 16, "trade.post_only": 4, "trade.market": 5, "trade.stop": 4, "trade.cancel": 6,
    "trade.cancel_all": 1, "trade.amend": 6, "trade.invalid": 3, "trade.batch": 3, "trade.reference_price": 3,
    "trade.market_status": 1,
    "custody.observe": 5, "custody.credit": 5, "custody.finalize": 2, "custody.reorg": 1, "custody.reobserve": 1,
    "custody.source_of_funds": 1, "custody.review": 1, "custody.sweep": 2, "custody.sweep_signed": 1,
    "custody.treasury": 1, "custody.reserve_nonce": 1,
    "withdrawal.request": 4, "withdrawal.advance": 10, "withdrawal.allow_list": 1,
    "halt.raise": 1, "halt.lift": 2, "halt.lift_forged": 2, "operators.rotate": 1,
    "index.quote": 6, "index.quote_bad": 2, "index.outage": 1, "index.feed_key": 1,
    "fault.snapshot": 1, "fault.group_commit": 3,
}

#: The perpetuals workload (`ringfence sim --workload perps`): BTCUSDTPERP marked against the
#: BTCUSDT index, funding every 60 s of sequencer time (a step jumps there), three brackets.
PERP = PerpRules("BTCUSDTPERP", "BTC", "USDT", "BTCUSDT", 10**8,
                 ((50_000 * 10**6, 50, 10_000, 0), (500_000 * 10**6, 20, 25_000, 750 * 10**6),
                  (5_000_000 * 10**6, 10, 50_000, 13_250 * 10**6)),
                 20, 1_000 * 10**6, 100, 500, 7_500, 60 * 10**9)
PERP_MARKET = MarketRules("BTCUSDTPERP", "BTC", "USDT", "derivatives", 10**8, 10**6, 10**5, 10**5, 10**9, 50_000, 200)
PERP_ACTIONS: dict[str, int] = {
    "perp.transfer": 4, "perp.leverage": 1, "perp.margin_type": 1, "perp.isolated_margin": 2, "perp.order": 20,
    "perp.cancel": 4, "perp.funding": 1, "perp.liquidate": 3, "index.quote": 8, "fault.snapshot": 1,
}
#: A trader with little collateral at 50x (and a cross account, until it switches): whose cross
#: account falls below maintenance now and then.
RISKY = "eve"
#: What the derivatives insurance fund starts with in the perps workload (drawn per run): empty (it
#: grows by its tenth of the fees; a bankrupt account's deficit may be auto-deleveraged), or 10M
#: USDT (losses past bankruptcy are the fund's).
PERP_INSURANCE = (0, 10**13)


class Workload:
    """The action generators, mixed into the runner, which provides the audited step `do(command,
    predict)`, `audit()`, `engine`, `_refresh_ids()` and the attributes declared here."""

    rng: random.Random
    model: Model
    node: Node
    result: Any
    ids: dict[tuple[str, str, str, str], int]
    keys: dict[int, tuple[str, str, str, str]]
    serial: int
    next_tid: int
    tip: dict[str, int]
    tokens: dict[str, str]
    txids: dict[str, str]
    listed: dict[tuple[str, str], list[str]]
    operator_keys: dict[str, StaffKey]
    retired_keys: dict[str, StaffKey]
    spent_lift: list[StaffSignature]
    desk: StaffDesk
    feed_keys: dict[str, Ed25519PrivateKey]
    feed_seq: dict[str, int]
    last_quote: dict[str, SubmitQuote]
    planned_ts: int
    step: int

    if TYPE_CHECKING:  # provided by the runner

        def do(self, command: Any, predict: Callable[[], list[tuple[Any, ...]]], *,
               malformed: bool = False) -> list[Any] | None: ...

        def audit(self, command: Any = None) -> None: ...

        def _refresh_ids(self) -> None: ...

        @property
        def engine(self) -> Any: ...

    def setup(self) -> None:
        node, model, rng = self.node, self.model, self.rng
        commands: list[Any] = [RegisterAsset(*a) for a in ASSETS]
        for user in USERS:
            for code, _, _, _ in ASSETS:
                for segment in ("spot", "tokenized"):
                    commands.append(OpenAccount(user, code, "available", segment))
        for r in MARKETS:
            commands.append(ListMarket(r.symbol, r.base, r.quote, r.segment, r.tick, r.lot, r.min_qty, r.max_qty, 0,
                                       r.band_ppm, r.band_timeout_ns, market_slippage_ppm=r.slippage_ppm,
                                       max_open_orders_per_account=r.max_open))
            model.list_market(r)
            if r.band_ppm:
                commands.append(SetReferencePrice(r.symbol, MID[r.symbol]))
                model.markets[r.symbol].ref_price = MID[r.symbol]
        commands += [SetFeeTier(1, 15, 333), SetAccountFeeTier("cat", 1)]
        model.tiers[1] = (15, 333)
        model.account_tier["cat"] = 1
        for c in CUSTODY:
            commands.append(ConfigureCustodyAsset(c.asset, c.chain, "regtest" if c.chain == "bitcoin" else "mainnet",
                                                  c.credit_confirmations, c.finality_confirmations, c.min_deposit,
                                                  c.min_withdrawal, c.max_withdrawal, c.fee))
            model.custody[c.asset] = c
        for name, chain, tier in WALLETS:
            commands.append(RegisterWallet(name, chain, tier, []))
            model.wallets[name] = (chain, tier)
        for user in USERS:
            for asset in ("BTC", "USDT"):
                address = self._deposit_address(user, asset)
                commands.append(AssignDepositAddress(user, CHAIN[asset], DEPOSIT_WALLET[asset], address))
                model.deposit_addresses[f"{CHAIN[asset]}:{address}"] = (user, DEPOSIT_WALLET[asset])
        # The index's feed keys and configuration, before the staff genesis (no staff yet: a genesis
        # change carries no approvals; once staff exist the operator quorum signs index changes).
        self.feed_keys = {v: Ed25519PrivateKey.from_private_bytes(rng.randbytes(32)) for v in FEED_VENUES}
        self.feed_seq, self.last_quote = {v: 0 for v in FEED_VENUES}, {}
        commands += [RegisterFeedKey(v, self._public(k)) for v, k in self.feed_keys.items()]
        commands.append(ConfigureIndex(INDEX["symbol"], [(v, 1) for v in FEED_VENUES], INDEX["min_sources"],
                                       clamp_ppm=INDEX["clamp_ppm"], stale_after_ns=INDEX["stale_after_ns"],
                                       max_ahead_ns=INDEX["max_ahead_ns"]))
        keys = {who: StaffKey(who, Ed25519PrivateKey.from_private_bytes(rng.randbytes(32))) for who in ROLES}
        self.desk = StaffDesk(keys, self._clock, nonce=lambda: self.rng.randbytes(16).hex())
        commands.append(self.desk.genesis(ROLES, QUORUM, STAFF_ACCOUNTS))
        for who, roles in ROLES.items():
            model.roles[who] = set(roles)
            model.staff_accounts[who] = set(STAFF_ACCOUNTS.get(who, ()))
        model.rules = list(MODEL_RULES)
        self.operator_keys = {who: k for who, k in keys.items() if "operator" in ROLES[who]}
        self.retired_keys, self.spent_lift = {}, []
        model.staff_genesis(sorted(self.operator_keys), QUORUM)
        node.execute_many(commands)
        # The policy needs its admins registered first (a precheck sees the state before the batch).
        node.execute(self.desk.propose_policy("policy-1", json.dumps(POLICY), "pa1"))
        for admin in ("pa2", "pa3"):
            node.execute(self.desk.approve_policy(self.engine, "policy-1", admin))
        node.execute(ActivatePolicy("policy-1"))
        # One quote per venue (a precheck needs the index configured: a batch of its own).
        first_quotes = [self._quote(v, MID["BTCUSDT"]) for v in FEED_VENUES]
        node.execute_many(first_quotes)
        model.now_ns = self.engine.now_ns
        for v in FEED_VENUES:
            model.register_feed_key(v)
        model.configure_index(INDEX["symbol"], {v: 1 for v in FEED_VENUES}, INDEX["min_sources"], INDEX["clamp_ppm"],
                              INDEX["stale_after_ns"], INDEX["max_ahead_ns"], 0)
        for q in first_quotes:
            model.quote(q, True, 0)
            self.last_quote[q.venue] = q
        self._refresh_ids()
        self.audit()
        # Starting balances, through the audited path like every later step.
        for user in USERS:
            funding = [("BTC", "spot", 20 * 10**8), ("USDT", "spot", 2 * 10**12), ("USDT", "tokenized", 10**11),
                       ("AAPLX", "tokenized", 10**8)]
            transfers = [Transfer(self._tid(), self.ids[("system", a, "world", "-")], self.ids[(user, a, "available", s)], amount)
                         for a, s, amount in funding]
            self.do(CreateTransfers(transfers), functools.partial(self._ledger, transfers))

    @staticmethod
    def _public(key: Ed25519PrivateKey) -> str:
        return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()

    @staticmethod
    def _deposit_address(user: str, asset: str) -> str:
        digest = hashlib.sha256(f"{user}/{asset}".encode()).hexdigest()
        return "0x" + digest[:40] if asset == "USDT" else "bcrt1q" + digest[:38]

    def _tid(self) -> int:
        self.next_tid += 1
        return self.next_tid

    def _ledger(self, transfers: list[Transfer]) -> list[tuple[Any, ...]]:
        return [("transfers", self.model.create_transfers(transfers, self.keys))]

    def _user_account(self, asset: str | None = None) -> tuple[int, tuple[str, str, str, str]]:
        asset = asset or self.rng.choice(("BTC", "USDT", "AAPLX"))
        segment = "tokenized" if asset == "AAPLX" else self.rng.choice(("spot", "tokenized"))
        key = (self.rng.choice(USERS), asset, "available", segment)
        return self.ids[key], key

    def _amount(self, asset: str) -> int:
        return self.rng.choice([1, 7, 10**3, 10**5, 10**7, 10**9, self.rng.randrange(1, 10**10)])

    def _transfers(self, transfers: list[Transfer]) -> None:
        self.do(CreateTransfers(transfers), lambda: self._ledger(transfers))

    def a_ledger_deposit(self) -> None:
        aid, key = self._user_account()
        self._transfers([Transfer(self._tid(), self.ids[("system", key[1], "world", "-")], aid, self._amount(key[1]))])

    def a_ledger_withdraw(self) -> None:
        aid, key = self._user_account()
        self._transfers([Transfer(self._tid(), aid, self.ids[("system", key[1], "world", "-")], self._amount(key[1]))])

    def _pair(self) -> tuple[int, int, str]:
        a, key = self._user_account()
        others = [self.ids[(u, key[1], "available", key[3])] for u in USERS if u != key[0]]
        return a, self.rng.choice(others), key[1]

    def a_ledger_transfer(self) -> None:
        a, b, asset = self._pair()
        self._transfers([Transfer(self._tid(), a, b, self._amount(asset))])

    def a_ledger_hold(self) -> None:
        a, b, asset = self._pair()
        timeout = self.rng.choice([0, 0, 3_000_000, 50_000_000, 10**10])
        self._transfers([Transfer(self._tid(), a, b, self._amount(asset), flags=TransferFlags.PENDING, timeout_ns=timeout)])

    def _post_or_void(self, flag: int) -> None:
        open_ids = [pid for pid, p in self.model.pending.items() if p.status == "pending"]
        if open_ids and self.rng.random() < 0.8:  # float-ok: coin flip
            target = self.rng.choice(open_ids)
        else:
            target = self.rng.randrange(1, self.next_tid + 2)
        amount = self.rng.choice([0, 0, self.rng.randrange(1, 10**9)])
        self._transfers([Transfer(self._tid(), 0, 0, amount, pending_id=target, flags=flag)])

    def a_ledger_post(self) -> None:
        self._post_or_void(TransferFlags.POST_PENDING)

    def a_ledger_void(self) -> None:
        self._post_or_void(TransferFlags.VOID_PENDING)

    def a_ledger_linked(self) -> None:
        a, b, asset = self._pair()
        world = self.ids[("system", asset, "world", "-")]
        c = self.rng.choice([x for x in (self.ids[(u, asset, "available", self.keys[a][3])] for u in USERS) if x not in (a, b)])
        chain = [Transfer(self._tid(), world, a, self.rng.randrange(1, 10**6), flags=TransferFlags.LINKED),
                 Transfer(self._tid(), a, b, self.rng.randrange(1, 2 * 10**6), flags=TransferFlags.LINKED),
                 Transfer(self._tid(), b, c, self.rng.randrange(1, 10**6))]
        if self.rng.random() < 0.1:  # float-ok: a chain that never closes
            chain[-1] = Transfer(chain[-1].id, b, c, 5, flags=TransferFlags.LINKED)
        self._transfers(chain)

    def a_ledger_duplicate(self) -> None:
        if not self.model.transfers:
            return
        t = self.model.transfers[self.rng.choice(sorted(self.model.transfers))]
        if self.rng.random() < 0.5:  # float-ok: the same body, or the same id with another amount
            t = Transfer(t.id, t.debit_account_id, t.credit_account_id, t.amount + 1, t.pending_id, t.timeout_ns, t.flags)
        self._transfers([t])

    def a_ledger_bad_transfer(self) -> None:
        a, b, asset = self._pair()
        other_asset = self.ids[(self.keys[a][0], "AAPLX" if asset != "AAPLX" else "USDT", "available", "tokenized")]
        bad = self.rng.choice([
            Transfer(self._tid(), a, a, 5),
            Transfer(self._tid(), a, other_asset, 5),
            Transfer(self._tid(), a, b, 0),
            Transfer(self._tid(), a, 10**6, 5),
            Transfer(self._tid(), 10**6, b, 5),
            Transfer(self._tid(), a, b, 5, timeout_ns=1000),
            Transfer(0, a, b, 5),
            Transfer(self._tid(), a, b, 5, flags=TransferFlags.PENDING | TransferFlags.POST_PENDING),
            Transfer(self._tid(), a, b, 5, pending_id=3),
        ])
        self._transfers([bad])

    def a_edge_invalid(self) -> None:
        a, b, asset = self._pair()
        bad = self.rng.choice([
            CreateTransfers([Transfer(self._tid(), a, b, 1.5)]),  # type: ignore[arg-type]
            CreateTransfers([Transfer(self._tid(), a, b, "7")]),  # type: ignore[arg-type]
            CreateTransfers([]),
            OpenAccount("ann", "NOPE"),
            OpenAccount("Not Valid", asset),
            RegisterAsset("BTC", 2, "crypto"),
            PlaceOrder("ann", "BTCUSDT", "BUY", price=1.5, quantity=10**5),  # type: ignore[arg-type]
            RequestWithdrawal("w-bad", "ann", "BTC", "btc_hot", "x", True, 0, "0" * 64),  # type: ignore[arg-type]
        ])

        def refused() -> list[tuple[Any, ...]]:
            raise Refuse(None, "malformed or unknown")

        self.do(bad, refused, malformed=True)

    def _market(self) -> MarketRules:
        return self.rng.choice(MARKETS)

    def _price(self, r: MarketRules, is_buy: bool) -> int:
        k = self.rng.randrange(-10, 4) if is_buy else self.rng.randrange(-3, 11)
        return MID[r.symbol] + k * r.tick

    def _qty(self, r: MarketRules) -> int:
        return r.lot * self.rng.choice([1, 1, 2, 3, 5, 8, 13])

    def _stp(self) -> str:
        return self.rng.choices(["NONE", "EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"], weights=[7, 1, 1, 1])[0]

    def _coid(self) -> str:
        return self.rng.choice(["", "", "", "c1", "c2", "c3"])

    def _limit(self) -> PlaceOrder:
        r, is_buy = self._market(), self.rng.random() < 0.5  # float-ok: coin flip
        tif = self.rng.choices(["GTC", "IOC", "FOK"], weights=[7, 2, 2])[0]
        return PlaceOrder(self.rng.choice(USERS), r.symbol, "BUY" if is_buy else "SELL", "LIMIT", tif,
                          self._price(r, is_buy), self._qty(r), client_order_id=self._coid(), stp=self._stp())

    def _post_only(self) -> PlaceOrder:
        r, is_buy = self._market(), self.rng.random() < 0.5  # float-ok: coin flip
        return PlaceOrder(self.rng.choice(USERS), r.symbol, "BUY" if is_buy else "SELL", "LIMIT_MAKER", "GTC",
                          self._price(r, is_buy), self._qty(r), client_order_id=self._coid())

    def _market_order(self) -> PlaceOrder:
        r, is_buy = self._market(), self.rng.random() < 0.5  # float-ok: coin flip
        side, owner = "BUY" if is_buy else "SELL", self.rng.choice(USERS)
        if self.rng.random() < 0.35:  # float-ok: by quote amount
            return PlaceOrder(owner, r.symbol, side, "MARKET", "IOC", quote_amount=self.rng.randrange(10**6, 10**9), stp=self._stp())
        protect = self._price(r, not is_buy) if self.rng.random() < 0.3 else 0  # float-ok: explicit protection price
        return PlaceOrder(owner, r.symbol, side, "MARKET", "IOC", price=protect, quantity=self._qty(r), stp=self._stp())

    def _stop(self) -> PlaceOrder:
        r, is_buy = self._market(), self.rng.random() < 0.5  # float-ok: coin flip
        last = self.model.markets[r.symbol].last_price or MID[r.symbol]
        k = self.rng.randrange(0, 6)
        stop = last + k * r.tick if is_buy else last - k * r.tick
        side, owner = "BUY" if is_buy else "SELL", self.rng.choice(USERS)
        if self.rng.random() < 0.5:  # float-ok: stop-limit or stop-market
            price = stop + (2 * r.tick if is_buy else -2 * r.tick)
            return PlaceOrder(owner, r.symbol, side, "STOP_LIMIT", self.rng.choice(["GTC", "GTC", "IOC"]), price,
                              self._qty(r), stop_price=stop, client_order_id=self._coid())
        return PlaceOrder(owner, r.symbol, side, "STOP_MARKET", "IOC", quantity=self._qty(r), stop_price=stop)

    def _open_orders(self, resting_only: bool = False) -> list[tuple[str, Any]]:
        return [(s, o) for s, m in self.model.markets.items() for o in m.orders.values() if o.resting or not resting_only]

    def _cancel(self) -> Any:
        open_orders = self._open_orders()
        if not open_orders or self.rng.random() < 0.15:  # float-ok: an unknown order
            return CancelOrder(self.rng.choice(USERS), self._market().symbol, self.rng.randrange(1, 10**6))
        symbol, o = self.rng.choice(open_orders)
        owner = o.owner if self.rng.random() < 0.9 else self.rng.choice(USERS)  # float-ok: sometimes not the owner's
        if o.coid and self.rng.random() < 0.5:  # float-ok: by client order id
            return CancelOrder(owner, symbol, 0, o.coid)
        return CancelOrder(owner, symbol, o.id)

    def _amend(self) -> Any:
        resting = self._open_orders(resting_only=True)
        if not resting:
            return self._limit()
        symbol, o = self.rng.choice(resting)
        r = self.model.markets[symbol].rules
        kind = self.rng.choice(["reduce", "reduce", "reprice", "grow", "off_tick", "below_filled"])
        if kind == "reduce":
            return AmendOrder(o.owner, symbol, o.id, 0, max(o.filled + r.lot, o.qty - r.lot))
        if kind == "reprice":
            return AmendOrder(o.owner, symbol, o.id, o.price + self.rng.randrange(-4, 5) * r.tick, 0)
        if kind == "grow":
            return AmendOrder(o.owner, symbol, o.id, 0, o.qty + self.rng.randrange(1, 4) * r.lot)
        if kind == "off_tick":
            return AmendOrder(o.owner, symbol, o.id, o.price + 1, 0)
        return AmendOrder(o.owner, symbol, o.id, 0, o.filled if o.filled else r.lot // 2 or 1)

    def _invalid_order(self) -> PlaceOrder:
        r = self._market()
        owner, price, qty = self.rng.choice(USERS), MID[r.symbol], r.lot
        return self.rng.choice([
            PlaceOrder(owner, r.symbol, "HOLD", "LIMIT", "GTC", price, qty),
            PlaceOrder(owner, r.symbol, "BUY", "ICEBERG", "GTC", price, qty),
            PlaceOrder(owner, r.symbol, "BUY", "LIMIT", "GTD", price, qty),
            PlaceOrder(owner, r.symbol, "BUY", "LIMIT", "GTC", price + 1, qty),
            PlaceOrder(owner, r.symbol, "SELL", "LIMIT", "GTC", price, qty + 1),
            PlaceOrder(owner, r.symbol, "BUY", "MARKET", "FOK", 0, qty),
            PlaceOrder(owner, r.symbol, "SELL", "LIMIT_MAKER", "IOC", price, qty),
            PlaceOrder(owner, "DOGEUSDT", "BUY", "LIMIT", "GTC", price, qty),
            PlaceOrder(owner, r.symbol, "BUY", "LIMIT", "GTC", price, r.max_qty),
            PlaceOrder(owner, r.symbol, "BUY", "LIMIT", "GTC", 0, qty),
            PlaceOrder(owner, r.symbol, "BUY", "MARKET", "IOC", 0, qty, quote_amount=10**6),
        ])

    def _trade(self, action: Any) -> None:
        self.do(action, lambda: self.model.trading(action))

    def a_trade_limit(self) -> None:
        self._trade(self._limit())

    def a_trade_post_only(self) -> None:
        self._trade(self._post_only())

    def a_trade_market(self) -> None:
        self._trade(self._market_order())

    def a_trade_stop(self) -> None:
        self._trade(self._stop())

    def a_trade_cancel(self) -> None:
        self._trade(self._cancel())

    def a_trade_cancel_all(self) -> None:
        self._trade(CancelAll(self.rng.choice(USERS), self._market().symbol))

    def a_trade_amend(self) -> None:
        self._trade(self._amend())

    def a_trade_invalid(self) -> None:
        self._trade(self._invalid_order())

    def a_trade_reference_price(self) -> None:
        r = MARKETS[1] if self.rng.random() < 0.85 else MARKETS[0]  # float-ok: mostly the banded market
        price = MID[r.symbol] + self.rng.randrange(-50, 51) * r.tick
        c = SetReferencePrice(r.symbol, price if self.rng.random() < 0.97 else 0)  # float-ok: sometimes invalid

        def predict() -> list[tuple[Any, ...]]:
            self.model.reference_follows_index(c.symbol)  # the index module's guard, before the precheck
            if c.price <= 0:
                raise Refuse("RF_VALIDATION", "price must be positive")
            return self.model.trading(c)

        self.do(c, predict)

    def a_trade_market_status(self) -> None:
        """`SetMarketStatus` is retired (a quorum-less halt): refused with RF_FORBIDDEN, unless a
        halt refuses it first (the halt guard runs before the edge's precheck)."""
        status = self.rng.choices(["ACTIVE", "REDUCE_ONLY", "HALTED", "PAUSED"], weights=[6, 1, 1, 1])[0]
        c = SetMarketStatus(self._market().symbol, status)
        self.do(c, lambda: self.model.trading(c))

    def a_trade_batch(self) -> None:
        makers = [self._limit, self._post_only, self._market_order, self._cancel, self._amend, self._invalid_order]
        actions: list[Any] = []
        for _ in range(self.rng.randrange(2, 5)):
            actions.append(self.rng.choice(makers)())
        batch = TradingBatch(actions)

        def predict() -> list[tuple[Any, ...]]:
            out: list[tuple[Any, ...]] = []
            for action in actions:
                out += self.model.trading(action)
            return out

        self.do(batch, predict)

    def a_custody_observe(self) -> None:
        asset = self.rng.choice(("BTC", "USDT"))
        cfg, chain, user = self.model.custody[asset], CHAIN[asset], self.rng.choice(USERS)
        self.tip[chain] += self.rng.randrange(0, 2)
        amount = self.rng.randrange(1, cfg.min_deposit) if self.rng.random() < 0.1 else self.rng.randrange(cfg.min_deposit, cfg.min_deposit * 10**5)  # float-ok
        address = self._deposit_address(user, asset) if self.rng.random() < 0.95 else "0x" + "ab" * 20  # float-ok: unknown
        c = ObserveDeposit(chain, self.rng.randbytes(32).hex(), self.rng.randrange(0, 3), asset, address, amount,
                           self.tip[chain], self.rng.randbytes(8).hex())
        self.do(c, lambda: self.model.observe_deposit(c))

    def _some_deposit(self, states: tuple[str, ...]) -> tuple[str, Any] | None:
        keys = [k for k, d in self.model.deposits.items() if d.state in states]
        if not keys:
            return None
        key = self.rng.choice(keys)
        return key, self.model.deposits[key]

    @staticmethod
    def _ref(key: str) -> tuple[str, str, int]:
        chain, txid, index = key.split(":")
        return chain, txid, int(index)

    def a_custody_credit(self) -> None:
        found = self._some_deposit(("seen", "seen", "seen", "credited", "below_minimum"))
        if found is None:
            return self.a_custody_observe()
        chain, txid, index = self._ref(found[0])
        score = self.rng.choice([0, 5, 20, 50, 86, 99])
        category = "sanctions" if self.rng.random() < 0.05 else ""  # float-ok
        c = CreditDeposit(chain, txid, index, self.rng.choice([0, 1, 2, 6]), score, ["sim"], category)
        self.do(c, lambda: self.model.credit_deposit(c))

    def a_custody_finalize(self) -> None:
        found = self._some_deposit(("credited", "quarantined", "frozen", "seen"))
        if found is None:
            return
        chain, txid, index = self._ref(found[0])
        c = FinalizeDeposit(chain, txid, index, self.rng.choice([2, 3, 10]))
        self.do(c, lambda: self.model.finalize_deposit(c))

    def a_custody_reorg(self) -> None:
        chain = self.rng.choice(("bitcoin", "ethereum"))
        c = ReorgDeposits(chain, self.tip[chain] - self.rng.randrange(0, 3))
        self.do(c, lambda: self.model.reorg(c))

    def a_custody_reobserve(self) -> None:
        found = self._some_deposit(("dropped", "reversed", "seen"))
        if found is None:
            return
        key, d = found
        chain, txid, index = self._ref(key)
        self.tip[chain] += 1
        c = ObserveDeposit(chain, txid, index, d.asset, self._deposit_address(d.account, d.asset), d.amount,
                           self.tip[chain], self.rng.randbytes(8).hex())
        self.do(c, lambda: self.model.observe_deposit(c))

    def a_custody_source_of_funds(self) -> None:
        found = self._some_deposit(("quarantined", "frozen", "credited"))
        if found is None:
            return
        chain, txid, index = self._ref(found[0])
        text = self.rng.choice(["salary from employer, payslips attached", "gift"])
        c = FileSourceOfFunds(chain, txid, index, found[1].account, text)
        self.do(c, lambda: self.model.file_source_of_funds(c))

    def a_custody_review(self) -> None:
        found = self._some_deposit(("quarantined", "frozen"))  # a frozen one's release takes two analysts
        if found is None:
            return
        chain, txid, index = self._ref(found[0])
        analyst = self.rng.choice(["ana1", "ana2", "ana2", "ops1"])
        c = self.desk.review_deposit(self.engine, chain, txid, index, analyst,
                                     self.rng.choice(["release", "release", "freeze"]), "reviewed")
        self.do(c, lambda: self.model.review_quarantine(c))

    def _sweep_fields(self) -> tuple[str, str, str, int]:
        asset = self.rng.choice(("BTC", "USDT"))
        src, dst = (DEPOSIT_WALLET[asset], HOT[asset]) if asset == "USDT" or self.rng.random() < 0.7 else ("btc_hot", "btc_cold")  # float-ok
        have = self.model.accounts.get(("system", asset, "custody", src))
        return asset, src, dst, max(1, (have.posted if have else 0) // self.rng.choice([1, 2, 3]))

    def a_custody_sweep(self) -> None:
        """A confirmed sweep: often one signed earlier (then its fields must match), else a new one."""
        in_flight = sorted(k for k, (state, _) in self.model.internal_transfers.items() if state == "signed")
        if in_flight and self.rng.random() < 0.7:  # float-ok
            tid = self.rng.choice(in_flight)
            txid, asset, src, dst, amount = self.model.internal_transfers[tid][1]
            if self.rng.random() < 0.1:  # float-ok: not what was signed
                amount += 1
        else:
            self.serial += 1
            tid, txid = f"sweep-{self.serial}", self.rng.randbytes(32).hex()
            asset, src, dst, amount = self._sweep_fields()
        c = RecordInternalTransfer(tid, asset, src, dst, amount, self.rng.randrange(0, 1000), txid)
        self.do(c, lambda: self.model.internal_transfer(c))

    def a_custody_sweep_signed(self) -> None:
        """A sweep signed and journaled before broadcast (in flight for reconciliation)."""
        asset, src, dst, amount = self._sweep_fields()
        self.serial += 1
        c = RecordTransferSigned(f"sweep-{self.serial}", asset, src, dst, amount, 1_000, self.rng.randbytes(32).hex(), "00")
        self.do(c, lambda: self.model.transfer_signed(c))

    def a_custody_reserve_nonce(self) -> None:
        wallet = self.rng.choice(["eth_hot", "eth_hot", "eth_deposit", "btc_hot", "no_such_wallet"])
        reserved = sorted(k[6:] for k, (state, _) in self.model.internal_transfers.items() if state == "nonce")
        if reserved and self.rng.random() < 0.2:  # float-ok: a retry of the same purpose
            purpose = self.rng.choice(reserved)
        else:
            self.serial += 1
            purpose = f"drain-{self.serial}"
        c = ReserveWalletNonce(wallet, purpose)
        self.do(c, lambda: self.model.reserve_nonce(c))

    def a_custody_treasury(self) -> None:
        asset = self.rng.choice(("BTC", "USDT"))
        self.serial += 1
        c = RecordTreasuryFunding(f"fund-{self.serial}", asset, HOT[asset], self.rng.randrange(1, 10**9),
                                  self.rng.randbytes(32).hex())
        self.do(c, lambda: self.model.treasury_funding(c))

    def _withdrawal_address(self, asset: str, ok: bool) -> str:
        if not ok:
            return "not-an-address"
        if asset == "USDT":
            return "0x" + self.rng.randbytes(20).hex()
        from ..chains.bitcoin.address import script_to_address

        address = script_to_address(bytes.fromhex("0014") + self.rng.randbytes(20), "regtest")
        assert address is not None
        return address

    def a_withdrawal_request(self) -> None:
        asset = self.rng.choice(("BTC", "USDT"))
        cfg, user = self.model.custody[asset], self.rng.choice(USERS)
        kind = self.rng.choices(["ok", "big", "small", "fee", "cold", "address", "retry"], weights=[12, 2, 1, 1, 1, 1, 1])[0]
        amount = {"big": cfg.max_withdrawal, "small": cfg.min_withdrawal - 1}.get(
            kind, self.rng.choice([cfg.min_withdrawal, cfg.min_withdrawal * 7, 20_000_000 if asset == "BTC" else 5_000 * 10**6,
                         60_000_000 if asset == "BTC" else 30_000 * 10**6,
                         450_000_000 if asset == "BTC" else 95_000 * 10**6]))
        amount = min(amount, cfg.max_withdrawal) if kind != "small" else amount
        self.serial += 1
        wid = f"w{self.serial}"
        if kind == "retry" and self.model.withdrawals:
            w = self.model.withdrawals[self.rng.choice(sorted(self.model.withdrawals))]
            wid, user, asset, amount, cfg = w.id, w.account, w.asset, w.amount, self.model.custody[w.asset]
        token = self.rng.randbytes(8).hex()
        wallet = "btc_cold" if kind == "cold" else HOT[asset]
        address_ok = kind != "address"
        address = self._withdrawal_address(asset, address_ok)
        if address_ok and self.listed.get((user, asset)) and self.rng.random() < 0.5:  # float-ok: an allow-listed one
            address = self.rng.choice(self.listed[(user, asset)])
        c = RequestWithdrawal(wid, user, asset, wallet, address, amount,
                              cfg.fee + (1 if kind == "fee" else 0), hashlib.sha256(token.encode()).hexdigest())

        def predict() -> list[tuple[Any, ...]]:
            out = self.model.request_withdrawal(c, address_ok)
            self.tokens.setdefault(wid, token)
            return out

        self.do(c, predict)

    def a_withdrawal_allow_list(self) -> None:
        asset, user = self.rng.choice(("BTC", "USDT")), self.rng.choice(USERS)
        address_ok = self.rng.random() < 0.9  # float-ok
        address = self._withdrawal_address(asset, address_ok)
        c = AddWithdrawalAddress(user, asset, address)

        def predict() -> list[tuple[Any, ...]]:
            out = self.model.add_withdrawal_address(c, address_ok)
            self.listed.setdefault((user, asset), []).append(address)
            return out

        self.do(c, predict)

    def a_withdrawal_advance(self) -> None:
        if not self.model.withdrawals:
            return self.a_withdrawal_request()
        open_ids = [w.id for w in self.model.withdrawals.values() if w.state not in ("settled", "failed", "denied", "rejected")]
        wid = self.rng.choice(open_ids) if open_ids and self.rng.random() < 0.9 else self.rng.choice(sorted(self.model.withdrawals))  # float-ok
        w = self.model.withdrawals[wid]
        state = w.state if self.rng.random() < 0.8 else self.rng.choice(  # float-ok: sometimes the wrong command
            ["requested", "confirmed", "reviewed", "awaiting_approvals", "manual_review", "approved", "signing", "signed",
             "broadcast", "fail", "cancel"])
        if self.rng.random() < 0.04:  # float-ok
            state = "fail"
        elif self.rng.random() < 0.04:  # float-ok
            state = "cancel"
        model, rng, ids = self.model, self.rng, (w.id, w.asset, w.wallet)
        c: Any
        predict: Callable[[Any], list[tuple[Any, ...]]]
        if state == "requested":
            c, predict = ConfirmWithdrawalEmail(*ids, self.tokens.get(wid, "") if rng.random() < 0.9 else "forged"), model.confirm_email  # float-ok
        elif state == "confirmed":
            c, predict = RecordRiskReview(*ids, rng.choice([3, 40, 90]), rng.random() < 0.15, ["sim"]), model.risk_review  # float-ok
        elif state == "reviewed":
            c, predict = DecideWithdrawal(*ids), model.decide
        elif state == "awaiting_approvals":
            approver = rng.choice(["ops1", "ops2", "ops3", "ops3", "ana1", w.account])
            self._signer(approver)  # the initiator is no staff member: a key of their own, refused anyway
            c, predict = self.desk.approve_withdrawal(self.engine, w.id, approver, "approver"), model.approve
        elif state == "manual_review":
            analyst = rng.choice(["ana1", "ana2", "ops1"])
            c = self.desk.manual_review(self.engine, w.id, analyst, rng.random() < 0.7, "checked the history")  # float-ok
            predict = model.manual_review
        elif state == "approved":
            c, predict = AuthorizeSigning(*ids), model.authorize
        elif state == "signing":
            txid = self.txids.get(wid) or rng.randbytes(32).hex()
            c = RecordSignedTx(*ids, txid, "00" * rng.randrange(1, 50), rng.randrange(0, 2000))

            def predict(command: Any) -> list[tuple[Any, ...]]:
                out = model.signed(command)
                self.txids.setdefault(wid, txid)
                return out
        elif state == "signed":
            c, predict = RecordBroadcast(*ids, self.txids.get(wid, "none")), model.broadcast
        elif state == "broadcast":
            c = SettleWithdrawal(*ids, self.txids.get(wid, "none"), rng.choice([1, 3, 3, 9]), rng.randrange(0, 3000))
            predict = model.settle
        elif state == "fail":
            c, predict = FailWithdrawal(*ids, "the chain refused the transaction"), model.fail
        else:
            c, predict = CancelWithdrawal(*ids, w.account if rng.random() < 0.9 else "mallory"), model.cancel_withdrawal  # float-ok
        self.do(c, lambda: predict(c))

    def a_halt_raise(self) -> None:
        if len(self.model.halts) >= 2 and self.rng.random() < 0.8:  # float-ok: keep most of the run tradable
            return self.a_halt_lift()
        kind, scope = self.rng.choice(HALT_SCOPES)
        level = self.rng.choice(["WITHDRAWALS_PAUSED", "REDUCE_ONLY", "HALTED"])
        if self.model.halts and self.rng.random() < 0.2:  # float-ok: re-raise an active id (idempotent)
            halt_id = self.rng.choice(sorted(self.model.halts))
        else:
            self.serial += 1
            halt_id = f"h{self.serial}"
        c = Halt(halt_id, kind, scope, level, "simulated incident", json.dumps({"step": self.step}))
        seq = self.engine.last_seq + 1
        self.do(c, lambda: self.model.halt(c, seq))

    def _signer(self, staff_id: str) -> StaffKey:
        """The desk's key for `staff_id` (a fresh one for a name the desk does not know)."""
        if staff_id not in self.desk.keys:
            self.desk.keys[staff_id] = StaffKey(staff_id, Ed25519PrivateKey.from_private_bytes(self.rng.randbytes(32)))
        return self.desk.keys[staff_id]

    def _sign(self, key: StaffKey, action: str, subject: list[Any], expires_ns: int | None = None,
              nonce: str | None = None) -> StaffSignature:
        expires = self.planned_ts + 600 * 10**9 if expires_ns is None else expires_ns
        return key.sign(action, subject, expires, nonce or self.rng.randbytes(16).hex())

    def a_halt_lift(self) -> None:
        if not self.model.halts or self.rng.random() < 0.05:  # float-ok: lifting what is not raised
            halt_id, raised = "h-never-raised", 1
        else:
            halt_id = self.rng.choice(sorted(self.model.halts))
            raised = self.model.halts[halt_id].raised_seq
        ops = self.rng.sample(sorted(self.operator_keys), min(len(self.operator_keys), self.rng.choice([2, 2, 3])))
        subject = lift_subject(halt_id, "resolved", raised)
        c = LiftHaltSigned(halt_id, "resolved", [self._sign(self.operator_keys[op], "halt.lift", subject) for op in ops])
        if self.do(c, lambda: self.model.lift(halt_id, [(op, True) for op in ops])) is not None:
            self.spent_lift = list(c.approvals)

    def a_halt_lift_forged(self) -> None:
        """Fewer than the quorum of distinct, active operators with valid, unexpired, unused signatures."""
        if not self.model.halts:
            return self.a_halt_lift()
        halt_id = self.rng.choice(sorted(self.model.halts))
        subject = lift_subject(halt_id, "resolved", self.model.halts[halt_id].raised_seq)
        op1, op2 = self.rng.sample(sorted(self.operator_keys), 2)
        k1, k2 = self.operator_keys[op1], self.operator_keys[op2]
        good = self._sign(k1, "halt.lift", subject)
        kind = self.rng.choice(["one", "forged_key", "duplicate", "other_raise", "unknown", "retired", "expired", "replayed"])
        second: StaffSignature
        if kind == "one":
            one = LiftHaltSigned(halt_id, "resolved", [good])
            self.do(one, lambda: self.model.lift(halt_id, [(op1, True)]))
            return
        if kind == "forged_key":  # op2's id, another key
            second = self._sign(StaffKey(op2, Ed25519PrivateKey.from_private_bytes(self.rng.randbytes(32))), "halt.lift", subject)
        elif kind == "duplicate":  # op1 again, with a fresh nonce
            op2, second = op1, self._sign(k1, "halt.lift", subject)
        elif kind == "other_raise":  # signed for another raise of this halt
            second = self._sign(k2, "halt.lift", lift_subject(halt_id, "resolved", subject[2] + 1))
        elif kind == "unknown":
            op2 = "mallory"
            second = self._sign(self._signer("mallory"), "halt.lift", subject)
        elif kind == "retired" and self.retired_keys:  # a removed operator's genuine key
            op2 = self.rng.choice(sorted(self.retired_keys))
            second = self._sign(self.retired_keys[op2], "halt.lift", subject)
        elif kind == "replayed" and any(a.staff_id in self.operator_keys for a in self.spent_lift):
            used = next(a for a in self.spent_lift if a.staff_id in self.operator_keys)
            op2 = used.staff_id  # re-signed over this halt, with a nonce an earlier lift spent
            second = self._sign(self.operator_keys[op2], "halt.lift", subject, used.expires_ns, used.nonce)
            if op1 == op2:
                op1 = next(o for o in sorted(self.operator_keys) if o != op2)
                good = self._sign(self.operator_keys[op1], "halt.lift", subject)
        else:  # expired by the time it is applied (the sequencer's clock moves on before the command)
            second = self._sign(k2, "halt.lift", subject, expires_ns=self.planned_ts)
        c = LiftHaltSigned(halt_id, "resolved", [good, second])
        # Only a duplicate carries two genuine signatures (of one person); every other second one fails.
        self.do(c, lambda: self.model.lift(halt_id, [(op1, True), (op2, kind == "duplicate")]))

    def a_operators_rotate(self) -> None:
        """Add an operator, then remove another, each by a quorum (sometimes forged or one short)."""
        self.serial += 1
        new = StaffKey(f"op{self.serial}", Ed25519PrivateKey.from_private_bytes(self.rng.randbytes(32)))
        entry = new.entry(["operator"])
        subject = add_subject(entry, "rotation", self.model.staff_version)
        op1, op2 = self.rng.sample(sorted(self.operator_keys), 2)
        forged = self.rng.random() < 0.3  # float-ok
        signer2 = StaffKey(op2, Ed25519PrivateKey.from_private_bytes(self.rng.randbytes(32))) if forged else self.operator_keys[op2]
        approvals = [self._sign(self.operator_keys[op1], "staff.add", subject), self._sign(signer2, "staff.add", subject)]
        c = AddStaff(entry, self._sign(new, "staff.add", subject), "rotation", approvals)

        def predict_add() -> list[tuple[Any, ...]]:
            out = self.model.staff_add(new.staff_id, ["operator"], [(op1, True), (op2, not forged)])
            self.operator_keys[new.staff_id] = new
            self.desk.keys[new.staff_id] = new
            return out

        self.do(c, predict_add)
        gone = self.rng.choice(sorted(self.operator_keys))
        signers = self.rng.sample(sorted(self.operator_keys), self.rng.choice([1, 2, 2]))
        subject = remove_subject(gone, "rotation", self.model.staff_version)
        r = RemoveStaff(gone, "rotation", [self._sign(self.operator_keys[s], "staff.remove", subject) for s in signers])

        def predict_remove() -> list[tuple[Any, ...]]:
            out = self.model.staff_remove(gone, [(s, True) for s in signers])
            self.retired_keys[gone] = self.operator_keys.pop(gone)
            return out

        self.do(r, predict_remove)

    # ------------------------------------------------------------------ the index's feed

    def _quote(self, venue: str, price: int, *, ts: int | None = None, key: Ed25519PrivateKey | None = None,
               symbol: str = "BTCUSDT") -> SubmitQuote:
        """A quote dated now (the sequencer's next time is a little later), signed by `venue`'s key
        (or `key`), with the venue's next sequence number."""
        self.feed_seq[venue] = self.feed_seq.get(venue, 0) + 1
        source_ts = self.planned_ts if ts is None else ts
        signer = key or self.feed_keys[venue]
        signature = signer.sign(quote_message(venue, symbol, price, source_ts, self.feed_seq[venue])).hex()
        return SubmitQuote(venue, symbol, price, source_ts, self.feed_seq[venue], signature)

    def a_index_quote(self) -> None:
        """A venue quotes near the mid; one in ten is a -30 % (or +30 %) wick, which the clamp holds."""
        venue = self.rng.choice(FEED_VENUES)
        price = MID["BTCUSDT"] + MID["BTCUSDT"] * self.rng.randrange(-3_000, 3_001) // 1_000_000
        if self.rng.randrange(10) == 0:
            price = MID["BTCUSDT"] * self.rng.choice([700_000, 1_300_000]) // 1_000_000
        c = self._quote(venue, price)
        self.do(c, functools.partial(self._accepted_quote, c, self.engine.last_seq + 1))

    def a_index_quote_bad(self) -> None:
        """Forged, replayed, stale, ahead of time, from an unknown venue, or for a symbol without an index."""
        venue = self.rng.choice(FEED_VENUES)
        kind = self.rng.choice(["forged", "replayed", "stale", "ahead", "unknown", "no_index"])
        genuine = True
        if kind == "forged":
            c, genuine = self._quote(venue, MID["BTCUSDT"], key=Ed25519PrivateKey.from_private_bytes(self.rng.randbytes(32))), False
        elif kind == "replayed" and venue in self.last_quote:
            c = self.last_quote[venue]
        elif kind == "stale":
            c = self._quote(venue, MID["BTCUSDT"], ts=self.planned_ts - 2 * INDEX["stale_after_ns"])
        elif kind == "ahead":
            c = self._quote(venue, MID["BTCUSDT"], ts=self.planned_ts + 3 * 10**9)
        elif kind == "unknown":
            c = self._quote("mallory", MID["BTCUSDT"], key=Ed25519PrivateKey.from_private_bytes(self.rng.randbytes(32)))
        else:
            c = self._quote(venue, MID["AAPLXUSDT"], symbol="AAPLXUSDT")
        seq = self.engine.last_seq + 1
        self.do(c, lambda: self.model.quote(c, genuine, seq))

    def a_index_outage(self) -> None:
        """A price-feed outage (now and then): 1.5 s pass with no command, every source goes stale, and
        the next command finds BTCUSDT REDUCE_ONLY; otherwise all five venues quote in turn."""
        if self.rng.randrange(10) < 3:
            self.planned_ts += 3 * INDEX["stale_after_ns"] // 2
            self._trade(self._limit())
            return
        for venue in FEED_VENUES:
            c = self._quote(venue, MID["BTCUSDT"] + MID["BTCUSDT"] * self.rng.randrange(-1_000, 1_001) // 1_000_000)
            seq = self.engine.last_seq + 1
            self.do(c, functools.partial(self._accepted_quote, c, seq))

    def a_index_feed_key(self) -> None:
        """Rotate a venue's feed key: `index.feed_key` signed by the staff operator quorum over the venue,
        the new key and the index change counter; sometimes one short, by an analyst, a forged or a
        removed operator's key, for another action or an old version (all refused, nothing changes)."""
        venue = self.rng.choice(FEED_VENUES)
        new_key = Ed25519PrivateKey.from_private_bytes(self.rng.randbytes(32))
        c = RegisterFeedKey(venue, self._public(new_key))
        version = self.model.index_version
        op1, op2 = self.rng.sample(sorted(self.operator_keys), 2)
        kind = self.rng.choice(["good", "good", "good", "one", "analyst", "forged_key", "retired", "other_action", "old_version"])
        action, subject = admin_action(c), admin_subject(c, version)
        good = self._sign(self.operator_keys[op1], action, subject)
        second_ok = kind == "good"
        if kind == "one":
            approvals, signers = [good], [(op1, True)]
        else:
            if kind == "analyst":
                op2 = "ana1"
                second = self._sign(self._signer("ana1"), action, subject)
            elif kind == "forged_key":
                second = self._sign(StaffKey(op2, Ed25519PrivateKey.from_private_bytes(self.rng.randbytes(32))), action, subject)
            elif kind == "retired" and self.retired_keys:
                op2 = self.rng.choice(sorted(self.retired_keys))
                second = self._sign(self.retired_keys[op2], action, subject)
            elif kind == "other_action":
                second = self._sign(self.operator_keys[op2], "index.configure", subject)
            elif kind == "old_version":
                second = self._sign(self.operator_keys[op2], action, admin_subject(c, version - 1))
            else:
                second_ok = True
                second = self._sign(self.operator_keys[op2], action, subject)
            approvals, signers = [good, second], [(op1, True), (op2, second_ok)]
        approved = msgspec.structs.replace(c, approvals=approvals)

        def predict() -> list[tuple[Any, ...]]:
            events = self.model.rotate_feed_key(venue, signers)
            self.feed_keys[venue] = new_key  # accepted (else the run fails): quotes are signed with the new key
            return events

        self.do(approved, predict)

    def _accepted_quote(self, c: SubmitQuote, seq: int) -> list[tuple[Any, ...]]:
        events = self.model.quote(c, True, seq)
        self.last_quote[c.venue] = c
        return events

    # ------------------------------------------------------------------ perpetuals (workload "perps")

    def setup_perps(self) -> None:
        r, model = PERP, self.model
        brackets = [list(b) for b in r.brackets]
        self.node.execute(ListPerpetual(r.symbol, r.base, r.quote, r.index_symbol, brackets, PERP_MARKET.tick, PERP_MARKET.lot,
                                        PERP_MARKET.min_qty, PERP_MARKET.max_qty, 0, r.default_leverage, r.impact_notional,
                                        r.interest_ppm, r.clamp_ppm, r.cap_ppm, r.interval_ns))
        model.list_market(PERP_MARKET)
        model.now_ns = self.engine.now_ns
        model.list_perp(r, model.now_ns)
        self._refresh_ids()
        self.audit()
        for user in USERS:  # some collateral in every derivatives wallet, through the audited path
            amount = self.rng.randrange(2 * 10**8, 5 * 10**8) if user == RISKY else self.rng.randrange(10**9, 10**11)
            self._perp_do(FuturesTransfer(user, "USDT", amount, "MAIN_UMFUTURE"))
        self._perp_do(SetLeverage(RISKY, PERP.symbol, 50))
        fund = self.rng.choice(PERP_INSURANCE)
        if fund:
            self._transfers([Transfer(self._tid(), self.ids[("system", "USDT", "world", "-")],
                                      self.ids[("system", "USDT", "insurance", "derivatives")], fund)])

    def _perp_do(self, c: Any) -> None:
        self.do(c, lambda: self.model.perp_command(c))

    def a_perp_transfer(self) -> None:
        user = self.rng.choice(USERS)
        into = self.rng.random() < 0.6  # float-ok: coin flip
        if into:
            amount = self.rng.choice([1, 10**6, self.rng.randrange(1, 10**11 if user != RISKY else 2 * 10**8)])
        else:
            free = self.model.available(self.model.wallet_key(user, "USDT"))
            # all of it, often: a cross account left with only its margins can be liquidated
            amount = self.rng.choice([1, max(1, free // 3), max(1, free), max(1, free), free + 1, self.rng.randrange(1, 10**11)])
        self._perp_do(FuturesTransfer(user, "USDT", amount, "MAIN_UMFUTURE" if into else "UMFUTURE_MAIN"))

    def a_perp_leverage(self) -> None:
        self._perp_do(SetLeverage(self.rng.choice(USERS), PERP.symbol, self.rng.choice([1, 3, 10, 20, 25, 50, 50, 50, 75])))

    def a_perp_margin_type(self) -> None:
        """Mostly a user free to switch (no position, no open order); else anyone (refused)."""
        m = self.model.markets[PERP.symbol]
        free = [u for u in USERS if (u, PERP.symbol) not in self.model.positions and not any(o.owner == u for o in m.orders.values())]
        user = self.rng.choice(free if free and self.rng.random() < 0.8 else USERS)  # float-ok: coin flip
        self._perp_do(SetMarginType(user, PERP.symbol, self.rng.choice(["ISOLATED", "CROSSED"])))

    def a_perp_isolated_margin(self) -> None:
        user = self.rng.choice(USERS)
        pos = self.model.positions.get((user, PERP.symbol))
        action = self.rng.choice([1, 2])
        extra = pos.extra if pos is not None else 0
        amount = self.rng.choice([1, 10**6, self.rng.randrange(1, 10**9), max(1, extra), extra + 1])
        self._perp_do(AdjustIsolatedMargin(user, PERP.symbol, amount, action))

    def _perp_price(self) -> int:
        """Near the index (a mark move follows the index and the trades), on the tick."""
        x = self.model.indexes.get(PERP.index_symbol)
        mid = x.index if x is not None and x.index else MID["BTCUSDT"]
        tick = PERP_MARKET.tick
        spread = self.rng.choice([8_000, 8_000, 25_000])  # now and then 2.5 % away: a 50x position is liquidatable
        return max(tick, (mid + mid * self.rng.randrange(-spread, spread + 1) // 1_000_000) // tick * tick)

    def a_perp_order(self) -> None:
        user = self.rng.choice(USERS)
        side = self.rng.choice(["BUY", "SELL"])
        lot = PERP_MARKET.lot
        qty = lot * self.rng.choice([1, 2, 5, self.rng.randrange(1, 40), self.rng.randrange(1, 400)])
        pos = self.model.positions.get((user, PERP.symbol))
        if pos is not None and self.rng.random() < 0.3:  # float-ok: close (part of) the position
            side = "SELL" if pos.size > 0 else "BUY"
            qty = self.rng.choice([abs(pos.size), max(lot, abs(pos.size) // 2 // lot * lot)])
        kind = self.rng.randrange(10)
        if kind < 6:
            c = PlacePerpOrder(user, PERP.symbol, side, "LIMIT", "GTC", self._perp_price(), qty)
        elif kind < 8:
            c = PlacePerpOrder(user, PERP.symbol, side, "LIMIT", "IOC", self._perp_price(), qty)
        else:
            c = PlacePerpOrder(user, PERP.symbol, side, "MARKET", "IOC", 0, qty)
        self._perp_do(c)

    def a_perp_cancel(self) -> None:
        open_orders = sorted(self.model.markets[PERP.symbol].orders.values(), key=lambda o: o.id)
        if open_orders and self.rng.random() < 0.9:  # float-ok: mostly a real one
            o = self.rng.choice(open_orders)
            c = CancelOrder(o.owner, PERP.symbol, o.id)
        else:
            c = CancelOrder(self.rng.choice(USERS), PERP.symbol, self.rng.randrange(1, 10**6))
        self._trade(c)

    def a_perp_funding(self) -> None:
        """Sequencer time jumps to the next funding round; a transfer into a derivatives wallet then
        runs the funding timer first (the index's sources go stale on the way: only reducing orders
        until three venues quote again)."""
        nxt = self.model.perps[PERP.symbol].next_funding_ns
        self.planned_ts = max(self.planned_ts, nxt - 500)
        self._perp_do(FuturesTransfer(self.rng.choice(USERS), "USDT", 10**6, "MAIN_UMFUTURE"))

    def a_perp_liquidate(self) -> None:
        """What the liquidation worker submits: mostly for an account or isolated position the model
        finds below maintenance (one step: orders cancelled, an IOC at the band edge for half the
        depth inside it, the cool-down), else for anyone (refused: not below maintenance, cooling
        down, no position)."""
        targets = self.model.liquidatable()
        if targets and self.rng.random() < 0.8:  # float-ok: coin flip
            owner, scope, isolated = self.rng.choice(targets)
        else:
            owner, isolated = self.rng.choice(USERS), self.rng.random() < 0.5  # float-ok: coin flip
            scope = PERP.symbol if isolated else "USDT"
        self._perp_do(LiquidatePosition(owner, scope) if isolated else LiquidateAccount(owner, scope))
