"""Proof of liabilities: the `ringfence-por-v1` Merkle-sum tree, per-user proofs and the verifier.

The implementation is split by idea; this module keeps the historical import path working:

* `pol_format`   — constants, nonce derivation, the leaf and node hashes (standard library only);
* `pol_builder`  — the server secret and the tree builder (numpy);
* `pol_verifier` — the offline verifier (standard library only);
* `pol_store`    — the proof store's layout and `ProofStore`.
"""

from __future__ import annotations

from .pol_builder import (
    DEV_SECRET,
    LiabilityTree,
    build_liability_tree,
    build_liability_tree_from_arrays,
    load_secret,
)
from .pol_format import (
    LEAF_TAG,
    MAX_ACCOUNT_ID_BYTES,
    MAX_ASSETS,
    MAX_DEPTH,
    NODE_TAG,
    U128_LIMIT,
    VERSION,
    derive_nonce,
    leaf_hash,
    node_hash,
)
from .pol_store import STORE_FORMAT, ProofStore, write_store_meta
from .pol_verifier import VerifiedProof, check_proof, check_root_document, verify_proof

__all__ = [
    "VERSION",
    "LEAF_TAG",
    "NODE_TAG",
    "U128_LIMIT",
    "MAX_ASSETS",
    "MAX_ACCOUNT_ID_BYTES",
    "MAX_DEPTH",
    "DEV_SECRET",
    "load_secret",
    "derive_nonce",
    "leaf_hash",
    "node_hash",
    "LiabilityTree",
    "build_liability_tree",
    "build_liability_tree_from_arrays",
    "VerifiedProof",
    "check_proof",
    "verify_proof",
    "check_root_document",
    "ProofStore",
    "STORE_FORMAT",
    "write_store_meta",
]
