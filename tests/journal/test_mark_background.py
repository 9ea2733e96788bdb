"""One fsync per acknowledgement: the journal's durable mark is fsynced on a thread of its own.

An acknowledgement waits for its record's fdatasync only (classic and pipelined). The mark never
claims more than is durable, ends exact at close, catches up on its own while the node runs, and a
failed mark sync stops the writer. What its lag gives up is pinned down exactly here: a damaged
final record beyond the mark *on disk* reads as a torn tail (cut), one before it as corruption.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from ringfence.app import new_node
from ringfence.errors import JournalCorrupt, OutcomeUnknown
from ringfence.journal.journal import (
    DURABLE_FILE,
    GENESIS_HASH,
    HEADER_SIZE,
    DurableMark,
    JournalWriter,
    read_durable_mark,
    scan_all,
    segment_paths,
    write_durable_mark,
)
from ringfence.ledger.commands import CreateTransfers
from ringfence.ledger.model import Transfer

from .test_journal import make_node, seed_ledger, write_batches


def writer(path, sync) -> JournalWriter:  # type: ignore[no-untyped-def]
    return JournalWriter(path, next_seq=1, last_hash=GENESIS_HASH, tail_segment=None, tail_size=0, sync=sync)


def test_an_append_costs_one_sync_on_the_callers_thread_and_the_mark_ends_exact(tmp_path):
    caller = threading.get_ident()
    on_caller: list[int] = []
    elsewhere: list[int] = []

    def sync(fd: int) -> None:
        (on_caller if threading.get_ident() == caller else elsewhere).append(fd)
        os.fdatasync(fd)

    w = writer(tmp_path / "journal", sync)
    for seq in range(1, 51):
        w.append(b"batch %d" % seq, seq, 1)
        mark = read_durable_mark(tmp_path / "journal")
        assert mark is None or mark.last_seq <= seq  # never ahead of what was fsynced (written by the mark thread)
        assert w.mark_synced_seq <= seq
    assert len(on_caller) == 50, "exactly one fsync per append on the acknowledgement path"
    deadline = time.monotonic() + 30
    while w.mark_synced_seq < 50 and time.monotonic() < deadline:
        time.sleep(0.005)  # paced (MARK_SYNC_INTERVAL_S): one sync covers every mark written before it
    assert elsewhere and w.mark_synced_seq == 50, "the mark is synced on its own thread, without a close"
    w.close()
    assert len(on_caller) == 52  # close syncs the segment and then the last mark on the caller's thread
    mark = read_durable_mark(tmp_path / "journal")
    assert mark is not None and mark.last_seq == 50 and mark.last_hash == w.last_hash
    assert w.mark_synced_seq == 50
    records, report = scan_all(tmp_path / "journal")
    assert report.last_seq == 50 and len(records) == 50


def test_a_failed_mark_sync_stops_the_writer(tmp_path):
    mark_fd: list[int] = []

    def sync(fd: int) -> None:
        if threading.current_thread().name == "ringfence-journal-mark":
            mark_fd.append(fd)
            raise OSError(5, "Input/output error")
        os.fdatasync(fd)

    w = writer(tmp_path / "journal", sync)
    w.append(b"one", 1, 1)
    deadline = time.monotonic() + 10
    while w.poisoned is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert mark_fd and w.poisoned is not None
    with pytest.raises(OutcomeUnknown):
        w.append(b"two", 2, 1)
    w.close()


def test_a_failed_mark_write_stops_the_writer(tmp_path, monkeypatch):
    real_pwrite = os.pwrite

    def pwrite(fd: int, data: bytes, offset: int) -> int:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(DURABLE_FILE):
            raise OSError(28, "No space left on device")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    w = writer(tmp_path / "journal", os.fdatasync)
    w.append(b"one", 1, 1)  # durable: its own fsync returned; the mark is the mark thread's
    deadline = time.monotonic() + 10
    while w.poisoned is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert isinstance(w.poisoned, OSError)
    with pytest.raises(OutcomeUnknown):
        w.append(b"two", 2, 1)
    w.close()


@pytest.mark.parametrize("pipeline", [False, True])
def test_acknowledgements_never_wait_for_the_marks_fsync(tmp_path, pipeline):
    """The mark's fsync is held: commands are still acknowledged (their records' fsyncs return), the
    mark known durable stays behind, and once it is let go it catches up without a close."""
    held = threading.Event()
    hold = [False]

    def sync(fd: int) -> None:
        if hold[0] and os.readlink(f"/proc/self/fd/{fd}").endswith(DURABLE_FILE):
            held.wait(30)
        os.fdatasync(fd)

    node = new_node(tmp_path / "n", journal_sync=sync, pipeline=pipeline)
    node.open()
    world, alice, _ = seed_ledger(node)
    node.start()
    node.submit(CreateTransfers([Transfer(1, world, alice, 1)])).result(30)
    deadline = time.monotonic() + 30
    while node.writer.mark_synced_seq < node.last_seq and time.monotonic() < deadline:
        time.sleep(0.005)  # the mark has caught up with everything so far
    marked = node.writer.mark_synced_seq
    hold[0] = True
    node.submit(CreateTransfers([Transfer(2, world, alice, 1)])).result(30)  # let the mark thread block on it
    for tid in range(3, 103):
        node.submit(CreateTransfers([Transfer(tid, world, alice, 1)])).result(30)  # one at a time: a batch each
    assert node.writer.mark_synced_seq <= marked + 1, "the held mark sync returned"
    assert node.durable_seq == node.last_seq
    hold[0] = False
    held.set()
    deadline = time.monotonic() + 30
    while node.writer.mark_synced_seq < node.last_seq and time.monotonic() < deadline:
        time.sleep(0.005)
    assert node.writer.mark_synced_seq == node.last_seq, "the mark did not catch up while the node ran"
    node.close()


@pytest.mark.parametrize("pipeline", [False, True])
def test_the_acknowledgement_path_never_writes_the_mark(tmp_path, monkeypatch, pipeline):
    """No system call for the mark on the thread that acknowledges (the sequencer, or the pipelined
    acknowledger): each one lets the GIL go, and a busy interpreter makes the caller wait to get it
    back. The mark thread writes it, and it still catches up and ends exact."""
    writes: list[str] = []
    real_pwrite = os.pwrite

    def pwrite(fd: int, data: bytes, offset: int) -> int:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(DURABLE_FILE):
            writes.append(threading.current_thread().name)
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    node = new_node(tmp_path / "n", pipeline=pipeline)
    node.open()
    world, alice, _ = seed_ledger(node)
    node.start()
    for tid in range(1, 41):
        node.submit(CreateTransfers([Transfer(tid, world, alice, 1)])).result(30)
    deadline = time.monotonic() + 30
    while node.writer.mark_synced_seq < node.last_seq and time.monotonic() < deadline:
        time.sleep(0.005)
    assert node.writer.mark_synced_seq == node.last_seq, "the mark did not catch up while the node ran"
    last = node.last_seq
    assert set(writes) == {"ringfence-journal-mark"}, set(writes)
    node.close()
    mark = read_durable_mark(tmp_path / "n" / "journal")
    assert mark is not None and mark.last_seq == last


def _journal_with_records(tmp_path: Path) -> tuple[Path, list, int]:
    node = make_node(tmp_path)
    seed_ledger(node)
    write_batches(node, 4)
    acked = node.engine.last_seq
    node.close()
    records, _ = scan_all(tmp_path / "journal")
    return segment_paths(tmp_path / "journal")[-1], records, acked


def _mark_at(tmp_path: Path, seg: Path, record) -> None:  # type: ignore[no-untyped-def]
    """DURABLE as a crash would leave it when the last mark fsync had covered `record`."""
    end = record.offset + HEADER_SIZE + len(record.payload) + 32
    write_durable_mark(tmp_path / "journal", DurableMark(int(seg.name[:-4]), end, record.last_seq, record.hash))


def _rot_final_record(seg: Path, records: list) -> None:
    raw = bytearray(seg.read_bytes())
    raw[records[-1].offset + HEADER_SIZE + 3] ^= 0x10
    seg.write_bytes(bytes(raw))


def test_the_marks_lag_is_the_exact_limit_of_what_it_tells_apart(tmp_path):
    """The documented price of one fsync per acknowledgement: after a crash, a final record beyond
    the mark on disk is judged by its checksum alone. Complete and verified, it is kept (never cut);
    damaged, it reads as a torn tail. Covered by the mark on disk, the same damage is corruption."""
    seg, records, acked = _journal_with_records(tmp_path / "a")
    _mark_at(tmp_path / "a", seg, records[-2])  # the mark lagged one batch behind the last ack
    node = make_node(tmp_path / "a")
    assert node.engine.last_seq == acked and node.recovery.torn_tail is None  # intact: kept
    node.close()
    _mark_at(tmp_path / "a", seg, records[-2])
    _rot_final_record(seg, records)
    node = make_node(tmp_path / "a")
    assert node.engine.last_seq == records[-2].last_seq and node.recovery.torn_tail  # damaged beyond the mark: cut
    node.close()

    seg, records, acked = _journal_with_records(tmp_path / "b")
    _mark_at(tmp_path / "b", seg, records[-1])  # the mark on disk covers the last ack
    _rot_final_record(seg, records)
    with pytest.raises(JournalCorrupt, match="durable mark"):
        make_node(tmp_path / "b")
