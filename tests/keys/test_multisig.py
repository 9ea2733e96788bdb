"""Multisig cold storage: nominated quorum spends, a non-nominated set is refused; nomination re-checks."""

from __future__ import annotations

import hashlib
import itertools
import random
from pathlib import Path

import pytest
from embit import bip32
from embit.networks import NETWORKS
from hypothesis import given, settings, strategies as st

from ringfence.keys.multisig import ColdWallet, holder_xpub_entry, nominate_quorum, sign_psbt_offline
from ringfence.errors import QuorumNotNominated

SEED = 8
NET = NETWORKS["regtest"]


def holders(n: int, seed: int = SEED) -> list[bip32.HDKey]:
    print("seed", seed)
    rng = random.Random(seed)
    return [bip32.HDKey.from_seed(rng.randbytes(32), version=NET["xprv"]) for _ in range(n)]


def wallet(roots: list[bip32.HDKey], m: int) -> ColdWallet:
    return ColdWallet(f"wsh(sortedmulti({m},{','.join(holder_xpub_entry(r) for r in roots)}))")


@pytest.mark.parametrize("m,n", [(2, 3), (3, 5)])
def test_nominated_quorum_spends_other_set_refused(tmp_path: Path, m: int, n: int) -> None:
    roots = holders(n)
    w = wallet(roots, m)
    by_fp = {r.my_fingerprint.hex(): r for r in roots}
    block_hash = hashlib.sha256(b"block 812345").digest()
    nom = nominate_quorum(w.holders, m, block_hash, "withdrawal-77", 812345)
    assert len(nom.selected) == m and set(nom.selected) <= set(w.holders)
    psbt = w.create_psbt([{"txid": "ab" * 32, "vout": 1, "amount_sat": 5_000_000, "index": 3},
                          {"txid": "cd" * 32, "vout": 0, "amount_sat": 1_000_000, "index": 4}],
                         [(bytes.fromhex("0014" + "11" * 20), 5_990_000)], fee_sat=10_000)
    # Each holder signs offline: the PSBT travels as a file between separate directories.
    f = tmp_path / "unsigned.psbt"
    f.write_text(psbt)
    for fp in nom.selected:
        holder_dir = tmp_path / fp
        holder_dir.mkdir()
        (holder_dir / "in.psbt").write_text(f.read_text())
        (holder_dir / "out.psbt").write_text(sign_psbt_offline((holder_dir / "in.psbt").read_text(), by_fp[fp]))
        f.write_text((holder_dir / "out.psbt").read_text())
    raw = w.finalize(f.read_text(), nom, block_hash.hex())  # interpreter-checked spend
    assert len(raw) > 200

    others = [c for c in itertools.combinations(w.holders, m) if set(c) != set(nom.selected)]
    for combo in others[:3]:
        p = psbt
        for fp in combo:
            p = sign_psbt_offline(p, by_fp[fp])
        with pytest.raises(QuorumNotNominated):
            w.finalize(p, nom, block_hash.hex())
    # a superset that includes the quorum plus an outsider is also refused (nobody else may sign)
    if m < n:
        p = psbt
        outsider = next(fp for fp in w.holders if fp not in nom.selected)
        for fp in (*nom.selected, outsider):
            p = sign_psbt_offline(p, by_fp[fp])
        with pytest.raises(QuorumNotNominated):
            w.finalize(p, nom, block_hash.hex())


def test_nomination_rechecks_and_cannot_be_forged() -> None:
    roots = holders(5)
    w = wallet(roots, 3)
    bh = hashlib.sha256(b"b").digest()
    nom = nominate_quorum(w.holders, 3, bh, "req-1", 100)
    assert nom.verify(bh.hex())
    assert not nom.verify(hashlib.sha256(b"other block").hexdigest())
    other = next(q for q in itertools.combinations(sorted(w.holders), 3) if q != tuple(sorted(nom.selected)))
    forged = type(nom)(**{**nom.__dict__, "selected": other})
    assert forged.selected != nom.selected
    assert not forged.verify(bh.hex())
    with pytest.raises(QuorumNotNominated):
        w.finalize("", forged, bh.hex())


@settings(max_examples=200, deadline=None)
@given(block=st.binary(min_size=32, max_size=32), rid=st.text(min_size=1, max_size=40), m=st.integers(1, 5))
def test_property_nomination_deterministic_and_well_formed(block: bytes, rid: str, m: int) -> None:
    fps = [hashlib.sha256(bytes([i])).hexdigest()[:8] for i in range(5)]
    a = nominate_quorum(fps, m, block, rid, 1)
    b = nominate_quorum(list(reversed(fps)), m, block, rid, 1)
    assert a.selected == b.selected  # order of holders does not matter
    assert len(set(a.selected)) == m and set(a.selected) <= set(fps)
    assert a.verify(block.hex())


def test_every_holder_gets_nominated_sometimes() -> None:
    fps = [hashlib.sha256(bytes([i])).hexdigest()[:8] for i in range(5)]
    counts = {fp: 0 for fp in fps}
    for k in range(500):
        for fp in nominate_quorum(fps, 2, hashlib.sha256(k.to_bytes(4, "big")).digest(), "r", k).selected:
            counts[fp] += 1
    assert all(120 < c < 280 for c in counts.values()), counts  # expected 200 each


def test_create_psbt_conserves_value() -> None:
    w = wallet(holders(3), 2)
    with pytest.raises(Exception, match="fee"):
        w.create_psbt([{"txid": "ab" * 32, "vout": 0, "amount_sat": 1000, "index": 0}], [(b"\x00\x14" + b"\x11" * 20, 990)], 5)
