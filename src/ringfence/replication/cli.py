"""`ringfence replication promote|status`: the operator's side of leadership."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import typer

from ..cli_paths import fail, tty_console
from ..errors import ConfigError, RingfenceError

app = typer.Typer(help="Leadership of a replicated journal (NATS JetStream).\n\n"
                  "Example (prod mode, nats-config's operator login and CA): RINGFENCE_NATS_PASSWORD=\"$(cat "
                  "NATS-AUTH/rf-operator.password)\" ringfence replication status --nats "
                  "\"tls://rf-operator@HOST:4222/RF?tls_ca=NATS-AUTH/ca.pem\"\n\n"
                  "Example (dev mode): ringfence replication status --nats nats://127.0.0.1:4222/RF", no_args_is_help=True)
console = tty_console(width=140)


def _as_nats(err: RingfenceError) -> str:
    """The error, naming this command's --nats where the link names serve's --replicate."""
    return str(err).replace("--replicate: ", "--nats: ", 1)


@app.command("promote")
def promote_cmd(
    nats: str = typer.Option(..., "--nats", help="The stream: tls://USER@HOST:4222/STREAM?tls_ca=CA_FILE (the URL "
                      "`nats-config` prints; outside dev mode the only form accepted), or nats://HOST:4222/STREAM in dev mode."),
    node_id: str = typer.Option(..., "--node-id", help="The standby to make primary (its serve --node-id)."),
    keys: list[str] = typer.Option([], "--key", help="An operator's staff key: FILE or DIR/demo-staff.json#ID. Repeatable."),
    approvals: list[str] = typer.Option([], "--approval", help="Another operator's approval token (from --sign-only). Repeatable."),
    sign_only: bool = typer.Option(False, "--sign-only", help="Only print your approval token for the submitter."),
    epoch: int = typer.Option(0, "--epoch", min=0, help="The epoch to sign for (default: the next one above the verified leader record and the stream, read from NATS)."),
    ttl_s: int = typer.Option(600, "--ttl-s", min=10, max=86_400,
                              help="How long your signature may be submitted (and a request holding it taken by the standby)."),
    wait_s: int = typer.Option(60, "--wait-s", min=1, max=3600,
                               help="How long to wait for the standby's verdict; without one the request is withdrawn."),
    withdraw_: bool = typer.Option(False, "--withdraw", help="Only withdraw --node-id's pending promotion request (no --key)."),
    peers: Path | None = typer.Option(None, "--peers", envvar="RINGFENCE_REPLICATION_PEERS",
                                      help="The peers file (required): a --node-id not in it is refused at once (exit 2)."),
) -> None:
    """Make a standby the primary at the next fencing epoch: a staff quorum decision.

    Each operator signs the stream, the node and the epoch (action replication.promote); the standby verifies the
    signatures against the staff register of its own replica (the operator quorum, as for lifting a
    halt) and only then takes the leadership with a revision-checked KV update. It catches up with
    the stream, publishes a fence and starts serving; the old primary's next batch is refused by
    the stream and it stops acknowledging. An exchange without staff identities needs no --key in dev mode only:
    a standby outside it (RINGFENCE_MODE=prod) refuses every promotion until staff exist (`ringfence staff init`
    on the stopped primary before it runs replicated; docs/resilience.md, 'A node key alone opens no epoch').

    The peers file (--peers or RINGFENCE_REPLICATION_PEERS) is required: a --node-id that is not a node of it is
    refused at once (exit 2), instead of waiting --wait-s for a standby that will never answer. The leader record
    is read first: a --node-id that already leads is refused at once (exit 1).

    The request waits in NATS (KV key promote.NODE) for the standby; a standby takes it only while its approvals are
    valid (--ttl-s, 600 s by default). When the standby gives no verdict within --wait-s (not running, still catching
    up) or the command is interrupted, the request is withdrawn before it exits 1, so a standby started later does not
    act on it ("was withdrawn ... not acted on" in its log); a standby that took it meanwhile wins, and the command
    waits for its verdict instead. `--withdraw` withdraws a pending request by hand (exit 0 withdrawn or nothing
    pending, 1 the standby took it first).

    Exit status: 0 promoted (its fence is in the stream; or token printed), 1 refused (by the standby, the epoch, a
    fence not published, no verdict within --wait-s, NATS unreachable, the node already leads), 2 bad input (an option, the URL, a key or token, no --peers, a --node-id not in --peers).

    Example (prod mode, RINGFENCE_MODE=prod, which refuses nats:// and a NATS server without users; the operator's login and the CA `replication nats-config --out NATS-AUTH` wrote): RINGFENCE_NATS_PASSWORD="$(cat NATS-AUTH/rf-operator.password)" ringfence replication promote --nats "tls://rf-operator@HOST:4222/RF?tls_ca=NATS-AUTH/ca.pem" --peers ./peers.json --node-id b --key ./keys/ada.key --key ./keys/ben.key

    Example (dev mode, a demo primary's staff): ringfence replication promote --nats nats://127.0.0.1:4222/RF --peers ./peers.json --node-id b --key DIR/demo-staff.json#ada --key DIR/demo-staff.json#ben
    """
    from ..staff.console import load_key
    from ..staff.decisions import format_approval, parse_approval
    from ..nodekey import load_peers
    from . import (NatsLink, PROMOTE_ACTION, leader_of, missing_stream, next_epoch_seen, parse_target, promote,
                   promote_subject, verified_leader, withdraw)

    try:  # the input first: a bad option exits 2 before NATS is asked anything
        target = parse_target(nats, "--nats")
        signers = [load_key(k) for k in keys]
        tokens = [format_approval(parse_approval(t, f"--approval #{i + 1}")) for i, t in enumerate(approvals)]
        if peers is None:  # without it a mistyped --node-id waited --wait-s for a standby that never answers (R4)
            raise ConfigError("give the peers file (or RINGFENCE_REPLICATION_PEERS): --node-id must be one of its nodes",
                              field="--peers")
        trusted = load_peers(peers)
    except RingfenceError as err:
        fail(str(err), 2)
    if sign_only and not signers:
        fail("--sign-only needs your --key", 2)
    if node_id not in trusted:
        fail(f"--node-id: {node_id!r} is not a node of the peers file {peers} (its nodes: {', '.join(sorted(trusted))})", 2)
    if withdraw_:
        if signers or tokens or sign_only:
            fail("--withdraw takes no --key, --approval or --sign-only", 2)
        try:
            console.print(withdraw(target, node_id))
        except RingfenceError as err:
            fail(f"refused: {_as_nats(err)}", 1)
        return
    try:
        if not (sign_only and epoch):  # --sign-only with --epoch needs no NATS connection
            link = NatsLink(target)
            try:
                # a missing stream is left to promote() to name (asking must not create it)
                missing = missing_stream(link)
                current = None if missing else leader_of(link, link.ensure_stream_and_bucket())[0]
                # a record that does not verify against the peers file counts for nothing, least of all its
                # epoch: a forged one would make every promotion impossible (intruder review, F3)
                genuine = verified_leader(current, target.stream, trusted)
                if current is not None and genuine is None:
                    what = (f"is unreadable ({current.get('reason')})" if current.get("unreadable") else
                            f"(naming {str(current.get('node'))[:64]!r}) does not carry a valid signature of a node of "
                            "the peers file")
                    typer.echo(f"the leader record {what}: ignored; the promotion replaces it", err=True)
                if genuine is not None and genuine.get("node") == node_id:
                    fail(f"--node-id: {node_id} already leads at epoch {genuine.get('epoch')}: nothing to promote", 1)
                if not epoch and signers:
                    epoch = 1 if missing else next_epoch_seen(link, current, trusted)
            finally:
                link.close()
        expires = time.time_ns() + ttl_s * 10**9
        own = [format_approval(k.sign(PROMOTE_ACTION, promote_subject(target.stream, node_id, epoch), expires))
               for k in signers]
        if sign_only:
            for token in own:
                typer.echo(token)
            return
        record = promote(target, node_id, own + tokens, epoch=epoch or None, wait_s=wait_s, peers=trusted)
    except RingfenceError as err:
        fail(f"refused: {_as_nats(err)}", 1)
    previous = verified_leader(record["previous"], target.stream, trusted)
    was = f"{previous['node']} at epoch {previous['epoch']}" if previous else \
        "nobody" if record["previous"] is None else "an unverified record"
    by = ", ".join(record.get("approved_by") or []) or "an operator (no staff registered)"
    console.print(f"promoted {node_id} at epoch {record['epoch']} (was {was}); approved by {by}")


@app.command("status")
def status_cmd(
    nats: str = typer.Option(..., "--nats", help="The stream: tls://USER@HOST:4222/STREAM?tls_ca=CA_FILE (the URL "
                      "`nats-config` prints; outside dev mode the only form accepted), or nats://HOST:4222/STREAM in dev mode."),
    peers: Path | None = typer.Option(None, "--peers", envvar="RINGFENCE_REPLICATION_PEERS",
                                      help="The peers file: check the leader record's signature against it."),
) -> None:
    """Print the leader record, whether its signature verifies, and the stream's last sequence as JSON.

    `leader_signature` is "valid" (signed by the node it names, per --peers), "forged" (missing or
    wrong, or naming a node not in --peers: a node refuses it), "replayed" (genuine, but older than
    a verified record the bucket's history holds from before it: an old record written back;
    `newer_record` names the newest) or "unchecked" (no --peers). Renewals written after the record
    was read do not count: a healthy primary renewing its lease is never called replayed.

    Exit status: 0 printed (signature valid or unchecked), 1 the leader record's signature is forged or the record is
    replayed (the JSON is still printed), NATS unreachable (or it closed the connection) or no such stream there (it is not created), 2 bad input (the --nats URL, the --peers
    file).

    Example (prod mode): RINGFENCE_NATS_PASSWORD="$(cat NATS-AUTH/rf-operator.password)" ringfence replication status --nats "tls://rf-operator@HOST:4222/RF?tls_ca=NATS-AUTH/ca.pem" --peers ./peers.json

    Example (dev mode): ringfence replication status --nats nats://127.0.0.1:4222/RF --peers ./peers.json
    """
    import asyncio

    from nats.errors import Error as NatsError

    from ..errors import without_credentials
    from ..nodekey import load_peers
    from . import NatsLink, lease_key, leader_of, leader_signature_ok, missing_stream, newest_verified, parse_target

    try:
        target = parse_target(nats, "--nats")
        trusted = load_peers(peers) if peers is not None else {}
    except RingfenceError as err:
        fail(str(err), 2)
    try:
        link = NatsLink(target)
    except RingfenceError as err:
        fail(_as_nats(err), 1)
    try:
        missing = missing_stream(link)
        if missing:  # asking must not create it
            fail(f"--nats: {missing}", 1)
        try:
            kv = link.ensure_stream_and_bucket(check=False)  # read only: also shows a stream still to harden
        except RingfenceError as err:
            fail(_as_nats(err), 1)
        leader, revision = leader_of(link, kv)
        public = trusted.get(str((leader or {}).get("node")))
        # given --peers, a record naming a node not in it is forged too (intruder review of #21, I6a)
        verdict = "unchecked" if leader is None or peers is None else (
            "valid" if public is not None and leader_signature_ok(leader, link.target.stream, public) else "forged")
        # judged by the history up to the record's own revision: the renewals written since it was read
        # (every lease_ms/3) are the primary moving on, not a sign of a record written back
        newer = newest_verified(link, trusted, upto=revision) if verdict == "valid" and leader is not None else None
        if newer is not None and leader is not None and lease_key(newer) > lease_key(leader):
            # genuine, but older than a record the key held before it: written back (records never expire;
            # intruder review of session 16, F4)
            verdict = "replayed"
        info = link.call(link.js.stream_info(link.target.stream))
        out = {"leader": leader, "leader_signature": verdict, "revision": revision, "stream": link.target.stream,
               "messages": info.state.messages, "last_stream_seq": info.state.last_seq}
        if verdict == "replayed" and newer is not None:
            out["newer_record"] = {"node": newer.get("node"), "epoch": newer.get("epoch"), "renewal": newer.get("renewal")}
        typer.echo(json.dumps(out))
    except (NatsError, OSError, asyncio.TimeoutError, TimeoutError) as err:  # connected, then closed or silent
        fail(f"--nats: lost the connection to NATS at {target.display}: {type(err).__name__} "
             f"{without_credentials(str(err))[:200]}", 1)
    finally:
        link.close()
    if verdict in ("forged", "replayed"):  # a script checking the exit status must see it
        raise typer.Exit(1)


@app.command("node-key")
def node_key_cmd(
    data_dir: Path = typer.Option(..., "--data", "--data-dir", help="The node's serve --data folder (its key: DIR/node.key, "
                                  "made 0600 if missing). Made if missing as serve makes it: inside the current directory, or "
                                  "in a folder that exists; a mistyped path elsewhere is refused, never created."),
    node_id: str = typer.Option(..., "--node-id", help="The node's serve --node-id."),
) -> None:
    """Print this node's entry for the peers file: {"NODE_ID": "hex public key"}.

    Run it on each node, merge the lines into one JSON object (peers.json) and give every node
    `serve --peers peers.json` (or RINGFENCE_REPLICATION_PEERS): a standby applies only what a node
    in it signed. The private key never leaves DIR/node.key.

    Exit status: 0 printed, 2 bad input (--node-id; a --data that is a file, or whose parent folder does not exist).

    Example: ringfence replication node-key --data ./a --node-id a
    """
    import re

    from .. import nodekey

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", node_id):
        fail("--node-id: letters, digits, '.', '_', '-', at most 64", 2)
    if data_dir.exists() and not data_dir.is_dir():
        fail(f"--data: {data_dir} is a file, not a folder (give the node's serve --data folder)", 2)
    if not data_dir.exists():  # the rule serve --data follows: ./ringfence-data/serve in a fresh clone is made
        from ..cli_paths import refuse_missing_parent

        refuse_missing_parent(data_dir, "--data")
    try:
        key = nodekey.load_or_create(data_dir)
    except RingfenceError as err:
        fail(str(err), 2)
    except OSError as err:
        fail(f"--data: cannot write {data_dir / nodekey.KEY_FILE}: {err.strerror or err}", 2)
    typer.echo(json.dumps({node_id: nodekey.public_hex(key)}))


@app.command("harden")
def harden_cmd(nats: str = typer.Option(..., "--nats", help="The stream, as a NATS user allowed to "
                                  "update streams: tls://ADMIN@HOST:4222/STREAM?tls_ca=CA_FILE (nats://ADMIN@HOST:4222/STREAM in dev mode).")) -> None:
    """Turn off rollup headers, purges and message deletes on the stream and its leadership bucket.

    Streams made by an older ringfence allow them (a `Nats-Rollup` publish on the bucket erases the
    leader record); a node refuses to start on such a stream and names this command. Run it once as
    a NATS user allowed to update streams (none of the `nats-config` users is); nats-server keeps
    deny_delete and deny_purge once set.

    Example: RINGFENCE_NATS_PASSWORD=... ringfence replication harden --nats "tls://admin@HOST:4222/RF?tls_ca=CA_FILE"

    Example (dev mode): RINGFENCE_NATS_PASSWORD=... ringfence replication harden --nats nats://admin@127.0.0.1:4222/RF
    """
    from . import harden, parse_target

    try:
        changed = harden(parse_target(nats, "--nats"))
    except RingfenceError as err:
        fail(_as_nats(err), 1)
    except Exception as err:  # noqa: BLE001 - nats' errors (a permissions violation is a timeout): one line
        fail(f"cannot update the stream: {type(err).__name__} {err} (is this NATS user allowed to update streams?)", 1)
    for line in changed or ["already hardened: nothing to change"]:
        console.print(line)


@app.command("nats-config")
def nats_config_cmd(
    stream: str = typer.Option("RINGFENCE", "--stream", help="The stream the exchange replicates to."),
    out: Path = typer.Option(..., "--out", help="A new folder for nats-server.conf and one password file per service."),
    port: int = typer.Option(4222, "--port", min=1, max=65535, help="The port nats-server listens on."),
    store_dir: str = typer.Option("", "--store-dir", help="JetStream's storage folder (default: nats-server's): made 0700 when missing, else a "
                                 "folder of this user's no other user may write (as --out)."),
    listen: str = typer.Option("127.0.0.1", "--listen", help="The address nats-server listens on: 127.0.0.1 (this "
                               "machine only) or one other machines reach (0.0.0.0, 10.0.0.5). Without --tls-cert/--tls-key the certificate made here names it "
                               "(the machine's host name for 0.0.0.0) and 127.0.0.1, ::1, localhost; refused off loopback "
                               "with --no-tls."),
    tls_cert: Path | None = typer.Option(None, "--tls-cert", help="Your server certificate (PEM) instead of the one nats-config "
                                           "makes: the config's tls block names it; clients pin your CA."),
    tls_key: Path | None = typer.Option(None, "--tls-key", help="The server's private key (PEM), with --tls-cert."),
    no_tls: bool = typer.Option(False, "--no-tls", help="Development only: plain text on loopback, no certificates (outside "
                                "dev mode the nodes refuse to send a password without TLS)."),
    peers: Path | None = typer.Option(None, "--peers", envvar="RINGFENCE_REPLICATION_PEERS",
                                      help="The peers file (required): rf-operator may request promotions of its nodes only."),
) -> None:
    """Write a nats-server config with one user per service (rf-node, rf-operator, rf-monitor),
    each allowed only the subjects its work needs, and each service's password in its own 0600 file.

    The peers file (--peers or RINGFENCE_REPLICATION_PEERS, at most 64 nodes) names the nodes a promotion request may
    be written for: rf-operator (and rf-node, which answers them) may write the key promote.NODE of those nodes only,
    never of a made-up one. Run nats-config again (and restart nats-server) when the peers file changes.

    A node: RINGFENCE_NATS_PASSWORD=$(cat OUT/rf-node.password) ringfence serve --replicate
    "tls://rf-node@HOST:4222/STREAM?tls_ca=OUT/ca.pem&first_primary=NODE" (printed below). An operator promotes with the rf-operator user, which cannot
    publish a batch nor write the leader record. Each service reads only its own replies (inbox
    _INBOX_<user>), never another's.

    nats-server speaks TLS, on 127.0.0.1 too: whoever binds the port while nats-server is down or restarting
    would otherwise receive each reconnecting client's password. Without --tls-cert/--tls-key, nats-config makes a
    private CA and a certificate for the --listen address (and 127.0.0.1, ::1, localhost) into OUT: ca.pem,
    nats-server.pem, nats-server.key (0600; the CA's key is not kept). Clients pin that CA:
    tls://rf-node@HOST:PORT/STREAM?tls_ca=OUT/ca.pem (printed below). --no-tls (development only, loopback only)
    writes a plain-text config instead; outside dev mode (RINGFENCE_MODE=prod) the nodes, promote and status
    refuse to send a password over it.

    nats-server listens on 127.0.0.1 unless --listen says otherwise; an address other machines can
    reach is refused with --no-tls, as the passwords would cross the network in clear text.

    Exit status: 0 written, 2 bad input (the --stream name, an --out that exists, an --out or --store-dir
    another user owns or may write, --listen off loopback with --no-tls,
    a TLS file that cannot be read, a missing or bad --peers file).

    Example (its own CA and a certificate for 10.0.0.5): ringfence replication nats-config --stream RF --peers ./peers.json --out ./nats-auth --listen 10.0.0.5

    Example (your certificate; clients pin your CA): ringfence replication nats-config --stream RF --peers ./peers.json --out ./nats-auth --listen 10.0.0.5 --tls-cert srv.pem --tls-key srv.key
    """
    from ..nodekey import load_peers
    from urllib.parse import quote

    from .auth import MAX_NODES, client_host, is_loopback, write_nats_config

    try:
        if peers is None:
            raise ConfigError("give the peers file (or RINGFENCE_REPLICATION_PEERS): rf-operator may request promotions "
                              "of its nodes only", field="--peers")
        nodes = sorted(load_peers(peers))
    except RingfenceError as err:
        fail(str(err), 2)
    if len(nodes) > MAX_NODES:
        fail(f"--peers: {peers} names {len(nodes)} nodes; at most {MAX_NODES} (one promote.NODE grant each)", 2)
    if not stream.replace("-", "").replace("_", "").isalnum() or len(stream) > 64:
        fail("--stream: letters, digits, '-' and '_' (at most 64)", 2)
    if not listen or not all(c.isalnum() or c in ".:-" for c in listen):
        fail("--listen: an IP address or host name (127.0.0.1, 0.0.0.0, 10.0.0.5)", 2)
    tls = {}
    for option, path in (("--tls-cert", tls_cert), ("--tls-key", tls_key)):
        if path is not None:
            if not path.is_file() or not os.access(path, os.R_OK):
                fail(f"{option}: {path} is not a readable file", 2)
            tls[option] = str(path.resolve())
    try:
        files = write_nats_config(out, stream, nodes, port=port, store_dir=store_dir, host=listen,
                                  tls_cert=tls.get("--tls-cert", ""), tls_key=tls.get("--tls-key", ""), no_tls=no_tls)
    except FileExistsError as err:
        fail(f"--out: {err}", 2)
    except ValueError as err:
        fail(str(err), 2)
    where = "this machine only" if is_loopback(listen) else "other machines too"
    how = "plain text, DEVELOPMENT ONLY (prod nodes refuse it)" if no_tls else "TLS"
    console.print(f"wrote {files['config']} (start: nats-server -c {files['config']}; listens on {listen}:{port}, {where}, "
                  f"{how}; promotions of {', '.join(nodes)} only)")
    if "ca" in files:
        console.print(f"  TLS: private CA {files['ca']}, server certificate {files['cert']} and key {files['key']} (mode 0600)")
    host = client_host(listen)
    host = f"[{host}]" if ":" in host else host
    if no_tls:
        scheme, query = "nats", ""
    else:  # the CA clients pin: the one made here, or the operator's (given to the clients by them)
        scheme = "tls"
        query = f"?tls_ca={quote(str(files['ca'].resolve()), safe='/')}" if "ca" in files else "?tls_ca=CA"
    for service in ("rf-node", "rf-operator", "rf-monitor"):
        console.print(f"  {service}: password in {files[service]} (mode 0600); "
                      f"URL {scheme}://{service}@{host}:{port}/{stream}{query}", soft_wrap=True)  # unbroken: pasted


def flow_help(typer_app: typer.Typer) -> None:
    """Give each command its docstring with every paragraph on one line, for the terminal to wrap:
    typer's help keeps a docstring's line breaks, so at any other width sentences broke mid-way."""
    import inspect
    import re

    for info in typer_app.registered_commands:
        if info.help is None and info.callback is not None:
            doc = inspect.getdoc(info.callback) or ""
            info.help = "\n\n".join(re.sub(r"\s*\n\s*", " ", part) for part in doc.split("\n\n"))


flow_help(app)
