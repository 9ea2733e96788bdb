"""Market-data fan-out against a real `serve --demo` process (issue #18 item 5): each message is
framed once and the same bytes are written to every subscriber; a subscriber that stops reading is
closed with 1008 "slow consumer" once the bytes waiting for it pass the bound, and never delays the
others: fast clients (the `websockets` library) receive every depth diff, in order, without a gap
(each diff's `U` is the previous diff's `u` + 1), up to the REST snapshot's `lastUpdateId`.

The bound is lowered to 64 KiB (RINGFENCE_WS_MAX_QUEUE_BYTES) and the kernel's send buffer to
16 KiB (RINGFENCE_WS_SNDBUF_BYTES) so the slow client trips it within a few seconds. Reproduce by hand: `RINGFENCE_WS_MAX_QUEUE_BYTES=65536 ringfence serve --demo`, open
`/stream?streams=btcusdt@depth/btcusdt@ticker/...` from a client that never reads, place orders.
"""

from __future__ import annotations

import asyncio
import json
import random
import time

import httpx
import pytest
import websockets

from ringfence.trading.marketdata import KLINE_INTERVALS_NS

from .conftest import Server
from .test_rest import signed_query
from .test_ws import place
from .test_ws_slow_consumer import raw_connect, read_close_frame, url, wait_for_connections
from .test_ws_slow_consumer import frame as client_frame

FAST_CLIENTS = 3


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("serve") / "data", env={"RINGFENCE_WS_MAX_QUEUE_BYTES": "65536", "RINGFENCE_WS_SNDBUF_BYTES": "16384"}, chains=False)
    yield srv
    assert srv.stop() == 0


#: Every BTCUSDT market stream a slow subscriber holds (so that it falls behind on all of them).
BTC_STREAMS = ["btcusdt@depth", "btcusdt@depth@100ms", "btcusdt@ticker", "btcusdt@trade", *(f"btcusdt@kline_{i}" for i in KLINE_INTERVALS_NS)]

async def move_book_until_dropped(http, server, alice, rng, slow, remaining: int, seconds: float):  # float-ok: s
    """Rest BTCUSDT buys below the market and cancel them (each moves the book twice), ten at a time,
    until only `remaining` WebSocket connections are left (the slow one dropped); then read the slow
    client's close frame in the background (it follows what was buffered, and the server aborts a
    socket that does not read it within 5 s) while 20 more buys rest: the market goes on after it left.
    Returns (orders placed and cancelled, the task reading the close frame)."""
    placed = 0
    deadline = time.monotonic() + seconds
    while placed % 10 or await asyncio.to_thread(wait_for_connections, server, remaining, 0) != remaining:
        assert time.monotonic() < deadline, "the slow subscriber was never closed"
        price = f"{rng.randrange(59000, 60900)}.{rng.randrange(100):02d}"
        r = await place(http, alice["api_key"], alice["api_secret"], {"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC", "quantity": "0.0010", "price": price})
        assert r.status_code == 200, r.text
        q = signed_query(alice["api_secret"], {"symbol": "BTCUSDT", "orderId": str(r.json()["orderId"])})
        r = await http.delete("/api/v3/order?" + q, headers={"X-MBX-APIKEY": alice["api_key"]})
        assert r.status_code == 200, r.text
        placed += 1
    closing = asyncio.create_task(asyncio.to_thread(read_close_frame, slow, 10))
    for _ in range(20):
        price = f"{rng.randrange(59000, 60900)}.00"
        r = await place(http, alice["api_key"], alice["api_secret"], {"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC", "quantity": "0.0010", "price": price})
        assert r.status_code == 200, r.text
    return placed, closing


def test_slow_subscriber_is_closed_and_fast_ones_get_every_diff_in_order(server):
    seed = random.SystemRandom().randrange(1 << 30)
    print(f"fanout seed={seed}")
    rng = random.Random(seed)
    alice = server.keys["alice"]
    streams = BTC_STREAMS

    async def scenario():
        fast = [await websockets.connect(url(server, "/ws/btcusdt@depth")) for _ in range(FAST_CLIENTS)]
        received: list[list[dict]] = [[] for _ in fast]

        async def read(i, ws):
            async for raw in ws:
                received[i].append(json.loads(raw))

        readers = [asyncio.create_task(read(i, ws)) for i, ws in enumerate(fast)]
        # the slow one: subscribes to many btcusdt streams, then never reads
        slow = raw_connect(server, rcvbuf=4096)
        slow.sendall(client_frame(json.dumps({"method": "SUBSCRIBE", "params": streams, "id": 1})))
        assert wait_for_connections(server, FAST_CLIENTS + 1, 30) == FAST_CLIENTS + 1
        async with httpx.AsyncClient(base_url=server.base, timeout=10) as http:
            placed, closing = await move_book_until_dropped(http, server, alice, rng, slow, FAST_CLIENTS, 60)
            last = (await http.get("/api/v3/depth", params={"symbol": "BTCUSDT", "limit": 5})).json()["lastUpdateId"]
        deadline = time.monotonic() + 10
        while not all(r and r[-1]["u"] >= last for r in received):
            assert time.monotonic() < deadline, f"fast clients stopped short of update {last}: {[r[-1]['u'] if r else None for r in received]}"
            await asyncio.sleep(0.05)
        closed = await closing
        slow.close()
        for t in readers:
            t.cancel()
        for ws in fast:
            await ws.close()
        return received, closed, placed, last

    received, closed, placed, last = asyncio.run(scenario())
    assert closed == (1008, "slow consumer"), closed
    assert placed > 0
    first_u = received[0][0]["U"]
    for diffs in received:
        assert all(d["e"] == "depthUpdate" for d in diffs)
        for prev, d in zip(diffs, diffs[1:]):
            assert d["U"] == prev["u"] + 1, f"gap or reordering: {prev['u']} then {d['U']}..{d['u']}"
        assert diffs[-1]["u"] == last
        assert diffs[0]["U"] <= first_u + 1  # all subscribed before the first order
    print(f"slow subscriber closed after {placed} orders; {len(received[0])} diffs to each fast client, U/u continuous")
