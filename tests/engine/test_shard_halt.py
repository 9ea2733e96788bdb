"""A broken invariant halts the shard (issue 14, item 1): nothing of the command is kept, the halt is
part of the state, every later command is refused, and restart/replay reproduce the same state.

The handlers here are planted through a test module passed to the engine, the way a domain's
handler would break: mutate first (the ledger and the module's own state), then raise."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ringfence.app import new_engine, new_node, replay_journal
from ringfence.engine.commands import Command, Event, encode
from ringfence.engine.core import CommandRejected, ShardHalt, ShardHaltedEvent
from ringfence.engine.module import Effect, Module
from ringfence.errors import InvariantViolation, NotFound, RingfenceError, ShardHalted
from ringfence.ledger.commands import OpenAccount, RegisterAsset


class Bump(Command, tag="test.halt.bump/1"):
    """Adds `by` to the planted counter and opens an account for `owner`: an ordinary mutation."""

    owner: str
    by: int


class Refuse(Command, tag="test.halt.refuse/1"):
    """Raises an ordinary `RingfenceError` before mutating: a rejection, not a halt."""

    owner: str


class Break(Command, tag="test.halt.break/1"):
    """Mutates the ledger and the counter, then raises `kind` ("invariant" or "bug")."""

    owner: str
    kind: str


class Bumped(Event, tag="test.halt.bumped/1"):
    total: int


class Counter:
    def __init__(self, engine: Any = None) -> None:
        self.total = 0


def _bump(engine, c: Bump) -> list[Event]:
    engine.ledger.open_account(c.owner, "BTC", "available", "spot", 0)
    engine.components["planted"].total += c.by
    return [Bumped(engine.components["planted"].total)]


def _refuse(engine, c: Refuse) -> list[Event]:
    raise NotFound(f"no such thing for {c.owner}", field="owner")


def _break(engine, c: Break) -> list[Event]:
    engine.ledger.open_account(c.owner, "BTC", "available", "spot", 0)  # mutate first...
    engine.components["planted"].total += 1_000
    if c.kind == "invariant":
        raise InvariantViolation("planted: conservation broke")  # ...then find the invariant broken
    raise KeyError("planted bug")  # any non-ringfence exception is a bug: same treatment


def _restore(engine, data: int) -> Counter:
    counter = Counter()
    counter.total = data
    return counter


PLANTED = Module("planted")
PLANTED.declare_state(Counter, lambda counter: counter.total, _restore)
PLANTED.declare_events(Bumped)
PLANTED.handles(Bump, effect=Effect.NEUTRAL)(_bump)
PLANTED.handles(Refuse, effect=Effect.NEUTRAL)(_refuse)
PLANTED.handles(Break, effect=Effect.NEUTRAL)(_break)


def _node(path: Path):
    clock = iter(range(1_000_000_000, 10**19, 1_000)).__next__
    node = new_node(path, fsync=False, clock=clock, entropy=lambda n: b"\x07" * n, extra_modules=[PLANTED])
    node.open()
    return node


def _setup(node) -> None:
    node.execute(RegisterAsset("BTC", 8, "crypto", "bitcoin"))
    node.execute(OpenAccount("alice", "BTC"))
    node.execute(Bump("bob", 5))


def _halted_hash(pre_state: list[Any], seq: int, now_ns: int, error: str) -> str:
    """The pre-command state, advanced to `seq` and marked halted: nothing else may differ."""
    expected = [pre_state[0], seq, now_ns, pre_state[3], pre_state[4], [seq, error]]
    return hashlib.sha256(encode(expected)).hexdigest()


@pytest.mark.parametrize("kind,error", [("invariant", "InvariantViolation"), ("bug", "KeyError")])
def test_a_handler_that_breaks_an_invariant_halts_the_shard_and_keeps_nothing(tmp_path, kind, error, caplog):
    node = _node(tmp_path / "n")
    _setup(node)
    pre_state = node.engine.snapshot_state()
    caplog.set_level(logging.CRITICAL, logger="ringfence.engine")

    with pytest.raises(InvariantViolation, match="shard halted at sequence 4"):
        node.execute(Break("mallory", kind))

    engine = node.engine
    assert engine.halted == (4, error)
    assert engine.ledger.find("mallory", "BTC", "available", "spot") is None  # the mutation is gone
    assert engine.components["planted"].total == 5
    assert engine.state_hash() == _halted_hash(pre_state, 4, engine.now_ns, error)
    engine.check_invariants()
    assert [r for r in caplog.records if "HALTED at sequence 4" in r.getMessage()], "the node logs the halt"
    assert len([r for r in caplog.records if "HALTED" in r.getMessage()]) == 1, "logged once"

    # Every later command is refused at the edge and never journaled.
    for later in (OpenAccount("carol", "BTC"), Bump("carol", 1), RegisterAsset("ETH", 18, "crypto", "ethereum")):
        with pytest.raises(ShardHalted, match="halted at sequence 4"):
            node.execute(later)
    assert node.writer.next_seq == 5
    halted_hash = engine.state_hash()
    node.close()

    # Restart (snapshot-less replay), an explicit replay, and a snapshot all give the same state.
    again = _node(tmp_path / "n")
    assert again.engine.halted == (4, error)
    assert again.engine.state_hash() == halted_hash
    again.snapshot()
    again.close()
    replayed, _, _ = replay_journal(tmp_path / "n", use_snapshots=False, extra_modules=[PLANTED])
    assert replayed.state_hash() == halted_hash
    from_snapshot = _node(tmp_path / "n")
    assert from_snapshot.recovery.snapshot_seq == 4 and from_snapshot.engine.state_hash() == halted_hash
    with pytest.raises(ShardHalted):
        from_snapshot.execute(Bump("dave", 1))
    from_snapshot.close()


def test_commands_after_the_break_in_the_same_batch_are_refused_and_replay_the_same(tmp_path):
    node = _node(tmp_path / "n")
    _setup(node)
    acks_before = node.commands_committed
    with pytest.raises(InvariantViolation):
        node.execute_many([Bump("bob2", 1), Break("mallory", "invariant"), Bump("carol", 1)], raise_rejected=False)
    engine = node.engine
    assert node.commands_committed == acks_before + 3  # one journal record, all three sequenced
    assert engine.halted == (5, "InvariantViolation") and engine.last_seq == 6
    assert engine.ledger.find("bob2", "BTC", "available", "spot") is not None  # before the break: kept
    assert engine.ledger.find("mallory", "BTC", "available", "spot") is None
    assert engine.ledger.find("carol", "BTC", "available", "spot") is None  # after: refused
    assert engine.components["planted"].total == 6
    live = engine.state_hash()
    node.close()
    again = _node(tmp_path / "n")
    assert again.engine.state_hash() == live
    again.close()


def test_an_ordinary_refusal_is_still_a_rejection(tmp_path):
    node = _node(tmp_path / "n")
    _setup(node)
    before = node.engine.state_hash()
    [[event]] = node.execute_many([Refuse("bob")], raise_rejected=False)
    assert isinstance(event, CommandRejected) and event.code == "RF_NOT_FOUND"
    assert node.engine.halted is None
    node.execute(Bump("erin", 1))
    assert node.engine.state_hash() != before
    node.close()


def test_apply_without_a_driver_stops_and_says_why():
    """A bare engine has no journal to rebuild from: it refuses to go on until `enter_halt`."""
    engine = new_engine(PLANTED)
    engine.apply(RegisterAsset("BTC", 8, "crypto", "bitcoin"), 1, 10)
    clean = engine.restored(engine.snapshot_bytes())
    with pytest.raises(ShardHalt) as info:
        engine.apply(Break("mallory", "invariant"), 2, 20)
    assert info.value.seq == 2 and info.value.error == "InvariantViolation"
    with pytest.raises(RingfenceError, match="broken"):
        engine.apply(Bump("bob", 1), 3, 30)
    with pytest.raises(RingfenceError, match="broken"):
        engine.snapshot_bytes()
    with pytest.raises(ShardHalted):
        engine.precheck(Bump("bob", 1))
    [event] = engine.enter_halt(clean, info.value)
    assert event == ShardHaltedEvent(2, "InvariantViolation")
    [refused] = engine.apply(Bump("bob", 1), 3, 30)
    assert isinstance(refused, CommandRejected) and refused.code == "RF_SHARD_HALTED"
    assert engine.components["planted"].total == 0 and engine.last_seq == 3


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    ops=st.lists(st.tuples(st.sampled_from(["bump", "refuse", "break"]), st.integers(1, 9)), min_size=1, max_size=12),
    crash_at=st.integers(0, 12),
)
def test_property_halt_equals_the_prefix_before_the_break(tmp_path_factory, ops, crash_at):
    """Whatever runs before the first break, the halted state is exactly the state of running only
    the commands before it (plus the halt mark), live and after a restart at any point."""
    path = tmp_path_factory.mktemp("prop") / "n"
    node = _node(path)
    node.execute(RegisterAsset("BTC", 8, "crypto", "bitcoin"))
    reference = new_engine(PLANTED)
    reference.apply(RegisterAsset("BTC", 8, "crypto", "bitcoin"), 1, 0)
    broke_at = None
    for i, (op, n) in enumerate(ops):
        if i == crash_at:
            node.close()
            node = _node(path)
        owner = f"u{i}"
        command = {"bump": Bump(owner, n), "refuse": Refuse(owner), "break": Break(owner, "invariant")}[op]
        if broke_at is not None:
            with pytest.raises(ShardHalted):
                node.execute(command)
            continue
        if op == "break":
            with pytest.raises(InvariantViolation):
                node.execute(command)
            broke_at = node.engine.last_seq
            continue
        node.execute_many([command], raise_rejected=False)
        reference.apply(command, reference.last_seq + 1, 0)
    live = node.engine.snapshot_state()
    node.close()
    assert live[3:5] == reference.snapshot_state()[3:5]
    if broke_at is None:
        assert len(live) == 5
    else:
        assert live[5] == [broke_at, "InvariantViolation"]
    replayed, _, _ = replay_journal(path, use_snapshots=False, extra_modules=[PLANTED])
    assert replayed.snapshot_state() == live
