"""WebSocket streams in Binance's shape, fanned out from the read models after each batch.

Streams: `<symbol>@depth` (and `@depth@100ms`): diffs with first/last update ids (`U`/`u`) so a
client can rebuild the book from a REST snapshot exactly; `<symbol>@trade`; `<symbol>@kline_<i>`;
`<symbol>@ticker`; and `<listenKey>`: the user data stream (`executionReport`,
`outboundAccountPosition`). Raw streams at `/ws/<stream>`, combined at `/stream?streams=a/b`
(`{"stream": name, "data": payload}`); `{"method": "SUBSCRIBE", "params": [...], "id": n}`
messages work on both. Garbage gets an answer, never an exception: a binary frame closes with
1003, an oversized request with 1009, and invalid JSON, JSON nested too deep (checked before the
parser runs) or a malformed request get `{"error": {"code": 3, ...}}` on a connection that stays
open; invalid UTF-8 in a text frame is closed with 1007 by the WebSocket layer itself.

Each message is serialised once and queued to each subscriber; a subscriber whose queue fills
(it reads too slowly) is disconnected rather than allowed to hold memory or delay others.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from ..money import format_amount
from ..trading.commands import Trade
from ..trading.marketdata import KLINE_INTERVALS_NS
from .orders import OrderRecord
from .service import Exchange

__all__ = ["StreamHub", "build_ws_router", "quiet_client_garbage"]

MAX_QUEUE = 10_000
#: Raised and lifted halts (venue-wide stream; Binance has no equivalent).
HALTS_STREAM = "!halts"
MAX_STREAMS_PER_CONNECTION = 200
MAX_CONNECTIONS = 5_000
#: A request frame: at most this many characters (1009 above it; uvicorn closes frames over
#: 64 KiB itself), nesting at most this deep (checked before parsing), text only (1003 for binary).
MAX_REQUEST_CHARS = 4096
MAX_REQUEST_DEPTH = 4


class Connection:
    def __init__(self, ws: WebSocket, combined: bool) -> None:
        self.ws = ws
        self.combined = combined
        self.queue: asyncio.Queue[str | None] = asyncio.Queue(MAX_QUEUE)
        self.streams: set[str] = set()
        self.dropped = False


class StreamHub:
    def __init__(self, exchange: Exchange, listen_keys: Any) -> None:
        self.ex = exchange
        self.listen_keys = listen_keys
        self.subs: dict[str, set[Connection]] = {}
        self.connections: set[Connection] = set()
        self.messages_sent = 0
        exchange.batch_subscribers.append(self.on_batch)
        exchange.history.subscribers.append(self.on_user_event)
        self._touched_owners: dict[str, set[str]] = {}

    # ------------------------------------------------------------------ subscriptions

    def valid_stream(self, name: str) -> bool:
        if name == HALTS_STREAM or self.listen_keys.owner(name) is not None:
            return True
        if "@" not in name:
            return False
        symbol, _, kind = name.partition("@")
        if not self.ex.has_market(symbol.upper()):
            return False
        if kind in ("depth", "depth@100ms", "trade", "ticker"):
            return True
        return kind.startswith("kline_") and kind[6:] in KLINE_INTERVALS_NS

    def subscribe(self, conn: Connection, names: list[str]) -> list[str]:
        bad = [n for n in names if not self.valid_stream(n)]
        if bad:
            return bad
        for name in names:
            if len(conn.streams) >= MAX_STREAMS_PER_CONNECTION:
                return [name]
            conn.streams.add(name)
            self.subs.setdefault(name, set()).add(conn)
        return []

    def unsubscribe(self, conn: Connection, names: list[str]) -> None:
        for name in names:
            conn.streams.discard(name)
            subscribers = self.subs.get(name)
            if subscribers is not None:
                subscribers.discard(conn)
                if not subscribers:
                    del self.subs[name]

    def drop(self, conn: Connection) -> None:
        self.unsubscribe(conn, list(conn.streams))
        self.connections.discard(conn)

    def publish(self, stream: str, payload: dict[str, Any]) -> None:
        subscribers = self.subs.get(stream)
        if not subscribers:
            return
        raw = json.dumps(payload, separators=(",", ":"))
        combined = None
        for conn in list(subscribers):
            if conn.combined:
                if combined is None:
                    combined = '{"stream":' + json.dumps(stream) + ',"data":' + raw + "}"
                text = combined
            else:
                text = raw
            try:
                conn.queue.put_nowait(text)
            except asyncio.QueueFull:
                conn.dropped = True
                self.drop(conn)
                conn.queue = asyncio.Queue(1)
                conn.queue.put_nowait(None)  # tells the sender to close
            else:
                self.messages_sent += 1

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
                    for diff in sd.diffs_after(before.get(symbol, 0)):
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
        return [name for name in self.subs if "@" not in name and name != HALTS_STREAM and self.listen_keys.owner(name) == owner]

    def on_user_event(self, owner: str, kind: str, payload: Any) -> None:
        streams = self._user_streams(owner)
        if not streams:
            return
        if kind == "order":
            record: OrderRecord = payload
            fill = None
        else:
            record, fill = payload
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


def json_depth_within(text: str, limit: int) -> bool:
    """True when no array or object in `text` nests deeper than `limit`: checked before parsing,
    because the parser recurses once per level (a few thousand `[` exhaust the stack)."""
    depth = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > limit:
                return False
        elif char in "]}":
            depth -= 1
    return True


def parse_request(message: str) -> tuple[Any, list[str], Any] | str:
    """(method, params, id) of a `{"method", "params", "id"}` request, or the error to answer."""
    if not json_depth_within(message, MAX_REQUEST_DEPTH):
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

    async def serve(ws: WebSocket, names: list[str], combined: bool) -> None:
        if len(hub.connections) >= MAX_CONNECTIONS:
            await ws.close(code=1013)
            return
        await ws.accept()
        conn = Connection(ws, combined)
        hub.connections.add(conn)
        bad = hub.subscribe(conn, names) if names else []
        if bad:
            await ws.send_text(json.dumps({"error": {"code": 2, "msg": f"Invalid request: unknown stream {bad[0][:80]}"}}))
            await ws.close(code=1008)
            hub.drop(conn)
            return

        async def sender() -> None:
            while True:
                text = await conn.queue.get()
                if text is None:
                    await ws.close(code=1008, reason="slow consumer")
                    return
                await ws.send_text(text)

        task = asyncio.create_task(sender())
        try:
            while True:
                frame = await ws.receive()
                if frame["type"] == "websocket.disconnect":
                    break
                message = frame.get("text")
                if message is None:  # a binary frame: requests are JSON text
                    await ws.close(code=1003, reason="send requests as JSON text frames")
                    break
                if len(message) > MAX_REQUEST_CHARS:
                    await ws.close(code=1009, reason=f"requests are at most {MAX_REQUEST_CHARS} characters")
                    break
                request = parse_request(message)
                if isinstance(request, str):
                    await conn.queue.put(json.dumps({"error": {"code": 3, "msg": request}}))
                    continue
                method, params, rid = request
                if method == "SUBSCRIBE":
                    bad = hub.subscribe(conn, params)
                    reply: dict[str, Any] = {"result": None, "id": rid} if not bad else {"error": {"code": 2, "msg": f"Invalid request: unknown stream {bad[0][:80]}"}, "id": rid}
                elif method == "UNSUBSCRIBE":
                    hub.unsubscribe(conn, params)
                    reply = {"result": None, "id": rid}
                elif method == "LIST_SUBSCRIPTIONS":
                    reply = {"result": sorted(conn.streams), "id": rid}
                else:
                    reply = {"error": {"code": 1, "msg": f"Unknown method {str(method)[:40]}"}, "id": rid}
                await conn.queue.put(json.dumps(reply))
        except WebSocketDisconnect:
            pass
        finally:
            hub.drop(conn)
            task.cancel()

    @router.websocket("/ws")
    async def ws_root(ws: WebSocket) -> None:
        await serve(ws, [], False)

    @router.websocket("/ws/{stream:path}")
    async def ws_raw(ws: WebSocket, stream: str) -> None:
        await serve(ws, [s for s in stream.split("/") if s], False)

    @router.websocket("/stream")
    async def ws_combined(ws: WebSocket) -> None:
        names = [s for s in ws.query_params.get("streams", "").split("/") if s]
        await serve(ws, names, True)

    return router
