"""`ringfence backup create|verify|restore`: consistent backups of a node, checked by replay."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .. import nodekey
from ..cli_paths import ENGINE_SUBDIR, check_new_dir, fail, require_node_dir, tty_console
from ..errors import RingfenceError
from . import BackupReport, BackupSigner, create_backup, restore_backup, verify_backup
from .s3 import ENDPOINT_ENV, MANIFEST, download_backup, is_s3_url, parse_s3_url, require_empty, s3_client, upload_backup

app = typer.Typer(
    help="Back up a node (safe while it runs), verify a backup by replay, restore to any journal sequence. "
    "A backup is a folder or an S3-compatible location s3://BUCKET/PREFIX.\n\n"
    "Every manifest is signed with the node's key; verify and restore take --trust FILE, the nodes whose "
    "backups you accept (`backup trust-entry` prints a node's entry).\n\n"
    "Example: ringfence backup create --data ./ringfence-data --to ./backups/2026-12-03",
    no_args_is_help=True,
)
console = tty_console(width=140)
EXIT_NOT_TRUSTED = 3  # verify/restore went through with --allow-unsigned, but no trusted node signed the backup

TRUST_HELP = ("The trust file, kept apart from the backups: a JSON object {\"NODE_ID\": \"public key hex\"} of the "
              "nodes whose backups you accept (`ringfence backup trust-entry` prints a node's entry). Required: "
              "the manifest's signature is checked against it before anything else is read or written.")
ALLOW_UNSIGNED_HELP = ("Dev mode only, set explicitly (RINGFENCE_MODE=dev in the environment; unset is refused): accept "
                       "a backup that is not signed, or signed by a node the trust file does not list, with a warning; "
                       f"the verdict then says NOT TRUSTED and the exit status is {EXIT_NOT_TRUSTED}.")
EXPECT_SEQ_HELP = ("Refuse a backup whose last sequence is below N (exit 1, nothing written): an older, "
                   "genuinely signed backup swapped in where a newer one was expected.")
SERVE_DEFAULT_PORT = 8000  # `serve --port`'s default: a node without --node-id calls itself HOSTNAME-8000


def _fail(message: str, code: int = 2) -> NoReturn:
    """`fail`, typed as never returning (it escapes markup itself: '[s3]' in `pip install 'ringfence[s3]'` is text)."""
    fail(message, code)
    raise AssertionError("fail() returns only by raising")


def _default_node_id() -> str:
    """The name `ringfence serve` gives itself without --node-id (replication/serving.py), at its default port."""
    return f"{socket.gethostname()}-{SERVE_DEFAULT_PORT}"


def _data_dir(node: Path) -> Path:
    """The data directory whose node.key signs: `serve --data DIR` keeps its node in DIR/engine."""
    return node.parent if node.name == ENGINE_SUBDIR else node


def _signing_key(data: Path, sign_key: Path | None) -> tuple[Ed25519PrivateKey, str]:
    """The key that signs (--sign-key FILE, else the data directory's node.key, made on first use) and where it is."""
    try:
        if sign_key is not None:
            return nodekey.load_key(sign_key, "--sign-key"), str(sign_key)
        made = not (data / nodekey.KEY_FILE).exists()
        key = nodekey.load_or_create(data)
    except RingfenceError as err:
        _fail(str(err))
    where = str(data / nodekey.KEY_FILE)
    return key, where + (" (made now: add its trust entry to your trust file)" if made else "")


def _trust(trust: Path | None, allow_unsigned: bool) -> tuple[dict[str, Ed25519PublicKey], bool]:
    """The trust file, and whether --allow-unsigned is in force (dev mode only); checked before any download."""
    if allow_unsigned:
        from pydantic import ValidationError as SettingsInvalid

        from ..settings import Settings

        if "RINGFENCE_MODE" not in os.environ:  # dev is Settings' default: an operator's shell need not say so
            _fail("--allow-unsigned: needs RINGFENCE_MODE=dev set explicitly in the environment (RINGFENCE_MODE is "
                  "not set); a backup must be signed by a node the --trust file lists")
        try:
            mode = Settings().mode
        except SettingsInvalid as err:  # named by variable only: a value may be a secret
            names = ", ".join(sorted({"RINGFENCE_" + str(e["loc"][0]).upper() for e in err.errors() if e["loc"]}))
            _fail(f"--allow-unsigned: cannot read the settings to check the mode; invalid: {names}")
        if mode != "dev":
            _fail(f"--allow-unsigned: refused outside dev mode (RINGFENCE_MODE={mode}); a backup must be signed by a "
                  "node the --trust file lists")
        tty_console(stderr=True).print("[bold yellow]warning:[/] --allow-unsigned (dev mode): a backup that is not "
                                       "signed by a trusted node will be accepted; anyone who can write to where "
                                       "backups are kept could have changed it")
    if trust is None:
        if allow_unsigned:
            return {}, True
        _fail("--trust: give the trust file (JSON {\"NODE_ID\": \"public key hex\"}) listing the nodes whose backups "
              "you accept; `ringfence backup trust-entry --data DATA_DIR` prints a node's entry")
    try:
        return nodekey.load_peers(trust, "--trust"), allow_unsigned
    except RingfenceError as err:
        _fail(str(err))


def _warn_if_untrusted(report: BackupReport) -> None:
    if not report.trusted:
        tty_console(stderr=True).print(f"[bold yellow]warning:[/] {escape(report.signer)}")


def _which(report: BackupReport) -> str:
    """Which backup this is, for the verdict line: an older genuine one swapped in shows here."""
    return f"made {escape(report.created_at)}, last sequence {report.manifest_last_seq:,}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


S3_ENDPOINT_HELP = (f"The S3-compatible service for s3:// locations (default ${ENDPOINT_ENV}, else AWS). Credentials "
                    "only from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) or an AWS profile, never an option.")


@contextlib.contextmanager
def _fetched(backup: str, endpoint: str | None, trust: dict[str, Ed25519PublicKey],
             allow_unsigned: bool) -> Iterator[tuple[Path, list[str]]]:
    """The backup as a local folder, with the problems found fetching it: BACKUPDIR itself, or s3://…
    downloaded into a private temporary one (its manifest first, checked against `trust`; then only
    the objects it lists, each no larger than it allows: s3.download_backup)."""
    if not is_s3_url(backup):
        folder = Path(backup)
        if not folder.is_dir():
            _fail(f"BACKUPDIR: {backup} is not a directory (nor an s3://BUCKET/PREFIX location)")
        yield folder, []
        return
    try:
        loc = parse_s3_url(backup, "BACKUPDIR")
        with tempfile.TemporaryDirectory(prefix="ringfence-s3-") as tmp:  # mode 0700
            objects, size, problems = download_backup(loc, s3_client(endpoint, "BACKUPDIR"), Path(tmp) / "backup",
                                                      trust=trust, allow_unsigned=allow_unsigned)
            console.print(f"downloaded {objects} objects ({size:,} bytes) from {loc}")
            yield Path(tmp) / "backup", problems
    except RingfenceError as err:
        _fail(str(err), 1)


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
    if report.created_at:
        table.add_row("made at", escape(report.created_at))
    table.add_row("last sequence", f"{report.last_seq:,}")
    table.add_row("records (batches)", f"{report.records:,}")
    table.add_row("commands", f"{report.commands:,}")
    table.add_row("segments", str(report.segments))
    table.add_row("chain head", report.chain_head)
    table.add_row("state hash", report.state_hash)
    table.add_row("identity", report.identity)
    if report.signer:
        table.add_row("signed by", escape(report.signer))
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
    sign_key: Path = typer.Option(None, "--sign-key", help="The Ed25519 key (PEM, mode 0600) that signs the manifest "
                                  "(default: the data directory's node.key, made on first use)."),
    node_id: str = typer.Option(None, "--node-id", help="The signer's name, as in the trust file (default: what "
                                "`serve` calls itself without --node-id, HOSTNAME-8000)."),
    s3_endpoint_url: str = typer.Option(None, "--s3-endpoint-url", help=S3_ENDPOINT_HELP),
) -> None:
    """Copy the journal (read-only, the node may keep running), replay it, write a snapshot and a signed manifest.

    The identity database is copied too: SQLite with its online backup API, PostgreSQL (when
    RINGFENCE_DATABASE_URL points at it) with pg_dump, given every parameter of the URL (sslmode, sslrootcert,
    host=/socket/dir); outside dev mode only over a way `serve` may take (docs/resilience.md: sslmode=verify-full
    or verify-ca, a socket directory no other user can write, or RINGFENCE_DATABASE_PLAIN_OK=1). The manifest
    (every file's SHA-256) is signed with the node's Ed25519 key: `verify` and `restore` accept the backup only from a node their
    --trust file lists. Exit 0 when the backup replayed to a state hash. With --to s3://BUCKET/PREFIX
    the backup is made in a private temporary folder, then uploaded (manifest last), then the
    temporary folder is deleted. Everything is checked before the --to folder is made.

    Example: ringfence backup create --data ./ringfence-data --to ./backups/2026-12-03

    Example: AWS_ACCESS_KEY_ID=… AWS_SECRET_ACCESS_KEY=… ringfence backup create --data ./ringfence-data
    --to s3://backups/ringfence/2026-12-03 --s3-endpoint-url http://127.0.0.1:9000
    """
    node = require_node_dir(data, "--data")
    identity, pg_url = _identity_of(node)
    if not is_s3_url(to):
        check_new_dir(Path(to), "--to", empty=True)
        root = _data_dir(node).resolve()
        if Path(to).resolve().is_relative_to(root):  # the same folder, disk and failure as what it should outlive
            _fail(f"--to: {to} is inside the data directory {root}; a backup goes to a folder outside it "
                  "(better: another disk or machine)")
    key, key_where = _signing_key(_data_dir(node), sign_key)
    signer = BackupSigner(node_id or _default_node_id(), key)
    try:
        if is_s3_url(to):
            loc, report, uploaded = _create_on_s3(node, to, s3_endpoint_url, identity, pg_url, signer)
        else:
            with _progress() as progress:
                report = create_backup(node, Path(to), signer=signer, identity_db=identity,
                                       identity_pg_url=pg_url or None, progress=progress)  # type: ignore[arg-type]
    except RingfenceError as err:
        _fail(str(err), 1)
    console.print(_table(f"backup {to}", report))
    console.print(f"signed by node {escape(signer.node_id)} with {escape(key_where)}, public key "
                  f"{nodekey.public_hex(key)}")
    if is_s3_url(to):
        console.print(f"uploaded {uploaded[0]} objects ({uploaded[1]:,} bytes) to {loc}, {MANIFEST} last")
    console.print(f"backup: [bold green]OK[/] sequence {report.last_seq:,} replayed to state hash {report.state_hash[:16]}…")


