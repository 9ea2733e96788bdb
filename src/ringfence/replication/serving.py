"""How `ringfence serve --replicate URL` and `--standby URL` use the replication package.

Kept apart from api/serve.py so that file only calls `before_build` and `after_build`.
A standby follows the stream into `DIR/engine` until an operator promotes it, then serves as the
replicating primary on the same folder. It keeps the API read models warm as it follows (each
batch it applies is fed to them), so at promotion the exchange takes over its engine and read
models as they are instead of replaying the journal.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import ConfigError
from . import STAFFLESS_DEV, Follower, Replicator, console_time, has_staff_quorum, parse_target

__all__ = ["before_build", "after_build"]


class _SayWarnings(logging.Handler):
    """Replication's warnings ("nats: ...", "replication: NATS at ... requires no credentials") as lines of
    serve's own output, in order with the others. They went to stderr (logging's last resort) while
    serve's lines go to stdout, so a capture of the two streams apart (or stdout alone) showed them out
    of order, one glued to a progress line: `...since the last line)replication: NATS at ...`."""

    def __init__(self, say: Callable[[str], None]) -> None:
        super().__init__(logging.WARNING)
        self.say = say

    def emit(self, record: logging.LogRecord) -> None:
        from rich.markup import escape

        try:
            self.say(escape(record.getMessage()))
        except Exception:  # noqa: BLE001 - a handler never raises into the code that logged
            self.handleError(record)


def say_replication_warnings(say: Callable[[str], None]) -> None:
    """For the `serve` process: replication's warnings through `say` from now on (once per process)."""
    logger = logging.getLogger("ringfence.replication")
    if not any(isinstance(h, _SayWarnings) for h in logger.handlers):
        logger.addHandler(_SayWarnings(say))


def before_build(data: Path, replicate: str | None, standby: str | None, node_id: str | None, port: int, demo: bool,
                 say: Callable[[str], None], host: str = "127.0.0.1", *,
                 peers: Path | None = None, mode: str = "dev", listeners: Sequence[socket.socket] = ()
                 ) -> tuple[Replicator | None, Any]:
    """Validate the options; as a standby, follow the stream until promoted; then, as the primary,
    connect and claim leadership (refused at once when another node leads) before anything opens.

    Returns the replicator and, for a promoted standby, its `WarmStart` (api/service.py): the
    engine and the API read models it kept current batch by batch as it followed, which the
    exchange takes over instead of replaying the journal (None otherwise).

    `mode` is the node's settings' (RINGFENCE_MODE): outside dev mode a promotion without the operators'
    staff quorum is never granted (`grant_refusal`, intruder review of session 22, B4).

    `listeners` are serve's listening sockets on host:port (listening.py `listen_on`), which a standby requires: its
    status page serves on them while it follows, and the promoted exchange then serves on the same sockets, so the
    port is never free between the two (intruder review of #21, F1)."""
    check_options(replicate, standby, demo, None, "dev")  # (node_trust checks --peers, with the node's own entry)
    ident = node_id or f"{socket.gethostname()}-{port}"
    if not (replicate or standby):
        return None, None
    target = parse_target(replicate or standby or "", "--replicate" if replicate else "--standby")
    key, trusted = node_trust(data, ident, peers, say, standby=bool(standby))
    staffless_ok = mode == "dev"
    store = os.environ.get("RINGFENCE_DATABASE_URL", "") or f"sqlite:///{data / 'identity.sqlite3'}"
    if store.startswith("sqlite"):  # serve's default: the embedded store in DIR (api/serve.py build)
        say(f"[yellow]warning:[/] the identity store (users, API keys, sessions) is SQLite on this machine "
            f"({store.split(':///', 1)[-1]}): it is not replicated with the journal, so a node on another machine "
            "would not have them after a failover; set RINGFENCE_DATABASE_URL=postgresql+psycopg://USER@HOST:5432/DB "
            "(one database every node reaches) on each node (docs/resilience.md)")
    if standby:
        if not listeners:
            raise ValueError("a standby serves its status page on serve's listening sockets (listening.py listen_on)")
        stop = threading.Event()
        stopped_by: list[str] = []
        previous = _stop_on_signals(stop, stopped_by)
        try:
            return _follow(target, data, ident, key, trusted, staffless_ok, peers, listeners, host, port, say, stop,
                           stopped_by)
        finally:
            _restore(previous)  # before uvicorn starts (it installs its own) or the process exits
    return Replicator(target, ident, data / "engine", key=key, peers=trusted, staffless_ok=staffless_ok), None


