"""The HTTP transport at the edge, with raw sockets against a real `serve --demo` process: a
10 MB chunked body without Content-Length gets one 413 and nothing else (issue #13 item 4), and a
client that hangs up mid-body is logged as a client disconnect, not a 500 (item 8).

Reproduce by hand: `ringfence serve --demo --data /tmp/rf --port 8000`, then
`head -c 10000000 /dev/zero | curl -sv -H 'Transfer-Encoding: chunked' --data-binary @- localhost:8000/api/v3/order`.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import httpx

#: the shared demo server starts without its chains: these tests use none (conftest.NO_CHAINS)
SERVER_CHAINS = False


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def log_events(server) -> list[dict]:
    events = []
    for line in server.log_text().splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except ValueError:
                pass
    return events


def exchange_raw(port: int, head: bytes, chunks, *, hang_up: bool = False) -> bytes:
    """Send `head`, then each chunk while reading whatever the server answers meanwhile."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    received = bytearray()

    def reader() -> None:
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    return
                received.extend(data)
        except OSError:
            return

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        sock.sendall(head)
        for chunk in chunks:
            sock.sendall(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered and closed before the whole body went out: that is the point
    if hang_up:
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        thread.join(5)
        return bytes(received)
    thread.join(20)
    sock.close()
    return bytes(received)


def test_ten_megabytes_chunked_without_length_get_one_413(server):
    before_kib = rss_kib(server.proc.pid)
    head = (
        b"POST /api/v3/order HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        b"Transfer-Encoding: chunked\r\nX-MBX-APIKEY: " + server.keys["alice"]["api_key"].encode() + b"\r\n\r\n"
    )
    piece = b"a" * 65536
    chunks = [b"%x\r\n" % len(piece) + piece + b"\r\n" for _ in range(160)] + [b"0\r\n\r\n"]  # 10 MiB
    answer = exchange_raw(server.port, head, chunks)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:300]
    assert answer.count(b"HTTP/1.1 ") == 1, answer[:600]  # one response, never a second start
    body = answer.split(b"\r\n\r\n", 1)[1]
    assert json.loads(body)["code"] == -1100 and b"too large" in body
    assert rss_kib(server.proc.pid) - before_kib < 8 * 1024, "the server buffered the body"
    assert httpx.get(server.base + "/readyz").status_code == 200
    log = server.log_text()
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log[-3000:]
    assert not [e for e in log_events(server) if e.get("status") == 500], log[-3000:]


def test_declared_and_streamed_bodies_at_the_limit(server):
    # exactly at the limit is read and answered by the app (its 512-character parameter is refused
    # as -1100 before any key check); one byte over is 413 before the app runs
    limit = 64 * 1024
    for size, status in ((limit, 400), (limit + 1, 413)):
        head = (b"POST /api/v3/order/test HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        body = b"x=" + b"a" * (size - 2)
        answer = exchange_raw(server.port, head, [b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"])
        assert answer.startswith(b"HTTP/1.1 %d " % status), (size, answer[:300])


def test_a_client_that_hangs_up_mid_body_is_a_client_disconnect(server):
    path = "/api/v3/order"
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: 1000\r\nX-MBX-APIKEY: {server.keys['bob']['api_key']}\r\n\r\n"
    ).encode()
    answer = exchange_raw(server.port, head, [b"symbol=BTCUSDT&side=BUY&" + b"a" * 76], hang_up=True)
    assert answer == b""  # nobody is left to answer
    deadline = time.time() + 10
    while time.time() < deadline:
        gone = [e for e in log_events(server) if e.get("event") == "http.client_disconnected" and e.get("path") == path]
        if gone:
            break
        time.sleep(0.1)
    assert gone and gone[-1]["method"] == "POST" and gone[-1]["body_bytes_received"] == 100, server.log_text()[-3000:]
    log = server.log_text()
    assert not [e for e in log_events(server) if e.get("status") == 500], log[-3000:]
    assert "Traceback" not in log and "ClientDisconnect" not in log, log[-3000:]
    assert httpx.get(server.base + "/readyz").status_code == 200