def _identity_of(node: Path) -> tuple[Path | None, str]:
    """(the SQLite identity file, the PostgreSQL URL) `backup create` copies for `node`: where its
    `serve` recorded it keeps them (store.record_location). A PostgreSQL node backed up without
    RINGFENCE_DATABASE_URL naming its database is refused (new-user review, session 19: such a
    backup said OK and held no users or API keys); so is a URL that is not sqlite:/// or
    postgresql[+psycopg]://."""
    from ..errors import ConfigError
    from ..store import node_identity_store

    env_url = os.environ.get("RINGFENCE_DATABASE_URL", "")
    if env_url and not env_url.startswith(("sqlite:///", "postgresql://", "postgresql+psycopg://")):
        _fail("RINGFENCE_DATABASE_URL: must be a sqlite:///, postgresql:// or postgresql+psycopg:// URL (the database the node's "
              "serve uses)")
    try:
        found = node_identity_store(node, env_url if env_url.startswith("postgresql") else "")
    except ConfigError as err:
        _fail(f"{err.field}: {err.message}" + ("; a backup without them is refused" if err.field == "--data" else ""))
    _check_database_path(found[1])
    return found


def _check_database_path(pg_url: str) -> None:
    """Outside dev mode, the PostgreSQL server pg_dump / pg_restore would be given the password of is reached as
    `serve` must reach it (store/transport.py: its certificate verified, or a socket no other user can write, or
    RINGFENCE_DATABASE_PLAIN_OK=1); else exit 2 before anything is made."""
    from ..cli_paths import say_error
    from ..store.transport import database_problems

    problems = [str(problem) for problem in database_problems(pg_url)] if pg_url else []
    for problem in problems[:-1]:
        say_error(problem)
    if problems:
        _fail(problems[-1])


