"""Matching benchmark: exchange-core's single-book mix and a multi-market mix, raw and durable.

    python bench/matching.py [--smoke] [--seed N] [--commands N] [--latency-seconds S]

What it measures (one JSON line on stdout, appended to bench/results/matching.jsonl):

* **Workload.** Seeded generators (`ringfence.trading.workload`) follow a live shadow engine so
  that cancels and moves name live orders. The exchange-core mix: one book, 9 % GTC limits, 3 % IOC,
  6 % cancels, 82 % moves, ~6 % of commands trading, 1,000 accounts, ~1,000 resting orders over
  hundreds of levels (3,000,000 commands in the full run). The multi-market mix: 4 books, 5,000
  accounts, 30 % GTC, 10 % IOC, 5 % market orders (by quantity and by quote amount), 20 % cancels,
  35 % moves.
* **Baseline: raw matching** — `Engine.apply` on one command at a time, no journal, on the hot
  path this process loaded (compiled with mypyc when built: `ringfence/native.py`), and the same
  raw run of the same seeded workload on **pure Python** in a child interpreter started with
  `RINGFENCE_PURE=1` (`raw_pure_python_per_s`; `--no-pure` skips it). The durable runs below use
  the hot path of this process, so "compiled vs pure-Python vs durable" are all in one line.
* **Full path through `Node`** (sequencer, journal with group-commit fsync, ledger holds,
  matching, events): (a) one command per order, submitted as fast as the node takes them;
  (b) orders coalesced by a gateway into `TradingBatch` commands of up to 512 actions.
  Throughput = orders / (first submit .. last acknowledgement); every order is durable before its
  acknowledgement. `--group-commit` picks the node for these runs: `pipelined` (the default:
  `Node(pipeline=True)`, `serve --pipeline`; the sequencer applies the next batch while the fsync
  runs, acknowledgements still wait for it) or `classic`; the exchange-core workload also runs
  (b) and the gateway latency on the other one (`exchange_core.other_group_commit`). Pipelined, at
  most `--max-batches-in-flight` (4) journal batches are unacknowledged at a time: the next batch
  gathers what arrives meanwhile instead of paying a write and a sync hand-off for every ten orders.
* **Latency at 80,000 orders/s offered**: a paced open-loop sender; each order has a scheduled
  send time `t0 + i / rate`, and its latency runs from that scheduled time (coordinated omission
  counted) to the end of the journal batch that acknowledged it. Measured for single commands and
  for gateway coalescing (the sender puts every order that is due into one `TradingBatch`).
  `attribution` splits it: sender lag (scheduled .. submitted), submitted .. applied, applied ..
  acknowledged, orders per journal record, the journal's fdatasync times, and the CPU time of the
  sequencer and the sender beside the time each spent runnable but waiting for a CPU (on a shared
  2-core machine at load 5-20 that wait, not the node, is most of the latency).
  `--latency-ab POLL_US/MODE[/IN_FLIGHT],...` runs only this measurement, interleaved, for A/B pairs.

The results of the durable runs are checked against the raw run: same ledger rows, same book.
The machine is shared (2 cores, other developers' jobs running), so absolute numbers are noisy;
the ratios to the baseline measured in the same run are what to compare.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from ringfence.engine.core import Engine  # noqa: E402
from ringfence.engine.node import Node  # noqa: E402
from ringfence.trading.commands import Trade, TradingBatch  # noqa: E402
from ringfence.trading.state import market_of  # noqa: E402
from ringfence.trading.workload import ExchangeCoreMix, fund_transfers, setup_commands  # noqa: E402
from ringfence.app import new_engine, new_node

GOAL = {"throughput_per_s": 400_000, "p99_us": 1000}
OFFERED_PER_S = 80_000
GATEWAY_BATCH = 512
#: The one-command-per-order durable run is capped (it is the slow path; the mix is stationary).
SINGLE_COMMANDS_CAP = 1_000_000
#: Throughput runs keep at most this many orders submitted but not yet acknowledged.
IN_FLIGHT_ORDERS = 65_536
POLL_S = [0.0]  # float-ok: seconds between sender polls (0 = spin), set from --sender-poll-us
PIPELINE = [False]  # --group-commit pipelined: Node(pipeline=True) for the durable runs
IN_FLIGHT_BATCHES = [4]  # pipelined: Node(max_batches_in_flight=...), --max-batches-in-flight
HOT_PATH = ["?"]  # "compiled" | "pure" | "mixed": what this process loaded (ringfence/native.py)


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------- workload


class Workload:
    def __init__(self, name: str, symbols: list[str], accounts: int, shares: tuple[float, float, float, float], seed: int) -> None:  # float-ok: probabilities
        self.name = name
        self.symbols = symbols
        self.accounts = accounts
        self.shares = shares
        self.seed = seed
        self.setup: list[Any] = []
        self.funding: list[Any] = []
        self.prefill: list[Any] = []
        self.commands: list[Any] = []
        self.trading_commands = 0

    def generate(self, n: int) -> None:
        """Drive a shadow engine with the generators; keep the commands (and the stats)."""
        engine = new_engine()
        seq = 0

        def apply(c: Any) -> list[Any]:
            nonlocal seq
            seq += 1
            return engine.apply(c, seq, seq * 1000, b"")

        self.setup = setup_commands(self.symbols, self.accounts)
        for c in self.setup:
            apply(c)
        bases = [s[:-4] for s in self.symbols]
        self.funding = fund_transfers(engine, bases + ["USDT"], self.accounts)
        for c in self.funding:
            apply(c)
        gens = []
        for k, symbol in enumerate(self.symbols):
            g = ExchangeCoreMix(symbol, seed=self.seed * 1000 + k, accounts=self.accounts, shares=self.shares)
            gens.append((g, market_of(engine, symbol)))
            for c in g.prefill():
                self.prefill.append(c)
                g.observe(apply(c))
        rng_pick = ExchangeCoreMix("X", seed=self.seed).rng
        trading = 0
        out = self.commands
        for _i in range(n):
            g, m = gens[rng_pick.randrange(len(gens))] if len(gens) > 1 else gens[0]
            g.touch(m)
            c = g.next()
            ev = apply(c)
            g.observe(ev)
            out.append(c)
            for e in ev:
                if type(e) is Trade:
                    trading += 1
                    break
        self.trading_commands = trading
        self.resting = sum(len(m.orders) for _, m in gens)
        self.levels = sum(len(m.bid_prices) + len(m.ask_prices) for _, m in gens)
        self.final_rows = sorted(a.as_row() for a in engine.ledger.iter_accounts())
        self.final_book = [[(o.id, o.price, o.leaves) for o in m.resting()] for _, m in gens]

    def describe(self) -> dict[str, Any]:
        n = len(self.commands)
        kinds: dict[str, int] = {}
        for c in self.commands:
            k = type(c).__name__ if type(c).__name__ != "PlaceOrder" else f"{c.order_type}/{c.tif}"
            kinds[k] = kinds.get(k, 0) + 1
        return {
            "commands": n,
            "markets": len(self.symbols),
            "accounts": self.accounts,
            "mix_pct": {k: round(100 * v / n, 2) for k, v in sorted(kinds.items())},  # float-ok: report
            "trading_commands_pct": round(100 * self.trading_commands / n, 2),  # float-ok: report
            "resting_orders_at_end": self.resting,
            "price_levels_at_end": self.levels,
        }


# --------------------------------------------------------------------------------------- runs


def raw_run(w: Workload) -> tuple[float, float, Engine]:  # float-ok: seconds
    """Returns (wall seconds, CPU seconds, engine)."""
    engine = new_engine()
    seq = 0
    for c in w.setup + w.funding + w.prefill:
        seq += 1
        engine.apply(c, seq, seq * 1000, b"")
    apply = engine.apply
    cpu = time.process_time()
    started = time.perf_counter()
    for c in w.commands:
        seq += 1
        apply(c, seq, seq * 1000, b"")
    return time.perf_counter() - started, time.process_time() - cpu, engine


def open_node(w: Workload, data: Path, **options: Any) -> Node:
    if data.exists():
        shutil.rmtree(data)
    node = new_node(data, max_wait_us=0, queue_limit=1_000_000, pipeline=PIPELINE[0],
                    max_batches_in_flight=IN_FLIGHT_BATCHES[0] if PIPELINE[0] else 0, **options)
    node.open()
    # Prechecks see the state before their batch: assets and markets first (one per batch), then
    # all account openings in one batch.
    opens = [c for c in w.setup if type(c).__name__ == "OpenAccount"]
    for c in w.setup:
        if type(c).__name__ != "OpenAccount":
            node.execute_many([c])
    node.execute_many(opens)
    node.execute_many(w.funding)
    node.execute_many(w.prefill, raise_rejected=False)
    return node


def check_same(w: Workload, engine: Engine, label: str) -> None:
    rows = sorted(a.as_row() for a in engine.ledger.iter_accounts())
    book = [[(o.id, o.price, o.leaves) for o in market_of(engine, s).resting()] for s in w.symbols]
    if rows != w.final_rows or book != w.final_book:
        raise SystemExit(f"{label}: the durable run ended with a different ledger or book than the raw run")


def node_throughput(w: Workload, data: Path, batch: int, limit: int | None = None) -> tuple[float, float, int]:  # float-ok: seconds
    """Submit everything (or the first `limit` commands) as fast as the node takes it; time until
    the last acknowledgement."""
    node = open_node(w, data)
    setup_batches = node.batches_committed
    node.start()
    cmds = w.commands if limit is None else w.commands[:limit]
    cpu = time.process_time()
    started = time.perf_counter()
    # Closed loop with a bounded window of unacknowledged orders, like a gateway with many
    # connections: enough in flight to fill every group commit, never millions queued at once.
    window: deque[Any] = deque()
    units = [c for c in cmds] if batch <= 1 else [TradingBatch(cmds[i : i + batch]) for i in range(0, len(cmds), batch)]
    max_in_flight = max(1, IN_FLIGHT_ORDERS // max(1, batch))
    for unit in units:
        window.append(node.submit(unit))
        if len(window) >= max_in_flight:
            window.popleft().wait(600)
    while window:
        window.popleft().wait(600)
    seconds = time.perf_counter() - started
    cpu_s = time.process_time() - cpu  # both threads: sender and sequencer
    batches = node.batches_committed - setup_batches
    node.close()
    if limit is None:
        check_same(w, node.engine, f"node batch={batch}")  # type: ignore[arg-type]
    return seconds, cpu_s, batches


def _schedstat(tid: int | None) -> tuple[int, int]:
    """(ns on a CPU, ns runnable but waiting for one) of a thread so far (Linux; zeros elsewhere)."""
    try:
        with open(f"/proc/self/task/{tid}/schedstat") as fh:
            on_cpu, waiting, _ = fh.read().split()
        return int(on_cpu), int(waiting)
    except (OSError, ValueError):
        return 0, 0


def _pcts(values: list[int], unit: str = "_us") -> dict[str, int]:
    """p50/p99/max of the values (sorted in place); keys end in `unit`."""
    if not values:
        return {f"p50{unit}": 0, f"p99{unit}": 0, f"max{unit}": 0}
    values.sort()
    return {f"p50{unit}": values[len(values) // 2], f"p99{unit}": values[min(len(values) - 1, int(0.99 * len(values)))],
            f"max{unit}": values[-1]}


def paced_latency(w: Workload, data: Path, seconds: float, coalesce: bool) -> dict[str, Any]:  # float-ok: seconds
    """Open-loop sender at OFFERED_PER_S; latency from each order's scheduled send time.

    Attribution (per order, from the same run): `sender_lag` = scheduled send time .. submitted
    (the sender could not keep up: CPU, GIL); `submit_to_applied` = submitted .. its batch applied
    (inbox wait, precheck, journal write and fsync in the classic group commit, apply);
    `applied_to_ack` (pipelined: waiting for the fsync). Per journal record: the fsync times
    (`journal_sync`), the orders per record; per thread: CPU time and time spent runnable but
    waiting for a CPU (the machine is shared: /proc/self/task/TID/schedstat)."""
    syncs: list[tuple[int, int]] = []  # (start, end) perf_counter_ns of every journal fdatasync

    def timed_sync(fd: int) -> None:
        t = time.perf_counter_ns()
        os.fdatasync(fd)
        syncs.append((t, time.perf_counter_ns()))

    node = open_node(w, data, journal_sync=timed_sync)
    n = min(len(w.commands), int(OFFERED_PER_S * seconds))
    cmds = w.commands[:n]
    done_ns: list[tuple[int, int]] = []  # (perf_counter_ns at batch end, commands acknowledged so far)
    applied_at: dict[int, int] = {}  # first_seq -> perf_counter_ns once applied (apply hook)
    applied_ns: list[int] = []  # per acknowledged batch, in order
    batch_orders: list[int] = []
    counted = [0]
    # Orders inside a TradingBatch are counted individually.
    sizes: list[int] = []
    submitted: list[tuple[int, int]] = []  # (perf_counter_ns after the submit, orders submitted so far)

    def listener(first_seq: int, ts_ns: int, commands: list[Any], outputs: list[Any]) -> None:
        t = time.perf_counter_ns()
        k = 0
        for c in commands:
            k += len(c.actions) if type(c) is TradingBatch else 1
        counted[0] += k
        done_ns.append((t, counted[0]))
        batch_orders.append(k)
        applied_ns.append(applied_at.pop(first_seq, t))

    def hook(engine: Any, first_seq: int, ts_ns: int) -> None:
        applied_at[first_seq] = time.perf_counter_ns()

    node.start()
    node.listeners.append(listener)
    node.apply_hooks.append(hook)
    syncs.clear()
    interval_ns = 1_000_000_000 / OFFERED_PER_S  # float-ok: pacing
    submit = node.submit
    poll = POLL_S[0]
    i = 0
    sequencer_tid = next((t.native_id for t in threading.enumerate() if t.name == "ringfence-sequencer"), None)
    sched0 = (_schedstat(sequencer_tid), _schedstat(threading.get_native_id()))
    cpu0 = time.process_time()
    t0 = time.perf_counter_ns() + 1_000_000
    while i < n:
        now = time.perf_counter_ns()
        due = min(n, int((now - t0) / interval_ns) + 1)
        if due <= i:
            # Sleep --sender-poll-us between polls (a gateway's coalescing tick), or spin with
            # sleep(0) (0). Either way the wait counts in the latency (measured from the scheduled time).
            time.sleep(poll)
            continue
        if coalesce:
            while i < due:
                j = min(due, i + GATEWAY_BATCH)
                submit(TradingBatch(cmds[i:j]))
                sizes.append(j - i)
                i = j
                submitted.append((time.perf_counter_ns(), i))
        else:
            while i < due:
                submit(cmds[i])
                i += 1
                submitted.append((time.perf_counter_ns(), i))
    deadline = time.time() + 120
    while counted[0] < n and time.time() < deadline:
        time.sleep(0.001)
    cpu_s = time.process_time() - cpu0
    sched1 = (_schedstat(sequencer_tid), _schedstat(threading.get_native_id()))
    node.close()
    if counted[0] < n:
        raise SystemExit("latency run: not every order was acknowledged")
    # latency of order i = end of the batch that acknowledged it - its scheduled send time
    lat_us: list[int] = []
    lag_us: list[int] = []
    to_applied_us: list[int] = []
    to_ack_us: list[int] = []
    b = s = 0
    for idx in range(n):
        while done_ns[b][1] <= idx:
            b += 1
        while submitted[s][1] <= idx:
            s += 1
        scheduled = t0 + idx * interval_ns
        lat_us.append(int((done_ns[b][0] - scheduled) / 1000))
        lag_us.append(int((submitted[s][0] - scheduled) / 1000))
        to_applied_us.append((applied_ns[b] - submitted[s][0]) // 1000)
        to_ack_us.append((done_ns[b][0] - applied_ns[b]) // 1000)
    lat_us.sort()

    def pct(p: float) -> int:  # float-ok: percentile rank
        return lat_us[min(n - 1, int(p * n))]

    elapsed_s = (done_ns[-1][0] - t0) / 1e9  # float-ok: report
    wall_ns = max(1, done_ns[-1][0] - t0)
    return {
        "orders": n,
        "offered_per_s": OFFERED_PER_S,
        "achieved_per_s": int(n / elapsed_s),
        "p50_us": pct(0.50),
        "p99_us": pct(0.99),
        "p999_us": pct(0.999),
        "max_us": lat_us[-1],
        "journal_batches": len(done_ns),
        "mean_orders_per_gateway_batch": round(sum(sizes) / len(sizes), 1) if sizes else None,  # float-ok: report
        "sender_poll_us": int(POLL_S[0] * 1e6),
        "group_commit": "pipelined" if node.pipeline else "classic",
        "max_batches_in_flight": node.max_batches_in_flight,
        "attribution": {
            "sender_lag": _pcts(lag_us),
            "submit_to_applied": _pcts(to_applied_us),
            "applied_to_ack": _pcts(to_ack_us),
            "orders_per_journal_batch": _pcts(batch_orders, ""),
            # every fdatasync of the journal: records, durable marks, rotations
            "journal_syncs": {**_pcts([(e - b0) // 1000 for b0, e in syncs]), "count": len(syncs),
                              "busy_pct": round(100 * sum(e - b0 for b0, e in syncs) / wall_ns, 1)},  # float-ok: report
            "process_cpu_pct": round(100 * cpu_s * 1e9 / wall_ns, 1),  # float-ok: report
            "sequencer_on_cpu_pct": round(100 * (sched1[0][0] - sched0[0][0]) / wall_ns, 1),  # float-ok: report
            "sequencer_waiting_for_cpu_pct": round(100 * (sched1[0][1] - sched0[0][1]) / wall_ns, 1),  # float-ok: report
            "sender_on_cpu_pct": round(100 * (sched1[1][0] - sched0[1][0]) / wall_ns, 1),  # float-ok: report
            "sender_waiting_for_cpu_pct": round(100 * (sched1[1][1] - sched0[1][1]) / wall_ns, 1),  # float-ok: report
        },
    }


WORKLOADS = {
    "core": ("exchange-core mix", ["BTCUSDT"], 1000, (0.09, 0.03, 0.06, 0.0)),
    "multi": ("multi-market mix", ["BTCUSDT", "ETHUSDT", "SOLUSDT", "ADAUSDT"], 5000, (0.30, 0.10, 0.20, 0.05)),
}


def raw_only(kind: str, n: int, seed: int) -> dict[str, Any]:
    """Child side of the pure-Python baseline: generate the same workload, time the raw run."""
    from ringfence import native

    name, symbols, accounts, shares = WORKLOADS[kind]
    w = Workload(name, symbols, accounts, shares, seed)
    w.generate(n)
    gc.collect()
    gc.freeze()
    raw_s, raw_cpu, engine = raw_run(w)
    return {"implementation": native.status()["implementation"], "raw_per_s": int(n / raw_s),
            "raw_per_cpu_s": int(n / raw_cpu), "state_hash": engine.state_hash()}


def raw_pure_python(kind: str, n: int, seed: int) -> dict[str, Any]:
    """The raw run of the same workload in a fresh interpreter on pure Python (RINGFENCE_PURE=1)."""
    env = {**os.environ, "RINGFENCE_PURE": "1"}
    proc = subprocess.run([sys.executable, __file__, "--raw-only", kind, "--commands", str(n), "--seed", str(seed)],
                          env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"pure-Python raw run failed:\n{proc.stderr[-3000:]}")
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    if out["implementation"] != "pure":
        raise SystemExit(f"the pure-Python raw run loaded {out['implementation']}")
    return out


def run_workload(w: Workload, n: int, latency_s: float, tmp: Path, smoke: bool, kind: str = "", pure: bool = True) -> dict[str, Any]:  # float-ok: seconds
    log(f"{w.name}: generating {n:,} commands")
    t = time.perf_counter()
    w.generate(n)
    log(f"{w.name}: generated in {time.perf_counter() - t:.1f}s: {w.describe()}")
    # The generated workload (millions of command objects) belongs to the harness, not the engine:
    # move it out of the cyclic GC's way so collections do not rescan it over and over.
    gc.collect()
    gc.freeze()
    raw_s, raw_cpu, raw_engine = raw_run(w)
    log(f"{w.name}: raw matching ({HOT_PATH[0]}) {n / raw_s:,.0f} commands/s ({n / raw_cpu:,.0f} per CPU-second)")
    pure_raw: dict[str, Any] | None = None
    if pure and kind:
        pure_raw = raw_pure_python(kind, n, w.seed)
        if pure_raw["state_hash"] != raw_engine.state_hash():
            raise SystemExit(f"{w.name}: pure Python ended in another state than {HOT_PATH[0]}")
        log(f"{w.name}: raw matching (pure Python) {pure_raw['raw_per_s']:,} commands/s ({pure_raw['raw_per_cpu_s']:,} per CPU-second); same state hash")
    del raw_engine
    batched_s, batched_cpu, batched_batches = node_throughput(w, tmp / "batched", GATEWAY_BATCH)
    log(f"{w.name}: node, TradingBatch x{GATEWAY_BATCH}: {n / batched_s:,.0f}/s ({n / batched_cpu:,.0f} per CPU-second) in {batched_batches} journal batches")
    n_single = min(n, SINGLE_COMMANDS_CAP)
    single_s, single_cpu, single_batches = node_throughput(w, tmp / "single", 1, None if n_single == n else n_single)
    log(f"{w.name}: node, one command per order ({n_single:,}): {n_single / single_s:,.0f}/s ({n_single / single_cpu:,.0f} per CPU-second) in {single_batches} journal batches")
    lat_single = paced_latency(w, tmp / "lat1", latency_s, coalesce=False)
    log(f"{w.name}: latency, single commands: {lat_single}")
    lat_gw = paced_latency(w, tmp / "lat2", latency_s, coalesce=True)
    log(f"{w.name}: latency, gateway coalescing: {lat_gw}")
    other: dict[str, Any] | None = None
    if kind == "core":  # the other group commit on the same workload, for the A/B in one line
        mode = PIPELINE[0]
        PIPELINE[0] = not mode
        try:
            o_s, o_cpu, o_batches = node_throughput(w, tmp / "batched-other", GATEWAY_BATCH)
            o_lat = paced_latency(w, tmp / "lat-other", latency_s, coalesce=True)
        finally:
            PIPELINE[0] = mode
        other = {"group_commit": o_lat["group_commit"], "durable_batched_per_s": int(n / o_s),
                 "durable_batched_per_cpu_s": int(n / o_cpu), "durable_batched_journal_batches": o_batches,
                 "latency_gateway_coalescing": o_lat}
        log(f"{w.name}: {o_lat['group_commit']} group commit: node, TradingBatch x{GATEWAY_BATCH}: {n / o_s:,.0f}/s; latency {o_lat}")
    return {
        "workload": w.describe(),
        "hot_path": HOT_PATH[0],
        "raw_matching_per_s": int(n / raw_s),
        "raw_matching_per_cpu_s": int(n / raw_cpu),
        "raw_pure_python_per_s": pure_raw["raw_per_s"] if pure_raw else None,
        "raw_pure_python_per_cpu_s": pure_raw["raw_per_cpu_s"] if pure_raw else None,
        "durable_single_commands_per_s": int(n_single / single_s),
        "durable_single_commands_per_cpu_s": int(n_single / single_cpu),
        "durable_single_commands_measured_on": n_single,
        "durable_single_journal_batches": single_batches,
        "durable_batched_per_s": int(n / batched_s),
        "durable_batched_per_cpu_s": int(n / batched_cpu),
        "durable_batched_journal_batches": batched_batches,
        "latency_single_commands": lat_single,
        "latency_gateway_coalescing": lat_gw,
        "group_commit": lat_gw["group_commit"],
        "other_group_commit": other,
    }


def price_index_alternatives(seed: int, ops: int) -> dict[str, Any]:
    """Measure the book's price index against a heap with lazy deletion on the same operations.

    The operation stream mimics the exchange-core mix on one side of a book: ~700 live levels
    near the touch; each step either opens a level (a move to an empty price), closes one (its last
    order left), or reads the best price (every taker and every post-only check does).
    """
    import heapq
    import random
    from bisect import bisect_left, insort

    rng = random.Random(seed)
    live: set[int] = set()
    stream: list[tuple[int, int]] = []  # (0 add | 1 remove | 2 best, price)
    center = 100_000
    for _ in range(ops):
        r = rng.random()
        if r < 0.4 or len(live) < 600:
            p = center - int(rng.expovariate(1 / 250))
            if p not in live:
                live.add(p)
                stream.append((0, p))
                continue
        if r < 0.8 and live:
            p = rng.choice(tuple(live)) if len(stream) % 64 == 0 else max(live) - rng.randrange(3)
            if p in live:
                live.remove(p)
                stream.append((1, p))
                continue
        stream.append((2, 0))

    def sorted_list() -> int:
        prices: list[int] = []
        acc = 0
        for op, p in stream:
            if op == 0:
                insort(prices, p)
            elif op == 1:
                if prices[-1] == p:
                    prices.pop()
                else:
                    del prices[bisect_left(prices, p)]
            elif prices:
                acc += prices[-1]
        return acc

    def lazy_heap() -> int:
        heap: list[int] = []  # max-heap by negation
        present: set[int] = set()
        acc = 0
        for op, p in stream:
            if op == 0:
                present.add(p)
                heapq.heappush(heap, -p)
            elif op == 1:
                present.discard(p)
            else:
                while heap and -heap[0] not in present:
                    heapq.heappop(heap)
                if heap:
                    acc += -heap[0]
        return acc

    out: dict[str, Any] = {"operations": len(stream)}
    results = []
    for name, fn in (("sorted_list_bisect", sorted_list), ("heap_lazy_deletion", lazy_heap)):
        best = None
        for _ in range(3):
            t = time.perf_counter()
            results.append(fn())
            dt = time.perf_counter() - t
            best = dt if best is None or dt < best else best
        out[f"{name}_ops_per_s"] = int(len(stream) / best)  # type: ignore[operator]
    if len(set(results)) != 1:
        raise SystemExit("price index alternatives disagree on the best prices")
    return out


def latency_ab(variants: str, rounds: int, n: int, latency_s: float, seed: int) -> None:  # float-ok: seconds
    """Interleaved gateway-latency runs of one generated workload under several sender/commit settings."""
    w = Workload(*WORKLOADS["core"], seed)
    w.generate(n)
    gc.collect()
    gc.freeze()
    with tempfile.TemporaryDirectory(prefix="rf-bench-matching-ab-", dir=os.environ.get("RINGFENCE_BENCH_DIR")) as tmp_s:
        for r in range(rounds):
            for v in variants.split(","):
                poll_us, mode, *in_flight = v.split("/")
                IN_FLIGHT_BATCHES[0] = int(in_flight[0]) if in_flight else 0
                POLL_S[0] = int(poll_us) / 1e6  # float-ok: seconds
                PIPELINE[0] = mode == "pipelined"
                out = paced_latency(w, Path(tmp_s) / "ab", latency_s, coalesce=True)
                print(json.dumps({"round": r, "variant": v, "load_1": round(os.getloadavg()[0], 2), **out}), flush=True)  # float-ok: report


def machine() -> str:
    return f"{os.cpu_count()} cores, Python {platform.python_version()}, {platform.machine()}, shared/noisy"


def git_rev() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description="Matching benchmark (see the module docstring).\n\nExample: python bench/matching.py --smoke")
    ap.add_argument("--smoke", action="store_true", help="tiny run for CI (a few seconds)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--commands", type=int, default=None, help="commands per workload (default 3,000,000; smoke 20,000)")
    ap.add_argument("--latency-seconds", type=float, default=None, help="length of each paced latency run")  # float-ok
    ap.add_argument("--no-record", action="store_true", help="do not append to bench/results/matching.jsonl")
    ap.add_argument("--note", default="", help="a note kept in the line (who ran it, the machine's load)")
    ap.add_argument("--switch-interval-us", type=int, default=200, help="GIL switch interval (CPython default 5000)")
    ap.add_argument("--sender-poll-us", type=int, default=0, help="paced sender: sleep between polls (0 = spin with sleep(0))")
    ap.add_argument("--group-commit", choices=("classic", "pipelined"), default="pipelined",
                    help="the headline durable runs on Node(pipeline=True) or (classic) Node(pipeline=False) (docs/journal.md); "
                         "the exchange-core workload also runs the other one (exchange_core.other_group_commit)")
    ap.add_argument("--latency-ab", default="", metavar="POLL_US/MODE[/IN_FLIGHT],...",
                    help="A/B only: gateway latency runs of the exchange-core workload, one per variant (e.g. "
                         "'0/classic,100/classic,0/pipelined/2': sender poll, group commit, max batches in flight), "
                         "interleaved --ab-rounds times; one JSON line each; nothing recorded")
    ap.add_argument("--ab-rounds", type=int, default=2)
    ap.add_argument("--max-batches-in-flight", type=int, default=4,
                    help="pipelined: start a journal batch only while fewer are unacknowledged (0: no limit; "
                         "Node(max_batches_in_flight=...))")
    ap.add_argument("--no-pure", action="store_true", help="skip the pure-Python raw baseline (a child interpreter)")
    ap.add_argument("--raw-only", choices=sorted(WORKLOADS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.raw_only:
        print(json.dumps(raw_only(args.raw_only, args.commands, args.seed)))
        return
    from ringfence import native

    HOT_PATH[0] = native.status()["implementation"]
    log(f"matching {native.describe()}")
    POLL_S[0] = args.sender_poll_us / 1e6  # float-ok: seconds
    PIPELINE[0] = args.group_commit == "pipelined"
    IN_FLIGHT_BATCHES[0] = args.max_batches_in_flight
    # The sender (gateway) and the sequencer share one GIL; CPython's default 5 ms switch interval
    # would put up to 5 ms of waiting into every hand-over. A server process sets this the same way.
    sys.setswitchinterval(args.switch_interval_us / 1e6)  # float-ok: seconds
    n = args.commands or (20_000 if args.smoke else 3_000_000)
    latency_s = args.latency_seconds or (0.25 if args.smoke else 10.0)
    log(f"seed={args.seed} commands={n:,} smoke={args.smoke}")
    if args.latency_ab:
        latency_ab(args.latency_ab, args.ab_rounds, n, latency_s, args.seed)
        return
    load_before = [round(x, 2) for x in os.getloadavg()]  # float-ok: report
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rf-bench-matching-", dir=os.environ.get("RINGFENCE_BENCH_DIR")) as tmp_s:
        tmp = Path(tmp_s)
        core = run_workload(Workload(*WORKLOADS["core"], args.seed), n, latency_s, tmp, args.smoke, "core", not args.no_pure)
        multi_n = n // 3
        multi = run_workload(Workload(*WORKLOADS["multi"], args.seed + 1), multi_n, latency_s, tmp, args.smoke, "multi", not args.no_pure)
    structures = price_index_alternatives(args.seed, 20_000 if args.smoke else 300_000)
    log(f"price index alternatives: {structures}")
    best_durable = max(core["durable_single_commands_per_s"], core["durable_batched_per_s"])
    lat = core["latency_gateway_coalescing"]
    result = {
        "bench": "matching",
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git": git_rev(),
        "seed": args.seed,
        "smoke": args.smoke,
        "machine": machine(),
        "load_avg_1_5_15": {"before": load_before, "after": [round(x, 2) for x in os.getloadavg()]},  # float-ok: report
        "workload": core["workload"],
        "throughput_per_s": best_durable,
        "throughput_note": "durable end-to-end (journal + fsync before ack), orders coalesced into TradingBatch commands; "
                           f"{core['group_commit']} group commit (the other: exchange_core.other_group_commit)",
        "p50_us": lat["p50_us"],
        "p99_us": lat["p99_us"],
        "p999_us": lat["p999_us"],
        "latency_note": f"gateway coalescing, {core['group_commit']} group commit; where the time goes: "
                        "exchange_core.latency_gateway_coalescing.attribution; single-command figures in "
                        "exchange_core.latency_single_commands",
        "offered_per_s": OFFERED_PER_S,
        "gil_switch_interval_us": args.switch_interval_us,
        "group_commit": core["group_commit"],
        "sender_poll_us": lat["sender_poll_us"],
        "seconds": round(time.perf_counter() - started, 1),  # float-ok: report
        "hot_path": HOT_PATH[0],
        "baseline": {
            "name": f"raw matching, no journal (Engine.apply per command), {HOT_PATH[0]}",
            "throughput_per_s": core["raw_matching_per_s"],
            "throughput_per_cpu_s": core["raw_matching_per_cpu_s"],
        },
        "pure_python_raw": {
            "name": "the same raw run on pure Python (RINGFENCE_PURE=1, a child interpreter)",
            "throughput_per_s": core["raw_pure_python_per_s"],
            "throughput_per_cpu_s": core["raw_pure_python_per_cpu_s"],
        },
        "throughput_per_cpu_s": core["durable_batched_per_cpu_s"],
        "goal": GOAL,
        "gap": {
            "throughput_x": round(best_durable / GOAL["throughput_per_s"], 3),  # float-ok: report
            "p99_x": round(lat["p99_us"] / GOAL["p99_us"], 3),  # float-ok: report
        },
        "price_index_alternatives": structures,
        "exchange_core": core,
        "multi_market": multi,
    }
    if args.note:
        result["note"] = args.note
    line = json.dumps(result, sort_keys=False)
    print(line)
    if not args.no_record:
        out = ROOT / "bench" / "results" / "matching.jsonl"
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a") as fh:
            fh.write(line + "\n")


if __name__ == "__main__":
    main()
