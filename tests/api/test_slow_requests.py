"""Slowloris: a request must arrive whole within a deadline (api/http_wire.py DeadlineHttpProtocol),
against a real `serve --demo` with RINGFENCE_HTTP_REQUEST_TIMEOUT_S=2 (and through a gateway in
tests/api/test_gateways.py).

Before: uvicorn waited for ever for the rest of a request once a byte had arrived, so a client that sent
one header line every second held its connection as long as it liked; these tests then waited their
whole 12 s and failed with the connection still open."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from .conftest import Server

DEADLINE_S = 2.0
GIVE_UP_S = 12.0  # far past the deadline: a loaded machine is slow, but never this slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("slow") / "data", {"RINGFENCE_HTTP_REQUEST_TIMEOUT_S": str(DEADLINE_S)}, chains=False)
    yield srv
    assert srv.stop() == 0, "the server did not shut down cleanly on SIGTERM"


def drip(port: int, head: bytes, drops: list[bytes], every_s: float = 0.5) -> tuple[float, bytes]:
    """Send `head`, then one of `drops` every `every_s` while the server keeps the connection (then
    nothing); return (seconds until the server closed it, what it sent)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=GIVE_UP_S)
    started = time.monotonic()
    got = b""
    try:
        if head:
            sock.sendall(head)
        sock.settimeout(every_s)
        pending = list(drops)
        while time.monotonic() - started < GIVE_UP_S:
            try:
                chunk = sock.recv(4096)
            except TimeoutError:
                if pending:
                    try:
                        sock.sendall(pending.pop(0))
                    except OSError:
                        break
                continue
            except ConnectionResetError:
                break
            if not chunk:
                break
            got += chunk
        return time.monotonic() - started, got
    finally:
        sock.close()


def test_headers_sent_a_line_at_a_time_get_408_at_the_deadline(server):
    lines = [f"X-Slow-{i}: {i}\r\n".encode() for i in range(100)]
    took, got = drip(server.port, b"GET /api/v3/ping HTTP/1.1\r\nHost: x\r\n", lines)
    print(f"closed after {took:.2f} s: {got!r}")
    assert got.startswith(b"HTTP/1.1 408 "), got
    assert b"connection: close" in got.lower()
    assert DEADLINE_S - 0.2 <= took < GIVE_UP_S, took


def test_a_body_that_never_ends_is_dropped_at_the_deadline(server):
    head = b"POST /api/v3/order HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\n"
    took, got = drip(server.port, head, [b"a=1&" for _ in range(100)])
    print(f"closed after {took:.2f} s: {got!r}")
    assert DEADLINE_S - 0.2 <= took < GIVE_UP_S, took
    assert not got.startswith(b"HTTP/1.1 2"), got


def test_a_connection_that_sends_nothing_is_closed_without_a_word(server):
    took, got = drip(server.port, b"", [])
    assert got == b"", got
    assert DEADLINE_S - 0.2 <= took < GIVE_UP_S, took


def test_a_client_that_sends_whole_requests_keeps_its_connection_past_the_deadline(server):
    """Requests every 0.5 s for twice the deadline on one keep-alive connection: all answered, and the
    connection is the same one throughout (the deadline is per request, not per connection)."""
    with httpx.Client(base_url=server.base, timeout=10) as client:
        peers = set()
        started = time.monotonic()
        while time.monotonic() - started < 2 * DEADLINE_S:
            with client.stream("GET", "/api/v3/ping") as r:
                assert r.status_code == 200
                peers.add(r.extensions["network_stream"].get_extra_info("client_addr"))
                r.read()
            time.sleep(0.5)
    assert len(peers) == 1, peers


def test_a_websocket_outlives_the_deadline(server):
    """The upgrade leaves the HTTP protocol: a quiet market-data WebSocket stays open past the deadline."""
    from websockets.sync.client import connect

    with connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
        time.sleep(DEADLINE_S + 1.5)
        ws.send('{"method": "LIST_SUBSCRIPTIONS", "id": 1}')
        assert json.loads(ws.recv(timeout=10))["id"] == 1
