"""The derivatives state's position book and isolated set (`DerivativesState.positions` and
`.isolated`): a dict and a set that record which keys changed for the margin sweep's columnar mirror.

Plain Python: they subclass `dict` and `set`, which mypyc does not compile as native classes, so
they live apart from `DerivativesState` (`dstate.py`, compiled with the hot path).
"""

from __future__ import annotations

from typing import Any

from .margin import MarkCount, Position

__all__ = ["PositionBook", "IsolatedSet", "index_add", "index_drop", "owner_index", "index_matches"]


#: Sets a `Position`'s link fields without its tracking `__setattr__` in pure Python (a Python call
#: less each); compiled, `Position` is a native class whose `__setattr__` CPython will not bypass
#: ("can't apply this __setattr__"), and those fields are not tracked anyway.
_set: Any = setattr if hasattr(Position, "__mypyc_attrs__") else object.__setattr__


def index_add(by_owner: dict[str, dict[str, Position]], key: tuple[str, str], pos: Position) -> None:
    """`PositionBook.by_owner` after the book set `key` (owner, symbol) to `pos`."""
    mine = by_owner.get(key[0])
    if mine is None:
        mine = by_owner[key[0]] = {}
    mine[key[1]] = pos


def index_drop(by_owner: dict[str, dict[str, Position]], key: tuple[str, str]) -> None:
    """`PositionBook.by_owner` after the book dropped `key` (owner, symbol)."""
    mine = by_owner.get(key[0])
    if mine is not None:
        mine.pop(key[1], None)
        if not mine:
            del by_owner[key[0]]


def owner_index(positions: Any) -> dict[str, dict[str, Position]]:
    """`PositionBook.by_owner` recomputed from the book's items (what the index must equal)."""
    out: dict[str, dict[str, Position]] = {}
    for (owner, sym), pos in dict.items(positions):
        out.setdefault(owner, {})[sym] = pos
    return out


def index_matches(positions: Any) -> bool:
    """Does the book's owner index hold exactly its positions (the same objects, no empty owner)?"""
    def flat(index: dict[str, dict[str, Position]]) -> dict[tuple[str, str], int]:
        return {(o, s): id(pos) for o, mine in index.items() for s, pos in mine.items()}
    by_owner: dict[str, dict[str, Position]] = positions.by_owner
    return all(by_owner.values()) and flat(by_owner) == flat(owner_index(positions))


class PositionBook(dict[tuple[str, str], Position]):
    """`DerivativesState.positions`: a dict (owner, symbol) -> Position that records which keys
    changed since the columnar mirror last read it (`dirty`), and each key's insertion order
    (`Position._seq`, the dict's iteration order, which `margin_check` reports in); and, derived,
    each owner's positions (`by_owner`: owner -> {symbol: position}, an owner without one absent),
    so that an order's margin check walks the owner's positions, not every listed perpetual."""

    #: `dirty` and `by_owner` are set once, here, never rebound: a perpetual's contract keeps them
    #: per book (contract.py, `Contract._book_slots`).
    __slots__ = ("dirty", "next_seq", "by_owner", "marks")

    def __init__(self, items: Any = ()) -> None:
        super().__init__()
        self.dirty: set[tuple[str, str]] = set()
        #: Bumped whenever `dirty` is emptied (`columns.py`): a position marked at the count now is in
        #: `dirty` already (`Position._marked_at`, what a fill checks). Set once, never rebound.
        self.marks = MarkCount()
        self.next_seq = 0
        self.by_owner: dict[str, dict[str, Position]] = {}
        for k, v in (items.items() if isinstance(items, dict) else items):
            self[k] = v

    def __setitem__(self, key: tuple[str, str], pos: Position) -> None:
        old = dict.get(self, key)
        if old is None:
            _set(pos, "_seq", self.next_seq)
            self.next_seq += 1
        elif old is not pos:
            _set(pos, "_seq", old._seq)
            _set(old, "_book", None)
        _set(pos, "_book", self)
        _set(pos, "_key", key)
        dict.__setitem__(self, key, pos)
        self.dirty.add(key)
        index_add(self.by_owner, key, pos)

    def __delitem__(self, key: tuple[str, str]) -> None:
        _set(dict.pop(self, key), "_book", None)
        self.dirty.add(key)
        index_drop(self.by_owner, key)

    _MISSING: Any = object()

    def pop(self, key: tuple[str, str], default: Any = _MISSING) -> Any:
        if dict.__contains__(self, key):
            pos = dict.pop(self, key)
            _set(pos, "_book", None)
            self.dirty.add(key)
            index_drop(self.by_owner, key)
            return pos
        if default is PositionBook._MISSING:
            raise KeyError(key)
        return default

    def popitem(self) -> tuple[tuple[str, str], Position]:
        key, pos = dict.popitem(self)
        _set(pos, "_book", None)
        self.dirty.add(key)
        index_drop(self.by_owner, key)
        return key, pos

    def clear(self) -> None:
        for key in list(self):
            del self[key]

    def update(self, *args: Any, **kw: Any) -> None:
        for k, v in dict(*args, **kw).items():
            self[k] = v

    def setdefault(self, key: tuple[str, str], default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return dict.__getitem__(self, key)

    def __ior__(self, other: Any) -> "PositionBook":  # type: ignore[override,misc]
        self.update(other)
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (PositionBook, (list(self.items()),))


class IsolatedSet(set[tuple[str, str]]):
    """`DerivativesState.isolated`: a set of (owner, symbol) that marks a position's key for the
    columnar mirror when its margin type changes (which the engine allows only without one)."""

    __slots__ = ("book",)

    def __init__(self, items: Any = (), book: PositionBook | None = None) -> None:
        super().__init__(items)
        self.book = book

    def _mark(self, key: Any) -> None:
        if self.book is not None:
            self.book.dirty.add(key)

    def add(self, key: tuple[str, str]) -> None:
        set.add(self, key)
        self._mark(key)

    def discard(self, key: object) -> None:
        set.discard(self, key)
        self._mark(key)

    def remove(self, key: tuple[str, str]) -> None:
        set.remove(self, key)
        self._mark(key)

    def pop(self) -> tuple[str, str]:
        key = set.pop(self)
        self._mark(key)
        return key

    def clear(self) -> None:
        for key in list(self):
            self.discard(key)

    def update(self, *others: Any) -> None:
        for other in others:
            for key in other:
                self.add(key)

    def difference_update(self, *others: Any) -> None:
        for other in others:
            for key in list(other):
                self.discard(key)

    def __ior__(self, other: Any) -> "IsolatedSet":  # type: ignore[override,misc]
        self.update(other)
        return self

    def __isub__(self, other: Any) -> "IsolatedSet":  # type: ignore[override,misc]
        self.difference_update(other)
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (IsolatedSet, (list(self),))


