"""Password hashing never blocks the event loop of `ringfence serve` (identity/web.py PasswordWork).

Sign-ins cost an argon2id computation each (64 MiB, t=3, p=4). Run on the event loop, 40 at once from
40 addresses stalled every other request of the process, `GET /api/v3/ping` included, for 18 s. Now they
run in two worker threads with a bounded queue; past the queue a sign-in is refused at once: 503, with
Retry-After and the sign-in form saying the server is busy.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from .conftest import ARGON2_DEFAULT_COST, Server

THREADS, WAITING_MAX = 2, 18  # at most 20 sign-ins running or waiting at once in this server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("serve") / "data",
                 env={"RINGFENCE_IDENTITY_PASSWORD_THREADS": str(THREADS),
                      "RINGFENCE_IDENTITY_PASSWORD_WAITING_MAX": str(WAITING_MAX),
                      **ARGON2_DEFAULT_COST}, chains=False)  # the cost this test is about: production's, not the suite's least
    yield srv
    assert srv.stop() == 0, "the server did not shut down cleanly on SIGTERM"


async def sign_ins_while_pinging(base: str, n: int, subnet: int) -> tuple[list[httpx.Response], list[float]]:
    """`n` sign-ins at once with wrong passwords, each from its own address (127.0.SUBNET.i: the per-IP limit
    is not what answers), while one client pings; the answers, and every ping's time in seconds.

    The sign-in clients are built before the pinging starts: building one loads the CA bundle (~20 ms of
    this event loop's time, several times that on a loaded machine), and built inside the run they held
    up the pings. Each ping is on a new connection (`Connection: close`): in CI a ping on a kept-alive
    connection once met "Server disconnected without sending a response", the server's keep-alive close
    (5 s idle) crossing the next ping after this loop had been held up that long."""
    done = asyncio.Event()
    clients = [httpx.AsyncClient(base_url=base, transport=httpx.AsyncHTTPTransport(local_address=f"127.0.{subnet}.{i + 1}"),
                                 timeout=120) for i in range(n)]

    async def sign_in(i: int) -> httpx.Response:
        async with clients[i] as c:
            try:
                return await c.post("/login", data={"email": f"nobody{subnet}.{i}@example.com", "password": "not the password 1"})
            except httpx.HTTPError as exc:
                raise AssertionError(f"sign-in from 127.0.{subnet}.{i + 1} after {time.perf_counter() - start:.2f} s: "
                                     f"{exc!r}") from exc

    async def ping() -> list[float]:
        took: list[float] = []
        async with httpx.AsyncClient(base_url=base, timeout=120, headers={"Connection": "close"}) as c:
            assert (await c.get("/api/v3/ping")).status_code == 200  # the server answers before the sign-ins start
            while not done.is_set():
                t = time.perf_counter()  # float-ok: seconds
                assert (await c.get("/api/v3/ping")).status_code == 200
                took.append(time.perf_counter() - t)
                await asyncio.sleep(0.02)
        return took

    start = time.perf_counter()  # float-ok: seconds
    pinging = asyncio.create_task(ping())
    await asyncio.sleep(0.1)
    answers = await asyncio.gather(*(sign_in(i) for i in range(n)))
    done.set()
    return list(answers), await pinging


def test_sign_ins_do_not_stall_other_requests(server):
    n = THREADS + WAITING_MAX  # all admitted: none refused
    answers, pings = asyncio.run(sign_ins_while_pinging(server.base, n, subnet=4))
    assert [r.status_code for r in answers] == [401] * n, [(r.status_code, r.text[-300:]) for r in answers]
    assert all("the e-mail or password is incorrect" in r.text for r in answers)
    # on the loop the sign-ins ran one after another and a ping waited for all of them (seconds);
    # in threads it waits for none (milliseconds; 1 s leaves room for a loaded 2-core machine)
    assert len(pings) >= 5 and max(pings) < 1.0, f"slowest ping {max(pings):.3f} s of {len(pings)}"


def test_past_the_queue_a_sign_in_is_refused_at_once_with_503(server):
    n = 3 * (THREADS + WAITING_MAX)
    answers, _pings = asyncio.run(sign_ins_while_pinging(server.base, n, subnet=5))  # the pings: the first test's
    codes = [r.status_code for r in answers]
    assert set(codes) == {401, 503}, codes
    # all that fit ran (the queue is full at the start; more are admitted as it drains), the others were refused
    assert codes.count(401) >= THREADS + WAITING_MAX, codes
    for refused in (r for r in answers if r.status_code == 503):
        assert refused.headers["retry-after"] == "1"
        assert "the server is busy; try again in a moment" in refused.text
        assert '<form' in refused.text and 'action="/login"' in refused.text  # the sign-in form again
    # the queue drained: the next sign-in is answered, not refused
    again = httpx.post(server.base + "/login", data={"email": "nobody@example.com", "password": "not the password 1"})
    assert again.status_code == 401, again.text[-300:]
