"""Proof of solvency: liabilities (Merkle-sum tree, per-user proofs, verifier), reserves, report.

Public surface: `build_liability_tree` / `build_liability_tree_from_arrays` (the builder's input is
an iterable of `(account_id, balances)` in asset order), `verify_proof` / `check_proof` (offline
verifier), `ProofStore` and `proof_for` (what the API calls for the signed-in user), the reserves
and report modules, and `verifier_page_path()` for the static `/por/verify` page.

On a schedule: `publisher.PorPublisher` (the worker `ringfence serve` runs; history in
`DIR/por/history.json`), `reserve_source.ReserveSource` (what custody provides: signed claims and
balances at one height per chain) and `history_page` (the `/por` page with the coverage chart).
"""

from __future__ import annotations

import functools
import os
from importlib import resources
from pathlib import Path
from typing import Any

# The format, the verifier and the store are standard library only and imported eagerly; the
# builder (numpy) loads on first use, so that `import ringfence.solvency.pol_verifier` (what a user
# runs offline) never pulls in anything outside the standard library.
from .pol_format import VERSION, derive_nonce
from .pol_store import ProofStore
from .pol_verifier import check_proof, verify_proof

_LAZY = {
    "LiabilityTree": "pol_builder",
    "build_liability_tree": "pol_builder",
    "build_liability_tree_from_arrays": "pol_builder",
    "load_secret": "pol_builder",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "VERSION",
    "LiabilityTree",
    "ProofStore",
    "build_liability_tree",
    "build_liability_tree_from_arrays",
    "check_proof",
    "derive_nonce",
    "load_secret",
    "verify_proof",
    "proof_for",
    "verifier_page_path",
]


@functools.lru_cache(maxsize=4)
def _store(directory: str) -> ProofStore:
    return ProofStore(directory)


def proof_for(account_id: str, store_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The proof of `account_id` from a published store (`OUT_DIR/proofs`); `KeyError` if absent.

    The API must pass the signed-in user's own account id: the proof carries that user's nonce.
    """
    return _store(str(Path(store_dir).resolve())).proof_for(account_id)


def verifier_page_path() -> Path:
    """Path of the static offline verifier page (served at /por/verify)."""
    return Path(str(resources.files("ringfence").joinpath("web/static/por-verify.html")))
