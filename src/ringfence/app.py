"""The composition root: which modules one engine shard runs (ARCHITECTURE §7).

Everything that needs an engine — the node, `ringfence serve`, the simulation, the CLI, the API,
the reconciler, tests and benchmarks — gets it here, so there is one list of modules and the
`engine` package itself never imports a domain. Order matters in two ways only: the first module
(the ledger) holds the root state (position 3 of the snapshot, restored first, because the others
bind to its accounts), and guards and before-command hooks run in module order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .custody import commands as _custody_commands  # noqa: F401  (the façade imports every custody handler file)
from .custody.module import MODULE as CUSTODY
from .engine.core import Engine
from .engine.module import Module
from .engine.node import Node, RecoveryReport
from .engine.node import replay_journal as _replay_journal
from .index.module import MODULE as INDEX
from .ledger.commands import MODULE as LEDGER
from .risk.halts import MODULE as HALTS
from .staff import MODULE as STAFF
from .trading.module import MODULE as TRADING  # the package imports every trading handler file
from .derivatives.module import MODULE as DERIVATIVES

__all__ = ["standard_modules", "new_engine", "new_node", "replay_journal", "engine_from_snapshot"]

#: The modules of a standard spot shard, ledger first.
STANDARD_MODULES: tuple[Module, ...] = (LEDGER, TRADING, CUSTODY, HALTS, STAFF, INDEX, DERIVATIVES)


def standard_modules(*extra: Module) -> tuple[Module, ...]:
    """The standard modules, plus `extra` ones (a test's planted module, a new domain under trial)."""
    return STANDARD_MODULES + tuple(extra)


def new_engine(*extra: Module) -> Engine:
    """An empty engine of the standard modules (plus `extra`)."""
    return Engine(standard_modules(*extra))


def engine_from_snapshot(payload: bytes, *extra: Module) -> Engine:
    return Engine.from_snapshot_bytes(payload, standard_modules(*extra))


def new_node(data_dir: Path | str, *, extra_modules: Sequence[Module] = (), **options: Any) -> Node:
    """A durable node running the standard modules; `options` are `Node`'s (fsync, batch limits...)."""
    return Node(data_dir, modules=standard_modules(*extra_modules), **options)


def replay_journal(
    data_dir: Path | str, *, extra_modules: Sequence[Module] = (), **options: Any
) -> tuple[Engine, RecoveryReport, Any]:
    """`replay_journal` with the standard modules (the CLI's `journal replay`, audits, tests)."""
    return _replay_journal(Path(data_dir), modules=standard_modules(*extra_modules), **options)
