"""A malicious coordinator relaying a DKG cannot equivocate (show participants different round-one
broadcasts) or alter a participant's own broadcast: the ceremony aborts and nothing is stored."""

from __future__ import annotations

from pathlib import Path

import pytest

from ringfence.keys import dkg, frost
from ringfence.keys.share_store import EncryptedShareStore
from ringfence.keys.signer_node import SignerNode
from ringfence.errors import CeremonyFailed


def nodes(tmp: Path) -> dict[int, SignerNode]:
    return {i: SignerNode(EncryptedShareStore(tmp / f"n{i}", f"node-passphrase-{i}", create=True, scrypt_n=2**14), i,
                          name=f"n{i}") for i in (1, 2, 3)}


def round1(ns: dict[int, SignerNode], key_id: str) -> tuple[dict[int, str], dict[int, dict]]:
    tk = {i: n.identity()["transport_public_key"] for i, n in ns.items()}
    return tk, {i: n.dkg_round1(key_id, frost.FROST_SECP256K1_SHA256.name, 2, [1, 2, 3], tk) for i, n in ns.items()}


def test_honest_relay_completes(tmp_path: Path) -> None:
    ns = nodes(tmp_path)
    _tk, r1 = round1(ns, "k")
    pkgs = [r1[i] for i in (1, 2, 3)]
    r2 = {i: n.dkg_round2("k", pkgs) for i, n in ns.items()}
    pubs = [ns[j].dkg_finish("k", {str(i): r2[i][str(j)] for i in (1, 2, 3) if i != j}, "op") for j in (1, 2, 3)]
    assert len({p["group_public_key"] for p in pubs}) == 1


def test_equivocating_coordinator_is_caught(tmp_path: Path) -> None:
    ns = nodes(tmp_path)
    _tk, r1 = round1(ns, "k")
    # The coordinator shows participant 3 a different (but well-formed, proof-carrying) package for 1.
    fake = dkg.DkgParticipant(frost.FROST_SECP256K1_SHA256.name, 1, 2, [1, 2, 3], b"dkg:k").round1()
    view_for_3 = [fake.to_dict(frost.FROST_SECP256K1_SHA256), r1[2], r1[3]]
    honest = [r1[1], r1[2], r1[3]]
    r2 = {1: ns[1].dkg_round2("k", honest), 2: ns[2].dkg_round2("k", honest), 3: ns[3].dkg_round2("k", view_for_3)}
    with pytest.raises(CeremonyFailed):
        ns[3].dkg_finish("k", {"1": r2[1]["3"], "2": r2[2]["3"]}, "op")
    with pytest.raises(CeremonyFailed):
        ns[2].dkg_finish("k", {"1": r2[1]["2"], "3": r2[3]["2"]}, "op")
    assert not any(n.store.has("k") for n in ns.values())


def test_altered_own_broadcast_is_caught(tmp_path: Path) -> None:
    ns = nodes(tmp_path)
    _tk, r1 = round1(ns, "k")
    fake = dkg.DkgParticipant(frost.FROST_SECP256K1_SHA256.name, 2, 2, [1, 2, 3], b"dkg:k").round1()
    with pytest.raises(CeremonyFailed, match="own broadcast"):
        ns[2].dkg_round2("k", [r1[1], fake.to_dict(frost.FROST_SECP256K1_SHA256), r1[3]])
