"""More of what a fresh-eyes operator met in issue #21's replicated setup, each through the real path:
a deposed primary refuses every write with its reason; the replication commands' options and exits."""

from __future__ import annotations

import sqlite3
from functools import partial

import pytest
from fastapi.testclient import TestClient

from ringfence.ledger.commands import RegisterAsset
from ringfence.replication import Fenced, Follower, parse_target, promote

from .conftest import NATS_URL, key_of, peers_of


def _users(data) -> list[str]:
    with sqlite3.connect(data / "identity.sqlite3") as db:
        return [row[0] for row in db.execute("SELECT email FROM identity_users ORDER BY email")]


def test_a_deposed_primary_refuses_every_write_and_says_why(tmp_path, stream, monkeypatch):
    """After a promotion the old primary's engine stops (Fenced); its identity writes must stop too: a
    user signed up there would exist on no other node. /readyz says why it stopped."""
    from ringfence.api.serve import build
    from ringfence.replication import Replicator
    from ringfence.replication.serving import after_build

    monkeypatch.delenv("RINGFENCE_DATABASE_URL", raising=False)
    monkeypatch.delenv("RINGFENCE_MODE", raising=False)
    target = parse_target(f"{NATS_URL}/{stream}")
    data = tmp_path / "a"
    app, exchange, info = build(data, demo=False)
    replicator = Replicator(target, "a", data / "engine", key=key_of("a"))
    after_build(exchange, replicator, print)
    follower = Follower(target, tmp_path / "b", "b", key=key_of("b"), peers=peers_of())
    try:
        with TestClient(app, client=("127.0.0.1", 50000)) as http:  # type: ignore[arg-type]
            form = {"email": "before@example.com", "password": "correct horse battery staple 42"}
            first = http.post("/signup", data=form)
            assert first.status_code == 200, first.text[-1500:]
            ready = http.get("/readyz").json()
            assert ready["ready"] is True and ready["stopped"] is None, ready
            follower.poll()
            promote(target, "b")
            assert follower.follow_until_promoted() == 2
            with pytest.raises(Exception, match="not replicated"):  # its next batch is refused: the node stops
                exchange.node.submit(RegisterAsset("BTC", 8, "crypto", "bitcoin")).result(30)  # type: ignore[attr-defined]
            assert isinstance(exchange.node.failed, Fenced)  # type: ignore[attr-defined]
            refused = http.post("/signup", data=dict(form, email="after@example.com"))
            assert refused.status_code == 503, refused.text
            assert "deposed" in refused.json()["stopped"] and "deposed" in refused.json()["msg"], refused.text
            for path in ("/login", "/forgot-password", "/api/v3/order", "/api/v1/apiKey"):
                assert http.post(path, data={"email": "before@example.com"}).status_code == 503, path
            ready = http.get("/readyz")
            assert ready.status_code == 503 and "deposed" in ready.json()["stopped"], ready.text
            assert http.get("/healthz").status_code == 200  # reads still answer
        assert _users(data) == ["before@example.com"]  # nothing written after the fence
    finally:
        follower.close()
        replicator.close()
        exchange.node.close()  # type: ignore[attr-defined]


def _cli(*args: str) -> tuple[int, str]:
    from typer.testing import CliRunner

    from ringfence.cli import app

    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "300"})
    return result.exit_code, " ".join(result.output.split())


def test_node_key_needs_an_existing_folder_or_its_parent_and_takes_data(tmp_path):
    code, out = _cli("replication", "node-key", "--data-dir", "/etc/passwd", "--node-id", "zz")
    assert code == 2 and "--data: /etc/passwd is a file, not a folder" in out and "Traceback" not in out, out
    typo = tmp_path / "nonexistent" / "x"
    code, out = _cli("replication", "node-key", "--data-dir", str(typo), "--node-id", "zz")
    # serve's rule (cli_paths.refuse_missing_parent): a missing parent outside the current directory is refused
    assert code == 2 and f"--data: {typo.parent} does not exist" in " ".join(out.split()) and "mkdir -p" in out, out
    assert not (tmp_path / "nonexistent").exists()  # a typo creates nothing
    code, out = _cli("replication", "node-key", "--data", str(tmp_path / "a"), "--node-id", "a")  # a new node's folder
    assert code == 0 and out.startswith('{"a": "'), out
    code, again = _cli("replication", "node-key", "--data-dir", str(tmp_path / "a"), "--node-id", "a")  # the old name
    assert code == 0 and again == out
    code, out = _cli("replication", "node-key", "--help")
    assert "--data" in out and "Exit status: 0" in out, out


