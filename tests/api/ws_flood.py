"""A raw WebSocket client that floods frames the app never sees (PING, PONG, empty continuation
frames), for tests/api/test_ws_frame_flood.py and test_gateways.py. Found by a security review:
~250,000 such frames a second from one client stalled every other client of its process for 7-13 s,
and the client was never closed."""

from __future__ import annotations

import base64
import os
import socket
import struct
import threading
import time

import httpx

PING, PONG, TEXT, CONT = 0x9, 0xA, 0x1, 0x0


def masked(opcode: int, payload: bytes = b"", fin: bool = True) -> bytes:
    mask = os.urandom(4)
    return bytes([(0x80 if fin else 0) | opcode, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def connect(port: int, path: str = "/ws") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    handshake = b""
    while b"\r\n\r\n" not in handshake:
        handshake += sock.recv(1)
    assert handshake.startswith(b"HTTP/1.1 101"), handshake
    return sock


def close_frame(sock: socket.socket, seconds: float) -> tuple[int, str] | None:
    """Read until the server's close frame: its (code, reason); None if the connection ended without one."""
    sock.settimeout(seconds)
    buf = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        while len(buf) >= 2:
            opcode, n, start = buf[0] & 0x0F, buf[1] & 0x7F, 2
            if n == 126:
                if len(buf) < 4:
                    break
                n, start = struct.unpack("!H", buf[2:4])[0], 4
            elif n == 127:
                if len(buf) < 10:
                    break
                n, start = struct.unpack("!Q", buf[2:10])[0], 10
            if len(buf) < start + n:
                break
            payload, buf = buf[start:start + n], buf[start + n:]
            if opcode == 0x8:
                return struct.unpack("!H", payload[:2])[0], payload[2:].decode()
        try:
            more = sock.recv(1 << 16)
        except OSError:
            return None
        if not more:
            return None
        buf += more
    return None


def flood(port: int, frames: bytes, seconds: float = 3.0, first: bytes = b"") -> dict:
    """Send `first`, then `frames` over and over for `seconds` on one connection (not reading), while
    a neighbour pings the HTTP API; the close the flooder got, the frames it sent, the neighbour's
    slowest ping."""
    sock = connect(port)
    sock.sendall(first)
    sent = [0]

    def attacker() -> None:
        chunk = frames * max(1, 65536 // len(frames))
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline:
                sock.sendall(chunk)
                sent[0] += len(chunk) // len(frames)
        except OSError:
            pass  # closed by the server: what we want

    thread = threading.Thread(target=attacker)
    thread.start()
    slowest = 0.0
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
        while thread.is_alive():
            t0 = time.monotonic()
            assert http.get("/api/v3/ping").status_code == 200
            slowest = max(slowest, time.monotonic() - t0)
            time.sleep(0.05)
    thread.join()
    closed = close_frame(sock, 15)  # returns at the close frame; 15 s for a loaded machine
    sock.close()
    return {"closed": closed, "sent": sent[0], "slowest_ping_s": slowest}
