"""Background work paced to a share of a core (ringfence/pacing.py), and the serving workers that use it:
the internal reconciler's fold and the monitoring scorer. Pacing only ever sleeps: what the
paced work computes is what the unpaced work computes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringfence.pacing import MAX_SLEEP_US, CpuPacer


class FakeThread:
    """A thread's CPU clock that work advances, and a sleep that records instead of sleeping."""

    def __init__(self) -> None:
        self.cpu_ns = 0
        self.slept_us: list[int] = []

    def work(self, us: int) -> None:
        self.cpu_ns += us * 1000

    def sleep(self, seconds: float) -> None:  # float-ok: time.sleep's argument
        self.slept_us.append(round(seconds * 1e6))

    def pacer(self, **kw: int) -> CpuPacer:
        return CpuPacer(cpu_ns=lambda: self.cpu_ns, sleep=self.sleep, **kw)


def test_a_slice_of_work_is_followed_by_a_pause_that_holds_the_share() -> None:
    t = FakeThread()
    pacer = t.pacer(slice_us=2_000, share_permille=250)
    for _ in range(3):  # 1.5 ms: inside the slice, no pause
        t.work(500)
        pacer.tick()
    assert t.slept_us == []
    t.work(500)  # 2 ms used: a quarter of a core means 6 ms asleep
    pacer.tick()
    assert t.slept_us == [6_000]
    t.work(1_000)
    pacer.tick()  # a new slice began after the pause
    assert t.slept_us == [6_000] and pacer.pauses == 1 and pacer.paused_us == 6_000


def test_restart_forgets_the_cpu_used_before_the_thread_waited() -> None:
    t = FakeThread()
    pacer = t.pacer(slice_us=2_000, share_permille=100)
    t.work(50_000)  # the previous pass, long ago
    pacer.restart()
    t.work(1_000)
    pacer.tick()
    assert t.slept_us == []


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 30_000), min_size=1, max_size=200), st.integers(100, 20_000), st.integers(10, 1000))
def test_the_share_holds_over_any_run_and_no_pause_is_unbounded(units_us: list[int], slice_us: int, share: int) -> None:
    t = FakeThread()
    pacer = t.pacer(slice_us=slice_us, share_permille=share)
    for us in units_us:
        t.work(us)
        pacer.tick()
    cpu_us = sum(units_us)
    assert all(0 < s <= MAX_SLEEP_US for s in t.slept_us)
    assert sum(t.slept_us) == pacer.paused_us and len(t.slept_us) == pacer.pauses
    if share == 1000:
        assert t.slept_us == []
        return
    # everything up to the last pause ran at the share (up to the cap on one pause and rounding);
    # what came after it is less than a slice plus the unit that crossed it
    unpaced_us = max(units_us) + slice_us
    capped = any(s == MAX_SLEEP_US for s in t.slept_us)
    if not capped:
        assert (cpu_us - unpaced_us) * (1000 - share) <= (sum(t.slept_us) + len(t.slept_us)) * share
    assert sum(t.slept_us) * share <= cpu_us * (1000 - share)  # never more asleep than the share asks


def test_settings_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError):
        CpuPacer(slice_us=10)
    with pytest.raises(ValueError):
        CpuPacer(share_permille=0)


# ---------------------------------------------------------------------------------------------- users


class TickCounter:
    """A pacer that counts where the worker offered to pause (and never sleeps)."""

    def __init__(self) -> None:
        self.ticks = 0
        self.restarts = 0

    def tick(self) -> None:
        self.ticks += 1

    def restart(self) -> None:
        self.restarts += 1


def test_the_reconcilers_fold_offers_a_pause_after_every_record_and_folds_the_same(tmp_path: Path) -> None:
    from ringfence.app import new_node
    from ringfence.ledger.commands import CreateTransfers, OpenAccount, RegisterAsset
    from ringfence.ledger.model import Transfer
    from ringfence.reconcile.reconciler import Reconciler

    node = new_node(tmp_path, fsync=False)
    node.open()
    node.execute_many([RegisterAsset("BTC", 8, "crypto", "bitcoin"), OpenAccount("a", "BTC"), OpenAccount("b", "BTC")])
    world, a = (node.read(lambda e, o=o: e.ledger.get(o, "BTC").id if o != "world" else e.ledger.world("BTC").id) for o in ("world", "a"))
    records = 1
    for i in range(6):  # one journal record each
        node.execute_many([CreateTransfers([Transfer(10 + i, world, a, 100)])])
        records += 1
    counter = TickCounter()
    paced = Reconciler(node, pacer=counter)  # type: ignore[arg-type]
    report = paced.run_once(chain=False)
    assert report.mismatches == [] and paced.fold.last_seq == node.last_seq
    assert counter.restarts == 1 and counter.ticks >= records
    assert paced.fold.engine.state_hash() == node.read(lambda e: e.state_hash())
    node.close()


def _ledger_node(tmp_path: Path, records: int) -> object:
    """A node with an asset, an account and `records` journal records of one transfer each."""
    from ringfence.app import new_node
    from ringfence.ledger.commands import CreateTransfers, OpenAccount, RegisterAsset
    from ringfence.ledger.model import Transfer

    node = new_node(tmp_path, fsync=False)
    node.open()
    node.execute_many([RegisterAsset("BTC", 8, "crypto", "bitcoin"), OpenAccount("a", "BTC")])
    world = node.read(lambda e: e.ledger.world("BTC").id)
    a = node.read(lambda e: e.ledger.get("a", "BTC").id)
    for i in range(records):
        node.execute_many([CreateTransfers([Transfer(10 + i, world, a, 100)])])
    return node


