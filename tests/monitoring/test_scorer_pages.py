"""The monitoring scorer's paged read (session 20): a failure part way through a step scores no
event twice, and on PostgreSQL no transaction stays open while the scorer pauses between pages
(code review, session 20)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.exc import OperationalError

from ringfence.monitoring import service
from ringfence.monitoring.service import READ_PAGE, Monitor, default_rules
from ringfence.monitoring.stream import add_in_tx
from ringfence.store import Store
from ringfence.store.models import MonitoringAlert


def _fill(store: Store, events: int, failed: str = "login_failed", ok: str = "login") -> None:
    with store.tx() as db:
        for i in range(events):
            add_in_tx(db, failed if i % 3 else ok, source="test", at_ms=1_000 + i,
                      account_id=f"acct{i % 7}", ip=f"10.0.{i % 5}.1", device=f"dev{i % 4}")


class Ticks:
    def __init__(self, on_tick: Any = None) -> None:
        self.on_tick = on_tick
        self.ticks = 0

    def restart(self) -> None:
        pass

    def tick(self) -> None:
        self.ticks += 1
        if self.on_tick is not None:
            self.on_tick()


def _counted_monitor(store: Store, monkeypatch: pytest.MonkeyPatch, pacer: Any) -> tuple[Monitor, list[int]]:
    """A monitor over `store` with the default rules and `pacer`, and the ids of the events its scorer
    processes, in the order it processes them."""
    monitor = Monitor(store, None, default_rules(), pacer=pacer)
    scored: list[int] = []
    real_process = monitor.scorer.process

    def process(e: Any) -> Any:
        scored.append(e.id)
        return real_process(e)

    monkeypatch.setattr(monitor.scorer, "process", process)
    return monitor, scored


def test_a_page_that_fails_part_way_leaves_no_event_to_be_scored_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """1,000 events, paged by READ_PAGE; the sixth page's read fails once. The five pages before it
    were scored (the scorer's windows, the links); the retry must not score them again (it scored
    320 events twice: the cursor had not moved). Failed sign-ins, so the steps raise alerts: the
    alerts compared with a step that never failed are not 0 == 0 (session 21: login/login_failed
    events trigger no rule, and a scorer that dropped the failed step's alerts passed)."""
    store = Store.from_url(f"sqlite:///{tmp_path / 'm.sqlite'}")
    _fill(store, 1_000, "sign_in_failed", "sign_in")
    real_pages = service.read_pages
    failures = [5]  # pages read fine before the one that fails, once

    def read_pages(*args: Any, **kwargs: Any) -> Any:
        for n, got in enumerate(real_pages(*args, **kwargs)):
            if failures and n == failures[0]:
                failures.clear()
                raise ConnectionError("the database went away")
            yield got

    monkeypatch.setattr(service, "read_pages", read_pages)
    monitor, scored = _counted_monitor(store, monkeypatch, Ticks())
    with pytest.raises(ConnectionError):
        monitor.step()
    assert monitor.cursor == scored[-1] and len(scored) == 5 * READ_PAGE  # moved over what was scored
    assert monitor.step() == 1_000 - 5 * READ_PAGE
    assert sorted(scored) == scored and len(set(scored)) == len(scored) == 1_000  # each event once, in order
    # the alerts are those of one step that never failed
    plain_store = Store.from_url(f"sqlite:///{tmp_path / 'p.sqlite'}")
    _fill(plain_store, 1_000, "sign_in_failed", "sign_in")
    plain = Monitor(plain_store, None, default_rules(), pacer=Ticks())  # type: ignore[arg-type]
    assert plain.step() == 1_000 and plain.alerts_raised > 0
    assert (plain.cursor, plain.alerts_raised) == (monitor.cursor, monitor.alerts_raised)
    assert _alerts(store) == _alerts(plain_store)  # the stored alerts themselves, each once


def _alerts(store: Store) -> list[tuple[str, str, str]]:
    with store.tx() as db:
        return sorted(tuple(r) for r in db.execute(select(MonitoringAlert.rule, MonitoringAlert.account_id, MonitoringAlert.evidence)))


@pytest.mark.store
def test_no_transaction_stays_open_while_the_scorer_pauses_between_pages(tmp_path: Path) -> None:
    """On PostgreSQL the paged read kept its transaction open through the scorer's pauses ("idle in
    transaction": AccessShareLock on the events and users tables, its snapshot holding back vacuum)
    although psycopg had every row at execute. On SQLite the read steps its rows lazily and keeps its
    read transaction, which WAL mode lets a writer commit through: an event added during a pause."""
    from sqlalchemy import create_engine, text

    from tests.pgtest import profile_store_url

    with profile_store_url(tmp_path) as url:
        store = Store.from_url(url)
        try:
            _fill(store, 5 * READ_PAGE)
            seen: list[int] = []
            if store.engine.dialect.name == "postgresql":
                watcher = create_engine(url, isolation_level="AUTOCOMMIT")

                def look() -> None:  # every other backend of this database that is inside a transaction
                    with watcher.connect() as conn:
                        seen.append(conn.execute(text(
                            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                            " AND pid <> pg_backend_pid() AND state LIKE 'idle in transaction%'")).scalar_one())
            else:
                def look() -> None:
                    _fill(store, 1)  # commits while the read is open
                    seen.append(0)

            monitor = Monitor(store, None, default_rules(), pacer=Ticks(look))  # type: ignore[arg-type]
            assert monitor.step() == 5 * READ_PAGE  # (on SQLite the events added meanwhile are after its snapshot)
            assert len(seen) == 5 and seen == [0] * 5
        finally:
            if store.engine.dialect.name == "postgresql":
                watcher.dispose()
            store.engine.dispose()


class _WriteLock:
    """Another connection to the same SQLite file holding its write lock (BEGIN IMMEDIATE): every
    write of the store fails with "database is locked" after its busy timeout (made short here)."""

    def __init__(self, store: Store, path: Path) -> None:
        store.engine.dispose()  # the pooled connections take the short busy timeout below when reopened

        @event.listens_for(store.engine, "connect")
        def _short_wait(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.execute("PRAGMA busy_timeout=50")

        self.conn = sqlite3.connect(path, isolation_level=None)
        self.held = False

    def take(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")
        self.held = True

    def release(self) -> None:
        self.conn.execute("ROLLBACK")
        self.held = False


@pytest.mark.parametrize("failing_page", [5, None])
def test_a_step_whose_alerts_cannot_be_stored_scores_no_event_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      failing_page: int | None) -> None:
    """The database is gone (its write lock held elsewhere) when the sixth page's read fails, or when
    the step stores its alerts after a read that went well: the step's write fails, the events it scored
    are in the scorer's windows and the links. The retries, while the database is still gone and once it
    is back, score no event twice and raise each alert once: the alerts of a step that never failed
    (the retry scored the events before the failing page again: their alerts were raised twice)."""
    path = tmp_path / "m.sqlite"
    store = Store.from_url(f"sqlite:///{path}")
    _fill(store, 1_000, "sign_in_failed", "sign_in")  # failed sign-ins: alerts all along
    lock = _WriteLock(store, path)
    real_pages = service.read_pages
    failures = [] if failing_page is None else [failing_page]
    after_read = [True] if failing_page is None else []  # take the lock once the first read has given its last page

    def read_pages(*args: Any, **kwargs: Any) -> Any:
        for n, got in enumerate(real_pages(*args, **kwargs)):
            if failures and n == failures[0]:
                failures.clear()
                lock.take()
                raise ConnectionError("the database went away")
            yield got
        if after_read:
            after_read.clear()
            lock.take()  # the read went well: the step's own write fails

    monkeypatch.setattr(service, "read_pages", read_pages)
    monitor, scored = _counted_monitor(store, monkeypatch, Ticks())
    with pytest.raises((ConnectionError, OperationalError)):
        monitor.step()
    assert monitor.cursor == 0 and len(scored) == (1_000 if failing_page is None else 5 * READ_PAGE)
    with pytest.raises(OperationalError):  # still gone: the retry stores first, and cannot
        monitor.step()
    assert monitor.cursor == 0 and len(scored) == (1_000 if failing_page is None else 5 * READ_PAGE)  # nor read more
    lock.release()
    monitor.step()
    while monitor.step():
        pass
    assert monitor.cursor == 1_000
    assert sorted(scored) == scored and len(set(scored)) == len(scored) == 1_000  # each event once, in order
    plain_store = Store.from_url(f"sqlite:///{tmp_path / 'p.sqlite'}")
    _fill(plain_store, 1_000, "sign_in_failed", "sign_in")
    plain = Monitor(plain_store, None, default_rules(), pacer=Ticks())  # type: ignore[arg-type]
    assert plain.step() == 1_000 and plain.alerts_raised > 0
    assert monitor.alerts_raised == plain.alerts_raised
    assert _alerts(store) == _alerts(plain_store)  # the stored alerts themselves, each once


def test_a_step_called_while_another_runs_waits_for_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`stop()` runs a last step once the scorer's thread has had 10 s to end, whether or not it ended.
    The second step stored the first one's alerts so far, read on after its last scored event, and
    scored the rest; the first then scored the rest again from its own read (and the alerts the first
    added meanwhile could go with a list the second had just stored and dropped). One step at a time
    now: the second waits and finds nothing new."""
    import threading

    store = Store.from_url(f"sqlite:///{tmp_path / 'm.sqlite'}")
    _fill(store, 1_000, "sign_in_failed", "sign_in")
    second: list[Any] = []

    def at_first_pause() -> None:  # the first step paused after its first chunk: another step starts
        if not second:
            thread = threading.Thread(target=lambda: second.append(monitor.step()), daemon=True)
            second.append(thread)
            thread.start()
            thread.join(1)

    monitor, scored = _counted_monitor(store, monkeypatch, Ticks(at_first_pause))
    first = monitor.step()
    second[0].join(20)
    assert (first, second[1:]) == (1_000, [0])  # the first step read them all, the second nothing more
    assert sorted(scored) == scored and len(set(scored)) == len(scored) == 1_000 and monitor.cursor == 1_000
    plain_store = Store.from_url(f"sqlite:///{tmp_path / 'p.sqlite'}")
    _fill(plain_store, 1_000, "sign_in_failed", "sign_in")
    plain = Monitor(plain_store, None, default_rules(), pacer=Ticks())  # type: ignore[arg-type]
    assert plain.step() == 1_000 and plain.alerts_raised > 0
    assert monitor.alerts_raised == plain.alerts_raised and _alerts(store) == _alerts(plain_store)
