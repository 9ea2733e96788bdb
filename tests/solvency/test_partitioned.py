"""Partitioned (Dask) build: same format, proofs served from the joined store, a real LocalCluster."""

from __future__ import annotations

import hashlib
import os
import random
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ringfence.errors import ValidationError
from ringfence.solvency.partitioned import build_partitioned, partition_for
from ringfence.solvency.pol import ProofStore, build_liability_tree, verify_proof

SNAP = hashlib.sha256(b"partitioned").digest()
SECRET = b"p" * 32
ASSETS = ["BTC", "ETH"]


def loader(partition: int, *, seed: int, per_partition: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    rng = random.Random(seed * 1000 + partition)
    ids = [f"p{partition}-u{i}" for i in range(per_partition - partition % 2)]  # uneven partitions
    lo = np.array([[rng.choice([0, rng.randrange(10**9)]) for _ in ASSETS] for _ in ids],
                  dtype=np.uint64).reshape(len(ids), len(ASSETS))
    hi = np.zeros_like(lo)
    hi[:1, :1] = 3  # some balances above 2**64
    return ids, hi, lo


def all_accounts(partitions: int, per_partition: int) -> dict[str, list[int]]:
    out = {}
    for p in range(partitions):
        ids, hi, lo = loader(p, seed=1, per_partition=per_partition)
        for i, a in enumerate(ids):
            out[a] = [(int(h) << 64) + int(l) for h, l in zip(hi[i], lo[i])]
    return out


@pytest.mark.parametrize("partitions", [1, 2, 4])
def test_partitioned_store_serves_valid_proofs(tmp_path: Path, partitions: int) -> None:
    load = partial(loader, seed=1, per_partition=6)
    stats: dict = {}
    root_doc = build_partitioned(SNAP, ASSETS, load, partitions, 8, SECRET, tmp_path, stats=stats)
    assert stats["accounts"] == [6 - p % 2 for p in range(partitions)]
    assert len(stats["cpu_seconds"]) == partitions
    accounts = all_accounts(partitions, 6)
    assert root_doc["root"]["leaf_count"] == partitions * 8
    assert root_doc["root"]["sums"] == [str(sum(r[k] for r in accounts.values())) for k in range(2)]
    store = ProofStore(tmp_path)
    assert set(store.account_ids()) == set(accounts)
    for account_id, balances in accounts.items():
        proof = store.proof_for(account_id)
        assert [int(b) for b in proof["balances"]] == balances
        assert verify_proof(proof, root_doc) == (True, "valid"), account_id
    if partitions == 1:  # one partition is exactly the single-process build
        ids, hi, lo = load(0)
        single = build_liability_tree(SNAP, ASSETS, [(a, accounts[a]) for a in ids], SECRET, min_leaf_count=8)
        assert single.root_document() == root_doc


def test_partition_too_full_and_bad_counts(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="more than its 4 leaves"):
        build_partitioned(SNAP, ASSETS, partial(loader, seed=1, per_partition=6), 2, 4, SECRET, tmp_path)
    with pytest.raises(ValidationError, match="power of two"):
        build_partitioned(SNAP, ASSETS, partial(loader, seed=1, per_partition=6), 3, 8, SECRET, tmp_path)


def test_on_a_real_dask_local_cluster(tmp_path: Path) -> None:
    from dask.distributed import Client, LocalCluster

    # LocalCluster sets its workers' variables in this process too (PYTHONHASHSEED, OMP_NUM_THREADS, ...) and
    # leaves them set: put the environment back (tests/conftest.py's _environment_restored fails a test that does not)
    saved = dict(os.environ)
    try:
        _build_on_a_local_cluster(tmp_path, Client, LocalCluster)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _build_on_a_local_cluster(tmp_path: Path, Client: Any, LocalCluster: Any) -> None:  # noqa: N803 - dask's classes
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        load = partial(loader, seed=1, per_partition=6)
        root_doc = build_partitioned(SNAP, ASSETS, load, 4, 8, SECRET, tmp_path, client=client)
    local = build_partitioned(SNAP, ASSETS, load, 4, 8, SECRET, tmp_path / "local")
    assert root_doc == local  # same tree whether built on workers or in-process
    store = ProofStore(tmp_path)
    for account_id in list(store.account_ids())[:10]:
        assert verify_proof(store.proof_for(account_id), root_doc)[0]


def test_one_leaf_partitions(tmp_path: Path) -> None:
    load = partial(loader, seed=2, per_partition=1)  # partitions hold 1, 0, 1, 0 accounts
    root_doc = build_partitioned(SNAP, ASSETS, load, 4, 1, SECRET, tmp_path)
    store = ProofStore(tmp_path)
    ids = list(store.account_ids())
    assert ids == ["p0-u0", "p2-u0"]
    for account_id in ids:
        proof = store.proof_for(account_id)
        assert verify_proof(proof, root_doc) == (True, "valid")
        assert proof["balances"] == [str((int(h) << 64) + int(l)) for h, l in zip(
            load(int(account_id[1]))[1][0], load(int(account_id[1]))[2][0])]


def test_partition_for_routes_by_nonce_and_matches_leaf_order(tmp_path: Path) -> None:
    accounts = {f"acct-{i}": [i, 2 * i] for i in range(200)}
    routed: dict[int, list[str]] = {p: [] for p in range(4)}
    for account_id in accounts:
        routed[partition_for(SECRET, SNAP, account_id, 4)].append(account_id)
    assert all(routed.values())  # every partition gets accounts
    assert partition_for(SECRET, SNAP, "acct-1", 1) == 0

    def load(p: int):
        ids = routed[p]
        lo = np.array([accounts[a] for a in ids], dtype=np.uint64).reshape(len(ids), 2)
        return ids, np.zeros_like(lo), lo

    root_doc = build_partitioned(SNAP, ASSETS, load, 4, 128, SECRET, tmp_path)
    store = ProofStore(tmp_path)
    single = build_liability_tree(SNAP, ASSETS, list(accounts.items()), SECRET)
    order_partitioned = sorted(accounts, key=lambda a: store.proof_for(a)["leaf_index"])
    order_single = sorted(accounts, key=single.position_of)
    assert order_partitioned == order_single  # same relative leaf order as the single build
    assert all(verify_proof(store.proof_for(a), root_doc)[0] for a in list(accounts)[:20])
    with pytest.raises(ValidationError):
        partition_for(SECRET, SNAP, "x", 3)
