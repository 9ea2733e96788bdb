"""WebSocket streams in Binance's shape, fanned out from the read models after each batch.

Streams: `<symbol>@depth` (and `@depth@100ms`): diffs with first/last update ids (`U`/`u`) so a
client can rebuild the book from a REST snapshot exactly; `<symbol>@trade`; `<symbol>@kline_<i>`;
`<symbol>@ticker`; and `<listenKey>`: the user data stream (`executionReport`,
`outboundAccountPosition`; a futures key gets `ORDER_TRADE_UPDATE` / `ACCOUNT_UPDATE` from
derivatives/stream.py instead, also at `/private/ws?listenKey=`). Raw streams at `/ws/<stream>`,
combined at `/stream?streams=a/b` (`{"stream": name, "data": payload}`);
`{"method": "SUBSCRIBE", "params": [...], "id": n}` messages work on both. Garbage gets an answer, never an exception: a binary frame closes with
1003, an oversized request with 1009, and invalid JSON, JSON nested too deep (checked before the
parser runs) or a malformed request get `{"error": {"code": 3, ...}}` on a connection that stays
open; invalid UTF-8 in a text frame is closed with 1007 by the WebSocket layer itself.

Depth diffs are coalesced to one message per book per batch (`coalesce_diffs`). In an engine behind
gateways (`serve --gateways N`) a relayed connection's market data is fanned out by its gateway:
`publish` sends each message once per gateway link and the gateway writes it to its subscribers
(api/relay.py, which also holds the slow-consumer bound for them); what is for one connection alone
(replies) goes on its link at once, so it stays in order with the data.

Each message is serialised once and offered to each subscriber's queue without ever waiting; a
subscriber whose queue fills (more than `MAX_QUEUE` messages or `MAX_QUEUE_BYTES` characters of
JSON waiting: it reads too slowly, or stopped reading) is closed with 1008 "slow consumer" rather
than allowed to hold memory, block its own request loop or delay others. Replies to requests go
through the same queue and the same bound. When the client goes away, the sender fails or the
connection is closed for any reason, the whole handler ends and the connection leaves the hub
(its subscriptions, its slot in `MAX_CONNECTIONS` and in `MAX_CONNECTIONS_PER_IP`, its queue).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from typing import Any

import structlog
from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from ..money import format_amount
from ..solvency.pol_verifier import json_nesting_depth
from ..trading.commands import Trade
from ..trading.marketdata import KLINE_INTERVALS_NS
from .orders import OrderRecord
from .relay import RELAY_EXTENSION
from .service import Exchange
from .ws_wire import CLOSE_TIMEOUT_S, TOO_MANY_MESSAGES, TokenBucket, close_direct, text_frame, uvicorn_protocol

halt_log = structlog.get_logger("ringfence.halts")

__all__ = ["KeepRawWebSocketSend", "StreamHub", "build_ws_router", "quiet_client_garbage"]

#: Per connection, messages waiting to be sent: at most this many, and at most this many characters
#: of JSON text (ASCII: one byte each); past either bound the client is a slow consumer (1008).
#: On a connection written to directly (see `direct_protocol`) the bound is on the bytes asyncio
#: holds for the socket (what the kernel did not take). RINGFENCE_WS_MAX_QUEUE_BYTES overrides it.
MAX_QUEUE = 10_000
MAX_QUEUE_BYTES = int(os.environ.get("RINGFENCE_WS_MAX_QUEUE_BYTES", 4 * 1024 * 1024))
#: Raised and lifted halts (venue-wide stream; Binance has no equivalent).
HALTS_STREAM = "!halts"
#: Internal stream names of WebSocket API user data subscriptions (not a name a client can subscribe to).
USER_STREAM_PREFIX = "~user:"
MAX_STREAMS_PER_CONNECTION = 200
MAX_CONNECTIONS = 5_000
#: Concurrent connections from one client address (the TCP peer, or X-Forwarded-For from a trusted
#: proxy); more are closed with 1013.
MAX_CONNECTIONS_PER_IP = 50
SLOW_CONSUMER = (1008, "slow consumer")
#: A request frame: at most this many characters (1009 above it; uvicorn closes frames over
#: 64 KiB itself), nesting at most this deep (checked before parsing), text only (1003 for binary).
MAX_REQUEST_CHARS = 4096
#: Requests (SUBSCRIBE, UNSUBSCRIBE, LIST_SUBSCRIPTIONS, anything sent) a market-stream connection may
#: send: a bucket of INCOMING_BURST refilled at INCOMING_PER_S a second (Binance allows 5-10 a second
#: and disconnects past that). Past it the connection is closed with 1008 "too many messages", whatever
#: the speed of the server: a flood is cut off after the burst, not when a queue somewhere fills.
INCOMING_PER_S = int(os.environ.get("RINGFENCE_WS_INCOMING_PER_S", 10))
INCOMING_BURST = int(os.environ.get("RINGFENCE_WS_INCOMING_BURST", 50))
MAX_REQUEST_DEPTH = 4


RAW_SEND_KEY = "ringfence.ws_raw_send"


class KeepRawWebSocketSend:
    """ASGI wrapper (outermost, in serve.py): keeps the server's own `send` of a WebSocket
    connection in its scope, under RAW_SEND_KEY, before Starlette wraps it; `direct_protocol`
    finds uvicorn's protocol object through it."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            scope[RAW_SEND_KEY] = send
        await self.app(scope, receive, send)


