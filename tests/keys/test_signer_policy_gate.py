"""Signer processes started with a policy public key refuse to produce shares without a valid
policy-approval attestation for the same key and digest (the coordinator alone cannot get a signature)."""

from __future__ import annotations

import time

import coincurve
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ringfence.keys import frost
from ringfence.keys.attestation import issue_attestation
from ringfence.keys.coordinator import ThresholdCoordinator
from ringfence.keys.interface import Scheme, SigningRequest
from ringfence.errors import SigningRefused

from .conftest import TOKEN, SignerProcs


def test_policy_gated_signers(signer_procs: SignerProcs) -> None:
    policy = Ed25519PrivateKey.generate()
    pub = policy.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
    for i in (1, 2, 3):
        signer_procs.start(i, "--policy-public-key", pub)
    c = ThresholdCoordinator(dict(signer_procs.url), TOKEN)
    c.create_key("gated", frost.FROST_SECP256K1_SHA256.name, 2, [1, 2, 3])
    digest = b"\x55" * 32

    def request(att: object) -> SigningRequest:
        return SigningRequest(request_id="g1", key_id="gated", digest=digest, scheme=Scheme.TAPROOT_KEYPATH,
                              requested_by="rita", reason="gated", approval=att)  # type: ignore[arg-type]

    with pytest.raises(SigningRefused, match="RF_ATTESTATION_INVALID"):
        c.sign(request(None), [1, 2])
    now = int(time.time() * 1000)
    other = issue_attestation(policy.sign, attestation_id="a0", key_id="gated", transfer_digest=b"\x56" * 32,
                              issued_at_ms=now, validity_ms=60_000, issued_by="policy-engine")
    with pytest.raises(SigningRefused, match="RF_ATTESTATION_INVALID"):
        c.sign(request(other), [1, 2])
    rogue = Ed25519PrivateKey.generate()
    forged = issue_attestation(rogue.sign, attestation_id="a1", key_id="gated", transfer_digest=digest,
                               issued_at_ms=now, validity_ms=60_000, issued_by="policy-engine")
    with pytest.raises(SigningRefused, match="RF_ATTESTATION_INVALID"):
        c.sign(request(forged), [1, 2])
    good = issue_attestation(policy.sign, attestation_id="a2", key_id="gated", transfer_digest=digest,
                             issued_at_ms=now, validity_ms=60_000, issued_by="policy-engine")
    sig = c.sign(request(good), [2, 3])
    assert coincurve.PublicKeyXOnly(sig.public_key).verify(sig.signature, digest)
    c.close()
