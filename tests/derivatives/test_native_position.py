"""`Position` is a native (compiled) class with the hot path, a plain slotted class without it: the
same tracking for the margin mirror, the same copies, in both (this file runs under both)."""

from __future__ import annotations

import copy
import pickle

from ringfence import native
from ringfence.derivatives.state import Position, PositionBook


def test_native_exactly_when_compiled() -> None:
    assert hasattr(Position, "__mypyc_attrs__") == (native.status()["implementation"] == "compiled")


def test_tracked_fields_mark_the_book_and_copies_detach() -> None:
    book = PositionBook()
    pos = Position(5, 100, 3)
    book[("a", "X")] = pos
    assert pos._book is book and pos._key == ("a", "X") and pos._seq == 0
    book.dirty.clear()
    pos.extra = 1
    pos.realized = -7
    assert not book.dirty  # not what the sweep reads
    for name in ("size", "cost", "margin"):
        setattr(pos, name, getattr(pos, name) + 1)
        assert book.dirty == {("a", "X")}, name
        book.dirty.clear()
    for twin in (pickle.loads(pickle.dumps(pos)), copy.deepcopy(pos), copy.copy(pos)):
        assert twin == pos and twin.row() == [6, 101, 4, 1, -7] and twin._book is None
        twin.size = 0  # a detached copy marks nothing
        assert not book.dirty
    assert book.pop(("a", "X")) is pos and pos._book is None and book.dirty == {("a", "X")}
    book.dirty.clear()
    pos.size = 9
    assert not book.dirty and pos != Position(6, 101, 4, 1, -7)
