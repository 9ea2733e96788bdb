"""Key ceremonies that are not protocol rounds: operator keys, share backup and restore.

- An operator key is an X25519 key pair; the private half is stored sealed with the operator's
  passphrase (scrypt + AES-256-GCM). A share backup is sealed to the operator's *public* key on the
  signer's own machine, so the backup file is useless without the operator's key and passphrase.
- Restore opens the backup with the operator's key, checks the share against its own verifying share
  (and the group key), and writes it into a signer store sealed with that store's passphrase.

Invariants: no file written here holds a share or private key in clear; a backup restores only
under the key id and participant it was made for (both are bound as associated data).
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
from . import transport
from .frost import ThresholdKeyPackage
from .share_store import MIN_PASSPHRASE_CHARS, EncryptedShareStore, _atomic_write

__all__ = ["create_operator_key", "load_operator_public_key", "load_operator_private_key", "backup_share",
           "restore_share"]

_SCRYPT_N = 2**15


def _passphrase_key(passphrase: str, salt: bytes, n: int) -> bytes:
    if len(passphrase) < MIN_PASSPHRASE_CHARS:
        raise ValidationError(f"must be at least {MIN_PASSPHRASE_CHARS} characters", field="passphrase")
    return Scrypt(salt, 32, n, 8, 1).derive(passphrase.encode())


def create_operator_key(path: Path, passphrase: str, operator_id: str) -> bytes:
    if path.exists():
        raise ValidationError("refusing to overwrite an existing operator key file", field="out")
    key = X25519PrivateKey.generate()
    salt = os.urandom(16)
    nonce = os.urandom(12)
    ct = AESGCM(_passphrase_key(passphrase, salt, _SCRYPT_N)).encrypt(nonce, key.private_bytes_raw(),
                                                                     b"operator:" + operator_id.encode())
    pub = transport.public_bytes(key)
    doc = {"version": 1, "operator_id": operator_id, "public_key": pub.hex(), "kdf": "scrypt", "n": _SCRYPT_N,
           "salt": salt.hex(), "sealed_private_key": (nonce + ct).hex()}
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, json.dumps(doc, indent=1).encode())
    return pub


def load_operator_public_key(path: Path) -> bytes:
    return bytes.fromhex(json.loads(path.read_text())["public_key"])


def load_operator_private_key(path: Path, passphrase: str) -> X25519PrivateKey:
    doc = json.loads(path.read_text())
    blob = bytes.fromhex(doc["sealed_private_key"])
    try:
        raw = AESGCM(_passphrase_key(passphrase, bytes.fromhex(doc["salt"]), int(doc["n"]))).decrypt(
            blob[:12], blob[12:], b"operator:" + doc["operator_id"].encode())
    except InvalidTag:
        raise KeyStoreError("wrong passphrase for this operator key", field="passphrase") from None
    return X25519PrivateKey.from_private_bytes(raw)


def _aad(key_id: str, identifier: int) -> bytes:
    return f"backup:{key_id}:{identifier}".encode()


def backup_share(store: EncryptedShareStore, key_id: str, operator_public_key: bytes, out: Path) -> dict[str, Any]:
    kp = store.get(key_id)
    sealed = transport.seal(operator_public_key, json.dumps(kp.to_dict()).encode(), _aad(key_id, kp.identifier))
    doc = {"version": 1, "key_id": key_id, "identifier": kp.identifier, "ciphersuite": kp.ciphersuite,
           "group_public_key": kp.public_dict()["group_public_key"], "operator_public_key": operator_public_key.hex(),
           "sealed": sealed.hex()}
    if out.exists():
        raise ValidationError("refusing to overwrite an existing backup file", field="out")
    _atomic_write(out, json.dumps(doc, indent=1).encode())
    return {k: v for k, v in doc.items() if k != "sealed"}


def restore_share(backup: Path, operator_key: X25519PrivateKey, store: EncryptedShareStore, *,
                  overwrite: bool = False) -> ThresholdKeyPackage:
    doc = json.loads(backup.read_text())
    try:
        raw = transport.open_sealed(operator_key, bytes.fromhex(doc["sealed"]), _aad(doc["key_id"], int(doc["identifier"])))
    except (InvalidTag, ValueError):
        raise KeyStoreError("backup does not open with this operator key (wrong key or tampered file)",
                            field="backup") from None
    kp = ThresholdKeyPackage.from_dict(json.loads(raw))  # checks share against its verifying share
    if kp.public_dict()["group_public_key"] != doc["group_public_key"] or kp.identifier != int(doc["identifier"]):
        raise KeyStoreError("backup contents do not match its header", field="backup")
    if store.has(doc["key_id"]) and not overwrite:
        raise ValidationError("the store already holds a share for this key; pass --overwrite", field="store")
    store.put(doc["key_id"], kp)
    return kp
