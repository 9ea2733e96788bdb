"""Per-service NATS credentials (`ringfence replication nats-config`): a nats-server started here
with the generated config. The node user replicates and follows; the operator user requests a
promotion (the standby verifies and takes the leadership) but can neither publish a batch to the
stream nor write the leader record; the monitor user only reads; a wrong password cannot connect;
neither operator nor monitor can read another client's replies (a standby's batches); the server
listens on 127.0.0.1 unless told otherwise, and on another address only with TLS."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from api.conftest import free_port
from ringfence.app import new_node
from ringfence.errors import ConfigError
from ringfence.ledger.commands import OpenAccount, RegisterAsset
from ringfence.replication import Follower, NatsLink, Replicator, leader_of, parse_target, promote
from ringfence.replication.auth import inbox_prefix

from .conftest import key_of, listening, peers_of

STREAM = "RFSVC"


def _peers(tmp_path) -> str:
    """The peers file of nodes a and b (the test keys), for nats-config's promote.NODE grants."""
    from ringfence.nodekey import public_hex

    path = tmp_path / "peers.json"
    path.write_text(json.dumps({node: public_hex(key_of(node)) for node in ("a", "b")}))
    return str(path)


def _start_services(tmp_path, *extra: str):
    """`nats-config` with `extra` options, then nats-server with the config: (port, passwords, process)."""
    binary = shutil.which("nats-server")
    assert binary, "nats-server is not installed on this machine (required, never skipped)"
    for attempt in range(3):  # a free port can be taken by a parallel test before nats-server binds it: a new one
        port = free_port()
        out = tmp_path / f"auth{attempt}"
        made = subprocess.run([sys.executable, "-m", "ringfence.cli", "replication", "nats-config", "--stream", STREAM,
                               "--out", str(out), "--port", str(port), "--store-dir", str(tmp_path / f"js{attempt}"),
                               "--peers", _peers(tmp_path), *extra],
                              capture_output=True, text=True, timeout=60)
        assert made.returncode == 0, made.stdout + made.stderr
        assert all(oct((out / f).stat().st_mode & 0o777) == "0o600" for f in os.listdir(out))
        log = tmp_path / f"nats{attempt}.log"
        with open(log, "wb") as sink:
            proc = subprocess.Popen([binary, "-c", str(out / "nats-server.conf")], stdout=sink, stderr=subprocess.STDOUT)
        if not listening(port, proc, 30):
            proc.kill()
            proc.wait(10)
            if attempt == 2:
                raise AssertionError("nats-server did not start:\n" + log.read_text(errors="replace")[-2000:])
            continue
        break
    passwords = {s: (out / f"{s}.password").read_text().strip() for s in ("rf-node", "rf-operator", "rf-monitor")}
    return port, passwords, proc


@pytest.fixture
def nats_services(tmp_path):
    """nats-config's server with `--no-tls` (plain loopback, development only): these tests check each service's
    permissions, in dev mode; test_nats_tls_pinned.py runs prod-mode nodes on nats-config's TLS."""
    port, passwords, proc = _start_services(tmp_path, "--no-tls")
    yield port, passwords
    proc.terminate()
    proc.wait(10)


def _url(port: int, user: str, password: str) -> str:
    return f"nats://{user}:{password}@127.0.0.1:{port}/{STREAM}"


def _inbox(url: str) -> str:
    """The inbox prefix the service in `url` gets its replies on (as NatsLink connects)."""
    from urllib.parse import urlparse

    return inbox_prefix(urlparse(url).username or "")


def _node_primary(tmp_path, port: int, pw: dict[str, str]) -> tuple[Any, Replicator]:
    """Node a (opened, started) and its Replicator connected as rf-node, not attached yet."""
    node = new_node(tmp_path / "a")
    node.open()
    node.start()
    return node, Replicator(parse_target(_url(port, "rf-node", pw["rf-node"])), "a", key=key_of("a"))


def _monitor_status(port: int, pw: dict[str, str]) -> dict[str, Any]:
    """`ringfence replication status` as rf-monitor (password from RINGFENCE_NATS_PASSWORD): its JSON, after exit 0.
    In this process (typer's runner, no interpreter start-up); the credential test below runs it as a real process."""
    from typer.testing import CliRunner

    from ringfence.cli import app

    status = CliRunner().invoke(app, ["replication", "status", "--nats", f"nats://rf-monitor@127.0.0.1:{port}/{STREAM}"],
                                env={"RINGFENCE_NATS_PASSWORD": pw["rf-monitor"]})
    assert status.exit_code == 0, status.output
    return json.loads(status.stdout)


