"""Instructions per command of raw matching on the exchange-core mix, under callgrind: the raw run
of `bench/matching.py` counted in CPU instructions, which the load of a shared machine does not move.

Usage: python bench/matching_instructions.py [--commands N] [--seed S] [--hash-seed H] [--pure]
                                             [--keep DIR] [--note TEXT]

A child process generates `bench/matching.py`'s exchange-core workload (one book, 1,000 accounts,
~1,000 resting orders; 82 % AmendOrder, 5.5 % CancelOrder, 9.5 % LIMIT GTC, 3 % LIMIT IOC) with
the seeded generators, the first N commands of it, builds a fresh engine with the set-up, funding
and prefill applied, and runs the N commands under `valgrind --tool=callgrind --instr-atstart=no`,
counting only the command loop (instrumentation switched on and off around it with
`callgrind_control -i`). Two loops, each on its own fresh engine and in its own child:

* `raw`: `Engine.apply` on one command at a time (bench/matching.py's baseline);
* `batched`: the same commands in `TradingBatch`es of 512 actions, one `Engine.apply` each (what
  the durable run's sequencer applies, gateway coalescing).

For each: instructions per command, and per command type the inclusive instructions of the
trading handler of that type (callgrind_annotate, the compiled `_amend`/`_cancel`/`_place`;
not on pure Python, which has no symbols) divided by the number of commands of that type: where an
amend and a cancel spend theirs. `--pure` adds the same runs on pure Python (`RINGFENCE_PURE=1`;
slow under callgrind: use a smaller --commands). The hash seed is fixed (`PYTHONHASHSEED`). A
digest of the events (and, per loop, the final state hash) says the two loops (and the two
implementations) behaved the same. Prints one JSON line; with --note also appends it to
bench/results/matching_instructions.jsonl. Needs valgrind. For an A/B, copy this file into another checkout's bench/ (its
bench/matching.py imports that checkout's src) and run both.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BATCH = 512
#: The handler functions per command type, as callgrind names them: compiled (mypyc's native
#: function `CPyDef_<module>___<name>`; pure Python has no symbols: left out). The first of the
#: names that ran counts: a batch calls `_amend_at` (given the engine's ledger and time), a single
#: command `_amend`, which reads them and calls it (and an older build has only `_amend`).
HANDLERS = {"AmendOrder": ("_amend", "_amend_at"), "CancelOrder": ("_cancel",), "PlaceOrder": ("_place",)}


def child(loop: str, n: int, seed: int) -> None:
    sys.path.insert(0, str(HERE))
    import matching  # noqa: E402  (bench/matching.py: its workload)

    from ringfence import native
    from ringfence.trading.commands import TradingBatch

    w = matching.Workload(*matching.WORKLOADS["core"], seed)
    w.generate(n)
    engine = matching.new_engine()
    seq = 0
    for c in w.setup + w.funding + w.prefill:
        seq += 1
        engine.apply(c, seq, seq * 1000, b"")
    units = w.commands if loop == "raw" else [TradingBatch(w.commands[i : i + BATCH]) for i in range(0, n, BATCH)]
    kinds: dict[str, int] = {}
    for c in w.commands:
        kinds[type(c).__name__] = kinds.get(type(c).__name__, 0) + 1
    # As bench/matching.py's raw run: the workload out of the cyclic collector's way.
    gc.collect()
    gc.freeze()
    apply = engine.apply
    out = []
    pid = str(os.getpid())
    subprocess.run(["callgrind_control", "-i", "on", pid], capture_output=True, check=False)
    for u in units:
        seq += 1
        out.append(apply(u, seq, seq * 1000, b""))
    subprocess.run(["callgrind_control", "-i", "off", pid], capture_output=True, check=False)
    engine.check_invariants()
    flat = [repr(e) for ev in out for e in ev]
    events = hashlib.sha256(repr(flat).encode()).hexdigest()[:16]
    print(json.dumps({"events": events, "state": engine.state_hash()[:16], "kinds": kinds, "hot_path": native.describe()}))


def _inclusive(out: Path) -> dict[str, int]:
    """Inclusive instructions of each compiled trading handler (callgrind_annotate)."""
    text = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", str(out)],
                          capture_output=True, text=True, check=True).stdout
    found: dict[str, int] = {}
    for line in text.splitlines():
        m = re.match(r"\s*([\d,]+)\s+\(.*?\)\s+\S*:(CPyDef_orders___(\w+))\b", line) or re.match(
            r"\s*([\d,]+)\s+\S*:(CPyDef_orders___(\w+))\b", line)
        if m and any(m.group(3) in names for names in HANDLERS.values()) and m.group(3) not in found:
            found[m.group(3)] = int(m.group(1).replace(",", ""))
    return found


def measure(loop: str, n: int, seed: int, hash_seed: int, pure: bool, keep: Path | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="matching-cg-") as tmp:
        out = Path(tmp) / "callgrind.out"
        env = {**os.environ, "PYTHONHASHSEED": str(hash_seed), "PYTHONPATH": str(HERE.parent / "src")}
        env.pop("RINGFENCE_PURE", None)
        if pure:
            env["RINGFENCE_PURE"] = "1"
        proc = subprocess.run(["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
                               sys.executable, __file__, "--child", loop, "--commands", str(n), "--seed", str(seed)],
                              capture_output=True, text=True, env=env, check=True)
        totals = [int(line.split()[1]) for line in out.read_text().splitlines() if line.startswith("totals:")]
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        by_type: dict[str, int] = {}
        if not pure:
            inclusive = _inclusive(out)
            for kind, names in HANDLERS.items():
                count = result["kinds"].get(kind, 0)
                fn = next((name for name in names if name in inclusive), None)
                if count and fn is not None:
                    by_type[kind] = inclusive[fn] // count
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            (keep / f"callgrind.{loop}.{'pure' if pure else 'compiled'}.out").write_bytes(out.read_bytes())
    return {"instructions_per_command": totals[0] // n, "handler_inclusive_per_command": by_type, **result}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--commands", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=1, help="the workload's seed (bench/matching.py's --seed)")
    ap.add_argument("--hash-seed", type=int, default=0, help="PYTHONHASHSEED of the measured processes")
    ap.add_argument("--pure", action="store_true", help="also count pure Python (slow)")
    ap.add_argument("--keep", type=Path, help="keep the callgrind output files in this directory")
    ap.add_argument("--note", help="append the line to bench/results/matching_instructions.jsonl with this note")
    ap.add_argument("--child", choices=("raw", "batched"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.commands, args.seed)
    runs: dict[str, Any] = {}
    for pure in (False, True) if args.pure else (False,):
        for loop in ("raw", "batched"):
            runs[f"{loop}_{'pure' if pure else 'compiled'}"] = measure(loop, args.commands, args.seed, args.hash_seed, pure, args.keep)
    # The same events everywhere; the same state per loop (a batched run applied fewer commands).
    same = len({r["events"] for r in runs.values()}) == 1 and all(
        len({r["state"] for k, r in runs.items() if k.startswith(loop)}) == 1 for loop in ("raw", "batched"))
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE).stdout.strip()
    line = {"bench": "matching_instructions", "at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "git": git, "commands": args.commands, "seed": args.seed, "hash_seed": args.hash_seed,
            "kinds": next(iter(runs.values()))["kinds"], "same_events_and_state": same,
            **{k: {x: y for x, y in v.items() if x != "kinds"} for k, v in runs.items()}}
    if args.note:
        line["note"] = args.note
    print(json.dumps(line))
    if not same:
        raise SystemExit("the runs differ in their events or final state")
    if args.note:
        with open(HERE / "results" / "matching_instructions.jsonl", "a") as fh:
            fh.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
