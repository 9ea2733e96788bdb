"""Frames a WebSocket client sends that never reach the app (PING, PONG, continuation) are counted
too (api/ws_wire.py BudgetedWebSocketProtocol: FRAME_BURST at once, FRAME_PER_S a second), against a
real `serve --demo` without gateways (tests/api/test_gateways.py has the same through gateways).

Before: one client sending PONGs as fast as it could was never closed, and the HTTP API of the same
process took 6 s to answer a ping. Now it is closed with 1008 "too many messages" after the burst;
a message split into more than MAX_FRAGMENTS frames is closed with 1009; a client within the budget
(a keepalive PING now and then) is never closed."""

from __future__ import annotations

import json
import time

import pytest

from ringfence.api.ws_wire import FRAME_BURST, MAX_FRAGMENTS

from .ws_flood import CONT, PING, PONG, TEXT, close_frame, connect, flood, masked

#: the shared demo server starts without its chains: these tests use none (conftest.NO_CHAINS)
SERVER_CHAINS = False


@pytest.mark.parametrize("kind", ["pong", "ping", "endless-continuation"])
def test_a_frame_flood_is_closed_and_does_not_stall_the_api(server, kind):
    frames = {"pong": masked(PONG), "ping": masked(PING, b"x"), "endless-continuation": masked(CONT, fin=False)}[kind]
    seen = flood(server.port, frames, first=masked(TEXT, b"{", fin=False) if kind == "endless-continuation" else b"")
    print(f"{kind}: {seen}")
    expected = (1009, "message too fragmented") if kind == "endless-continuation" else (1008, "too many messages")
    assert seen["closed"] == expected, seen
    # 5 s, not 2: the stall this guards against was 7-13 s, and one ping on a loaded CI machine (three xdist
    # workers on two cores, the flooder's thread in this process) can take a second or two by itself
    assert seen["slowest_ping_s"] < 5.0, seen


def test_a_client_within_the_frame_budget_is_not_closed(server):
    """FRAME_BURST - 10 PINGs at once, then a request: answered; the budget is per connection."""
    sock = connect(server.port)
    try:
        sock.sendall(masked(PING, b"k") * (FRAME_BURST - 10) + masked(TEXT, json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 5}).encode()))
        time.sleep(0.5)
        sock.sendall(masked(0x8, (1000).to_bytes(2, "big")))  # we close: the server echoes our code
        assert close_frame(sock, 5) == (1000, ""), "the server closed a client within its budget"
    finally:
        sock.close()
    # a message in MAX_FRAGMENTS frames is still a message
    sock = connect(server.port)
    try:
        body = json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 6}).encode()
        parts = [body[i:i + 1] for i in range(len(body))][:MAX_FRAGMENTS - 1] + [body[MAX_FRAGMENTS - 1:]]
        frames = masked(TEXT, parts[0], fin=False) + b"".join(masked(CONT, p, fin=i == len(parts) - 2) for i, p in enumerate(parts[1:]))
        sock.sendall(frames)
        sock.settimeout(5)
        reply = sock.recv(4096)
        assert b'"id": 6' in reply or b'"id":6' in reply, reply
    finally:
        sock.close()
