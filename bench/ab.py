"""A/B CPU comparison of two source trees on the same seeded workload (raw engine, no journal).

    python bench/ab.py --a /path/to/before --b /path/to/after [--workload core|multi|ledger]
                       [--commands N] [--rounds R] [--seed S] [--callgrind]

Example: python bench/ab.py --a /work/wt/before --b . --workload core --commands 100000 --rounds 5

Each tree runs in its own fresh subprocess (`PYTHONPATH=<tree>/src`) and imports *its own*
`bench/matching.py` (workloads `core`: exchange-core's single-book mix, `multi`: the four-market
mix) or `bench/ledger.py` (workload `ledger`: many-account transfers in requests of 8,190, applied to
an engine; `ledger-node`: the same through a real node, journal and fsync included, CPU of every
thread), so each side runs the workload generator, engine and node of its own commit. Both children generate the same
seeded workload once, then the parent asks them in turn (A, B, A, B, ...) to apply it to a fresh
engine; each run's CPU time (`time.process_time`, the child is single-threaded) is reported back.
Interleaving puts A and B under the same machine load, and the best of `--rounds` runs per side is
compared: on a shared machine the minimum is the least disturbed figure.

`--callgrind` instead runs each child once under `valgrind --tool=callgrind` with instrumentation
switched on (`callgrind_control -i on`) only around the timed run, and reports instructions per
command: repeatable to a fraction of a percent even on a loaded machine.

Output: one JSON line on stdout with both rates, the ratio B/A (> 1 means B is faster) and the
state hash each side ended with (the same workload must end in the same state; for `ledger-node`,
whose node stamps wall-clock time, a hash of every account's counters).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()


# --------------------------------------------------------------------------------------- child side


def _load(tree: Path, name: str) -> Any:
    """Import `<tree>/bench/<name>.py` as a module (it puts `<tree>/src` on sys.path itself)."""
    sys.path.insert(0, str(tree / "bench"))
    spec = importlib.util.spec_from_file_location(f"ab_{name}", tree / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _new_engine(mod: Any) -> Any:
    # After the architecture step benchmarks build engines with `ringfence.app.new_engine`;
    # before it, `Engine()` held every domain.
    factory = getattr(mod, "new_engine", None)
    return factory() if factory is not None else mod.Engine()


class _Matching:
    def __init__(self, tree: Path, workload: str, n: int, seed: int) -> None:
        self.mod = _load(tree, "matching")
        if workload == "core":
            self.w = self.mod.Workload("exchange-core mix", ["BTCUSDT"], 1000, (0.09, 0.03, 0.06, 0.0), seed)
        else:
            symbols = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "ADAUSDT"]
            self.w = self.mod.Workload("multi-market mix", symbols, 5000, (0.30, 0.10, 0.20, 0.05), seed + 1)
        self.w.generate(n)
        self.n = n

    def prepare(self) -> tuple[Any, list[Any], int]:
        engine = _new_engine(self.mod)
        seq = 0
        for c in self.w.setup + self.w.funding + self.w.prefill:
            seq += 1
            engine.apply(c, seq, seq * 1000, b"")
        return engine, self.w.commands, seq

    @staticmethod
    def ts(seq: int) -> int:
        return seq * 1000


class _Ledger:
    def __init__(self, tree: Path, workload: str, n: int, seed: int) -> None:
        import random

        self.mod = _load(tree, "ledger")
        self.accounts = 10_000
        engine, _ = self._setup()
        led = engine.ledger
        ids = [led.get(f"u{i}", "USDT").id for i in range(self.accounts)]
        self.cmds, _ = self.mod.transfer_stream(random.Random(seed), ids, n, 10**9, False, self.mod.BATCH)
        self.n = n

    def _setup(self) -> tuple[Any, int]:
        mod = self.mod
        engine = _new_engine(mod)
        seq = 0
        for c in mod.setup_commands(self.accounts):
            seq += 1
            engine.apply(c, seq, seq)
        led = engine.ledger
        fund, _ = mod.funding(led.get("u0", "USDT").id, led.world("USDT").id, self.accounts, 1)
        for c in fund:
            seq += 1
            engine.apply(c, seq, seq)
        return engine, seq

    def prepare(self) -> tuple[Any, list[Any], int]:
        engine, seq = self._setup()
        return engine, self.cmds, seq

    @staticmethod
    def ts(seq: int) -> int:
        return seq


class _LedgerNode:
    """bench/ledger.py's closed loop through a real node (sequencer, journal with fsync, apply):
    each run journals the same many-account requests into a fresh data directory."""

    def __init__(self, tree: Path, workload: str, n: int, seed: int) -> None:
        import random
        import tempfile

        self.mod = _load(tree, "ledger")
        self.tmp = Path(tempfile.mkdtemp(prefix="rf-ab-ledger-node-"))
        self.accounts = 10_000
        node, ids, next_id = self.mod.prepared_node(self.tmp / "probe", self.accounts)
        node.close()
        self.cmds, _ = self.mod.transfer_stream(random.Random(seed), ids, n, next_id, False, self.mod.BATCH)
        self.runs = 0

    def run(self, callgrind: bool) -> tuple[float, str]:  # float-ok: CPU seconds
        self.runs += 1
        node, _, _ = self.mod.prepared_node(self.tmp / f"run{self.runs}", self.accounts)
        if callgrind:
            _callgrind(True)
        cpu = time.process_time()  # every thread of the process: submitter and sequencer
        self.mod.closed_loop(node, self.cmds)
        cpu = time.process_time() - cpu
        if callgrind:
            _callgrind(False)
        node.close()
        # The node stamps wall-clock time into its state, so compare what the transfers did: every
        # account's counters.
        rows = sorted(a.as_row() for a in node.engine.ledger.iter_accounts())
        return cpu, hashlib.sha256(repr(rows).encode()).hexdigest()


def _callgrind(on: bool) -> None:
    subprocess.run(["callgrind_control", "-i", "on" if on else "off", str(os.getpid())], capture_output=True, check=False)


def child(tree: Path, workload: str, n: int, seed: int, callgrind: bool) -> None:
    if workload == "ledger-node":
        return _child_node(tree, n, seed, callgrind)
    subject = (_Ledger if workload == "ledger" else _Matching)(tree, workload, n, seed)
    # The workload belongs to the harness: keep the cyclic GC from rescanning it on every collection.
    gc.collect()
    gc.freeze()
    out = sys.stdout
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        if line.strip() != "run":
            break
        engine, cmds, seq = subject.prepare()
        apply = engine.apply
        ts = subject.ts
        gc.collect()
        if callgrind:
            _callgrind(True)
        cpu = time.process_time()
        for c in cmds:
            seq += 1
            apply(c, seq, ts(seq), b"")
        cpu = time.process_time() - cpu
        if callgrind:
            _callgrind(False)
        out.write(json.dumps({"cpu_s": cpu, "state_hash": engine.state_hash()}) + "\n")
        out.flush()


def _child_node(tree: Path, n: int, seed: int, callgrind: bool) -> None:
    import shutil

    subject = _LedgerNode(tree, "ledger-node", n, seed)
    gc.collect()
    gc.freeze()
    out = sys.stdout
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    try:
        for line in sys.stdin:
            if line.strip() != "run":
                break
            cpu, state_hash = subject.run(callgrind)
            out.write(json.dumps({"cpu_s": cpu, "state_hash": state_hash}) + "\n")
            out.flush()
    finally:
        shutil.rmtree(subject.tmp, ignore_errors=True)


# --------------------------------------------------------------------------------------- parent side


class Side:
    def __init__(self, label: str, tree: Path, args: argparse.Namespace, prefix: list[str], callgrind_out: str | None) -> None:
        self.label = label
        self.tree = tree
        self.callgrind_out = callgrind_out
        env = dict(os.environ, PYTHONPATH=str(tree / "src"))
        cmd = prefix + [sys.executable, str(HERE), "--child", str(tree), "--workload", args.workload,
                        "--commands", str(args.commands), "--seed", str(args.seed)]
        if callgrind_out is not None:
            cmd.append("--callgrind")
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.cpu: list[float] = []  # float-ok: seconds
        self.hashes: set[str] = set()

    def wait_ready(self) -> None:
        line = self._read()
        if not line.get("ready"):
            raise SystemExit(f"{self.label}: child did not start: {line}")

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        text = self.proc.stdout.readline()
        if not text:
            raise SystemExit(f"{self.label} ({self.tree}): child exited with {self.proc.wait()}")
        return json.loads(text)  # type: ignore[no-any-return]

    def run(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        got = self._read()
        self.cpu.append(got["cpu_s"])
        self.hashes.add(got["state_hash"])

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("quit\n")
        self.proc.stdin.close()
        self.proc.wait()


def git_rev(tree: Path) -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=tree)
    rev = done.stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], capture_output=True, text=True, cwd=tree).stdout.strip()
    return rev + ("+dirty" if dirty else "")


def callgrind_instructions(path: str) -> int:
    total = 0
    for file in Path(path).parent.glob(Path(path).name + "*"):
        for line in file.read_text(errors="replace").splitlines():
            m = re.match(r"(?:summary|totals): (\d+)", line)
            if m:
                total = max(total, int(m.group(1)))
    return total


def parent(args: argparse.Namespace) -> None:
    trees = {"a": Path(args.a).resolve(), "b": Path(args.b).resolve()}
    result: dict[str, Any] = {
        "bench": "ab",
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "workload": args.workload,
        "commands": args.commands,
        "seed": args.seed,
        "a": {"tree": str(trees["a"]), "git": git_rev(trees["a"])},
        "b": {"tree": str(trees["b"]), "git": git_rev(trees["b"])},
        "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()],  # float-ok: report
    }
    if args.callgrind:
        tmp = tempfile.mkdtemp(prefix="rf-ab-callgrind-")
        for key in ("a", "b"):
            out = f"{tmp}/{key}.out"
            prefix = ["valgrind", "-q", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
            side = Side(key, trees[key], args, prefix, out)
            side.wait_ready()
            side.run()
            side.close()
            instructions = callgrind_instructions(out)
            result[key].update(instructions=instructions, instructions_per_command=round(instructions / args.commands),
                               state_hash=sorted(side.hashes))
        result["instructions_ratio_b_over_a"] = round(result["b"]["instructions"] / result["a"]["instructions"], 4)  # float-ok
        result["same_state_hash"] = result["a"]["state_hash"] == result["b"]["state_hash"]
        print(json.dumps(result))
        return
    sides = [Side(key, trees[key], args, [], None) for key in ("a", "b")]
    for side in sides:
        side.wait_ready()
    for _ in range(args.rounds):
        for side in sides:
            side.run()
    for side in sides:
        side.close()
    for side in sides:
        best = min(side.cpu)
        result[side.label].update(
            best_cpu_s=round(best, 4),  # float-ok: report
            per_cpu_s=int(args.commands / best),
            runs_cpu_s=[round(x, 4) for x in side.cpu],  # float-ok: report
            state_hash=sorted(side.hashes),
        )
    result["ratio_b_over_a"] = round(result["b"]["per_cpu_s"] / result["a"]["per_cpu_s"], 4)  # float-ok: report
    result["same_state_hash"] = result["a"]["state_hash"] == result["b"]["state_hash"]
    print(json.dumps(result))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", help="source tree A (the baseline, e.g. a worktree of the older commit)")
    ap.add_argument("--b", help="source tree B (the candidate)")
    ap.add_argument("--workload", choices=("core", "multi", "ledger", "ledger-node"), default="core")
    ap.add_argument("--commands", type=int, default=100_000, help="commands (transfers for ledger) per run")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved runs per side; the best counts")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--callgrind", action="store_true", help="count instructions under callgrind instead of timing")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(Path(args.child), args.workload, args.commands, args.seed, args.callgrind)
        return
    if not args.a or not args.b:
        ap.error("--a and --b are required")
    parent(args)


if __name__ == "__main__":
    main()
