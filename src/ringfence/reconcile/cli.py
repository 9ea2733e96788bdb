"""`ringfence reconcile run|status|history`: run the checks, show active halts and incidents.

`run` and `lift` open the node's data directory as its writer: they take the data directory's lock,
so while `serve` runs on it they are refused with the server's pid (a second writer would break the
journal's hash chain). `status` and `history` only read. Every command takes the data directory
`serve --data DIR` takes (the node is `DIR/engine`) or the node folder itself. `run` folds the
journal independently, compares, and submits `Halt` commands for what disagrees. Chain wallets
need chain adapters, which only a running service has; from the command line `run` does the
internal checks (the service wires `Reconciler(node, wallets=..., custody=...)`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..cli_paths import tty_console
from ..errors import RingfenceError
from ..app import new_node

app = typer.Typer(
    help="Reconcile the ledger with the chain and with the journal; show halts and incidents.\n\n"
    "Example: ringfence reconcile run ./ringfence-data/demo",
    no_args_is_help=True,
)
console = tty_console(width=140)
err_console = tty_console(stderr=True, width=140)

#: Exit code of `run` when it found mismatches (0 = clean).
EXIT_MISMATCH = 3


def _data_dir(path: Path) -> Path:
    """The node directory: DIR as `serve --data DIR` takes it (node in DIR/engine) or the node folder."""
    from ..cli_paths import require_node_dir

    return require_node_dir(path, "DIR")


def _incidents(path: Path, *, read_only: bool = False):
    """The incident store; `read_only` (status, history) returns None instead of creating it."""
    from .reconciler import IncidentStore

    file = path / "reconcile" / "incidents.sqlite"
    if read_only and not file.is_file():
        return None
    return IncidentStore(file)


def _print_report(report) -> None:
    table = Table(title=f"reconciliation at sequence {report.seq:,} ({report.duration_ms} ms, "
                        f"{report.accounts_checked:,} accounts, {len(report.chain_rows)} wallets)")
    for col in ("kind", "scope", "subject", "expected", "found", "delta", "action"):
        table.add_column(col, overflow="fold", no_wrap=col in ("kind", "action"))
    actions = {h: "halt raised" for h in report.halts_submitted}
    actions.update({h: "halt active" for h in report.halts_already_active})
    actions.update({h: "lifted by quorum" for h in report.acknowledged})
    for m in report.mismatches:
        level = m.rule.level or "incident"
        table.add_row(m.kind, f"{m.rule.scope_kind}:{m.scope} {level}", m.subject, f"{m.expected_minor:,}",
                      f"{m.actual_minor:,}", f"{m.delta_minor:+,}", actions.get(m.halt_id, "incident"))
    for row in report.chain_rows:
        console.print(f"chain {row.chain} h={row.height} {row.wallet}/{row.asset}: chain {row.chain_minor:,} "
                      f"ledger {row.ledger_minor:,} in-flight {row.in_flight_minor:,} pending {row.pending_minor:,} "
                      f"-> {row.status}")
    for note in report.notes:
        console.print(f"[yellow]note:[/] {note}")
    if report.mismatches:
        console.print(table)
    else:
        console.print(f"[bold green]reconciled:[/] {report.accounts_checked:,} accounts at sequence {report.seq:,} "
                      f"match the journal ({report.duration_ms} ms)")


@app.command("run")
def run(
    data_dir: Path = typer.Argument(..., metavar="DIR", help="The data directory `serve --data` takes (or its engine/ folder); the node must be stopped."),
    watch: bool = typer.Option(False, "--watch", help="Keep running: a pass every --interval-ms until Ctrl-C."),
    interval_ms: int = typer.Option(5_000, "--interval-ms", min=100, max=600_000, help="Time between passes with --watch."),
    no_halt: bool = typer.Option(False, "--no-halt", help="Report only: record incidents but submit no Halt."),
) -> None:
    """Fold the journal independently, compare with the engine, halt what disagrees.

    Writes to the journal (Halt commands), so it takes the data directory's lock: refused, naming
    the pid, while `serve` runs (the server reconciles by itself every RINGFENCE_RECONCILE_EVERY_MS).

    Example: ringfence reconcile run ./ringfence-data --watch --interval-ms 5000
    """
    from .reconciler import Reconciler

    path = _data_dir(data_dir)
    try:
        with new_node(path) as node:
            rec = Reconciler(node, incidents=_incidents(path))
            with Progress(SpinnerColumn(), TextColumn("folding the journal independently"),
                          TextColumn("{task.completed:,} commands"), TimeElapsedColumn(),
                          console=err_console, transient=True) as progress:
                task = progress.add_task("fold", total=None)
                rec.fold.advance(progress=lambda n: progress.advance(task, n))
            if no_halt:
                rec._respond = _report_only(rec)  # type: ignore[method-assign]
            found = False
            while True:
                report = rec.run_once()
                _print_report(report)
                found = found or bool(report.mismatches)
                if not watch:
                    break
                time.sleep(interval_ms / 1000)
    except RingfenceError as err:
        err_console.print(f"[bold red]error:[/] {err}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        pass
    if found:
        raise typer.Exit(EXIT_MISMATCH)


def _report_only(rec):
    from .reconciler import RunReport

    def respond(mismatches, rows, accounts, notes):
        now = rec.clock_ms()
        for m in mismatches:
            rec.incidents.record(m, "reported (--no-halt)", now)
        return RunReport(rec.node.last_seq, rows, mismatches, [], [], [], accounts, 0, notes)

    return respond


@app.command("status")
def status(
    data_dir: Path = typer.Argument(..., metavar="DIR", help="The data directory `serve --data` takes (or its engine/ folder)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """Active halts (from the journal) and the latest reconciliation runs. Read-only: works while `serve` runs.

    Example: ringfence reconcile status ./ringfence-data
    """
    from ..app import replay_journal
    from ..risk.halts import active_halts
    from ..staff import staff_of

    path = _data_dir(data_dir)
    try:
        engine, _, _ = replay_journal(path)
    except RingfenceError as err:
        err_console.print(f"[bold red]error:[/] {err}")
        raise typer.Exit(1) from None
    halts = active_halts(engine)
    store = _incidents(path, read_only=True)
    runs = store.runs(10) if store is not None else []
    staff = staff_of(engine)
    if as_json:
        typer.echo(json.dumps({"seq": engine.last_seq, "operators": [m.staff_id for m in staff.active("operator")],
                               "threshold": staff.quorum, "active_halts": halts, "runs": runs}, indent=2))
        return
    console.print(f"sequence {engine.last_seq:,}; operators {len(staff.active('operator'))} (quorum {staff.quorum})")
    if halts:
        table = Table(title=f"{len(halts)} active halt(s)")
        for col in ("halt id", "scope", "level", "raised at seq", "reason"):
            table.add_column(col, overflow="fold")
        for h in halts:
            table.add_row(h["halt_id"], f"{h['scope_kind']}:{h['scope']}", f"[bold red]{h['level']}[/]", str(h["raised_seq"]), h["reason"])
        console.print(table)
    else:
        console.print("[bold green]no active halts[/]")
    if runs:
        table = Table(title="latest reconciliation runs")
        for col in ("at (UTC)", "seq", "ms", "wallets", "accounts", "mismatches", "notes"):
            table.add_column(col, overflow="fold")
        for r in runs:
            at = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r["at_ms"] / 1000))
            table.add_row(at, str(r["seq"]), str(r["duration_ms"]), str(r["wallets"]), f"{r['accounts']:,}",
                          str(r["mismatches"]), r["notes"])
        console.print(table)
    else:
        console.print("no reconciliation run recorded yet (ringfence reconcile run DIR)")


@app.command("history")
def history(
    data_dir: Path = typer.Argument(..., metavar="DIR", help="The data directory `serve --data` takes (or its engine/ folder)."),
    limit: int = typer.Option(50, "--limit", min=1, max=10_000, help="How many incidents to show."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (with full evidence) instead of a table."),
) -> None:
    """Incidents, newest first: one per distinct mismatch, with what was done about it.

    Read-only: works while `serve` runs.

    Example: ringfence reconcile history ./ringfence-data --limit 20
    """
    path = _data_dir(data_dir)
    store = _incidents(path, read_only=True)
    rows = store.incidents(limit) if store is not None else []
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        console.print("[bold green]no incidents recorded[/]")
        return
    table = Table(title=f"{len(rows)} incident(s)")
    for col in ("last seen (UTC)", "kind", "scope", "level", "subject", "expected", "found", "seen", "action", "halt id"):
        table.add_column(col, overflow="fold", no_wrap=col in ("kind", "halt id"))
    for r in rows:
        at = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r["last_seen_ms"] / 1000))
        table.add_row(at, r["kind"], f"{r['scope_kind']}:{r['scope']}", r["level"] or "incident", r["subject"],
                      r["expected_minor"], r["actual_minor"], str(r["seen_count"]), r["action"], r["halt_id"])
    console.print(table)



@app.command("approve")
def approve(
    halt_id: str = typer.Argument(..., help="The halt to lift (see `reconcile status`)."),
    raised_seq: int = typer.Option(..., "--raised-seq", min=1, help="The halt's 'raised at seq' (binds the approval to this raise)."),
    reason: str = typer.Option(..., "--reason", help="Why it may be lifted; every approver signs the same text."),
    key_file: Path = typer.Option(..., "--key", "--key-file", help="Your staff key file (from `ringfence staff init|keygen`)."),
    operator: str | None = typer.Option(None, "--operator", help="Your staff id, when the key file holds a bare 64-hex seed."),
    ttl_s: int = typer.Option(3600, "--ttl-s", min=1, max=86_400, help="How long the approval may be submitted."),
) -> None:
    """Sign an approval to lift one halt; prints a token for `reconcile lift --approval` (or `halts lift`).

    Runs offline: nothing is read from or written to a data directory. The token is
    STAFF_ID:NONCE:EXPIRES_NS:SIGNATURE, a signed staff decision (action `halt.lift`) usable once.
    Example: ringfence reconcile approve rc.hot_wallet_shortfall.1a2b --raised-seq 812 --reason "key rotated" --key op1.key
    """
    from ..cli_paths import require_input_file
    from ..risk.halts import lift_subject
    from ..staff.decisions import format_approval, read_key_file

    require_input_file(key_file, "--key")
    try:
        key = read_key_file(key_file, operator)
    except RingfenceError as err:
        err_console.print(f"[bold red]error:[/] --key: {err.message}")
        raise typer.Exit(2) from None
    expires_ns = time.time_ns() + ttl_s * 10**9
    typer.echo(format_approval(key.sign("halt.lift", lift_subject(halt_id, reason, raised_seq), expires_ns)))


@app.command("lift")
def lift(
    data_dir: Path = typer.Argument(..., metavar="DIR", help="The data directory `serve --data` takes (or its engine/ folder); the node must be stopped."),
    halt_id: str = typer.Argument(..., help="The halt to lift."),
    reason: str = typer.Option(..., "--reason", help="The reason the approvers signed."),
    approvals: list[str] = typer.Option(..., "--approval", help="A token from `reconcile approve`; repeat for the operator quorum."),
) -> None:
    """Submit LiftHaltSigned with the operator quorum's approvals; the engine verifies every signature.

    Appends to the journal, so it takes the data directory's lock: while `serve` runs on DIR it is
    refused with the server's pid and nothing is written — use `ringfence halts lift --url` against
    the running server instead.

    Example: ringfence reconcile lift ./data rc.hot_wallet_shortfall.1a2b --reason "key rotated" --approval op1:.. --approval op2:..
    """
    from ..risk.halts import LiftHaltSigned
    from ..staff.decisions import parse_approval

    try:
        parsed = [parse_approval(item, f"--approval #{i + 1}") for i, item in enumerate(approvals)]
    except RingfenceError as err:
        err_console.print(f"[bold red]error:[/] {err}")
        raise typer.Exit(2) from None
    path = _data_dir(data_dir)
    try:
        with new_node(path) as node:
            [event] = node.execute(LiftHaltSigned(halt_id, reason, parsed))
    except RingfenceError as err:
        err_console.print(f"[bold red]refused:[/] {err}")  # str(err) already names the field and the rule
        raise typer.Exit(1) from None
    console.print(f"[bold green]lifted[/] {halt_id} ({event.scope_kind}:{event.scope} {event.level}) "
                  f"approved by {', '.join(event.approvers)}")
