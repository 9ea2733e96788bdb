"""Intruder review of session 22, B4, against the real NATS JetStream: in an exchange without staff
identities, a fence whose grant carries `"approvals": []` was accepted by every standby, so any peer's
node key (with the rf-node credential) opened the next epoch. Outside dev mode (RINGFENCE_MODE=prod,
`staffless_ok=False` as `serve` passes it) such a fence, and an operator's unsigned promotion request,
are refused, naming `ringfence staff init`; dev mode keeps the old rule. Each test fails on the code
before the fix (the `staffless_ok` keyword did not exist, and the fence was followed).
"""

from __future__ import annotations

import json
import logging
import time

import pytest

from ringfence.ledger.commands import OpenAccount, RegisterAsset
from ringfence.replication import Fenced, Follower, PromotionRefused, Refused, parse_target, promote, sign_leader

from .conftest import NATS_URL, attached_primary, key_of, peers_of, running
from .test_residual_risks import _grant, _intruder_fence

PEERS = ("a", "b", "c")


@pytest.mark.parametrize("mode", ["prod", "dev"])
def test_an_approval_less_fence_of_a_peer_opens_no_epoch_outside_dev_mode(tmp_path, stream, mode):
    """B4 reproduced: primary a without staff; the holder of b's node key writes b's signed leader record and
    publishes b's signed fence at epoch 2 with `"approvals": []`. In prod mode standby c refuses the fence
    (stops, nothing appended, the reason names `ringfence staff init`) and the deposed primary says the
    epoch was not granted; in dev mode c follows b at epoch 2, as before."""
    prod = mode == "prod"
    node, replicator = attached_primary(tmp_path, stream, "?lease_ms=400", peers=peers_of(*PEERS))  # it renews: it sees
    replicator.staffless_ok = not prod  # as `serve` builds it from its settings' mode
    node.execute(RegisterAsset("BTC", 8, "crypto", "bitcoin"))
    node.execute(OpenAccount("alice", "BTC"))
    target = parse_target(f"{NATS_URL}/{stream}")
    follower = Follower(target, tmp_path / "c", "c", key=key_of("c"), peers=peers_of(*PEERS), staffless_ok=not prod)
    with running(node, replicator):
        try:
            follower.poll()
            assert follower.engine.state_hash() == node.read(lambda e: e.state_hash())
            body = _grant(stream, "b", 2, approvals=[])
            record = {"epoch": 2, "node": "b", "lease_ms": 0, "renewed_at_ns": time.time_ns(), "renewal": 0, "approvals": []}
            replicator.link.call(replicator.kv.put("leader", sign_leader(key_of("b"), stream, record)))
            deadline = time.monotonic() + 5
            while node.failed is None and time.monotonic() < deadline:
                time.sleep(0.02)
            assert isinstance(node.failed, Fenced), node.failed  # deposed either way: the safe side
            assert ("that the operators did not grant" in str(node.failed)) is prod, node.failed
            _intruder_fence(replicator, node, "b", 2, body)
            last_seq = follower.engine.last_seq
            if not prod:
                follower.poll()  # dev mode: the operator's NATS credential decided, as before the fix
                assert follower.fence_epoch == 2 and follower.engine.last_seq == last_seq
                return
            with pytest.raises(Refused, match="a fence of node 'b' opening epoch 2 is not granted") as refused:
                follower.poll()
            message = str(refused.value)
            assert "no staff operators registered" in message and "RINGFENCE_MODE=prod" in message, message
            assert "ringfence staff init --data DIR --member ID:operator" in message, message
            assert "nothing of it was appended" in message, message
            assert follower.fence_epoch == 1 and follower.engine.last_seq == last_seq
            assert follower.refused is not None
        finally:
            follower.close()


def test_an_unsigned_promotion_request_is_refused_by_a_prod_standby_of_a_staffless_exchange(tmp_path, stream, caplog):
    """The operator's side of B4: `replication promote` without approvals to a prod standby of an exchange
    without staff is answered with the refusal that says what to do (not that the other nodes would then
    refuse its fence); the leader record is unchanged. Caught up, the standby warned once that promotions
    are refused until staff exist."""
    node, replicator = attached_primary(tmp_path, stream, peers=peers_of(*PEERS))
    node.execute(RegisterAsset("BTC", 8, "crypto", "bitcoin"))
    target = parse_target(f"{NATS_URL}/{stream}")
    follower = Follower(target, tmp_path / "b", "b", key=key_of("b"), peers=peers_of(*PEERS), staffless_ok=False)
    caplog.set_level(logging.WARNING, logger="ringfence.replication")
    with running(node, replicator):
        try:
            follower.poll()
            before = json.loads(replicator.link.call(replicator.kv.get("leader")).value)
            answers: list[BaseException] = []
            import threading

            def ask() -> None:
                try:
                    promote(target, "b", wait_s=20, peers=peers_of(*PEERS))
                except BaseException as err:  # noqa: BLE001 - the verdict, checked below
                    answers.append(err)

            asking = threading.Thread(target=ask)
            asking.start()
            stop = threading.Event()
            watcher = threading.Thread(target=lambda: (asking.join(30), stop.set()))
            watcher.start()
            assert follower.follow_until_promoted(stop) == 0  # never promoted
            watcher.join()
            [answer] = answers
            assert isinstance(answer, PromotionRefused), answer
            assert "standby b: this exchange has no staff operators registered" in str(answer), answer
            assert "ringfence staff init" in str(answer) and "where its fence would stand" not in str(answer), answer
            assert json.loads(replicator.link.call(replicator.kv.get("leader")).value) == before
            warned = [r.getMessage() for r in caplog.records if "every promotion is refused until staff exist" in r.getMessage()]
            assert len(warned) == 1, warned
        finally:
            follower.close()