def _create_on_s3(node: Path, to: str, endpoint: str | None, identity: Path | None, pg_url: str,
                  signer: BackupSigner) -> tuple[str, BackupReport, tuple[int, int]]:
    loc = parse_s3_url(to, "--to")
    client = s3_client(endpoint, "--to")
    require_empty(loc, client)  # before the copy and replay, which may take minutes
    with tempfile.TemporaryDirectory(prefix="ringfence-s3-") as tmp:  # mode 0700
        local = Path(tmp) / "backup"
        with _progress() as progress:
            report = create_backup(node, local, signer=signer, identity_db=identity, identity_pg_url=pg_url or None,
                                   progress=progress)  # type: ignore[arg-type]
        uploaded = upload_backup(local, loc, client)
    return str(loc), report, uploaded


@app.command("trust-entry")
def trust_entry(
    data: Path = typer.Option(None, "--data", help="The data directory whose node.key signs its backups "
                              "(made on first use, as `backup create` would)."),
    sign_key: Path = typer.Option(None, "--sign-key", help="A key file given to `backup create --sign-key` instead."),
    node_id: str = typer.Option(None, "--node-id", help="The name `backup create --node-id` uses (default "
                                "HOSTNAME-8000, as there)."),
) -> None:
    """Print the trust-file entry {"NODE_ID": "public key hex"} of the key that signs a node's backups.

    Copy it into the trust file that `backup verify` and `backup restore` take with --trust; keep that
    file apart from the backups (whoever can change it can make any backup trusted). Only the public
    key is printed.

    Example: ringfence backup trust-entry --data ./ringfence-data --node-id primary-a >> trusted-nodes.part
    """
    if (data is None) == (sign_key is None):
        _fail("--data: give --data DATA_DIR (its node.key) or --sign-key FILE, one of them")
    from . import _check_node_id

    name = node_id or _default_node_id()
    try:
        _check_node_id(name, "--node-id")
    except RingfenceError as err:
        _fail(str(err))
    if sign_key is not None:
        key, _ = _signing_key(Path("."), sign_key)
    else:
        if not data.is_dir():
            _fail(f"--data: {data} is not a directory; give the data directory `serve --data` and `backup create "
                  "--data` take")
        on_disk = (data / "journal").is_dir() or (data / ENGINE_SUBDIR / "journal").is_dir()
        key, _ = _signing_key(_data_dir(require_node_dir(data, "--data")) if on_disk else data, None)
    print(json.dumps({name: nodekey.public_hex(key)}))


