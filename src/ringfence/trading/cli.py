"""`ringfence trading ...`: run the trading demo session and look at a market's book."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from ..app import new_node
from ..cli_paths import tty_console

app = typer.Typer(help="Spot trading: demo session and book inspection.\n\nExample: ringfence trading demo --data ./ringfence-data/demo", no_args_is_help=True)


@app.command()
def demo(data: Path = typer.Option(Path("./ringfence-data/trading-demo"), help="node data directory (or the DIR `serve --data` takes: its node, DIR/engine)")) -> None:
    """List BTCUSDT, place orders from two traders, show fills, fees, shield fund and the book.

    Example: ringfence trading demo --data ./ringfence-data/demo
    """
    from ..cli_paths import fail, prepare_node_dir
    from ..errors import RingfenceError
    from .demo import run_trading_demo

    data = prepare_node_dir(data, "--data")  # `serve --data DIR` means its node, DIR/engine (and its lock)
    try:
        with new_node(data) as node:
            run_trading_demo(node, Console())
    except RingfenceError as err:
        fail(str(err), 1)


@app.command()
def book(
    symbol: str = typer.Argument(..., help="market symbol, e.g. BTCUSDT"),
    data: Path = typer.Option(Path("./ringfence-data/trading-demo"), help="node data directory"),
    depth: int = typer.Option(10, min=1, max=5000, help="levels per side"),
) -> None:
    """Recover the node from its journal and print a market's L2 book (integers in minor units).

    Example: ringfence trading book BTCUSDT --data ./ringfence-data/demo
    """
    from ..cli_paths import fail, require_node_dir
    from ..app import replay_journal
    from ..errors import RingfenceError
    from .state import market_of

    data = require_node_dir(data, "--data")  # an inspection never creates the folder it reads
    try:
        engine, _, _ = replay_journal(data)  # read-only: the journal is not truncated or opened for writing
        bids, asks = market_of(engine, symbol).depth(depth)
    except RingfenceError as err:
        fail(str(err))
    console = tty_console()
    console.print({"symbol": symbol, "bids": bids, "asks": asks})
