"""A sequencer that breaks while committing a batch answers that batch's requests (session 18).

The batch's requests are out of the inbox by then; before, `Node._run` answered only what was
still queued, and a client of the broken batch waited forever (found when a benchmark's probe,
written for the old inbox item shape, raised inside `_commit`: bench/replicate.py hung for 300 s).
"""

from __future__ import annotations

import threading

import pytest

from ringfence.app import new_node
from ringfence.engine.node import NotDurable, OutcomeUnknown
from ringfence.ledger.commands import CreateTransfers, OpenAccount, RegisterAsset
from ringfence.ledger.model import Transfer


def test_a_commit_that_raises_answers_its_batch_and_the_queue(tmp_path) -> None:
    node = new_node(tmp_path / "n", fsync=False)
    node.open()
    node.execute_many([RegisterAsset("USDT", 6, "crypto", "ethereum"), OpenAccount("a", "USDT"), OpenAccount("b", "USDT")])
    led = node.engine.ledger
    world, a, b = led.world("USDT").id, led.get("a", "USDT").id, led.get("b", "USDT").id
    node.execute(CreateTransfers([Transfer(1, world, a, 10**9)]))
    node.start()
    held, release = threading.Event(), threading.Event()

    def hold() -> None:  # a control task: the requests below queue up behind it
        held.set()
        release.wait(30)

    node._post(hold)
    assert held.wait(30)

    def broken(items):  # type: ignore[no-untyped-def]
        raise RuntimeError("a bug inside the commit")

    node._commit = broken  # type: ignore[method-assign]
    acks = [node.submit(CreateTransfers([Transfer(100 + i, a, b, 1)])) for i in range(50)]
    release.set()
    answered = []
    for ack in acks:
        with pytest.raises((OutcomeUnknown, NotDurable)) as err:  # never TimeoutError: nobody is left waiting
            ack.wait(10)
        answered.append(type(err.value))
    assert OutcomeUnknown in answered  # the batch that was being committed
    assert isinstance(node.failed, RuntimeError)
    node.close()
