"""Command and event types: immutable, versioned, one canonical binary encoding.

Every command and event is a frozen `msgspec.Struct` encoded by msgspec as a compact JSON *array*
(fields in declaration order, no whitespace, so the bytes are canonical). JSON rather than
MessagePack because ledger integers reach 2**128 and MessagePack stops at 64 bits; msgspec's JSON
codec is as fast as its MessagePack one here and keeps the journal readable with standard tools. Each type carries a tag of the form
`"<name>/<version>"`; changing a type's fields means a new version tag, never an edit in place, so
an old journal always decodes to exactly what was written.

Packages declare their command and event types in their engine `Module` (`engine/module.py`);
the decoders (`Codec`) are built from the types an engine's modules declare, never from the live
subclass registry, so this module knows no domain package and a stray subclass decodes nowhere. Fields hold only `int`, `str`, `bytes`, `bool`, lists and
nested structs — never floats.

Every command and event type is `gc=False` (set on `Command` and `Event`; msgspec passes the setting
on to subclasses): the cyclic garbage collector does not track them. msgspec's own words (the
`Struct` docstring, 0.22.0): it "will prevent reference cycles composed of only gc=False [structs]
from being collected. It is the user's responsibility to ensure that reference cycles don't occur".
Ours cannot form one: their fields hold only int, str, bytes, bool, lists and tuples of those and
other gc=False structs (no `Any`, no dict, no object of ours; `tests/engine/test_gc_free_types.py`
checks every declared type), the structs are frozen, and the engine never appends a struct to a list
inside itself. A decoded journal is a tree by construction. Untracked, the millions of commands and
events in flight on the durable path cost the collector nothing: it neither scans them nor counts
them towards a collection (measured in bench/matching.py).
"""

from __future__ import annotations

from typing import Any, ClassVar, Iterable, Protocol, Union, cast

import msgspec

__all__ = ["Command", "Event", "Batch", "SourcedBatch", "Codec", "encode", "tag_of"]


class Command(msgspec.Struct, frozen=True, array_like=True, tag=True, forbid_unknown_fields=True, gc=False):
    """Base of every command. Subclasses set `tag="name/1"` in the class statement."""

    #: Limits checked at the edge: how many items a list field may hold, and so on.
    MAX_ITEMS: ClassVar[int] = 8190


class Event(msgspec.Struct, frozen=True, array_like=True, tag=True, gc=False):
    """Base of every event the engine emits. Events are derived; the journal stores commands."""


class Batch(msgspec.Struct, frozen=True, array_like=True):
    """One journal record's payload: commands made durable together, stamped by the sequencer.

    Command `i` has sequence number `first_seq + i`. All commands of a batch share the timestamp
    `ts_ns` (the moment the sequencer closed the batch) and derive any randomness from `entropy`.
    """

    first_seq: int
    ts_ns: int
    entropy: bytes
    commands: list[Any]


class SourcedBatch(Batch, frozen=True, array_like=True):
    """A `Batch` that also records who submitted each command (`sources[i]` for command `i`:
    "gateway:NODE", "worker:NAME", "staff:ID"; "" when unknown). Only the journal record holds it
    (so the hash chain covers it); handlers never see it, so it cannot change the state or its
    hash. A batch without any source is encoded as a plain `Batch`: older journals read the same."""

    sources: list[str]


class DecodedBatch(Protocol):
    """What `Codec.batch` decodes a journal record's payload to: `Batch`'s fields, with the
    commands decoded to the declared command types (a struct built per codec, so not a `Batch`)."""

    @property
    def first_seq(self) -> int: ...
    @property
    def ts_ns(self) -> int: ...
    @property
    def entropy(self) -> bytes: ...
    @property
    def commands(self) -> list[Any]: ...
    @property
    def sources(self) -> list[str]: ...


_encoder = msgspec.json.Encoder()
encode = _encoder.encode


def tag_of(cls: type) -> str:
    # `cls` is a Struct class, typed `type` by its callers; msgspec's stubs give `type` no config.
    return cls.__struct_config__.tag  # type: ignore[attr-defined, no-any-return]


class Codec:
    """Strict decoders for exactly the command and event types an engine's modules declare.

    Built from declared types only (never from `Command.__subclasses__()`), so a class defined in a
    test or a plugin that no module declares cannot be decoded from a journal. Decoders are cached
    per set of types: every engine composed from the same modules shares them.
    """

    _cache: ClassVar[dict[tuple[type, ...], "Codec"]] = {}

    def __init__(self, command_types: tuple[type, ...], event_types: tuple[type, ...]) -> None:
        if not command_types:
            raise RuntimeError("no command types are declared; compose the engine from modules (ringfence.app)")
        tags: dict[str, type] = {}
        for cls in command_types + event_types:
            other = tags.setdefault(tag_of(cls), cls)
            if other is not cls:
                raise RuntimeError(f"tag {tag_of(cls)!r} is declared by both {other.__name__} and {cls.__name__}")
        self.command_types = command_types
        self.event_types = event_types
        # A Union over a tuple known only at run time: mypy cannot express it (nor the two below).
        commands = Union[command_types]  # type: ignore[valid-type]
        self.command = msgspec.json.Decoder(commands)
        # `defstruct` is typed as returning `type[Struct]`; the struct it builds has the fields
        # `DecodedBatch` describes.
        self.batch = cast(
            "msgspec.json.Decoder[DecodedBatch]",
            msgspec.json.Decoder(
                msgspec.defstruct(
                    "Batch",
                    [("first_seq", int), ("ts_ns", int), ("entropy", bytes), ("commands", list[commands]),
                     ("sources", list[str], [])],
                    frozen=True,
                    array_like=True,
                )
            ),
        )
        self.events = msgspec.json.Decoder(list[Union[event_types]]) if event_types else None  # type: ignore[valid-type]

    @classmethod
    def of(cls, command_types: Iterable[type], event_types: Iterable[type]) -> "Codec":
        ctypes = tuple(sorted(set(command_types), key=tag_of))
        etypes = tuple(sorted(set(event_types), key=tag_of))
        key = ctypes + (Event,) + etypes
        codec = cls._cache.get(key)
        if codec is None:
            codec = cls._cache[key] = cls(ctypes, etypes)
        return codec
