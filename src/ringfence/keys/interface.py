"""The narrow signer interface every custody flow uses: `Signer.sign(SigningRequest) -> Signature`.

Threshold (FROST), HSM and any future hardened implementation plug in behind this Protocol, so the
withdrawal flow never knows which one signs. A request names the key, the exact digest to sign, the
scheme, who asked and why, and carries the policy-approval attestation where the signer needs one.

Invariants: requests are immutable and validated on construction (bounded sizes, named fields);
a `Signature` is returned only after the signer verified it against the key's public key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ..errors import ValidationError

if TYPE_CHECKING:
    from .attestation import ApprovalAttestation

__all__ = ["Scheme", "SigningRequest", "Signature", "Signer", "KEY_ID_PATTERN", "MAX_MESSAGE_BYTES"]

KEY_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._:-]{0,63}$")
MAX_MESSAGE_BYTES = 4096
MAX_TEXT_CHARS = 256


class Scheme(StrEnum):
    FROST_SECP256K1 = "frost-secp256k1-sha256"  # RFC 9591 output (33-byte R || z)
    FROST_ED25519 = "frost-ed25519-sha512"  # RFC 9591 output, a plain Ed25519 signature
    BIP340 = "frost-secp256k1-bip340"  # 64-byte BIP-340 signature for the even-Y group key
    TAPROOT_KEYPATH = "frost-secp256k1-taproot"  # BIP-340 signature for the BIP-86 tweaked output key
    ECDSA_SECP256K1 = "ecdsa-secp256k1"  # HSM hot wallet (Ethereum), low-S, r||s
    ED25519 = "ed25519"  # HSM policy-approval key


@dataclass(frozen=True)
class SigningRequest:
    """What to sign. `digest` is the 32-byte sighash for Bitcoin/Ethereum schemes, or the message
    itself for Ed25519 schemes (which hash internally)."""

    request_id: str
    key_id: str
    digest: bytes = field(repr=False)
    scheme: Scheme
    requested_by: str
    reason: str
    approval: "ApprovalAttestation | None" = None

    def __post_init__(self) -> None:
        if not (1 <= len(self.request_id) <= 128) or not self.request_id.isprintable():
            raise ValidationError("must be 1-128 printable characters", field="request_id")
        if not KEY_ID_PATTERN.match(self.key_id):
            raise ValidationError("must match [a-z0-9][a-z0-9._:-]{0,63}", field="key_id")
        if not isinstance(self.digest, bytes) or not (1 <= len(self.digest) <= MAX_MESSAGE_BYTES):
            raise ValidationError(f"must be 1-{MAX_MESSAGE_BYTES} bytes", field="digest")
        try:
            object.__setattr__(self, "scheme", Scheme(self.scheme))
        except ValueError:
            raise ValidationError(f"must be one of {[s.value for s in Scheme]}", field="scheme") from None
        if self.scheme in (Scheme.BIP340, Scheme.TAPROOT_KEYPATH, Scheme.ECDSA_SECP256K1) and len(self.digest) != 32:
            raise ValidationError(f"must be exactly 32 bytes for scheme {self.scheme.value}", field="digest")
        for name in ("requested_by", "reason"):
            v = getattr(self, name)
            if not (1 <= len(v) <= MAX_TEXT_CHARS):
                raise ValidationError(f"must be 1-{MAX_TEXT_CHARS} characters", field=name)


@dataclass(frozen=True)
class Signature:
    key_id: str
    scheme: Scheme
    signature: bytes
    public_key: bytes  # compressed / x-only / raw public key the signature verifies under
    signers: tuple[str, ...]  # which shares or devices took part


@runtime_checkable
class Signer(Protocol):
    """Anything that signs for custody. Implementations must verify before returning."""

    def sign(self, request: SigningRequest) -> Signature: ...

    def public_key(self, key_id: str, scheme: Scheme) -> bytes: ...
