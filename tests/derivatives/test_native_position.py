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


def test_a_seat_hint_is_the_book_position_or_looked_up_again() -> None:
    """`contract.Seat` keeps the position it found last only while the book still holds it: once
    it is removed, replaced or the book is another, the book is asked again (a liquidation or
    ADL closes positions without the seat; a restore makes a new book)."""
    from ringfence.derivatives.contract import Seat

    key = ("alice", "BTCUSDTPERP")
    book = PositionBook()
    seat = Seat()
    assert seat.position(book, key) is None
    first = Position(5, 100)
    book[key] = first
    assert seat.position(book, key) is first and seat.pos is first
    del book[key]
    assert seat.position(book, key) is None  # removed: not the stale hint
    second = Position(7, 140)
    book[key] = second
    assert seat.position(book, key) is second
    third = Position(-2, 40)
    book[key] = third  # replaced in place
    assert seat.position(book, key) is third
    restored = PositionBook({key: Position(-2, 40)})  # a new book (a restore): the old hint is not in it
    assert seat.position(restored, key) == Position(-2, 40) and seat.pos is restored[key]
    assert seat.position(book, key) is third
    book.pop(key)
    assert seat.position(book, key) is None
