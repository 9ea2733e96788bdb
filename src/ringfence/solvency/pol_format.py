"""Proof of liabilities, the format: constants, the nonce derivation and the two hash functions.

This is `ringfence-por-v1` as docs/por.md specifies it, and nothing else:

* integers in hashes are unsigned 128-bit big-endian; any balance or sum >= 2**128 is invalid;
* leaf = SHA256("ringfence/por/v1/leaf" | snapshot_id | u16 len(id) | id | nonce | u16 n | u128 b_1..b_n);
* node = SHA256("ringfence/por/v1/node" | left_hash | left_sums | right_hash | right_sums); a node's
  sums are the element-wise sum of its children's (the parent commits to both children's sums,
  which defeats the "max child" attack on sum-only trees);
* a user's nonce is HMAC-SHA256(secret, "ringfence/por/v1/nonce" | snapshot_id | id).

Standard library only: the offline verifier (`pol_verifier`) is built on this module, and a user
must be able to run it with nothing but Python installed (checked by tests/solvency/test_pol_split.py).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Sequence

from ..errors import ValidationError

__all__ = [
    "VERSION",
    "LEAF_TAG",
    "NODE_TAG",
    "NONCE_TAG",
    "PADDING_TAG",
    "U128_LIMIT",
    "MAX_ASSETS",
    "MAX_ACCOUNT_ID_BYTES",
    "MAX_DEPTH",
    "MAX_DECIMAL_DIGITS",
    "derive_nonce",
    "leaf_hash",
    "node_hash",
]

VERSION = "ringfence-por-v1"
LEAF_TAG = b"ringfence/por/v1/leaf"
NODE_TAG = b"ringfence/por/v1/node"
NONCE_TAG = b"ringfence/por/v1/nonce"
PADDING_TAG = b"ringfence/por/v1/padding"
U128_LIMIT = 1 << 128
U64_MASK = (1 << 64) - 1
MAX_ASSETS = 65535
#: An account id is length-prefixed with a u16 in the leaf, so it cannot exceed 65535 UTF-8 bytes.
MAX_ACCOUNT_ID_BYTES = 65535
#: 2**40 leaves (a trillion) is far beyond any exchange; bounds the verifier's work per proof.
MAX_DEPTH = 40
#: Longest decimal string accepted for an amount: 2**128 - 1 has 39 digits.
MAX_DECIMAL_DIGITS = 39

_HEX64 = re.compile(r"[0-9a-f]{64}")
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,38}")
_PLAIN_ID = re.compile(r"[A-Za-z0-9_.:@+/=-]+")


# --------------------------------------------------------------------------------------------
# Nonces
# --------------------------------------------------------------------------------------------


def derive_nonce(secret: bytes, snapshot_id: bytes, account_id: str) -> bytes:
    """Nonce of one user for one snapshot: HMAC-SHA256(secret, NONCE_TAG | snapshot_id | id)."""
    _check_snapshot_id(snapshot_id)
    return hmac.digest(secret, NONCE_TAG + snapshot_id + account_id.encode("utf-8"), "sha256")


def _padding_nonce(secret: bytes, snapshot_id: bytes, j: int) -> bytes:
    return hmac.digest(secret, PADDING_TAG + snapshot_id + j.to_bytes(8, "big"), "sha256")

# --------------------------------------------------------------------------------------------
# The two hash functions of the format
# --------------------------------------------------------------------------------------------


def _u128(value: int, what: str) -> bytes:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"{what} must be an integer", field=what)
    if not 0 <= value < U128_LIMIT:
        raise ValidationError(f"{what} must be between 0 and 2^128-1", field=what)
    return value.to_bytes(16, "big")


def leaf_hash(snapshot_id: bytes, account_id: str, nonce: bytes, balances: Sequence[int]) -> bytes:
    """SHA256(LEAF_TAG | snapshot_id | u16be(len id) | id | nonce | u16be(n) | u128be(b)...)."""
    _check_snapshot_id(snapshot_id)
    idb = account_id.encode("utf-8")
    if len(idb) > MAX_ACCOUNT_ID_BYTES:
        raise ValidationError("account id is longer than 65535 UTF-8 bytes", field="account_id")
    if len(nonce) != 32:
        raise ValidationError("nonce must be 32 bytes", field="nonce")
    if not 1 <= len(balances) <= MAX_ASSETS:
        raise ValidationError("there must be 1..65535 balances", field="balances")
    parts = [LEAF_TAG, snapshot_id, len(idb).to_bytes(2, "big"), idb, nonce, len(balances).to_bytes(2, "big")]
    parts.extend(_u128(b, "balance") for b in balances)
    return hashlib.sha256(b"".join(parts)).digest()


def node_hash(left_hash: bytes, left_sums: Sequence[int], right_hash: bytes, right_sums: Sequence[int]) -> bytes:
    """SHA256(NODE_TAG | left_hash | u128be(left_sums)... | right_hash | u128be(right_sums)...)."""
    if len(left_hash) != 32 or len(right_hash) != 32:
        raise ValidationError("child hashes must be 32 bytes", field="hash")
    if len(left_sums) != len(right_sums):
        raise ValidationError("children must have the same number of sums", field="sums")
    parts = [NODE_TAG, left_hash]
    parts.extend(_u128(s, "sum") for s in left_sums)
    parts.append(right_hash)
    parts.extend(_u128(s, "sum") for s in right_sums)
    return hashlib.sha256(b"".join(parts)).digest()


def _check_snapshot_id(snapshot_id: bytes) -> None:
    if not isinstance(snapshot_id, (bytes, bytearray)) or len(snapshot_id) != 32:
        raise ValidationError("snapshot_id must be exactly 32 bytes", field="snapshot_id")


def _check_assets(assets: Sequence[str]) -> tuple[str, ...]:
    out = tuple(assets)
    if not 1 <= len(out) <= MAX_ASSETS:
        raise ValidationError("assets must list 1..65535 asset codes", field="assets")
    for code in out:
        if not isinstance(code, str) or not 1 <= len(code) <= 64:
            raise ValidationError("each asset code must be a string of 1-64 characters", field="assets")
    if len(set(out)) != len(out):
        raise ValidationError("asset codes must not repeat", field="assets")
    return out

