"""The classic group commit's publish path: one blocking NATS connection that the sequencer thread
alone uses, beside the link's asyncio connection (issue #21, session 21).

Why: with the link's loop thread in between, every batch took two thread hand-offs on the way to
the stream's ack (sequencer -> loop to send, loop -> sequencer to answer), each a scheduler
wake-up, and ~250-450 µs of the loop thread's CPU (asyncio iterations, tasks, nats-py's flusher and
subscription queue). On a two-core machine shared with nats-server, the sequencer, the state digest
and the clients, that CPU and those wake-ups wait on the run queue, and the replicated
acknowledgement's p99 was the run queue's. Here the sequencer writes the message to the socket
itself (`begin`, before the local write) and, after the apply, reads the stream's ack from the
socket itself (`finish`): the kernel wakes the thread that waits, and no other thread runs per
batch for the publish.

What it speaks is the NATS client protocol, the part a publisher needs: INFO, CONNECT (user and
password from the URL, TLS as the link does it), SUB on this node's reply inbox, HPUB, MSG/HMSG
(the acks), PING/PONG, -ERR. Nothing else goes over it (the stream's set-up, the lease, the
checks stay on the link); every check on an ack stays in `Replicator._stored`. Any failure of
the socket while a batch is in flight fails that batch (the node stops, the clients hear
"outcome unknown"), as a failed publish on the link does; a connection the server closed while
the node was idle is opened again before the next batch is sent (nothing is in flight then).
"""

from __future__ import annotations

import json
import secrets
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlparse

_CRLF = b"\r\n"
#: the longest protocol line accepted from the server (an INFO can be a few KB)
MAX_LINE_BYTES = 64 * 1024
#: nats-server's own limit on max_payload
MAX_PAYLOAD_BYTES = 64 * 1024 * 1024
#: the largest message accepted on the reply inbox: JetStream's acks and errors are a few hundred
#: bytes; anything larger is not one (and is never buffered up to the server's max_payload)
MAX_REPLY_BYTES = 64 * 1024


class DirectError(ConnectionError):
    """The direct connection failed (closed, refused, a protocol error, an -ERR from the server)."""


@dataclass
class Reply:
    """One message on the reply inbox: what `Replicator._stored` reads of nats-py's `Msg`."""

    subject: str
    data: bytes
    headers: dict[str, str] | None


