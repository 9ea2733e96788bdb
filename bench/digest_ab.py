"""CPU per batch of the ledger's incremental digest (`LedgerDigest.update`): this tree's against
another version of ledger/digest.py, in one process, on the same ledger and the same batches.

Usage: python bench/digest_ab.py --baseline OTHER/src/ringfence/ledger/digest.py [--batches N]
                                 [--requests N] [--two-account]

bench/replicate.py's latency workload without the node: 10,000 funded accounts, then batches of
`--requests` requests of 10 transfers (many-account stream: ~2 changed accounts a transfer). After
each batch applied to the engine, both digests fold in the same dirty set, alternating which goes
first, timed with the thread's CPU clock; they must agree (checked every batch). On a shared
machine the wall clock and even a run's CPU time move with the load; the ratio of two versions
measured side by side moves much less. Prints one JSON line; writes nothing under bench/results.
(The baseline is interpreted; this tree's is compiled when the build is in use: `native status`.)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ledger import funding, setup_commands, transfer_stream  # noqa: E402

from ringfence import native  # noqa: E402
from ringfence.app import new_engine  # noqa: E402
from ringfence.ledger import digest as this_tree  # noqa: E402

ACCOUNTS = 10_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", required=True, help="another version's ledger/digest.py")
    parser.add_argument("--batches", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=9, help="requests of 10 transfers a batch (default 9)")
    parser.add_argument("--two-account", action="store_true", help="every transfer between the same two accounts")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    spec = importlib.util.spec_from_file_location("ringfence.ledger.digest_baseline", args.baseline)
    assert spec is not None and spec.loader is not None
    baseline = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(baseline)

    engine = new_engine()
    seq = 0

    def run(cmds: list) -> None:  # type: ignore[type-arg]
        nonlocal seq
        for c in cmds:
            seq += 1
            engine.apply(c, seq, seq * 1000)

    run(setup_commands(ACCOUNTS))
    led = engine.ledger
    ids = [led.get(f"u{i}", "USDT").id for i in range(ACCOUNTS)]
    cmds, next_id = funding(ids[0], led.world("USDT").id, ACCOUNTS, 1)
    run(cmds)
    led.digest()  # the ledger marks what changes from here on
    digests = {"baseline": baseline.LedgerDigest(led), "this_tree": this_tree.LedgerDigest(led)}
    cpu = {name: 0.0 for name in digests}  # float-ok: seconds
    cmds, _ = transfer_stream(random.Random(args.seed), ids, args.batches * args.requests * 10, next_id,
                              args.two_account, 10)
    for n, start in enumerate(range(0, len(cmds), args.requests)):
        run(cmds[start : start + args.requests])
        dirty, led._dirty = led._dirty, set()
        out = {}
        for name in (list(digests) if n % 2 else list(digests)[::-1]):
            started = time.thread_time()
            out[name] = digests[name].update(led, dirty)
            cpu[name] += time.thread_time() - started
        assert out["baseline"] == out["this_tree"], f"the two versions' digests differ after batch {n}"
    batches = len(cmds) // args.requests
    print(json.dumps({"bench": "digest_ab", "baseline": args.baseline, "implementation": native.status()["implementation"],
                      "batches": batches, "transfers_per_batch": args.requests * 10, "two_account": args.two_account,
                      **{f"{name}_us_per_batch": round(s * 1e6 / batches, 1) for name, s in cpu.items()},
                      "ratio": round(cpu["this_tree"] / cpu["baseline"], 2)}))


if __name__ == "__main__":
    main()
