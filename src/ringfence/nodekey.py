"""A node's own Ed25519 key and the list of peers it trusts (docs/resilience.md).

A node (a primary, a standby, the machine that writes a backup) signs what it hands to others with
the key in `DATA_DIR/node.key` (PKCS#8 PEM, mode 0600, made on first use); anyone who must trust
it checks the signature against a *peers file* the operators wrote and keep apart from the data it
protects: a JSON object `{"NODE_ID": "64 hex digits of the public key", ...}`.

`ringfence replication node-key --data DIR --node-id ID` prints the line to add to it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import ConfigError
from .owned import nearest_existing, read_own_file, safe_folder

__all__ = ["KEY_FILE", "load_or_create", "load_key", "public_hex", "public_key", "load_peers", "verify",
           "write_private"]

KEY_FILE = "node.key"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` readable by its owner only (0600 whatever the umask), atomically and
    durably: the file synced, renamed into place, then its folder synced (the rename survives a crash)."""
    tmp = path.with_name(path.name + ".tmp")
    try:  # a leftover of a crash, or a file someone else put there: never written through (below)
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    # a new file of this user's, never an existing one nor a symbolic link's target: a `.tmp` another user
    # made beforehand (0666, kept open) was truncated, filled with the secret and renamed into place, still
    # theirs (intruder review of session 22, B2: `nats-config --out` into a folder they prepared leaked
    # every service's password); if one appears again after the unlink, O_EXCL fails (FileExistsError)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        os.fchmod(fh.fileno(), 0o600)
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def load_key(path: Path, field: str = "--node-key") -> Ed25519PrivateKey:
    """The Ed25519 key in `path`: a file of this user's, not a symbolic link, mode 0600, in a folder no
    other user owns or may write (owned.read_own_file; a node.key uid 4242 planted beforehand was taken
    as the node's: intruder review of session 23, F2)."""
    try:
        raw = read_own_file(path, field, "private key")
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist", field=field) from None
    try:
        key = serialization.load_pem_private_key(raw, password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"{path} is not a PEM Ed25519 private key", field=field) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} holds a key that is not Ed25519", field=field)
    return key


def load_or_create(data_dir: Path) -> Ed25519PrivateKey:
    """The node's key in `data_dir/node.key`, made (0600) the first time. `data_dir` and the folders
    above it must be this user's or root's and closed to other users (owned.safe_folder), the key made
    or read through the path so checked."""
    risk, remedy = "could put a node key of theirs in place of the node's", "give a data directory of this user's"
    safe_folder(nearest_existing(data_dir), "--data", risk, remedy)  # before anything is made under it
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    where = safe_folder(data_dir, "--data", risk, remedy) / KEY_FILE
    if os.path.lexists(where):  # (a symbolic link too: refused by load_key, never written through)
        return load_key(where, "--data")
    key = Ed25519PrivateKey.generate()
    write_private(where, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return key


def public_hex(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def public_key(text: str, field: str) -> Ed25519PublicKey:
    if not isinstance(text, str) or not _HEX64.fullmatch(text):
        raise ConfigError("a public key is 64 lower-case hex digits (32 bytes of Ed25519)", field=field)
    return Ed25519PublicKey.from_public_bytes(bytes.fromhex(text))


def load_peers(path: Path, field: str = "--peers") -> dict[str, Ed25519PublicKey]:
    """The peers file: node id -> public key. Every entry is checked; the error names the entry."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist", field=field) from None
    except (ValueError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path} is not JSON: {err}", field=field) from None
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{path} must be a JSON object of node id -> public key (hex), with at least one node",
                          field=field)
    peers = {}
    for node, text in raw.items():
        if not _NODE_ID.fullmatch(node):
            raise ConfigError(f"node id {node!r}: letters, digits, '.', '_', '-', at most 64", field=f"{field}[{node}]")
        if not isinstance(text, str) or not _HEX64.fullmatch(text):
            got = (f"{len(text)} characters{', not all lower-case hex' if len(text) == 64 else ''}" if isinstance(text, str)
                   else f"a JSON {type(text).__name__}")
            raise ConfigError(f"node {node!r} in {path}: its public key must be 64 lower-case hex digits (32 bytes of "
                              f"Ed25519, from `ringfence replication node-key`), got {got}", field=f"{field}[{node}]")
        peers[node] = public_key(text, f"{field}[{node}]")
    return peers


def verify(key: Ed25519PublicKey, signature: bytes, data: bytes) -> bool:
    try:
        key.verify(signature, data)
    except InvalidSignature:
        return False
    return True
