"""The stream's ids become visible in id order (code review, session 21): the scorer moves its cursor
past the highest id it read, and on PostgreSQL an id is drawn at INSERT but seen at COMMIT, so a
sign-in committing while an outbox transaction with lower ids was still open let the cursor pass
those ids unread. Every writer now takes one advisory lock first (`stream._write_events`)."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select, text

from pgtest import PG_URL, pg_schema
from ringfence.monitoring import stream
from ringfence.monitoring.stream import Outbox, add_in_tx, read_after
from ringfence.store import Store
from ringfence.store.models import MonitoringEvent

SRC = Path(__file__).resolve().parents[2] / "src" / "ringfence"


@pytest.mark.store
def test_a_sign_in_committing_while_an_outbox_transaction_is_open_is_not_read_before_the_outbox_rows(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Always on PostgreSQL (pg_schema: no PostgreSQL fails the test, it never skips; SQLite's one
    write lock orders ids by itself). The outbox writes 300 events in one transaction and stops after
    its first executemany (FLUSH_CHUNK rows, the lowest ids); meanwhile a sign-in style transaction
    adds its event on another connection and commits, and the scorer reads and moves its cursor;
    then the outbox commits and the scorer reads after its cursor. Without the lock the sign-in got
    id FLUSH_CHUNK + 1 and committed first: the cursor passed the outbox's first chunk, 64 events
    never read. With it the sign-in waits for the lock (seen in pg_stat_activity) until the outbox commits."""
    with pg_schema() as schema:
        store = Store.from_url(PG_URL, schema=schema)
        watcher = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
        try:
            inserted, go, signed_in = threading.Event(), threading.Event(), threading.Event()
            real = stream._insert_events
            calls = []

            def insert(db, rows):  # type: ignore[no-untyped-def]
                real(db, rows)
                calls.append(len(rows))
                if len(calls) == 1:  # the outbox's transaction open, its first chunk inserted
                    inserted.set()
                    assert go.wait(30)

            monkeypatch.setattr(stream, "_insert_events", insert)
            outbox = Outbox(store)
            for i in range(300):
                outbox.publish("order_placed", source="engine", at_ms=1_000 + i, account_id=f"a{i % 7}", data={"seq": i})
            flushed: list[int] = []
            writer = threading.Thread(target=lambda: flushed.append(outbox.flush()))
            writer.start()
            assert inserted.wait(30)

            pid: list[int] = []

            def sign_in() -> None:
                with store.tx() as db:
                    pid.append(db.execute(text("SELECT pg_backend_pid()")).scalar_one())
                    add_in_tx(db, "sign_in", source="identity", at_ms=5_000, ip="10.0.0.1", device="ua")
                signed_in.set()

            other = threading.Thread(target=sign_in)
            other.start()
            deadline = time.monotonic() + 30
            waiting = False
            while not signed_in.is_set() and not waiting:
                assert time.monotonic() < deadline, "the sign-in neither committed nor waited for a lock"
                if pid:
                    with watcher.connect() as conn:
                        waiting = conn.execute(text(
                            "SELECT wait_event_type = 'Lock' AND wait_event = 'advisory' FROM pg_stat_activity"
                            " WHERE pid = :pid"), {"pid": pid[0]}).scalar() or False
                time.sleep(0.005)

            scored = read_after(store, 0)  # the scorer's step while the outbox's transaction is open
            cursor = scored[-1].id if scored else 0
            go.set()
            writer.join(30)
            other.join(30)
            assert flushed == [300] and signed_in.is_set()
            scored += read_after(store, cursor)
            with store.tx() as db:
                every = list(db.scalars(select(MonitoringEvent.id).order_by(MonitoringEvent.id)))
            assert len(every) == 301
            missed = sorted(set(every) - {e.id for e in scored})
            assert missed == [], f"{len(missed)} events below the scorer's cursor {cursor} never read"
            assert [e.id for e in scored] == every  # each read once, in id order
        finally:
            watcher.dispose()
            store.engine.dispose()


@pytest.mark.store
def test_add_in_tx_writes_at_commit_and_nothing_on_rollback(tmp_path: Path) -> None:
    """`add_in_tx` queues its row until the transaction commits (then after the transaction's other
    changes, under the lock on PostgreSQL); a transaction rolled back writes none; a savepoint is refused."""
    from pgtest import profile_store_url

    with profile_store_url(tmp_path) as url:
        store = Store.from_url(url)
        try:
            with pytest.raises(ZeroDivisionError):
                with store.tx() as db:
                    add_in_tx(db, "sign_in", source="identity", at_ms=1)
                    raise ZeroDivisionError
            with store.tx() as db:
                with db.begin_nested():
                    with pytest.raises(RuntimeError, match="savepoint"):
                        add_in_tx(db, "sign_in", source="identity", at_ms=2)
                add_in_tx(db, "sign_in", source="identity", at_ms=3, user_id=None, ip="1.2.3.4", data={"detail": "x"})
                add_in_tx(db, "sign_in_failed", source="identity", at_ms=4)
            events = read_after(store, 0)
            assert [(e.kind, e.at_ms, e.ip, e.data) for e in events] == [
                ("sign_in", 3, "1.2.3.4", {"detail": "x"}), ("sign_in_failed", 4, "", {})]
        finally:
            store.engine.dispose()


def test_no_module_but_the_stream_writes_monitoring_events() -> None:
    """Every row goes through `stream._write_events` (and its lock on PostgreSQL): no other module
    constructs a row, builds an INSERT of the table or writes to it by name."""
    writes = re.compile(r"(?<!class )MonitoringEvent\(|insert\(\s*MonitoringEvent|\bINTO\s+monitoring_events|"
                        r"MonitoringEvent\.__table__|tables\[\s*['\"]monitoring_events", re.I)
    offenders = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
                 if p.name != "stream.py" and "migrations" not in p.parts and writes.search(p.read_text())]
    assert offenders == []
    assert "def _write_events" in (SRC / "monitoring" / "stream.py").read_text()
