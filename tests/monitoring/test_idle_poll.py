"""The monitoring scorer's thread while nothing happens (issue 18): on SQLite it reads no event, no
decision and no backlog while the database is unchanged (`PRAGMA data_version` on a connection of
its own), where each poll was three transactions (~1.4% of a core of an idle serving process); and
what any other connection commits is still scored on the next poll."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from ringfence.monitoring import service
from ringfence.monitoring.service import Monitor, default_rules
from ringfence.monitoring.stream import READ_BATCH, add_in_tx
from ringfence.store import Store


def _statements_by_thread(store: Store) -> dict[str, int]:
    counts: dict[str, int] = {}

    @event.listens_for(store.engine, "before_cursor_execute")
    def count(*_: Any) -> None:
        name = threading.current_thread().name
        counts[name] = counts.get(name, 0) + 1

    return counts


def _until(predicate: Any, seconds: float = 10.0) -> bool:  # float-ok: seconds
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def _add(store: Store, n: int, start_ms: int) -> None:
    with store.tx() as db:
        for i in range(n):
            add_in_tx(db, "sign_in_failed", source="test", at_ms=start_ms + i, account_id="acct1", ip="10.0.0.1", device="d1")


def test_an_idle_scorer_reads_nothing_and_a_commit_is_scored_on_the_next_poll(tmp_path: Path) -> None:
    store = Store.from_url(f"sqlite:///{tmp_path / 'm.sqlite'}")
    _add(store, 3, 1_000)
    monitor = Monitor(store, None, default_rules(), poll_ms=20)
    counts = _statements_by_thread(store)
    monitor.start()
    try:
        assert _until(lambda: monitor.cursor == 3), "the events before the start are scored"
        assert _until(lambda: monitor.idle_polls_skipped >= 3), "then the polls find nothing new"
        before, skipped = counts.get("ringfence-monitoring", 0), monitor.idle_polls_skipped
        time.sleep(0.5)  # ~25 polls
        assert monitor.idle_polls_skipped >= skipped + 10
        assert counts.get("ringfence-monitoring", 0) == before, "no SQL while the database is unchanged"

        for round_ in range(3):  # committed by another connection: scored within a few polls, each time
            _add(store, 2, 2_000 + 10 * round_)
            target = 3 + 2 * (round_ + 1)
            assert _until(lambda target=target: monitor.cursor == target, 2.0), f"round {round_}: scored through {monitor.cursor}"
        assert monitor.scorer.events_scored == 9 and monitor.errors == 0
    finally:
        monitor.stop()


def test_without_a_version_counter_every_poll_steps(tmp_path: Path) -> None:
    """Where there is no data_version to look at (PostgreSQL, memory, a database URL with options, here):
    the thread steps each poll, as before."""
    store = Store.from_url(f"sqlite:///{tmp_path / 'm.sqlite'}?timeout=30")
    monitor = Monitor(store, None, default_rules(), poll_ms=20)
    assert monitor._store_version() is None
    steps = [0]
    real = monitor.step

    def counted() -> int:
        steps[0] += 1
        return real()

    monitor.step = counted  # type: ignore[method-assign]
    monitor.start()
    try:
        assert _until(lambda: steps[0] >= 10) and monitor.idle_polls_skipped == 0
    finally:
        monitor.stop()


def _idle(monitor: Monitor, polls: int = 3) -> None:
    """Until the thread has skipped `polls` more polls: nothing committed that it has not stepped over."""
    skipped = monitor.idle_polls_skipped
    assert _until(lambda: monitor.idle_polls_skipped >= skipped + polls), "the scorer never went idle"


def test_a_database_renamed_over_the_path_is_watched_in_its_place(tmp_path: Path) -> None:
    """A restore that renames a copy over the database's file while the server runs (review, session 22):
    the data_version connection still had the old file open, whose counter nothing moves any more; once
    the pool's connections had reopened the path (as new ones do under load) the events of the file now
    there were never scored, and nothing said so (no error)."""
    path = tmp_path / "m.sqlite"
    store = Store.from_url(f"sqlite:///{path}")
    _add(store, 3, 1_000)
    monitor = Monitor(store, None, default_rules(), poll_ms=20)
    monitor.start()
    try:
        assert _until(lambda: monitor.cursor == 3)
        with sqlite3.connect(path) as conn:  # nothing of the old file left in its WAL
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        copy = tmp_path / "restored.sqlite"
        with sqlite3.connect(path) as live, sqlite3.connect(copy) as into:
            live.backup(into)
        restored = Store.from_url(f"sqlite:///{copy}")
        _add(restored, 2, 2_000)  # what the restored file has beyond the live one
        restored.engine.dispose()
        _idle(monitor)
        os.replace(copy, path)
        for suffix in ("-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        store.engine.dispose()  # the pool's connections reopen the path: the restored file
        assert _until(lambda: monitor.cursor == 5, 3.0), f"scored through {monitor.cursor}, errors {monitor.errors}"
        _add(store, 1, 3_000)  # and what is committed to it afterwards
        assert _until(lambda: monitor.cursor == 6, 3.0), f"scored through {monitor.cursor}, errors {monitor.errors}"
        assert monitor.errors == 0
    finally:
        monitor.stop()


def test_a_commit_during_a_step_that_read_nothing_is_scored_on_a_later_poll(tmp_path: Path) -> None:
    """The version is read before the step's reads: an event committed after the step's read began (so
    that read does not see it) moves the counter past the one the step is remembered by, and a later
    poll steps again. Read after the step, the version would include that commit and the event would
    wait for the next commit of anything. The step here is woken by an unrelated commit and reads no
    event, so it stores nothing of its own (its own write would move the counter too)."""
    path = tmp_path / "m.sqlite"
    store = Store.from_url(f"sqlite:///{path}")
    _add(store, 3, 1_000)
    monitor = Monitor(store, None, default_rules(), poll_ms=20)
    armed = threading.Event()
    landed = threading.Event()

    @event.listens_for(store.engine, "after_cursor_execute")
    def commit_meanwhile(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if (armed.is_set() and threading.current_thread().name == "ringfence-monitoring"
                and "FROM monitoring_events" in statement and "ORDER BY monitoring_events.id" in statement):
            armed.clear()
            writer = threading.Thread(target=_add, args=(store, 1, 2_000))  # another connection, while the read is open
            writer.start()
            writer.join()
            landed.set()

    monitor.start()
    try:
        assert _until(lambda: monitor.cursor == 3)
        _idle(monitor)
        armed.set()
        with sqlite3.connect(path) as other:  # a commit of something else wakes the scorer
            other.execute("PRAGMA user_version = 7")
        assert _until(landed.is_set), "no step read the events after the unrelated commit"
        assert _until(lambda: monitor.cursor == 4, 3.0), f"scored through {monitor.cursor}"
        assert monitor.errors == 0
    finally:
        monitor.stop()



def test_a_cluster_check_still_due_is_made_while_nothing_is_committed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A trade within CLUSTER_CHECK_MS of the last cluster check leaves the check due later: the polls
    step (no commit needed) until it is made, then go idle."""
    monkeypatch.setattr(service, "CLUSTER_CHECK_MS", 2_000)  # the second trade inside it on a loaded machine too
    store = Store.from_url(f"sqlite:///{tmp_path / 'm.sqlite'}")
    monitor = Monitor(store, None, default_rules(), poll_ms=20)
    monitor.start()
    try:
        _idle(monitor)
        for n in range(2):  # the first is checked at once (no check yet); the second waits for its own
            with store.tx() as db:
                add_in_tx(db, "trade", source="test", at_ms=1_000 + n, account_id=f"taker{n}", data={"maker_owner": f"maker{n}"})
            assert _until(lambda n=n: monitor.cursor == n + 1)
        assert monitor.status()["linking"]["pending"], "the second trade came within a second of the first check"
        assert _until(lambda: not monitor.status()["linking"]["pending"], 10.0), "the due cluster check was never made"
        assert monitor.status()["linking"]["checked_through"] == 2
        _idle(monitor)
        assert monitor.errors == 0
    finally:
        monitor.stop()

