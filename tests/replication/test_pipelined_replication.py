"""A pipelined replicating primary (`Node(pipeline=True)` with a `Replicator`), against the real
NATS JetStream: the sequencer writes, publishes and applies batch N+1 while batch N's fsync and
stream ack are in flight, and a batch is acknowledged only once both have returned, in order.

Each rule is checked by holding one side back: a stream whose sends are held (its acks never come)
while the local syncs return, a journal whose syncs are held while the stream acks flow, and a
primary deposed while batches are in flight — they must be answered `OutcomeUnknown`, never
acknowledged, and none of them may land in the stream after the new primary's fence.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import threading
import time

import pytest

from ringfence.app import new_node
from ringfence.errors import NotDurable, OutcomeUnknown
from ringfence.ledger.commands import CreateTransfers
from ringfence.ledger.model import Transfer
from ringfence.replication import Fenced, Follower, Replicator, parse_target, promote

from journal.test_journal import seed_ledger
from journal.test_pipelined import PowerCut

from .conftest import NATS_URL, key_of, peers_of


def _wait(condition, what: str, timeout_s: float = 15.0) -> None:  # float-ok: seconds
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.005)


def _hold_sends(replicator: Replicator) -> threading.Event:
    """Hold every message the replicator sends to the stream until the returned event is set."""
    gate = threading.Event()
    send = replicator._send

    async def held(data, headers):  # type: ignore[no-untyped-def]
        while not gate.is_set():
            await asyncio.sleep(0.002)
        return await send(data, headers)

    replicator._send = held  # type: ignore[method-assign]
    return gate


def _primary(tmp_path, stream, query: str = "", **options):  # type: ignore[no-untyped-def]
    node = new_node(tmp_path / "a", pipeline=True, **options)
    node.open()
    world, alice, _ = seed_ledger(node)
    replicator = Replicator(parse_target(f"{NATS_URL}/{stream}{query}"), "a", key=key_of("a"))
    replicator.attach(node)
    node.start()
    return node, replicator, world, alice


def _one_batch_each(node, commands):  # type: ignore[no-untyped-def]
    """Submit each command once the one before is applied: one batch each, all in flight."""
    acks = []
    for command in commands:
        before = node.last_seq
        acks.append(node.submit(command))
        _wait(lambda before=before: node.last_seq > before, "the batch was applied")
    return acks


def test_a_pipelined_primary_replicates_every_batch_and_the_standby_verifies_it(tmp_path, stream):
    node, replicator, world, alice = _primary(tmp_path, stream)
    follower = Follower(parse_target(f"{NATS_URL}/{stream}"), tmp_path / "b", "b", key=key_of("b"), peers=peers_of())
    try:
        acks = []
        for wave in range(20):  # 20 waves of 20, each submitted once the one before is applied
            before = node.last_seq
            acks += [node.submit(CreateTransfers([Transfer(tid, world, alice, tid)]))
                     for tid in range(20 * wave + 1, 20 * wave + 21)]
            _wait(lambda before=before: node.last_seq > before, "the wave was applied")
        order: list[int] = []
        for ack in acks:
            ack.add_done_callback(lambda a: order.append(a.seq))
        for ack in acks:
            ack.result(30)
        assert order == sorted(order)
        batches = node.batches_committed - 2  # the two of seed_ledger were published by attach
        assert batches >= 20
        follower.poll()
        assert follower.engine.last_seq == node.last_seq
        assert follower.engine.state_hash() == node.read(lambda e: e.state_hash())
        assert follower.outcomes_checked == batches - 1  # each batch carries the one before's
        assert follower.digests_checked >= batches - 4  # a batch's state digest goes out two batches later
    finally:
        follower.close()
        node.close()
        replicator.close()


def test_nothing_is_acknowledged_before_the_stream_holds_it(tmp_path, stream):
    """The stream's sends are held: the batches are written, synced and applied, and still nobody
    is answered, nothing is durable, no read returns them; once the sends go they are answered."""
    node, replicator, world, alice = _primary(tmp_path, stream)
    synced_before = node.durable_seq
    gate = _hold_sends(replicator)
    try:
        acks = _one_batch_each(node, [CreateTransfers([Transfer(tid, world, alice, 1)]) for tid in range(1, 11)])
        _wait(lambda: node._pipe.synced_seq >= node.last_seq, "the local syncs returned")
        read: list[int] = []
        reader = threading.Thread(target=lambda: read.append(node.read(lambda e: e.last_seq)))
        reader.start()
        time.sleep(0.2)  # the syncs returned above: give a wrong acknowledgement the time to happen
        assert not any(a.done() for a in acks), "acknowledged before the stream held the batch"
        assert node.durable_seq == synced_before and not read
        gate.set()
        for ack in acks:
            ack.result(30)
        reader.join(10)
        assert read == [node.last_seq] and node.durable_seq == node.last_seq
        assert [a.seq for a in acks] == sorted(a.seq for a in acks)
    finally:
        gate.set()
        node.close()
        replicator.close()


def test_nothing_is_acknowledged_before_the_local_fsync(tmp_path, stream):
    """The journal's syncs are held while the stream takes every batch: nobody is answered."""
    hold, gate = [False], threading.Event()

    def held_sync(fd: int) -> None:
        if hold[0]:
            gate.wait(20)
        os.fdatasync(fd)

    node, replicator, world, alice = _primary(tmp_path, stream, journal_sync=held_sync)
    try:
        hold[0] = True
        acks = _one_batch_each(node, [CreateTransfers([Transfer(tid, world, alice, 1)]) for tid in range(1, 11)])
        published = replicator.published
        _wait(lambda: replicator.stream_seq >= published and all(e.replicated for e in list(node._pipe.pending)),
              "the stream held every batch")
        time.sleep(0.2)
        assert not any(a.done() for a in acks), "acknowledged before its local fsync returned"
        gate.set()
        for ack in acks:
            ack.result(30)
    finally:
        gate.set()
        node.close()
        replicator.close()


