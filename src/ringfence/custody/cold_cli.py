"""`ringfence cold refill|submit`: cold -> hot refills of a running `serve --demo` through offline
PSBT signing (custody/cold_refill.py). Talks to the server's loopback demo endpoint with the token
from DIR/custody/admin.json, like `ringfence chain`."""

from __future__ import annotations

from pathlib import Path

import typer

cold_app = typer.Typer(name="cold", no_args_is_help=True, help=(
    "Refills of the BTC hot wallet from the cold or warm vault (P2WSH 2-of-3): build the PSBT with a quorum nominated for it, "
    "sign offline with `ringfence keys sign-psbt`, bring the signatures back.\n\n"
    "Example: ringfence cold refill --data ./ringfence-data --amount 1.5 --out refill.psbt"))

DATA_HELP = "Data directory of the running `ringfence serve --demo`."


@cold_app.command("refill", help=(
    "Ask the server for a refill PSBT of AMOUNT BTC from the cold (or --from warm) vault to the hot wallet; writes it to --out and "
    "prints the refill id, the nominated holders (fingerprints) and, in the demo, their key files.\n\n"
    "Example: ringfence cold refill --data ./ringfence-data --amount 1.5 --out refill.psbt"))
def refill(data: Path = typer.Option(Path("ringfence-data"), "--data", help=DATA_HELP),
           amount: str = typer.Option(..., help="BTC amount, e.g. 1.5"),
           source: str = typer.Option("cold", "--from", help="cold (default) or warm: which P2WSH vault pays"),
           out: Path = typer.Option(..., help="where to write the unsigned PSBT (base64)")) -> None:
    from ..chains.faucet_cli import _call

    doc = _call(data, "POST", "/v1/demo/chain/cold/refill", json={"amount": amount, "from": source})
    out.write_text(doc["psbt"] + "\n")
    typer.echo(f"refill {doc['id']}\ntxid {doc['txid']}\njournal_position {doc['journal_position']}")
    for fp, f in zip(doc["nomination"]["selected"], doc["nominated_holder_files"]):
        typer.echo(f"nominated {fp} {f}")


@cold_app.command("submit", help=(
    "Bring the holders' signed PSBTs back: the server merges them, finalises only if exactly the nominated holders "
    "signed, journals the transfer and broadcasts it; prints the txid.\n\n"
    "Example: ringfence cold submit --data ./ringfence-data --id r123-abcd --psbt refill.1.psbt --psbt refill.3.psbt"))
def submit(data: Path = typer.Option(Path("ringfence-data"), "--data", help=DATA_HELP),
           refill_id: str = typer.Option(..., "--id", help="the refill id printed by `ringfence cold refill`"),
           psbt: list[Path] = typer.Option(..., "--psbt", help="a signed PSBT file; repeat per holder")) -> None:
    from ..chains.faucet_cli import _call

    doc = _call(data, "POST", f"/v1/demo/chain/cold/refill/{refill_id}/submit",
                json={"psbts": [p.read_text().strip() for p in psbt]})
    typer.echo(f"{doc['txid']}\ntransfer {doc.get('transfer_id', '')} {doc['state']}")
