"""The replication protocol in-process against the real NATS JetStream: a node publishing through a
`Replicator`, a `Follower` applying into its own directory. Each check is one way the protocol
must refuse: a forged batch, a batch from a deposed epoch, a stale writer, a lost promotion race.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from ringfence.app import new_node, replay_journal
from ringfence.errors import ConfigError, JournalCorrupt
from ringfence.journal.journal import scan_all
from ringfence.ledger.commands import CreateTransfers, OpenAccount, RegisterAsset
from ringfence.ledger.model import Transfer
from ringfence.replication import (Fenced, Follower, PromotionRefused, Refused, Replicator, leader_of, parse_target,
                                   promote)

from .conftest import NATS_URL, key_of, peers_of


def _primary(tmp_path, stream):
    node = new_node(tmp_path / "a")
    node.open()
    node.start()
    replicator = Replicator(parse_target(f"{NATS_URL}/{stream}"), "a", key=key_of("a"))
    assert replicator.attach(node) == 0
    node.execute(RegisterAsset("BTC", 8, "crypto", "bitcoin"))
    node.execute_many([OpenAccount("alice", "BTC"), OpenAccount("bob", "BTC")])
    return node, replicator


def _fund(node, transfer_id: int, amount: int) -> None:
    world, alice = node.read(lambda e: (e.ledger.world("BTC").id, e.ledger.get("alice", "BTC").id))
    node.execute(CreateTransfers([Transfer(transfer_id, world, alice, amount)]))


def _publish_raw(replicator, headers, payload=b""):
    return replicator.link.call(replicator.link.js.publish(replicator.target.subject, payload, headers=headers,
                                                           stream=replicator.target.stream))


def _standby_b(target, tmp_path) -> Follower:
    """Standby b on `tmp_path / "b"`, trusting the test's peers."""
    return Follower(target, tmp_path / "b", "b", key=key_of("b"), peers=peers_of())


def test_follower_rebuilds_the_primary_journal_byte_for_byte(tmp_path, stream):
    node, replicator = _primary(tmp_path, stream)
    try:
        for i in range(1, 6):
            _fund(node, i, 1000 * i)
        follower = Follower(parse_target(f"{NATS_URL}/{stream}"), tmp_path / "b", "b", key=key_of("b"), peers=peers_of())
        try:
            assert follower.poll() == replicator.published + 1  # and a's opener (message 1)
            assert follower.engine.state_hash() == node.read(lambda e: e.state_hash())
        finally:
            follower.close()
        primary_records, _ = scan_all(tmp_path / "a" / "journal")
        standby_records, _ = scan_all(tmp_path / "b" / "journal")
        assert [r.hash for r in standby_records] == [r.hash for r in primary_records]
        engine, _, _ = replay_journal(tmp_path / "b")
        assert engine.state_hash() == node.read(lambda e: e.state_hash())
    finally:
        node.close()
        replicator.close()


def test_follower_refuses_a_forged_batch(tmp_path, stream):
    node, replicator = _primary(tmp_path, stream)
    try:
        msg = replicator.link.call(replicator.link.js.get_msg(stream, replicator.stream_seq))
        headers = dict(msg.headers)
        forged = dict(headers, **{"Rf-First-Seq": str(node.last_seq + 1), "Rf-Prev-Hash": headers["Rf-Hash"],
                                   "Nats-Msg-Id": "forged", "Nats-Expected-Last-Sequence": str(replicator.stream_seq)})
        _publish_raw(replicator, forged, msg.data.replace(b"bob", b"eve"))
        follower = Follower(parse_target(f"{NATS_URL}/{stream}"), tmp_path / "b", "b", key=key_of("b"), peers=peers_of())
        try:
            with pytest.raises(Refused, match="stream message 4 refused: the signature is not that of node 'a'"):
                follower.poll()  # its headers and body no longer match a's signature
            assert follower.engine.last_seq == node.last_seq  # everything before the forgery applied
        finally:
            follower.close()
    finally:
        node.close()
        replicator.close()


