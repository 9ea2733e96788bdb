"""The journal on real files: hash chain, torn tails at every byte, flipped bits, segments, replay."""

import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringfence.engine.node import Node
from ringfence.errors import JournalCorrupt, ValidationError
from ringfence.journal.journal import GENESIS_HASH, HEADER_SIZE, TRAILER_SIZE, scan_all, segment_paths
from ringfence.ledger.commands import CreateTransfers, OpenAccount, RegisterAsset
from ringfence.ledger.model import Transfer
from ringfence.app import new_node, replay_journal


def _clock():
    t = [1_700_000_000_000_000_000]

    def now():
        t[0] += 1_000
        return t[0]

    return now


def make_node(path: Path, **kw) -> Node:
    rng = random.Random(7)
    node = new_node(path, clock=_clock(), entropy=lambda n: rng.randbytes(n), **kw)
    node.open()
    return node


def seed_ledger(node: Node) -> tuple[int, int, int]:
    node.execute_many([RegisterAsset("BTC", 8, "crypto", "bitcoin"), OpenAccount("alice", "BTC"), OpenAccount("bob", "BTC")])
    led = node.engine.ledger
    return led.world("BTC").id, led.get("alice", "BTC").id, led.get("bob", "BTC").id


def write_batches(node: Node, n_batches: int, start_id: int = 1) -> None:
    w, a, b = (node.engine.ledger.world("BTC").id, node.engine.ledger.get("alice", "BTC").id, node.engine.ledger.get("bob", "BTC").id)
    tid = start_id
    for i in range(n_batches):
        node.execute_many(
            [CreateTransfers([Transfer(tid, w, a, 100 + i), Transfer(tid + 1, a, b, 7)]), CreateTransfers([Transfer(tid + 2, b, a, 3)])]
        )
        tid += 3


def test_chain_links_every_record(tmp_path):
    node = make_node(tmp_path)
    seed_ledger(node)
    write_batches(node, 5)
    node.close()
    records, report = scan_all(tmp_path / "journal")
    # the seeding batch splits in two: OpenAccount needs the RegisterAsset before it to be applied
    assert report.records == 7 and report.commands == 3 + 10
    assert report.last_seq == 13 and report.torn_tail is None
    raw = (tmp_path / "journal" / segment_paths(tmp_path / "journal")[0].name).read_bytes()
    assert raw[24:56] == GENESIS_HASH
    # each record's stored "previous hash" is the hash of the record before it
    for prev, rec in zip(records, records[1:]):
        seg = raw[rec.offset + 24 : rec.offset + 56]
        assert seg == prev.hash


def test_torn_tail_cut_at_every_byte_recovers_to_last_acknowledged(tmp_path):
    base = tmp_path / "base"
    node = make_node(base)
    seed_ledger(node)
    write_batches(node, 3)
    acked_hash = node.engine.state_hash()
    acked_seq = node.engine.last_seq
    write_batches(node, 1, start_id=1_000)  # the last batch: we will tear it
    node.close()
    seg = segment_paths(base / "journal")[0]
    data = seg.read_bytes()
    records, _ = scan_all(base / "journal")
    last = records[-1]
    assert last.first_seq == acked_seq + 1
    record_len = HEADER_SIZE + len(last.payload) + TRAILER_SIZE
    assert last.offset + record_len == len(data)
    for cut in range(last.offset, len(data)):
        work = tmp_path / f"cut{cut}"
        (work / "journal").mkdir(parents=True)
        (work / "journal" / seg.name).write_bytes(data[:cut])
        recovered = make_node(work)
        assert recovered.engine.last_seq == acked_seq, cut
        assert recovered.engine.state_hash() == acked_hash, cut
        assert (recovered.recovery.torn_tail is None) == (cut == last.offset)
        assert (work / "journal" / seg.name).stat().st_size == last.offset  # truncated on disk
        # and the recovered node keeps writing a valid chain
        write_batches(recovered, 1, start_id=5_000)
        recovered.close()
        assert scan_all(work / "journal")[1].torn_tail is None
        for child in (work / "journal").iterdir():
            child.unlink()


def test_zero_filled_tail_is_the_end_not_a_torn_tail(tmp_path):
    node = make_node(tmp_path)
    seed_ledger(node)
    node.close()
    seg = segment_paths(tmp_path / "journal")[0]
    with open(seg, "ab") as fh:
        fh.write(b"\x00" * 300)
    node = make_node(tmp_path)
    # a pre-zeroed segment's unwritten space: its logical end, silently (nothing to cut, no operator)
    assert node.recovery.torn_tail is None
    assert node.engine.last_seq == 3
    write_batches(node, 1)  # written at the logical end, over the zeros
    node.close()
    records, report = scan_all(tmp_path / "journal")
    assert report.torn_tail is None and len(records) == 3 and records[-1].first_seq == 4  # 2 records before
    assert seg.stat().st_size == records[-1].offset + HEADER_SIZE + len(records[-1].payload) + TRAILER_SIZE


