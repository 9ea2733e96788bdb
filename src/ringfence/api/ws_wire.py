"""WebSocket frames written straight to uvicorn's transport: one frame built once and the same bytes
written to every subscriber, by the engine process (api/ws.py, `serve`) and by the gateway processes
(api/relay.py, `serve --gateways N`) alike.

Only for uvicorn's sans-I/O WebSocket protocol with no extension negotiated (we never offer
permessage-deflate: compression would make each copy different). Anything else — another server, a
moved internal — gets None from `uvicorn_protocol` and the caller uses the ASGI `send`. This module
imports no part of the app, so that a gateway process stays small.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Request

__all__ = ["CLOSE_TIMEOUT_S", "SNDBUF_BYTES", "close_direct", "text_frame", "uvicorn_protocol"]

#: The kernel's send buffer of a directly written connection, fixed (Linux would grow it up to
#: tcp_wmem's 4 MiB per socket): bounds kernel memory per subscriber and makes "slow" mean the same
#: on every machine. RINGFENCE_WS_SNDBUF_BYTES overrides it.
SNDBUF_BYTES = int(os.environ.get("RINGFENCE_WS_SNDBUF_BYTES", 256 * 1024))
#: How long a close frame may wait for a client that does not read before the socket is aborted.
CLOSE_TIMEOUT_S = 5.0


def text_frame(data: bytes) -> bytes:
    """One unmasked, unfragmented WebSocket text frame (RFC 6455 §5.2) around `data`: what a server
    sends, identical for every client that did not negotiate an extension."""
    n = len(data)
    if n < 126:
        return bytes((0x81, n)) + data
    if n < 65536:
        return bytes((0x81, 126)) + n.to_bytes(2, "big") + data
    return bytes((0x81, 127)) + n.to_bytes(8, "big") + data


def uvicorn_protocol(send: Any) -> Any:
    """uvicorn's WebSocket protocol object behind its ASGI `send` when frames can be written straight
    to its transport (the sans-I/O implementation, no extension negotiated), else None. Fixes the
    socket's send buffer at SNDBUF_BYTES."""
    proto = getattr(send, "__self__", None)
    conn = getattr(proto, "conn", None)
    transport = getattr(proto, "transport", None)
    if conn is None or transport is None or not hasattr(proto, "close_sent") or getattr(conn, "extensions", None):
        return None
    if not callable(getattr(transport, "get_write_buffer_size", None)):
        return None
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF_BYTES)
    return proto


#: The close for a client past its message budget (api/ws.py, relay.py and `BudgetedWebSocketProtocol`).
TOO_MANY_MESSAGES = (1008, "too many messages")


def close_direct(proto: Any, code: int, reason: str) -> bool:
    """Close a directly written connection without waiting for it to drain: the close frame goes
    after what is already buffered, and the socket is aborted (buffer dropped) if the client has not
    completed the closing handshake within CLOSE_TIMEOUT_S. A client that stopped reading holds
    no memory past that. A client closed for TOO_MANY_MESSAGES is no longer read either (as
    `BudgetedWebSocketProtocol.cut_off`): nothing more it floods in is parsed, and its own writes
    stall, so even a client that only writes gets to read the close frame before the abort.
    False when this could not be done (then close the usual way)."""
    try:
        transport = proto.transport
        if proto.close_sent or proto.disconnected or transport.is_closing():
            return True  # already closing: nothing to add
        if (code, reason) == TOO_MANY_MESSAGES:
            transport.pause_reading()
        proto.conn.send_close(code, reason)
        transport.write(b"".join(proto.conn.data_to_send()))
        proto.close_sent = True
        proto.close_timer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT_S, transport.abort)
        return True
    except Exception:  # uvicorn's internals moved: fall back to the ASGI close
        return False