def _stop_on_signals(stop: threading.Event, stopped_by: list[str]) -> dict[int, Any]:
    """While it follows, a standby stops on SIGINT and SIGTERM: a shell without job control starts a background
    job with SIGINT ignored, and nothing else would stop it (uvicorn installs its handlers only once it serves):
    an operator's Ctrl-C or `kill -INT` seemed to stop it while it still took a promotion (a new user's check of
    #21). The handler only sets `stop`: the follower returns between two batches, nothing half-applied.
    Returns the handlers it replaced (none outside the main thread, where signal.signal cannot be called)."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def on_signal(signum: int, _frame: Any) -> None:
        stopped_by.append(signal.Signals(signum).name)
        stop.set()

    return {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}


def _restore(previous: dict[int, Any]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def _follow(target: Any, data: Path, ident: str, key: Any, trusted: Any, staffless_ok: bool, peers: Path | None,
            listeners: Sequence[socket.socket], host: str, port: int, say: Callable[[str], None], stop: threading.Event,
            stopped_by: list[str]) -> tuple[Replicator | None, Any]:
    """The standby's phase of `before_build`: follow until promoted (then hand over), or until `stop` (exit 0)."""
    from ..api.service import ReadModels, WarmStart

    _import_the_server()  # now, not after the promotion: part of a quick take-over (RTO)
    models = ReadModels()
    follower = Follower(target, data / "engine", ident, on_progress=say, on_batch=models.feed, key=key, peers=trusted,
                        staffless_ok=staffless_ok)
    status = StandbyStatus(follower, listeners, models)
    say(f"standby {ident}: following stream {target.stream} at {target.display}; status on "
        f"http://{host}:{port}/v1/standby; promote with: {promote_hint(target, peers, ident, keys=not staffless_ok or has_staff_quorum(follower.engine))}")
    try:
        epoch = follower.follow_until_promoted(stop)
        if stop.is_set():
            # a stopped standby closes its journal and lock cleanly (exit 0), as a stopped server does; stopped
            # after its fence (the signal came while it took a promotion), it serves no more than asked either
            say(f"{console_time()} standby {ident}: stopped ({', '.join(dict.fromkeys(stopped_by)) or 'signal'}) at "
                f"sequence {follower.engine.last_seq}, journal closed; it follows the stream no more and takes no "
                f"promotion" + (f" (it had taken the one to epoch {epoch}: the stream has no primary now)" if epoch
                                else ""))
            raise SystemExit(0)
        engine, position, lock = follower.hand_over()
        lock.relabel(f"ringfence serve (node {ident}, the primary since its promotion; started as --standby)")
    finally:
        status.close()  # stops the status page; the port stays listening for the exchange that serves next
        follower.close()
    say(f"{console_time()} standby {ident}: promoted: serving with the engine and API read models kept warm at sequence "
        f"{engine.last_seq} (no journal replay)")
    try:
        return (Replicator(target, ident, data / "engine", key=key, peers=trusted, staffless_ok=staffless_ok),
                WarmStart(engine, position, lock, models))
    except BaseException:
        lock.release()
        raise


def promote_hint(target: Any, peers: Path | None, ident: str, *, keys: bool = False) -> str:
    """The command an operator pastes to promote this standby: the stream's URL without this node's
    credentials (a masked password cannot be pasted, and the node's NATS user may not promote), with an
    operator's user in their place and its password read from RINGFENCE_NATS_PASSWORD. `keys` (outside dev
    mode, or staff in the replica): `--key KEY --key KEY` too, one per operator of the quorum (without them a
    promotion is refused: a new user's check of #21)."""
    hint = _promote_hint(target, peers, ident, "--key KEY --key KEY " if keys else "")
    if keys:
        hint += (" (KEY: an operator's staff key file, or DIR/demo-staff.json#ID; one --key per operator of the staff "
                 "quorum, or --approval TOKEN from `promote --sign-only` of each)")
    return hint


