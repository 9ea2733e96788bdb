"""The primary's publish and ack path (issue #21, session 18), against the real NATS JetStream.

A batch's publish goes onto the link's loop with one plain callback (no `run_coroutine_threadsafe`
future chained to a task), and the stream's reply completes the batch's future from the ack's own
done callback: no task stays on the loop awaiting each ack. Every check on the ack stays: the
batch is acknowledged only once the stream stored it; no ack within PUBLISH_TIMEOUT_S fails the
batch and stops every later publish.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

import ringfence.replication as replication
from ringfence.errors import OutcomeUnknown
from ringfence.ledger.commands import CreateTransfers
from ringfence.ledger.model import Transfer
from ringfence.replication import Fenced, Replicator

from journal.test_journal import seed_ledger

from .conftest import attached_primary, running


@pytest.fixture(autouse=True)
def _the_loops_path(monkeypatch):
    """These tests are of the link loop's publish path, which pipelined nodes use (and classic ones
    whose direct connection could not be opened); a classic node's own path since session 21, the
    sequencer's direct connection, has its tests in test_direct_publish.py."""
    monkeypatch.setattr(Replicator, "direct_publish", False)


def _hold_acks(replicator: Replicator) -> tuple[list[Any], Any]:
    """Send every message at once but hold back its ack (the future the replicator waits on) until
    `release()`; returns (the held acks, release)."""
    held: list[tuple[asyncio.Future[Any], asyncio.Future[Any]]] = []
    send = replicator._send

    async def holding(data: bytes, headers: dict[str, str]) -> asyncio.Future[Any]:
        real = await send(data, headers)
        proxy = asyncio.get_running_loop().create_future()
        held.append((real, proxy))
        return proxy

    def copy(proxy: asyncio.Future[Any], real: asyncio.Future[Any]) -> None:
        if proxy.done():
            return
        if real.cancelled():
            proxy.cancel()
        elif real.exception() is not None:
            proxy.set_exception(real.exception())  # type: ignore[arg-type]
        else:
            proxy.set_result(real.result())

    def release() -> None:
        def go() -> None:
            for real, proxy in held:
                real.add_done_callback(lambda done, proxy=proxy: copy(proxy, done))
            held.clear()

        replicator.link._loop.call_soon_threadsafe(go)

    replicator._send = holding  # type: ignore[method-assign]
    return held, release


def _replicator_tasks(replicator: Replicator) -> list[str]:
    """The Replicator's coroutines that run as unfinished tasks on the link's loop."""

    async def look() -> list[str]:
        return [task.get_coro().__qualname__ for task in asyncio.all_tasks()  # type: ignore[union-attr]
                if not task.done() and task.get_coro().__qualname__.startswith("Replicator.")]  # type: ignore[union-attr]

    return replicator.link.call(look())


def _wait(condition: Any, what: str, timeout_s: float = 10.0) -> None:  # float-ok: seconds
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.002)


@pytest.mark.parametrize("query", ["", "?state_hash_every=1000000&state_digest=1"])
def test_a_batch_waiting_for_its_ack_holds_no_task_and_is_acknowledged_only_after_the_ack(tmp_path, stream, query):
    """Both ways a batch's publish starts: after the apply with an inline state hash (`finish`), and
    at `begin` while the fsync runs (the state digest mode)."""
    node, replicator = attached_primary(tmp_path, stream, query)
    with running(node, replicator):
        world, alice, _ = seed_ledger(node)
        published = replicator.published
        held, release = _hold_acks(replicator)
        ack = node.submit(CreateTransfers([Transfer(99, world, alice, 1)]))
        _wait(lambda: held, "the batch was sent")
        time.sleep(0.05)
        assert not ack.done(), "acknowledged before the stream's ack"
        assert _replicator_tasks(replicator) == [], "a task waits on the loop for the batch's ack"
        assert replicator.published == published
        release()
        ack.result(10)
        assert replicator.published == published + 1
        assert replicator.stream_seq == replicator._sent_seq