class _Refusals:
    """A connection's error callback that keeps the server's "permissions violation for publish" errors:
    `until_refused(call)` runs `call` until it ends or the server refuses a publish made while it runs (a
    refused publish or JetStream request is otherwise seen only as its timeout, 1 to 5 s each)."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self._refused: asyncio.Event | None = None

    async def on_error(self, err: Exception) -> None:
        self.errors.append(str(err))
        if "permissions violation for publish" in str(err).lower() and self._refused is not None:
            self._refused.set()

    async def until_refused(self, call: Any) -> tuple[Any, str]:
        """(the call's result, "") or (None, the server's refusal); the call's own exception propagates.
        One call at a time: the refusal that arrives while it runs is its own."""
        self._refused, seen = asyncio.Event(), len(self.errors)
        task, refused = asyncio.ensure_future(call()), asyncio.ensure_future(self._refused.wait())
        try:
            await asyncio.wait({task, refused}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            refused.cancel()
        if task.done():
            return task.result(), ""
        task.cancel()
        return None, "refused: " + "; ".join(self.errors[seen:])


async def _try_publish(url: str, subject: str, data: bytes, headers: dict[str, str]) -> str:
    """Publish through JetStream as the given user; returns "stored" or why not."""
    import nats

    refusals = _Refusals()
    nc = await nats.connect(url.rsplit("/", 1)[0], connect_timeout=3, max_reconnect_attempts=0, error_cb=refusals.on_error,
                            inbox_prefix=_inbox(url))
    try:
        _, refused = await refusals.until_refused(lambda: nc.jetstream().publish(subject, data, headers=headers, timeout=2))
        return refused or "stored"
    except Exception as err:  # noqa: BLE001 - any refusal is what the test wants to see; it checks the reason below
        return f"{type(err).__name__} {refusals.errors}"
    finally:
        await nc.close()


def test_each_service_may_do_only_its_own_work(tmp_path, nats_services):
    port, pw = nats_services
    node, replicator = _node_primary(tmp_path, port, pw)
    follower = None
    try:
        replicator.attach(node)
        node.execute(RegisterAsset("BTC", 8, "crypto", "bitcoin"))
        node.execute_many([OpenAccount("alice", "BTC"), OpenAccount("bob", "BTC")])
        last = replicator.stream_seq
        # a publisher with the operator's (or the monitor's) credentials cannot publish to the stream
        for user in ("rf-operator", "rf-monitor"):
            headers = {"Rf-Kind": "batch", "Rf-Epoch": "9", "Nats-Expected-Last-Sequence": str(last)}
            outcome = asyncio.run(_try_publish(_url(port, user, pw[user]), f"rf.{STREAM}.batches", b"[]", headers))
            assert outcome != "stored" and "ermission" in outcome, outcome
        # nor write the leader record directly
        outcome = asyncio.run(_try_publish(_url(port, "rf-operator", pw["rf-operator"]), f"$KV.{STREAM}-leader.leader",
                                           json.dumps({"epoch": 9, "node": "x"}).encode(), {}))
        assert outcome != "stored", outcome
        # R3: nor a promotion request for a node the peers file does not hold (it made any number of 64 KiB keys)
        for user in ("rf-operator", "rf-node"):
            for key in ("promote.zz", "promote.a.b", "promote.x1"):
                outcome = asyncio.run(_try_publish(_url(port, user, pw[user]), f"$KV.{STREAM}-leader.{key}", b"x" * 1000, {}))
                assert outcome != "stored" and "ermission" in outcome, (user, key, outcome)
        info = replicator.link.call(replicator.link.js.stream_info(STREAM))
        assert info.state.last_seq == last, "a message from a service without the right got into the stream"
        assert leader_of(replicator.link, replicator.kv)[0]["node"] == "a"
        # a wrong password, or none, cannot even connect
        for bad in (_url(port, "rf-node", "wrong-" + pw["rf-node"][:8]), f"nats://127.0.0.1:{port}/{STREAM}"):
            with pytest.raises(ConfigError, match="refused the login"):
                NatsLink(parse_target(bad))
        # the monitor may not even request a promotion; the operator may, and the standby decides
        with pytest.raises(Exception):  # noqa: B017 - a permissions violation surfaces as a timeout
            promote(parse_target(_url(port, "rf-monitor", pw["rf-monitor"])), "b")
        follower = Follower(parse_target(_url(port, "rf-node", pw["rf-node"])), tmp_path / "b", "b", key=key_of("b"), peers=peers_of())
        promote(parse_target(_url(port, "rf-operator", pw["rf-operator"])), "b")
        assert follower.follow_until_promoted() == 2
        assert follower.engine.state_hash() == node.read(lambda e: e.state_hash())
        assert _monitor_status(port, pw)["leader"]["node"] == "b"
    finally:
        if follower is not None:
            follower.close()
        node.close()
        replicator.close()


async def _try_admin(url: str) -> dict[str, str]:
    """Every destructive JetStream call on the stream and the bucket, as the given user: what came of each."""
    from dataclasses import replace

    import nats
    from nats.js.api import ConsumerConfig

    refusals = _Refusals()
    nc = await nats.connect(url.rsplit("/", 1)[0], connect_timeout=3, max_reconnect_attempts=0, error_cb=refusals.on_error,
                            inbox_prefix=_inbox(url))
    js = nc.jetstream(timeout=1)
    bucket = f"KV_{STREAM}-leader"
    outcomes: dict[str, str] = {}

    async def update(name: str) -> None:  # an update that would allow rollups again
        config = (await js.stream_info(name)).config
        await js.update_stream(replace(config, allow_rollup_hdrs=True))

    try:
        calls = {"delete stream": lambda: js.delete_stream(STREAM), "delete bucket": lambda: js.delete_stream(bucket),
                 "purge stream": lambda: js.purge_stream(STREAM), "purge bucket": lambda: js.purge_stream(bucket),
                 "delete message": lambda: js.delete_msg(STREAM, 1), "delete entry": lambda: js.delete_msg(bucket, 1),
                 "add consumer": lambda: js.add_consumer(STREAM, ConsumerConfig(durable_name="x")),
                 "rollup promote": lambda: js.publish(f"$KV.{STREAM}-leader.promote.x", b"", headers={"Nats-Rollup": "all"}),
                 "rollup leader": lambda: js.publish(f"$KV.{STREAM}-leader.leader", b"", headers={"Nats-Rollup": "all"}),
                 "rollup batches": lambda: js.publish(f"rf.{STREAM}.batches", b"", headers={"Nats-Rollup": "all"}),
                 f"update {STREAM}": lambda: update(STREAM), f"update {bucket}": lambda: update(bucket)}
        for name, call in calls.items():  # one at a time, each until it ends or the server refuses it
            try:
                _, refused = await refusals.until_refused(call)
                outcomes[name] = refused or "done"
            except Exception as err:  # noqa: BLE001 - a refusal (a permissions violation is a timeout): checked by the caller
                outcomes[name] = f"{type(err).__name__} {err}"
    finally:
        await nc.close()
    return outcomes


def test_no_credential_may_delete_purge_roll_up_or_update(tmp_path, nats_services):
    """F3: none of the three users can erase the stream, the bucket or the leader record: no STREAM.DELETE,
    PURGE, UPDATE, MSG.DELETE or consumers in their permissions, and the stream and the bucket refuse
    rollup headers (which ride on publishes a node or an operator may make) whoever sends them."""
    port, pw = nats_services
    node = new_node(tmp_path / "a")
    node.open()
    node.start()
    replicator = Replicator(parse_target(_url(port, "rf-node", pw["rf-node"])), "a", tmp_path / "a", key=key_of("a"))
    try:
        replicator.attach(node)
        node.execute(RegisterAsset("BTC", 8, "crypto", "bitcoin"))
        last = replicator.stream_seq
        for user in ("rf-node", "rf-operator", "rf-monitor"):
            outcomes = asyncio.run(_try_admin(_url(port, user, pw[user])))
            assert "done" not in outcomes.values(), (user, outcomes)
        info = replicator.link.call(replicator.link.js.stream_info(STREAM))
        assert (info.state.last_seq, info.state.messages) == (last, last)
        # the refusals above are told apart by time only (one call at a time): the settings and consumers are
        # read back, so a permitted update or consumer counted as refused by a late error still fails here
        bucket = replicator.link.call(replicator.link.js.stream_info(f"KV_{STREAM}-leader"))
        assert not info.config.allow_rollup_hdrs and not bucket.config.allow_rollup_hdrs
        assert (info.state.consumer_count, bucket.state.consumer_count) == (0, 0)
        leader = leader_of(replicator.link, replicator.kv)[0]
        assert (leader["node"], leader["epoch"]) == ("a", 1)
        node.execute_many([OpenAccount("alice", "BTC")])  # and the primary still replicates
        assert replicator.stream_seq == last + 1
    finally:
        node.close()
        replicator.close()


class _Sniffer:
    """A client with a service's credentials that subscribes to other clients' reply subjects, on its own
    loop thread: what it captured, and the server's errors (a refused subscription is one)."""

    def __init__(self, url: str, subjects: list[str]) -> None:
        import nats

        self.captured: list[tuple[str, bytes]] = []
        self.errors: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

        async def on_error(err: Exception) -> None:
            self.errors.append(str(err))

        async def on_msg(msg: Any) -> None:
            self.captured.append((msg.subject, msg.data))

        async def start() -> Any:
            nc = await nats.connect(url.rsplit("/", 1)[0], connect_timeout=3, max_reconnect_attempts=0, error_cb=on_error,
                                    inbox_prefix=_inbox(url))
            for subject in subjects:
                await nc.subscribe(subject, cb=on_msg)
            await nc.flush(5)
            return nc

        self.nc = self._call(start())

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(20)

    def close(self) -> None:
        self._call(self.nc.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


def test_operator_and_monitor_cannot_read_other_clients_replies(tmp_path, nats_services):
    """I2: with nats' shared `_INBOX.>` open to every user, the monitor captured the standby's
    STREAM.MSG.GET replies (whole batches: orders, quotes). Each service now has its own inbox prefix
    and may subscribe only there: the operator and the monitor are refused every other reply subject
    and capture nothing while a primary replicates and a standby follows."""
    port, pw = nats_services
    node, replicator = _node_primary(tmp_path, port, pw)
    follower = None
    sniffers: dict[str, _Sniffer] = {}
    try:
        replicator.attach(node)
        others = {"rf-operator": "rf-monitor", "rf-monitor": "rf-operator"}
        for user, other in others.items():
            subjects = ["_INBOX.>", "_INBOX.*.*", ">", "_INBOX_rf-node.>", f"_INBOX_{other}.>", "_INBOX_rf-node.*.*"]
            sniffers[user] = _Sniffer(_url(port, user, pw[user]), subjects)
        # traffic: batches published by the primary and read back, by sequence, by the standby
        node.execute(RegisterAsset("BTC", 8, "crypto", "bitcoin"))
        node.execute_many([OpenAccount("alice", "BTC"), OpenAccount("bob", "BTC")])
        follower = Follower(parse_target(_url(port, "rf-node", pw["rf-node"])), tmp_path / "b", "b", key=key_of("b"),
                            peers=peers_of())
        assert follower.poll() >= 2  # the standby did read the batches (STREAM.MSG.GET, replies on its inbox)
        assert follower.engine.state_hash() == node.read(lambda e: e.state_hash())
        # the operator and the monitor still do their own work through their own inbox
        assert _monitor_status(port, pw)["leader"]["node"] == "a"
        time.sleep(0.5)
        for user, sniffer in sniffers.items():
            assert sniffer.captured == [], (user, [subject for subject, _ in sniffer.captured][:5])
            refused = {e.lower() for e in sniffer.errors if "permissions violation for subscription" in e.lower()}
            assert len(refused) == 6, (user, sniffer.errors)  # each of the six subscriptions, by name (nats-py lowercases)
            assert any(e.endswith('permissions violation for subscription to "_inbox.>"') for e in refused), refused
    finally:
        for sniffer in sniffers.values():
            sniffer.close()
        if follower is not None:
            follower.close()
        node.close()
        replicator.close()


def test_nats_config_listens_on_loopback_and_elsewhere_only_with_tls(tmp_path):
    """I6f: the generated config listens on 127.0.0.1; another address with --no-tls is refused (the
    passwords would cross the network in clear text) and nothing is written; with --tls-cert/--tls-key
    it gets a tls block, and the services connect over verified TLS. (nats-config's own CA, the default:
    test_nats_tls_pinned.py.)"""
    from .test_nats_tls import _cert  # the CA and server certificate for 127.0.0.1 the TLS tests use

    def config(*extra: str) -> Any:
        """`ringfence replication nats-config` in this process (typer's runner: the same command code without an
        interpreter start-up each; `_start_services` runs it as a real process)."""
        from typer.testing import CliRunner

        from ringfence.cli import app

        result = CliRunner().invoke(app, ["replication", "nats-config", "--stream", STREAM, *extra], env={"COLUMNS": "300"})
        result.returncode = result.exit_code
        return result

    refused = config("--out", str(tmp_path / "nopeers"))  # R3: the grants name the peers' nodes
    assert refused.returncode == 2 and "--peers: give the peers file" in refused.stdout + refused.stderr, refused.stderr
    assert not (tmp_path / "nopeers").exists()
    made = config("--out", str(tmp_path / "plain"), "--peers", _peers(tmp_path), "--no-tls")
    assert made.returncode == 0, made.stdout + made.stderr
    granted = {user["user"]: user["permissions"]["publish"]["allow"] for user in
               json.loads((tmp_path / "plain" / "nats-server.conf").read_text())["authorization"]["users"]}
    assert [s for s in granted["rf-operator"] if "promote" in s] == [f"$KV.{STREAM}-leader.promote.a",
                                                                     f"$KV.{STREAM}-leader.promote.b"], granted
    written = json.loads((tmp_path / "plain" / "nats-server.conf").read_text())
    assert (written["host"], "tls" in written) == ("127.0.0.1", False)
    for listen in ("0.0.0.0", "10.0.0.5", "nats.example.com"):
        refused = config("--out", str(tmp_path / listen), "--listen", listen, "--peers", _peers(tmp_path), "--no-tls")
        assert refused.returncode == 2 and "clear text" in refused.stdout + refused.stderr, refused.stdout + refused.stderr
        assert not (tmp_path / listen).exists()
    refused = config("--out", str(tmp_path / "nokey"), "--listen", "0.0.0.0", "--tls-cert", str(tmp_path / "missing.pem"),
                     "--peers", _peers(tmp_path))
    assert refused.returncode == 2 and "--tls-cert" in refused.stdout + refused.stderr, refused.stdout + refused.stderr

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    ca_key, srv_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ringfence test CA")])
    ca = _cert("ringfence test CA", ca_key, ca_name, ca_key, ca=True)
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "srv.pem").write_bytes(_cert("nats", ca_key, ca_name, srv_key, ca=False).public_bytes(serialization.Encoding.PEM))
    (tmp_path / "srv.key").write_bytes(srv_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                             serialization.NoEncryption()))
    port, pw, proc = _start_services(tmp_path, "--listen", "0.0.0.0", "--tls-cert", str(tmp_path / "srv.pem"),
                                     "--tls-key", str(tmp_path / "srv.key"))
    try:
        node = new_node(tmp_path / "a")
        node.open()
        tls_url = f"tls://rf-node:{pw['rf-node']}@127.0.0.1:{port}/{STREAM}?tls_ca={tmp_path / 'ca.pem'}"
        replicator = Replicator(parse_target(tls_url), "a", key=key_of("a"))
        try:
            assert replicator.link.encrypted()
            replicator.attach(node)
            node.execute(RegisterAsset("BTC", 8, "crypto", "bitcoin"))
            assert replicator.stream_seq >= 1
        finally:
            node.close()
            replicator.close()
        with pytest.raises(ConfigError, match="cannot reach NATS"):  # the server requires TLS: no plain connection
            NatsLink(parse_target(_url(port, "rf-monitor", pw["rf-monitor"])))
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_credential_without_a_nodes_rights_is_named_not_a_traceback(tmp_path, nats_services):
    """New-user review: `serve --replicate` as rf-operator (or rf-node on a stream its grants do not cover) printed a
    50-line TimeoutError traceback; the server's "permissions violation" is now the error, naming the option."""
    port, pw = nats_services

    def start(argv: list[str], password: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "ringfence.cli", *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=dict(os.environ, RINGFENCE_NATS_PASSWORD=password))

    # the four commands run side by side (each waits on the server's refusal): their outputs are checked below
    serves = {(user, stream): start(["serve", "--data", str(tmp_path / user), "--port", str(free_port()), "--replicate",
                                     f"nats://{user}@127.0.0.1:{port}/{stream}", "--node-id", "a"], pw[user])
              for user, stream in (("rf-operator", STREAM), ("rf-node", "NOTGRANTED"))}
    commands = {tuple(command): start(["replication", *command, "--nats", f"nats://rf-monitor@127.0.0.1:{port}/NOTGRANTED"],
                                      pw["rf-monitor"])
                for command in (["status"], ["promote", "--node-id", "b", "--wait-s", "1", "--peers", _peers(tmp_path)])}
    try:
        for (user, stream), proc in serves.items():
            out = proc.communicate(timeout=180)[0]
            assert proc.returncode != 0 and "Traceback" not in out, out[-3000:]
            assert f"--replicate: NATS user {user} may not use stream {stream}" in " ".join(out.split()), out[-3000:]
            assert pw[user] not in out
        for command, proc in commands.items():
            out = proc.communicate(timeout=120)[0]
            assert proc.returncode != 0 and "Traceback" not in out, (command, out[-3000:])
            assert "--nats: " in out and "rf-monitor" in out, (command, out[-3000:])
    finally:
        for proc in (*serves.values(), *commands.values()):
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def test_a_standby_whose_login_may_not_list_or_read_the_stream_is_told_so_in_one_line(tmp_path, nats_services):
    """The primary's start names a credential without a node's rights (above); a standby's printed the client's raw
    `nats: Error: nats: permissions violation for publish to "$js.api.stream.list"` (rf-node may not list streams:
    the missing-stream hint already says so), and with rf-monitor or rf-operator as --standby a TimeoutError
    traceback at its first read of the stream, or an error naming --replicate. Now: no raw client line; a login
    that may not read or make the stream is one error naming --standby, at the start, exit 2."""
    from .conftest import Standby, peers_file

    port, pw = nats_services
    standby = Standby(tmp_path / "b", f"nats://rf-node@127.0.0.1:{port}/{STREAM}", "b", free_port(),
                      env={"RINGFENCE_NATS_PASSWORD": pw["rf-node"]})  # the stream is not there yet: it waits for a primary
    try:
        text = standby.text()
    finally:
        assert standby.stop() == 0
    assert f"stream {STREAM} does not exist" in text and "not listed (this NATS user may not list streams)" in text, text
    assert "permissions violation" not in text and not [line for line in text.splitlines() if line.startswith("nats:")], text
    for user in ("rf-monitor", "rf-operator"):  # the stream exists now; they may look at it, not read its messages
        data = tmp_path / user
        data.mkdir()
        (tmp_path / f"peers-{user}").mkdir()
        env = dict(os.environ, RINGFENCE_NATS_PASSWORD=pw[user], **peers_file(tmp_path / f"peers-{user}", b=data))
        done = subprocess.run([sys.executable, "-m", "ringfence.cli", "serve", "--data", str(data), "--port", str(free_port()),
                               "--standby", f"nats://{user}@127.0.0.1:{port}/{STREAM}", "--node-id", "b"],
                              capture_output=True, text=True, timeout=180, env=env, stdin=subprocess.DEVNULL)
        raw = done.stdout + done.stderr
        out = " ".join(raw.split())
        assert done.returncode == 2 and "Traceback" not in out, raw[-3000:]
        assert f"error: --standby: NATS user {user} may not use stream {STREAM}" in out, raw[-3000:]
        assert "permissions violation for publish to" in out and "rf-node to serve (--replicate or --standby)" in out, out
        assert not [line for line in raw.splitlines() if line.startswith("nats:")], raw  # no raw client line
        assert pw[user] not in out