def test_a_deposed_pipelined_primary_never_acknowledges_its_batches_in_flight(tmp_path, stream):
    """Batches in flight (sent to the stream only after a standby was promoted and fenced) are
    answered OutcomeUnknown and the node stops; the stream holds nothing of theirs after the fence,
    even the ones behind the first refused one whose expected sequence the fence happens to match."""
    target = parse_target(f"{NATS_URL}/{stream}")
    node, replicator, world, alice = _primary(tmp_path, stream)
    follower = Follower(target, tmp_path / "b", "b", key=key_of("b"), peers=peers_of())
    try:
        node.execute(CreateTransfers([Transfer(1, world, alice, 1)]))
        gate = _hold_sends(replicator)
        acks = _one_batch_each(node, [CreateTransfers([Transfer(tid, world, alice, 1)]) for tid in range(2, 8)])
        promote(target, "b")
        assert follower.follow_until_promoted() == 2
        fence_seq = follower.stream_seq
        gate.set()
        for ack in acks:
            with pytest.raises(OutcomeUnknown, match="not replicated"):
                ack.result(30)
        assert isinstance(node.failed, Fenced)
        with pytest.raises(NotDurable):
            node.submit(CreateTransfers([Transfer(99, world, alice, 1)])).result(10)
        info = replicator.link.call(replicator.link.js.stream_info(stream))
        assert info.state.last_seq == fence_seq, "a deposed primary's batch was stored after the fence"
    finally:
        follower.close()
        node.close()
        replicator.close()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_power_cut_loses_nothing_acknowledged_locally_or_in_the_stream(tmp_path, stream, seed):
    """Slow syncs and slow stream acks, drawn at random; the power is cut while the node runs flat
    out. Every transfer acknowledged before the cut is in the journal image the disk would hold
    and in the stream (a standby rebuilds it)."""
    rng = random.Random(seed)
    cut = PowerCut(rng, delays=(0.0, 0.0, 0.001, 0.004))
    node, replicator, world, alice = _primary(tmp_path, stream, journal_sync=cut)
    send = replicator._send
    delays = random.Random(seed + 1)

    async def slow_send(data, headers):  # type: ignore[no-untyped-def]
        waiting = await send(data, headers)
        pause = delays.choice((0.0, 0.0, 0.002, 0.008))  # float-ok: seconds
        if pause:
            replied = asyncio.get_running_loop().create_future()
            waiting.add_done_callback(lambda done: asyncio.get_running_loop().call_later(
                pause, lambda: replied.done() or replied.set_result(done.result())))
            return replied
        return waiting

    replicator._send = slow_send  # type: ignore[method-assign]
    acked: list[int] = []
    stop = threading.Event()

    def submitter() -> None:
        tid = 1
        while not stop.is_set():
            group = []
            for _ in range(rng.randrange(1, 40)):
                group.append((tid, node.submit(CreateTransfers([Transfer(tid, world, alice, 1)]))))
                tid += 1
            for t, ack in group:
                ack.wait(30)
                acked.append(t)

    thread = threading.Thread(target=submitter)
    thread.start()
    try:
        _wait(lambda: len(acked) > 50, "some transfers were acknowledged", 30)
        time.sleep(rng.choice((0.05, 0.2)))
        acked_then = set(acked)
        cut.image(tmp_path / "a", tmp_path / "cut")
    finally:
        stop.set()
        thread.join(60)
        node.close()
        replicator.close()
    recovered = new_node(tmp_path / "cut")
    recovered.open()
    missing = acked_then - set(recovered.engine.ledger.transfers)
    recovered.close()
    assert not missing, f"acknowledged transfers lost in a power cut: {sorted(missing)[:10]} (seed {seed})"
    follower = Follower(parse_target(f"{NATS_URL}/{stream}"), tmp_path / "b", "b", key=key_of("b"), peers=peers_of())
    try:
        follower.poll()
        missing = acked_then - set(follower.engine.ledger.transfers)
        assert not missing, f"acknowledged transfers missing from the stream: {sorted(missing)[:10]} (seed {seed})"
    finally:
        follower.close()
    shutil.rmtree(tmp_path / "cut", ignore_errors=True)


