"""WebSocket garbage against a real `serve --demo` process (issue #13 item 6): every frame gets an
answer or a proper close code, never an exception and never a dropped connection without a close
frame. Binary → 1003; over 4096 characters → 1009; invalid JSON, JSON nested too deep, a malformed
request → `{"error": {"code": 3}}` and the connection keeps working; invalid UTF-8 → 1007.

Reproduce by hand: `python -m websockets ws://127.0.0.1:8000/ws` and paste `[[[[[[[[[[…`.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct

import pytest
import websockets

#: the shared demo server starts without its chains: these tests use none (conftest.NO_CHAINS)
SERVER_CHAINS = False


def url(server, path="/ws"):
    return server.base.replace("http://", "ws://") + path


async def still_answers(ws) -> None:
    await ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 7}))
    reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert reply == {"result": [], "id": 7} or reply.get("id") == 7, reply


async def close_code_after(server, frame) -> int:
    async with websockets.connect(url(server)) as ws:
        await ws.send(frame)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None, "the server dropped the connection without a close frame"
        return closed.value.rcvd.code


def test_binary_frame_closes_with_1003(server):
    assert asyncio.run(close_code_after(server, b'{"method":"LIST_SUBSCRIPTIONS","id":1}')) == 1003


def test_oversized_request_closes_with_1009(server):
    assert asyncio.run(close_code_after(server, json.dumps({"method": "SUBSCRIBE", "params": ["x" * 5000], "id": 1}))) == 1009


@pytest.mark.parametrize("garbage", [
    "[" * 4090,  # nests past the parser's recursion limit
    "[" * 2000 + "]" * 2000,
    '{"method":"SUBSCRIBE","params":[],"id":' + "[" * 2000 + "]" * 2000 + "}",
    '{"a":' * 600 + "1" + "}" * 600,
    "not json",
    "",
    "null",
    "[]",
    '"SUBSCRIBE"',
    "1e999999",
    '{"method":"SUBSCRIBE","params":[1,2],"id":1}',
    '{"method":"SUBSCRIBE","params":"btcusdt@trade","id":1}',
    '{"method":"SUBSCRIBE","params":[],"id":{"a":[1]}}',
    '{"params":[],"id":1}',
    '{"method":"SUBSCRIBE","params":["\\ud800"],"id":1}',
])
def test_garbage_gets_an_error_and_the_connection_keeps_working(server, garbage):
    async def scenario() -> dict:
        async with websockets.connect(url(server)) as ws:
            await ws.send(garbage)
            reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
            await still_answers(ws)
            return reply

    reply = asyncio.run(scenario())
    assert "error" in reply and reply["error"]["code"] in (2, 3), reply


def test_invalid_utf8_text_frame_closes_with_1007(server):
    """A raw client: no library sends a text frame that is not UTF-8."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    sock.sendall(
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    handshake = b""
    while b"\r\n\r\n" not in handshake:
        handshake += sock.recv(4096)
    assert handshake.startswith(b"HTTP/1.1 101"), handshake
    rest = handshake.split(b"\r\n\r\n", 1)[1]
    payload, mask = b"\xff\xfe\xfd", b"\x01\x02\x03\x04"
    sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
    data = rest
    while len(data) < 4:
        more = sock.recv(4096)
        if not more:
            break
        data += more
    sock.close()
    assert data[:1] == b"\x88", data  # a close frame
    assert struct.unpack("!H", data[2:4])[0] == 1007


def test_server_survives_the_garbage(server):
    import httpx

    assert httpx.get(server.base + "/readyz").status_code == 200
    log = server.log_text()
    assert "Traceback" not in log and "RecursionError" not in log and "KeyError" not in log, log[-3000:]
