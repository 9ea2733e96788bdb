"""Session 19: what a new user met trying issue #21's replication, each through the real path."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import threading
import time

import pytest
from fastapi.testclient import TestClient

from ringfence.ledger.commands import RegisterAsset
from ringfence.replication import Fenced, Follower, parse_target, promote
from ringfence.solvency.publisher import read_history

from .conftest import NATS_URL, key_of, peers_of

RINGFENCE = [sys.executable, "-m", "ringfence.cli"]


def _run(*args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k != "RINGFENCE_NATS_PASSWORD"}
    return subprocess.run(RINGFENCE + list(args), capture_output=True, text=True, timeout=120,
                          env=dict(clean, COLUMNS="400", **env), stdin=subprocess.DEVNULL)


def test_a_deposed_primary_publishes_no_proof_of_solvency(tmp_path, stream, monkeypatch):
    """After `batch N not replicated ... deposed`, the old primary's engine still holds batch N (applied
    before the stream refused it): a proof at that position would attest a history no standby has.
    Its scheduled publisher publishes nothing more and says why once; asked directly, it refuses."""
    from ringfence.api.serve import build
    from ringfence.replication import Replicator
    from ringfence.replication.serving import after_build

    monkeypatch.delenv("RINGFENCE_DATABASE_URL", raising=False)
    monkeypatch.delenv("RINGFENCE_MODE", raising=False)
    monkeypatch.setenv("RINGFENCE_POR_EVERY_S", "1")
    monkeypatch.setenv("RINGFENCE_CUSTODY_CHAINS", "BTC=local")  # custody's workers sign and send from the state
    target = parse_target(f"{NATS_URL}/{stream}")
    data = tmp_path / "a"
    app, exchange, info = build(data, demo=False)
    publisher = info["por"]["publisher"]
    replicator = Replicator(target, "a", data / "engine", key=key_of("a"))
    after_build(exchange, replicator, print)
    follower = Follower(target, tmp_path / "b", "b", key=key_of("b"), peers=peers_of())
    node = exchange.node  # type: ignore[attr-defined]
    try:
        with TestClient(app, client=("127.0.0.1", 50000)):  # type: ignore[arg-type]
            _deposed_and_proofs(node, publisher, target, follower, data)
    finally:
        follower.close()
        replicator.close()
        node.close()


def _deposed_and_proofs(node, publisher, target, follower, data) -> None:
    assert [t for t in threading.enumerate() if t.name.startswith("custody-")], "custody runs on the primary"
    node.submit(RegisterAsset("ETH", 18, "crypto", "ethereum")).result(30)
    before = publisher.publish()  # a healthy primary publishes
    assert before["position"] == f"journal:{node.last_seq}"
    follower.poll()
    promote(target, "b")
    assert follower.follow_until_promoted() == 2
    with pytest.raises(Exception, match="not replicated"):
        node.submit(RegisterAsset("SOL", 9, "crypto", "solana")).result(30)
    assert isinstance(node.failed, Fenced)
    with pytest.raises(Exception, match="no proof published: the node has stopped .*deposed"):
        publisher.publish()
    deadline = time.monotonic() + 10
    while publisher._thread.is_alive() and time.monotonic() < deadline:  # the schedule ends
        time.sleep(0.1)
    assert not publisher._thread.is_alive()
    proofs = read_history(data / "por")["proofs"]
    assert [p["position"] for p in proofs][-1] == before["position"], proofs  # nothing after the fence
    assert not [p for p in (data / "por").iterdir() if p.name.startswith(".tmp")]
    assert "deposed" in publisher.refused
    # custody's supervised workers (withdrawals sign and broadcast, the balancer moves funds) stop too
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and [t for t in threading.enumerate() if t.name.startswith("custody-")]:
        time.sleep(0.1)
    assert not [t.name for t in threading.enumerate() if t.name.startswith("custody-")]


def test_a_refused_nats_login_says_so_and_why(tmp_path, nats_with_password):
    """A wrong password, a user without one (RINGFENCE_NATS_PASSWORD unset), no user at all: each is the
    server refusing the login, said in one error line with the fix, never "cannot reach" and never a raw
    `nats: Error: ... 'Authorization Violation'` line before it."""
    from api.conftest import free_port

    port, password = nats_with_password
    wrong = "nope-" + secrets.token_hex(8)
    cases = [(f"nats://rf@127.0.0.1:{port}/S19A", {"RINGFENCE_NATS_PASSWORD": wrong}, "does not take user rf with this password"),
             (f"nats://rf-node@127.0.0.1:{port}/S19A", {}, "user rf-node was given no password: RINGFENCE_NATS_PASSWORD is unset"),
             # a name without a password that is none of nats-config's users is sent as a token: never printed (s20)
             (f"nats://rf@127.0.0.1:{port}/S19A", {}, "the URL names *** with no password, which is sent as a token"),
             (f"nats://127.0.0.1:{port}/S19A", {}, "it requires credentials; name the user in the URL")]
    for url, env, says in cases:
        for args in (("replication", "status", "--nats", url),
                     ("serve", "--data", str(tmp_path / "srv"), "--port", str(free_port()), "--replicate", url)):
            proc = _run(*args, **env)
            raw = proc.stdout + proc.stderr
            out = " ".join(raw.split())
            assert proc.returncode in (1, 2) and "refused the login" in out and "Authorization Violation" in out, out
            assert says in out and "cannot reach" not in out, out
            assert not [line for line in raw.splitlines() if line.startswith("nats:")], raw  # no raw client line
            assert wrong not in out and password not in out and "Traceback" not in out, out
        assert proc.returncode == 2  # serve


def test_promote_with_a_login_that_may_not_publish_it_names_the_permission(tmp_path):
    """`replication promote` as rf-monitor: the server refuses the publish to $KV.<stream>-leader.promote.b;
    the command says so (and which login to use), not "TimeoutError; ask again once NATS answers"."""
    from ringfence.app import new_node
    from ringfence.ledger.commands import RegisterAsset as Asset
    from ringfence.replication import Replicator

    from .test_nats_services import STREAM, _peers, _start_services, _url

    port, pw, proc = _start_services(tmp_path, "--no-tls")  # dev mode, plain loopback (test_nats_tls_pinned: TLS)
    node = new_node(tmp_path / "a")
    node.open()
    node.start()
    replicator = Replicator(parse_target(_url(port, "rf-node", pw["rf-node"])), "a", key=key_of("a"))
    try:
        replicator.attach(node)  # the stream and its bucket exist
        node.execute(Asset("BTC", 8, "crypto", "bitcoin"))
        done = _run("replication", "promote", "--nats", f"nats://rf-monitor@127.0.0.1:{port}/{STREAM}", "--node-id", "b",
                    "--wait-s", "5", "--peers", _peers(tmp_path), RINGFENCE_NATS_PASSWORD=pw["rf-monitor"])
        out = " ".join((done.stdout + done.stderr).split())
        assert done.returncode != 0 and "NATS user rf-monitor may not ask standby b to take over" in out, out
        assert f'permissions violation for publish to "$kv.{STREAM.lower()}-leader.promote.b"' in out.lower(), out
        assert "rf-operator" in out and "TimeoutError" not in out and pw["rf-monitor"] not in out, out
    finally:
        node.close()
        replicator.close()
        proc.terminate()
        proc.wait(10)


def test_the_standbys_promote_hint_can_be_pasted_with_an_operators_login(tmp_path):
    """A standby serving as rf-node printed `promote with: ... --nats nats://rf-node:***@...`: this node's
    login (which may not promote) and a password nobody can paste. The hint names rf-operator without any
    password (it is read from RINGFENCE_NATS_PASSWORD), and the command it prints promotes the standby."""
    import re

    from api.conftest import free_port

    from .conftest import Standby
    from .test_nats_services import STREAM, _start_services

    port, pw, proc = _start_services(tmp_path, "--no-tls")  # dev mode, plain loopback (test_nats_tls_pinned: TLS)
    standby = None
    try:
        standby = Standby(tmp_path / "sb" / "b", f"nats://rf-node@127.0.0.1:{port}/{STREAM}", "b", free_port(),
                          env={"RINGFENCE_NATS_PASSWORD": pw["rf-node"]})
        line = standby.wait_for(r"promote with: (.*?) \(an operator's NATS login").group(1)
        assert "***" not in line and pw["rf-node"] not in line and "rf-node@" not in line, line
        assert f"--nats nats://rf-operator@127.0.0.1:{port}/{STREAM} " in line and "RINGFENCE_NATS_PASSWORD=" in line, line
        argv = re.sub(r"^.*?ringfence ", "", line).split()  # what follows `RINGFENCE_NATS_PASSWORD=... ringfence`
        done = _run(*argv, "--wait-s", "30", RINGFENCE_NATS_PASSWORD=pw["rf-operator"])
        assert done.returncode == 0, done.stdout + done.stderr
        standby.wait_ready()
    finally:
        if standby is not None:
            standby.stop()
        proc.terminate()
        proc.wait(10)


def test_a_standbys_log_has_whole_lines_and_the_dev_warning_once(tmp_path, stream):
    """A user saw `...since the last line)replication: NATS at ...`: serve's lines go to stdout, the
    replication warnings went to stderr (logging's last resort), so a capture of the two streams apart
    (stdout, then stderr) glued the warning to the last progress line, out of order. They are lines of
    serve's own output now, in order; and the dev-mode "requires no credentials" warning, said on every
    NATS connection (again when the standby connects as the new primary), is said once per process."""
    import json
    import re

    from api.conftest import free_port
    from ringfence import nodekey

    from .conftest import attached_primary, running

    sb = tmp_path / "sb" / "b"
    sb.mkdir(parents=True)
    peers = tmp_path / "peers.json"
    peers.write_text(json.dumps({"a": nodekey.public_hex(key_of("a")), "b": nodekey.public_hex(nodekey.load_or_create(sb))}))
    port = free_port()
    log_path, err_path = tmp_path / "standby.log", tmp_path / "standby.err"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONUNBUFFERED", "RINGFENCE_NATS_PASSWORD", "RINGFENCE_MODE")}
    env.update(RINGFENCE_REPLICATION_PEERS=str(peers), COLUMNS="400", RINGFENCE_DATABASE_URL=f"sqlite:///{sb / 'identity.sqlite3'}")
    url = f"{NATS_URL}/{stream}"
    with running(*attached_primary(tmp_path, stream)) as (node, _), open(log_path, "w") as sink, open(err_path, "w") as err_sink:
        node.execute(RegisterAsset("BTC", 8, "crypto", "bitcoin"))
        proc = subprocess.Popen(RINGFENCE + ["serve", "--data", str(sb), "--port", str(port), "--standby", url, "--node-id", "b"],
                                stdout=sink, stderr=err_sink, env=env, stdin=subprocess.DEVNULL)
        try:
            ready = False
            deadline = time.monotonic() + 90
            while "following stream" not in log_path.read_text() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)  # a slow start (a loaded machine) would see the 40 batches below as one catch-up
            for i in range(40):  # progress lines: at once, then at most every few seconds
                node.execute(RegisterAsset(f"T{i}", 8, "crypto", f"token{i}"))
                time.sleep(0.1)
            promote(parse_target(url), "b")
            import httpx

            while time.monotonic() < deadline and proc.poll() is None and not ready:
                try:
                    ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
                except httpx.HTTPError:
                    time.sleep(0.3)
            assert ready, log_path.read_text()[-3000:]
        finally:
            proc.terminate()
            proc.wait(30)
    text, errors = log_path.read_text(), err_path.read_text()
    assert "since the last line)" in text and "promoted" in text, text[-3000:]
    glued = re.findall(r"since the last line\)[^\n]", text + errors)
    assert not glued and text.endswith("\n"), text[-3000:]
    assert text.count("requires no credentials") == 1 and "requires no credentials" not in errors, text[-4000:] + errors
    # in order: the warning of the standby's first connection comes before its first line about the stream
    assert text.index("requires no credentials") < text.index("standby b: following stream"), text[-4000:]
