"""Who may change the index's configuration: the one swappable authorisation point.

Every index admin command (`RegisterFeedKey`, `ConfigureIndex`, `OverrideReferencePrice`) calls
`authorize` with the exact bytes its approvers sign. Today that is the halts module's operator
quorum (M of N Ed25519 operator keys, `risk/halts.py`); signed staff identities can replace this
function without touching the handlers. Until an operator set is registered (a fresh node), index
admin follows the same genesis rule as `RegisterOperators`: accepted without approvals, and
refused if it carries any (docs/index.md, "Who may configure").
"""

from __future__ import annotations

from typing import Any

from ..engine.core import Engine
from ..errors import ValidationError
from ..risk.halts import operators_registered, verify_operator_quorum
from .commands import ConfigureIndex, OverrideReferencePrice, RegisterFeedKey, admin_message

__all__ = ["authorize", "approval_message"]


def approval_message(command: Any, version: int) -> bytes:
    """The bytes approvers sign for `command` at index change counter `version` (see `IndexState.version`)."""
    if isinstance(command, RegisterFeedKey):
        return admin_message("feed_key", [command.venue, command.public_key_hex], version)
    if isinstance(command, ConfigureIndex):
        sources = sorted([str(v), int(w)] for v, w in command.sources)
        return admin_message(
            "configure",
            [command.symbol, sources, command.min_sources, command.clamp_ppm, command.stale_after_ns,
             command.max_ahead_ns, command.ma_window_ns, command.ma_sample_ns],
            version,
        )
    if isinstance(command, OverrideReferencePrice):
        return admin_message("override", [command.symbol, command.price_minor, command.reason], version)
    raise TypeError(f"{type(command).__name__} is not an index admin command")


def authorize(engine: Engine, command: Any, version: int) -> list[str]:
    """The approvers of `command`, or raise (`Forbidden` / `ValidationError`); never mutates."""
    if not operators_registered(engine):
        if command.approvals:
            raise ValidationError("no operators are registered yet: a genesis change carries no approvals", field="approvals")
        return []
    return verify_operator_quorum(engine, list(command.approvals), approval_message(command, version))
