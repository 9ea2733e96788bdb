"""The API over loopback: signed REST orders from concurrent clients, and WebSocket depth fan-out.

Usage: python bench/api.py [--smoke] [--seed N] [--gateways 1,2] [--gateways-only] [--client lean|aiohttp]

Starts a real `ringfence serve --demo` process, then (client load in separate processes; REST load
from bench/_lean_http.py, raw keep-alive HTTP/1.1 costing ~20-40 us of CPU per request, so the
figures measure the server, not the client: aiohttp's cost 120-270 us, half a ping's server CPU;
each REST figure carries the client's and the server processes' CPU per request, from os.times and
/proc):
1. baseline: unsigned `GET /api/v3/ping` from the same clients (the HTTP stack's own ceiling);
2. signed `POST /api/v3/order` (IOC limit orders that do not cross, so every one goes through
   authentication, the journal with fsync, the engine and the read models, and then expires):
   closed loop (32 connections, one request outstanding each): throughput (capacity) and latency
   p50/p99/p99.9, which at saturation is Little's law (32 / throughput), not a service time;
2b. the same orders open loop at half that capacity (`signed_orders_open_loop`, `p99_us_open_loop`):
   the latency the goal's p99 means, measured from each order's scheduled send time;
3. WebSocket API orders (`/ws-api/v3`): N connections, each logged on once with the demo's Ed25519
   key, then unsigned `order.place` with the same IOC orders: closed loop (one outstanding per
   connection, like the REST clients) and pipelined (8 outstanding per connection);
4. the same ping, signed orders (closed loop, then open loop at half of that configuration's own
   capacity, as in 2b) and WebSocket API orders through `serve --gateways K` (K gateway processes
   relaying to one engine process), for each K of --gateways; `p99_us_open_loop_by_gateways` and
   `goal_met_by_gateways` judge the goal per deployment (`goal_met`: the one-process server);
5. WebSocket fan-out: N subscribers on `btcusdt@depth`; resting orders placed and cancelled;
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
import _lean_http  # noqa: E402
from _common import emit, percentile_us  # noqa: E402


#: the open-loop figure offers this fraction of the closed-loop capacity measured in the same run
OPEN_LOOP_FRACTION = 0.5
#: issue 18's goal for signed REST orders, judged per deployment (one process, or K gateways): the
#: closed-loop throughput against the same server's ping, and the open-loop p99
GOAL_ORDERS_TO_PING, GOAL_P99_US = 0.5, 10_000
GATEWAY_GOAL = {"signed_orders_to_ping": GOAL_ORDERS_TO_PING, "order_p99_us": GOAL_P99_US, "order_p99_figure": "p99_us_open_loop"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data: Path, port: int, gateways: int = 0) -> subprocess.Popen:
    env = dict(os.environ, RINGFENCE_API_WEIGHT_PER_MIN="100000000", RINGFENCE_API_KEY_WEIGHT_PER_MIN="100000000")
    extra = ["--gateways", str(gateways)] if gateways else []
    proc = subprocess.Popen([sys.executable, "-m", "ringfence.cli", "serve", "--demo", "--data", str(data), "--port", str(port), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    import httpx

    deadline = time.time() + 180  # a loaded 2-core machine takes over a minute to seed the demo
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


def http_process(base: str, kind: str, key: dict, seconds: float, concurrency: int, seed: int, queue: mp.Queue,  # float-ok
                 client: str = "lean", rate_per_s: float = 0.0) -> None:  # float-ok: offered rate, 0 = closed loop
    try:
        queue.put(_http_load(base, kind, key, seconds, concurrency, seed, client, rate_per_s))
    except BaseException as err:  # a crashed worker must end the run, not leave the parent waiting on the queue
        queue.put(err)
        raise


def _http_load(base: str, kind: str, key: dict, seconds: float, concurrency: int, seed: int, client: str,  # float-ok
               rate_per_s: float) -> tuple[list, float, dict]:  # float-ok: offered rate
    out: list = []
    extra: dict = {}
    started = os.times()
    if client == "aiohttp":
        asyncio.run(_http_worker(base, kind, key, seconds, concurrency, seed, out))
    else:
        import uvloop

        host, port = base.removeprefix("http://").split(":")
        make = _lean_http.request_maker(kind, f"{host}:{port}", key, seed)
        if rate_per_s:
            extra = uvloop.run(_lean_http.open_loop(host, int(port), make, seconds, concurrency, rate_per_s, out))
        else:
            uvloop.run(_lean_http.closed_loop(host, int(port), make, seconds, concurrency, out))
    ended = os.times()
    # the client's own CPU (it shares the machine's 2 cores with the server): user + system seconds
    return out, (ended.user - started.user) + (ended.system - started.system), extra


def run_http(base: str, kind: str, keys: list[dict], seconds: float, procs: int, concurrency: int, seed: int,  # float-ok
             client: str = "lean", rate_per_s: float = 0.0) -> dict:  # float-ok: offered rate over all processes
    """`procs` client processes of `concurrency` connections each: closed loop (rate_per_s 0), or open
    loop at `rate_per_s` in all (shared evenly), latency from each request's scheduled time."""
    queue: mp.Queue = mp.Queue()
    workers = [mp.Process(target=http_process, args=(base, kind, keys[i % len(keys)], seconds, concurrency, seed + i, queue,
                                                     client, rate_per_s / procs)) for i in range(procs)]
    started = time.perf_counter()
    for w in workers:
        w.start()
    got = [queue.get() for _ in workers]
    for failed in got:
        if isinstance(failed, BaseException):
            for w in workers:
                w.kill()
            raise SystemExit(f"a client process failed: {failed!r}")
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - started
    results = [r for r, _, _ in got]
    client_cpu_s = sum(cpu for _, cpu, _ in got)
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
        "client_cpu_us_per_request": round(1e6 * client_cpu_s / max(1, len(samples))),
        "client_cpu_share_of_2_cores": round(client_cpu_s / (2 * max(elapsed, 1e-9)), 3),
        "client": client,
        **({"loop": "open", "offered_per_s": round(rate_per_s),
            "waited_for_a_connection": sum(e["waited_for_a_connection"] for _, _, e in got),
            "max_send_lag_us": max(e["max_send_lag_us"] for _, _, e in got)} if rate_per_s else {"loop": "closed"}),
    }


