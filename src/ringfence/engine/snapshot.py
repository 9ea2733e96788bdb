"""Snapshots: the whole engine state at a journal position, written atomically and verified on load.

File `DIR/snapshots/<seq:020d>.snap`:

```
magic b"RFS1" | u64 seq | 32-byte state hash | 32-byte journal record hash at seq |
u64 payload length | 32-byte SHA-256 of payload | payload (the canonical state encoding)
```

Written to a temporary file, fsynced, renamed into place, and the directory fsynced, so a crash
leaves either the old set of snapshots or the new one, never a half-written file under a final
name. On load the payload checksum is checked, the state is rebuilt, and its recomputed state hash
must equal the recorded one; a snapshot that fails is skipped in favour of an older one.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from ..errors import SnapshotInvalid
from ..journal.journal import fsync_dir

__all__ = ["SnapshotInfo", "write_snapshot", "read_snapshot", "list_snapshots"]

MAGIC = b"RFS1"
_HEAD = struct.Struct(">4sQ32s32sQ32s")
SUFFIX = ".snap"


@dataclass(frozen=True)
class SnapshotInfo:
    path: Path
    seq: int
    state_hash: str
    journal_hash: bytes
    payload: bytes


def write_snapshot(snap_dir: Path, seq: int, state_hash: str, journal_hash: bytes, payload: bytes, keep: int = 3) -> Path:
    snap_dir.mkdir(parents=True, exist_ok=True)
    final = snap_dir / f"{seq:020d}{SUFFIX}"
    tmp = snap_dir / f".{seq:020d}{SUFFIX}.tmp"
    head = _HEAD.pack(MAGIC, seq, bytes.fromhex(state_hash), journal_hash, len(payload), hashlib.sha256(payload).digest())
    with open(tmp, "wb") as fh:
        fh.write(head)
        fh.write(payload)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    fsync_dir(snap_dir)
    for old in list_snapshots(snap_dir)[keep:]:
        old.unlink(missing_ok=True)
    return final


def list_snapshots(snap_dir: Path) -> list[Path]:
    """Snapshot files, newest first."""
    if not snap_dir.is_dir():
        return []
    return sorted((p for p in snap_dir.iterdir() if p.name.endswith(SUFFIX) and not p.name.startswith(".")), reverse=True)


def read_snapshot(path: Path) -> SnapshotInfo:
    data = path.read_bytes()
    if len(data) < _HEAD.size:
        raise SnapshotInvalid(f"snapshot {path.name} is shorter than its header")
    magic, seq, state_hash, journal_hash, length, digest = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise SnapshotInvalid(f"snapshot {path.name} has a bad magic number")
    payload = data[_HEAD.size :]
    if len(payload) != length or hashlib.sha256(payload).digest() != digest:
        raise SnapshotInvalid(f"snapshot {path.name} fails its checksum")
    if path.name != f"{seq:020d}{SUFFIX}":
        raise SnapshotInvalid(f"snapshot {path.name} records sequence {seq}, which does not match its name")
    return SnapshotInfo(path, seq, state_hash.hex(), journal_hash, payload)
