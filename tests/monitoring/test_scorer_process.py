"""The monitoring scorer in a process of its own (monitoring/scorer_process.py, issue 18): the same
alerts as the scorer thread on a seeded stream, the same answers to the admin API's questions, a
killed scorer process started again without an event scored twice, and two scorers on one stream
never storing the same event's alerts twice (the cursor moves only from where its scorer read it)."""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from sqlalchemy import func, select

from ringfence.monitoring.cases import CursorMoved
from ringfence.monitoring.scorer_process import ScorerConfig, ScorerProcess, ScorerUnavailable
from ringfence.monitoring.service import CURSOR, Monitor, default_rules
from ringfence.monitoring.stream import add_in_tx
from ringfence.monitoring.synth import generate
from ringfence.store import Store
from ringfence.store.models import MonitoringAlert, MonitoringCursor, MonitoringEvent
from tests.pgtest import pg_database

USERS = 150  # ~4,000 events of every typology: alerts of most rules, clusters, baselines


def _seeded_store(url: str, seed: int = 7) -> Store:
    store = Store.from_url(url)
    events = generate(seed, users=USERS).events
    with store.tx() as db:
        for e in events:
            add_in_tx(db, e.kind, source="test", at_ms=e.at_ms, account_id=e.account_id, ip=e.ip, device=e.device,
                      data=dict(e.data))
    return store


@contextlib.contextmanager
def _urls(backend: str, tmp_path: Path, n: int) -> Iterator[list[str]]:
    """`n` empty stores' URLs: SQLite files, or PostgreSQL databases (as `serve` on the PostgreSQL profile)."""
    if backend == "sqlite":
        yield [f"sqlite:///{tmp_path / f'{i}.sqlite3'}" for i in range(n)]
        return
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(pg_database()) for _ in range(n)]


def _alerts(store: Store) -> list[tuple[Any, ...]]:
    with store.tx() as db:
        rows = db.scalars(select(MonitoringAlert).order_by(MonitoringAlert.id)).all()
        return [(a.rule, a.severity, a.account_id, a.explanation, a.evidence, a.at_ms, a.score, a.features) for a in rows]


def _stored_cursor(store: Store) -> int:
    with store.tx() as db:
        return db.scalar(select(MonitoringCursor.position).where(MonitoringCursor.name == CURSOR)) or 0


def _newest(store: Store) -> int:
    with store.tx() as db:
        return db.scalar(select(func.max(MonitoringEvent.id))) or 0


def _scored_in_thread(store: Store) -> Monitor:
    monitor = Monitor(store, None, default_rules(), writes_outbox=False)
    monitor._load()
    while monitor.step():
        pass
    time.sleep(1.1)  # the cluster check's interval: the linked-cluster alerts of the last trades
    monitor.step()
    return monitor


def _wait(what: str, check: Any, timeout_s: float = 120, process: ScorerProcess | None = None) -> None:  # float-ok: seconds
    deadline = time.monotonic() + timeout_s
    while not check():
        if process is not None:
            process.keep_running()
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _answers(ask: Any) -> dict[str, Any]:
    out = {"clusters": ask("clusters"), "cluster": ask("clusters", "u00003"), "baseline": ask("baseline", "u00003"),
           "model": ask("model_status")}
    return json.loads(json.dumps(out, default=str))  # as the socket carries them


@pytest.fixture(params=["sqlite", "postgresql"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Store, Store]]:
    """The same seeded stream (the same events with the same ids) in two stores."""
    with _urls(request.param, tmp_path, 2) as (one, two):
        pair = _seeded_store(one), _seeded_store(two)
        yield pair
        for store in pair:
            store.engine.dispose()


