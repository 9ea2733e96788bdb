"""The journal: append-only segment files of hash-chained records, and their recovery.

Layout: `DIR/journal/<first_seq:020d>.rfj`, one file per segment, rotated when a segment passes
`segment_bytes`. One record holds one group-committed batch of commands:

```
offset  size  field
0       4     magic b"RFJ1"
4       2     format version (1)
6       2     flags (0)
8       4     payload length L (bytes)
12      4     command count
16      8     first sequence number of the batch
24      32    hash of the previous record (genesis: SHA-256(b"ringfence/journal/v1/genesis"))
56      4     CRC-32 of bytes 0..55 (the header checksum)
60      4     reserved (0)
64      L     payload: the batch, msgspec JSON (see ringfence.engine.commands.Batch)
64+L    32    record hash = SHA-256(bytes 0..55 || payload); the next record's "previous hash"
```

Every integer is big-endian. The record hash covers the previous hash, so the records form a
chain: editing, dropping or reordering any record breaks every later link.

Recovery reads every segment in order and classifies the first failure it meets:

* In the **last** segment, a record that stops short of its declared length, a header cut short,
  a zero-filled tail, or a complete *final* record whose checksum fails is a **torn tail**: the
  batch was being written when the process died and was never acknowledged (a command is
  acknowledged only after its record is fsynced). It is truncated away.
* Anything else — a bad checksum with more data after it, a broken chain link, a sequence gap, a
  bad header in the middle — is **corruption**: recovery stops with the segment, offset, sequence
  numbers and reason, because carrying on would silently drop acknowledged commands.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ..errors import JournalCorrupt

__all__ = [
    "GENESIS_HASH",
    "HEADER_SIZE",
    "TRAILER_SIZE",
    "Record",
    "ScanReport",
    "JournalWriter",
    "scan",
    "fsync_dir",
    "segment_paths",
]

MAGIC = b"RFJ1"
VERSION = 1
_HEAD = struct.Struct(">4sHHIIQ32s")  # 56 bytes
_CRC = struct.Struct(">II")  # header crc + reserved
HEADER_SIZE = 64
TRAILER_SIZE = 32
GENESIS_HASH = hashlib.sha256(b"ringfence/journal/v1/genesis").digest()
#: A record's payload may not exceed this (bounds memory on read and write).
MAX_PAYLOAD_BYTES = 64 * 1024 * 1024
SEGMENT_SUFFIX = ".rfj"


@dataclass(frozen=True, slots=True)
class Record:
    first_seq: int
    count: int
    payload: bytes
    hash: bytes
    segment: str
    offset: int

    @property
    def last_seq(self) -> int:
        return self.first_seq + self.count - 1


@dataclass
class ScanReport:
    records: int = 0
    commands: int = 0
    last_seq: int = 0
    last_hash: bytes = GENESIS_HASH
    segments: int = 0
    bytes_read: int = 0
    torn_tail: str | None = None  # description of a truncated (or truncatable) tail
    truncated_bytes: int = 0
    tail_segment: Path | None = None
    tail_size: int = 0
    notes: list[str] = field(default_factory=list)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def segment_paths(journal_dir: Path) -> list[Path]:
    if not journal_dir.is_dir():
        return []
    paths = [p for p in journal_dir.iterdir() if p.name.endswith(SEGMENT_SUFFIX)]
    return sorted(paths, key=lambda p: p.name)


def encode_record(payload: bytes, first_seq: int, count: int, prev_hash: bytes) -> tuple[bytes, bytes]:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ValueError(f"journal record payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    head = _HEAD.pack(MAGIC, VERSION, 0, len(payload), count, first_seq, prev_hash)
    crc = zlib.crc32(head)
    digest = hashlib.sha256(head + payload).digest()
    return b"".join((head, _CRC.pack(crc, 0), payload, digest)), digest


def scan(journal_dir: Path, *, truncate: bool = False, decode_from_seq: int = 0) -> Iterator[Record]:
    """Yield every verified record in order. Raises `JournalCorrupt` on corruption.

    A torn tail is truncated when `truncate` is true (recovery); otherwise it is only reported
    (verification). The generator's `ScanReport` is available as the `StopIteration` value; use
    `scan_all` for a convenient wrapper. Payloads of records that end before `decode_from_seq` are
    still verified but yielded with an empty payload, to save memory.
    """
    report = ScanReport()
    paths = segment_paths(journal_dir)
    report.segments = len(paths)
    expected_seq = 1
    prev_hash = GENESIS_HASH
    for index, path in enumerate(paths):
        is_last = index == len(paths) - 1
        name = path.name
        try:
            seg_first = int(name[: -len(SEGMENT_SUFFIX)])
        except ValueError:
            raise JournalCorrupt(f"journal segment {name} has an unexpected name", segment=name) from None
        data = path.read_bytes()
        report.bytes_read += len(data)
        size = len(data)
        if size and seg_first != expected_seq:
            raise JournalCorrupt(
                f"journal segment {name} starts at sequence {seg_first} but the previous segment ended at "
                f"{expected_seq - 1}: a segment is missing or misnamed",
                segment=name,
            )
        pos = 0
        while pos < size:
            remaining = size - pos
            where = f"segment {name} offset {pos} (expected sequence {expected_seq})"
            torn: str | None = None
            corrupt: str | None = None
            record_end = 0
            if remaining < HEADER_SIZE:
                torn = f"{remaining} bytes of a record header at the end of the last segment"
            else:
                head = data[pos : pos + 56]
                crc, reserved = _CRC.unpack_from(data, pos + 56)
                magic, version, flags, length, count, first_seq, rec_prev = _HEAD.unpack(head)
                if magic != MAGIC or zlib.crc32(head) != crc:
                    if not data[pos:].strip(b"\x00"):
                        torn = f"{remaining} zero bytes at the end of the last segment"
                    else:
                        corrupt = "record header checksum mismatch"
                elif reserved != 0:
                    corrupt = "record header reserved bytes are not zero"
                elif version != VERSION or flags != 0:
                    corrupt = f"record has unsupported version {version} / flags {flags}"
                elif length > MAX_PAYLOAD_BYTES or count == 0:
                    corrupt = f"record declares {length} payload bytes and {count} commands"
                else:
                    record_end = pos + HEADER_SIZE + length + TRAILER_SIZE
                    if record_end > size:
                        torn = f"a record cut short: {remaining} of {record_end - pos} bytes present"
                    else:
                        payload_start = pos + HEADER_SIZE
                        payload = data[payload_start : payload_start + length]
                        stored = data[payload_start + length : record_end]
                        digest = hashlib.sha256(head + payload).digest()
                        if digest != stored:
                            if record_end == size:
                                torn = "the final record fails its checksum (an interrupted write)"
                            else:
                                corrupt = "record payload checksum mismatch"
                        elif rec_prev != prev_hash:
                            corrupt = "hash chain broken: the record does not follow the previous one"
                        elif first_seq != expected_seq:
                            corrupt = f"sequence gap: record starts at {first_seq}"
            if torn is not None and is_last:
                report.torn_tail = f"{where}: {torn}"
                report.truncated_bytes = size - pos
                if truncate:
                    with open(path, "r+b") as fh:
                        fh.truncate(pos)
                        fh.flush()
                        os.fsync(fh.fileno())
                    report.notes.append(f"truncated torn tail: {report.torn_tail}")
                size = pos
                break
            if torn is not None or corrupt is not None:
                reason = corrupt or torn
                after = size - (record_end if record_end and record_end <= size else pos)
                raise JournalCorrupt(
                    f"journal corrupt at {where}: {reason}; {after} bytes follow in this segment and "
                    f"{len(paths) - index - 1} later segments exist, so this is not a torn tail. Recovery stopped "
                    f"so that no acknowledged command is silently dropped; restore this segment from a replica "
                    f"or a backup.",
                    segment=name,
                    offset=pos,
                    expected_seq=expected_seq,
                )
            yield Record(
                first_seq,
                count,
                payload if first_seq + count - 1 >= decode_from_seq else b"",
                stored,
                name,
                pos,
            )
            report.records += 1
            report.commands += count
            expected_seq = first_seq + count
            prev_hash = stored
            pos = record_end
        if is_last:
            report.tail_segment = path
            report.tail_size = size
    report.last_seq = expected_seq - 1
    report.last_hash = prev_hash
    return report


def scan_all(journal_dir: Path, *, truncate: bool = False) -> tuple[list[Record], ScanReport]:
    records: list[Record] = []
    gen = scan(journal_dir, truncate=truncate)
    while True:
        try:
            records.append(next(gen))
        except StopIteration as stop:
            return records, stop.value


class JournalWriter:
    """Appends records durably. Not thread-safe: only the sequencer thread writes."""

    def __init__(
        self,
        journal_dir: Path,
        *,
        next_seq: int,
        last_hash: bytes,
        tail_segment: Path | None,
        tail_size: int,
        segment_bytes: int = 64 * 1024 * 1024,
        fsync: bool = True,
    ) -> None:
        self.dir = journal_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.next_seq = next_seq
        self.last_hash = last_hash
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self.fsync_seconds_total = 0.0
        self.records_written = 0
        self._fd: int | None = None
        self._size = 0
        if tail_segment is not None and tail_size < segment_bytes:
            self._fd = os.open(tail_segment, os.O_WRONLY | os.O_APPEND)
            self._size = tail_size
        fsync_dir(self.dir)

    def _rotate(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        path = self.dir / f"{self.next_seq:020d}{SEGMENT_SUFFIX}"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        self._size = 0
        fsync_dir(self.dir)  # the new file's directory entry must be durable too

    def append(self, payload: bytes, first_seq: int, count: int) -> bytes:
        """Write one record and make it durable before returning its hash."""
        if first_seq != self.next_seq:
            raise ValueError(f"journal expects sequence {self.next_seq}, got {first_seq}")
        if self._fd is None or self._size >= self.segment_bytes:
            self._rotate()
        record, digest = encode_record(payload, first_seq, count, self.last_hash)
        assert self._fd is not None
        written = os.write(self._fd, record)
        while written < len(record):  # a short write on a regular file is rare but legal
            written += os.write(self._fd, record[written:])
        if self.fsync:
            import time

            started = time.perf_counter()  # float-ok: duration metric, not money
            os.fdatasync(self._fd)
            self.fsync_seconds_total += time.perf_counter() - started
        self._size += len(record)
        self.next_seq = first_seq + count
        self.last_hash = digest
        self.records_written += 1
        return digest

    def close(self) -> None:
        if self._fd is not None:
            if self.fsync:
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
