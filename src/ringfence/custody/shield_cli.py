"""`ringfence shield status`: the shield fund and CoinEx's rule, read from a node's journal.

Read-only: the state is rebuilt from the journal (no lock, nothing written), so it works on a
stopped node and next to a running `ringfence serve`. Sweeps are not started from here: a sweep
needs the hot wallet's signer, which lives only in the custody runtime inside `serve` (the shield
sweeper worker); an operator sees its effect here and on /por.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from ..cli_paths import tty_console
from ..money import format_amount

__all__ = ["shield_app"]

shield_app = typer.Typer(help="The shield fund on chain: accrued share, vault, sweeps due, and the rule shield >= hot.\n\n"
                         "Example: ringfence shield status --data ./ringfence-data", no_args_is_help=True)
EXIT_ALERT = 1


@shield_app.command("status")
def status(
    data: Path = typer.Option(..., "--data", help="The data directory `serve --data` takes (or its engine/ folder)."),
    value_asset: str = typer.Option("USDT", "--value-asset", help="Asset both sides of the rule are valued in (markets' reference prices)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Shield fund per asset (accrued in the ledger, in the on-chain vault, in flight, due) and CoinEx's
    rule: shield fund value >= hot wallet value. Exit status 1 when the rule is broken or cannot be checked.

    Example: ringfence shield status --data ./ringfence-data
    """
    from ..app import replay_journal
    from ..cli_paths import fail, require_node_dir
    from ..errors import RingfenceError
    from .shield import shield_status

    if not value_asset.isascii() or not value_asset.isalnum() or not 2 <= len(value_asset) <= 12:
        fail("--value-asset: must be an asset code of 2-12 letters or digits")
    path = require_node_dir(data, "--data")
    try:
        engine, _, _ = replay_journal(path)
    except RingfenceError as err:
        fail(f"{err}", 1)
    report = shield_status(engine, value_asset.upper())
    report["seq"] = engine.last_seq
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        _print(report)
    if report["alert"]:
        raise typer.Exit(EXIT_ALERT)


def _print(report: dict) -> None:  # type: ignore[type-arg]
    console = tty_console(width=140)
    table = Table(title=f"shield fund at sequence {report['seq']:,}")
    for col in ("asset", "accrued (ledger)", "in the vault", "sweep in flight", "due", "hot wallets"):
        table.add_column(col, justify="right" if col != "asset" else "left")
    for r in report["assets"]:
        d = r["decimals"]
        table.add_row(r["asset"], *(format_amount(int(r[k]), d, trim=True)
                                    for k in ("accrued_minor", "vault_minor", "in_flight_minor", "due_minor", "hot_minor")))
    console.print(table)
    unit = f"{report['value_asset']} minor units"
    if not report["applicable"]:
        console.print("shield rule: not applicable (no hot or shield wallet is registered)")
    elif report["ok"] is True:
        console.print(f"[bold green]shield rule holds:[/] shield {report['shield_value_minor']} >= hot {report['hot_value_minor']} ({unit})")
    elif report["ok"] is False:
        console.print(f"[bold red]ALERT: shield fund below hot wallets:[/] shield {report['shield_value_minor']} < hot "
                      f"{report['hot_value_minor']} ({unit})")
    else:
        console.print(f"[bold red]ALERT: the shield rule cannot be checked:[/] no {report['value_asset']} price for "
                      f"{', '.join(report['unpriced'])}")
