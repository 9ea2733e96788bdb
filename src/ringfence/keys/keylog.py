"""The key-operation journal: append-only, hash-chained JSON lines of who did what to which key, and why.

Every ceremony step, signature share, HSM signature, refusal and backup is one entry. Entries hold
identifiers, roles, reasons and public data only — never shares, nonces, passphrases or private keys;
`append` refuses fields whose names suggest secrets, and a test greps the logs for key material.

Invariants: entry `seq` increases by one; `prev` is the SHA-256 of the previous line (genesis: 64 zeros);
`verify()` recomputes the chain and names the first broken line. Appends take an exclusive file lock,
so several processes may share one journal.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from ..errors import JournalCorrupt, ValidationError

__all__ = ["KeyOperationLog", "FORBIDDEN_FIELD_WORDS"]

FORBIDDEN_FIELD_WORDS = ("secret", "share_value", "nonce_value", "passphrase", "private", "seed", "password")
MAX_FIELD_CHARS = 512
GENESIS = "0" * 64


class KeyOperationLog:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tail: tuple[int, int, str] | None = None  # (file size, entries, hash of last line)

    def append(self, *, actor: str, action: str, key_id: str, reason: str, **extra: Any) -> dict[str, Any]:
        for name in extra:
            if any(w in name.lower() for w in FORBIDDEN_FIELD_WORDS):
                raise ValidationError("key-operation log refuses secret-looking fields", field=name)
        for name, value in (("actor", actor), ("action", action), ("key_id", key_id), ("reason", reason)):
            if not value or len(value) > MAX_FIELD_CHARS:
                raise ValidationError(f"must be 1-{MAX_FIELD_CHARS} characters", field=name)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            if self._tail is None or self._tail[0] != size:  # another process appended: re-read once
                with open(self.path, "rb") as f:
                    lines = f.read().splitlines()
                self._tail = (size, len(lines), hashlib.sha256(lines[-1]).hexdigest() if lines else GENESIS)
            _size, count, prev = self._tail
            entry = {"seq": count + 1, "at_ms": int(time.time() * 1000), "actor": actor, "action": action,
                     "key_id": key_id, "reason": reason, **extra, "prev": prev}
            line = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()
            os.write(fd, line + b"\n")
            os.fsync(fd)
            self._tail = (size + len(line) + 1, count + 1, hashlib.sha256(line).hexdigest())
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        return entry

    def entries(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(x) for x in self.path.read_bytes().splitlines()]

    def verify(self) -> int:
        """Check the hash chain; return the number of entries or raise JournalCorrupt naming the line."""
        if not self.path.exists():
            return 0
        prev = GENESIS
        lines = self.path.read_bytes().splitlines()
        for n, raw in enumerate(lines, start=1):
            try:
                e = json.loads(raw)
            except ValueError:
                raise JournalCorrupt(f"key-operation log line {n} is not JSON", field="line") from None
            if e.get("seq") != n or e.get("prev") != prev:
                raise JournalCorrupt(f"key-operation log chain broken at line {n}", field="line")
            prev = hashlib.sha256(raw).hexdigest()
        return len(lines)
