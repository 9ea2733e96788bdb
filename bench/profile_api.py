"""Where the engine process of `serve --demo --gateways K` spends its CPU under bench/api.py's load.

Usage: python bench/profile_api.py [--kind order|ping] [--gateways 1] [--seconds 10] [--cprofile]
                                   [--wrap MODULE.CLASS.METHOD,...] [--top 40] [--rate N] [--stalls]
                                   [--timed MODULE.CLASS.METHOD,...] [--spans custody,MODULE.CLASS.METHOD,...]
                                   [--cputrace] [--gc-young N] [--holds]

Where the open-loop tail comes from (docs/latency.md, session 17), on the one-process server:

    python bench/profile_api.py --gateways 0 --rate 860 --seconds 15 \
        --timed ringfence.api.service.Exchange.submit \
        --spans custody,ringfence.monitoring.service.Monitor.step,ringfence.monitoring.stream.Outbox.flush,\
ringfence.reconcile.reconciler.Reconciler.internal_pass,ringfence.journal.journal.JournalWriter.append

prints each periodic job's CPU and wall clock per call, and which of them (and which GC pauses) ran
while the slowest 1% of `submit` calls waited, beside the share of the time each ran at all.

Starts the server with a start-up hook (a `sitecustomize` in a temporary directory put first on
PYTHONPATH; the engine process, whose argv has `serve`, and the gateways install it), warms it (3 s of the same
load: keys taught to the gateways, caches filled), then runs the load of bench/api.py (1 client
process, 32 connections) and prints:

* CPU per answered request of each thread of the engine process (from /proc/PID/task, named by
  `threading`), beside the engine and gateway totals bench/api.py reports;
* with --cprofile, a cProfile of the engine's main thread (the event loop: relay, ASGI app,
  handlers, read models) over the load, top functions by own and by cumulative time. cProfile
  slows what it measures several times over and counts every resumption of a coroutine as a call:
  read it for shares, not for absolute times;
* with --wrap, a cProfile of each named method on whatever thread calls it (say
  ringfence.monitoring.service.Monitor.step,ringfence.monitoring.stream.Outbox.flush);
* with --gateways K, for each gateway process too (the hook installs in them as well): each HTTP
  request's wall clock through the gateway's ASGI app (accepted to answered), its cyclic GC's pauses
  by generation and, with --stalls, its event loop's stalls: beside the engine's `--timed`
  EngineRelay._run, where between client, gateway and engine a request's time goes.

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
GATEWAY = "ringfence.api.relay" in getattr(sys, "orig_argv", ())  # a gateway process of serve --gateways
if os.environ.get("RF_PROFILE_OUT") and ("serve" in sys.argv or GATEWAY):
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
            if os.environ.get("RF_PROFILE_GC_CENSUS") == "1" and len(gc_pauses.setdefault("census", [])) < 40:
                # --gc-census: which thread set the collection off, and what the generation held (by type)
                counts = {}
                for obj in gc.get_objects(info["generation"]):
                    name = type(obj).__module__ + "." + type(obj).__qualname__
                    counts[name] = counts.get(name, 0) + 1
                top = sorted(counts.items(), key=lambda kv: -kv[1])[:12]
                samples = []
                if len(gc_pauses["census"]) < 2:  # the commonest type's first few objects, and who holds them
                    common = top[0][0] if top else ""
                    for obj in gc.get_objects(info["generation"]):
                        if type(obj).__module__ + "." + type(obj).__qualname__ == common:
                            holders = [type(r).__qualname__ for r in gc.get_referrers(obj)][:3]
                            samples.append(f"{repr(obj)[:90]} <- {holders}")
                            if len(samples) >= 12:
                                break
                    top.append(("samples", samples))
                gc_pauses["census"].append({"generation": info["generation"], "thread": threading.current_thread().name,
                                            "objects": sum(counts.values()), "top": top})
            gc_pauses["cpu_started"] = time.thread_time_ns()  # the collecting thread's CPU: the pause without the machine's load
            return
        us = (time.perf_counter_ns() - gc_pauses["started"]) // 1000
        cpu_us = (time.thread_time_ns() - gc_pauses["cpu_started"]) // 1000
        row = gc_pauses["by_gen"].setdefault(str(info["generation"]), {"collections": 0, "total_us": 0, "max_us": 0, "pauses_us": [],
                                                                       "cpu_us": [], "collected": 0})
        row["collections"] += 1
        row["total_us"] += us
        row["max_us"] = max(row["max_us"], us)
        row["collected"] += info.get("collected", 0)
        if len(row["pauses_us"]) < 20_000:
            row["pauses_us"].append(us)
            row["cpu_us"].append(cpu_us)
            gc_pauses.setdefault("at", []).append((gc_pauses["started"], us * 1000, info["generation"]))

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
    timed = {"on": False, "ns": {}, "starts": {}, "orig": []}

    # --cputrace: every 20 ms, each thread's CPU time so far (/proc/self/task/TID/schedstat, ns): which
    # thread burned the CPU in the windows before a slow request (a burst, not an average)
    cputrace = {"on": False, "rows": []}

    def _cpu_tracer():
        while cputrace["on"]:
            row = {}
            for tid in os.listdir("/proc/self/task"):
                try:
                    with open(f"/proc/self/task/{tid}/schedstat") as fh:
                        row[tid] = int(fh.read().split()[0])
                except OSError:
                    pass
            cputrace["rows"].append((time.perf_counter_ns(), row))
            time.sleep(0.02)

    def _time(spec):
        mod, cls, meth = spec.rsplit(".", 2)
        owner = getattr(importlib.import_module(mod), cls)
        orig = getattr(owner, meth)
        samples = timed["ns"].setdefault(spec, [])
        starts = timed["starts"].setdefault(spec, [])

        async def wrapped(*a, **k):
            started = time.perf_counter_ns()
            try:
                return await orig(*a, **k)
            finally:
                if timed["on"] and len(samples) < 200_000:
                    samples.append(time.perf_counter_ns() - started)
                    starts.append(started)

        setattr(owner, meth, wrapped)
        timed["orig"].append((owner, meth, orig))

    for spec in filter(None, os.environ.get("RF_PROFILE_TIMED", "").split(",") if not GATEWAY else ()):
        _time(spec)  # at start-up, before the app holds references to them

    if GATEWAY:  # each HTTP request's wall clock through the gateway's ASGI app (accepted -> answer written)
        import uvicorn
        _config_init = uvicorn.Config.__init__
        gw_samples = timed["ns"].setdefault("gateway: HTTP request through the relay", [])

        def _timed_config(self, app, *a, **k):
            async def timed_app(scope, receive, send):
                if scope["type"] != "http":
                    return await app(scope, receive, send)
                started = time.perf_counter_ns()
                try:
                    return await app(scope, receive, send)
                finally:
                    if timed["on"] and len(gw_samples) < 200_000:
                        gw_samples.append(time.perf_counter_ns() - started)
            _config_init(self, timed_app, *a, **k)
        uvicorn.Config.__init__ = _timed_config

    # --spans: wall clock and the calling thread's CPU of each call of the named plain functions
    # (MODULE.CLASS.METHOD), and of every custody worker's step: the periodic work's bursts
    spans = {"on": False, "rows": {}}

    def _span(name, fn):
        rows = spans["rows"].setdefault(name, [])

        def wrapped(*a, **k):
            w0, c0 = time.perf_counter_ns(), time.thread_time_ns()
            try:
                return fn(*a, **k)
            finally:
                if spans["on"] and len(rows) < 100_000:
                    rows.append((w0, time.perf_counter_ns() - w0, time.thread_time_ns() - c0))
        return wrapped

    if os.environ.get("RF_PROFILE_SPANS"):
        for spec in filter(None, os.environ["RF_PROFILE_SPANS"].split(",")):
            if spec == "custody":
                sup = importlib.import_module("ringfence.custody.runtime").Supervised
                init = sup.__init__

                def _init(self, name, step, *a, _init=init, **k):
                    _init(self, name, _span("custody-" + name, step), *a, **k)
                sup.__init__ = _init
                continue
            mod, cls, meth = spec.rsplit(".", 2)
            owner = getattr(importlib.import_module(mod), cls)
            setattr(owner, meth, _span(spec.rsplit(".", 2)[-2] + "." + meth, getattr(owner, meth)))

    # --holds: (1) how long each `Node.read(fn)` held the sequencer (fn runs between two batches, the
    # sequencer waits), by the calling thread; (2) each paced thread's longest CPU run without a pause
    # (`CpuPacer`: the CPU used since its last pause when it pauses, and when a new pass restarts it)
    holds = {"on": False, "reads": {}, "runs": {}}
    if os.environ.get("RF_PROFILE_HOLDS") == "1":
        node_cls = importlib.import_module("ringfence.engine.node").Node
        read_orig = node_cls.read

        def _read(self, fn, _orig=read_orig):
            if not holds["on"]:
                return _orig(self, fn)
            rows = holds["reads"].setdefault(threading.current_thread().name, [])

            def timed_fn(engine):
                w0 = time.perf_counter_ns()
                try:
                    return fn(engine)
                finally:
                    if len(rows) < 100_000:
                        rows.append(time.perf_counter_ns() - w0)
            return _orig(self, timed_fn)
        node_cls.read = _read
        pacer_cls = importlib.import_module("ringfence.pacing").CpuPacer
        tick_orig, restart_orig = pacer_cls.tick, pacer_cls.restart

        def _run_done(self, used_ns):
            if holds["on"]:
                rows = holds["runs"].setdefault(threading.current_thread().name, [])
                if len(rows) < 100_000:
                    rows.append(used_ns)

        def _tick(self, _orig=tick_orig):
            used_ns, pauses = self._cpu_ns() - self._mark, self.pauses
            _orig(self)
            if self.pauses != pauses:
                _run_done(self, used_ns)

        def _restart(self, _orig=restart_orig):
            _run_done(self, self._cpu_ns() - self._mark)
            _orig(self)
        pacer_cls.tick, pacer_cls.restart = _tick, _restart

    def _start(*_):
        holds["on"] = True
        if os.environ.get("RF_PROFILE_GC_YOUNG"):  # --gc-young: try another young-generation threshold
            gc.set_threshold(int(os.environ["RF_PROFILE_GC_YOUNG"]), *gc.get_threshold()[1:])
        gc_pauses["on"] = True
        timed["on"] = True
        loop = asyncio._get_running_loop()
        if os.environ.get("RF_PROFILE_STALLS") == "1" and loop is not None:
            stalls["on"] = True
            _beat(loop)
            threading.Thread(target=_sampler, name="profile-stall-sampler", daemon=True).start()
        spans["on"] = True
        if os.environ.get("RF_PROFILE_CPUTRACE") == "1":
            cputrace["on"] = True
            threading.Thread(target=_cpu_tracer, name="profile-cpu-tracer", daemon=True).start()
        if os.environ.get("RF_PROFILE_MAIN") == "1":
            # --cpu-clock: the thread's CPU time, not the wall clock (which counts the GIL's waits)
            state["main"] = cProfile.Profile(time.thread_time) if os.environ.get("RF_PROFILE_CPU_CLOCK") == "1" else cProfile.Profile()
            state["main"].enable()
        for spec in filter(None, os.environ.get("RF_PROFILE_WRAP", "").split(",") if not GATEWAY else ()):
            _wrap(spec)  # the engine's methods: a gateway would only import their modules for nothing

    def _stop(*_):
        out = os.environ["RF_PROFILE_OUT"] + (f".gw{os.getpid()}" if GATEWAY else "")
        gc_pauses["on"] = False
        stalls["on"] = False
        timed["on"] = False
        cputrace["on"] = False
        spans["on"] = False
        holds["on"] = False
        with open(out + ".holds.json", "w") as fh:
            json.dump({"reads": holds["reads"], "runs": holds["runs"]}, fh)
        with open(out + ".spans.json", "w") as fh:
            json.dump(spans["rows"], fh)
        with open(out + ".timed.json", "w") as fh:
            json.dump(timed["ns"], fh)
        with open(out + ".starts.json", "w") as fh:
            json.dump(timed["starts"], fh)
        with open(out + ".cputrace.json", "w") as fh:
            json.dump(cputrace["rows"], fh)
        time.sleep(0.01)
        with open(out + ".stalls.json", "w") as fh:
            json.dump(stalls["found"], fh)
        with open(out + ".gc.json", "w") as fh:
            json.dump({"by_gen": gc_pauses["by_gen"], "at": gc_pauses.get("at", []), "census": gc_pauses.get("census", []), "threshold": gc.get_threshold(), "frozen": gc.get_freeze_count(),
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


def print_gc(who: str, gc_file: Path, n: int) -> None:
    """The cyclic GC's pauses in one process over the load (all its threads), by generation."""
    if not gc_file.exists():
        return
    gc_info = json.loads(gc_file.read_text())
    print(f"{who} cyclic GC over the load: threshold {gc_info['threshold']}, frozen {gc_info['frozen']:,}, "
          f"tracked at the end {gc_info['tracked_now']:,}")
    for gen, row in sorted(gc_info["by_gen"].items()):
        pauses = sorted(row.pop("pauses_us"))
        p99 = pauses[min(len(pauses) - 1, len(pauses) * 99 // 100)] if pauses else 0
        cpu = sorted(row.pop("cpu_us", []))
        print(f"  generation {gen}: {row['collections']} collections, {row['total_us'] / n:.1f} us per request, "
              f"p99 {p99} us, max {row['max_us']} us (wall); CPU of the collecting thread p50 {cpu[len(cpu) // 2] if cpu else 0} us, "
              f"max {cpu[-1] if cpu else 0} us; {row.get('collected', 0)} objects collected")
    for row in gc_info.get("census", []):
        print(f"  a generation-{row['generation']} collection on {row['thread']}: {row['objects']:,} objects: "
              + ", ".join(f"{name} {count}" for name, count in row["top"]))


def print_timed(who: str, timed_file: Path) -> None:
    """Wall clock per call of each timed function in one process (ms)."""
    if not timed_file.exists():
        return
    print(f"wall clock per call inside the {who} (ms):")
    for spec, samples in json.loads(timed_file.read_text()).items():
        ordered = sorted(samples) or [0]
        p50, p90, p99 = (ordered[min(len(ordered) - 1, len(ordered) * q // 1000)] / 1e6 for q in (500, 900, 990))
        print(f"  {spec}: {len(samples)} calls, p50 {p50:.1f}, p90 {p90:.1f}, p99 {p99:.1f}, max {ordered[-1] / 1e6:.1f}")


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


def print_holds(holds: dict) -> None:
    """Per thread: its `Node.read` calls (each holds the sequencer for its length), and its paced runs
    (the CPU a `CpuPacer`-paced thread used between two pauses): ms, max and p99."""
    for title, key in (("Node.read holding the sequencer, by calling thread", "reads"),
                       ("paced threads' CPU runs between pauses (CpuPacer)", "runs")):
        print(f"{title} (ms):")
        for thread, rows in sorted(holds[key].items()):
            ordered = sorted(rows) or [0]
            p50, p99 = (ordered[min(len(ordered) - 1, len(ordered) * q // 100)] for q in (50, 99))
            print(f"  {thread:36s} {len(rows):7d} calls, max {ordered[-1] / 1e6:7.2f}, p99 {p99 / 1e6:6.2f}, p50 {p50 / 1e6:6.2f}, "
                  f"total {sum(rows) / 1e6:8.1f}")


def print_overlaps(spans: dict, starts: dict, durations: dict, gc_at: list) -> None:
    """For the slowest calls of the first timed function (say Exchange.submit): the spans of periodic
    work and the cyclic GC's pauses that ran while each call waited, and how many of the slowest 1% of
    calls overlapped each kind of span: where the tail comes from, span by span."""
    spec = next(iter(starts), None)
    if spec is None:
        return
    calls = sorted(zip(durations[spec], starts[spec]), reverse=True)
    intervals = [(name, w0, w0 + wall, cpu) for name, rows in spans.items() for w0, wall, cpu in rows]
    intervals += [(f"gc-gen{gen}", t0, t0 + ns, ns) for t0, ns, gen in gc_at]
    slowest = calls[:max(1, len(calls) // 100)]
    counts: dict[str, int] = {}
    for dur, start in slowest:
        for name in {n for n, a, b, _ in intervals if a < start + dur and b > start}:
            counts[name] = counts.get(name, 0) + 1
    print(f"the slowest 1% of {spec} ({len(slowest)} calls, from {slowest[-1][0] / 1e6:.1f} ms): how many overlapped each "
          "kind of periodic work (wall-clock overlap)")
    span_s = max(1, max(st for _, st in calls) - min(st for _, st in calls)) / 1e9
    for name, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        busy_s = sum(b - a for nm, a, b, _ in intervals if nm == name) / 1e9
        print(f"  {n:5d}  {name} (running {100 * busy_s / span_s:.0f}% of the time)")
    print(f"  {sum(1 for dur, start in slowest if not any(a < start + dur and b > start for _, a, b, _ in intervals)):5d}  none of them")


def print_cputrace(rows: list, starts: dict, durations: dict, names: dict) -> None:
    """Each thread's CPU in 50 ms windows: the busiest windows of each background thread, and what
    every thread burned in the 100 ms before each of the slowest calls of the first timed function."""
    window_ns = 50_000_000
    if len(rows) < 2:
        return
    t0 = rows[0][0]
    per_window: dict[int, dict[str, float]] = {}  # float-ok: ms of CPU
    for (_, a), (tb, b) in zip(rows, rows[1:]):
        w = (tb - t0) // window_ns
        bucket = per_window.setdefault(w, {})
        for tid, ns in b.items():
            name = names.get(tid, tid)
            bucket[name] = bucket.get(name, 0.0) + (ns - a.get(tid, ns)) / 1e6
    print(f"CPU bursts per thread (ms of CPU in a 50 ms window; {len(per_window)} windows):")
    threads = sorted({n for b in per_window.values() for n in b})
    for name in threads:
        ms = sorted((b.get(name, 0.0) for b in per_window.values()), reverse=True)
        if ms[0] >= 2:
            print(f"  {name:32s} max {ms[0]:5.1f}, then " + ", ".join(f"{x:.1f}" for x in ms[1:6])
                  + f"; windows over 10 ms: {sum(1 for x in ms if x > 10)}")
    spec = next(iter(starts), None)
    if spec is None:
        return
    calls = sorted(zip(durations[spec], starts[spec]), reverse=True)
    shown: set[int] = set()
    print(f"the slowest calls of {spec} and the CPU of each thread in the windows from 100 ms before:")
    for dur, start in calls:
        w = (start - t0) // window_ns
        if w in shown or w - 1 in shown or w + 1 in shown or len(shown) >= 8:
            continue
        shown.add(w)
        print(f"  {dur / 1e6:6.1f} ms at {(start - t0) / 1e9:6.2f} s:")
        for ww in range(w - 2, w + 2):
            bucket = per_window.get(ww, {})
            top = sorted(bucket.items(), key=lambda kv: -kv[1])[:6]
            print(f"      window {ww - w:+d}: " + ", ".join(f"{n} {ms:.1f}" for n, ms in top if ms >= 0.5))


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
    parser.add_argument("--rate", type=float, default=0.0, help="offer the load open loop at this many requests/s "  # float-ok
                        "(latency from each request's scheduled time, as bench/api.py's open-loop figure); 0: closed loop")
    parser.add_argument("--cputrace", action="store_true", help="with --timed: each thread's CPU every 20 ms; prints the "
                        "windows before the slowest calls of the first --timed function, and each thread's largest bursts")
    parser.add_argument("--spans", default="", help="comma-separated MODULE.CLASS.METHOD plain functions (and `custody`: "
                        "each custody worker's step) to time per call, wall clock and the thread's CPU: periodic work's bursts")
    parser.add_argument("--holds", action="store_true", help="how long each thread's `Node.read` calls held the "
                        "sequencer, and each paced thread's longest CPU run without a pause (`CpuPacer`)")
    parser.add_argument("--gc-young", type=int, default=0, help="set the engine's young-generation GC threshold to this "
                        "when the load starts (an experiment; 0: serve's own)")
    parser.add_argument("--gc-census", action="store_true", help="at each of the first 40 collections of each process: the "
                        "thread that set it off and the collected generation's objects by type (slows those collections)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cpu-clock", action="store_true", help="--cprofile on the thread's CPU time (time.thread_time), "
                        "not the wall clock: waits for the GIL or a lock no longer count")
    parser.add_argument("--keep", default="", help="copy the profiles (profile.*.prof) into this directory, for "
                        "pstats (callers, callees) afterwards")
    args = parser.parse_args()
    print(f"seed={args.seed}", file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="rf-profile-"))
    (work / "hook").mkdir()
    (work / "hook" / "sitecustomize.py").write_text(HOOK)
    out = str(work / "profile")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(work / "hook"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    os.environ.update(RF_PROFILE_OUT=out, RF_PROFILE_MAIN="1" if args.cprofile else "0",
                      RF_PROFILE_CPU_CLOCK="1" if args.cpu_clock else "0", RF_PROFILE_WRAP=args.wrap,
                      RF_PROFILE_STALLS="1" if args.stalls else "0", RF_PROFILE_STALL_MS=str(args.stall_ms), RF_PROFILE_TIMED=args.timed,
                      RF_PROFILE_CPUTRACE="1" if args.cputrace else "0",
                      RF_PROFILE_SPANS=args.spans, RF_PROFILE_HOLDS="1" if args.holds else "0", RF_PROFILE_GC_YOUNG=str(args.gc_young or ""),
                      RF_PROFILE_GC_CENSUS="1" if args.gc_census else "0")
    data = work / "data"
    port = api.free_port()
    server = api.start_server(data, port, args.gateways)
    base = f"http://127.0.0.1:{port}"
    try:
        keys = [k for k in json.loads((data / "demo-keys.json").read_text()) if k.get("kind", "hmac") == "hmac"]
        api.run_http(base, args.kind, keys, 3, 1, 32, args.seed + 100)  # warm
        before = thread_cpu_s(server.pid)
        gateways = api._gateway_pids(server.pid)
        for pid in (server.pid, *gateways):
            os.kill(pid, signal.SIGUSR1)
        result = api.run_http_cpu(server, base, args.kind, keys, args.seconds, 1, 32, args.seed, rate_per_s=args.rate)
        for pid in (server.pid, *gateways):
            os.kill(pid, signal.SIGUSR2)
        after = thread_cpu_s(server.pid)
        deadline = time.time() + 30
        while not all(Path(f).exists() for f in (out + ".threads.json", *(f"{out}.gw{g}.threads.json" for g in gateways))) \
                and time.time() < deadline:
            time.sleep(0.1)
        names = json.loads(Path(out + ".threads.json").read_text())
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    n = max(1, result["ok"])
    print(json.dumps({"kind": args.kind, "gateways": args.gateways, "load_average_1m": round(os.getloadavg()[0], 2),
                      **{k: result.get(k) for k in ("throughput_per_s", "p50_us", "p99_us", "p999_us", "max_send_lag_us", "cpu_us_per_request",
                                                 "statuses")}}))
    rows = sorted((((after[t] - before.get(t, 0.0)) * 1e6 / n), names.get(t, t)) for t in after)
    print("engine process CPU per request, by thread:")
    for us, name in reversed(rows):
        if us >= 0.5:
            print(f"  {us:8.1f} us  {name}")
    gc_file = Path(out + ".gc.json")
    print_gc("engine process", gc_file, n)
    timed_file = Path(out + ".timed.json")
    if args.timed:
        print_timed("engine process", timed_file)
    for gw in gateways:  # each gateway process: its requests' wall clock, its GC pauses, its loop's stalls
        print_timed(f"gateway process {gw}", Path(f"{out}.gw{gw}.timed.json"))
        print_gc(f"gateway process {gw}", Path(f"{out}.gw{gw}.gc.json"), n)
        gw_stalls = Path(f"{out}.gw{gw}.stalls.json")
        if args.stalls and gw_stalls.exists():
            found = json.loads(gw_stalls.read_text())
            longest = sorted((round(s["ms"]) for s in found), reverse=True)[:10]
            print(f"gateway process {gw} event-loop stalls over {args.stall_ms} ms: {len(found)}, "
                  f"{sum(s['ms'] for s in found):.0f} ms in all; longest {longest}")
    span_file = Path(out + ".spans.json")
    if args.spans and span_file.exists():
        print("periodic work (per call: wall clock and the calling thread's CPU, ms):")
        for name, rows in sorted(json.loads(span_file.read_text()).items()):
            if not rows:
                continue
            cpu = sorted(r[2] / 1e6 for r in rows)
            wall = sorted(r[1] / 1e6 for r in rows)
            print(f"  {name:44s} {len(rows):6d} calls, CPU {sum(cpu):8.1f} in all, p50 {cpu[len(cpu) // 2]:6.2f}, "
                  f"max {cpu[-1]:6.1f}; wall max {wall[-1]:6.1f}; calls over 5 ms of CPU: {sum(1 for c in cpu if c > 5)}")
    holds_file = Path(out + ".holds.json")
    if args.holds and holds_file.exists():
        print_holds(json.loads(holds_file.read_text()))
    if args.spans and span_file.exists() and timed_file.exists():
        print_overlaps(json.loads(span_file.read_text()), json.loads(Path(out + ".starts.json").read_text()),
                       json.loads(timed_file.read_text()), json.loads(gc_file.read_text()).get("at", []) if gc_file.exists() else [])
    trace_file = Path(out + ".cputrace.json")
    if args.cputrace and trace_file.exists():
        print_cputrace(json.loads(trace_file.read_text()), json.loads(Path(out + ".starts.json").read_text()),
                       json.loads(timed_file.read_text()), names)
    stall_file = Path(out + ".stalls.json")
    if args.stalls and stall_file.exists():
        print_stalls(json.loads(stall_file.read_text()), args.seconds)
    for prof in sorted(work.glob("profile.*.prof"), key=lambda p: (".gw" in p.name, p.name)):  # the engine's first
        print(f"\n==== {prof.name}")
        try:
            stats = pstats.Stats(str(prof))
        except TypeError:  # nothing was profiled (a wrapped method never called)
            print("(no calls)")
            continue
        stats.sort_stats("tottime").print_stats(args.top)
        stats.sort_stats("cumulative").print_stats(args.top)
    if args.keep:
        Path(args.keep).mkdir(parents=True, exist_ok=True)
        for prof in work.glob("profile.*.prof"):
            shutil.copy(prof, Path(args.keep) / prof.name)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