# ---------------------------------------------------------------- WebSocket API orders


async def _ws_api_worker(ws_url: str, key: dict, seconds: float, connections: int, window: int, seed: int, out: list) -> None:  # float-ok
    """`connections` sockets to /ws-api/v3, each logged on once (`session.logon`, Ed25519), then
    unsigned `order.place` requests, `window` outstanding per socket (1: the same closed loop as a
    REST client). The same IOC orders as the REST figure."""
    import base64

    import websockets
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    rng = random.Random(seed)
    private = Ed25519PrivateKey.from_private_bytes(base64.b64decode(key["private_key"]))
    stop = time.perf_counter() + seconds

    async def one(ws, first_id: int) -> None:  # type: ignore[no-untyped-def]
        sent: dict[str, int] = {}
        next_id = first_id

        async def send() -> None:
            nonlocal next_id
            next_id += 1
            side = "BUY" if rng.random() < 0.5 else "SELL"  # float-ok: coin flip
            rid = str(next_id)
            request = {"id": rid, "method": "order.place", "params": {
                "symbol": "BTCUSDT", "side": side, "type": "LIMIT", "timeInForce": "IOC", "quantity": "0.0010",
                "price": "60000.00" if side == "BUY" else "62000.00",  # never crosses
                "newClientOrderId": f"w{rng.getrandbits(64):x}", "timestamp": time.time_ns() // 1_000_000, "recvWindow": 60000}}
            sent[rid] = time.perf_counter_ns()
            await ws.send(json.dumps(request))

        for _ in range(window):
            await send()
        while sent:
            reply = json.loads(await ws.recv())
            started = sent.pop(str(reply.get("id")), None)
            if started is None:
                continue
            out.append((time.perf_counter_ns() - started, reply.get("status")))
            if time.perf_counter() < stop:
                await send()

    sockets = []
    for _ in range(connections):
        ws = await websockets.connect(ws_url, max_queue=None)
        params = {"apiKey": key["api_key"], "timestamp": time.time_ns() // 1_000_000}
        payload = "&".join(f"{k}={v}" for k, v in sorted(params.items()))
        params["signature"] = base64.b64encode(private.sign(payload.encode())).decode()
        await ws.send(json.dumps({"id": "logon", "method": "session.logon", "params": params}))
        logon = json.loads(await ws.recv())
        assert logon.get("status") == 200, logon
        sockets.append(ws)
    await asyncio.gather(*(one(ws, i * 10_000_000) for i, ws in enumerate(sockets)))
    for ws in sockets:
        await ws.close()


def ws_api_process(ws_url: str, key: dict, seconds: float, connections: int, window: int, seed: int, queue: mp.Queue) -> None:  # float-ok
    out: list = []
    asyncio.run(_ws_api_worker(ws_url, key, seconds, connections, window, seed, out))
    queue.put(out)


def run_ws_api(base: str, key: dict, seconds: float, connections: int, window: int, seed: int) -> dict:  # float-ok
    queue: mp.Queue = mp.Queue()
    worker = mp.Process(target=ws_api_process, args=(base.replace("http://", "ws://") + "/ws-api/v3", key, seconds, connections, window, seed, queue))
    worker.start()
    samples_status = queue.get()
    worker.join()
    samples = [ns for ns, _ in samples_status]
    statuses: dict[str, int] = {}
    for _, code in samples_status:
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
        "connections": connections,
        "outstanding_per_connection": window,
        "logons": connections,
    }


# ---------------------------------------------------------------- WebSocket fan-out


def server_source() -> str:
    """Which ringfence the server runs (PYTHONPATH decides): lets one bench script measure two trees."""
    out = subprocess.run([sys.executable, "-c", "import ringfence, os; print(os.path.dirname(ringfence.__file__))"], capture_output=True, text=True)
    return out.stdout.strip()


def fanout_figure(subscribers: int, orders: int, seed: int) -> dict:
    """The fan-out figure, measured by bench/fanout.py's lean clients on a server of its own (websockets-library
    clients cost more CPU than the server on 2 cores, and 1,000
    of them from one address exceed the 50-connections-per-address limit)."""
    from fanout import run as fanout_run

    fig = fanout_run(subscribers, orders, seed, {}, 0.02)
    fig["expected_messages"] = fig["diffs_expected"]
    fig["diff_messages_received"] = fig["diffs_received"]
    fig["note"] = "bench/fanout.py: latency from the diff's sequencer timestamp (ms resolution) to receipt"
    return fig


def _cpu_s(pid: int) -> float:  # float-ok: CPU seconds of a process (utime + stime), for the breakdown
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int, module: bytes) -> list[int]:
    kids = [int(k) for t in Path(f"/proc/{pid}/task").glob("*/children") for k in t.read_text().split()]
    out = []
    for k in kids:
        try:
            if module in Path(f"/proc/{k}/cmdline").read_bytes():
                out.append(k)
        except OSError:  # ended meanwhile
            pass
    return out


def _gateway_pids(pid: int) -> list[int]:
    return _children(pid, b"ringfence.api.relay")


def _scorer_pids(pid: int) -> list[int]:
    """The monitoring scorer process (RINGFENCE_MONITORING_SCORER=process, serve's default since session 23)."""
    return _children(pid, b"ringfence.monitoring.scorer_process")


def _cpu_sum(pids: list[int]) -> float:  # float-ok: CPU seconds
    total = 0.0
    for pid in pids:
        try:
            total += _cpu_s(pid)
        except OSError:  # ended meanwhile (a scorer process restarted): its CPU is not counted
            pass
    return total


def run_http_cpu(server: subprocess.Popen, base: str, kind: str, keys: list[dict], seconds: float, procs: int, conc: int,  # float-ok
                 seed: int, client: str = "lean", rate_per_s: float = 0.0) -> dict:  # float-ok: offered rate
    """`run_http`, plus the CPU time the engine process and the gateway processes spent per answered
    request meanwhile (from /proc; the engine's figure includes its background threads, not the monitoring
    scorer process, which is counted on its own)."""
    gateways, scorers = _gateway_pids(server.pid), _scorer_pids(server.pid)
    engine0, gw0, sc0 = _cpu_s(server.pid), _cpu_sum(gateways), _cpu_sum(scorers)
    result = run_http(base, kind, keys, seconds, procs, conc, seed, client, rate_per_s)
    engine1, gw1, sc1 = _cpu_s(server.pid), _cpu_sum(gateways), _cpu_sum(scorers)
    n = max(1, result["ok"])
    result["cpu_us_per_request"] = {"engine_process": round(1e6 * (engine1 - engine0) / n),
                                    "gateway_processes": round(1e6 * (gw1 - gw0) / n),
                                    "scorer_process": round(1e6 * (sc1 - sc0) / n)}
    return result


def open_loop_orders(server: subprocess.Popen, base: str, keys: list[dict], closed: dict, seconds: float, procs: int,  # float-ok
                     conc: int, seed: int, client: str) -> dict:
    """The goal's p99 is a latency below saturation: the same signed orders offered open loop at
    OPEN_LOOP_FRACTION of `closed` (the closed-loop capacity this very server just measured), latency
    from each order's scheduled send time, with each process's CPU per request."""
    offered = max(1, closed["throughput_per_s"] * OPEN_LOOP_FRACTION)
    result = run_http_cpu(server, base, "order", keys, seconds, procs, conc, seed + 7, client, offered)
    result["name"] = f"signed POST /api/v3/order, open loop at {OPEN_LOOP_FRACTION:g} of the closed-loop capacity above"
    result["fraction_of_closed_loop_capacity"] = OPEN_LOOP_FRACTION
    return result


def goal_met(orders_to_ping: float, p99_us_open_loop: int) -> bool:  # float-ok: a ratio of throughputs
    return orders_to_ping >= GOAL_ORDERS_TO_PING and p99_us_open_loop <= GOAL_P99_US


def by_gateways(entries: list[dict]) -> dict:
    """The goal's two figures for each gateway count, at the top of the line (keys are the counts)."""
    return {"p99_us_open_loop_by_gateways": {str(e["gateways"]): e["p99_us_open_loop"] for e in entries},
            "signed_rest_orders_to_ping_by_gateways": {str(e["gateways"]): e["signed_rest_orders_to_ping"] for e in entries},
            "goal_met_by_gateways": {str(e["gateways"]): e["goal_met"] for e in entries}}


def gateway_figures(counts: list[int], seconds: float, procs: int, conc: int, seed: int, ws: bool = True,  # float-ok
                    client: str = "lean") -> list[dict]:
    """`serve --demo --gateways K` for each K: the same ping baseline and signed orders, and
    WebSocket API orders, all through the gateways (api/relay.py), each against its own ping."""
    out = []
    for count in counts:
        data = Path(tempfile.mkdtemp(prefix=f"rf-bench-api-gw{count}-")) / "data"
        port = free_port()
        server = start_server(data, port, count)
        base = f"http://127.0.0.1:{port}"
        try:
            keys = [k for k in json.loads((data / "demo-keys.json").read_text()) if k.get("kind", "hmac") == "hmac"]
            ed25519 = next(k for k in json.loads((data / "demo-keys.json").read_text()) if k.get("kind") == "ed25519")
            ping = run_http_cpu(server, base, "ping", keys, seconds, procs, conc, seed, client)
            orders = run_http_cpu(server, base, "order", keys, seconds, procs, conc, seed, client)
            open_loop = open_loop_orders(server, base, keys, orders, seconds, procs, conc, seed, client)
            entry = {"gateways": count, "ping": ping, "signed_orders": orders, "signed_orders_open_loop": open_loop,
                     "p99_us_open_loop": open_loop["p99_us"],
                     "signed_rest_orders_to_ping": round(orders["throughput_per_s"] / max(1, ping["throughput_per_s"]), 3)}
            entry["goal_met"] = goal_met(entry["signed_rest_orders_to_ping"], open_loop["p99_us"])
            if ws:
                ws_orders = entry["ws_api_orders"] = run_ws_api(base, ed25519, seconds, conc, 1, seed)
                entry["ws_api_orders_to_ping"] = round(ws_orders["throughput_per_s"] / max(1, ping["throughput_per_s"]), 3)
            out.append(entry)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(60)
            shutil.rmtree(data.parent, ignore_errors=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--gateways", default=None, help="comma-separated gateway counts to measure besides the one-process "
                        "server (`serve --gateways K`); default 1,2 in full mode, none with --smoke. Example: --gateways 1,2,4")
    parser.add_argument("--gateways-only", action="store_true", help="measure only `serve --gateways K` (ping and signed "
                        "REST orders closed and open loop, with each process's CPU per request), not the one-process server, the WebSocket API "
                        "or the fan-out: a run short enough for a shared machine")
    parser.add_argument("--client", choices=("lean", "aiohttp"), default="lean", help="the REST load generator: "
                        "bench/_lean_http.py (default: raw keep-alive HTTP/1.1, ~20-40 us of CPU per request) or aiohttp "
                        "(~120-270 us per request, the figures before 2026-12-06)")
    parser.add_argument("--note", default="", help="free text kept in the JSON line (say which build is measured, A/B order...)")
    args = parser.parse_args()
    print(f"seed={args.seed}", file=sys.stderr)
    load_start = os.getloadavg()
    seconds = 2.0 if args.smoke else 10.0
    # one client process: on 2 cores a second one would take the core the server needs
    procs, conc = (1, 4) if args.smoke else (1, 32)
    if args.gateways_only:
        counts = [int(c) for c in (args.gateways or "1,2").split(",") if c]
        only = {"mode": "gateways-only", "seed": args.seed,
                "workload": {"seconds": seconds, "client_processes": procs, "connections_per_process": conc},
                "gateways": gateway_figures(counts, seconds, procs, conc, args.seed, ws=False, client=args.client),
                "server_src": server_source(), "goal": GATEWAY_GOAL,
                "load_average_1m": {"start": round(load_start[0], 2), "end": round(os.getloadavg()[0], 2)}}
        only.update(by_gateways(only["gateways"]))
        if args.note:
            only["note"] = args.note
        emit("api", only, smoke=args.smoke)
        return
    subscribers, orders = (20, 5) if args.smoke else (1000, 50)
    data = Path(tempfile.mkdtemp(prefix="rf-bench-api-")) / "data"
    port = free_port()
    server = start_server(data, port)
    base = f"http://127.0.0.1:{port}"
    try:
        keys = [k for k in json.loads((data / "demo-keys.json").read_text()) if k.get("kind", "hmac") == "hmac"]
        result: dict = {"seed": args.seed, "workload": {"seconds": seconds, "client_processes": procs, "connections_per_process": conc,
                                                        "client": args.client, "ws_subscribers": subscribers, "ws_orders": orders}}
        result["baseline"] = {"name": "unsigned GET /api/v3/ping, same clients, closed loop",
                              **run_http_cpu(server, base, "ping", keys, seconds, procs, conc, args.seed, args.client)}
        orders_result = run_http_cpu(server, base, "order", keys, seconds, procs, conc, args.seed, args.client)
        orders_result["name"] = "signed POST /api/v3/order, closed loop: capacity (its latency is Little's law: connections / throughput)"
        result["signed_orders"] = orders_result
        open_result = result["signed_orders_open_loop"] = open_loop_orders(server, base, keys, orders_result, seconds, procs,
                                                                           conc, args.seed, args.client)
        result["throughput_per_s"] = orders_result["throughput_per_s"]
        result["p99_us"] = orders_result["p99_us"]  # closed loop, as in earlier lines; the goal's p99 is below
        result["p99_us_open_loop"] = open_result["p99_us"]
        ed25519 = next(k for k in json.loads((data / "demo-keys.json").read_text()) if k.get("kind") == "ed25519")
        ws_orders = run_ws_api(base, ed25519, seconds, conc, 1, args.seed)
        ws_orders["name"] = "WebSocket API order.place after one session.logon per connection, closed loop like the REST clients"
        ws_pipelined = run_ws_api(base, ed25519, seconds, conc, 8, args.seed + 1)
        ws_pipelined["name"] = "the same, 8 orders outstanding per connection (pipelined)"
        result["ws_api_orders"] = ws_orders
        result["ws_api_orders_pipelined"] = ws_pipelined
        ping = result["baseline"]["throughput_per_s"] or 1
        result["ratios"] = {
            "signed_rest_orders_to_ping": round(orders_result["throughput_per_s"] / ping, 3),
            "ws_api_orders_to_ping": round(ws_orders["throughput_per_s"] / ping, 3),
            "ws_api_pipelined_orders_to_ping": round(ws_pipelined["throughput_per_s"] / ping, 3),
            "ws_api_orders_to_signed_rest_orders": round(ws_orders["throughput_per_s"] / max(1, orders_result["throughput_per_s"]), 3),
        }
        result["goal_met"] = goal_met(result["ratios"]["signed_rest_orders_to_ping"], open_result["p99_us"])
        wanted = args.gateways if args.gateways is not None else ("" if args.smoke else "1,2")
        result["gateways"] = gateway_figures([int(c) for c in wanted.split(",") if c], seconds, procs, conc, args.seed, client=args.client)
        result.update(by_gateways(result["gateways"]))
        result["ws_fanout"] = fanout_figure(subscribers, orders, args.seed)
        result["server_src"] = server_source()
        result["goal"] = {**GATEWAY_GOAL, "ws_fanout_p99_us": 50_000, "ws_subscribers": 1000}
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
        shutil.rmtree(data.parent, ignore_errors=True)
    # the machines here are shared: the 1-minute load average at start and end, beside the numbers
    result["load_average_1m"] = {"start": round(load_start[0], 2), "end": round(os.getloadavg()[0], 2)}
    if args.note:
        result["note"] = args.note
    emit("api", result, smoke=args.smoke)


if __name__ == "__main__":
    main()