def _promote_hint(target: Any, peers: Path | None, ident: str, keys: str) -> str:
    from urllib.parse import quote, unquote, urlparse

    parsed = urlparse(target.servers)
    where = parsed.netloc.rsplit("@", 1)[-1]  # host:port, without any user or password
    query = f"?tls_ca={quote(target.tls_ca, safe='/')}" if target.tls_ca else ""
    command = f"--peers {peers or 'PEERS.json'} {keys}--node-id {ident}"
    if not parsed.username:
        return f"ringfence replication promote --nats {parsed.scheme}://{where}/{target.stream}{query} {command}"
    user = unquote(parsed.username)
    from . import login_name

    if login_name(target.servers) == "***":  # a token (nats://TOKEN@host): never printed, as the URL is shown masked
        return (f"ringfence replication promote --nats {parsed.scheme}://***@{where}/{target.stream}{query} {command} "
                "(***: a token allowed to write promote." + ident + ", such as the one this standby was given; it is not "
                "printed here)")
    if user != "rf-node":  # not nats-config's node user: the same login, its password from the environment
        return (f"RINGFENCE_NATS_PASSWORD=... ringfence replication promote --nats {parsed.scheme}://{quote(user, safe='')}@"
                f"{where}/{target.stream}{query} {command} (a NATS login allowed to write promote.{ident}; its password "
                "in RINGFENCE_NATS_PASSWORD, never in the URL)")
    return (f"RINGFENCE_NATS_PASSWORD=\"$(cat NATS-AUTH/rf-operator.password)\" ringfence replication promote --nats "
            f"{parsed.scheme}://rf-operator@{where}/{target.stream}{query} {command} (an operator's NATS login: this "
            "node's rf-node may not promote; NATS-AUTH is the folder `ringfence replication nats-config --out` wrote)")


#: `serve --replicate` outside dev mode on a node without staff operators (intruder review of session 22, B4)
STAFFLESS_START = ("this node has no staff operators registered, and outside dev mode (RINGFENCE_MODE=prod) a replicated "
                   "exchange needs them: every standby refuses a promotion without the operators' quorum (else any "
                   "peer's node key would open an epoch). Nothing was published or acknowledged. Register them on this "
                   "stopped node first: ringfence staff init --data {data} --member ID:operator --member ID:operator "
                   "--out-dir KEYS (at least 2 operators; hand each key file to its owner), then start it again "
                   "(docs/resilience.md, 'A node key alone opens no epoch')")

#: a replicated node outside dev mode without --peers
NEEDS_PEERS = ("a replicated node outside dev mode needs a peers file: the node id -> public key of every node "
               "(`ringfence replication node-key`), so a standby applies only batches they signed")


def check_options(replicate: str | None, standby: str | None, demo: bool, peers: Path | None, mode: str) -> None:
    """The replication options alone, before anything is made or connected (`before_build` checks them again):
    raises the first of `option_problems`."""
    problems = option_problems(replicate, standby, demo, peers, mode)
    if problems:
        raise problems[0]


def option_problems(replicate: str | None, standby: str | None, demo: bool, peers: Path | None, mode: str
                    ) -> list[ConfigError]:
    """Every problem of the replication options, before anything is made or connected (`serve` names them all at
    once before it creates its data folder): one role, no --demo for a standby, the URL, and outside dev mode a
    peers file that reads and first_primary= in the URL."""
    from .. import nodekey

    if replicate and standby:
        return [ConfigError("give --replicate (primary) or --standby (follower), not both", field="--standby")]
    if standby and demo:
        return [ConfigError("a standby takes its state from the primary's stream; --demo is for a primary", field="--demo")]
    if not (replicate or standby):
        return []
    option = "--replicate" if replicate else "--standby"
    try:
        target = parse_target(replicate or standby or "", option)
    except ConfigError as err:
        return [err]
    problems: list[ConfigError] = []
    if peers is None and mode != "dev":
        problems.append(ConfigError(NEEDS_PEERS, field="--peers"))
    if mode != "dev" and not target.first_primary:
        # the default (the peers file's first node) hangs on the order of a JSON object's keys: a rewritten
        # file would name another node, and every standby would refuse the stream's opener (review of #21, 4)
        problems.append(ConfigError(f"a replicated node outside dev mode needs first_primary=NODE in its {option} URL: "
                                    "the node that opens the stream, the same on every node (e.g. "
                                    f"{option} 'tls://rf-node@HOST:4222/STREAM?tls_ca=CA&first_primary=a'); dev mode defaults to the first "
                                    "node of the peers file", field="first_primary"))
    if peers is not None and not problems:
        from . import check_first_primary

        try:
            check_first_primary(target, nodekey.load_peers(peers), option)
        except ConfigError as err:
            problems.append(err)
    if mode != "dev":
        problems += nats_login_problems(target)
    return problems


