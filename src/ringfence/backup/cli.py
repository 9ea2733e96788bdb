"""`ringfence backup create|verify|restore`: consistent backups of a node, checked by replay."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..cli_paths import ENGINE_SUBDIR, fail, prepare_data_dir, require_node_dir, tty_console
from ..errors import RingfenceError
from . import BackupReport, create_backup, restore_backup, verify_backup
from .s3 import ENDPOINT_ENV, MANIFEST, download_backup, is_s3_url, parse_s3_url, require_empty, s3_client, upload_backup

app = typer.Typer(
    help="Back up a node (safe while it runs), verify a backup by replay, restore to any journal sequence. "
    "A backup is a folder or an S3-compatible location s3://BUCKET/PREFIX.\n\n"
    "Example: ringfence backup create --data ./ringfence-data --to ./backups/2026-12-03",
    no_args_is_help=True,
)
console = tty_console(width=140)

S3_ENDPOINT_HELP = (f"The S3-compatible service for s3:// locations (default ${ENDPOINT_ENV}, else AWS). Credentials "
                    "only from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) or an AWS profile, never an option.")


@contextlib.contextmanager
def _fetched(backup: str, endpoint: str | None) -> Iterator[Path]:
    """The backup as a local folder: BACKUPDIR itself, or s3://… downloaded into a private temporary one."""
    if not is_s3_url(backup):
        folder = Path(backup)
        if not folder.is_dir():
            fail(f"BACKUPDIR: {backup} is not a directory (nor an s3://BUCKET/PREFIX location)")
        yield folder
        return
    try:
        loc = parse_s3_url(backup, "BACKUPDIR")
        with tempfile.TemporaryDirectory(prefix="ringfence-s3-") as tmp:  # mode 0700
            objects, size = download_backup(loc, s3_client(endpoint), Path(tmp) / "backup")
            console.print(f"downloaded {objects} objects ({size:,} bytes) from {loc}")
            yield Path(tmp) / "backup"
    except RingfenceError as err:
        fail(str(err), 1)


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
    to: str = typer.Option(..., "--to", help="A new (or empty) folder for the backup, or s3://BUCKET/PREFIX "
                           "(an empty prefix; the manifest is uploaded last)."),
    s3_endpoint_url: str = typer.Option(None, "--s3-endpoint-url", help=S3_ENDPOINT_HELP),
) -> None:
    """Copy the journal (read-only, the node may keep running), replay it, write a snapshot and a manifest.

    The identity database is copied too: SQLite with its online backup API, PostgreSQL (when
    RINGFENCE_DATABASE_URL points at it) with pg_dump. Exit 0 when the backup replayed to a state hash.
    With --to s3://BUCKET/PREFIX the backup is made in a private temporary folder, then uploaded
    (manifest last), then the temporary folder is deleted.

    Example: ringfence backup create --data ./ringfence-data --to ./backups/2026-12-03

    Example: AWS_ACCESS_KEY_ID=… AWS_SECRET_ACCESS_KEY=… ringfence backup create --data ./ringfence-data
    --to s3://backups/ringfence/2026-12-03 --s3-endpoint-url http://127.0.0.1:9000
    """
    node = require_node_dir(data, "--data")
    pg_url = os.environ.get("RINGFENCE_DATABASE_URL", "")
    pg_url = pg_url if pg_url.startswith("postgresql") else ""
    identity = None if pg_url else (node.parent / "identity.sqlite3" if node.name == ENGINE_SUBDIR else node / "identity.sqlite3")
    if is_s3_url(to):
        _create_on_s3(node, to, s3_endpoint_url, identity, pg_url)
        return
    folder = Path(to)
    prepare_data_dir(folder, "--to")
    try:
        with _progress() as progress:
            report = create_backup(node, folder, identity_db=identity, identity_pg_url=pg_url or None,
                                   progress=progress)  # type: ignore[arg-type]
    except RingfenceError as err:
        fail(str(err), 1)
    console.print(_table(f"backup {to}", report))
    console.print(f"backup: [bold green]OK[/] sequence {report.last_seq:,} replayed to state hash {report.state_hash[:16]}…")


