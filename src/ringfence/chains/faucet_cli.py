"""`ringfence chain pay|balance`: the demo faucet and balance reader for the local chains of a
running `ringfence serve --demo`.

The chains live inside the server process, so these commands talk to it: they read the server's
URL and a token from `DIR/custody/admin.json` (written by `serve --demo`, mode 0600) and call its
loopback-only endpoint. Outside demo mode there is no such file and the commands refuse.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

app = typer.Typer(
    name="chain",
    help="The demo's local chains (BTC, ETH, USDT) inside a running `ringfence serve --demo`: pay from the "
    "faucet, read balances. Not `chains` (plural), which works offline: addresses from xpubs, address checks."
    "\n\nExample: ringfence chain pay --data ./ringfence-data --asset BTC --to bcrt1q... --amount 0.5",
    no_args_is_help=True,
)

DATA_HELP = ("Data directory of the running `ringfence serve --demo` (default ./ringfence-data, or ./ringfence-data/serve when only that one holds a running demo, as `make serve-demo` makes).")


def _admin(data: Path) -> dict[str, str]:
    path = data / "custody" / "admin.json"
    fallback = Path("ringfence-data/serve/custody/admin.json")  # where `make serve-demo` puts it
    default = data == Path("ringfence-data")
    if default and not path.exists() and fallback.exists():
        path = fallback
    try:
        doc = json.loads(path.read_text())
        return {"url": str(doc["url"]), "token": str(doc["token"]), "path": str(path)}
    except (OSError, ValueError, KeyError, TypeError):
        tried = f"{path} and {fallback} are" if default and path != fallback else f"{path} is"
        typer.echo(f"error: --data: no running demo server found ({tried} missing or unreadable); "
                   "start one with `make serve-demo` (data in ./ringfence-data/serve) or `ringfence serve --demo "
                   f"--data {data}`, or pass --data with the running demo's directory", err=True)
        raise typer.Exit(2) from None


def _call(data: Path, method: str, path: str, **kw: Any) -> dict[str, Any]:
    import httpx

    admin = _admin(data)
    try:
        res = httpx.request(method, admin["url"] + path, headers={"Authorization": "Bearer " + admin["token"]},
                            timeout=30, **kw)
    except httpx.HTTPError as err:
        typer.echo(f"error: cannot reach the server at {admin['url']}: {err}; is `ringfence serve --demo --data {data}` running?", err=True)
        raise typer.Exit(2) from None
    try:
        body = res.json()
    except ValueError:
        body = {"msg": res.text[:300]}
    if res.status_code != 200:
        if res.status_code == 401:  # another server now answers at that address (a file left by an earlier demo)
            body["msg"] = (f"the server at {admin['url']} refused the token in {admin['path']}: that file was left by an "
                           "earlier demo; pass --data with the running demo's directory")
        if res.status_code == 404:
            body["msg"] = "this server does not run the demo chains (start it with --demo)"
        typer.echo(f"error: {body.get('msg', res.status_code)}", err=True)
        raise typer.Exit(2)
    return body  # type: ignore[no-any-return]


@app.command("pay")
def pay(
    data: Path = typer.Option(Path("ringfence-data"), "--data", help=DATA_HELP, show_default=False),
    asset: str = typer.Option(..., "--asset", help="BTC, ETH or USDT"),
    to: str = typer.Option(..., "--to", help="Address to pay (e.g. your deposit address from fetchDepositAddress)"),
    amount: str = typer.Option(..., "--amount", help="Decimal amount, e.g. 0.5"),
    source: str = typer.Option("faucet", "--from", metavar="faucet|tainted|exploit", help="Who pays: faucet, the demo's "
                               "faucet wallet; tainted, ETH from the demo's tainted wallet (funded by a blacklisted address), "
                               "to try KYT quarantine; exploit, ETH from that blacklisted address itself, to try a frozen deposit"),
) -> None:
    """Pay AMOUNT of ASSET from the demo faucet wallet on the local chain; prints the txid.

    Example: ringfence chain pay --data ./ringfence-data --asset ETH --to 0x6cFC2C15C8d171D69ac608A2a93a82870390D986 --amount 1.5
    """
    body = _call(data, "POST", "/v1/demo/chain/pay",
                 json={"asset": asset.upper(), "to": to, "amount": amount, "from": source})
    typer.echo(body["txid"])


@app.command("balance")
def balance(
    data: Path = typer.Option(Path("ringfence-data"), "--data", help=DATA_HELP, show_default=False),
    asset: str = typer.Option(..., "--asset", help="BTC, ETH or USDT"),
    address: str = typer.Option(..., "--address", help="Address to read"),
    height: Optional[int] = typer.Option(None, "--height", min=0, help="Read at this past block height (default: the tip), e.g. a proof of reserves' pinned height"),
) -> None:
    """Print an address's balance of ASSET on the local chain (a decimal, at the chain tip or --height).

    Example: ringfence chain balance --data ./ringfence-data --asset BTC --address bcrt1q0hrsqle9c5s92egz8gnv3rqh5u6nrunccz345j
    """
    params = {"asset": asset.upper(), "address": address, **({"height": str(height)} if height is not None else {})}
    body = _call(data, "GET", "/v1/demo/chain/balance", params=params)
    typer.echo(body["balance"])


@app.command("broadcast")
def broadcast(
    data: Path = typer.Option(Path("ringfence-data"), "--data", help=DATA_HELP, show_default=False),
    asset: str = typer.Option(..., "--asset", help="BTC, ETH or USDT (which chain)"),
    raw_tx: str = typer.Option(..., "--raw-tx", help="The signed transaction, hex"),
) -> None:
    """Send a raw signed transaction to the local chain; prints its txid.

    Example: ringfence chain broadcast --data ./ringfence-data --asset BTC --raw-tx 0200000001...
    """
    body = _call(data, "POST", "/v1/demo/chain/broadcast", json={"asset": asset.upper(), "raw_tx": raw_tx})
    typer.echo(body["txid"])
