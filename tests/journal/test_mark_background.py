"""Replicated mode syncs the journal's durable mark on a thread of its own (one fsync per batch on
the acknowledgement path): the mark still never claims more than is durable, ends exact at close,
counts one record fsync per append on the caller's thread, and a failed mark sync stops the writer."""

from __future__ import annotations

import os
import threading
import time

import pytest

from ringfence.errors import OutcomeUnknown
from ringfence.journal.journal import GENESIS_HASH, JournalWriter, read_durable_mark, scan_all


def writer(path, sync) -> JournalWriter:  # type: ignore[no-untyped-def]
    return JournalWriter(path, next_seq=1, last_hash=GENESIS_HASH, tail_segment=None, tail_size=0, sync=sync)


def test_background_mark_costs_one_sync_per_append_on_the_callers_thread_and_ends_exact(tmp_path):
    caller = threading.get_ident()
    on_caller: list[int] = []
    elsewhere: list[int] = []

    def sync(fd: int) -> None:
        (on_caller if threading.get_ident() == caller else elsewhere).append(fd)
        os.fdatasync(fd)

    w = writer(tmp_path / "journal", sync)
    w.sync_mark_in_background()
    for seq in range(1, 51):
        w.append(b"batch %d" % seq, seq, 1)
        mark = read_durable_mark(tmp_path / "journal")
        assert mark is not None and mark.last_seq <= seq  # never ahead of what was fsynced
    assert len(on_caller) == 50, "one fsync per append on the acknowledgement path"
    assert elsewhere, "the mark is synced on its own thread"
    w.close()
    mark = read_durable_mark(tmp_path / "journal")
    assert mark is not None and mark.last_seq == 50 and mark.last_hash == w.last_hash
    records, report = scan_all(tmp_path / "journal")
    assert report.last_seq == 50 and len(records) == 50


def test_inline_mark_costs_two_syncs_per_append(tmp_path):
    calls: list[int] = []
    w = writer(tmp_path / "journal", lambda fd: calls.append(fd))
    for seq in range(1, 11):
        w.append(b"x", seq, 1)
    assert len(calls) == 20
    w.close()


def test_a_failed_background_mark_sync_stops_the_writer(tmp_path):
    mark_fd: list[int] = []

    def sync(fd: int) -> None:
        if threading.current_thread().name == "ringfence-journal-mark":
            mark_fd.append(fd)
            raise OSError(5, "Input/output error")
        os.fdatasync(fd)

    w = writer(tmp_path / "journal", sync)
    w.sync_mark_in_background()
    w.append(b"one", 1, 1)
    deadline = time.monotonic() + 5
    while w.poisoned is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert mark_fd and w.poisoned is not None
    with pytest.raises(OutcomeUnknown):
        w.append(b"two", 2, 1)
    w.close()
