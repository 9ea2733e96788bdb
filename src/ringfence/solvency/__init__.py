"""Proof of solvency: liabilities (Merkle-sum tree, per-user proofs, verifier), reserves, report.

Public surface: `build_liability_tree`, `verify_proof`, `check_proof`, `ProofStore.proof_for`,
`LiabilityTree.proof_for` (pol.py); reserves and the coverage report live in reserves.py/report.py.
"""

from .pol import (
    VERSION,
    LiabilityTree,
    ProofStore,
    build_liability_tree,
    check_proof,
    derive_nonce,
    load_secret,
    verify_proof,
)

__all__ = [
    "VERSION",
    "LiabilityTree",
    "ProofStore",
    "build_liability_tree",
    "check_proof",
    "derive_nonce",
    "load_secret",
    "verify_proof",
]
