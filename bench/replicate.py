"""Durable-and-replicated ledger transfers (NATS JetStream) against the local-only baseline, same run.

Usage: python bench/replicate.py [--smoke] [--seed N] [--nats nats://127.0.0.1:4222]
   or: python bench/ledger.py --replicate nats://127.0.0.1:4222 [--smoke] [--seed N]

The same workloads as bench/ledger.py (its functions are reused), on real files with real fsync:
1. closed-loop throughput (requests of 8,190 transfers, many-account stream): local-only, then
   replicated (every batch published to a JetStream stream and acknowledged only after the stream's
   ack) with the state hash in every batch and in every 64th;
2. open-loop acknowledgement latency at 50,000 transfers/s offered (requests of 10 transfers),
   local-only and replicated: the state hash of every 64th and every 1024th batch, computed on the
   sequencer thread or off it (state_hash_later=1: a forked child hashes it, a later batch carries
   it), and chain only (state_hash_every=10^6); latency from each request's scheduled send time.
Goal from issue 21: replicated >= 0.5x local throughput, p99 <= 5 ms at 50,000 transfers/s.
Each run uses its own stream, deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import secrets
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, percentile_us  # noqa: E402
from ledger import BATCH, SWITCH_INTERVAL_US, closed_loop, open_loop, prepared_node, transfer_stream  # noqa: E402

from ringfence.replication import Replicator, parse_target  # noqa: E402


def _delete(nats_url: str, stream: str) -> None:
    async def go() -> None:
        import nats
        from nats.js.errors import NotFoundError

        nc = await nats.connect(nats_url)
        try:
            for name in (stream, f"KV_{stream}-leader"):
                try:
                    await nc.jetstream().delete_stream(name)
                except NotFoundError:
                    pass  # never created
        finally:
            await nc.close()

    asyncio.run(go())


def _replicated(node, nats_url: str, every: int, later: bool = False) -> tuple[Replicator, str]:  # type: ignore[no-untyped-def]
    stream = "RFBENCH" + secrets.token_hex(4).upper()
    replicator = Replicator(parse_target(f"{nats_url}/{stream}?state_hash_every={every}&state_hash_later={int(later)}"), "bench")
    replicator.attach(node)  # publishes the setup history, then hooks every batch
    return replicator, stream


def _hash_cost(replicator: Replicator | None) -> dict:
    """How long the sequencer thread spent per state hash: hashing it inline, or forking the hasher."""
    if replicator is None or not replicator.hashes:
        return {}
    return {"state_hashes": replicator.hashes,
            "sequencer_ms_per_state_hash": round(replicator.hash_seconds * 1000 / replicator.hashes, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds (CI)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--nats", default="nats://127.0.0.1:4222")
    args = parser.parse_args()
    run(args.nats, seed=args.seed, smoke=args.smoke)


def run(nats_url: str, *, seed: int = 1, smoke: bool = False) -> None:
    print(f"seed={seed}", file=sys.stderr)
    sys.setswitchinterval(SWITCH_INTERVAL_US / 1e6)
    rng = random.Random(seed)
    accounts = 200 if smoke else 10_000
    transfers = 20_000 if smoke else 500_000
    offered, per_request = 50_000, 10
    latency_seconds = 0.25 if smoke else 3.0
    root = Path(tempfile.mkdtemp(prefix="rf-bench-replicate-"))
    result: dict = {"seed": seed, "workload": {"accounts": accounts, "transfers": transfers, "request_size": BATCH}}
    throughput: dict = {}
    for label, every, later in (("local", 0, False), ("replicated_hash_every_batch", 1, False),
                                ("replicated_hash_later_every_batch", 1, True), ("replicated_hash_every_64", 64, False)):
        node, ids, next_id = prepared_node(root / f"tp-{label}", accounts)
        replicator, stream = _replicated(node, nats_url, every, later) if every else (None, "")
        cmds, _ = transfer_stream(rng, ids, transfers, next_id, False, BATCH)
        try:
            seconds = closed_loop(node, cmds)
            throughput[label] = {"throughput_per_s": int(transfers / seconds), "journal_records": node.batches_committed,
                                 "failed": repr(node.failed) if node.failed else None, **_hash_cost(replicator)}
        finally:
            node.close()
            if replicator is not None:
                replicator.close()
                _delete(nats_url, stream)
    local = throughput["local"]["throughput_per_s"]
    for label in ("replicated_hash_every_batch", "replicated_hash_later_every_batch", "replicated_hash_every_64"):
        throughput[label]["vs_local"] = round(throughput[label]["throughput_per_s"] / local, 2)
    result["throughput"] = throughput
    latency: dict = {}
    for label, every, later in (("local", 0, False), ("replicated_hash_every_64", 64, False),
                                ("replicated_hash_later_every_64", 64, True), ("replicated_hash_every_1024", 1024, False),
                                ("replicated_hash_later_every_1024", 1024, True), ("replicated_chain_only", 1_000_000, False)):
        node, ids, next_id = prepared_node(root / f"lat-{label}", accounts)
        replicator, stream = _replicated(node, nats_url, every, later) if every else (None, "")
        n = int(offered * latency_seconds)
        cmds, _ = transfer_stream(rng, ids, n, next_id, False, per_request)
        try:
            samples, errors, seconds = open_loop(node, cmds, per_request, offered)
            latency[label] = {"offered_per_s": offered, "achieved_per_s": int(n / seconds),
                              "p50_us": percentile_us(samples, 50), "p99_us": percentile_us(samples, 99),
                              "max_us": percentile_us(samples, 100), "errors": len(errors),
                              "journal_records": node.batches_committed, **_hash_cost(replicator)}
        finally:
            node.close()
            if replicator is not None:
                replicator.close()
                _delete(nats_url, stream)
    result["latency"] = latency
    result["goal"] = {"replicated_vs_local_min": 0.5, "p99_us_max": 5000, "offered_per_s": offered}
    emit("replicate", result, smoke=smoke)


if __name__ == "__main__":
    main()
