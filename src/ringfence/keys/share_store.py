"""A signer's encrypted share store: one directory per signer, sealed with its operator's passphrase.

Layout: `store.json` (scrypt salt and parameters, plus a sealed check value that detects a wrong
passphrase), `shares/<key_id>.bin` (AES-256-GCM, associated data = key id so files cannot be swapped),
`transport.bin` (the signer's X25519 transport key, sealed the same way) and `nonces.sqlite` (see
`nonce_store.py`). Files are written atomically (temp file + fsync + rename) with mode 0600.

Invariants: nothing secret is written in clear; a tampered or swapped file fails to open with
`KeyStoreError`, never with a wrong share; the passphrase is never stored or logged.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from ..errors import KeyStoreError, ValidationError
from ..nodekey import write_private
from .frost import ThresholdKeyPackage
from .interface import KEY_ID_PATTERN
from .transport import new_transport_key

__all__ = ["EncryptedShareStore", "MIN_PASSPHRASE_CHARS"]

MIN_PASSPHRASE_CHARS = 12
_CHECK = b"ringfence-share-store-v1"
MAX_KEYS = 1000


#: Atomic, durable, 0600, through a new file of this user's: a `.tmp` or link another user put there beforehand
#: is never written through (nodekey.write_private).
_atomic_write = write_private


class EncryptedShareStore:
    def __init__(self, root: Path | str, passphrase: str, *, create: bool = False, scrypt_n: int = 2**15) -> None:
        self.root = Path(root)
        if len(passphrase) < MIN_PASSPHRASE_CHARS:
            raise ValidationError(f"must be at least {MIN_PASSPHRASE_CHARS} characters", field="passphrase")
        meta_path = self.root / "store.json"
        if not meta_path.exists():
            if not create:
                raise KeyStoreError(f"no share store at {self.root}; create one first", field="store")
            if scrypt_n < 2**14 or scrypt_n & (scrypt_n - 1):
                raise ValidationError("must be a power of two >= 16384", field="scrypt_n")
            (self.root / "shares").mkdir(parents=True, exist_ok=True)
            os.chmod(self.root, 0o700)
            meta: dict[str, Any] = {"version": 1, "kdf": "scrypt", "n": scrypt_n, "r": 8, "p": 1,
                                    "salt": os.urandom(16).hex()}
            self._aead = AESGCM(self._derive(passphrase, meta))
            nonce = os.urandom(12)
            meta["check"] = (nonce + self._aead.encrypt(nonce, _CHECK, b"check")).hex()
            _atomic_write(meta_path, json.dumps(meta).encode())
            self._write_sealed(self.root / "transport.bin", new_transport_key().private_bytes_raw(), b"transport")
        else:
            meta = json.loads(meta_path.read_text())
            self._aead = AESGCM(self._derive(passphrase, meta))
            blob = bytes.fromhex(meta["check"])
            try:
                self._aead.decrypt(blob[:12], blob[12:], b"check")
            except InvalidTag:
                raise KeyStoreError("wrong passphrase for this share store", field="passphrase") from None

    @staticmethod
    def _derive(passphrase: str, meta: dict[str, Any]) -> bytes:
        return Scrypt(bytes.fromhex(meta["salt"]), 32, int(meta["n"]), int(meta["r"]), int(meta["p"])).derive(
            passphrase.encode())

    # sealing used by this store and by the nonce store
    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, plaintext, aad)

    def unseal(self, blob: bytes, aad: bytes) -> bytes:
        try:
            return self._aead.decrypt(blob[:12], blob[12:], aad)
        except (InvalidTag, ValueError):
            raise KeyStoreError("sealed record failed authentication (tampered or moved)", field="store") from None

    def _write_sealed(self, path: Path, plaintext: bytes, aad: bytes) -> None:
        _atomic_write(path, self.seal(plaintext, aad))

    def transport_key(self) -> X25519PrivateKey:
        raw = self.unseal((self.root / "transport.bin").read_bytes(), b"transport")
        return X25519PrivateKey.from_private_bytes(raw)

    def _share_path(self, key_id: str) -> Path:
        if not KEY_ID_PATTERN.match(key_id):
            raise ValidationError("must match [a-z0-9][a-z0-9._:-]{0,63}", field="key_id")
        return self.root / "shares" / f"{key_id}.bin"

    def put(self, key_id: str, kp: ThresholdKeyPackage) -> None:
        if len(self.key_ids()) >= MAX_KEYS and not self.has(key_id):
            raise KeyStoreError(f"store holds the maximum of {MAX_KEYS} keys", field="key_id")
        self._write_sealed(self._share_path(key_id), json.dumps(kp.to_dict()).encode(), b"share:" + key_id.encode())

    def get(self, key_id: str) -> ThresholdKeyPackage:
        path = self._share_path(key_id)
        if not path.exists():
            raise KeyStoreError(f"no share for key {key_id} in this store", field="key_id")
        return ThresholdKeyPackage.from_dict(json.loads(self.unseal(path.read_bytes(), b"share:" + key_id.encode())))

    def has(self, key_id: str) -> bool:
        return self._share_path(key_id).exists()

    def delete(self, key_id: str) -> None:
        path = self._share_path(key_id)
        if path.exists():
            path.unlink()

    def key_ids(self) -> list[str]:
        return sorted(p.stem for p in (self.root / "shares").glob("*.bin"))