def test_a_paced_fold_ends_at_the_next_record_once_the_server_is_stopping(tmp_path: Path) -> None:
    """serve's lifespan sets `stop`, joins the reconciler for 10 s, then closes the exchange: a fold
    in progress must not go on folding and pausing after `stop` (code review, session 17)."""
    import threading

    from ringfence.reconcile.reconciler import Reconciler

    node: Any = _ledger_node(tmp_path, 20)
    stop = threading.Event()
    t = FakeThread()
    after_stop: list[int] = []

    def sleep(seconds: float) -> None:  # float-ok: time.sleep's argument
        if stop.is_set():
            after_stop.append(round(seconds * 1e6))
        stop.set()  # shutdown begins during the first pause

    def cpu_ns() -> int:  # each look at the clock: a millisecond of work (every record fills a slice)
        t.work(1_000)
        return t.cpu_ns

    reconciler = Reconciler(node, pacer=CpuPacer(slice_us=100, share_permille=100, cpu_ns=cpu_ns, sleep=sleep))
    reconciler.run_forever(stop, poll_ms=10, internal_every_ms=100)
    assert stop.is_set() and after_stop == []
    assert 0 < reconciler.fold.last_seq < node.last_seq  # it stopped inside the fold
    node.close()


def test_a_fold_far_behind_catches_up_unpaced_then_is_paced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first pass after a start folds the journal from genesis: at a tenth of a core that would
    leave the exchange without internal reconciliation for minutes (code review, session 17)."""
    from ringfence.reconcile import reconciler as rec
    from ringfence.reconcile.reconciler import Reconciler

    node: Any = _ledger_node(tmp_path, 12)
    monkeypatch.setattr(rec, "PACE_ONLY_WITHIN", 5)
    counter = TickCounter()
    paced = Reconciler(node, pacer=counter)  # type: ignore[arg-type]
    assert paced.run_once(chain=False).mismatches == []
    assert paced.fold.last_seq == node.last_seq > 5 and counter.ticks == 0  # 14 behind: full speed
    world = node.read(lambda e: e.ledger.world("BTC").id)
    a = node.read(lambda e: e.ledger.get("a", "BTC").id)
    from ringfence.ledger.commands import CreateTransfers
    from ringfence.ledger.model import Transfer

    for i in range(3):
        node.execute_many([CreateTransfers([Transfer(100 + i, world, a, 1)])])
    assert paced.run_once(chain=False).mismatches == []
    assert paced.fold.last_seq == node.last_seq and counter.ticks >= 3  # 3 behind: paced
    node.close()


def _store(path: Path, events: int) -> object:
    from ringfence.monitoring.stream import add_in_tx
    from ringfence.store import Store

    store = Store.from_url(f"sqlite:///{path}")
    with store.tx() as db:
        for i in range(events):
            add_in_tx(db, "login_failed" if i % 3 else "login", source="test", at_ms=1_000 + i,
                      account_id=f"acct{i % 7}", ip=f"10.0.{i % 5}.1", device=f"dev{i % 4}")
    return store


def test_the_monitoring_scorer_pauses_between_chunks_and_scores_the_same(tmp_path: Path) -> None:
    from ringfence.monitoring.service import SCORE_CHUNK, Monitor, default_rules

    events = 5 * SCORE_CHUNK + 3
    counter = TickCounter()
    paced = Monitor(_store(tmp_path / "a.sqlite", events), None, default_rules(), pacer=counter)  # type: ignore[arg-type]
    plain = Monitor(_store(tmp_path / "b.sqlite", events), None, default_rules())  # type: ignore[arg-type]
    assert paced.step() == plain.step() == events
    assert counter.restarts == 1 and counter.ticks == 6  # after each chunk of SCORE_CHUNK events
    assert paced.cursor == plain.cursor and paced.alerts_raised == plain.alerts_raised
    assert paced.links.clusters() == plain.links.clusters()


def test_a_scorer_a_whole_batch_behind_catches_up_unpaced(tmp_path: Path) -> None:
    from ringfence.monitoring.service import Monitor, default_rules
    from ringfence.monitoring.stream import READ_BATCH

    counter = TickCounter()
    behind = Monitor(_store(tmp_path / "c.sqlite", READ_BATCH + 10), None, default_rules(), pacer=counter)  # type: ignore[arg-type]
    assert behind.step() == READ_BATCH and counter.ticks == 0 and counter.restarts == 0  # a full batch: no pauses
    assert behind.step() == 10 and counter.ticks == 1 and counter.restarts == 1  # caught up: paced again


def test_a_stopping_scorer_takes_its_last_step_unpaced(tmp_path: Path) -> None:
    """`Monitor.stop()` scores what the outbox wrote last on the caller's thread, in serve the
    event loop: no pauses there (code review, session 17)."""
    from ringfence.monitoring.service import SCORE_CHUNK, Monitor, default_rules

    counter = TickCounter()
    monitor = Monitor(_store(tmp_path / "d.sqlite", 3 * SCORE_CHUNK), None, default_rules(), pacer=counter)  # type: ignore[arg-type]
    monitor.stop()  # never started: stop() still takes the last step
    assert monitor.cursor > 0 and counter.ticks == 0 and counter.restarts == 0
