"""The trading part of `ringfence demo`: a short, seeded spot session shown as rich tables.

`run_trading_demo(node, console)` lists BTCUSDT on an open `Node` (if it is not listed yet), funds
two demo traders, places resting and aggressive orders, and prints the fills with their fees, the
fee and shield (insurance) fund balances, the L2 book and both traders' balances. Every step is an
ordinary journaled command, so the session survives a restart like any other.
"""

from __future__ import annotations

from typing import Any, Sequence

from rich.console import Console
from rich.table import Table

from ..engine.commands import Event
from ..engine.core import Engine
from ..engine.node import Node
from ..ledger.commands import CreateTransfers, OpenAccount, RegisterAsset
from ..ledger.model import Transfer
from ..money import format_amount, parse_amount
from .commands import ListMarket, OrderExpired, OrderRejected, OrderRested, PlaceOrder, SetReferencePrice, Trade
from .marketdata import MarketData
from .state import market_of, trading_state

__all__ = ["run_trading_demo"]

SYMBOL = "BTCUSDT"
BTC_DP, USDT_DP = 8, 6


def _p(text: str) -> int:
    """'61000.5' USDT per BTC -> quote minor units per whole BTC."""
    return parse_amount(text, USDT_DP, field="price")


def _q(text: str) -> int:
    return parse_amount(text, BTC_DP, field="quantity")


def _usdt(minor: int) -> str:
    return format_amount(minor, USDT_DP, trim=True)


def _btc(minor: int) -> str:
    return format_amount(minor, BTC_DP, trim=True)


def _setup(node: Node) -> None:
    engine = node.engine
    assert engine is not None
    for code, dp, chain in (("BTC", BTC_DP, "bitcoin"), ("USDT", USDT_DP, "ethereum")):
        if code not in engine.ledger.assets:
            node.execute(RegisterAsset(code, dp, "crypto", chain))
    if SYMBOL not in trading_state(engine).markets:
        node.execute(
            ListMarket(SYMBOL, "BTC", "USDT", "spot", tick_size=_p("0.01"), lot_size=_q("0.0001"), min_qty=_q("0.0001"), min_notional=_p("5"), band_ppm=100_000)
        )
    node.execute(SetReferencePrice(SYMBOL, _p("61000")))
    ledger = engine.ledger
    deposits = []
    # Fixed transfer ids: transfers are idempotent, so a second run never deposits twice.
    for tid, owner, asset, amount in ((900_000_001, "demo-alice", "USDT", _p("250000")), (900_000_002, "demo-bob", "BTC", _q("3"))):
        node.execute_many([OpenAccount(owner, "BTC"), OpenAccount(owner, "USDT")])
        deposits.append(Transfer(tid, ledger.world(asset).id, ledger.get(owner, asset).id, amount))
    if deposits:
        node.execute(CreateTransfers(deposits))


def _orders() -> list[PlaceOrder]:
    """The session: resting asks and a bid, a post-only bid, a bid that sweeps asks, a market buy
    by quote amount, and a bid far outside the price band."""
    return [
        PlaceOrder("demo-bob", SYMBOL, "SELL", price=_p("61050"), quantity=_q("0.4"), client_order_id="bob-ask-1"),
        PlaceOrder("demo-bob", SYMBOL, "SELL", price=_p("61100"), quantity=_q("0.6"), client_order_id="bob-ask-2"),
        PlaceOrder("demo-bob", SYMBOL, "SELL", price=_p("61300"), quantity=_q("1.0"), client_order_id="bob-ask-3"),
        PlaceOrder("demo-alice", SYMBOL, "BUY", price=_p("60900"), quantity=_q("0.5"), client_order_id="alice-bid-1"),
        PlaceOrder("demo-alice", SYMBOL, "BUY", "LIMIT_MAKER", price=_p("61050"), quantity=_q("0.1"), client_order_id="alice-maker"),
        PlaceOrder("demo-alice", SYMBOL, "BUY", price=_p("61120"), quantity=_q("0.8"), client_order_id="alice-take"),
        PlaceOrder("demo-alice", SYMBOL, "BUY", "MARKET", quote_amount=_p("5000"), client_order_id="alice-mkt"),
        PlaceOrder("demo-alice", SYMBOL, "BUY", price=_p("70000"), quantity=_q("0.1"), client_order_id="alice-wick"),
    ]


def _table(title: str, *columns: str) -> Table:
    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    return table


