"""Intruder review of session 15 against the real NATS JetStream: F2 (a stolen node key opens a new
stream), F4 (a stream that drops messages), F5 (a promoted standby deposed by another one over a
lease it does not hold), F7 (a primary's lease lost during its build). Each test fails without its fix.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from ringfence.app import new_node
from ringfence.errors import ConfigError
from ringfence.journal.journal import GENESIS_HASH, scan
from ringfence.ledger.commands import OpenAccount, RegisterAsset
from ringfence.replication import (KIND_BATCH, Fenced, Follower, NatsLink, Refused, Replicator, _headers, leader_of,
                                   parse_target, sign_leader, sign_message)

from .conftest import NATS_URL, attached_primary, key_of, peers_of, running, standby

PEERS = ("a", "b", "c")


def _forge_first(tmp_path, stream: str, signer: str = "c") -> None:
    """What the holder of `signer`'s key and the rf-node credential can do on an empty stream: publish valid
    records from genesis (asset EVIL, sequences 1..3) at epoch 1, signed by `signer`, with
    no fence and no leader record."""
    forger = new_node(tmp_path / "forger")
    forger.open()
    forger.execute_many([RegisterAsset("EVIL", 8, "crypto", "bitcoin"), OpenAccount("eve", "EVIL"),
                         OpenAccount("mallory", "EVIL")])
    forger.close()
    records = list(scan(tmp_path / "forger" / "journal"))
    assert records[-1].last_seq == 3
    target = parse_target(f"{NATS_URL}/{stream}")
    link = NatsLink(target)
    try:
        link.ensure_stream_and_bucket()
        prev = GENESIS_HASH
        for position, record in enumerate(records, 1):
            headers = _headers(KIND_BATCH, 1, record.first_seq, record.count, prev, record.hash, "", position - 1)
            headers.update({"Rf-Catch-Up": "1", "Rf-Pos": str(position), "Rf-Session": "evil"})
            sign_message(key_of(signer), signer, stream, headers, record.payload)
            link.call(link.js.publish(target.subject, record.payload, headers=headers, stream=stream))
            prev = record.hash
    finally:
        link.close()


def test_a_stolen_node_key_does_not_open_a_new_stream_for_a_standby(tmp_path, stream):
    """F2 (b): c's key opens the stream; standby b (peers a, b, c; a listed first) refuses its first
    message, appends nothing and names the fix; with first_primary=c in its URL it follows."""
    _forge_first(tmp_path, stream, "c")
    with standby(parse_target(f"{NATS_URL}/{stream}"), tmp_path, "b", peers=peers_of(*PEERS)) as follower:
        with pytest.raises(Refused, match=r"signed by 'c', but the stream's first primary is 'a'.*first_primary=c"):
            follower.poll()
        assert follower.engine.last_seq == 0 and follower.writer.next_seq == 1
    with standby(parse_target(f"{NATS_URL}/{stream}?first_primary=c"), tmp_path, "b2", peers=peers_of(*PEERS)) as follower:
        follower.poll()
        assert follower.engine.last_seq == 3
    with pytest.raises(ConfigError, match="first_primary"):
        parse_target(f"{NATS_URL}/{stream}?first_primary=no/such")


def _a_beside_a_forged_stream(tmp_path, stream):
    """c's forged records on `stream` (1..1, 2..3), and primary a's own node, started, with two records of its
    own (1..1, 2..2), and its Replicator on `stream`, not attached yet."""
    _forge_first(tmp_path, stream, "c")
    # the record names a (with none, a finds the stream's newest message is c's and refuses before attaching:
    # test_review16)
    link = NatsLink(parse_target(f"{NATS_URL}/{stream}"))
    try:
        link.call(link.ensure_stream_and_bucket().create("leader", sign_leader(key_of("a"), stream, {
            "epoch": 1, "node": "a", "lease_ms": 0, "renewed_at_ns": time.time_ns(), "renewal": 1})))
    finally:
        link.close()
    node = new_node(tmp_path / "a")
    node.open()
    node.execute_many([RegisterAsset("BTC", 8, "crypto", "bitcoin"), OpenAccount("alice", "BTC")])  # 1..1, 2..2
    node.start()
    return node, Replicator(parse_target(f"{NATS_URL}/{stream}"), "a", tmp_path / "a", key=key_of("a"), peers=peers_of(*PEERS))


def test_a_primary_refuses_a_stream_whose_history_is_not_its_own(tmp_path, stream):
    """F2 (a): the stream's records (1..3, c's) end inside primary a's record 3..5: a notices the chains
    differ and neither publishes nor catches up; the stream keeps only the forged messages."""
    node, replicator = _a_beside_a_forged_stream(tmp_path, stream)
    node.execute_many([OpenAccount(name, "BTC") for name in ("bob", "carol", "dave")])  # one record: 3..5
    assert [(r.first_seq, r.count) for r in scan(tmp_path / "a" / "journal")] == [(1, 1), (2, 1), (3, 3)]
    with running(node, replicator):
        with pytest.raises(Fenced, match=r"does not hold this node's history: its last record ends at sequence 3, "
                                         r"inside this node's record 3\.\.5"):
            replicator.attach(node)
        assert int(replicator.link.call(replicator.link.js.stream_info(stream)).state.last_seq) == 2  # c's two records


def test_a_primary_behind_a_stream_that_is_not_its_history_says_so(tmp_path, stream):
    """F2 (a), the stream longer than the journal: c's records 1..1, 2..3; primary a's journal ends at 2
    (1..1, 2..2): the stream's record of sequence 2 is not a's, so a says the histories differ rather than
    that another primary merely wrote after it."""
    node, replicator = _a_beside_a_forged_stream(tmp_path, stream)
    assert node.last_seq == 2
    with running(node, replicator):
        with pytest.raises(Fenced, match=r"its record there \(stream message 2, sequences 2\.\.3\) is not this node's "
                                         r"last record: the histories differ"):
            replicator.attach(node)


def _weak_stream(stream: str, **config) -> None:
    from nats.js.api import StorageType, StreamConfig

    async def make() -> None:
        import nats

        nc = await nats.connect(NATS_URL, connect_timeout=3)
        try:
            await nc.jetstream().add_stream(StreamConfig(
                name=stream, duplicate_window=120.0, allow_rollup_hdrs=False,
                deny_delete=True, deny_purge=True, **{"storage": StorageType.FILE, "subjects": [f"rf.{stream}.batches"], **config}))
        finally:
            await nc.close()

    asyncio.run(make())


@pytest.mark.parametrize("weak", ["max_msgs", "memory", "max_age", "max_bytes", "per_subject", "retention", "subjects",
                                  "max_msg_size"])
def test_a_stream_that_could_drop_messages_is_refused_by_primary_and_standby(tmp_path, stream, weak):
    """F4: a stream made (by anyone with the rf-node credential) with the three hardened flags but a limit,
    memory storage or another retention: the primary and the standby refuse it, naming the field."""
    from nats.js.api import RetentionPolicy, StorageType

    config, field = {"max_msgs": ({"max_msgs": 20}, "max_msgs=20"),
                     "memory": ({"storage": StorageType.MEMORY}, "storage='memory'"),
                     "max_age": ({"max_age": 3600.0}, "max_age="),  # float-ok: nats-py takes seconds
                     "max_bytes": ({"max_bytes": 1 << 20}, "max_bytes="),
                     "per_subject": ({"max_msgs_per_subject": 5}, "max_msgs_per_subject=5"),
                     "retention": ({"retention": RetentionPolicy.INTEREST}, "retention='interest'"),
                     # a second subject: anyone allowed to publish on it writes into the journal stream
                     "subjects": ({"subjects": [f"rf.{stream}.batches", f"x.{stream}"]}, "subjects="),
                     # a record the primary may write could be refused
                     "max_msg_size": ({"max_msg_size": 1024}, "max_msg_size=1024")}[weak]
    _weak_stream(stream, **config)
    target = parse_target(f"{NATS_URL}/{stream}")
    with pytest.raises(ConfigError, match=f"{stream} has .*{field}.*move to a new stream name"):
        Replicator(target, "a", key=key_of("a"), peers=peers_of(*PEERS))
    with pytest.raises(ConfigError, match=field):
        Follower(target, tmp_path / "b", "b", key=key_of("b"), peers=peers_of(*PEERS))


def test_a_standby_says_when_the_stream_lost_messages_it_needs(tmp_path, stream):
    """F4: messages 1.. are gone (a limit set on the stream after the standby attached) while later ones
    exist: the standby says so (problem, log line) instead of sitting silently at sequence 0, and does not
    take the leadership."""
    from nats.js.api import StreamConfig  # noqa: F401 - the config type the update takes

    node = new_node(tmp_path / "a")
    node.open()
    node.start()
    replicator = Replicator(parse_target(f"{NATS_URL}/{stream}"), "a", key=key_of("a"), peers=peers_of(*PEERS))
    replicator.attach(node)
    lines: list[str] = []
    with running(node, replicator):
        node.execute(RegisterAsset("BTC", 8, "crypto", "bitcoin"))
        follower = Follower(parse_target(f"{NATS_URL}/{stream}"), tmp_path / "b", "b", lines.append, key=key_of("b"),
                            peers=peers_of(*PEERS))
        try:
            from dataclasses import replace

            link = replicator.link
            config = link.call(link.js.stream_info(stream)).config
            link.call(link.js.update_stream(replace(config, max_msgs=2)))  # an admin's mistake
            for name in ("alice", "bob", "carol", "dave"):
                node.execute(OpenAccount(name, "BTC"))
            assert int(link.call(link.js.stream_info(stream)).state.first_seq) > 1
            assert follower.poll() == 0
            assert "stream message 1 is missing" in follower.problem and "will not take over" in follower.problem
            assert any("stream message 1 is missing" in line for line in lines)
            stop = threading.Event()
            runner = threading.Thread(target=lambda: follower.follow_until_promoted(stop))
            runner.start()
            time.sleep(0.3)
            stop.set()
            runner.join(5)
            assert follower.engine.last_seq == 0 and follower.stream_seq == 0
        finally:
            follower.close()


def test_a_promoted_standby_holds_no_lease_it_does_not_renew(tmp_path, stream):
    """F5: primary a (lease 300 ms) stops; b (auto_promote, no lease of its own) takes over and serves with
    its URL, as `serve` does: its record then has no lease, and standby c (lease_ms=300, auto_promote)
    does not take the leadership from the healthy b."""
    peers = peers_of(*PEERS)
    node, a = attached_primary(tmp_path, stream, "?lease_ms=300", peers)
    node.execute(RegisterAsset("BTC", 8, "crypto", "bitcoin"))
    b_url = parse_target(f"{NATS_URL}/{stream}?auto_promote=1")
    follower = Follower(b_url, tmp_path / "b", "b", key=key_of("b"), peers=peers)
    try:
        follower.poll()
        a._stop.set()  # a stops renewing (it died)
        node.close()
        assert follower.follow_until_promoted() == 2
        engine, position, lock = follower.hand_over()
        lock.release()
    finally:
        follower.close()
        a.close()
    b = Replicator(b_url, "b", key=key_of("b"), peers=peers)  # as serving.before_build does after the promotion
    try:
        with standby(parse_target(f"{NATS_URL}/{stream}?lease_ms=300&auto_promote=1"), tmp_path, "c", peers=peers) as c:
            stop = threading.Event()
            took: list[int] = []
            runner = threading.Thread(target=lambda: took.append(c.follow_until_promoted(stop)))
            runner.start()
            time.sleep(2.0)  # float-ok: > 2 x 300 ms, with room for a loaded machine
            stop.set()
            runner.join(5)
            assert took == [0]
            record, _ = leader_of(b.link, b.kv)
            assert record is not None and record["node"] == "b" and record["epoch"] == 2 and record["lease_ms"] == 0
    finally:
        b.close()


def test_a_primary_keeps_its_lease_through_a_slow_build(tmp_path, stream):
    """F7: a primary claims its lease (300 ms) and builds for 1.5 s before attaching: an auto-promoting
    standby does not take over meanwhile, and the primary attaches and replicates."""
    peers = peers_of(*PEERS)
    replicator = Replicator(parse_target(f"{NATS_URL}/{stream}?lease_ms=300"), "a", key=key_of("a"), peers=peers)
    node = new_node(tmp_path / "a")
    with running(node, replicator), standby(parse_target(f"{NATS_URL}/{stream}?auto_promote=1"), tmp_path, "b",
                                            peers=peers) as follower:
        stop = threading.Event()
        took: list[int] = []
        runner = threading.Thread(target=lambda: took.append(follower.follow_until_promoted(stop)))
        runner.start()
        time.sleep(1.5)  # float-ok: the slow build, 5 leases
        node.open()
        node.start()
        replicator.attach(node)
        node.execute(RegisterAsset("BTC", 8, "crypto", "bitcoin"))
        stop.set()
        runner.join(5)
        assert took == [0] and replicator.lost is None
        follower.poll()
        assert follower.engine.last_seq == 1
