"""Market-data fan-out: N WebSocket subscribers on one depth stream, delivery latency p50/p99.

Usage: python bench/fanout.py [--smoke] [--seed N] [--subscribers N] [--gateways 0,1,2] [--no-reference]

Starts a real `ringfence serve --demo` per configuration, connects the subscribers to
`/ws/btcusdt@depth` (from 127.0.0.2… so the 50-connections-per-address limit holds), then places
and cancels resting BTCUSDT orders (seeded prices) through the signed REST API: every order moves
the book twice, and every move is one depth diff to every subscriber. Latency is the subscriber's
receipt time minus the diff's event time `E` (the sequencer's timestamp, millisecond resolution):
it includes the engine's batch, the fsync and the fan-out. Each subscriber also checks that its
diffs are continuous (`U` = previous `u` + 1): `gaps` must be 0.

Configurations, one server each, same run:
1. `fanout`: N subscribers, frames written straight to each transport (the default), for each
   `--gateways` count (default 0,1,2: `by_gateways`; 0 is the engine process serving the WebSockets
   itself, N is `serve --gateways N`, api/relay.py); `fanout` holds the first count's full figures;
2. `baseline`: 1 subscriber, same server code (the part of the latency that is not fan-out);
3. `queued_reference`: N subscribers with RINGFENCE_WS_DIRECT_WRITES=0 (a queue and a sender task
   per connection, `send_text`: the path before issue #18).

Subscribers are lean raw-socket clients (asyncio protocol, frames parsed after the run) in two
processes, so that the clients' own CPU on this 2-core machine disturbs the server as little as
possible; a `websockets`-library client costs ~10x more per message.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import hmac
import json
import multiprocessing as mp
import os
import random
import select
import shutil
import signal
import socket
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


#: Linux socket option: the kernel stamps each received segment with its arrival time (CLOCK_REALTIME,
#: struct timespec), returned by recvmsg as ancillary data (socket(7); Python has no constant for it).
SO_TIMESTAMPNS = 35
_TIMESPEC = struct.Struct("qq")


class Subscriber:
    """A minimal WebSocket client on a non-blocking socket: handshake, then keep every text frame
    with two receipt times: when the kernel received it (SO_TIMESTAMPNS: delivered to the
    subscriber, whatever the client does next) and when this client read it.

    The kernel's stamp of a TCP read is that of the last segment the read consumed, so each frame
    is read on its own (its header, then exactly its remaining bytes): the server writes each frame
    with one send on a TCP_NODELAY socket, so a frame is one segment and its stamp is its own. (Had
    a read spanned several frames, the earlier ones would be stamped late, never early.)"""

    def __init__(self, sock: socket.socket, out: list) -> None:
        self.sock = sock
        self.out = out
        self.buf = bytearray()
        self.need = 2  # bytes still missing from the current frame (header first)
        self.header_done = False

    def read(self) -> bool:
        """Read what is there, frame by frame; False once the server closed the connection."""
        while True:
            try:
                data, ancillary, _, _ = self.sock.recvmsg(self.need, 64)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                return False
            if not data:
                return False
            now = time.time_ns()
            kernel_ns = now
            for level, kind, value in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= _TIMESPEC.size:
                    sec, nsec = _TIMESPEC.unpack_from(value)
                    kernel_ns = sec * 1_000_000_000 + nsec
            buf = self.buf
            buf += data
            self.need -= len(data)
            if self.need:
                continue
            if not self.header_done:
                n = buf[1] & 0x7F
                if n >= 126 and len(buf) == 2:  # the extended length follows
                    self.need = 2 if n == 126 else 8
                    continue
                n = self._payload_len()
                self.header_done = True
                self.need = n
                if n:
                    continue
            opcode, payload = buf[0] & 0x0F, bytes(buf[len(buf) - self._payload_len():])
            self.buf = bytearray()
            self.need, self.header_done = 2, False
            if opcode == 0x1:
                self.out.append((now, kernel_ns, payload))
            elif opcode == 0x9:  # ping: answer with a masked pong
                mask = os.urandom(4)
                with contextlib.suppress(OSError):
                    self.sock.send(bytes((0x8A, 0x80 | len(payload))) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
            elif opcode == 0x8:
                self.out.append((now, kernel_ns, b"CLOSE" + payload))

    def _payload_len(self) -> int:
        n = self.buf[1] & 0x7F
        if n == 126:
            return struct.unpack_from("!H", self.buf, 2)[0]
        if n == 127:
            return struct.unpack_from("!Q", self.buf, 2)[0]
        return n


def _connect(port: int, path: str, address: str) -> socket.socket:
    """A blocking handshake, then the socket is made non-blocking with kernel receive stamps on."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(address, 0))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise RuntimeError("the server closed the connection during the handshake")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(head[:200].decode(errors="replace"))
    if head.split(b"\r\n\r\n", 1)[1]:
        raise RuntimeError("data before the first read (nothing is published before the load starts)")
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.setblocking(False)
    return sock


