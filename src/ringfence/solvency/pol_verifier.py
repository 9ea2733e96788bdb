"""Proof of liabilities, the verifier: checks one user's inclusion proof offline.

A user (or an auditor) runs this with nothing but Python: it imports only the standard library and
`pol_format` (itself standard library only) — checked by tests/solvency/test_pol_split.py, which
imports it in a fresh interpreter that refuses every non-stdlib import. It parses the proof strictly
(no duplicate keys, no floats or constants, bounded size and depth), recomputes the leaf from the
user's balances and nonce, walks the path to the root checking every parent's sums, and compares
the root with the published one.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from typing import Any, Mapping

from ..errors import ProofInvalid, ValidationError
from .pol_format import (
    MAX_ACCOUNT_ID_BYTES,
    MAX_ASSETS,
    MAX_DEPTH,
    U128_LIMIT,
    VERSION,
    _DECIMAL,
    _HEX64,
    leaf_hash,
    node_hash,
)

__all__ = ["VerifiedProof", "json_nesting_depth", "check_proof", "verify_proof", "check_root_document", "parse_json_document",
           "MAX_PROOF_BYTES"]


# --------------------------------------------------------------------------------------------
# Verifying a proof (offline; pure Python, no numpy)
# --------------------------------------------------------------------------------------------

_PROOF_FIELDS = frozenset({"version", "snapshot_id", "assets", "account_id", "nonce", "balances",
                           "leaf_index", "path", "root"})
_ROOT_FIELDS = frozenset({"hash", "sums", "leaf_count"})
_PATH_FIELDS = frozenset({"hash", "sums"})
_ROOT_DOC_FIELDS = frozenset({"version", "snapshot_id", "assets", "root"})
MAX_PROOF_BYTES = 64 << 20


@dataclass(frozen=True)
class VerifiedProof:
    """What a valid proof says: this account's balances are inside a tree with these totals."""

    snapshot_id: str
    assets: tuple[str, ...]
    account_id: str
    balances: tuple[int, ...]
    leaf_index: int
    leaf_count: int
    root_hash: str
    root_sums: tuple[int, ...]


def _reject_constant(name: str) -> Any:
    raise ProofInvalid(f"JSON constant {name} is not allowed", field="proof")


def _reject_fraction(text: str) -> Any:
    raise ProofInvalid(f"non-integer number {text} is not allowed; amounts are decimal strings", field="proof")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ProofInvalid(f"field {key!r} appears twice", field=key)
        out[key] = value
    return out


#: A proof is at most three levels deep; anything nested deeper than this is refused unparsed.
MAX_JSON_DEPTH = 16


