"""`ringfence dr drill`: run the disaster-recovery drill and print RTO, RPO and the proofs."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import typer
from ..cli_paths import tty_console
from .cli import flow_help
from rich.table import Table

app = typer.Typer(help="Disaster-recovery drills against real processes and NATS JetStream.\n\n"
                  "Example: ringfence dr drill --seed 7 --out ./dr-report", no_args_is_help=True)
console = tty_console(width=140)


@app.command("drill")
def drill(
    nats: str = typer.Option("nats://127.0.0.1:4222", "--nats", help="The NATS server (JetStream) to drill against: "
                      "host and port only, the drill makes a stream of its own per scenario. The default is this machine's "
                      "shared server: give another (a development nats-server) to keep the drill off it."),
    seed: int = typer.Option(1, "--seed", min=0, max=2**31 - 1, help="Seed of the order load and the failure moment."),
    scenario: str = typer.Option("both", "--scenario", help="kill (SIGKILL + operator promotion), partition "
                                 "(primary cut from NATS + automatic promotion after the lease), or both."),
    orders_before: int = typer.Option(60, "--before", min=4, max=150, help="Orders sent before the failure (at most)."),
    orders_after: int = typer.Option(20, "--after", min=1, max=150, help="Orders sent to the new primary."),
    lease_ms: int = typer.Option(1000, "--lease-ms", min=200, max=60_000, help="The primary's leadership lease."),
    ready_timeout: int = typer.Option(180, "--ready-timeout", min=1, max=3600,
                                      help="Seconds to wait for each node to become ready (its /readyz)."),
    out: Path = typer.Option(Path("dr-drill"), "--out", help="Folder for the nodes, logs, report.json and report.html."),
) -> None:
    """Kill (or partition) a replicated primary under a seeded load, fail over, and prove nothing was lost.

    Proves: zero acknowledged orders lost, identical state hash at the cut-over sequence, and (for
    the partition) that the primary stopped acknowledging within its lease. Prints RTO and RPO and
    writes OUT/report.html with a timeline. Every option is checked before anything is made.

    The drill's nodes are a throwaway cluster on scratch folders in OUT with the demo's data and chains: they
    run in dev mode (RINGFENCE_MODE=dev) whatever the environment says, without its mail server, keyring or
    secrets, and with an identity database of their own (SQLite, OUT/SCENARIO/identity.sqlite3, whatever
    RINGFENCE_DATABASE_URL says); a NATS
    password is taken as by the nodes (RINGFENCE_NATS_PASSWORD or the URL). --nats defaults to nats://127.0.0.1:4222,
    the machine's shared server: name the server to drill against.

    Exit status: 0 every proof held, 1 a proof failed or the drill could not run (NATS unreachable,
    a node did not start: its log is in OUT), 2 bad input (an option, a used --out).

    Example: ringfence dr drill --nats nats://127.0.0.1:4222 --seed 7 --out ./dr-report
    """
    from rich.markup import escape

    from ..cli_paths import fail
    from .drill import DrillResult, check_nats, check_nats_url, rerun_command, run_drill, write_report

    # every input is checked before any folder or node is made: a refusal leaves nothing behind
    if scenario not in ("kill", "partition", "both"):
        fail(f"--scenario: must be kill, partition or both, not {scenario!r}", 2)
    try:
        check_nats_url(nats, scenario)
    except ValueError as err:
        fail(f"--nats: {err}", 2)
    if out.exists() and not out.is_dir():
        fail(f"--out: {out} is a file; the drill writes into a new folder", 2)
    if out.exists() and any(out.iterdir()):
        fail(f"--out: {out} is not empty; the drill writes into a new folder", 2)
    try:
        check_nats(nats)
    except RuntimeError as err:
        fail(f"--nats: {err}", 1)
    # a SIGTERM (`timeout`, a supervisor) ends the drill as Ctrl-C does: its `finally` blocks stop the
    # nodes and delete its stream (intruder review, session 19: a killed drill left them behind)
    def stop(*_: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the clean-up short
        sys.exit(143)

    signal.signal(signal.SIGTERM, stop)
    def plain(text: str) -> None:  # the drill's lines are text (a server's words may hold [brackets])
        console.print(text, markup=False, highlight=False)

    results = []
    errors = []
    for name in (("kill", "partition") if scenario == "both" else (scenario,)):
        try:
            results.append(run_drill(name, nats, seed, out / name, before=orders_before, after=orders_after,
                                     lease_ms=lease_ms, ready_timeout_s=ready_timeout, say=plain))
        except RuntimeError as err:
            # the scenarios that finished keep their results: the report is written with this one failed
            errors.append(f"error: drill {name}: {err}")
            results.append(DrillResult.could_not_run(name, seed, lease_ms, str(err)))
    rerun = rerun_command(nats=nats, seed=seed, scenario=scenario, before=orders_before, after=orders_after,
                          lease_ms=lease_ms, ready_timeout_s=ready_timeout)
    report = write_report(results, out, rerun)
    for e in errors:
        tty_console(stderr=True).print(e, markup=False, highlight=False)
    table = Table(title=f"DR drill seed={seed}")
    for col in ("scenario", "acknowledged", "lost (RPO)", "RTO ms", "cut-over seq", "state hash equal", "old primary acks after failure ms", "result"):
        table.add_column(col)
    for r in results:
        s = r.summary()
        if r.error:
            table.add_row(r.scenario, *["-"] * 6, "[red]FAILED[/] (could not run)")
            continue
        table.add_row(r.scenario, str(s["acknowledged"]), str(s["acknowledged_lost"]), str(s["rto_ms"]), str(s["cut_over_seq"]),
                      "yes" if r.primary_hash == r.standby_hash else "NO", str(s["old_primary_last_ack_after_failure_ms"]),
                      "[green]PASSED[/]" if not r.problems else "[red]FAILED[/]")
    console.print(table)
    console.print(f"report: {report}")
    console.print(f"rerun: {rerun}", markup=False, highlight=False)
    problems = [f"{r.scenario}: {p}" for r in results for p in r.problems]
    for p in problems:
        console.print(f"[bold red]problem:[/] {escape(p)}")
    if problems:
        raise typer.Exit(1)
    console.print("dr drill: [bold green]PASSED[/] zero acknowledged commands lost, identical state at the cut-over")


flow_help(app)
