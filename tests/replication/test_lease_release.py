"""A new user's check of #21 (session 22), against the real NATS JetStream.

1. A primary that stopped itself kept renewing its leadership lease: under load, primary c stopped with
   "the lease of 3000 ms expired before batch 216 was replicated", but its renewals in the bucket went
   on (294 -> 321 -> 422) and standby d (auto_promote=1) never took over until c was SIGKILLed. A
   primary now renews its lease only while it is a working one (`Replicator._stopped`), says so in its
   log and in /readyz (`Replicator.lease_state`), and the lease runs out.
2. `ringfence replication status --peers` said "replayed" (exit 1) on a healthy primary renewing its
   lease: it read the record, then the key's history, which by then held the next renewal. The record
   is now judged by the history up to its own revision; an old genuine record put back is still
   "replayed".

Each test fails without its fix.
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from ringfence import replication
from ringfence.errors import NotDurable, OutcomeUnknown
from ringfence.ledger.commands import CreateTransfers, OpenAccount, RegisterAsset
from ringfence.ledger.model import Transfer
from ringfence.replication import Follower, NatsLink, leader_of, parse_target

from .conftest import NATS_URL, attached_primary, key_of, peers_of, running
from .test_untrusted_values import _cli


def _kv_renewal(link: NatsLink, kv) -> tuple[str, int]:
    leader, _ = leader_of(link, kv)
    assert leader is not None
    return str(leader["node"]), int(leader.get("renewal", 0))


def _stop_by_lease_expiry(node, replicator, lease_s: float) -> None:  # float-ok: seconds
    """The issue's way: the lease runs out before a batch is replicated while the renewal already sent
    waits (here the primary's NATS client thread is held, as a loaded machine starves it), then that
    renewal lands, in time for its own timeout: the node refused the batch, yet its renewal succeeded."""
    release = threading.Event()

    async def starve() -> None:
        release.wait(20)  # blocks the link's loop: every NATS call of the link waits behind it

    try:
        replicator.link.submit(starve())
        sent = replicator.renewal
        deadline = time.monotonic() + 10
        while replicator.renewal == sent and time.monotonic() < deadline:  # the next renewal is built, and waits
            time.sleep(0.005)
        assert replicator.renewal > sent, "the lease loop did not renew"
        while time.monotonic() - replicator.renewed_at <= lease_s and time.monotonic() < deadline:
            time.sleep(0.005)
        with pytest.raises(NotDurable, match=r"expired before batch \d+ was replicated"):
            node.execute(OpenAccount("alice", "BTC"))
    finally:
        release.set()  # the waiting renewal goes out now, within its timeout (the lease): it succeeds


def _stop_by_a_lost_ack(node, replicator, lease_s: float, monkeypatch) -> None:  # float-ok: seconds
    """Any fatal replication stop: the stream's ack of a batch never comes (the direct connection's reply
    inbox unsubscribed behind its back), the batch fails, the node stops; the link (and its renewals) is fine."""
    world = node.read(lambda e: e.ledger.world("BTC").id)
    node.execute(OpenAccount("alice", "BTC"))
    alice = node.read(lambda e: e.ledger.get("alice", "BTC").id)
    replicator._direct.sock.sendall(b"UNSUB 1\r\n")
    monkeypatch.setattr(replication, "PUBLISH_TIMEOUT_S", lease_s / 2)
    with pytest.raises(OutcomeUnknown):
        node.submit(CreateTransfers([Transfer(99, world, alice, 1)])).result(10)


@pytest.mark.parametrize("how", ["lease expired before a batch", "an ack never came"])
def test_a_stopped_primary_stops_renewing_its_lease_and_the_standby_takes_over(tmp_path, stream, how, monkeypatch,
                                                                                caplog):
    lease_s = 3.0  # float-ok: seconds (the lease; the renewal that lands late has lease/3 s to spare)
    node, replicator = attached_primary(tmp_path, stream, f"?lease_ms={int(lease_s * 1000)}", peers=peers_of("a", "b"))
    watcher = NatsLink(parse_target(f"{NATS_URL}/{stream}"))
    kv = watcher.ensure_stream_and_bucket()
    follower, stop, promoted, runner = _auto_promoting_standby(tmp_path, stream)
    seen: list[str] = []
    follower.on_progress = seen.append
    with running(node, replicator):
        try:
            node.execute(RegisterAsset("BTC", 8, "crypto", "bitcoin"))
            runner.start()
            with caplog.at_level("CRITICAL", logger="ringfence.replication"):
                if how == "an ack never came":
                    _stop_by_a_lost_ack(node, replicator, lease_s, monkeypatch)
                else:
                    _stop_by_lease_expiry(node, replicator, lease_s)
                stopped = time.monotonic()
                assert node.failed is not None
                time.sleep(lease_s / 2)  # the lease loop looks every lease/3; a renewal in flight lands meanwhile
                attempts, (_, stored) = replicator.renewal, _kv_renewal(watcher, kv)
                time.sleep(lease_s)  # three renewal periods: a working primary renews three times
                assert replicator.renewal == attempts, "the stopped primary still renews its lease"
                holder, now = _kv_renewal(watcher, kv)
                assert holder == "b" or now == stored, f"the stopped primary's renewals went on: {stored} -> {now}"
                deadline = stopped + 3 * lease_s + 5
                while not promoted and time.monotonic() < deadline:
                    time.sleep(0.05)
            assert promoted == [2], f"the standby did not take over after {how}: {seen[-3:]}"
            assert any("claimed epoch 2" in line for line in seen), seen
            said = [r.getMessage() for r in caplog.records if "no longer renews its lease" in r.getMessage()]
            assert len(said) == 1, caplog.text
            assert ("expired" if how != "an ack never came" else "ack") in said[0], said
            assert replicator.lease_state().startswith("not renewed since this node stopped"), replicator.lease_state()
        finally:
            stop.set()
            if runner.is_alive() or runner.ident is not None:
                runner.join(15)
            follower.close()
            watcher.close()


def _auto_promoting_standby(tmp_path, stream) -> tuple[Follower, threading.Event, list[int], threading.Thread]:
    """Standby b with `auto_promote=1`, and the thread (not started) that follows until it is promoted: the
    epoch it claimed lands in the list; the event stops it."""
    follower = Follower(parse_target(f"{NATS_URL}/{stream}?auto_promote=1"), tmp_path / "b", "b", key=key_of("b"),
                        peers=peers_of("a", "b"))
    stop = threading.Event()
    promoted: list[int] = []
    runner = threading.Thread(target=lambda: promoted.append(follower.follow_until_promoted(stop)))
    return follower, stop, promoted, runner


def test_a_working_primary_keeps_its_lease_while_it_is_busy(tmp_path, stream):
    """The other side: a primary that serves renews its lease all along (the check costs nothing on the
    way of a batch), and an auto-promoting standby never takes over."""
    lease_s = 1.0  # float-ok: seconds
    node, replicator = attached_primary(tmp_path, stream, f"?lease_ms={int(lease_s * 1000)}", peers=peers_of("a", "b"))
    follower, stop, promoted, runner = _auto_promoting_standby(tmp_path, stream)
    with running(node, replicator):
        try:
            node.execute(RegisterAsset("BTC", 8, "crypto", "bitcoin"))
            runner.start()
            first = replicator.renewal
            end = time.monotonic() + 4 * lease_s
            i = 0
            while time.monotonic() < end:
                node.execute(OpenAccount(f"u{i}", "BTC"))
                i += 1
            assert node.failed is None and replicator.lease_state() == "renewing"
            assert replicator.renewal >= first + 6, (first, replicator.renewal)
            assert not promoted
        finally:
            stop.set()
            runner.join(15)
            follower.close()


def _peers_json(tmp_path) -> str:
    path = tmp_path / "peers.json"
    path.write_text(json.dumps({n: key_of(n).public_key().public_bytes_raw().hex() for n in ("a", "b")}))
    return str(path)


def test_status_never_calls_a_renewing_primary_replayed_and_still_flags_a_real_replay(tmp_path, stream):
    """Renewals as fast as NATS takes them (a thread renewing the primary's lease the way its lease loop
    does, `_renew`, without the pause between renewals): 12 status calls in a row each say "valid".
    Before: about half said "replayed", exit 1 (the history read after the record held a newer one)."""
    node, replicator = attached_primary(tmp_path, stream, "?lease_ms=60000", peers=peers_of("a", "b"))
    peers = _peers_json(tmp_path)
    url = f"{NATS_URL}/{stream}"
    with running(node, replicator):
        first = replicator.link.call(replicator.kv.get("leader")).value  # a genuine record, soon an old one
        stop = threading.Event()

        def renew() -> None:
            while not stop.is_set():
                replicator._renew()

        renewer = threading.Thread(target=renew)
        renewer.start()
        verdicts = []
        try:
            before = replicator.renewal
            for _ in range(12):
                code, out = _cli("replication", "status", "--nats", url, "--peers", peers)
                verdicts.append((code, out))
            assert replicator.renewal > before + 12, "the primary did not renew while status ran"
        finally:
            stop.set()
            renewer.join(10)
        assert replicator.lost is None and node.failed is None
        wrong = [out for code, out in verdicts if code != 0 or '"leader_signature": "valid"' not in out]
        assert not wrong, f"{len(wrong)} of 12 status calls on a renewing primary: {wrong[0]}"
    link = NatsLink(parse_target(url))
    try:
        link.call(link.ensure_stream_and_bucket().put("leader", first))  # an old genuine record written back
    finally:
        link.close()
    code, out = _cli("replication", "status", "--nats", url, "--peers", peers)
    assert code == 1 and '"leader_signature": "replayed"' in out and '"newer_record"' in out, out


def test_readyz_says_whether_the_primary_still_renews_its_lease(tmp_path, stream, monkeypatch):
    """/readyz of a served primary with lease_ms: "lease": "renewing", then, once the node stopped, that
    the lease is not renewed any more (and why it stopped, in `stopped`)."""
    from fastapi.testclient import TestClient

    from ringfence.api.serve import build
    from ringfence.replication import Replicator
    from ringfence.replication.serving import after_build

    monkeypatch.delenv("RINGFENCE_DATABASE_URL", raising=False)
    monkeypatch.delenv("RINGFENCE_MODE", raising=False)
    lease_s = 3.0  # float-ok: seconds (the lease; the renewal that lands late has lease/3 s to spare)
    data = tmp_path / "a"
    app, exchange, _ = build(data, demo=False)
    replicator = Replicator(parse_target(f"{NATS_URL}/{stream}?lease_ms={int(lease_s * 1000)}"), "a", data / "engine",
                            key=key_of("a"))
    after_build(exchange, replicator, print)
    node = exchange.node  # type: ignore[attr-defined]
    try:
        with TestClient(app, client=("127.0.0.1", 50000)) as http:  # type: ignore[arg-type]
            node.execute(RegisterAsset("BTC", 8, "crypto", "bitcoin"))
            ready = http.get("/readyz").json()
            assert ready["ready"] is True and ready["lease"] == "renewing", ready
            _stop_by_lease_expiry(node, replicator, lease_s)
            ready = http.get("/readyz")
            assert ready.status_code == 503 and "expired" in ready.json()["stopped"], ready.text
            assert ready.json()["lease"].startswith("not renewed since this node stopped"), ready.text
    finally:
        replicator.close()
        node.close()
