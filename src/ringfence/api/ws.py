"""WebSocket streams in Binance's shape, fanned out from the read models after each batch.

Streams: `<symbol>@depth` (and `@depth@100ms`): diffs with first/last update ids (`U`/`u`) so a
client can rebuild the book from a REST snapshot exactly; `<symbol>@trade`; `<symbol>@kline_<i>`;
`<symbol>@ticker`; and `<listenKey>`: the user data stream (`executionReport`,
`outboundAccountPosition`). Raw streams at `/ws/<stream>`, combined at `/stream?streams=a/b`
(`{"stream": name, "data": payload}`); `{"method": "SUBSCRIBE", "params": [...], "id": n}`
messages work on both.

Each message is serialised once and queued to each subscriber; a subscriber whose queue fills
(it reads too slowly) is disconnected rather than allowed to hold memory or delay others.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from ..money import format_amount
from ..trading.commands import Trade
from ..trading.marketdata import KLINE_INTERVALS_NS
from .orders import OrderRecord
from .service import Exchange

__all__ = ["StreamHub", "build_ws_router"]

MAX_QUEUE = 10_000
#: Raised and lifted halts (venue-wide stream; Binance has no equivalent).
HALTS_STREAM = "!halts"
MAX_STREAMS_PER_CONNECTION = 200
MAX_CONNECTIONS = 5_000


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
                message = await ws.receive_text()
                if len(message) > 4096:
                    await ws.close(code=1009)
                    break
                try:
                    request = json.loads(message)
                    method, params, rid = request["method"], request.get("params", []), request.get("id")
                    if not isinstance(params, list) or not all(isinstance(p, str) for p in params):
                        raise ValueError
                except (ValueError, KeyError, TypeError):
                    await conn.queue.put(json.dumps({"error": {"code": 3, "msg": "Invalid JSON: expected {\"method\", \"params\", \"id\"}"}}))
                    continue
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
