"""`ringfence asset ...`: the assets of a live node, through its admin API (docs/staff.md, "Markets and fees").

Registering an asset is a decision of the staff operator quorum, collected and submitted exactly as
`ringfence market add` does (`--key` repeatable, `--approval TOKEN`, `--sign-only`): each operator signs
the asset's code, decimals, class and chain with the reason and the node's trading change counter
(`GET /admin/v1/assets` `version`), and the engine checks the signatures and journals
`RegisterAssetSigned`. The fields are checked here first by the engine's own rules
(`ledger.commands.checked_asset`), so a typo exits 2 naming the option before anyone signs; a code the
node already has is refused the same way. The engine checks everything again: it decides.
"""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.table import Table

from ..errors import RingfenceError
from .cli import APPROVALS, KEY, KEYS, SIGN_ONLY, TTL, URL, _client, _keys, _print_events, _quorum_submit, _run, console
from .console import AdminClient
from .market_cli import REASON, _fail

__all__ = ["asset_app"]

asset_app = typer.Typer(
    help="Assets on a live node: list, add (operator quorum). A market's base and quote must be registered assets.\n\n"
         "Example: ringfence asset list --key ./ringfence-data/serve/demo-staff.json#ada --url http://127.0.0.1:8000",
    no_args_is_help=True)

#: The option each field of `RegisterAsset` comes from (what an error names).
_OPTION = {"code": "CODE", "decimals": "--decimals", "asset_class": "--class", "chain": "--chain"}


def _view(client: AdminClient) -> dict[str, Any]:
    return _run(lambda: client.get("/assets"))  # type: ignore[no-any-return]


@asset_app.command("list")
def list_assets(key: str = KEY, url: str = URL, as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Every registered asset with its decimals, class, chain and the markets that trade it.

    Example: ringfence asset list --key ./ringfence-data/serve/demo-staff.json#ada --url http://127.0.0.1:8000
    """
    with _client(key, url) as client:
        view = _view(client)
    if as_json:
        typer.echo(json.dumps(view, indent=2))
        return
    table = Table(title=f"{len(view['assets'])} asset(s) (trading change counter {view['version']})")
    for col in ("code", "decimals", "class", "chain", "markets"):
        table.add_column(col, overflow="fold")
    for a in view["assets"]:
        table.add_row(a["code"], str(a["decimals"]), a["asset_class"], a["chain"] or "-", ", ".join(a["markets"]) or "-")
    console.print(table)


@asset_app.command("add")
def add_asset(
    code: str = typer.Argument(..., help="The asset code: 1-12 of A-Z 0-9, starting with a letter (e.g. ETH, USDC, AAPLX)."),
    decimals: int = typer.Option(..., "--decimals", help="Digits after the decimal point of one minor unit (0-30; "
                                 "ETH 18, BTC 8, USDT 6). Never changes once registered."),
    asset_class: str = typer.Option(..., "--class", help="crypto, tokenized (a tokenized share or bond) or fiat. A "
                                    "market's --segment decides where it trades (spot, tokenized, ...)."),
    chain: str = typer.Option("", "--chain", help="The chain it lives on (e.g. ethereum, bitcoin; 1-32 characters); "
                              "none by default. Deposits need the custody configuration as well (docs/custody.md)."),
    reason: str = REASON,
    keys: list[str] = KEYS, approvals: list[str] = APPROVALS, sign_only: bool = SIGN_ONLY, ttl_s: int = TTL, url: str = URL,
) -> None:
    """Register an asset (RegisterAssetSigned: the operator quorum signs its code, decimals, class and chain).

    An asset is registered once: its decimals, class and chain never change, and a code the node has is refused.
    Example: ringfence asset add ETH --decimals 18 --class crypto --chain ethereum --reason "listing committee 12" --key ada.key --approval ben:...
    """
    from ..ledger.commands import RegisterAsset, checked_asset
    from ..trading.staff_cmds import ACTIONS, asset_subject

    command = RegisterAsset(code, decimals, asset_class, chain)
    try:
        checked_asset(command)
    except RingfenceError as err:
        field = err.field or "code"
        hint = ""
        if field == "code" and code.upper() != code:
            hint = f" (did you mean {code.upper()}?)"
        _fail(_OPTION.get(field, field), f"{code if field == 'code' else getattr(command, field)!r}: {err.message}{hint}")
    ks = _keys(keys)
    with AdminClient(url, ks[0]) as client:
        view = _view(client)
    have = {a["code"]: a for a in view["assets"]}
    if code in have:
        a = have[code]
        _fail("CODE", f"asset {code} is already registered ({a['decimals']} decimals, {a['asset_class']}"
                      f"{', chain ' + a['chain'] if a['chain'] else ''}); an asset is registered once and never changes")
    body = {"code": code, "decimals": decimals, "asset_class": asset_class, "chain": chain, "reason": reason}
    result = _quorum_submit(ks, approvals, ACTIONS["asset"], asset_subject(command, reason, view["version"]), ttl_s,
                            sign_only, lambda c, toks: c.post("/assets", {**body, "approvals": toks}), url)
    _print_events(result)
    if result is not None:
        console.print(f"next: list a market with it, e.g. `ringfence market add {code}USDT --base {code} --quote USDT "
                      "--tick-size ... --lot-size ... --reason ... --key ...` (the quote asset must be registered too)")
