"""The narrow signer interface: requests validate every field and name it; implementations conform."""

from __future__ import annotations

import pytest

from ringfence.keys.coordinator import ThresholdCoordinator
from ringfence.keys.hsm import HsmSigner
from ringfence.keys.interface import Scheme, Signer, SigningRequest
from ringfence.errors import ValidationError, error_codes

GOOD = dict(request_id="w-1", key_id="btc-hot", digest=b"\x00" * 32, scheme=Scheme.BIP340, requested_by="a", reason="r")


@pytest.mark.parametrize("field,value", [
    ("request_id", ""), ("request_id", "x" * 129), ("key_id", "Bad Key"), ("key_id", "../x"),
    ("digest", b""), ("digest", b"\x00" * 31), ("digest", b"\x00" * 5000), ("scheme", "rsa"),
    ("requested_by", ""), ("reason", "r" * 300),
])
def test_bad_requests_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as exc:
        SigningRequest(**{**GOOD, field: value})  # type: ignore[arg-type]
    assert exc.value.field == field


def test_scheme_strings_accepted_and_ed25519_takes_messages() -> None:
    r = SigningRequest(**{**GOOD, "scheme": "frost-ed25519-sha512", "digest": b"any length message"})  # type: ignore[arg-type]
    assert r.scheme is Scheme.FROST_ED25519
    assert "digest" not in repr(r)  # message bytes stay out of logs that print requests


def test_implementations_satisfy_the_protocol() -> None:
    for cls in (ThresholdCoordinator, HsmSigner):
        assert callable(cls.sign) and callable(cls.public_key)
    assert isinstance(object.__new__(ThresholdCoordinator), Signer)
    assert isinstance(object.__new__(HsmSigner), Signer)


def test_error_codes_unique_and_signing_codes_registered() -> None:
    codes = error_codes()
    for code in ("RF_SIGNING_REFUSED", "RF_NONCE_REUSED", "RF_ATTESTATION_INVALID", "RF_QUORUM_NOT_NOMINATED",
                 "RF_SEGREGATION_OF_DUTIES", "RF_KEY_STORE"):
        assert code in codes
    from ringfence.errors import RingfenceError

    seen, stack = [], [RingfenceError]
    while stack:
        cls = stack.pop()
        if cls not in seen:
            seen.append(cls)
            stack.extend(cls.__subclasses__())
    own = [c for c in seen if c.__module__ == "ringfence.errors"]
    assert len({c.code for c in own}) == len(own), "two error classes share a code"