def test_no_ack_within_the_timeout_fails_the_batch_and_every_later_publish(tmp_path, stream, monkeypatch):
    node, replicator = attached_primary(tmp_path, stream, "?state_hash_every=1000000&state_digest=1")
    with running(node, replicator):
        world, alice, _ = seed_ledger(node)
        held, _ = _hold_acks(replicator)
        monkeypatch.setattr(replication, "PUBLISH_TIMEOUT_S", 0.3)
        started = time.monotonic()
        with pytest.raises(OutcomeUnknown):
            node.submit(CreateTransfers([Transfer(99, world, alice, 1)])).result(10)
        assert time.monotonic() - started < 3, "the ack's timeout is PUBLISH_TIMEOUT_S"
        assert held, "the batch was sent"
        assert isinstance(replicator._broken, TimeoutError)
        assert replicator._unacked == 0
        later = replicator.begin(node.last_seq + 1, 1, b"x", b"\0" * 32)
        with pytest.raises(Fenced, match="an earlier publish failed"):
            later.result(5)
        assert len(held) == 1, "nothing is sent after a failed publish"


def test_concurrent_publishes_from_two_threads_are_all_stored_in_order(tmp_path, stream):
    """`_publish_later` from several threads at once (the sequencer and, e.g., a catch-up): each
    record is sent whole, in the order the loop took them, and each future completes once stored."""
    node, replicator = attached_primary(tmp_path, stream)
    with running(node, replicator):
        start = replicator._sent_seq
        futures: list[Any] = []
        lock = threading.Lock()

        def publish(base: int) -> None:
            for i in range(20):
                future = replicator._publish_later(replication.KIND_BATCH, base + i, 1, b"\1" * 32, b"\2" * 32,
                                                   b"p" * 100, "", {"Rf-Catch-Up": "1"})
                with lock:
                    futures.append(future)

        threads = [threading.Thread(target=publish, args=(10_000 * (n + 1),)) for n in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for future in futures:
            future.result(10)
        assert replicator._sent_seq == start + 40
        assert replicator.stream_seq == start + 40
        info = replicator.link.call(replicator.link.js.stream_info(stream))
        assert info.state.last_seq == start + 40


def test_a_batch_costs_the_nats_loop_six_iterations_or_fewer(tmp_path, stream):
    """The loop of the NATS thread runs six times per batch: the publish (the sequencer's callback),
    the send task, nats-py's flusher, the ack's bytes, nats-py's read loop, the ack subscription's
    callback task — which runs the ack check itself. Each iteration is an epoll_wait and a pass
    through the loop. Measured with this test: main (9d1b0ad) 9.0 per batch (a task per publish
    awaiting the ack under wait_for, the subscription's callback task, the chained concurrent
    future); the ack checked by the subscription's callback task 6.0. (Checking it inside nats-py's
    read loop, by replacing the subscription's private pending queue, measured 5.0 and about 2% of
    the thread's CPU: not worth depending on nats-py's private attributes; session 18.)"""
    node, replicator = attached_primary(tmp_path, stream, "?state_hash_every=1000000&state_digest=1")
    with running(node, replicator):
        loop = replicator.link._loop
        iterations = [0]
        run_once = loop._run_once  # type: ignore[attr-defined]

        def counted() -> None:
            iterations[0] += 1
            run_once()

        def publish(i: int) -> None:
            args = (replication.KIND_BATCH, 10_000 + i, 1, b"\1" * 32, b"\2" * 32, b"p" * 9000, "", {"Rf-Catch-Up": "1"})
            if hasattr(replicator, "_publish_later"):
                replicator._publish_later(*args).result(10)
            else:  # main's way
                replicator.link.submit(replicator._apublish(*args)).result(10)

        publish(0)
        loop._run_once = counted  # type: ignore[attr-defined]
        try:
            for i in range(1, 51):
                publish(i)
        finally:
            del loop._run_once  # type: ignore[attr-defined]
        assert iterations[0] / 50 <= 6.5, f"{iterations[0] / 50} loop iterations per batch"
