"""A command's precheck runs at the time its batch will carry, not at the last batch's time.

Time-dependent rules (a withdrawal address's cooling period, the lock after a security change) are
checked both in the precheck (at the edge, before journaling) and in the handler (at the batch's
time). Before, the precheck read the engine's time, which moves only with journaled commands: in a
quiet period a command whose time had come was refused by the precheck although its handler would
have accepted it. The precheck journals nothing, so the engine's time is unchanged afterwards."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ringfence.app import new_node, replay_journal
from ringfence.engine.commands import Command, Event
from ringfence.engine.module import Effect, Module
from ringfence.errors import Forbidden


class NotBefore(Command, tag="test.precheck_time.not_before/1"):
    """Accepted only from `at_ns` on (checked in the precheck and again in the handler)."""

    at_ns: int


class Done(Event, tag="test.precheck_time.done/1"):
    at_ns: int


class Log:
    def __init__(self, engine: Any = None) -> None:
        self.done: list[int] = []


def _check(engine: Any, c: NotBefore) -> None:
    if engine.now_ns < c.at_ns:
        raise Forbidden(f"not before {c.at_ns} (now {engine.now_ns})", field="at_ns")


def _handle(engine: Any, c: NotBefore) -> list[Event]:
    _check(engine, c)
    engine.components["timed"].done.append(engine.now_ns)
    return [Done(engine.now_ns)]


TIMED = Module("timed")
TIMED.declare_state(Log, lambda log: list(log.done), lambda engine, data: _restored(data))
TIMED.declare_events(Done)
TIMED.handles(NotBefore, precheck=_check, effect=Effect.NEUTRAL)(_handle)


def _restored(data: list[int]) -> Log:
    log = Log()
    log.done = list(data)
    return log


def test_precheck_sees_the_batch_time_not_the_last_batch_time(tmp_path: Path) -> None:
    now = {"ns": 1_000_000_000}
    node = new_node(tmp_path, fsync=False, clock=lambda: now["ns"], entropy=lambda n: b"\x01" * n, extra_modules=[TIMED])
    node.open()
    try:
        node.execute(NotBefore(0))
        assert node.read(lambda e: e.now_ns) == 1_000_000_000
        with pytest.raises(Forbidden):  # its time has not come: refused at the edge, nothing journaled
            node.execute(NotBefore(5_000_000_000))
        seq = node.read(lambda e: e.last_seq)
        now["ns"] = 6_000_000_000  # nothing was journaled since: the engine's time is still 1 s
        assert node.read(lambda e: e.now_ns) == 1_000_000_000
        node.execute(NotBefore(5_000_000_000))  # refused here before the fix
        assert node.read(lambda e: (e.last_seq, e.now_ns, e.components["timed"].done)) == (
            seq + 1, 6_000_000_000, [1_000_000_000, 6_000_000_000])
        now["ns"] = 7_000_000_000
        with pytest.raises(Forbidden):  # a refused precheck leaves the engine's time where it was
            node.execute(NotBefore(9_000_000_000))
        assert node.read(lambda e: e.now_ns) == 6_000_000_000
    finally:
        node.close()
    replayed, _, _ = replay_journal(tmp_path, extra_modules=[TIMED])
    assert replayed.components["timed"].done == [1_000_000_000, 6_000_000_000]