def test_a_deposed_primary_is_refused_by_the_stream_and_by_followers(tmp_path, stream):
    target = parse_target(f"{NATS_URL}/{stream}")
    node, replicator = _primary(tmp_path, stream)
    try:
        follower = _standby_b(target, tmp_path)
        try:
            follower.poll()
            record = promote(target, "b")
            assert record["epoch"] == 2 and record["previous"]["node"] == "a"
            assert follower.follow_until_promoted() == 2  # catches up, then publishes the fence
            before = follower.stream_seq
            with pytest.raises(Exception) as refused:  # the node answers OutcomeUnknown and stops
                _fund(node, 99, 1)
            assert "not replicated" in str(refused.value)
            assert node.failed is not None and isinstance(node.failed, Fenced)
            info = replicator.link.call(replicator.link.js.stream_info(stream))
            assert info.state.last_seq == before, "the deposed primary got a message into the stream"
            # even a writer that learns the stream's tail (and still holds its key: it signs for the
            # new position) is refused by followers: its epoch is old
            stale = replicator.link.call(replicator.link.js.get_msg(stream, before - 1))
            headers = dict(stale.headers, **{"Nats-Msg-Id": "stale", "Nats-Expected-Last-Sequence": str(before)})
            replicator._publish_one(0, headers, stale.data)
            with pytest.raises(Fenced, match="deposed primary"):
                follower.poll()
        finally:
            follower.close()
    finally:
        node.close()
        replicator.close()


def test_leadership_changes_only_with_the_current_revision(tmp_path, stream):
    """A promotion is a request until the standby verifies it; then a revision-checked update, so a
    racing update from the old revision loses. A request for a stale epoch is refused."""
    from nats.js.errors import KeyWrongLastSequenceError

    target = parse_target(f"{NATS_URL}/{stream}")
    node, replicator = _primary(tmp_path, stream)
    link, kv = replicator.link, replicator.kv
    follower = _standby_b(target, tmp_path)
    try:
        leader, revision = leader_of(link, kv)
        assert leader["node"] == "a" and leader["epoch"] == 1
        with pytest.raises(PromotionRefused, match="next epoch is 2"):  # a stale epoch: refused before asking
            promote(target, "b", epoch=1)
        link.call(kv.put("promote.b", json.dumps({"epoch": 7, "node": "b", "approvals": [], "status": "requested"}).encode()))
        assert not follower.consider_promotion(leader, revision)  # a stale or forged epoch
        assert "next epoch is 2" in json.loads(link.call(kv.get("promote.b")).value)["reason"]
        promote(target, "b")  # only a request: the leader record has not changed
        assert leader_of(link, kv) == (leader, revision)
        assert follower.follow_until_promoted() == 2
        with pytest.raises(KeyWrongLastSequenceError):  # a racing update from the old revision loses
            link.call(kv.update("leader", json.dumps({"epoch": 2, "node": "c"}).encode(), last=revision))
        assert leader_of(link, kv)[0]["node"] == "b"
        with pytest.raises(Fenced, match="'b' is the primary at epoch 2"):
            Replicator(target, "a", key=key_of("a"))
    finally:
        follower.close()
        node.close()
        replicator.close()


def test_unreachable_nats_is_a_clear_error():
    from ringfence.errors import ConfigError
    from ringfence.replication import NatsLink

    with pytest.raises(ConfigError, match="cannot reach NATS"):
        NatsLink(parse_target("nats://127.0.0.1:1/X"))


