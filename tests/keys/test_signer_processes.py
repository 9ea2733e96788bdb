"""FROST across real signer processes over HTTP on 127.0.0.1: DKG, signing, nonce reuse across
restarts, refresh, reshare (add/remove a signer), t-1 refusal, encryption at rest."""

from __future__ import annotations

import coincurve
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ringfence.keys import frost
from ringfence.keys.coordinator import ThresholdCoordinator
from ringfence.keys.interface import Scheme, SigningRequest
from ringfence.keys.share_store import EncryptedShareStore
from ringfence.errors import SigningRefused

from .conftest import PASSPHRASES, TOKEN, SignerProcs


def req(key_id: str, digest: bytes, scheme: Scheme, rid: str = "r1") -> SigningRequest:
    return SigningRequest(request_id=rid, key_id=key_id, digest=digest, scheme=scheme, requested_by="alice",
                          reason="test withdrawal")


@pytest.fixture(scope="module")
def cluster(signer_procs: SignerProcs) -> ThresholdCoordinator:
    for i in (1, 2, 3):
        signer_procs.start(i)
    coord = ThresholdCoordinator(dict(signer_procs.url), TOKEN)
    coord.create_key("btc-hot", frost.FROST_SECP256K1_SHA256.name, 2, [1, 2, 3])
    coord.create_key("sol-hot", frost.FROST_ED25519_SHA512.name, 2, [1, 2, 3])
    return coord


def test_dkg_over_processes_and_bip340_signature(cluster: ThresholdCoordinator) -> None:
    digest = bytes(range(32))
    for quorum in ([1, 2], [1, 3], [2, 3]):
        sig = cluster.sign(req("btc-hot", digest, Scheme.BIP340), quorum)
        assert coincurve.PublicKeyXOnly(sig.public_key).verify(sig.signature, digest)
        assert sig.signers == tuple(f"frost:{i}" for i in quorum)


def test_ed25519_over_processes(cluster: ThresholdCoordinator) -> None:
    sig = cluster.sign(req("sol-hot", b"pay 5 SOL to x", Scheme.FROST_ED25519))
    Ed25519PublicKey.from_public_bytes(sig.public_key).verify(sig.signature, b"pay 5 SOL to x")


def test_scheme_must_fit_key(cluster: ThresholdCoordinator) -> None:
    with pytest.raises(Exception, match="scheme"):
        cluster.sign(req("sol-hot", bytes(32), Scheme.BIP340))


def test_t_minus_one_signers_refused(cluster: ThresholdCoordinator, signer_procs: SignerProcs) -> None:
    with pytest.raises(SigningRefused):
        cluster.sign(req("btc-hot", bytes(32), Scheme.BIP340), [2])
    # Directly: a signer refuses to produce a share for a commitment list below the threshold.
    h = {"Authorization": f"Bearer {TOKEN}"}
    c = httpx.post(signer_procs.url[1] + "/v1/commit", json={"key_id": "btc-hot", "count": 1}, headers=h).json()
    c = c["commitments"][0]
    r = httpx.post(signer_procs.url[1] + "/v1/sign", headers=h, json={
        "key_id": "btc-hot", "scheme": "frost-secp256k1-bip340", "message": "00" * 32, "nonce_id": c["nonce_id"],
        "commitments": [c["commitments"]], "request_id": "x"})
    assert r.status_code == 400 and "at least 2" in r.json()["message"]


def test_nonce_reuse_refused_even_after_restart(cluster: ThresholdCoordinator, signer_procs: SignerProcs) -> None:
    h = {"Authorization": f"Bearer {TOKEN}"}
    c1 = httpx.post(signer_procs.url[1] + "/v1/commit", json={"key_id": "btc-hot", "count": 1}, headers=h).json()["commitments"][0]
    c2 = httpx.post(signer_procs.url[2] + "/v1/commit", json={"key_id": "btc-hot", "count": 1}, headers=h).json()["commitments"][0]
    body = {"key_id": "btc-hot", "scheme": "frost-secp256k1-bip340", "nonce_id": c1["nonce_id"],
            "commitments": [c1["commitments"], c2["commitments"]], "request_id": "n1"}
    first = httpx.post(signer_procs.url[1] + "/v1/sign", headers=h, json={**body, "message": "11" * 32})
    assert first.status_code == 200
    again = httpx.post(signer_procs.url[1] + "/v1/sign", headers=h, json={**body, "message": "22" * 32})
    assert again.status_code == 409 and again.json()["code"] == "RF_NONCE_REUSED"
    signer_procs.restart(1)
    cluster.signers[1] = signer_procs.url[1]
    after = httpx.post(signer_procs.url[1] + "/v1/sign", headers=h, json={**body, "message": "22" * 32})
    assert after.status_code == 409 and after.json()["code"] == "RF_NONCE_REUSED"
    unknown = httpx.post(signer_procs.url[1] + "/v1/sign", headers=h, json={**body, "nonce_id": "ab" * 16, "message": "22" * 32})
    assert unknown.status_code == 409
    sig = cluster.sign(req("btc-hot", bytes(32), Scheme.BIP340, "after-restart"), [1, 2])
    assert coincurve.PublicKeyXOnly(sig.public_key).verify(sig.signature, bytes(32))