def test_harden_without_the_right_says_the_servers_words(tmp_path, nats_services):
    """Fresh-eyes review of s20: the link held every permissions violation from its start until the stream's set-up,
    which `harden` never runs, so its error lost the server's explanation (only 'TimeoutError (is this NATS user
    allowed to update streams?)'). Now it is held only during the set-up, and harden's error quotes it."""
    port, pw = nats_services
    done = subprocess.run([sys.executable, "-m", "ringfence.cli", "replication", "harden", "--nats",
                           f"nats://rf-node@127.0.0.1:{port}/OTHER"], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, RINGFENCE_NATS_PASSWORD=pw["rf-node"], COLUMNS="400"), stdin=subprocess.DEVNULL)
    out = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 1 and "Traceback" not in out, out
    assert "error: --nats: cannot update the stream OTHER: NATS user rf-node may not (the server said:" in out, out
    assert 'permissions violation for publish to "$js.api.stream.info.other"' in out.lower(), out
    assert pw["rf-node"] not in out


def test_a_token_url_never_prints_its_token(tmp_path, nats_with_token):
    """Fresh-eyes review of s20: `nats://TOKEN@host` was masked as *** in display, but the standby's "promote with:"
    banner printed `--nats nats://TOKEN@...` and a refused login `user TOKEN was given no password ... TOKEN.password`.
    A name without a password that is none of nats-config's users (rf-node...) is a token: shown as ***."""
    from .conftest import Standby

    port, token = nats_with_token
    env = {k: v for k, v in os.environ.items() if k != "RINGFENCE_NATS_PASSWORD"}
    standby = Standby(tmp_path / "b", f"nats://{token}@127.0.0.1:{port}/TK", "b", free_port(), env={})
    try:
        text = standby.text()
    finally:
        assert standby.stop() == 0
    assert "promote with: ringfence replication promote --nats nats://***@127.0.0.1:" in text, text
    assert token not in text, text
    wrong = "wrong" + token
    for url in (f"nats://{wrong}@127.0.0.1:{port}/TK", f"nats://rf-node@127.0.0.1:{port}/TK"):
        done = subprocess.run([sys.executable, "-m", "ringfence.cli", "replication", "status", "--nats", url],
                              capture_output=True, text=True, timeout=120, env=env, stdin=subprocess.DEVNULL)
        out = " ".join((done.stdout + done.stderr).split())
        assert done.returncode != 0 and "refused the login" in out and "Traceback" not in out, out
        assert wrong not in out and token not in out, out
    assert "user rf-node was given no password" in out, out  # a service user's name is a name, not a token


