"""Proof of liabilities, the builder: one snapshot of what the exchange owes into a Merkle-sum tree.

Job: turn one snapshot of what the exchange owes each user into (a) a published root that commits
to every user's balances and to the per-asset totals, and (b) one inclusion proof per user that the
user can check offline (`pol_verifier`). The format is in `pol_format` (docs/por.md); padding
leaves have zero balances, an empty account id and a nonce nobody outside the exchange can guess;
the leaf count is a power of two and leaves are shuffled per snapshot.

Invariants: the root sums equal the column totals of the input balances (asserted after every
build); every proof produced verifies with `verify_proof`; nothing here reads a clock. Randomness
comes only from the server secret (HMAC), so the same secret, snapshot and balances give the same
tree byte for byte — which is what makes the published test vectors reproducible.

Input interface (what the ledger snapshot feeds in): an iterable of `(account_id, balances)` where
`balances[k]` is what the exchange owes that user in `assets[k]`, in minor units, already summed
over all of the user's accounts and segments (available + held + margin equity) and floored at
zero. Debts are reported separately and never reduce liabilities. See `build_liability_tree`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from ..errors import ConfigError, ValidationError
from .pol_format import (
    LEAF_TAG,
    MAX_ACCOUNT_ID_BYTES,
    MAX_DEPTH,
    NODE_TAG,
    NONCE_TAG,
    PADDING_TAG,
    U64_MASK,
    U128_LIMIT,
    VERSION,
    _check_assets,
    _check_snapshot_id,
    _PLAIN_ID,
)
from .pol_store import write_store_meta

__all__ = [
    "DEV_SECRET",
    "MAX_ACCOUNTS_PER_BUILD",
    "load_secret",
    "LiabilityTree",
    "build_liability_tree",
    "build_liability_tree_from_arrays",
]

#: Largest number of accounts one in-memory build accepts (partition bigger sets with Dask).
MAX_ACCOUNTS_PER_BUILD = 1 << 28
#: The well-known development secret. `load_secret` refuses it outside dev mode.
DEV_SECRET = b"ringfence-dev-por-secret-do-not-use-in-production!"
MIN_SECRET_BYTES = 32

ProgressFn = Callable[[str, int, int], None]


# --------------------------------------------------------------------------------------------
# The server secret
# --------------------------------------------------------------------------------------------


def load_secret(value: str | bytes | None, *, dev_mode: bool) -> bytes:
    """Return the server secret that derives nonces and the shuffle, or refuse a weak one.

    Outside dev mode a missing secret, the well-known dev secret or one shorter than 32 bytes is a
    `ConfigError`. In dev mode a missing secret falls back to `DEV_SECRET`.
    """
    if value is None or value == "" or value == b"":
        if dev_mode:
            return DEV_SECRET
        raise ConfigError(
            "no proof-of-reserves secret configured; set RINGFENCE_POR_SECRET to 32+ random bytes "
            "(e.g. `openssl rand -hex 32`), or for a demo pass --dev (or set RINGFENCE_MODE=dev)",
            field="RINGFENCE_POR_SECRET",
        )
    secret = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    if not dev_mode and hmac.compare_digest(secret, DEV_SECRET):
        raise ConfigError(
            "the development secret must not be used outside dev mode", field="RINGFENCE_POR_SECRET"
        )
    if not dev_mode and len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"the secret must be at least {MIN_SECRET_BYTES} bytes", field="RINGFENCE_POR_SECRET"
        )
    return secret



# --------------------------------------------------------------------------------------------
# Building the tree
# --------------------------------------------------------------------------------------------


@dataclass
class LiabilityTree:
    """A built Merkle-sum tree for one snapshot. Levels are kept so that any proof can be cut."""

    snapshot_id: bytes
    assets: tuple[str, ...]
    account_ids: list[str]
    nonces: bytes  # 32 bytes per account, in input order
    position_of_entry: np.ndarray  # entry index -> leaf position (entries >= account_count are padding)
    entry_at_position: np.ndarray
    #: per level (0 = leaves in position order, last = root): (m, 32 + 16n) uint8 records, each a
    #: node's hash followed by its sums as u128 big-endian — exactly the bytes a parent hashes.
    level_records: list[np.ndarray]
    _index: dict[str, int] | None = field(default=None, repr=False)
    _fragments: list[list[bytes]] | None = field(default=None, repr=False)
    _sums_text: list[bytes] | None = field(default=None, repr=False)

    @property
    def level_hashes(self) -> list[np.ndarray]:
        return [rec[:, :32] for rec in self.level_records]

    @property
    def level_sums(self) -> list[np.ndarray]:
        return [rec[:, 32:] for rec in self.level_records]

    @property
    def leaf_count(self) -> int:
        return int(self.level_records[0].shape[0])

    @property
    def depth(self) -> int:
        return len(self.level_records) - 1

    @property
    def account_count(self) -> int:
        return len(self.account_ids)

    @property
    def root_hash(self) -> bytes:
        return self.level_records[-1][0, :32].tobytes()

    @property
    def root_sums(self) -> tuple[int, ...]:
        return self._sums_at(self.depth, 0)

    def totals(self) -> dict[str, int]:
        """Liabilities per asset (the root sums), in minor units."""
        return dict(zip(self.assets, self.root_sums))

    def _sums_at(self, level: int, j: int) -> tuple[int, ...]:
        row = self.level_records[level][j, 32:].tobytes()
        return tuple(int.from_bytes(row[16 * k : 16 * k + 16], "big") for k in range(len(self.assets)))

    def root_document(self) -> dict[str, Any]:
        """The public root file: {"version", "snapshot_id", "assets", "root"}."""
        return {
            "version": VERSION,
            "snapshot_id": self.snapshot_id.hex(),
            "assets": list(self.assets),
            "root": {
                "hash": self.root_hash.hex(),
                "sums": [str(s) for s in self.root_sums],
                "leaf_count": self.leaf_count,
            },
        }

    # ---- proofs -----------------------------------------------------------------------------

    def position_of(self, account_id: str) -> int:
        if self._index is None:
            self._index = {a: i for i, a in enumerate(self.account_ids)}
        entry = self._index.get(account_id)
        if entry is None:
            raise KeyError(account_id)
        return int(self.position_of_entry[entry])

    def proof_for(self, account_id: str) -> dict[str, Any]:
        """The inclusion proof of one account (for the API: call only for the signed-in user).

        Raises `KeyError` if the account is not in this snapshot. The proof carries the user's
        nonce: hand it to that user only.
        """
        entry = self._index_entry(account_id)
        position = int(self.position_of_entry[entry])
        n = len(self.assets)

        def parse(rec: np.ndarray) -> tuple[str, list[str]]:
            raw = rec.tobytes()
            return raw[:32].hex(), [str(int.from_bytes(raw[32 + 16 * k : 48 + 16 * k], "big")) for k in range(n)]

        path = []
        for level in range(self.depth):
            h, sums = parse(self.level_records[level][(position >> level) ^ 1])
            path.append({"hash": h, "sums": sums})
        return {"version": VERSION, "snapshot_id": self.snapshot_id.hex(), "assets": list(self.assets),
                "account_id": account_id, "nonce": self.nonces[32 * entry : 32 * entry + 32].hex(),
                "balances": parse(self.level_records[0][position])[1], "leaf_index": position,
                "path": path, "root": self.root_document()["root"]}

    def _index_entry(self, account_id: str) -> int:
        self.position_of(account_id)
        assert self._index is not None
        return self._index[account_id]

    def _prepare_text(self) -> None:
        if self._fragments is not None:
            return
        self._fragments = []
        for level in range(self.depth + 1):
            frags = _node_fragments(self.level_records[level], len(self.assets))
            if level == 0:
                # the balances text of a leaf is the sums part of its fragment
                self._sums_text = [f[_FRAGMENT_SUMS_START:-2] for f in frags]
            if level == self.depth:
                break
            self._fragments.append(frags)
        root = self.root_document()["root"]
        self._root_fragment = json.dumps(root, separators=(",", ":")).encode("ascii")
        self._head = (
            b'{"version":"' + VERSION.encode() + b'","snapshot_id":"' + self.snapshot_id.hex().encode()
            + b'","assets":' + json.dumps(list(self.assets), separators=(",", ":")).encode("ascii")
            + b',"account_id":'
        )

    def _proof_line(self, entry: int, position: int, path_suffix: bytes) -> bytes:
        assert self._fragments is not None and self._sums_text is not None
        frags = self._fragments
        k = min(_BLOCK_BITS, self.depth)
        path = b",".join(frags[i][(position >> i) ^ 1] for i in range(k)) + path_suffix
        account_id = self.account_ids[entry]
        return b"".join((
            self._head, _json_string(account_id), b',"nonce":"',
            self.nonces[32 * entry : 32 * entry + 32].hex().encode("ascii"),
            b'","balances":[', self._sums_text[position], b'],"leaf_index":', str(position).encode("ascii"),
            b',"path":[', path, b'],"root":', self._root_fragment, b"}\n",
        ))

    def iter_proof_lines(self, progress: ProgressFn | None = None) -> Iterator[tuple[str, bytes]]:
        """Yield (account_id, proof JSON bytes + newline) for every real account, in leaf order."""
        self._prepare_text()
        assert self._fragments is not None
        frags = self._fragments
        k = min(_BLOCK_BITS, self.depth)
        n_accounts = self.account_count
        entries = self.entry_at_position.tolist()
        suffix = b""
        done = 0
        for position, entry in enumerate(entries):
            if k and position & ((1 << k) - 1) == 0:
                # Siblings at levels >= k are shared by the whole block of 2**k leaves.
                suffix = b"".join(b"," + frags[i][(position >> i) ^ 1] for i in range(k, self.depth))
            if entry >= n_accounts:
                continue
            yield self.account_ids[entry], self._proof_line(entry, position, suffix)
            done += 1
            if progress is not None and done % 65536 == 0:
                progress("proofs", done, n_accounts)
        if progress is not None:
            progress("proofs", n_accounts, n_accounts)

    def write_proof_lines(self, directory: str | os.PathLike[str], *, shard_lines: int = 65536,
                          progress: ProgressFn | None = None) -> int:
        """Export every proof as JSON text: `directory/NNNNN.jsonl`, one full proof per line.

        This is the bulky form (about log2(leaf_count) sibling records per user); the API serves
        proofs from the compact store instead (`write_store` / `ProofStore`). Memory stays bounded
        by one shard buffer. Returns the number of proofs written.
        """
        if not 1 <= shard_lines <= 1 << 24:
            raise ValidationError("shard_lines must be 1..16777216", field="shard_lines")
        out = Path(directory)
        out.mkdir(mode=0o700, parents=True, exist_ok=True)  # proofs carry nonces: private
        count = 0
        shard_file = None
        try:
            for _, line in self.iter_proof_lines(progress):
                if count % shard_lines == 0:
                    if shard_file is not None:
                        shard_file.close()
                    shard_file = open(out / f"{count // shard_lines:05d}.jsonl", "wb", buffering=1 << 22)
                shard_file.write(line)
                count += 1
        finally:
            if shard_file is not None:
                shard_file.close()
        return count

    def write_store(self, directory: str | os.PathLike[str], progress: ProgressFn | None = None) -> None:
        """Write the compact proof store that `ProofStore.proof_for` serves proofs from.

        One partition (this whole tree) plus the root record; see `ProofStore` for the layout.
        """
        out = Path(directory)
        out.mkdir(mode=0o700, parents=True, exist_ok=True)  # holds every user's nonce: private
        self.write_partition(out, 0)
        (out / "top.bin").write_bytes(self.level_records[-1].tobytes())
        write_store_meta(out, self.snapshot_id, self.assets, self.leaf_count, self.leaf_count, 1,
                         self.root_document()["root"])
        if progress:
            progress("store", self.account_count, self.account_count)

    def write_partition(self, directory: str | os.PathLike[str], partition: int) -> None:
        """Write this tree as partition `partition` of a store (levels below the partition root)."""
        out = Path(directory)
        base = partition * self.leaf_count
        with open(out / f"part-{partition:05d}.tree", "wb") as fh:
            for level in range(self.depth):
                self.level_records[level].tofile(fh)
        count = self.account_count
        (out / f"part-{partition:05d}.ids").write_bytes(
            b"\n".join([_json_string(a) for a in self.account_ids]) + (b"\n" if count else b""))
        acc = np.empty((count, 40), dtype=np.uint8)
        acc[:, :8] = (self.position_of_entry[:count] + base).astype(">u8").view(np.uint8).reshape(count, 8)
        acc[:, 8:] = np.frombuffer(self.nonces, dtype=np.uint8).reshape(count, 32)
        (out / f"part-{partition:05d}.acc").write_bytes(acc.tobytes())



_BLOCK_BITS = 6


def _json_string(text: str) -> bytes:
    if _PLAIN_ID.fullmatch(text):
        return b'"' + text.encode("ascii") + b'"'
    return json.dumps(text, ensure_ascii=True).encode("ascii")


_FRAGMENT_PREFIX = b'{"hash":"'
_FRAGMENT_MID = b'","sums":['
_FRAGMENT_SUMS_START = len(_FRAGMENT_PREFIX) + 64 + len(_FRAGMENT_MID)
_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
#: row g = the 4 ASCII digits of g, zero-padded ("0042")
_DIGITS4 = np.frombuffer("".join(f"{g:04d}" for g in range(10000)).encode("ascii"), dtype=np.uint8).reshape(10000, 4)
_POW10 = np.array([10**k for k in range(1, 20)], dtype=np.uint64)
_FRAGMENT_CHUNK_ROWS = 1 << 15


def _node_fragments(records: np.ndarray, n: int) -> list[bytes]:
    """Per node: b'{"hash":"<hex>","sums":["s1",...]}' — the JSON of a path step, built in numpy.

    Sums below 2**64 (nearly all of them) are formatted vectorised: 4-digit groups from a table,
    leading zeros masked out, the kept characters compacted row by row. Rows holding a larger sum
    take the plain Python path.
    """
    m = records.shape[0]
    out: list[bytes] = [b""] * m
    for start in range(0, m, _FRAGMENT_CHUNK_ROWS):
        chunk = records[start : start + _FRAGMENT_CHUNK_ROWS]
        hi, lo = _words(chunk[:, 32:])
        big = hi.any(axis=1)
        small = np.flatnonzero(~big)
        if small.size:
            for j, frag in zip((small + start).tolist(), _small_fragments(chunk[small], lo[small], n)):
                out[j] = frag
        for j in np.flatnonzero(big).tolist():
            row = chunk[j].tobytes()
            sums = [int.from_bytes(row[32 + 16 * k : 48 + 16 * k], "big") for k in range(n)]
            out[start + j] = (_FRAGMENT_PREFIX + row[:32].hex().encode("ascii") + _FRAGMENT_MID
                              + ('"' + '","'.join(map(str, sums)) + '"').encode("ascii") + b"]}")
    return out


def _small_fragments(records: np.ndarray, lo: np.ndarray, n: int) -> list[bytes]:
    k = records.shape[0]
    element = 23  # '"' + 20 digits + '"' + ','
    chars = np.empty((k, n, element), dtype=np.uint8)
    chars[:, :, 0] = ord('"')
    chars[:, :, 21] = ord('"')
    chars[:, :, 22] = ord(",")
    rest = lo.copy()
    ten_thousand = np.uint64(10000)
    for group in range(4, -1, -1):  # 5 groups of 4 digits cover 2**64 - 1 (20 digits)
        chars[:, :, 1 + 4 * group : 5 + 4 * group] = _DIGITS4[(rest % ten_thousand).astype(np.intp)]
        rest //= ten_thousand
    ndigits = 1 + (lo[:, :, None] >= _POW10).sum(axis=2)
    keep = np.ones((k, n, element), dtype=bool)
    keep[:, :, 1:21] = np.arange(20) >= (20 - ndigits)[:, :, None]
    keep[:, n - 1, 22] = False  # no comma after the last sum
    head = len(_FRAGMENT_PREFIX) + 64 + len(_FRAGMENT_MID)
    width = head + n * element + 2
    rows = np.empty((k, width), dtype=np.uint8)
    rows[:, : len(_FRAGMENT_PREFIX)] = np.frombuffer(_FRAGMENT_PREFIX, dtype=np.uint8)
    hashes = records[:, :32]
    hexes = rows[:, len(_FRAGMENT_PREFIX) : len(_FRAGMENT_PREFIX) + 64]
    hexes[:, 0::2] = _HEX_DIGITS[hashes >> 4]
    hexes[:, 1::2] = _HEX_DIGITS[hashes & 15]
    rows[:, len(_FRAGMENT_PREFIX) + 64 : head] = np.frombuffer(_FRAGMENT_MID, dtype=np.uint8)
    rows[:, head : head + n * element] = chars.reshape(k, n * element)
    rows[:, -2:] = np.frombuffer(b"]}", dtype=np.uint8)
    mask = np.ones((k, width), dtype=bool)
    mask[:, head : head + n * element] = keep.reshape(k, n * element)
    text = rows[mask].tobytes()
    ends = np.cumsum(mask.sum(axis=1)).tolist()
    starts = [0] + ends[:-1]
    return [text[a:b] for a, b in zip(starts, ends)]


def _words(sums_be: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(m, 16n) big-endian bytes -> native (hi, lo) uint64 words, each (m, n)."""
    m = sums_be.shape[0]
    words = np.ascontiguousarray(sums_be).view(">u8").reshape(m, -1, 2)
    return words[:, :, 0].astype(np.uint64), words[:, :, 1].astype(np.uint64)