def test_status_exits_1_when_the_leader_record_is_forged(tmp_path, stream):
    import json

    from ringfence.app import new_node
    from ringfence.nodekey import public_hex
    from ringfence.replication import Replicator

    node = new_node(tmp_path / "a")
    node.open()
    node.start()
    replicator = Replicator(parse_target(f"{NATS_URL}/{stream}"), "a", key=key_of("a"))
    try:
        replicator.attach(node)
        right, wrong = tmp_path / "peers.json", tmp_path / "wrongkey.json"
        right.write_text(json.dumps({"a": public_hex(key_of("a"))}))
        wrong.write_text(json.dumps({"a": public_hex(key_of("b"))}))
        code, out = _cli("replication", "status", "--nats", f"{NATS_URL}/{stream}", "--peers", str(right))
        assert code == 0 and '"leader_signature": "valid"' in out, out
        code, out = _cli("replication", "status", "--nats", f"{NATS_URL}/{stream}", "--peers", str(wrong))
        assert code == 1 and '"leader_signature": "forged"' in out, out
        code, out = _cli("replication", "status", "--help")
        assert "1 the leader record's signature is forged" in out, out
    finally:
        node.close()
        replicator.close()


def test_harden_names_its_own_option():
    code, out = _cli("replication", "harden", "--nats", "nats://127.0.0.1:1/RF")
    assert code == 1 and "--nats: cannot reach NATS" in out and "--replicate" not in out, out


def test_promote_refuses_at_once_a_node_that_already_leads_or_is_not_in_the_peers_file(tmp_path, stream, monkeypatch):
    import json
    import time

    from ringfence.app import new_node
    from ringfence.nodekey import public_hex
    from ringfence.replication import Replicator

    url = f"{NATS_URL}/{stream}"
    peers = tmp_path / "peers.json"
    peers.write_text(json.dumps({node: public_hex(key_of(node)) for node in ("a", "b")}))
    code, out = _cli("replication", "promote", "--nats", url, "--node-id", "zz", "--peers", str(peers))
    assert code == 2 and "--node-id: 'zz' is not a node of the peers file" in out and "a, b" in out, out
    monkeypatch.setenv("RINGFENCE_REPLICATION_PEERS", str(peers))
    code, out = _cli("replication", "promote", "--nats", url, "--node-id", "zz")
    assert code == 2 and "'zz' is not a node" in out, out
    monkeypatch.delenv("RINGFENCE_REPLICATION_PEERS")
    node = new_node(tmp_path / "a")
    node.open()
    node.start()
    replicator = Replicator(parse_target(url), "a", key=key_of("a"))
    try:
        replicator.attach(node)
        # R4: without a peers file a mistyped --node-id waited --wait-s for a standby that never answers; now refused at once
        started = time.monotonic()
        code, out = _cli("replication", "promote", "--nats", url, "--node-id", "zz", "--wait-s", "20")
        assert code == 2 and "--peers: give the peers file (or RINGFENCE_REPLICATION_PEERS)" in out, out
        assert time.monotonic() - started < 10, "it waited for a verdict that never comes"
        started = time.monotonic()
        code, out = _cli("replication", "promote", "--nats", url, "--node-id", "a", "--wait-s", "20", "--peers", str(peers))
        assert code == 1 and "--node-id: a already leads at epoch 1" in out, out
        assert time.monotonic() - started < 10, "it waited for a verdict that never comes"
    finally:
        node.close()
        replicator.close()
    code, out = _cli("replication", "promote", "--help")
    assert "--peers" in out and "already leads" in out, out


