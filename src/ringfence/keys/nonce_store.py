"""Persistent single-use signing nonces for one signer (SQLite, sealed with the share store key).

A FROST nonce pair that signs two different messages leaks the signer's share. So: nonces are
created here, their commitments are handed out, and `consume` atomically flips a nonce to `used`
and erases its secret *before* the caller computes a signature share. A used or unknown nonce id is
refused with `NonceReused` — also after a restart, because the state lives in the database
(synchronous=FULL, one IMMEDIATE transaction per consume).

Invariants: a nonce id is consumed at most once; a consumed row never again holds secret bytes;
at most `MAX_OPEN_NONCES_PER_KEY` unused nonces exist per key.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from pathlib import Path

from ..errors import NonceReused, ValidationError
from .frost import SigningCommitments, SigningNonces, ThresholdKeyPackage, commit
from .share_store import EncryptedShareStore

__all__ = ["NonceStore", "MAX_OPEN_NONCES_PER_KEY", "MAX_BATCH"]

MAX_OPEN_NONCES_PER_KEY = 1000
MAX_BATCH = 100


class NonceStore:
    def __init__(self, path: Path | str, sealer: EncryptedShareStore) -> None:
        self._sealer = sealer
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS nonces (nonce_id TEXT PRIMARY KEY, key_id TEXT NOT NULL,"
            " sealed BLOB, state TEXT NOT NULL CHECK (state IN ('open','used')), created_ms INTEGER NOT NULL,"
            " used_ms INTEGER)")
        self._db.execute("CREATE INDEX IF NOT EXISTS nonces_key_state ON nonces(key_id, state)")

    def close(self) -> None:
        self._db.close()

    def open_count(self, key_id: str) -> int:
        row = self._db.execute("SELECT count(*) FROM nonces WHERE key_id=? AND state='open'", (key_id,)).fetchone()
        return int(row[0])

    def create(self, key_id: str, kp: ThresholdKeyPackage, count: int) -> list[tuple[str, SigningCommitments]]:
        if not 1 <= count <= MAX_BATCH:
            raise ValidationError(f"must be 1..{MAX_BATCH}", field="count")
        with self._lock:
            if self.open_count(key_id) + count > MAX_OPEN_NONCES_PER_KEY:
                raise ValidationError(f"at most {MAX_OPEN_NONCES_PER_KEY} open nonces per key", field="count")
            out = []
            now_ms = int(time.time() * 1000)
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for _ in range(count):
                    nonce_id = secrets.token_hex(16)
                    nonces, comm = commit(kp.suite, kp.identifier, kp.secret_share)
                    payload = json.dumps({"h": nonces.hiding, "b": nonces.binding}).encode()
                    sealed = self._sealer.seal(payload, f"nonce:{key_id}:{nonce_id}".encode())
                    self._db.execute("INSERT INTO nonces VALUES (?,?,?,?,?,NULL)",
                                     (nonce_id, key_id, sealed, "open", now_ms))
                    out.append((nonce_id, comm))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return out

    def consume(self, key_id: str, nonce_id: str) -> SigningNonces:
        """Mark the nonce used (durably) and return its secret. Refuses reuse and unknown ids."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT sealed, state FROM nonces WHERE nonce_id=? AND key_id=?",
                                       (nonce_id, key_id)).fetchone()
                if row is None or row[1] != "open" or row[0] is None:
                    self._db.execute("ROLLBACK")
                    raise NonceReused(field="nonce_id", state="unknown" if row is None else "used")
                self._db.execute("UPDATE nonces SET state='used', sealed=NULL, used_ms=? WHERE nonce_id=?",
                                 (int(time.time() * 1000), nonce_id))
                self._db.execute("COMMIT")
            except NonceReused:
                raise
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        d = json.loads(self._sealer.unseal(row[0], f"nonce:{key_id}:{nonce_id}".encode()))
        return SigningNonces(int(d["h"]), int(d["b"]))

    def discard_open(self, key_id: str) -> int:
        """Burn every open nonce of a key (after a refresh/reshare the old commitments are stale)."""
        with self._lock:
            cur = self._db.execute("UPDATE nonces SET state='used', sealed=NULL, used_ms=? WHERE key_id=? AND state='open'",
                                   (int(time.time() * 1000), key_id))
            return cur.rowcount
