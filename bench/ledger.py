"""Ledger transfers through the full durable path: sequencer -> journal (group-commit fsync) -> apply.

Usage: python bench/ledger.py [--smoke] [--seed N]
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
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, percentile_us  # noqa: E402

from ringfence.engine.node import Node  # noqa: E402
from ringfence.ledger.commands import CreateTransfers, OpenAccount, RegisterAsset  # noqa: E402
from ringfence.ledger.model import Transfer  # noqa: E402
from ringfence import app  # noqa: E402
from ringfence.app import new_engine, replay_journal  # noqa: E402

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


def new_node(path: Path) -> Node:
    if path.exists():
        shutil.rmtree(path)
    node = app.new_node(path)
    node.open()
    return node


def prepared_node(path: Path, accounts: int) -> tuple[Node, list[int], int]:
    node = new_node(path)
    node.execute_many(setup_commands(accounts)[:1])
    for start in range(1, accounts + 1, 5_000):
        node.execute_many(setup_commands(accounts)[start : start + 5_000])
    led = node.engine.ledger
    ids = [led.get(f"u{i}", "USDT").id for i in range(accounts)]
    cmds, next_id = funding(ids[0], led.world("USDT").id, accounts, 1)
    node.execute_many(cmds)
    return node, ids, next_id


def closed_loop(node: Node, cmds: list) -> float:  # float-ok: seconds
    node.start()
    started = time.perf_counter()
    acks = [node.submit(c) for c in cmds]
    for ack in acks:
        ack.wait(120)
    return time.perf_counter() - started


def open_loop(node: Node, cmds: list, per_request: int, offered_per_s: int) -> tuple[list[int], list[str], float]:  # float-ok
    """Send request i at t0 + i * interval; latency = ack time - scheduled time."""
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
            node.submit(cmds[i]).add_done_callback(make_cb(t0 + i * interval_ns))
            i += 1
        time.sleep(0.0001)
    done.wait(300)
    seconds = (time.perf_counter_ns() - t0) / 1e9
    return latencies, errors, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds (CI)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dir", type=Path, default=None, help="where to put the journals (default: a temp dir)")
    parser.add_argument("--replicate", metavar="NATS_URL", default=None,
                        help="run the replicated benchmark (bench/replicate.py) against this NATS server instead")
    args = parser.parse_args()
    if args.replicate:
        from replicate import run

        run(args.replicate, seed=args.seed, smoke=args.smoke)
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
    }
    try:
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
        result["latency"] = latency
        result["p99_us"] = latency["request_of_1"]["p99_us"]
        result["goal"] = {"throughput_per_s": 300_000, "p99_us_at_80k_offered": 2_000, "replay_events_per_s": 1_000_000}
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    emit("ledger", result, smoke=args.smoke)


if __name__ == "__main__":
    main()