def nats_login_problems(target: Any) -> list[ConfigError]:
    """Outside dev mode, what the NATS URL's login lacks, told before `serve` connects (so with the settings' problems,
    not at the next start: a new user's run of #21): tls:// with a pinned CA (`check_transport`), a user named in the
    URL (a server without users is refused), and the password of one of nats-config's users (RINGFENCE_NATS_PASSWORD)."""
    from urllib.parse import unquote, urlparse

    from . import check_transport
    from .auth import SERVICES

    problems: list[ConfigError] = []
    try:
        check_transport(target)
    except ConfigError as err:
        problems.append(err)
    parsed = urlparse(target.servers)
    user = unquote(parsed.username or "")
    if not user:
        problems.append(ConfigError(
            f"the URL names no NATS user, and outside dev mode a NATS server without users is refused: name the node's "
            f"user, e.g. {target.option} tls://rf-node@HOST:PORT/{target.stream}?tls_ca=CA, with its "
            "password in RINGFENCE_NATS_PASSWORD (`ringfence replication nats-config` writes both)", field=target.option))
    elif parsed.password is None and user in SERVICES:
        problems.append(ConfigError(
            f"user {user} is given no password: set RINGFENCE_NATS_PASSWORD to its password (the file {user}.password "
            "that `ringfence replication nats-config` wrote)", field="RINGFENCE_NATS_PASSWORD"))
    return problems


def node_trust(data: Path, ident: str, peers: Path | None, say: Callable[[str], None], *,
               standby: bool = False) -> tuple[Any, Any]:
    """This node's key (DATA_DIR/node.key, made on first start) and the peers it trusts.

    A standby always requires --peers: one that checks no signature applies whatever anyone with
    the NATS credential publishes (intruder review of #21, I5; dev mode is the default). A primary
    requires it in prod mode (RINGFENCE_MODE=prod); in dev mode without it, it still signs
    everything and its leader record, and says loudly once that nothing is checked."""
    import os

    from .. import nodekey

    if peers is None and standby:
        key = nodekey.load_or_create(data)
        raise ConfigError("a standby needs a peers file: the node id -> public key of every node (`ringfence replication "
                          "node-key`); it applies only batches they signed, and takes over a lease only from a leader "
                          f"record they signed (this node's entry: {{\"{ident}\": \"{nodekey.public_hex(key)}\"}})",
                          field="--peers")
    if peers is None and os.environ.get("RINGFENCE_MODE", "dev") != "dev":
        raise ConfigError(NEEDS_PEERS, field="--peers")
    where = data / nodekey.KEY_FILE
    if peers is not None and not os.path.lexists(where) and ident in nodekey.load_peers(peers):
        # a new folder for a node the peers file knows (a deposed primary rejoining on a fresh --data): a key made
        # here could never be that node's, and would stay behind unusable (new-user review of #21, session 23)
        raise ConfigError(f"the peers file names node {ident!r} by its public key, and {where} does not exist (no "
                          f"key was made: a new one could not be that node's): {rekey_remedy(ident, data)}", field="--peers")
    key = nodekey.load_or_create(data)
    if peers is None:
        say(f"WARNING: no --peers: node {ident} signs what it publishes and its leader record, but checks no other "
            "node's signature (a leader record naming another node cannot be told forged); dev mode only; every standby "
            f"needs a peers file with this node's entry: {{\"{ident}\": \"{nodekey.public_hex(key)}\"}}")
        return key, None
    trusted = nodekey.load_peers(peers)
    own = trusted.get(ident)
    if own is not None and nodekey.public_hex(key) != _hex(own):
        raise ConfigError(f"the peers file gives node {ident!r} a public key that is not the one of {where}: "
                          f"{rekey_remedy(ident, data, nodekey.public_hex(key))}", field="--peers")
    if own is None:
        raise ConfigError(f"node {ident!r} is not in the peers file; add: {{\"{ident}\": \"{nodekey.public_hex(key)}\"}}",
                          field="--peers")
    return key, trusted


