"""Validate, then execute: a command the engine answers with `CommandRejected` changed no state.

A seeded hypothesis property drives random commands of every module (ledger, trading, custody,
halts), valid and invalid, straight into `Engine.apply` (no edge precheck, so each handler must
refuse on its own) and compares a hash of the whole domain state before and after each one. The
sequencer's own bookkeeping (`last_seq`, `now_ns`) is left out; nothing here uses timeouts, so
no expiry runs between commands. An order action refused with `OrderRejected` (and nothing else)
must also leave the state alone, in a market without a price band (the band watch legitimately
records when the last price left the band).

On failure hypothesis prints the drawn steps; rerun with the same seed to reproduce.
"""

from __future__ import annotations

import hashlib

from hypothesis import HealthCheck, given, note, seed, settings
from hypothesis import strategies as st

from ringfence.custody.commands import (
    ActivatePolicy,
    AssignDepositAddress,
    CancelWithdrawal,
    ConfigureCustodyAsset,
    ConfirmWithdrawalEmail,
    CreditDeposit,
    DecideWithdrawal,
    FailWithdrawal,
    FileSourceOfFunds,
    ObserveDeposit,
    RecordInternalTransfer,
    RecordRiskReview,
    RecordTreasuryFunding,
    RegisterWallet,
    RequestWithdrawal,
    ReviewQuarantine,
    SetApprover,
)
from ringfence.engine.commands import encode
from ringfence.app import new_engine
from ringfence.engine.core import CommandRejected, Engine
from ringfence.ledger.commands import CreateTransfers, OpenAccount, RegisterAsset, RegisterSegment
from ringfence.ledger.model import Transfer, TransferFlags
from ringfence.risk.halts import Halt, LiftHalt
from ringfence.trading.commands import (
    AmendOrder,
    CancelAll,
    CancelOrder,
    ListMarket,
    OrderRejected,
    PlaceOrder,
    SetMarketStatus,
    TradingBatch,
)
from ringfence.trading.state import trading_state

USERS = ["alice", "bob", "carol"]
ETH_WALLETS = ["eth_hot", "eth_cold", "-", "nowallet"]
TOKEN = "t0ken"
TOKEN_HASH = hashlib.sha256(TOKEN.encode()).hexdigest()
LONG = "x" * 600  # longer than any custody text field allows


def domain_hash(engine: Engine) -> str:
    """The state hash without the sequencer's stamps (`last_seq`, `now_ns`)."""
    return hashlib.sha256(encode(engine.snapshot_state()[3:])).hexdigest()


def address(n: int) -> str:
    return "0x" + f"{n:02x}" * 20


def bootstrap(engine: Engine, run) -> None:
    run(RegisterAsset("ETH", 18, "crypto", "ethereum"))
    run(RegisterAsset("USDT", 6, "crypto", "ethereum"))
    for u in USERS:
        for asset in ("ETH", "USDT"):
            run(OpenAccount(u, asset))
    led = engine.ledger
    funds = {"ETH": 10**20, "USDT": 10**10}  # 100 ETH, 10,000 USDT each
    transfers = [Transfer(i + 1, led.world(a).id, led.get(u, a).id, funds[a])
                 for i, (u, a) in enumerate((u, a) for u in USERS for a in ("ETH", "USDT"))]
    run(CreateTransfers(transfers))
    # ETHUSDT without a band (order rejections must change nothing); BANDUSDT with one.
    run(ListMarket("ETHUSDT", "ETH", "USDT", tick_size=100, lot_size=10**16, min_qty=10**16, band_ppm=0,
                   max_open_orders_per_account=3, max_price_levels=5))
    run(ListMarket("BANDUSDT", "ETH", "USDT", tick_size=100, lot_size=10**16, min_qty=10**16, band_ppm=100_000))
    run(ConfigureCustodyAsset("ETH", "ethereum", "local", 1, 2, 1, 1, 10**8, 7))
    run(RegisterWallet("eth_hot", "ethereum", "hot", [address(200)]))
    run(RegisterWallet("eth_cold", "ethereum", "cold", [address(201)]))
    run(SetApprover("ana", ["analyst"]))
    for u in USERS:
        run(AssignDepositAddress(u, "ethereum", "eth_hot", address(USERS.index(u) + 1)))


def order_ids(engine: Engine, symbol: str) -> list[int]:
    return sorted(trading_state(engine).markets[symbol].orders) or [1]


