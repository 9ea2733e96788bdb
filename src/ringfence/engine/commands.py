"""Command and event types: immutable, versioned, one canonical binary encoding.

Every command and event is a frozen `msgspec.Struct` encoded by msgspec as a compact JSON *array*
(fields in declaration order, no whitespace, so the bytes are canonical). JSON rather than
MessagePack because ledger integers reach 2**128 and MessagePack stops at 64 bits; msgspec's JSON
codec is as fast as its MessagePack one here and keeps the journal readable with standard tools. Each type carries a tag of the form
`"<name>/<version>"`; changing a type's fields means a new version tag, never an edit in place, so
an old journal always decodes to exactly what was written.

Packages register their own command types simply by subclassing `Command` (or `Event`); the
decoders are built from the live subclass registry, so `ringfence.trading` and others plug in
without this module knowing about them. Fields hold only `int`, `str`, `bytes`, `bool`, lists and
nested structs — never floats.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Union

import msgspec

__all__ = ["Command", "Event", "Batch", "command_types", "event_types", "encode", "batch_decoder", "event_decoder"]


class Command(msgspec.Struct, frozen=True, array_like=True, tag=True, forbid_unknown_fields=True):
    """Base of every command. Subclasses set `tag="name/1"` in the class statement."""

    #: Limits checked at the edge: how many items a list field may hold, and so on.
    MAX_ITEMS: ClassVar[int] = 8190


class Event(msgspec.Struct, frozen=True, array_like=True, tag=True):
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


def _all_subclasses(base: type) -> list[type]:
    out: list[type] = []
    stack = list(base.__subclasses__())
    while stack:
        cls = stack.pop()
        out.append(cls)
        stack.extend(cls.__subclasses__())
    return out


def command_types() -> list[type[Command]]:
    from . import registry  # noqa: F401  (every package that defines commands registers here)

    return sorted(_all_subclasses(Command), key=lambda c: c.__struct_config__.tag)


def event_types() -> list[type[Event]]:
    from . import registry  # noqa: F401

    return sorted(_all_subclasses(Event), key=lambda c: c.__struct_config__.tag)


_encoder = msgspec.json.Encoder()
encode = _encoder.encode

_decoders: dict[tuple[str, int], msgspec.json.Decoder[Any]] = {}


def _union(types: list[type]) -> Any:
    if not types:
        raise RuntimeError("no command types are registered; import ringfence.engine.registry")
    return Union[tuple(types)]  # type: ignore[return-value]


def _cached(kind: str, types: list[type], build: Callable[[Any], Any]) -> msgspec.json.Decoder[Any]:
    """One decoder per kind and registry size (a package imported later adds types: rebuild)."""
    key = (kind, len(types))
    dec = _decoders.get(key)
    if dec is None:
        dec = _decoders[key] = msgspec.json.Decoder(build(_union(types)))
    return dec


def batch_decoder() -> msgspec.json.Decoder[Any]:
    """A decoder for `Batch` whose commands may be any registered command type."""
    return _cached(
        "batch",
        command_types(),
        lambda union: msgspec.defstruct(
            "Batch",
            [("first_seq", int), ("ts_ns", int), ("entropy", bytes), ("commands", list[union])],
            frozen=True,
            array_like=True,
        ),
    )


def command_decoder() -> msgspec.json.Decoder[Any]:
    return _cached("command", command_types(), lambda union: union)


def event_decoder() -> msgspec.json.Decoder[Any]:
    return _cached("event", event_types(), lambda union: list[union])
