"""The module protocol: the engine imports no domain, decoders know only declared types, and a
module's declarations are checked when an engine is composed."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import msgspec
import pytest

from ringfence.app import new_engine, standard_modules
from ringfence.engine.commands import Command, Event, encode
from ringfence.engine.core import Engine
from ringfence.engine.module import Effect, Module
from ringfence.ledger.commands import MODULE as LEDGER
from ringfence.ledger.commands import RegisterAsset

DOMAINS = ("ledger", "trading", "custody", "risk", "reconcile", "solvency", "chains", "keys", "monitoring",
           "identity", "store", "api", "app", "sim", "demo", "cli")


def test_the_engine_package_imports_no_domain_package() -> None:
    code = textwrap.dedent(
        f"""
        import sys
        import ringfence.engine, ringfence.engine.core, ringfence.engine.node, ringfence.engine.module
        import ringfence.engine.commands, ringfence.engine.snapshot
        domains = {DOMAINS!r}
        bad = sorted(m for m in sys.modules if m.split(".")[:2][-1] in domains and m.startswith("ringfence."))
        print(",".join(bad))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"ringfence.engine imported domain modules: {out.stdout.strip()}"


class Stray(Command, tag="test.stray/1"):
    """Defined here and declared by no module: no engine may decode it."""

    note: str


def test_a_command_defined_anywhere_does_not_join_the_decoder() -> None:
    engine = new_engine()
    assert Stray not in engine.codec.command_types
    with pytest.raises(msgspec.ValidationError):
        engine.codec.command.decode(encode(Stray("hello")))
    batch = encode([1, 0, "", [msgspec.Raw(encode(Stray("hello")))]])
    with pytest.raises(msgspec.ValidationError):
        engine.codec.batch.decode(batch)
    with pytest.raises(Exception, match="no module of this engine handles"):
        engine.precheck(Stray("hello"))


def test_a_declared_test_module_does_join_its_engine_only() -> None:
    planted = Module("test-stray")
    planted.handles(Stray, effect=Effect.NEUTRAL)(lambda engine, c: [])
    engine = new_engine(planted)
    assert engine.codec.command.decode(encode(Stray("hi"))) == Stray("hi")
    assert Stray not in new_engine().codec.command_types  # the standard engine is untouched


def test_standard_modules_declare_every_exported_command_and_event() -> None:
    import ringfence.custody.commands as custody
    import ringfence.ledger.commands as ledger
    import ringfence.risk.halts as halts
    import ringfence.trading.commands as trading

    engine = new_engine()
    declared = set(engine.codec.command_types) | set(engine.codec.event_types)
    for package in (ledger, trading, custody, halts):
        for name in package.__all__:
            value = getattr(package, name)
            if isinstance(value, type) and issubclass(value, (Command, Event)) and value not in (Command, Event):
                if value.__struct_config__.tag is None:
                    continue  # an untagged base
                assert value in declared, f"{package.__name__}.{name} is declared by no standard module"


def test_every_declared_command_has_an_effect_and_scopes() -> None:
    for spec in new_engine().command_specs.values():
        assert isinstance(spec.effect, Effect) or callable(spec.effect), spec.type
        assert callable(spec.scopes), spec.type


def test_composition_is_checked() -> None:
    with pytest.raises(RuntimeError, match="given twice"):
        Engine([LEDGER, LEDGER])
    twin = Module("ledger-twin")
    twin.handles(RegisterAsset, effect=Effect.ADMIN)(lambda engine, c: [])
    with pytest.raises(RuntimeError, match="declared by modules"):
        Engine([LEDGER, twin])
    same_tag = Module("same-tag")

    class Impostor(Command, tag="asset.register/1"):
        code: str

    same_tag.handles(Impostor, effect=Effect.ADMIN)(lambda engine, c: [])
    with pytest.raises(RuntimeError, match="tag 'asset.register/1'"):
        Engine([LEDGER, same_tag])
    with pytest.raises(TypeError):
        Module("x").handles(RegisterAsset, effect="admin")  # type: ignore[arg-type]


def test_the_ledger_is_the_root_state_so_the_encoding_is_unchanged() -> None:
    """Position 3 of the state is the ledger, the others follow by name: the pre-module layout."""
    state = new_engine().snapshot_state()
    assert state[0] == 1 and len(state) == 5
    # the index module holds nothing yet: a state that snapshots None is left out of the hash
    assert [name for name, _ in state[4]] == ["custody", "halts", "staff", "trading"]
    assert isinstance(state[3], list) and len(state[3]) == 7  # Ledger.snapshot_state
    assert [m.name for m in standard_modules()] == ["ledger", "trading", "custody", "halts", "staff", "index", "derivatives"]
