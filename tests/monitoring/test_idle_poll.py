"""The monitoring scorer's thread while nothing happens (issue 18): on SQLite it reads no event, no
decision and no backlog while the database is unchanged (`PRAGMA data_version` on a connection of
its own), where each poll was three transactions (~1.4% of a core of an idle serving process); and
what any other connection commits is still scored on the next poll."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import event

from ringfence.monitoring.service import Monitor, default_rules
from ringfence.monitoring.stream import add_in_tx
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