@app.command("verify")
def verify(
    backup: str = typer.Argument(..., metavar="BACKUPDIR", help="A folder written by `backup create`, or its s3://BUCKET/PREFIX."),
    trust: Path = typer.Option(None, "--trust", help=TRUST_HELP),
    allow_unsigned: bool = typer.Option(False, "--allow-unsigned", help=ALLOW_UNSIGNED_HELP),
    expect_seq_at_least: int = typer.Option(None, "--expect-seq-at-least", min=1, metavar="N", help=EXPECT_SEQ_HELP),
    s3_endpoint_url: str = typer.Option(None, "--s3-endpoint-url", help=S3_ENDPOINT_HELP),
) -> None:
    """Check the manifest's signature against --trust, then every file's SHA-256, the journal's hash
    chain, and replay: the state hash must match.

    A manifest that is not signed, signed by a node the trust file does not list, or whose signature
    does not verify is refused (exit 1) before any file is read. An s3:// backup's manifest is downloaded first and its signature
    checked; then only the objects it lists, each no larger than the manifest says (an object it does not list, or
    a larger one, is a problem and never downloaded), and checked the same way: one whose bytes changed is a problem; so is any entry of a
    folder the manifest does not list (an extra file, a symbolic link, a special file). Each file is
    copied once into a private temporary folder as it is hashed, and only the copies are replayed.
    The verdict names the backup's creation time and last sequence (an older backup swapped in
    shows there; --expect-seq-at-least refuses it).

    Exit status: 0 sound and signed by a node --trust lists; 1 refused or a problem found (each
    named); 2 bad usage; 3 sound but NOT TRUSTED (accepted with --allow-unsigned in dev mode).

    Example: ringfence backup verify ./backups/2026-12-03 --trust /etc/ringfence/trusted-nodes.json

    Example: ringfence backup verify s3://backups/ringfence/2026-12-03 --trust ./trusted-nodes.json
    --s3-endpoint-url http://127.0.0.1:9000
    """
    peers, allow = _trust(trust, allow_unsigned)
    with _fetched(backup, s3_endpoint_url, peers, allow) as (folder, fetch_problems):
        try:
            with _progress() as progress:
                report = verify_backup(folder, trust=peers, allow_unsigned=allow, expect_seq_at_least=expect_seq_at_least,
                                       progress=progress, fetch_problems=fetch_problems)  # type: ignore[arg-type]
        except RingfenceError as err:
            _fail(str(err), 1)
    _warn_if_untrusted(report)
    console.print(_table(f"backup {backup}", report))
    if report.problems:
        for problem in report.problems:
            console.print(f"[bold red]problem:[/] {escape(problem)}")
        _fail(f"backup {backup} failed verification ({_plural(len(report.problems), 'problem')})", 1)
    if not report.trusted:
        console.print(f"backup verify: [bold red]NOT TRUSTED[/] ({_which(report)}): sound, but not signed by a node "
                      "the trust file lists")
        raise typer.Exit(EXIT_NOT_TRUSTED)
    console.print(f"backup verify: [bold green]OK[/] ({_which(report)}; signature, files, hash chain, replayed state "
                  "hash, snapshot, invariants)")