def test_a_partitioned_primary_stops_within_its_lease_and_the_standby_takes_over(tmp_path, stream):
    """Lease 1 s: the primary loses NATS (its connection is closed), refuses commands within the
    lease, and the auto-promoting standby claims the next epoch after 2 x lease without renewals.
    (A 400 ms lease expired under a full suite at load ~20 before the primary's second batch was
    replicated: the primary stopped, rightly, before the partition the test makes.)"""
    import threading
    import time

    from ringfence.errors import NotDurable

    node = new_node(tmp_path / "a")
    node.open()
    node.start()
    lease_s = 1.0  # float-ok: seconds
    replicator = Replicator(parse_target(f"{NATS_URL}/{stream}?lease_ms={int(lease_s * 1000)}"), "a", key=key_of("a"))
    replicator.attach(node)
    node.execute(RegisterAsset("BTC", 8, "crypto", "bitcoin"))
    follower = Follower(parse_target(f"{NATS_URL}/{stream}?auto_promote=1"), tmp_path / "b", "b", key=key_of("b"), peers=peers_of())
    promoted: list[int] = []
    runner = threading.Thread(target=lambda: promoted.append(follower.follow_until_promoted()))
    try:
        runner.start()
        time.sleep(2.5 * lease_s)  # renewals keep the standby from taking over past 2 x lease
        assert not promoted and node.failed is None
        node.execute(OpenAccount("alice", "BTC"))
        cut = time.monotonic()
        replicator.link.disconnect()  # the partition: the primary can reach NATS no more
        deadline = cut + 5
        while node.failed is None and time.monotonic() < deadline:
            time.sleep(0.02)
        stopped_after_s = time.monotonic() - cut
        assert isinstance(node.failed, Fenced) and "lease" in str(node.failed), node.failed
        assert stopped_after_s <= lease_s + 0.3, f"stopped acknowledging {stopped_after_s:.3f} s after the partition"
        with pytest.raises(NotDurable):
            node.execute(OpenAccount("bob", "BTC"))
        runner.join(10)
        assert promoted == [2]
        assert follower.engine.state_hash() == node.read(lambda e: e.state_hash())  # nothing acknowledged was lost
    finally:
        runner.join(1)
        follower.close()
        node.close()
        replicator.close()


def test_a_record_larger_than_a_nats_message_goes_in_chunks_and_a_cut_off_one_is_dropped(tmp_path, stream):
    target = parse_target(f"{NATS_URL}/{stream}")
    node, replicator = _primary(tmp_path, stream)
    try:
        world, alice = node.read(lambda e: (e.ledger.world("BTC").id, e.ledger.get("alice", "BTC").id))
        big = [CreateTransfers([Transfer(100_000 * r + i, world, alice, 1) for i in range(8000)]) for r in range(1, 17)]
        node.execute_many(big)  # 128,000 transfers in as few records as the sequencer makes: larger than a NATS message
        records, _ = scan_all(tmp_path / "a" / "journal")
        assert max(len(r.payload) for r in records) > replicator.link.chunk_bytes
        chunked = [h for h in (replicator.link.call(replicator.link.js.get_msg(stream, s)).headers
                               for s in range(1, replicator.stream_seq + 1)) if "Rf-Chunk" in h]
        assert len(chunked) >= 2 and chunked[-1]["Rf-Chunk"].split("/")[0] == chunked[-1]["Rf-Chunk"].split("/")[1]
        # a primary that dies between chunks: chunk 1 of 2 of a record that never completes
        headers = dict(chunked[0], **{"Rf-First-Seq": str(node.last_seq + 1), "Rf-Chunk": "1/2",
                                       "Nats-Msg-Id": "cut-off", "Nats-Expected-Last-Sequence": str(replicator.stream_seq)})
        replicator._publish_one(node.last_seq + 1, headers, b"x" * 100)
        follower = _standby_b(target, tmp_path)
        try:
            promote(target, "b")
            assert follower.follow_until_promoted() == 2  # the fence drops the cut-off record
            assert follower.engine.last_seq == node.last_seq
            assert follower.engine.state_hash() == node.read(lambda e: e.state_hash())
            assert follower.engine.ledger.get("alice", "BTC").balance == 128_000
        finally:
            follower.close()
    finally:
        node.close()
        replicator.close()


def test_a_restarted_standby_checks_the_stream_against_its_journal(tmp_path, stream):
    target = parse_target(f"{NATS_URL}/{stream}")
    node, replicator = _primary(tmp_path, stream)
    try:
        _fund(node, 1, 5)
        follower = _standby_b(target, tmp_path)
        follower.poll()
        follower.close()
        _fund(node, 2, 7)
        again = _standby_b(target, tmp_path)  # re-reads the stream from the start
        try:
            again.poll()
            assert again.engine.state_hash() == node.read(lambda e: e.state_hash())
        finally:
            again.close()
        # a standby whose journal is not the stream's history is refused, not silently extended
        other = new_node(tmp_path / "c")
        other.open()
        other.execute(RegisterAsset("ETH", 18, "crypto", "ethereum"))
        other.close()
        diverged = Follower(target, tmp_path / "c", "c", key=key_of("c"), peers=peers_of())
        try:
            with pytest.raises(JournalCorrupt, match="diverged"):
                diverged.poll()
        finally:
            diverged.close()
    finally:
        node.close()
        replicator.close()