#: Frames that never reach the app as a message of their own (PING, PONG, continuation) one WebSocket
#: client may send: a bucket of FRAME_BURST refilled at FRAME_PER_S a second. Whole messages are
#: counted by the app (api/ws.py INCOMING_BURST, the WebSocket API's request weight); these are not,
#: yet each costs the event loop a parse and, for a PING, a write. Found by a security review:
#: ~250,000 PONGs a second from one client stalled every other client of its process for 7-13 s and
#: it was never closed. (Binance counts PING and PONG frames in its incoming-message limit too.)
#: Past the budget the client is closed with 1008 "too many messages".
FRAME_PER_S = int(os.environ.get("RINGFENCE_WS_FRAMES_PER_S", 40))
FRAME_BURST = int(os.environ.get("RINGFENCE_WS_FRAMES_BURST", 200))
#: Frames one message may be split into (a message that never ends, in empty continuation frames,
#: would otherwise never reach the size limit); past it: 1009 "message too fragmented".
MAX_FRAGMENTS = 64


class TokenBucket:
    """`burst` tokens refilled at `per_s` a second (time.monotonic: this is the network edge, not the engine)."""

    __slots__ = ("per_s", "burst", "tokens", "at")

    def __init__(self, per_s: int, burst: int) -> None:
        self.per_s, self.burst = per_s, burst
        self.tokens = float(burst)  # float-ok: request tokens, not money
        self.at = time.monotonic()

    def take(self) -> bool:
        """Spend one token; False when none is left (the caller closes the connection)."""
        now = time.monotonic()
        self.tokens = min(float(self.burst), self.tokens + (now - self.at) * self.per_s)  # float-ok: tokens
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class BudgetedWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol (the one the direct writes need, `uvicorn_protocol`) with
    every PING, PONG and continuation frame a client sends counted against a
    `TokenBucket(FRAME_PER_S, FRAME_BURST)` and each message's fragments capped at MAX_FRAGMENTS.
    Past either the client is cut off at once (`cut_off`). Used by `serve` and by every gateway
    (`ws=` of their uvicorn configs)."""

    frame_budget: TokenBucket | None = None
    fragments = 0
    #: The peer address whose connection slot this connection holds (http_wire.py), given back when it ends.
    peer_slot: str | None = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer_slot is not None:
            from .http_wire import release_peer

            release_peer(self.peer_slot)
            self.peer_slot = None
        super().connection_lost(exc)

    def handle_events(self) -> None:
        for event in self.conn.events_received():
            if isinstance(event, Request):
                self.handle_connect(event)
                continue
            if not isinstance(event, Frame):
                continue
            if self.frame_budget is None:
                self.frame_budget = TokenBucket(FRAME_PER_S, FRAME_BURST)
            if event.opcode in (Opcode.TEXT, Opcode.BINARY):
                self.fragments = 1
            elif event.opcode == Opcode.CONT:
                self.fragments += 1
            if event.opcode in (Opcode.PING, Opcode.PONG, Opcode.CONT) and not self.frame_budget.take():
                self.cut_off(*TOO_MANY_MESSAGES)
                return
            if self.fragments > MAX_FRAGMENTS:
                self.cut_off(1009, "message too fragmented")
                return
            if event.opcode == Opcode.CONT:
                self.handle_cont(event)
            elif event.opcode == Opcode.TEXT:
                self.handle_text(event)
            elif event.opcode == Opcode.BINARY:
                self.handle_bytes(event)
            elif event.opcode == Opcode.PING:
                self.handle_ping()
            elif event.opcode == Opcode.PONG:
                self.handle_pong(event)
            elif event.opcode == Opcode.CLOSE:
                self.handle_close(event)

    def cut_off(self, code: int, reason: str) -> None:
        """Stop reading this client (nothing more it sent is parsed), send it a close frame, tell the
        app it is gone, and drop the connection CLOSE_TIMEOUT_S later (not at once: closing a socket
        with unread bytes sends a reset, which can destroy the close frame before the client reads it)."""
        transport = self.transport
        if transport.is_closing():
            return
        transport.pause_reading()
        if not self.close_sent:
            with contextlib.suppress(Exception):  # the protocol's state may not allow a close frame yet
                self.conn.send_close(code, reason)
                transport.write(b"".join(self.conn.data_to_send()))
            self.close_sent = True
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code})
        asyncio.get_running_loop().call_later(CLOSE_TIMEOUT_S, transport.abort)
