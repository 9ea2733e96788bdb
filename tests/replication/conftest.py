"""Replication fixtures: a unique JetStream stream per test (deleted after), standby processes.

The machine's NATS server (127.0.0.1:4222, JetStream) is required: when it is missing the tests
FAIL with the connection error, they are never skipped.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from api.conftest import free_port
from launcher import spawn_cli

NATS_URL = os.environ.get("RINGFENCE_TEST_NATS_URL", "nats://127.0.0.1:4222")

_KEYS: dict[str, object] = {}


def key_of(node: str):
    """The Ed25519 key of test node `node` (one per node name for the whole test process)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if node not in _KEYS:
        _KEYS[node] = Ed25519PrivateKey.generate()
    return _KEYS[node]


#: the node names the in-process tests use
NODES = ("a", "b", "c", "fresh", *(f"n{i}" for i in range(64)))


def peers_of(*nodes: str) -> dict:
    """A peers file's content (node id -> public key) for `nodes` (default: every test node)."""
    return {node: key_of(node).public_key() for node in (nodes or NODES)}


def peers_file(tmp_path: Path, **data_dirs: Path) -> dict[str, str]:
    """For real processes: each node's DATA_DIR/node.key made now, and the env pointing at the peers file."""
    from ringfence.replication.drill import write_peers

    path = write_peers(tmp_path / "peers.json", data_dirs)
    return {"RINGFENCE_REPLICATION_PEERS": str(path)}


def attached_primary(tmp_path: Path, stream: str, query: str = "", peers: dict | None = None, node_id: str = "a") -> tuple:
    """An in-process primary: a new node in tmp_path/node_id, opened and started, and its Replicator on
    `stream` (URL options in `query`, e.g. "?lease_ms=300") attached to it."""
    from ringfence.app import new_node
    from ringfence.replication import Replicator, parse_target

    node = new_node(tmp_path / node_id)
    node.open()
    node.start()
    replicator = Replicator(parse_target(f"{NATS_URL}/{stream}{query}"), node_id, key=key_of(node_id), peers=peers)
    replicator.attach(node)
    return node, replicator


@contextmanager
def running(node, replicator) -> Iterator[tuple]:
    """A primary (node and its Replicator) for the `with` block: both closed after it, node first."""
    try:
        yield node, replicator
    finally:
        node.close()
        replicator.close()


@contextmanager
def standby(target, tmp_path: Path, node_id: str = "b", peers: dict | None = None) -> Iterator:
    """An in-process Follower of `target` in tmp_path/node_id with node_id's key, closed after the block."""
    from ringfence.replication import Follower

    follower = Follower(target, tmp_path / node_id, node_id, key=key_of(node_id), peers=peers)
    try:
        yield follower
    finally:
        follower.close()


def assert_follows(target, folder: Path, node) -> None:
    """Standby b (peers a, b) in `folder` reads the primary's opener and one batch of `target` and reaches
    `node`'s state; closed either way."""
    from ringfence.replication import Follower

    follower = Follower(target, folder, "b", key=key_of("b"), peers=peers_of())
    try:
        assert follower.poll() == 2  # the primary's opener (message 1) and the batch
        assert follower.engine.state_hash() == node.read(lambda e: e.state_hash())
    finally:
        follower.close()


async def _delete_stream(stream: str) -> None:
    import nats
    from nats.js.errors import NotFoundError

    nc = await nats.connect(NATS_URL, connect_timeout=3)
    try:
        js = nc.jetstream()
        for name in (stream, f"KV_{stream}-leader"):
            try:
                await js.delete_stream(name)
            except NotFoundError:
                pass  # never created (the test failed before using it)
    finally:
        await nc.close()


#: the stream no test deletes (`stream`)
KEEP_STREAM = "RFTESTKEEP"


@pytest.fixture
def stream() -> str:
    """A unique stream name; the stream and its leadership bucket are deleted after the test."""
    name = "RFTEST" + secrets.token_hex(5).upper()

    async def ping() -> None:  # fails (never skips) when NATS is not there
        import nats

        nc = await nats.connect(NATS_URL, connect_timeout=3, max_reconnect_attempts=0)
        try:  # one stream that is never deleted: nats-server 2.9 removes the account's folder with its last
            # stream, and a stream another worker creates at that moment fails ('error creating store for stream')
            await nc.jetstream().add_stream(name=KEEP_STREAM, subjects=[f"{KEEP_STREAM.lower()}.unused"])
        finally:
            await nc.close()

    asyncio.run(ping())
    yield name
    asyncio.run(_delete_stream(name))


