"""Policy-approval attestations: the policy engine's signed "yes" for one transfer digest.

Segregation of duties: the policy engine decides, a different service signs. A signer that
requires attestations refuses unless the attestation (1) is signed by the pinned policy key
(Ed25519), (2) names this signing key and exactly this digest, (3) has not expired, and
(4) — for signers that keep a replay register — has not been used before.

Wire form: `payload()` is a fixed prefix plus canonical JSON (sorted keys, no spaces); the
signature covers exactly those bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..errors import AttestationInvalid, ValidationError

__all__ = ["ApprovalAttestation", "verify_attestation", "issue_attestation", "MAX_VALIDITY_MS"]

_PREFIX = b"ringfence/approval/v1\n"
MAX_VALIDITY_MS = 15 * 60 * 1000  # an approval older than 15 minutes is stale by construction


@dataclass(frozen=True)
class ApprovalAttestation:
    attestation_id: str
    key_id: str
    transfer_digest: bytes
    issued_at_ms: int
    expires_at_ms: int
    issued_by: str  # the policy engine instance / decision id
    signature: bytes = field(default=b"", repr=False)

    def payload(self) -> bytes:
        body = {"attestation_id": self.attestation_id, "key_id": self.key_id,
                "transfer_digest": self.transfer_digest.hex(), "issued_at_ms": self.issued_at_ms,
                "expires_at_ms": self.expires_at_ms, "issued_by": self.issued_by}
        return _PREFIX + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    def to_dict(self) -> dict[str, Any]:
        return {"attestation_id": self.attestation_id, "key_id": self.key_id,
                "transfer_digest": self.transfer_digest.hex(), "issued_at_ms": self.issued_at_ms,
                "expires_at_ms": self.expires_at_ms, "issued_by": self.issued_by, "signature": self.signature.hex()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ApprovalAttestation":
        try:
            att = cls(str(d["attestation_id"]), str(d["key_id"]), bytes.fromhex(d["transfer_digest"]),
                      int(d["issued_at_ms"]), int(d["expires_at_ms"]), str(d["issued_by"]),
                      bytes.fromhex(d["signature"]))
        except (KeyError, ValueError, TypeError) as exc:
            raise ValidationError(f"malformed attestation ({exc.__class__.__name__})", field="approval") from None
        if not 1 <= len(att.attestation_id) <= 128 or len(att.transfer_digest) > 4096:
            raise ValidationError("attestation_id 1-128 chars, digest <= 4096 bytes", field="approval")
        return att


def issue_attestation(sign: Callable[[bytes], bytes], *, attestation_id: str, key_id: str, transfer_digest: bytes,
                      issued_at_ms: int, validity_ms: int, issued_by: str) -> ApprovalAttestation:
    """Build and sign an attestation with the policy engine's key (`sign` may be an HSM call)."""
    if not 1 <= validity_ms <= MAX_VALIDITY_MS:
        raise ValidationError(f"must be 1..{MAX_VALIDITY_MS}", field="validity_ms")
    att = ApprovalAttestation(attestation_id, key_id, transfer_digest, issued_at_ms, issued_at_ms + validity_ms, issued_by)
    return ApprovalAttestation(**{**att.__dict__, "signature": sign(att.payload())})


def verify_attestation(att: ApprovalAttestation | None, policy_public_key: bytes, *, key_id: str,
                       digest: bytes, now_ms: int) -> ApprovalAttestation:
    if att is None:
        raise AttestationInvalid("no policy-approval attestation was supplied", field="approval", reason="missing")
    try:
        Ed25519PublicKey.from_public_bytes(policy_public_key).verify(att.signature, att.payload())
    except (InvalidSignature, ValueError):
        raise AttestationInvalid("attestation signature is not the policy engine's", field="approval",
                                 reason="bad_signature") from None
    if att.key_id != key_id:
        raise AttestationInvalid("attestation is for another key", field="approval", reason="wrong_key")
    if att.transfer_digest != digest:
        raise AttestationInvalid("attestation is for another transfer", field="approval", reason="wrong_digest")
    if not att.issued_at_ms <= now_ms < att.expires_at_ms or att.expires_at_ms - att.issued_at_ms > MAX_VALIDITY_MS:
        raise AttestationInvalid("attestation has expired or is not yet valid", field="approval", reason="expired")
    return att
