"""`ringfence serve --gateways N`: N gateway processes in front of one engine process.

The engine process is `serve` as it always was (sequencer, journal, apply loop, read models, the
whole ASGI app) but it no longer terminates TCP: it listens on a Unix socket in the data directory
(`DIR/run/engine.sock`, mode 0600 in a 0700 directory, so only the exchange's own user can reach
it). Each gateway process accepts client connections on the public port (one listening socket,
bound by `serve` and inherited by every gateway, so the kernel spreads connections over them),
parses HTTP and the WebSocket protocol, and relays each ASGI connection to the engine over a few
long-lived Unix-socket connections, multiplexed, in msgspec msgpack frames:

    gateway -> engine   [OPEN, sid, scope]   [IN, sid, message]      (message = what `receive` gave;
                                                                 the first ones may ride in the scope, EARLY)
    engine -> gateway   [OUT, sid, message]  [END, sid, None]        (message = what the app `send`s)
                        [ANSWER, sid, [start, body]]            (an HTTP answer whole: OUT, OUT, END)
                        [SUB, sid, [combined, [stream, ...]]]  [UNSUB, sid, [stream, ...]]
                        [PUB, 0, [stream, payload]]             (one market-data message, JSON bytes)

Market data is fanned out by the gateways, not the engine: the engine sends each message once per
link that has subscribers to its stream (PUB), and the gateway writes the same frame to each of its
clients on that stream. The engine's stream hub (api/ws.py) still owns subscriptions, their limits
and the replies to SUBSCRIBE; it tells the gateway which client holds which stream (SUB/UNSUB,
through `RelayedWebSocket`, found in the connection's scope under RELAY_EXTENSION) on the same link,
before the reply. A link is one ordered byte stream and the gateway handles its frames in order,
writing a WebSocket client's frames straight to its socket once the handshake is out (ws_wire.py):
a reply to SUBSCRIBE reaches the client before the first message it subscribed to, and a client
sees its stream's messages in the engine's order, without a gap (unless it is closed).

What moves out of the engine's interpreter: accepting connections, HTTP/1.1 and WebSocket framing,
TLS later, the idle connections of thousands of clients, and the signature of a signed REST
request (HMAC-SHA256 or Ed25519) once the gateway knows the key. Every other check stays in the
engine, once: the key's admission (revoked, expired, frozen, IP allow-list, scope) against the
engine's own verified-key cache, the replay guard (a signed request replayed through another
gateway is still a replay), rate limits and bans (one counter per IP and per key, whichever
gateway the requests came through). The client's address travels in the scope, set by the gateway
from its TCP peer; the engine believes it, and a gateway's signature check, only because nothing
but a gateway can open the socket.

Signatures in the gateways (the engine teaches, the gateways check, the engine decides):

    engine -> gateway   [GEN, 0, generation]          the engine's key generation (key_cache.py)
    engine -> gateway   [KEY, 0, [api_key, generation, kind, secret or public key bytes]]

* A gateway knows no key at first: it relays a signed request as it came, the engine verifies it
  itself and, when it verified, sends that gateway's link the key's material (the HMAC secret
  unsealed, or the Ed25519 public key) stamped with the generation it was read at.
* A gateway that knows the key verifies the signature over the exact bytes it relays and adds
  `rf_verified = [api_key, signature, generation]` to the OPEN frame's scope (not a header: a
  client cannot send it). The engine believes the claim only when its api key and signature are
  the request's own and its generation is the engine's current one; any other claim is ignored and
  the engine verifies the signature itself, as before.
* Every commit that changes a key's access or secret (revoked, scopes, allow-list, expiry, frozen
  owner...) moves the generation (store/key_generation.py) before the revoking request answers, so
  a claim made with the key as it was is never believed again: a revocation is refused on the very
  next request through any gateway, whether or not that gateway has heard of it. The engine also
  sends the new generation to every link before it runs the next relayed request (and to each new
  link), and a gateway drops every key of another generation when it hears one, so the gateways
  re-learn the keys instead of making claims the engine would ignore.

Framing: a 4-byte big-endian length, then one msgpack array; the frames written to one link in one
turn of the event loop leave in one write (`_Batched`). A frame over MAX_FRAME_BYTES closes the
connection (the engine's body limit is far below it).

Backpressure, so that one client cannot grow a process's memory or delay the other clients on its link:
- gateway -> engine: a gateway waits for the link to drain when more than LINK_HIGH_WATER bytes are
  waiting in its write buffer, before it reads the next message from that client (the client's own
  TCP connection is then throttled, as in plain `serve`);
- in the engine, each relayed connection holds at most MAX_INBOUND_MESSAGES / MAX_INBOUND_BYTES of
  messages its handler has not read yet; past that it is disconnected (a WebSocket with close code
  1008 "too many messages"). The engine's reader never waits on one connection: the others on the
  same link carry on;
- engine -> gateway: a client that reads too slowly (more than MAX_PENDING_MESSAGES messages or
  ws.MAX_QUEUE_BYTES bytes waiting in the gateway — for a WebSocket written to directly, the bytes
  its socket did not take —, the same byte bound as a non-relayed subscriber) is closed with 1008
  "slow consumer" and its handler in the engine told; the gateway's other clients are not delayed.
- the engine writes market data and WebSocket replies to a link without waiting; a link with more
  than LINK_MAX_BUFFER_BYTES waiting (its gateway stopped reading) is aborted, with all its clients.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import itertools
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

import msgspec
import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..signatures import decode_signature
from .gateway import split_signature

from .ws_wire import TOO_MANY_MESSAGES, close_direct, text_frame, uvicorn_protocol

__all__ = ["RELAY_EXTENSION", "EngineRelay", "GatewayRelay", "RelayedWebSocket", "engine_socket_path", "main"]

log = structlog.get_logger("ringfence.relay")

OPEN, IN, OUT, END, SUB, UNSUB, PUB, GEN, KEY, ANSWER = 0, 1, 2, 3, 4, 5, 6, 7, 8, 9
#: Where a relayed WebSocket's `RelayedWebSocket` is in its scope (scope["extensions"]).
RELAY_EXTENSION = "ringfence.relay"
#: A signed request body a gateway reads whole to check its signature: larger ones are relayed unchecked.
MAX_VERIFIED_BODY = 64 * 1024
MAX_FRAME_BYTES = 16 * 1024 * 1024
#: Messages the engine may have queued for one client connection in a gateway before that client is
#: dropped as too slow (a WebSocket subscriber that stopped reading must not grow a gateway's memory).
MAX_PENDING_MESSAGES = 20_000
#: ... or this many bytes of them: the bound of a non-relayed WebSocket subscriber (api/ws.py
#: MAX_QUEUE_BYTES, RINGFENCE_WS_MAX_QUEUE_BYTES; read here so the gateway need not import the app).
MAX_PENDING_BYTES = int(os.environ.get("RINGFENCE_WS_MAX_QUEUE_BYTES", 4 * 1024 * 1024))
#: A gateway stops reading from its client while more than this many bytes wait for the link to the engine.
LINK_HIGH_WATER = 256 * 1024
#: The engine aborts a link to a gateway with more than this many bytes waiting for it (the gateway
#: stopped reading: hung); the link's clients are disconnected. The engine never waits on a link.
LINK_MAX_BUFFER_BYTES = 64 * 1024 * 1024
#: Messages from a client the engine holds before that client's handler reads them (the handler is
#: slower than the client sends); past either bound the client is disconnected.
#: RINGFENCE_RELAY_MAX_INBOUND_MESSAGES / _BYTES override them (the tests lower the first to reach it).
MAX_INBOUND_MESSAGES = int(os.environ.get("RINGFENCE_RELAY_MAX_INBOUND_MESSAGES", 1_000))
MAX_INBOUND_BYTES = int(os.environ.get("RINGFENCE_RELAY_MAX_INBOUND_BYTES", 1024 * 1024))
SLOW_CONSUMER = (1008, "slow consumer")
#: Where an OPEN frame's scope carries the client's first messages, when the gateway has them already
#: (a signed request it read whole to check, a request without a body): what IN frames would carry.
EARLY = "rf_early"
#: On a response whose signature the gateway checked and the engine believed (for operators and tests).
CHECKED_BY_GATEWAY = (b"x-ringfence-signature", b"gateway")
_SCOPE_KEYS = ("type", "http_version", "method", "scheme", "path", "raw_path", "query_string", "root_path", "headers",
               "client", "server", "subprotocols")

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode


def engine_socket_path(data: Path) -> Path:
    """Where the engine listens for its gateways: inside the data directory (0700), `run/engine.sock`."""
    return Path(data).resolve() / "run" / "engine.sock"


def _frame(kind: int, sid: int, payload: Any) -> bytes:
    body = _encode([kind, sid, payload])
    return len(body).to_bytes(4, "big") + body


#: What one read from a link's socket may take: a busy link brings many frames per read.
READ_BYTES = 256 * 1024


class _FrameReader:
    """The frames of one link, in order: every whole frame that one read of the socket brought is
    decoded at once, and handed out without waiting. (Two `readexactly` awaits per frame, through
    asyncio's StreamReader, were a visible share of the engine's event loop; a request is 2 frames
    in and 3 out.) A frame over MAX_FRAME_BYTES, or one that does not decode, ends the link once
    the frames before it are handed out."""

    __slots__ = ("reader", "_buffer", "_ready", "_error")

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        self._buffer = bytearray()
        self._ready: collections.deque[list[Any]] = collections.deque()
        self._error: Exception | None = None

    async def next(self) -> list[Any]:
        ready = self._ready
        while not ready:
            if self._error is not None:
                raise self._error
            chunk = await self.reader.read(READ_BYTES)
            if not chunk:
                raise asyncio.IncompleteReadError(bytes(self._buffer), None)
            self._split(chunk)
        return ready.popleft()

    def _split(self, chunk: bytes) -> None:
        buffer = self._buffer
        buffer += chunk
        end, pos = len(buffer), 0
        try:
            while end - pos >= 4:
                n = int.from_bytes(buffer[pos:pos + 4], "big")
                if n > MAX_FRAME_BYTES:
                    raise ConnectionError(f"relay frame of {n} bytes is over the limit")
                if end - pos - 4 < n:
                    break
                frame: list[Any] = _decode(buffer[pos + 4:pos + 4 + n])
                if type(frame) is not list or len(frame) != 3 or type(frame[0]) is not int or type(frame[1]) is not int:
                    raise ValueError("relay frame is not [kind, stream, payload]")
                self._ready.append(frame)
                pos += 4 + n
        except (ConnectionError, ValueError) as err:  # msgspec.DecodeError is a ValueError
            self._error = err
        del buffer[:pos]


def _disconnect(scope_type: str, code: int = 1006) -> dict[str, Any]:
    return {"type": "websocket.disconnect", "code": code} if scope_type == "websocket" else {"type": "http.disconnect"}


def _size(message: dict[str, Any]) -> int:
    """The payload bytes of an ASGI message (what a bound on a queue of them should count)."""
    n = 64
    for key in ("bytes", "text", "body"):
        value = message.get(key)
        if value:
            n += len(value)
    return n


class _Batched:
    """A link's StreamWriter whose writes made in one turn of the event loop leave as one: a busy link
    carries many small frames (OPEN, IN, OUT, END for each request), one system call each before."""

    __slots__ = ("writer", "transport", "_pending", "_pending_bytes", "_loop")

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.transport = writer.transport
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._loop = asyncio.get_running_loop()

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)
        self._pending_bytes += len(data)

    def buffered(self) -> int:
        """Bytes written and not yet taken by the socket: this turn's frames and asyncio's buffer."""
        return self._pending_bytes + self.transport.get_write_buffer_size()

    def flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            self._pending_bytes = 0
            if not self.writer.is_closing():
                self.writer.write(data)

    def is_closing(self) -> bool:
        return self.writer.is_closing()

    async def drain(self) -> None:
        self.flush()
        await self.writer.drain()

    def close(self) -> None:
        self.flush()
        self.writer.close()


class _Mailbox:
    """A FIFO of one connection's messages between the link's reader and the connection's handler: the
    part of `asyncio.Queue` the relay uses (no maxsize, no task_done/join), for one per relayed request.
    An `asyncio.Queue` is an Event, three deques and their bookkeeping per request, and a put or a get
    runs through its waiter wake-ups and unfinished-task count even when nobody waits: ~1% of a relayed
    signed order's instructions on the engine's loop (issue 18). Getters that wait are woken in order,
    one per message, and a getter cancelled while waiting leaves the message for the next one, as
    with `asyncio.Queue`."""

    __slots__ = ("_items", "_getters")

    def __init__(self) -> None:
        self._items: collections.deque[Any] = collections.deque()
        self._getters: collections.deque[asyncio.Future[None]] | None = None  # made by the first wait

    def qsize(self) -> int:
        return len(self._items)

    def empty(self) -> bool:
        return not self._items

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        if self._getters:
            self._wake_next()

    def get_nowait(self) -> Any:
        if not self._items:
            raise asyncio.QueueEmpty
        return self._items.popleft()

    async def get(self) -> Any:
        items = self._items
        while not items:
            getter = asyncio.get_running_loop().create_future()
            if self._getters is None:
                self._getters = collections.deque()
            self._getters.append(getter)
            try:
                await getter
            except BaseException:
                getter.cancel()
                with contextlib.suppress(ValueError):
                    self._getters.remove(getter)
                if items and not getter.cancelled():
                    self._wake_next()  # woken for a message it will not take: the next getter takes it
                raise
        return items.popleft()

    def _wake_next(self) -> None:
        getters = self._getters
        while getters:  # (a getter cancelled meanwhile is done: skipped)
            getter = getters.popleft()
            if not getter.done():
                getter.set_result(None)
                break


class _Inbound:
    """What a client sent that the engine's handler has not read yet: bounded (see the module docstring)."""

    def __init__(self, scope_type: str, sid: int = 0, writer: _Batched | None = None) -> None:
        self.scope_type = scope_type
        self.sid = sid
        self.writer = writer
        self.queue = _Mailbox()
        self.bytes = 0
        self.overflowed = False

    def put(self, message: dict[str, Any]) -> bool:
        """Queue `message`; False (and the handler told the client is gone) if that is too many."""
        if self.overflowed:
            return True  # already cut off (shutting down): the message is dropped
        size = _size(message)
        if self.queue.qsize() >= MAX_INBOUND_MESSAGES or self.bytes + size > MAX_INBOUND_BYTES:
            self.overflowed = True
            while not self.queue.empty():
                self.queue.get_nowait()
            self.bytes = 0
            self.queue.put_nowait(_disconnect(self.scope_type, TOO_MANY_MESSAGES[0]))
            return False
        self.bytes += size
        self.queue.put_nowait(message)
        return True

    async def get(self) -> dict[str, Any]:
        message = await self.queue.get()
        self.bytes = max(0, self.bytes - _size(message))
        return message


