"""Background work paced to a share of a core (ringfence/pacing.py), and the serving workers that use it:
the internal reconciler's fold and the monitoring scorer. Pacing only ever sleeps: what the
paced work computes is what the unpaced work computes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
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


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 5_000), min_size=1, max_size=60), st.integers(100, 5_000), st.integers(10, 1000))
def test_due_says_whether_tick_would_pause(units_us: list[int], slice_us: int, share: int) -> None:
    t = FakeThread()
    pacer = t.pacer(slice_us=slice_us, share_permille=share)
    for us in units_us:
        t.work(us)
        due = pacer.due()
        pauses = pacer.pauses
        pacer.tick()
        assert due == (pacer.pauses == pauses + 1)


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
@example([100], 100, 991)  # a slice's pause rounded to 0 us: it was a pause of 0 (found in session 20)
@example([1] * 150, 100, 991)  # the CPU that earns a 1 us pause (111 us here) is longer than the slice
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
    # (a pause is due after a slice of CPU, and only once it is at least 1 us: at a share near 1000 that
    # takes longer than the slice, ceil(share / (1000 - share)) us)
    unpaced_us = max(units_us) + max(slice_us, -(-share // (1000 - share)))
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


# ------------------------------------------------------------- session 20: no unit of paced work is a burst


class RecordingPacer(TickCounter):
    """A pacer that records, at every look, what `progress()` says has been done so far."""

    def __init__(self, progress: Any) -> None:
        super().__init__()
        self.progress = progress
        self.seen: list[int] = []

    def tick(self) -> None:
        super().tick()
        self.seen.append(self.progress())


def _steps(seen: list[int], start: int) -> list[int]:
    return [b - a for a, b in zip([start, *seen], seen)]


def test_the_fold_offers_a_pause_after_every_command_of_a_big_record(tmp_path: Path) -> None:
    """One journal record is a whole batch (dozens of orders when the engine is busy): a pause only
    between records let one record be a burst of many ms on the engine process's GIL."""
    from ringfence.ledger.commands import CreateTransfers
    from ringfence.ledger.model import Transfer
    from ringfence.reconcile.reconciler import Reconciler

    node: Any = _ledger_node(tmp_path, 1)
    world = node.read(lambda e: e.ledger.world("BTC").id)
    a = node.read(lambda e: e.ledger.get("a", "BTC").id)
    before = node.last_seq
    node.execute_many([CreateTransfers([Transfer(1_000 + i, world, a, 1)]) for i in range(300)])  # one record of 300
    reconciler = Reconciler(node)
    pacer = RecordingPacer(lambda: reconciler.fold.engine.last_seq)
    reconciler.pacer = pacer  # type: ignore[assignment]
    assert reconciler.run_once(chain=False).mismatches == []
    folded_in_steps = [s for s, at in zip(_steps(pacer.seen, 0), pacer.seen) if at > before]
    assert len(folded_in_steps) >= 300 and max(folded_in_steps) <= 1  # never more than one command between looks
    assert reconciler.fold.engine.state_hash() == node.read(lambda e: e.state_hash())
    node.close()


class CountingChain:
    """A chain whose addresses hold nothing (as the ledger's custody account); counts the balance reads."""

    def __init__(self) -> None:
        self.reads = 0

    def current_height(self) -> int:
        return 7

    def block_hash(self, height: int) -> str:
        return "00" * 32

    def balance(self, address: str, height: int | None = None, asset: str | None = None) -> int:
        assert height == 7
        self.reads += 1
        return 0


class NothingInFlight:
    def in_flight_withdrawals(self, asset: str, wallet: str) -> int:
        return 0

    def pending_deposits(self, asset: str, wallet: str) -> int:
        return 0