def test_requests_without_token_refused(signer_procs: SignerProcs, cluster: ThresholdCoordinator) -> None:
    r = httpx.post(signer_procs.url[2] + "/v1/commit", json={"key_id": "btc-hot", "count": 1})
    assert r.status_code == 401
    r = httpx.post(signer_procs.url[2] + "/v1/commit", json={"key_id": "btc-hot", "count": 1},
                   headers={"Authorization": "Bearer wrong-token-wrong-token-wrong"})
    assert r.status_code == 401


def test_refresh_and_reshare_over_processes(cluster: ThresholdCoordinator, signer_procs: SignerProcs) -> None:
    pk = cluster.public_key("btc-hot", Scheme.BIP340)
    store2 = EncryptedShareStore(signer_procs.root / "signer-2", PASSPHRASES[2])
    before = store2.get("btc-hot").secret_share
    cluster.refresh("btc-hot")
    assert store2.get("btc-hot").secret_share != before
    assert cluster.public_key("btc-hot", Scheme.BIP340) == pk
    sig = cluster.sign(req("btc-hot", b"\x01" * 32, Scheme.BIP340, "post-refresh"), [2, 3])
    assert coincurve.PublicKeyXOnly(pk).verify(sig.signature, b"\x01" * 32)

    # add signer 4, remove signer 2, keep 2-of-3 and the same key
    url4 = signer_procs.start(4)
    cluster.reshare("btc-hot", [1, 3], {1: signer_procs.url[1], 3: signer_procs.url[3], 4: url4}, 2, "rotate out signer-2")
    assert cluster.public_key("btc-hot", Scheme.BIP340) == pk
    assert not store2.has("btc-hot")
    sig = cluster.sign(req("btc-hot", b"\x02" * 32, Scheme.BIP340, "post-reshare"), [3, 4])
    assert coincurve.PublicKeyXOnly(pk).verify(sig.signature, b"\x02" * 32)


def test_shares_and_nonces_encrypted_at_rest(cluster: ThresholdCoordinator, signer_procs: SignerProcs) -> None:
    cluster.sign(req("btc-hot", b"\x03" * 32, Scheme.BIP340, "enc"), [1, 3])
    store = EncryptedShareStore(signer_procs.root / "signer-1", PASSPHRASES[1])
    kp = store.get("btc-hot")
    secret_hex = kp.suite.group.serialize_scalar(kp.secret_share).hex()
    secret_bytes = bytes.fromhex(secret_hex)
    for f in (signer_procs.root).rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            assert secret_bytes not in data and secret_hex.encode() not in data, f"share in clear in {f}"
    with pytest.raises(Exception, match="passphrase"):
        EncryptedShareStore(signer_procs.root / "signer-1", "a wrong passphrase!!")


def test_three_of_five_over_processes_spends_taproot_output(cluster: ThresholdCoordinator,
                                                             signer_procs: SignerProcs) -> None:
    from bitcointx.core import COutPoint, CMutableTransaction, CTxIn, CTxInWitness, CTxOut, CTxWitness, lx
    from bitcointx.core.script import CScript, CScriptWitness

    from ringfence.keys import taproot

    for i in (1, 2, 3, 4, 5):
        if i not in signer_procs.procs:
            signer_procs.start(i)
    c = ThresholdCoordinator({i: signer_procs.url[i] for i in (1, 2, 3, 4, 5)}, TOKEN)
    pkg = c.create_key("btc-3of5", frost.FROST_SECP256K1_SHA256.name, 3, [1, 2, 3, 4, 5])
    spk = taproot.p2tr_script_pubkey(pkg.kp)
    assert spk[2:] == c.public_key("btc-3of5", Scheme.TAPROOT_KEYPATH)
    funding = CTxOut(250_000, CScript(spk))
    tx = CMutableTransaction([CTxIn(COutPoint(lx("aa" * 32), 1))], [CTxOut(249_000, CScript(b"\x00\x14" + b"\x05" * 20))])
    digest = taproot.keypath_sighash(tx, 0, [funding])
    with pytest.raises(SigningRefused):
        c.sign(req("btc-3of5", digest, Scheme.TAPROOT_KEYPATH, "tr-short"), [1, 5])
    sig = c.sign(req("btc-3of5", digest, Scheme.TAPROOT_KEYPATH, "tr-1"), [2, 4, 5])
    tx.wit = CTxWitness([CTxInWitness(CScriptWitness([sig.signature]))])
    assert taproot.verify_keypath_spend(tx, 0, [funding])
    c.close()


def test_coordinator_fails_over_when_a_signer_is_down(cluster: ThresholdCoordinator, signer_procs: SignerProcs) -> None:
    holders = sorted(cluster.key("btc-hot").kp.verifying_shares)
    assert holders == [1, 3, 4]  # after the reshare test removed signer 2
    signer_procs.stop(1)
    try:
        sig = cluster.sign(req("btc-hot", b"\x21" * 32, Scheme.BIP340, "failover"))
        assert sig.signers == ("frost:3", "frost:4")
        assert coincurve.PublicKeyXOnly(sig.public_key).verify(sig.signature, b"\x21" * 32)
        signer_procs.stop(3)
        with pytest.raises(SigningRefused, match="need 2"):
            cluster.sign(req("btc-hot", b"\x22" * 32, Scheme.BIP340, "two-down"))
    finally:
        for i in (1, 3):
            if i not in signer_procs.procs:
                signer_procs.start(i)
                cluster.signers[i] = signer_procs.url[i]
