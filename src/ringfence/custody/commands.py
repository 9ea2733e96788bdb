"""Custody engine commands, one import away: a façade over the files that hold them by idea.

* `state.py` — the `custody` state component, its records and events, the checks handlers share;
* `wallet_cmds.py` — assets enabled for custody, wallets, deposit addresses, wallet nonces;
* `deposit_cmds.py` — deposits from first sighting to credit, finality, reorg and review;
* `policy_cmds.py` — approvers and the quorum-approved withdrawal policy;
* `staff_cmds.py` — staff decisions (approvals, reviews, policy votes), each signed by its maker;
* `withdrawal_cmds.py` — the address book and a withdrawal from request to settle or fail;
* `treasury_cmds.py` — sweeps, refills, drains and treasury funding between the exchange's wallets;
* `vault_cmds.py` — operator-quorum decisions: refills out of the vaults, threshold keys' signer sets.

Importing this module registers every custody command, handler and the state component.
"""

from __future__ import annotations

from .deposit_cmds import (
    CreditDeposit,
    FileSourceOfFunds,
    FinalizeDeposit,
    ObserveDeposit,
    ReorgDeposits,
    RelocateDeposit,
    ReviewQuarantine,
)
from .refund_cmds import ReturnDepositSigned, ScreenReturn
from .rebalance_cmds import AuthorizeRebalance
from .vault_cmds import AuthorizeVaultRefillSigned, CancelVaultRefillSigned, ReshareSignersSigned
from .policy_cmds import ActivatePolicy, ApprovePolicy, ProposePolicy, SetApprover
from .staff_cmds import (
    ApprovePolicySigned,
    ApproveWithdrawalSigned,
    ProposePolicySigned,
    RejectWithdrawal,
    ResolveManualReviewSigned,
    ReviewQuarantineSigned,
)
from .state import (
    CustodyEvent,
    CustodyState,
    DepositReported,
    custody_state,
    validate_chain_address,
)
from .treasury_cmds import (
    RecordInternalTransfer,
    RecordTransferSigned,
    RecordTreasuryFunding,
)
from .wallet_cmds import (
    AssignDepositAddress,
    ConfigureCustodyAsset,
    RegisterWallet,
    ReserveWalletNonce,
    reserved_nonce,
)
from .withdrawal_cmds import (
    AddWithdrawalAddress,
    ApproveWithdrawal,
    AuthorizeSigning,
    CancelWithdrawal,
    ConfirmWithdrawalEmail,
    DecideWithdrawal,
    FailWithdrawal,
    RecordBroadcast,
    RecordSecurityChange,
    RemoveWithdrawalAddress,
    SetWithdrawalRules,
    withdrawal_blocker,
    RecordRiskReview,
    RecordSignedBatch,
    RecordSignedTx,
    RequestWithdrawal,
    ResolveManualReview,
    SettleWithdrawal,
    policy_facts,
)

__all__ = [
    "CustodyState", "custody_state",
    "ConfigureCustodyAsset", "RegisterWallet", "AssignDepositAddress", "ObserveDeposit", "ReorgDeposits", "RelocateDeposit",
    "CreditDeposit", "FinalizeDeposit", "FileSourceOfFunds", "ReviewQuarantine", "SetApprover",
    "AddWithdrawalAddress", "ProposePolicy", "ApprovePolicy", "ActivatePolicy", "RequestWithdrawal",
    "ConfirmWithdrawalEmail", "RecordRiskReview", "DecideWithdrawal", "ApproveWithdrawal", "ResolveManualReview",
    "AuthorizeSigning", "RecordSignedTx", "RecordSignedBatch", "RecordBroadcast", "SettleWithdrawal", "FailWithdrawal",
    "CancelWithdrawal", "RemoveWithdrawalAddress", "SetWithdrawalRules", "RecordSecurityChange", "withdrawal_blocker", "RecordInternalTransfer", "RecordTransferSigned", "RecordTreasuryFunding", "ReserveWalletNonce", "AuthorizeRebalance",
    "AuthorizeVaultRefillSigned", "CancelVaultRefillSigned", "ReshareSignersSigned",
    "CustodyEvent", "DepositReported",
    "ApproveWithdrawalSigned", "RejectWithdrawal", "ResolveManualReviewSigned", "ReviewQuarantineSigned", "ReturnDepositSigned", "ScreenReturn",
    "ProposePolicySigned", "ApprovePolicySigned",
    "validate_chain_address", "policy_facts", "reserved_nonce",
]
