"""`PasswordWork` (identity/web.py): password hashing runs in a bounded set of worker threads, with a
bounded queue in front; past it a request is refused at once with `Busy` and nothing runs."""

from __future__ import annotations

import threading

import anyio
import pytest

from ringfence.errors import Busy
from ringfence.identity.web import _PAGE_LOCALE, PasswordWork


def test_runs_in_a_worker_thread_with_the_request_context():
    work = PasswordWork(threads=2, waiting_max=2)

    def operation(a: int, *, b: int) -> tuple[int, str, bool]:
        return a + b, _PAGE_LOCALE.get(), threading.current_thread() is threading.main_thread()

    async def request() -> tuple[int, str, bool]:
        _PAGE_LOCALE.set("de")  # as the page_locale dependency sets it for the request
        return await work(operation, 40, b=2)

    assert anyio.run(request) == (42, "de", False)
    assert work.admitted == 0


def test_at_most_threads_run_and_past_the_queue_the_answer_is_busy_at_once():
    work = PasswordWork(threads=2, waiting_max=3)
    release = threading.Event()
    lock = threading.Lock()
    running = peak = ran = 0

    def operation() -> None:
        nonlocal running, peak, ran
        with lock:
            running += 1
            peak = max(peak, running)
        release.wait(30)
        with lock:
            running -= 1
            ran += 1

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            for _ in range(5):  # 2 run, 3 wait
                tg.start_soon(work, operation)
            with anyio.fail_after(10):
                while work.admitted < 5 or running < 2:
                    await anyio.sleep(0.01)
            for _ in range(3):  # the sixth and later: refused before anything runs
                with pytest.raises(Busy) as refused:
                    await work(operation)
                assert refused.value.http_status == 503 and refused.value.details == {"retry_after_s": 1}
            assert work.admitted == 5
            release.set()
        assert (peak, ran, work.admitted) == (2, 5, 0)
        await work(operation)  # the queue drained: admitted again
        assert ran == 6

    anyio.run(main)


def test_a_request_cancelled_while_its_operation_runs_waits_for_it():
    """The transaction inside must end whole (commit or roll back), never be left half-run by a client
    that went away; one cancelled while it waits for a thread never starts."""
    work = PasswordWork(threads=1, waiting_max=1)
    started = threading.Event()
    release = threading.Event()
    done: list[str] = []

    def operation(name: str) -> None:
        done.append(name + " started")
        started.set()
        release.wait(30)
        done.append(name + " finished")

    async def main() -> None:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(work, operation, "first")
                tg.start_soon(work, operation, "second")  # waits for the one thread
                await anyio.to_thread.run_sync(started.wait, 10)
                scope.cancel()
                threading.Timer(0.2, release.set).start()
        assert done == ["first started", "first finished"] and work.admitted == 0

    anyio.run(main)
