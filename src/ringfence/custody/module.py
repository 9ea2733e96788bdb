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

__all__ = ["MODULE", "custody_scopes"]

MODULE = Module("custody")


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
