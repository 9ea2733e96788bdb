"""`ringfence trading ...`: run the trading demo session and look at a market's book."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

app = typer.Typer(help="Spot trading: demo session and book inspection.\n\nExample: ringfence trading demo --data ./ringfence-data/demo", no_args_is_help=True)


@app.command()
def demo(data: Path = typer.Option(Path("./ringfence-data/trading-demo"), help="node data directory")) -> None:
    """List BTCUSDT, place orders from two traders, show fills, fees, shield fund and the book.

    Example: ringfence trading demo --data ./ringfence-data/demo
    """
    from ..engine.node import Node
    from .demo import run_trading_demo

    with Node(data) as node:
        run_trading_demo(node, Console())


@app.command()
def book(
    symbol: str = typer.Argument(..., help="market symbol, e.g. BTCUSDT"),
    data: Path = typer.Option(Path("./ringfence-data/trading-demo"), help="node data directory"),
    depth: int = typer.Option(10, min=1, max=5000, help="levels per side"),
) -> None:
    """Recover the node from its journal and print a market's L2 book (integers in minor units).

    Example: ringfence trading book BTCUSDT --data ./ringfence-data/demo
    """
    from ..engine.node import Node
    from .matching import market_of

    with Node(data) as node:
        assert node.engine is not None
        bids, asks = market_of(node.engine, symbol).depth(depth)
    console = Console()
    console.print({"symbol": symbol, "bids": bids, "asks": asks})
