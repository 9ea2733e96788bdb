"""A classic node's batches go to the stream on the sequencer's own NATS connection (issue #21,
session 21: `direct.DirectLink`), and the state digest after a batch is taken once the batch is
answered (`Replicator.answered`), with no digest thread. Against the real NATS JetStream: every
check of the loop's path holds on this one (a standby verifies every batch and every digest; no
ack, no acknowledgement; a failure stops the node and every later publish)."""

from __future__ import annotations

import asyncio
import threading

import pytest

import ringfence.replication as replication
from ringfence.errors import OutcomeUnknown
from ringfence.ledger.commands import CreateTransfers
from ringfence.ledger.model import Transfer
from ringfence.replication import Fenced, Follower, Replicator, parse_target
from ringfence.replication.direct import DirectError, DirectLink

from journal.test_journal import seed_ledger

from .conftest import NATS_URL, _delete_stream, attached_primary, key_of, peers_of, running

DIGESTS = "?state_hash_every=1000000&state_digest=1"


def _count_loop_sends(replicator: Replicator) -> list[int]:
    """How many messages went out through the link's loop (`_send`) from now on."""
    sent = [0]
    send = replicator._send

    async def counting(data: bytes, headers: dict[str, str]) -> asyncio.Future:
        sent[0] += 1
        return await send(data, headers)

    replicator._send = counting  # type: ignore[method-assign]
    return sent


def _threads() -> set[str]:
    return {t.name for t in threading.enumerate()}


def test_a_classic_node_publishes_on_the_sequencers_connection_and_the_standby_checks_every_digest(tmp_path, stream):
    node, replicator = attached_primary(tmp_path, stream, DIGESTS)
    with running(node, replicator):
        assert replicator._direct is not None and replicator._direct.connects == 1
        loop_sends = _count_loop_sends(replicator)
        world, alice, bob = seed_ledger(node)
        published = replicator.published
        for i in range(20):
            node.submit(CreateTransfers([Transfer(1000 + i, world, alice if i % 2 else bob, 1 + i)])).result(10)
        assert replicator.published == published + 20
        assert loop_sends[0] == 0, "a batch went through the link's loop"
        assert replicator.stream_seq == replicator._sent_seq and replicator._unacked == 0
        assert replicator._digest_pool is None and not any(n.startswith("ringfence-digest") for n in _threads()), \
            "the state digest ran on a thread of its own"
        assert replicator.digests >= 20
        follower = Follower(parse_target(f"{NATS_URL}/{stream}"), tmp_path / "b", "b", key=key_of("b"), peers=peers_of())
        try:
            follower.poll()
            assert follower.engine.last_seq == node.last_seq
            assert follower.digests_checked >= 19, "the standby did not check the digest of every batch"
            assert follower.outcomes_checked >= 19
            assert follower.engine.state_hash() == node.read(lambda e: e.state_hash())
        finally:
            follower.close()


def test_a_pipelined_node_keeps_the_loops_path(tmp_path, stream):
    from ringfence.app import new_node

    node = new_node(tmp_path / "a", pipeline=True)
    node.open()
    node.start()
    replicator = Replicator(parse_target(f"{NATS_URL}/{stream}{DIGESTS}"), "a", key=key_of("a"))
    replicator.attach(node)
    with running(node, replicator):
        assert replicator._direct is None
        loop_sends = _count_loop_sends(replicator)
        seed_ledger(node)
        assert loop_sends[0] > 0


def test_the_loops_path_can_still_be_chosen_and_takes_the_digest_after_the_answer(tmp_path, stream, monkeypatch):
    monkeypatch.setattr(Replicator, "direct_publish", False)
    node, replicator = attached_primary(tmp_path, stream, DIGESTS)
    with running(node, replicator):
        assert replicator._direct is None
        loop_sends = _count_loop_sends(replicator)
        world, alice, _ = seed_ledger(node)
        node.submit(CreateTransfers([Transfer(7, world, alice, 1)])).result(10)
        assert loop_sends[0] > 0
        assert replicator._digest_pool is None and replicator.digests > 0


def test_a_stream_gone_fails_the_batch_as_outcome_unknown_and_stops_every_later_publish(tmp_path, stream):
    node, replicator = attached_primary(tmp_path, stream, DIGESTS)
    with running(node, replicator):
        world, alice, _ = seed_ledger(node)
        asyncio.run(_delete_stream(stream))  # nobody stores the batches any more: "no responders"
        with pytest.raises(OutcomeUnknown, match="not replicated"):
            node.submit(CreateTransfers([Transfer(99, world, alice, 1)])).result(10)
        assert node.failed is not None
        assert isinstance(replicator._broken, ConnectionError) and replicator._unacked == 0
        later = replicator.begin(node.last_seq + 1, 1, b"x", b"\0" * 32)
        with pytest.raises(Fenced, match="an earlier publish failed"):
            replicator.finish(later, node.engine, [[]])


