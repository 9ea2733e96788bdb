"""Deadlines for reading each HTTP request (slowloris) and for a client taking its answers (slow
readers), and bounds on connections, for `serve` and the gateway processes.

uvicorn closes a connection that sits idle after a response (`timeout_keep_alive`), but once a client
has sent one byte of a request it waits for the rest for ever: a client that sends a header line every
few seconds, or never finishes its body, holds a connection and its memory as long as it likes, and a
few thousand of them hold the process's whole connection budget. `DeadlineHttpProtocol` gives every
request REQUEST_READ_TIMEOUT_S from its first byte (or from the connection's opening) to arrive whole,
headers and body:

- headers not all in: the client gets `408 Request Timeout` (`Connection: close`) and is dropped;
- nothing sent at all: dropped without a word, as uvicorn drops an idle keep-alive connection;
- headers in, body not: the app, already running, sees the client disconnect, and the socket closes;
- a WebSocket upgrade leaves this protocol once its handshake is read (ws_wire.py counts its frames).

RINGFENCE_HTTP_REQUEST_TIMEOUT_S overrides the deadline (seconds, > 0).

A client that sends requests but never reads the answers (a slow reader: pipelined requests for big
responses) would otherwise hold its connection, the kernel's buffers and the response uvicorn is
waiting to write for ever. asyncio tells the protocol when a connection's write buffer passes its
high-water mark (`pause_writing`) and when it falls back (`resume_writing`): a connection that stays
paused for WRITE_TIMEOUT_S (RINGFENCE_HTTP_WRITE_TIMEOUT_S) and whose client took less than
MIN_PROGRESS_BYTES in that time (counted in asyncio's buffer and the kernel's send queue: the kernel
takes bytes from asyncio in big steps, so asyncio's buffer alone stands still for a client that reads
slowly) is aborted, its buffers dropped (the kernel's too: SO_LINGER 0), and one
line logged (the peer's address and the seconds; never the request, whose query may carry a key or
a signature). Answers that fit in the kernel's send queue never pause writing: when the server closes
a connection (keep-alive timeout, `Connection: close`, a deadline, shutdown) whose client has not
taken them, the socket gets TCP_USER_TIMEOUT = WRITE_TIMEOUT_S, so the kernel drops it and its
buffers once that long passes with nothing acknowledged instead of keeping it orphaned for minutes. After a WebSocket upgrade the transport belongs to ws_wire.py, whose subscribers are
closed as slow consumers by the bytes waiting instead (api/ws.py, 1008), as they always were.

Connections are bounded per process (each gateway process is one): past MAX_CONNECTIONS open at once
(RINGFENCE_HTTP_MAX_CONNECTIONS), or MAX_CONNECTIONS_PER_IP from one TCP peer
(RINGFENCE_HTTP_MAX_CONNECTIONS_PER_IP, 0 = no per-peer bound; trusted proxies are not counted, their
peers are many clients), a new connection is refused as it is accepted: each request on it gets
`503 Service Unavailable` (`Connection: close`, `Retry-After: 1`, "too many connections"), a
WebSocket handshake included, and it has REFUSED_READ_TIMEOUT_S to send one. A refused connection is
not counted in MAX_CONNECTIONS while it waits (one address reopening connections past its share would
otherwise turn every other address away); at most MAX_REFUSALS_WAITING wait at once, past that the
503 is written at once and the connection closed. Connections accepted before keep being served. uvicorn's own `limit_concurrency` is not used: it decides at each request,
so that a flood of new connections would turn away the requests of clients already connected.

This module imports no part of the app, so that a gateway process stays small.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import logging
import os
import socket
import struct
import sys
import termios
import time
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["MAX_CONNECTIONS", "MAX_CONNECTIONS_PER_IP", "REQUEST_READ_TIMEOUT_S", "WRITE_TIMEOUT_S", "DeadlineHttpProtocol",
           "check_settings", "max_connections", "max_connections_per_ip", "release_peer", "request_read_timeout_s",
           "write_timeout_s"]

#: Seconds a request may take to arrive whole (headers and body), from its first byte.
REQUEST_READ_TIMEOUT_S = 10.0
#: Seconds a connection's write buffer may stay above its high-water mark (the client not reading
#: what it asked for) before the connection is aborted.
WRITE_TIMEOUT_S = 30.0
#: Connections one process holds at once, WebSockets included: above api/ws.py's 5,000 WebSocket
#: connections, with room for REST clients' keep-alive connections. Lowered to what the process may
#: open (RLIMIT_NOFILE less FDS_RESERVED for its journal, database and files) when that is less.
MAX_CONNECTIONS = 8192
#: Connections from one TCP peer at once: above api/ws.py's 50 WebSockets per address and an HTTP
#: client's pool (httpx keeps at most 100), far below MAX_CONNECTIONS.
MAX_CONNECTIONS_PER_IP = 256
FDS_RESERVED = 256
#: What a client whose responses wait must take in each write deadline to keep its connection: one
#: buffer's worth (asyncio's high-water mark), about 2 KiB a second at the 30 s default.
MIN_PROGRESS_BYTES = 64 * 1024
#: Linux's ioctl for the bytes in a socket's send queue not yet acknowledged (SIOCOUTQ = TIOCOUTQ).
_OUTQ: int | None = termios.TIOCOUTQ if sys.platform == "linux" else None
#: What a connection refused over a limit has to send its request (the 503 needs one to answer).
REFUSED_READ_TIMEOUT_S = 2.0
#: Refused connections waiting (REFUSED_READ_TIMEOUT_S at most) for a request to answer with 503, per
#: process. They are not counted in MAX_CONNECTIONS (a flood of refused connections from one address
#: would otherwise turn every other address away too); past this many, a refused connection gets its
#: 503 at once and is closed without waiting for its request.
MAX_REFUSALS_WAITING = 64
#: At most one log line per kind of drop (slow reader, refused) in this many seconds; the rest counted.
LOG_EVERY_S = 10.0

_TIMEOUT_BODY = b"request not received in time"
_TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
                     b"content-length: " + str(len(_TIMEOUT_BODY)).encode() + b"\r\nconnection: close\r\n\r\n" + _TIMEOUT_BODY)


_REFUSED_BODY = b"too many connections"
_REFUSED_PER_IP_BODY = b"too many connections from this address"

log = logging.getLogger("ringfence.http")


def _seconds(name: str, default: float) -> float:  # float-ok: seconds for a timer, not money
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)  # float-ok: a timer's length in seconds, not money
    except ValueError:
        value = -1.0  # float-ok: marks the value invalid below
    if not 0 < value <= 3600:
        raise ValueError(f"{name} must be a number of seconds, more than 0 and at most 3600; got {raw!r}")
    return value


def _count(name: str, default: int, low: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1  # marks the value invalid below
    if not low <= value <= 1_000_000:
        raise ValueError(f"{name} must be a whole number from {low} to 1000000; got {raw!r}")
    return value


def request_read_timeout_s() -> float:  # float-ok: seconds for a timer, not money
    """The deadline in force: RINGFENCE_HTTP_REQUEST_TIMEOUT_S when set (a number of seconds > 0 and at
    most an hour), else REQUEST_READ_TIMEOUT_S. Raises ValueError naming the variable otherwise."""
    return _seconds("RINGFENCE_HTTP_REQUEST_TIMEOUT_S", REQUEST_READ_TIMEOUT_S)


def write_timeout_s() -> float:  # float-ok: seconds for a timer, not money
    """RINGFENCE_HTTP_WRITE_TIMEOUT_S when set (seconds, > 0 and at most an hour), else WRITE_TIMEOUT_S."""
    return _seconds("RINGFENCE_HTTP_WRITE_TIMEOUT_S", WRITE_TIMEOUT_S)


def max_connections() -> int:
    """RINGFENCE_HTTP_MAX_CONNECTIONS when set (1 to 1,000,000), else MAX_CONNECTIONS; either lowered to
    what the process may open (its soft RLIMIT_NOFILE less FDS_RESERVED), at least 1."""
    wanted = _count("RINGFENCE_HTTP_MAX_CONNECTIONS", MAX_CONNECTIONS, 1)
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):  # no such limit here (not Linux/BSD): the setting alone
        return wanted
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, soft - FDS_RESERVED))


def max_connections_per_ip() -> int:
    """RINGFENCE_HTTP_MAX_CONNECTIONS_PER_IP when set (0 = no per-peer bound, up to 1,000,000), else
    MAX_CONNECTIONS_PER_IP."""
    return _count("RINGFENCE_HTTP_MAX_CONNECTIONS_PER_IP", MAX_CONNECTIONS_PER_IP, 0)


def check_settings() -> dict[str, float]:  # float-ok: seconds and counts for the start-up line, not money
    """Every setting of this module, read once at start-up so that a bad value stops `serve` (and a
    gateway) with the variable's name rather than failing on every connection."""
    return {"request_timeout_s": request_read_timeout_s(), "write_timeout_s": write_timeout_s(),
            "max_connections": max_connections(), "max_connections_per_ip": max_connections_per_ip()}


