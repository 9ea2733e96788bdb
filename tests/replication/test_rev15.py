"""Review of session 15's journal replication against the real NATS JetStream: a failover before the
first write (the stream's opener), a refused fence that must stick, first_primary outside the peers
file, a lease lost during attach, NATS errors as one clear line. Each test fails without its fix."""

from __future__ import annotations

import json

import pytest

from ringfence.app import new_node
from ringfence.errors import ConfigError
from ringfence.replication import KIND_FENCE, Follower, Refused, Replicator, parse_target

from .conftest import NATS_URL, attached_primary, key_of, peers_of, running, standby
from .test_residual_risks import _grant, _intruder_fence, _staffed_primary

PEERS = ("a", "b", "c")


def test_a_failover_before_the_first_write_leaves_a_followable_stream(tmp_path, stream):
    """Primary a (lease) opens an empty stream and writes nothing; standby b takes over: b's fence is
    message 2, after a's opener (message 1), so standby c, checking the first primary, follows the stream."""
    peers = peers_of(*PEERS)
    node, a = attached_primary(tmp_path, stream, "?lease_ms=300", peers)
    first = a.link.call(a.link.js.get_msg(stream, 1))
    assert first.headers["Rf-Kind"] == KIND_FENCE and first.headers["Rf-Node"] == "a"
    assert json.loads(first.data)["opens"] is True and a.stream_seq == 1
    follower = Follower(parse_target(f"{NATS_URL}/{stream}?auto_promote=1"), tmp_path / "b", "b", key=key_of("b"),
                        peers=peers)
    try:
        follower.poll()
        a._stop.set()
        node.close()
        assert follower.follow_until_promoted() == 2
        assert follower.stream_seq == 2
        _, _, lock = follower.hand_over()
        lock.release()
    finally:
        follower.close()
        a.close()
    with standby(parse_target(f"{NATS_URL}/{stream}?lease_ms=300&auto_promote=1"), tmp_path, "c", peers=peers) as c:
        assert c.poll() == 2
        assert c.fence_epoch == 2


def test_only_the_first_primary_opens_a_stream(tmp_path, stream):
    """Primary b on an empty stream whose first primary is a (first of the peers file) is refused at attach,
    naming first_primary=; it publishes nothing. With first_primary=b in its URL it opens the stream."""
    node = new_node(tmp_path / "b")
    node.open()
    node.start()
    b = Replicator(parse_target(f"{NATS_URL}/{stream}"), "b", key=key_of("b"), peers=peers_of(*PEERS))
    with running(node, b):
        with pytest.raises(ConfigError, match=r"not its first primary \('a'.*first_primary=b"):
            b.attach(node)
        assert int(b.link.call(b.link.js.stream_info(stream)).state.last_seq) == 0
    node = new_node(tmp_path / "b2")
    node.open()
    node.start()
    b = Replicator(parse_target(f"{NATS_URL}/{stream}?first_primary=b"), "b", key=key_of("b"), peers=peers_of(*PEERS))
    with running(node, b):
        b.attach(node)
        assert b.stream_seq == 1


def test_an_opener_in_the_middle_of_the_stream_is_refused(tmp_path, stream):
    """An opener's grant opens nothing but stream message 1: at message 5, even from the first primary's
    key, it is refused."""
    node, replicator, _ = _staffed_primary(tmp_path, stream)
    with running(node, replicator), standby(parse_target(f"{NATS_URL}/{stream}"), tmp_path, "b",
                                            peers=peers_of(*PEERS)) as b:
        b.poll()
        _intruder_fence(replicator, node, "a", 2, _grant(stream, "a", 2, opens=True))
        with pytest.raises(Refused, match="only stream message 1"):
            b.poll()


def test_a_refused_fence_sticks(tmp_path, stream):
    """A fence refused (no quorum) stops the standby for good: the next poll raises the same refusal and
    neither the fence's epoch nor its position is recorded."""
    node, replicator, _ = _staffed_primary(tmp_path, stream)
    with running(node, replicator), standby(parse_target(f"{NATS_URL}/{stream}"), tmp_path, "b",
                                            peers=peers_of(*PEERS)) as b:
        b.poll()
        seq = b.stream_seq
        _intruder_fence(replicator, node, "c", 2, _grant(stream, "c", 2, approvals=[]))
        with pytest.raises(Refused, match="not granted") as first:
            b.poll()
        with pytest.raises(Refused, match="not granted") as again:
            b.poll()
        assert again.value is first.value
        assert b.stream_seq == seq and 2 not in b._leaders and b.fence_epoch < 2


def test_first_primary_outside_the_peers_file_is_refused(tmp_path, stream):
    """first_primary=z with peers a, b, c: refused by standby and primary, naming the option and the nodes,
    before the standby takes its folder's lock."""
    target = parse_target(f"{NATS_URL}/{stream}?first_primary=z")
    with pytest.raises(ConfigError, match=r"first_primary=z in the --standby URL is not a node of the peers file "
                                          r"\(the nodes: a, b, c\)"):
        Follower(target, tmp_path / "b", "b", key=key_of("b"), peers=peers_of(*PEERS))
    assert not (tmp_path / "b").exists()
    with pytest.raises(ConfigError, match=r"first_primary=z in the --replicate URL .*\(the nodes: a, b, c\)"):
        Replicator(target, "a", key=key_of("a"), peers=peers_of(*PEERS))


def test_a_lease_lost_during_attach_marks_the_node_failed(tmp_path, stream):
    """The lease is lost before attach hooks the node (here: before attach starts): attach refuses, and the
    node is marked failed, so nothing is acknowledged on it."""
    from ringfence.replication import Fenced

    node = new_node(tmp_path / "a")
    node.open()
    node.start()
    a = Replicator(parse_target(f"{NATS_URL}/{stream}?lease_ms=300"), "a", key=key_of("a"), peers=peers_of(*PEERS))
    with running(node, a):
        a._fence_self("the lease of 300 ms expired (test)")
        with pytest.raises(Fenced, match="expired"):
            a.attach(node)
        assert isinstance(node.failed, Fenced)


def test_nats_failures_are_one_clear_error(tmp_path, stream):
    """The stream deleted under a starting primary: attach says so in one ConfigError (not a NATS traceback).
    A promotion request deleted while `promote` waits: PromotionRefused saying it was withdrawn."""
    import threading
    import time

    from ringfence.replication import NatsLink, PromotionRefused, promote, request_key

    node = new_node(tmp_path / "a")
    node.open()
    node.start()
    a = Replicator(parse_target(f"{NATS_URL}/{stream}"), "a", key=key_of("a"), peers=peers_of(*PEERS))
    with running(node, a):
        a.link.call(a.link.js.delete_stream(stream))
        with pytest.raises(ConfigError, match=r"failed while this node brought the stream up to its journal"):
            a.attach(node)
    target = parse_target(f"{NATS_URL}/{stream}")
    link = NatsLink(target)
    kv = link.ensure_stream_and_bucket()
    try:
        def withdraw() -> None:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                try:
                    link.call(kv.get(request_key("b")))
                    break
                except Exception:  # noqa: BLE001 - not written yet
                    time.sleep(0.05)
            link.call(kv.delete(request_key("b")))

        thread = threading.Thread(target=withdraw)
        thread.start()
        with pytest.raises(PromotionRefused, match=r"promote\.b was deleted while waiting"):
            promote(target, "b", wait_s=5, peers=peers_of(*PEERS))
        thread.join()
    finally:
        link.close()