class DirectLink:
    """A blocking NATS connection for one thread (not thread-safe by design: the sequencer's)."""

    def __init__(self, servers: str, *, inbox: str, tls_ca: str = "", name: str = "ringfence-direct",
                 timeout_s: float = 5.0) -> None:  # float-ok: seconds
        url = urlparse(servers)
        self.host = url.hostname or "127.0.0.1"
        self.port = url.port or 4222
        self.tls = url.scheme == "tls"
        self.tls_ca = tls_ca
        self.user = unquote(url.username) if url.username else ""
        self.password = unquote(url.password) if url.password else ""
        self.name = name
        self.timeout_s = timeout_s
        #: replies come to `{inbox}.{random}.N`; the node's NATS user may subscribe only under `inbox`
        self.prefix = f"{inbox}.{secrets.token_hex(11)}"
        self.sock: Any = None
        self._buf = bytearray()
        self.max_payload = 1024 * 1024
        self.encrypted = False
        self.connects = 0
        #: set when the owning link is closed or disconnected (a partition): never opened again
        self.dead = False

    # ------------------------------------------------------------------ connection

    def connect(self) -> None:
        """(Re)open the connection: INFO, TLS when the URL or the server asks, CONNECT, SUB, PING/PONG."""
        self.close()
        if self.dead:
            raise DirectError("the NATS link was closed")
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock, self._buf = sock, bytearray()
        try:
            line = self._line(time.monotonic() + self.timeout_s)
            if not line.startswith(b"INFO "):
                raise DirectError(f"NATS did not start with INFO: {line[:40]!r}")
            info = _info(line)
            self.max_payload = info["max_payload"]
            if self.tls or info["tls_required"]:
                if not self.tls:
                    raise DirectError("the server requires TLS but the URL is nats://; use tls://")
                context = ssl.create_default_context(cafile=self.tls_ca or None)  # verifies host name and chain
                self.sock = context.wrap_socket(sock, server_hostname=self.host)
                self.encrypted = True
            connect: dict[str, Any] = {"verbose": False, "pedantic": False, "lang": "python3", "version": "ringfence",
                                       "protocol": 1, "headers": True, "no_responders": True, "name": self.name,
                                       "tls_required": self.tls}
            if self.user and info["auth_required"]:  # as nats-py: only to a server that asks for them
                if self.password:
                    connect.update(user=self.user, **{"pass": self.password})
                else:  # a user name alone is a token (`nats://TOKEN@host`), as nats-py sends it
                    connect["auth_token"] = self.user
            self.sock.sendall(b"CONNECT " + json.dumps(connect).encode() + _CRLF
                              + f"SUB {self.prefix}.* 1".encode() + _CRLF + b"PING" + _CRLF)
            deadline = time.monotonic() + self.timeout_s
            while True:  # until the PONG: CONNECT and SUB were accepted (an -ERR raises)
                line = self._line(deadline)
                if line == b"PONG":
                    break
                self._control(line)
            if self.dead:  # closed by another thread meanwhile (`NatsLink._close_directs` sets `dead`, then closes)
                raise DirectError("the NATS link was closed")
        except BaseException:
            self.close()
            raise
        self.connects += 1

    def close(self) -> None:
        """Close the socket (shut down first, so that the server sees the connection end at once); a
        thread waiting in `reply` then fails at once (tests/replication/test_direct_publish.py)."""
        sock, self.sock = self.sock, None
        if sock is not None:
            for step in (lambda: sock.shutdown(socket.SHUT_RDWR), sock.close):
                try:
                    step()
                except OSError:
                    pass  # not connected any more

    def ready(self) -> None:
        """Before a publish with nothing in flight: answer the server's PINGs that came while the node
        was idle, and open the connection again if the server closed it meanwhile (or never opened)."""
        if self.sock is None:
            self.connect()
            return
        try:
            self.sock.setblocking(False)
            try:
                while True:
                    chunk = self.sock.recv(65536)
                    if not chunk:
                        raise DirectError("closed by the server")
                    self._buf += chunk
            except (BlockingIOError, ssl.SSLWantReadError):
                pass
            finally:
                if self.sock is not None:
                    self.sock.setblocking(True)
            while _CRLF in self._buf:
                end = self._buf.index(_CRLF)
                line = bytes(self._buf[:end])
                if line.startswith((b"MSG ", b"HMSG ")):  # a late reply to a publish that failed: dropped
                    self._message(line, time.monotonic() + self.timeout_s)
                    continue
                del self._buf[: end + 2]
                self._control(line)
        except (OSError, DirectError):
            self.connect()

    # ------------------------------------------------------------------ messages

    def publish(self, subject: str, reply: str, headers: dict[str, str], payload: bytes) -> None:
        """Send one message with headers (HPUB); returns once the kernel took all of it."""
        if self.sock is None:
            raise DirectError("not connected")
        block = bytearray(b"NATS/1.0\r\n")
        for key, value in headers.items():
            line = f"{key}: {value}\r\n"
            if line.count("\n") != 1 or line.count("\r") != 1 or ":" in key:
                raise ValueError(f"header {key[:40]!r}: a line break in a header, or a ':' in its name")
            block += line.encode()
        block += _CRLF
        self.sock.settimeout(self.timeout_s)
        self.sock.sendall(b"".join((f"HPUB {subject} {reply} {len(block)} {len(block) + len(payload)}\r\n".encode(),
                                    block, payload, _CRLF)))

    def reply(self, deadline: float) -> Reply:  # float-ok: a time.monotonic() deadline
        """The next message on the reply inbox (answering PINGs meanwhile); TimeoutError at `deadline`."""
        while True:
            line = self._line(deadline, keep=True)
            if line.startswith((b"MSG ", b"HMSG ")):
                return self._message(line, deadline)
            del self._buf[: len(line) + 2]
            self._control(line)

    def _control(self, line: bytes) -> None:
        if line == b"PING":
            if self.sock is not None:
                self.sock.sendall(b"PONG\r\n")
        elif line.startswith(b"-ERR"):
            raise DirectError(f"NATS said {line[5:].decode(errors='replace')[:200]}")
        elif line in (b"PONG", b"+OK", b"") or line.startswith(b"INFO "):
            pass
        else:
            raise DirectError(f"NATS protocol: unexpected {line[:40]!r}")

    def _message(self, line: bytes, deadline: float) -> Reply:  # float-ok: a deadline
        """`MSG subject sid [reply] size` or `HMSG subject sid [reply] hsize size`, at the buffer's start."""
        parts = line.split()
        try:
            if parts[0] == b"HMSG":
                head, total = int(parts[-2]), int(parts[-1])
            else:
                head, total = 0, int(parts[-1])
        except (IndexError, ValueError):
            raise DirectError(f"NATS protocol: bad message line {line[:60]!r}") from None
        if not 0 <= head <= total <= MAX_REPLY_BYTES:
            raise DirectError(f"NATS protocol: bad message sizes {line[:60]!r}")
        start = len(line) + 2
        while len(self._buf) < start + total + 2:
            self._fill(deadline)
        body = bytes(self._buf[start : start + total])
        del self._buf[: start + total + 2]
        headers = _headers(body[:head]) if head else None
        return Reply(parts[1].decode(errors="replace"), body[head:], headers)

    def _line(self, deadline: float, keep: bool = False) -> bytes:  # float-ok: a deadline
        while True:
            end = self._buf.find(_CRLF)
            if end >= 0:
                line = bytes(self._buf[:end])
                if not keep:
                    del self._buf[: end + 2]
                return line
            if len(self._buf) > MAX_LINE_BYTES:
                raise DirectError("NATS protocol: a line longer than 64 KiB")
            self._fill(deadline)

    def _fill(self, deadline: float) -> None:  # float-ok: a deadline
        sock = self.sock  # (`close` may set it to None from another thread)
        if sock is None:
            raise DirectError("not connected")
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no answer from NATS in time")
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            raise TimeoutError("no answer from NATS in time") from None
        if not chunk:
            raise DirectError("closed by the server")
        self._buf += chunk


