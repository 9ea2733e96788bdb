"""CPU per batch of the ledger's incremental digest (`LedgerDigest.update`): this tree's against
another version of ledger/digest.py, in one process, on the same ledger and the same batches.

Usage: python bench/digest_ab.py --baseline OTHER/src/ringfence/ledger/digest.py [--batches N]
                                 [--requests N] [--two-account] [--interpreted]

bench/replicate.py's latency workload without the node: 10,000 funded accounts, then batches of
`--requests` requests of 10 transfers (many-account stream: ~2 changed accounts a transfer). Each
version digests a ledger of its own (two engines, the same commands): a digest keeps its state on
the ledger's account records (`Account.digest_key`, ...), so two on one ledger would find nothing
left to fold for the second (session 17 on; the bench failed on main against itself). After each
batch applied to both engines, each digest folds in its own ledger's dirty set, alternating which
goes first, timed with the thread's CPU clock; they must agree (checked every batch). On a shared
machine the wall clock and even a run's CPU time move with the load; the ratio of two versions
measured side by side moves much less. Prints one JSON line; writes nothing under bench/results.
The baseline runs on this tree's ledger, so it must be a digest.py for the same Account record (a
version that changes the record needs two processes: bench/digest.py under each tree's PYTHONPATH).
(The baseline is interpreted; this tree's is compiled when the build is in use, `native status`,
unless `--interpreted`: then this tree's digest.py is loaded from its source too, and the two
algorithms are compared, not the compiler.)

What no other bench measures: the ledger digest alone, per many-account batch, two versions in one
process. bench/digest.py times the whole `Engine.state_digest` on the demo engine (its transfer batch
moves two accounts); bench/replicate.py reports the digest's CPU inside a replicated node.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ledger import funding, setup_commands, transfer_stream  # noqa: E402

import ringfence  # noqa: E402
from ringfence import native  # noqa: E402
from ringfence.app import new_engine  # noqa: E402
from ringfence.ledger import digest as this_tree_digest  # noqa: E402

ACCOUNTS = 10_000


def _from_source(path: str, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", required=True, help="another version's ledger/digest.py")
    parser.add_argument("--batches", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=9, help="requests of 10 transfers a batch (default 9)")
    parser.add_argument("--two-account", action="store_true", help="every transfer between the same two accounts")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--interpreted", action="store_true", help="this tree's digest.py from its source too (not compiled)")
    args = parser.parse_args()
    baseline = _from_source(args.baseline, "ringfence.ledger.digest_baseline")
    source = Path(ringfence.__file__).resolve().parent / "ledger" / "digest.py"  # (a compiled module's __file__ is odd)
    this_tree = _from_source(str(source), "ringfence.ledger.digest_this_tree") if args.interpreted else this_tree_digest

    engines = {"baseline": new_engine(), "this_tree": new_engine()}  # a ledger for each version (see above)
    seq = 0

    def run(cmds: list) -> None:  # type: ignore[type-arg]
        nonlocal seq
        for c in cmds:
            seq += 1
            for engine in engines.values():
                engine.apply(c, seq, seq * 1000)

    run(setup_commands(ACCOUNTS))
    ledgers = {name: engine.ledger for name, engine in engines.items()}
    led = ledgers["this_tree"]
    ids = [led.get(f"u{i}", "USDT").id for i in range(ACCOUNTS)]
    assert ids == [ledgers["baseline"].get(f"u{i}", "USDT").id for i in range(ACCOUNTS)]
    cmds, next_id = funding(ids[0], led.world("USDT").id, ACCOUNTS, 1)
    run(cmds)
    for ledger in ledgers.values():
        ledger.digest()  # the ledger marks what changes from here on
    digests = {"baseline": baseline.LedgerDigest(ledgers["baseline"]), "this_tree": this_tree.LedgerDigest(led)}
    cpu = {name: 0.0 for name in digests}  # float-ok: seconds
    cmds, _ = transfer_stream(random.Random(args.seed), ids, args.batches * args.requests * 10, next_id,
                              args.two_account, 10)
    for n, start in enumerate(range(0, len(cmds), args.requests)):
        run(cmds[start : start + args.requests])
        out = {}
        for name in (list(digests) if n % 2 else list(digests)[::-1]):
            ledger = ledgers[name]
            dirty, ledger._dirty = ledger._dirty, set()
            started = time.thread_time()
            out[name] = digests[name].update(ledger, dirty)
            cpu[name] += time.thread_time() - started
        assert out["baseline"] == out["this_tree"], f"the two versions' digests differ after batch {n}"
    assert out["this_tree"] == this_tree.full_digest(led), "the incremental digest differs from the full one"
    batches = len(cmds) // args.requests
    implementation = "interpreted (--interpreted)" if args.interpreted else native.status()["implementation"]
    print(json.dumps({"bench": "digest_ab", "baseline": args.baseline, "implementation": implementation,
                      "batches": batches, "transfers_per_batch": args.requests * 10, "two_account": args.two_account,
                      **{f"{name}_us_per_batch": round(s * 1e6 / batches, 1) for name, s in cpu.items()},
                      "ratio": round(cpu["this_tree"] / cpu["baseline"], 2)}))


if __name__ == "__main__":
    main()
