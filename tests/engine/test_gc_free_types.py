"""Every command and event type is `gc=False`, and none can take part in a reference cycle.

msgspec leaves cycles made only of gc=False structs uncollected (its `Struct` docstring), so the
setting is safe only for types whose instances are trees: checked here from the declared field
types of every type the standard engine's modules declare, recursively.
"""

from __future__ import annotations

import gc
from typing import Any

import msgspec
import msgspec.inspect as mi
from hypothesis import given, settings
from hypothesis import strategies as st

from ringfence.app import new_engine
from ringfence.engine.commands import Codec, encode
from ringfence.trading.commands import AmendOrder, CancelOrder, PlaceOrder, TradingBatch

_SCALARS = (mi.IntType, mi.StrType, mi.BoolType, mi.BytesType, mi.NoneType, mi.LiteralType, mi.EnumType)


def _declared() -> list[type]:
    types: set[type] = set()
    for module in new_engine().modules:
        types |= set(module.commands) | set(module.events)
    return sorted(types, key=lambda t: (t.__module__, t.__name__))


def _problems(t: mi.Type, where: str, seen: set[type]) -> list[str]:
    """Where a value of type `t` could hold something other than scalars and gc=False structs."""
    if isinstance(t, _SCALARS):
        return []
    if isinstance(t, (mi.ListType, mi.VarTupleType, mi.FrozenSetType, mi.SetType)):
        return _problems(t.item_type, f"{where}[]", seen)
    if isinstance(t, mi.TupleType):
        return [p for i, x in enumerate(t.item_types) for p in _problems(x, f"{where}[{i}]", seen)]
    if isinstance(t, mi.UnionType):
        return [p for x in t.types for p in _problems(x, where, seen)]
    if isinstance(t, mi.StructType):
        if t.cls in seen:
            return []
        seen.add(t.cls)
        out = [] if t.cls.__struct_config__.gc is False else [f"{where}: {t.cls.__name__} is tracked by the GC"]
        return out + [p for f in t.fields for p in _problems(f.type, f"{where}.{f.name}", seen)]
    return [f"{where}: {type(t).__name__} may hold any object"]


def test_every_declared_command_and_event_type_is_gc_free_and_acyclic() -> None:
    types = _declared()
    assert len(types) > 50  # the standard engine declares about a hundred
    problems = [p for cls in types for p in _problems(mi.type_info(cls), cls.__name__, set())]
    assert problems == []


class Loose(msgspec.Struct, gc=False):
    anything: Any


class Tracked(msgspec.Struct):
    n: int


class Holder(msgspec.Struct, gc=False):
    inner: Tracked


def test_a_tracked_field_type_is_caught() -> None:
    # The audit above can fail: a struct that may hold any object, or a tracked one, is reported.
    assert _problems(mi.type_info(Loose), "Loose", set()) == ["Loose.anything: AnyType may hold any object"]
    assert _problems(mi.type_info(Holder), "Holder", set()) == ["Holder.inner: Tracked is tracked by the GC"]


_owner = st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True)
_amount = st.integers(min_value=0, max_value=10**30)
_place = st.builds(
    PlaceOrder, _owner, st.just("BTCUSDT"), st.sampled_from(["BUY", "SELL"]),
    st.sampled_from(["LIMIT", "MARKET", "STOP_LIMIT"]), st.sampled_from(["GTC", "IOC", "FOK"]),
    _amount, _amount, _amount, _amount, st.text("abc123", max_size=8),
)
_action = st.one_of(_place, st.builds(CancelOrder, _owner, st.just("BTCUSDT"), st.integers(0, 10**9)),
                    st.builds(AmendOrder, _owner, st.just("BTCUSDT"), st.integers(1, 10**9), _amount, _amount))
_command = st.one_of(_action, st.builds(TradingBatch, st.lists(_action, min_size=1, max_size=8)))


@settings(max_examples=200, deadline=None)
@given(_command)
def test_commands_built_or_decoded_are_untracked_trees(command: object) -> None:
    codec = Codec.of(_declared_commands(), ())
    decoded = codec.command.decode(encode(command))
    assert decoded == command
    for c in (command, decoded):
        assert not gc.is_tracked(c)
        for action in getattr(c, "actions", ()):
            assert not gc.is_tracked(action)
        # a tree: nothing the command refers to refers back to it
        assert all(c not in gc.get_referents(r) for r in gc.get_referents(c))


def _declared_commands() -> list[type]:
    return [t for module in new_engine().modules for t in module.commands]
