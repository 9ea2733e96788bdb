"""Instructions per order, perpetual vs spot, under callgrind: the order part of `bench/risk.py`
counted in CPU instructions, which the load of a shared machine does not move (wall and CPU time do).

Usage: python bench/risk_instructions.py [--orders N] [--seed S] [--hash-seed H] [--warmup W]

For each kind (spot, perp) a child process builds `bench/risk.py`'s world (1,000 funded owners) and
the first N orders of its seeded stream, then runs them through `Engine.apply` under
`valgrind --tool=callgrind --instr-atstart=no`, counting only the order loop (instrumentation
switched on and off around it with `callgrind_control -i`). The hash seed is fixed
(`PYTHONHASHSEED`): spot's count moves by about 2 % between hash seeds. Prints one JSON line:
instructions per order of each, `perp_vs_spot` (spot's count over perp's: 1.0 is the goal, as
`bench/risk.py`'s rate ratio), and a digest of each kind's events and final state hash (a change
that keeps behaviour keeps them). Needs valgrind; writes nothing under bench/results.

`--warmup W` (default 0: the measurement above) first runs W orders of another seeded stream of the
same kind, uncounted: then every owner has traded, and what a kind does once per owner (a
perpetual opens each owner's margin account, `Seat` and position at the owner's first fill, and the
garbage collector's young generation fills with them) is left out of the count: the steady state.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def child(kind: str, n: int, seed: int, warmup: int = 0) -> None:
    sys.path.insert(0, str(HERE))
    import risk  # noqa: E402  (bench/risk.py: its world and stream)

    from ringfence.derivatives.commands import PlacePerpOrder
    from ringfence.trading.commands import PlaceOrder

    def commands(stream: list[tuple[str, str, int, int]]) -> list[Any]:
        return [PlaceOrder(o, "BTCUSDT", s, price=p, quantity=q) if kind == "spot" else PlacePerpOrder(o, "BTCUSDTPERP", s, price=p, quantity=q)
                for o, s, p, q in stream]

    a = risk.world(risk.ORDER_OWNERS)
    if warmup:
        for c in commands(risk.order_stream(random.Random(seed + 1_000_003), warmup, risk.ORDER_OWNERS)):
            a(c)
    cmds = commands(risk.order_stream(random.Random(seed), n, risk.ORDER_OWNERS))
    out = []
    pid = str(os.getpid())
    subprocess.run(["callgrind_control", "-i", "on", pid], capture_output=True, check=False)
    for c in cmds:
        out.append(a(c))
    subprocess.run(["callgrind_control", "-i", "off", pid], capture_output=True, check=False)
    a.engine.check_invariants()
    events = hashlib.sha256(repr([[repr(e) for e in ev] for ev in out]).encode()).hexdigest()[:16]
    print(json.dumps({"events": events, "state": a.engine.state_hash()[:16], "hot_path": risk.native.describe()}))


def measure(kind: str, n: int, seed: int, hash_seed: int, warmup: int = 0) -> dict:
    with tempfile.TemporaryDirectory(prefix="risk-cg-") as tmp:
        out = Path(tmp) / "callgrind.out"
        env = {**os.environ, "PYTHONHASHSEED": str(hash_seed), "PYTHONPATH": str(HERE.parent / "src")}
        proc = subprocess.run(["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
                               sys.executable, __file__, "--child", kind, "--orders", str(n), "--seed", str(seed),
                               "--warmup", str(warmup)],
                              capture_output=True, text=True, env=env, check=True)
        totals = [int(line.split()[1]) for line in out.read_text().splitlines() if line.startswith("totals:")]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"instructions_per_order": totals[0] // n, **result}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--orders", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=1, help="the order stream's seed (bench/risk.py's --seed)")
    ap.add_argument("--hash-seed", type=int, default=0, help="PYTHONHASHSEED of the measured processes")
    ap.add_argument("--warmup", type=int, default=0, help="orders of another seeded stream run first, uncounted (steady state)")
    ap.add_argument("--child", choices=("spot", "perp"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.orders, args.seed, args.warmup)
    spot = measure("spot", args.orders, args.seed, args.hash_seed, args.warmup)
    perp = measure("perp", args.orders, args.seed, args.hash_seed, args.warmup)
    print(json.dumps({"bench": "risk_instructions", "orders": args.orders, "seed": args.seed, "hash_seed": args.hash_seed,
                      **({"warmup": args.warmup} if args.warmup else {}),
                      "spot": spot, "perp": perp,
                      "perp_vs_spot": round(spot["instructions_per_order"] / perp["instructions_per_order"], 3)}))  # float-ok: a ratio


if __name__ == "__main__":
    main()