def test_an_fsync_failure_while_the_batch_is_being_published_is_outcome_unknown(tmp_path, stream):
    """The batch is published while its fsync runs; when the fsync fails the client must hear
    "outcome unknown" (never "nothing applied"): the stream, and so a standby, may hold it."""
    import os as _os

    from ringfence.errors import OutcomeUnknown

    failing = {"on": False}

    def sync(fd: int) -> None:
        if failing["on"]:
            raise OSError(5, "Input/output error")
        _os.fdatasync(fd)

    node = new_node(tmp_path / "a", journal_sync=sync)
    node.open()
    replicator = Replicator(parse_target(f"{NATS_URL}/{stream}?state_hash_every=1000"), "a", key=key_of("a"))
    replicator.attach(node)
    node.execute(RegisterAsset("BTC", 8, "crypto", "bitcoin"))
    node.execute(OpenAccount("alice", "BTC"))
    world, alice = node.read(lambda e: (e.ledger.world("BTC").id, e.ledger.get("alice", "BTC").id))
    failing["on"] = True
    with pytest.raises(OutcomeUnknown):
        node.execute(CreateTransfers([Transfer(1, world, alice, 5)]))
    node.abandon()
    replicator.close()
    follower = Follower(parse_target(f"{NATS_URL}/{stream}"), tmp_path / "b", "b", key=key_of("b"), peers=peers_of())
    try:
        follower.poll()
        assert follower.engine.ledger.get("alice", "BTC").balance == 5  # the standby did get it
    finally:
        follower.close()


def _wait_for_hasher(replicator, timeout_s: float = 30.0) -> None:  # float-ok: seconds
    """Until the forked hasher child (if one runs) has exited, without reaping it (the primary's
    next batch collects it). A fixed sleep was not enough at nice 19 on a loaded machine."""
    child = replicator._hasher._child
    deadline = time.monotonic() + timeout_s
    while child is not None and os.waitid(os.P_PID, child[0], os.WEXITED | os.WNOWAIT | os.WNOHANG) is None:
        assert time.monotonic() < deadline, "the state-hash child did not finish"
        time.sleep(0.01)


def test_a_state_hash_computed_off_the_sequencer_is_checked_when_it_arrives(tmp_path, stream):
    """state_hash_later=1: a forked child hashes the state after every 2nd batch and the hash rides
    on a later batch; the follower checks each against its own state at that sequence, and a
    standby whose state diverged (here: a field changed behind the engine's back) is refused."""
    node = new_node(tmp_path / "a")
    node.open()
    node.start()
    # state_digest=0: the later hash alone (the per-batch digest would catch the divergence first)
    replicator = Replicator(parse_target(f"{NATS_URL}/{stream}?state_hash_every=2&state_hash_later=1&state_digest=0"), "a", key=key_of("a"))
    follower = Follower(parse_target(f"{NATS_URL}/{stream}"), tmp_path / "b", "b", key=key_of("b"), peers=peers_of())
    try:
        replicator.attach(node)
        node.execute(RegisterAsset("BTC", 8, "crypto", "bitcoin"))
        node.execute_many([OpenAccount("alice", "BTC"), OpenAccount("bob", "BTC")])
        for i in range(1, 9):
            _fund(node, i, 10 * i)
            _wait_for_hasher(replicator)  # the child finishes, so its hash rides on the next batch
        follower.poll()
        headers = [replicator.link.call(replicator.link.js.get_msg(stream, s)).headers
                   for s in range(1, replicator.stream_seq + 1)]
        assert all(not h.get("Rf-State-Hash") for h in headers)  # nothing hashed on the sequencer thread
        assert sum("Rf-State-Pending" in h for h in headers) >= 3 and sum("Rf-State-Of" in h for h in headers) >= 2
        assert follower.later_checked >= 2 and follower.engine.state_hash() == node.read(lambda e: e.state_hash())
        follower.engine.components["staff"].version += 1  # the standby's state diverges from the primary's
        for i in range(9, 15):
            _fund(node, i, 1)
            _wait_for_hasher(replicator)
        with pytest.raises(JournalCorrupt, match="state hash differs"):
            follower.poll()
    finally:
        follower.close()
        node.close()
        replicator.close()


