"""`ringfence futures …`: the perpetuals' risk view of a running node (GET /v1/risk, the /risk page)."""

from __future__ import annotations

import json
import time
from typing import Any

import typer
from rich.table import Table

from ..cli_paths import DEFAULT_URL, tty_console

app = typer.Typer(help="Perpetual futures: the risk view (insurance funds, open interest, funding, positions near liquidation).\n\n"
                  "Example: ringfence futures risk --url http://127.0.0.1:8000", no_args_is_help=True)


def _plain(amount: str) -> str:
    """A decimal string without trailing zeros ("0.000000000000000000" -> "0", "1.500" -> "1.5")."""
    return amount.rstrip("0").rstrip(".") if "." in amount else amount


def _countdown(ms: int) -> str:
    """Milliseconds until the next funding as H:MM:SS (0:00:00 when due)."""
    s = max(ms, 0) // 1000
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


@app.command("risk")
def risk(
    url: str = typer.Option(DEFAULT_URL, "--url", help="A running node's base URL (reads GET /v1/risk; default $RINGFENCE_URL or http://127.0.0.1:8000)."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON of /v1/risk instead of tables."),
) -> None:
    """Insurance fund per segment; per perpetual mark, index, open interest and funding; the positions
    nearest to liquidation (margin ratio = maintenance / margin balance; owners are not shown).

    Example: ringfence futures risk --url http://127.0.0.1:8000 --json
    """
    import httpx

    from ..cli_paths import fail

    try:
        r = httpx.get(url.rstrip("/") + "/v1/risk", timeout=10)
    except httpx.HTTPError as err:
        fail(f"--url: {url} did not answer: {type(err).__name__}", 1)
    if r.status_code != 200:
        fail(f"--url: {url} answered HTTP {r.status_code} for /v1/risk", 1)
    view: dict[str, Any] = r.json()
    if as_json:
        typer.echo(json.dumps(view, indent=2))
        return
    console = tty_console()
    funds = Table(title="Insurance funds")
    for col in ("segment", "fund"):
        funds.add_column(col)
    for s in view["segments"]:
        funds.add_row(s["segment"], ", ".join(f"{f['balance']} {f['asset']}" for f in s["insurance_fund"]) or "0")
    console.print(funds)
    markets = Table(title="Perpetuals")
    for col in ("symbol", "mark", "index", "open interest", "value", "long/short accounts", "last funding rate", "next funding in"):
        markets.add_column(col)
    now_ms = time.time_ns() // 1_000_000
    for m in view["markets"]:
        markets.add_row(m["symbol"], m["markPrice"], str(m["indexPrice"]), _plain(m["openInterest"]), m["openInterestValue"],
                        f"{m['longAccounts']}/{m['shortAccounts']}", m["lastFundingRate"], _countdown(int(m["nextFundingTime"]) - now_ms))
    console.print(markets)
    near = Table(title=f"Nearest to liquidation ({view['positions']} positions)")
    for col in ("symbol", "side", "notional (≈)", "mark", "margin", "ratio %"):
        near.add_column(col)
    for p in view["nearLiquidation"]:
        near.add_row(p["symbol"], p["side"], p["notionalApprox"], p["markPrice"], p["marginType"], p["marginRatioBand"])
    console.print(near)
