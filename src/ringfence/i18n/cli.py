"""`ringfence fiat ...`: the fiat currencies and the display-only rates feed of a running node
(docs/i18n.md#fiat-values). Rates never touch a balance; the node only shows them."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import typer

from ..cli_paths import DEFAULT_URL, tty_console

app = typer.Typer(help="Fiat currencies and the display rates feed (display only, never a balance).\n\n"
                  "Example: ringfence fiat feed --url http://127.0.0.1:8000 --token-file DIR/rates-token --demo --rounds 1",
                  no_args_is_help=True)
console = tty_console(width=140)


def _token(token: str | None, token_file: Path | None) -> str:
    from ..cli_paths import fail

    if token:
        return token.strip()
    if token_file is None:
        fail("give --token-file DIR/rates-token (written by `serve` on its first start) or --token")
    assert token_file is not None
    try:
        return token_file.read_text(encoding="utf-8").strip()
    except OSError as err:
        fail(f"--token-file: cannot read {token_file}: {err.strerror}")
    raise AssertionError("unreachable")


def _source(rates: Path | None, demo: bool) -> dict[str, Any]:
    from ..cli_paths import fail
    from .fiat import demo_rates_doc

    if (rates is None) == (not demo):
        fail("give exactly one of --rates FILE and --demo")
    if demo:
        return demo_rates_doc()
    assert rates is not None
    try:
        doc = json.loads(rates.read_text(encoding="utf-8"), parse_float=str, parse_int=str)
    except OSError as err:
        fail(f"--rates: cannot read {rates}: {err.strerror}")
    except ValueError as err:
        fail(f"--rates: not JSON: {err}")
    if not isinstance(doc, dict):
        fail("--rates: must be a JSON object {\"fiat\": {CODE: \"decimal\"}, \"assets\": {CODE: \"decimal\"}}")
    return doc


@app.command("feed")
def feed(
    target: str = typer.Option(DEFAULT_URL, "--url", "--target", help="The running node (base URL; POST /v1/fiat/rates; default $RINGFENCE_URL or http://127.0.0.1:8000; --target is the old name)."),
    rates: Path = typer.Option(None, "--rates", help="JSON: {\"source\": ..., \"fiat\": {\"EUR\": \"0.92\"}, \"assets\": {\"BTC\": \"61000\"}} "
                               "(fiat: units per USD; assets: USD per unit). Re-read every round."),
    demo: bool = typer.Option(False, "--demo", help="Push the packaged offline demo rates (approximate, not market data)."),
    token_file: Path = typer.Option(None, "--token-file", help="The node's rates token file (DIR/rates-token)."),
    token: str = typer.Option(None, "--token", envvar="RINGFENCE_API_RATES_TOKEN", help="The rates token itself."),
    interval_s: int = typer.Option(60, "--interval-s", min=1, max=86_400, help="Seconds between pushes."),
    rounds: int = typer.Option(1, "--rounds", min=0, help="Stop after this many pushes (0: run until interrupted)."),
) -> None:
    """Push display rates to a running node, once or every --interval-s.

    Example: ringfence fiat feed --url http://127.0.0.1:8000 --token-file ./ringfence-data/serve/rates-token --rates rates.json
    """
    import httpx

    from ..cli_paths import fail

    secret = _token(token, token_file)
    url = target.rstrip("/") + "/v1/fiat/rates"
    done = 0
    try:
        while rounds == 0 or done < rounds:
            body = json.dumps(_source(rates, demo))
            try:
                r = httpx.post(url, content=body, headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}, timeout=10)
            except httpx.HTTPError as err:
                fail(f"--url: {target} did not answer: {type(err).__name__}", 1)
            if r.status_code != 200:
                fail(f"{target} refused the rates (HTTP {r.status_code}): {r.json().get('msg', r.text) if r.headers.get('content-type', '').startswith('application/json') else r.text}", 1)
            done += 1
            accepted = r.json()["accepted"]
            console.print(f"round {done}: {accepted['fiat']} fiat rates, {accepted['assets']} asset prices accepted")
            if rounds == 0 or done < rounds:
                time.sleep(interval_s)
    except KeyboardInterrupt:
        pass


@app.command("rates")
def show_rates(
    url: str = typer.Option(DEFAULT_URL, "--url", help="A running node's base URL (reads GET /v1/fiat/rates; default $RINGFENCE_URL or http://127.0.0.1:8000)."),
    currency: str = typer.Option(None, "--currency", help="One currency (default: all)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """The display rates a running node holds: fiat per USD and USD per asset.

    Example: ringfence fiat rates --url http://127.0.0.1:8000 --currency EUR
    """
    import httpx

    from ..cli_paths import fail

    try:
        doc = httpx.get(url.rstrip("/") + "/v1/fiat/rates", timeout=10).json()
    except (httpx.HTTPError, ValueError) as err:
        fail(f"--url: {url} did not answer: {type(err).__name__}", 1)
    if currency:
        if currency not in doc["fiat"]:
            fail(f"--currency: the node has no rate for {currency[:12]!r}", 1)
        doc = {**doc, "fiat": {currency: doc["fiat"][currency]}}
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
        return
    as_of = datetime.fromtimestamp(doc["asOfMs"] // 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if doc["asOfMs"] else "-"
    console.print(f"source {doc['source'] or '-'} · as of {as_of} · base USD")
    for code, rate in doc["fiat"].items():
        console.print(f"  1 USD = {rate} {code}")
    for code, price in doc["assets"].items():
        console.print(f"  1 {code} = {price} USD")


@app.command("currencies")
def list_currencies(
    locale: str = typer.Option("en", "--locale", help="Names in this language (en, de, ar, zh_Hans …)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """ISO 4217 currencies with their minor units (CLDR data, the same the pages format with).

    Example: ringfence fiat currencies --locale de
    """
    from ..cli_paths import fail
    from . import normalize_locale
    from .fiat import currency_rows

    lang = normalize_locale(locale)
    if lang is None:
        fail("--locale: not a language with a catalogue (ringfence serve: GET /i18n/locales)")
    assert lang is not None
    rows = currency_rows(lang)
    if as_json:
        typer.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    for row in rows:
        console.print(f"{row['code']}  {row['minorUnits']}  {row['name']}")
    console.print(f"{len(rows)} currencies")
