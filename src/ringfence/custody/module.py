"""Custody's engine module: its declaration, and the scopes its commands touch.

The handlers (custody's command files) declare themselves on `MODULE` with `@MODULE.handles(...)`.
Every custody command names the asset it concerns (and, where it matters, the wallet): it touches
scope `asset:<ASSET>` and `asset:<ASSET>@<wallet>`, so a halt on one wallet of an asset stops that
wallet only. Which commands move funds out (refused under WITHDRAWALS_PAUSED) is declared per
type where the handler is declared; recording a fact that already happened on a chain (settle,
fail, observe, confirm) is NEUTRAL: refusing a fact would make the ledger disagree with the chain.
"""

from __future__ import annotations

from typing import Any

from ..engine.core import Engine
from ..engine.module import Module, Scope

__all__ = ["MODULE", "custody_scopes", "deposit_scopes", "chain_scopes"]

MODULE = Module("custody", writes=("custody", "ledger", "staff"))


def custody_scopes(engine: Engine, command: Any) -> list[Scope]:
    """`asset`, `asset@wallet` and `segment` as the custody command's own fields name them."""
    out: list[Scope] = []
    asset = getattr(command, "asset", None)  # custody's command types name these fields alike
    if isinstance(asset, str):
        out.append(("asset", asset))
        wallet = getattr(command, "wallet", None)
        if isinstance(wallet, str):
            out.append(("asset", f"{asset}@{wallet}"))
    segment = getattr(command, "segment", None)
    if isinstance(segment, str):
        out.append(("segment", segment))
    return out


def deposit_scopes(engine: Engine, command: Any) -> list[Scope]:
    """A command naming a deposit by `chain`, `txid`, `index` touches that deposit's asset and
    wallet (read from the deposit record), so an asset halt stops it like any custody command.
    An unknown deposit touches nothing here: its handler refuses it anyway."""
    from .deposits import deposit_key
    from .state import custody_state

    d = custody_state(engine).deposits.get(deposit_key(str(command.chain), str(command.txid), int(command.index)))
    if d is None:
        return []
    return [("asset", d.asset), ("asset", f"{d.asset}@{d.wallet}")]


def chain_scopes(engine: Engine, command: Any) -> list[Scope]:
    """A command about a whole chain (a reorg) touches every custodied asset on that chain."""
    from .state import custody_state

    return [("asset", a) for a, cfg in sorted(custody_state(engine).assets.items()) if cfg.chain == command.chain]
