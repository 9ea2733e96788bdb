"""`ringfence monitoring ...`: check a rule set, back-test it on a recorded stream, export the stream;
against a live node (signed staff requests): the newest alerts with their model features, and one
account's behavioural baseline."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import typer
from rich.markup import escape

from ..cli_paths import require_input_file, tty_console
from ..errors import RingfenceError, ValidationError
from .events import Event, from_json, to_json

app = typer.Typer(help="Monitoring: rule sets, back-tests over the recorded event stream, exports, alerts and baselines of a live node "
                  "(docs/monitoring.md).\n\nExample: ringfence monitoring alerts --key ./ringfence-data/serve/demo-staff.json#cy",
                  no_args_is_help=True)
console = tty_console(width=160)


def _time_ms(text: str | None, name: str, default: int) -> int:
    """An ISO 8601 time (UTC unless it says otherwise) or milliseconds since the epoch."""
    if not text:
        return default
    if text.isascii() and text.isdigit():
        return int(text)
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValidationError("must be an ISO 8601 time (2026-12-03T16:00:00Z) or milliseconds since the epoch",
                              field=name) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp()) * 1000 + dt.microsecond // 1000


#: --database-url's help: where the URL comes from by default, and what prod mode takes (store/transport.py)
DATABASE_URL_HELP = ("Default: RINGFENCE_DATABASE_URL, as serve. Outside dev mode a PostgreSQL URL must verify the server "
                     "(?sslmode=verify-full&sslrootcert=CA_FILE) or use a socket no other user can write "
                     "(?host=/var/run/postgresql), unless RINGFENCE_DATABASE_PLAIN_OK=1.")


def _store(data: Path | None, database_url: str | None):  # type: ignore[no-untyped-def]
    """--database-url, else RINGFENCE_DATABASE_URL (where `serve` keeps it: the PostgreSQL profile), else the
    identity store of `serve --data DATA` (DATA/identity.sqlite3, or where that serve recorded it). Opened as
    every command opens it (`cli_paths.open_store`): a folder that is not a server's, a node that keeps its
    store in PostgreSQL, or a URL that does not open is one `error:` line naming the option (exit 2). Given
    --data, where its store is comes from `store.node_identity_store` (as `backup create` asks it): DATA or
    DATA/engine, and a PostgreSQL URL must name the database that node recorded."""
    import os

    from ..cli_paths import fail, open_store
    from ..errors import ConfigError
    from ..store import node_identity_store

    url = database_url or os.environ.get("RINGFENCE_DATABASE_URL") or ""
    option = "--database-url" if database_url else "RINGFENCE_DATABASE_URL"
    if url and (data is None or not url.startswith("postgresql")):  # no node named, or a SQLite file named: that one
        return open_store(url, option)
    data = data or Path("ringfence-data")  # serve's default --data
    if not data.exists():
        fail(f"--data: {data} does not exist; give the folder `ringfence serve --data DIR` uses "
             "(`make serve-demo`: ./ringfence-data/serve), or --database-url")
    if not data.is_dir():
        fail(f"--data: {data} is not a directory")
    try:  # where that serve recorded its store (backup create asks the same): a PostgreSQL URL must name it
        path, pg_url = node_identity_store(data, url, url_option="--database-url or RINGFENCE_DATABASE_URL" if not url
                                           else option, missing_field="--data")
    except ConfigError as err:
        fail(f"{err.field}: {err.message}")
    if pg_url:
        return open_store(pg_url, option)
    assert path is not None
    if not path.is_file():
        fail(f"--data: {data} holds no identity store ({path.name}); give the folder `ringfence serve --data DIR` uses "
             "(`make serve-demo`: ./ringfence-data/serve), or --database-url")
    return open_store(f"sqlite:///{path.resolve()}", "--data")


def _events(events: Path | None, data: Path | None, database_url: str | None, start: int, end: int) -> Iterator[Event]:
    """The events in [start, end]: from the --events file, else from the store, which is opened now (a
    command that writes its output opens the store first, so a refused one writes nothing)."""
    if events is not None:
        from ..cli_paths import require_input_file

        return _events_file(require_input_file(events, "--events"), start, end)  # checked now: one line, not a traceback
    from .stream import read_range

    return iter(read_range(_store(data, database_url), start, end))


def _events_file(events: Path, start: int, end: int) -> Iterator[Event]:
    try:
        with events.open() as fh:
            for n, line in enumerate(fh, 1):
                if line.strip():
                    e = from_json(line, where=f"{events}:{n}")
                    if start <= e.at_ms <= end:
                        yield e
    except (OSError, UnicodeDecodeError) as err:  # read while the command runs: one line naming the option
        raise ValidationError(f"cannot read {events}: {getattr(err, 'strerror', None) or err}", field="--events") from None


def _fail(err: RingfenceError, code: int = 2) -> None:
    """One `error: FIELD: message` line on stderr, as every command says it (`cli_paths.fail`): exit 2 for bad
    input (an option, a rule set, a file); a live node's refusal passes its own code."""
    from ..cli_paths import fail

    fail(f"{err.field}: {err.message}" if err.field else err.message, code)


