"""`ringfence backup create|verify|restore`: consistent backups of a node, checked by replay."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..cli_paths import ENGINE_SUBDIR, fail, prepare_data_dir, require_node_dir
from ..errors import RingfenceError
from . import BackupReport, create_backup, restore_backup, verify_backup

app = typer.Typer(
    help="Back up a node (safe while it runs), verify a backup by replay, restore to any journal sequence.\n\n"
    "Example: ringfence backup create --data ./ringfence-data --to ./backups/2026-12-03",
    no_args_is_help=True,
)
console = Console(width=None if sys.stdout.isatty() else 140)


@contextlib.contextmanager
def _progress() -> Iterator[object]:
    columns = (TextColumn("{task.description:<16}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        tasks: dict[str, object] = {}

        def update(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(phase, total=total)
            bar.update(tasks[phase], completed=done)  # type: ignore[arg-type]

        yield update


def _table(title: str, report: BackupReport) -> Table:
    table = Table(title=title, show_header=False)
    table.add_row("last sequence", f"{report.last_seq:,}")
    table.add_row("records (batches)", f"{report.records:,}")
    table.add_row("commands", f"{report.commands:,}")
    table.add_row("segments", str(report.segments))
    table.add_row("chain head", report.chain_head)
    table.add_row("state hash", report.state_hash)
    table.add_row("identity", report.identity)
    for seq, ok in report.snapshots_checked:
        table.add_row(f"snapshot @{seq:,}", "[green]matches the replay[/]" if ok else "[red]DIFFERS[/]")
    for note in report.notes:
        table.add_row("note", note)
    return table


@app.command("create")
def create(
    data: Path = typer.Option(..., "--data", help="The data directory `serve --data` takes (or a node folder). "
                              "It may be serving: the backup only reads it."),
    to: Path = typer.Option(..., "--to", help="A new (or empty) folder for the backup."),
) -> None:
    """Copy the journal (read-only, the node may keep running), replay it, write a snapshot and a manifest.

    The identity database is copied too: SQLite with its online backup API, PostgreSQL (when
    RINGFENCE_DATABASE_URL points at it) with pg_dump. Exit 0 when the backup replayed to a state hash.

    Example: ringfence backup create --data ./ringfence-data --to ./backups/2026-12-03
    """
    node = require_node_dir(data, "--data")
    pg_url = os.environ.get("RINGFENCE_DATABASE_URL", "")
    pg_url = pg_url if pg_url.startswith("postgresql") else ""
    identity = None if pg_url else (node.parent / "identity.sqlite3" if node.name == ENGINE_SUBDIR else node / "identity.sqlite3")
    prepare_data_dir(to, "--to")
    try:
        with _progress() as progress:
            report = create_backup(node, to, identity_db=identity, identity_pg_url=pg_url or None,
                                   progress=progress)  # type: ignore[arg-type]
    except RingfenceError as err:
        fail(str(err), 1)
    console.print(_table(f"backup {to}", report))
    console.print(f"backup: [bold green]OK[/] sequence {report.last_seq:,} replayed to state hash {report.state_hash[:16]}…")


@app.command("verify")
def verify(backup: Path = typer.Argument(..., metavar="BACKUPDIR", help="A folder written by `backup create`.")) -> None:
    """Check every file's SHA-256, the journal's hash chain, and replay: the state hash must match.

    Exit 0 when the backup is sound, 1 naming each problem otherwise.

    Example: ringfence backup verify ./backups/2026-12-03
    """
    if not backup.is_dir():
        fail(f"BACKUPDIR: {backup} is not a directory")
    try:
        with _progress() as progress:
            report = verify_backup(backup, progress=progress)  # type: ignore[arg-type]
    except RingfenceError as err:
        fail(str(err), 1)
    console.print(_table(f"backup {backup}", report))
    if report.problems:
        for problem in report.problems:
            console.print(f"[bold red]problem:[/] {problem}")
        fail(f"backup {backup} failed verification ({len(report.problems)} problems)", 1)
    console.print("backup verify: [bold green]OK[/] (files, hash chain, replayed state hash, snapshot, invariants)")


@app.command("restore")
def restore(
    backup: Path = typer.Argument(..., metavar="BACKUPDIR", help="A folder written by `backup create`."),
    to: Path = typer.Option(..., "--to", help="A new (or empty) data directory; serve it with `ringfence serve --data NEWDIR`."),
    to_seq: int = typer.Option(None, "--to-seq", min=1, help="Restore the state as of this journal sequence "
                               "(default: the backup's last). Later commands are left out."),
) -> None:
    """Rebuild a data directory from a backup, as of any journal sequence (point-in-time restore).

    The restored journal is the backup's up to --to-seq (a batch straddling it is cut after that
    command); it is replayed and snapshotted before the command returns. A PostgreSQL identity dump
    is loaded into the empty database RINGFENCE_DATABASE_URL names (else it stays in the backup).

    Example: ringfence backup restore ./backups/2026-12-03 --to ./restored --to-seq 1200
    """
    if not backup.is_dir():
        fail(f"BACKUPDIR: {backup} is not a directory")
    prepare_data_dir(to, "--to")
    if any(to.iterdir()):
        fail(f"--to: {to} is not empty; restore into a new folder")
    try:
        with _progress() as progress:
            pg_url = os.environ.get("RINGFENCE_DATABASE_URL", "")
            report = restore_backup(backup, to, to_seq=to_seq, progress=progress,  # type: ignore[arg-type]
                                    identity_pg_url=pg_url if pg_url.startswith("postgresql") else None)
    except RingfenceError as err:
        fail(str(err), 1)
    console.print(_table(f"restored {to}", report))
    console.print(f"restore: [bold green]OK[/] at sequence {report.last_seq:,}; start it with: ringfence serve --data {to}")


__all__ = ["app"]
