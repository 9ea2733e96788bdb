"""Partitioned proof-of-liabilities build: one subtree per partition, in parallel on Dask.

Job: for account sets too big for one process (10M+), split the accounts into P partitions (P a
power of two), build each partition's subtree of exactly `partition_leaf_count` leaves on a worker
(the same `build_liability_tree_from_arrays` code as the single build), write each partition's part
of the proof store from the worker, and join the P partition roots into the top of the tree on the
driver. Only 32 bytes plus the sums travel back per partition; balances are loaded on the worker by
`loader(partition)` (the ledger snapshot reader, partitioned by account range, in production).

Invariants: every partition has the same leaf count, so the result is one valid `ringfence-por-v1`
tree with leaf_count = P * partition_leaf_count, and `ProofStore` serves proofs from it like any
other store; padding nonces are numbered globally (no two padding leaves share a nonce); the root
sums equal the sum of the partition totals (checked).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import ValidationError
from .pol_builder import _parent_level, _words, build_liability_tree_from_arrays
from .pol_format import VERSION, derive_nonce
from .pol_store import write_store_meta

__all__ = ["PartitionLoader", "partition_for", "build_partition", "build_partitioned"]

#: loader(partition) -> (account_ids, balances_hi, balances_lo), arrays of shape (accounts, assets)
PartitionLoader = Callable[[int], tuple[list[str], np.ndarray, np.ndarray]]
MAX_PARTITIONS = 1 << 16


def partition_for(secret: bytes, snapshot_id: bytes, account_id: str, partitions: int) -> int:
    """Which partition an account belongs to: the top bits of its nonce.

    Loaders should route accounts with this rather than by account-id range: a proof's leaf index
    reveals its partition, and the nonce's top bits say nothing about the account. Within a
    partition leaves are ordered by nonce too, so the layout matches the single-process build's.
    """
    if partitions < 1 or partitions & (partitions - 1):
        raise ValidationError("partitions must be a power of two", field="partitions")
    bits = partitions.bit_length() - 1
    if bits == 0:
        return 0
    return int.from_bytes(derive_nonce(secret, snapshot_id, account_id)[:8], "big") >> (64 - bits)


def build_partition(loader: PartitionLoader, partition: int, snapshot_id: bytes, assets: Sequence[str],
                    secret: bytes, partition_leaf_count: int, out_dir: str) -> tuple[bytes, bytes, int, float]:
    """Worker task: build one partition's subtree, write its store files, return its root hash,
    root sums, account count and the CPU seconds the task used (for capacity planning)."""
    cpu_start = time.process_time()
    ids, hi, lo = loader(partition)
    if len(ids) > partition_leaf_count:
        raise ValidationError(
            f"partition {partition} holds {len(ids)} accounts, more than its {partition_leaf_count} leaves",
            field="partition_leaf_count",
        )
    tree = build_liability_tree_from_arrays(
        snapshot_id, assets, ids, hi, lo, secret, min_leaf_count=partition_leaf_count,
        padding_offset=partition * partition_leaf_count,
    )
    assert tree.leaf_count == partition_leaf_count
    tree.write_partition(Path(out_dir), partition)
    return (tree.root_hash, tree.level_records[-1][0, 32:].tobytes(), tree.account_count,
            time.process_time() - cpu_start)  # float-ok: seconds, not money


def build_partitioned(snapshot_id: bytes, assets: Sequence[str], loader: PartitionLoader, partitions: int,
                      partition_leaf_count: int, secret: bytes, out_dir: str | Path,
                      client: Any = None, stats: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build all partitions (on `client`, a dask.distributed Client, or in-process if None),
    join them, write `top.bin` and `meta.json`, and return the public root document.
    `stats`, if given, receives the per-partition account counts and worker CPU seconds."""
    if partitions < 1 or partitions & (partitions - 1) or partitions > MAX_PARTITIONS:
        raise ValidationError(f"partitions must be a power of two up to {MAX_PARTITIONS}", field="partitions")
    if partition_leaf_count < 1 or partition_leaf_count & (partition_leaf_count - 1):
        raise ValidationError("partition_leaf_count must be a power of two", field="partition_leaf_count")
    out = Path(out_dir)
    out.mkdir(mode=0o700, parents=True, exist_ok=True)  # holds every user's nonce: private
    args = (snapshot_id, list(assets), secret, partition_leaf_count, str(out))
    if client is None:
        results = [build_partition(loader, p, *args) for p in range(partitions)]
    else:
        # pure=False: every call gets a fresh task key, so a rebuild never reuses a cached result.
        futures = [client.submit(build_partition, loader, p, *args, pure=False) for p in range(partitions)]
        results = client.gather(futures)
    n = len(assets)
    record = np.frombuffer(b"".join(r[0] + r[1] for r in results), dtype=np.uint8).reshape(partitions, 32 + 16 * n)
    hi, lo = _words(record[:, 32:])
    levels = [record]
    level = 0
    while levels[-1].shape[0] > 1:
        parent, hi, lo = _parent_level(levels[-1], hi, lo, level)
        levels.append(parent)
        level += 1
    (out / "top.bin").write_bytes(b"".join(lv.tobytes() for lv in levels))
    root_row = levels[-1][0].tobytes()
    root_sums = [int.from_bytes(root_row[32 + 16 * k : 48 + 16 * k], "big") for k in range(n)]
    expected = [0] * n
    if stats is not None:
        stats["accounts"] = [r[2] for r in results]
        stats["cpu_seconds"] = [r[3] for r in results]
    for _, part_sums, _, _ in results:
        for k in range(n):
            expected[k] += int.from_bytes(part_sums[16 * k : 16 * k + 16], "big")
    assert root_sums == expected, "root sums differ from the partition totals"
    root = {"hash": root_row[:32].hex(), "sums": [str(v) for v in root_sums],
            "leaf_count": partitions * partition_leaf_count}
    write_store_meta(out, snapshot_id, assets, root["leaf_count"], partition_leaf_count, partitions, root)
    doc = {"version": VERSION, "snapshot_id": snapshot_id.hex(), "assets": list(assets), "root": root}
    (out / "root.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return doc