@app.command("restore")
def restore(
    backup: str = typer.Argument(..., metavar="BACKUPDIR", help="A folder written by `backup create`, or its s3://BUCKET/PREFIX."),
    to: Path = typer.Option(..., "--to", help="A new (or empty) data directory; serve it with `ringfence serve --data NEWDIR`."),
    trust: Path = typer.Option(None, "--trust", help=TRUST_HELP),
    allow_unsigned: bool = typer.Option(False, "--allow-unsigned", help=ALLOW_UNSIGNED_HELP),
    to_seq: int = typer.Option(None, "--to-seq", min=1, help="Restore the state as of this journal sequence "
                               "(default: the backup's last). Later commands are left out."),
    expect_seq_at_least: int = typer.Option(None, "--expect-seq-at-least", min=1, metavar="N", help=EXPECT_SEQ_HELP),
    s3_endpoint_url: str = typer.Option(None, "--s3-endpoint-url", help=S3_ENDPOINT_HELP),
) -> None:
    """Rebuild a data directory from a backup, as of any journal sequence (point-in-time restore).

    The restored journal is the backup's up to --to-seq (a batch straddling it is cut after that
    command); it is replayed and snapshotted before the command returns. A PostgreSQL identity dump
    is loaded into the empty database RINGFENCE_DATABASE_URL names (else it stays in the backup; outside dev mode
    only over a way `serve` may take to it, as `backup create`).
    Nothing is created before everything is checked: the manifest's signature against --trust,
    --to-seq, every file's SHA-256, and that the database can be opened and is empty. Each file is
    copied once, hashed as it is copied, into a private staging folder beside --to, and only those
    copies are restored (a file changed in the backup meanwhile is never read); an entry the
    manifest does not list, a symbolic link or a special file in the backup is refused.

    Exit status: 0 restored from a backup signed by a node --trust lists; 1 refused (nothing made);
    2 bad usage; 3 restored, but NOT TRUSTED (accepted with --allow-unsigned in dev mode).

    Example: ringfence backup restore ./backups/2026-12-03 --trust ./trusted-nodes.json --to ./restored --to-seq 1200

    Example: ringfence backup restore s3://backups/ringfence/2026-12-03 --trust ./trusted-nodes.json --to ./restored
    """
    check_new_dir(to, "--to", empty=True)
    restore_url = os.environ.get("RINGFENCE_DATABASE_URL", "")
    _check_database_path(restore_url if restore_url.startswith("postgresql") else "")
    peers, allow = _trust(trust, allow_unsigned)
    with _fetched(backup, s3_endpoint_url, peers, allow) as (folder, fetch_problems):
        try:
            with _progress() as progress:
                pg_url = os.environ.get("RINGFENCE_DATABASE_URL", "")
                report = restore_backup(folder, to, trust=peers, allow_unsigned=allow, to_seq=to_seq,
                                        expect_seq_at_least=expect_seq_at_least,
                                        progress=progress,  # type: ignore[arg-type]
                                        fetch_problems=fetch_problems,
                                        identity_pg_url=pg_url if pg_url.startswith("postgresql") else None)
        except RingfenceError as err:
            _fail(str(err), 1)
    _warn_if_untrusted(report)
    console.print(_table(f"restored into {to}", report))
    if not report.trusted:
        console.print(f"restore: [bold red]NOT TRUSTED[/] backup ({_which(report)}, not signed by a node the trust "
                      f"file lists) restored at sequence {report.last_seq:,} into {to}")
        raise typer.Exit(EXIT_NOT_TRUSTED)
    console.print(f"restore: [bold green]OK[/] from the backup {_which(report)}, at sequence {report.last_seq:,}; "
                  f"start it with: {escape(_serve_hint(report, to, pg_url))}")


