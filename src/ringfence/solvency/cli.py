"""`ringfence por ...`: take a liabilities snapshot, publish the proofs and report, verify a proof.

Job: the operator's and the user's door to proof of solvency. `snapshot` freezes what is owed,
`publish` builds the Merkle-sum tree, streams every user's proof to disk, proves reserves and writes
the report; `verify` checks one proof offline and ends with `por: VALID` or `por: INVALID: <reason>`.

Invariants: `verify` never touches the network; `publish` refuses the development secret outside
dev mode (RINGFENCE_ENV=dev or --dev); secrets and nonces are never printed by `publish`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..cli_paths import DEFAULT_URL
from ..errors import RingfenceError, ValidationError
from ..money import format_amount, parse_amount
from .pol_builder import build_liability_tree, load_secret
from .pol_verifier import check_proof
from .report import asset_decimals, build_report, render_html
from .reserves import (
    BalanceRegistryReader,
    ChainBalanceReader,
    EvmChainReader,
    UtxoRegistryReader,
    load_claims,
    prove_reserves,
)
from .snapshot import AssetSpec, LiabilitySnapshot

app = typer.Typer(
    name="por",
    help="Proof of solvency: liabilities snapshot, published proofs and report, offline verifier.\n\n"
    "Example: ringfence por verify my-proof.json --root root.json",
    no_args_is_help=True,
    add_completion=False,
)

NONCE_WARNING = ("Never share your nonce or this proof file: the nonce links your balance to your "
                 "account and anyone holding it can recognise your leaf.")


def _fail(console: Console, exc: RingfenceError | OSError) -> None:
    console.print(f"[red]error:[/red] {exc}", highlight=False)
    raise typer.Exit(2)


def _asset_specs(values: list[str]) -> list[AssetSpec]:
    specs = []
    for value in values:
        code, sep, decimals = value.partition(":")
        if not sep or not (decimals.isascii() and decimals.isdigit()):
            raise ValidationError(f"--asset must look like CODE:DECIMALS (e.g. BTC:8), not {value!r}", field="--asset")
        specs.append(AssetSpec(code, int(decimals)))
    return specs


@app.command()
def snapshot(
    balances: Optional[Path] = typer.Option(None, "--balances", help="balances file (.json or .csv); see docs/por.md"),
    data: Optional[Path] = typer.Option(None, "--data", help="the data directory `serve --data` takes (or a node folder): snapshot its ledger"),
    seq: Optional[int] = typer.Option(None, "--seq", min=0, help="with --data: the journal position (default: the end)"),
    out: Path = typer.Option(Path("snapshot.json"), "--out", help="where to write the snapshot"),
    asset: list[str] = typer.Option([], "--asset", help="CODE:DECIMALS, repeat per asset (required for CSV)"),
    position: Optional[str] = typer.Option(None, "--position",
                                           help="journal position the balances were taken at, e.g. journal:1042"),
) -> None:
    """Freeze what the exchange owes each user into a snapshot file.

    Each user's balance per asset is the sum of all their rows (accounts, segments), floored at
    zero; negative sums are reported as debts and never reduce liabilities.

    From the ledger: --data DIR replays the node's journal (up to --seq) and takes every user-owned
    account's balance; the position is `journal:<seq>` and the state hash is bound into the id.

    Example: ringfence por snapshot --data ./ringfence-data/demo --out snapshot.json
    Example: ringfence por snapshot --balances balances.csv --asset BTC:8 --asset ETH:18 --out snapshot.json
    """
    console = Console(stderr=True)
    if (balances is None) == (data is None):
        console.print("[red]error:[/] give exactly one of --balances FILE or --data DIR")
        raise typer.Exit(2)
    if seq is not None and data is None:
        console.print("[red]error:[/] --seq goes with --data")
        raise typer.Exit(2)
    try:
        if data is not None:
            from .ledger_source import snapshot_from_journal

            from ..cli_paths import require_node_dir

            data = require_node_dir(data, "--data")
            if not out.parent.is_dir():
                raise ValidationError(f"{out.parent} does not exist; choose a file in an existing folder", field="--out")
            snap = snapshot_from_journal(data, seq)
        else:
            assert balances is not None
            snap = LiabilitySnapshot.from_balances_file(balances, _asset_specs(asset) or None, position=position)
        snap.save(out)
    except (RingfenceError, OSError) as exc:
        _fail(console, exc)
    typer.echo(f"snapshot {snap.snapshot_id.hex()} at {snap.position}: {len(snap.accounts)} users -> {out}")
    for spec in snap.assets:
        total = snap.totals_minor()[spec.code]
        typer.echo(f"  {spec.code}: liabilities {_fmt(total, spec.decimals)}"
                   f"  debts {_fmt(snap.debts_minor.get(spec.code, 0), spec.decimals)}")


def _fmt(minor: int, decimals: int) -> str:
    from ..money import format_amount

    return format_amount(minor, decimals, trim=True)


def _dev_mode(flag: bool) -> bool:
    """Dev mode only when asked for explicitly: --dev, or RINGFENCE_MODE=dev set in the environment
    (the settings' name; RINGFENCE_ENV=dev is still accepted). Unlike other commands, the default is
    not dev: a known nonce secret would let anyone link proofs to users."""
    return flag or os.environ.get("RINGFENCE_MODE", "").lower() == "dev" or os.environ.get("RINGFENCE_ENV", "").lower() == "dev"


def _readers(evidence: dict[str, Any], base: Path) -> tuple[dict[str, ChainBalanceReader], dict[str, int]]:
    readers: dict[str, ChainBalanceReader] = {}
    heights: dict[str, int] = {}
    chains = evidence.get("chains", {})
    if not isinstance(chains, dict):
        raise ValidationError("chains must be an object keyed by chain name", field="chains")
    for name, cfg in chains.items():
        kind = cfg.get("type")
        if kind == "utxo-registry":
            readers[name] = UtxoRegistryReader.from_file(base / cfg["path"])
        elif kind == "balance-registry":
            readers[name] = BalanceRegistryReader.from_file(base / cfg["path"])
        elif kind == "evm-rpc":
            from web3 import Web3

            readers[name] = EvmChainReader(Web3(Web3.HTTPProvider(cfg["url"])), name, cfg.get("asset", "ETH"))
        else:
            raise ValidationError("type must be utxo-registry, balance-registry or evm-rpc",
                                  field=f"chains.{name}.type")
        if "height" in cfg:
            heights[name] = int(cfg["height"])
    return readers, heights


@app.command()
def publish(
    out_dir: Path = typer.Argument(..., help="directory to write root.json, proofs/, reserves.json, report.html"),
    snapshot_file: Path = typer.Option(Path("snapshot.json"), "--snapshot", help="snapshot from `por snapshot`"),
    reserves_file: Optional[Path] = typer.Option(None, "--reserves", help="reserves evidence JSON (docs/por.md)"),
    min_leaf_count: int = typer.Option(1, "--min-leaf-count", min=1, max=2**40, help="pad the tree to at least this many leaves"),
    dev: bool = typer.Option(False, "--dev", help="dev mode: allow the built-in development secret"),
    json_proofs: bool = typer.Option(False, "--json-proofs", help="also export every proof as JSON lines"),
) -> None:
    """Build the liabilities tree, write every user's proof, prove reserves, write the report.

    The nonce secret comes from RINGFENCE_POR_SECRET (32+ bytes); the built-in development
    secret is refused unless --dev or RINGFENCE_ENV=dev.

    Example: RINGFENCE_POR_SECRET=$(openssl rand -hex 32) ringfence por publish ./por-out --snapshot snapshot.json --reserves evidence.json
    """
    console = Console(stderr=True)
    try:
        secret = load_secret(os.environ.get("RINGFENCE_POR_SECRET"), dev_mode=_dev_mode(dev))
        snap = LiabilitySnapshot.load(snapshot_file)
        evidence: dict[str, Any] | None = None
        if reserves_file is not None:
            evidence = json.loads(reserves_file.read_text(encoding="utf-8"))
            if evidence.get("snapshot_id") not in (None, snap.snapshot_id.hex()):
                raise ValidationError("reserves evidence names a different snapshot", field="snapshot_id")
        out_dir.mkdir(parents=True, exist_ok=True)
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=False) as progress:
            tasks: dict[str, Any] = {}

            def report_progress(phase: str, done: int, total: int) -> None:
                if phase not in tasks:
                    tasks[phase] = progress.add_task(phase, total=total)
                progress.update(tasks[phase], completed=done, total=total)

            tree = build_liability_tree(snap.snapshot_id, snap.asset_codes, snap.iter_accounts(), secret,
                                        min_leaf_count=min_leaf_count, progress=report_progress)
            root_doc = tree.root_document()
            (out_dir / "root.json").write_text(json.dumps(root_doc, indent=1) + "\n", encoding="utf-8")
            tree.write_store(out_dir / "proofs", progress=report_progress)
            count = tree.account_count
            if json_proofs:
                tree.write_proof_lines(out_dir / "proofs-jsonl", progress=report_progress)
            reserves = None
            shield: dict[str, int] = {}
            if evidence is not None:
                readers, heights = _readers(evidence, reserves_file.parent)  # type: ignore[union-attr]
                claims = load_claims(evidence)
                task = progress.add_task("reserves", total=len(claims))
                reserves = prove_reserves(snap.snapshot_id.hex(), claims, readers, heights)
                progress.update(task, completed=len(claims))
                decimals = {a.code: a.decimals for a in snap.assets}
                for code, text in (evidence.get("shield_fund") or {}).items():
                    shield[code] = parse_amount(text, decimals.get(code, 0), field=f"shield_fund.{code}")
        report = build_report(root_doc, snap.assets, reserves, shield, snap.debts_minor, snap.position)
        (out_dir / "reserves.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        (out_dir / "report.html").write_text(render_html(report), encoding="utf-8")
    except (RingfenceError, OSError) as exc:
        _fail(console, exc)
    except (ValueError, KeyError) as exc:
        console.print(f"[red]error:[/red] malformed input: {exc}", highlight=False)
        raise typer.Exit(2) from None
    typer.echo(f"published snapshot {snap.snapshot_id.hex()}: {count} proofs, root {root_doc['root']['hash']}")
    for row in report["assets"]:
        cov = row["coverage_percent"]
        typer.echo(f"  {row['asset']}: reserves {_fmt(int(row['reserves_minor']), row['decimals'])} "
                   f"liabilities {_fmt(int(row['liabilities_minor']), row['decimals'])} "
                   f"coverage {cov + '%' if cov else 'n/a'}"
                   + ("" if report["reserves_proven"] else " (no reserves evidence given)"))
    typer.echo(f"-> {out_dir}/root.json, proofs/, reserves.json, report.html")


@app.command("publish-now")
def publish_now(
    key: str = typer.Option(..., "--key", help="Your staff key (an operator): FILE, DIR/demo-staff.json#ID or pkcs11:TOKEN/LABEL#ID."),
    url: str = typer.Option(DEFAULT_URL, "--url", help="The running server (serve's address)."),
    as_json: bool = typer.Option(False, "--json", help="Print the proof's history entry as JSON."),
    timeout_s: int = typer.Option(600, "--timeout-s", min=1, max=86_400, help="How long to wait for the proof (if it "
                                  "does not come in time, it may still be published: see GET /por/history)."),
) -> None:
    """Publish a proof of solvency on a live node now, besides its schedule (a signed operator request,
    POST /admin/v1/por/publish); prints its number, position and coverage. If a proof of the same
    state is being built already (the schedule's, another operator's), this one waits for it and
    prints that proof; while another request's proof of a different state is being built, the node
    refuses (429: retry once it is published).

    Example: ringfence por publish-now --key ./ringfence-data/serve/demo-staff.json#ada --url http://127.0.0.1:8000
    """
    from ..staff.console import AdminClient, load_key

    console = Console(stderr=True)
    try:
        with AdminClient(url, load_key(key), timeout_s=timeout_s) as client:
            entry = client.post("/por/publish", {})["entry"]
    except RingfenceError as exc:
        _fail(console, exc)
    if as_json:
        typer.echo(json.dumps(entry, indent=1))
        return
    typer.echo(f"proof {entry['n']} published at {entry['published_at']}: journal position {entry['position']}, "
               f"{entry['accounts']} accounts, root {entry['root_hash']}")
    for row in entry["assets"]:
        owed = _fmt(int(row["liabilities_minor"]), row["decimals"])
        held = "no reserve evidence" if row["reserves_minor"] is None else _fmt(int(row["reserves_minor"]), row["decimals"])
        typer.echo(f"  {row['asset']}: liabilities {owed}, reserves {held}"
                   + (f", coverage {row['coverage_percent']}%" if row["reserves_minor"] is not None and row["coverage_percent"] else ""))
    typer.echo(f"  {entry['reserves_note']}; files at /por/history/{entry['n']}/<file>")


def balance_line(code: str, width: int, mine: int, total: int, decimals: int | None) -> str:
    """One asset's line of the verdict: amounts with the asset when its decimals are known, and the
    exact minor units the proof holds (what an auditor compares). The browser verifier prints the same."""
    if decimals is None:
        return f"  {code.ljust(width)}  your balance {mine} (minor units), included in total {total}"
    return (f"  {code.ljust(width)}  your balance {format_amount(mine, decimals, trim=True)} {code}, included in total "
            f"{format_amount(total, decimals, trim=True)} {code} (minor units: {mine} of {total})")


@app.command()
def verify(
    proof_file: Path = typer.Argument(..., help="your proof JSON (from the exchange)"),
    root: Optional[Path] = typer.Option(None, "--root", help="the published root file to check against"),
    reserves: Optional[Path] = typer.Option(
        None, "--reserves", help="the published reserves.json (/por/reserves.json), for the assets' decimals: "
        "balances are then shown as amounts (default: reserves.json beside --root, if there is one)"),
) -> None:
    """Check offline that your balances are included in the published liabilities.

    Exit status 0 and last line `por: VALID`, or exit 1 and `por: INVALID: <reason>`.

    Example: ringfence por verify proof.json --root root.json
    """
    try:
        proof_text = proof_file.read_bytes()
        root_text = root.read_bytes() if root is not None else None
    except OSError as exc:
        typer.echo(f"por: INVALID: cannot read file: {exc.strerror}: {exc.filename}")
        raise typer.Exit(1) from None
    if reserves is None and root is not None and (root.parent / "reserves.json").is_file():
        reserves = root.parent / "reserves.json"
    decimals: dict[str, int] = {}
    if reserves is not None:
        try:
            decimals = asset_decimals(json.loads(reserves.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            typer.echo(f"note: {reserves}: not read ({exc}); balances are shown in minor units")
    try:
        result = check_proof(proof_text, root_text)
    except (ValidationError, RecursionError) as exc:
        typer.echo(NONCE_WARNING)
        reason = str(exc) if not isinstance(exc, RecursionError) else "proof: nested too deeply"
        typer.echo(f"por: INVALID: {reason}")
        raise typer.Exit(1) from None
    typer.echo(f"account:  {result.account_id}")
    typer.echo(f"snapshot: {result.snapshot_id}")
    typer.echo(f"root:     {result.root_hash} ({result.leaf_count} leaves)"
               + (" — matches the published root file" if root is not None else " — not compared with a root file"))
    width = max(len(a) for a in result.assets)
    for code, mine, total in zip(result.assets, result.balances, result.root_sums):
        typer.echo(balance_line(code, width, mine, total, decimals.get(code)))
    if not decimals:
        typer.echo("(balances in minor units: give --reserves reserves.json, from /por/reserves.json, to see amounts)")
    typer.echo(NONCE_WARNING)
    typer.echo("por: VALID")


if __name__ == "__main__":  # pragma: no cover
    app(sys.argv[1:])
