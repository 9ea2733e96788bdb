"""Published test vectors for `ringfence-por-v1` and the catalogue of tamperings a verifier must catch.

Job: generate `docs/por-vectors.json` deterministically from a seed, so anyone can regenerate it and
compare byte for byte, and so other verifiers (the browser page, third-party tools) can be checked
against the same cases. The vectors use a fixed, public test secret: never a production secret.

Invariant: `generate_vectors(seed)` is a pure function of `seed` (no clock, no OS randomness).
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
from typing import Any, Callable

from .pol_builder import build_liability_tree
from .pol_format import U128_LIMIT, VERSION, derive_nonce, leaf_hash, node_hash

__all__ = ["VECTOR_SEED", "VECTOR_SECRET", "TAMPERINGS", "generate_vectors", "vectors_json", "tamper"]

VECTOR_SEED = 6
#: Public test secret for the vectors (32 bytes). Never use it for a real snapshot.
VECTOR_SECRET = b"ringfence-por-v1 test vectors!!!"
VECTOR_TREE_SIZES = (1, 2, 3, 5)


def _flip_hex(text: str) -> str:
    return ("1" if text[0] != "1" else "2") + text[1:]


def _incr(text: str) -> str:
    return str(int(text) + 1)


def _t_balance(p: dict) -> None:
    p["balances"][0] = _incr(p["balances"][0])


def _t_nonce(p: dict) -> None:
    p["nonce"] = _flip_hex(p["nonce"])


def _t_account(p: dict) -> None:
    p["account_id"] = p["account_id"] + "x"


def _t_sibling_hash(p: dict) -> None:
    p["path"][0]["hash"] = _flip_hex(p["path"][0]["hash"])


def _t_sibling_sum(p: dict) -> None:
    p["path"][0]["sums"][0] = _incr(p["path"][0]["sums"][0])


def _t_root_hash(p: dict) -> None:
    p["root"]["hash"] = _flip_hex(p["root"]["hash"])


def _t_root_sum(p: dict) -> None:
    p["root"]["sums"][0] = _incr(p["root"]["sums"][0])


def _t_leaf_index_bit(p: dict) -> None:
    p["leaf_index"] ^= 1


def _t_path_short(p: dict) -> None:
    p["path"].pop()


def _t_truncated_hash(p: dict) -> None:
    p["path"][0]["hash"] = p["path"][0]["hash"][:-2]


def _t_overflow(p: dict) -> None:
    p["balances"][0] = str(U128_LIMIT)


def _t_sum_overflow(p: dict) -> None:
    p["path"][0]["sums"][0] = str(U128_LIMIT - 1)
    if p["balances"][0] == "0":
        p["balances"][0] = "1"


def _t_negative(p: dict) -> None:
    p["balances"][0] = "-1"


def _t_fraction(p: dict) -> None:
    p["balances"][0] = "1.5"


def _t_number_not_string(p: dict) -> None:
    p["balances"][0] = int(p["balances"][0])


def _t_leading_zero(p: dict) -> None:
    p["balances"][0] = "0" + p["balances"][0]


def _t_extra_field(p: dict) -> None:
    p["extra"] = "1"


def _t_missing_field(p: dict) -> None:
    del p["nonce"]


def _t_extra_path_field(p: dict) -> None:
    p["path"][0]["note"] = "x"


def _t_version(p: dict) -> None:
    p["version"] = "ringfence-por-v0"


def _t_snapshot(p: dict) -> None:
    p["snapshot_id"] = _flip_hex(p["snapshot_id"])


def _t_leaf_count(p: dict) -> None:
    p["root"]["leaf_count"] = p["root"]["leaf_count"] * 2


def _t_uppercase_hex(p: dict) -> None:
    p["nonce"] = p["nonce"].upper() if p["nonce"].upper() != p["nonce"] else "G" + p["nonce"][1:]


#: name -> (mutation, needs a proof with a non-empty path)
TAMPERINGS: dict[str, tuple[Callable[[dict], None], bool]] = {
    "balance": (_t_balance, False),
    "nonce": (_t_nonce, False),
    "account_id": (_t_account, False),
    "sibling_hash": (_t_sibling_hash, True),
    "sibling_sum": (_t_sibling_sum, True),
    "root_hash": (_t_root_hash, False),
    "root_sum": (_t_root_sum, False),
    "leaf_index_bit": (_t_leaf_index_bit, True),
    "path_too_short": (_t_path_short, True),
    "truncated_hash": (_t_truncated_hash, True),
    "overflow": (_t_overflow, False),
    "sum_overflow": (_t_sum_overflow, True),
    "negative": (_t_negative, False),
    "fraction": (_t_fraction, False),
    "number_not_string": (_t_number_not_string, False),
    "leading_zero": (_t_leading_zero, False),
    "extra_field": (_t_extra_field, False),
    "missing_field": (_t_missing_field, False),
    "extra_path_field": (_t_extra_path_field, True),
    "version": (_t_version, False),
    "snapshot_id": (_t_snapshot, False),
    "leaf_count": (_t_leaf_count, False),
    "uppercase_hex": (_t_uppercase_hex, False),
}


def tamper(proof: dict, name: str) -> dict:
    """A deep copy of `proof` with tampering `name` applied."""
    mutate, _ = TAMPERINGS[name]
    out = copy.deepcopy(proof)
    mutate(out)
    return out


def _seeded_balances(rng: random.Random, count: int, n: int) -> list[tuple[str, list[int]]]:
    accounts = []
    for i in range(count):
        row = []
        for _k in range(n):
            kind = rng.random()  # float-ok: workload shape, not money
            if kind < 0.3:
                row.append(0)
            elif kind < 0.9:
                row.append(rng.randrange(1, 10**8))
            else:
                row.append(rng.randrange(10**8, 10**24))
        accounts.append((f"user-{rng.randrange(10**6):06d}-{i}", row))
    return accounts


def generate_vectors(seed: int = VECTOR_SEED) -> dict[str, Any]:
    """All vectors as one JSON-able dict (deterministic in `seed`)."""
    rng = random.Random(seed)
    assets = ["BTC", "ETH", "USDT"]
    snapshot_id = hashlib.sha256(b"ringfence/por/v1/test-vector-snapshot" + seed.to_bytes(8, "big")).digest()
    nonce = derive_nonce(VECTOR_SECRET, snapshot_id, "alice")
    primitives = {
        "leaf": {
            "snapshot_id": snapshot_id.hex(), "account_id": "alice", "nonce": nonce.hex(),
            "balances": ["0", "1", str(U128_LIMIT - 1)],
            "hash": leaf_hash(snapshot_id, "alice", nonce, [0, 1, U128_LIMIT - 1]).hex(),
        },
        "leaf_unicode_id": {
            "snapshot_id": snapshot_id.hex(), "account_id": "zoë-用户", "nonce": nonce.hex(),
            "balances": ["5"], "hash": leaf_hash(snapshot_id, "zoë-用户", nonce, [5]).hex(),
        },
        "node": {
            "left_hash": "11" * 32, "left_sums": ["1", "2"], "right_hash": "22" * 32, "right_sums": ["3", "4"],
            "hash": node_hash(b"\x11" * 32, [1, 2], b"\x22" * 32, [3, 4]).hex(), "sums": ["4", "6"],
        },
        "nonce": {
            "secret_hex": VECTOR_SECRET.hex(), "snapshot_id": snapshot_id.hex(), "account_id": "alice",
            "nonce": nonce.hex(),
        },
    }
    trees = []
    for size in VECTOR_TREE_SIZES:
        accounts = _seeded_balances(rng, size, len(assets))
        tree = build_liability_tree(snapshot_id, assets, accounts, VECTOR_SECRET)
        trees.append({
            "accounts": [{"account_id": a, "balances": [str(b) for b in bal]} for a, bal in accounts],
            "root_file": tree.root_document(),
            "proofs": [tree.proof_for(a) for a, _ in accounts],
        })
    sample = trees[-1]["proofs"][0]
    invalid = []
    for name, (_, needs_path) in TAMPERINGS.items():
        if needs_path and not sample["path"]:
            continue
        invalid.append({"tampering": name, "proof": tamper(sample, name)})
    return {
        "version": VERSION,
        "seed": seed,
        "secret_hex": VECTOR_SECRET.hex(),
        "note": "Test vectors for ringfence-por-v1. The secret is public test data: never use it for real.",
        "primitives": primitives,
        "trees": trees,
        "invalid": invalid,
    }


def vectors_json(seed: int = VECTOR_SEED) -> str:
    """The canonical text of docs/por-vectors.json."""
    return json.dumps(generate_vectors(seed), indent=1, ensure_ascii=False) + "\n"


if __name__ == "__main__":  # python -m ringfence.solvency.vectors > docs/por-vectors.json
    import sys

    sys.stdout.write(vectors_json(int(sys.argv[1]) if len(sys.argv) > 1 else VECTOR_SEED))
