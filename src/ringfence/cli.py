"""The `ringfence` command line (Typer + rich).

Each domain package may contribute a Typer sub-app (`ringfence journal ...`, `ringfence por ...`);
this module mounts them and holds the top-level commands. Every command has `--help` with an
example. Errors are printed as one clear line and a non-zero exit code, never a stack trace.
"""

from __future__ import annotations

import importlib
import inspect
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import click
import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from .cli_paths import fail, prepare_data_dir, refuse_foreign_data_dir, refuse_foreign_writer, require_node_dir, tty_console
from .errors import RingfenceError

#: The commands and command groups that live in the domain packages, in the order `ringfence --help`
#: lists them: name -> (module, attribute). Each is imported only when it runs (or when --help lists
#: it), so `ringfence halts list` does not first import FastAPI, SQLAlchemy, Alembic and numpy for
#: every other group (1.8 s of CPU per invocation when all were mounted eagerly).
LAZY: dict[str, tuple[str, str]] = {
    "serve": ("ringfence.api.serve", "serve"),
    "identity": ("ringfence.identity.cli", "app"),
    "trading": ("ringfence.trading.cli", "app"),
    "index": ("ringfence.index.cli", "app"),
    "futures": ("ringfence.derivatives.cli", "app"),
    "fiat": ("ringfence.i18n.cli", "app"),
    "monitoring": ("ringfence.monitoring.cli", "app"),
    "por": ("ringfence.solvency.cli", "app"),
    "chains": ("ringfence.chains.cli", "app"),
    "chain": ("ringfence.chains.faucet_cli", "app"),
    "keys": ("ringfence.keys.cli", "app"),
    "signer": ("ringfence.keys.cli", "signer_app"),
    "cold": ("ringfence.custody.cold_cli", "cold_app"),
    "custody": ("ringfence.custody.cli", "custody_app"),
    "policy": ("ringfence.custody.cli", "policy_app"),
    "reconcile": ("ringfence.reconcile.cli", "app"),
    "shield": ("ringfence.custody.shield_cli", "shield_app"),
    "staff": ("ringfence.staff.cli", "staff_app"),
    "review": ("ringfence.staff.cli", "review_app"),
    "halts": ("ringfence.staff.cli", "halts_app"),
    "asset": ("ringfence.staff.asset_cli", "asset_app"),
    "market": ("ringfence.staff.market_cli", "market_app"),
    "audit": ("ringfence.staff.audit", "audit_app"),
    "backup": ("ringfence.backup.cli", "app"),
    "replication": ("ringfence.replication.cli", "app"),
    "dr": ("ringfence.replication.dr_cli", "app"),
}
_LOADED: dict[str, click.Command] = {}