def _serve_hint(report: BackupReport, to: Path, pg_url: str) -> str:
    """The command that serves the restored folder: with its PostgreSQL database named (its password hidden),
    since `serve --data` alone opens a new, empty SQLite identity store there (new-user review, issue #21)."""
    if not report.identity.startswith("PostgreSQL"):
        return f"ringfence serve --data {to}"
    if pg_url.startswith("postgresql"):
        return f"RINGFENCE_DATABASE_URL={_password_hidden(pg_url)} ringfence serve --data {to}"
    return (f"RINGFENCE_DATABASE_URL=postgresql+psycopg://USER@HOST:5432/DB ringfence serve --data {to}, once the "
            "backup's identity.pgdump is loaded into that empty database (restore again with RINGFENCE_DATABASE_URL set "
            "does it); never `serve --data` alone: it opens a new, empty SQLite identity store")


def _password_hidden(url: str) -> str:
    """A PostgreSQL URL with its password (only) hidden: `postgresql+psycopg://rf:***@host/db`; without a
    password it is shown as is: its user name is no secret, and the command must name it to be pasted (`***@`
    in its place, as errors.without_credentials writes a NATS token, would log in as the user `***`)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    user_info, host = parts.netloc.rsplit("@", 1)
    return urlunsplit(parts._replace(netloc=f"{user_info.split(':', 1)[0]}:***@{host}"))


__all__ = ["app"]