def test_a_backlog_of_more_than_a_batch_is_read_whole(tmp_path: Path) -> None:
    """More than READ_BATCH committed while the thread is idle: its poll reads batch after batch until
    one comes back short (a full one says more remains), then goes idle again, nothing left behind."""
    store = Store.from_url(f"sqlite:///{tmp_path / 'm.sqlite'}")
    monitor = Monitor(store, None, default_rules(), poll_ms=20)
    monitor.start()
    try:
        _idle(monitor)
        _add(store, READ_BATCH + 7, 1_000)
        assert _until(lambda: monitor.cursor == READ_BATCH + 7, 60.0), f"scored through {monitor.cursor}"
        _idle(monitor)
        assert monitor.cursor == READ_BATCH + 7 and monitor.errors == 0
    finally:
        monitor.stop()


@pytest.mark.store
def test_on_postgresql_every_poll_steps(tmp_path: Path) -> None:
    """No data_version on PostgreSQL: no poll is skipped, and what another connection commits is scored."""
    from tests.pgtest import pg_database

    with pg_database() as url:
        store = Store.from_url(url)
        try:
            monitor = Monitor(store, None, default_rules(), poll_ms=20)
            assert monitor._store_version() is None
            monitor.start()
            try:
                _add(store, 2, 1_000)
                assert _until(lambda: monitor.cursor == 2)
                time.sleep(0.2)
                assert monitor.idle_polls_skipped == 0 and monitor.errors == 0
            finally:
                monitor.stop()
        finally:
            store.engine.dispose()
