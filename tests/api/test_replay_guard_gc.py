"""What a signed order leaves behind for the cyclic collector in the serving process (issue 18, item 6).

A young collection holds the GIL for its whole length, and its length is the young objects it
scans: in `serve --demo --gateways 1` at 1,000 signed orders/s each one took 11-13 ms of CPU, and the
young generation then held ~16,000 tuples and ~4,000 `OrderRecord`s (bench/profile_api.py
--gc-census): two tuples per order kept by the replay guard for its window (a minute), and the
order history's record of every order. Now neither is a tracked object:

* `ReplayGuard` keeps bytes keys and int values (no tuples), with exactly the old guard's answers;
* `OrderRecord` is a `gc=False` struct, with the same fields and members.
"""

from __future__ import annotations

import gc
import hashlib
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

from hypothesis import example, given, settings
from hypothesis import strategies as st

from ringfence.api.binance_errors import BinanceError
from ringfence.api.gateway import MAX_RECV_WINDOW_MS, ReplayGuard
from ringfence.api.orders import OrderHistory, OrderRecord
from ringfence.trading.commands import OrderAccepted, OrderExpired


@contextmanager
def _young_growth() -> Iterator[list[int]]:
    """The young generation's count of tracked objects alive that the body added (collector paused)."""
    out: list[int] = []
    was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        before = gc.get_count()[0]
        yield out
        out.append(gc.get_count()[0] - before)
    finally:
        if was:
            gc.enable()


def test_the_replay_guard_keeps_no_tracked_object_per_request() -> None:
    guard = ReplayGuard(started_ms=0)
    payloads = [f"symbol=BTCUSDT&side=BUY&timestamp={i}".encode() for i in range(5_000)]
    with _young_growth() as grown:
        for i, payload in enumerate(payloads):
            guard.check_and_remember(3, payload, 1_000_000 + i, 1_000_000 + i)
    assert len(guard._seen) == 5_000
    assert grown[0] < 50, grown  # the tuple guard: 10,000 (a key and a value tuple per request)


def test_an_order_record_is_not_tracked_and_the_history_keeps_none() -> None:
    history = OrderHistory()
    events = [[OrderAccepted("BTCUSDT", i, f"u{i % 4}", f"c{i}", "BUY", "LIMIT", "IOC", 100, 1, 0, 0, "NONE", 100),
               OrderExpired("BTCUSDT", i, f"u{i % 4}", "BUY", 100, 1, False, "IOC", 100)] for i in range(1, 3_001)]
    with _young_growth() as grown:
        for batch in events:
            history.feed(1_700_000_000_000_000_000, batch)
    assert len(history.orders) == 3_000
    assert not any(gc.is_tracked(r) for r in history.orders.values())
    assert grown[0] < 100, grown  # a tracked OrderRecord: 3,000 or more
    record = history.orders[7]
    assert isinstance(record, OrderRecord) and record.status == "EXPIRED" and record.owner == "u3"


class _TupleGuard:
    """The replay guard as it was (tuples, d81f42b): the reference for its answers. One line differs,
    marked: an entry whose window passed now raises `not_before_ms` too (the stale-`now` replay,
    tested on its own below)."""

    def __init__(self, max_entries: int, started_ms: int) -> None:
        self._seen: OrderedDict[tuple[int, bytes], tuple[int, int]] = OrderedDict()
        self.max_entries = max_entries
        self.not_before_ms = started_ms

    def check_and_remember(self, key_id: int, payload: bytes, now_ms: int, timestamp_ms: int,
                           window_ms: int = MAX_RECV_WINDOW_MS + 2_000) -> None:
        key = (key_id, hashlib.sha256(payload).digest())
        seen = self._seen
        while seen:
            expires, signed_ms = next(iter(seen.values()))
            if expires > now_ms and len(seen) < self.max_entries:
                break
            self.not_before_ms = max(self.not_before_ms, signed_ms + 1)  # was: only `if expires > now_ms:`
            seen.popitem(last=False)
        if timestamp_ms < self.not_before_ms:
            raise BinanceError(-1021, "before")
        if key in seen:
            raise BinanceError(-1022, "replay")
        seen[key] = (now_ms + window_ms, timestamp_ms)


