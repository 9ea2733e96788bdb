"""Instructions and CPU per order of the durable gateway path: `bench/matching.py`'s
`durable_batched` run (exchange-core mix, orders coalesced into `TradingBatch`es of 512, submitted
to a pipelined `Node`: journal + fdatasync before the acknowledgement), counted in CPU instructions
under callgrind, which the load of a shared machine does not move.

Usage: python bench/durable_instructions.py [--commands N] [--seed S] [--src DIR ...] [--cpu-only]
                                            [--rounds R] [--keep DIR] [--note TEXT]

For each `--src` (default: this checkout's src; give two, e.g. /work/main/src and src, for an A/B)
a child process with that source tree first on its path generates the workload (the seeded
generators of bench/matching.py), opens a fresh pipelined node with the set-up, funding and prefill
applied, and submits the N orders as `TradingBatch`es with bench/matching.py's window of
unacknowledged orders. Measured: (a) under `valgrind --tool=callgrind --instr-atstart=no`, the
instructions of the submit..last-acknowledgement loop (every thread: the sender, the sequencer, the
syncer; instrumentation switched on and off around the loop with `callgrind_control -i`), per
order; (b) without valgrind, the process CPU time (user + system, every thread) of the same loop,
per order, best of `--rounds`, the sources alternating, and the sending thread's own CPU time
(`Node.submit`: the strict encode and decode of each TradingBatch) per order. The children print a digest of the final ledger and book:
the runs must agree (each child also checks that its
node ended with the ledger and the book of the raw run). Prints one JSON line; with --note appends it to
bench/results/durable_instructions.jsonl. `--keep DIR` keeps the callgrind files
(callgrind_annotate --inclusive=yes DIR/callgrind.N.out says where the instructions go).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BATCH = 512
IN_FLIGHT_ORDERS = 65_536


def child(n: int, seed: int, callgrind: bool) -> None:
    # The source tree under test is first on sys.path (PYTHONPATH); import ringfence from it before
    # bench/matching.py (which puts its own checkout's src first) so every module comes from it.
    import ringfence.app  # noqa: F401
    from ringfence import native
    from ringfence.trading.commands import TradingBatch

    sys.path.insert(0, str(HERE))
    import matching  # noqa: E402

    matching.PIPELINE[0] = True
    matching.IN_FLIGHT_BATCHES[0] = 4
    sys.setswitchinterval(200e-6)  # float-ok: bench/matching.py's GIL switch interval
    w = matching.Workload(*matching.WORKLOADS["core"], seed)
    w.generate(n)
    with tempfile.TemporaryDirectory(prefix="rf-durable-cg-", dir=os.environ.get("RINGFENCE_BENCH_DIR")) as tmp:
        node = matching.open_node(w, Path(tmp) / "node")
        node.start()
        units = [TradingBatch(w.commands[i : i + BATCH]) for i in range(0, n, BATCH)]
        max_in_flight = max(1, IN_FLIGHT_ORDERS // BATCH)
        if not os.environ.get("DURABLE_NO_FREEZE"):
            gc.collect()
            gc.freeze()
        pid = str(os.getpid())
        if callgrind:
            subprocess.run(["callgrind_control", "-i", "on", pid], capture_output=True, check=False)
        cpu, sender = time.process_time_ns(), time.thread_time_ns()
        window: deque[Any] = deque()
        submit = node.submit
        for unit in units:
            window.append(submit(unit))
            if len(window) >= max_in_flight:
                window.popleft().wait(600)
        while window:
            window.popleft().wait(600)
        cpu, sender = time.process_time_ns() - cpu, time.thread_time_ns() - sender
        if callgrind:
            subprocess.run(["callgrind_control", "-i", "off", pid], capture_output=True, check=False)
        node.close()
        matching.check_same(w, node.engine, "durable")  # type: ignore[arg-type]
        # (the node's state hash carries its clock and entropy: the ledger and the book are compared)
        state = hashlib.sha256(repr((w.final_rows, w.final_book)).encode()).hexdigest()
    print(json.dumps({"state": state[:16], "cpu_ns_per_order": cpu // n, "sender_cpu_ns_per_order": sender // n, "hot_path": native.describe(),
                      "ringfence": str(Path(ringfence.app.__file__).parent)}))


def run(src: str, n: int, seed: int, hash_seed: int, callgrind: bool, keep: Path | None, tag: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONHASHSEED": str(hash_seed), "PYTHONPATH": str(Path(src).resolve())}
    env.pop("RINGFENCE_PURE", None)
    cmd = [sys.executable, __file__, "--child", "--commands", str(n), "--seed", str(seed)]
    with tempfile.TemporaryDirectory(prefix="durable-cg-") as tmp:
        out = Path(tmp) / "callgrind.out"
        if callgrind:
            cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}", *cmd[:-4],
                   "--child", "--callgrind", "--commands", str(n), "--seed", str(seed)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode:
            raise SystemExit(f"child failed ({src}):\n{proc.stderr[-3000:]}")
        result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
        if callgrind:
            totals = [int(line.split()[1]) for line in out.read_text().splitlines() if line.startswith("totals:")]
            result["instructions_per_order"] = sum(totals) // n
            if keep is not None:
                keep.mkdir(parents=True, exist_ok=True)
                (keep / f"callgrind.{tag}.out").write_bytes(out.read_bytes())
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--commands", type=int, default=20_480)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--hash-seed", type=int, default=0)
    ap.add_argument("--src", action="append", help="a source tree to measure (repeat for an A/B); default this checkout's")
    ap.add_argument("--rounds", type=int, default=3, help="CPU-time runs per source (alternating); best kept")
    ap.add_argument("--cpu-only", action="store_true", help="skip callgrind")
    ap.add_argument("--keep", type=Path)
    ap.add_argument("--note")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--callgrind", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.commands, args.seed, args.callgrind)
    srcs = args.src or [str(HERE.parent / "src")]
    runs: dict[str, dict[str, Any]] = {s: {} for s in srcs}
    if not args.cpu_only:
        for i, s in enumerate(srcs):
            r = run(s, args.commands, args.seed, args.hash_seed, True, args.keep, str(i))
            runs[s].update(instructions_per_order=r["instructions_per_order"], state=r["state"], hot_path=r["hot_path"])
    for _ in range(args.rounds):
        for s in srcs:
            r = run(s, args.commands, args.seed, args.hash_seed, False, None, "")
            best = runs[s].get("cpu_ns_per_order")
            runs[s]["cpu_ns_per_order"] = r["cpu_ns_per_order"] if best is None else min(best, r["cpu_ns_per_order"])
            runs[s].setdefault("cpu_ns_all", []).append(r["cpu_ns_per_order"])
            runs[s].setdefault("sender_cpu_ns_all", []).append(r["sender_cpu_ns_per_order"])
            runs[s]["state"], runs[s]["hot_path"] = r["state"], r["hot_path"]
    same = len({r["state"] for r in runs.values()}) == 1
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE).stdout.strip()
    line = {"bench": "durable_instructions", "at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "git": git, "commands": args.commands, "seed": args.seed, "batch": BATCH, "load_avg_1": os.getloadavg()[0],
            "same_state": same, "runs": runs}
    if args.note:
        line["note"] = args.note
    print(json.dumps(line))
    if not same:
        raise SystemExit("the runs ended in different states")
    if args.note:
        with open(HERE / "results" / "durable_instructions.jsonl", "a") as fh:
            fh.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