@app.command("check")
def check(rules: Path = typer.Argument(..., help="The rule set (JSON) to validate.")) -> None:
    """Validate a rule set; prints its rules, or the JSON path of the first problem.

    Example: ringfence monitoring check my-rules.json
    """
    from .rules import parse_rules

    try:
        rs = parse_rules(require_input_file(rules, "RULES").read_text())
    except RingfenceError as err:
        _fail(err)
        return
    for r in rs.rules:
        console.print(f"{r.name}: {r.type}, {r.severity}, window {r.window_s} s — {r.description}", soft_wrap=True)


@app.command("backtest")
def backtest_cmd(
    rules: Path = typer.Option(None, "--rules", help="The rule set (JSON); default: the shipped rules."),
    events: Path = typer.Option(None, "--events", help="A recorded stream (JSON lines from `monitoring export`)."),
    data: Path = typer.Option(None, "--data", help="Read the stream from a server's data directory (DIR/identity.sqlite3)."),
    database_url: str = typer.Option(None, "--database-url", help="Read the stream from this database instead. " + DATABASE_URL_HELP),
    start: str = typer.Option(None, "--from", help="Only events at or after this time (ISO 8601 or ms)."),
    end: str = typer.Option(None, "--to", help="Only events at or before this time (ISO 8601 or ms)."),
    weights: Path = typer.Option(None, "--weights", help="The behavioural model's learnt feature weights (JSON, as "
                                 "`monitoring model --json` prints them); default: every feature at 1,000 per-mille."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per hit, then a summary object."),
) -> None:
    """Run a rule set over a recorded stream: every hit with its explanation, and hits per rule.

    The scoring is the live worker's (same code, no clock), so a back-test shows what the rules
    would have raised. Nothing is written.

    Example: ringfence monitoring backtest --rules my-rules.json --data ./ringfence-data --from 2026-12-01T00:00:00Z --weights model.json
    """
    from .rules import backtest, default_rules, parse_rules

    try:
        rs = parse_rules(require_input_file(rules, "--rules").read_text()) if rules else default_rules()
        lo, hi = _time_ms(start, "--from", 0), _time_ms(end, "--to", 2**62)
        from .feedback import parse_weights

        learnt = parse_weights(require_input_file(weights, "--weights").read_text()) if weights else None
        hits, scored = backtest(rs, _events(events, data, database_url, lo, hi), learnt)
    except RingfenceError as err:
        _fail(err)
        return
    per_rule = {r.name: 0 for r in rs.rules}
    for h in hits:
        per_rule[h.rule] += 1
        if as_json:
            print(json.dumps(h.as_dict(), separators=(",", ":")))
        else:
            console.print(f"[bold]{escape(h.rule)}[/bold] ({h.severity}) {escape(h.account_id)}: {escape(h.explanation)} — events {list(h.evidence)}",
                          soft_wrap=True)
    summary = {"events_scored": scored, "hits": len(hits), "hits_per_rule": per_rule}
    if as_json:
        print(json.dumps(summary, separators=(",", ":")))
    else:
        console.print(f"{scored} events scored, {len(hits)} hits: " + ", ".join(f"{k} {v}" for k, v in per_rule.items()),
                      soft_wrap=True)


@app.command("export")
def export_cmd(
    out: Path = typer.Option(..., "--out", help="Where to write the stream (JSON lines)."),
    data: Path = typer.Option(None, "--data", help="The server's data directory (DIR/identity.sqlite3)."),
    database_url: str = typer.Option(None, "--database-url", help="Or the database URL. " + DATABASE_URL_HELP),
    start: str = typer.Option(None, "--from", help="Only events at or after this time (ISO 8601 or ms)."),
    end: str = typer.Option(None, "--to", help="Only events at or before this time (ISO 8601 or ms)."),
) -> None:
    """Write the recorded stream as JSON lines (identifiable: for back-tests inside the exchange).

    Example: ringfence monitoring export --data ./ringfence-data --out stream.jsonl --from 2026-12-01
    """
    try:
        lo, hi = _time_ms(start, "--from", 0), _time_ms(end, "--to", 2**62)
        stream = _events(None, data, database_url, lo, hi)  # before OUT is created: a refused store writes nothing
        n = 0
        with out.open("w") as fh:
            for e in stream:
                fh.write(to_json(e) + "\n")
                n += 1
    except RingfenceError as err:
        _fail(err)
        return
    console.print(f"{n} events written to {out}")


@app.command("deidentify")
def deidentify_cmd(
    out: Path = typer.Option(..., "--out", help="Where to write the de-identified records (JSON lines)."),
    key_file: Path = typer.Option(..., "--key-file", help="The pseudonym key file {key_id, key_hex} (kept inside the exchange)."),
    new_key: bool = typer.Option(False, "--new-key", help="Create the key file (mode 0600) first; refuses to overwrite one."),
    k: int = typer.Option(5, "--k", help="Suppress records whose quasi-identifiers fewer than k pseudonyms share."),
    data: Path = typer.Option(None, "--data", help="The server's data directory (DIR/identity.sqlite3)."),
    events: Path = typer.Option(None, "--events", help="Or a recorded stream (JSON lines from `monitoring export`)."),
    database_url: str = typer.Option(None, "--database-url", help="Or the database URL. " + DATABASE_URL_HELP),
    start: str = typer.Option(None, "--from", help="Only events at or after this time (ISO 8601 or ms)."),
    end: str = typer.Option(None, "--to", help="Only events at or before this time (ISO 8601 or ms)."),
) -> None:
    """Export the stream for outside models: keyed pseudonyms, generalised fields, a k-anonymity
    check (k reported), and a data dictionary beside the output (OUT.dictionary.json).

    Example: ringfence monitoring deidentify --data ./ringfence-data/serve --key-file pseudo.key --new-key --k 5 --out deid.jsonl
    """
    from .deid import DICTIONARY, deidentify, new_key_file, read_key_file

    try:
        if new_key and key_file.exists():
            raise ValidationError(f"{key_file} exists; rotate by naming a new file", field="--key-file")
        lo, hi = _time_ms(start, "--from", 0), _time_ms(end, "--to", 2**62)
        stream = _events(events, data, database_url, lo, hi)  # before a new key file: a refused store writes nothing
        key = new_key_file(key_file) if new_key else read_key_file(key_file)
        records, report = deidentify(stream, key, k=k)
    except RingfenceError as err:
        _fail(err)
        return
    with out.open("w") as fh:
        for r in records:
            fh.write(json.dumps(r, separators=(",", ":"), sort_keys=True) + "\n")
    dictionary = out.with_name(out.name + ".dictionary.json")
    dictionary.write_text(json.dumps({"fields": DICTIONARY, "report": report}, indent=2) + "\n")
    print(json.dumps(report, separators=(",", ":")))


# ------------------------------------------------------------------------------ against a live node

STAFF_KEY = typer.Option(..., "--key", help="Your staff key file (FILE, or DIR/demo-staff.json#ID).")


def _admin_get(key: str, url: str, path: str, query: dict[str, str]):  # type: ignore[no-untyped-def]
    from urllib.parse import urlencode

    from ..staff.console import AdminClient, load_key

    try:
        with AdminClient(url, load_key(key)) as client:
            return client.get(path, urlencode({k: v for k, v in query.items() if v}))
    except RingfenceError as err:
        _fail(err, 1)


def _default_url() -> str:
    from ..cli_paths import DEFAULT_URL

    return DEFAULT_URL


@app.command("alerts")
def alerts_cmd(
    key: str = STAFF_KEY,
    url: str = typer.Option(None, "--url", help="The running server (default $RINGFENCE_URL or http://127.0.0.1:8000)."),
    account: str = typer.Option("", "--account", help="Only this account's alerts."),
    rule: str = typer.Option("", "--rule", help="Only this rule's alerts (e.g. behaviour-account-takeover)."),
    limit: int = typer.Option(20, "--limit", min=1, max=500, help="How many, newest first."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON."),
) -> None:
    """The newest alerts of a live node: rule, account, explanation, and for a behaviour rule its
    score and the features that drove it (GET /admin/v1/alerts, a signed staff request).

    Example: ringfence monitoring alerts --key ./ringfence-data/serve/demo-staff.json#cy --rule behaviour-account-takeover
    """
    out = _admin_get(key, url or _default_url(), "/alerts", {"account_id": account, "rule": rule, "limit": str(limit)})
    if as_json:
        print(json.dumps(out, indent=2))
        return
    for a in out["alerts"]:
        # escaped: an explanation ends with "[hash]", which rich would take for a style tag and drop
        console.print(f"#{a['alert_id']} [bold]{escape(a['rule'])}[/bold] ({a['severity']}) {escape(a['account_id'])} case {a['case_id']}: "
                      f"{escape(a['explanation'])}", soft_wrap=True)
        for f in a.get("features") or []:
            console.print(f"    {f['feature']:<12} {f['contribution'] // 1000}.{f['contribution'] % 1000 // 100} bits  {f['detail']}",
                          soft_wrap=True)


@app.command("baseline")
def baseline_cmd(
    account: str = typer.Argument(..., help="The account whose baseline to show."),
    key: str = STAFF_KEY,
    url: str = typer.Option(None, "--url", help="The running server (default $RINGFENCE_URL or http://127.0.0.1:8000)."),
) -> None:
    """What the behavioural model learnt of one account on a live node: devices, networks,
    countries, sign-in hours, endpoints, withdrawals, orders (GET /admin/v1/baselines), as JSON.

    Example: ringfence monitoring baseline alice --key ./ringfence-data/serve/demo-staff.json#cy
    """
    out = _admin_get(key, url or _default_url(), "/baselines", {"account_id": account})
    print(json.dumps(out["baseline"], indent=2))


@app.command("report")
def report_cmd(
    case_id: int = typer.Argument(..., min=1, help="The case whose suspicious-activity report to export."),
    key: str = STAFF_KEY,
    url: str = typer.Option(None, "--url", help="The running server (default $RINGFENCE_URL or http://127.0.0.1:8000)."),
    out: Path = typer.Option(None, "--out", help="Write the JSON document to this file (default: print it)."),
) -> None:
    """Export a case's suspicious-activity report from a live node as a JSON document: the subject,
    each report filed (analyst, narrative, signed decision), the alerts with their evidence, the case
    log (GET /admin/v1/cases/ID/report, a signed analyst request). A report is filed on the staff
    console or with POST /admin/v1/cases/ID/actions {"action": "report", ...}.

    Example: ringfence monitoring report 7 --key ./ringfence-data/serve/demo-staff.json#cy --out case-7-report.json
    """
    doc = json.dumps(_admin_get(key, url or _default_url(), f"/cases/{case_id}/report", {})["report"], indent=2)
    if out is None:
        print(doc)
        return
    out.write_text(doc + "\n")
    console.print(f"wrote the report of case {case_id} to {escape(str(out))}")


@app.command("replay-rules")
def replay_rules_cmd(out: Path = typer.Argument(..., help="Where to write the rule set (JSON).")) -> None:
    """Write the shipped rule set with time compressed for `monitoring replay` (behaviour rules:
    settle_s 1 s, window at most 10 s); start the server to replay into with it.

    Example: ringfence monitoring replay-rules replay-rules.json && RINGFENCE_MONITORING_RULES=replay-rules.json ringfence serve --demo --forwarded-allow-ips 127.0.0.1
    """
    from .replay import replay_rules

    replay_rules(out)
    console.print(f"wrote {escape(str(out))}")


@app.command("replay")
def replay_cmd(
    data: Path = typer.Option(..., "--data", help="The running `serve --demo`'s data directory (the faucet token, the demo staff keys)."),
    url: str = typer.Option(None, "--url", help="The running server (default $RINGFENCE_URL or http://127.0.0.1:8000)."),
    seed: int = typer.Option(1, "--seed", help="The generator's seed: who follows which typology, devices, networks, amounts."),
    users: int = typer.Option(20, "--users", min=20, max=2000, help="Accounts to sign up (about 3% per typology, at least one each)."),
    key: str = typer.Option("", "--key", help="An analyst's staff key to read the alerts with (default DATA/demo-staff.json#cy)."),
    out: Path = typer.Option(None, "--out", help="Also append the result as one JSON line to this file."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole result as JSON."),
) -> None:
    """Replay the synthetic typologies (account takeover, credential stuffing, wash ring, spoofer,
    structuring, tainted deposit, pump and dump) through a live `serve --demo`'s API — sign-ups, TOTP, API keys,
    faucet deposits, orders, wrong passwords, thin markets listed by the demo's operators ada and ben — then read the alerts back from GET /admin/v1/alerts and print
    precision and recall per typology. The server must believe X-Forwarded-For from this machine
    (`--forwarded-allow-ips 127.0.0.1`), run `monitoring replay-rules`' rule set, and compress time
    for withdrawals too (RINGFENCE_CUSTODY_ADDRESS_COOLING_S=0, RINGFENCE_IDENTITY_WITHDRAWAL_LOCK_S=1).

    Example: ringfence monitoring replay --data ./ringfence-data --url http://127.0.0.1:8000 --seed 1001 --users 60
    """
    from .replay import replay

    try:
        result = replay(url or _default_url(), data, seed=seed, users=users, staff_key=key,
                        log=lambda line: console.print(escape(line)))
    except (RuntimeError, ValueError) as err:
        console.print(f"[red]replay failed:[/red] {escape(str(err))}")
        raise typer.Exit(1) from None
    line = json.dumps(result, sort_keys=True)
    if out is not None:
        with out.open("a") as fh:
            fh.write(line + "\n")
    if as_json:
        print(line)
        return
    console.print(f"seed {seed}, {users} accounts, {result['seconds']} s; per-mille over this replay's accounts:")
    console.print(f"{'typology':<22}{'accounts':>9}{'flagged':>9}{'precision':>11}{'recall':>8}")
    for typ, row in result["typologies"].items():
        console.print(f"{typ:<22}{row['accounts']:>9}{row['flagged']:>9}{row['precision_permille']:>11}{row['recall_permille']:>8}")


@app.command("model")
def model_cmd(
    key: str = STAFF_KEY,
    url: str = typer.Option(None, "--url", help="The running server (default $RINGFENCE_URL or http://127.0.0.1:8000)."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON (usable as `backtest --weights`)."),
) -> None:
    """The behavioural model's feature weights on a live node, learnt from analysts' case decisions
    (a case closed as confirmed_abuse or false_positive), with every decision that moved them
    (GET /admin/v1/model, a signed analyst request).

    Example: ringfence monitoring model --key ./ringfence-data/serve/demo-staff.json#cy --json > model.json
    """
    out = _admin_get(key, url or _default_url(), "/model", {})
    if as_json:
        print(json.dumps(out, indent=2))
        return
    console.print("feature weights (per-mille; 1000 = as measured): " + ", ".join(f"{k} {v}" for k, v in out["weights"].items()),
                  soft_wrap=True)
    for d in out["decisions"]:
        console.print(f"  case {d['case_id']} alert {d['alert_id']}: {d['label']}, score {d['score']} milli-bits: "
                      + ", ".join(f"{f['feature']} {f['contribution']}" for f in d["features"]), soft_wrap=True)