def _outcome(events: Sequence[Event], trades: list[Trade]) -> str:
    """One order's events as a table cell; its trades are appended to `trades`."""
    outcome = []
    for e in events:
        if isinstance(e, Trade):
            trades.append(e)
            outcome.append(f"filled {_btc(e.quantity)} @ {_usdt(e.price)}")
        elif isinstance(e, OrderRested):
            outcome.append(f"rests {_btc(e.leaves)}")
        elif isinstance(e, OrderRejected):
            outcome.append(f"[red]rejected {e.reason}[/red]")
        elif isinstance(e, OrderExpired):
            outcome.append(f"expired ({e.reason})")
    return "; ".join(outcome) or "-"


def _place_orders(node: Node, console: Console) -> list[Trade]:
    """Place the session's orders (one journaled batch) and show what became of each."""
    orders = _orders()
    results = node.execute_many(orders, raise_rejected=False)
    steps = _table(
        "Orders placed (each journaled and fsynced before it was acknowledged)",
        "client id", "side", "type", "price", "qty", "outcome",
    )
    trades: list[Trade] = []
    for cmd, events in zip(orders, results):
        steps.add_row(
            cmd.client_order_id,
            cmd.side,
            cmd.order_type,
            _usdt(cmd.price) if cmd.price else "-",
            _btc(cmd.quantity) if cmd.quantity else f"{_usdt(cmd.quote_amount)} USDT",
            _outcome(events, trades),
        )
    console.print(steps)
    return trades


def _show_fills(console: Console, trades: list[Trade]) -> None:
    fills = _table(
        "Fills (fees in the asset received, rounded up; 10 % of each fee to the shield fund)",
        "trade", "price", "qty", "quote", "taker", "taker fee", "maker", "maker fee",
    )
    for t in trades:
        taker_fee = _btc(t.taker_fee) + " BTC" if t.taker_side == "BUY" else _usdt(t.taker_fee) + " USDT"
        maker_fee = _usdt(t.maker_fee) + " USDT" if t.taker_side == "BUY" else _btc(t.maker_fee) + " BTC"
        fills.add_row(str(t.trade_id), _usdt(t.price), _btc(t.quantity), _usdt(t.quote_qty), t.taker_owner, taker_fee, t.maker_owner, maker_fee)
    console.print(fills)


def _show_funds(console: Console, ledger: Any) -> None:
    funds = _table("Fee and shield (insurance) funds, spot segment", "asset", "fees", "shield fund")
    funds.add_row("BTC", _btc(ledger.fees("BTC", "spot").balance), _btc(ledger.insurance("BTC", "spot").balance))
    funds.add_row("USDT", _usdt(ledger.fees("USDT", "spot").balance), _usdt(ledger.insurance("USDT", "spot").balance))
    console.print(funds)


def _show_book(console: Console, engine: Engine) -> tuple[Any, Any]:
    """Print the L2 book (ten levels a side); returns `(bids, asks)`."""
    bids, asks = market_of(engine, SYMBOL).depth(10)
    book = _table(f"{SYMBOL} order book (L2)", "bid qty", "bid", "ask", "ask qty")
    for i in range(max(len(bids), len(asks))):
        b = bids[i] if i < len(bids) else None
        a = asks[i] if i < len(asks) else None
        book.add_row(_btc(b[1]) if b else "", _usdt(b[0]) if b else "", _usdt(a[0]) if a else "", _btc(a[1]) if a else "")
    console.print(book)
    return bids, asks


def _show_balances(console: Console, ledger: Any) -> None:
    balances = _table("Trader balances (held = reserved by open orders)", "account", "asset", "balance", "held", "available")
    for owner in ("demo-alice", "demo-bob"):
        for asset, fmt in (("BTC", _btc), ("USDT", _usdt)):
            a = ledger.get(owner, asset)
            balances.add_row(owner, asset, fmt(a.balance), fmt(a.debits_pending), fmt(a.available))
    console.print(balances)


def run_trading_demo(node: Node, console: Console) -> dict[str, Any]:
    """Run the session on an opened node; returns a few figures (used by the tests)."""
    md = MarketData()
    node.listeners.append(md.on_batch)
    try:
        _setup(node)
        engine = node.engine
        assert engine is not None
        console.rule("[bold]Spot trading: BTCUSDT")
        trades = _place_orders(node, console)
        _show_fills(console, trades)
        ledger = engine.ledger
        _show_funds(console, ledger)
        bids, asks = _show_book(console, engine)
        _show_balances(console, ledger)
        engine.check_invariants()
        console.print("[green]ledger conserved: every asset sums to zero; book uncrossed; holds match open orders[/green]")
        return {
            "trades": len(trades),
            "shield_usdt": ledger.insurance("USDT", "spot").balance,
            "shield_btc": ledger.insurance("BTC", "spot").balance,
            "book": (bids, asks),
            "md_snapshot": md[SYMBOL].snapshot(10) if SYMBOL in md.symbols else None,
        }
    finally:
        node.listeners.remove(md.on_batch)