def test_the_chain_pass_offers_a_pause_between_any_two_balance_reads(tmp_path: Path) -> None:
    """A wallet of 10,000 addresses is read one balance at a time, with a look at the pacer between
    any two (it was one unpaced burst: 30-40 ms of CPU per block with the demo's chains; none after
    the last read, where a pass that found a shortfall must keep the chain lock)."""
    from ringfence.reconcile.reconciler import Reconciler, WalletSpec

    node: Any = _ledger_node(tmp_path, 1)
    chain = CountingChain()
    spec = WalletSpec("hot", "BTC", "bitcoin", chain, tuple(f"addr{i}" for i in range(10_000)))
    pacer = RecordingPacer(lambda: chain.reads)
    reconciler = Reconciler(node, wallets=[spec], custody=NothingInFlight(), pacer=pacer)  # type: ignore[arg-type]
    [row], mismatches = reconciler.chain_pass()
    assert chain.reads == 10_000 and row.status == "OK" and mismatches == []
    assert len(pacer.seen) == 9_999 and set(_steps(pacer.seen, 0)) == {1}
    plain = Reconciler(node, wallets=[spec], custody=NothingInFlight())
    assert plain.chain_pass() == ([row], [])  # the same rows as a pass that never pauses
    node.close()


def test_a_pause_under_the_chain_lock_lets_the_other_workers_take_it() -> None:
    """The custody workers share one re-entrant chain lock; the chain pass's pauses release it whole
    (`unlocked_sleep`), and the pass has it back after each pause."""
    import threading

    from ringfence.pacing import unlocked_sleep

    lock = threading.RLock()
    t = FakeThread()
    took: list[bool] = []

    def other_worker() -> None:
        took.append(lock.acquire(timeout=5))
        lock.release()

    sleep = unlocked_sleep(lock)

    def pause(seconds: float) -> None:  # float-ok: time.sleep's argument
        worker = threading.Thread(target=other_worker)
        worker.start()
        worker.join(0.05)
        before = len(took)
        for _ in range(5_000):  # the worker gets the lock in a pause (a loaded machine may need a few)
            sleep(seconds)
            if len(took) > before:
                break
        worker.join(5)
        t.sleep(seconds)

    pacer = CpuPacer(slice_us=100, share_permille=500, cpu_ns=lambda: t.cpu_ns, sleep=pause)
    with lock, lock:  # held re-entrantly, as Supervised's step and the chains' own methods do
        for _ in range(3):
            t.work(200)
            pacer.tick()
        assert lock._is_owned()  # type: ignore[attr-defined]
    assert took == [True, True, True] and len(t.slept_us) == 3
    unlocked_sleep(threading.RLock())(0.001)  # not held: a plain sleep
    with pytest.raises(TypeError):
        unlocked_sleep(threading.Lock())


