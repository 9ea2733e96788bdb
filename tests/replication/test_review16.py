"""Session 16's review of #21 (replication failover), against the real NATS JetStream.

1: a promotion took the leader record before its grant was checked where its fence would stand; the
   approvals could expire (sequencer time) while the old primary still wrote, and the promotion ended
   as an outage that `promote` reported as a success. 2: a lost leader record made a restarted primary
   take a new epoch without a fence. 3: a take-over fence in the history was judged by a fresh standby's
   options of today. 4: in prod mode the stream's first primary must be named. Each test fails without
   its fix.
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from ringfence import replication
from ringfence.ledger.commands import OpenAccount, RegisterAsset
from ringfence.replication import (KIND_FENCE, PROMOTE_ACTION, Fenced, PromotionRefused, Replicator, _headers,
                                   leader_of, parse_target, promote, promote_subject, sign_message)
from ringfence.staff.decisions import StaffKey, format_approval
from ringfence.staff.demo import DEMO_QUORUM, DEMO_STAFF
from ringfence.staff.desk import StaffDesk

from api.test_serve_start import serve

from .conftest import NATS_URL, attached_primary, key_of, peers_file, peers_of, running, standby

PEERS = ("a", "b", "c", "fresh")


def _staffed_primary(tmp_path, stream):
    """Primary a (no lease) with the demo's staff register (operators ada and ben, quorum 2)."""
    node, replicator = attached_primary(tmp_path, stream, peers=peers_of(*PEERS))
    keys = {s: StaffKey.generate(s) for s in DEMO_STAFF}
    node.execute(StaffDesk(keys, time.time_ns).genesis(DEMO_STAFF, DEMO_QUORUM))
    node.execute(RegisterAsset("BTC", 8, "crypto", "bitcoin"))
    return node, replicator, keys


def _approvals(keys, stream: str, node: str, epoch: int, ttl_ns: int) -> list[str]:
    expires = time.time_ns() + ttl_ns
    return [format_approval(keys[s].sign(PROMOTE_ACTION, promote_subject(stream, node, epoch), expires))
            for s in ("ada", "ben")]