def test_a_bounded_pipeline_starts_no_batch_while_the_limit_is_in_flight(tmp_path):
    """`max_batches_in_flight=1`: while one batch waits for its sync the sequencer starts no other;
    what arrives meanwhile goes into the next batch, together."""
    hold, gate = [False], threading.Event()

    def held_sync(fd: int) -> None:
        if hold[0]:
            gate.wait(20)
        os.fdatasync(fd)

    node = new_node(tmp_path / "n", pipeline=True, journal_sync=held_sync, max_batches_in_flight=1)
    node.open()
    world, alice, _ = seed_ledger(node)
    node.start()
    commands, batches = node.commands_committed, node.batches_committed
    try:
        hold[0] = True
        first = node.submit(CreateTransfers([Transfer(1, world, alice, 1)]))
        _wait(lambda: node.commands_committed == commands + 1, "the first batch was applied")
        rest = [node.submit(CreateTransfers([Transfer(tid, world, alice, 1)])) for tid in range(2, 12)]
        time.sleep(0.2)  # a wrong sequencer would write the next batch meanwhile
        assert node.commands_committed == commands + 1 and node.batches_committed == batches + 1
        assert not first.done()
        hold[0] = False
        gate.set()
        for ack in [first, *rest]:
            ack.result(20)
        assert node.batches_committed == batches + 2, "what waited behind the limit went into one batch"
    finally:
        gate.set()
        node.close()
    with pytest.raises(Exception, match="max_batches_in_flight"):
        new_node(tmp_path / "m", max_batches_in_flight=-1)