def test_the_scorer_process_stores_the_alerts_the_thread_does_and_answers_alike(stores: tuple[Store, Store]) -> None:
    thread_store, process_store = stores
    reference = _scored_in_thread(thread_store)
    expected = _alerts(thread_store)
    assert len(expected) > 50 and len({a[0] for a in expected}) >= 6, "too few alerts to compare"
    assert any(a[0] == "linked-cluster" for a in expected)

    process = ScorerProcess(ScorerConfig(database_url=process_store.engine.url.render_as_string(hide_password=False), poll_ms=50))
    process.start()
    try:
        newest = _newest(process_store)
        _wait("the scorer process to reach the newest event", lambda: _stored_cursor(process_store) == newest, process=process)
        _wait("its cluster check", lambda: not process.ask("scorer_status")["linking"]["pending"], process=process)
        assert _alerts(process_store) == expected
        status = process.status(fallback={})
        assert status["events_scored"] == reference.scorer.events_scored == newest
        assert status["process"]["running"] and status["process"]["starts"] == 1
        assert _answers(process.ask) == _answers(lambda op, *args: getattr(reference, op)(*args))
        with pytest.raises(ScorerUnavailable):
            process.ask("stop")  # only the admin API's questions are answered
    finally:
        process.stop()
    assert process.proc is not None and process.proc.returncode == 0  # a clean stop on SIGTERM
    with pytest.raises(ScorerUnavailable):
        process.ask("scorer_status")


def test_a_killed_scorer_process_is_started_again_and_scores_no_event_twice(stores: tuple[Store, Store]) -> None:
    _, store = stores
    process = ScorerProcess(ScorerConfig(database_url=store.engine.url.render_as_string(hide_password=False), poll_ms=20))
    process.start()
    try:
        _wait("a first stored step", lambda: _stored_cursor(store) > 0, process=process)
        assert process.proc is not None
        first = process.proc.pid
        os.kill(first, signal.SIGKILL)  # mid-stream, between or inside a step
        process.proc.wait(10)
        with pytest.raises(ScorerUnavailable):  # (the admin API answers 503 meanwhile)
            process.ask("clusters")
        before = len(_alerts(store))
        with store.tx() as db:  # events while it is down: scored by the next one, once
            for i in range(30):
                add_in_tx(db, "sign_in_failed", source="test", at_ms=10**8 + i, account_id="u00001", ip="10.9.9.9")
        newest = _newest(store)
        _wait("the scorer process started again", lambda: process.starts == 2 and process.proc.pid != first, process=process)
        _wait("the newest event scored", lambda: _stored_cursor(store) == newest, process=process)
        status = process.status(fallback={})
        assert status["cursor"] == newest and status["errors"] == 0 and status["process"]["starts"] == 2
    finally:
        process.stop()
    alerts = _alerts(store)
    assert len(alerts) > before and any(a[2] == "u00001" and a[0].startswith("failed-sign-ins") for a in alerts[before:])
    # every stored alert once: none repeated by the restarted scorer (an event scored twice raises its alerts twice)
    repeated = [a for a, n in collections.Counter((a[0], a[2], a[4]) for a in alerts).items() if n > 1]
    assert not repeated and alerts


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_scorers_on_one_stream_store_each_event_s_alerts_once(backend: str, tmp_path: Path) -> None:
    with _urls(backend, tmp_path, 1) as (url,):
        store = _seeded_store(url)
        try:
            _two_scorers(store)
        finally:
            store.engine.dispose()


def _two_scorers(store: Store) -> None:
    one = Monitor(store, None, default_rules(), writes_outbox=False)
    two = Monitor(store, None, default_rules(), writes_outbox=False)
    one._load()
    two._load()
    assert one.step() > 0
    stored = _alerts(store)
    with pytest.raises(CursorMoved):  # read from 0 too: its alerts are those `one` stored
        two.step()
    assert _alerts(store) == stored  # nothing of the refused step was written
    two._reload()
    assert two.cursor == one.cursor and two._unsaved == []
    with store.tx() as db:  # more failed sign-ins: both score them; the one that stores second is refused
        for i in range(30):
            add_in_tx(db, "sign_in_failed", source="test", at_ms=10**8 + i, account_id="u00001", ip="10.9.9.9")
    before = len(_alerts(store))
    assert two.step() == 30 and len(_alerts(store)) > before  # alerts, which `one` would store a second time
    with pytest.raises(CursorMoved):
        one.step()
    assert two.cursor == _stored_cursor(store) == _newest(store)
    alerts = _alerts(store)
    assert len(alerts) == len({(a[0], a[2], a[4]) for a in alerts}), "an alert stored twice"