def direct_protocol(ws: WebSocket) -> Any:
    """uvicorn's WebSocket protocol object behind `ws` when frames can be written straight to its
    transport (ws_wire.uvicorn_protocol), else None (then messages go through the queue and `send_text`)."""
    return uvicorn_protocol(ws.scope.get(RAW_SEND_KEY))


class IncomingBudget(TokenBucket):
    """The request budget of one market-stream connection: INCOMING_BURST at once, INCOMING_PER_S a second."""

    def __init__(self, per_s: int = INCOMING_PER_S, burst: int = INCOMING_BURST) -> None:
        super().__init__(per_s, burst)


class Connection:
    def __init__(self, ws: WebSocket, combined: bool, ip: str = "") -> None:
        self.ws = ws
        self.combined = combined
        self.ip = ip
        #: Bounded by `offer` (messages and characters), never by a blocking put.
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self.queued_chars = 0
        self.streams: set[str] = set()
        #: WebSocket API connections (api/ws_api.py): events go out as {"subscriptionId": n, "event": ...}
        self.subscription_id: int | None = None
        self.dropped = False
        #: (code, reason) when the server ends the connection for a reason of its own (`end`)
        self.close_reason: tuple[int, str] | None = None
        #: Set when the client stopped keeping up (or `end` was called): the handler closes the connection.
        self.slow = asyncio.Event()
        #: uvicorn's protocol when frames are written to the socket directly (`direct_protocol`).
        self.direct: Any = None
        #: In a `serve --gateways N` engine: the client's relay handle (api/relay.py RelayedWebSocket).
        #: Its market data is fanned out by its gateway; what is offered to it alone goes on the link at once.
        self.relay: Any = None

    def offer(self, text: str, frame: bytes | None = None) -> bool:
        """Queue `text` without waiting (or, on a direct connection, write its frame — `frame` if
        the caller built it once for every subscriber); False (and the connection marked slow)
        when it is full."""
        if self.dropped:
            return False
        if self.relay is not None:  # on the gateway link now, in order; the gateway bounds what waits for the client
            if self.relay.send_text(text):
                return True
            self.dropped = True  # the link or the client is gone: the relay ends this handler
            return False
        direct = self.direct
        if direct is not None:
            transport = direct.transport
            if direct.close_sent or direct.disconnected or transport.is_closing():
                return False  # closing: the handler is ending it
            if frame is None:
                frame = text_frame(text.encode())
            if transport.get_write_buffer_size() + len(frame) > MAX_QUEUE_BYTES:
                return self._slow()
            transport.write(frame)  # sent now if the socket takes it, else buffered by asyncio
            return True
        if self.queue.qsize() >= MAX_QUEUE or self.queued_chars + len(text) > MAX_QUEUE_BYTES:
            return self._slow()
        self.queue.put_nowait(text)
        self.queued_chars += len(text)
        return True

    def end(self, code: int, reason: str) -> None:
        """Stop sending to this connection now and have its handler close it with (code, reason)."""
        if self.close_reason is None:
            self.close_reason = (code, reason)
        self.dropped = True
        self.discard()
        self.slow.set()

    def _slow(self) -> bool:
        self.dropped = True
        self.discard()
        self.slow.set()
        return False

    async def next(self) -> str:
        text = await self.queue.get()
        self.queued_chars -= len(text)
        return text

    def discard(self) -> None:
        """Free whatever is still queued."""
        self.queue = asyncio.Queue()
        self.queued_chars = 0