class Standby:
    """`ringfence serve --standby` as a real process; `wait_ready()` after a promotion."""

    def __init__(self, data: Path, url: str, node_id: str, port: int, env: dict[str, str] | None = None,
                 args: tuple[str, ...] = ()) -> None:
        self.data, self.port, self.node_id = data, port, node_id
        self.base = f"http://127.0.0.1:{port}"
        data.mkdir(parents=True, exist_ok=True)
        self.log_path = data.parent / f"standby-{node_id}-{port}.log"
        self.log = open(self.log_path, "w")
        self.argv = ["serve", "--data", str(data), "--port", str(port), "--standby", url, "--node-id", node_id, *args]
        if env is None or "RINGFENCE_REPLICATION_PEERS" not in env:  # a standby of its own: a peers file of one
            env = dict(env or {}, **peers_file(data.parent, **{node_id: data}))
        self.proc = spawn_cli(self.argv, dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="400",  # tests/launcher.py
                                              RINGFENCE_RECONCILE_EVERY_MS="1000", **(env or {})), self.log)
        self.wait_for(r"standby \S+: following stream")

    def text(self) -> str:
        self.log.flush()
        return self.log_path.read_text()

    def wait_for(self, pattern: str, timeout_s: float = 60) -> re.Match[str]:  # float-ok: seconds
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            found = list(re.finditer(pattern, self.text().replace("\n", " ")))
            if found:
                return found[-1]
            if self.proc.poll() is not None:
                raise AssertionError(f"standby exited {self.proc.returncode}:\n{self.text()[-3000:]}")
            time.sleep(0.1)
        raise AssertionError(f"standby never logged /{pattern}/; reproduce with: ringfence {' '.join(self.argv)}\n"
                             + self.text()[-3000:])

    def wait_ready(self, timeout_s: float = 60) -> None:  # float-ok: seconds
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"promoted standby exited {self.proc.returncode}:\n{self.text()[-3000:]}")
            try:
                if httpx.get(self.base + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass  # not listening yet
            time.sleep(0.2)
        raise AssertionError("the promoted standby never became ready:\n" + self.text()[-3000:])

    def stop(self) -> int:
        self.proc.terminate()
        try:
            code = self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = -9
        self.log.close()
        return code


def listening(port: int, proc: subprocess.Popen, seconds: int = 20) -> bool:
    """Whether `proc` (a server just started) accepts connections on 127.0.0.1:`port` within `seconds`."""
    deadline = time.time() + seconds
    while time.time() < deadline and proc.poll() is None:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.1)
    return False


@contextmanager
def _nats_server_with(store: Path, *auth: str) -> Iterator[int]:
    """A nats-server of its own on a free port, JetStream on, with the `auth` arguments: its port."""
    binary = shutil.which("nats-server")
    assert binary, "nats-server is not installed on this machine (required, never skipped)"
    port = free_port()
    proc = subprocess.Popen([binary, "-p", str(port), "-js", "-sd", str(store), *auth],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if not listening(port, proc):
            raise AssertionError("nats-server did not start")
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def nats_with_password(tmp_path):
    """A nats-server of its own on a free port, JetStream on, user `rf` with a random password: (port, password)."""
    password = "pw-" + secrets.token_hex(8)
    with _nats_server_with(tmp_path / "js", "--user", "rf", "--pass", password) as port:
        yield port, password


@pytest.fixture
def nats_tls_with_password(tmp_path):
    """As `nats_with_password`, over TLS with a certificate for 127.0.0.1 from a private CA (`auth.make_tls`, as
    `nats-config` makes them): (port, password, the CA's file). Prod-mode clients need tls:// and `tls_ca=`."""
    from ringfence.replication.auth import make_tls

    made = make_tls("127.0.0.1")
    for name, pem in made.items():
        (tmp_path / f"tls-{name}.pem").write_bytes(pem)
    password = "pw-" + secrets.token_hex(8)
    with _nats_server_with(tmp_path / "js", "--user", "rf", "--pass", password, "--tls", "--tlscert",
                           str(tmp_path / "tls-cert.pem"), "--tlskey", str(tmp_path / "tls-key.pem")) as port:
        yield port, password, tmp_path / "tls-ca.pem"


@pytest.fixture
def nats_with_token(tmp_path):
    """A nats-server of its own on a free port, JetStream on, requiring a random token (`nats://TOKEN@host`):
    (port, token)."""
    token = "tok" + secrets.token_hex(8)
    with _nats_server_with(tmp_path / "js-token", "--auth", token) as port:
        yield port, token