def test_a_question_that_timed_out_leaves_the_later_ones_answered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A scorer that is slow to answer (stopped here; busy warming a long stream in life) makes its questions
    answer 503 within ASK_TIMEOUT_S, each, however many wait; once it answers again, so do the questions.
    Before: the socket's file object refused every read after one timeout (every question 503 until the
    scorer process restarted, which a running one never is), and each waiting question waited its turn."""
    from ringfence.monitoring import scorer_process

    store = Store.from_url(f"sqlite:///{tmp_path / 'one.sqlite3'}")
    with store.tx() as db:
        for i in range(5):
            add_in_tx(db, "sign_in_failed", source="test", at_ms=10**8 + i, account_id="u00001", ip="10.9.9.9")
    process = ScorerProcess(ScorerConfig(database_url=store.engine.url.render_as_string(hide_password=False), poll_ms=20))
    process.start()
    try:
        _wait("the scorer process's first step", lambda: _stored_cursor(store) == 5, process=process)
        assert process.ask("scorer_status")["cursor"] == 5
        monkeypatch.setattr(scorer_process, "ASK_TIMEOUT_S", 1)
        assert process.proc is not None
        pid = process.proc.pid
        os.kill(pid, signal.SIGSTOP)
        try:  # (every thread stopped: the stop takes effect as each is next scheduled, a niced process on a busy machine)
            _wait("the scorer process stopped", lambda: all(Path(f"/proc/{pid}/task/{t}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
                                                             for t in os.listdir(f"/proc/{pid}/task")), timeout_s=10)
            started = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(3) as pool:
                asked = [pool.submit(process.ask, "scorer_status") for _ in range(3)]
                for future in asked:
                    with pytest.raises(ScorerUnavailable):
                        future.result()
            assert time.monotonic() - started < 2.5, "a question waited for the ones before it to time out"
        finally:
            os.kill(pid, signal.SIGCONT)
        assert process.ask("scorer_status")["cursor"] == 5  # (the late answers to the three skipped)
        assert process.ask("clusters") == []
    finally:
        process.stop()
        store.engine.dispose()


def test_the_engine_process_gone_ends_the_answering_thread_quietly() -> None:
    """The engine process killed with a question asked (its end of the socket closed, the answer unread):
    the scorer process's answering thread ends without a traceback (it printed ConnectionResetError or
    BrokenPipeError into serve's log beside the scorer's clean stop)."""
    from ringfence.monitoring.scorer_process import _answer

    class Answers:
        def scorer_status(self) -> dict[str, Any]:
            return {"cursor": 1}

    ours, theirs = socket.socketpair()
    ours.sendall(b'{"id": 1, "op": "scorer_status", "args": []}\n')
    ours.close()
    _answer(Answers(), theirs)  # (raised BrokenPipeError)
    assert theirs.fileno() == -1  # closed


def test_ctrl_c_is_left_to_the_engine_process(tmp_path: Path) -> None:
    """SIGINT (Ctrl-C at `serve`, sent to its whole process group) does not end the scorer process: the
    engine process stops it with SIGTERM once its outbox's last write is done."""
    store = Store.from_url(f"sqlite:///{tmp_path / 'one.sqlite3'}")
    process = ScorerProcess(ScorerConfig(database_url=store.engine.url.render_as_string(hide_password=False), poll_ms=20))
    process.start()
    try:
        assert process.proc is not None
        _wait("the scorer process ready", lambda: _stored_cursor(store) == 0 and _answered(process))
        os.kill(process.proc.pid, signal.SIGINT)
        with pytest.raises(subprocess.TimeoutExpired):  # (it ended within ~1 s: its stop's wait, one step)
            process.proc.wait(4)
    finally:
        process.stop()
        store.engine.dispose()
    assert process.proc.returncode == 0


def _answered(process: ScorerProcess) -> bool:
    try:
        process.ask("scorer_status")
    except ScorerUnavailable:
        return False
    return True


