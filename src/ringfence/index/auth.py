"""Who may change the index's configuration: the one authorisation point of the index admin commands.

Every index admin command (`RegisterFeedKey`, `ConfigureIndex`, `OverrideReferencePrice`) is a
signed staff decision (`staff/decisions.py`) of the staff operator quorum: each approver signs
`admin_action(command)` (`index.feed_key`, `index.configure`, `index.override`) over
`admin_subject(command, version)` — every field of the change plus the index change counter
`version` (`IndexState.version`), so one set of approvals is good for exactly one change — and the
engine verifies them with `staff.check_quorum` (registered, active, operator role, unexpired,
unused nonce, valid signature, distinct people, the quorum). The handler consumes the nonces.

Until staff are registered (a fresh node, before `StaffGenesis`), index admin follows the genesis
rule: accepted without approvals, and refused if it carries any (docs/index.md, "Who may configure").
"""

from __future__ import annotations

from typing import Any, Iterable

import msgspec

from ..engine.core import Engine
from ..errors import ValidationError
from ..staff.decisions import OPERATOR
from ..staff.state import check_quorum, consume
from .commands import ConfigureIndex, OverrideReferencePrice, RegisterFeedKey

__all__ = ["authorize", "admin_action", "admin_subject", "consume_approvals", "staff_registered", "approved_by"]

_ACTIONS: dict[type, str] = {RegisterFeedKey: "index.feed_key", ConfigureIndex: "index.configure",
                             OverrideReferencePrice: "index.override"}


def admin_action(command: Any) -> str:
    """The staff decision action approvers sign for `command`."""
    action = _ACTIONS.get(type(command))
    if action is None:
        raise TypeError(f"{type(command).__name__} is not an index admin command")
    return action


def admin_subject(command: Any, version: int) -> list[Any]:
    """Exactly what is decided: the command's fields (approvals aside) and the index change counter."""
    if isinstance(command, RegisterFeedKey):
        return [command.venue, command.public_key_hex, version]
    if isinstance(command, ConfigureIndex):
        sources = sorted([str(v), int(w)] for v, w in command.sources)
        return [command.symbol, sources, command.min_sources, command.clamp_ppm, command.stale_after_ns,
                command.max_ahead_ns, command.ma_window_ns, command.ma_sample_ns, version]
    if isinstance(command, OverrideReferencePrice):
        return [command.symbol, command.price_minor, command.reason, version]
    raise TypeError(f"{type(command).__name__} is not an index admin command")


def staff_registered(engine: Engine) -> bool:
    """Whether the engine's staff register holds anyone (then index admin needs the operator quorum)."""
    staff = engine.components.get("staff")
    return bool(staff is not None and staff.members)


def authorize(engine: Engine, command: Any, version: int) -> list[str]:
    """The approvers of `command`, or raise (`StaffRefused` / `ValidationError`); never mutates.

    Call it after the command's own fields are validated (the subject holds only checked values)."""
    if not staff_registered(engine):
        if command.approvals:
            raise ValidationError("no staff are registered yet: a genesis change carries no approvals", field="approvals")
        return []
    return check_quorum(engine, admin_action(command), admin_subject(command, version), command.approvals, OPERATOR)


def consume_approvals(engine: Engine, command: Any) -> None:
    """Spend the approvals' nonces (the handler, after `authorize`, before it changes anything)."""
    if command.approvals:
        consume(engine, command.approvals)


def approved_by(desk: Any, staff_ids: Iterable[str], command: Any, version: int) -> Any:
    """`command` with the approvals of `staff_ids`, signed by a `StaffDesk` that holds their keys
    (the demo feed, the simulation, tests; a real operator signs with `ringfence index ... --key`)."""
    sigs = desk.signs(staff_ids, admin_action(command), admin_subject(command, version))
    return msgspec.structs.replace(command, approvals=sigs)