# ---------------------------------------------------------------- engine side


class EngineLink:
    """The engine's end of one gateway link, written to without waiting (bounded by LINK_MAX_BUFFER_BYTES)."""

    def __init__(self, writer: _Batched) -> None:
        self.writer = writer
        self.aborted = False

    def write(self, data: bytes) -> bool:
        """Send `data` now (asyncio buffers what the socket does not take); False if the link is gone."""
        writer = self.writer
        if writer.is_closing():
            return False
        if writer.buffered() + len(data) > LINK_MAX_BUFFER_BYTES:
            if not self.aborted:
                self.aborted = True
                log.warning("relay.link_stalled", waiting_bytes=writer.buffered())
                writer.transport.abort()  # its reader ends every client of this link
            return False
        writer.write(data)
        return True

    def publish(self, stream: str, payload: bytes) -> bool:
        """One market-data message for every subscriber of `stream` on this link's gateway."""
        return self.write(_frame(PUB, 0, [stream, payload]))


class RelayedWebSocket:
    """The engine's handle on one relayed WebSocket client, for the stream hub (api/ws.py): text for
    this client alone goes on the link at once, in order with everything else on the link; its
    market-data subscriptions are also held by its gateway, which writes each PUB to it."""

    def __init__(self, link: EngineLink, sid: int, inbound: _Inbound) -> None:
        self.link = link
        self.sid = sid
        self.inbound = inbound

    def send_text(self, text: str) -> bool:
        if self.inbound.overflowed:
            return False
        return self.link.write(_frame(OUT, self.sid, {"type": "websocket.send", "text": text}))

    def subscribe(self, streams: list[str], combined: bool) -> None:
        if not self.inbound.overflowed:
            self.link.write(_frame(SUB, self.sid, [bool(combined), list(streams)]))

    def unsubscribe(self, streams: list[str]) -> None:
        self.link.write(_frame(UNSUB, self.sid, list(streams)))