class _Limits:
    """This process's bounds and counts, read once (the environment does not change under a server)."""

    def __init__(self) -> None:
        self.read_timeout_s = request_read_timeout_s()
        self.write_timeout_s = write_timeout_s()
        self.max_connections = max_connections()
        self.max_per_ip = max_connections_per_ip()
        self.per_ip: dict[str, int] = {}
        self.trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] | None = None
        self.trust_all = False
        self.logged_at: dict[str, float] = {}  # float-ok: monotonic seconds
        self.refusing: set[object] = set()  # refused connections waiting for their request (MAX_REFUSALS_WAITING)
        self.unlogged: dict[str, int] = {}

    def trust(self, forwarded_allow_ips: object) -> None:
        """Learn the trusted proxies from uvicorn's config (once): their connections are not counted per peer."""
        if self.trusted is not None:
            return
        entries = forwarded_allow_ips.split(",") if isinstance(forwarded_allow_ips, str) else list(forwarded_allow_ips or ())  # type: ignore[call-overload]
        nets = []
        for entry in (str(e).strip() for e in entries):
            if entry == "*":
                self.trust_all = True
            elif entry:
                try:
                    nets.append(ipaddress.ip_network(entry, strict=False))
                except ValueError:
                    continue  # uvicorn also allows host names and "unix:" here: never a TCP peer's address
        self.trusted = tuple(nets)

    def is_trusted(self, ip: str) -> bool:
        if self.trust_all:
            return True
        if not self.trusted:
            return False  # the usual case: no proxy, nothing to parse on every accept
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self.trusted or ())

    def note(self, kind: str, message: str, *args: object) -> None:
        """Log `message` at most once per LOG_EVERY_S for `kind`, with how many went unlogged since."""
        now = time.monotonic()
        if now - self.logged_at.get(kind, -LOG_EVERY_S) < LOG_EVERY_S:
            self.unlogged[kind] = self.unlogged.get(kind, 0) + 1
            return
        self.logged_at[kind] = now
        skipped = self.unlogged.pop(kind, 0)
        log.warning(message + (f" (and {skipped} more since the last such line)" if skipped else ""), *args)


