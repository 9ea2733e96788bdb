"""The API over loopback: signed REST orders from concurrent clients, and WebSocket depth fan-out.

Usage: python bench/api.py [--smoke] [--seed N]

Starts a real `ringfence serve --demo` process, then (client load in separate processes):
1. baseline: unsigned `GET /api/v3/ping` from the same clients (the HTTP stack's own ceiling);
2. signed `POST /api/v3/order` (IOC limit orders that do not cross, so every one goes through
   authentication, the journal with fsync, the engine and the read models, and then expires):
   throughput and latency p50/p99/p99.9;
3. WebSocket fan-out: N subscribers on `btcusdt@depth`; resting orders placed and cancelled;
   latency from the diff's event time (`E`, the sequencer's timestamp) to each subscriber's receipt
   (measured by bench/fanout.py, which also has the same-run baselines for it).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import multiprocessing as mp
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, percentile_us  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data: Path, port: int) -> subprocess.Popen:
    env = dict(os.environ, RINGFENCE_API_WEIGHT_PER_MIN="100000000", RINGFENCE_API_KEY_WEIGHT_PER_MIN="100000000")
    proc = subprocess.Popen([sys.executable, "-m", "ringfence.cli", "serve", "--demo", "--data", str(data), "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    import httpx

    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not start")


# ---------------------------------------------------------------- HTTP load (runs in worker processes)


async def _http_worker(base: str, kind: str, key: dict, seconds: float, concurrency: int, seed: int, out: list) -> None:  # float-ok
    # aiohttp rather than httpx: measured here, httpx's async client saturated a core at ~600
    # requests/s, below what the server answers; aiohttp's reached ~13,000 pings/s.
    import aiohttp

    rng = random.Random(seed)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(base_url=base, connector=connector) as http:
        stop = time.perf_counter() + seconds

        async def one() -> None:
            while time.perf_counter() < stop:
                started = time.perf_counter_ns()
                if kind == "ping":
                    async with http.get("/api/v3/ping") as r:
                        await r.read()
                else:
                    params = {
                        "symbol": "BTCUSDT",
                        "side": "BUY" if rng.random() < 0.5 else "SELL",  # float-ok: coin flip
                        "type": "LIMIT",
                        "timeInForce": "IOC",
                        "quantity": "0.0010",
                        "newClientOrderId": f"b{rng.getrandbits(64):x}",
                    }
                    params["price"] = "60000.00" if params["side"] == "BUY" else "62000.00"  # never crosses
                    params["timestamp"] = str(time.time_ns() // 1_000_000)
                    params["recvWindow"] = "60000"
                    payload = urlencode(params)
                    sig = hmac.new(key["api_secret"].encode(), payload.encode(), hashlib.sha256).hexdigest()
                    async with http.post(
                        "/api/v3/order",
                        data=payload + "&signature=" + sig,
                        headers={"X-MBX-APIKEY": key["api_key"], "Content-Type": "application/x-www-form-urlencoded"},
                    ) as r:
                        await r.read()
                out.append((time.perf_counter_ns() - started, r.status))

        await asyncio.gather(*(one() for _ in range(concurrency)))


def http_process(base: str, kind: str, key: dict, seconds: float, concurrency: int, seed: int, queue: mp.Queue) -> None:  # float-ok
    out: list = []
    asyncio.run(_http_worker(base, kind, key, seconds, concurrency, seed, out))
    queue.put(out)


def run_http(base: str, kind: str, keys: list[dict], seconds: float, procs: int, concurrency: int, seed: int) -> dict:  # float-ok
    queue: mp.Queue = mp.Queue()
    workers = [mp.Process(target=http_process, args=(base, kind, keys[i % len(keys)], seconds, concurrency, seed + i, queue)) for i in range(procs)]
    started = time.perf_counter()
    for w in workers:
        w.start()
    results = [queue.get() for _ in workers]
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - started
    samples = [ns for r in results for ns, _ in r]
    statuses: dict[str, int] = {}
    for r in results:
        for _, code in r:
            statuses[str(code)] = statuses.get(str(code), 0) + 1
    ok = statuses.get("200", 0)
    return {
        "requests": len(samples),
        "ok": ok,
        "statuses": statuses,
        "throughput_per_s": int(ok / seconds),
        "p50_us": percentile_us(samples, 50),
        "p99_us": percentile_us(samples, 99),
        "p999_us": percentile_us(samples, 99.9),
        "wall_seconds": round(elapsed, 2),
        "client_processes": procs,
        "connections_per_process": concurrency,
    }


# ---------------------------------------------------------------- WebSocket fan-out


async def _subscribers(ws_base: str, n: int, seconds: float, out: list) -> None:  # float-ok
    import websockets

    conns = []
    for _ in range(n):
        conns.append(await websockets.connect(ws_base + "/ws/btcusdt@depth", max_queue=None))
    stop = time.time() + seconds

    async def reader(ws) -> None:  # type: ignore[no-untyped-def]
        while time.time() < stop:
            try:
                raw = await asyncio.wait_for(ws.recv(), timeout=max(0.05, stop - time.time()))
            except (asyncio.TimeoutError, websockets.ConnectionClosed):
                continue
            received_ms = time.time_ns() / 1e6  # float-ok: latency measurement
            out.append(received_ms - json.loads(raw)["E"])

    await asyncio.gather(*(reader(ws) for ws in conns))
    for ws in conns:
        await ws.close()


def subscriber_process(ws_base: str, n: int, seconds: float, queue: mp.Queue, ready: mp.Event) -> None:  # float-ok
    out: list = []

    async def main() -> None:
        task = asyncio.create_task(_subscribers(ws_base, n, seconds, out))
        await asyncio.sleep(min(5.0, seconds / 3))
        ready.set()
        await task

    asyncio.run(main())
    queue.put(out)


def run_fanout(base: str, keys: list[dict], subscribers: int, orders: int, seconds: float) -> dict:  # float-ok
    import httpx

    ws_base = base.replace("http://", "ws://")
    queue: mp.Queue = mp.Queue()
    ready = mp.Event()
    per_proc = max(1, subscribers // 2)
    procs = [mp.Process(target=subscriber_process, args=(ws_base, per_proc, seconds, queue, ready)) for _ in range(2)]
    for p in procs:
        p.start()
    ready.wait(60)
    time.sleep(1.0)
    key = keys[0]
    with httpx.Client(base_url=base, timeout=10) as http:
        for i in range(orders):
            params = {"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC", "quantity": "0.0010", "price": f"{60990 - (i % 50)}.00", "timestamp": str(time.time_ns() // 1_000_000), "recvWindow": "60000"}
            payload = urlencode(params)
            sig = hmac.new(key["api_secret"].encode(), payload.encode(), hashlib.sha256).hexdigest()
            r = http.post("/api/v3/order", content=payload + "&signature=" + sig, headers={"X-MBX-APIKEY": key["api_key"], "Content-Type": "application/x-www-form-urlencoded"})
            order_id = r.json()["orderId"]
            time.sleep(0.02)
            q = urlencode({"symbol": "BTCUSDT", "orderId": str(order_id), "timestamp": str(time.time_ns() // 1_000_000), "recvWindow": "60000"})
            sig = hmac.new(key["api_secret"].encode(), q.encode(), hashlib.sha256).hexdigest()
            http.delete("/api/v3/order?" + q + "&signature=" + sig, headers={"X-MBX-APIKEY": key["api_key"]})
            time.sleep(0.02)
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    lat_ms = [x for r in results for x in r]
    lat_ns = [int(x * 1e6) for x in lat_ms]
    return {
        "subscribers": per_proc * 2,
        "diff_messages_received": len(lat_ms),
        "expected_messages": per_proc * 2 * orders * 2,
        "p50_us": percentile_us(lat_ns, 50),
        "p99_us": percentile_us(lat_ns, 99),
        "p999_us": percentile_us(lat_ns, 99.9),
        "note": "latency from the diff's sequencer timestamp (ms resolution) to receipt",
    }


def server_source() -> str:
    """Which ringfence the server runs (PYTHONPATH decides): lets one bench script measure two trees."""
    out = subprocess.run([sys.executable, "-c", "import ringfence, os; print(os.path.dirname(ringfence.__file__))"], capture_output=True, text=True)
    return out.stdout.strip()


def fanout_figure(subscribers: int, orders: int, seed: int) -> dict:
    """The fan-out figure, measured by bench/fanout.py's lean clients on a server of its own (the
    websockets-library clients of `run_fanout` cost more CPU than the server on 2 cores, and 1,000
    of them from one address exceed the 50-connections-per-address limit)."""
    from fanout import run as fanout_run

    fig = fanout_run(subscribers, orders, seed, {}, 0.02)
    fig["expected_messages"] = fig["diffs_expected"]
    fig["diff_messages_received"] = fig["diffs_received"]
    fig["note"] = "bench/fanout.py: latency from the diff's sequencer timestamp (ms resolution) to receipt"
    return fig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(f"seed={args.seed}", file=sys.stderr)
    seconds = 2.0 if args.smoke else 10.0
    # one client process: on 2 cores a second one would take the core the server needs
    procs, conc = (1, 4) if args.smoke else (1, 32)
    subscribers, orders = (20, 5) if args.smoke else (1000, 50)
    data = Path(tempfile.mkdtemp(prefix="rf-bench-api-")) / "data"
    port = free_port()
    server = start_server(data, port)
    base = f"http://127.0.0.1:{port}"
    try:
        keys = [k for k in json.loads((data / "demo-keys.json").read_text()) if k.get("kind", "hmac") == "hmac"]
        result: dict = {"seed": args.seed, "workload": {"seconds": seconds, "client_processes": procs, "connections_per_process": conc, "ws_subscribers": subscribers, "ws_orders": orders}}
        result["baseline"] = {"name": "unsigned GET /api/v3/ping, same clients", **run_http(base, "ping", keys, seconds, procs, conc, args.seed)}
        orders_result = run_http(base, "order", keys, seconds, procs, conc, args.seed)
        result["signed_orders"] = orders_result
        result["throughput_per_s"] = orders_result["throughput_per_s"]
        result["p99_us"] = orders_result["p99_us"]
        result["ws_fanout"] = fanout_figure(subscribers, orders, args.seed)
        result["server_src"] = server_source()
        result["goal"] = {"signed_orders_per_s": 20_000, "order_p99_us": 10_000, "ws_fanout_p99_us": 50_000, "ws_subscribers": 1000}
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
        shutil.rmtree(data.parent, ignore_errors=True)
    emit("api", result, smoke=args.smoke)


if __name__ == "__main__":
    main()
