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
import hashlib
import hmac
import html
import json
import os
import random
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlparse

import httpx

__all__ = ["run_drill", "DrillResult"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
        }


class _Proc:
    def __init__(self, argv: list[str], log: Path, env: dict[str, str]) -> None:
        self.log_path = log
        self.log = open(log, "w")
        self.argv = argv
        self.proc = subprocess.Popen([sys.executable, "-m", "ringfence.cli", *argv], stdout=self.log,
                                     stderr=subprocess.STDOUT, env=env)

    def text(self) -> str:
        self.log.flush()
        return self.log_path.read_text()

    def wait_log(self, pattern: str, timeout_s: float = 60) -> re.Match[str]:  # float-ok: seconds
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = list(re.finditer(pattern, self.text()))
            if found:
                return found[-1]
            if self.proc.poll() is not None:
                raise RuntimeError(f"ringfence {' '.join(self.argv)} exited {self.proc.returncode}:\n{self.text()[-2000:]}")
            time.sleep(0.05)
        raise RuntimeError(f"ringfence {' '.join(self.argv)} never logged /{pattern}/:\n{self.text()[-2000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


def _wait_ready(base: str, proc: _Proc, timeout_s: float = 60) -> None:  # float-ok: seconds
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.proc.poll() is not None:
            raise RuntimeError(f"the server exited {proc.proc.returncode}:\n{proc.text()[-2000:]}")
        try:
            if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass  # not listening yet
        time.sleep(0.05)
    raise RuntimeError("the server never became ready:\n" + proc.text()[-2000:])


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


def check_nats(nats_url: str) -> None:
    """Raise RuntimeError (a sentence, the URL's password hidden) unless `nats_url` is a nats:// or tls://
    URL of a NATS server that answers: checked before the drill makes any folder or node."""
    from . import masked

    parsed = urlparse(nats_url)
    if parsed.scheme not in ("nats", "tls") or not parsed.hostname:
        raise RuntimeError(f"must be a nats://host:port or tls://host:port URL; got {parsed.scheme or 'no'} scheme")

    async def go() -> None:
        import nats

        async def quiet(_err: Exception) -> None:  # the one line below says it; no traceback per attempt
            return None

        nc = await nats.connect(nats_url, connect_timeout=3, max_reconnect_attempts=1, reconnect_time_wait=0.2,
                                error_cb=quiet)
        await nc.close()

    try:
        asyncio.run(asyncio.wait_for(go(), 20))
    except Exception as err:  # nats' NoServersError, OSError, a timeout: all mean it cannot be reached
        raise RuntimeError(f"cannot reach NATS at {masked(nats_url)}: {type(err).__name__}") from None


def _delete_stream(nats_url: str, stream: str) -> None:
    async def go() -> None:
        import nats
        from nats.js.errors import NotFoundError

        nc = await nats.connect(nats_url, connect_timeout=3)
        try:
            for name in (stream, f"KV_{stream}-leader"):
                try:
                    await nc.jetstream().delete_stream(name)
                except NotFoundError:
                    pass  # never created
        finally:
            await nc.close()

    asyncio.run(go())


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


def run_drill(scenario: str, nats_url: str, seed: int, workdir: Path, *, before: int = 60, after: int = 20,
              lease_ms: int = 1000, say: Any = print) -> DrillResult:
    """Run one scenario ('kill' or 'partition') and return what it proved."""
    from ..app import replay_journal
    from . import parse_target, promote

    rng = random.Random(seed)
    result = DrillResult(scenario, seed, lease_ms=lease_ms)
    stream = f"RFDRILL{scenario.upper()}{secrets.token_hex(4).upper()}"
    workdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="400",
               RINGFENCE_DATABASE_URL=f"sqlite:///{(workdir / 'identity.sqlite3').resolve()}")
    parsed = urlparse(nats_url)
    proxy = _Proxy(parsed.hostname or "127.0.0.1", parsed.port or 4222) if scenario == "partition" else None
    primary_nats = f"nats://127.0.0.1:{proxy.port}" if proxy else nats_url
    pa, pb = _free_port(), _free_port()
    a_base, b_base = f"http://127.0.0.1:{pa}", f"http://127.0.0.1:{pb}"
    env["RINGFENCE_REPLICATION_PEERS"] = str(write_peers(workdir / "peers.json", {"a": workdir / "a", "b": workdir / "b"}))
    primary = _Proc(["serve", "--demo", "--data", str(workdir / "a"), "--port", str(pa), "--replicate",
                     f"{primary_nats}/{stream}?lease_ms={lease_ms}", "--node-id", "a"], workdir / "primary.log", env)
    standby: _Proc | None = None
    t0 = time.monotonic()
    try:
        _wait_ready(a_base, primary)
        standby_url = f"{nats_url}/{stream}" + ("?auto_promote=1" if scenario == "partition" else "")
        standby = _Proc(["serve", "--data", str(workdir / "b"), "--port", str(pb), "--standby", standby_url,
                         "--node-id", "b"], workdir / "standby.log", env)
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
            promote(parse_target(f"{nats_url}/{stream}", "--nats"), "b", _operator_quorum(workdir / "a", stream, "b", 2))
        else:
            assert proxy is not None
            proxy.cut()
            # keep sending to the partitioned primary: anything it still acknowledges must be replicated
            deadline = time.monotonic() + 3 * lease_ms / 1000
            while time.monotonic() < deadline and i < len(orders):
                if clients[i % 2].place(a_base, orders[i]):
                    result.acked.append((time.monotonic() - t0, "a", orders[i]["newClientOrderId"]))
                    result.last_old_ack_s = time.monotonic() - t0
                i += 1
        m = standby.wait_log(r"promoted at epoch (\d+), fenced at stream sequence \d+, journal sequence (\d+) state hash ([0-9a-f]{64})")
        result.promoted_at_s = time.monotonic() - t0
        result.cut_seq, result.standby_hash = int(m.group(2)), m.group(3)
        _wait_ready(b_base, standby)
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
        _delete_stream(nats_url, stream)
    if result.lost:
        result.problems.append(f"{len(result.lost)} acknowledged orders are missing on the new primary")
    if result.primary_hash != result.standby_hash:
        result.problems.append("the state hash at the cut-over differs between the standby and the old primary")
    if scenario == "partition" and result.last_old_ack_s and (result.last_old_ack_s - result.failed_at_s) * 1000 > lease_ms:
        result.problems.append("the partitioned primary acknowledged after its lease ran out")
    return result


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
    return f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">{axis}{dots}{lines}</svg>'


def write_report(results: list[DrillResult], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps([r.summary() for r in results], indent=2) + "\n")
    sections = []
    for r in results:
        s = r.summary()
        rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in s.items())
        verdict = "PASSED" if r.problems == [] else "FAILED"
        sections.append(f"<h2>{html.escape(r.scenario)} — {verdict}</h2><p>Acknowledgements over time: node a (old primary) "
                        f"and node b (standby, then primary).</p>{_svg(r)}<table>{rows}</table>")
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>ringfence DR drill</title><style>body{font-family:sans-serif;"
            "margin:2em}td,th{text-align:left;padding:2px 8px;border-bottom:1px solid #ddd}</style></head><body>"
            f"<h1>ringfence disaster-recovery drill</h1>{''.join(sections)}</body></html>")
    path = out / "report.html"
    path.write_text(page)
    return path