#: What `ringfence --help` lists for each entry of LAZY (its help's first paragraph, as one line), so the
#: root help does not import every package to read it (3 s of CPU). tests/test_cli.py checks that each
#: equals the command's own help; a command that is loaded already is listed from its own help.
SUMMARY: dict[str, str] = {
    "serve": "Run the exchange: Binance-compatible REST + WebSocket API and the web dashboard.",
    "identity": "Identity store and mail worker.",
    "trading": "Spot trading: demo session and book inspection.",
    "index": "Index price and mark price: show, feed keys, configuration, the ccxt feed.",
    "futures": ("Perpetual futures: the risk view (insurance funds, open interest, funding, positions near"
                " liquidation)."),
    "fiat": "Fiat currencies and the display rates feed (display only, never a balance).",
    "monitoring": ("Monitoring: rule sets, back-tests over the recorded event stream, exports, alerts and "
                   "baselines of a live node (docs/monitoring.md)."),
    "por": "Proof of solvency: liabilities snapshot, published proofs and report, offline verifier.",
    "chains": ("Chain layer, offline: deposit addresses from xpubs, address checks, a regtest walkthrough."
               " Not `chain` (singular), which pays from and reads the local chains of a running `serve "
               "--demo`."),
    "chain": ("The demo's local chains (BTC, ETH, USDT) inside a running `ringfence serve --demo`: pay "
              "from the faucet, read balances. Not `chains` (plural), which works offline: addresses from "
              "xpubs, address checks."),
    "keys": "Key ceremonies: threshold keys, signers, rotation, backup/restore.",
    "signer": "Run a FROST signer process (one share of a threshold key, its own encrypted share store).",
    "cold": ("Refills of the BTC hot wallet from the cold or warm vault (P2WSH 2-of-3) on a live node: an "
             "operator quorum decides, the node builds the PSBT with a holders' quorum nominated for it, "
             "the holders sign offline with `ringfence keys sign-psbt`, the signatures come back with "
             "`cold submit`."),
    "custody": "Custody flows on local chains.",
    "policy": "Withdrawal policies.",
    "reconcile": "Reconcile the ledger with the chain and with the journal; show halts and incidents.",
    "shield": "The shield fund on chain: accrued share, vault, sweeps due, and the rule shield >= hot.",
    "staff": "Staff identities: genesis, add, remove, list (signed by an operator quorum).",
    "review": "Withdrawals and deposits waiting for a person: list, approve, reject, release, freeze.",
    "halts": "Halts on a live node: list, raise (one operator), lift (operator quorum).",
    "asset": "Assets on a live node: list, add (operator quorum). A market's base and quote must be registered assets.",
    "market": "Markets and fees on a live node: list, add, delist, status, fees, account-fee, ref-price.",
    "audit": "Offline audits from a node's journal.",
    "backup": ("Back up a node (safe while it runs), verify a backup by replay, restore to any journal "
               "sequence. A backup is a folder or an S3-compatible location s3://BUCKET/PREFIX."),
    "replication": "Leadership of a replicated journal (NATS JetStream).",
    "dr": "Disaster-recovery drills against real processes and NATS JetStream.",
}


# Help that reads well at 80 columns (`COLUMNS=80 ringfence --help`). Typer's rich help keeps the line
# breaks of a docstring's first paragraph in the commands list, so a sentence broken at 110 columns in
# the source wraps raggedly on a terminal: the list gets the paragraph as one line (`short_help`), which
# rich wraps to the width. And rich help prints a flag's type (`--help -h <bool>`), a value that no
# flag takes: a flag shows no type, as click's own help writes it.
def _flowing_short_help(cmd: click.Command) -> None:
    """Give `cmd`'s subcommands (all levels) their help's first paragraph as one line."""
    for sub in getattr(cmd, "commands", {}).values():
        if sub.short_help is None and sub.help:
            first = inspect.cleandoc(sub.help).partition("\f")[0].split("\n\n")[0]
            sub.short_help = " ".join(first.split())
        _flowing_short_help(sub)


# Typer writes a value's Python type (`<str>`, `<list[str]>`, `<int range>`); help shows what to type,
# as click's own help does (TEXT, INTEGER, PATH; `...` when the option may be given again).
_VALUE_WORDS = {"str": "TEXT", "int": "INTEGER", "int range": "INTEGER", "float": "NUMBER", "float range": "NUMBER",
                "path": "PATH", "Path": "PATH", "bool": "BOOLEAN", "datetime": "DATETIME"}


def _value_word(label: str | None) -> str | None:
    if not label or not (label.startswith("<") and label.endswith(">")):
        return label  # a metavar the command chose, or choices (a|b|c)
    inner, many = label[1:-1], False
    if inner.startswith("list[") and inner.endswith("]"):
        inner, many = inner[5:-1], True
    word = _VALUE_WORDS.get(inner, inner if "|" in inner else inner.upper())
    return word + ("..." if many else "")


def _flag_type(self: TyperOption, ctx: click.Context) -> str | None:
    return None if self.is_flag else _value_word(_option_type(self, ctx))


def _argument_type(self: TyperArgument, ctx: click.Context) -> str | None:
    return _value_word(_argument_type_of(self, ctx))