def _create_on_s3(node: Path, to: str, endpoint: str | None, identity: Path | None, pg_url: str) -> None:
    try:
        loc = parse_s3_url(to, "--to")
        client = s3_client(endpoint)
        require_empty(loc, client)  # before the copy and replay, which may take minutes
        with tempfile.TemporaryDirectory(prefix="ringfence-s3-") as tmp:  # mode 0700
            local = Path(tmp) / "backup"
            with _progress() as progress:
                report = create_backup(node, local, identity_db=identity, identity_pg_url=pg_url or None,
                                       progress=progress)  # type: ignore[arg-type]
            objects, size = upload_backup(local, loc, client)
    except RingfenceError as err:
        fail(str(err), 1)
    console.print(_table(f"backup {loc}", report))
    console.print(f"uploaded {objects} objects ({size:,} bytes) to {loc}, {MANIFEST} last")
    console.print(f"backup: [bold green]OK[/] sequence {report.last_seq:,} replayed to state hash {report.state_hash[:16]}…")


@app.command("verify")
def verify(
    backup: str = typer.Argument(..., metavar="BACKUPDIR", help="A folder written by `backup create`, or its s3://BUCKET/PREFIX."),
    s3_endpoint_url: str = typer.Option(None, "--s3-endpoint-url", help=S3_ENDPOINT_HELP),
) -> None:
    """Check every file's SHA-256, the journal's hash chain, and replay: the state hash must match.

    An s3:// backup is downloaded (every object under the prefix) and checked the same way: an
    object the manifest does not list, or one whose bytes changed, is a problem. Exit 0 when the
    backup is sound, 1 naming each problem otherwise.

    Example: ringfence backup verify ./backups/2026-12-03

    Example: ringfence backup verify s3://backups/ringfence/2026-12-03 --s3-endpoint-url http://127.0.0.1:9000
    """
    with _fetched(backup, s3_endpoint_url) as folder:
        try:
            with _progress() as progress:
                report = verify_backup(folder, progress=progress)  # type: ignore[arg-type]
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
    backup: str = typer.Argument(..., metavar="BACKUPDIR", help="A folder written by `backup create`, or its s3://BUCKET/PREFIX."),
    to: Path = typer.Option(..., "--to", help="A new (or empty) data directory; serve it with `ringfence serve --data NEWDIR`."),
    to_seq: int = typer.Option(None, "--to-seq", min=1, help="Restore the state as of this journal sequence "
                               "(default: the backup's last). Later commands are left out."),
    s3_endpoint_url: str = typer.Option(None, "--s3-endpoint-url", help=S3_ENDPOINT_HELP),
) -> None:
    """Rebuild a data directory from a backup, as of any journal sequence (point-in-time restore).

    The restored journal is the backup's up to --to-seq (a batch straddling it is cut after that
    command); it is replayed and snapshotted before the command returns. A PostgreSQL identity dump
    is loaded into the empty database RINGFENCE_DATABASE_URL names (else it stays in the backup).

    Example: ringfence backup restore ./backups/2026-12-03 --to ./restored --to-seq 1200

    Example: ringfence backup restore s3://backups/ringfence/2026-12-03 --to ./restored --to-seq 1200
    """
    prepare_data_dir(to, "--to")
    if any(to.iterdir()):
        fail(f"--to: {to} is not empty; restore into a new folder")
    with _fetched(backup, s3_endpoint_url) as folder:
        try:
            with _progress() as progress:
                pg_url = os.environ.get("RINGFENCE_DATABASE_URL", "")
                report = restore_backup(folder, to, to_seq=to_seq, progress=progress,  # type: ignore[arg-type]
                                        identity_pg_url=pg_url if pg_url.startswith("postgresql") else None)
        except RingfenceError as err:
            fail(str(err), 1)
    console.print(_table(f"restored {to}", report))
    console.print(f"restore: [bold green]OK[/] at sequence {report.last_seq:,}; start it with: ringfence serve --data {to}")


__all__ = ["app"]
