"""`TransferTable` (the ledger's `transfers`, sharded so it never rehashes the whole table) behaves as
a plain `dict[int, Transfer]` in insertion order, under random sequences of what the ledger does:
insert, look up, remove the newest (undoing a linked chain), remove any, iterate, count. Runs under
both the compiled and the pure implementation (the suite runs with and without RINGFENCE_PURE)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringfence import native
from ringfence.ledger.ledger import _TRANSFER_SHARDS, Ledger, TransferTable
from ringfence.ledger.model import Transfer

# Ids: small ones, ones colliding in a shard (multiples of the shard count), powers-of-two strides,
# and the big internal ones.
ids = st.one_of(
    st.integers(1, 40),
    st.integers(0, 8).map(lambda k: k * _TRANSFER_SHARDS + 3),
    st.integers(0, 8).map(lambda k: k * (_TRANSFER_SHARDS << 12) + 5),  # the same shard
    st.integers(4090, 4100),  # across a run boundary
    st.integers(0, 8).map(lambda k: k * 1024),
    st.integers(2**62, 2**62 + 5),
)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), ids, st.integers(1, 9)),
        st.tuples(st.just("set"), ids, st.integers(1, 9)),
        st.tuples(st.just("get"), ids, st.just(0)),
        st.tuples(st.just("pop_newest"), st.just(0), st.just(0)),
        st.tuples(st.just("pop"), ids, st.just(0)),
        st.tuples(st.just("del"), ids, st.just(0)),
    ),
    max_size=80,
)


def _same(table: TransferTable, ref: dict[int, Transfer]) -> None:
    assert len(table) == len(ref) and bool(table) == bool(ref)
    assert list(table) == list(ref) == table.keys()
    assert table.values() == list(ref.values())
    assert table.items() == list(ref.items())
    assert list(reversed(table.values())) == list(reversed(ref.values()))  # the digest's newest-k


def test_native_exactly_when_compiled() -> None:
    assert hasattr(TransferTable, "__mypyc_attrs__") == (native.status()["implementation"] == "compiled")


@settings(max_examples=300, deadline=None)
@given(ops)
def test_transfer_table_is_an_insertion_ordered_dict(steps: list[tuple[str, int, int]]) -> None:
    table = TransferTable()
    ref: dict[int, Transfer] = {}
    for op, tid, amount in steps:
        t = Transfer(tid, 1, 2, amount)
        if op == "add":
            if tid not in ref:  # `add` is for a new id (the ledger checks first)
                table.add(tid, t)
                ref[tid] = t
        elif op == "set":
            table[tid] = t
            ref[tid] = t
        elif op == "get":
            assert (tid in table) == (tid in ref) and table.has(tid) == (tid in ref)
            assert table.get(tid) == ref.get(tid)
            if tid in ref:
                assert table[tid] == ref[tid]
            else:
                with pytest.raises(KeyError):
                    table[tid]
        elif op == "pop_newest":
            if ref:
                newest = next(reversed(ref))
                assert table.pop(newest) == ref.pop(newest)
        elif op == "pop":
            if tid in ref:
                assert table.pop(tid) == ref.pop(tid)
            else:
                with pytest.raises(KeyError):
                    table.pop(tid)
        else:
            if tid in ref:
                del table[tid]
                del ref[tid]
            else:
                with pytest.raises(KeyError):
                    del table[tid]
        _same(table, ref)
    assert "x" not in table and None not in table
    rebuilt = TransferTable(table.values())
    _same(rebuilt, ref)


def test_a_transfer_is_stored_under_its_own_id() -> None:
    table = TransferTable()
    with pytest.raises(ValueError):
        table[5] = Transfer(6, 1, 2, 3)
    assert not table


def test_snapshot_round_trip_keeps_the_order() -> None:
    ledger = Ledger()
    data = ledger.snapshot_state()
    rows = [Transfer(tid, 1, 2, 1) for tid in (9, 3, 2**62 + 1, 7, 3 + _TRANSFER_SHARDS)]
    data[3] = [[getattr(t, f) for f in t.__struct_fields__] for t in rows]
    restored = Ledger.from_snapshot(data)
    assert list(restored.transfers) == [t.id for t in rows]
    assert restored.transfers.values() == rows
    assert restored.snapshot_state() == Ledger.from_snapshot(restored.snapshot_state()).snapshot_state()
