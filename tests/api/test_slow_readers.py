"""Slow readers and connection floods (api/http_wire.py DeadlineHttpProtocol), against a real
`serve --demo` with RINGFENCE_HTTP_WRITE_TIMEOUT_S=2, RINGFENCE_HTTP_MAX_CONNECTIONS=40 and
RINGFENCE_HTTP_MAX_CONNECTIONS_PER_IP=12 (and through gateways in tests/api/test_gateways.py).

Before: a client that pipelined requests for big responses and never read one kept its connection,
the kernel's buffers and the response uvicorn was waiting to write for ever (the first test waited its
whole 20 s and failed with the connection still established), and connections were not bounded at all
(the over-the-limit tests got 200s). Reproduce by hand: `RINGFENCE_HTTP_WRITE_TIMEOUT_S=2 ringfence
serve --demo`, then run `slow_reader` below against it."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import threading
import time

import httpx
import pytest

from ringfence.api import http_wire
from ringfence.settings import Settings

from .conftest import Server

WRITE_TIMEOUT_S = 2.0
MAX_CONNECTIONS = 40
PER_IP = 12
GIVE_UP_S = 20.0  # far past the deadline: a loaded machine is slow, but never this slow
TCP_ESTABLISHED = 1


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("slowread") / "data", {
        "RINGFENCE_HTTP_WRITE_TIMEOUT_S": str(WRITE_TIMEOUT_S), "RINGFENCE_HTTP_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
        "RINGFENCE_HTTP_MAX_CONNECTIONS_PER_IP": str(PER_IP)}, chains=False)
    yield srv
    assert srv.stop() == 0, "the server did not shut down cleanly on SIGTERM"


def tcp_state(sock: socket.socket) -> int:
    """The kernel's TCP state of `sock` (Linux TCP_INFO's first byte), read without reading the socket."""
    return struct.unpack("B", sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)[:1])[0]


def slow_reader(port: int, path: str, requests: int, source: str = "127.0.0.1", rcvbuf: int | None = 4096) -> socket.socket:
    """A connection that pipelines `requests` GETs of `path` and reads nothing (a small receive buffer
    by default, so that the server's buffers fill soon)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode() * requests)
    return sock


def test_a_client_that_never_reads_is_dropped_at_the_write_deadline_while_others_are_served(server):
    size = len(httpx.get(server.base + "/openapi.json", timeout=10).content)
    requests = max(50, 16 * 1024 * 1024 // size)  # far more than the kernel's buffers hold
    answered: list[float] = []  # float-ok: seconds each request of the normal client took
    failures: list[str] = []
    stop = threading.Event()

    def normal_client() -> None:
        with httpx.Client(base_url=server.base, timeout=10, transport=httpx.HTTPTransport(local_address="127.0.0.3")) as c:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    r = c.get("/api/v3/depth", params={"symbol": "BTCUSDT", "limit": 5})
                    if r.status_code != 200:
                        failures.append(f"{r.status_code} {r.text[:80]}")
                except httpx.HTTPError as err:
                    failures.append(repr(err))
                answered.append(time.monotonic() - started)
                time.sleep(0.1)

    worker = threading.Thread(target=normal_client)
    worker.start()
    sock = slow_reader(server.port, "/openapi.json", requests, source="127.0.0.2")
    started = time.monotonic()
    try:
        while tcp_state(sock) == TCP_ESTABLISHED and time.monotonic() - started < GIVE_UP_S:
            time.sleep(0.1)
        took = time.monotonic() - started
        state = tcp_state(sock)
    finally:
        sock.close()
        time.sleep(0.5)
        stop.set()
        worker.join()
    print(f"{requests} pipelined requests of {size} bytes; dropped after {took:.2f} s (state {state}); "
          f"normal client: {len(answered)} requests, slowest {max(answered):.2f} s")
    assert state != TCP_ESTABLISHED, f"still connected after {GIVE_UP_S} s: the slow reader was never dropped"
    assert WRITE_TIMEOUT_S - 0.2 <= took < GIVE_UP_S, took
    assert not failures, failures
    assert len(answered) >= took / 2, answered  # served all along, about every 0.1 s plus the request
    assert "RINGFENCE_HTTP_WRITE_TIMEOUT_S" in server.log_text()  # one line in the log, naming the setting
    assert "openapi" not in server.log_text().split("RINGFENCE_HTTP_WRITE_TIMEOUT_S")[0].splitlines()[-1]


def test_a_client_that_reads_slowly_but_steadily_keeps_its_connection(server):
    """16 KiB every 0.1 s is slow (paused most of the time) but far more than MIN_PROGRESS_BYTES per deadline."""
    sock = slow_reader(server.port, "/openapi.json", 40, source="127.0.0.4", rcvbuf=None)
    got = 0
    started = time.monotonic()
    try:
        sock.settimeout(5)
        while time.monotonic() - started < 3 * WRITE_TIMEOUT_S:
            chunk = sock.recv(16384)
            assert chunk, f"closed by the server after {time.monotonic() - started:.2f} s and {got} bytes"
            got += len(chunk)
            time.sleep(0.1)
    finally:
        sock.close()


def test_a_client_that_trickles_is_dropped_too(server):
    """Reading a little now and then (1 KiB a second, less than MIN_PROGRESS_BYTES per deadline) does not
    keep a connection: the server resets it within a couple of deadlines."""
    sock = slow_reader(server.port, "/openapi.json", 40, source="127.0.0.5")
    started = time.monotonic()
    try:
        sock.settimeout(5)
        with pytest.raises(ConnectionResetError):
            while time.monotonic() - started < GIVE_UP_S:
                if not sock.recv(1024):
                    break
                time.sleep(1.0)
            pytest.fail(f"not reset after {time.monotonic() - started:.2f} s")
    finally:
        sock.close()
    assert time.monotonic() - started >= WRITE_TIMEOUT_S - 0.2


def test_connections_over_the_limits_are_refused_and_the_server_stays_healthy(server):
    """WebSockets (which stay open, unlike an idle keep-alive connection) fill one address's share, then
    the process's: the next connection gets a clear 503, those accepted before are still served, and
    once they close the server is ready and serving again."""
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    url = f"ws://127.0.0.1:{server.port}/ws"
    request = '{"method": "LIST_SUBSCRIPTIONS", "id": 1}'
    with contextlib.ExitStack() as stack:
        held = [stack.enter_context(connect(url, open_timeout=10, source_address=("127.0.0.10", 0))) for _ in range(PER_IP)]
        with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.10"), timeout=10) as extra:
            r = extra.get(server.base + "/api/v3/ping")
        assert r.status_code == 503 and r.text == "too many connections from this address", (r.status_code, r.text)
        assert r.headers["connection"] == "close" and r.headers["retry-after"] == "1"
        # from other addresses, up to the process's limit (the server's own connections count too)
        for i in range(MAX_CONNECTIONS):
            try:
                held.append(stack.enter_context(connect(url, open_timeout=10, source_address=(f"127.0.1.{i // PER_IP + 1}", 0))))
            except InvalidStatus as refused:
                assert refused.response.status_code == 503
                assert refused.response.body == b"too many connections", refused.response.body
                break
        else:
            pytest.fail(f"{len(held)} connections open and none refused")
        assert len(held) <= MAX_CONNECTIONS, len(held)  # exactly the limit, less any other connection still open
        with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.40"), timeout=10) as extra:
            r = extra.get(server.base + "/readyz")
        assert r.status_code == 503 and r.text == "too many connections", (r.status_code, r.text)
        for ws in held:  # the connections accepted before the limit are still served
            ws.send(request)
            assert json.loads(ws.recv(timeout=10))["id"] == 1
    time.sleep(0.5)
    assert httpx.get(server.base + "/readyz", timeout=10).status_code == 200
    assert httpx.get(server.base + "/api/v3/ping", timeout=10).status_code == 200
    assert "too many connections" in server.log_text()


def test_settings_and_http_wire_agree_and_bad_values_name_the_variable(monkeypatch):
    s = Settings()
    assert (s.http_request_timeout_s, s.http_write_timeout_s, s.http_max_connections_per_ip) == (
        http_wire.REQUEST_READ_TIMEOUT_S, http_wire.WRITE_TIMEOUT_S, http_wire.MAX_CONNECTIONS_PER_IP)
    assert s.http_max_connections == http_wire.MAX_CONNECTIONS
    for name, bad in (("RINGFENCE_HTTP_WRITE_TIMEOUT_S", "0"), ("RINGFENCE_HTTP_WRITE_TIMEOUT_S", "soon"),
                      ("RINGFENCE_HTTP_MAX_CONNECTIONS", "0"), ("RINGFENCE_HTTP_MAX_CONNECTIONS", "1.5"),
                      ("RINGFENCE_HTTP_MAX_CONNECTIONS_PER_IP", "-1")):
        monkeypatch.setenv(name, bad)
        with pytest.raises(ValueError, match=name):
            http_wire.check_settings()
        monkeypatch.delenv(name)
    monkeypatch.setenv("RINGFENCE_HTTP_MAX_CONNECTIONS_PER_IP", "0")
    assert http_wire.check_settings()["max_connections_per_ip"] == 0


def test_a_websocket_holds_its_peer_slot_until_it_closes(server):
    """A WebSocket counts against its address's connections (the slot moves from the HTTP protocol to
    ws_wire.py at the upgrade) and gives it back when it closes: after PER_IP closed, PER_IP open again."""
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    url = f"ws://127.0.0.1:{server.port}/ws"
    for _ in range(2):
        with contextlib.ExitStack() as stack:
            for _ in range(PER_IP):
                stack.enter_context(connect(url, open_timeout=10, source_address=("127.0.0.30", 0)))
            with pytest.raises(InvalidStatus) as refused:
                connect(url, open_timeout=10, source_address=("127.0.0.30", 0))
            assert refused.value.response.status_code == 503
            assert refused.value.response.body == b"too many connections from this address"
        time.sleep(0.5)


def test_serve_refuses_a_bad_setting_by_name(tmp_path):
    """The example in docs/api.md: a bad value stops `serve` before it starts anything."""
    import subprocess
    import sys

    env = dict(os.environ, RINGFENCE_HTTP_WRITE_TIMEOUT_S="soon")
    out = subprocess.run([sys.executable, "-m", "ringfence.cli", "serve", "--demo", "--data", str(tmp_path / "d"), "--port", "1"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out
    assert "RINGFENCE_HTTP_WRITE_TIMEOUT_S must be a number of seconds, more than 0 and at most 3600; got 'soon'" in " ".join(
        (out.stdout + out.stderr).split()), out
    assert not (tmp_path / "d").exists()


def test_trusted_proxies_are_not_counted_per_peer():
    """Behind a proxy every client has the proxy's address: its connections count only in the total."""
    limits = http_wire._Limits()
    limits.trust("10.0.0.0/8, 192.168.1.7,proxy.internal")
    assert limits.is_trusted("10.1.2.3") and limits.is_trusted("192.168.1.7")
    assert not limits.is_trusted("192.168.1.8") and not limits.is_trusted("127.0.0.1") and not limits.is_trusted("proxy.internal")
    nobody = http_wire._Limits()
    nobody.trust([])
    assert not nobody.is_trusted("127.0.0.1")
    everyone = http_wire._Limits()
    everyone.trust(["*"])
    assert everyone.is_trusted("203.0.113.9")


def test_one_address_flooding_refused_connections_does_not_turn_others_away(server):
    """One address holds and reopens twice the process's limit of idle connections: its first PER_IP are
    accepted, the rest refused, and a refused connection waiting to send a request for its 503 does not
    count in the process's limit, so a client from another address is still served all along.

    Before: refused connections counted in the limit while they waited (2 s), and a client from
    127.0.0.2 got `503 too many connections` for as long as the flood ran."""
    held: list[socket.socket] = []

    def top_up() -> None:
        alive = []
        for s in held:
            try:
                if s.recv(1) == b"":
                    s.close()
                    continue
            except BlockingIOError:
                pass
            except OSError:
                s.close()
                continue
            alive.append(s)
        held[:] = alive
        while len(held) < 2 * MAX_CONNECTIONS:
            s = socket.socket()
            s.bind(("127.0.0.50", 0))
            s.connect(("127.0.0.1", server.port))
            s.setblocking(False)
            held.append(s)

    answers = []
    try:
        started = time.monotonic()
        with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.51"), timeout=10,
                          headers={"connection": "close"}) as victim:
            while time.monotonic() - started < 3 * http_wire.REFUSED_READ_TIMEOUT_S:
                top_up()
                r = victim.get(server.base + "/api/v3/ping")
                answers.append((r.status_code, r.text))
                time.sleep(0.2)
        assert len(held) == 2 * MAX_CONNECTIONS
    finally:
        for s in held:
            s.close()
    assert len(answers) >= 10 and all(a == (200, "{}") for a in answers), answers


def server_side(port: int, client: socket.socket) -> list[str]:
    """The server's end of `client`'s connection as /proc/net/tcp lists it (its state, hex), orphaned or not."""
    host, cport = client.getsockname()
    local = "0100007F:%04X" % port
    remote = "%s:%04X" % ("".join(f"{int(b):02X}" for b in reversed(host.split("."))), cport)
    with open("/proc/net/tcp") as f:
        return [cols[3] for cols in (line.split() for line in f) if cols[1] == local and cols[2] == remote]


def test_a_closed_connection_with_unread_responses_does_not_leave_its_buffers_in_the_kernel(server):
    """A client with a small receive buffer pipelines 4 GETs of /openapi.json and reads nothing: the
    responses fit in the kernel's send queue, so writing never pauses and the write deadline never starts;
    the server closes the idle connection at its keep-alive timeout. The kernel must not then keep the
    socket and what it could not send (TCP_USER_TIMEOUT = the write deadline bounds it).

    Before: the closed socket stayed orphaned (FIN_WAIT1, several hundred KB each) for minutes, answering
    the client's zero window; this test waited its GIVE_UP_S and failed."""
    sock = slow_reader(server.port, "/openapi.json", 4, source="127.0.0.52")
    started = time.monotonic()
    try:
        time.sleep(0.5)
        assert server_side(server.port, sock), "the server's end of the connection is not there at all"
        while server_side(server.port, sock) and time.monotonic() - started < GIVE_UP_S:
            time.sleep(0.2)
        left = server_side(server.port, sock)
        took = time.monotonic() - started
    finally:
        sock.close()
    assert not left, f"the server's end is still in the kernel {took:.1f} s later (state {left})"
    print(f"the server's end gone after {took:.1f} s")
