"""`ringfence index ...`: look at the index and mark price, register feed keys, configure symbols,
sign operator approvals, and run the ccxt feed poller (docs/index.md)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer
from ..cli_paths import DEFAULT_URL, tty_console
from rich.table import Table

app = typer.Typer(help="Index price and mark price: show, feed keys, configuration, the ccxt feed.\n\n"
                  "Example: ringfence index show --url http://127.0.0.1:8000 --symbol BTCUSDT", no_args_is_help=True)
console = tty_console(width=140)


def _print(views: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(views if len(views) != 1 else views[0], indent=2))
        return
    for v in views:
        console.print(f"[bold]{v['symbol']}[/] {v['status']}  index {v['indexPrice']}  mark {v['markPrice']}  "
                      f"reference {v['referencePrice']}  market {v['marketStatus']}  "
                      f"live {v['liveSources']}/{len(v['sources'])} (min {v['minSources']}, clamp {v['clampPpm']} ppm)")
        table = Table()
        for col in ("venue", "weight", "share", "live", "price", "clamped", "age ms", "seq"):
            table.add_column(col)
        for s in v["sources"]:
            table.add_row(s["venue"], str(s["weight"]), s["weightShare"], "yes" if s["live"] else "STALE",
                          str(s["price"]), str(s["clampedPrice"]), str(s["ageMs"]), str(s["seq"]))
        console.print(table)


@app.command("show")
def show(
    url: str = typer.Option(None, "--url", help="A running node's base URL (reads GET /v1/index)."),
    data: Path = typer.Option(None, "--data", help="A data directory (`serve --data DIR`): replayed read-only, works while serve runs."),
    symbol: str = typer.Option(None, "--symbol", help="One symbol (default: every indexed symbol)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """Index price, mark price and every source with its weight, clamped price and staleness.

    Example: ringfence index show --url http://127.0.0.1:8000 --symbol BTCUSDT
    """
    from ..cli_paths import fail

    if (url is None) == (data is None):
        fail("give exactly one of --url and --data")
    if url is not None:
        import httpx

        try:
            r = httpx.get(url.rstrip("/") + "/v1/index", params={"symbol": symbol} if symbol else None, timeout=10)
        except httpx.HTTPError as err:
            fail(f"--url: {url} did not answer: {type(err).__name__}", 1)
        if r.status_code != 200:
            fail(f"--symbol: {r.json().get('msg', r.text)}" if r.status_code == 400 else f"{url}: HTTP {r.status_code}", 1)
        body = r.json()
        views = [body] if isinstance(body, dict) else body
    else:
        from ..app import replay_journal
        from ..cli_paths import require_node_dir
        from ..errors import RingfenceError
        from .view import index_symbols, index_view

        node_dir = require_node_dir(data, "--data")
        try:
            engine, _, _ = replay_journal(node_dir)
        except RingfenceError as err:
            fail(str(err), 1)
        symbols = [symbol] if symbol else index_symbols(engine)
        views = []
        for s in symbols:
            v = index_view(engine, s)
            if v is None:
                fail(f"--symbol: {s} has no index in {data}", 1)
            views.append(v)
    _print(views, as_json)


@app.command("keygen")
def keygen(out: Path = typer.Option(..., "--out", help="Where to write the new Ed25519 seed (64 hex, mode 0600).")) -> None:
    """Create a feed (or operator) key; prints its public key for `register-feed`.

    Example: ringfence index keygen --out venue-a.key
    """
    import os

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from ..cli_paths import fail
    from .feeds import FeedSigner

    if out.exists():
        fail(f"--out: {out} exists; refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    from cryptography.hazmat.primitives import serialization

    seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(seed.hex() + "\n")
    typer.echo(FeedSigner("x", key).public_key_hex)


def _sources(items: list[str]) -> list[tuple[str, int]]:
    from ..cli_paths import fail

    out = []
    for item in items:
        venue, _, weight = item.partition(":")
        if not (weight.isascii() and weight.isdigit()) and weight:
            fail(f"--source {item}: expected VENUE or VENUE:WEIGHT (a whole number)")
        out.append((venue, int(weight or 1)))
    return out


# Index changes are decisions of the staff operator quorum (index/auth.py). Each command below
# either submits through a live node's admin API (--url; the request and the decision are signed
# with the first --key, the other operators' tokens ride along) or executes on a stopped node's
# data directory (DIR: the genesis rule before any staff exist, else the same signatures).
DIR_ARG = typer.Argument(None, metavar="[DIR]", help="A stopped node's data directory (`serve --data DIR`); or use --url.")
URL_OPT = typer.Option(None, "--url", help="A running node: submit through its admin API /admin/v1 (signed with the first --key).")
KEYS_OPT = typer.Option([], "--key", help="Your staff key: FILE or DIR/demo-staff.json#ID (an operator). Repeatable.")
APPROVALS_OPT = typer.Option([], "--approval", help="Another operator's token STAFF:NONCE:EXPIRES_NS:SIGNATURE "
                             "(the same command with --sign-only). Repeatable.")
SIGN_ONLY_OPT = typer.Option(False, "--sign-only", help="Only print your approval token(s) for the submitter; change nothing.")
TTL_OPT = typer.Option(600, "--ttl-s", min=10, max=86_400, help="How long your signature may be submitted.")


def _admin_change(data: Path | None, url: str | None, command: Any, keys: list[str], tokens: list[str], sign_only: bool,
                  ttl_s: int, path: str, body: dict[str, Any]) -> list[Any] | None:
    """Sign `command` (action and subject from index/auth.py) and submit it live (`url`) or on `data`.
    Returns the events, or None after --sign-only."""
    import msgspec

    from ..cli_paths import fail
    from ..staff.cli import _approvals, _expires, _keys, _print_events, _quorum_submit, _run
    from ..staff.decisions import format_approval
    from .auth import admin_action, admin_subject

    if (data is None) == (url is None):
        fail("give exactly one of DIR (a stopped node's data directory) and --url (a running node)")
    staff_keys = _keys(keys)
    action = admin_action(command)
    if url is not None:
        from ..staff.console import AdminClient

        if not staff_keys:
            fail("--key: the admin API takes requests signed by a staff member; give your staff key")
        with AdminClient(url, staff_keys[0]) as client:
            version = _run(lambda: client.get("/index"))["version"]
        result = _quorum_submit(staff_keys, tokens, action, admin_subject(command, version), ttl_s, sign_only,
                                lambda c, toks: c.post(path, {**body, "approvals": toks}), url)
        _print_events(result)
        return None if result is None else list(result["events"])
    assert data is not None
    from ..app import new_node, replay_journal
    from ..cli_paths import prepare_node_dir, require_node_dir
    from ..errors import RingfenceError
    from .state import index_state

    def signed(engine: Any) -> list[Any]:
        version = index_state(engine).version
        subject = admin_subject(command, version)
        return [k.sign(action, subject, _expires(ttl_s)) for k in staff_keys] + _approvals(tokens)

    try:
        if sign_only:
            engine, _, _ = replay_journal(require_node_dir(data, "DIR"))
            for sig in signed(engine)[: len(staff_keys)]:
                typer.echo(format_approval(sig))
            return None
        with new_node(prepare_node_dir(data, "DIR")) as node:
            return node.execute(msgspec.structs.replace(command, approvals=signed(node.engine)))
    except RingfenceError as err:
        fail(f"refused: {err}", 1)
        raise AssertionError from err  # unreachable: fail() exits


@app.command("register-feed")
def register_feed(
    data: Path | None = DIR_ARG,
    venue: str = typer.Option(..., "--venue", help="The venue name quotes will carry."),
    public_key: str = typer.Option(..., "--public-key", help="64 hex characters (from `index keygen`)."),
    url: str | None = URL_OPT, keys: list[str] = KEYS_OPT, approval: list[str] = APPROVALS_OPT, sign_only: bool = SIGN_ONLY_OPT,
    ttl_s: int = TTL_OPT,
) -> None:
    """Register or rotate a venue's feed key (RegisterFeedKey; the staff operator quorum once staff exist).

    Example: ringfence index register-feed --url http://127.0.0.1:8000 --venue kraken --public-key 3b6a... --key ./data/demo-staff.json#ada --key ./data/demo-staff.json#ben
    """
    from .commands import RegisterFeedKey

    command = RegisterFeedKey(venue, public_key.lower())
    if _admin_change(data, url, command, keys, approval, sign_only, ttl_s, "/index/feed-keys",
                     {"venue": venue, "public_key": command.public_key_hex}) is not None:
        console.print(f"[bold green]registered[/] feed key of {venue}")


@app.command("configure")
def configure(
    data: Path | None = DIR_ARG,
    symbol: str = typer.Option(..., "--symbol", help="The symbol, e.g. BTCUSDT."),
    source: list[str] = typer.Option(..., "--source", help="VENUE or VENUE:WEIGHT; repeat for every source."),
    min_sources: int = typer.Option(3, "--min-sources", help="Fewer live than this: REDUCE_ONLY."),
    clamp_ppm: int = typer.Option(10_000, "--clamp-ppm", help="Clamp around the median, millionths (10000 = 1 %)."),
    stale_after_s: int = typer.Option(10, "--stale-after-s", help="A source older than this (sequencer time) is dropped."),
    url: str | None = URL_OPT, keys: list[str] = KEYS_OPT, approval: list[str] = APPROVALS_OPT, sign_only: bool = SIGN_ONLY_OPT,
    ttl_s: int = TTL_OPT,
) -> None:
    """Set a symbol's index parameters (ConfigureIndex; the staff operator quorum once staff exist).

    Example: ringfence index configure ./ringfence-data --symbol BTCUSDT --source a --source b --source c --source d --source e --min-sources 3
    """
    from .commands import ConfigureIndex

    command = ConfigureIndex(symbol, _sources(source), min_sources, clamp_ppm=clamp_ppm, stale_after_ns=stale_after_s * 10**9)
    body = {"symbol": symbol, "sources": [list(p) for p in command.sources], "min_sources": min_sources,
            "clamp_ppm": clamp_ppm, "stale_after_ns": command.stale_after_ns}
    if _admin_change(data, url, command, keys, approval, sign_only, ttl_s, "/index/configure", body) is not None:
        console.print(f"[bold green]configured[/] the {symbol} index")


@app.command("override")
def override(
    data: Path | None = DIR_ARG,
    symbol: str = typer.Option(..., "--symbol", help="The indexed symbol."),
    price_minor: int = typer.Option(..., "--price-minor", min=0, help="The band's reference in quote minor units; 0 returns it to the index."),
    reason: str = typer.Option(..., "--reason", help="Why; every approver signs the same text."),
    url: str | None = URL_OPT, keys: list[str] = KEYS_OPT, approval: list[str] = APPROVALS_OPT, sign_only: bool = SIGN_ONLY_OPT,
    ttl_s: int = TTL_OPT,
) -> None:
    """Pin the band's reference price of an indexed symbol (OverrideReferencePrice; the staff operator quorum).

    Example: ringfence index override --url http://127.0.0.1:8000 --symbol BTCUSDT --price-minor 61000000000 --reason "feed incident" --key ada.key --approval ben:...
    """
    from .commands import OverrideReferencePrice

    command = OverrideReferencePrice(symbol, price_minor, reason)
    body = {"symbol": symbol, "price_minor": price_minor, "reason": reason}
    if _admin_change(data, url, command, keys, approval, sign_only, ttl_s, "/index/override", body) is not None:
        console.print(f"[bold green]{'overridden' if price_minor else 'following the index again'}[/]: {symbol}")


@app.command("approve")
def approve(
    kind: str = typer.Argument(..., help="feed-key, configure or override."),
    version: int = typer.Option(..., "--version", help="The index change counter (`index show --json`: adminVersion)."),
    keys: list[str] = typer.Option(..., "--key", help="Your staff key: FILE or DIR/demo-staff.json#ID (an operator). Repeatable."),
    venue: str = typer.Option("", "--venue"), public_key: str = typer.Option("", "--public-key"),
    symbol: str = typer.Option("", "--symbol"), source: list[str] = typer.Option([], "--source"),
    min_sources: int = typer.Option(3, "--min-sources"), clamp_ppm: int = typer.Option(10_000, "--clamp-ppm"),
    stale_after_s: int = typer.Option(10, "--stale-after-s"),
    price_minor: int = typer.Option(0, "--price-minor", help="override: the reference in minor units (0 clears)."),
    reason: str = typer.Option("", "--reason", help="override: the reason every approver signs."),
    ttl_s: int = TTL_OPT,
) -> None:
    """Sign one index change offline with your staff key; prints an approval token for `--approval`.

    The same as the change's own command with --sign-only, for a machine that cannot reach the node.
    Example: ringfence index approve feed-key --version 4 --venue kraken --public-key 3b6a... --key ben.key
    """
    from ..cli_paths import fail
    from ..staff.cli import _expires, _keys
    from ..staff.decisions import format_approval
    from .auth import admin_action, admin_subject
    from .commands import ConfigureIndex, OverrideReferencePrice, RegisterFeedKey

    if kind == "feed-key":
        command: Any = RegisterFeedKey(venue, public_key.lower())
    elif kind == "configure":
        command = ConfigureIndex(symbol, _sources(source), min_sources, clamp_ppm=clamp_ppm, stale_after_ns=stale_after_s * 10**9)
    elif kind == "override":
        command = OverrideReferencePrice(symbol, price_minor, reason)
    else:
        fail("KIND must be feed-key, configure or override")
    for k in _keys(keys):
        typer.echo(format_approval(k.sign(admin_action(command), admin_subject(command, version), _expires(ttl_s))))


@app.command("feed")
def feed(
    config: Path = typer.Option(..., "--config", help="JSON: {\"venues\": [{venue, exchange, market, symbol, decimals, key_file, url?}]}."),
    target: str = typer.Option(DEFAULT_URL, "--url", "--target", help="The ringfence node to feed (base URL; POST /v1/index/quote; "
                               "default $RINGFENCE_URL or http://127.0.0.1:8000; --target is the old name)."),
    interval_s: int = typer.Option(1, "--interval-s", min=1, max=3600, help="Seconds between polls."),
    rounds: int = typer.Option(0, "--rounds", min=0, help="Stop after this many polls (0: run until interrupted)."),
) -> None:
    """Poll venues' tickers with ccxt and submit signed quotes to a running node.

    Example: ringfence index feed --config feeds.json --url http://127.0.0.1:8000 --rounds 10
    """
    from ..cli_paths import fail, require_input_file
    from .ccxt_feed import CcxtPoller, HttpQuoteSink, load_config

    require_input_file(config, "--config")
    try:
        venues = load_config(config)
        poller = CcxtPoller(venues)
    except (ValueError, OSError, AttributeError) as err:
        fail(f"--config: {err}")
    sink = HttpQuoteSink(target)
    try:
        poller.continue_from(sink.last_seq({v.symbol for v in venues}))
        done = 0
        while rounds == 0 or done < rounds:
            sink.send(poller.poll(time.time_ns()))
            done += 1
            console.print(f"round {done}: {sink.accepted} accepted, {len(sink.refused)} refused, {len(poller.errors)} venue errors")
            if rounds == 0 or done < rounds:
                time.sleep(interval_s)
    except KeyboardInterrupt:
        pass
    finally:
        sink.close()
    for line in (sink.refused + poller.errors)[-10:]:
        console.print(f"  {line}")