def _wait_for_request(follower, node: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            follower.link.call(follower.kv.get(f"promote.{node}"))
            return
        except Exception:  # noqa: BLE001 - not written yet
            time.sleep(0.02)
    raise AssertionError("the promotion request never appeared")


def test_approvals_too_close_to_expiry_are_refused_before_the_record_is_taken(tmp_path, stream):
    """1: approvals valid for 3 s more, under the margin: the standby refuses, naming the approval, the
    time left and the time needed, and the leader record stays the old primary's, which goes on."""
    node, replicator, keys = _staffed_primary(tmp_path, stream)
    target = parse_target(f"{NATS_URL}/{stream}")
    with running(node, replicator), standby(target, tmp_path, "b", peers=peers_of(*PEERS)) as b:
        b.poll()
        promote(target, "b", _approvals(keys, stream, "b", 2, 3 * 10**9))
        leader, revision = leader_of(b.link, b.kv)
        assert not b.consider_promotion(leader, revision)
        answer = json.loads(b.link.call(b.kv.get("promote.b")).value)
        assert answer["status"] == "refused", answer
        assert "the approval of 'ada' expires in" in answer["reason"] and "less than the 5000 ms" in answer["reason"], answer
        assert leader_of(b.link, b.kv)[0]["node"] == "a"
        node.execute(OpenAccount("alice", "BTC"))  # the old primary is still the primary
        assert node.failed is None
        b.poll()
        assert b.engine.state_hash() == node.read(lambda e: e.state_hash())


def test_promote_reports_a_fence_refused_after_the_record_as_a_failure(tmp_path, stream, monkeypatch):
    """1: the old primary writes past the approvals' expiry after the standby took the record (here the
    margin is set to nothing, as when it writes longer than the margin): the standby's fence is refused
    where it would stand, and `promote` says the promotion failed instead of reporting a success."""
    monkeypatch.setattr(replication, "PROMOTION_MARGIN_NS", 0, raising=False)
    node, replicator, keys = _staffed_primary(tmp_path, stream)
    target = parse_target(f"{NATS_URL}/{stream}")
    tokens = _approvals(keys, stream, "b", 2, 2 * 10**9)
    expires = int(tokens[0].split(":")[2])
    outcome: list[object] = []

    def ask() -> None:
        try:
            outcome.append(promote(target, "b", tokens, wait_s=20, peers=peers_of(*PEERS)))
        except PromotionRefused as err:
            outcome.append(err)

    with running(node, replicator), standby(target, tmp_path, "b", peers=peers_of(*PEERS)) as b:
        b.poll()
        asker = threading.Thread(target=ask)
        asker.start()
        try:
            _wait_for_request(b, "b")
            leader, revision = leader_of(b.link, b.kv)
            assert b.consider_promotion(leader, revision)  # the record is b's now
            time.sleep(max(0, expires - time.time_ns()) / 1e9 + 0.1)
            node.execute(OpenAccount("alice", "BTC"))  # the old primary's batch, past the expiry in its sequencer time
            with pytest.raises(replication.Refused, match="will not fence epoch 2"):
                b.follow_until_promoted()
        finally:
            asker.join(30)
    assert len(outcome) == 1 and isinstance(outcome[0], PromotionRefused), outcome
    assert "the promotion failed" in str(outcome[0]) and "its fence was not published" in str(outcome[0]), outcome[0]


def _purge_leader(link, kv) -> None:
    link.call(kv.delete("leader"))  # (the bucket denies a purge: a rollup)
    assert leader_of(link, kv) == (None, 0)


def test_a_lost_leader_record_is_written_again_at_the_primarys_own_epoch(tmp_path, stream):
    """2: the record deleted, the primary restarts: it leads its epoch on (no new epoch without a fence)
    and the standby follows its next batches."""
    peers = peers_of(*PEERS)
    node, replicator = attached_primary(tmp_path, stream, peers=peers)
    node.execute(RegisterAsset("BTC", 8, "crypto", "bitcoin"))
    target = parse_target(f"{NATS_URL}/{stream}")
    with standby(target, tmp_path, "b", peers=peers) as b:
        b.poll()
        _purge_leader(replicator.link, replicator.kv)
        node.close()
        replicator.close()
        primary, again = attached_primary(tmp_path, stream, peers=peers)  # restarted on its folder
        with running(primary, again):
            assert again.epoch == 1
            primary.execute(OpenAccount("alice", "BTC"))
            b.poll()
            assert b.fence_epoch == 1 and b.engine.state_hash() == primary.read(lambda e: e.state_hash())
            assert leader_of(b.link, b.kv)[0]["epoch"] == 1


def test_a_lost_leader_record_does_not_let_another_node_take_a_new_epoch(tmp_path, stream):
    """2: the record deleted, another node starts as the primary: refused in one line naming what to do,
    instead of a new epoch no fence opens."""
    peers = peers_of(*PEERS)
    node, replicator = attached_primary(tmp_path, stream, peers=peers)
    with running(node, replicator):
        node.execute(RegisterAsset("BTC", 8, "crypto", "bitcoin"))
        _purge_leader(replicator.link, replicator.kv)
        with pytest.raises(Fenced, match=r"missing \(deleted or purged\) and the stream's newest message \(\d+\) is of "
                                         r"node 'a' at epoch 1.*ringfence replication promote"):
            Replicator(parse_target(f"{NATS_URL}/{stream}"), "c", key=key_of("c"), peers=peers)


def test_after_a_lost_leader_record_the_operators_promote_and_a_standby_follows(tmp_path, stream):
    """2, the way out: the record deleted and the primary gone, `promote` proposes the epoch above the
    bucket's history (not epoch 1 again), the standby takes it with its fence, and another follows."""
    node, replicator, keys = _staffed_primary(tmp_path, stream)
    target, peers = parse_target(f"{NATS_URL}/{stream}"), peers_of(*PEERS)
    with standby(target, tmp_path, "b", peers=peers) as b, standby(target, tmp_path, "c", peers=peers) as c:
        b.poll()
        _purge_leader(replicator.link, replicator.kv)
        node.close()
        replicator.close()
        promote(target, "b", _approvals(keys, stream, "b", 2, 600 * 10**9), peers=peers)
        assert json.loads(b.link.call(b.kv.get("promote.b")).value)["epoch"] == 2
        assert b.follow_until_promoted() == 2
        c.poll()
        assert c.fence_epoch == 2 and c.engine.state_hash() == b.engine.state_hash()


def test_a_fresh_standby_replays_a_take_over_from_the_days_of_leases(tmp_path, stream):
    """3: the cluster ran with leases and b took over from a; leases were dropped since. A standby built
    afresh without lease options replays that take-over: its stream declares that the epoch taken over
    ran with a lease. (A take-over that comes while a standby follows is still judged by its options.)"""
    peers = peers_of(*PEERS)
    node, replicator = attached_primary(tmp_path, stream, "?lease_ms=300", peers=peers)
    node.execute(RegisterAsset("BTC", 8, "crypto", "bitcoin"))
    leased = parse_target(f"{NATS_URL}/{stream}?lease_ms=300&auto_promote=1")
    with standby(leased, tmp_path, "b", peers=peers) as b:
        b.poll()
        node.close()
        replicator.close()  # a's lease runs out: b takes over
        stop = threading.Event()
        timer = threading.Timer(20, stop.set)
        timer.start()
        try:
            assert b.follow_until_promoted(stop) == 2
        finally:
            timer.cancel()
        _, _, lock = b.hand_over()
        lock.release()
    plain = parse_target(f"{NATS_URL}/{stream}")  # the leases dropped
    primary, leader = attached_primary(tmp_path, stream, peers=peers, node_id="b")  # on b's folder, the URL `plain`
    with running(primary, leader):
        primary.execute(OpenAccount("alice", "BTC"))
        with standby(plain, tmp_path, "fresh", peers=peers) as fresh:
            fresh.poll()
            assert fresh.fence_epoch == 2 and fresh.engine.state_hash() == primary.read(lambda e: e.state_hash())


def test_no_take_over_from_an_epoch_opened_without_a_lease(tmp_path, stream):
    """3, the other side: primary a opened its epoch without a lease (its opener declares lease_ms 0). A
    holder of b's key writes b's take-over fence: even standby c, whose URL has lease_ms (it accepts
    take-overs), refuses it, nothing appended; before, c's options alone decided."""
    peers = peers_of(*PEERS)
    node, replicator = attached_primary(tmp_path, stream, peers=peers)
    with running(node, replicator), standby(parse_target(f"{NATS_URL}/{stream}?lease_ms=300"), tmp_path, "c",
                                            peers=peers) as c:
        node.execute(RegisterAsset("BTC", 8, "crypto", "bitcoin"))
        c.poll()
        body = json.dumps({"format": "ringfence-grant-v1", "epoch": 2, "node": "b", "took_over_from": "a"},
                          sort_keys=True, separators=(",", ":")).encode()
        last = int(replicator.link.call(replicator.link.js.stream_info(stream)).state.last_seq)
        headers = _headers(KIND_FENCE, 2, node.last_seq + 1, 0, replicator.last_hash, replicator.last_hash, "", last)
        headers["Rf-Pos"] = str(last + 1)
        sign_message(key_of("b"), "b", stream, headers, body)
        replicator.link.call(replicator.link.js.publish(replicator.target.subject, body, headers=headers, stream=stream))
        applied = c.engine.last_seq
        with pytest.raises(replication.Refused, match="the epoch it takes over was opened without a lease"):
            c.poll()
        assert c.fence_epoch == 1 and c.engine.last_seq == applied


@pytest.mark.parametrize("role", ["--replicate", "--standby"])
def test_prod_mode_requires_the_first_primary_to_be_named(tmp_path, role):
    """4: outside dev mode, a replicated node without first_primary= in its URL is refused at start (the
    default, the peers file's first key, hangs on the order of a JSON object's keys); with it, that line
    is gone. Dev mode keeps the default."""
    env = {"RINGFENCE_MODE": "prod", **peers_file(tmp_path, a=tmp_path / "ka", b=tmp_path / "kb")}
    out = serve(tmp_path, role, "nats://127.0.0.1:4222/RFSTART", **env)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert f"first_primary=NODE in its {role} URL" in out.stderr, out.stderr
    named = serve(tmp_path, role, "nats://127.0.0.1:4222/RFSTART?first_primary=a", **env)
    assert named.returncode == 2 and "first_primary" not in named.stderr, named.stderr  # (the other prod rules)
    stranger = serve(tmp_path, role, "nats://127.0.0.1:4222/RFSTART?first_primary=z", **env)
    assert "first_primary=z" in stranger.stderr and "is not a node of the peers file" in stranger.stderr, stranger.stderr
    assert not (tmp_path / "d").exists()
