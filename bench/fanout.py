"""Market-data fan-out: N WebSocket subscribers on one depth stream, delivery latency p50/p99.

Usage: python bench/fanout.py [--smoke] [--seed N] [--subscribers N]

Starts a real `ringfence serve --demo` per configuration, connects the subscribers to
`/ws/btcusdt@depth` (from 127.0.0.2… so the 50-connections-per-address limit holds), then places
and cancels resting BTCUSDT orders (seeded prices) through the signed REST API: every order moves
the book twice, and every move is one depth diff to every subscriber. Latency is the subscriber's
receipt time minus the diff's event time `E` (the sequencer's timestamp, millisecond resolution):
it includes the engine's batch, the fsync and the fan-out. Each subscriber also checks that its
diffs are continuous (`U` = previous `u` + 1): `gaps` must be 0.

Configurations, one server each, same run:
1. `fanout`: N subscribers, frames written straight to each transport (the default);
2. `baseline`: 1 subscriber, same server code (the part of the latency that is not fan-out);
3. `queued_reference`: N subscribers with RINGFENCE_WS_DIRECT_WRITES=0 (a queue and a sender task
   per connection, `send_text`: the path before issue #18).

Subscribers are lean raw-socket clients (asyncio protocol, frames parsed after the run) in two
processes, so that the clients' own CPU on this 2-core machine disturbs the server as little as
possible; a `websockets`-library client costs ~10x more per message.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import multiprocessing as mp
import os
import random
import shutil
import signal
import struct
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, percentile_us  # noqa: E402
from api import free_port, server_source, start_server  # noqa: E402

CLIENT_PROCESSES = 2
PER_SOURCE_ADDRESS = 40  # below the server's 50 connections per client address


class Subscriber(asyncio.Protocol):
    """A minimal WebSocket client: handshake, then record (receipt ns, payload) of each text frame."""

    def __init__(self, path: str, out: list, ready: asyncio.Future) -> None:
        self.path = path
        self.out = out
        self.ready = ready
        self.buf = bytearray()
        self.open = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def]
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            f"GET {self.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        self.buf += data
        if not self.open:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.buf.startswith(b"HTTP/1.1 101"):
                self.ready.set_exception(RuntimeError(bytes(self.buf[:200]).decode(errors="replace")))
                return
            del self.buf[: end + 4]
            self.open = True
            self.ready.set_result(None)
        buf = self.buf
        while len(buf) >= 2:
            opcode, n, start = buf[0] & 0x0F, buf[1] & 0x7F, 2
            if n == 126:
                if len(buf) < 4:
                    return
                n, start = struct.unpack_from("!H", buf, 2)[0], 4
            elif n == 127:
                if len(buf) < 10:
                    return
                n, start = struct.unpack_from("!Q", buf, 2)[0], 10
            if len(buf) < start + n:
                return
            payload = bytes(buf[start : start + n])
            del buf[: start + n]
            if opcode == 0x1:
                self.out.append((now, payload))
            elif opcode == 0x9 and self.transport is not None:  # ping: answer with a masked pong
                mask = os.urandom(4)
                self.transport.write(bytes((0x8A, 0x80 | len(payload))) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
            elif opcode == 0x8:
                self.out.append((now, b"CLOSE" + payload))


async def _subscribe(port: int, n: int, first_address: int, stop_event, ready_event) -> list:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    outs: list[list] = []
    transports = []
    for i in range(n):
        out: list = []
        ready = loop.create_future()
        address = f"127.0.0.{first_address + i // PER_SOURCE_ADDRESS}"
        transport, _ = await loop.create_connection(lambda out=out, ready=ready: Subscriber("/ws/btcusdt@depth", out, ready), "127.0.0.1", port, local_addr=(address, 0))
        await ready
        outs.append(out)
        transports.append(transport)
    ready_event.set()
    while not stop_event.is_set():
        await asyncio.sleep(0.05)
    for t in transports:
        t.close()
    return outs


def subscriber_process(port: int, n: int, first_address: int, stop, queue, ready) -> None:  # type: ignore[no-untyped-def]
    outs = asyncio.run(_subscribe(port, n, first_address, stop, ready))
    latencies_us: list[int] = []
    gaps = received = closed = 0
    for out in outs:
        prev_u = None
        for ns, payload in out:
            if payload.startswith(b"CLOSE"):
                closed += 1
                continue
            d = json.loads(payload)
            received += 1
            latencies_us.append(ns // 1000 - d["E"] * 1000)
            if prev_u is not None and d["U"] != prev_u + 1:
                gaps += 1
            prev_u = d["u"]
    queue.put({"latencies_us": latencies_us, "gaps": gaps, "received": received, "closed": closed, "subscribers": len(outs)})


def place_and_cancel(base: str, key: dict, orders: int, rng: random.Random, pause_s: float) -> int:  # float-ok
    import httpx

    def signed(params: dict) -> str:
        params = {**params, "timestamp": str(time.time_ns() // 1_000_000), "recvWindow": "60000"}
        payload = urlencode(params)
        return payload + "&signature=" + hmac.new(key["api_secret"].encode(), payload.encode(), hashlib.sha256).hexdigest()

    moves = 0
    headers = {"X-MBX-APIKEY": key["api_key"]}
    with httpx.Client(base_url=base, timeout=10) as http:
        for _ in range(orders):
            price = f"{rng.randrange(59000, 60950)}.{rng.randrange(100):02d}"
            r = http.post("/api/v3/order", content=signed({"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC", "quantity": "0.0010", "price": price}),
                          headers={**headers, "Content-Type": "application/x-www-form-urlencoded"})
            r.raise_for_status()
            moves += 1
            time.sleep(pause_s)
            http.delete("/api/v3/order?" + signed({"symbol": "BTCUSDT", "orderId": str(r.json()["orderId"])}), headers=headers).raise_for_status()
            moves += 1
            time.sleep(pause_s)
    return moves


def fanout_histogram(port: int) -> dict | None:
    """The server's own time per message to write it to all its subscribers
    (`ringfence_ws_fanout_seconds`): count, mean, and the bucket bounds holding p50 and p99."""
    import httpx

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    buckets: list[tuple[float, float]] = []  # float-ok: seconds and counts from the exposition format
    count = total = 0.0  # float-ok
    for line in text.splitlines():
        if line.startswith("ringfence_ws_fanout_seconds_bucket"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))  # float-ok
        elif line.startswith("ringfence_ws_fanout_seconds_count"):
            count = float(line.rsplit(" ", 1)[1])  # float-ok
        elif line.startswith("ringfence_ws_fanout_seconds_sum"):
            total = float(line.rsplit(" ", 1)[1])  # float-ok
    if not count:
        return None

    def bound_us(pct: float) -> int | None:  # float-ok
        for le, n in buckets:
            if n >= count * pct / 100:
                return None if le == float("inf") else int(le * 1e6)  # float-ok
        return None

    return {"messages": int(count), "mean_us": int(total / count * 1e6), "p50_le_us": bound_us(50), "p99_le_us": bound_us(99)}  # float-ok


def run(subscribers: int, orders: int, seed: int, env: dict[str, str], pause_s: float) -> dict:  # float-ok
    data = Path(tempfile.mkdtemp(prefix="rf-bench-fanout-")) / "data"
    port = free_port()
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        server = start_server(data, port)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        key = next(k for k in json.loads((data / "demo-keys.json").read_text()) if k.get("kind", "hmac") == "hmac")
        procs_n = min(CLIENT_PROCESSES, subscribers)
        per = [subscribers // procs_n + (1 if i < subscribers % procs_n else 0) for i in range(procs_n)]
        queue: mp.Queue = mp.Queue()
        stop = mp.Event()
        readies = [mp.Event() for _ in per]
        address = 2
        procs = []
        for n, ready in zip(per, readies):
            procs.append(mp.Process(target=subscriber_process, args=(port, n, address, stop, queue, ready)))
            address += (n + PER_SOURCE_ADDRESS - 1) // PER_SOURCE_ADDRESS
        for p in procs:
            p.start()
        for ready in readies:
            if not ready.wait(120):
                raise SystemExit("subscribers did not connect")
        time.sleep(0.5)
        started = time.perf_counter()
        moves = place_and_cancel(f"http://127.0.0.1:{port}", key, orders, random.Random(seed), pause_s)
        load_s = time.perf_counter() - started
        time.sleep(2.0)  # the last diffs arrive well within this; a missing one shows in diffs_received
        stop.set()
        results = [queue.get() for _ in procs]
        for p in procs:
            p.join()
        server_side = fanout_histogram(port)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
        shutil.rmtree(data.parent, ignore_errors=True)
    lat_ns = [us * 1000 for r in results for us in r["latencies_us"]]
    received = sum(r["received"] for r in results)
    return {
        "subscribers": sum(r["subscribers"] for r in results),
        "book_moves": moves,
        "diffs_received": received,
        "diffs_expected": moves * subscribers,
        "gaps": sum(r["gaps"] for r in results),
        "closed_by_server": sum(r["closed"] for r in results),
        "messages_per_s": int(received / load_s) if load_s else 0,
        "p50_us": percentile_us(lat_ns, 50),
        "p99_us": percentile_us(lat_ns, 99),
        "p999_us": percentile_us(lat_ns, 99.9),
        "max_us": percentile_us(lat_ns, 100),
        "env": env,
        "server_fanout": server_side,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--subscribers", type=int, default=None)
    parser.add_argument("--no-reference", action="store_true", help="skip the queued reference run")
    args = parser.parse_args()
    print(f"seed={args.seed}", file=sys.stderr)
    subscribers = args.subscribers or (20 if args.smoke else 1000)
    orders = 5 if args.smoke else 50
    pause_s = 0.02
    result: dict = {"seed": args.seed, "workload": {"subscribers": subscribers, "stream": "btcusdt@depth", "orders_placed_and_cancelled": orders, "pause_ms": int(pause_s * 1000), "client": "raw asyncio WebSocket client, 2 processes"}}
    fanout = run(subscribers, orders, args.seed, {}, pause_s)
    result["fanout"] = fanout
    result["baseline"] = {"name": "1 subscriber, same server code", **run(1, orders, args.seed, {}, pause_s)}
    if not args.no_reference:
        result["queued_reference"] = {"name": "RINGFENCE_WS_DIRECT_WRITES=0: a queue and send_text per connection", **run(subscribers, orders, args.seed, {"RINGFENCE_WS_DIRECT_WRITES": "0"}, pause_s)}
    result["p99_us"] = fanout["p99_us"]
    result["server_src"] = server_source()
    result["goal"] = {"p99_us": 50_000, "subscribers": 1000}
    emit("fanout", result, smoke=args.smoke)


if __name__ == "__main__":
    main()