_limits: _Limits | None = None


def _process_limits() -> _Limits:
    global _limits
    if _limits is None:
        _limits = _Limits()
    return _limits


def release_peer(ip: str | None) -> None:
    """Give back a peer's connection slot (a connection counted per peer has ended)."""
    if ip is None or _limits is None:
        return
    left = _limits.per_ip.get(ip, 0) - 1
    if left > 0:
        _limits.per_ip[ip] = left
    else:
        _limits.per_ip.pop(ip, None)


def _refusal(body: bytes) -> bytes:
    return (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\nretry-after: 1\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)


def _refusing_app(body: bytes) -> Any:
    async def refuse(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 503,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"retry-after", b"1"),
                                (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
    return refuse


class DeadlineHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline on reading each request, one on writing, and the
    process's connection bounds (module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limits = _process_limits()
        self._limits.trust(getattr(self.config, "forwarded_allow_ips", None))
        self._read_timeout = self._limits.read_timeout_s
        self._read_deadline: asyncio.TimerHandle | None = None
        self._write_deadline: asyncio.TimerHandle | None = None
        self._begun = False  # a byte of the current request has arrived
        self._headers_in = False
        self._peer: str | None = None  # counted in _limits.per_ip while set
        self._refused: bytes | None = None  # the 503 body when over a limit
        self._running: Any = None  # the request cycle whose app task was started last
        self._waiting_bytes = 0  # _bytes_waiting() when writing paused, or at the last check since

    def _arm(self) -> None:
        if self._read_deadline is None:
            self._read_deadline = self.loop.call_later(self._read_timeout, self._read_too_slow)

    def _disarm(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)  # counts it in self.connections
        self._admit()
        if self._refused is not None:
            # not one of the process's connections: refused ones never count against the others
            self.connections.discard(self)
            if len(self._limits.refusing) >= MAX_REFUSALS_WAITING:  # too many waiting: the 503 now, no wait
                transport.write(_refusal(self._refused))
                transport.close()
                return
            self._limits.refusing.add(self)
        self._arm()  # a connection that never sends a whole request is dropped too

    def _admit(self) -> None:
        """Count this connection against its peer, or mark it refused (its requests get 503)."""
        limits = self._limits
        ip = self.client[0] if self.client else None
        if len(self.connections) > limits.max_connections:
            self._refused = _REFUSED_BODY
        elif ip is not None and limits.max_per_ip and not limits.is_trusted(ip):
            if limits.per_ip.get(ip, 0) >= limits.max_per_ip:
                self._refused = _REFUSED_PER_IP_BODY
            else:
                limits.per_ip[ip] = limits.per_ip.get(ip, 0) + 1
                self._peer = ip
        if self._refused is not None:
            self.app = _refusing_app(self._refused)
            self._read_timeout = min(self._read_timeout, REFUSED_READ_TIMEOUT_S)
            limits.note("refused", "refused a connection from %s: %s (%d open in this process; "
                        "RINGFENCE_HTTP_MAX_CONNECTIONS=%d, _PER_IP=%d)", ip, self._refused.decode(),
                        len(self.connections), limits.max_connections, limits.max_per_ip)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._limits.refusing.discard(self)
        if exc is None:
            self._bound_orphan()
        if self._write_deadline is not None:
            self._write_deadline.cancel()
            self._write_deadline = None
        release_peer(self._peer)
        self._peer = None
        running = self._running
        super().connection_lost(exc)  # tells only the newest request's cycle, not the one running
        if running is not None and not running.response_complete:
            # with pipelined requests the cycle running is an older one: uvicorn would let it write to
            # the closed transport once its drain ends (uvloop raises there)
            running.disconnected = True
            running.message_event.set()
        self.pipeline.clear()

    def _bound_orphan(self) -> None:
        """Closed gracefully (keep-alive timeout, `Connection: close`, a deadline, shutdown) with bytes the
        client has not taken still in the kernel's send queue: the kernel would keep them, and the socket,
        orphaned for minutes while a client that never reads answers its probes with a zero window. Give
        the socket TCP_USER_TIMEOUT = the write deadline: the kernel drops it (and its buffers) once that
        long passes with nothing acknowledged, while a client still reading gets the rest. (asyncio closes
        the socket just after this call; the write deadline above covers what never left asyncio.)"""
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        if sock is None or _OUTQ is None or not hasattr(socket, "TCP_USER_TIMEOUT"):
            return
        with contextlib.suppress(OSError, ValueError):
            if struct.unpack("i", fcntl.ioctl(sock.fileno(), _OUTQ, b"\0\0\0\0"))[0] > 0:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, max(1, int(self._limits.write_timeout_s * 1000)))

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        self._running = cycle
        super()._start_asgi_task(cycle, app)

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_deadline is None:
            self._waiting_bytes = self._bytes_waiting()
            self._write_deadline = self.loop.call_later(self._limits.write_timeout_s, self._check_reader)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._write_deadline is not None:
            self._write_deadline.cancel()
            self._write_deadline = None

    def _bytes_waiting(self) -> int:
        """Bytes written for this client and not yet acknowledged by it: asyncio's buffer and, on Linux,
        the kernel's send queue (SIOCOUTQ). While writing is paused nothing is added, so a fall means the
        client is reading."""
        waiting = self.transport.get_write_buffer_size()
        sock = self.transport.get_extra_info("socket")
        if sock is not None and _OUTQ is not None:
            with contextlib.suppress(OSError, ValueError):
                waiting += struct.unpack("i", fcntl.ioctl(sock.fileno(), _OUTQ, b"\0\0\0\0"))[0]
        return waiting

    def _check_reader(self) -> None:
        """Still paused a write deadline later: a client that took at least MIN_PROGRESS_BYTES since is slow
        but reading (another deadline); one that took less is dropped with everything buffered for it
        (abort, not close: a close would wait for the buffer to drain, which it will not)."""
        self._write_deadline = None
        transport = self.transport
        waiting = self._bytes_waiting()
        if self._waiting_bytes - waiting >= MIN_PROGRESS_BYTES:  # closing or not: a close drains first
            self._waiting_bytes = waiting
            self._write_deadline = self.loop.call_later(self._limits.write_timeout_s, self._check_reader)
            return
        self._limits.note("slow_reader", "closed a connection from %s: it took %d bytes of its responses in %.0f s "
                          "(%d bytes waiting; RINGFENCE_HTTP_WRITE_TIMEOUT_S)", self.client[0] if self.client else "?",
                          max(0, self._waiting_bytes - waiting), self._limits.write_timeout_s, waiting)
        sock = transport.get_extra_info("socket")
        if sock is not None:  # linger 0: the kernel drops what it holds for this client too, and resets
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._begun, self._headers_in = True, False
        self._arm()

    def on_headers_complete(self) -> None:
        self._headers_in = True
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        self._begun = False
        super().on_message_complete()

    def handle_websocket_upgrade(self) -> None:
        self._disarm()  # the WebSocket protocol owns the transport from here on
        if self._refused is not None:  # over a limit: no upgrade, the same 503 as any other request
            self.transport.write(_refusal(self._refused))
            self.transport.close()
            return
        super().handle_websocket_upgrade()
        # the connection's slot for its peer goes with it: ws_wire.py gives it back when it ends
        ws = self.transport.get_protocol()
        if self._peer is not None and hasattr(ws, "peer_slot"):
            ws.peer_slot = self._peer
            self._peer = None

    def _read_too_slow(self) -> None:
        self._read_deadline = None
        if self.transport.is_closing():
            return
        if self._headers_in and self.cycle is not None:
            # the app is already running on this request: tell it the client is gone, then drop it
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        elif self._begun:
            self.transport.write(_TIMEOUT_RESPONSE)
        # else: a connection that never sent a byte is closed without a word, as an idle keep-alive is
        self.transport.close()
