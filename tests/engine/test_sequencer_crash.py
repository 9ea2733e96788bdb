"""A sequencer that breaks while committing a batch answers that batch's requests (session 18).

The batch's requests are out of the inbox by then; before, `Node._run` answered only what was
still queued, and a client of the broken batch waited forever (found when a benchmark's probe,
written for the old inbox item shape, raised inside `_commit`: bench/replicate.py hung for 300 s).
"""

from __future__ import annotations

import threading

import pytest

from ringfence.engine.node import NotDurable, OutcomeUnknown
from ringfence.ledger.commands import CreateTransfers
from ringfence.ledger.model import Transfer

from .test_node_gc import _node


def test_a_commit_that_raises_answers_its_batch_and_the_queue(tmp_path) -> None:
    node, a, b = _node(tmp_path)  # a funded, b empty
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


def test_a_callback_that_raises_costs_no_other_request_its_answer(tmp_path) -> None:
    """`_answer` calls the batch's callbacks after marking the batch answered: one that raises (a
    gateway's loop closed under `call_soon_threadsafe`) is logged, and every other callback of the
    batch is still called — before, the rest were skipped and their clients waited forever."""
    from ringfence.engine.node import Ack, _answer

    cond = threading.Condition()
    acks = [Ack(cond) for _ in range(3)]
    called: list[int] = []

    def broken(ack: Ack) -> None:
        raise RuntimeError("the loop is closed")

    acks[0].add_done_callback(broken)
    acks[1].add_done_callback(lambda ack: called.append(ack.seq))
    acks[2].add_done_callback(broken)
    acks[2].add_done_callback(lambda ack: called.append(ack.seq))  # (a second callback: the list form)
    _answer(acks, 7, [[], [], []], {})
    assert called == [8, 9]


def test_an_answered_request_keeps_its_first_answer(tmp_path) -> None:
    from ringfence.engine.node import Ack, _answer

    cond = threading.Condition()
    first, second = Ack(cond), Ack(cond)
    seen: list[object] = []
    first.add_done_callback(lambda ack: seen.append(ack.error))
    first._resolve(error=OutcomeUnknown("the node stopped", field=None))
    first._resolve(error=NotDurable("a late refusal"))  # ignored: the first answer stays, nobody is called twice
    _answer([first, second], 1, [[], []], {})  # a late acknowledger: the answered one is skipped, the other answered
    assert isinstance(first.error, OutcomeUnknown) and first.events is None
    assert len(seen) == 1 and isinstance(seen[0], OutcomeUnknown)
    assert second.events == [] and second.seq == 2
