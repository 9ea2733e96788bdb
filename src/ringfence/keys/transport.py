"""Sealing secrets to a recipient's X25519 key (ECIES: X25519 + HKDF-SHA256 + AES-256-GCM).

Used for DKG/refresh/reshare round-two shares (so the coordinator relaying them learns nothing)
and for share backups encrypted to an operator's key. `aad` binds a sealed blob to its context
(ceremony id, sender, recipient); opening it under another context fails.
"""

from __future__ import annotations

import os

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["seal", "open_sealed", "new_transport_key", "public_bytes", "MAX_SEALED_BYTES"]

MAX_SEALED_BYTES = 1 << 20
_INFO = b"ringfence-seal-v1"


def new_transport_key() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


def public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _kdf(shared: bytes, eph_pub: bytes, rcpt_pub: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt=eph_pub + rcpt_pub, info=_INFO).derive(shared)


def seal(recipient_public: bytes, plaintext: bytes, aad: bytes) -> bytes:
    eph = X25519PrivateKey.generate()
    eph_pub = public_bytes(eph)
    key = _kdf(eph.exchange(X25519PublicKey.from_public_bytes(recipient_public)), eph_pub, recipient_public)
    nonce = os.urandom(12)
    return eph_pub + nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def open_sealed(recipient: X25519PrivateKey, blob: bytes, aad: bytes) -> bytes:
    if not 44 <= len(blob) <= MAX_SEALED_BYTES:
        raise ValueError("sealed blob has an impossible length")
    eph_pub, nonce, ct = blob[:32], blob[32:44], blob[44:]
    key = _kdf(recipient.exchange(X25519PublicKey.from_public_bytes(eph_pub)), eph_pub, public_bytes(recipient))
    return AESGCM(key).decrypt(nonce, ct, aad)