class StreamHub:
    def __init__(self, exchange: Exchange, listen_keys: Any) -> None:
        self.ex = exchange
        self.listen_keys = listen_keys
        #: api/access.py's watcher (set by the app): settled before a listen key is trusted
        self.access: Any = None
        #: Every connection subscribed to each stream, ...
        self.subs: dict[str, set[Connection]] = {}
        #: ... those this process writes to itself, ...
        self._local: dict[str, set[Connection]] = {}
        #: ... and, for connections relayed by gateways (`serve --gateways N`), how many subscribers
        #: each gateway link holds: a message goes once to each link, and the gateway writes it to
        #: its own subscribers (api/relay.py).
        self._remote: dict[str, dict[Any, int]] = {}
        self.connections: set[Connection] = set()
        self.per_ip: dict[str, int] = {}
        self.messages_sent = 0
        #: Write frames straight to uvicorn's transport where possible (`direct_protocol`); False
        #: sends every message through a per-connection queue and `send_text` (the reference path).
        self.direct_writes = os.environ.get("RINGFENCE_WS_DIRECT_WRITES", "1") != "0"
        #: A prometheus Histogram (set by the app): seconds to serialise and write one message to all its subscribers.
        self.fanout_seconds: Any = None
        exchange.batch_subscribers.append(self.on_batch)
        exchange.history.subscribers.append(self.on_user_event)
        self._touched_owners: dict[str, set[str]] = {}

    # ------------------------------------------------------------------ subscriptions

    def valid_stream(self, name: str) -> bool:
        if name == HALTS_STREAM or self.listen_keys.owner(name, kind=None) is not None:  # spot or futures key
            return True
        if "@" not in name:
            return False
        symbol, _, kind = name.partition("@")
        # Data is published under the lower-case symbol only (as on Binance): `BTCUSDT@trade` would
        # be accepted and never receive anything.
        if not symbol or symbol != symbol.lower() or not self.ex.has_market(symbol.upper()):
            return False
        if kind in ("depth", "depth@100ms", "trade", "ticker"):
            return True
        return kind.startswith("kline_") and kind[6:] in KLINE_INTERVALS_NS

    def subscribe(self, conn: Connection, names: list[str]) -> list[str]:
        bad = [n for n in names if not self.valid_stream(n)]
        if bad:
            return bad
        added: list[str] = []
        try:
            for name in names:
                if len(conn.streams) >= MAX_STREAMS_PER_CONNECTION:
                    return [name]
                if name not in conn.streams:
                    self._attach(conn, name)
                    added.append(name)
            return []
        finally:
            if added and conn.relay is not None:  # before the reply: the gateway fans the next message out to it
                conn.relay.subscribe(added, conn.combined)

    def _attach(self, conn: Connection, name: str) -> None:
        conn.streams.add(name)
        self.subs.setdefault(name, set()).add(conn)
        if conn.relay is None:
            self._local.setdefault(name, set()).add(conn)
        else:
            links = self._remote.setdefault(name, {})
            links[conn.relay.link] = links.get(conn.relay.link, 0) + 1

    def _detach(self, conn: Connection, name: str) -> None:
        conn.streams.discard(name)
        for table in (self.subs, self._local):
            subscribers = table.get(name)
            if subscribers is not None:
                subscribers.discard(conn)
                if not subscribers:
                    del table[name]
        if conn.relay is not None and (links := self._remote.get(name)) is not None:
            left = links.get(conn.relay.link, 0) - 1
            if left > 0:
                links[conn.relay.link] = left
            else:
                links.pop(conn.relay.link, None)
                if not links:
                    del self._remote[name]

    def subscribe_user(self, conn: Connection, owner: str, subscription_id: int) -> None:
        """A WebSocket API connection's user data stream (`userDataStream.subscribe`): the account's
        events, wrapped with the subscription id as Binance's WebSocket API sends them."""
        name = USER_STREAM_PREFIX + owner
        conn.subscription_id = subscription_id
        if name not in conn.streams:
            self._attach(conn, name)

    def end_listen_keys(self, keys: set[str]) -> None:
        """Close every socket subscribed to one of `keys` (dropped: their credential was revoked)."""
        from .access import REVOKED_CLOSE, REVOKED_REASON

        for key in keys:
            for conn in list(self.subs.get(key, ())):
                self.unsubscribe(conn, [key])
                conn.end(REVOKED_CLOSE, REVOKED_REASON)

    async def settle_access(self) -> None:
        if self.access is not None:
            await self.access.settle()

    def unsubscribe_user(self, conn: Connection) -> None:
        self.unsubscribe(conn, [n for n in conn.streams if n.startswith(USER_STREAM_PREFIX)])
        conn.subscription_id = None

    def unsubscribe(self, conn: Connection, names: list[str]) -> None:
        gone = [name for name in dict.fromkeys(names) if name in conn.streams]
        for name in gone:
            self._detach(conn, name)
        if gone and conn.relay is not None:
            conn.relay.unsubscribe(gone)

    def admit(self, conn: Connection) -> str | None:
        """Register `conn`, or the reason it is refused (close with 1013)."""
        if len(self.connections) >= MAX_CONNECTIONS:
            return "too many connections"
        if self.per_ip.get(conn.ip, 0) >= MAX_CONNECTIONS_PER_IP:
            return "too many connections from this address"
        self.connections.add(conn)
        self.per_ip[conn.ip] = self.per_ip.get(conn.ip, 0) + 1
        return None

    def drop(self, conn: Connection) -> None:
        """Forget `conn` (idempotent): its subscriptions, its connection slots, its queue."""
        self.unsubscribe(conn, list(conn.streams))
        if conn in self.connections:
            self.connections.discard(conn)
            left = self.per_ip.get(conn.ip, 0) - 1
            if left > 0:
                self.per_ip[conn.ip] = left
            else:
                self.per_ip.pop(conn.ip, None)
        conn.discard()

    def publish(self, stream: str, payload: dict[str, Any]) -> None:
        subscribers = self._local.get(stream)
        links = self._remote.get(stream)
        if not subscribers and not links:
            return
        started = time.perf_counter()
        raw = json.dumps(payload, separators=(",", ":"))
        if links:  # once per gateway link, whatever its number of subscribers
            data = raw.encode()
            for link, count in list(links.items()):
                if link.publish(stream, data):
                    self.messages_sent += count
        combined = None
        raw_frame = combined_frame = None
        for conn in list(subscribers or ()):
            if conn.subscription_id is not None:  # a WebSocket API session: its own wrapper, its own frame
                text = '{"subscriptionId":' + str(conn.subscription_id) + ',"event":' + raw + "}"
                frame = None
            elif conn.combined:
                if combined is None:
                    combined = '{"stream":' + json.dumps(stream) + ',"data":' + raw + "}"
                text = combined
                if conn.direct is not None and combined_frame is None:
                    combined_frame = text_frame(combined.encode())
                frame = combined_frame
            else:
                text = raw
                if conn.direct is not None and raw_frame is None:
                    raw_frame = text_frame(raw.encode())
                frame = raw_frame
            if conn.offer(text, frame):
                self.messages_sent += 1
            else:  # a slow consumer: no more data for it; its handler closes it and drops it
                self.unsubscribe(conn, list(conn.streams))
        if self.fanout_seconds is not None:
            self.fanout_seconds.observe(time.perf_counter() - started)

    # ------------------------------------------------------------------ market data fan-out

    def on_batch(self, first_seq: int, ts_ns: int, outputs: list[list[Any]], before: dict[str, int]) -> None:
        event_ms = ts_ns // 1_000_000
        touched: set[str] = set()
        for symbol, sd in self.ex.marketdata.symbols.items():
            if sd.update_id != before.get(symbol, 0):
                touched.add(symbol)
                low = symbol.lower()
                if self.subs.get(low + "@depth") or self.subs.get(low + "@depth@100ms"):
                    m = self.ex.market(symbol)
                    diffs = sd.diffs_after(before.get(symbol, 0))
                    if diffs:  # one message per book per batch
                        diff = coalesce_diffs(diffs)
                        payload = {
                            "e": "depthUpdate",
                            "E": diff["ts_ns"] // 1_000_000,
                            "s": symbol,
                            "U": diff["first_update_id"],
                            "u": diff["last_update_id"],
                            "b": [[format_amount(p, m.quote_decimals), format_amount(q, m.base_decimals)] for p, q in diff["bids"]],
                            "a": [[format_amount(p, m.quote_decimals), format_amount(q, m.base_decimals)] for p, q in diff["asks"]],
                        }
                        self.publish(low + "@depth", payload)
                        self.publish(low + "@depth@100ms", payload)
        for events in outputs:
            for e in events:
                kind = type(e).__name__
                if kind in ("HaltRaised", "HaltLifted"):
                    # in the log too, raised or lifted, by anyone or by the exchange itself (an index with
                    # too few live sources, a price band): what an operator reading it must not miss
                    halt_log.warning("halt.raised" if kind == "HaltRaised" else "halt.lifted", halt_id=e.halt_id,
                                     scope_kind=e.scope_kind, scope=e.scope, level=e.level, reason=e.reason)
                if kind in ("HaltRaised", "HaltLifted") and self.subs.get(HALTS_STREAM):
                    self.publish(
                        HALTS_STREAM,
                        {
                            "e": "haltRaised" if kind == "HaltRaised" else "haltLifted",
                            "E": event_ms,
                            "id": e.halt_id,
                            "scopeKind": e.scope_kind,
                            "scope": e.scope,
                            "level": e.level,
                            "reason": e.reason,
                            "evidence": e.evidence,
                        },
                    )
                if type(e) is Trade:
                    touched.add(e.symbol)
                    low = e.symbol.lower()
                    if self.subs.get(low + "@trade"):
                        m = self.ex.market(e.symbol)
                        self.publish(
                            low + "@trade",
                            {
                                "e": "trade",
                                "E": event_ms,
                                "s": e.symbol,
                                "t": e.trade_id,
                                "p": format_amount(e.price, m.quote_decimals),
                                "q": format_amount(e.quantity, m.base_decimals),
                                "T": event_ms,
                                "m": e.taker_side == "SELL",
                                "M": True,
                            },
                        )
        for symbol in touched:
            self._klines_and_ticker(symbol, event_ms)
        self._account_positions(event_ms)

    def _klines_and_ticker(self, symbol: str, event_ms: int) -> None:
        low = symbol.lower()
        sd = self.ex.marketdata.symbols.get(symbol)
        if sd is None:
            return
        m = None
        for interval, width in KLINE_INTERVALS_NS.items():
            stream = f"{low}@kline_{interval}"
            if not self.subs.get(stream):
                continue
            rows = sd.kline_rows(interval, 1)
            if not rows:
                continue
            m = m or self.ex.market(symbol)
            r = rows[-1]
            start_ms = r[0] // 1_000_000
            self.publish(
                stream,
                {
                    "e": "kline",
                    "E": event_ms,
                    "s": symbol,
                    "k": {
                        "t": start_ms,
                        "T": start_ms + width // 1_000_000 - 1,
                        "s": symbol,
                        "i": interval,
                        "f": r[10],
                        "L": r[11],
                        "o": format_amount(r[1], m.quote_decimals),
                        "c": format_amount(r[4], m.quote_decimals),
                        "h": format_amount(r[2], m.quote_decimals),
                        "l": format_amount(r[3], m.quote_decimals),
                        "v": format_amount(r[5], m.base_decimals),
                        "n": r[7],
                        "x": False,
                        "q": format_amount(r[6], m.quote_decimals),
                        "V": format_amount(r[8], m.base_decimals),
                        "Q": format_amount(r[9], m.quote_decimals),
                        "B": "0",
                    },
                },
            )
        if self.subs.get(low + "@ticker"):
            t = sd.ticker()
            m = m or self.ex.market(symbol)
            self.publish(
                low + "@ticker",
                {
                    "e": "24hrTicker",
                    "E": event_ms,
                    "s": symbol,
                    "p": ("-" if t["price_change"] < 0 else "") + format_amount(abs(t["price_change"]), m.quote_decimals),
                    "c": format_amount(t["last_price"], m.quote_decimals),
                    "o": format_amount(t["open_price"], m.quote_decimals),
                    "h": format_amount(t["high_price"], m.quote_decimals),
                    "l": format_amount(t["low_price"], m.quote_decimals),
                    "v": format_amount(t["volume"], m.base_decimals),
                    "q": format_amount(t["quote_volume"], m.quote_decimals),
                    "b": format_amount(t["bid_price"], m.quote_decimals),
                    "B": format_amount(t["bid_qty"], m.base_decimals),
                    "a": format_amount(t["ask_price"], m.quote_decimals),
                    "A": format_amount(t["ask_qty"], m.base_decimals),
                    "n": t["count"],
                },
            )

    # ------------------------------------------------------------------ user data

    def _user_streams(self, owner: str) -> list[str]:
        streams = [
            name
            for name in self.subs
            if "@" not in name and name != HALTS_STREAM and not name.startswith(USER_STREAM_PREFIX) and self.listen_keys.owner(name) == owner
        ]
        if USER_STREAM_PREFIX + owner in self.subs:
            streams.append(USER_STREAM_PREFIX + owner)
        return streams

    def on_user_event(self, owner: str, kind: str, payload: Any) -> None:
        streams = self._user_streams(owner)
        if not streams:
            return
        if kind == "order":
            record: OrderRecord = payload
            fill = None
        else:
            record, fill = payload
        if record.symbol in self.ex.futures.perps:
            return  # a perpetual's order: the futures user stream reports it (derivatives/stream.py)
        m = self.ex.market(record.symbol)
        self._touched_owners.setdefault(owner, set()).update((m.base, m.quote))
        exec_type = {"NEW": "NEW", "CANCELED": "CANCELED", "EXPIRED": "EXPIRED", "EXPIRED_IN_MATCH": "TRADE_PREVENTION"}.get(record.status, "TRADE")
        if fill is not None:
            exec_type = "TRADE"
        report = {
            "e": "executionReport",
            "E": record.update_ms,
            "s": record.symbol,
            "c": record.client_order_id,
            "S": record.side,
            "o": record.order_type if record.order_type in ("LIMIT", "MARKET", "LIMIT_MAKER") else {"STOP_LIMIT": "STOP_LOSS_LIMIT", "STOP_MARKET": "STOP_LOSS"}.get(record.order_type, record.order_type),
            "f": record.tif,
            "q": format_amount(record.quantity or record.executed, m.base_decimals),
            "p": format_amount(record.price, m.quote_decimals),
            "P": format_amount(record.stop_price, m.quote_decimals),
            "x": exec_type,
            "X": record.status,
            "r": "NONE",
            "i": record.order_id,
            "l": format_amount(fill["qty"] if fill else 0, m.base_decimals),
            "z": format_amount(record.executed, m.base_decimals),
            "L": format_amount(fill["price"] if fill else 0, m.quote_decimals),
            "n": format_amount(fill["commission"] if fill else 0, m.base_decimals if fill and fill["commissionAsset"] == m.base else m.quote_decimals),
            "N": fill["commissionAsset"] if fill else None,
            "T": record.update_ms,
            "t": fill["id"] if fill else -1,
            "w": record.working and record.status in ("NEW", "PARTIALLY_FILLED"),
            "m": bool(fill and fill["isMaker"]),
            "O": record.time_ms,
            "Z": format_amount(record.cum_quote, m.quote_decimals),
            "Y": format_amount(fill["quoteQty"] if fill else 0, m.quote_decimals),
            "Q": format_amount(record.quote_amount, m.quote_decimals),
        }
        for stream in streams:
            self.publish(stream, report)

    def _account_positions(self, event_ms: int) -> None:
        touched, self._touched_owners = self._touched_owners, {}
        for owner, assets in touched.items():
            balances = [
                {"a": code, "f": format_amount(free, d), "l": format_amount(locked, d)}
                for code, d, free, locked in self.ex.balances(owner)
                if code in assets
            ]
            payload = {"e": "outboundAccountPosition", "E": event_ms, "u": event_ms, "B": balances}
            for stream in self._user_streams(owner):
                self.publish(stream, payload)


