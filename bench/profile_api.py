"""Where the engine process of `serve --demo --gateways K` spends its CPU under bench/api.py's load.

Usage: python bench/profile_api.py [--kind order|ping] [--gateways 1] [--seconds 10] [--cprofile]
                                   [--wrap MODULE.CLASS.METHOD,...] [--top 40]

Starts the server with a start-up hook (a `sitecustomize` in a temporary directory put first on
PYTHONPATH; only the engine process, whose argv has `serve`, installs it), warms it (3 s of the same
load: keys taught to the gateways, caches filled), then runs the load of bench/api.py (1 client
process, 32 connections) and prints:

* CPU per answered request of each thread of the engine process (from /proc/PID/task, named by
  `threading`), beside the engine and gateway totals bench/api.py reports;
* with --cprofile, a cProfile of the engine's main thread (the event loop: relay, ASGI app,
  handlers, read models) over the load, top functions by own and by cumulative time. cProfile
  slows what it measures several times over and counts every resumption of a coroutine as a call:
  read it for shares, not for absolute times;
* with --wrap, a cProfile of each named method on whatever thread calls it (say
  ringfence.monitoring.service.Monitor.step,ringfence.monitoring.stream.Outbox.flush).

A diagnostic, not a benchmark: it writes nothing to bench/results. Run it under the bench lock on a
shared machine. The hook: SIGUSR1 starts profiling, SIGUSR2 stops it and writes the files.
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import api  # noqa: E402  (bench/api.py: the server and the load)

HOOK = '''
import os, sys
if os.environ.get("RF_PROFILE_OUT") and "serve" in sys.argv:
    import cProfile, importlib, json, signal, threading
    state = {"main": None, "wrapped": {}, "profs": {}}

    def _wrap(spec):
        mod, cls, meth = spec.rsplit(".", 2)
        owner = getattr(importlib.import_module(mod), cls)
        orig = getattr(owner, meth)
        prof = state["profs"].setdefault(spec, cProfile.Profile())

        def wrapped(*a, **k):
            prof.enable()
            try:
                return orig(*a, **k)
            finally:
                prof.disable()

        setattr(owner, meth, wrapped)
        state["wrapped"][spec] = (owner, meth, orig)

    import gc, time
    gc_pauses = {"on": False, "started": 0, "by_gen": {}}

    def _gc_watch(phase, info):
        if not gc_pauses["on"]:
            return
        if phase == "start":
            gc_pauses["started"] = time.perf_counter_ns()
            return
        us = (time.perf_counter_ns() - gc_pauses["started"]) // 1000
        row = gc_pauses["by_gen"].setdefault(str(info["generation"]), {"collections": 0, "total_us": 0, "max_us": 0, "pauses_us": []})
        row["collections"] += 1
        row["total_us"] += us
        row["max_us"] = max(row["max_us"], us)
        if len(row["pauses_us"]) < 20_000:
            row["pauses_us"].append(us)

    gc.callbacks.append(_gc_watch)

    # the stall sampler: a callback on the event loop every ms stamps a heartbeat; a thread looks at
    # it every 2 ms and, while it is older than STALL_MS, samples every thread's stack (the loop's
    # thread shows what held it up, or that it waited for the GIL another thread held)
    import asyncio, traceback
    STALL_MS = int(os.environ.get("RF_PROFILE_STALL_MS", "10"))
    stalls = {"on": False, "beat": 0.0, "found": [], "main": threading.main_thread().ident}

    def _frames(frame, depth=8):
        out = []
        for f in traceback.extract_stack(frame)[::-1]:
            if "/asyncio/" in f.filename and out:
                break
            out.append(f"{f.filename.rsplit('/', 2)[-2]}/{f.filename.rsplit('/', 1)[-1]}:{f.lineno} {f.name}")
            if len(out) >= depth:
                break
        return out

    def _sampler():
        current = None
        while stalls["on"]:
            time.sleep(0.002)
            age_ms = (time.perf_counter() - stalls["beat"]) * 1000
            if age_ms < STALL_MS:
                if current is not None:
                    stalls["found"].append(current)
                    current = None
                continue
            names = {t.ident: t.name for t in threading.enumerate()}
            sample = {names.get(ident, str(ident)): _frames(fr, 6 if ident != stalls["main"] else 10)
                      for ident, fr in sys._current_frames().items() if ident != threading.get_ident()}
            if current is None:
                current = {"ms": age_ms, "samples": []}
            current["ms"] = age_ms
            if len(current["samples"]) < 5:
                current["samples"].append(sample)
        if current is not None:
            stalls["found"].append(current)

    def _beat(loop):
        stalls["beat"] = time.perf_counter()
        if stalls["on"]:
            loop.call_later(0.001, _beat, loop)

    # --timed: how long each call of the named coroutine functions took, wall clock, awaits included
    timed = {"on": False, "ns": {}, "orig": []}

    def _time(spec):
        mod, cls, meth = spec.rsplit(".", 2)
        owner = getattr(importlib.import_module(mod), cls)
        orig = getattr(owner, meth)
        samples = timed["ns"].setdefault(spec, [])

        async def wrapped(*a, **k):
            started = time.perf_counter_ns()
            try:
                return await orig(*a, **k)
            finally:
                if timed["on"] and len(samples) < 200_000:
                    samples.append(time.perf_counter_ns() - started)

        setattr(owner, meth, wrapped)
        timed["orig"].append((owner, meth, orig))

    for spec in filter(None, os.environ.get("RF_PROFILE_TIMED", "").split(",")):
        _time(spec)  # at start-up, before the app holds references to them

    def _start(*_):
        gc_pauses["on"] = True
        timed["on"] = True
        loop = asyncio._get_running_loop()
        if os.environ.get("RF_PROFILE_STALLS") == "1" and loop is not None:
            stalls["on"] = True
            _beat(loop)
            threading.Thread(target=_sampler, name="profile-stall-sampler", daemon=True).start()
        if os.environ.get("RF_PROFILE_MAIN") == "1":
            state["main"] = cProfile.Profile()
            state["main"].enable()
        for spec in filter(None, os.environ.get("RF_PROFILE_WRAP", "").split(",")):
            _wrap(spec)

    def _stop(*_):
        out = os.environ["RF_PROFILE_OUT"]
        gc_pauses["on"] = False
        stalls["on"] = False
        timed["on"] = False
        with open(out + ".timed.json", "w") as fh:
            json.dump(timed["ns"], fh)
        time.sleep(0.01)
        with open(out + ".stalls.json", "w") as fh:
            json.dump(stalls["found"], fh)
        with open(out + ".gc.json", "w") as fh:
            json.dump({"by_gen": gc_pauses["by_gen"], "threshold": gc.get_threshold(), "frozen": gc.get_freeze_count(),
                       "tracked_now": len(gc.get_objects())}, fh)
        if state["main"] is not None:
            state["main"].disable()
            state["main"].dump_stats(out + ".main.prof")
        for spec, (owner, meth, orig) in state["wrapped"].items():
            setattr(owner, meth, orig)
            state["profs"][spec].dump_stats(out + "." + spec + ".prof")
        with open(out + ".threads.json", "w") as fh:
            json.dump({str(t.native_id): t.name for t in threading.enumerate()}, fh)

    signal.signal(signal.SIGUSR1, _start)
    signal.signal(signal.SIGUSR2, _stop)
'''


def thread_cpu_s(pid: int) -> dict[str, float]:  # float-ok: CPU seconds per thread, for the breakdown
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended
        out[task.name] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def print_stalls(found: list[dict], seconds: float) -> None:  # float-ok: seconds of load
    """How often and how long the event loop stood still, and what each thread was doing meanwhile:
    for the loop's thread, the innermost frames of each sample, counted over all stalls."""
    lengths = sorted(s["ms"] for s in found)
    print(f"event-loop stalls over {seconds:.0f} s: {len(found)}, {sum(lengths):.0f} ms in all; longest "
          + ", ".join(f"{ms:.0f}" for ms in lengths[::-1][:10]) + " ms")
    by_thread: dict[str, dict[str, int]] = {}
    for stall in found:
        for sample in stall["samples"]:
            for thread, frames in sample.items():
                where = " <- ".join(frames[:4]) if frames else "?"
                by_thread.setdefault(thread, {})
                by_thread[thread][where] = by_thread[thread].get(where, 0) + 1
    for thread in sorted(by_thread, key=lambda t: (t != "MainThread", t)):
        rows = sorted(by_thread[thread].items(), key=lambda kv: -kv[1])
        print(f"  {thread}:")
        for where, n in rows[:6]:
            print(f"    {n:5d}  {where}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=("order", "ping"), default="order")
    parser.add_argument("--gateways", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=10.0)  # float-ok: seconds of load
    parser.add_argument("--cprofile", action="store_true", help="cProfile the engine's main thread")
    parser.add_argument("--wrap", default="", help="comma-separated MODULE.CLASS.METHOD to profile wherever they run")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--stalls", action="store_true", help="sample every thread's stack while the engine's event loop "
                        "is held up for more than --stall-ms (a heartbeat callback every ms, looked at every 2 ms)")
    parser.add_argument("--stall-ms", type=int, default=10)
    parser.add_argument("--timed", default="", help="comma-separated MODULE.CLASS.METHOD coroutine functions to time "
                        "(wall clock per call, awaits included), e.g. ringfence.api.relay.EngineRelay._run,"
                        "ringfence.api.service.Exchange.submit: where a request's latency is spent inside the engine")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(f"seed={args.seed}", file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="rf-profile-"))
    (work / "hook").mkdir()
    (work / "hook" / "sitecustomize.py").write_text(HOOK)
    out = str(work / "profile")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(work / "hook"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    os.environ.update(RF_PROFILE_OUT=out, RF_PROFILE_MAIN="1" if args.cprofile else "0", RF_PROFILE_WRAP=args.wrap,
                      RF_PROFILE_STALLS="1" if args.stalls else "0", RF_PROFILE_STALL_MS=str(args.stall_ms), RF_PROFILE_TIMED=args.timed)
    data = work / "data"
    port = api.free_port()
    server = api.start_server(data, port, args.gateways)
    base = f"http://127.0.0.1:{port}"
    try:
        keys = [k for k in json.loads((data / "demo-keys.json").read_text()) if k.get("kind", "hmac") == "hmac"]
        api.run_http(base, args.kind, keys, 3, 1, 32, args.seed + 100)  # warm
        before = thread_cpu_s(server.pid)
        server.send_signal(signal.SIGUSR1)
        result = api.run_http_cpu(server, base, args.kind, keys, args.seconds, 1, 32, args.seed)
        server.send_signal(signal.SIGUSR2)
        after = thread_cpu_s(server.pid)
        deadline = time.time() + 30
        while not Path(out + ".threads.json").exists() and time.time() < deadline:
            time.sleep(0.1)
        names = json.loads(Path(out + ".threads.json").read_text())
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    n = max(1, result["ok"])
    print(json.dumps({"kind": args.kind, "gateways": args.gateways, "load_average_1m": round(os.getloadavg()[0], 2),
                      **{k: result[k] for k in ("throughput_per_s", "p50_us", "p99_us", "cpu_us_per_request", "statuses")}}))
    rows = sorted((((after[t] - before.get(t, 0.0)) * 1e6 / n), names.get(t, t)) for t in after)
    print("engine process CPU per request, by thread:")
    for us, name in reversed(rows):
        if us >= 0.5:
            print(f"  {us:8.1f} us  {name}")
    gc_file = Path(out + ".gc.json")
    if gc_file.exists():  # the cyclic GC's pauses in the engine process over the load (all threads)
        gc_info = json.loads(gc_file.read_text())
        print(f"engine process cyclic GC over the load: threshold {gc_info['threshold']}, frozen {gc_info['frozen']:,}, "
              f"tracked at the end {gc_info['tracked_now']:,}")
        for gen, row in sorted(gc_info["by_gen"].items()):
            pauses = sorted(row.pop("pauses_us"))
            p99 = pauses[min(len(pauses) - 1, len(pauses) * 99 // 100)] if pauses else 0
            print(f"  generation {gen}: {row['collections']} collections, {row['total_us'] / n:.1f} us per request, "
                  f"p99 {p99} us, max {row['max_us']} us")
    timed_file = Path(out + ".timed.json")
    if args.timed and timed_file.exists():
        print("wall clock per call inside the engine process (ms):")
        for spec, samples in json.loads(timed_file.read_text()).items():
            ordered = sorted(samples) or [0]
            p50, p90, p99 = (ordered[min(len(ordered) - 1, len(ordered) * q // 1000)] / 1e6 for q in (500, 900, 990))
            print(f"  {spec}: {len(samples)} calls, p50 {p50:.1f}, p90 {p90:.1f}, p99 {p99:.1f}, max {ordered[-1] / 1e6:.1f}")
    stall_file = Path(out + ".stalls.json")
    if args.stalls and stall_file.exists():
        print_stalls(json.loads(stall_file.read_text()), args.seconds)
    for prof in sorted(work.glob("profile.*.prof")):
        print(f"\n==== {prof.name}")
        stats = pstats.Stats(str(prof))
        stats.sort_stats("tottime").print_stats(args.top)
        stats.sort_stats("cumulative").print_stats(args.top)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
