"""How long a promoted standby takes to open its exchange: replaying the journal into the API read
models (what `serve --standby` did at promotion before session 6) against adopting the engine and
read models the standby kept warm while it followed (`Exchange.open(warm=...)`), same journal, same run.

Usage: python bench/promotion.py [--smoke] [--seed N]

The journal: a ledger of accounts and single-transfer requests (bench/ledger.py's workload), written
by a real node with fsync. The cold open is `Exchange(data).open()` (replay from genesis: the read
models need the whole history); the warm one first has a follower-style replay feed `ReadModels`
(the standby's work while following, not timed), then times `Exchange(data).open(warm)`. The
load average is recorded: the machine is shared. One JSON line, in bench/results/promotion.jsonl.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit  # noqa: E402
from ledger import prepared_node, transfer_stream  # noqa: E402

from ringfence.api.service import Exchange, ReadModels, WarmStart  # noqa: E402
from ringfence.app import replay_journal  # noqa: E402
from ringfence.journal.journal import DataDirLock  # noqa: E402


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (CI)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(f"seed={args.seed}", file=sys.stderr)
    accounts, transfers, per_request = (200, 2_000, 10) if args.smoke else (10_000, 200_000, 10)
    root = Path(tempfile.mkdtemp(prefix="rf-bench-promotion-"))
    node, ids, next_id = prepared_node(root / "engine", accounts)
    cmds, _ = transfer_stream(random.Random(args.seed), ids, transfers, next_id, False, per_request)
    for i in range(0, len(cmds), 50):  # batches of 50 requests: a journal of many records
        node.execute_many(cmds[i : i + 50])
    last_seq, records = node.last_seq, node.batches_committed
    node.close()
    load_before = _load()
    started = time.perf_counter()
    cold = Exchange(root)
    cold.open()
    cold_s = time.perf_counter() - started
    assert cold.last_seq == last_seq
    cold_hash = cold.read(lambda e: e.state_hash())
    cold.close()
    # the standby's side, before the promotion (not timed): replay once, feeding the read models
    models = ReadModels()
    lock = DataDirLock(root / "engine", "bench standby")
    engine, _, scan = replay_journal(root / "engine", use_snapshots=False, on_batch=models.feed)
    position = (scan.last_seq + 1, scan.last_hash, scan.tail_segment, scan.tail_size)
    started = time.perf_counter()
    warm = Exchange(root)
    warm.open(WarmStart(engine, position, lock, models))
    warm_s = time.perf_counter() - started
    assert warm.last_seq == last_seq and warm.read(lambda e: e.state_hash()) == cold_hash
    adopted = warm.node.engine is engine  # the warm open replayed nothing: it serves the standby's engine
    warm.close()
    emit("promotion", {"seed": args.seed, "workload": {"accounts": accounts, "transfers": transfers,
                                                        "journal_seq": last_seq, "journal_records": records},
                       "replay_open_ms": round(cold_s * 1000, 1), "warm_open_ms": round(warm_s * 1000, 2),
                       "warm_open_adopted_the_standby_engine": adopted,
                       "speedup": round(cold_s / max(warm_s, 1e-6)), "load_average": [load_before, _load()]},
         smoke=args.smoke)


if __name__ == "__main__":
    main()