# A word longer than the help column (an environment variable's name, a URL) is folded onto the next
# line, not cut with "…" (rich's default for a table cell): help never hides what to type.
# typer.rich_utils (rich's markdown, tables, ~0.1 s) is imported by Typer only to write help or an
# error; it is patched on the first help a command writes, so a command that runs never imports it.
def _fold_parameter_help() -> None:
    import typer.rich_utils
    from rich.text import Text

    parameter_help = typer.rich_utils._get_parameter_help
    if getattr(parameter_help, "_folds", False):
        return

    def folding_parameter_help(**kwargs: Any) -> Any:
        columns = parameter_help(**kwargs)
        for item in columns.renderables:
            if isinstance(item, Text):
                item.overflow = "fold"
        return columns

    folding_parameter_help._folds = True  # type: ignore[attr-defined]
    typer.rich_utils._get_parameter_help = folding_parameter_help


# A docstring is broken at ~110 columns in the source; Typer's rich help keeps those breaks after its
# first paragraph, so at 80 columns every sentence wrapped raggedly (a half-empty line, then the rest).
# Each paragraph flows as one, for rich to wrap to the terminal; a line that starts an example, a list
# item or an indented block keeps its own line, and a paragraph marked `\b` (click's "as written") is
# left alone (tests/test_cli_help_width.py).
_OWN_LINE = re.compile(r"(Example\b|[-*•] |\d+[.)] |\s)")


def _flowing_help(text: str) -> str:
    paragraphs = []
    for paragraph in inspect.cleandoc(text).split("\n\n"):
        lines: list[str] = []
        for line in paragraph.split("\n"):
            if lines and not paragraph.startswith("\b") and not _OWN_LINE.match(line):
                lines[-1] += " " + line
            else:
                lines.append(line)
        paragraphs.append("\n".join(lines))
    return "\n\n".join(paragraphs)


def _folding_format_help(format_help: Any) -> Any:
    def format_help_folded(self: click.Command, ctx: click.Context, formatter: click.HelpFormatter) -> Any:
        _fold_parameter_help()
        if self.help:
            self.help = _flowing_help(self.help)
        return format_help(self, ctx, formatter)

    return format_help_folded


TyperCommand.format_help = _folding_format_help(TyperCommand.format_help)  # type: ignore[method-assign]
TyperGroup.format_help = _folding_format_help(TyperGroup.format_help)  # type: ignore[method-assign]
_option_type = TyperOption.display_type_rich
TyperOption.display_type_rich = _flag_type  # type: ignore[method-assign]
_argument_type_of = TyperArgument.display_type_rich
TyperArgument.display_type_rich = _argument_type  # type: ignore[method-assign]


def _load(name: str) -> click.Command:
    """The click command of one lazy entry, built once per process."""
    if name not in _LOADED:
        module, attr = LAZY[name]
        obj = getattr(importlib.import_module(module), attr)
        if name == "policy":  # the group is custody's; the live-node commands (propose, approve...) are staff's
            from .staff.cli import register_policy_commands

            register_policy_commands(obj)
        if isinstance(obj, typer.Typer):
            cmd: click.Command = typer.main.get_group(obj)
        else:  # a single command function (serve)
            single = typer.Typer(add_completion=False)  # as the root: no --install-completion in a command's help
            single.command(name)(obj)
            cmd = typer.main.get_command(single)
        cmd.name = name
        _flowing_short_help(cmd)
        if name in _SIBLINGS:
            _hint_the_sibling(cmd, name)
        _LOADED[name] = cmd
    return _LOADED[name]


# `chain` (the running demo's local chains) and `chains` (offline address tools) differ by one letter:
# a command typed under the other one says where it is (`ringfence chains balance` was a bare
# "No such command 'balance'").
_SIBLINGS = {"chain": "chains", "chains": "chain"}