def _info(line: bytes) -> dict[str, Any]:
    """The server's first line, `INFO {json}`: what this connection uses of it, checked (a server,
    or anyone in between before TLS, that sends something else gets a DirectError, not a
    TypeError out of `NatsLink.direct`)."""
    try:
        info = json.loads(line[5:])
    except (ValueError, RecursionError):  # (nested deeper than the interpreter's stack: a RecursionError)
        raise DirectError(f"NATS protocol: INFO is not JSON: {line[:40]!r}") from None
    if not isinstance(info, dict):
        raise DirectError(f"NATS protocol: INFO is not a JSON object: {line[:40]!r}")
    max_payload = info.get("max_payload", 1024 * 1024)
    if type(max_payload) is not int or not 1024 <= max_payload <= MAX_PAYLOAD_BYTES:
        raise DirectError(f"NATS protocol: INFO max_payload {str(max_payload)[:24]!r} is not 1 KiB..64 MiB")
    return {"max_payload": max_payload, "auth_required": bool(info.get("auth_required")),
            "tls_required": bool(info.get("tls_required"))}


def _headers(block: bytes) -> dict[str, str]:
    """A NATS header block: `NATS/1.0[ status[ description]]` then `Key: value` lines; the status
    goes under "Status" (as nats-py gives it)."""
    lines = block.decode(errors="replace").split("\r\n")
    out: dict[str, str] = {}
    first = lines[0].split(" ", 2)
    if len(first) > 1 and first[1]:
        out["Status"] = first[1]
        if len(first) > 2:
            out["Description"] = first[2]
    for line in lines[1:]:
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out
