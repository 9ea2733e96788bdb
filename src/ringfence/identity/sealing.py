"""Secret handling for identity: random tokens, keyed token hashes, AES-GCM sealing.

Invariants: tokens come from `secrets`; what is stored is `token_digest` (HMAC-SHA256 under a
sub-key of the identity secret, so even short codes cannot be brute-forced from a database dump);
sealed values are AES-256-GCM with a fresh 96-bit nonce and the row's purpose bound in as associated
data, so a ciphertext cannot be moved to another column or row. Comparisons are constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import ConfigError

__all__ = ["Sealer", "new_token", "constant_time_equal"]

NONCE_BYTES = 12


def new_token(nbytes: int = 32) -> str:
    """A URL-safe random token with `nbytes` bytes of entropy."""
    assert 16 <= nbytes <= 64
    return secrets.token_urlsafe(nbytes)


def constant_time_equal(a: str | bytes, b: str | bytes) -> bool:
    a_b = a.encode() if isinstance(a, str) else a
    b_b = b.encode() if isinstance(b, str) else b
    return hmac.compare_digest(a_b, b_b)


class Sealer:
    """Derives purpose-bound sub-keys from the 32-byte identity secret key."""

    def __init__(self, master_key: bytes) -> None:
        if len(master_key) != 32:
            raise ConfigError("must be 32 bytes", field="RINGFENCE_IDENTITY_SECRET_KEY_HEX")
        self._hash_key = hmac.new(master_key, b"ringfence/identity/token-digest/v1", hashlib.sha256).digest()
        self._seal_key = hmac.new(master_key, b"ringfence/identity/seal/v1", hashlib.sha256).digest()
        self._csrf_key = hmac.new(master_key, b"ringfence/identity/csrf/v1", hashlib.sha256).digest()
        self._aead = AESGCM(self._seal_key)

    def token_digest(self, token: str) -> str:
        return hmac.new(self._hash_key, token.encode(), hashlib.sha256).hexdigest()

    def csrf_for(self, session_token_digest: str) -> str:
        return hmac.new(self._csrf_key, session_token_digest.encode(), hashlib.sha256).hexdigest()

    def seal(self, plaintext: bytes, *, purpose: str) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext, purpose.encode())

    def unseal(self, sealed: bytes, *, purpose: str) -> bytes:
        try:
            return self._aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], purpose.encode())
        except InvalidTag as exc:
            raise ConfigError("a sealed secret failed authentication: wrong RINGFENCE_IDENTITY_SECRET_KEY_HEX?") from exc