@given(st.data())
@settings(max_examples=60)
def test_flipped_bit_in_the_middle_is_detected(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("flip")
    node = make_node(path)
    seed_ledger(node)
    write_batches(node, 3)
    node.close()
    records, _ = scan_all(path / "journal")
    seg = segment_paths(path / "journal")[0]
    raw = bytearray(seg.read_bytes())
    # any byte of any record but the last one
    end_of_middle = records[-1].offset
    pos = data.draw(st.integers(0, end_of_middle - 1), label="byte")
    bit = data.draw(st.integers(0, 7), label="bit")
    raw[pos] ^= 1 << bit
    seg.write_bytes(bytes(raw))
    with pytest.raises(JournalCorrupt) as info:
        new_node(path).open()
    message = str(info.value)
    assert seg.name in message and "not a torn tail" in message
    assert seg.stat().st_size == len(raw)  # nothing was truncated


def test_segment_rotation_and_missing_segment(tmp_path):
    node = make_node(tmp_path, segment_bytes=600)
    seed_ledger(node)
    write_batches(node, 10)
    final_hash = node.engine.state_hash()
    node.close()
    segs = segment_paths(tmp_path / "journal")
    assert len(segs) >= 3
    reopened = make_node(tmp_path)
    assert reopened.engine.state_hash() == final_hash
    reopened.close()  # a writer left open holds the data directory's lock
    segs[1].unlink()
    with pytest.raises(JournalCorrupt, match="missing"):
        new_node(tmp_path).open()


def test_snapshot_plus_tail_equals_full_replay(tmp_path):
    node = make_node(tmp_path)
    seed_ledger(node)
    write_batches(node, 4)
    node.snapshot()
    write_batches(node, 4, start_id=500)
    live = node.engine.state_hash()
    node.close()
    from_snapshot, report, _ = replay_journal(tmp_path)
    assert report.snapshot_seq == 3 + 8 and report.replayed_commands == 8
    full, full_report, _ = replay_journal(tmp_path, use_snapshots=False)
    assert full_report.snapshot_seq == 0 and full_report.replayed_commands == 3 + 16
    assert from_snapshot.state_hash() == full.state_hash() == live


def test_corrupt_snapshot_falls_back_to_older_or_full_replay(tmp_path):
    node = make_node(tmp_path)
    seed_ledger(node)
    write_batches(node, 2)
    snap = node.snapshot()
    write_batches(node, 1, start_id=100)
    live = node.engine.state_hash()
    node.close()
    raw = bytearray(snap.read_bytes())
    raw[-3] ^= 0xFF
    snap.write_bytes(bytes(raw))
    engine, report, _ = replay_journal(tmp_path)
    assert report.snapshot_seq == 0 and any("skipped snapshot" in n for n in report.notes)
    assert engine.state_hash() == live


def test_bad_input_changes_neither_state_nor_journal(tmp_path):
    node = make_node(tmp_path)
    w, a, b = seed_ledger(node)
    size_before = sum(p.stat().st_size for p in segment_paths(tmp_path / "journal"))
    hash_before = node.engine.state_hash()
    bad = [
        CreateTransfers([Transfer(1, w, a, 1.5)]),  # float
        CreateTransfers([Transfer(1, w, a, True)]),  # bool
        CreateTransfers([Transfer(1, w, a, "100")]),  # string
        CreateTransfers([]),  # empty
        CreateTransfers([Transfer(i + 1, w, a, 1) for i in range(8191)]),  # too many
        OpenAccount("alice", "NOPE"),
        OpenAccount("ALICE!", "BTC"),
        RegisterAsset("BTC", 2, "crypto", "bitcoin"),  # clashes with the registered BTC
        RegisterAsset("XYZ", 2, "stocks"),
    ]
    for command in bad:
        with pytest.raises(ValidationError.__mro__[1]) as info:  # RingfenceError
            node.execute(command)
        assert info.value.field, command
    assert node.engine.state_hash() == hash_before
    assert sum(p.stat().st_size for p in segment_paths(tmp_path / "journal")) == size_before


def test_threaded_group_commit_acknowledges_after_durable(tmp_path):
    node = make_node(tmp_path)
    w, a, b = seed_ledger(node)
    node.start()
    acks = [node.submit(CreateTransfers([Transfer(10 + i, w, a, 5)])) for i in range(500)]
    for ack in acks:
        ack.result(timeout=10)
    assert node.batches_committed < 500  # batching happened
    seqs = [ack.seq for ack in acks]
    assert seqs == sorted(seqs) and len(set(seqs)) == 500
    live = node.engine.state_hash()
    node.close()
    # every acknowledged command is in the journal
    engine, report, _ = replay_journal(tmp_path, use_snapshots=False)
    assert engine.state_hash() == live
    assert all(10 + i in engine.ledger.transfers for i in range(500))


def test_every_byte_of_the_middle_is_covered(tmp_path):
    """Exhaustive companion of the property test: flip one bit in each byte before the last record."""
    node = make_node(tmp_path / "src")
    seed_ledger(node)
    write_batches(node, 2)
    node.close()
    records, _ = scan_all(tmp_path / "src" / "journal")
    seg = segment_paths(tmp_path / "src" / "journal")[0]
    pristine = seg.read_bytes()
    work = tmp_path / "work" / "journal"
    work.mkdir(parents=True)
    target = work / seg.name
    for pos in range(records[-1].offset):
        raw = bytearray(pristine)
        raw[pos] ^= 1 << (pos % 8)
        target.write_bytes(bytes(raw))
        with pytest.raises(JournalCorrupt):
            list(scan_all(work)[0])


def test_submit_without_a_running_sequencer_is_refused_not_lost(tmp_path):
    from ringfence.errors import NotDurable

    node = make_node(tmp_path)
    w, a, _ = seed_ledger(node)
    ack = node.submit(CreateTransfers([Transfer(77, w, a, 5)]))
    with pytest.raises(NotDurable, match="not running"):
        ack.wait(1)
    node.start()
    assert node.submit(CreateTransfers([Transfer(77, w, a, 5)])).result(5)
    node.close()
    late = node.submit(CreateTransfers([Transfer(78, w, a, 5)]))
    with pytest.raises(NotDurable):
        late.wait(1)