def test_no_ack_within_the_timeout_fails_the_batch(tmp_path, stream, monkeypatch):
    """The ack never comes: the reply inbox is unsubscribed behind the connection's back."""
    node, replicator = attached_primary(tmp_path, stream, DIGESTS)
    with running(node, replicator):
        world, alice, _ = seed_ledger(node)
        replicator._direct.sock.sendall(b"UNSUB 1\r\n")
        monkeypatch.setattr(replication, "PUBLISH_TIMEOUT_S", 0.3)
        with pytest.raises(OutcomeUnknown):
            node.submit(CreateTransfers([Transfer(99, world, alice, 1)])).result(10)
        assert isinstance(replicator._broken, TimeoutError)


def test_a_connection_that_died_while_idle_is_opened_again_before_the_next_batch(tmp_path, stream):
    node, replicator = attached_primary(tmp_path, stream, DIGESTS)
    with running(node, replicator):
        world, alice, _ = seed_ledger(node)
        direct = replicator._direct
        direct.sock.close()  # as a server that dropped an idle client (no PONG in time) leaves it
        node.submit(CreateTransfers([Transfer(99, world, alice, 1)])).result(10)
        assert direct.connects == 2
        assert replicator.stream_seq == replicator._sent_seq


def test_a_partition_closes_the_direct_connection_too(tmp_path, stream):
    node, replicator = attached_primary(tmp_path, stream, DIGESTS)
    with running(node, replicator):
        world, alice, _ = seed_ledger(node)
        replicator.link.disconnect()
        with pytest.raises(OutcomeUnknown):
            node.submit(CreateTransfers([Transfer(99, world, alice, 1)])).result(10)
        assert replicator._direct.dead and replicator._direct.sock is None


def test_a_header_with_a_line_break_is_never_sent(stream):
    link = DirectLink(NATS_URL, inbox="_INBOX")
    link.connect()
    try:
        with pytest.raises(ValueError, match="line break"):
            link.publish(f"rf.{stream}.batches", f"{link.prefix}.1", {"Rf-Kind": "batch\r\nNats-Msg-Id: x"}, b"")
        with pytest.raises(ValueError, match="line break"):
            link.publish(f"rf.{stream}.batches", f"{link.prefix}.1", {"Rf-Kind\r\n": "batch"}, b"")
    finally:
        link.close()


def test_the_server_saying_err_is_an_error_not_a_hang(stream):
    link = DirectLink(NATS_URL, inbox="_INBOX")
    link.connect()
    try:
        link.sock.sendall(b"NOT-A-NATS-OP\r\n")  # the server answers -ERR 'Unknown Protocol Operation' and closes
        with pytest.raises((DirectError, OSError)):
            link.reply(__import__("time").monotonic() + 5)
    finally:
        link.close()


def test_the_digest_thread_can_still_be_chosen_and_the_standby_checks_every_digest(tmp_path, stream, monkeypatch):
    monkeypatch.setattr(Replicator, "digest_after_answer", False)
    node, replicator = attached_primary(tmp_path, stream, DIGESTS)
    with running(node, replicator):
        world, alice, _ = seed_ledger(node)
        for i in range(5):
            node.submit(CreateTransfers([Transfer(500 + i, world, alice, 1)])).result(10)
        assert replicator._digest_pool is not None, "the digest was not taken on its thread"
        follower = Follower(parse_target(f"{NATS_URL}/{stream}"), tmp_path / "b", "b", key=key_of("b"), peers=peers_of())
        try:
            follower.poll()
            assert follower.digests_checked >= 3  # (the digest after batch N rides on batch N+2 here)
        finally:
            follower.close()


def test_a_partition_while_the_sequencer_waits_for_the_ack_fails_the_batch_at_once(tmp_path, stream):
    """The ack is held back (the reply inbox unsubscribed); the partition closes the connection the
    sequencer is reading: the batch fails then, not when PUBLISH_TIMEOUT_S runs out."""
    import time

    node, replicator = attached_primary(tmp_path, stream, DIGESTS)
    with running(node, replicator):
        world, alice, _ = seed_ledger(node)
        replicator._direct.sock.sendall(b"UNSUB 1\r\n")
        ack = node.submit(CreateTransfers([Transfer(99, world, alice, 1)]))
        time.sleep(0.3)
        assert not ack.done()
        started = time.monotonic()
        replicator.link._close_directs()
        with pytest.raises(OutcomeUnknown):
            ack.result(10)
        assert time.monotonic() - started < replication.PUBLISH_TIMEOUT_S / 2