def test_a_stopped_nodes_reason_names_no_file_to_the_public(tmp_path):
    """A journal write that failed says its kind only (an OSError names the data folder), the whole
    error with the metrics token; a deposed primary's own message is for everyone. One question on the
    node (`Node.stopped_reason`), asked by the gateway's write refusal, /readyz, custody's workers and
    the policy attestor alike (three copies of it before session 20)."""
    import threading

    from ringfence.api.app import RefuseWritesWhenStopped
    from ringfence.app import new_node
    from ringfence.custody.runtime import Supervised
    from ringfence.custody.workers import PolicyAttestor
    from ringfence.api.serve import held_read
    from ringfence.errors import NotDurable, SigningRefused

    node = new_node(tmp_path / "n")
    node.open()
    try:
        assert node.stopped_reason() is None and node.stopped_reason(detailed=False) is None
        node.failed = OSError(28, "No space left on device", "/srv/secret-place/journal/00001.rfj")
        public = node.stopped_reason(detailed=False)
        assert "secret-place" not in public and public.startswith("OSError"), public
        # the safe side by default (fresh-eyes review of s20: a public caller writing stopped_reason() showed the path)
        assert node.stopped_reason() == public and node.as_source("worker:x").stopped_reason() == public
        detailed = node.stopped_reason(detailed=True)
        assert "secret-place" in detailed and node.as_source("worker:x").stopped_reason(detailed=True) == detailed

        class Exchange:
            pass

        exchange = Exchange()
        exchange.node = node  # type: ignore[attr-defined]

        async def ok(scope, receive, send):  # type: ignore[no-untyped-def]
            from starlette.responses import PlainTextResponse

            await PlainTextResponse("ok")(scope, receive, send)

        client = TestClient(RefuseWritesWhenStopped(ok, exchange))
        refused = client.post("/api/v3/order")
        assert refused.status_code == 503 and refused.json()["stopped"] == public, refused.text
        assert client.get("/api/v3/time").status_code == 200  # reads still answer
        exchange.read = lambda fn: node.read(fn)  # type: ignore[attr-defined]
        with pytest.raises(NotDurable, match="secret-place"):  # the PoR publisher's read: the operator's own log
            held_read(exchange, lambda engine: engine.last_seq, wait_s=0)
        with pytest.raises(SigningRefused, match="the node has stopped .*secret-place"):
            PolicyAttestor(node, None, None)(None, b"", {})  # type: ignore[arg-type]
        steps: list[int] = []
        worker = Supervised("w", lambda: steps.append(1), 10, threading.RLock())
        worker.halted = partial(node.stopped_reason, detailed=True)  # as CustodyRuntime wires its workers
        stop = threading.Event()
        worker.start(stop)
        worker._thread.join(5)  # type: ignore[union-attr]
        assert not worker._thread.is_alive() and steps == []  # type: ignore[union-attr]
        stop.set()
        node.failed = Fenced("this node was deposed at epoch 1")
        assert node.stopped_reason(detailed=False) == "this node was deposed at epoch 1"
        assert client.post("/api/v3/order").json()["stopped"] == "this node was deposed at epoch 1"
    finally:
        node.failed = None
        node.close()


def test_status_against_a_server_that_closes_the_connection_is_one_clear_line():
    """A server that answers the NATS handshake and then hangs up (and is gone for the reconnects): `status` printed
    nats.errors.ConnectionClosedError's traceback (intruder review of #22). Now one line, exit 1 as for an unreachable one."""
    import socket
    import subprocess
    import sys
    import threading
    import time

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]

    def serve_once() -> None:
        conn, _ = listener.accept()
        listener.close()  # the reconnects are refused
        with conn:
            conn.sendall(b'INFO {"server_id":"x","version":"2.10.0","max_payload":1048576,"auth_required":true,'
                         b'"headers":true}\r\n')
            conn.recv(4096)  # CONNECT, PING
            conn.sendall(b"PONG\r\n")
            time.sleep(0.3)

    thread = threading.Thread(target=serve_once, daemon=True)
    thread.start()
    out = subprocess.run([sys.executable, "-m", "ringfence.cli", "replication", "status", "--nats",
                          f"nats://127.0.0.1:{port}/RF"], capture_output=True, text=True, timeout=120)
    thread.join(10)
    err = " ".join(out.stderr.split())
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert f"error: --nats: lost the connection to NATS at nats://127.0.0.1:{port}: ConnectionClosedError" in err, err
