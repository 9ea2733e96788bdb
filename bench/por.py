"""Benchmark: proof of liabilities — build the tree and every user's proof for N accounts x 10 assets.

    python bench/por.py [--smoke] [--seed N] [--accounts N] [--jsonl] [--dask]

Workload (BENCHMARKS.md): seeded long-tailed balances, about half of them zero, with the wei-like
asset above 2**64 for the biggest holders. Measures, in one run:
  * `seconds`: tree build + compact proof store on disk (every proof servable by ProofStore),
  * `baseline`: plain hashlib SHA-256 over the same leaf preimages (no tree, no store),
  * with --jsonl: also exporting every proof as JSON text (disk-bound; bytes and seconds recorded),
  * with --dask: the partitioned build on LocalCluster(n_workers=2) at 1M, 2M and 4M accounts
    (smoke: tiny sizes), plus the same partitions built in-process at the smallest size.
Prints one JSON line and appends it to bench/results/por.jsonl.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import numpy as np

from ringfence.solvency.partitioned import build_partitioned
from ringfence.solvency.pol import LEAF_TAG, ProofStore, build_liability_tree_from_arrays, verify_proof
from ringfence.solvency.pol_builder import _sums_be

ASSET_CODES = ["BTC", "ETH", "USDT", "USDC", "SOL", "XRP", "ADA", "DOGE", "TRX", "AAPLX", "EUR", "TSLAX"]
SECRET = hashlib.sha256(b"bench secret").digest()
GOAL_SECONDS = 10


def generate(partition: int, *, seed: int, accounts: int, assets: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Seeded long-tailed balances for one partition (or the whole set when partition == 0)."""
    rng = np.random.default_rng([seed, partition])
    lo = (rng.pareto(1.1, size=(accounts, assets)) * 10_000).astype(np.uint64)  # float-ok: workload shape
    lo[rng.random((accounts, assets)) < 0.5] = 0  # float-ok: about half the balances are zero
    lo[:, 0] //= np.uint64(1000)
    hi = np.zeros_like(lo)
    if assets > 1:  # wei-like asset: whales above 2**64
        hi[:, 1] = (rng.pareto(1.5, size=accounts) / 40).astype(np.uint64)  # float-ok: workload shape
        hi[lo[:, 1] == 0, 1] = 0
    ids = [f"u{partition:04d}{i:09d}" for i in range(accounts)]
    return ids, hi, lo


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def baseline_leaf_hashing(tree, hi: np.ndarray, lo: np.ndarray) -> float:
    """SHA-256 of exactly the leaf preimages the tree hashed, and nothing else."""
    n = hi.shape[1]
    head = LEAF_TAG + tree.snapshot_id
    n_bytes = n.to_bytes(2, "big")
    row = 16 * n
    bal = _sums_be(hi, lo).tobytes()
    nonces = tree.nonces
    ids = [a.encode() for a in tree.account_ids]
    sha = hashlib.sha256
    start = time.perf_counter()
    for i, idb in enumerate(ids):
        sha(b"".join((head, len(idb).to_bytes(2, "big"), idb, nonces[32 * i : 32 * i + 32], n_bytes,
                      bal[row * i : row * i + row]))).digest()
    return time.perf_counter() - start


