"""Journal faults with injection on real files: a failed fsync, an acknowledged last record that
rots, and a second writer on the same data directory."""

from __future__ import annotations

import errno
import os
import random
import time
from pathlib import Path

import pytest

from ringfence.app import new_node
from ringfence.engine.node import Node
from ringfence.errors import DataDirLocked, JournalCorrupt, NotDurable, OutcomeUnknown
from ringfence.journal.journal import DURABLE_FILE, DataDirLock, encode_record, HEADER_SIZE, read_durable_mark, scan_all, segment_paths
from ringfence.ledger.commands import CreateTransfers
from ringfence.ledger.model import Transfer

from .test_journal import make_node, seed_ledger, write_batches


class FaultySync:
    """A journal fdatasync that fails on demand, counting every later call (a failed sync must never
    be retried). The durable mark's syncs (on their own thread, off the acknowledgement path) pass."""

    def __init__(self) -> None:
        self.fail = False
        self.calls_after_failure = 0
        self.failed = False

    def __call__(self, fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(DURABLE_FILE):
            os.fdatasync(fd)
            return
        if self.failed:
            self.calls_after_failure += 1
        if self.fail:
            self.failed = True
            self.fail = False
            raise OSError(errno.EIO, "Input/output error (injected)")
        os.fdatasync(fd)


def _transfer(node: Node, tid: int, amount: int) -> CreateTransfers:
    led = node.engine.ledger
    return CreateTransfers([Transfer(tid, led.world("BTC").id, led.get("alice", "BTC").id, amount)])


def test_failed_fsync_answers_outcome_unknown_stops_the_node_and_recovery_decides(tmp_path):
    sync = FaultySync()
    node = make_node(tmp_path, journal_sync=sync)
    seed_ledger(node)
    node.start()
    before = node.engine.last_seq
    sync.fail = True
    ack = node.submit(_transfer(node, 77, 5_000))
    with pytest.raises(OutcomeUnknown) as info:
        ack.result(timeout=10)
    assert info.value.code == "RF_OUTCOME_UNKNOWN" and "fsync failed" in str(info.value)
    assert node.engine.last_seq == before  # not applied in memory: recovery decides
    # the node stopped accepting; nothing more is written and the sync is never retried
    with pytest.raises(NotDurable):
        node.submit(_transfer(node, 78, 1)).result(timeout=10)
    node.close()
    assert sync.calls_after_failure == 0, "a failed fsync was retried (fsyncgate)"
    # The bytes reached the page cache, so on restart the record verifies and is applied: exactly
    # why "nothing was applied" would have been a lie to the client.
    recovered = make_node(tmp_path)
    assert recovered.engine.last_seq == before + 1
    assert 77 in recovered.engine.ledger.transfers and 78 not in recovered.engine.ledger.transfers
    recovered.close()


def test_failed_write_answers_not_durable(tmp_path):
    node = make_node(tmp_path)
    seed_ledger(node)
    before = node.engine.last_seq
    os.close(node.writer._fd)  # the next write fails with EBADF: nothing of the record is on disk
    node.writer._fd = os.open(os.devnull, os.O_RDONLY)
    with pytest.raises(NotDurable, match="nothing was applied"):
        node.execute(_transfer(node, 5, 1))
    with pytest.raises(NotDurable):
        node.execute(_transfer(node, 6, 1))
    node.close()
    recovered = make_node(tmp_path)
    assert recovered.engine.last_seq == before
    recovered.close()


def _last_record_damaged(tmp_path: Path) -> tuple[Path, int, int]:
    node = make_node(tmp_path)
    seed_ledger(node)
    write_batches(node, 3)
    acked_seq = node.engine.last_seq
    node.close()  # every record above was acknowledged
    seg = segment_paths(tmp_path / "journal")[-1]
    records, _ = scan_all(tmp_path / "journal")
    return seg, records[-1].offset, acked_seq


def test_rotted_acknowledged_last_record_is_corruption_not_a_torn_tail(tmp_path):
    seg, last_offset, acked_seq = _last_record_damaged(tmp_path)
    raw = bytearray(seg.read_bytes())
    raw[last_offset + HEADER_SIZE + 3] ^= 0x10  # one bit of the acknowledged final record's payload
    seg.write_bytes(bytes(raw))
    with pytest.raises(JournalCorrupt) as info:
        new_node(tmp_path).open()
    assert "durable mark" in str(info.value) and seg.name in str(info.value)
    assert seg.stat().st_size == len(raw)  # nothing truncated: the evidence stays for the operator
    DataDirLock(tmp_path).release()  # the failed open() released the writer lock
    import subprocess
    import sys

    verify = subprocess.run([sys.executable, "-m", "ringfence.cli", "journal", "verify", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert verify.returncode == 1 and "CORRUPT" in verify.stdout and "durable mark" in " ".join(verify.stdout.split())
    assert seg.stat().st_size == len(raw)


def test_acknowledged_last_record_cut_short_is_corruption(tmp_path):
    seg, last_offset, _ = _last_record_damaged(tmp_path)
    raw = seg.read_bytes()
    seg.write_bytes(raw[: len(raw) - 5])
    with pytest.raises(JournalCorrupt, match="durable mark"):
        new_node(tmp_path).open()
    seg.write_bytes(raw[:last_offset])  # a whole acknowledged record gone
    with pytest.raises(JournalCorrupt, match="acknowledged records are missing"):
        new_node(tmp_path).open()


def test_torn_write_after_the_durable_mark_is_still_a_torn_tail(tmp_path):
    seg, _, acked_seq = _last_record_damaged(tmp_path)
    size = seg.stat().st_size
    records, report = scan_all(tmp_path / "journal")
    record, _ = encode_record(b"[1,2,3]" * 20, acked_seq + 1, 1, report.last_hash)
    with open(seg, "ab") as fh:  # a batch being written when the process died: never acknowledged
        fh.write(record[: len(record) - 40])
    node = make_node(tmp_path)
    assert node.recovery.torn_tail and node.engine.last_seq == acked_seq
    assert seg.stat().st_size == size
    node.close()


def test_a_torn_durable_mark_slot_falls_back_to_the_other(tmp_path):
    # Both slots written: the mark thread writes the newest mark it was given (coalescing), and
    # the close writes the last one into the other slot.
    node = make_node(tmp_path)
    seed_ledger(node)
    write_batches(node, 3)
    deadline = time.monotonic() + 30
    while node.writer.mark_synced_seq < node.engine.last_seq and time.monotonic() < deadline:
        time.sleep(0.005)
    write_batches(node, 1, start_id=100)
    acked_seq = node.engine.last_seq
    node.close()
    path = tmp_path / "journal" / DURABLE_FILE
    mark = read_durable_mark(tmp_path / "journal")
    assert mark is not None and mark.last_seq == acked_seq
    raw = bytearray(path.read_bytes())
    for slot in (0, 1):  # tear one slot: the other still reads, one batch older (still true)
        damaged = bytearray(raw)
        damaged[slot * 512 + 10] ^= 0xFF
        path.write_bytes(bytes(damaged))
        other = read_durable_mark(tmp_path / "journal")
        assert other is not None and other.last_seq <= acked_seq
    path.write_bytes(bytes(raw))
    node = make_node(tmp_path)
    assert node.engine.last_seq == acked_seq
    node.close()


def test_a_second_writer_in_the_same_process_is_refused_with_the_holders_pid(tmp_path):
    first = make_node(tmp_path)
    seed_ledger(first)
    size = sum(p.stat().st_size for p in segment_paths(tmp_path / "journal"))
    with pytest.raises(DataDirLocked) as info:
        new_node(tmp_path).open()
    assert f"pid {os.getpid()}" in str(info.value)
    assert info.value.details["holder_pid"] == os.getpid()
    assert sum(p.stat().st_size for p in segment_paths(tmp_path / "journal")) == size
    first.close()
    second = make_node(tmp_path)  # released on close
    second.close()


def test_read_only_scan_never_truncates_a_torn_tail(tmp_path):
    node = make_node(tmp_path)
    seed_ledger(node)
    node.close()
    seg = segment_paths(tmp_path / "journal")[-1]
    record, _ = encode_record(random.Random(3).randbytes(70), 4, 1, scan_all(tmp_path / "journal")[1].last_hash)
    with open(seg, "ab") as fh:
        fh.write(record[:-1])
    size = seg.stat().st_size
    _, report = scan_all(tmp_path / "journal")
    assert report.torn_tail is not None and seg.stat().st_size == size


def test_outcome_unknown_is_binance_minus_1007_at_the_api_edge():
    from ringfence.api.binance_errors import from_ringfence

    mapped = from_ringfence(OutcomeUnknown("fsync failed"))
    assert (mapped.code, mapped.status) == (-1007, 503)
    assert mapped.msg == "Timeout waiting for response from backend server. Send status unknown; execution status unknown."
    assert from_ringfence(NotDurable()).code == -1001  # refused before the journal: safe to retry