def test_every_batch_outcome_is_checked_without_a_state_hash(tmp_path, stream):
    """Chain only (state_hash_every=10^6: no state hash on the way): each batch still carries the
    digest of the events the batch before it produced, and the follower compares it with its own.
    A standby whose ledger diverged (alice's balance changed behind its engine) produces different
    events for the next transfers (a refusal where the primary moved money) and is refused."""
    node = new_node(tmp_path / "a")
    node.open()
    node.start()
    replicator = Replicator(parse_target(f"{NATS_URL}/{stream}?state_hash_every=1000000"), "a", key=key_of("a"))
    follower = Follower(parse_target(f"{NATS_URL}/{stream}"), tmp_path / "b", "b", key=key_of("b"), peers=peers_of())
    try:
        replicator.attach(node)
        node.execute(RegisterAsset("BTC", 8, "crypto", "bitcoin"))
        node.execute_many([OpenAccount("alice", "BTC"), OpenAccount("bob", "BTC")])
        for i in range(1, 6):
            _fund(node, i, 100)
        world, bob = node.read(lambda e: (e.ledger.world("BTC").id, e.ledger.get("bob", "BTC").id))
        node.execute(CreateTransfers([Transfer(50, world, bob, 2**70)]))  # events with amounts beyond 64 bits
        node.execute(CreateTransfers([Transfer(51, world, bob, 1)]))
        follower.poll()
        headers = [replicator.link.call(replicator.link.js.get_msg(stream, s)).headers
                   for s in range(2, replicator.stream_seq + 1)]  # message 1: the opener
        assert all(not h.get("Rf-State-Hash") for h in headers)  # no state hash at all
        assert sum("Rf-Outcome" in h for h in headers) == len(headers) - 1  # every batch but the first
        assert follower.outcomes_checked == len(headers) - 1
        assert follower.engine.state_hash() == node.read(lambda e: e.state_hash())
        alice, bob = node.read(lambda e: (e.ledger.get("alice", "BTC").id, e.ledger.get("bob", "BTC").id))
        follower.engine.ledger.get("alice", "BTC").credits_posted -= 500  # the standby's ledger diverges
        node.execute(CreateTransfers([Transfer(100, alice, bob, 300)]))  # the primary moves it; the standby cannot
        node.execute(CreateTransfers([Transfer(101, alice, bob, 1)]))  # carries the digest of the one before
        with pytest.raises(JournalCorrupt, match="different events"):
            follower.poll()
    finally:
        follower.close()
        node.close()
        replicator.close()


def test_a_standby_of_another_digest_format_stops_naming_both(tmp_path, stream, monkeypatch):
    """The state digest's definition changed (ledger/digest.py v2): a primary that sends digests of
    another format (here the format 1 a primary without `Rf-Digest-Format` sends) stops the standby
    with a ConfigError naming both formats, before it applies the batch — not the "replicas
    diverged" a digest comparison would report."""
    import ringfence.replication as replication

    node = new_node(tmp_path / "a")
    node.open()
    node.start()
    replicator = Replicator(parse_target(f"{NATS_URL}/{stream}?state_hash_every=1000000"), "a", key=key_of("a"))
    follower = Follower(parse_target(f"{NATS_URL}/{stream}"), tmp_path / "b", "b", key=key_of("b"), peers=peers_of())
    try:
        replicator.attach(node)
        node.execute(RegisterAsset("BTC", 8, "crypto", "bitcoin"))
        node.execute_many([OpenAccount("alice", "BTC"), OpenAccount("bob", "BTC")])
        for i in range(1, 5):
            _fund(node, i, 10 * i)
        follower.poll()
        assert follower.digests_checked >= 2  # same format: checked
        applied = follower.batches_applied
        with monkeypatch.context() as m:  # the primary sends what an older version sends
            m.setattr(replication, "STATE_DIGEST_FORMAT", "state-digest-1")
            _fund(node, 5, 1)
            _fund(node, 6, 1)
        with pytest.raises(ConfigError, match="'state-digest-1', this standby computes 'state-digest-2'"):
            follower.poll()
        assert follower.batches_applied == applied  # stopped before applying the batch that carries it
    finally:
        follower.close()
        node.close()
        replicator.close()

