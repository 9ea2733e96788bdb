"""Encrypted share store and persistent nonce store: tampering, swapping, reuse, restart."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from ringfence.keys import dkg, frost
from ringfence.keys.keylog import KeyOperationLog
from ringfence.keys.nonce_store import NonceStore
from ringfence.keys.share_store import EncryptedShareStore
from ringfence.errors import JournalCorrupt, KeyStoreError, NonceReused, ValidationError

PASS = "correct horse battery staple"
KPS = dkg.run_dkg(frost.FROST_SECP256K1_SHA256, 2, [1, 2, 3], b"stores")


def test_store_roundtrip_wrong_passphrase_tamper_and_swap(tmp_path: Path) -> None:
    st = EncryptedShareStore(tmp_path / "s", PASS, create=True, scrypt_n=2**14)
    st.put("a", KPS[1])
    st.put("b", KPS[2])
    assert st.get("a") == KPS[1]
    again = EncryptedShareStore(tmp_path / "s", PASS)
    assert again.get("b").secret_share == KPS[2].secret_share
    with pytest.raises(KeyStoreError):
        EncryptedShareStore(tmp_path / "s", "wrong passphrase here")
    with pytest.raises(ValidationError):
        EncryptedShareStore(tmp_path / "t", "short", create=True)
    # swapping two files fails authentication (the key id is associated data)
    a, b = (tmp_path / "s/shares/a.bin"), (tmp_path / "s/shares/b.bin")
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    with pytest.raises(KeyStoreError):
        st.get("a")
    a.write_bytes(da[:-1] + bytes([da[-1] ^ 1]))
    with pytest.raises(KeyStoreError):
        st.get("a")
    with pytest.raises(ValidationError):
        st.get("../etc/passwd")


def test_nonce_store_survives_restart(tmp_path: Path) -> None:
    st = EncryptedShareStore(tmp_path / "s", PASS, create=True, scrypt_n=2**14)
    ns = NonceStore(tmp_path / "s/nonces.sqlite", st)
    (nid, comm), (nid2, _) = ns.create("k", KPS[1], 2)
    n1 = ns.consume("k", nid)
    assert frost.SECP256K1.eq(frost.SECP256K1.base_mul(n1.hiding), comm.hiding)
    with pytest.raises(NonceReused):
        ns.consume("k", nid)
    ns.close()
    ns = NonceStore(tmp_path / "s/nonces.sqlite", st)
    with pytest.raises(NonceReused):
        ns.consume("k", nid)
    with pytest.raises(NonceReused):
        ns.consume("other-key", nid2)  # a nonce is bound to its key
    assert ns.discard_open("k") == 1
    with pytest.raises(NonceReused):
        ns.consume("k", nid2)
    row = ns._db.execute("SELECT count(*) FROM nonces WHERE sealed IS NOT NULL").fetchone()
    assert row[0] == 0  # no secret remains for any used nonce


@settings(max_examples=25, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["create", "consume", "restart"]), st.integers(0, 50)), max_size=30))
def test_property_each_nonce_consumed_at_most_once(tmp_path_factory, ops) -> None:  # type: ignore[no-untyped-def]
    d = tmp_path_factory.mktemp("ns")
    st = EncryptedShareStore(d / "s", PASS, create=True, scrypt_n=2**14)
    ns = NonceStore(d / "s/nonces.sqlite", st)
    issued: list[str] = []
    consumed: set[str] = set()
    for op, k in ops:
        if op == "create":
            issued += [nid for nid, _ in ns.create("k", KPS[1], 1 + k % 3)]
        elif op == "restart":
            ns.close()
            ns = NonceStore(d / "s/nonces.sqlite", st)
        elif issued:
            nid = issued[k % len(issued)]
            if nid in consumed:
                with pytest.raises(NonceReused):
                    ns.consume("k", nid)
            else:
                ns.consume("k", nid)
                consumed.add(nid)
    assert ns.open_count("k") == len(issued) - len(consumed)
    ns.close()


def test_keylog_chain_detects_edits(tmp_path: Path) -> None:
    log = KeyOperationLog(tmp_path / "k.jsonl")
    for i in range(3):
        log.append(actor="alice", action="x", key_id="k", reason=f"r{i}")
    assert log.verify() == 3
    with pytest.raises(ValidationError):
        log.append(actor="alice", action="x", key_id="k", reason="r", secret_share="00")
    lines = (tmp_path / "k.jsonl").read_text().splitlines()
    lines[1] = lines[1].replace('"r1"', '"r9"')
    (tmp_path / "k.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(JournalCorrupt):
        log.verify()


def test_keylog_two_writers_interleave_into_one_chain(tmp_path: Path) -> None:
    a = KeyOperationLog(tmp_path / "k.jsonl")
    b = KeyOperationLog(tmp_path / "k.jsonl")  # e.g. another process appending to the same journal
    for i in range(5):
        (a if i % 2 else b).append(actor="x", action="y", key_id="k", reason=str(i))
        a.append(actor="x", action="z", key_id="k", reason=str(i))
    assert a.verify() == 10 and [e["seq"] for e in b.entries()] == list(range(1, 11))
