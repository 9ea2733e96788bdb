"""The journal: append-only segment files of hash-chained records, and their recovery.

Layout: `DIR/journal/<first_seq:020d>.rfj`, one file per segment, rotated when a segment passes
`segment_bytes`. A segment's records may be followed by zeros up to the end of the file (a
pre-zeroed segment, `JournalWriter(prezero=True)`: written ahead of need as
`DIR/journal/next.rfj.spare`, so that a record's fdatasync commits no file-size metadata); the
zeros are the segment's logical end, never a record. One record holds one group-committed batch
of commands:

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

* Zeros from some offset to the end of a segment are its end (a pre-zeroed segment's unwritten
  space), silently, in any segment — unless the durable mark says acknowledged records lie there.
  Below, "the end" is that logical end: in the **last** segment, a record that stops short of its
  declared length, a header cut short, or a complete *final* record whose checksum fails is a **torn tail**: the
  batch was being written when the process died and was never acknowledged (a command is
  acknowledged only after its record is fsynced). It is truncated away — but only beyond the
  *durable mark*: after each record's fsync the writer notes "segment S is durable up to byte N,
  sequence Q", and a thread of its own writes the newest mark into `DIR/journal/DURABLE` (two
  checksummed slots, written alternately) and fsyncs it, coalescing, at most every
  `MARK_SYNC_INTERVAL_S`, off the acknowledgement path — so an acknowledgement
  costs exactly one fsync, its record's. A failure before the mark on disk is an acknowledged
  record that rotted, which is corruption, not a torn tail. What the mark's lag gives up: after a
  crash, the records acknowledged after the last mark fsync (the last ~5 ms) are told
  apart from a torn tail by their checksums alone — complete and verified, they are kept; if one
  of them were *also* damaged on the disk afterwards, it would read as a torn tail and be cut
  instead of refused. One fsync cannot do better: the fact "record R was acknowledged" exists
  only after R's fsync returned, so making it durable takes a second one.
* Anything else — a bad checksum with more data after it, a broken chain link, a sequence gap, a
  bad header in the middle — is **corruption**: recovery stops with the segment, offset, sequence
  numbers and reason, because carrying on would silently drop acknowledged commands.

Only one process may write a journal: `DataDirLock` (an `fcntl.flock` on `DIR/LOCK`, held while
the writer lives) refuses a second writer. Readers (`scan` with `truncate=False`) take no lock and
change nothing.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import ConfigError, DataDirLocked, JournalCorrupt, OutcomeUnknown, without_credentials

__all__ = [
    "GENESIS_HASH",
    "HEADER_SIZE",
    "TRAILER_SIZE",
    "Record",
    "ScanReport",
    "JournalWriter",
    "DataDirLock",
    "check_node_placement",
    "is_node_dir",
    "lock_holder",
    "DurableMark",
    "read_durable_mark",
    "write_durable_mark",
    "LOCK_FILE",
    "SPARE_FILE",
    "DURABLE_FILE",
    "scan",
    "fsync_dir",
    "segment_paths",
    "nonzero_end",
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
LOCK_FILE = "LOCK"
#: The next segment, being zero-filled ahead of need (`JournalWriter(prezero=True)`); renamed to its
#: segment name at rotation. Not a `.rfj` name: no reader ever takes it for a segment.
SPARE_FILE = "next.rfj.spare"
#: The spare is written and synced this much at a time, so the disk's queue never holds much of a
#: segment of zeros ahead of a record's fdatasync (8 MiB chunks delayed the syncs of a node just
#: opened, a promoted standby's, by tens of ms: bench/promotion.py); it also bounds how long closing
#: waits for it.
SPARE_CHUNK_BYTES = 1024 * 1024
DURABLE_FILE = "DURABLE"
#: The durable mark: magic, segment first seq, durable bytes of that segment, last durable sequence,
#: hash of that record, CRC-32 of the preceding bytes. Two slots, one sector apart, written in turn,
#: so a torn write of one slot leaves the other (one batch older, still true) readable.
_MARK = struct.Struct(">4sQQQ32s")
_MARK_MAGIC = b"RFD1"
_MARK_SLOT_BYTES = 512
#: The mark thread fsyncs the mark at most this often (each sync covers every mark written before it):
#: under load a mark fsync per batch would double the disk's flushes and contend with the record
#: syncs the acknowledgements wait for. The mark on disk then lags the last acknowledgement by at
#: most this plus one sync (docs/journal.md, "The durable mark").
MARK_SYNC_INTERVAL_S = 0.005  # float-ok: seconds
LOCK_HOLDER_MAX_BYTES = 512
#: How much of a segment's zero tail `scan` checks at once when looking for its logical end.
ZERO_SCAN_CHUNK_BYTES = 1 << 20


#: Where `ringfence serve --data DIR` keeps its engine node: `DIR/engine` (a serve data directory).
SERVE_ENGINE_SUBDIR = "engine"


def _describe_holder(raw: str) -> tuple[str, int | None]:
    pid, _, what = raw.strip().partition("\n")
    what = without_credentials(what)  # a lock file written before the holder's line was cleaned
    who = f"pid {pid}" if (pid.isascii() and pid.isdigit()) else "another process (pid unknown)"
    return f"{who}{f' ({what.strip()})' if what.strip() else ''}", int(pid) if (pid.isascii() and pid.isdigit()) else None


def lock_holder(node_dir: Path) -> tuple[str, int | None] | None:
    """Who holds `node_dir/LOCK` right now ("pid N (command line)", pid), or None if nobody does.

    Creates nothing: a missing LOCK file means no holder. The probe is a shared, non-blocking
    flock dropped at once (the kernel is the authority; a pid in the file may be stale).
    """
    try:
        fd = os.open(Path(node_dir) / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None
            return _describe_holder(os.pread(fd, LOCK_HOLDER_MAX_BYTES, 0).decode("utf-8", "replace"))
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def is_node_dir(path: Path) -> bool:
    """A node directory: it has a `LOCK` file, or a `journal/` folder holding a segment or a durable mark.

    (A bare `journal/` folder is not enough: a home directory may well have one.)
    """
    if (path / LOCK_FILE).is_file():
        return True
    journal = path / "journal"
    if not journal.is_dir():
        return False
    try:
        return any(e.name.endswith(SEGMENT_SUFFIX) or e.name == DURABLE_FILE for e in os.scandir(journal))
    except OSError:
        return False


def check_node_placement(directory: Path) -> None:
    """Refuse to make `directory` a node directory when it would sit inside or beside another node.

    Refused, before anything is created: (a) a `ringfence serve` data directory (it holds
    `engine/journal`; its node is `DIR/engine`), and (b) a directory inside another node's directory
    (any ancestor up to the root is a node directory). When that other node is running, the error
    is `DataDirLocked` and names its pid first, as a held lock does; otherwise `ConfigError`.
    """
    directory = Path(directory)
    serve_node = directory / SERVE_ENGINE_SUBDIR
    if (serve_node / "journal").is_dir():
        holder = lock_holder(serve_node)
        hint = (f"it is the data directory of a `ringfence serve` node, whose node directory is {serve_node}; "
                "a second node beside it would make the journal ambiguous. Send changes to the server, or "
                f"name {serve_node} once it has stopped")
        if holder is not None:
            raise DataDirLocked(f"{directory} is in use by {holder[0]}: {hint}", field="data_dir", holder_pid=holder[1])
        raise ConfigError(f"{directory} is not a node directory: {hint}", field="data_dir")
    try:
        resolved = directory.resolve()
    except OSError:
        resolved = directory.absolute()
    for ancestor in resolved.parents:  # one or two stats per level up to the root
        if not is_node_dir(ancestor):
            continue
        holder = lock_holder(ancestor)
        hint = (f"{directory} is inside the node directory {ancestor}; a node must not be created inside "
                "another node's directory. Choose a folder outside it")
        if holder is not None:
            raise DataDirLocked(f"{ancestor} is in use by {holder[0]}: {hint}", field="data_dir", holder_pid=holder[1])
        raise ConfigError(hint, field="data_dir")


class DataDirLock:
    """An exclusive `flock` on `DIR/LOCK`, held for the writer's life; the holder's pid is in the file.

    The kernel releases a flock when its holder dies, however it dies, so a crashed writer never
    leaves a stale lock. The file itself is never deleted (deleting a lock file races with the
    next writer's open).
    """

    def __init__(self, directory: Path, purpose: str = "") -> None:
        self.path = Path(directory) / LOCK_FILE
        self._fd: int | None = None
        check_node_placement(Path(directory))  # before the LOCK file is created
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                os.close(fd)
                raise
            who, pid = _describe_holder(os.pread(fd, LOCK_HOLDER_MAX_BYTES, 0).decode("utf-8", "replace"))
            os.close(fd)
            raise DataDirLocked(
                f"{directory} is in use by {who}; only one process "
                "may write a journal. Stop that process first, or send the change to it (read-only commands "
                "such as `ringfence journal verify` work while it runs)",
                field="data_dir",
                holder_pid=pid,
            ) from None
        self._fd = fd
        self.relabel(purpose)

    def relabel(self, purpose: str) -> None:
        """Say a new purpose in the lock file, the lock kept (a promoted standby's lock, handed to the primary it
        becomes: another writer is told `serve --replicate`, not `--standby`)."""
        if self._fd is None:
            return
        # a --replicate URL's password stays out, hidden before the line is re-spaced (str.split() also
        # splits at a no-break space, which a password may hold)
        label = " ".join(without_credentials(purpose).split())[:200]
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n{label}\n".encode(), 0)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor releases the flock
            self._fd = None


@dataclass(frozen=True, slots=True)
class DurableMark:
    """What the writer knew was durable (fsynced) when it last acknowledged anything."""

    segment_first_seq: int
    size: int
    last_seq: int
    last_hash: bytes


def _encode_mark(mark: DurableMark) -> bytes:
    body = _MARK.pack(_MARK_MAGIC, mark.segment_first_seq, mark.size, mark.last_seq, mark.last_hash)
    return body + struct.pack(">I", zlib.crc32(body))


def read_durable_mark(journal_dir: Path) -> DurableMark | None:
    """The newest valid slot of `DURABLE`, or None (no mark yet, or a journal from before marks)."""
    try:
        data = (Path(journal_dir) / DURABLE_FILE).read_bytes()
    except FileNotFoundError:
        return None
    best: DurableMark | None = None
    for offset in (0, _MARK_SLOT_BYTES):
        end = offset + _MARK.size + 4
        if len(data) < end:
            continue
        body = data[offset : offset + _MARK.size]
        if data[offset + _MARK.size : end] != struct.pack(">I", zlib.crc32(body)):
            continue
        magic, seg, size, last_seq, last_hash = _MARK.unpack(body)
        if magic != _MARK_MAGIC:
            continue
        if best is None or last_seq > best.last_seq:
            best = DurableMark(seg, size, last_seq, last_hash)
    return best


def write_durable_mark(journal_dir: Path, mark: DurableMark) -> None:
    """Write `mark` into both slots of `DURABLE` and fsync: for a journal assembled offline (a backup
    or a restore), whose records are all durable already. Never used on a live node's journal."""
    body = _encode_mark(mark)
    slot = body + b"\x00" * (_MARK_SLOT_BYTES - len(body))
    path = Path(journal_dir) / DURABLE_FILE
    with open(path, "wb") as fh:
        fh.write(slot + slot)
        fh.flush()
        os.fsync(fh.fileno())


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
    zero_tail_bytes: int = 0  # pre-zeroed space after the segments' last records (in `bytes_read`)
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


def nonzero_end(data: bytes) -> int:
    """The offset just after the last non-zero byte of `data` (0 if it is all zeros), found
    backwards a chunk at a time: a pre-zeroed segment is mostly zeros, a full one mostly not."""
    end = len(data)
    while end > 0:
        start = max(0, end - ZERO_SCAN_CHUNK_BYTES)
        if data.count(0, start, end) != end - start:
            return len(data[start:end].rstrip(b"\x00")) + start
        end = start
    return 0


def _header_ok(data: bytes, pos: int) -> bool:
    """A whole record header with the right magic and checksum at `pos` (its last bytes may be zeros)."""
    if len(data) - pos < HEADER_SIZE:
        return False
    head = data[pos : pos + 56]
    return head[:4] == MAGIC and zlib.crc32(head) == _CRC.unpack_from(data, pos + 56)[0]


def encode_record(payload: bytes, first_seq: int, count: int, prev_hash: bytes) -> tuple[bytes, bytes]:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ValueError(f"journal record payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    head = _HEAD.pack(MAGIC, VERSION, 0, len(payload), count, first_seq, prev_hash)
    crc = zlib.crc32(head)
    hasher = hashlib.sha256(head)
    hasher.update(payload)  # (the same digest as of `head + payload`, without copying the payload into it)
    digest = hasher.digest()
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
    mark = read_durable_mark(journal_dir)
    if mark is not None and mark.last_seq > 0:
        stems = (p.name[: -len(SEGMENT_SUFFIX)] for p in paths)
        names = {int(stem) for stem in stems if stem.isascii() and stem.isdigit()}
        if mark.segment_first_seq not in names:
            raise JournalCorrupt(
                f"journal segment {mark.segment_first_seq:020d}{SEGMENT_SUFFIX} is missing, but the durable mark says "
                f"it holds acknowledged commands up to sequence {mark.last_seq}; restore it from a replica or a backup",
                segment=f"{mark.segment_first_seq:020d}{SEGMENT_SUFFIX}",
                expected_seq=mark.last_seq,
            )
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
        data_end = nonzero_end(data)  # (see below)
        if data_end and seg_first != expected_seq:  # (an empty or all-zero segment holds no record to check)
            raise JournalCorrupt(
                f"journal segment {name} starts at sequence {seg_first} but the previous segment ended at "
                f"{expected_seq - 1}: a segment is missing or misnamed",
                segment=name,
            )
        # A pre-zeroed segment (`JournalWriter(prezero=True)`) holds its records followed by zeros:
        # everything from the first all-zero byte run that reaches the end is unwritten space, the
        # segment's logical end. For telling a torn tail from corruption, "the rest is zeros" counts
        # as "the file ends here", exactly as a shorter file did before pre-zeroing.
        pos = 0
        while pos < size:
            remaining = size - pos
            if pos >= data_end:  # only zeros from here: unwritten space, not a record (see below)
                if is_last and mark is not None and mark.segment_first_seq == seg_first and pos < mark.size:
                    raise JournalCorrupt(
                        f"journal corrupt at segment {name} offset {pos} (expected sequence {expected_seq}): "
                        f"{remaining} zero bytes, but the durable mark says this segment was fsynced and acknowledged "
                        f"up to byte {mark.size} (sequence {mark.last_seq}): an acknowledged record is damaged. Recovery "
                        "stopped so that no acknowledged command is silently dropped; restore this segment from a "
                        "replica or a backup.",
                        segment=name,
                        offset=pos,
                        expected_seq=expected_seq,
                    )
                report.zero_tail_bytes += remaining
                size = pos
                break
            where = f"segment {name} offset {pos} (expected sequence {expected_seq})"
            torn: str | None = None
            corrupt: str | None = None
            before_mark = False
            record_end = 0
            if data_end - pos < HEADER_SIZE and not _header_ok(data, pos):
                torn = f"{data_end - pos} bytes of a record header at the end of the last segment"
            else:
                head = data[pos : pos + 56]
                crc, reserved = _CRC.unpack_from(data, pos + 56)
                magic, version, flags, length, count, first_seq, rec_prev = _HEAD.unpack(head)
                if magic != MAGIC or zlib.crc32(head) != crc:
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
                            if record_end >= data_end:  # nothing but zeros after it: the file's end
                                torn = "the final record fails its checksum (an interrupted write)"
                            else:
                                corrupt = "record payload checksum mismatch"
                        elif rec_prev != prev_hash:
                            corrupt = "hash chain broken: the record does not follow the previous one"
                        elif first_seq != expected_seq:
                            corrupt = f"sequence gap: record starts at {first_seq}"
            if torn is not None and is_last and mark is not None and mark.segment_first_seq == seg_first and pos < mark.size:
                # Before the durable mark: this record was fsynced and acknowledged, so it did not
                # tear — it rotted or was cut. Truncating it would drop acknowledged commands.
                corrupt = (
                    f"{torn}, but the durable mark says this segment was fsynced and acknowledged up to byte "
                    f"{mark.size} (sequence {mark.last_seq}): an acknowledged record is damaged"
                )
                torn, before_mark = None, True
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
                why = (
                    "it lies before the durable mark" if before_mark
                    else f"{after} bytes follow in this segment and {len(paths) - index - 1} later segments exist"
                )
                raise JournalCorrupt(
                    f"journal corrupt at {where}: {reason}; {why}, so this is not a torn tail. Recovery stopped "
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
    if mark is not None and report.last_seq < mark.last_seq:
        raise JournalCorrupt(
            f"the journal ends at sequence {report.last_seq} but the durable mark says sequence {mark.last_seq} was "
            "fsynced and acknowledged: acknowledged records are missing; restore the journal from a replica or a backup",
            expected_seq=report.last_seq + 1,
        )
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
    """Appends records durably. Not thread-safe: only the sequencer thread writes.

    `sync` is the function that makes a file's data durable (`os.fdatasync`; tests inject faults
    through it). After any failed write or sync the writer is *poisoned*: it never retries the sync
    (a retry can report success for pages the kernel already dropped after the error — PostgreSQL's
    "fsyncgate") and refuses every later append; only recovery on restart knows what is on disk.
    """

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
        sync: Callable[[int], None] = os.fdatasync,
        prezero: bool = False,
    ) -> None:
        self.dir = journal_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.next_seq = next_seq
        self.last_hash = last_hash
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self._sync = sync
        self.fsync_seconds_total = 0.0
        self.records_written = 0
        self.poisoned: BaseException | None = None
        self._fd: int | None = None
        self._size = 0  # the segment's logical end: where the next record is written (pwrite)
        #: the segment file's size on disk: above `_size` when it was pre-zeroed (the rest is zeros)
        self._file_bytes = 0
        self._segment_first_seq = 0
        #: pre-zeroed segments (only with fsync: they save the file-size metadata each fdatasync of
        #: a growing file commits; docs/latency.md, "Pre-zeroed segments")
        self.prezero = prezero and fsync
        self._spare_ready: Any = None  # threading.Event while a spare is being prepared or is ready
        self._spare_thread: Any = None
        self._spare_stop = False
        self._early_rotation = False
        self.spare_error: OSError | None = None
        self.segments_prezeroed = 0
        self.segments_plain = 0
        if tail_segment is not None and tail_size < segment_bytes:
            self._fd = os.open(tail_segment, os.O_WRONLY)
            self._size = tail_size
            self._file_bytes = max(tail_size, os.fstat(self._fd).st_size)  # beyond tail_size: zeros (scan)
            self._segment_first_seq = int(tail_segment.name[: -len(SEGMENT_SUFFIX)])
        self._mark_fd = os.open(self.dir / DURABLE_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        self._mark_slot = 0
        self._mark_thread: Any = None  # started by the first mark written (`note_durable`)
        self._mark_wake: Any = None
        self._mark_closing = False
        self._mark_written_seq = 0
        #: fsync on: the newest mark noted (encoded, last_seq), written and fsynced by the mark thread
        self._mark_latest: tuple[bytes, int] | None = None
        #: The last sequence number the mark on disk is known to cover (its fsync returned).
        self.mark_synced_seq = 0
        self.mark_syncs = 0
        fsync_dir(self.dir)
        # The spare is started by the first record written, not here: opening (a restart, a standby's
        # promotion) then does its own syncs without a segment of zeros queued at the disk before
        # them, and a node that never writes never writes one. (A spare left by a crash is never
        # read: it is replaced then.)

    # ------------------------------------------------------------------ pre-zeroed segments
    # An fdatasync of bytes appended to a file must also commit the file's new size (and extents)
    # through the filesystem's journal; one of bytes written over already-allocated zeros need not.
    # With `prezero`, a background thread writes the next segment in full, as real zeros, syncs it
    # and its directory (`SPARE_FILE`), while the current one fills; rotation renames it into place.
    # The records are written with pwrite at the segment's logical end; readers (`scan`) take the
    # zeros after the last record as the segment's end. Never waited for: a rotation that finds no
    # spare ready creates an empty segment as before (appends grow it), and moves into the spare at
    # the first append after it is ready.

    def _start_spare(self) -> None:
        if not self.prezero or self._spare_stop or self._spare_ready is not None:
            return
        import threading

        ready = threading.Event()
        self._spare_ready = ready
        self._spare_thread = threading.Thread(target=self._prepare_spare, args=(ready,), name="ringfence-journal-spare",
                                              daemon=True)
        self._spare_thread.start()

    def _prepare_spare(self, ready: Any) -> None:
        """The spare thread: a new file (never the inode of an older spare, which a dead writer's
        thread may still be writing), `segment_bytes` of zeros, synced, then its directory."""
        path = self.dir / SPARE_FILE
        try:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                zeros = memoryview(bytes(min(SPARE_CHUNK_BYTES, self.segment_bytes)))
                done = 0
                while done < self.segment_bytes:
                    if self._spare_stop:
                        return
                    done += os.write(fd, zeros[: self.segment_bytes - done])
                    os.fsync(fd)  # chunk by chunk (SPARE_CHUNK_BYTES); the last also commits its size
            finally:
                os.close(fd)
            fsync_dir(self.dir)
        except OSError as err:  # no spare: rotations create empty segments, as without prezero
            self.spare_error = err
            import logging

            logging.getLogger(__name__).warning("journal: could not prepare the next segment in %s (%s); "
                                                "segments grow as they are written", self.dir, err)
            return
        ready.set()

    def wait_for_spare(self, timeout_s: float) -> bool:  # float-ok: seconds
        """Wait up to `timeout_s` for the next segment to be ready (tests and benchmarks, which want
        a run to start in a pre-zeroed segment; the writer itself never waits for it)."""
        if self._spare_ready is None:
            self._start_spare()  # not started yet (no record written since the open): start it now
        ready = self._spare_ready
        return ready is not None and ready.wait(timeout_s)

    def _spare_ready_now(self) -> bool:
        ready = self._spare_ready
        return ready is not None and ready.is_set()

    def _grows(self) -> bool:
        """The current segment is not pre-zeroed (its next record would grow the file) and holds a
        record, while a spare is ready: rotate into the spare early, before the segment is full."""
        return self._size > 0 and self._file_bytes <= self._size and self._spare_ready_now()

    def _rotate(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        path = self.dir / f"{self.next_seq:020d}{SEGMENT_SUFFIX}"
        self._early_rotation = False
        if self._spare_ready_now() and self._take_spare(path):
            self._fd = os.open(path, os.O_WRONLY)
            self._file_bytes = os.fstat(self._fd).st_size
            self.segments_prezeroed += 1
        else:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            self._file_bytes = 0
            self.segments_plain += 1
            if self._spare_thread is not None and not self._spare_thread.is_alive() and not self._spare_ready_now():
                self._spare_ready = None  # the last attempt failed: try again
        self._size = 0
        self._segment_first_seq = self.next_seq
        fsync_dir(self.dir)  # the new file's directory entry must be durable too
        self._start_spare()

    def _take_spare(self, path: Path) -> bool:
        """Rename the ready spare to the new segment's name; False (an empty segment is created
        instead, as when it is not ready) if that fails: a missing spare must not stop the node."""
        self._spare_ready = None
        if os.path.lexists(path):  # the writer holds the lock: nothing else names segments
            raise FileExistsError(errno.EEXIST, "journal segment exists already", str(path))
        try:
            os.rename(self.dir / SPARE_FILE, path)
        except OSError as err:
            import logging

            logging.getLogger(__name__).warning("journal: could not use the prepared segment in %s (%s)", self.dir, err)
            return False
        return True

    def _write_at_end(self, record: bytes) -> None:
        assert self._fd is not None
        if self._spare_ready is None:
            self._start_spare()  # the first record (or the first after a spare could not be made)
        written = os.pwrite(self._fd, record, self._size)
        while written < len(record):  # a short write on a regular file is rare but legal
            written += os.pwrite(self._fd, memoryview(record)[written:], self._size + written)
        self._file_bytes = max(self._file_bytes, self._size + len(record))

    def append(self, payload: bytes, first_seq: int, count: int) -> bytes:
        """Write one record and make it durable before returning its hash.

        Raises `OSError` when the write failed (the record is at most a torn tail: not applied on
        recovery) and `OutcomeUnknown` when the record was written but the sync failed (recovery
        applies it if it survived). Either way the writer is poisoned.
        """
        record, digest = self.encode(payload, first_seq, count)
        return self.append_record(record, digest, first_seq, count)

    def encode(self, payload: bytes, first_seq: int, count: int) -> tuple[bytes, bytes]:
        """The record for the next append and its hash (known before it is written: replication
        publishes it while the fsync runs)."""
        if first_seq != self.next_seq:
            raise ValueError(f"journal expects sequence {self.next_seq}, got {first_seq}")
        return encode_record(payload, first_seq, count, self.last_hash)

    def append_record(self, record: bytes, digest: bytes, first_seq: int, count: int) -> bytes:
        """Write a record made by `encode` durably; errors as `append`."""
        if self.poisoned is not None:
            raise OutcomeUnknown(f"the journal writer stopped after an earlier failure ({self.poisoned}); restart the node")
        if first_seq != self.next_seq:
            raise ValueError(f"journal expects sequence {self.next_seq}, got {first_seq}")
        try:
            if self._fd is None or self._size >= self.segment_bytes or self._grows():
                self._rotate()
            self._write_at_end(record)
        except OSError as err:
            self.poisoned = err
            raise
        new_size = self._size + len(record)
        if self.fsync:
            import time

            started = time.perf_counter()  # float-ok: duration metric, not money
            try:
                self._sync(self._fd)
            except OSError as err:
                self.poisoned = err
                raise OutcomeUnknown(
                    f"the journal's fsync failed ({err.strerror or err}) after sequence {first_seq}..{first_seq + count - 1} "
                    "was written: it may or may not be durable; the node stops and recovery on restart decides",
                    field="journal",
                ) from err
            self.fsync_seconds_total += time.perf_counter() - started
        self._size = new_size
        self.next_seq = first_seq + count
        self.last_hash = digest
        self.records_written += 1
        self.note_durable(DurableMark(self._segment_first_seq, self._size, self.next_seq - 1, self.last_hash))
        return digest

    # ------------------------------------------------------------------ pipelined group commit
    # (Node(pipeline=True)): the sequencer writes records with `write_record` and goes on; the
    # record syncer makes them durable with `sync_records`, and only then are they acknowledged
    # (and `note_durable` records the mark). The sequencer never rotates a segment while a sync
    # may be running (`rotation_due` tells it to wait for the syncer first), so the two threads
    # never race on a descriptor's life.

    def rotation_due(self) -> bool:
        """The next record starts a new segment (pipelined: wait until everything written is durable).
        A rotation into a spare that became ready is decided here, once, so `write_record` never
        rotates unless its caller was told to wait."""
        if self._fd is None or self._size >= self.segment_bytes:
            return True
        self._early_rotation = self._grows()
        return self._early_rotation

    def write_record(self, record: bytes, digest: bytes, first_seq: int, count: int) -> DurableMark:
        """Pipelined: write a record made by `encode` WITHOUT syncing it; return the mark that
        `sync_records` must make durable before anything in it is acknowledged. Raises `OSError`
        when the write failed (poisoned, as `append_record`)."""
        if self.poisoned is not None:
            raise OutcomeUnknown(f"the journal writer stopped after an earlier failure ({self.poisoned}); restart the node")
        if first_seq != self.next_seq:
            raise ValueError(f"journal expects sequence {self.next_seq}, got {first_seq}")
        try:
            if self._fd is None or self._size >= self.segment_bytes or self._early_rotation:
                if self._fd is not None and self.fsync:
                    self._sync(self._fd)  # the syncer is idle (the caller waited): the old segment's tail
                self._rotate()
            self._write_at_end(record)
        except OSError as err:
            self.poisoned = err
            raise
        self._size += len(record)
        self.next_seq = first_seq + count
        self.last_hash = digest
        self.records_written += 1
        return DurableMark(self._segment_first_seq, self._size, self.next_seq - 1, digest)

    def sync_records(self, mark: DurableMark) -> None:
        """Pipelined, on the record syncer: make every record written so far durable (one
        fdatasync covers all of them; `mark` is the newest written before this call began).
        Raises `OutcomeUnknown` on failure; the writer is then poisoned."""
        if self.poisoned is not None:
            raise OutcomeUnknown(f"the journal writer stopped after an earlier failure ({self.poisoned}); restart the node")
        if not self.fsync:
            return
        import time

        started = time.perf_counter()  # float-ok: duration metric, not money
        fd = self._fd
        assert fd is not None
        try:
            self._sync(fd)
        except OSError as err:
            self.poisoned = err
            raise OutcomeUnknown(
                f"the journal's fsync failed ({err.strerror or err}) with records up to sequence {mark.last_seq} "
                "written: they may or may not be durable; the node stops and recovery on restart decides",
                field="journal",
            ) from err
        self.fsync_seconds_total += time.perf_counter() - started

    def note_durable(self, mark: DurableMark) -> None:
        """Everything up to `mark` is durable (its records' fdatasync returned): hand the mark to the
        mark thread, which writes it into the next slot of `DURABLE` and fsyncs it, off the
        acknowledgement path (no system call here: on a busy interpreter every call that lets the
        GIL go costs the caller a wait to get it back), so it never claims more than is durable and
        may lag by the mark writes and syncs in flight. Called by the thread that saw the sync
        return (the sequencer, or the pipelined acknowledger), one at a time. Raises
        `OutcomeUnknown` once the writer is poisoned (a mark that could not be written or synced
        poisons it on the mark thread; the next append or note refuses)."""
        if self.poisoned is not None:
            raise OutcomeUnknown(f"the journal writer stopped after an earlier failure ({self.poisoned}); restart the node")
        self._put_mark(_encode_mark(mark), mark.last_seq)

    def position(self) -> tuple[int, bytes, Path | None, int]:
        """`(next_seq, last_hash, tail segment, its size)`: what a new writer of this journal needs
        (a promoted standby's node takes over the journal its follower wrote)."""
        tail = self.dir / f"{self._segment_first_seq:020d}{SEGMENT_SUFFIX}" if self._fd is not None else None
        return self.next_seq, self.last_hash, tail, self._size

    def _mark_syncer(self) -> None:
        """The mark thread: write the newest mark noted into the next slot of `DURABLE` and fsync
        it, one sync at a time (a sync covers every mark noted before it began: coalescing)."""
        import time

        wake = self._mark_wake
        while True:
            wake.wait()
            if self._mark_closing:
                return
            time.sleep(MARK_SYNC_INTERVAL_S)  # gather: one write and sync for every mark noted meanwhile
            wake.clear()  # before reading the newest mark: one noted after this read wakes us again
            fd, latest = self._mark_fd, self._mark_latest
            if self._mark_closing or fd is None:
                return
            if latest is None or latest[1] <= self._mark_written_seq:
                continue
            try:
                self._write_mark(*latest)
                self._sync(fd)
            except OSError as err:  # the next append refuses: stop, as for a failed journal fsync
                self.poisoned = self.poisoned or err
                return
            self.mark_synced_seq = max(self.mark_synced_seq, latest[1])
            self.mark_syncs += 1

    def _write_mark(self, encoded: bytes, last_seq: int) -> None:
        """Write a mark into the next slot (the other slot keeps the previous one: a torn write of
        this one leaves it readable). Raises `OSError`; the caller poisons the writer."""
        os.pwrite(self._mark_fd, encoded, self._mark_slot * _MARK_SLOT_BYTES)
        self._mark_slot ^= 1
        self._mark_written_seq = last_seq

    def _put_mark(self, encoded: bytes, last_seq: int) -> None:
        """Note the newest durable mark. fsync on: the mark thread writes and fsyncs it. fsync off
        (tests, the local custody net): written here, never synced (like the records)."""
        if not self.fsync:
            try:
                self._write_mark(encoded, last_seq)
            except OSError as err:
                # The record itself is durable, but a mark we cannot trust could later make recovery
                # call a torn tail corruption or the reverse; stop, as for a failed journal fsync.
                self.poisoned = err
                raise OutcomeUnknown(
                    f"the journal's durable mark could not be written ({err.strerror or err}); the node stops and "
                    "recovery on restart decides",
                    field="journal",
                ) from err
            return
        self._mark_latest = (encoded, last_seq)
        if self._mark_thread is None:
            import threading

            self._mark_wake = threading.Event()
            self._mark_thread = threading.Thread(target=self._mark_syncer, name="ringfence-journal-mark", daemon=True)
            self._mark_thread.start()
        if not self._mark_wake.is_set():
            self._mark_wake.set()

    def close(self) -> None:
        self._spare_stop = True
        if self._spare_thread is not None:  # it stops within one chunk (SPARE_CHUNK_BYTES)
            self._spare_thread.join(timeout=60)
            self._spare_thread = None
        if self._fd is not None:
            if self.poisoned is None:
                if self._file_bytes > self._size:  # a clean stop leaves no zeros behind (a crash may:
                    os.ftruncate(self._fd, self._size)  # they read as the end, so this need not be durable)
                    self._file_bytes = self._size
                if self.fsync:  # never retry a sync that failed
                    self._sync(self._fd)
            os.close(self._fd)
            self._fd = None
        if self.prezero and self.poisoned is None:
            try:
                os.unlink(self.dir / SPARE_FILE)
            except FileNotFoundError:
                pass
        if self._mark_thread is not None:  # stop the mark thread, then sync the last mark here
            self._mark_closing = True
            self._mark_wake.set()
            self._mark_thread.join()
            self._mark_thread = None
            latest = self._mark_latest
            if self._mark_fd is not None and self.poisoned is None:
                if latest is not None and latest[1] > self._mark_written_seq:
                    self._write_mark(*latest)
                self._sync(self._mark_fd)
                self.mark_synced_seq = self._mark_written_seq
        if self._mark_fd is not None:
            os.close(self._mark_fd)
            self._mark_fd = None  # type: ignore[assignment]