def test_every_batch_state_is_checked_through_the_incremental_digest(tmp_path, stream):
    """state_digest=1 (the default) with no state hash at all: every batch carries the primary's
    incremental state digest after the batch before it; the follower checks each one, and a
    standby whose ledger was changed behind its engine (one account's counter) is refused at the
    next batch, naming the sequence."""
    node = new_node(tmp_path / "a")
    node.open()
    node.start()
    replicator = Replicator(parse_target(f"{NATS_URL}/{stream}?state_hash_every=1000000"), "a", key=key_of("a"))
    follower = Follower(parse_target(f"{NATS_URL}/{stream}"), tmp_path / "b", "b", key=key_of("b"), peers=peers_of())
    try:
        replicator.attach(node)
        node.execute(RegisterAsset("BTC", 8, "crypto", "bitcoin"))
        node.execute_many([OpenAccount("alice", "BTC"), OpenAccount("bob", "BTC")])
        for i in range(1, 9):
            _fund(node, i, 10 * i)
        follower.poll()
        headers = [replicator.link.call(replicator.link.js.get_msg(stream, s)).headers
                   for s in range(1, replicator.stream_seq + 1)]
        # a batch's state digest is taken while the next batch is written and goes out with the one after
        assert sum("Rf-State-Digest" in h for h in headers) >= 8
        assert not any(h.get("Rf-State-Hash") for h in headers[1:])  # no full state hash after the first
        assert follower.digests_checked >= 6
        assert follower.engine.state_digest() == node.read(lambda e: e.state_digest())
        follower.engine.ledger.get("alice", "BTC").credits_posted += 1  # the standby diverges
        _fund(node, 9, 1)
        _fund(node, 10, 1)
        _fund(node, 11, 1)
        with pytest.raises(JournalCorrupt, match=r"after sequence \d+ the standby's state digest differs"):
            follower.poll()
    finally:
        follower.close()
        node.close()
        replicator.close()


def test_a_deposed_primarys_folder_restarted_as_standby_is_told_why_and_what_to_do(tmp_path, stream):
    """New-user review (issue #21): a deposed primary restarted as a standby on its old folder said only
    `stream message N: batch S does not follow sequence S and its record hash`. Its folder holds a tail the
    stream never got (here: one command journaled on the folder alone, then a two-command batch on the
    stream at that sequence); the error now says so and how to rejoin, citing the docs' section."""
    target = parse_target(f"{NATS_URL}/{stream}")
    node, replicator = _primary(tmp_path, stream)
    try:
        _fund(node, 1, 5)
        follower = _standby_b(target, tmp_path)
        follower.poll()
        follower.close()
        local = new_node(tmp_path / "b")  # the folder's own tail: journaled here, never replicated
        local.open()
        _fund(local, 90, 1)
        local.close()
        world, alice = node.read(lambda e: (e.ledger.world("BTC").id, e.ledger.get("alice", "BTC").id))
        node.execute_many([CreateTransfers([Transfer(2, world, alice, 7)]), CreateTransfers([Transfer(3, world, alice, 9)])])
        again = _standby_b(target, tmp_path)
        try:
            with pytest.raises(JournalCorrupt, match="does not follow sequence") as err:
                again.poll()
            said = str(err.value)
            assert "never replicated" in said and "fresh folder" in said and "backup restore" in said, said
            assert '"Rejoining a deposed primary"' in said
        finally:
            again.close()
    finally:
        node.close()
        replicator.close()
    assert "**Rejoining a deposed primary.**" in (Path(__file__).parents[2] / "docs" / "resilience.md").read_text()