def draw_command(data, engine: Engine, step: int):
    """One random command, often invalid in one field, aimed at state that exists."""
    d = data.draw
    user = d(st.sampled_from(USERS + ["Bad Owner"]))
    kind = d(st.sampled_from([
        "open", "transfers", "segment", "place", "place", "cancel", "cancel_all", "amend", "batch", "status",
        "observe", "credit", "sof", "review", "request", "request", "confirm", "risk", "decide", "cancel_wd",
        "fail_wd", "wallet", "funding", "internal", "halt", "lift", "activate",
    ]))
    big = d(st.sampled_from([1, 10**6, 10**9, 10**12, 2**127]))
    if kind == "open":
        return OpenAccount(user, d(st.sampled_from(["ETH", "USDT", "DOGE"])), d(st.sampled_from(["available", "margin", "-bad"])))
    if kind == "transfers":
        # Between user accounts (and an unknown id): a client transfer into a market's clearing
        # account would break trading's own bookkeeping, which is not what this test is about.
        led = engine.ledger
        ids = [a.id for a in led.iter_accounts() if a.owner in USERS] + [len(led.accounts) + 5]
        flags = d(st.sampled_from([0, 0, TransferFlags.LINKED, TransferFlags.PENDING]))
        return CreateTransfers([Transfer(d(st.integers(0, 40)), d(st.sampled_from(ids)), d(st.sampled_from(ids)), big, flags=flags)
                                for _ in range(d(st.integers(0, 3)))])
    if kind == "segment":
        return RegisterSegment(d(st.sampled_from(["margin2", "-", "Bad"])))
    symbol = d(st.sampled_from(["ETHUSDT", "ETHUSDT", "BANDUSDT", "NOPE"]))
    price = d(st.sampled_from([0, 100, 1_000_000, 2_000_000, 2_000_050, 10**31]))
    qty = d(st.sampled_from([0, 10**16, 5 * 10**16, 10**18, 10**16 + 1, 10**22]))
    if kind in ("place", "batch"):
        place = PlaceOrder(user if user != "Bad Owner" else "bad owner", symbol, d(st.sampled_from(["BUY", "SELL", "HOLD"])),
                           d(st.sampled_from(["LIMIT", "LIMIT", "MARKET", "LIMIT_MAKER", "STOP_LIMIT"])),
                           d(st.sampled_from(["GTC", "IOC", "FOK"])), price=price, quantity=qty,
                           stop_price=d(st.sampled_from([0, 0, 1_500_000])),
                           stp=d(st.sampled_from(["NONE", "EXPIRE_TAKER", "EXPIRE_MAKER"])))
        if kind == "place":
            return place
        return TradingBatch([place, CancelOrder(USERS[step % 3], "ETHUSDT", d(st.sampled_from(order_ids(engine, "ETHUSDT"))))])
    if kind == "cancel":
        return CancelOrder(user, symbol if symbol in trading_state(engine).markets else "ETHUSDT",
                           d(st.sampled_from(order_ids(engine, "ETHUSDT"))))
    if kind == "cancel_all":
        return CancelAll(user, symbol)
    if kind == "amend":
        return AmendOrder(user, "ETHUSDT", d(st.sampled_from(order_ids(engine, "ETHUSDT"))), price=price, quantity=qty)
    if kind == "status":
        return SetMarketStatus(symbol, d(st.sampled_from(["ACTIVE", "ACTIVE", "REDUCE_ONLY", "HALTED", "OPEN"])))
    txid = "tx" + str(d(st.integers(0, 6)))
    if kind == "observe":
        return ObserveDeposit("ethereum", txid, 0, d(st.sampled_from(["ETH", "USDT"])), address(d(st.integers(1, 4))),
                              d(st.sampled_from([0, 1, 500, 10**6])), 10, "b10")
    if kind == "credit":
        return CreditDeposit("ethereum", txid, 0, d(st.integers(0, 3)), d(st.sampled_from([10, 90, 101])),
                             ["r"] * d(st.sampled_from([1, 25])), d(st.sampled_from(["", "", "sanctions"])))
    if kind == "sof":
        return FileSourceOfFunds("ethereum", txid, 0, user, d(st.sampled_from(["salary from my employer", "short", LONG * 8])))
    if kind == "review":
        return ReviewQuarantine("ethereum", txid, 0, d(st.sampled_from(["ana", "alice"])), d(st.sampled_from(["release", "freeze", "keep"])),
                                d(st.sampled_from(["checked", LONG])))
    wid = "w" + str(d(st.integers(0, 4)))
    wallet = d(st.sampled_from(ETH_WALLETS))
    if kind == "request":
        return RequestWithdrawal(wid, user, d(st.sampled_from(["ETH", "ETH", "USDT"])), wallet, address(99),
                                 d(st.sampled_from([0, 100, 10**6, 10**10])), d(st.sampled_from([7, 7, 8])), TOKEN_HASH,
                                 device_id=d(st.sampled_from(["", "phone", LONG])), ip=d(st.sampled_from(["", "10.0.0.1", LONG])))
    if kind == "confirm":
        return ConfirmWithdrawalEmail(wid, "ETH", "eth_hot", d(st.sampled_from([TOKEN, "wrong"])))
    if kind == "risk":
        return RecordRiskReview(wid, "ETH", "eth_hot", d(st.sampled_from([5, 101])), d(st.booleans()),
                                d(st.sampled_from([["fine"], [LONG], ["r"] * 30])))
    if kind == "decide":
        return DecideWithdrawal(wid, "ETH", "eth_hot")
    if kind == "cancel_wd":
        return CancelWithdrawal(wid, "ETH", d(st.sampled_from(["eth_hot", "eth_cold"])), user)
    if kind == "fail_wd":
        return FailWithdrawal(wid, "ETH", "eth_hot", d(st.sampled_from(["chain says no", LONG])))
    if kind == "wallet":
        return RegisterWallet(wallet, d(st.sampled_from(["ethereum", "bitcoin", "solana"])), d(st.sampled_from(["hot", "warm", "tepid"])),
                              [address(d(st.integers(50, 60)))])
    if kind == "funding":
        return RecordTreasuryFunding("f" + txid, d(st.sampled_from(["ETH", "USDT"])), wallet, d(st.sampled_from([0, 10**6])), txid)
    if kind == "internal":
        return RecordInternalTransfer("i" + txid, "ETH", wallet, d(st.sampled_from(ETH_WALLETS)), d(st.sampled_from([0, 10**3])),
                                      d(st.sampled_from([0, 5])), txid)
    if kind == "halt":
        return Halt("h" + str(d(st.integers(0, 2))), d(st.sampled_from(["market", "asset", "galaxy"])), symbol,
                    d(st.sampled_from(["HALTED", "REDUCE_ONLY", "PANIC"])), "test", d(st.sampled_from(["{}", "not json"])))
    if kind == "lift":
        return LiftHalt("h" + str(d(st.integers(0, 2))), "test", [])
    return ActivatePolicy("p" + str(d(st.integers(0, 2))))


