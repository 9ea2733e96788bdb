"""Pre-zeroed journal segments (`JournalWriter(prezero=True)`, `Node(prezero_segments=True)`).

A segment is zero-filled in full by a background thread before it is needed and records are written
over the zeros; every reader takes the zeros after the last record as the segment's end, silently,
while a record torn by a crash is still a torn tail. A crash at any point loses nothing acknowledged
and is never read wrong: the spare a crash leaves behind is never read as data.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from ringfence.app import new_node
from ringfence.backup import BackupSigner, create_backup, restore_backup, verify_backup
from ringfence.journal.journal import (
    GENESIS_HASH,
    HEADER_SIZE,
    SPARE_FILE,
    TRAILER_SIZE,
    JournalWriter,
    encode_record,
    scan_all,
    segment_paths,
)
from ringfence.ledger.commands import CreateTransfers, OpenAccount, RegisterAsset
from ringfence.ledger.model import Transfer
from ringfence.reconcile import reconciler
from ringfence.reconcile.reconciler import JournalTail

WAIT_S = 30.0  # float-ok: seconds; the spare of a test-sized segment is ready in milliseconds


def _writer(journal: Path, segment_bytes: int, **kw) -> JournalWriter:  # type: ignore[no-untyped-def]
    _, report = scan_all(journal, truncate=True) if journal.is_dir() else (None, None)
    if report is None:
        return JournalWriter(journal, next_seq=1, last_hash=GENESIS_HASH, tail_segment=None, tail_size=0,
                             segment_bytes=segment_bytes, prezero=True, **kw)
    return JournalWriter(journal, next_seq=report.last_seq + 1, last_hash=report.last_hash,
                         tail_segment=report.tail_segment, tail_size=report.tail_size, segment_bytes=segment_bytes,
                         prezero=True, **kw)


def _crash(writer: JournalWriter) -> None:
    """Die as a killed process: nothing truncated, no spare removed, nothing synced at close."""
    writer.poisoned = RuntimeError("simulated crash")
    writer.close()


@given(sizes=st.lists(st.integers(1, 900), min_size=1, max_size=14), crash_after=st.integers(0, 14),
       torn=st.integers(0, 2_000), segment_bytes=st.sampled_from([1_024, 2_048, 8_192]),
       wait=st.booleans(), data=st.data())
@settings(max_examples=40)
def test_records_over_zeros_scan_back_exactly_with_any_torn_tail(tmp_path_factory, sizes, crash_after, torn,
                                                                  segment_bytes, wait, data):
    journal = tmp_path_factory.mktemp("prezero") / "journal"
    writer = _writer(journal, segment_bytes)
    payloads = [os.urandom(n) for n in sizes[: crash_after + 1]]
    for i, payload in enumerate(payloads):
        if wait:  # every rotation finds its spare ready (else: whatever the thread managed meanwhile)
            writer.wait_for_spare(WAIT_S)
        writer.append(payload, i + 1, 1)
    assert writer.segments_prezeroed + writer.segments_plain == len(segment_paths(journal))
    next_seq, last_hash, tail, logical = writer.position()
    _crash(writer)
    assert tail is not None
    torn_bytes = b""
    if torn:  # the process died while writing the next record: a prefix of it reached the file
        record, _ = encode_record(data.draw(st.binary(min_size=1, max_size=900), label="torn payload"), next_seq, 1,
                                  last_hash)
        # Torn before the record's last nonzero byte: a prefix that stops only in trailing zero bytes
        # (a CRC ending in 0x00: 1 in 256), written over a pre-zeroed segment, IS the whole record on
        # disk, and scanning it back is right (it was the flaky failure of session 17's final run).
        last_nonzero = max(i for i, b in enumerate(record) if b)
        torn_bytes = record[: min(torn, last_nonzero)]
        with open(tail, "r+b") as fh:
            fh.seek(logical)
            fh.write(torn_bytes)
    records, report = scan_all(journal)
    assert [r.payload for r in records] == payloads
    assert report.last_seq == len(payloads) and report.tail_size == logical
    assert (report.torn_tail is not None) == bool(torn_bytes), report.torn_tail
    # recovery: a torn tail is cut as before; the writer goes on at the logical end
    writer = _writer(journal, segment_bytes)
    writer.append(b"after the crash", len(payloads) + 1, 1)
    writer.close()
    records, report = scan_all(journal)
    assert [r.payload for r in records] == payloads + [b"after the crash"]
    assert report.torn_tail is None and not (journal / SPARE_FILE).exists()


def _seed(node) -> None:  # type: ignore[no-untyped-def]
    node.execute(RegisterAsset("BTC", 8, "crypto", "bitcoin"))
    node.execute(OpenAccount("alice", "BTC"))


def _fill(node, start: int, n: int) -> None:  # type: ignore[no-untyped-def]
    ledger = node.engine.ledger
    world, alice = ledger.world("BTC").id, ledger.get("alice", "BTC").id
    for i in range(n):
        node.execute(CreateTransfers([Transfer(start + i, world, alice, 1 + i)]))


def test_a_restart_after_a_crash_continues_at_the_logical_end(tmp_path):
    node = new_node(tmp_path, prezero_segments=True, segment_bytes=1 << 16)
    node.open()
    assert node.writer is not None and node.writer.wait_for_spare(WAIT_S)
    _seed(node)
    _fill(node, 1, 10)
    seg = segment_paths(tmp_path / "journal")[-1]
    assert seg.stat().st_size == 1 << 16  # the first segment is the spare, zero-filled in full
    state, last = node.engine.state_hash(), node.engine.last_seq
    node.abandon()
    verify = subprocess.run([sys.executable, "-m", "ringfence.cli", "journal", "verify", str(tmp_path)],
                            capture_output=True, text=True, timeout=300, env=dict(os.environ, COLUMNS="200"))
    assert verify.returncode == 0 and "journal: OK" in verify.stdout and "torn tail will" not in verify.stdout, verify.stdout
    assert "zero-filled ahead of need" in verify.stdout, verify.stdout
    node = new_node(tmp_path, prezero_segments=True, segment_bytes=1 << 16)
    node.open()  # recovery: the zeros are the end, nothing torn, nothing cut
    assert node.recovery.torn_tail is None and node.engine.last_seq == last and node.engine.state_hash() == state
    assert seg.stat().st_size == 1 << 16
    _fill(node, 100, 5)  # over the zeros, right after the last record
    assert seg.stat().st_size == 1 << 16 and segment_paths(tmp_path / "journal") == [seg]
    node.close()  # a clean stop leaves neither zeros nor a spare behind
    records, report = scan_all(tmp_path / "journal")
    assert report.last_seq == last + 5 and report.torn_tail is None
    assert seg.stat().st_size == records[-1].offset + HEADER_SIZE + len(records[-1].payload) + TRAILER_SIZE
    assert not (tmp_path / "journal" / SPARE_FILE).exists()


def test_a_rotation_that_finds_no_spare_ready_never_waits_for_it(tmp_path, monkeypatch):
    release = threading.Event()
    prepare = JournalWriter._prepare_spare

    def slow(self, ready):  # type: ignore[no-untyped-def]
        release.wait(WAIT_S)
        prepare(self, ready)

    monkeypatch.setattr(JournalWriter, "_prepare_spare", slow)
    writer = _writer(tmp_path / "journal", 2_048)
    for seq in range(1, 9):  # several rotations while the spare is held back: empty segments, as before
        writer.append(b"x" * 600, seq, 1)
    assert writer.segments_plain == len(segment_paths(tmp_path / "journal")) >= 2 and writer.segments_prezeroed == 0
    release.set()
    assert writer.wait_for_spare(WAIT_S)
    writer.append(b"y" * 10, 9, 1)  # the spare is ready: the writer moves into it at once
    assert writer.segments_prezeroed == 1
    assert segment_paths(tmp_path / "journal")[-1].stat().st_size == 2_048
    writer.append(b"z" * 10, 10, 1)
    _crash(writer)
    records, report = scan_all(tmp_path / "journal")
    assert [r.first_seq for r in records] == list(range(1, 11)) and report.torn_tail is None


def test_a_spare_left_by_a_crash_is_never_read_and_is_replaced(tmp_path):
    journal = tmp_path / "journal"
    writer = _writer(journal, 4_096)
    writer.append(b"one", 1, 1)
    _, last_hash, _, _ = writer.position()
    _crash(writer)
    # the worst a spare could hold: the record that would come next, complete and valid
    record, _ = encode_record(b"not a record", 2, 1, last_hash)
    (journal / SPARE_FILE).write_bytes(record + b"\x01" * 100)
    records, report = scan_all(journal)
    assert [r.payload for r in records] == [b"one"] and report.torn_tail is None
    writer = _writer(journal, 4_096)
    assert writer.wait_for_spare(WAIT_S)
    assert (journal / SPARE_FILE).read_bytes() == bytes(4_096)  # a new one: zeros, in full
    writer.append(b"two", 2, 1)
    writer.close()
    assert [r.payload for r in scan_all(journal)[0]] == [b"one", b"two"]


@pytest.mark.parametrize("chunk_bytes", [256, 1 << 20])
def test_the_fold_reads_up_to_the_zeros_and_resumes(tmp_path, monkeypatch, chunk_bytes):
    monkeypatch.setattr(reconciler, "TAIL_READ_CHUNK_BYTES", chunk_bytes)  # 256: stops at a chunk of zeros
    node = new_node(tmp_path, prezero_segments=True, segment_bytes=4_096)
    node.open()
    assert node.writer is not None and node.writer.wait_for_spare(WAIT_S)
    _seed(node)
    _fill(node, 1, 5)
    tail = JournalTail(tmp_path / "journal")
    assert [r.last_seq for r in tail.read_new()] == list(range(1, 8))
    assert list(tail.read_new()) == []
    _fill(node, 10, 30)  # across rotations into pre-zeroed segments with zero tails left behind
    assert [r.last_seq for r in tail.read_new()] == list(range(8, 38))
    node.close()


def test_backup_and_restore_of_a_journal_ending_in_zeros(tmp_path):
    src = tmp_path / "node"
    node = new_node(src, prezero_segments=True, segment_bytes=1 << 15)
    node.open()
    assert node.writer is not None and node.writer.wait_for_spare(WAIT_S)
    _seed(node)
    _fill(node, 1, 60)
    assert node.writer.wait_for_spare(WAIT_S)
    _fill(node, 100, 60)  # rotations: the older segments keep their zero tails
    state, last = node.engine.state_hash(), node.engine.last_seq
    tail = segment_paths(src / "journal")[-1]
    assert tail.stat().st_size == 1 << 15  # the live tail: records, then zeros
    signer = BackupSigner("prezero-node", Ed25519PrivateKey.generate())
    trust = {signer.node_id: signer.key.public_key()}
    report = create_backup(src, tmp_path / "backup", signer=signer)  # beside the running node, which holds its lock
    assert report.last_seq == last and not any("left out" in n for n in report.notes)
    assert verify_backup(tmp_path / "backup", trust=trust).problems == []
    restored = restore_backup(tmp_path / "backup", tmp_path / "restored", trust=trust)
    assert restored.last_seq == last
    node.close()
    again = new_node(tmp_path / "restored" / "engine", prezero_segments=True, segment_bytes=1 << 15)
    again.open()
    assert again.engine.last_seq == last and again.engine.state_hash() == state
    _fill(again, 1_000, 3)
    again.close()
    assert scan_all(tmp_path / "restored" / "engine" / "journal")[1].last_seq == last + 3