_requests = st.lists(st.tuples(st.integers(-3, 3), st.sampled_from([b"a", b"b", b"c", b"", b"3:x"]),
                               st.integers(0, 400), st.integers(-50, 400), st.integers(1, 300)), max_size=60)


@settings(max_examples=300, deadline=None)
@given(requests=_requests, max_entries=st.integers(1, 8), started=st.integers(-20, 100))
def test_the_guard_answers_as_the_tuple_guard_did(requests: list[tuple[int, bytes, int, int, int]], max_entries: int,
                                                  started: int) -> None:
    new, old = ReplayGuard(max_entries, started_ms=started), _TupleGuard(max_entries, started)
    now = 0
    for key_id, payload, step, timestamp, window in requests:
        now += step // 4  # time moves forward, sometimes not at all
        answers = []
        for guard in (new, old):
            try:
                guard.check_and_remember(key_id, payload, now, timestamp, window)
                answers.append(0)
            except BinanceError as err:
                answers.append(err.code)
        assert answers[0] == answers[1], (key_id, payload, now, timestamp, answers)
        assert new.not_before_ms == old.not_before_ms
        assert len(new._seen) == len(old._seen) == len(new._signed)


def test_a_replay_is_refused_and_a_new_key_id_is_not_a_replay() -> None:
    guard = ReplayGuard(started_ms=0)
    now = time.time_ns() // 1_000_000
    guard.check_and_remember(1, b"x", now, now)
    guard.check_and_remember(12, b"x", now, now)  # another key's request with the same bytes
    try:
        guard.check_and_remember(1, b"x", now + 1, now)
    except BinanceError as err:
        assert err.code == -1022
    else:
        raise AssertionError("a replay was accepted")


# A call's `now_ms` can be older than a call before it: the WebSocket API reads the clock, checks the
# timestamp, then awaits the key check in a thread; the REST gate does the same on a cache miss; a
# wall clock can be stepped back. An entry dropped (its window passed) by the later clock was then
# forgotten while a replay of it still passed its own (older) window check: the replay ran again.
_calls = st.lists(st.tuples(st.sampled_from([b"x", b"y", b"z"]), st.integers(0, 130_000), st.integers(-1_000, MAX_RECV_WINDOW_MS)),
                  max_size=12)


@settings(max_examples=400, deadline=None)
@given(calls=_calls)
@example(calls=[(b"x", 1_000, -1_000), (b"y", 64_000, 0), (b"x", 61_000, 59_000)])  # found by the review of f7ae09c
def test_a_request_runs_once_whatever_order_the_clock_readings_come_in(calls: list[tuple[bytes, int, int]]) -> None:
    guard = ReplayGuard(started_ms=0)
    ran: set[tuple[bytes, int]] = set()
    for payload, now, age in calls:
        timestamp = now - age  # inside recvWindow at this call's own clock reading (check_timestamp passed)
        try:
            guard.check_and_remember(5, payload + b"&timestamp=%d" % timestamp, now, timestamp)
        except BinanceError as err:
            assert err.code in (-1021, -1022)
            continue
        assert (payload, timestamp) not in ran, f"a replay of {payload!r} signed at {timestamp} ran again at {now}"
        ran.add((payload, timestamp))


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(st.tuples(st.integers(-999, 70_000), st.integers(-1_000, MAX_RECV_WINDOW_MS)), max_size=40))
def test_fresh_requests_are_never_refused(steps: list[tuple[int, int]]) -> None:
    """What the rule costs honest clients: nothing, while each call's clock reading is less than a
    second behind the latest one (an entry leaves a minute and 2 s after it was accepted; a
    request's timestamp may be at most a minute old or a second ahead)."""
    guard = ReplayGuard(started_ms=0)
    latest = 100_000  # every timestamp after the server's start
    for i, (delta, age) in enumerate(steps):
        now = latest + delta
        latest = max(latest, now)
        guard.check_and_remember(5, b"order=%d" % i, now, now - age)