def rekey_remedy(ident: str, data: Path, public: str = "") -> str:
    """What to do when this folder has no key, or another key, than the peers file's node `ident`."""
    from .. import nodekey

    line = (f"its line {{\"{ident}\": \"{public}\"}}" if public else
            f"the line `ringfence replication node-key --data {data} --node-id {ident}` makes and prints")
    return (f"if {data} is a new folder for node {ident} (a deposed primary rejoining), copy node {ident}'s "
            f"{nodekey.KEY_FILE} (0600) from its old data folder into {data} first; or give node {ident} a new key: "
            f"put {line} in the peers file of every node (and restart them); or check --node-id and --peers")


def _hex(public: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    return str(public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex())


def _import_the_server() -> None:
    """Import what the server builds after a promotion (the web app, identity, custody, workers):
    seconds of a cold start on a loaded machine, paid while following instead of inside the RTO."""
    import importlib

    for name in ("ringfence.api.app", "ringfence.api.auth", "ringfence.api.binance", "ringfence.api.demo",
                 "ringfence.identity.context", "ringfence.store", "ringfence.custody.runtime",
                 "ringfence.index.worker", "ringfence.derivatives.worker", "ringfence.identity.delivery"):
        importlib.import_module(name)


class StandbyStatus:
    """While following, the standby's port answers `GET /v1/standby` (its progress, as JSON) and
    `GET /readyz` with 503 (a load balancer must not send clients to it). Nothing else; no writes.

    It serves on a duplicate of each of `listeners`, serve's listening sockets (listening.py `listen_on`: host:port,
    and the other family's twin of a wildcard or loopback host): `close()` stops it and closes the duplicates only; the sockets stay bound and
    listening for the exchange that serves on them after the promotion (a connection that arrives in between waits
    in its backlog for the exchange)."""

    def __init__(self, follower: Follower, listeners: Sequence[socket.socket], models: Any = None) -> None:
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        def snapshot() -> dict[str, Any]:
            # plain ints and strings written by the follower thread; a read may be one batch old
            return {"role": "standby", "node": follower.node_id, "stream": follower.target.stream,
                    "applied_seq": follower.engine.last_seq, "stream_seq": follower.stream_seq,
                    "fence_epoch": follower.fence_epoch, "batches_applied": follower.batches_applied,
                    "state_hash": follower.last_state_hash, "outcomes_checked": follower.outcomes_checked,
                    "digests_checked": follower.digests_checked, "read_models_seq": models.last_seq if models is not None else None,
                    "signatures_checked": follower.peers is not None, "problem": follower.problem}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path not in ("/v1/standby", "/readyz"):
                    self.send_error(404)
                    return
                body = json.dumps(dict(snapshot(), ready=False) if self.path == "/readyz" else snapshot()).encode()
                self.send_response(200 if self.path == "/v1/standby" else 503)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                return None  # quiet: the standby logs its own progress

        self.servers: list[ThreadingHTTPServer] = []
        for listener in listeners:
            server = ThreadingHTTPServer(listener.getsockname()[:2], Handler, bind_and_activate=False)
            server.socket.close()  # (the one it made, never bound)
            server.socket = listener.dup()  # the same listening socket: closing the duplicate leaves it listening
            self.servers.append(server)
            threading.Thread(target=server.serve_forever, name="ringfence-standby-status", daemon=True).start()

    def close(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()


def after_build(exchange: Any, replicator: Replicator | None, say: Callable[[str], None], *,
                promoted: bool = False) -> None:
    """As the primary: bring the stream up to the journal, then hook every batch.

    First, a node that is not a promoted standby (`promoted`) checks its staff register: outside dev mode
    (the replicator's `staffless_ok` False) without operators able to reach their quorum it refuses to start
    (`ConfigError`), before it publishes anything (the stream's opener, its catch-up) or acknowledges a
    command: no promotion could ever be granted there (intruder review of session 22, B4). In dev mode it
    says the risk once."""
    if replicator is None:
        return
    target, ident = replicator.target, replicator.node_id
    if not promoted and not exchange.node.read(has_staff_quorum):
        if not replicator.staffless_ok:
            replicator.close()
            raise ConfigError(STAFFLESS_START.format(data=exchange.node.data_dir.parent), field="--replicate")
        say(f"[yellow]warning:[/] {STAFFLESS_DEV}")
    caught_up = replicator.attach(exchange.node)
    say(f"replicating to stream {target.stream} at {target.display} as {ident}, epoch {replicator.epoch} "
        f"({caught_up} records published to catch up); a batch is acknowledged after fsync and the stream's ack")
    return None