def json_nesting_depth(data: str | bytes, limit: int = MAX_JSON_DEPTH) -> int:
    """Deepest `[`/`{` nesting outside JSON strings, by a linear scan (no recursion); stops as soon
    as it exceeds `limit`. Run before parsing: the parser recurses once per level. The API's
    WebSocket edge uses it too."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    return deepest
        elif ch in "]}":
            depth -= 1
    return deepest


def parse_json_document(data: str | bytes | Mapping[str, Any], what: str = "proof") -> dict[str, Any]:
    """Parse strictly: no duplicate keys, no floats, no NaN; size bounded."""
    if isinstance(data, Mapping):
        return dict(data)
    if len(data) > MAX_PROOF_BYTES:
        raise ProofInvalid(f"{what} is larger than {MAX_PROOF_BYTES} bytes", field=what)
    if json_nesting_depth(data) > MAX_JSON_DEPTH:
        # checked before parsing: a document nested thousands deep would otherwise recurse through
        # the C JSON decoder (and crash the process if any library raised the recursion limit)
        raise ProofInvalid(f"{what} is nested deeper than {MAX_JSON_DEPTH} levels", field=what)
    try:
        doc = json.loads(data, object_pairs_hook=_no_duplicates, parse_float=_reject_fraction,
                         parse_constant=_reject_constant)
    except ProofInvalid:
        raise
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProofInvalid(f"{what} is not valid JSON: {exc}", field=what) from None
    if not isinstance(doc, dict):
        raise ProofInvalid(f"{what} must be a JSON object", field=what)
    return doc


def _fields(obj: Any, allowed: frozenset[str], where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ProofInvalid(f"{where} must be a JSON object", field=where)
    missing = sorted(allowed - obj.keys())
    if missing:
        raise ProofInvalid(f"{where} is missing field(s) {', '.join(missing)}", field=where)
    extra = sorted(obj.keys() - allowed)
    if extra:
        raise ProofInvalid(f"{where} has unexpected field(s) {', '.join(extra)}", field=where)
    return obj


def _hex32(value: Any, where: str) -> bytes:
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise ProofInvalid("must be 64 lowercase hex characters (32 bytes)", field=where)
    return bytes.fromhex(value)


def _amount(value: Any, where: str) -> int:
    if not isinstance(value, str):
        raise ProofInvalid("must be a decimal string", field=where)
    if not _DECIMAL.fullmatch(value):
        raise ProofInvalid(
            "must be a non-negative integer written as canonical decimal digits (no sign, point, exponent or leading zero)",
            field=where,
        )
    number = int(value)
    if number >= U128_LIMIT:
        raise ProofInvalid("overflows 128 bits", field=where)
    return number


def _amounts(value: Any, n: int, where: str) -> list[int]:
    if not isinstance(value, list):
        raise ProofInvalid("must be a list of decimal strings", field=where)
    if len(value) != n:
        raise ProofInvalid(f"must have exactly {n} entries, one per asset", field=where)
    return [_amount(v, f"{where}[{k}]") for k, v in enumerate(value)]


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProofInvalid("must be a JSON integer", field=where)
    return value


def check_root_document(doc: str | bytes | Mapping[str, Any]) -> dict[str, Any]:
    """Validate a published root file and return it parsed; raise `ProofInvalid` otherwise."""
    root_doc = _fields(parse_json_document(doc, "root file"), _ROOT_DOC_FIELDS, "root file")
    if root_doc["version"] != VERSION:
        raise ProofInvalid(f"unsupported version; expected {VERSION}", field="root file.version")
    _hex32(root_doc["snapshot_id"], "root file.snapshot_id")
    assets = _assets_field(root_doc["assets"], "root file.assets")
    root = _fields(root_doc["root"], _ROOT_FIELDS, "root file.root")
    _hex32(root["hash"], "root file.root.hash")
    _amounts(root["sums"], len(assets), "root file.root.sums")
    _leaf_count(root["leaf_count"], "root file.root.leaf_count")
    return root_doc


def _assets_field(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_ASSETS:
        raise ProofInvalid("must be a list of 1..65535 asset codes", field=where)
    if not all(isinstance(a, str) and 1 <= len(a) <= 64 for a in value):
        raise ProofInvalid("each asset code must be a string of 1-64 characters", field=where)
    if len(set(value)) != len(value):
        raise ProofInvalid("asset codes must not repeat", field=where)
    return value


def _leaf_count(value: Any, where: str) -> int:
    count = _int(value, where)
    if count < 1 or count & (count - 1) or count > 1 << MAX_DEPTH:
        raise ProofInvalid(f"must be a power of two between 1 and 2^{MAX_DEPTH}", field=where)
    return count


def check_proof(proof: str | bytes | Mapping[str, Any],
                root: str | bytes | Mapping[str, Any] | None = None) -> VerifiedProof:
    """Verify a user's proof; return what it proves or raise `ProofInvalid` with the reason.

    With `root` (the published root file) the proof must also match it exactly: snapshot id,
    assets and root hash, sums and leaf count.
    """
    doc = _fields(parse_json_document(proof, "proof"), _PROOF_FIELDS, "proof")
    if doc["version"] != VERSION:
        raise ProofInvalid(f"unsupported version; expected {VERSION}", field="version")
    snapshot_id = _hex32(doc["snapshot_id"], "snapshot_id")
    assets = _assets_field(doc["assets"], "assets")
    n = len(assets)
    account_id = doc["account_id"]
    if not isinstance(account_id, str) or not account_id:
        raise ProofInvalid("must be a non-empty string", field="account_id")
    if len(account_id.encode("utf-8", "surrogatepass")) > MAX_ACCOUNT_ID_BYTES:
        raise ProofInvalid("is longer than 65535 UTF-8 bytes", field="account_id")
    try:
        account_id.encode("utf-8")
    except UnicodeEncodeError:
        raise ProofInvalid("is not valid Unicode text", field="account_id") from None
    nonce = _hex32(doc["nonce"], "nonce")
    balances = _amounts(doc["balances"], n, "balances")
    root_obj = _fields(doc["root"], _ROOT_FIELDS, "root")
    root_hash = _hex32(root_obj["hash"], "root.hash")
    root_sums = _amounts(root_obj["sums"], n, "root.sums")
    leaf_count = _leaf_count(root_obj["leaf_count"], "root.leaf_count")
    depth = leaf_count.bit_length() - 1
    leaf_index = _int(doc["leaf_index"], "leaf_index")
    if not 0 <= leaf_index < leaf_count:
        raise ProofInvalid(f"must be between 0 and leaf_count-1 ({leaf_count - 1})", field="leaf_index")
    path = doc["path"]
    if not isinstance(path, list):
        raise ProofInvalid("must be a list", field="path")
    if len(path) != depth:
        raise ProofInvalid(
            f"has {len(path)} steps but a tree of {leaf_count} leaves needs exactly {depth}", field="path"
        )

    running = leaf_hash(snapshot_id, account_id, nonce, balances)
    sums = list(balances)
    for i, step in enumerate(path):
        step = _fields(step, _PATH_FIELDS, f"path[{i}]")
        sibling = _hex32(step["hash"], f"path[{i}].hash")
        sibling_sums = _amounts(step["sums"], n, f"path[{i}].sums")
        if (leaf_index >> i) & 1 == 0:
            running = node_hash(running, sums, sibling, sibling_sums)
        else:
            running = node_hash(sibling, sibling_sums, running, sums)
        sums = [a + b for a, b in zip(sums, sibling_sums)]
        if any(s >= U128_LIMIT for s in sums):
            raise ProofInvalid(f"sums overflow 128 bits at level {i + 1}", field=f"path[{i}].sums")
    if not hmac.compare_digest(running, root_hash):
        raise ProofInvalid("the path does not lead to the root hash: the proof or the root was altered",
                           field="root.hash")
    if sums != root_sums:
        raise ProofInvalid("the path's sums do not equal the root sums", field="root.sums")
    if root is not None:
        root_doc = check_root_document(root)
        if root_doc["snapshot_id"] != doc["snapshot_id"]:
            raise ProofInvalid("the proof is for a different snapshot than the root file", field="snapshot_id")
        if root_doc["assets"] != assets:
            raise ProofInvalid("the proof's assets differ from the root file's", field="assets")
        if root_doc["root"] != root_obj:
            raise ProofInvalid("the proof's root differs from the published root file", field="root")
    return VerifiedProof(
        snapshot_id=doc["snapshot_id"], assets=tuple(assets), account_id=account_id,
        balances=tuple(balances), leaf_index=leaf_index, leaf_count=leaf_count,
        root_hash=root_obj["hash"], root_sums=tuple(root_sums),
    )


def verify_proof(proof: str | bytes | Mapping[str, Any],
                 root: str | bytes | Mapping[str, Any] | None = None) -> tuple[bool, str]:
    """Offline verifier: (True, "valid") or (False, reason). Never raises for a bad proof."""
    try:
        check_proof(proof, root)
    except ProofInvalid as exc:
        return False, str(exc)
    except ValidationError as exc:  # e.g. a hash-input limit
        return False, str(exc)
    except RecursionError:
        return False, "proof: nested too deeply"
    return True, "valid"

