"""Proof of liabilities (ringfence-por-v1): builder, proofs, verifier, vectors, attacks."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ringfence.errors import ConfigError, ValidationError
from ringfence.solvency.pol import (
    DEV_SECRET,
    U128_LIMIT,
    ProofStore,
    build_liability_tree,
    check_proof,
    derive_nonce,
    load_secret,
    verify_proof,
)
from ringfence.solvency.vectors import TAMPERINGS, VECTOR_SEED, generate_vectors, tamper, vectors_json

ROOT = Path(__file__).resolve().parents[2]
SNAP = hashlib.sha256(b"test snapshot").digest()
SECRET = b"s" * 32
ASSETS = ["BTC", "ETH", "USDT"]


# ---- an independent reference implementation (struct-free, recursive, written from the spec) ----

def ref_u128(x: int) -> bytes:
    assert 0 <= x < 2**128
    return bytes((x >> (8 * (15 - i))) & 0xFF for i in range(16))


def ref_leaf(snap: bytes, account_id: str, nonce: bytes, balances: list[int]) -> bytes:
    idb = account_id.encode()
    msg = b"ringfence/por/v1/leaf" + snap + bytes([len(idb) >> 8, len(idb) & 0xFF]) + idb + nonce
    msg += bytes([len(balances) >> 8, len(balances) & 0xFF]) + b"".join(ref_u128(b) for b in balances)
    return hashlib.sha256(msg).digest()


def ref_node(lh: bytes, ls: list[int], rh: bytes, rs: list[int]) -> bytes:
    msg = b"ringfence/por/v1/node" + lh + b"".join(map(ref_u128, ls)) + rh + b"".join(map(ref_u128, rs))
    return hashlib.sha256(msg).digest()


def ref_root(leaves: list[tuple[bytes, list[int]]]) -> tuple[bytes, list[int]]:
    if len(leaves) == 1:
        return leaves[0]
    half = len(leaves) // 2
    lh, ls = ref_root(leaves[:half])
    rh, rs = ref_root(leaves[half:])
    return ref_node(lh, ls, rh, rs), [a + b for a, b in zip(ls, rs)]


def accounts_for(size: int, seed: int, n: int = 3) -> list[tuple[str, list[int]]]:
    rng = random.Random(seed)
    return [(f"acct-{i}", [rng.choice([0, rng.randrange(10**12), rng.randrange(10**30)]) for _ in range(n)])
            for i in range(size)]


# ---- vectors -----------------------------------------------------------------------------------

def test_published_vectors_regenerate_byte_for_byte() -> None:
    print(f"vector seed {VECTOR_SEED}")
    published = (ROOT / "docs" / "por-vectors.json").read_text(encoding="utf-8")
    assert vectors_json(VECTOR_SEED) == published


def test_vector_primitives_match_the_reference_implementation() -> None:
    v = json.loads((ROOT / "docs" / "por-vectors.json").read_text(encoding="utf-8"))
    for key in ("leaf", "leaf_unicode_id"):
        leaf = v["primitives"][key]
        got = ref_leaf(bytes.fromhex(leaf["snapshot_id"]), leaf["account_id"], bytes.fromhex(leaf["nonce"]),
                       [int(b) for b in leaf["balances"]])
        assert got.hex() == leaf["hash"]
    node = v["primitives"]["node"]
    got = ref_node(bytes.fromhex(node["left_hash"]), [1, 2], bytes.fromhex(node["right_hash"]), [3, 4])
    assert got.hex() == node["hash"]
    nonce = v["primitives"]["nonce"]
    expect = hmac.new(bytes.fromhex(nonce["secret_hex"]),
                      b"ringfence/por/v1/nonce" + bytes.fromhex(nonce["snapshot_id"]) + b"alice",
                      hashlib.sha256).hexdigest()
    assert expect == nonce["nonce"]
    for tree in v["trees"]:
        for proof in tree["proofs"]:
            assert verify_proof(proof, tree["root_file"]) == (True, "valid")
    for case in v["invalid"]:
        ok, reason = verify_proof(case["proof"])
        assert not ok and reason, case["tampering"]


def test_different_seed_gives_different_vectors() -> None:
    assert generate_vectors(1)["trees"][0]["root_file"] != generate_vectors(2)["trees"][0]["root_file"]


# ---- valid trees --------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [1, 2, 3, 5, 1000])
def test_every_proof_verifies_and_root_matches_reference(size: int) -> None:
    accounts = accounts_for(size, seed=size)
    tree = build_liability_tree(SNAP, ASSETS, accounts, SECRET)
    assert tree.leaf_count == max(1, 1 << (size - 1).bit_length())
    assert tree.leaf_count & (tree.leaf_count - 1) == 0
    totals = [sum(b[k] for _, b in accounts) for k in range(3)]
    assert list(tree.root_sums) == totals
    assert tree.totals() == dict(zip(ASSETS, totals))
    # Rebuild the root independently from the leaf layout the builder chose.
    leaves: list[tuple[bytes, list[int]]] = [None] * tree.leaf_count  # type: ignore[list-item]
    for _entry, (account_id, balances) in enumerate(accounts):
        pos = tree.position_of(account_id)
        leaves[pos] = (ref_leaf(SNAP, account_id, derive_nonce(SECRET, SNAP, account_id), balances), balances)
    for pos in range(tree.leaf_count):
        if leaves[pos] is None:  # padding: zero balances, empty account id
            leaves[pos] = (tree.level_hashes[0][pos].tobytes(), [0, 0, 0])
            assert not tree.level_sums[0][pos].any()
    root_hash, root_sums = ref_root(leaves)
    assert root_hash == tree.root_hash and root_sums == totals
    root_file = tree.root_document()
    for account_id, balances in accounts:
        proof = tree.proof_for(account_id)
        assert proof["account_id"] == account_id
        assert [int(b) for b in proof["balances"]] == balances
        assert len(proof["path"]) == tree.depth
        assert verify_proof(proof, root_file) == (True, "valid")
        assert verify_proof(json.dumps(proof)) == (True, "valid")
    streamed = dict(tree.iter_proof_lines())
    assert set(streamed) == {a for a, _ in accounts}
    for account_id, line in streamed.items():
        assert json.loads(line) == tree.proof_for(account_id)


def test_padding_leaves_are_empty_and_unpredictable() -> None:
    accounts = accounts_for(3, seed=1)
    tree = build_liability_tree(SNAP, ASSETS, accounts, SECRET, min_leaf_count=16)
    assert tree.leaf_count == 16
    real = {tree.position_of(a) for a, _ in accounts}
    padding_hashes = {tree.level_hashes[0][p].tobytes() for p in range(16) if p not in real}
    assert len(padding_hashes) == 13  # distinct nonces make every padding leaf distinct


def test_shuffle_depends_on_snapshot_and_secret() -> None:
    accounts = accounts_for(64, seed=3)
    a = build_liability_tree(SNAP, ASSETS, accounts, SECRET)
    b = build_liability_tree(hashlib.sha256(b"other").digest(), ASSETS, accounts, SECRET)
    c = build_liability_tree(SNAP, ASSETS, accounts, b"t" * 32)
    order = [a.position_of(x) for x, _ in accounts]
    assert order != list(range(64))
    assert order != [b.position_of(x) for x, _ in accounts]
    assert order != [c.position_of(x) for x, _ in accounts]
    # Same inputs: byte-for-byte the same tree.
    again = build_liability_tree(SNAP, ASSETS, accounts, SECRET)
    assert again.root_document() == a.root_document()


def test_large_u128_balances() -> None:
    accounts = [("whale", [U128_LIMIT // 2 - 1, 0, 7]), ("shrimp", [U128_LIMIT // 2, 1, 0])]
    tree = build_liability_tree(SNAP, ASSETS, accounts, SECRET)
    assert tree.root_sums == (U128_LIMIT - 1, 1, 7)
    assert verify_proof(tree.proof_for("whale"), tree.root_document())[0]


def test_unicode_and_quoted_account_ids() -> None:
    accounts = [("zoë \"q\" \\ 用户", [1, 2, 3]), ("plain", [0, 0, 0])]
    tree = build_liability_tree(SNAP, ASSETS, accounts, SECRET)
    lines = dict(tree.iter_proof_lines())
    assert verify_proof(lines["zoë \"q\" \\ 用户"])[0]


# ---- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize("accounts, field", [
    ([("a", [1, -1, 0])], "balances[a][ETH]"),
    ([("a", [1, True, 0])], "balances[a][ETH]"),
    ([("a", [1, 2, 1.5])], "balances[a][USDT]"),
    ([("a", [1, 2, "3"])], "balances[a][USDT]"),
    ([("a", [U128_LIMIT, 0, 0])], "balances[a][BTC]"),
    ([("a", [1, 2])], "balances[a]"),
    ([("", [1, 2, 3])], "account_id"),
    ([("a", [1, 2, 3]), ("a", [0, 0, 0])], "account_id[a]"),
    ([("a", [U128_LIMIT - 1, 0, 0]), ("b", [1, 0, 0])], "balances"),
])
def test_bad_input_is_rejected_with_the_field_named(accounts: list, field: str) -> None:
    with pytest.raises(ValidationError) as info:
        build_liability_tree(SNAP, ASSETS, accounts, SECRET)
    assert info.value.field == field


def test_bad_snapshot_and_assets() -> None:
    with pytest.raises(ValidationError, match="snapshot_id"):
        build_liability_tree(b"short", ASSETS, [], SECRET)
    with pytest.raises(ValidationError, match="assets"):
        build_liability_tree(SNAP, [], [], SECRET)
    with pytest.raises(ValidationError, match="repeat"):
        build_liability_tree(SNAP, ["BTC", "BTC"], [], SECRET)


def test_secret_policy() -> None:
    with pytest.raises(ConfigError):
        load_secret(None, dev_mode=False)
    with pytest.raises(ConfigError):
        load_secret(DEV_SECRET, dev_mode=False)
    with pytest.raises(ConfigError):
        load_secret("short", dev_mode=False)
    assert load_secret(None, dev_mode=True) == DEV_SECRET
    assert load_secret("k" * 32, dev_mode=False) == b"k" * 32


def test_nonce_is_hmac_of_secret_snapshot_and_account() -> None:
    expect = hmac.new(SECRET, b"ringfence/por/v1/nonce" + SNAP + b"alice", hashlib.sha256).digest()
    assert derive_nonce(SECRET, SNAP, "alice") == expect
    assert derive_nonce(SECRET, SNAP, "bob") != expect


# ---- tampering ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tree1000():
    return build_liability_tree(SNAP, ASSETS, accounts_for(1000, seed=1000), SECRET)


@pytest.mark.parametrize("name", sorted(TAMPERINGS))
@pytest.mark.parametrize("size", [2, 5, 1000])
def test_each_tampering_is_caught(name: str, size: int, tree1000) -> None:
    tree = tree1000 if size == 1000 else build_liability_tree(SNAP, ASSETS, accounts_for(size, seed=size), SECRET)
    for account_id in tree.account_ids[:5]:
        proof = tree.proof_for(account_id)
        assert verify_proof(proof, tree.root_document()) == (True, "valid")
        bad = tamper(proof, name)
        assert bad != proof
        ok, reason = verify_proof(bad)
        assert not ok, name
        assert reason
        ok_with_root, _ = verify_proof(bad, tree.root_document())
        assert not ok_with_root


def test_tampered_root_file_is_caught(tree1000) -> None:
    proof = tree1000.proof_for("acct-7")
    root = tree1000.root_document()
    for mutate in (lambda r: r["root"].update(hash="00" * 32),
                   lambda r: r["root"]["sums"].__setitem__(0, "1"),
                   lambda r: r.update(assets=["BTC", "ETH", "USDC"]),
                   lambda r: r.update(snapshot_id="ab" * 32),
                   lambda r: r.update(extra=1)):
        bad = copy.deepcopy(root)
        mutate(bad)
        assert verify_proof(proof, bad)[0] is False


def test_garbage_documents() -> None:
    for doc in ("", "[]", "{", '{"a": NaN}', "null", '{"version": 1.5}', b"\xff\xfe"):
        ok, reason = verify_proof(doc)
        assert not ok and reason
    ok, reason = verify_proof("[" * 100000 + "]" * 100000)
    assert not ok


# ---- the max-child attack -----------------------------------------------------------------------

def test_max_child_attack_is_rejected() -> None:
    """An exchange that sets a parent's sums to max(left, right) instead of left + right.

    In sum-only trees (parent hash over child hashes and the parent's own sum) each user sees only
    their sibling's sum and the parent total, so a parent claiming max(l, r) hides the smaller
    child's liabilities. Here a parent hashes both children's sums, so the lie must show somewhere.
    """
    accounts = [("alice", [100, 0, 0]), ("bob", [60, 0, 0])]
    nonce = {a: derive_nonce(SECRET, SNAP, a) for a, _ in accounts}
    la = ref_leaf(SNAP, "alice", nonce["alice"], [100, 0, 0])
    lb = ref_leaf(SNAP, "bob", nonce["bob"], [60, 0, 0])
    root_hash = ref_node(la, [100, 0, 0], lb, [60, 0, 0])
    forged_sums = ["100", "0", "0"]  # max child, hiding bob's 60
    proof_alice = {
        "version": "ringfence-por-v1", "snapshot_id": SNAP.hex(), "assets": ASSETS, "account_id": "alice",
        "nonce": nonce["alice"].hex(), "balances": ["100", "0", "0"], "leaf_index": 0,
        "path": [{"hash": lb.hex(), "sums": ["60", "0", "0"]}],
        "root": {"hash": root_hash.hex(), "sums": forged_sums, "leaf_count": 2},
    }
    ok, reason = verify_proof(proof_alice)
    assert not ok and "sums" in reason
    # Variant: tell alice her sibling holds 0 so the sums add up -> the root hash no longer matches.
    proof_alice["path"][0]["sums"] = ["0", "0", "0"]
    ok, reason = verify_proof(proof_alice)
    assert not ok and "root hash" in reason
    # Variant: re-hash the root over the lie -> bob's own proof then fails.
    lie_root = ref_node(la, [100, 0, 0], lb, [0, 0, 0])
    proof_bob = {
        "version": "ringfence-por-v1", "snapshot_id": SNAP.hex(), "assets": ASSETS, "account_id": "bob",
        "nonce": nonce["bob"].hex(), "balances": ["60", "0", "0"], "leaf_index": 1,
        "path": [{"hash": la.hex(), "sums": ["100", "0", "0"]}],
        "root": {"hash": lie_root.hex(), "sums": forged_sums, "leaf_count": 2},
    }
    assert not verify_proof(proof_bob)[0]
    # And the honest proof passes, so the checks above are not vacuous.
    proof_alice["path"][0]["sums"] = ["60", "0", "0"]
    proof_alice["root"]["sums"] = ["160", "0", "0"]
    assert verify_proof(proof_alice) == (True, "valid")


# ---- publishing and reading back ------------------------------------------------------------------

@pytest.mark.parametrize("size", [0, 1, 2, 300])
def test_proof_store_roundtrip(tmp_path: Path, size: int) -> None:
    accounts = accounts_for(size, seed=9) + [("odd\tid\n", [1, 5, 1])]
    tree = build_liability_tree(SNAP, ASSETS, accounts, SECRET)
    tree.write_store(tmp_path)
    store = ProofStore(tmp_path)
    assert set(store.account_ids()) == {a for a, _ in accounts}
    for account_id, _ in accounts:
        assert store.proof_for(account_id) == tree.proof_for(account_id)
    with pytest.raises(KeyError):
        store.proof_for("nobody")


def test_proof_lines_export(tmp_path: Path) -> None:
    accounts = accounts_for(300, seed=9)
    tree = build_liability_tree(SNAP, ASSETS, accounts, SECRET)
    assert tree.write_proof_lines(tmp_path, shard_lines=64) == 300
    shards = sorted(tmp_path.glob("*.jsonl"))
    assert len(shards) == 5
    lines = [line for shard in shards for line in shard.read_text().splitlines()]
    assert sorted(json.loads(line)["account_id"] for line in lines) == sorted(a for a, _ in accounts)
    assert all(verify_proof(line)[0] for line in lines)


# ---- properties ---------------------------------------------------------------------------------

balances_st = st.integers(min_value=0, max_value=2**120)


@st.composite
def ledgers(draw):
    n = draw(st.integers(1, 4))
    count = draw(st.integers(1, 24))
    ids = draw(st.lists(st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=8),
                        min_size=count, max_size=count, unique=True))
    rows = [draw(st.lists(balances_st, min_size=n, max_size=n)) for _ in ids]
    return [f"A{k}" for k in range(n)], list(zip(ids, rows))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ledgers(), st.binary(min_size=32, max_size=32))
def test_property_every_proof_verifies_and_sums_equal_totals(ledger, snapshot_id) -> None:
    assets, accounts = ledger
    tree = build_liability_tree(snapshot_id, assets, accounts, SECRET)
    root = tree.root_document()
    for k in range(len(assets)):
        assert tree.root_sums[k] == sum(b[k] for _, b in accounts)
    for account_id, balances in accounts:
        result = check_proof(tree.proof_for(account_id), root)
        assert result.balances == tuple(balances)
        assert result.root_sums == tree.root_sums


def _leaves_of(doc, prefix=()):
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _leaves_of(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _leaves_of(v, prefix + (i,))
    else:
        yield prefix, doc


def _mutated(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if value.isdigit() and value == str(int(value)):
        return str(int(value) + 1)
    if len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return ("0" if value[0] != "0" else "1") + value[1:]
    return value + "x"


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ledgers(), st.data())
def test_property_any_single_field_change_breaks_verification(ledger, data) -> None:
    assets, accounts = ledger
    tree = build_liability_tree(SNAP, assets, accounts, SECRET)
    account_id = data.draw(st.sampled_from([a for a, _ in accounts]))
    proof = tree.proof_for(account_id)
    fields = list(_leaves_of(proof))
    path, value = data.draw(st.sampled_from(fields))
    bad = copy.deepcopy(proof)
    target = bad
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = _mutated(value)
    ok, _ = verify_proof(bad, tree.root_document())
    assert not ok, f"changing {path} from {value!r} still verified"


def test_vectorised_fragment_text_matches_python_formatting() -> None:
    import numpy as np

    from ringfence.solvency.pol_builder import _node_fragments

    edges = [0, 1, 9, 10, 99, 9999, 10000, 123456789, 10**19 - 1, 10**19, 2**64 - 1, 2**64, 2**128 - 1]
    rng = random.Random(5)
    print("seed 5")
    rows = [[rng.choice(edges) for _ in range(3)] for _ in range(200)] + [[e, e, e] for e in edges]
    records = []
    for row in rows:
        h = hashlib.sha256(repr(row).encode()).digest()
        records.append(h + b"".join(v.to_bytes(16, "big") for v in row))
    arr = np.frombuffer(b"".join(records), dtype=np.uint8).reshape(len(rows), 32 + 48)
    for frag, rec, row in zip(_node_fragments(arr, 3), records, rows):
        assert json.loads(frag) == {"hash": rec[:32].hex(), "sums": [str(v) for v in row]}
        assert frag == json.dumps({"hash": rec[:32].hex(), "sums": [str(v) for v in row]},
                                  separators=(",", ":")).encode()


def test_deeply_nested_garbage_is_refused_unparsed_even_with_a_high_recursion_limit() -> None:
    """py-evm raises the interpreter's recursion limit on import; a hostile proof nested 100,000
    deep must then still be refused before the C JSON decoder recurses into it (a crash found in CI)."""
    import sys

    old = sys.getrecursionlimit()
    sys.setrecursionlimit(1_000_000)
    try:
        ok, reason = verify_proof("[" * 100_000 + "]" * 100_000)
        assert not ok and "nested deeper" in reason
        ok, reason = verify_proof('{"a": "' + "[" * 50 + '"}')  # brackets inside a string are text
        assert not ok and "nested" not in reason
    finally:
        sys.setrecursionlimit(old)