@seed(20261203)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_a_rejected_command_changes_no_state(data):
    engine = new_engine()
    seq = [0]

    def run(command):
        seq[0] += 1
        return engine.apply(command, seq[0], 1_000_000 * seq[0])

    bootstrap(engine, run)
    rejected = 0
    for step in range(data.draw(st.integers(10, 80))):
        command = draw_command(data, engine, step)
        before = domain_hash(engine)
        band_free = all(not m.band_hi and not m.out_of_band for m in trading_state(engine).markets.values())
        events = run(command)
        note(f"step {step}: {command!r} -> {events!r}")
        if any(type(e) is CommandRejected for e in events):
            rejected += 1
            assert [type(e) for e in events] == [CommandRejected], f"step {step}: a rejection with other events {events}"
            assert domain_hash(engine) == before, f"step {step}: {type(command).__name__} was rejected but changed state: {events}"
        elif events and band_free and all(type(e) is OrderRejected for e in events) and not isinstance(command, TradingBatch):
            assert domain_hash(engine) == before, f"step {step}: an order refusal changed state: {events}"
        engine.check_invariants()
    note(f"{rejected} rejections")


def test_the_handlers_fixed_here_refuse_before_they_change_anything():
    """The validate-after-mutate cases this property found, pinned one by one."""
    engine = new_engine()
    seq = [0]

    def run(command):
        seq[0] += 1
        return engine.apply(command, seq[0], 1_000_000 * seq[0])

    bootstrap(engine, run)
    run(ObserveDeposit("ethereum", "q", 0, "ETH", address(1), 1_000, 10, "b10"))
    run(CreditDeposit("ethereum", "q", 0, 2, 90, ["high score"]))  # quarantined
    run(FileSourceOfFunds("ethereum", "q", 0, "alice", "salary from my employer"))
    run(RequestWithdrawal("ok", "bob", "ETH", "eth_hot", address(99), 1_000, 7, TOKEN_HASH))
    run(ConfirmWithdrawalEmail("ok", "ETH", "eth_hot", TOKEN))
    for command in [
        RequestWithdrawal("w1", "alice", "ETH", "eth_hot", address(99), 1_000, 7, TOKEN_HASH, device_id=LONG),
        RequestWithdrawal("w2", "alice", "ETH", "eth_hot", address(99), 1_000, 7, TOKEN_HASH, ip=LONG),
        RecordRiskReview("ok", "ETH", "eth_hot", 5, False, [LONG]),
        ReviewQuarantine("ethereum", "q", 0, "ana", "release", LONG),
        RegisterWallet("-", "ethereum", "hot", [address(70)]),
    ]:
        before = domain_hash(engine)
        events = run(command)
        assert [type(e) for e in events] == [CommandRejected], (command, events)
        assert domain_hash(engine) == before, command
    engine.check_invariants()
