"""`ringfence keys ...`: key ceremonies as CLI commands (Typer + rich).

Secrets never come from argv (visible in `ps`): passphrases and the signer token are read from the
environment (RINGFENCE_SIGNER_PASSPHRASE, RINGFENCE_OPERATOR_PASSPHRASE, RINGFENCE_STORE_PASSPHRASE,
RINGFENCE_SIGNER_TOKEN) or prompted for with hidden input. Every ceremony is journaled (who, what, why)
in the key-operation log given by --log.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

app = typer.Typer(name="keys", help="Key ceremonies: threshold keys, signers, rotation, backup/restore.\n\n"
                  "Example: ringfence keys create --key-id btc-hot --threshold 2 --signer 1=http://127.0.0.1:7301 "
                  "--signer 2=http://127.0.0.1:7302 --signer 3=http://127.0.0.1:7303 --operator alice "
                  "--reason 'new hot wallet'", no_args_is_help=True)
console = Console(stderr=True)


SUITES = {"secp256k1": "FROST(secp256k1, SHA-256)", "ed25519": "FROST(Ed25519, SHA-512)"}
DEFAULT_LOG = Path("ringfence-data/keyops.jsonl")


def _secret(env: str, prompt: str, confirm: bool = False) -> str:
    v = os.environ.get(env)
    if v:
        return v
    return str(typer.prompt(prompt, hide_input=True, confirmation_prompt=confirm))


def _signers(specs: list[str]) -> dict[int, str]:
    out_: dict[int, str] = {}
    for s in specs:
        ident, sep, url = s.partition("=")
        if not sep or not (ident.isascii() and ident.isdigit()) or not url.startswith("http"):
            raise typer.BadParameter(f"{s!r}: expected ID=URL, e.g. 1=http://127.0.0.1:7301", param_hint="--signer")
        out_[int(ident)] = url.rstrip("/")
    return out_


def _ids(csv: str, name: str) -> list[int]:
    try:
        return sorted({int(x) for x in csv.split(",") if x.strip()})
    except ValueError:
        raise typer.BadParameter("expected comma-separated identifiers, e.g. 1,3", param_hint=name) from None


def _coordinator(signers: dict[int, str], operator: str) -> Any:
    from .coordinator import ThresholdCoordinator

    return ThresholdCoordinator(signers, _secret("RINGFENCE_SIGNER_TOKEN", "Signer API token"), actor=operator)


def _log(path: Path) -> Any:
    from .keylog import KeyOperationLog

    return KeyOperationLog(path)


def _show(pkg: Any, key_id: str) -> None:
    from .frost import taproot_output_key

    typer.echo(f"key_id: {key_id}")
    typer.echo(f"ciphersuite: {pkg.raw['ciphersuite']}")
    typer.echo(f"threshold: {pkg.raw['threshold']} of {len(pkg.raw['verifying_shares'])}")
    typer.echo(f"group_public_key: {pkg.raw['group_public_key']}")
    if pkg.raw["ciphersuite"].startswith("FROST(secp256k1"):
        from embit.script import Script

        spk = b"\x51\x20" + taproot_output_key(pkg.kp)
        typer.echo(f"taproot_output_key: {spk[2:].hex()}")
        typer.echo(f"taproot_address_regtest: {Script(spk).address(_regtest())}")


def _regtest() -> Any:
    from embit.networks import NETWORKS

    return NETWORKS["regtest"]


@app.command()
def create(key_id: str = typer.Option(..., help="New key id, e.g. btc-hot"),
           threshold: int = typer.Option(..., help="Signatures needed (t of n)"),
           signer: list[str] = typer.Option(..., help="ID=URL of each signer process (repeat)"),
           ciphersuite: str = typer.Option("secp256k1", help="secp256k1 or ed25519"),
           operator: str = typer.Option(..., help="Who runs this ceremony"),
           reason: str = typer.Option(..., help="Why (journaled)"),
           log: Path = typer.Option(DEFAULT_LOG, help="Key-operation log")) -> None:
    """Create a threshold key by distributed key generation: no machine ever holds the whole key.

    Example: ringfence keys create --key-id btc-hot --threshold 2 --signer 1=http://127.0.0.1:7301
    --signer 2=http://127.0.0.1:7302 --signer 3=http://127.0.0.1:7303 --operator alice --reason "new wallet"
    """
    if ciphersuite not in SUITES:
        raise typer.BadParameter("must be secp256k1 or ed25519", param_hint="--ciphersuite")
    s = _signers(signer)
    console.print(f"[bold]DKG[/bold] for {key_id}: {threshold}-of-{len(s)} over {sorted(s)} …")
    c = _coordinator(s, operator)
    pkg = c.create_key(key_id, SUITES[ciphersuite], threshold, sorted(s))
    _log(log).append(actor=operator, action="key_created", key_id=key_id, reason=reason, threshold=threshold,
                     signers=sorted(s), group_public_key=pkg.raw["group_public_key"])
    _show(pkg, key_id)


@app.command("add-signer")
def add_signer(key_id: str = typer.Option(...), signer: list[str] = typer.Option(..., help="ID=URL of current signers"),
               quorum: str = typer.Option(..., help="Current holders who re-deal, e.g. 1,3"),
               new_signer: list[str] = typer.Option(..., help="ID=URL of each signer to add"),
               threshold: int = typer.Option(..., help="Threshold after the change"),
               operator: str = typer.Option(...), reason: str = typer.Option(...),
               log: Path = typer.Option(DEFAULT_LOG)) -> None:
    """Add signers by resharing; the public key (and every address) stays the same.

    Example: ringfence keys add-signer --key-id btc-hot --signer 1=http://127.0.0.1:7301 ... --quorum 1,3
    --new-signer 4=http://127.0.0.1:7304 --threshold 3 --operator alice --reason "add Frankfurt signer"
    """
    cur, new = _signers(signer), _signers(new_signer)
    c = _coordinator(cur, operator)
    pkg = c.reshare(key_id, _ids(quorum, "--quorum"), {**cur, **new}, threshold, reason)
    _log(log).append(actor=operator, action="signer_added", key_id=key_id, reason=reason, added=sorted(new),
                     threshold=threshold, group_public_key=pkg.raw["group_public_key"])
    _show(pkg, key_id)


@app.command("remove-signer")
def remove_signer(key_id: str = typer.Option(...), signer: list[str] = typer.Option(..., help="ID=URL of current signers"),
                  remove: str = typer.Option(..., help="Identifiers to remove, e.g. 2"),
                  quorum: str = typer.Option(..., help="Remaining holders who re-deal, e.g. 1,3"),
                  threshold: int = typer.Option(..., help="Threshold after the change"),
                  operator: str = typer.Option(...), reason: str = typer.Option(...),
                  yes: bool = typer.Option(False, "--yes", help="Do not ask for confirmation"),
                  log: Path = typer.Option(DEFAULT_LOG)) -> None:
    """Remove signers by resharing to the rest; the removed signers' shares are deleted and useless.

    Example: ringfence keys remove-signer --key-id btc-hot --signer 1=... --signer 2=... --signer 3=...
    --remove 2 --quorum 1,3 --threshold 2 --operator alice --reason "signer 2 decommissioned"
    """
    cur = _signers(signer)
    gone = _ids(remove, "--remove")
    if set(_ids(quorum, "--quorum")) & set(gone):
        raise typer.BadParameter("a removed signer cannot be in the re-dealing quorum", param_hint="--quorum")
    if not yes:
        typer.confirm(f"Remove signers {gone} from {key_id}? Their shares will be deleted", abort=True)
    c = _coordinator(cur, operator)
    pkg = c.reshare(key_id, _ids(quorum, "--quorum"), {i: u for i, u in cur.items() if i not in gone}, threshold, reason)
    _log(log).append(actor=operator, action="signer_removed", key_id=key_id, reason=reason, removed=gone,
                     threshold=threshold, group_public_key=pkg.raw["group_public_key"])
    _show(pkg, key_id)


@app.command()
def rotate(key_id: str = typer.Option(...), signer: list[str] = typer.Option(..., help="ID=URL of every holder"),
           operator: str = typer.Option(...), reason: str = typer.Option(...),
           log: Path = typer.Option(DEFAULT_LOG)) -> None:
    """Rotate every share (proactive refresh): same public key, old shares stop working.

    Example: ringfence keys rotate --key-id btc-hot --signer 1=... --signer 2=... --signer 3=...
    --operator alice --reason "quarterly rotation"
    """
    c = _coordinator(_signers(signer), operator)
    pkg = c.refresh(key_id)
    _log(log).append(actor=operator, action="key_rotated", key_id=key_id, reason=reason,
                     group_public_key=pkg.raw["group_public_key"])
    _show(pkg, key_id)


@app.command("operator-keygen")
def operator_keygen(out_file: Path = typer.Option(..., "--out", help="Operator key file to create"),
                    operator: str = typer.Option(...), log: Path = typer.Option(DEFAULT_LOG)) -> None:
    """Create an operator's backup key (X25519), sealed with the operator's passphrase.

    Example: RINGFENCE_OPERATOR_PASSPHRASE=... ringfence keys operator-keygen --out alice.key --operator alice
    """
    from .ceremony import create_operator_key

    pub = create_operator_key(out_file, _secret("RINGFENCE_OPERATOR_PASSPHRASE", "New operator passphrase", True),
                              operator)
    _log(log).append(actor=operator, action="operator_key_created", key_id="operator", reason="backup key",
                     operator_public_key=pub.hex())
    typer.echo(f"operator_public_key: {pub.hex()}")


@app.command()
def backup(store: Path = typer.Option(..., help="This signer's share store directory"),
           key_id: str = typer.Option(...), operator_key: Path = typer.Option(..., help="Operator key file (public part used)"),
           out_file: Path = typer.Option(..., "--out"), operator: str = typer.Option(...),
           reason: str = typer.Option(...), log: Path = typer.Option(DEFAULT_LOG)) -> None:
    """Back up this signer's share, encrypted to an operator's key (run on the signer's machine).

    Example: RINGFENCE_SIGNER_PASSPHRASE=... ringfence keys backup --store ./signer-1 --key-id btc-hot
    --operator-key alice.key --out btc-hot-1.backup --operator alice --reason "offsite backup"
    """
    from ringfence.cli_paths import fail, require_input_file
    from .ceremony import backup_share, load_operator_public_key
    from .share_store import EncryptedShareStore

    if not store.is_dir():
        fail(f"--store: {store} is not an existing share store directory")
    require_input_file(operator_key, "--operator-key")
    st = EncryptedShareStore(store, _secret("RINGFENCE_SIGNER_PASSPHRASE", "Share store passphrase"))
    hdr = backup_share(st, key_id, load_operator_public_key(operator_key), out_file)
    _log(log).append(actor=operator, action="share_backed_up", key_id=key_id, reason=reason,
                     identifier=hdr["identifier"], operator_public_key=hdr["operator_public_key"], file=str(out_file))
    typer.echo(f"backup written: {out_file} (participant {hdr['identifier']})")


@app.command()
def restore(backup_file: Path = typer.Option(..., "--backup"), operator_key: Path = typer.Option(...),
            store: Path = typer.Option(..., help="Share store to restore into (created if missing)"),
            overwrite: bool = typer.Option(False), operator: str = typer.Option(...),
            reason: str = typer.Option(...), log: Path = typer.Option(DEFAULT_LOG)) -> None:
    """Restore a share from a backup into a signer's encrypted store.

    Example: RINGFENCE_OPERATOR_PASSPHRASE=... RINGFENCE_STORE_PASSPHRASE=... ringfence keys restore
    --backup btc-hot-1.backup --operator-key alice.key --store ./signer-1-new --operator alice --reason "disk failed"
    """
    from ringfence.cli_paths import require_input_file
    from .ceremony import load_operator_private_key, restore_share
    from .share_store import EncryptedShareStore

    require_input_file(backup_file, "--backup")
    require_input_file(operator_key, "--operator-key")
    opk = load_operator_private_key(operator_key, _secret("RINGFENCE_OPERATOR_PASSPHRASE", "Operator passphrase"))
    st = EncryptedShareStore(store, _secret("RINGFENCE_STORE_PASSPHRASE", "Share store passphrase", True), create=True)
    kp = restore_share(backup_file, opk, st, overwrite=overwrite)
    key_id = st.key_ids()[0] if len(st.key_ids()) == 1 else "(see store)"
    _log(log).append(actor=operator, action="share_restored", key_id=key_id, reason=reason, identifier=kp.identifier,
                     store=str(store))
    typer.echo(f"restored participant {kp.identifier} into {store}")


@app.command()
def show(key_id: str = typer.Option(...), signer: list[str] = typer.Option(..., help="ID=URL of a signer")) -> None:
    """Show a key's public data: group key, threshold, Taproot output key and address.

    Example: ringfence keys show --key-id btc-hot --signer 1=http://127.0.0.1:7301
    """
    c = _coordinator(_signers(signer), "viewer")
    _show(c.key(key_id), key_id)


@app.command("verify-log")
def verify_log(log: Path = typer.Option(DEFAULT_LOG, help="The key-operation log to check; it must exist.")) -> None:
    """Check the key-operation log's hash chain. Exit 1 when it is broken, 2 when the file is missing.

    Example: ringfence keys verify-log --log ringfence-data/keyops.jsonl
    """
    from ringfence.cli_paths import fail, require_input_file
    from ringfence.errors import RingfenceError

    require_input_file(log, "--log")  # a missing log is an error, not "0 entries": it may have been deleted
    try:
        n = _log(log).verify()
    except RingfenceError as err:
        fail(f"--log: {err}", 1)
    typer.echo(f"key-operation log ok: {n} entries")


signer_app = typer.Typer(name="signer", no_args_is_help=True, help=(
    "Run a FROST signer process (one share of a threshold key, its own encrypted share store).\n\n"
    "Example: RINGFENCE_SIGNER_PASSPHRASE=... RINGFENCE_SIGNER_TOKEN=... ringfence signer run --store ./s1 "
    "--identifier 1 --port 7301 --create --coordinator-cert coordinator.crt"))


@signer_app.command("run", help=(
    "Serve one signer over mutually authenticated TLS 1.3 (pinned Ed25519 certificates): only the coordinator "
    "whose certificate is --coordinator-cert may connect; this signer's own certificate is STORE/tls.crt (created "
    "on first start; give it to the coordinator to pin, e.g. RINGFENCE_BTC_SIGNER_CERTS of `serve`). The passphrase "
    "and bearer token come from RINGFENCE_SIGNER_PASSPHRASE and RINGFENCE_SIGNER_TOKEN, never argv.\n\n"
    "Example: ringfence signer run --store ./s1 --identifier 1 --port 7301 --create "
    "--coordinator-cert ./data/signers/coordinator/tls.crt --peer-certs ./s1-peers"))
def signer_run(store: Path = typer.Option(..., help="share store directory"),
               identifier: int = typer.Option(..., help="this signer's FROST identifier (1..255)"),
               port: int = typer.Option(..., help="TCP port"),
               name: str = typer.Option("", help="name in logs (default signer-ID)"),
               host: str = typer.Option("127.0.0.1", help="address to listen on; a wildcard or loopback address holds "
                                        "the port on both address families (0.0.0.0 and [::], 127.0.0.1 and [::1])"),
               create: bool = typer.Option(False, help="create the share store if it does not exist"),
               coordinator_cert: Path = typer.Option(None, help="the coordinator's pinned certificate (PEM); "
                                                     "without it: plain HTTP on loopback (tests only)"),
               policy_public_key: str = typer.Option("", help="hex Ed25519 key: sign only with its attestations"),
               peer_certs: Path = typer.Option(None, help="directory of the other signers' pinned certificates "
                                               "(signer-N.crt, read at every ceremony): shares are sealed only to "
                                               "transport keys a pinned peer signed")) -> None:
    from .signer_server import main

    argv = ["--store", str(store), "--identifier", str(identifier), "--name", name or f"signer-{identifier}",
            "--port", str(port), "--host", host]
    if create:
        argv.append("--create")
    if coordinator_cert is not None:
        argv += ["--coordinator-cert", str(coordinator_cert)]
    if policy_public_key:
        argv += ["--policy-public-key", policy_public_key]
    if peer_certs is not None:
        argv += ["--peer-certs", str(peer_certs)]
    main(argv)


@app.command("sign-psbt", help=(
    "Sign a PSBT offline with one cold key holder's BIP-32 root key (no network): adds this holder's "
    "signatures to every input it has a key in and writes the PSBT back out, for the next holder or the "
    "wallet. The key comes from RINGFENCE_COLD_XPRV or the file --key (one tprv/xprv line, mode 0600), never "
    "argv. Refuses a PSBT whose outputs exceed its inputs, and says when this key signs nothing.\n\n"
    "Example: ringfence keys sign-psbt --psbt refill.psbt --key holder-2.xprv --out refill.2.psbt"))
def sign_psbt_cmd(psbt: Path = typer.Option(..., help="the PSBT file (base64)"),
                  out: Path = typer.Option(..., help="where to write the signed PSBT (base64)"),
                  key: Path = typer.Option(None, help="file holding this holder's root tprv/xprv")) -> None:
    from ..chains.bitcoin.signer import sign_psbt
    from ..errors import ValidationError

    xprv = os.environ.get("RINGFENCE_COLD_XPRV", "").strip()
    if not xprv:
        if key is None:
            raise typer.BadParameter("give --key FILE or set RINGFENCE_COLD_XPRV", param_hint="--key")
        xprv = key.read_text().strip()
    try:
        signed, added = sign_psbt(psbt.read_text().strip(), xprv)
    except ValidationError as exc:
        console.print(f"[red]refused[/]: {exc}")
        raise typer.Exit(2) from None
    if added == 0:
        console.print("[red]refused[/]: this key has no key in the PSBT's inputs (nothing signed)")
        raise typer.Exit(2)
    out.write_text(signed + "\n")
    typer.echo(f"{added} signature(s) added; wrote {out}")


@signer_app.command("coordinator-cert", help=(
    "Create (once) and print the coordinator certificate of a `serve` data directory: the certificate each "
    "signer pins with `ringfence signer run --coordinator-cert`. Prints its path and SHA-256 fingerprint.\n\n"
    "Example: ringfence signer coordinator-cert --data ./ringfence-data"))
def signer_coordinator_cert(data: Path = typer.Option(Path("ringfence-data"), "--data", help="serve's data directory")) -> None:
    from ..custody.btc_signing import coordinator_identity
    from .tls import fingerprint

    identity = coordinator_identity(data)
    typer.echo(f"{identity.cert}\nsha256 {fingerprint(identity.cert)}")


@app.command("reshare", help=(
    "Change the signer set or threshold of a live node's threshold key (the BTC hot wallet, btc-hot) without moving "
    "funds: an operator quorum signs the new set (each signer's identifier and pinned certificate fingerprint) and "
    "threshold; the engine checks the decision (ReshareSignersSigned); the node then has a quorum of today's holders "
    "re-deal the key, removed signers delete their share, and the old shares stop combining with the new ones. The "
    "group key and the address stay. --add N alone: a node that runs its signers starts signer N; --add N=URL with "
    "--cert N=PATH: a signer run elsewhere (`ringfence signer run`). Others approve with --sign-only (same flags).\n\n"
    "Example: ringfence keys reshare --key-id btc-hot --add 4 --remove 3 --reason 'signer 3 host retired' "
    "--key ./data/demo-staff.json#ada --key ./data/demo-staff.json#ben"))
def reshare_live(key_id: str = typer.Option("btc-hot", "--key-id", help="the threshold key"),
                 add: list[str] = typer.Option([], "--add", help="N or N=https://HOST:PORT: a signer to add. Repeatable."),
                 cert: list[str] = typer.Option([], "--cert", help="N=PATH: the added signer's certificate (PEM). Repeatable."),
                 remove: list[int] = typer.Option([], "--remove", help="a signer to remove. Repeatable."),
                 threshold: int = typer.Option(0, "--threshold", help="the new threshold (default: today's)"),
                 reason: str = typer.Option(..., "--reason", help="why; every approver signs the same text"),
                 generation: int = typer.Option(-1, "--generation", help="the generation this replaces (default: the "
                                                "node's current one; approvers pin it with the submitter)"),
                 keys: list[str] = typer.Option(..., "--key", help="staff key file(s): FILE or DIR/demo-staff.json#ID; "
                                                "the first one sends the request. Repeatable."),
                 approvals: list[str] = typer.Option([], "--approval", help="another operator's token (from --sign-only)."),
                 sign_only: bool = typer.Option(False, "--sign-only", help="only print your approval token"),
                 ttl_s: int = typer.Option(600, "--ttl-s", min=10, max=86_400, help="how long your signature may be submitted"),
                 url: str = typer.Option(os.environ.get("RINGFENCE_URL", "http://127.0.0.1:8000"), "--url",
                                         help="the running server")) -> None:
    from ..custody.vault_cmds import reshare_subject
    from ..staff.cli import _keys, _quorum_submit, _run, err_console
    from ..staff.console import AdminClient
    from .tls import fingerprint

    certs: dict[int, Path] = {}
    for spec in cert:
        ident, sep, path = spec.partition("=")
        if not sep or not (ident.isascii() and ident.isdigit()) or not Path(path).is_file():
            raise typer.BadParameter(f"{spec!r}: expected N=PATH of a PEM certificate", param_hint="--cert")
        certs[int(ident)] = Path(path)
    added: dict[int, str] = {}
    for spec in add:
        ident, _, where = spec.partition("=")
        if not (ident.isascii() and ident.isdigit()) or not 1 <= int(ident) <= 255:
            raise typer.BadParameter(f"{spec!r}: expected N or N=https://HOST:PORT", param_hint="--add")
        added[int(ident)] = where
    signing = _keys(keys)
    with AdminClient(url, signing[0], timeout_s=120) as client:  # starting a signer takes seconds
        view = _run(lambda: client.get(f"/keys/{key_id}"))
        known = {s["id"]: s for s in view["signers"]}
        holders = sorted(s["id"] for s in view["signers"] if s["holder"])
        absent = sorted(set(remove) - set(holders))
        if absent:  # before any signer starts or anything is journaled
            raise typer.BadParameter(f"signer {', '.join(map(str, absent))} holds no share of {key_id}; its signers are "
                                     f"{', '.join(map(str, holders))}", param_hint="--remove")
        both = sorted(set(remove) & set(added))
        if both:
            raise typer.BadParameter(f"signer {', '.join(map(str, both))} is both added and removed",
                                     param_hint="--remove")
        entries: dict[int, dict[str, object]] = {}
        for s in view["signers"]:
            if s["holder"] and s["id"] not in remove:
                entries[s["id"]] = {"id": s["id"], "fp": s["fingerprint"]}
        for sid, where in added.items():
            if sid in certs:
                entries[sid] = {"id": sid, "url": where, "certificate": certs[sid].read_text(),
                                "fp": fingerprint(certs[sid])}
            elif sid in known and known[sid]["fingerprint"]:
                entries[sid] = {"id": sid, "fp": known[sid]["fingerprint"]}
            else:  # the node runs its signers: it starts this one (holding no share) and answers its pin
                started = _run(lambda i=sid: client.post(f"/keys/{key_id}/signers", {"id": i}))  # type: ignore[misc]
                entries[sid] = {"id": sid, "fp": started["fingerprint"]}
    if any(not e["fp"] for e in entries.values()):
        err_console.print("[bold red]error:[/] a signer without a pinned certificate: give --cert N=PATH")
        raise typer.Exit(2)
    new_threshold = threshold or int(view["threshold"])
    gen = view["generation"] if generation < 0 else generation
    pairs = [[i, str(e["fp"])] for i, e in sorted(entries.items())]
    subject = reshare_subject(key_id, gen, pairs, new_threshold, reason)
    body = {"generation": gen, "threshold": new_threshold, "reason": reason,
            "signers": [{k: v for k, v in e.items() if k != "fp" and v} for _, e in sorted(entries.items())],
            **({"remove": sorted(set(remove))} if remove else {})}
    result = _quorum_submit(signing, approvals, "keys.reshare", subject, ttl_s, sign_only,
                            lambda c, toks: c.post(f"/keys/{key_id}/reshare", {**body, "approvals": toks}), url,
                            timeout_s=180)  # the ceremony waits for the chain lock and runs three rounds
    if result is None:
        return
    typer.echo(f"reshared {key_id} generation {result['generation']}: signers "
               f"{','.join(str(s['id']) for s in result['signers'] if s['holder'])} threshold {result['threshold']}; "
               f"retired {','.join(map(str, result['retired'])) or 'none'}; address {result['address']} (unchanged)")
