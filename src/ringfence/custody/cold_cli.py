"""`ringfence cold refill|submit`: cold/warm -> hot BTC refills of a running node through offline
PSBT signing (custody/cold_refill.py). Staff-signed requests to the node's admin API
(`POST /admin/v1/vault-refills`, api/custody_admin.py); the refill itself is the operator quorum's
signed decision, verified in the engine (`AuthorizeVaultRefillSigned`)."""

from __future__ import annotations

import secrets
from pathlib import Path

import typer

from ..staff.cli import APPROVALS, KEY, KEYS, SIGN_ONLY, TTL, URL, _keys, _quorum_submit, _run, err_console

cold_app = typer.Typer(name="cold", no_args_is_help=True, help=(
    "Refills of the BTC hot wallet from the cold or warm vault (P2WSH 2-of-3) on a live node: an operator quorum "
    "decides, the node builds the PSBT with a holders' quorum nominated for it, the holders sign offline with "
    "`ringfence keys sign-psbt`, the signatures come back with `cold submit`.\n\n"
    "Example: ringfence cold refill --amount 1.5 --out refill.psbt --key ada.key --key ben.key"))


@cold_app.command("refill", help=(
    "Decide a refill of AMOUNT BTC from the cold (or --from warm) vault to the hot wallet: each --key signs the "
    "decision (an operator quorum; others send --approval tokens made with --sign-only and the same --id), the node "
    "builds the PSBT and the engine checks the quorum. Writes the PSBT to --out and prints the refill id, the txid, "
    "the journal position and the nominated holders (fingerprints; in the demo, their key files).\n\n"
    "Example: ringfence cold refill --amount 1.5 --out refill.psbt --key ./data/demo-staff.json#ada "
    "--key ./data/demo-staff.json#ben"))
def refill(amount: str = typer.Option(..., help="BTC amount, e.g. 1.5"),
           source: str = typer.Option("cold", "--from", help="cold (default) or warm: which P2WSH vault pays"),
           out: Path = typer.Option(None, help="where to write the unsigned PSBT (base64); required unless --sign-only"),
           refill_id: str = typer.Option("", "--id", help="the refill's id, TIER-<letters/digits> (default: a new one); "
                                         "every approver signs the same id"),
           keys: list[str] = KEYS, approvals: list[str] = APPROVALS, sign_only: bool = SIGN_ONLY, ttl_s: int = TTL,
           url: str = URL) -> None:
    from ..money import parse_amount
    from .vault_cmds import refill_subject

    if source not in ("cold", "warm"):
        err_console.print("[bold red]error:[/] --from: cold or warm")
        raise typer.Exit(2)
    if sign_only and not refill_id:
        err_console.print("[bold red]error:[/] --id: an approval signs one refill id; agree on it with the submitter")
        raise typer.Exit(2)
    if not sign_only and out is None:
        err_console.print("[bold red]error:[/] --out: where the PSBT goes")
        raise typer.Exit(2)
    amount_minor = _run(lambda: parse_amount(amount, 8, field="--amount", allow_zero=False))
    refill_id = refill_id or f"{source}-{secrets.token_hex(6)}"
    subject = refill_subject(refill_id, "BTC", f"btc_{source}", "btc_hot", amount_minor)
    body = {"from": source, "amount": amount, "refill_id": refill_id}
    doc = _quorum_submit(_keys(keys), approvals, "vault.refill", subject, ttl_s, sign_only,
                         lambda c, toks: c.post("/vault-refills", {**body, "approvals": toks}), url, timeout_s=60)
    if doc is None:
        return
    out.write_text(doc["psbt"] + "\n")
    typer.echo(f"refill {doc['id']}\ntxid {doc['txid']}\njournal_position {doc['journal_position']}")
    for fp, f in zip(doc["nomination"]["selected"], doc["nominated_holder_files"]):
        typer.echo(f"nominated {fp} {f}")


@cold_app.command("submit", help=(
    "Bring the holders' signed PSBTs back: the node merges them, finalises only if exactly the nominated holders "
    "signed, journals the transfer (it must be the authorized refill) and broadcasts it; prints the txid.\n\n"
    "Example: ringfence cold submit --id cold-1a2b3c --psbt refill.1.psbt --psbt refill.3.psbt --key ada.key"))
def submit(refill_id: str = typer.Option(..., "--id", help="the refill id printed by `ringfence cold refill`"),
           psbt: list[Path] = typer.Option(..., "--psbt", help="a signed PSBT file; repeat per holder"),
           key: str = KEY, url: str = URL) -> None:
    from ..staff.console import AdminClient, load_key

    with AdminClient(url, _run(lambda: load_key(key)), timeout_s=60) as client:
        doc = _run(lambda: client.post(f"/vault-refills/{refill_id}/submit",
                                       {"psbts": [p.read_text().strip() for p in psbt]}))
    typer.echo(f"{doc['txid']}\ntransfer {doc.get('transfer_id', '')} {doc['state']}")


@cold_app.command("cancel", help=(
    "Drop a refill whose holders never signed (one operator's signed decision): it can never be signed "
    "afterwards and its coins may be offered to the next refill.\n\n"
    "Example: ringfence cold cancel --id cold-1a2b3c --reason 'holder 3 unreachable' --key ./data/demo-staff.json#ada"))
def cancel(refill_id: str = typer.Option(..., "--id", help="the refill id printed by `ringfence cold refill`"),
           reason: str = typer.Option(..., "--reason", help="why"), key: str = KEY, ttl_s: int = TTL,
           url: str = URL) -> None:
    import time

    from ..staff.console import AdminClient, load_key
    from ..staff.decisions import format_approval
    from .vault_cmds import cancel_refill_subject

    me = _run(lambda: load_key(key))
    decision = format_approval(me.sign("vault.refill.cancel", cancel_refill_subject(refill_id, reason),
                                       time.time_ns() + ttl_s * 10**9))
    with AdminClient(url, me, timeout_s=60) as client:
        doc = _run(lambda: client.post(f"/vault-refills/{refill_id}/cancel", {"reason": reason, "decision": decision}))
    typer.echo(f"refill {doc['id']} {doc['state']}")
