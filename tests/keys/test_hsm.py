"""HSM (SoftHSM2 over PKCS#11): keys generated inside the token and non-extractable; the hot-wallet
signer refuses without a valid policy-approval attestation; low-S output verifies with libsecp256k1."""

from __future__ import annotations

import coincurve
import pytest

from ringfence.keys.attestation import ApprovalAttestation
from ringfence.keys.hsm import SECP256K1_N, low_s
from ringfence.keys.interface import Scheme, SigningRequest
from ringfence.errors import AttestationInvalid


def _req(digest: bytes, att: ApprovalAttestation | None, rid: str = "w-1") -> SigningRequest:
    return SigningRequest(request_id=rid, key_id="eth-hot", digest=digest, scheme=Scheme.ECDSA_SECP256K1,
                          requested_by="withdrawal-worker", reason="withdrawal 1", approval=att)


def _approve(hsm: dict, digest: bytes, att_id: str, key_id: str = "eth-hot", validity_ms: int = 60_000) -> ApprovalAttestation:
    return hsm["policy"].approve(attestation_id=att_id, key_id=key_id, transfer_digest=digest, now_ms=hsm["clock"]["now"],
                                 validity_ms=validity_ms, decided_by="policy-engine-1", reason="rules passed")


def test_keys_live_in_token_and_are_not_extractable(hsm: dict) -> None:
    assert not hsm["hot"].is_extractable("eth-hot")
    assert not hsm["pol"].is_extractable("policy-approval")
    assert len(hsm["hot"].public_key("eth-hot")) == 33
    assert len(hsm["pol"].public_key("policy-approval")) == 32
    # the hot-wallet token does not even contain the policy key, and vice versa
    with pytest.raises(Exception, match="no key"):
        hsm["hot"].public_key("policy-approval")


def test_signs_with_valid_attestation_low_s_and_recoverable(hsm: dict) -> None:
    for k in range(12):  # SoftHSM2 returns high-S about half the time; all outputs must be low-S
        digest = coincurve.utils.sha256(f"tx {k}".encode())
        sig = hsm["signer"].sign(_req(digest, _approve(hsm, digest, f"att-{k}"), f"w-{k}"))
        r_s = sig.signature[:64]
        assert int.from_bytes(r_s[32:], "big") <= SECP256K1_N // 2
        der = coincurve.PublicKey(sig.public_key)
        assert der.verify(_der(r_s), digest, hasher=None)
        rec = coincurve.PublicKey.from_signature_and_message(sig.signature, digest, hasher=None)
        assert rec.format() == sig.public_key


def _der(rs: bytes) -> bytes:
    def enc(x: bytes) -> bytes:
        x = x.lstrip(b"\x00") or b"\x00"
        if x[0] & 0x80:
            x = b"\x00" + x
        return b"\x02" + bytes([len(x)]) + x
    body = enc(rs[:32]) + enc(rs[32:])
    return b"\x30" + bytes([len(body)]) + body


def test_low_s_normalisation() -> None:
    high = (1).to_bytes(32, "big") + (SECP256K1_N - 5).to_bytes(32, "big")
    assert int.from_bytes(low_s(high)[32:], "big") == 5


def test_refuses_without_or_with_bad_attestation(hsm: dict) -> None:
    digest = b"\x42" * 32
    with pytest.raises(AttestationInvalid) as e:
        hsm["signer"].sign(_req(digest, None, "no-att"))
    assert e.value.details["reason"] == "missing"
    other = _approve(hsm, b"\x43" * 32, "att-other")
    with pytest.raises(AttestationInvalid) as e:
        hsm["signer"].sign(_req(digest, other, "wrong-digest"))
    assert e.value.details["reason"] == "wrong_digest"
    wrong_key = _approve(hsm, digest, "att-wk", key_id="eth-cold")
    with pytest.raises(AttestationInvalid) as e:
        hsm["signer"].sign(_req(digest, wrong_key, "wrong-key"))
    assert e.value.details["reason"] == "wrong_key"
    good = _approve(hsm, digest, "att-forged")
    forged = ApprovalAttestation(**{**good.__dict__, "expires_at_ms": good.expires_at_ms + 1})
    with pytest.raises(AttestationInvalid) as e:
        hsm["signer"].sign(_req(digest, forged, "forged"))
    assert e.value.details["reason"] == "bad_signature"
    expiring = _approve(hsm, digest, "att-exp", validity_ms=1000)
    hsm["clock"]["now"] += 1000
    with pytest.raises(AttestationInvalid) as e:
        hsm["signer"].sign(_req(digest, expiring, "expired"))
    assert e.value.details["reason"] == "expired"
    fresh = _approve(hsm, digest, "att-once")
    hsm["signer"].sign(_req(digest, fresh, "once"))
    with pytest.raises(AttestationInvalid) as e:
        hsm["signer"].sign(_req(digest, fresh, "twice"))
    assert e.value.details["reason"] == "replayed"
    actions = [x["action"] for x in hsm["log"].entries()]
    assert actions.count("hsm_refused") >= 6
    assert hsm["log"].verify() == len(actions)


def test_attestation_signed_by_another_key_refused(hsm: dict) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from ringfence.keys.attestation import issue_attestation

    rogue = Ed25519PrivateKey.generate()
    digest = b"\x44" * 32
    att = issue_attestation(rogue.sign, attestation_id="rogue", key_id="eth-hot", transfer_digest=digest,
                            issued_at_ms=hsm["clock"]["now"], validity_ms=60_000, issued_by="someone")
    with pytest.raises(AttestationInvalid):
        hsm["signer"].sign(_req(digest, att, "rogue"))
