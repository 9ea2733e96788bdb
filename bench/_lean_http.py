"""A lean HTTP/1.1 load generator for bench/api.py: raw asyncio protocols on keep-alive connections.

Why: the bench measures the server, so the client must cost little of the 2 cores it shares with it.
aiohttp's client spent 170-450 us of CPU per request here (bench/results/api.jsonl,
`client_cpu_us_per_request`), a quarter to a half of what the server spends on a ping. This one
writes each request as one pre-formatted byte string (orders: the query string and its HMAC-SHA256
are built just before the send, so `timestamp` is always fresh within `recvWindow`), and reads a
response by its Content-Length, nothing more: no cookie jar, no header objects, no redirects. It is a
load generator, not an HTTP client: correctness of the API is tested with httpx and ccxt
(tests/api), and a response it cannot frame (no Content-Length, chunked) stops the run loudly.

Two ways of loading:
* closed loop: `connections` sockets, each sends its next request when the previous answer is in
  (the throughput figure: capacity; latency there is Little's law, connections / throughput);
* open loop: requests scheduled at a fixed `rate_per_s` whatever the server does, each sent on an
  idle connection of the pool (waiting for one if all are busy), latency counted from the scheduled
  send time, so a stalled server shows in the figure instead of slowing the sender
  (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import random
import time
from typing import Callable

ORDER_PATH = "/api/v3/order"


class _Conn(asyncio.Protocol):
    """One keep-alive connection with at most one request outstanding."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[int] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"server closed the connection: {exc}"))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.waiter is None or self.waiter.done():
            return
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buf[:end])
        length = -1
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
                break
        if length < 0:
            self.waiter.set_exception(RuntimeError(f"lean client: a response without Content-Length: {head[:300]!r}"))
            return
        if len(self.buf) < end + 4 + length:
            return
        del self.buf[: end + 4 + length]
        self.waiter.set_result(int(head[9:12]))

    def request(self, data: bytes) -> asyncio.Future[int]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self.waiter


def request_maker(kind: str, host: str, key: dict, seed: int) -> Callable[[], bytes]:
    """A function returning the next request's bytes: `GET /api/v3/ping`, or the bench's signed IOC
    order (never crosses; a fresh timestamp and client order id each time; HMAC-SHA256 over the body)."""
    if kind == "ping":
        ping = f"GET /api/v3/ping HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
        return lambda: ping
    rng = random.Random(seed)
    secret = key["api_secret"].encode()
    head = f"POST {ORDER_PATH} HTTP/1.1\r\nHost: {host}\r\nX-MBX-APIKEY: {key['api_key']}\r\n" \
           "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: "

    def order() -> bytes:
        buy = rng.random() < 0.5  # float-ok: coin flip
        body = (f"symbol=BTCUSDT&side={'BUY' if buy else 'SELL'}&type=LIMIT&timeInForce=IOC&quantity=0.0010"
                f"&newClientOrderId=b{rng.getrandbits(64):x}&price={'60000.00' if buy else '62000.00'}"  # never crosses
                f"&timestamp={time.time_ns() // 1_000_000}&recvWindow=60000")
        body += "&signature=" + hmac.new(secret, body.encode(), hashlib.sha256).hexdigest()
        return f"{head}{len(body)}\r\n\r\n{body}".encode()

    return order


async def _connect(host: str, port: int, n: int) -> list[_Conn]:
    loop = asyncio.get_running_loop()
    conns = []
    for _ in range(n):
        _, proto = await loop.create_connection(_Conn, host, port)
        conns.append(proto)
    return conns


async def closed_loop(host: str, port: int, make: Callable[[], bytes], seconds: float, connections: int,  # float-ok
                      out: list) -> None:
    """`connections` connections, one request outstanding on each, for `seconds`: (ns, status) to `out`."""
    conns = await _connect(host, port, connections)
    stop = time.perf_counter() + seconds

    async def one(conn: _Conn) -> None:
        while time.perf_counter() < stop:
            started = time.perf_counter_ns()
            status = await conn.request(make())
            out.append((time.perf_counter_ns() - started, status))

    await asyncio.gather(*(one(c) for c in conns))
    for c in conns:
        if c.transport is not None:
            c.transport.close()


async def open_loop(host: str, port: int, make: Callable[[], bytes], seconds: float, connections: int,  # float-ok
                    rate_per_s: float, out: list) -> dict:  # float-ok: offered rate
    """Requests at `rate_per_s` for `seconds` over a pool of `connections`; latency from each request's
    scheduled time to its answer. Returns how late the sender itself got (its own lag, for honesty)."""
    conns = await _connect(host, port, connections)
    idle: asyncio.Queue[_Conn] = asyncio.Queue()
    for c in conns:
        idle.put_nowait(c)
    interval_ns = int(1e9 / rate_per_s)
    total = int(seconds * rate_per_s)
    start = time.perf_counter_ns() + 50_000_000
    pending: set[asyncio.Task] = set()
    waited_for_connection = 0
    max_send_lag_ns = 0

    async def send(conn: _Conn, scheduled: int) -> None:
        status = await conn.request(make())
        out.append((time.perf_counter_ns() - scheduled, status))
        idle.put_nowait(conn)

    for i in range(total):
        scheduled = start + i * interval_ns
        delay = scheduled - time.perf_counter_ns()
        if delay > 0:
            await asyncio.sleep(delay / 1e9)
        if idle.empty():
            waited_for_connection += 1
        conn = await idle.get()
        max_send_lag_ns = max(max_send_lag_ns, time.perf_counter_ns() - scheduled)
        task = asyncio.ensure_future(send(conn, scheduled))
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.gather(*pending)
    for c in conns:
        if c.transport is not None:
            c.transport.close()
    return {"requests_scheduled": total, "waited_for_a_connection": waited_for_connection,
            "max_send_lag_us": max_send_lag_ns // 1000}