def test_a_prod_primary_without_staff_publishes_nothing_and_a_dev_one_says_the_risk(tmp_path, stream, monkeypatch):
    """`after_build` (serve's primary, right after the build): outside dev mode without staff operators it
    refuses (ConfigError naming `ringfence staff init --data DIR`) before the stream's opener or any
    catch-up is published; in dev mode it starts and says B4's risk in one line."""
    from ringfence.api.serve import build
    from ringfence.errors import ConfigError
    from ringfence.replication import Replicator
    from ringfence.replication.serving import after_build

    monkeypatch.delenv("RINGFENCE_DATABASE_URL", raising=False)
    monkeypatch.delenv("RINGFENCE_MODE", raising=False)
    target = parse_target(f"{NATS_URL}/{stream}?first_primary=a")
    for prod in (True, False):
        data = tmp_path / ("prod" if prod else "dev")
        _app, exchange, _ = build(data, demo=False)
        replicator = Replicator(target, "a", data / "engine", key=key_of("a"), peers=peers_of(*PEERS), staffless_ok=not prod)
        said: list[str] = []
        try:
            if prod:
                with pytest.raises(ConfigError) as refused:
                    after_build(exchange, replicator, said.append)
                assert str(refused.value).startswith("--replicate: this node has no staff operators registered"), refused.value
                assert f"ringfence staff init --data {data} --member ID:operator" in str(refused.value), refused.value
                assert replicator.link._closed  # closed: it publishes nothing more
                assert said == []
            else:
                after_build(exchange, replicator, said.append)
                assert any("no staff registered: any peer's node key can open an epoch; fine for a test, register staff "
                           "before production" in line for line in said), said
        finally:
            exchange.node.close()  # type: ignore[attr-defined]
            replicator.close()
        if prod:  # nothing in the stream: no opener, no catch-up (the dev primary opens it next)
            from .conftest import standby

            with standby(target, tmp_path, "c", peers=peers_of(*PEERS)) as follower:
                assert follower.tail_at_start == 0, follower.tail_at_start


def test_prod_serve_replicate_needs_the_staff_genesis_then_a_signed_promotion_works(tmp_path, nats_tls_with_password):
    """The real CLI in prod mode: `serve --replicate` on a node without staff exits 2 with the command to run;
    after `ringfence staff init` on the stopped node it starts, a prod standby follows it, and a promotion
    signed by the 2 operators (`replication promote --key ... --key ...`) makes the standby the primary."""
    import os
    import secrets
    import subprocess
    import sys

    from api.conftest import NO_CHAINS, Server, free_port

    from .conftest import Standby, peers_file

    port, password, ca = nats_tls_with_password  # prod clients send a password over TLS with a pinned CA only
    a, b, keys = tmp_path / "a", tmp_path / "b", tmp_path / "keys"
    env = {"RINGFENCE_MODE": "prod", "RINGFENCE_IDENTITY_SECRET_KEY_HEX": secrets.token_hex(32),
           "RINGFENCE_IDENTITY_ORIGIN": "https://exchange.example", "RINGFENCE_IDENTITY_PUBLIC_URL": "https://exchange.example",
           "RINGFENCE_IDENTITY_MAIL_POLL_MS": "0", "RINGFENCE_IDENTITY_SMTP_HOST": "mail.exchange.example",
           "RINGFENCE_NATS_PASSWORD": password, **NO_CHAINS,
           **peers_file(tmp_path, a=a, b=b)}
    server = f"tls://rf@127.0.0.1:{port}/RFB4?tls_ca={ca}"
    url = f"{server}&first_primary=a"

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "ringfence.cli", *argv], capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, COLUMNS="400", **env))

    refused = cli("serve", "--data", str(a), "--port", str(free_port()), "--replicate", url, "--node-id", "a")
    out = " ".join((refused.stdout + refused.stderr).split())
    assert refused.returncode == 2 and "Traceback" not in out, out
    assert "error: --replicate: this node has no staff operators registered, and outside dev mode (RINGFENCE_MODE=prod)" in out, out
    assert f"ringfence staff init --data {a} --member ID:operator --member ID:operator --out-dir KEYS" in out, out
    assert "docs/resilience.md, 'A node key alone opens no epoch'" in out and "replicating to stream" not in out, out
    status = cli("replication", "status", "--nats", server)
    assert json.loads(status.stdout)["messages"] == 0, status.stdout + status.stderr  # no opener, nothing published

    genesis = cli("staff", "init", "--data", str(a), "--member", "ada:operator", "--member", "ben:operator",
                  "--out-dir", str(keys))
    assert genesis.returncode == 0, genesis.stdout + genesis.stderr
    primary = Server(a, env=env, args=("--replicate", url, "--node-id", "a"), demo=False, chains=False)
    follower = None
    try:
        assert "replicating to stream RFB4" in primary.log_text() and "no staff registered" not in primary.log_text()
        follower = Standby(b, url, "b", free_port(), env=env)
        follower.wait_for(r"standby b: applied through sequence 1 ")  # the genesis: its staff register too
        promoted = cli("replication", "promote", "--nats", server, "--node-id", "b",
                       "--key", str(keys / "ada.key"), "--key", str(keys / "ben.key"), "--wait-s", "90",
                       "--peers", env["RINGFENCE_REPLICATION_PEERS"])
        assert promoted.returncode == 0, promoted.stdout + promoted.stderr
        follower.wait_ready()
        assert "promotion to epoch 2 approved by ada, ben" in follower.text(), follower.text()[-2000:]
        assert "promotions will be refused" not in follower.text() and "every promotion is refused" not in follower.text()
    finally:
        if follower is not None:
            follower.stop()
        primary.stop()