def _hint_the_sibling(group: click.Command, name: str) -> None:
    resolve = group.resolve_command  # type: ignore[attr-defined]

    def resolve_with_hint(ctx: click.Context, args: list[str]) -> Any:
        try:
            return resolve(ctx, args)
        except Exception as err:  # click's UsageError, or the copy of click that Typer carries
            if type(err).__name__ != "UsageError":
                raise
            wanted, sibling = (args[0] if args else ""), _SIBLINGS[name]
            other = _load(sibling)
            if wanted and hasattr(other, "list_commands") and wanted in other.list_commands(ctx):
                raise type(err)(f"No such command {wanted!r} in `ringfence {name}`: it is `ringfence {sibling} {wanted}` "
                                f"(see `ringfence {sibling} {wanted} --help`).", ctx) from None
            raise

    group.resolve_command = resolve_with_hint  # type: ignore[attr-defined]


class _LazyGroup(TyperGroup):
    """The root group: its own commands (version, demo, sim, journal) plus the lazy ones of LAZY."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        own = super().list_commands(ctx)
        return ["serve", *own, *(n for n in LAZY if n != "serve" and n not in own)]

    _listing = False  # inside format_help: an entry of LAZY not loaded yet is listed from SUMMARY

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if self._listing and cmd_name in LAZY and cmd_name not in _LOADED:
            return TyperCommand(name=cmd_name, short_help=SUMMARY[cmd_name], help=SUMMARY[cmd_name])
        if cmd_name in LAZY:
            cmd = _load(cmd_name)
        else:
            cmd = super().get_command(ctx, cmd_name)
            if cmd is not None:
                _flowing_short_help(cmd)
        if cmd is not None and cmd.short_help is None and cmd.help:  # the root's own list, as `_flowing_short_help`
            first = inspect.cleandoc(cmd.help).partition("\f")[0].split("\n\n")[0]
            cmd.short_help = " ".join(first.split())
        return cmd


app = typer.Typer(
    cls=_LazyGroup,
    name="ringfence",
    help="ringfence: an exchange core where every balance is provable.\n\nExample: ringfence demo",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
journal_app = typer.Typer(help="Inspect and replay a journal.\n\nExample: ringfence journal verify ./ringfence-data/demo", no_args_is_help=True)
app.add_typer(journal_app, name="journal")

# Tables stay readable when output goes to a file or CI log (rich would assume 80 columns).
console = tty_console(width=140)

DEMO_MARKER = ".ringfence-demo"



def _print_version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(__version__)
        raise typer.Exit()



@app.callback()
def _root(
    show_version: bool = typer.Option(False, "--version", help="Print the version and exit.", callback=_print_version, is_eager=True),
) -> None:
    """ringfence: an exchange core where every balance is provable."""



@app.command()
def version() -> None:
    """Print the ringfence version, and which matching hot path this install runs.

    The second line says whether the order book and matching loop run compiled (mypyc) or as pure
    Python, and why (not built, RINGFENCE_PURE=1, a stale build): see docs/engine.md.

    Example: ringfence version
    """
    from . import __version__, native

    typer.echo(__version__)
    typer.echo(native.describe())


@app.command()
def demo(
    data: Path = typer.Option(Path("ringfence-data/demo"), "--data", help="Where the demo keeps its journal."),
    seed: int = typer.Option(1, "--seed", min=0, max=2**63 - 1, help="Seed for the scenario."),
) -> None:
    """Run a seeded scenario on the embedded default: deposits, transfers, a two-phase hold, a
    rejected overdraft, balances, the state hash, then a replay of the journal with the same hash.

    Example: ringfence demo --data ./ringfence-data/demo --seed 1
    """
    from .demo import run_demo

    if data.exists() and not data.is_dir():
        fail(f"--data: {data} is a file, not a folder")
    refuse_foreign_writer(data, "--data")  # a running holder's pid first, then a serve dir or a nested one
    refuse_foreign_data_dir(data, "--data")  # another user's folder is neither emptied nor written
    if data.is_dir() and any(data.iterdir()):
        if not (data / DEMO_MARKER).exists():
            fail(f"--data: {data} is not empty and was not made by `ringfence demo`; choose another folder")
        from .journal.journal import DataDirLock

        try:  # never delete a journal another process is writing
            DataDirLock(data, "ringfence demo").release()
        except RingfenceError as err:
            fail(str(err), 1)
        shutil.rmtree(data)
    prepare_data_dir(data, "--data")
    (data / DEMO_MARKER).write_text("made by `ringfence demo`; safe to delete\n")
    try:
        run_demo(data, seed, console)
    except RingfenceError as err:
        fail(str(err), 1)


@journal_app.command("verify")
def journal_verify(directory: Path = typer.Argument(..., metavar="DIR", help="The data directory `serve --data` takes (or its engine/ folder).")) -> None:
    """Check every record's checksum and the hash chain, without changing anything.

    Read-only: takes no lock (safe while `serve` runs) and truncates nothing. Exit 0 when the
    journal is intact (a torn, unacknowledged tail is reported and would be truncated on the next
    start); exit 1 on corruption, naming segment, offset and reason — including an acknowledged
    last record that fails its checksum (it lies before the durable mark).

    Example: ringfence journal verify ./ringfence-data
    """
    import time

    from rich.table import Table

    from .app import replay_journal
    from .errors import JournalCorrupt
    from .journal.journal import scan_all

    directory = require_node_dir(directory)
    started = time.perf_counter()
    try:
        records, report = scan_all(directory / "journal", truncate=False)
        # replaying in memory proves every payload decodes and applies, and yields the state hash
        engine, replay, _ = replay_journal(directory, use_snapshots=False)
    except JournalCorrupt as err:
        console.print(f"[bold red]journal: CORRUPT[/] {err.message}")
        raise typer.Exit(1) from None
    seconds = time.perf_counter() - started
    table = Table(title=f"journal {directory}", show_header=False)
    table.add_row("segments", str(report.segments))
    table.add_row("records (batches)", f"{report.records:,}")
    table.add_row("commands", f"{report.commands:,}")
    table.add_row("last sequence", f"{report.last_seq:,}")
    table.add_row("bytes", f"{report.bytes_read - report.zero_tail_bytes:,}" + (
        f" (and {report.zero_tail_bytes:,} zero-filled ahead of need)" if report.zero_tail_bytes else ""))
    table.add_row("chain head", report.last_hash.hex())
    table.add_row("torn tail", report.torn_tail or "none")
    table.add_row("seconds", f"{seconds:.3f}")
    table.add_row("state hash", replay.state_hash)
    console.print(table)
    if report.commands == 0:
        console.print("journal: [yellow]EMPTY[/] (no committed commands yet)")
        return
    console.print("journal: [bold green]OK[/]" + (" (torn tail will be truncated on next start)" if report.torn_tail else ""))


@journal_app.command("sources")
def journal_sources(
    directory: Path = typer.Argument(..., metavar="DIR", help="The data directory `serve --data` takes (or its engine/ folder)."),
    from_seq: int = typer.Option(1, "--from-seq", min=1, help="The first sequence number to list."),
    limit: int = typer.Option(1000, "--limit", min=1, max=10_000_000, help="At most this many commands."),
) -> None:
    """Who submitted each journaled command, one JSON line each: sequence, command tag and source
    ("gateway:NODE", "worker:NAME", "staff:ID"; "" for commands journaled without one). Read-only.
    A --from-seq past the journal's last command lists nothing and says so on stderr (exit 0, as
    `journal verify` on an empty journal: nothing journaled there yet is not an error).

    Example: ringfence journal sources ./ringfence-data --from-seq 100 --limit 20
    """
    import json

    from .app import new_engine
    from .engine.commands import tag_of
    from .journal.journal import scan

    directory = require_node_dir(directory)
    codec, shown, last_seq = new_engine().codec, 0, 0
    for record in scan(directory / "journal", decode_from_seq=from_seq):
        last_seq = record.last_seq
        if record.last_seq < from_seq:
            continue
        batch = codec.batch.decode(record.payload)
        for i, command in enumerate(batch.commands):
            seq = batch.first_seq + i
            if seq < from_seq:
                continue
            source = batch.sources[i] if i < len(batch.sources) else ""
            typer.echo(json.dumps({"seq": seq, "command": tag_of(type(command)), "source": source}))
            shown += 1
            if shown >= limit:
                return
    if last_seq < from_seq:  # stdout stays JSON lines only: the note goes to stderr
        where = f"the journal ends at {last_seq:,}" if last_seq else "the journal is empty (no committed commands yet)"
        typer.echo(f"no commands from sequence {from_seq:,}: {where}", err=True)


@journal_app.command("replay")
def journal_replay(
    directory: Path = typer.Argument(..., metavar="DIR", help="The data directory `serve --data` takes (or its engine/ folder)."),
    full: bool = typer.Option(True, "--full/--from-snapshot", help="Replay from genesis, or from the newest snapshot."),
    to_seq: int = typer.Option(None, "--to-seq", min=1, help="Stop after this journal sequence (included) and print the "
                               "state hash there; the rest of the journal is still verified. Default: its end."),
) -> None:
    """Rebuild the engine state from the journal and print counts, time and the state hash.

    Replays into memory only: the data directory is not modified and no lock is taken (safe while
    `serve` runs). With --full (the default) every snapshot's recorded state hash is also checked
    against the replay at its position. With --to-seq, the state as of that sequence (as `backup
    restore --to-seq` rebuilds it; --from-snapshot starts from the newest snapshot at or before it).

    Example: ringfence journal replay ./ringfence-data   (as of sequence 1200: --to-seq 1200)
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from .app import replay_journal
    from .engine.snapshot import list_snapshots, read_snapshot
    from .errors import JournalCorrupt, SnapshotInvalid
    from .journal.journal import scan_all

    directory = require_node_dir(directory)
    try:
        _, pre = scan_all(directory / "journal")
    except JournalCorrupt as err:
        fail(str(err), 1)
    if to_seq is not None and to_seq > pre.last_seq:
        where = f"the journal ends at sequence {pre.last_seq:,}" if pre.last_seq else "the journal is empty"
        fail(f"--to-seq: {to_seq:,} is beyond the journal's end ({where})")
    expected: dict[int, str] = {}
    for path in list_snapshots(directory / "snapshots"):
        try:
            info = read_snapshot(path)
        except SnapshotInvalid as err:
            console.print(f"[yellow]snapshot skipped:[/] {err}")
            continue
        expected[info.seq] = info.state_hash
    checked: list[tuple[int, bool]] = []

    def on_batch(engine, batch, outputs) -> None:  # type: ignore[no-untyped-def]
        last = batch.first_seq + len(outputs) - 1  # a batch straddling --to-seq is applied up to it
        if full and last in expected:
            checked.append((last, engine.state_hash() == expected[last]))

    with Progress(TextColumn("replaying"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task("replay", total=pre.commands if to_seq is None else min(pre.commands, to_seq))
        try:
            engine, report, _ = replay_journal(
                directory, use_snapshots=not full, until_seq=to_seq, on_batch=on_batch, progress=lambda n: bar.advance(task, n)
            )
        except JournalCorrupt as err:
            fail(err.message, 1)
    rate = int(report.replayed_commands / report.seconds) if report.seconds else 0
    table = Table(title=f"replay of {directory}", show_header=False)
    table.add_row("started from", f"snapshot at {report.snapshot_seq:,}" if report.snapshot_seq else "genesis")
    table.add_row("records replayed", f"{report.replayed_records:,}")
    table.add_row("commands replayed", f"{report.replayed_commands:,}")
    table.add_row("seconds", f"{report.seconds:.3f}")
    table.add_row("commands/s", f"{rate:,}")
    table.add_row("last sequence", f"{report.last_seq:,}" + (f" (--to-seq; the journal ends at {pre.last_seq:,})"
                                                            if to_seq is not None and to_seq < pre.last_seq else ""))
    table.add_row("state hash", report.state_hash)
    for seq, ok in checked:
        table.add_row(f"snapshot @{seq:,}", "[green]matches[/]" if ok else "[red]DIFFERS[/]")
    console.print(table)
    if any(not ok for _, ok in checked):
        fail("a snapshot's recorded state hash differs from the replay at its position", 1)
    engine.check_invariants()
    console.print("replay: [bold green]OK[/], invariants hold")


@app.command()
def sim(
    seed: int = typer.Option(..., "--seed", min=0, max=2**63 - 1, help="Seed; the same seed replays the same run."),
    steps: int = typer.Option(2_000, "--steps", min=1, max=10_000_000, help="How many steps to run."),
    data: Path = typer.Option(None, "--data", help="Folder for the simulated node (default: a temporary folder)."),
    crash_pct: int = typer.Option(4, "--crash-pct", min=0, max=50, help="Weight of the crash-and-restart action."),
    workload: str = typer.Option("", "--workload", help="'' (default: every spot module) or 'perps' (linear perpetuals: "
                                 "transfers, leverage, margin type, orders and fills, funding, index moves)."),
) -> None:
    """Deterministic simulation of every module (ledger, orders, custody, withdrawals, halts and the
    operator quorum) with invalid commands, crashes, torn writes and snapshots, checked after every
    step against an independent model of what each command must do. On failure it prints the seed,
    step, command, the first differing field and the command line that reproduces it.
    `--workload perps` drives the perpetuals instead (positions, margins, PnL, fees, funding).

    Example: ringfence sim --seed 42 --steps 5000   (perpetuals: ringfence sim --seed 42 --steps 2000 --workload perps)
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from .sim import SimulationFailure, run_simulation

    own_dir = data is None
    workdir = Path(tempfile.mkdtemp(prefix="ringfence-sim-")) if own_dir else data
    if not own_dir:
        if workdir.is_dir() and any(workdir.iterdir()):
            fail(f"--data: {workdir} must be empty or absent")
        prepare_data_dir(workdir, "--data")
    if workload not in ("", "perps"):
        fail(f"--workload must be '' or 'perps', not {workload!r}")
    console.print(f"sim seed={seed} steps={steps}" + (f" workload={workload}" if workload else ""))
    try:
        with Progress(TextColumn("simulating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=True) as bar:
            task = bar.add_task("sim", total=steps)
            result = run_simulation(seed, steps, workdir, crash_probability_pct=crash_pct,
                                    on_step=lambda _: bar.advance(task), workload=workload)
    except SimulationFailure as failure:
        console.print(f"[bold red]FAILED[/] {failure}")
        raise typer.Exit(1) from None
    finally:
        if own_dir:
            shutil.rmtree(workdir, ignore_errors=True)
    table = Table(title=f"simulation seed={seed}", show_header=False)
    explain = {
        "commands_acknowledged": "commands journaled, applied and acknowledged (the model agreed)",
        "commands_rejected": "commands refused (at the edge, by a halt or in apply); state unchanged",
        "transfers_failed": "transfers the ledger refused by rule (overdraft, duplicate id, ...)",
        "orders_rejected": "order actions refused by a market rule (the model named the same reason)",
        "trades": "fills, each with the price, quantity and fees the model expected",
        "halted_refusals": "commands refused because a halt covered their scope",
        "crashes": "abandoned processes, recovered from the journal",
        "torn_tails": "crashes that left a half-written batch, truncated on recovery",
        "durable_unacknowledged": "crashes after a batch was written whole but not applied: recovery applies it",
        "group_commits": "batches of 2-4 commands prechecked together and journaled as one record",
        "snapshots": "snapshots written (recovery starts from the newest)",
        "steps": "simulation steps",
    }
    for name in ("steps", "commands_acknowledged", "commands_rejected", "transfers_failed", "orders_rejected", "trades",
                 "halted_refusals", "crashes", "torn_tails", "durable_unacknowledged", "group_commits", "snapshots"):
        table.add_row(name.replace("_", " "), f"{getattr(result, name):,}", explain[name])
    console.print(table)
    if result.perps:
        perps = Table(title="perpetuals", show_header=False)
        for what, count in sorted(result.perps.items()):
            perps.add_row(what, f"{count:,}")
        console.print(perps)
    console.print(f"state hash {result.state_hash}")
    console.print("[bold green]sim: all invariants held[/]")

def main() -> None:  # console-script entry point
    app()


if __name__ == "__main__":
    main()