def test_the_scorer_process_is_given_none_of_the_engine_process_s_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its environment is what Python needs (PATH, PYTHONPATH, the locale): not RINGFENCE_DATABASE_URL with
    its password, nor the other secrets of `serve`'s environment, which it never reads (its configuration
    comes on its stdin) and which /proc/PID/environ showed for as long as it ran. A PGPASSWORD reaches it
    in the URL on its stdin."""
    with pg_database() as url:
        store = Store.from_url(url)
        password = "pw-" + os.urandom(8).hex()  # (trust authentication: any password connects)
        secrets = {"RINGFENCE_DATABASE_URL": url.replace("postgres@", f"postgres:{password}@"),
                   "RINGFENCE_NATS_PASSWORD": "nats-" + password, "RINGFENCE_POR_SECRET": "por-" + password,
                   "RINGFENCE_IDENTITY_SECRET_KEY_HEX": "ab" * 32, "PGPASSWORD": "pg-" + password}
        for name, value in secrets.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("LC_ALL", "C.UTF-8")
        process = ScorerProcess(ScorerConfig(database_url=url, poll_ms=20))
        process.start()
        try:
            assert process.proc is not None
            _wait("the scorer process ready", lambda: _answered(process), process=process)
            environ = Path(f"/proc/{process.proc.pid}/environ").read_bytes()
            seen = dict(entry.split(b"=", 1) for entry in environ.split(b"\0") if entry)
            assert password.encode() not in environ and b"ab" * 32 not in environ
            assert not [name for name in secrets if name.encode() in seen]
            assert seen[b"PATH"] == os.environ["PATH"].encode() and seen[b"LC_ALL"] == b"C.UTF-8"
            assert os.environ.get("PYTHONPATH", "").encode() == seen.get(b"PYTHONPATH", b"")
            cmdline = Path(f"/proc/{process.proc.pid}/cmdline").read_bytes()
            assert password.encode() not in cmdline
        finally:
            process.stop()
            store.engine.dispose()
    assert process.proc.returncode == 0


def test_a_scorer_process_that_stopped_answering_is_killed_and_started_again(tmp_path: Path) -> None:
    """Alive but stuck (`kill -STOP`: every thread stopped, as deadlocked): after `missed_answers` checks
    unanswered in a row it is killed and started again, and /admin/v1/monitoring's `process` counts it.
    Before, `keep_running` looked only at whether it had ended: a stuck scorer stayed stuck. Its warm-up
    (no answer before its first) is not counted."""
    from ringfence.monitoring import scorer_process

    store = Store.from_url(f"sqlite:///{tmp_path / 'one.sqlite3'}")
    with store.tx() as db:
        add_in_tx(db, "sign_in_failed", source="test", at_ms=10**8, account_id="u00001", ip="10.9.9.9")
    process = ScorerProcess(ScorerConfig(database_url=store.engine.url.render_as_string(hide_password=False), poll_ms=20),
                            missed_answers=3, check_every_s=0.2)
    process.start()
    try:
        assert process.proc is not None
        first = process.proc
        os.kill(first.pid, signal.SIGSTOP)  # before its first answer: warming, never killed
        deadline = time.monotonic() + 4
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(scorer_process, "ASK_TIMEOUT_S", 0.2)
            while time.monotonic() < deadline:
                process.keep_running()
                time.sleep(0.05)
            assert first.poll() is None and process.starts == 1 and process.status(fallback={})["process"]["warming"]
            os.kill(first.pid, signal.SIGCONT)
            _wait("its first answer", lambda: _answered(process))
            os.kill(first.pid, signal.SIGSTOP)
            _wait("the stuck scorer process killed and started again", lambda: process.starts == 2, timeout_s=60,
                  process=process)
        assert first.returncode == -signal.SIGKILL
        assert process.proc is not first and process.killed_unanswering == 1
        _wait("the new scorer process answering", lambda: _answered(process), process=process)
        shown = process.status(fallback={})["process"]
        assert shown["restarts"] == 1 and shown["killed_unanswering"] == 1 and shown["running"] and not shown["warming"]
    finally:
        process.stop()
        store.engine.dispose()
