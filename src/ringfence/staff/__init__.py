"""Staff identities in the engine: who may decide what, and the signatures that prove they did.

`state.py` holds the register and the checks every signed decision passes; `commands.py` the
genesis quorum and quorum-approved changes of the register; `decisions.py` the canonical,
domain-separated message each member signs and the key files they sign with. Other modules
(halts, custody) verify their staff decisions through `check_decision` / `check_quorum`.
"""

from __future__ import annotations

from .commands import AddStaff, RemoveStaff, StaffChanged, StaffGenesis, add_subject, genesis_subject, remove_subject
from .decisions import (
    ANALYST,
    APPROVER,
    OPERATOR,
    POLICY_ADMIN,
    ROLES,
    SIGNER,
    StaffEntry,
    StaffKey,
    StaffSignature,
    decision_message,
    format_approval,
    parse_approval,
    read_key_file,
    write_key_file,
)
from .state import MODULE, StaffMember, StaffRefused, StaffState, check_decision, check_quorum, consume, staff_of

__all__ = [
    "MODULE", "StaffGenesis", "AddStaff", "RemoveStaff", "StaffChanged", "StaffEntry", "StaffKey", "StaffSignature",
    "StaffMember", "StaffState", "StaffRefused", "ROLES", "OPERATOR", "APPROVER", "ANALYST", "POLICY_ADMIN", "SIGNER",
    "check_decision", "check_quorum", "consume", "staff_of", "decision_message", "format_approval", "parse_approval",
    "read_key_file", "write_key_file", "genesis_subject", "add_subject", "remove_subject",
]
