"""Second intruder review of #21 (signed replication), against the real NATS JetStream.

I1: an unsigned leader record with a lease made an auto-promoting standby depose a primary that had
no lease. I3: a promotion request that is not a JSON object crashed the standby (and every restart).
I5: `serve --standby` without --peers applied unsigned batches. I6a: a record naming a node not in
the peers file was taken for a real deposition. I6b: a junk `Rf-Epoch` raised every later epoch, or
(4300+ digits) crashed every claim. I6e: the leadership bucket took values of any size.
Each test here fails without its fix.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from ringfence.app import new_node
from ringfence.ledger.commands import OpenAccount, RegisterAsset
from ringfence.replication import (BUCKET_MAX_VALUE, Fenced, Follower, NatsLink, PromotionRefused, Replicator,
                                   leader_of, parse_target, promote, sign_leader)
from ringfence.replication.epochs import EpochMemory, bounded_int, epoch_above

from .conftest import NATS_URL, attached_primary, key_of, peers_of, running, standby
from api.conftest import free_port


def _primary(tmp_path, stream, query="", peers=None):
    node, replicator = attached_primary(tmp_path, stream, query, peers)
    node.execute(RegisterAsset("BTC", 8, "crypto", "bitcoin"))
    node.execute(OpenAccount("alice", "BTC"))
    return node, replicator


def _follow_for(follower: Follower, seconds: float) -> list[int]:  # float-ok: seconds
    stop = threading.Event()
    result: list[int] = []
    runner = threading.Thread(target=lambda: result.append(follower.follow_until_promoted(stop)))
    runner.start()
    time.sleep(seconds)
    stop.set()
    runner.join(15)
    return result


@pytest.mark.parametrize("forgery", ["unsigned", "unknown-node", "huge-epoch"])
def test_a_forged_lease_never_makes_an_auto_promoting_standby_take_over(tmp_path, stream, forgery):
    """I1 (and I6a on the standby's side): primary a without a lease; the intruder puts a record
    with a 200 ms lease. The standby alerts once and never claims; nothing of the record is kept."""
    with (running(*_primary(tmp_path, stream)) as (node, replicator),  # lease_ms=0
          standby(parse_target(f"{NATS_URL}/{stream}?auto_promote=1"), tmp_path, peers=peers_of("a", "b")) as follower):
        seen: list[str] = []
        follower.on_progress = seen.append
        record = {"epoch": 1, "node": "a", "lease_ms": 200}
        if forgery == "unsigned":
            value = json.dumps(record).encode()
        elif forgery == "unknown-node":  # a genuine signature, by a node the peers file does not hold
            value = sign_leader(key_of("zz"), stream, dict(record, node="zz"))
        else:  # a forged record may not raise the standby's remembered epoch either
            value = json.dumps(dict(record, epoch=10**17)).encode()
        replicator.link.call(replicator.kv.put("leader", value))
        assert _follow_for(follower, 1.5) == [0], "the standby took the leadership over on a forged lease"
        leader, _ = leader_of(replicator.link, replicator.kv)
        assert json.dumps(leader).encode() == value or leader == json.loads(value), leader
        assert follower.fence_epoch == 1 and follower.memory.highest() <= 1  # 1: the opener's epoch (message 1), no fence since
        alerts = [line for line in seen if "not verified" in line]
        assert len(alerts) == 1 and "no automatic take-over" in alerts[0], seen
        assert node.failed is None


def test_without_a_peers_file_there_is_no_automatic_take_over(tmp_path, stream):
    """A genuine record with a lease that ran out: with a peers file the standby takes over
    (test_follower), without one it cannot tell it from a forgery and never does."""
    node, replicator = _primary(tmp_path, stream, "?lease_ms=200")
    replicator.close()  # stops renewing: the lease runs out
    follower = Follower(parse_target(f"{NATS_URL}/{stream}?auto_promote=1"), tmp_path / "b", "b", key=key_of("b"),
                        peers=None)
    seen: list[str] = []
    follower.on_progress = seen.append
    try:
        assert _follow_for(follower, 1.5) == [0]
        assert any("auto_promote needs --peers" in line for line in seen), seen
        leader, _ = leader_of(follower.link, follower.kv)
        assert leader["node"] == "a"
    finally:
        follower.close()
        node.close()


def test_a_primary_given_peers_takes_a_record_naming_an_unknown_node_for_a_forgery(tmp_path, stream):
    """I6a: signed by node zz, which is not in the peers file: not a deposition but a forgery."""
    with running(*_primary(tmp_path, stream, "?lease_ms=300", peers=peers_of("a", "b"))) as (node, replicator):
        _, revision = leader_of(replicator.link, replicator.kv)
        forged = sign_leader(key_of("zz"), stream, {"epoch": 2, "node": "zz", "lease_ms": 300})
        replicator.link.call(replicator.kv.update("leader", forged, last=revision))
        deadline = time.monotonic() + 5
        while node.failed is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert isinstance(node.failed, Fenced) and "forged leader record" in str(node.failed), node.failed
        assert "deposed" not in str(node.failed)
    with pytest.raises(Fenced, match="forged leader record"):  # nor does a primary start on it
        Replicator(parse_target(f"{NATS_URL}/{stream}"), "a", key=key_of("a"), peers=peers_of("a", "b")).close()


@pytest.mark.parametrize("value, reason", [
    (b"not json", "not JSON"),
    (b"[1]", "a JSON list, not an object"),
    (b"null", "a JSON NoneType, not an object"),
    (json.dumps({"status": "requested", "epoch": "9" * 5000}).encode(), "epoch must be a whole number"),
    (json.dumps({"status": "requested", "epoch": True}).encode(), "epoch must be a whole number"),
    (json.dumps({"status": "requested", "epoch": 2, "approvals": "x"}).encode(), "approvals must be a list"),
])
def test_a_junk_promotion_request_is_refused_and_the_standby_keeps_following(tmp_path, stream, value, reason):
    """I3: rf-operator can write anything to promote.b; it is a refused request, not a crash."""
    with (running(*_primary(tmp_path, stream)) as (node, replicator),
          standby(replicator.target, tmp_path, peers=peers_of("a", "b")) as follower):
        seen: list[str] = []
        follower.on_progress = seen.append
        replicator.link.call(replicator.kv.put("promote.b", value))
        leader, revision = leader_of(follower.link, follower.kv)
        assert follower.consider_promotion(leader, revision) is False
        answer = json.loads(follower.link.call(follower.kv.get("promote.b")).value)
        assert answer["status"] == "refused" and reason in answer["reason"], answer
        refused = [line for line in seen if "promotion refused" in line]  # after the UTC time (test_takeover_times)
        assert [line.split(" ", 1)[1] for line in refused] == [f"standby b: promotion refused: {answer['reason']}"], refused
        assert follower.consider_promotion(leader, revision) is False  # its own answer: nothing more
        node.execute(OpenAccount("bob", "BTC"))
        assert _follow_for(follower, 0.5) == [0]  # it keeps following
        assert follower.engine.last_seq == node.last_seq


def test_promote_waits_through_a_junk_answer(tmp_path, stream):
    """I3, the operator's side: something not JSON in promote.b while `promote` waits is no answer."""
    with running(*_primary(tmp_path, stream)) as (node, replicator):
        def scribble() -> None:
            time.sleep(0.3)
            replicator.link.call(replicator.kv.put("promote.b", b"not json"))

        writer = threading.Thread(target=scribble)
        writer.start()
        with pytest.raises(PromotionRefused, match="did not answer"):
            promote(replicator.target, "b", wait_s=1.0)
        writer.join(5)


def test_bounded_int():
    assert bounded_int("12") == 12 and bounded_int(7) == 7 and bounded_int("9" * 18) == 10**18 - 1
    for junk in ("9" * 19, "9" * 5000, "", "-1", "+1", "1_0", " 1", "١", True, -1, 10**18, 1.0, None, [1]):
        assert bounded_int(junk) is None, junk


def test_junk_epochs_on_the_stream_neither_crash_nor_raise_a_claim(tmp_path, stream):
    """I6b: unsigned messages with Rf-Epoch 5000 digits long, and 7: the first crashed every claim
    (int() of more than 4300 digits), the second raised the next epoch to 8."""
    node, replicator = _primary(tmp_path, stream)
    link = replicator.link
    try:
        for epoch in ("7", "9" * 5000):
            link.call(link.js.publish(replicator.target.subject, b"junk", headers={"Rf-Kind": "batch", "Rf-Epoch": epoch},
                                      stream=stream))
            memory = EpochMemory(None, stream)
            assert epoch_above(link, memory, None, scan=True, peers=peers_of("a")) == 2  # only a's epoch 1 counts
        assert epoch_above(link, EpochMemory(None, stream), None, scan=True) == 8  # no peers: 7 counts, the junk not
        # nor does a record with such an epoch count as one
        replicator.link.call(replicator.kv.put("leader", json.dumps({"epoch": 10**30, "node": "a"}).encode()))
        leader, _ = leader_of(link, replicator.kv)
        assert leader.get("unreadable") and leader["epoch"] == 0
    finally:
        node.close()
        replicator.close()


def test_a_standby_needs_a_peers_file_even_in_dev_mode(tmp_path, stream):
    """I5: dev mode is the default; a standby that checks no signature applies anyone's batch."""
    env = {k: v for k, v in os.environ.items() if k not in ("RINGFENCE_REPLICATION_PEERS", "RINGFENCE_MODE")}
    proc = subprocess.run([sys.executable, "-m", "ringfence.cli", "serve", "--data", str(tmp_path / "b"), "--port",
                           str(free_port()), "--standby", f"{NATS_URL}/{stream}", "--node-id", "b"],
                          capture_output=True, text=True, timeout=60, env=dict(env, COLUMNS="300"))
    out = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode == 2 and "--peers: a standby needs a peers file" in out and "Traceback" not in out, out
    assert '{"b": "' in out  # the entry to add


def test_the_bucket_refuses_a_value_larger_than_its_limit(tmp_path, stream):
    """I6e: each value of the leadership bucket is at most BUCKET_MAX_VALUE bytes."""
    from nats.js.errors import APIError

    link = NatsLink(parse_target(f"{NATS_URL}/{stream}"))
    try:
        kv = link.ensure_stream_and_bucket()
        config = link.call(link.js.stream_info(f"KV_{stream}-leader")).config
        assert config.max_msg_size == BUCKET_MAX_VALUE
        link.call(kv.put("promote.b", b"x" * 1000))
        with pytest.raises(APIError):
            link.call(kv.put("promote.x", b"x" * (BUCKET_MAX_VALUE + 1)))
    finally:
        link.close()


def test_a_primary_restarting_on_a_junk_stream_tail_refuses_with_a_reason(tmp_path, stream):
    """I3, the primary's side: a message without Rf-First-Seq at the stream's tail made a restarting
    primary fail with a KeyError traceback."""
    node, replicator = _primary(tmp_path, stream)
    replicator.link.call(replicator.link.js.publish(replicator.target.subject, b"junk", stream=stream,
                                                    headers={"Rf-Kind": "batch", "Rf-Epoch": "1", "Rf-Hash": "zz"}))
    replicator.close()
    node.close()
    node = new_node(tmp_path / "a")
    node.open()
    node.start()
    again = Replicator(parse_target(f"{NATS_URL}/{stream}"), "a", key=key_of("a"))
    try:
        with pytest.raises(Fenced, match="is not a batch any node wrote"):
            again.attach(node)
    finally:
        node.close()
        again.close()


def test_status_calls_a_record_naming_a_node_not_in_the_peers_file_forged(tmp_path, stream):
    """I6a, the operator's view: `status --peers` said "unchecked" for a node the file does not hold."""
    from ringfence import nodekey

    with running(*_primary(tmp_path, stream)) as (node, replicator):
        replicator.link.call(replicator.kv.put("leader", sign_leader(key_of("zz"), stream, {"epoch": 2, "node": "zz"})))
        (tmp_path / "peers.json").write_text(json.dumps({"a": nodekey.public_hex(key_of("a"))}))
        proc = subprocess.run([sys.executable, "-m", "ringfence.cli", "replication", "status", "--nats",
                               f"{NATS_URL}/{stream}", "--peers", str(tmp_path / "peers.json")],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1, proc.stdout + proc.stderr  # forged: exit 1, so monitoring can alert on it
        assert json.loads(proc.stdout)["leader_signature"] == "forged"
