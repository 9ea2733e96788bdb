"""Market data through `ringfence serve --demo --gateways 2` (api/relay.py): the engine sends each
message once per gateway link and each gateway writes it to its own subscribers (issue #18 item 5).

Fast subscribers (the `websockets` library) on each gateway subscribe with a SUBSCRIBE request and
must see its reply before any data, then every depth diff in order without a gap (`U` = previous
`u` + 1) up to the REST snapshot's `lastUpdateId`. A raw client on gateway 1 subscribes to many
streams and never reads: it is closed with 1008 "slow consumer" once the bytes waiting for it pass
the bound (lowered to 64 KiB here, RINGFENCE_WS_MAX_QUEUE_BYTES, with a 16 KiB kernel send buffer),
and the fast subscriber on the same gateway is not held up meanwhile: each diff reaches it within
MAX_DELAY_S of its event time. Each WebSocket handshake names its gateway (`X-Ringfence-Gateway`).

Reproduce by hand: `RINGFENCE_WS_MAX_QUEUE_BYTES=65536 ringfence serve --demo --gateways 2`, open
`/ws` from two clients (`websocat`), send `{"method":"SUBSCRIBE","params":["btcusdt@depth"],"id":1}`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import socket
import time

import httpx
import pytest
import websockets


from .conftest import Server
from .test_ws_slow_consumer import frame as client_frame
from .test_ws_fanout import BTC_STREAMS, move_book_until_dropped
from .test_ws_slow_consumer import url, wait_for_connections

#: A diff's delivery to a fast subscriber, from its event time: generous for a loaded 2-core CI
#: machine; a gateway that waited on its slow client would hold it for the whole time the slow
#: client takes to fill its bound (or for ever).
MAX_DELAY_S = 3.0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("gwfanout") / "data", {"RINGFENCE_WS_MAX_QUEUE_BYTES": "65536",
                 "RINGFENCE_WS_SNDBUF_BYTES": "16384"}, args=("--gateways", "2"), chains=False)
    yield srv
    assert srv.stop() == 0


async def fast_client_on(server, gateway: int) -> websockets.ClientConnection:
    for _ in range(200):
        ws = await websockets.connect(url(server, "/ws"))
        if ws.response.headers.get("x-ringfence-gateway") == str(gateway):
            return ws
        await ws.close()
    raise AssertionError(f"200 WebSocket connections and none accepted by gateway {gateway}")


def slow_client_on(server, gateway: int) -> socket.socket:
    """A raw WebSocket client with a 4 KiB receive buffer that never reads, accepted by `gateway`."""
    for _ in range(200):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(10)
        sock.connect(("127.0.0.1", server.port))
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        handshake = b""
        while b"\r\n\r\n" not in handshake:
            handshake += sock.recv(1)  # byte by byte: leave the frames that follow in the socket
        assert handshake.startswith(b"HTTP/1.1 101"), handshake
        if f"x-ringfence-gateway: {gateway}\r\n".encode() in handshake.lower():
            return sock
        sock.close()
    raise AssertionError(f"200 connections and none accepted by gateway {gateway}")


def test_subscribers_on_two_gateways_get_every_diff_in_order_and_a_slow_one_delays_no_one(server):
    seed = random.SystemRandom().randrange(1 << 30)
    print(f"gateway fanout seed={seed}")
    rng = random.Random(seed)
    alice = server.keys["alice"]
    streams = BTC_STREAMS

    async def scenario():
        fast = [await fast_client_on(server, 1), await fast_client_on(server, 2)]
        replies = []
        for ws in fast:  # the reply comes first, then data (none is published before the first order)
            await ws.send(json.dumps({"method": "SUBSCRIBE", "params": ["btcusdt@depth"], "id": 7}))
            replies.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
        received: list[list[tuple[float, dict]]] = [[] for _ in fast]

        async def read(i, ws):
            async for raw in ws:
                received[i].append((time.time(), json.loads(raw)))

        readers = [asyncio.create_task(read(i, ws)) for i, ws in enumerate(fast)]
        slow = slow_client_on(server, 1)
        slow.sendall(client_frame(json.dumps({"method": "SUBSCRIBE", "params": streams, "id": 1})))
        assert await asyncio.to_thread(wait_for_connections, server, 3, 10) == 3
        async with httpx.AsyncClient(base_url=server.base, timeout=10) as http:
            placed, closing = await move_book_until_dropped(http, server, alice, rng, slow, 2, 90)
            last = (await http.get("/api/v3/depth", params={"symbol": "BTCUSDT", "limit": 5})).json()["lastUpdateId"]
        deadline = time.monotonic() + 15
        while not all(r and r[-1][1]["u"] >= last for r in received):
            assert time.monotonic() < deadline, f"fast clients stopped short of update {last}: {[r[-1][1]['u'] if r else None for r in received]}"
            await asyncio.sleep(0.05)
        closed = await closing
        slow.close()
        for t in readers:
            t.cancel()
        for ws in fast:
            await ws.close()
        return replies, received, closed, placed, last

    replies, received, closed, placed, last = asyncio.run(scenario())
    assert replies == [{"result": None, "id": 7}] * 2, replies
    assert closed == (1008, "slow consumer"), closed
    assert placed > 0
    first_u = received[0][0][1]["U"]
    for diffs in received:
        assert all(d["e"] == "depthUpdate" for _, d in diffs)
        for (_, prev), (_, d) in zip(diffs, diffs[1:]):
            assert d["U"] == prev["u"] + 1, f"gap or reordering: {prev['u']} then {d['U']}..{d['u']}"
        assert diffs[-1][1]["u"] == last
        assert diffs[0][1]["U"] == first_u  # both subscribed before the first order: the same first diff
    delays = [at - d["E"] / 1000 for diffs in received for at, d in diffs]
    print(f"slow subscriber closed after {placed} orders; {len(received[0])} diffs to each fast client, U/u continuous; "
          f"slowest delivery {max(delays):.3f} s")
    assert max(delays) < MAX_DELAY_S, f"a diff reached a fast subscriber {max(delays):.2f} s after its event"
