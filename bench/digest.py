"""The per-batch state digest replication checks (`Engine.state_digest`) on the `serve --demo` engine.

Usage: python bench/digest.py [--smoke] [--seed N] [--grow N] [--snapshot PATH]

The engine is the one `ringfence serve --demo` builds (`api.serve.build` with demo=True, in a child
process that writes its snapshot: markets with the market maker's ladders, two perpetuals, funded
accounts, the demo staff quorum, custody's wallets and policy); `--snapshot` reuses such a file,
`--smoke` seeds a bare node with the trading and perpetual demo only. The workload `demo+N` adds N
users, each funded and with a resting order on BTCUSDT and on ETHUSDT (the state grows as people
use the demo). Then, over small batches of the kinds serve sees (one spot order, one cancel, ten
transfers, one perpetual order), each batch is applied and its digest taken two ways, alternating
which goes first:

* `incremental_us`: `Engine.state_digest()` as it is: the ledger's incremental digest, each other
  component's last digest reused unless a module that may change it ran (`Module.writes`), and
  trading's put together from each market's kept encoding, re-encoding the spot markets an order
  action named (trading/digest.py);
* baseline `from_nothing_us`: the definition before that (what main computes): the ledger's
  incremental digest and SHA-256 of every other component's snapshot, every batch.

Both must give the same digest (checked every batch). Also reported: each component's cost
computed from nothing (the median over the run), which is where the baseline's time goes.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit  # noqa: E402

from ringfence.app import engine_from_snapshot  # noqa: E402
from ringfence.derivatives.commands import PlacePerpOrder  # noqa: E402
from ringfence.engine.commands import encode  # noqa: E402
from ringfence.engine.core import STATE_DIGEST_FORMAT, Engine  # noqa: E402
from ringfence.ledger.commands import CreateTransfers, OpenAccount  # noqa: E402
from ringfence.ledger.model import Transfer  # noqa: E402
from ringfence.trading.commands import CancelOrder, PlaceOrder  # noqa: E402

KINDS = ("order", "cancel", "transfers10", "perp_order")


def _build_demo_snapshot(path: Path, smoke: bool) -> None:
    """In a child process (serve's build starts threads): write the demo engine's snapshot to `path`."""
    code = (
        "import os, sys, tempfile, pathlib\n"
        "d = pathlib.Path(tempfile.mkdtemp(prefix='bench-digest-'))\n"
        "if sys.argv[2] == '1':\n"
        "    from ringfence.app import new_node\n"
        "    from ringfence.api.demo import seed_demo\n"
        "    from ringfence.index.worker import refresh_demo_feed\n"
        "    node = new_node(d / 'node'); node.open(); node.start()\n"
        "    refresh_demo_feed(node); seed_demo(node)\n"
        "    engine = node.engine\n"
        "else:\n"
        "    from ringfence.api.serve import build\n"
        "    _, exchange, _ = build(d, True)\n"
        "    engine = exchange.node.engine\n"
        "pathlib.Path(sys.argv[1]).write_bytes(engine.snapshot_bytes())\n"
        "os._exit(0)\n"
    )
    env = dict(os.environ, RINGFENCE_MODE="dev")
    subprocess.run([sys.executable, "-c", code, str(path), "1" if smoke else "0"], check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)


class _Driver:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.ts_ns = engine.now_ns

    def run(self, command: Any) -> list[Any]:
        self.ts_ns += 1_000_000
        return self.engine.apply(command, self.engine.last_seq + 1, self.ts_ns, b"e" * 32)


def _grow(d: _Driver, users: int) -> None:
    ledger = d.engine.ledger
    for i in range(users):
        owner = f"u{i}"
        for asset in ("USDT", "BTC", "ETH"):
            d.run(OpenAccount(owner, asset, "available", "spot"))
        d.run(CreateTransfers([Transfer(10**12 + 3 * i + k, ledger.world(a).id, ledger.get(owner, a, "available", "spot").id, amount)
                               for k, (a, amount) in enumerate((("USDT", 10**12), ("BTC", 10**8), ("ETH", 10**18)))]))
        d.run(PlaceOrder(owner, "BTCUSDT", "BUY", price=58_000_000_000 - (i % 300) * 10_000, quantity=10_000))
        d.run(PlaceOrder(owner, "ETHUSDT", "SELL", price=3_100_000_000 + (i % 300) * 10_000, quantity=10**16))


def digest_from_nothing(engine: Engine) -> str:
    """`state_digest` as defined before the cache (main): every non-ledger component hashed whole."""
    root = engine._root
    assert root is not None and root.digest is not None
    parts: list[Any] = [STATE_DIGEST_FORMAT, engine.last_seq, engine.now_ns, root.digest(engine.components[root.name]).hex()]
    for spec in engine._states:
        part = engine._hash_component(spec, engine.components[spec.name])
        if part is not None:
            parts.append([spec.name, part])
    if engine.halted is not None:
        parts.append(list(engine.halted))
    return hashlib.sha256(encode(parts)).hexdigest()


def _batch(d: _Driver, kind: str, k: int, rng: random.Random, transfer_ids: list[int]) -> None:
    ledger = d.engine.ledger
    if kind == "order":
        d.run(PlaceOrder("alice", "BTCUSDT", "BUY", price=56_000_000_000 + rng.randrange(50) * 10_000, quantity=10_000,
                         client_order_id=f"bench-{k}"))
    elif kind == "cancel":
        d.run(CancelOrder("alice", "BTCUSDT", client_order_id=f"bench-{k - 1}"))
    elif kind == "transfers10":
        src, dst = ledger.get("alice", "USDT", "available", "spot").id, ledger.get("bob", "USDT", "available", "spot").id
        transfers = []
        for _ in range(10):
            transfer_ids[0] += 1
            transfers.append(Transfer(transfer_ids[0], src, dst, 1 + rng.randrange(1000)))
        d.run(CreateTransfers(transfers))
    else:
        side = rng.choice(("BUY", "SELL"))
        price = 60_000_000_000 + (-1 if side == "BUY" else 1) * (20 + rng.randrange(50)) * 100_000
        d.run(PlacePerpOrder("alice", "BTCUSDTPERP", side, price=price, quantity=1_000))


def measure(snapshot: bytes, users: int, batches: int, seed: int) -> dict[str, Any]:
    engine = engine_from_snapshot(snapshot)
    d = _Driver(engine)
    _grow(d, users)
    gc.collect()
    gc.freeze()  # as serve does before serving (api/serve.py freeze_startup_heap)
    gc.set_threshold(20_000, *gc.get_threshold()[1:])
    engine.state_digest()
    rng = random.Random(seed)
    transfer_ids = [2 * 10**12]
    new: dict[str, list[float]] = {k: [] for k in KINDS}
    old: dict[str, list[float]] = {k: [] for k in KINDS}
    for k in range(batches):
        kind = KINDS[k % len(KINDS)]
        _batch(d, kind, k, rng, transfer_ids)
        order = (True, False) if (k // len(KINDS)) % 2 else (False, True)  # each kind goes first half the time
        got = {}
        for incremental in order:
            t0 = time.perf_counter_ns()
            got[incremental] = engine.state_digest() if incremental else digest_from_nothing(engine)
            (new if incremental else old)[kind].append((time.perf_counter_ns() - t0) / 1000)
        assert got[True] == got[False], f"batch {k} ({kind}): the digests differ"
    per_component = {}
    for spec in engine._all_states():
        samples = []
        for _ in range(21):
            t0 = time.perf_counter_ns()
            if spec.digest is None:
                engine._hash_component(spec, engine.components[spec.name])
            samples.append((time.perf_counter_ns() - t0) / 1000)
        per_component[spec.name] = round(statistics.median(samples), 1) if spec.digest is None else None
    gc.unfreeze()
    return {
        "users_added": users,
        "snapshot_bytes": len(engine.snapshot_bytes()),
        "from_nothing_us_per_component": per_component,
        "per_batch": {kind: {"incremental_us": round(statistics.median(new[kind]), 1),
                             "from_nothing_us": round(statistics.median(old[kind]), 1),
                             "ratio": round(statistics.median(old[kind]) / max(statistics.median(new[kind]), 0.1), 1)}
                      for kind in KINDS},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--grow", type=int, default=1000, help="users added for the second workload")
    parser.add_argument("--snapshot", type=Path, help="a demo engine snapshot to start from (else built now)")
    args = parser.parse_args()
    print(f"seed={args.seed}", file=sys.stderr)
    started = time.perf_counter()
    load_before = os.getloadavg()
    if args.snapshot is not None and args.snapshot.exists():
        snapshot = args.snapshot.read_bytes()
    else:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "demo.snapshot"
            _build_demo_snapshot(path, args.smoke)
            snapshot = path.read_bytes()
            if args.snapshot is not None:
                args.snapshot.write_bytes(snapshot)
    batches = 40 if args.smoke else 800
    workloads = {"demo": measure(snapshot, 0, batches, args.seed)}
    grow = min(args.grow, 20) if args.smoke else args.grow
    workloads[f"demo+{grow}"] = measure(snapshot, grow, batches, args.seed)
    emit("digest", {
        "seed": args.seed,
        "workload": {"engine": "serve --demo" if not args.smoke else "seed_demo (smoke)", "batches": batches,
                     "kinds": list(KINDS)},
        "results": workloads,
        "baseline": {"name": "every non-ledger component hashed whole each batch (the digest before the cache)"},
        "goal": {"ratio_for_ledger_only_batches": 3},
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "seconds": round(time.perf_counter() - started, 1),
    }, smoke=args.smoke)


if __name__ == "__main__":
    main()