def run_dask(seed: int, sizes: list[int], per_partition: int, partition_leaf_count: int, assets: int,
             work: Path) -> dict:
    from dask.distributed import Client, LocalCluster

    codes = ASSET_CODES[:assets]
    snap = hashlib.sha256(b"bench dask snapshot").digest()
    runs = []
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        warm = partial(generate, seed=seed, accounts=8, assets=assets)
        build_partitioned(snap, codes, warm, 2, 8, SECRET, work / "warm", client=client)
        for size in sizes:
            partitions = size // per_partition
            loader = partial(generate, seed=seed, accounts=per_partition, assets=assets)
            out = work / f"dask-{size}"
            start = time.perf_counter()
            stats: dict = {}
            root = build_partitioned(snap, codes, loader, partitions, partition_leaf_count, SECRET, out,
                                     client=client, stats=stats)
            seconds = time.perf_counter() - start
            cpu = sum(stats["cpu_seconds"])
            store = ProofStore(out)
            sample = random.Random(seed).sample(range(partitions * per_partition), 20)
            ok = all(verify_proof(store.proof_for(f"u{i // per_partition:04d}{i % per_partition:09d}"), root)[0]
                     for i in sample)
            runs.append({"accounts": size, "partitions": partitions, "seconds": round(seconds, 3),
                         "accounts_per_s": int(size / seconds), "sample_proofs_valid": ok,
                         "worker_cpu_seconds": round(cpu, 3),
                         "worker_cpu_seconds_per_million_accounts": round(cpu * 1_000_000 / size, 3)})
            shutil.rmtree(out)
    # In-process (no Dask) on the same partitions at the smallest size: the 1-process reference.
    size = sizes[0]
    loader = partial(generate, seed=seed, accounts=per_partition, assets=assets)
    start = time.perf_counter()
    build_partitioned(snap, codes, loader, size // per_partition, partition_leaf_count, SECRET, work / "inproc")
    inproc = time.perf_counter() - start
    shutil.rmtree(work / "inproc")
    gen_start = time.perf_counter()
    generate(0, seed=seed, accounts=per_partition, assets=assets)
    gen = time.perf_counter() - gen_start
    base = runs[0]["seconds"]
    return {
        "workers": 2, "partition_leaf_count": partition_leaf_count, "accounts_per_partition": per_partition,
        "note": "times include generating each partition's balances on its worker",
        "generate_seconds_per_partition": round(gen, 3),
        "runs": runs,
        "time_ratio_vs_smallest": [round(r["seconds"] / base, 2) for r in runs],
        "in_process_seconds_at_smallest": round(inproc, 3),
        "speedup_vs_in_process_at_smallest": round(inproc / base, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds, for CI")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--accounts", type=int, default=None)
    parser.add_argument("--assets", type=int, default=10)
    parser.add_argument("--jsonl", action="store_true", help="also export every proof as JSON lines")
    parser.add_argument("--dask", action="store_true", help="also run the Dask scaling series")
    parser.add_argument("--work-dir", default=None, help="scratch directory (default: a temp dir, removed)")
    parser.add_argument("--no-record", action="store_true", help="do not append to bench/results/por.jsonl")
    args = parser.parse_args()
    accounts = args.accounts or (20_000 if args.smoke else 1_000_000)
    print(f"seed {args.seed}", file=sys.stderr)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="ringfence-bench-por-"))
    work.mkdir(parents=True, exist_ok=True)
    load_at_start = round(os.getloadavg()[0], 2)  # float-ok: not money
    try:
        ids, hi, lo = generate(0, seed=args.seed, accounts=accounts, assets=args.assets)
        codes = ASSET_CODES[: args.assets]
        snap = hashlib.sha256(b"bench snapshot %d" % args.seed).digest()
        start = time.perf_counter()
        tree = build_liability_tree_from_arrays(snap, codes, ids, hi, lo, SECRET)
        build_s = time.perf_counter() - start
        start = time.perf_counter()
        tree.write_store(work / "store")
        store_s = time.perf_counter() - start
        seconds = build_s + store_s
        root = tree.root_document()
        store = ProofStore(work / "store")
        sample = random.Random(args.seed).sample(ids, min(50, len(ids)))
        sample_ok = all(verify_proof(store.proof_for(a), root)[0] for a in sample)
        baseline_s = baseline_leaf_hashing(tree, hi, lo)
        result = {
            "bench": "por",
            "at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                  cwd=Path(__file__).parent).stdout.strip(),
            "seed": args.seed,
            "machine": f"{os.cpu_count()} cores, Python {platform.python_version()}",
            "load_avg_1m_at_start": load_at_start,  # shared machine: other developers' jobs
            "smoke": args.smoke,
            "workload": {"accounts": accounts, "assets": args.assets, "leaf_count": tree.leaf_count,
                         "zero_balance_share_percent": int(100 * int((lo == 0).sum()) // lo.size),
                         "balances_above_2_64": int((hi != 0).sum())},
            "seconds": round(seconds, 3),
            "build_seconds": round(build_s, 3),
            "store_seconds": round(store_s, 3),
            "accounts_per_s": int(accounts / seconds),
            "store_bytes": dir_bytes(work / "store"),
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "sample_proofs_valid": sample_ok,
            "baseline": {"name": "hashlib sha256 of the same leaf preimages only (no tree, no proofs)",
                         "seconds": round(baseline_s, 3)},
            "ratio_to_baseline": round(seconds / baseline_s, 2),
            "goal": {"seconds": GOAL_SECONDS, "accounts": 1_000_000, "assets": 10},
        }
        del store
        if args.jsonl:
            start = time.perf_counter()
            count = tree.write_proof_lines(work / "jsonl")
            jsonl_s = time.perf_counter() - start
            size = dir_bytes(work / "jsonl")
            shutil.rmtree(work / "jsonl")
            blob = os.urandom(1 << 22)
            start = time.perf_counter()
            with open(work / "raw.bin", "wb") as fh:
                for _ in range(max(1, size >> 22)):
                    fh.write(blob)
                fh.flush()
                os.fsync(fh.fileno())
            raw_s = time.perf_counter() - start
            os.unlink(work / "raw.bin")
            result["jsonl_all_proofs"] = {"proofs": count, "seconds": round(jsonl_s, 3), "bytes": size,
                                          "raw_disk_write_same_bytes_seconds": round(raw_s, 3)}
        del tree
        if args.dask:
            if args.smoke:
                result["dask"] = run_dask(args.seed, [4_000, 8_000, 16_000], 1_000, 1 << 10, args.assets, work)
            else:
                result["dask"] = run_dask(args.seed, [1_000_000, 2_000_000, 4_000_000], 250_000, 1 << 18,
                                          args.assets, work)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    result["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)  # float-ok: not money
    line = json.dumps(result)
    print(line)
    if not args.no_record:
        results = Path(__file__).parent / "results" / "por.jsonl"
        results.parent.mkdir(parents=True, exist_ok=True)
        with open(results, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")


if __name__ == "__main__":
    main()
