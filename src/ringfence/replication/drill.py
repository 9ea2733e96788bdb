"""`ringfence dr drill`: a disaster-recovery drill with real processes, real NATS and real clients.

Two scenarios, each on its own JetStream stream and folder, both nodes sharing one identity
database (so the API keys work after a failover):

* **kill** — a seeded order load against the primary (`serve --demo --replicate`), SIGKILL of the
  primary at a seeded moment, the operator's promotion of the standby, the load continued on it.
* **partition** — the primary reaches NATS through a TCP proxy the drill cuts; the primary must stop
  acknowledging within its lease, the standby (`auto_promote=1`) takes over after two leases.

Proved after each: zero acknowledged orders lost (each is looked up on the new primary by its
client order id), the standby's state hash at the cut-over equals the old primary's journal replayed
to that sequence, and the acknowledgement stream stopped in time. RTO (failure to the first
acknowledgement on the new primary) and RPO (acknowledged commands lost) are measured and printed;
the report is written as JSON and as an HTML page with a timeline chart (inline SVG, no scripts).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import html
import json
import os
import random
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlencode, urlparse

import httpx

from ..errors import without_credentials

__all__ = ["run_drill", "DrillResult"]


def _free_port() -> int:
    """A port free on 127.0.0.1 and [::1], both of which the child holds (listening.py `free_port`)."""
    from ..listening import free_port

    return free_port("127.0.0.1")


@dataclass
class DrillResult:
    scenario: str
    seed: int
    acked: list[tuple[float, str, str]] = field(default_factory=list)  # float-ok: (seconds, node, client id)
    failed_at_s: float = 0.0  # float-ok: seconds since start
    promoted_at_s: float = 0.0  # float-ok
    first_ack_after_s: float = 0.0  # float-ok
    last_old_ack_s: float = 0.0  # float-ok
    lost: list[str] = field(default_factory=list)
    cut_seq: int = 0
    standby_hash: str = ""
    primary_hash: str = ""
    lease_ms: int = 0
    problems: list[str] = field(default_factory=list)
    #: why the scenario could not run to its end (a node that never started...): "" when it did
    error: str = ""

    @property
    def rto_ms(self) -> int:
        return int((self.first_ack_after_s - self.failed_at_s) * 1000)

    def summary(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario, "seed": self.seed, "acknowledged": len(self.acked),
            "acknowledged_lost": len(self.lost), "rpo_commands": len(self.lost), "rto_ms": self.rto_ms,
            # where the RTO goes: failure -> the standby logs its promotion -> the first acknowledgement
            "promoted_after_failure_ms": int(max(0.0, self.promoted_at_s - self.failed_at_s) * 1000),
            "first_ack_after_promotion_ms": int(max(0.0, self.first_ack_after_s - self.promoted_at_s) * 1000),
            "cut_over_seq": self.cut_seq, "state_hash_standby": self.standby_hash,
            "state_hash_old_primary_at_cut": self.primary_hash,
            "old_primary_last_ack_after_failure_ms": int(max(0.0, self.last_old_ack_s - self.failed_at_s) * 1000),
            "lease_ms": self.lease_ms, "ok": not self.problems, "problems": self.problems,
            **({"error": self.error} if self.error else {}),
        }

    @classmethod
    def could_not_run(cls, scenario: str, seed: int, lease_ms: int, error: str) -> "DrillResult":
        """A scenario that stopped before its proofs: failed, with the error as its problem."""
        first = error.split("\n", 1)[0]
        return cls(scenario, seed, lease_ms=lease_ms, error=error, problems=[f"the scenario could not run: {first}"])


def exit_reason(log: str) -> str:
    """What a node that exited said about why, on one line: its `error:` lines (serve's refusals, a
    line each, a wrapped one joined up), else the last line of its log (a traceback's exception)."""
    said: list[str] = []
    within = False  # in a block of error lines: a line that is not one continues the last (wrapped)
    for line in log.splitlines():
        if line.startswith("error:"):
            said.append(line.removeprefix("error:").strip())
            within = True
        elif within and line.strip() and not re.match(r"\d|[A-Z]+[: ]|Traceback", line):
            said[-1] += " " + line.strip()
        else:
            within = False
    if not said:
        lines = [line.strip() for line in log.splitlines() if line.strip()]
        return lines[-1] if lines else "(its log is empty)"
    return "; ".join(said)


def exited(name: str, returncode: int, log: str) -> str:
    """The error of a node that exited: its reason on the first line (the report's problem line), the
    log's tail below."""
    return f"{name} exited {returncode}: {exit_reason(log)}\n{log[-2000:]}"


class _Proc:
    def __init__(self, argv: list[str], log: Path, env: dict[str, str], name: str = "the server") -> None:
        self.name = name
        self.log_path = log
        self.log = open(log, "w")
        self.argv = argv
        self.command = without_credentials(" ".join(argv))  # as errors show it (a token URL stays hidden)
        self.proc = subprocess.Popen([sys.executable, "-m", "ringfence.cli", *argv], stdout=self.log,
                                     stderr=subprocess.STDOUT, env=env)

    def text(self) -> str:
        self.log.flush()
        return self.log_path.read_text()

    def wait_log(self, pattern: str, timeout_s: float = 180) -> re.Match[str]:  # float-ok: seconds
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = list(re.finditer(pattern, self.text()))
            if found:
                return found[-1]
            if self.proc.poll() is not None:
                raise RuntimeError(exited(f"{self.name} (ringfence {self.command})", self.proc.returncode, self.text()))
            time.sleep(0.05)
        raise RuntimeError(f"ringfence {self.command} never logged /{pattern}/:\n{self.text()[-2000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


#: how long the drill waits for a node's /readyz (seconds; `--ready-timeout`)
READY_TIMEOUT_S = 180


def _wait_ready(base: str, proc: _Proc, timeout_s: float = READY_TIMEOUT_S, lease_ms: int = 0) -> None:  # float-ok: seconds
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.proc.poll() is not None:
            raise RuntimeError(exited(proc.name, proc.proc.returncode, proc.text()))
        try:
            if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass  # not listening yet
        time.sleep(0.05)
    lease = f" (now {lease_ms} ms)" if lease_ms else ""
    raise RuntimeError(f"the server never became ready: {base}/readyz did not answer 200 within {timeout_s:g} s; on a "
                       "loaded machine a primary can miss its lease while it starts (its log below says so): rerun with "
                       f"a longer --lease-ms{lease}, or a longer --ready-timeout (now {timeout_s:g} s)\n"
                       + proc.text()[-2000:])


class _Client:
    def __init__(self, key: dict[str, str]) -> None:
        self.key = key
        self.http = httpx.Client(timeout=10)

    def _signed(self, params: dict[str, str]) -> str:
        payload = urlencode(dict(params, timestamp=str(int(time.time() * 1000)), recvWindow="10000"))
        return payload + "&signature=" + hmac.new(self.key["api_secret"].encode(), payload.encode(), hashlib.sha256).hexdigest()

    def place(self, base: str, order: dict[str, str]) -> bool:
        self.last_refusal = ""
        try:
            r = self.http.post(base + "/api/v3/order", content=self._signed(order), timeout=10,
                               headers={"X-MBX-APIKEY": self.key["api_key"], "Content-Type": "application/x-www-form-urlencoded"})
        except httpx.HTTPError as err:
            self.last_refusal = f"no answer ({type(err).__name__})"
            return False  # no answer: not acknowledged
        if r.status_code != 200:
            self.last_refusal = f"HTTP {r.status_code} {r.text[:160]}"
        return r.status_code == 200

    def exists(self, base: str, client_id: str, symbol: str) -> bool:
        r = self.http.get(base + "/api/v3/order?" + self._signed({"symbol": symbol, "origClientOrderId": client_id}),
                          headers={"X-MBX-APIKEY": self.key["api_key"]})
        return r.status_code == 200


class _Proxy:
    """A TCP proxy to NATS that the drill can cut: the partition of the primary."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.port = _free_port()
        self._target = (target_host, target_port)
        self._loop = asyncio.new_event_loop()
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.AbstractServer | None = None
        threading.Thread(target=self._loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(5)

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass  # either side went away: the other is closed below
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._target)
        self._writers += [writer, up_writer]
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    def cut(self) -> None:
        async def close_all() -> None:
            assert self._server is not None
            self._server.close()
            for w in self._writers:
                w.transport.abort()

        asyncio.run_coroutine_threadsafe(close_all(), self._loop).result(5)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)


def _orders(rng: random.Random, seed: int, start: int, count: int) -> list[dict[str, str]]:
    out = []
    for i in range(start, start + count):
        side = rng.choice(("BUY", "SELL"))
        offset = rng.randint(10, 90)
        price = 60_000 - offset if side == "BUY" else 60_000 + offset
        out.append({"symbol": "BTCUSDT", "side": side, "type": "LIMIT", "timeInForce": "GTC", "quantity": "0.001",
                    "price": f"{price}.00", "newClientOrderId": f"drill{seed}-{i}"})
    return out


def check_nats_url(nats_url: str, scenario: str) -> None:
    """Raise ValueError (a sentence) unless `nats_url` is a server URL the drill can use for `scenario`."""
    try:
        parsed = urlparse(nats_url)
        parsed.port  # noqa: B018 - a port that is not a number raises here
    except ValueError as err:
        raise ValueError(f"must be a nats://host:port or tls://host:port URL ({err})") from None
    if parsed.scheme not in ("nats", "tls") or not parsed.hostname:
        raise ValueError(f"must be a nats://host:port or tls://host:port URL; got {parsed.scheme or 'no'} scheme")
    if parsed.path.strip("/") or parsed.query:
        raise ValueError("give the server only (nats://host:port): the drill makes a stream of its own for each scenario")
    if parsed.scheme == "tls" and scenario != "kill":
        raise ValueError("the partition scenario cuts a plain TCP proxy in front of NATS and cannot carry TLS: "
                         "give a nats:// URL, or --scenario kill")


def split_login(nats_url: str) -> tuple[str, str, str | None]:
    """(the URL without its password, its login as `user@` or "", the password or None): the drill's
    nodes get a password in RINGFENCE_NATS_PASSWORD, never on their command lines (`ps`; intruder
    review of session 19, F2), and the partition's proxy URL keeps the login. A token URL
    (`nats://TOKEN@host`) stays as given: nats-py reads a token from the URL only — use a user and
    password (`ringfence replication nats-config`) to keep it off command lines."""
    parsed = urlparse(nats_url)
    if parsed.username is None:
        return nats_url, "", None
    login = f"{parsed.username}@"
    if parsed.password is None:  # a token (nats-py sends a user name alone as one)
        return nats_url, login, None
    return nats_url.replace(f"{parsed.username}:{parsed.password}@", login, 1), login, unquote(parsed.password)


#: what the drill's NATS user must be allowed (said when it is not): it makes a stream and a leadership bucket of
#: its own per scenario, runs both nodes and the promotion on them, and deletes them at the end
DRILL_NEEDS = ("the drill makes a stream of its own for each scenario (RFDRILL…, and its bucket KV_RFDRILL…-leader), "
               "runs both nodes and the operators' promotion on it, and deletes both at the end, so its NATS user needs "
               "the whole JetStream API on those streams (create, info, read, delete) and their subjects: a dev server "
               "without users, or an admin user of your own; none of `ringfence replication nats-config`'s users "
               "(rf-node, rf-operator, rf-monitor) may create other streams or delete any (docs/resilience.md, "
               "\"`ringfence dr drill`\")")


def _target(nats_url: str) -> Any:
    """The drill's server as a ReplicationTarget: its password from RINGFENCE_NATS_PASSWORD when the URL
    names a user without one, as the nodes and `replication status` take it."""
    from . import parse_target

    return parse_target(f"{nats_url.rstrip('/')}/RFDRILLCHECK", "--nats")


async def _connect(target: Any, seen: dict[str, str]) -> Any:
    """A connection to `target` as its user (replies on the user's own inbox, as `nats-config` allows); the
    server's refusals go to `seen` ("login": the login refused, "refused": a permissions violation)."""
    import ssl

    from . import _login_refused, guarded_client
    from .auth import inbox_prefix

    async def on_error(err: Exception) -> None:  # said by the caller's one line; no traceback per attempt
        if _login_refused(err):
            seen["login"] = str(err)[:200]
        elif "permissions violation" in str(err).lower():
            seen["refused"] = str(err)[:200]

    inbox = inbox_prefix(unquote(urlparse(target.servers).username or ""))
    tls: dict[str, Any] = {}
    if target.servers.startswith("tls://"):  # verified against tls_ca alone when given, and the host name
        tls["tls"] = ssl.create_default_context(cafile=target.tls_ca or None)
    client = guarded_client()  # a tls:// URL's CONNECT (its password) goes over TLS only
    await client.connect(target.servers, connect_timeout=3, max_reconnect_attempts=1, reconnect_time_wait=0.2,
                         error_cb=on_error, inbox_prefix=inbox, **tls)
    return client


def _user_of(target: Any) -> str:
    from . import login_name

    return login_name(target.servers) or "(none)"


def check_nats(nats_url: str) -> None:
    """Raise RuntimeError (a sentence, the URL's password hidden) unless `nats_url` is a nats:// or tls://
    URL of a NATS server that answers, takes the login (a refused login is named as one, as `replication
    status` names it) and lets this user make and delete a stream: checked before the drill makes any
    folder or node."""
    from nats.js.api import StreamConfig

    from ..errors import ConfigError
    from . import check_transport, login_refused_message, masked

    check_nats_url(nats_url, "kill")
    target = _target(nats_url)
    try:  # outside dev mode: a password goes over tls:// with a pinned CA only (the drill's own nodes run in dev mode)
        check_transport(target, credentials_only=True)
    except ConfigError as err:
        raise RuntimeError(f"{err}; the drill takes no tls_ca= yet: run it against a development NATS server "
                           "without users, or with RINGFENCE_MODE=dev") from None
    seen: dict[str, str] = {}
    probe = f"RFDRILLCHECK{secrets.token_hex(4).upper()}"

    async def reach() -> Any:
        return await _connect(target, seen)

    async def make_and_delete(nc: Any) -> None:
        js = nc.jetstream()
        try:
            await js.add_stream(StreamConfig(name=probe, subjects=[f"rfdrillcheck.{probe}"]))
            await js.delete_stream(probe)
        finally:
            await nc.close()

    loop = asyncio.new_event_loop()
    try:
        try:
            nc = loop.run_until_complete(asyncio.wait_for(reach(), 20))
        except Exception as err:  # nats' NoServersError, OSError, a timeout: it cannot be reached, or refused the login
            if seen.get("login"):
                raise RuntimeError(login_refused_message(target, seen["login"])) from None
            raise RuntimeError(f"cannot reach NATS at {masked(nats_url)}: {type(err).__name__}") from None
        try:
            loop.run_until_complete(asyncio.wait_for(make_and_delete(nc), 20))
        except Exception as err:  # a request this user may not make times out; the server said why in `seen`
            said = f" (the server said: {seen['refused'].strip()})" if seen.get("refused") else f" ({type(err).__name__})"
            raise RuntimeError(f"NATS user {_user_of(target)} at {target.display} may not make and delete a stream "
                               f"(tried {probe}){said}; {DRILL_NEEDS}") from None
    finally:
        loop.close()


def _delete_stream(nats_url: str, stream: str) -> str:
    """Delete the scenario's stream and its bucket; "" when done (or never made), else what was left and why."""
    from nats.js.errors import NotFoundError

    target = _target(nats_url)
    seen: dict[str, str] = {}
    left: list[str] = []

    async def go() -> None:
        nc = await _connect(target, seen)
        try:
            for name in (stream, f"KV_{stream}-leader"):
                try:
                    await asyncio.wait_for(nc.jetstream().delete_stream(name), 10)
                except NotFoundError:
                    pass  # never created
                except Exception:  # a delete this user may not make times out: said below, never a traceback
                    left.append(name)
        finally:
            await nc.close()

    try:
        asyncio.run(asyncio.wait_for(go(), 40))
    except Exception as err:  # the server went away meanwhile
        return f"could not delete the streams {stream} and KV_{stream}-leader: NATS: {type(err).__name__}"
    if not left:
        return ""
    said = f" (the server said: {seen['refused'].strip()})" if seen.get("refused") else ""
    return (f"could not delete {' and '.join(left)}: NATS user {_user_of(target)} may not{said}; delete "
            f"{'them' if len(left) > 1 else 'it'} as a user who may (`nats stream rm NAME -f`); {DRILL_NEEDS}")


def _operator_quorum(data: Path, stream: str, node_id: str, epoch: int) -> list[str]:
    """The demo's operators (ada, ben) sign the promotion, as `ringfence replication promote --key` does."""
    from ..staff.decisions import format_approval, read_key_file
    from . import PROMOTE_ACTION, promote_subject

    expires = time.time_ns() + 600 * 10**9
    return [format_approval(read_key_file(data / "demo-staff.json", who).sign(
        PROMOTE_ACTION, promote_subject(stream, node_id, epoch), expires)) for who in ("ada", "ben")]


def write_peers(path: Path, nodes: dict[str, Path]) -> Path:
    """Make each node's key (DATA_DIR/node.key) and the peers file that trusts them all."""
    from .. import nodekey

    peers = {node: nodekey.public_hex(nodekey.load_or_create(data)) for node, data in nodes.items()}
    path.write_text(json.dumps(peers, indent=1) + "\n")
    return path


#: said at the start of every scenario and on the report: what the drill's nodes are
NODES_NOTE = "drill nodes: dev mode, scratch data, demo chains"

#: settings of the operator's exchange that the scratch nodes must not take from the environment: its mail server
#: (the demo's catcher takes their mail), its keyring folder, its secrets and its public address
_NOT_FOR_SCRATCH = ("RINGFENCE_IDENTITY_SMTP_", "RINGFENCE_IDENTITY_MAIL_FROM", "RINGFENCE_IDENTITY_GNUPG_HOME",
                    "RINGFENCE_IDENTITY_SECRET_KEY_HEX", "RINGFENCE_IDENTITY_ORIGIN", "RINGFENCE_IDENTITY_PUBLIC_URL",
                    "RINGFENCE_IDENTITY_RP_ID", "RINGFENCE_POR_SECRET", "RINGFENCE_IDENTITY_EXCHANGE_PGP_FINGERPRINT")


def node_env(environ: dict[str, str], workdir: Path, password: str | None) -> dict[str, str]:
    """The environment of the drill's nodes: a throwaway cluster on scratch folders with the demo's data, so dev
    mode (RINGFENCE_MODE=dev) whatever the operator's environment says (prod mode refuses --demo and its local
    chains), one identity database of its own, none of the exchange's mail server, keyring or secrets; the NATS
    password (from the URL) in RINGFENCE_NATS_PASSWORD, never on a command line (`ps`), else the environment's."""
    env = {k: v for k, v in environ.items() if not k.startswith(_NOT_FOR_SCRATCH)}
    env.update(PYTHONUNBUFFERED="1", COLUMNS="400", RINGFENCE_MODE="dev",
               RINGFENCE_DATABASE_URL=f"sqlite:///{(workdir / 'identity.sqlite3').resolve()}")
    if password is not None:
        env["RINGFENCE_NATS_PASSWORD"] = password
    return env


def node_urls(primary_nats: str, node_url: str, stream: str, lease_ms: int, scenario: str) -> tuple[str, str]:
    """The --replicate URL of node a and the --standby URL of node b: both name a as the stream's first primary
    (first_primary=a, as prod mode requires of every node)."""
    auto = "&auto_promote=1" if scenario == "partition" else ""
    return (f"{primary_nats}/{stream}?lease_ms={lease_ms}&first_primary=a",
            f"{node_url}/{stream}?first_primary=a{auto}")


def run_drill(scenario: str, nats_url: str, seed: int, workdir: Path, *, before: int = 60, after: int = 20,
              lease_ms: int = 1000, ready_timeout_s: int = READY_TIMEOUT_S, say: Any = print) -> DrillResult:
    """Run one scenario ('kill' or 'partition') and return what it proved."""
    from ..app import replay_journal
    from . import parse_target, promote

    rng = random.Random(seed)
    result = DrillResult(scenario, seed, lease_ms=lease_ms)
    stream = f"RFDRILL{scenario.upper()}{secrets.token_hex(4).upper()}"
    workdir.mkdir(parents=True, exist_ok=True)
    parsed = urlparse(nats_url)
    node_url, login, password = split_login(nats_url)
    env = node_env(dict(os.environ), workdir, password)
    proxy = _Proxy(parsed.hostname or "127.0.0.1", parsed.port or 4222) if scenario == "partition" else None
    primary_nats = f"nats://{login}127.0.0.1:{proxy.port}" if proxy else node_url  # the proxy keeps the login
    pa, pb = _free_port(), _free_port()
    a_base, b_base = f"http://127.0.0.1:{pa}", f"http://127.0.0.1:{pb}"
    env["RINGFENCE_REPLICATION_PEERS"] = str(write_peers(workdir / "peers.json", {"a": workdir / "a", "b": workdir / "b"}))
    primary_url, standby_url = node_urls(primary_nats, node_url, stream, lease_ms, scenario)
    say(f"drill {scenario}: {NODES_NOTE}")
    primary = _Proc(["serve", "--demo", "--data", str(workdir / "a"), "--port", str(pa), "--replicate", primary_url,
                     "--node-id", "a"], workdir / "primary.log", env, "node a (the primary)")
    standby: _Proc | None = None
    left = ""
    t0 = time.monotonic()
    try:
        _wait_ready(a_base, primary, ready_timeout_s, lease_ms)
        standby = _Proc(["serve", "--data", str(workdir / "b"), "--port", str(pb), "--standby", standby_url,
                         "--node-id", "b"], workdir / "standby.log", env, "node b (the standby)")
        standby.wait_log(r"following stream")
        keys = {k["account"]: k for k in json.loads((workdir / "a" / "demo-keys.json").read_text()) if k.get("kind", "hmac") == "hmac"}
        clients = [_Client(keys["alice"]), _Client(keys["bob"])]
        orders = _orders(rng, seed, 0, before + after)
        fail_at = rng.randint(before // 2, before)
        t0 = time.monotonic()
        say(f"drill {scenario}: seed {seed}, {before + after} orders, failure after {fail_at} acknowledged")
        i = 0
        while len(result.acked) < fail_at and i < len(orders):  # phase 1: the primary
            if clients[i % 2].place(a_base, orders[i]):
                result.acked.append((time.monotonic() - t0, "a", orders[i]["newClientOrderId"]))
            i += 1
        result.failed_at_s = time.monotonic() - t0
        if scenario == "kill":
            primary.proc.kill()
            primary.proc.wait(10)
            with _dev_mode():  # the operators' promotion of the scratch cluster, as its nodes run
                promote(parse_target(f"{nats_url}/{stream}", "--nats"), "b", _operator_quorum(workdir / "a", stream, "b", 2))
        else:
            assert proxy is not None
            proxy.cut()
            # keep sending to the partitioned primary: anything it still acknowledges must be replicated.
            # Orders of their own (numbered after the drill's), so that the `after` orders all go to the
            # new primary however fast the partitioned one refuses (since session 21 it refuses at once:
            # its sequencer's own NATS connection is cut too, and nothing waits for the lease)
            deadline = time.monotonic() + 3 * lease_ms / 1000
            extra = before + after
            while time.monotonic() < deadline:
                order = _orders(rng, seed, extra, 1)[0]
                if clients[extra % 2].place(a_base, order):
                    result.acked.append((time.monotonic() - t0, "a", order["newClientOrderId"]))
                    result.last_old_ack_s = time.monotonic() - t0
                extra += 1
                time.sleep(0.02)
        m = standby.wait_log(r"promoted at epoch (\d+), fenced at stream sequence \d+, journal sequence (\d+) state hash ([0-9a-f]{64})")
        result.promoted_at_s = time.monotonic() - t0
        result.cut_seq, result.standby_hash = int(m.group(2)), m.group(3)
        _wait_ready(b_base, standby, ready_timeout_s, lease_ms)
        while i < len(orders):  # phase 2: the new primary
            if clients[i % 2].place(b_base, orders[i]):
                now = time.monotonic() - t0
                result.first_ack_after_s = result.first_ack_after_s or now
                result.acked.append((now, "b", orders[i]["newClientOrderId"]))
            else:
                result.problems.append(f"the new primary refused order {orders[i]['newClientOrderId']}: "
                                       f"{clients[i % 2].last_refusal}")
            i += 1
        for _, _, client_id in result.acked:
            if not clients[int(client_id.rsplit("-", 1)[1]) % 2].exists(b_base, client_id, "BTCUSDT"):
                result.lost.append(client_id)
        dead, _, _ = replay_journal(workdir / "a" / "engine", until_seq=result.cut_seq)
        result.primary_hash = dead.state_hash()
    finally:
        primary.stop()
        if standby is not None:
            standby.stop()
        if proxy is not None:
            proxy.close()
        left = _delete_stream(nats_url, stream)
        if left:
            say(f"drill {scenario}: {left}")
    if left:
        result.problems.append(left)
    if result.lost:
        n = len(result.lost)
        result.problems.append(f"{n} acknowledged {'order is' if n == 1 else 'orders are'} missing on the new primary")
    if result.primary_hash != result.standby_hash:
        result.problems.append("the state hash at the cut-over differs between the standby and the old primary")
    if scenario == "partition" and result.last_old_ack_s and (result.last_old_ack_s - result.failed_at_s) * 1000 > lease_ms:
        result.problems.append("the partitioned primary acknowledged after its lease ran out")
    return result


@contextlib.contextmanager
def _dev_mode() -> Iterator[None]:
    """RINGFENCE_MODE=dev in this process for a while (the drill's own promotion of its dev-mode nodes)."""
    before = os.environ.get("RINGFENCE_MODE")
    os.environ["RINGFENCE_MODE"] = "dev"
    try:
        yield
    finally:
        if before is None:
            del os.environ["RINGFENCE_MODE"]
        else:
            os.environ["RINGFENCE_MODE"] = before


def _svg(result: DrillResult, width: int = 900, height: int = 160) -> str:
    span = max([t for t, _, _ in result.acked] + [result.first_ack_after_s, 0.001])
    def x(t: float) -> float:  # float-ok: chart coordinates
        return 40 + (width - 60) * t / span
    dots = "".join(f'<circle cx="{x(t):.1f}" cy="{60 if node == "a" else 100}" r="2.5" fill="{"#2a7" if node == "a" else "#27c"}"/>'
                   for t, node, _ in result.acked)
    lines = (f'<line x1="{x(result.failed_at_s):.1f}" y1="20" x2="{x(result.failed_at_s):.1f}" y2="130" stroke="#c22" stroke-width="2"/>'
             f'<text x="{x(result.failed_at_s) + 4:.1f}" y="30" fill="#c22">{"SIGKILL" if result.scenario == "kill" else "partition"}</text>'
             f'<line x1="{x(result.promoted_at_s):.1f}" y1="20" x2="{x(result.promoted_at_s):.1f}" y2="130" stroke="#e80" stroke-width="2"/>'
             f'<text x="{x(result.promoted_at_s) + 4:.1f}" y="45" fill="#e80">promoted</text>')
    axis = (f'<text x="5" y="64">a</text><text x="5" y="104">b</text><line x1="40" y1="140" x2="{width - 20}" y2="140" stroke="#888"/>'
            f'<text x="40" y="155">0 s</text><text x="{width - 60}" y="155">{span:.2f} s</text>')
    label = f"acknowledgements over time, {result.scenario} scenario"
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" role="img" aria-label="{label}" width="{width}" '
            f'height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">{axis}{dots}{lines}</svg>')


_SCENARIOS = {"kill": "SIGKILL of the primary, then an operator promotes the standby",
              "partition": "The primary is cut off from NATS; the standby promotes itself after two leases"}


def _checks(r: DrillResult) -> list[tuple[str, bool, str]]:
    """The drill's proofs for one scenario: (what is proved, held, the figures behind it)."""
    refused = [p for p in r.problems if p.startswith("the new primary refused")]
    s = r.summary()
    out = [
        ("No acknowledged order lost (RPO 0)", not r.lost,
         f"{len(r.acked)} acknowledged, {len(r.lost)} missing on the new primary"),
        ("Identical state at the cut-over", bool(r.standby_hash) and r.primary_hash == r.standby_hash,
         f"sequence {r.cut_seq}: standby {r.standby_hash[:16] or '-'}…, old primary replayed {r.primary_hash[:16] or '-'}…"),
        ("The new primary acknowledged every order sent to it", not refused,
         f"{len(refused)} refused" + (f" (first: {refused[0]})" if refused else "")),
    ]
    if r.scenario == "partition":
        late = s["old_primary_last_ack_after_failure_ms"]
        out.append(("The cut-off primary stopped acknowledging within its lease", late <= r.lease_ms,
                    f"last acknowledgement {late:,} ms after the cut; lease {r.lease_ms:,} ms"))
    return out


def rerun_command(*, nats: str, seed: int, scenario: str, before: int, after: int, lease_ms: int,
                  ready_timeout_s: int) -> str:
    """The command that repeats this run: every option it used (the NATS URL without its password:
    give that in RINGFENCE_NATS_PASSWORD); --out is left for a new folder."""
    node_url, _, password = split_login(nats)
    user = urlparse(nats).username
    env, url = "", without_credentials(nats)
    if password is not None or (user and os.environ.get("RINGFENCE_NATS_PASSWORD")):  # a user, not a token
        env, url = "RINGFENCE_NATS_PASSWORD=… ", node_url
    return (f"{env}ringfence dr drill --nats {url} --seed {seed} --scenario {scenario} --before {before} "
            f"--after {after} --lease-ms {lease_ms} --ready-timeout {ready_timeout_s} --out NEW-FOLDER")


def write_report(results: list[DrillResult], out: Path, rerun: str = "") -> Path:
    """OUT/report.json (the figures) and OUT/report.html: the verdict first, then per scenario RTO and
    RPO, the timeline of acknowledgements and the table of checks (static HTML, no scripts)."""
    esc = html.escape
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps([r.summary() for r in results], indent=2) + "\n")
    problems = [f"{r.scenario}: {p}" for r in results for p in r.problems]
    passed = not problems
    seeds = ", ".join(sorted({str(r.seed) for r in results}))
    if passed:
        verdict = (f'<p id="verdict" class="ok"><strong>PASSED</strong> — every proof held in '
                   f'{" and ".join(esc(r.scenario) for r in results)}: no acknowledged order lost, identical state at the '
                   "cut-over.</p>")
    else:
        verdict = (f'<div id="verdict" class="fail"><p><strong>FAILED</strong> — {len(problems)} '
                   f'{"problem" if len(problems) == 1 else "problems"}:</p><ul>'
                   + "".join(f"<li>{esc(p)}</li>" for p in problems) + "</ul></div>")
    sections = []
    for r in results:
        s = r.summary()
        if r.error:  # stopped before its proofs: the error, and the logs to read
            sections.append(f"""<section id="{esc(r.scenario)}">
<h2>{esc(r.scenario)}: FAILED</h2>
<p>{esc(_SCENARIOS.get(r.scenario, r.scenario))}.</p>
<p class="error">The scenario could not run to its end, so nothing was proved; its nodes' logs are in
<code>{esc(r.scenario)}/</code> beside this page:</p>
<pre class="error">{esc(r.error)}</pre>
</section>""")
            continue
        checks = "".join(f'<tr class="{"pass" if ok else "fail"}"><td>{esc(name)}</td><td class=result>'
                         f'{"PASS" if ok else "FAIL"}</td><td>{esc(detail)}</td></tr>' for name, ok, detail in _checks(r))
        raw = "".join(f"<tr><th>{esc(k)}</th><td><code>{esc(str(v))}</code></td></tr>" for k, v in s.items())
        sections.append(f"""<section id="{esc(r.scenario)}">
<h2>{esc(r.scenario)}: {"PASSED" if not r.problems else "FAILED"}</h2>
<p>{esc(_SCENARIOS.get(r.scenario, r.scenario))}.</p>
<table class="figures"><tbody>
<tr><th>RTO</th><td class="num rto">{s["rto_ms"]:,} ms</td><td>from the failure to the first acknowledgement on the new
primary: {s["promoted_after_failure_ms"]:,} ms to the promotion, then {s["first_ack_after_promotion_ms"]:,} ms to serve</td></tr>
<tr><th>RPO</th><td class="num rpo">{s["rpo_commands"]} {"command" if s["rpo_commands"] == 1 else "commands"}</td>
<td>acknowledged orders missing on the new primary (of {s["acknowledged"]} acknowledged)</td></tr>
<tr><th>Cut-over</th><td class=num>sequence {s["cut_over_seq"]:,}</td><td>the last journal sequence the standby
took over; lease {r.lease_ms:,} ms</td></tr>
</tbody></table>
<h3>Timeline</h3>
<p>Each dot is an acknowledged order: top row node a (the primary), bottom row node b (the standby, then the primary).</p>
{_svg(r)}
<h3>Checks</h3>
<table class="checks"><thead><tr><th>check</th><th>result</th><th>figures</th></tr></thead><tbody>{checks}</tbody></table>
<details><summary>All figures (report.json)</summary><table class="raw">{raw}</table></details>
</section>""")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ringfence DR drill — {"PASSED" if passed else "FAILED"}</title>
<style>
body{{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}}
table{{border-collapse:collapse;margin:1rem 0}}td,th{{border:1px solid #ccc;padding:.3rem .6rem;text-align:left;vertical-align:top}}
.num{{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}}code{{font-size:.85em}}
#verdict{{padding:.6rem 1rem;border-radius:.3rem;font-size:1.2em}}#verdict.ok{{background:#e6f4ea;border:1px solid #2a7}}
#verdict.fail{{background:#fce8e6;border:1px solid #c22}}tr.pass .result{{color:#186a3b;font-weight:bold}}
tr.fail .result{{color:#b00;font-weight:bold}}.figures th{{width:7rem}}svg{{max-width:100%;height:auto}}
</style></head><body>
<h1>Disaster-recovery drill</h1>
{verdict}
<p>Seed {esc(seeds)}; scenarios: {", ".join(esc(r.scenario) for r in results)}. RTO: recovery time (failure to the first
acknowledgement on the new primary). RPO: acknowledged commands lost. <span id="nodes">{esc(NODES_NOTE[0].upper() + NODES_NOTE[1:])}
(RINGFENCE_MODE=dev, whatever your exchange runs in; the demo's data in this folder).</span> Rerun with <code id="rerun">{esc(rerun or "ringfence dr drill --seed " + seeds)}</code>.</p>
{"".join(sections)}
</body></html>
"""
    path = out / "report.html"
    path.write_text(page)
    return path
