"""Custody commands retired by signed staff decisions (`staff_cmds.py`): refused at the edge.

Their journaled records still decode and replay exactly as they did (their handlers stay, and
prechecks never run on replay); a new submission is refused with the command that replaced it.
"""

from __future__ import annotations

from typing import Any

from ..engine.core import Engine
from ..errors import Forbidden

__all__ = ["refuse_unsigned"]


def refuse_unsigned(engine: Engine, command: Any) -> None:
    """Edge refusal of the retired unsigned staff commands (journaled ones still replay)."""
    replacement = {
        "SetApprover": "AddStaff (ringfence staff add: roles are held by registered staff)",
        "ApproveWithdrawal": "ApproveWithdrawalSigned (ringfence review approve)",
        "ResolveManualReview": "ResolveManualReviewSigned (ringfence review approve|reject)",
        "ReviewQuarantine": "ReviewQuarantineSigned (ringfence review release|freeze)",
        "ProposePolicy": "ProposePolicySigned (ringfence policy propose)",
        "ApprovePolicy": "ApprovePolicySigned (ringfence policy approve)",
    }.get(type(command).__name__, "its signed replacement")
    raise Forbidden(f"{type(command).__name__} is retired: staff decisions are signed; use {replacement}",
                    field="approver")
