"""A precheck only reads: a bug in one (any exception that is not a RingfenceError) refuses that one
command with `PrecheckFailed` and nothing else — the node keeps sequencing, the batch's other
callers are answered, nothing is journaled for the refused command. Before, the error escaped into
the sequencer: the node stopped and the batch's callers waited for ever."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from ringfence.app import new_node
from ringfence.engine.commands import Command, Event
from ringfence.engine.module import Effect, Module
from ringfence.errors import PrecheckFailed
from ringfence.ledger.commands import OpenAccount, RegisterAsset


class Poke(Command, tag="test.precheck.poke/1"):
    owner: str
    crash: bool


class Poked(Event, tag="test.precheck.poked/1"):
    owner: str


def _precheck(engine: Any, c: Poke) -> None:
    if c.crash:
        raise TypeError("planted precheck bug")


def _poke(engine: Any, c: Poke) -> list[Event]:
    return [Poked(c.owner)]


PLANTED = Module("planted-precheck")
PLANTED.declare_events(Poked)
PLANTED.handles(Poke, precheck=_precheck, effect=Effect.NEUTRAL)(_poke)


def test_a_precheck_bug_refuses_one_command_and_the_node_carries_on(tmp_path) -> None:
    clock = iter(range(1_000_000_000, 10**19, 1_000)).__next__
    node = new_node(tmp_path / "n", fsync=False, clock=clock, extra_modules=[PLANTED])
    node.open()
    try:
        node.execute(RegisterAsset("BTC", 8, "crypto", "bitcoin"))
        before = node.last_seq
        with pytest.raises(PrecheckFailed) as err:
            node.execute(Poke("mallory", True))
        assert "Poke could not be checked (TypeError)" in str(err.value)
        assert node.last_seq == before and node.failed is None
        # a batch mixing good commands and the bug: every caller answered, the good ones applied
        results: dict[str, Any] = {}

        def run(name: str, command: Command) -> None:
            try:
                results[name] = node.execute(command)
            except PrecheckFailed as e:
                results[name] = e

        threads = [threading.Thread(target=run, args=(f"c{i}", Poke(f"u{i}", i % 2 == 1))) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=10)
        assert not any(t.is_alive() for t in threads), "a caller was left waiting"
        assert sorted(k for k, v in results.items() if isinstance(v, PrecheckFailed)) == ["c1", "c3", "c5"]
        assert node.execute(OpenAccount("alice", "BTC")) is not None and node.failed is None
    finally:
        node.close()
