"""A node with no sequencer thread commits on the caller's thread (`execute_many`): callers on
several threads take turns. Before, two of them could read the same next sequence number; one then
failed with "journal expects sequence N, got M" (seen as a flaky tests/engine/test_precheck_bug.py)."""

from __future__ import annotations

import threading
from typing import Any

from ringfence.app import new_node
from ringfence.ledger.commands import OpenAccount, RegisterAsset

THREADS, EACH = 6, 150


def test_direct_executes_from_many_threads_each_get_their_own_sequence_numbers(tmp_path) -> None:
    clock = iter(range(1_000_000_000, 10**19, 1_000)).__next__
    node = new_node(tmp_path / "n", fsync=False, clock=clock)
    node.open()
    errors: list[BaseException] = []
    try:
        node.execute(RegisterAsset("BTC", 8, "crypto", "bitcoin"))
        start = threading.Barrier(THREADS)

        def run(t: int) -> None:
            start.wait()
            try:
                for i in range(EACH):
                    node.execute(OpenAccount(f"u{t}-{i}", "BTC"))
            except BaseException as err:  # noqa: BLE001  (collected: the test names every one)
                errors.append(err)

        threads = [threading.Thread(target=run, args=(t,)) for t in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert errors == [], errors[:3]
        assert node.last_seq == 1 + THREADS * EACH and node.failed is None
        state = node.read(lambda engine: engine.state_hash())
    finally:
        node.close()
    again = new_node(tmp_path / "n", fsync=False, clock=clock)
    again.open()  # replays the journal: every command once, in order
    try:
        replayed: Any = again.read(lambda engine: (engine.last_seq, engine.state_hash()))
        assert replayed == (1 + THREADS * EACH, state)
    finally:
        again.close()
