"""RFC 9591 Appendix E test vectors: every intermediate value, for both ciphersuites."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ringfence.keys import frost
from ringfence.keys.frost import (
    FROST_ED25519_SHA512,
    FROST_SECP256K1_SHA256,
    SigningCommitments,
)

VECTORS = Path(__file__).parent / "vectors"
CASES = [(FROST_SECP256K1_SHA256, "frost_secp256k1_sha256.json"), (FROST_ED25519_SHA512, "frost_ed25519_sha512.json")]


@pytest.mark.parametrize("cs,fname", CASES, ids=["secp256k1", "ed25519"])
def test_rfc9591_vectors(cs: frost.Ciphersuite, fname: str) -> None:
    v = json.loads((VECTORS / fname).read_text())
    g = cs.group
    assert v["config"]["name"] == cs.name
    inp = v["inputs"]
    secret = g.deserialize_scalar(bytes.fromhex(inp["group_secret_key"]))
    assert g.serialize_element(g.base_mul(secret)).hex() == inp["group_public_key"]
    coeffs = [g.deserialize_scalar(bytes.fromhex(c)) for c in inp["share_polynomial_coefficients"]]
    kps = frost.split_secret(cs, secret, int(v["config"]["MIN_PARTICIPANTS"]),
                             int(v["config"]["MAX_PARTICIPANTS"]), coeffs)
    for ps in inp["participant_shares"]:
        assert g.serialize_scalar(kps[ps["identifier"] - 1].secret_share).hex() == ps["participant_share"]
    msg = bytes.fromhex(inp["message"])
    pk = kps[0].group_public_key

    nonces: dict[int, frost.SigningNonces] = {}
    comms: list[SigningCommitments] = []
    for o in v["round_one_outputs"]["outputs"]:
        i = o["identifier"]
        n_, c_ = frost.commit(cs, i, kps[i - 1].secret_share,
                              hiding_randomness=bytes.fromhex(o["hiding_nonce_randomness"]),
                              binding_randomness=bytes.fromhex(o["binding_nonce_randomness"]))
        assert g.serialize_scalar(n_.hiding).hex() == o["hiding_nonce"]
        assert g.serialize_scalar(n_.binding).hex() == o["binding_nonce"]
        assert g.serialize_element(c_.hiding).hex() == o["hiding_nonce_commitment"]
        assert g.serialize_element(c_.binding).hex() == o["binding_nonce_commitment"]
        nonces[i] = n_
        comms.append(c_)
    assert [c.identifier for c in comms] == inp["participant_list"]

    prefix = frost.binding_factor_input_prefix(cs, pk, comms, msg)
    rho = frost.compute_binding_factors(cs, pk, comms, msg)
    for o in v["round_one_outputs"]["outputs"]:
        i = o["identifier"]
        assert (prefix + g.serialize_scalar(i)).hex() == o["binding_factor_input"]
        assert g.serialize_scalar(rho[i]).hex() == o["binding_factor"]

    shares: dict[int, int] = {}
    for o in v["round_two_outputs"]["outputs"]:
        i = o["identifier"]
        z = frost.sign_share(kps[i - 1], nonces[i], msg, comms)
        assert g.serialize_scalar(z).hex() == o["sig_share"]
        assert frost.verify_signature_share(cs, i, kps[i - 1].verifying_shares[i], z, comms, pk, msg)
        shares[i] = z

    sig = frost.aggregate(cs, comms, msg, pk, shares, kps[0].verifying_shares)
    assert sig.hex() == v["final_output"]["sig"]
    assert frost.verify(cs, msg, sig, pk)
    assert not frost.verify(cs, msg + b"x", sig, pk)
    if cs is FROST_ED25519_SHA512:
        # Independent check: the FROST(Ed25519) output is a plain RFC 8032 signature.
        Ed25519PublicKey.from_public_bytes(g.serialize_element(pk)).verify(sig, msg)


@pytest.mark.parametrize("cs,fname", CASES, ids=["secp256k1", "ed25519"])
def test_tampered_share_is_identified(cs: frost.Ciphersuite, fname: str) -> None:
    v = json.loads((VECTORS / fname).read_text())
    g = cs.group
    secret = g.deserialize_scalar(bytes.fromhex(v["inputs"]["group_secret_key"]))
    kps = frost.split_secret(cs, secret, 2, 3)
    msg = b"withdrawal 42"
    pairs = {i: frost.commit(cs, i, kps[i - 1].secret_share) for i in (1, 3)}
    comms = [pairs[1][1], pairs[3][1]]
    shares = {i: frost.sign_share(kps[i - 1], pairs[i][0], msg, comms) for i in (1, 3)}
    shares[3] = (shares[3] + 1) % g.order
    with pytest.raises(frost.InvalidShare) as exc:
        frost.aggregate(cs, comms, msg, kps[0].group_public_key, shares, kps[0].verifying_shares)
    assert exc.value.identifier == 3