def test_dr_drill_names_a_refused_login_and_the_permissions_it_needs(tmp_path, nats_services):
    """New-user review (issue #21): `dr drill --nats nats://rf-node@HOST:PORT` with the password in
    RINGFENCE_NATS_PASSWORD said `cannot reach NATS … NoServersError` (the drill's check ignored that variable;
    a refused login read as an unreachable server); with user:pass in the URL it went ahead and died in a raw
    `nats.errors.TimeoutError` traceback deleting its stream, which rf-node may not. Now a wrong password is
    named as a refused login (as `replication status` names it) and a user that may not make and delete a
    stream is refused before anything is made, naming what the drill needs."""
    port, passwords = nats_services
    password = passwords["rf-node"]
    runs = (("nats://rf-node@127.0.0.1:{port}", "wrong-" + password, "refused the login"),
            ("nats://rf-node@127.0.0.1:{port}", password, "may not make and delete a stream"),
            (f"nats://rf-node:{password}@127.0.0.1:{{port}}", "", "may not make and delete a stream"))
    for i, (url, env_password, expected) in enumerate(runs):
        out = tmp_path / f"never{i}"
        env = {k: v for k, v in os.environ.items() if k != "RINGFENCE_NATS_PASSWORD"}
        if env_password:
            env["RINGFENCE_NATS_PASSWORD"] = env_password
        proc = subprocess.run([sys.executable, "-m", "ringfence.cli", "dr", "drill", "--nats", url.format(port=port),
                               "--scenario", "kill", "--out", str(out)], capture_output=True, text=True, timeout=120, env=env)
        said = " ".join((proc.stdout + proc.stderr).split())
        assert proc.returncode == 1 and expected in said and "Traceback" not in said, said
        assert "cannot reach" not in said and password not in said, said
        if "stream" in expected:
            assert "user rf-node" in said and "JetStream API" in said and "delete" in said, said
        assert not out.exists()