def _subscribe(port: int, n: int, first_address: int, stop_event, ready_event) -> list:  # type: ignore[no-untyped-def]
    outs: list[list] = []
    subscribers: dict[int, Subscriber] = {}
    poller = select.epoll()
    for i in range(n):
        out: list = []
        sock = _connect(port, "/ws/btcusdt@depth", f"127.0.0.{first_address + i // PER_SOURCE_ADDRESS}")
        subscribers[sock.fileno()] = Subscriber(sock, out)
        poller.register(sock.fileno(), select.EPOLLIN)
        outs.append(out)
    ready_event.set()
    cpu_before = time.process_time()
    while not stop_event.is_set():
        for fd, _ in poller.poll(0.05):
            sub = subscribers.get(fd)
            if sub is not None and not sub.read():
                poller.unregister(fd)
                del subscribers[fd]
    poller.close()
    for sub in subscribers.values():
        sub.sock.close()
    outs.append(time.process_time() - cpu_before)  # type: ignore[arg-type]
    return outs


def subscriber_process(port: int, n: int, first_address: int, stop, queue, ready) -> None:  # type: ignore[no-untyped-def]
    outs = _subscribe(port, n, first_address, stop, ready)
    cpu_s = outs.pop()
    latencies_us: list[int] = []
    socket_latencies_us: list[int] = []
    gaps = received = closed = 0
    for out in outs:
        prev_u = None
        for ns, kernel_ns, payload in out:
            if payload.startswith(b"CLOSE"):
                closed += 1
                continue
            d = json.loads(payload)
            received += 1
            latencies_us.append(ns // 1000 - d["E"] * 1000)
            socket_latencies_us.append((d["u"], kernel_ns // 1000 - d["E"] * 1000))
            if prev_u is not None and d["U"] != prev_u + 1:
                gaps += 1
            prev_u = d["u"]
    queue.put({"cpu_s": cpu_s, "latencies_us": latencies_us, "socket_latencies_us": socket_latencies_us, "gaps": gaps,
               "received": received, "closed": closed, "subscribers": len(outs)})


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


def server_cpu_s(pid: int) -> dict[str, float]:  # float-ok: CPU seconds, a report
    """CPU seconds so far of the serve process (`engine`) and of its gateway processes (user + system),
    and the system (kernel) part of each (`_sys`: for fan-out, mostly the loopback TCP sends)."""
    tick = os.sysconf("SC_CLK_TCK")

    def cpu(p: int, kernel_only: bool = False) -> float:  # float-ok
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[12]) + (0 if kernel_only else int(fields[11]))) / tick

    def is_gateway(p: int) -> bool:
        try:
            return b"ringfence.api.relay" in Path(f"/proc/{p}/cmdline").read_bytes()
        except OSError:
            return False

    children = [int(c) for f in Path(f"/proc/{pid}/task").glob("*/children") for c in f.read_text().split()]
    gateways = [c for c in children if is_gateway(c)]
    return {"engine": cpu(pid), "engine_sys": cpu(pid, True), "gateways": sum(cpu(c) for c in gateways),
            "gateways_sys": sum(cpu(c, True) for c in gateways)}


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


def run(subscribers: int, orders: int, seed: int, env: dict[str, str], pause_s: float, gateways: int = 0) -> dict:  # float-ok
    data = Path(tempfile.mkdtemp(prefix="rf-bench-fanout-")) / "data"
    port = free_port()
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        server = start_server(data, port, gateways)
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
        cpu_before = server_cpu_s(server.pid)
        started = time.perf_counter()
        moves = place_and_cancel(f"http://127.0.0.1:{port}", key, orders, random.Random(seed), pause_s)
        load_s = time.perf_counter() - started
        time.sleep(2.0)  # the last diffs arrive well within this; a missing one shows in diffs_received
        stop.set()
        results = [queue.get() for _ in procs]
        for p in procs:
            p.join()
        server_side = fanout_histogram(port)
        cpu_after = server_cpu_s(server.pid)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
        shutil.rmtree(data.parent, ignore_errors=True)
    lat_ns = [us * 1000 for r in results for us in r["latencies_us"]]
    socket_ns = [us * 1000 for r in results for _, us in r["socket_latencies_us"]]
    # Per diff: when its first and its last subscriber had it (the spread is the fan-out itself).
    per_diff: dict[int, list[int]] = {}
    for r in results:
        for u, us in r["socket_latencies_us"]:
            per_diff.setdefault(u, []).append(us)
    first_ns = [min(v) * 1000 for v in per_diff.values()]
    last_ns = [max(v) * 1000 for v in per_diff.values()]
    spread_ns = [(max(v) - min(v)) * 1000 for v in per_diff.values()]
    received = sum(r["received"] for r in results)
    return {
        "subscribers": sum(r["subscribers"] for r in results),
        "gateways": gateways,
        "book_moves": moves,
        "diffs_received": received,
        "diffs_expected": moves * subscribers,
        "gaps": sum(r["gaps"] for r in results),
        "closed_by_server": sum(r["closed"] for r in results),
        "messages_per_s": int(received / load_s) if load_s else 0,
        # delivered: the kernel's receive stamp on the subscriber's socket (SO_TIMESTAMPNS) - E
        "socket_p50_us": percentile_us(socket_ns, 50),
        "socket_p99_us": percentile_us(socket_ns, 99),
        "socket_p999_us": percentile_us(socket_ns, 99.9),
        "socket_max_us": percentile_us(socket_ns, 100),
        # per diff, the first and the last of its subscribers to have it (p99 over diffs)
        "first_subscriber_p99_us": percentile_us(first_ns, 99),
        "last_subscriber_p99_us": percentile_us(last_ns, 99),
        # per diff, from its first subscriber to its last: the fan-out itself, without the batch and fsync before it
        "spread_p50_us": percentile_us(spread_ns, 50),
        "spread_p99_us": percentile_us(spread_ns, 99),
        # read: when the client process got round to reading it (adds the clients' own CPU time)
        "p50_us": percentile_us(lat_ns, 50),
        "p99_us": percentile_us(lat_ns, 99),
        "p999_us": percentile_us(lat_ns, 99.9),
        "max_us": percentile_us(lat_ns, 100),
        "env": env,
        "server_fanout": server_side,
        # CPU seconds spent from the first order to the end (2 s after the last): where the time went
        "cpu_s": {"clients": round(sum(r["cpu_s"] for r in results), 2),
                  **{k: round(cpu_after.get(k, 0) - cpu_before.get(k, 0), 2) for k in cpu_after}},
    }


_SUMMARY = ("gateways", "diffs_received", "diffs_expected", "gaps", "closed_by_server", "messages_per_s", "socket_p50_us",
            "socket_p99_us", "first_subscriber_p99_us", "last_subscriber_p99_us", "spread_p50_us", "spread_p99_us", "p50_us", "p99_us", "p999_us", "max_us",
            "server_fanout", "cpu_s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--subscribers", type=int, default=None)
    parser.add_argument("--no-reference", action="store_true", help="skip the queued reference run")
    parser.add_argument("--gateways", default="0,1,2", help="comma-separated gateway process counts to measure (0: the "
                        "engine process serves the WebSockets itself; N: `serve --gateways N`, api/relay.py)")
    args = parser.parse_args()
    print(f"seed={args.seed}", file=sys.stderr)
    load_before = [round(x, 2) for x in os.getloadavg()]  # float-ok: report
    subscribers = args.subscribers or (20 if args.smoke else 1000)
    orders = 5 if args.smoke else 50
    pause_s = 0.02
    result: dict = {"seed": args.seed, "workload": {"subscribers": subscribers, "stream": "btcusdt@depth", "orders_placed_and_cancelled": orders, "pause_ms": int(pause_s * 1000), "client": "raw-socket epoll WebSocket client, 2 processes, one read per frame with the kernel receive stamp (SO_TIMESTAMPNS)"}}
    counts = [int(c) for c in args.gateways.split(",") if c.strip()]
    runs = {count: run(subscribers, orders, args.seed, {}, pause_s, count) for count in counts}
    fanout = runs[counts[0]]
    result["fanout"] = fanout
    result["by_gateways"] = {str(count): {k: runs[count][k] for k in _SUMMARY} for count in counts}
    result["baseline"] = {"name": "1 subscriber, same server code", **run(1, orders, args.seed, {}, pause_s)}
    if not args.no_reference:
        result["queued_reference"] = {"name": "RINGFENCE_WS_DIRECT_WRITES=0: a queue and send_text per connection", **run(subscribers, orders, args.seed, {"RINGFENCE_WS_DIRECT_WRITES": "0"}, pause_s)}
    result["p99_us"] = fanout["p99_us"]
    result["socket_p99_us"] = fanout["socket_p99_us"]
    result["load_avg_1_5_15"] = {"before": load_before, "after": [round(x, 2) for x in os.getloadavg()]}  # float-ok: report
    result["server_src"] = server_source()
    result["goal"] = {"p99_us": 50_000, "subscribers": 1000}
    emit("fanout", result, smoke=args.smoke)


if __name__ == "__main__":
    main()
