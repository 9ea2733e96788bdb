"""Instructions per order, perpetual vs spot, under callgrind: the order part of `bench/risk.py`
counted in CPU instructions, which the load of a shared machine does not move (wall and CPU time do).

Usage: python bench/risk_instructions.py [--orders N] [--seed S] [--hash-seed H] [--warmup W] [--where K]

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

`--where K` also prints, after the JSON line, where the perpetual's extra instructions go: the K
functions whose inclusive cost per order (`callgrind_annotate --inclusive=yes`) differs most between
the two kinds, perp minus spot (a function only one kind calls shows 0 for the other). Inclusive
costs nest (a caller includes its callees), so read it as a tree: `Contract.fill` against spot's
`Ledger.settle_fill`, `order_hold` against spot's `find_pair` and `_fields_of`.
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


#: The runtime functions `--where` lists beside the compiled ones.
RUNTIME = ("gc_collect_main", "PyType_GenericAlloc", "Struct_vectorcall", "CPyTagged_StealAsObject", "PyList_Append",
           "PyObject_GetAttr", "CPyDict_GetWithNone", "CPyDict_GetItem")


def inclusive_per_order(out: Path, n: int) -> dict[str, int]:
    """Inclusive instructions per order of each function in callgrind file `out` (mypyc's `CPyDef_`
    names: `CPyDef_contract___Contract____side` is `Contract._side` in derivatives/contract.py)."""
    text = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--auto=no", "--threshold=100", str(out)],
                          capture_output=True, text=True, check=True).stdout
    costs: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 3 or not parts[0].replace(",", "").isdigit() or ":" not in parts[-2 if parts[-1].startswith("[") else -1]:
            continue
        name = (parts[-2] if parts[-1].startswith("[") else parts[-1]).rsplit(":", 1)[1]
        costs[name] = costs.get(name, 0) + int(parts[0].replace(",", ""))
    return {k: v // n for k, v in costs.items()}


def measure(kind: str, n: int, seed: int, hash_seed: int, warmup: int = 0, where: bool = False) -> dict:
    with tempfile.TemporaryDirectory(prefix="risk-cg-") as tmp:
        out = Path(tmp) / "callgrind.out"
        env = {**os.environ, "PYTHONHASHSEED": str(hash_seed), "PYTHONPATH": str(HERE.parent / "src")}
        proc = subprocess.run(["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
                               sys.executable, __file__, "--child", kind, "--orders", str(n), "--seed", str(seed),
                               "--warmup", str(warmup)],
                              capture_output=True, text=True, env=env, check=True)
        totals = [int(line.split()[1]) for line in out.read_text().splitlines() if line.startswith("totals:")]
        functions = inclusive_per_order(out, n) if where else {}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"instructions_per_order": totals[0] // n, **result, **({"functions": functions} if where else {})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--orders", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=1, help="the order stream's seed (bench/risk.py's --seed)")
    ap.add_argument("--hash-seed", type=int, default=0, help="PYTHONHASHSEED of the measured processes")
    ap.add_argument("--warmup", type=int, default=0, help="orders of another seeded stream run first, uncounted (steady state)")
    ap.add_argument("--where", type=int, default=0, metavar="K",
                    help="also print the K functions whose inclusive instructions per order differ most, perp - spot")
    ap.add_argument("--child", choices=("spot", "perp"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.orders, args.seed, args.warmup)
    spot = measure("spot", args.orders, args.seed, args.hash_seed, args.warmup, bool(args.where))
    perp = measure("perp", args.orders, args.seed, args.hash_seed, args.warmup, bool(args.where))
    fs, fp = spot.pop("functions", {}), perp.pop("functions", {})
    print(json.dumps({"bench": "risk_instructions", "orders": args.orders, "seed": args.seed, "hash_seed": args.hash_seed,
                      **({"warmup": args.warmup} if args.warmup else {}),
                      "spot": spot, "perp": perp,
                      "perp_vs_spot": round(spot["instructions_per_order"] / perp["instructions_per_order"], 3)}))  # float-ok: a ratio
    if args.where:
        # the compiled code's functions and the runtime's allocation, boxing and collection (the
        # interpreter's call frames and recursion-labelled copies nest everything: left out)
        shown = [f for f in set(fs) | set(fp) if "'" not in f and (f.startswith("CPyDef_") or f in RUNTIME)]
        rows = sorted(shown, key=lambda f: -abs(fp.get(f, 0) - fs.get(f, 0)))[:args.where]
        print(f"{'function (inclusive, per order)':<60} {'spot':>8} {'perp':>8} {'perp-spot':>9}")
        for f in rows:
            print(f"{f[:60]:<60} {fs.get(f, 0):>8} {fp.get(f, 0):>8} {fp.get(f, 0) - fs.get(f, 0):>9}")


if __name__ == "__main__":
    main()