class GatewayClaim:
    """What the engine's checks (api/auth.py `ApiGate.signed`) are told about a relayed request:
    the gateway's signature claim, if it made one, and how to teach that gateway a key."""

    __slots__ = ("api_key", "signature", "generation", "accepted", "_relay", "_writer")

    def __init__(self, relay: EngineRelay, writer: _Batched, claim: Any) -> None:
        self._relay = relay
        self._writer = writer
        self.api_key: str | None = None
        self.signature: str | None = None
        self.generation: Any = None
        self.accepted = False  #: set by the engine's checks when they believed the claim
        if isinstance(claim, list) and len(claim) == 3 and isinstance(claim[0], str) and isinstance(claim[1], str):
            self.api_key, self.signature, self.generation = claim[0], claim[1], claim[2]

    def claims(self, api_key: str, signature: str) -> bool:
        """Whether the gateway says it checked this very key's signature of this request."""
        return self.api_key == api_key and self.signature == signature

    def teach(self, api_key: str) -> None:
        """The engine verified a request with `api_key` itself: give the gateway that relayed it the key."""
        self._relay.teach(self._writer, api_key)


class EngineRelay:
    """ASGI wrapper for the engine process: once the app's lifespan has started (the sequencer runs),
    listen on `path` for gateways and run each relayed connection through the app on this loop."""

    def __init__(self, app: Any, path: Path, keys: Any = None) -> None:
        self.app = app
        self.path = Path(path)
        #: the engine's authenticator (api/auth.py IdentityAuthenticator): `key_generation()` and
        #: `key_material(api_key)`; None: the gateways check no signature (the engine does them all)
        self.keys = keys if keys is not None and getattr(keys, "key_generation", None) is not None else None
        self._generation_sent: Any = None
        self.taught = 0
        self.server: asyncio.AbstractServer | None = None
        self.relayed = 0
        self.disconnected_too_many = 0
        #: every gateway link (its reader task and writer) and every relayed connection's task, for shutdown
        self._links: dict[asyncio.Task[Any], _Batched] = {}
        self._streams: dict[tuple[int, int], _Inbound] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":  # uvicorn's own socket (run/http.sock): not a way in
            await send({"type": "http.response.start", "status": 421, "headers": [(b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        if scope["type"] != "lifespan":
            await send({"type": "websocket.close", "code": 1008})
            return

        async def lifespan_send(message: dict[str, Any]) -> None:
            if message["type"] == "lifespan.startup.complete":
                await self.start()
            elif message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await self.stop()
            await send(message)

        async def lifespan_receive() -> dict[str, Any]:
            message: dict[str, Any] = await receive()
            if message["type"] == "lifespan.shutdown":
                await self.stop()  # the relayed connections end before the app shuts down under them
            return message

        await self.app(scope, lifespan_receive, lifespan_send)

    async def start(self) -> None:
        from ..owned import make_own_folder

        # made, or checked as it is (not a link, this user's, closed to others): never chmod'ed through a link
        make_own_folder(self.path.parent, "--data", "could swap the engine's socket and read or answer every "
                        "gateway's requests", f"remove {self.path.parent} (it is not the node's) and start again")
        if self.path.exists() or self.path.is_symlink():
            self.path.unlink()
        old = os.umask(0o177)
        try:
            self.server = await asyncio.start_unix_server(self._connection, path=str(self.path), limit=MAX_FRAME_BYTES)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    async def stop(self, grace: float = 5.0) -> None:  # float-ok: seconds to wait, not money
        """No new gateway links; every relayed client told it is gone and its handler awaited (cancelled
        after `grace` seconds); every link closed. Idempotent."""
        if self.server is not None:
            self.server.close()
        for inbound in list(self._streams.values()):
            inbound.queue.put_nowait(_disconnect(inbound.scope_type, 1001))
            if inbound.scope_type == "websocket" and inbound.writer is not None and not inbound.writer.is_closing():
                inbound.overflowed = True  # nothing more from its handler: the client is told the server is going away
                inbound.writer.write(_frame(OUT, inbound.sid, {"type": "websocket.close", "code": 1001,
                                                               "reason": "server shutting down"}))
        self._streams.clear()
        tasks = list(self._tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        links = list(self._links.items())
        for task, writer in links:
            writer.close()
            task.cancel()
        await asyncio.gather(*(task for task, _ in links), return_exceptions=True)
        self._links.clear()
        if self.server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 1)

    def generation_now(self) -> Any:
        """The engine's key generation, sent to every link first if it moved since last sent."""
        if self.keys is None:
            return None
        generation = self.keys.key_generation()
        if generation != self._generation_sent:
            self._generation_sent = generation
            frame = _frame(GEN, 0, generation)
            for writer in self._links.values():
                if not writer.is_closing():
                    writer.write(frame)
        return generation

    def teach(self, writer: _Batched, api_key: str) -> None:
        if self.keys is None or writer.is_closing():
            return
        self.generation_now()  # the gateway hears of a new generation before a key stamped with it
        material = self.keys.key_material(api_key)
        if material is not None:
            self.taught += 1
            writer.write(_frame(KEY, 0, [api_key, *material]))

    async def _connection(self, reader: asyncio.StreamReader, raw: asyncio.StreamWriter) -> None:
        me = asyncio.current_task()
        assert me is not None
        writer = _Batched(raw)
        self._links[me] = writer
        if self.keys is not None:
            writer.write(_frame(GEN, 0, self.keys.key_generation()))
        link = id(writer)
        elink = EngineLink(writer)
        streams: dict[int, _Inbound] = {}
        frames = _FrameReader(reader)

        def arrived(sid: int, message: Any) -> None:  # a client's message (IN, or sent with its OPEN)
            found = streams.get(sid)
            if found is not None and not found.put(message):
                # too many unread messages: this client is cut off; the reader goes on with the others
                streams.pop(sid, None)
                self._streams.pop((link, sid), None)
                self.disconnected_too_many += 1
                log.warning("relay.too_many_messages", scope=found.scope_type,
                            messages=MAX_INBOUND_MESSAGES, bytes=MAX_INBOUND_BYTES)
                if found.scope_type == "websocket" and not writer.is_closing():
                    code, reason = TOO_MANY_MESSAGES
                    writer.write(_frame(OUT, sid, {"type": "websocket.close", "code": code, "reason": reason}))

        try:
            while True:
                kind, sid, payload = await frames.next()
                if kind == OPEN:
                    if type(payload) is not dict or payload.get("type") not in ("http", "websocket"):
                        raise ValueError("relay OPEN frame without an ASGI http or websocket scope")
                    early = payload.pop(EARLY, None)
                    if early is not None and (type(early) is not list or not all(type(m) is dict for m in early)):
                        raise ValueError("relay OPEN frame whose early messages are not ASGI messages")
                    self.generation_now()
                    inbound = _Inbound(payload["type"], sid, writer)
                    streams[sid] = self._streams[(link, sid)] = inbound
                    task = asyncio.get_running_loop().create_task(self._run(sid, payload, inbound, elink, streams, link))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                    if early:
                        for message in early:
                            arrived(sid, message)
                elif kind == IN:
                    arrived(sid, payload)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, msgspec.DecodeError):
            pass
        except asyncio.CancelledError:
            pass  # stop(): the server is shutting down
        finally:
            for sid, inbound in streams.items():  # the gateway went away: every client with it
                inbound.queue.put_nowait(_disconnect(inbound.scope_type))
                self._streams.pop((link, sid), None)
            streams.clear()
            writer.close()
            self._links.pop(me, None)

    async def _run(self, sid: int, wire_scope: dict[str, Any], inbound: _Inbound,
                   elink: EngineLink, streams: dict[int, Any], link: int) -> None:
        writer = elink.writer
        scope = {k: wire_scope[k] for k in _SCOPE_KEYS if k in wire_scope}
        scope["asgi"] = {"version": "3.0", "spec_version": "2.3"}
        scope["headers"] = [(bytes(k), bytes(v)) for k, v in scope.get("headers", ())]
        for key in ("client", "server"):
            if scope.get(key) is not None:
                scope[key] = (str(scope[key][0]), int(scope[key][1]))
        claim = GatewayClaim(self, writer, wire_scope.get("rf_verified")) if self.keys is not None else None
        scope["state"] = {"rf_gateway": claim} if claim is not None else {}
        scope["extensions"] = {}
        if scope.get("type") == "websocket":
            scope["extensions"][RELAY_EXTENSION] = RelayedWebSocket(elink, sid, inbound)
        self.relayed += 1

        # An HTTP answer's start is held until its body: a start and a last body (every answer of the
        # API's) go as one ANSWER frame, which also ends the stream (was OUT, OUT and END: three frames
        # encoded and written here, decoded and queued in the gateway, per request). A body with more
        # to come sends the start before it, as OUT; a start the app never followed with a body goes
        # out as OUT before the END, as before.
        held: dict[str, Any] | None = None
        answered = False

        async def send(message: dict[str, Any]) -> None:
            nonlocal held, answered
            if writer.is_closing():
                raise OSError("the gateway connection is closed")
            if inbound.overflowed:
                raise OSError("the client was disconnected (too many messages, or shutting down)")
            kind = message["type"]
            if kind == "http.response.start":
                if claim is not None and claim.accepted:
                    message["headers"] = [*message.get("headers", ()), CHECKED_BY_GATEWAY]
                if held is None and not answered:
                    held = message
                    return
            if held is not None:  # (a second start: the first goes first)
                start, held = held, None
                if kind == "http.response.body" and not message.get("more_body", False):
                    answered = True
                    writer.write(_frame(ANSWER, sid, [start, message]))
                    if writer.transport.get_write_buffer_size() > 1 << 20:
                        await writer.drain()
                    return
                writer.write(_frame(OUT, sid, start))
            writer.write(_frame(OUT, sid, message))
            if writer.transport.get_write_buffer_size() > 1 << 20:
                await writer.drain()

        try:
            await self.app(scope, inbound.get, send)
        except OSError:
            pass
        except Exception:  # one relayed connection's failure is logged and ends that connection only
            if not inbound.overflowed:
                log.exception("relay.app_failed", path=scope.get("path"))
        finally:
            if streams.get(sid) is inbound:
                streams.pop(sid, None)
            if self._streams.get((link, sid)) is inbound:
                self._streams.pop((link, sid), None)
            if not writer.is_closing():
                if held is not None:
                    writer.write(_frame(OUT, sid, held))
                if not answered:
                    writer.write(_frame(END, sid, None))


# ---------------------------------------------------------------- gateway side


def _without_body(scope: dict[str, Any]) -> bool:
    """An HTTP request that says it has no body (no Transfer-Encoding, no Content-Length but 0): its one
    `receive` message is there at once (or the client's disconnect), never waited for, and never a
    `100 Continue` sent on the client's behalf."""
    for name, value in scope.get("headers", ()):
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return False
    return True


async def _read_body(receive: Any) -> tuple[list[dict[str, Any]], bytes | None]:
    """A request's messages up to its whole body (or a disconnect), and the body (None: over
    MAX_VERIFIED_BODY, or the client left; the gateway then checks no signature)."""
    messages: list[dict[str, Any]] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages, None
        size += len(message.get("body", b""))
        if size > MAX_VERIFIED_BODY:
            return messages, None
        if not message.get("more_body", False):
            return messages, b"".join(m.get("body", b"") for m in messages)


class _Outbound:
    """What the engine sent for one client that the gateway has not written to it yet: bounded by
    MAX_PENDING_MESSAGES and MAX_PENDING_BYTES (a client past either is a slow consumer)."""

    def __init__(self) -> None:
        self.queue = _Mailbox()  # (dict | None: the end)
        self.bytes = 0

    def put(self, message: dict[str, Any]) -> bool:
        size = _size(message)
        if self.queue.qsize() >= MAX_PENDING_MESSAGES or self.bytes + size > MAX_PENDING_BYTES:
            return False
        self.bytes += size
        self.queue.put_nowait(message)
        return True

    def end(self, last: dict[str, Any] | None = None) -> None:
        """No more messages; `last` (a close) instead of what was still waiting, if given."""
        if last is not None:
            while not self.queue.empty():
                self.queue.get_nowait()
            self.bytes = 0
            self.queue.put_nowait(last)
        self.queue.put_nowait(None)

    async def get(self) -> dict[str, Any] | None:
        message = await self.queue.get()
        if message is not None:
            self.bytes = max(0, self.bytes - _size(message))
        return message


class _Subscriber:
    """A WebSocket client of this gateway: the streams its engine handler subscribed it to and, once
    its handshake is out, uvicorn's protocol, through which its frames go straight to its socket."""

    __slots__ = ("sid", "out", "proto", "streams", "combined")

    def __init__(self, sid: int, out: _Outbound) -> None:
        self.sid = sid
        self.out = out
        self.proto: Any = None
        self.streams: set[str] = set()
        self.combined = False

    def write(self, frame: bytes) -> bool:
        """Write `frame` without waiting; False when more than MAX_PENDING_BYTES would wait for the
        client (a slow consumer). A client already closing takes nothing more (True)."""
        proto = self.proto
        transport = proto.transport
        if proto.close_sent or proto.disconnected or transport.is_closing():
            return True
        if transport.get_write_buffer_size() + len(frame) > MAX_PENDING_BYTES:
            return False
        transport.write(frame)  # sent now if the socket takes it, else buffered by asyncio
        return True


class _Link:
    """One multiplexed connection from a gateway to the engine."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, keys: _GatewayKeys | None = None) -> None:
        self.reader = reader
        self.writer = _Batched(writer)
        self.keys = keys
        self.streams: dict[int, _Outbound] = {}
        self.scope_types: dict[int, str] = {}
        #: this link's WebSocket clients, and which of them hold each market-data stream
        self.clients: dict[int, _Subscriber] = {}
        self.subs: dict[str, dict[int, _Subscriber]] = {}
        self.slow_consumers = 0
        self.published = 0
        self.task = asyncio.get_running_loop().create_task(self._pump())

    async def _pump(self) -> None:
        frames = _FrameReader(self.reader)
        try:
            while True:
                kind, sid, payload = await frames.next()
                if kind == PUB:
                    self._publish(str(payload[0]), bytes(payload[1]))
                    continue
                if kind == GEN or kind == KEY:
                    if self.keys is not None:
                        self.keys.heard(kind, payload)
                    continue
                out = self.streams.get(sid)
                if out is None:
                    continue
                client = self.clients.get(sid)
                if kind == OUT:
                    if client is not None and client.proto is not None:
                        self.deliver(client, payload)
                    elif not out.put(payload):  # too slow: dropped, and the engine told
                        self._slow(sid)
                elif kind == SUB and client is not None:
                    combined, names = payload
                    client.combined = bool(combined)
                    for name in names:
                        client.streams.add(name)
                        self.subs.setdefault(name, {})[sid] = client
                elif kind == UNSUB and client is not None:
                    self.unsubscribe(client, payload)
                elif kind == END:
                    out.end()
                elif kind == ANSWER:  # an HTTP answer whole: its start, its body, the end
                    if out.put(payload[0]) and out.put(payload[1]):
                        out.end()
                    else:
                        self._slow(sid)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, TypeError, msgspec.DecodeError, asyncio.CancelledError):
            pass
        finally:
            for out in self.streams.values():
                out.end()
            self.streams.clear()
            self.writer.close()

    def unsubscribe(self, client: _Subscriber, names: Any) -> None:
        for name in names:
            client.streams.discard(name)
            holders = self.subs.get(name)
            if holders is not None:
                holders.pop(client.sid, None)
                if not holders:
                    del self.subs[name]

    def _publish(self, stream: str, payload: bytes) -> None:
        """One market-data message from the engine: the same frame to every subscriber of `stream` here."""
        holders = self.subs.get(stream)
        if not holders:
            return
        frames: dict[bool, tuple[bytes, bytes]] = {}
        for client in list(holders.values()):
            framed = frames.get(client.combined)
            if framed is None:
                data = (b'{"stream":' + json.dumps(stream).encode() + b',"data":' + payload + b"}") if client.combined else payload
                framed = frames[client.combined] = (data, text_frame(data))
            if client.proto is not None:
                ok = client.write(framed[1])
            else:  # its handshake is still queued: the message waits behind it
                ok = client.out.put({"type": "websocket.send", "text": framed[0].decode()})
            if ok:
                self.published += 1
            else:
                self._slow(client.sid)

    def deliver(self, client: _Subscriber, message: dict[str, Any]) -> None:
        """An engine message for a client written to directly: a frame, or the close."""
        kind = message.get("type")
        if kind == "websocket.send":
            text = message.get("text")
            frame = text_frame(text.encode()) if text is not None else binary_frame(bytes(message.get("bytes") or b""))
            if not client.write(frame):
                self._slow(client.sid)
        elif kind == "websocket.close":
            if not close_direct(client.proto, int(message.get("code", 1000)), str(message.get("reason") or "")):
                client.proto.transport.abort()  # uvicorn's internals moved: the client is at least not held

    def _slow(self, sid: int) -> None:
        """A client past its bound: closed with 1008 "slow consumer", and its handler in the engine told."""
        out = self.streams.pop(sid, None)
        if out is None:
            return
        self.slow_consumers += 1
        code, reason = SLOW_CONSUMER
        client = self.clients.pop(sid, None)
        if client is not None:
            self.unsubscribe(client, list(client.streams))
        if client is not None and client.proto is not None:
            if not close_direct(client.proto, code, reason):
                client.proto.transport.abort()
            out.end()
        else:
            out.end({"type": "websocket.close", "code": code, "reason": reason}
                    if self.scope_types.get(sid) == "websocket" else None)
        if not self.writer.is_closing():
            self.writer.write(_frame(IN, sid, _disconnect(self.scope_types.get(sid, "http"), code)))

    @property
    def alive(self) -> bool:
        return not self.task.done() and not self.writer.is_closing()

    async def close(self) -> None:
        self.writer.close()
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


def binary_frame(data: bytes) -> bytes:
    """text_frame's binary twin (opcode 2)."""
    frame = bytearray(text_frame(data))
    frame[0] = 0x82
    return bytes(frame)


class _GatewayKeys:
    """The keys a gateway was taught (module docstring): api key -> (generation, kind, verifier)."""

    MAX_KEYS = 100_000

    def __init__(self) -> None:
        self.generation: Any = None
        self.keys: dict[str, tuple[Any, str, Any]] = {}
        self.checked = 0

    def heard(self, kind: int, payload: Any) -> None:
        if kind == GEN:
            if payload != self.generation:
                self.generation = payload
                self.keys = {k: v for k, v in self.keys.items() if v[0] == payload}
            return
        api_key, generation, key_kind, material = payload
        if generation != self.generation or not isinstance(material, bytes):
            return  # taught before a change this gateway has already heard of: not worth keeping
        if key_kind == "hmac":
            verifier: Any = material
        elif key_kind == "ed25519":
            verifier = Ed25519PublicKey.from_public_bytes(material)
        else:
            return
        if len(self.keys) >= self.MAX_KEYS:
            self.keys.clear()
        self.keys[str(api_key)] = (generation, key_kind, verifier)

    def wants(self, scope: dict[str, Any]) -> str | None:
        """The known api key of a signed HTTP request, if this gateway can check its signature."""
        if scope["type"] != "http" or not self.keys:
            return None
        for name, value in scope.get("headers", ()):
            if name == b"x-mbx-apikey":
                api_key = value.decode("latin-1")
                return api_key if api_key in self.keys else None
        return None

    def check(self, api_key: str, query_string: bytes, body: bytes) -> list[Any] | None:
        """`[api_key, signature, generation]` when the request's signature verifies with the key as
        taught, else None (the engine then checks it itself and answers whatever is wrong)."""
        entry = self.keys.get(api_key)
        if entry is None:
            return None
        generation, kind, verifier = entry
        try:
            payload, signature = split_signature(query_string.decode("ascii"), body.decode("ascii"))
        except Exception:  # non-ASCII or a duplicate signature: the engine gives the answer
            return None
        raw = decode_signature(kind, signature) if signature else None
        if raw is None:
            return None
        if kind == "hmac":
            if not hmac.compare_digest(hmac.digest(verifier, payload, "sha256"), raw):  # one-shot: OpenSSL's HMAC in one call
                return None
        else:
            try:
                verifier.verify(raw, payload)
            except Exception:  # InvalidSignature: the engine answers it (-1022), as for any bad signature
                return None
        self.checked += 1
        return [api_key, signature, generation]


class GatewayRelay:
    """The gateway's ASGI app: every connection relayed to the engine (see the module docstring)."""

    def __init__(self, path: Path, links: int = 4, index: int = 1, freeze_heap: bool = False) -> None:
        self.path = str(path)
        self.keys = _GatewayKeys()
        #: at the lifespan's start-up (the gateway process: `main`), move the start-up heap out of the
        #: cyclic GC's way and collect the youngest generation every serve.GC_YOUNG_THRESHOLD
        #: allocations, as the engine process does (`freeze_heap_for_serving`)
        self.freeze_heap = freeze_heap
        self.heap: dict[str, int] | None = None
        #: Which gateway answered (`X-Ringfence-Gateway: k` on every HTTP response and WebSocket
        #: handshake): for operators and tests.
        self.header = (b"x-ringfence-gateway", str(index).encode())
        self.links_wanted = links
        self.links: list[_Link] = []
        self._ids = itertools.count(1)
        self._next = itertools.count()
        self._lock: asyncio.Lock | None = None
        #: WebSocket frames written straight to the client's socket (ws_wire.py); "0" sends each
        #: message through the per-connection queue and the ASGI `send` (the reference path).
        self.direct_writes = os.environ.get("RINGFENCE_WS_DIRECT_WRITES", "1") != "0"

    async def _link(self) -> _Link:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            self.links = [link for link in self.links if link.alive]
            if len(self.links) < self.links_wanted:
                reader, writer = await asyncio.open_unix_connection(self.path, limit=MAX_FRAME_BYTES)
                self.links.append(_Link(reader, writer, self.keys))
                return self.links[-1]
            return self.links[next(self._next) % len(self.links)]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    if self.freeze_heap:
                        self.heap = heap = freeze_heap_for_serving()
                        print(f"ringfence gateway {self.header[1].decode()}: start-up heap frozen out of the cyclic GC: "
                              f"{heap['frozen']:,} objects; a full collection took {heap['full_collection_cpu_us_before'] / 1000:.1f} "
                              f"ms of CPU, now {heap['full_collection_cpu_us_after'] / 1000:.1f} ms", file=sys.stderr, flush=True)
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await self.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        try:
            link = await self._link()
        except OSError:
            if scope["type"] == "http":
                body = b'{"code":-1000,"msg":"The engine is not reachable from this gateway; try again."}'
                await send({"type": "http.response.start", "status": 503,
                            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
            else:
                await send({"type": "websocket.close", "code": 1011})
            return
        sid = next(self._ids)
        out = _Outbound()
        wire = {k: scope[k] for k in _SCOPE_KEYS if k in scope}
        early: list[dict[str, Any]] = []
        api_key = self.keys.wants(scope)
        if api_key is not None:  # a signed request with a key this gateway knows: read it whole, check it
            early, whole = await _read_body(receive)
            if whole is not None:
                claim = self.keys.check(api_key, scope.get("query_string", b""), whole)
                if claim is not None:
                    wire["rf_verified"] = claim
        elif scope["type"] == "http" and _without_body(scope):  # nothing to wait for: its one message now
            early = [await receive()]
        if early:
            wire[EARLY] = early  # with the OPEN, not an IN frame each
        link.streams[sid] = out
        link.scope_types[sid] = scope["type"]
        client = None
        if scope["type"] == "websocket":
            client = link.clients[sid] = _Subscriber(sid, out)
        link.writer.write(_frame(OPEN, sid, wire))
        gone = bool(early) and early[-1]["type"] == "http.disconnect"  # nothing more to read from this client
        finished = asyncio.Event()

        async def pump_in() -> None:
            while not finished.is_set() and not gone:
                message = await receive()
                if link.writer.is_closing():
                    return
                link.writer.write(_frame(IN, sid, message))
                if message["type"] in ("http.disconnect", "websocket.disconnect"):
                    return
                if link.writer.transport.get_write_buffer_size() > LINK_HIGH_WATER:
                    # the engine is not keeping up with this link: read no more from this client until
                    # it does (its TCP connection is throttled, the others' requests are not held behind it)
                    try:
                        await link.writer.drain()
                    except OSError:  # the link is gone: its reader ends this client's stream
                        return

        inbound = asyncio.get_running_loop().create_task(pump_in())
        reply: dict[str, Any] | None = None
        closed = False
        try:
            while True:
                reply = await out.get()
                if reply is None:
                    break
                if reply["type"] in ("http.response.start", "websocket.accept"):
                    reply["headers"] = [*reply.get("headers", ()), self.header]
                elif reply["type"] == "websocket.close":
                    closed = True
                await send(reply)
                if client is not None and reply["type"] == "websocket.accept" and self.direct_writes:
                    self._go_direct(link, client, send)
        except OSError:
            pass  # the client went away: its disconnect reaches the engine through pump_in
        finally:
            finished.set()
            link.streams.pop(sid, None)
            link.scope_types.pop(sid, None)
            if client is not None:
                link.clients.pop(sid, None)
                link.unsubscribe(client, list(client.streams))
            if not inbound.done():
                inbound.cancel()
                await asyncio.gather(inbound, return_exceptions=True)
            if client is not None and client.proto is not None and client.proto.close_sent:
                closed = True  # by the pump, straight on the socket
            if scope["type"] == "websocket" and reply is None and not closed:
                try:
                    await send({"type": "websocket.close", "code": 1000})
                except Exception:  # already closed
                    pass

    @staticmethod
    def _go_direct(link: _Link, client: _Subscriber, send: Any) -> bool:
        """After the handshake: the pump writes this client's frames straight to its socket from now on
        (what is queued behind the handshake first, in order). False if that cannot be done here."""
        proto = uvicorn_protocol(send)
        if proto is None:
            return False
        client.proto = proto
        out = client.out
        while not out.queue.empty():
            message = out.queue.get_nowait()
            if message is None:
                out.queue.put_nowait(None)
                break
            out.bytes = max(0, out.bytes - _size(message))
            link.deliver(client, message)
        return True

    async def close(self) -> None:
        for link in self.links:
            await link.close()
        self.links = []


# ---------------------------------------------------------------- the gateway process


def freeze_heap_for_serving() -> dict[str, int]:
    """A gateway process's start-up heap (uvicorn, the protocols, msgspec, cryptography: ~42,000
    tracked objects) out of the cyclic collector's way, and its youngest generation collected every
    serve.GC_YOUNG_THRESHOLD allocations instead of Python's 700 (serve.freeze_startup_heap, the
    engine's own). Under bench/api.py's open loop at 950 orders/s a gateway at the defaults ran
    112-308 young collections and a full one (23-86 ms, its event loop stopped, every request it
    holds delayed) in 10 s (bench/profile_api.py --gateways 1 --rate 950, docs/latency.md)."""
    from .serve import freeze_startup_heap

    return freeze_startup_heap()


def main(argv: list[str] | None = None) -> None:
    """`python -m ringfence.api.relay FD[,FD] ENGINE_SOCKET INDEX [PROXIES]`: one gateway process, started by
    `ringfence serve --gateways N` (not a command for people: serve passes it the listening sockets, host:port and,
    for a wildcard or loopback host, the other address family's twin: listening.py)."""
    import signal

    import uvicorn

    args = sys.argv[1:] if argv is None else argv
    fds, engine, index = [int(fd) for fd in args[0].split(",")], Path(args[1]), int(args[2])
    proxies = [p for p in (args[3] if len(args) > 3 else "").split(",") if p]
    socks = [socket.socket(fileno=fd) for fd in fds]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    from .http_wire import DeadlineHttpProtocol, check_settings
    from .ws_wire import BudgetedWebSocketProtocol

    check_settings()  # `serve` checked them before starting this process: a bad value stops it here too

    config = uvicorn.Config(GatewayRelay(engine, index=index, freeze_heap=True), log_level="warning", lifespan="on", ws_max_size=65536,
                            ws=BudgetedWebSocketProtocol, http=DeadlineHttpProtocol,
                            ws_per_message_deflate=False, timeout_graceful_shutdown=10,
                            proxy_headers=bool(proxies), forwarded_allow_ips=proxies or [])
    try:
        uvicorn.Server(config).run(sockets=socks)
    finally:
        for sock in socks:
            sock.close()


if __name__ == "__main__":
    main()