def _sums_be(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """(m, n) hi/lo words -> (m, 16n) bytes: each sum as u128 big-endian."""
    m, n = hi.shape
    out = np.empty((m, n, 2), dtype=">u8")
    out[:, :, 0] = hi
    out[:, :, 1] = lo
    return out.view(np.uint8).reshape(m, 16 * n)


def _hash_rows(rows: np.ndarray) -> np.ndarray:
    """SHA-256 of each row of a C-contiguous uint8 matrix -> (m, 32) uint8."""
    m, width = rows.shape
    view = memoryview(np.ascontiguousarray(rows)).cast("B")
    sha = hashlib.sha256
    digests = b"".join([sha(view[k * width : (k + 1) * width]).digest() for k in range(m)])
    return np.frombuffer(digests, dtype=np.uint8).reshape(m, 32)


def _parent_level(records: np.ndarray, hi: np.ndarray, lo: np.ndarray, level: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One level up. `records` rows are hash | u128be sums, so the two children of a parent are
    adjacent: the node preimage is NODE_TAG + 2 consecutive records, hashed with no copying
    beyond the tag. Sums add as (hi, lo) 64-bit words with carry, overflow checked."""
    lhi, rhi, llo, rlo = hi[0::2], hi[1::2], lo[0::2], lo[1::2]
    plo = llo + rlo
    carry = (plo < llo).astype(np.uint64)
    phi = lhi + rhi
    overflow = phi < lhi
    phi2 = phi + carry
    overflow |= phi2 < phi
    if overflow.any():
        raise ValidationError(
            f"a sum at tree level {level + 1} reaches 2^128; totals must stay below 2^128",
            field="balances",
        )
    m, width = records.shape[0] // 2, 2 * records.shape[1]
    view = memoryview(np.ascontiguousarray(records)).cast("B")
    sha = hashlib.sha256
    tag = NODE_TAG
    digests = b"".join([sha(tag + view[k * width : k * width + width]).digest() for k in range(m)])
    parent = np.empty((m, records.shape[1]), dtype=np.uint8)
    parent[:, :32] = np.frombuffer(digests, dtype=np.uint8).reshape(m, 32)
    parent[:, 32:] = _sums_be(phi2, plo)
    return parent, phi2, plo


_BLOCK_LEAVES = 1 << 14


def _build_levels(leaves: np.ndarray, hi: np.ndarray, lo: np.ndarray,
                  progress: ProgressFn | None) -> list[np.ndarray]:
    """All levels above the leaves. The lower levels are computed one block of leaves at a time
    (each block's subtree is a contiguous slice of every level) so the working set stays in cache;
    the levels above the blocks are computed whole. Same tree either way."""
    leaf_count = leaves.shape[0]
    depth = leaf_count.bit_length() - 1
    block = min(leaf_count, _BLOCK_LEAVES)
    block_depth = block.bit_length() - 1
    levels = [leaves] + [np.empty((leaf_count >> lv, leaves.shape[1]), dtype=np.uint8)
                         for lv in range(1, depth + 1)]
    top_hi = np.empty((leaf_count >> block_depth, hi.shape[1]), dtype=np.uint64)
    top_lo = np.empty_like(top_hi)
    for b, start in enumerate(range(0, leaf_count, block)):
        rec, bhi, blo = leaves[start : start + block], hi[start : start + block], lo[start : start + block]
        for lv in range(1, block_depth + 1):
            rec, bhi, blo = _parent_level(rec, bhi, blo, lv - 1)
            levels[lv][start >> lv : (start + block) >> lv] = rec
        top_hi[b], top_lo[b] = bhi[0], blo[0]
        if progress and b % 16 == 15:
            progress("tree", start + block, leaf_count)
    rec, bhi, blo = levels[block_depth], top_hi, top_lo
    for lv in range(block_depth + 1, depth + 1):
        rec, bhi, blo = _parent_level(rec, bhi, blo, lv - 1)
        levels[lv] = rec
    if progress:
        progress("tree", leaf_count, leaf_count)
    return levels


class _Hmac:
    """HMAC-SHA256 with the key schedule done once (same output as `hmac.digest`, ~3x faster)."""

    def __init__(self, key: bytes) -> None:
        if len(key) > 64:
            key = hashlib.sha256(key).digest()
        key = key.ljust(64, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))

    def many(self, messages: Iterable[bytes]) -> bytes:
        inner, outer = self._inner, self._outer
        out = []
        append = out.append
        for message in messages:
            i = inner.copy()
            i.update(message)
            o = outer.copy()
            o.update(i.digest())
            append(o.digest())
        return b"".join(out)


def _column_totals(hi: np.ndarray, lo: np.ndarray) -> list[int]:
    """Exact per-column sums of hi * 2**64 + lo as Python ints (32-bit halves cannot overflow)."""
    if hi.shape[0] == 0:
        return [0] * hi.shape[1]
    mask = np.uint64(0xFFFFFFFF)
    parts = [(lo & mask).sum(axis=0), (lo >> np.uint64(32)).sum(axis=0),
             (hi & mask).sum(axis=0), (hi >> np.uint64(32)).sum(axis=0)]
    return [int(a) + (int(b) << 32) + (int(c) << 64) + (int(d) << 96)
            for a, b, c, d in zip(*(p.tolist() for p in parts))]


def build_liability_tree(
    snapshot_id: bytes,
    assets: Sequence[str],
    accounts: Iterable[tuple[str, Sequence[int]]],
    secret: bytes,
    *,
    min_leaf_count: int = 1,
    progress: ProgressFn | None = None,
) -> LiabilityTree:
    """Build the `ringfence-por-v1` tree of one snapshot.

    `accounts` yields `(account_id, balances)`; `balances[k]` is the amount owed in `assets[k]`
    (minor units, 0 <= b < 2**128), already aggregated per user across accounts and segments and
    floored at zero. Account ids must be non-empty, unique and at most 65535 UTF-8 bytes.
    `secret` derives nonces and the shuffle (see `load_secret`). `min_leaf_count` pads further
    (rounded up to a power of two) so that the leaf count reveals less about the number of users.
    Bad input raises `ValidationError` naming the account and asset, and builds nothing.
    """
    assets = _check_assets(assets)
    n = len(assets)
    ids: list[str] = []
    flat: list[int] = []
    for item in accounts:
        if len(ids) >= MAX_ACCOUNTS_PER_BUILD:
            raise ValidationError(
                f"more than {MAX_ACCOUNTS_PER_BUILD} accounts; partition the build", field="accounts"
            )
        try:
            account_id, balances = item
        except (TypeError, ValueError):
            raise ValidationError("each account must be a pair (account_id, balances)", field="accounts") from None
        if not isinstance(account_id, str) or not account_id:
            raise ValidationError("account id must be a non-empty string", field="account_id")
        if isinstance(balances, (str, bytes)) or len(balances) != n:
            raise ValidationError(
                f"account {account_id!r} has {len(balances)} balances; expected one per asset ({n})",
                field=f"balances[{account_id}]",
            )
        ids.append(account_id)
        flat.extend(balances)
    hi, lo = _balances_to_words(ids, assets, flat)
    return build_liability_tree_from_arrays(
        snapshot_id, assets, ids, hi, lo, secret, min_leaf_count=min_leaf_count, progress=progress
    )


def _balances_to_words(ids: list[str], assets: tuple[str, ...], flat: list[int]) -> tuple[np.ndarray, np.ndarray]:
    n = len(assets)
    shape = (len(ids), n)
    if not flat:
        return np.zeros(shape, np.uint64), np.zeros(shape, np.uint64)

    def where(pred: Callable[[object], bool]) -> str:
        for i, value in enumerate(flat):
            if pred(value):
                return f"balances[{ids[i // n]}][{assets[i % n]}]"
        return "balances"

    if not set(map(type, flat)) <= {int}:
        bad = where(lambda v: type(v) is not int)
        raise ValidationError("balances must be integers in minor units (not bool, float or str)", field=bad)
    low, high = min(flat), max(flat)
    if low < 0:
        raise ValidationError(
            "balances must not be negative: floor each user's balance at zero and list debts separately",
            field=where(lambda v: v < 0),  # type: ignore[operator]
        )
    if high >= U128_LIMIT:
        raise ValidationError("balances must be below 2^128", field=where(lambda v: v >= U128_LIMIT))  # type: ignore[operator]
    if high <= U64_MASK:
        lo = np.array(flat, dtype=np.uint64).reshape(shape)
        return np.zeros(shape, np.uint64), lo
    hi = np.array([v >> 64 for v in flat], dtype=np.uint64).reshape(shape)
    lo = np.array([v & U64_MASK for v in flat], dtype=np.uint64).reshape(shape)
    return hi, lo


def build_liability_tree_from_arrays(
    snapshot_id: bytes,
    assets: Sequence[str],
    account_ids: list[str],
    balances_hi: np.ndarray,
    balances_lo: np.ndarray,
    secret: bytes,
    *,
    min_leaf_count: int = 1,
    progress: ProgressFn | None = None,
    check_ids: bool = True,
    padding_offset: int = 0,
) -> LiabilityTree:
    """Columnar form of `build_liability_tree`: balance = hi * 2**64 + lo, shape (accounts, assets).

    Used by the batch builder and the Dask partitions, whose balances are already arrays.
    `padding_offset` numbers this build's padding leaves after those of earlier partitions, so
    no two padding leaves of one snapshot share a nonce.
    """
    _check_snapshot_id(snapshot_id)
    assets = _check_assets(assets)
    n = len(assets)
    count = len(account_ids)
    if balances_hi.shape != (count, n) or balances_lo.shape != (count, n):
        raise ValidationError("balance arrays must have shape (accounts, assets)", field="balances")
    if not 1 <= min_leaf_count <= 1 << MAX_DEPTH:
        raise ValidationError(f"min_leaf_count must be 1..2^{MAX_DEPTH}", field="min_leaf_count")
    if len(secret) < 1:
        raise ConfigError("the proof secret must not be empty", field="secret")
    hi = np.ascontiguousarray(balances_hi, dtype=np.uint64)
    lo = np.ascontiguousarray(balances_lo, dtype=np.uint64)
    id_bytes = [a.encode("utf-8") for a in account_ids]
    if check_ids:
        for account_id, idb in zip(account_ids, id_bytes):
            if not account_id:
                raise ValidationError("account id must be a non-empty string", field="account_id")
            if len(idb) > MAX_ACCOUNT_ID_BYTES:
                raise ValidationError("account id is longer than 65535 UTF-8 bytes", field=f"account_id[{account_id[:40]}]")
        if len(set(account_ids)) != count:
            seen: set[str] = set()
            for a in account_ids:
                if a in seen:
                    raise ValidationError(
                        "account ids must be unique: aggregate each user's balances first", field=f"account_id[{a}]"
                    )
                seen.add(a)
    leaf_count = 1
    while leaf_count < max(count, min_leaf_count):
        leaf_count *= 2
    if leaf_count > 1 << MAX_DEPTH:
        raise ValidationError("too many leaves", field="accounts")
    padding = leaf_count - count

    # Nonces: per user per snapshot, from the server secret.
    mac = _Hmac(secret)
    prefix = NONCE_TAG + snapshot_id
    nonces = mac.many(prefix + idb for idb in id_bytes)
    pad_prefix = PADDING_TAG + snapshot_id
    pad_nonces = mac.many(pad_prefix + (padding_offset + j).to_bytes(8, "big")
                          for j in range(padding))
    if progress:
        progress("nonces", count, count)

    # Leaves, in entry order (accounts then padding).
    sha = hashlib.sha256
    head = LEAF_TAG + snapshot_id
    n_bytes = n.to_bytes(2, "big")
    row = 16 * n
    bal_be = _sums_be(hi, lo)
    bal = bal_be.tobytes()
    u16 = [k.to_bytes(2, "big") for k in range(256)]  # most ids are short: skip to_bytes per leaf
    leaves = [
        sha(b"".join((head, u16[len(idb)] if len(idb) < 256 else len(idb).to_bytes(2, "big"), idb,
                      nonces[32 * i : 32 * i + 32], n_bytes, bal[row * i : row * i + row]))).digest()
        for i, idb in enumerate(id_bytes)
    ]
    zero_tail = n_bytes + bytes(row)
    pad_head = head + b"\x00\x00"
    leaves.extend(
        sha(pad_head + pad_nonces[32 * j : 32 * j + 32] + zero_tail).digest() for j in range(padding)
    )
    leaf_hashes = np.frombuffer(b"".join(leaves), dtype=np.uint8).reshape(leaf_count, 32)
    del leaves
    if progress:
        progress("leaves", leaf_count, leaf_count)

    # Shuffle: order all entries by the first 8 bytes of their (secret-derived) nonce.
    all_nonces = np.frombuffer(nonces + pad_nonces, dtype=np.uint8).reshape(leaf_count, 32)
    keys = all_nonces[:, :8].copy().view(">u8").reshape(leaf_count)
    entry_at_position = np.argsort(keys, kind="stable")
    position_of_entry = np.empty(leaf_count, dtype=np.int64)
    position_of_entry[entry_at_position] = np.arange(leaf_count, dtype=np.int64)

    # Scatter the accounts to their positions; padding rows stay zero (np.zeros is lazy).
    real = position_of_entry[:count]
    cur_lo = np.zeros((leaf_count, n), np.uint64)
    cur_lo[real] = lo
    cur_hi = np.zeros((leaf_count, n), np.uint64)
    if hi.any():
        cur_hi[real] = hi
    leaves_rec = np.zeros((leaf_count, 32 + 16 * n), dtype=np.uint8)
    leaves_rec[:, :32] = leaf_hashes[entry_at_position]
    leaves_rec[real, 32:] = bal_be
    level_records = _build_levels(leaves_rec, cur_hi, cur_lo, progress)

    tree = LiabilityTree(
        snapshot_id=bytes(snapshot_id), assets=assets, account_ids=list(account_ids), nonces=nonces,
        position_of_entry=position_of_entry, entry_at_position=entry_at_position,
        level_records=level_records,
    )
    # Post-condition: the root commits to exactly the column totals of the input.
    assert list(tree.root_sums) == _column_totals(hi, lo), "root sums differ from the input totals"
    return tree

