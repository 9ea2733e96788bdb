"""Ledger transfers through the full durable path: sequencer -> journal (group-commit fsync) -> apply.

Usage: python bench/ledger.py [--smoke] [--seed N]
       python bench/ledger.py --half-only [--mode classic|pipelined|both] [--segments growing]
                              [--capacity-seconds S] [--latency-seconds S] [--offered-per-s N] [--ioprio rt]
         (issue #18 item 6 only: p99 at half of the run's sustained single-request capacity, found by
          open-loop probes of S seconds each (`sustained_capacity`), then a 10 s run at half of it with
          its histogram and the tail charged to its causes (`TailProbe`); `--segments growing` for the
          journal as it was before pre-zeroed segments, an A/B in one tree; the collector runs with
          `serve`'s thresholds)
       python bench/ledger.py --replicate nats://127.0.0.1:4222 [--smoke] [--seed N]
         (durable-and-replicated over NATS JetStream against local-only in the same run:
          bench/replicate.py, results in bench/results/replicate.jsonl)

Measures, on real files with real fsync, in one run:
1. throughput: TigerBeetle-style requests of 8,190 transfers, two-account and many-account streams,
   submitted as fast as the node accepts them (closed loop, queue kept full);
2. acknowledgement latency at 80,000 transfers/s offered, by a paced open-loop generator (latency
   counted from each request's *scheduled* send time, so coordinated omission is not hidden),
   for requests of 1 transfer and of 10 transfers;
3. replay: the journal of (1) decoded and applied from genesis, in events (transfers) per second;
baseline: the same requests applied straight to an in-memory engine, no journal, no fsync.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import gc
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, percentile_us  # noqa: E402

from ringfence.engine.node import Node  # noqa: E402
from ringfence.ledger.commands import CreateTransfers, OpenAccount, RegisterAsset  # noqa: E402
from ringfence.ledger.model import Transfer  # noqa: E402
from ringfence import app  # noqa: E402
from ringfence.app import new_engine, replay_journal  # noqa: E402
from ringfence.api.serve import serving_gc_threshold  # noqa: E402

BATCH = 8190
SWITCH_INTERVAL_US = 100


def setup_commands(accounts: int) -> list:
    cmds = [RegisterAsset("USDT", 6, "crypto", "ethereum")]
    cmds += [OpenAccount(f"u{i}", "USDT") for i in range(accounts)]
    return cmds


def funding(first_account_id: int, world_id: int, accounts: int, next_id: int) -> tuple[list, int]:
    cmds, batch = [], []
    for i in range(accounts):
        batch.append(Transfer(next_id, world_id, first_account_id + i, 10**15))
        next_id += 1
        if len(batch) == BATCH:
            cmds.append(CreateTransfers(batch))
            batch = []
    if batch:
        cmds.append(CreateTransfers(batch))
    return cmds, next_id


def transfer_stream(rng: random.Random, ids: list[int], n: int, next_id: int, two_account: bool, per_request: int) -> tuple[list, int]:
    cmds, batch = [], []
    a, b = ids[0], ids[1]
    for _ in range(n):
        if two_account:
            d, c = (a, b) if next_id % 2 else (b, a)
        else:
            d, c = rng.sample(ids, 2)
        batch.append(Transfer(next_id, d, c, rng.randrange(1, 1_000_000)))
        next_id += 1
        if len(batch) == per_request:
            cmds.append(CreateTransfers(batch))
            batch = []
    if batch:
        cmds.append(CreateTransfers(batch))
    return cmds, next_id


#: the journal's segments (`--segments`): "prezeroed" as `ringfence serve` writes them (zero-filled
#: ahead of need), or "growing" (each record appended, as before session 12), for an A/B in one tree
SEGMENTS = "prezeroed"
SPARE_WAIT_S = 60.0  # float-ok: seconds


def new_node(path: Path, **options: object) -> Node:
    if path.exists():
        shutil.rmtree(path)
    options.setdefault("prezero_segments", SEGMENTS == "prezeroed")
    node = app.new_node(path, **options)
    node.open()
    return node


def prepared_node(path: Path, accounts: int, **options: object) -> tuple[Node, list[int], int]:
    node = new_node(path, **options)
    node.execute_many(setup_commands(accounts)[:1])
    for start in range(1, accounts + 1, 5_000):
        node.execute_many(setup_commands(accounts)[start : start + 5_000])
    writer = node.writer
    if writer is not None and writer.prezero:  # the funding moves into a zero-filled segment
        writer.wait_for_spare(SPARE_WAIT_S)
    led = node.engine.ledger
    ids = [led.get(f"u{i}", "USDT").id for i in range(accounts)]
    cmds, next_id = funding(ids[0], led.world("USDT").id, accounts, 1)
    node.execute_many(cmds)
    if writer is not None and writer.prezero:  # and its successor is ready before the measured run
        writer.wait_for_spare(SPARE_WAIT_S)
        assert writer.segments_prezeroed >= 1
    return node, ids, next_id


def closed_loop(node: Node, cmds: list) -> float:  # float-ok: seconds
    node.start()
    started = time.perf_counter()
    acks = [node.submit(c) for c in cmds]
    for ack in acks:
        ack.wait(120)
    return time.perf_counter() - started


def open_loop(node: Node, cmds: list, per_request: int, offered_per_s: int,
              lateness_ns: list[int] | None = None) -> tuple[list[int], list[str], float]:  # float-ok
    """Send request i at t0 + i * interval; latency = ack time - scheduled time. `lateness_ns`, when
    given, receives how late each request was sent (the generator's share of the latency)."""
    node.start()
    interval_ns = int(1e9 * per_request / offered_per_s)
    latencies: list[int] = []
    errors: list[str] = []
    done = threading.Event()
    remaining = [len(cmds)]
    lock = threading.Lock()

    def make_cb(scheduled_ns: int):  # type: ignore[no-untyped-def]
        def cb(ack) -> None:  # type: ignore[no-untyped-def]
            latencies.append(time.perf_counter_ns() - scheduled_ns)
            if ack.error is not None:
                errors.append(type(ack.error).__name__)
            with lock:
                remaining[0] -= 1
                if remaining[0] == 0:
                    done.set()

        return cb

    # The generator never spins: it sleeps (releasing the GIL to the sequencer thread) and on each
    # wake-up sends every request whose scheduled time has come. Latency is still counted from the
    # scheduled time, so sending late is charged to the system under test.
    t0 = time.perf_counter_ns() + 5_000_000
    i, n = 0, len(cmds)
    while i < n:
        now = time.perf_counter_ns()
        while i < n and t0 + i * interval_ns <= now:
            if lateness_ns is not None:
                lateness_ns.append(now - (t0 + i * interval_ns))
            node.submit(cmds[i]).add_done_callback(make_cb(t0 + i * interval_ns))
            i += 1
        time.sleep(0.0001)
    done.wait(300)
    seconds = (time.perf_counter_ns() - t0) / 1e9
    return latencies, errors, seconds


#: the collector's thresholds for the whole run (`--gc-threshold`; default: `ringfence serve`'s own,
#: `serving_gc_threshold()`, so that the serving path is measured as it runs)
GC_THRESHOLD: tuple[int, ...] = ()
CAPACITY_WINDOW = 4096  # single-request capacity: requests in flight at once (a gateway's many connections)
GOAL_US = 2_000  # issue #18 item 6: p99 at half capacity
HISTOGRAM_US = (250, 500, 1_000, 2_000, 3_000, 5_000, 10_000, 20_000, 50_000, 100_000)


def single_request_capacity(node: Node, cmds: list) -> float:  # float-ok: requests per second
    """Closed loop with a bounded window of requests in flight: how many 1-transfer requests per
    second this node acknowledges, durable, on this machine now."""
    node.start()
    window: collections.deque = collections.deque()
    started = time.perf_counter()
    for c in cmds:
        window.append(node.submit(c))
        if len(window) >= CAPACITY_WINDOW:
            window.popleft().wait(120)
    while window:
        window.popleft().wait(120)
    return len(cmds) / (time.perf_counter() - started)


class TailProbe:
    """Where each request's latency went, request by request: the generator's lateness, the wait in
    the engine queue, the sequencer's work before the write (prechecks, encoding), the write and
    fsync, then apply and the acknowledgement; and the garbage collector's pauses overlapping it.
    Wraps the node's `_commit` and the journal writer's `append` on the instance (a few
    microseconds per batch; the wrapped methods run unchanged). A request finds its batch by its
    sequence number, so the probe holds no reference to any request."""

    def __init__(self, node: Node) -> None:
        clock = time.perf_counter_ns
        writer = node.writer
        assert writer is not None
        # Per batch, in `array`s (untracked by the cyclic collector: a list per batch, as before,
        # was some 33,000 tracked objects per run for the collector the probe measures to scan):
        self.first_seqs = array("q")  # the first sequence number it could take
        self.b_start, self.b_w0, self.b_w1, self.b_end = array("q"), array("q"), array("q"), array("q")
        self.gc: list[tuple[int, int, int]] = []  # (started, ended, generation)
        #: per collection: (generation, pause ns, objects the collector counted in generation 0 when it began)
        self.gc_detail: list[tuple[int, int, int]] = []
        self._gc_started = 0
        self._gc_young = 0
        #: pipelined: per sync, (started, ended, last sequence number it covered)
        self.syncs: list[tuple[int, int, int]] = []
        self.pipelined = bool(getattr(node, "pipeline", False))
        commit = node._commit
        append_name = "write_record" if self.pipelined else "append"
        append = getattr(writer, append_name)

        b_start, b_w0, b_w1, b_end = self.b_start, self.b_w0, self.b_w1, self.b_end

        def commit_timed(items):  # type: ignore[no-untyped-def]
            self.first_seqs.append(writer.next_seq)
            b_start.append(clock())
            b_w0.append(0)
            b_w1.append(0)
            b_end.append(0)
            commit(items)
            b_end[-1] = clock()

        def append_timed(*args):  # type: ignore[no-untyped-def]
            b_w0[-1] = began = clock()
            try:
                return append(*args)
            finally:
                if not self.pipelined:
                    self._maybe_stall(began)
                b_w1[-1] = clock()

        node._commit = commit_timed  # type: ignore[method-assign]
        setattr(writer, append_name, append_timed)
        if self.pipelined:  # a sync: its records' fdatasync (acknowledgements follow it; the mark is off the path)
            sync_records = writer.sync_records

            def records_timed(mark):  # type: ignore[no-untyped-def]
                began = clock()
                try:
                    return sync_records(mark)
                finally:
                    self._maybe_stall(began)
                    self.syncs.append((began, clock(), mark.last_seq))

            writer.sync_records = records_timed  # type: ignore[method-assign]
        gc.callbacks.append(self._on_gc)
        self._first_sync = 0
        #: (start, end) of the stall injected by `--inject-stall-ms`, once made
        self.injected: tuple[int, int] | None = None

    def _maybe_stall(self, began: int) -> None:
        """`--inject-stall-ms S`: the first write + fsync (classic) or sync (pipelined) begun 3 s
        after the first one sleeps S ms more, inside the measured interval (sleeping lets the GIL
        go, as a slow fsync does): a stall of known size, to check the arithmetic of its victims."""
        if not INJECT_STALL_MS or self.injected is not None:
            return
        if not self._first_sync:
            self._first_sync = began
        elif began - self._first_sync >= 3_000_000_000:
            time.sleep(INJECT_STALL_MS / 1000)
            self.injected = (began, time.perf_counter_ns())

    def _on_gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_young = gc.get_count()[0]
            self._gc_started = time.perf_counter_ns()
        else:
            ended = time.perf_counter_ns()
            generation = info.get("generation", -1)
            self.gc.append((self._gc_started, ended, generation))
            self.gc_detail.append((generation, ended - self._gc_started, self._gc_young))

    @property
    def batches(self) -> list[tuple[int, int, int, int]]:
        """Per batch: (started, write started, write ended, ended), built for the analysis."""
        return list(zip(self.b_start, self.b_w0, self.b_w1, self.b_end))

    def _gc_by_generation(self) -> dict:
        out: dict = {}
        for generation, ns, young in self.gc_detail:
            g = out.setdefault(str(generation), {"collections": 0, "max_us": 0, "total_us": 0, "young_count_max": 0})
            g["collections"] += 1
            g["max_us"] = max(g["max_us"], ns // 1000)
            g["total_us"] += ns // 1000
            g["young_count_max"] = max(g["young_count_max"], young)
        return out

    def close(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def attribute(self, requests: list[tuple[int, int, int, int]], machine_stalls: list[tuple[int, int]] | None = None) -> dict:
        """`requests`: (scheduled, sent, acknowledged, seq) per request, perf_counter ns;
        `machine_stalls`: the windows in which another process's 1 ms sleep overslept by over 1 ms."""
        self.close()
        rows = []
        batches = self.batches
        gc_sorted = sorted(self.gc)
        gc_ends = [e for _, e, _ in gc_sorted]  # collections never overlap: sorted too
        sync_last = [last for _, _, last in self.syncs]
        for scheduled, sent, acked, seq in requests:
            b = bisect.bisect_right(self.first_seqs, seq) - 1
            if b < 0 or not batches[b][1]:
                continue
            started, w0, w1, _ = batches[b]
            overlap, k = 0, bisect.bisect_right(gc_ends, scheduled)  # the first pause ending after it was due
            while k < len(gc_sorted) and gc_sorted[k][0] < acked:  # (was a scan of every pause per request: minutes)
                overlap += max(0, min(gc_sorted[k][1], acked) - max(gc_sorted[k][0], scheduled))
                k += 1
            row = {"scheduled": scheduled, "latency": acked - scheduled, "send_lateness": sent - scheduled, "queue_wait": started - sent,
                   "before_write": w0 - started, "write_fsync": w1 - w0, "apply_and_ack": acked - w1, "gc_overlap": overlap,
                   "own_sync": w1 - w0}  # its own sync: classic, its batch's write and fdatasync; pipelined, below
            if self.pipelined:
                # the sync that acknowledged it: the first to cover its sequence number. `write_fsync`
                # is then the write, the wait for the sync in flight and its own sync; `sync_in_flight_wait`
                # the part spent waiting for a sync that began before its write.
                k = bisect.bisect_left(sync_last, seq)
                if k < len(self.syncs):
                    s0, s1, _ = self.syncs[k]
                    row["write_fsync"] = s1 - w0
                    row["apply_and_ack"] = max(0, acked - s1)
                    row["sync_in_flight_wait"] = max(0, s0 - w1)
                    row["own_sync"] = s1 - s0  # the sync that covered it
            rows.append(row)
        if not rows:
            return {}
        # Requests over the goal, by what overlapped them: their own write and sync took over half the
        # goal (the disk, and getting the GIL back after it), else a GC pause overlapped them by over
        # 1 ms, else neither (the CPU: the GIL, the sequencer's queue, or the process not scheduled;
        # see `scheduler_floor`).
        over_goal = {"requests": 0, "slow_own_write_sync": 0, "gc_pause": 0, "neither": 0}
        for r in rows:
            if r["latency"] > GOAL_US * 1000:
                over_goal["requests"] += 1
                cause = ("slow_own_write_sync" if r["own_sync"] > GOAL_US * 500 else
                         "gc_pause" if r["gc_overlap"] > 1_000_000 else "neither")
                over_goal[cause] += 1
        rows.sort(key=lambda r: r["latency"])
        tail = rows[int(len(rows) * 0.99):]
        by_overlap = self._by_overlap(rows, tail, machine_stalls or [])
        parts: tuple[str, ...] = ("send_lateness", "queue_wait", "before_write", "write_fsync", "apply_and_ack", "gc_overlap")

        def med(rs: list[dict], k: str) -> int:
            v = sorted(r.get(k, 0) for r in rs)
            return v[len(v) // 2] // 1000

        dominant: dict[str, int] = {}
        for r in tail:
            k = max(parts[:5], key=lambda p: r[p])
            dominant[k] = dominant.get(k, 0) + 1
        fsyncs = sorted(w1 - w0 for _, w0, w1, _ in batches if w0)
        if self.pipelined:  # the writes no longer wait for a sync: report the syncs themselves
            fsyncs = sorted(e - s for s, e, _ in self.syncs)
        pauses = sorted(e - s for s, e, _ in self.gc)
        shown = parts + (("sync_in_flight_wait",) if self.pipelined else ())
        return {
            "all_median_us": {k: med(rows, k) for k in shown},
            "tail_over_p99_median_us": {k: med(tail, k) for k in shown},
            "tail_over_p99_dominant_part": dominant,
            "tail_with_gc_pause_over_1ms": sum(1 for r in tail if r["gc_overlap"] > 1_000_000),
            "tail_requests": len(tail),
            "over_goal": over_goal,
            **by_overlap,
            "batches": len(batches),
            "syncs": len(self.syncs) if self.pipelined else len(batches),
            "write_fsync_us": {"p50": fsyncs[len(fsyncs) // 2] // 1000, "p99": fsyncs[int(len(fsyncs) * 0.99)] // 1000,
                               "max": fsyncs[-1] // 1000} if fsyncs else {},
            "gc": {"collections": len(pauses), "gen2": sum(1 for _, _, g in self.gc if g == 2),
                   "max_us": (pauses[-1] // 1000) if pauses else 0, "total_us": sum(pauses) // 1000,
                   "by_generation": self._gc_by_generation()},
        }


    def _by_overlap(self, rows: list[dict], tail: list[dict], machine_stalls: list[tuple[int, int]]) -> dict:
        """Each request over the goal, and each of the slowest 1%, charged to the stall that covered
        most of its life (scheduled to acknowledged), whoever's request it was: a write + fsync
        over half the goal (any batch's: a request queued behind a slow sync is its victim too), a
        collector pause, or the machine (another process could not run either); or none of them
        for over half the goal ("node_cpu": the sequencer's own work and the GIL). And the
        arithmetic of the longest write + fsync: how many requests it held past the goal, against
        the 1% of the run's requests the p99 may spend."""
        half_goal = GOAL_US * 500
        if self.pipelined:
            syncs = [(s0, s1) for s0, s1, _ in self.syncs]
        else:
            syncs = [(w0, w1) for _, w0, w1, _ in self.batches if w0]
        slow = sorted(iv for iv in syncs if iv[1] - iv[0] > half_goal)
        kinds = {"slow_write_fsync": slow, "gc_pause": sorted((a, b) for a, b, _ in self.gc),
                 "machine_stall": sorted(machine_stalls)}
        ends = {k: [e for _, e in v] for k, v in kinds.items()}

        def cause(r: dict) -> str:
            start, end = r["scheduled"], r["scheduled"] + r["latency"]
            covered = {k: overlap_ns(v, ends[k], start, end) for k, v in kinds.items()}
            best = max(covered, key=lambda k: covered[k])
            return best if covered[best] > half_goal else "node_cpu"

        def count(rs: list[dict]) -> dict[str, int]:
            out = dict.fromkeys(("slow_write_fsync", "gc_pause", "machine_stall", "node_cpu"), 0)
            for r in rs:
                out[cause(r)] += 1
            return out

        over = [r for r in rows if r["latency"] > GOAL_US * 1000]
        longest = max(syncs, key=lambda iv: iv[1] - iv[0]) if syncs else (0, 0)
        held = sum(1 for r in over if r["scheduled"] < longest[1] and r["scheduled"] + r["latency"] > longest[0])
        injected = {}
        if self.injected is not None:
            a, b = self.injected
            injected = {"injected_stall": {"ms": INJECT_STALL_MS, "interval_us": (b - a) // 1000,
                                           "requests_held_over_goal": sum(1 for r in over if r["scheduled"] < b
                                                                          and r["scheduled"] + r["latency"] > a)}}
        return {
            **injected,
            "over_goal_by_overlap": count(over),
            "tail_over_p99_by_overlap": count(tail),
            "slow_write_fsyncs": {"over_half_goal": len(slow), "over_goal": sum(1 for a, b in slow if b - a > GOAL_US * 1000),
                                  "over_10ms": sum(1 for a, b in slow if b - a > 10_000_000)},
            "longest_write_fsync": {"us": (longest[1] - longest[0]) // 1000, "requests_held_over_goal": held,
                                    "one_percent_of_requests": len(rows) // 100,
                                    "requests_over_goal": len(over)},
        }


def histogram(samples_ns: list[int]) -> dict[str, int]:
    counts = [0] * (len(HISTOGRAM_US) + 1)
    for ns in samples_ns:
        counts[next((i for i, edge in enumerate(HISTOGRAM_US) if ns <= edge * 1000), len(HISTOGRAM_US))] += 1
    return {**{f"<={e}us": c for e, c in zip(HISTOGRAM_US, counts)}, f">{HISTOGRAM_US[-1]}us": counts[-1]}


def bare_fdatasync(path: Path, n: int, size_bytes: int = 200, prezeroed: bool = False) -> dict:
    """The disk's own floor in this run: append `size_bytes` and fdatasync, `n` times; `prezeroed`:
    write them in turn over a file zero-filled and synced first (a pre-zeroed journal segment)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    samples = []
    try:
        if prezeroed:
            os.write(fd, bytes(n * size_bytes))
            os.fsync(fd)
        for i in range(n):
            os.pwrite(fd, b"x" * size_bytes, i * size_bytes)
            t = time.perf_counter_ns()
            os.fdatasync(fd)
            samples.append(time.perf_counter_ns() - t)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    how = "over zeros" if prezeroed else "append"
    return {"name": f"bare {how} of {size_bytes} bytes + fdatasync, same disk", "syncs": n,
            "p50_us": percentile_us(samples, 50), "p99_us": percentile_us(samples, 99), "max_us": percentile_us(samples, 100)}


_SCHEDULER_PROBE = """
import json, sys, time
end = time.perf_counter_ns() + int(float(sys.argv[1]) * 1e9)
late, stalls = [], []
while True:
    t = time.perf_counter_ns()
    if t >= end:
        break
    time.sleep(0.001)
    woke = time.perf_counter_ns()
    late.append(woke - t - 1_000_000)
    if late[-1] > 1_000_000:  # nothing could run in this process for that long: (from, to), monotonic ns
        stalls.append((t + 1_000_000, woke))
late.sort()
pick = lambda q: late[min(len(late) - 1, int(len(late) * q))] // 1000
print(json.dumps({"wakeups": len(late), "p50_us": pick(0.5), "p99_us": pick(0.99), "max_us": late[-1] // 1000,
                  "over_1ms": sum(1 for x in late if x > 1_000_000), "stalls": stalls}))
"""


def scheduler_floor(seconds: float) -> "subprocess.Popen[str]":  # float-ok: seconds
    """The machine's own scheduling noise in this run: a separate process sleeps 1 ms at a time for
    `seconds` and reports how late it woke (a wake-up later than the goal is CPU time nobody in this
    process could have had either). Start it beside a measurement; read it with `floor_result`."""
    return subprocess.Popen([sys.executable, "-c", _SCHEDULER_PROBE, str(seconds)], stdout=subprocess.PIPE, text=True)


def floor_result(proc: "subprocess.Popen[str]") -> dict:
    out, _ = proc.communicate(timeout=600)
    try:
        return {"name": "another process's 1 ms sleeps, how late they woke, during the open-loop run", **json.loads(out)}
    except ValueError:
        return {}


def overlap_ns(intervals: list[tuple[int, int]], ends: list[int], start: int, end: int) -> int:
    """How much of [start, end] the sorted, disjoint `intervals` cover (`ends`: their ends)."""
    total, k = 0, bisect.bisect_right(ends, start)
    while k < len(intervals) and intervals[k][0] < end:
        total += max(0, min(intervals[k][1], end) - max(intervals[k][0], start))
        k += 1
    return total


class Requests:
    """1-transfer requests, generated once and reused by every fresh node of a run (each prepared
    node has the same accounts and the same next transfer id), extended as a run needs more."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.cmds: list = []
        self.key: tuple[int, int, int] | None = None

    def take(self, ids: list[int], next_id: int, n: int) -> list:
        key = (ids[0], ids[-1], next_id)
        assert self.key in (None, key), "a prepared node differs from the first"
        self.key = key
        if len(self.cmds) < n:
            more, _ = transfer_stream(self.rng, ids, n - len(self.cmds), next_id + len(self.cmds), False, 1)
            self.cmds += more
        return self.cmds[:n]


def run_open_loop(root: Path, accounts: int, requests: Requests, offered: int, seconds: float,  # float-ok: seconds
                  pipeline: bool, probe: bool, give_up_s: float = 0.0) -> dict:  # float-ok: seconds
    """One open-loop run on a fresh node at `offered` requests/s for `seconds`. `probe`: with the
    `TailProbe` and the scheduler floor beside it (the measured run); without, a capacity probe,
    which stops sending once `give_up_s` seconds of requests are outstanding."""
    node, ids, next_id = prepared_node(root / "half-1", accounts, pipeline=pipeline)
    n = max(1, int(offered * seconds))
    cmds = requests.take(ids, next_id, n)
    # The pre-generated requests belong to the harness, not to the node (a gateway would decode
    # each as it arrives): move them, with everything built so far, out of the cyclic collector's
    # way, as a server does with its start-up heap. Every collection during the run then scans
    # only what the node allocated while serving (Acks, batches, events).
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    tail = TailProbe(node) if probe else None
    lateness = array("q")  # untracked by the collector, as the per-request figures below
    thresholds = gc.get_threshold()
    if GC_THRESHOLD:
        gc.set_threshold(*GC_THRESHOLD)
    floor = scheduler_floor(seconds) if probe else None
    try:
        samples, errors, took, reqs = open_loop_keyed(node, cmds, offered, lateness,
                                                      give_up_outstanding=int(offered * give_up_s),
                                                      when_done=tail.close if tail is not None else None)
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()
    writer = node.writer
    assert writer is not None
    out = {"node": node, "n": n, "samples": samples, "errors": errors, "seconds": took, "requests": reqs,
           "frozen": frozen, "thresholds": thresholds, "batches": node.batches_committed,
           "mark_syncs": getattr(writer, "mark_syncs", None),  # off the acknowledgement path (s8); None before
           "segments": {"prezeroed": writer.segments_prezeroed, "growing": writer.segments_plain}}
    node.close()
    if probe:
        assert floor is not None and tail is not None
        floor_res = floor_result(floor)
        stalls = [tuple(x) for x in floor_res.pop("stalls", [])]
        out["floor"] = floor_res
        out["tail"] = tail.attribute(reqs, stalls)  # type: ignore[arg-type]
    return out


#: the sustained capacity search: each probe's length (`--capacity-seconds`), the first rate offered
#: (`--capacity-start`), the most probes, and when to stop bisecting (high / low <= 1.1)
CAPACITY_SECONDS = 8.0  # float-ok: seconds
CAPACITY_START = 20_000
CAPACITY_PROBES = 8


def keeps_up(reqs: list[tuple[int, int, int, int]], n: int, errors: list[str], seconds: float) -> dict:  # float-ok
    """Did the node keep up with a probe? Every request sent and none refused, and a flat, short
    queue: after a warm-up (the first fifth, at most 1 s), the median latency of each half of the
    requests is under 10 ms and the second half's is within 2x (or 5 ms) of the first's. A rate
    0.2% over capacity grows the queue by some 7 ms between the halves' middles of an 8 s probe; a
    machine at load 20 moves a kept-up node's p50 by a few ms from one half to the other."""
    warm = int(min(1.0, seconds / 5) * 1e9)
    t0 = reqs[0][0] if reqs else 0
    body = [acked - sched for sched, _, acked, _ in reqs if sched >= t0 + warm]
    mid = len(body) // 2
    early, late = percentile_us(body[:mid], 50), percentile_us(body[mid:], 50)
    kept = (len(reqs) == n and not errors and mid > 0 and max(early, late) <= 10_000
            and late <= max(early * 2, early + 5_000))
    return {"kept_up": kept, "sent": len(reqs), "of": n, "refused": len(errors),
            "p50_us_first_half": early, "p50_us_second_half": late,
            "load_avg_1m": round(os.getloadavg()[0], 2)}  # float-ok: report


def sustained_capacity(root: Path, accounts: int, requests: Requests, seconds: float,  # float-ok: seconds
                       pipeline: bool, start: int) -> dict:
    """The highest single-request rate the node keeps up with for `seconds`, open loop through the
    same generator as the measured run (`keeps_up`): step up by 1.5x from `start` (down by half
    while it does not keep up), then bisect until high / low <= 1.1. Replaces a short closed-loop
    burst, which read 41,000-78,000/s (and up to 155,000/s) on quiet runs, often above what the node
    then sustained open loop (p50 200+ ms at "half")."""
    probes: list[dict] = []
    low, high, rate = 0, 0, start
    while len(probes) < CAPACITY_PROBES and rate >= 100:
        run = run_open_loop(root, accounts, requests, rate, seconds, pipeline, probe=False, give_up_s=0.5)
        verdict = keeps_up(run["requests"], run["n"], run["errors"], seconds)
        probes.append({"offered_per_s": rate, **verdict})
        print(f"capacity probe {'pipelined' if pipeline else 'classic'} {rate}/s: {verdict}", file=sys.stderr)
        if verdict["kept_up"]:
            low = rate
        else:
            high = rate
        if not high:
            rate = rate * 3 // 2
        elif not low:
            rate //= 2
        elif high * 10 <= low * 11:
            break
        else:
            rate = (low + high) // 2
    return {"per_s": low, "probes": probes, "probe_seconds": seconds,
            "rule": "highest offered rate with every request sent, none refused, each half's p50 (after a warm-up) "
                    "under 10 ms and the second half's within 2x (or +5 ms) of the first's"}


def latency_at_half_capacity(root: Path, rng: random.Random, accounts: int, capacity_requests: int,
                             latency_seconds: float, pipeline: bool = False,  # float-ok: seconds
                             offered_per_s: int | None = None, requests: Requests | None = None,
                             capacity_seconds: float = CAPACITY_SECONDS, capacity_start: int = CAPACITY_START) -> dict:  # float-ok
    """Item 6 of issue #18: find this run's sustained single-request capacity (`sustained_capacity`;
    the old closed-loop burst figure is kept beside it), then offer half of it open-loop for
    `latency_seconds` and report p99, the histogram, and where the tail came from (`TailProbe`).
    `pipeline`: the node pipelines its group commit (`Node(pipeline=True)`); `offered_per_s`
    skips the capacity runs and offers that rate (a like-for-like comparison with another mode)."""
    requests = requests or Requests(rng)
    burst = 0.0  # float-ok: requests per second
    sustained: dict = {}
    if offered_per_s is None:
        node, ids, next_id = prepared_node(root / "cap-1", accounts, pipeline=pipeline)
        cmds, _ = transfer_stream(rng, ids, capacity_requests, next_id, False, 1)
        burst = single_request_capacity(node, cmds)
        node.close()
        del cmds
        sustained = sustained_capacity(root, accounts, requests, capacity_seconds, pipeline, capacity_start)
        offered = max(1000, sustained["per_s"] // 2)
    else:
        offered = offered_per_s
    run = run_open_loop(root, accounts, requests, offered, latency_seconds, pipeline, probe=True)
    samples = run["samples"]
    return {
        "pipeline": pipeline,
        "journal_segments_opened": run["segments"],
        "mark_syncs_off_ack_path": run["mark_syncs"],
        "single_request_capacity_per_s": sustained.get("per_s", 0),
        "sustained_capacity": sustained,
        "closed_loop_burst_capacity_per_s": int(burst),
        "capacity_window": CAPACITY_WINDOW,
        "offered_per_s": offered,
        "seconds": latency_seconds,
        "achieved_per_s": int(run["n"] / run["seconds"]),
        "requests": len(samples),
        "refused": len(run["errors"]),
        "p50_us": percentile_us(samples, 50),
        "p99_us": percentile_us(samples, 99),
        "p999_us": percentile_us(samples, 99.9),
        "max_us": percentile_us(samples, 100),
        "journal_records": run["batches"],
        "gc_frozen_objects_before_run": run["frozen"],
        "gc_threshold": list(GC_THRESHOLD or run["thresholds"]),
        "histogram": histogram(samples),
        "tail": run["tail"],
        "scheduler_floor": run["floor"],
    }


#: `--ioprio rt`: every thread of this process (the node's sequencer, syncers, the generator) in the
#: real-time I/O class once the node has started, for an A/B of the disk's share of the tail (the
#: block scheduler here, mq-deadline, dispatches real-time requests before other processes' ones)
IOPRIO = "default"
#: `--inject-stall-ms`: one write + fsync made that much longer, 3 s into the measured run (TailProbe)
INJECT_STALL_MS = 0
_IOPRIO_SET = 251  # x86_64 syscall number
_IOPRIO_CLASS_RT = 1


def set_ioprio_rt() -> int:
    """Put every thread of this process in the real-time I/O class, level 0; returns how many."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    done = 0
    for tid in os.listdir("/proc/self/task"):
        if libc.syscall(_IOPRIO_SET, 1, int(tid), _IOPRIO_CLASS_RT << 13) == 0:  # IOPRIO_WHO_PROCESS: a thread
            done += 1
        else:
            raise OSError(ctypes.get_errno(), "ioprio_set")
    return done


def open_loop_keyed(node: Node, cmds: list, offered_per_s: int, lateness_ns: "array[int]",
                    give_up_outstanding: int = 0,
                    when_done: "Callable[[], None] | None" = None) -> tuple[list[int], list[str], float, list]:  # float-ok
    """`open_loop` for 1-transfer requests that also keeps, per request, (scheduled, sent,
    acknowledged, seq) for `TailProbe.attribute`. Per-request figures go into preallocated
    `array`s (not tracked by the garbage collector) and no Ack outlives its callback, so the
    harness adds as little as it can to the collector's work. `give_up_outstanding`: stop sending
    once that many requests are sent and not yet acknowledged (an overloaded capacity probe need
    not build seconds of queue); the unsent ones are left out of the results."""
    node.start()
    if IOPRIO == "rt":
        set_ioprio_rt()
    n = len(cmds)
    interval_ns = int(1e9 / offered_per_s)
    acked = array("q", bytes(8 * n))
    sent_at = array("q", bytes(8 * n))
    seqs = array("q", bytes(8 * n))
    errors: list[str] = []
    done = threading.Event()
    remaining = [n]
    lock = threading.Lock()

    # One callback for every request, which finds the request's slot by its Ack's id: a closure per
    # request (a function, its cell and its closure tuple) was three objects per request in flight
    # for the cyclic collector to count and scan, more than the node's own. `slots` maps ints to
    # ints, so it is never tracked; an entry is removed before its Ack can be freed (no id reuse).
    slots: dict[int, int] = {}

    def cb(ack) -> None:  # type: ignore[no-untyped-def]
        slot = slots.pop(id(ack), -1)
        if slot < 0:  # called twice for one Ack: the race in `Ack.add_done_callback` fixed in session 18
            errors.append("DuplicateCallback")
            return
        acked[slot] = time.perf_counter_ns()
        seqs[slot] = ack.seq
        if ack.error is not None:
            errors.append(type(ack.error).__name__)
        with lock:
            remaining[0] -= 1
            if remaining[0] == 0:
                done.set()

    t0 = time.perf_counter_ns() + 5_000_000
    i = 0
    while i < n:
        now = time.perf_counter_ns()
        while i < n and t0 + i * interval_ns <= now:
            lateness_ns.append(now - (t0 + i * interval_ns))
            sent_at[i] = now
            ack = node.submit(cmds[i])
            slots[id(ack)] = i
            ack.add_done_callback(cb)
            del ack
            i += 1
        if give_up_outstanding and i - (n - remaining[0]) > give_up_outstanding:
            with lock:  # the rest are never sent: count them done
                remaining[0] -= n - i
                if remaining[0] == 0:
                    done.set()
            break
        time.sleep(0.0001)
    done.wait(300)
    seconds = (time.perf_counter_ns() - t0) / 1e9
    # The run is over: stop the probe's record of the collector first. The results below, one
    # tracked tuple per request, set off a young collection every 20,000 requests (and a
    # generation-1 one, scanning up to 200,000 of them, every tenth), which `TailProbe` counted
    # as the run's GC until session 18 (most of "24 collections, longest 39 ms" at 46,406/s).
    if when_done is not None:
        when_done()
    latencies = [acked[k] - (t0 + k * interval_ns) for k in range(n) if acked[k]]
    requests = [(t0 + k * interval_ns, sent_at[k], acked[k], seqs[k]) for k in range(n) if acked[k]]
    return latencies, errors, seconds, requests


def half_capacity_section(root: Path, rng: random.Random, accounts: int, args: argparse.Namespace) -> dict:
    """Item 6: the classic group commit (each batch's write and fdatasync on the sequencer, then the
    next batch) and the pipelined one (`Node(pipeline=True)`), as `--mode` asks, each at half of
    its own sustained single-request capacity, the pipelined one also at the classic one's rate
    (like for like, when both run), and the disk's bare fdatasync before and after (its floor)."""
    seconds = args.latency_seconds or (0.5 if args.smoke else 10.0)
    capacity_requests = args.capacity_requests or (5_000 if args.smoke else 200_000)
    capacity_seconds = args.capacity_seconds or (0.5 if args.smoke else CAPACITY_SECONDS)
    capacity_start = args.capacity_start or (2_000 if args.smoke else CAPACITY_START)
    syncs = 100 if args.smoke else 1_000
    modes = {"classic": (("at_half_capacity", False),), "pipelined": (("at_half_capacity_pipelined", True),),
             "both": (("at_half_capacity", False), ("at_half_capacity_pipelined", True))}[args.mode]
    out: dict = {}
    requests = Requests(rng)
    floor_before = bare_fdatasync(root / "fsync-floor", syncs)
    floor_zeroed_before = bare_fdatasync(root / "fsync-floor", syncs, prezeroed=True)
    for key, pipeline in modes:
        load_before = [round(x, 2) for x in os.getloadavg()]  # float-ok: report
        half = latency_at_half_capacity(root, rng, accounts, capacity_requests, seconds, pipeline=pipeline,
                                        offered_per_s=args.offered_per_s, requests=requests,
                                        capacity_seconds=capacity_seconds, capacity_start=capacity_start)
        half["load_avg_1_5_15"] = {"before": load_before, "after": [round(x, 2) for x in os.getloadavg()]}  # float-ok: report
        out[key] = half
    if len(modes) == 2:
        classic_rate = out["at_half_capacity"]["offered_per_s"]
        same = latency_at_half_capacity(root, rng, accounts, capacity_requests, seconds, pipeline=True,
                                        offered_per_s=classic_rate, requests=requests)
        out["pipelined_at_classic_half_rate"] = {k: same[k] for k in ("offered_per_s", "achieved_per_s", "requests", "refused",
                                                                      "p50_us", "p99_us", "p999_us", "max_us", "histogram")}
    floor_after = bare_fdatasync(root / "fsync-floor", syncs)
    floor_zeroed_after = bare_fdatasync(root / "fsync-floor", syncs, prezeroed=True)
    first, last = out[modes[0][0]], out[modes[-1][0]]
    first["disk_floor"] = floor_before
    first["disk_floor_prezeroed"] = floor_zeroed_before
    last["disk_floor_after" if first is last else "disk_floor"] = floor_after
    last["disk_floor_prezeroed_after" if first is last else "disk_floor_prezeroed"] = floor_zeroed_after
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds (CI)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dir", type=Path, default=None, help="where to put the journals (default: a temp dir)")
    parser.add_argument("--replicate", metavar="NATS_URL", default=None,
                        help="run the replicated benchmark (bench/replicate.py) against this NATS server instead")
    parser.add_argument("--note", default="", help="a note kept in the result line")
    parser.add_argument("--half-only", action="store_true",
                        help="only item 6 of issue #18: p99 at half capacity, classic and pipelined group commit, "
                             "and the disk's bare fdatasync (skips the throughput, replay and 80,000/s runs)")
    parser.add_argument("--latency-seconds", type=float, default=None,
                        help="the measured open-loop run's length (default 10 s; smoke 0.5 s)")
    parser.add_argument("--gc-threshold", default="", help="G0,G1,G2: the cyclic collector's thresholds for the run "
                        "(default: what `ringfence serve` sets, ringfence.api.serve.serving_gc_threshold; recorded in the line)")
    parser.add_argument("--segments", choices=("prezeroed", "growing"), default="prezeroed",
                        help="journal segments zero-filled ahead of need, as `ringfence serve` writes them (default), or "
                             "growing with each record as before session 12: for benchmarking the difference (A/B)")
    parser.add_argument("--capacity-requests", type=int, default=None, help="requests in each capacity run (default 200,000)")
    parser.add_argument("--offered-per-s", type=int, default=None,
                        help="with --half-only: skip the capacity runs and offer this many requests/s in every run (an "
                             "A/B across runs at one rate, e.g. --offered-per-s 20000 with each --segments)")
    parser.add_argument("--ioprio", choices=("default", "rt"), default="default",
                        help="with --half-only: run the node's threads in the real-time I/O class (an A/B of the "
                             "disk's share of the tail; needs CAP_SYS_NICE or root)")
    parser.add_argument("--inject-stall-ms", type=int, default=0,
                        help="with --half-only: one write + fsync 3 s into the measured run sleeps this much longer "
                             "(a stall of known size: its victims against 2 x rate x (stall - goal))")
    parser.add_argument("--mode", choices=("classic", "pipelined", "both"), default="both",
                        help="with --half-only: which group commit to measure (default both, and the pipelined one "
                             "also at the classic one's rate)")
    parser.add_argument("--capacity-seconds", type=float, default=None,
                        help="length of each sustained-capacity probe (default 8 s; smoke 0.5 s)")
    parser.add_argument("--capacity-start", type=int, default=None,
                        help="the first rate the capacity search offers (default 20,000/s; smoke 2,000/s)")
    args = parser.parse_args()
    global GC_THRESHOLD, SEGMENTS, IOPRIO, INJECT_STALL_MS
    SEGMENTS = args.segments
    IOPRIO = args.ioprio
    INJECT_STALL_MS = args.inject_stall_ms
    gc_from = "--gc-threshold"
    if args.gc_threshold:
        GC_THRESHOLD = tuple(int(x) for x in args.gc_threshold.split(","))
    else:
        GC_THRESHOLD, gc_from = serving_gc_threshold(), "ringfence.api.serve.serving_gc_threshold()"
    gc.set_threshold(*GC_THRESHOLD)
    if args.replicate:
        from replicate import run

        run(args.replicate, seed=args.seed, smoke=args.smoke, note=args.note)
        return
    print(f"seed={args.seed}", file=sys.stderr)
    # The generator and the sequencer share one interpreter: a short GIL switch interval (the
    # default is 5 ms) lets the sequencer run as soon as requests arrive; it is recorded in the result.
    sys.setswitchinterval(SWITCH_INTERVAL_US / 1e6)
    rng = random.Random(args.seed)
    accounts = 200 if args.smoke else 10_000
    transfers = 20_000 if args.smoke else 2_000_000
    latency_seconds = 0.25 if args.smoke else 3.0
    offered = 80_000
    root = args.dir or Path(tempfile.mkdtemp(prefix="rf-bench-ledger-"))
    root.mkdir(parents=True, exist_ok=True)
    result: dict = {
        "seed": args.seed,
        "workload": {"accounts": accounts, "transfers": transfers, "request_size": BATCH},
        "gil_switch_interval_us": SWITCH_INTERVAL_US,
        "ringfence_src": str(Path(app.__file__).resolve().parent.parent),
        "gc_threshold": list(GC_THRESHOLD),
        "gc_threshold_from": gc_from,
        "journal_segments": SEGMENTS,
        "ioprio": IOPRIO,
    }
    if INJECT_STALL_MS:
        result["inject_stall_ms"] = INJECT_STALL_MS
    if args.note:
        result["note"] = args.note
    try:
        if args.half_only:
            result["latency"] = half_capacity_section(root, rng, accounts, args)
            for key in ("at_half_capacity", "at_half_capacity_pipelined"):
                if key in result["latency"]:
                    result[f"p99_us_{key}"] = result["latency"][key]["p99_us"]
            result["goal"] = {"p99_us_at_half_capacity": 2_000}
            emit("ledger", result, smoke=args.smoke)
            return
        # 1. closed-loop throughput, two streams
        throughput = {}
        for label, two in (("two_account", True), ("many_account", False)):
            node, ids, next_id = prepared_node(root / f"tp-{label}", accounts)
            cmds, _ = transfer_stream(rng, ids, transfers, next_id, two, BATCH)
            seconds = closed_loop(node, cmds)
            fsync_s = node.writer.fsync_seconds_total if node.writer else 0.0
            batches = node.batches_committed
            node.close()
            throughput[label] = {
                "throughput_per_s": int(transfers / seconds),
                "seconds": round(seconds, 3),
                "journal_records": batches,
                "fsync_seconds": round(fsync_s, 3),
            }
            if label == "many_account":
                root / f"tp-{label}"
                # baseline: the same commands applied straight to an engine (no journal, no fsync)
                engine = new_engine()
                setup = setup_commands(accounts)
                fund, _ = funding(1, 0, 0, 1)
                seq = 0
                for c in setup:
                    seq += 1
                    engine.apply(c, seq, seq)
                led = engine.ledger
                fund, _ = funding(led.get("u0", "USDT").id, led.world("USDT").id, accounts, 1)
                for c in fund:
                    seq += 1
                    engine.apply(c, seq, seq)
                started = time.perf_counter()
                for c in cmds:
                    seq += 1
                    engine.apply(c, seq, seq)
                raw_s = time.perf_counter() - started
                result["baseline"] = {"name": "same requests applied in memory, no journal, no fsync", "throughput_per_s": int(transfers / raw_s)}
        result["throughput"] = throughput
        result["throughput_per_s"] = throughput["many_account"]["throughput_per_s"]

        # 2. replay of the many-account journal from genesis
        engine, report, _ = replay_journal(root / "tp-many_account", use_snapshots=False)
        events = transfers + accounts  # transfers applied plus funding transfers
        result["replay"] = {"events": events, "seconds": round(report.seconds, 3), "events_per_s": int(events / report.seconds)}

        # 3. open-loop latency at 80,000 transfers/s offered
        latency = {}
        for per_request in (1, 10):
            node, ids, next_id = prepared_node(root / f"lat-{per_request}", accounts)
            n = int(offered * latency_seconds)
            cmds, _ = transfer_stream(rng, ids, n, next_id, False, per_request)
            samples, errors, seconds = open_loop(node, cmds, per_request, offered)
            batches = node.batches_committed
            node.close()
            latency[f"request_of_{per_request}"] = {
                "offered_per_s": offered,
                "achieved_per_s": int(n / seconds),
                "p50_us": percentile_us(samples, 50),
                "p99_us": percentile_us(samples, 99),
                "p999_us": percentile_us(samples, 99.9),
                "max_us": max(samples) // 1000,
                "requests": len(samples),
                # requests refused because the engine queue was full (the node could not keep up)
                "refused": len(errors),
                "journal_records": batches,
            }
        # 4. issue #18 item 6: p99 at half of this run's own single-request capacity, and its tail
        latency.update(half_capacity_section(root, rng, accounts, args))
        result["latency"] = latency
        result["p99_us"] = latency["request_of_1"]["p99_us"]
        for key in ("at_half_capacity", "at_half_capacity_pipelined"):
            if key in latency:
                result[f"p99_us_{key}"] = latency[key]["p99_us"]
        result["goal"] = {"throughput_per_s": 300_000, "p99_us_at_80k_offered": 2_000, "replay_events_per_s": 1_000_000,
                          "p99_us_at_half_capacity": 2_000}
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    emit("ledger", result, smoke=args.smoke)


if __name__ == "__main__":
    main()