def test_the_scorer_reads_in_pages_each_scored_before_the_next(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """4,000 events waiting (less than a whole batch: paced): one query, whose rows are fetched and
    decoded at most READ_PAGE at a time, with a look at the pacer between any two pages (one read
    decoded at once was 4-22 ms of CPU); the same cursor, alerts and links as the unpaced step, which
    takes them in one piece."""
    from ringfence.monitoring import service, stream
    from ringfence.monitoring.service import READ_PAGE, Monitor, default_rules

    log: list[tuple[str, int]] = []
    real_pages = stream.read_pages

    def read_pages(store: Any, after_id: int, *, page: int, limit: int = stream.READ_BATCH) -> Any:
        log.append(("query", 0))
        for got in real_pages(store, after_id, page=page, limit=limit):
            log.append(("page", len(got)))
            yield got

    monkeypatch.setattr(service, "read_pages", read_pages)

    class LoggingPacer(TickCounter):
        def tick(self) -> None:
            super().tick()
            log.append(("tick", 0))

    events = 4_000
    paced = Monitor(_store(tmp_path / "a.sqlite", events), None, default_rules(), pacer=LoggingPacer())  # type: ignore[arg-type]
    assert paced.step() == events
    pages = [n for kind, n in log if kind == "page"]
    assert sum(pages) == events and max(pages) <= READ_PAGE and [k for k, _ in log].count("query") == 1
    kinds = [kind for kind, _ in log if kind != "query"]
    assert kinds == ["page", "tick"] * len(pages)  # each page scored, then a look, before the next is fetched
    log.clear()
    plain = Monitor(_store(tmp_path / "b.sqlite", events), None, default_rules())
    assert plain.step() == events and [n for kind, n in log if kind == "page"] == [events]  # unpaced: one piece
    assert paced.cursor == plain.cursor and paced.alerts_raised == plain.alerts_raised
    assert paced.links.clusters() == plain.links.clusters()


def test_the_pages_are_the_events_of_one_read(tmp_path: Path) -> None:
    from ringfence.monitoring.stream import read_after, read_pages

    store: Any = _store(tmp_path / "p.sqlite", 1_000)
    for after, page, limit in ((0, 64, 5_000), (17, 64, 300), (990, 7, 5_000), (1_000, 64, 5_000)):
        pages = list(read_pages(store, after, page=page, limit=limit))
        assert all(0 < len(p) <= page for p in pages)
        assert [e.__dict__ for p in pages for e in p] == [e.__dict__ for e in read_after(store, after, limit=limit)]


def _outbox(path: Path, pacer: Any = None) -> Any:
    from ringfence.monitoring.stream import Outbox
    from ringfence.store import Store

    return Outbox(Store.from_url(f"sqlite:///{path}"), pacer=pacer)


def _written(outbox: Any) -> list[int]:
    from ringfence.monitoring.stream import read_range

    return [e.data["n"] for e in read_range(outbox.store)]


class DuePacer(TickCounter):
    """A pacer whose pause is due at every `every`-th look (`due()`), and that records each tick with
    what another connection sees of the outbox's table then: what is committed, and whether a writer
    could take the database's write lock (no transaction of the outbox open)."""

    def __init__(self, every: int, path: Path, log: list[tuple[str, int]]) -> None:
        super().__init__()
        self.every, self.path, self.log = every, path, log
        self.looks = 0

    def due(self) -> bool:
        self.looks += 1
        return self.looks % self.every == 0

    def tick(self) -> None:
        import sqlite3

        super().tick()
        other = sqlite3.connect(self.path, timeout=0, isolation_level=None)
        try:
            committed = other.execute("SELECT count(*) FROM monitoring_events").fetchone()[0]
            other.execute("BEGIN IMMEDIATE")  # raises "database is locked" while a write transaction is open
            other.execute("ROLLBACK")
        finally:
            other.close()
        self.log.append(("tick", committed))


def _logged_outbox(path: Path, monkeypatch: pytest.MonkeyPatch, log: list[tuple[str, int]], pacer: Any = None) -> Any:
    """An outbox whose executemanys and commits go into `log`."""
    from sqlalchemy import event

    from ringfence.monitoring import stream

    real = stream._insert_events
    monkeypatch.setattr(stream, "_insert_events", lambda db, rows: (log.append(("write", len(rows))), real(db, rows))[1])
    outbox = _outbox(path, pacer)
    event.listen(outbox.store.engine, "commit", lambda conn: log.append(("commit", 0)))
    return outbox


@pytest.mark.parametrize("every", [1, 3, 1_000])
def test_the_outbox_commits_before_each_pause_and_not_after_every_chunk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                         every: int) -> None:
    """Each executemany is at most FLUSH_CHUNK rows with a look at the pacer after it; the transaction
    commits where a pause is due, before the pause (no transaction open while the writer sleeps:
    another writer takes the lock, another reader sees every row written so far), or after
    FLUSH_TX_ROWS rows, or at the end: a flush of 1,000 rows is ceil(1000 / 64) = 16 commits only when
    a pause is due at every look (it was 16 for every flush), 2 when none is; every event once, in order."""
    from ringfence.monitoring.stream import FLUSH_CHUNK, FLUSH_TX_ROWS

    log: list[tuple[str, int]] = []
    path = tmp_path / "o.sqlite"
    pacer = DuePacer(every, path, log)
    outbox = _logged_outbox(path, monkeypatch, log, pacer)
    for n in range(1_000):
        outbox.publish("api_call", source="test", at_ms=n, data={"n": n})
    log.clear()
    assert outbox.flush() == 1_000 and pacer.restarts == 1
    writes = [n for kind, n in log if kind == "write"]
    assert max(writes) <= FLUSH_CHUNK and sum(writes) == 1_000
    written, in_tx, committed = 0, 0, 0
    for kind, n in log:
        if kind == "write":
            written += n
            in_tx += n
        elif kind == "commit":
            committed, in_tx = written, 0
        else:  # each pause comes right after a commit, and sees every row written before it
            assert n == written == committed and in_tx == 0
    kinds = [kind for kind, _ in log]
    assert kinds.count("tick") == kinds.count("commit")  # a look at the pacer after each commit
    chunks_per_tx = min(every, FLUSH_TX_ROWS // FLUSH_CHUNK)
    assert kinds.count("commit") == -(-len(writes) // chunks_per_tx)
    assert _written(outbox) == list(range(1_000))


def test_a_writer_a_whole_batch_behind_writes_unpaced_in_transactions_of_flush_tx_rows(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ringfence.monitoring.stream import FLUSH_BATCH, FLUSH_CHUNK, FLUSH_TX_ROWS

    log: list[tuple[str, int]] = []
    path = tmp_path / "b.sqlite"
    pacer = DuePacer(1, path, log)
    outbox = _logged_outbox(path, monkeypatch, log, pacer)
    for n in range(10_000):
        outbox.publish("api_call", source="test", at_ms=n, data={"n": n})
    log.clear()
    assert outbox.flush() == FLUSH_BATCH
    assert pacer.ticks == 0 and pacer.restarts == 0 and pacer.looks == 0  # at full speed
    writes = [n for kind, n in log if kind == "write"]
    assert max(writes) <= FLUSH_CHUNK and sum(writes) == FLUSH_BATCH
    assert [kind for kind, _ in log].count("commit") == -(-FLUSH_BATCH // FLUSH_TX_ROWS)
    while outbox.flush():
        pass
    assert _written(outbox) == list(range(10_000))


def test_a_transaction_that_fails_is_kept_with_everything_after_it_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ringfence.monitoring import stream
    from ringfence.monitoring.stream import FLUSH_CHUNK

    real = stream._insert_events
    calls = {"n": 0}

    def flaky(db: Any, rows: list[Any]) -> None:
        calls["n"] += 1
        if calls["n"] == 4:
            raise OSError("the store is away")
        real(db, rows)

    monkeypatch.setattr(stream, "_insert_events", flaky)
    path = tmp_path / "f.sqlite"
    outbox = _outbox(path, DuePacer(2, path, []))  # transactions of two chunks
    for n in range(5 * FLUSH_CHUNK):
        outbox.publish("api_call", source="test", at_ms=n, data={"n": n})
    # the first transaction (chunks 1-2) committed; the second failed at its second chunk: chunk 3,
    # written in it, is rolled back with it and kept, with everything after it
    assert outbox.flush() == 2 * FLUSH_CHUNK and outbox.errors == 1
    assert len(outbox._queue) == 3 * FLUSH_CHUNK
    assert _written(outbox) == list(range(2 * FLUSH_CHUNK))
    assert outbox.flush() == 3 * FLUSH_CHUNK
    assert _written(outbox) == list(range(5 * FLUSH_CHUNK))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 1_300), st.lists(st.booleans(), min_size=1, max_size=40), st.integers(0, 30))
def test_every_event_is_written_once_in_order_whatever_the_pauses_and_a_failure(queued: int, dues: list[bool], fail_at: int) -> None:
    """Whatever looks at the pacer find a pause due, and whichever executemany fails (0: none): every
    executemany at most FLUSH_CHUNK rows, no transaction open at a pause, and after the retries every
    event in the table once, in order."""
    import tempfile

    from ringfence.monitoring import stream
    from ringfence.monitoring.stream import FLUSH_CHUNK

    real = stream._insert_events
    writes: list[int] = []

    def insert(db: Any, rows: list[Any]) -> None:
        writes.append(len(rows))
        if len(writes) == fail_at:
            raise OSError("the store is away")
        real(db, rows)

    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        mp.setattr(stream, "_insert_events", insert)
        path = Path(tmp) / "h.sqlite"

        class Pattern(DuePacer):
            def due(self) -> bool:
                self.looks += 1
                return dues[self.looks % len(dues)]

        log: list[tuple[str, int]] = []
        outbox = _outbox(path, Pattern(1, path, log))
        for n in range(queued):
            outbox.publish("api_call", source="test", at_ms=n, data={"n": n})
        for _ in range(5):
            outbox.flush()
        assert outbox.errors == (1 if 0 < fail_at <= len(writes) else 0) and not outbox._queue
        assert max(writes) <= FLUSH_CHUNK
        assert _written(outbox) == list(range(queued))
        committed = [n for kind, n in log if kind == "tick"]
        assert committed == sorted(committed)  # each pause saw what was committed before it (and took the lock)


class _CustodyEngine:
    """An engine's custody state as the resolver reads it (`engine.components["custody"]`), and an
    exchange whose `read(fn)` runs fn on it as `Node.read` does, counting the reads."""

    def __init__(self) -> None:
        from types import SimpleNamespace

        self.components = {"custody": SimpleNamespace(withdrawals={}, deposits={})}
        self.reads = 0

    def read(self, fn: Any) -> Any:
        self.reads += 1
        return fn(self)


def test_the_custody_resolver_reads_the_engine_once_per_flush_as_of_its_start(tmp_path: Path) -> None:
    """One `Node.read` per flush for every deposit and withdrawal event in it (it was one per chunk: up
    to 32 holds of the sequencer per flush), made before the first write: a deposit credited again
    during the flush's pauses (a reorg reversed it, a new KYT score) does not change what an event
    of the flush says; reading per chunk, a later chunk's event read the state after the pauses."""
    from types import SimpleNamespace

    from ringfence.monitoring.stream import FLUSH_CHUNK, Outbox, custody_resolver
    from ringfence.store import Store

    engine = _CustodyEngine()
    custody = engine.components["custody"]
    custody.deposits["d1"] = SimpleNamespace(account_id="acct-d", asset="BTC", chain="bitcoin", txid="tx1", sender="bc1q", score=7)
    custody.withdrawals["w1"] = SimpleNamespace(account_id="acct-w", asset="ETH", address="0xabc", wallet="hot")
    path = tmp_path / "r.sqlite"

    class Recredit(DuePacer):
        def tick(self) -> None:  # a pause: meanwhile the engine credits d1 again, with another score
            super().tick()
            custody.deposits["d1"].score = 90 + self.ticks

    outbox = Outbox(Store.from_url(f"sqlite:///{path}"), resolve=custody_resolver(engine), pacer=Recredit(1, path, []))
    total = 5 * FLUSH_CHUNK
    for n in range(total):
        if n == 3 * FLUSH_CHUNK + 5:  # in the fourth chunk, after three pauses
            outbox.publish("deposit_credited", source="engine", at_ms=n, data={"n": n, "ref": "d1", "state": "credited"})
        elif n == 10:
            outbox.publish("withdrawal_requested", source="engine", at_ms=n, data={"n": n, "ref": "w1"})
        elif n == 11:
            outbox.publish("withdrawal_requested", source="engine", at_ms=n, data={"n": n, "ref": "w-unknown"})
        else:
            outbox.publish("api_call", source="test", at_ms=n, data={"n": n})
    assert outbox.flush() == total
    assert engine.reads == 1
    events = {e.data["n"]: e for e in _read_all(outbox)}
    assert [events[n].data["n"] for n in sorted(events)] == list(range(total))
    d = events[3 * FLUSH_CHUNK + 5]
    assert d.account_id == "acct-d" and d.data["score"] == 7 and d.data["txid"] == "tx1" and d.data["sender"] == "bc1q"
    w = events[10]
    assert w.account_id == "acct-w" and (w.data["asset"], w.data["address"], w.data["wallet"]) == ("ETH", "0xabc", "hot")
    assert events[11].account_id == "" and "asset" not in events[11].data  # not in the state: kept as it came
    for n in range(total, total + 100):  # a flush of nothing to resolve reads nothing
        outbox.publish("api_call", source="test", at_ms=n, data={"n": n})
    assert outbox.flush() == 100 and engine.reads == 1


def test_a_deposit_credit_keeps_its_own_kyt_score_when_the_deposit_is_credited_again_before_the_flush(tmp_path: Path) -> None:
    """The deposit's record holds only its latest credit's KYT score: credited (score 90, quarantined),
    reversed by a reorg, seen and credited again (score 10) before the outbox writes the first credit's
    event (the store away, or simply queued), that event still says 90, the score its own event gave."""
    from types import SimpleNamespace

    from ringfence.custody.state import CustodyEvent
    from ringfence.monitoring.stream import Outbox, _engine_rows, custody_resolver
    from ringfence.store import Store

    engine = _CustodyEngine()
    custody = engine.components["custody"]
    engine.marketdata = {}  # what _engine_rows asks of an exchange besides read (orders only)
    rows = _engine_rows(engine)
    outbox = Outbox(Store.from_url(f"sqlite:///{tmp_path / 'k.sqlite'}"), resolve=custody_resolver(engine))
    record = SimpleNamespace(account_id="acct-d", asset="ETH", chain="ethereum", txid="tx1", sender="0xaaa", score=90)
    custody.deposits["d1"] = record
    credits = [CustodyEvent("deposit.quarantined", "d1", "quarantined", 5, ["KYT score 90", "mixer"]),
               CustodyEvent("deposit.reversed", "d1", "reversed", 5, []),
               CustodyEvent("deposit.credited", "d1", "credited", 5, ["KYT score 10"])]
    for seq, event in enumerate(credits, 1):
        if seq == 3:  # the engine credits it again: the record now has the second credit's score
            record.score, record.sender = 10, "0xbbb"
        for kind, at_ms, account_id, data in rows(seq, seq * 10**6, [[event]]):
            outbox.publish(kind, source="engine", at_ms=at_ms, account_id=account_id, data=data)
    assert outbox.flush() == 2
    first, second = _read_all(outbox)
    assert (first.data["state"], first.data["score"]) == ("quarantined", 90)
    assert (second.data["state"], second.data["score"], second.data["sender"]) == ("credited", 10, "0xbbb")
    assert first.account_id == second.account_id == "acct-d"


def _read_all(outbox: Any) -> list[Any]:
    from ringfence.monitoring.stream import read_range

    return list(read_range(outbox.store))


def test_the_reserves_proof_offers_a_pause_before_every_claim() -> None:
    from ringfence.solvency.reserves import OwnershipClaim, prove_reserves

    counter = TickCounter()
    claims = [OwnershipClaim("ethereum", "ETH", f"0x{i:040x}", "evm", signature="0x1234") for i in range(50)]
    result = prove_reserves("00" * 32, claims, {}, pace=counter.tick)
    assert counter.ticks == 50 and len(result.addresses) == 50  # (no reader for the chain: each rejected)


def test_the_proof_schedule_is_paced_and_a_proof_on_request_is_not(tmp_path: Path) -> None:
    """The schedule's proofs (`run`, a daemon thread of serve) look at the pacer between stages; the
    one published at start-up or on request runs at full speed on its caller's thread."""
    import threading

    from ringfence.solvency.pol import DEV_SECRET
    from ringfence.solvency.publisher import PorPublisher

    node: Any = _ledger_node(tmp_path / "node", 2)
    stop = threading.Event()

    class StopAfterOneProof(TickCounter):
        def restart(self) -> None:
            super().restart()
            stop.set()  # the schedule ends after this proof

    pacer = StopAfterOneProof()
    publisher = PorPublisher(node.read, tmp_path / "por", DEV_SECRET, every_s=0, pacer=pacer)
    publisher.publish()
    assert publisher.published == 1 and pacer.ticks == 0 and pacer.restarts == 0
    publisher.run(stop)
    assert publisher.published == 2 and pacer.restarts == 1 and pacer.ticks >= 3
    node.close()


class GatedPacer(TickCounter):
    """A pacer whose every pause lasts until `gate` is set (at most 20 s); `paused` is set at the first."""

    def __init__(self) -> None:
        import threading

        super().__init__()
        self.gate, self.paused = threading.Event(), threading.Event()

    def tick(self) -> None:
        super().tick()
        self.paused.set()
        self.gate.wait(20)


def _in_thread(fn: Any) -> tuple[Any, list[Any]]:
    import threading

    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    thread.start()
    return thread, out


def test_a_proof_on_request_waits_for_no_scheduled_proof_and_the_older_one_is_not_published_after_it(tmp_path: Path) -> None:
    """`publish()` held the publisher's lock for a whole paced proof: a proof asked for meanwhile waited
    for all of it. Now the scheduled proof pauses (stopped here, in its first pause), the state moves on,
    and the proof on request of the new state is published at once; the scheduled one, of the older
    state, is then not published after it (the newest proof stays the newest state)."""
    from ringfence.ledger.commands import CreateTransfers
    from ringfence.ledger.model import Transfer
    from ringfence.solvency.pol import DEV_SECRET
    from ringfence.solvency.publisher import PorPublisher, read_history

    node: Any = _ledger_node(tmp_path / "node", 2)
    pacer = GatedPacer()
    publisher = PorPublisher(node.read, tmp_path / "por", DEV_SECRET, every_s=0, pacer=pacer)
    scheduled, scheduled_entry = _in_thread(lambda: publisher.publish(paced=True))
    try:
        assert pacer.paused.wait(20)
        world, a = node.read(lambda e: (e.ledger.world("BTC").id, e.ledger.get("a", "BTC").id))
        node.execute_many([CreateTransfers([Transfer(99, world, a, 100)])])
        asked, asked_entry = _in_thread(publisher.publish)
        asked.join(15)
        assert asked_entry, "the proof on request waited for the paused scheduled proof"
        assert asked_entry[0]["n"] == 1 and asked_entry[0]["position"] == f"journal:{node.last_seq}"
    finally:
        pacer.gate.set()
        scheduled.join(20)
    assert scheduled_entry == asked_entry  # the scheduled proof's older state was not published
    assert [p["n"] for p in read_history(tmp_path / "por")["proofs"]] == [1] and publisher.published == 1
    assert sorted(p.name for p in (tmp_path / "por").iterdir()) == ["1", "history.json"]  # no temporary folder left
    node.close()


def test_a_proof_on_request_of_the_snapshot_a_scheduled_proof_builds_joins_it_unpaced(tmp_path: Path) -> None:
    """Two proofs of one snapshot are not built at once: the proof asked for while the scheduled one
    builds the same snapshot returns that proof, which runs on without pauses from then on; one proof
    is published."""
    import time

    from ringfence.solvency.pol import DEV_SECRET
    from ringfence.solvency.publisher import PorPublisher, read_history

    node: Any = _ledger_node(tmp_path / "node", 2)
    pacer = GatedPacer()
    publisher = PorPublisher(node.read, tmp_path / "por", DEV_SECRET, every_s=0, pacer=pacer)
    scheduled, scheduled_entry = _in_thread(lambda: publisher.publish(paced=True))
    try:
        assert pacer.paused.wait(20)
        asked, asked_entry = _in_thread(publisher.publish)
        deadline = time.monotonic() + 20
        # (the build of that snapshot, told by the joining caller to go on unpaced)
        while not any(b.hurry.is_set() for b in list(publisher._builds.values())) and time.monotonic() < deadline:
            time.sleep(0.01)  # float-ok: seconds
    finally:
        pacer.gate.set()
        scheduled.join(20)
    asked.join(20)
    assert asked_entry and asked_entry == scheduled_entry and asked_entry[0]["n"] == 1
    assert pacer.ticks == 1  # no pause after the first, during which the request joined
    assert [p["n"] for p in read_history(tmp_path / "por")["proofs"]] == [1] and publisher.published == 1
    node.close()


def test_the_callers_that_joined_a_failed_proof_each_raise_their_own_error(tmp_path: Path) -> None:
    """A proof that fails (the node stopped while it was built) fails for each caller that joined it,
    each with an exception of its own whose cause is the build's: the one exception raised in several
    threads took each thread's frames into the traceback the others log."""
    import time

    from ringfence.solvency.pol import DEV_SECRET
    from ringfence.solvency.publisher import NodeStopped, PorPublisher

    node: Any = _ledger_node(tmp_path / "node", 2)
    pacer = GatedPacer()
    reason: list[str] = []
    publisher = PorPublisher(node.read, tmp_path / "por", DEV_SECRET, every_s=0, pacer=pacer,
                             stopped=lambda: reason[0] if reason else None)

    def caught(paced: bool) -> Any:
        try:
            publisher.publish(paced=paced)
        except NodeStopped as err:
            return err
        return None

    scheduled, scheduled_error = _in_thread(lambda: caught(True))
    try:
        assert pacer.paused.wait(20)
        asked, asked_error = _in_thread(lambda: caught(False))
        deadline = time.monotonic() + 20
        while not any(b.hurry.is_set() for b in list(publisher._builds.values())) and time.monotonic() < deadline:
            time.sleep(0.01)  # float-ok: seconds
        reason.append("deposed")  # the node stops while the joined proof is built
    finally:
        pacer.gate.set()
        scheduled.join(20)
    asked.join(20)
    [built], [joined] = scheduled_error, asked_error
    assert isinstance(built, NodeStopped) and isinstance(joined, NodeStopped) and "deposed" in str(joined)
    assert joined is not built and joined.__cause__ is built
    assert not (tmp_path / "por").exists() or [p.name for p in (tmp_path / "por").iterdir()] == []  # nothing published
    node.close()


def test_a_crashs_temporary_folders_are_swept_and_a_folder_in_use_is_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A proof's temporary folder left by a crash (old `.tmp-<n>` or `.tmp-<snapshot>`) is removed by the
    next proof begun while none is being built; one begun while another proof writes its folder leaves
    that folder alone (it is published whole: root.json and proofs/ in it)."""
    import threading
    import time

    from ringfence.ledger.commands import CreateTransfers
    from ringfence.ledger.model import Transfer
    from ringfence.solvency import pol_builder
    from ringfence.solvency.pol import DEV_SECRET
    from ringfence.solvency.publisher import PorPublisher, read_history

    node: Any = _ledger_node(tmp_path / "node", 2)
    out = tmp_path / "por"
    for left in (".tmp-7", ".tmp-" + "ab" * 16):
        (out / left / "proofs").mkdir(parents=True)
        (out / left / "root.json").write_text("{}\n")
    writing: list[threading.Event] = []
    gates = [threading.Event(), threading.Event()]
    real_write = pol_builder.LiabilityTree.write_store

    def write_store(tree: Any, directory: Any, *args: Any, **kwargs: Any) -> None:
        n = len(writing)
        writing.append(threading.Event())
        writing[n].set()
        assert gates[n].wait(20)
        real_write(tree, directory, *args, **kwargs)

    monkeypatch.setattr(pol_builder.LiabilityTree, "write_store", write_store)
    publisher = PorPublisher(node.read, out, DEV_SECRET, every_s=0)
    first, first_entry = _in_thread(publisher.publish)
    try:
        deadline = time.monotonic() + 20
        while not writing and time.monotonic() < deadline:
            time.sleep(0.01)  # float-ok: seconds
        assert writing and not (out / ".tmp-7").exists()  # swept: no proof was being built
        world, a = node.read(lambda e: (e.ledger.world("BTC").id, e.ledger.get("a", "BTC").id))
        node.execute_many([CreateTransfers([Transfer(99, world, a, 100)])])
        second, second_entry = _in_thread(publisher.publish)  # a newer state, while the first writes its folder
        while len(writing) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)  # float-ok: seconds
        assert len(writing) == 2
    finally:
        gates[0].set()
        first.join(20)
        gates[1].set()
    second.join(20)
    assert [e["n"] for e in first_entry + second_entry] == [1, 2]
    assert [p["n"] for p in read_history(out)["proofs"]] == [1, 2]
    for n in ("1", "2"):
        assert (out / n / "root.json").is_file() and (out / n / "proofs" / "meta.json").is_file(), n
    assert sorted(p.name for p in out.iterdir()) == ["1", "2", "history.json"]
    node.close()