def coalesce_diffs(diffs: list[dict[str, Any]]) -> dict[str, Any]:
    """One depth diff for a batch's consecutive diffs of one book (first `U`, last `u`, each level's
    last quantity): a client applies it as it would apply them one by one, and a batch of N commands
    costs one message per subscriber instead of N."""
    if len(diffs) == 1:
        return diffs[0]
    bids: dict[int, int] = {}
    asks: dict[int, int] = {}
    for diff in diffs:
        for price, qty in diff["bids"]:
            bids[price] = qty
        for price, qty in diff["asks"]:
            asks[price] = qty
    for prev, diff in zip(diffs, diffs[1:]):
        assert diff["first_update_id"] == prev["last_update_id"] + 1, "a batch's depth diffs are consecutive"
    return {"first_update_id": diffs[0]["first_update_id"], "last_update_id": diffs[-1]["last_update_id"],
            "ts_ns": diffs[-1]["ts_ns"], "bids": list(bids.items()), "asks": list(asks.items())}


class ClientGarbageLogFilter(logging.Filter):
    """uvicorn closes a text frame that is not UTF-8 with 1007, as it should, but logs it with a
    full traceback at ERROR: any client could fill the log with them. Keep one WARNING line."""

    MESSAGE = "Invalid UTF-8 sequence received from client."

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == self.MESSAGE:
            record.msg = "WebSocket client sent a text frame that is not UTF-8; closed with 1007."
            record.args = ()
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def quiet_client_garbage() -> None:
    """Install `ClientGarbageLogFilter` on uvicorn's error logger (once; after uvicorn configured logging)."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, ClientGarbageLogFilter) for f in logger.filters):
        logger.addFilter(ClientGarbageLogFilter())


def parse_request(message: str) -> tuple[Any, list[str], Any] | str:
    """(method, params, id) of a `{"method", "params", "id"}` request, or the error to answer."""
    if json_nesting_depth(message, MAX_REQUEST_DEPTH) > MAX_REQUEST_DEPTH:  # before parsing: the parser recurses per level
        return f"Invalid JSON: nested deeper than {MAX_REQUEST_DEPTH} levels"
    try:
        request = json.loads(message)
    except ValueError:
        return 'Invalid JSON: expected {"method", "params", "id"}'
    if not isinstance(request, dict) or "method" not in request:
        return 'Invalid JSON: expected {"method", "params", "id"}'
    method, params, rid = request["method"], request.get("params", []), request.get("id")
    if not isinstance(params, list) or not all(isinstance(p, str) for p in params):
        return "Invalid request: 'params' must be a list of stream names"
    if rid is not None and not (isinstance(rid, str) and len(rid) <= 64) and not (isinstance(rid, int) and not isinstance(rid, bool) and 0 <= rid < 2**63):
        return "Invalid request: 'id' must be an integer or a string of at most 64 characters"
    return method, params, rid


def build_ws_router(hub: StreamHub) -> APIRouter:
    router = APIRouter()

    async def close(ws: WebSocket, code: int, reason: str) -> None:
        """Send a close frame, bounded in time: a client that does not read cannot hold the handler."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(code=code, reason=reason), CLOSE_TIMEOUT_S)

    async def read_requests(ws: WebSocket, conn: Connection) -> tuple[int, str] | None:
        """Answer requests until the client leaves (None) or must be closed (code, reason)."""
        budget = IncomingBudget()
        while True:
            frame = await ws.receive()
            if frame["type"] == "websocket.disconnect":
                return None
            if not budget.take():
                return TOO_MANY_MESSAGES
            message = frame.get("text")
            if message is None:  # a binary frame: requests are JSON text
                return 1003, "send requests as JSON text frames"
            if len(message) > MAX_REQUEST_CHARS:
                return 1009, f"requests are at most {MAX_REQUEST_CHARS} characters"
            request = parse_request(message)
            if isinstance(request, str):
                reply: dict[str, Any] = {"error": {"code": 3, "msg": request}}
            else:
                method, params, rid = request
                if method == "SUBSCRIBE":
                    if any("@" not in p for p in params):
                        await hub.settle_access()  # a listen key of a credential revoked a moment ago is gone first
                    bad = hub.subscribe(conn, params)
                    reply = {"result": None, "id": rid} if not bad else {"error": {"code": 2, "msg": f"Invalid request: unknown stream {bad[0][:80]}"}, "id": rid}
                elif method == "UNSUBSCRIBE":
                    hub.unsubscribe(conn, params)
                    reply = {"result": None, "id": rid}
                elif method == "LIST_SUBSCRIPTIONS":
                    reply = {"result": sorted(conn.streams), "id": rid}
                else:
                    reply = {"error": {"code": 1, "msg": f"Unknown method {str(method)[:40]}"}, "id": rid}
            if not conn.offer(json.dumps(reply)):  # never wait for a client that does not read
                return SLOW_CONSUMER

    async def send_queued(ws: WebSocket, conn: Connection) -> None:
        while True:
            await ws.send_text(await conn.next())

    async def serve(ws: WebSocket, names: list[str], combined: bool) -> None:
        conn = Connection(ws, combined, ws.client.host if ws.client else "")
        refusal = hub.admit(conn)  # checks and counts before any await: no race between handlers
        if refusal is not None:
            with contextlib.suppress(Exception):
                await ws.accept()
                await close(ws, 1013, refusal)
            return
        tasks: list[asyncio.Task[Any]] = []
        try:
            await ws.accept()
            # A relayed client's subscriptions are held by its gateway too (before any of them is published).
            conn.relay = ws.scope.get("extensions", {}).get(RELAY_EXTENSION) if hub.direct_writes else None
            if any("@" not in name for name in names):
                await hub.settle_access()  # a listen key of a credential revoked a moment ago is gone first
            bad = hub.subscribe(conn, names) if names else []
            if bad:
                await ws.send_text(json.dumps({"error": {"code": 2, "msg": f"Invalid request: unknown stream {bad[0][:80]}"}}))
                await close(ws, 1008, "unknown stream")
                return
            # Before the first message can be offered (no await in between): from here on every
            # frame of this connection, data and replies, takes the same path, in order.
            conn.direct = direct_protocol(ws) if hub.direct_writes else None
            reader = asyncio.create_task(read_requests(ws, conn))
            sender = asyncio.create_task(send_queued(ws, conn))
            slow = asyncio.create_task(conn.slow.wait())
            tasks = [reader, sender, slow]
            for task in tasks:  # their errors (a client gone mid-send) are expected: retrieve them
                task.add_done_callback(lambda t: t.cancelled() or t.exception())
            # Whichever ends first ends the connection: the client left or sent something to close
            # for (reader), the client cannot be written to (sender), or it stopped keeping up (slow).
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if conn.close_reason is not None:
                reason: tuple[int, str] | None = conn.close_reason
            elif conn.dropped:
                reason = SLOW_CONSUMER
            elif reader.done() and not reader.cancelled() and reader.exception() is None:
                reason = reader.result()
            else:
                reason = None  # the client is gone (or the sender failed): nothing to say
            for task in tasks:
                task.cancel()  # no await here: a client that left is forgotten at once
            hub.drop(conn)  # before the close frame, which may wait for a client that does not read
            if reason == SLOW_CONSUMER and conn.direct is not None and close_direct(conn.direct, *reason):
                reason = None
            if reason is not None:
                await close(ws, *reason)
        except WebSocketDisconnect:
            pass
        finally:
            for task in tasks:
                task.cancel()
            hub.drop(conn)

    @router.websocket("/ws")
    async def ws_root(ws: WebSocket) -> None:
        await serve(ws, [], False)

    @router.websocket("/ws/{stream:path}")
    async def ws_raw(ws: WebSocket, stream: str) -> None:
        await serve(ws, [s for s in stream.split("/") if s], False)

    @router.websocket("/private/ws")
    async def ws_private(ws: WebSocket) -> None:
        """Binance USDⓈ-M's user data stream URL (`/private/ws?listenKey=`); `/ws/<listenKey>` works too."""
        key = ws.query_params.get("listenKey", "")
        await serve(ws, [key], False)  # an empty or unknown key is refused like an unknown stream

    @router.websocket("/stream")
    async def ws_combined(ws: WebSocket) -> None:
        names = [s for s in ws.query_params.get("streams", "").split("/") if s]
        await serve(ws, names, True)

    return router
