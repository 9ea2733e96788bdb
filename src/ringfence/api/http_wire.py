"""A deadline for reading each HTTP request, for `serve` and the gateway processes (slowloris).

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

RINGFENCE_HTTP_REQUEST_TIMEOUT_S overrides the deadline (seconds, > 0). This module imports no part of
the app, so that a gateway process stays small.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["REQUEST_READ_TIMEOUT_S", "DeadlineHttpProtocol", "request_read_timeout_s"]

#: Seconds a request may take to arrive whole (headers and body), from its first byte.
REQUEST_READ_TIMEOUT_S = 10.0

_TIMEOUT_BODY = b"request not received in time"
_TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
                     b"content-length: " + str(len(_TIMEOUT_BODY)).encode() + b"\r\nconnection: close\r\n\r\n" + _TIMEOUT_BODY)


def request_read_timeout_s() -> float:  # float-ok: seconds for a timer, not money
    """The deadline in force: RINGFENCE_HTTP_REQUEST_TIMEOUT_S when set (a number of seconds > 0 and at
    most an hour), else REQUEST_READ_TIMEOUT_S. Raises ValueError naming the variable otherwise."""
    raw = os.environ.get("RINGFENCE_HTTP_REQUEST_TIMEOUT_S")
    if raw is None or raw == "":
        return REQUEST_READ_TIMEOUT_S
    try:
        value = float(raw)  # float-ok: a timer's length in seconds, not money
    except ValueError:
        value = -1.0  # float-ok: marks the value invalid below
    if not 0 < value <= 3600:
        raise ValueError(f"RINGFENCE_HTTP_REQUEST_TIMEOUT_S must be a number of seconds, more than 0 and at most 3600; got {raw!r}")
    return value


class DeadlineHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline on reading each request (module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_timeout = request_read_timeout_s()
        self._read_deadline: asyncio.TimerHandle | None = None
        self._begun = False  # a byte of the current request has arrived
        self._headers_in = False

    def _arm(self) -> None:
        if self._read_deadline is None:
            self._read_deadline = self.loop.call_later(self._read_timeout, self._read_too_slow)

    def _disarm(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()  # a connection that never sends a whole request is dropped too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

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
        super().handle_websocket_upgrade()

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
