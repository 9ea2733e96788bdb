"""Proof of liabilities, the store: where built proofs are kept and how one user's proof is read back.

`write_store_meta` and the `LiabilityTree.write_store` layout (see `ProofStore`) are written by the
builder (in one process, or partition by partition with Dask); `ProofStore` serves any user's proof
reading only that user's log2(leaf_count) sibling records. Standard library only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from ..errors import ValidationError
from .pol_format import VERSION

__all__ = ["STORE_FORMAT", "write_store_meta", "ProofStore"]

STORE_FORMAT = "ringfence-por-store-v1"


def write_store_meta(out: Path, snapshot_id: bytes, assets: Sequence[str], leaf_count: int,
                     partition_leaf_count: int, partitions: int, root: Mapping[str, Any]) -> None:
    meta = {"format": STORE_FORMAT, "version": VERSION, "snapshot_id": snapshot_id.hex(), "assets": list(assets),
            "leaf_count": leaf_count, "partition_leaf_count": partition_leaf_count, "partitions": partitions,
            "record_bytes": 32 + 16 * len(assets), "root": dict(root)}
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------------
# Reading published proofs back (what the API calls)
# --------------------------------------------------------------------------------------------


class ProofStore:
    """Serves any user's proof from the compact store written by `write_store` (or by the Dask
    partitioned build), reading only that user's log2(leaf_count) sibling records.

    Layout of the store directory (the proofs contain nonces: keep it private, never publish it):
      meta.json                 version, snapshot id, assets, leaf_count, partition_leaf_count,
                                partitions, record_bytes, root
      top.bin                   records of the levels from the partition roots up to the root
      part-NNNNN.tree           records of partition NNNNN's levels below its root, level 0 first
      part-NNNNN.ids            the partition's account ids, JSON-encoded, one per line
      part-NNNNN.acc            per account (same order): u64be global leaf index, 32-byte nonce
    A record is a node's 32-byte hash followed by its sums as u128 big-endian.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        try:
            self.meta = json.loads((self.directory / "meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValidationError(f"not a proof store: {exc}", field="store") from None
        if self.meta.get("format") != STORE_FORMAT:
            raise ValidationError(f"not a {STORE_FORMAT} directory", field="store")
        self._index: dict[str, tuple[int, int]] | None = None

    def _load(self) -> dict[str, tuple[int, int]]:
        if self._index is None:
            index: dict[str, tuple[int, int]] = {}
            for part in range(self.meta["partitions"]):
                path = self.directory / f"part-{part:05d}.ids"
                if not path.exists():
                    continue
                for row, line in enumerate(path.read_bytes().splitlines()):
                    index[json.loads(line)] = (part, row)
            self._index = index
        return self._index

    def account_ids(self) -> Iterator[str]:
        return iter(self._load())

    def proof_for(self, account_id: str) -> dict[str, Any]:
        """The proof of `account_id` in spec field order; `KeyError` if absent.

        Give it only to that user (it carries their nonce): the API must call this with the
        signed-in user's own account id, never one taken from the request.
        """
        part, row = self._load()[account_id]
        meta = self.meta
        n = len(meta["assets"])
        record = meta["record_bytes"]
        plc = meta["partition_leaf_count"]
        with open(self.directory / f"part-{part:05d}.acc", "rb") as fh:
            fh.seek(40 * row)
            acc = fh.read(40)
        leaf_index = int.from_bytes(acc[:8], "big")
        local = leaf_index % plc

        def parse(rec: bytes) -> tuple[str, list[str]]:
            return rec[:32].hex(), [str(int.from_bytes(rec[32 + 16 * k : 48 + 16 * k], "big")) for k in range(n)]

        path: list[dict[str, Any]] = []
        with open(self.directory / f"part-{part:05d}.tree", "rb") as fh:
            if plc == 1:  # a one-leaf partition: the leaf is the partition root, kept in top.bin
                with open(self.directory / "top.bin", "rb") as top:
                    top.seek(part * record)
                    _, balances = parse(top.read(record))
            else:
                fh.seek(local * record)
                _, balances = parse(fh.read(record))
            offset, size = 0, plc
            while size > 1:
                fh.seek((offset + ((local >> len(path)) ^ 1)) * record)
                h, sums = parse(fh.read(record))
                path.append({"hash": h, "sums": sums})
                offset += size
                size //= 2
        with open(self.directory / "top.bin", "rb") as fh:
            offset, size, j = 0, meta["partitions"], 0
            while size > 1:
                fh.seek((offset + ((part >> j) ^ 1)) * record)
                h, sums = parse(fh.read(record))
                path.append({"hash": h, "sums": sums})
                offset += size
                size //= 2
                j += 1
        return {"version": VERSION, "snapshot_id": meta["snapshot_id"], "assets": meta["assets"],
                "account_id": account_id, "nonce": acc[8:].hex(), "balances": balances,
                "leaf_index": leaf_index, "path": path, "root": meta["root"]}
