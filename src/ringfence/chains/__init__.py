"""Chain layer of custody: one `ChainAdapter` interface, Bitcoin and Ethereum implementations.

Deposit watchers, withdrawal broadcasters, reconciliation and proof of reserves use only the
`ChainAdapter` protocol (see `adapter.py`). Amounts are integer minor units (satoshi, wei).
Deposit addresses are derived from account-level extended *public* keys (`derivation.py`); private
keys live only with offline signers (`bitcoin/signer.py`).
"""

from .adapter import (
    Block,
    BroadcastResult,
    ChainAdapter,
    Direction,
    FeeEstimate,
    Reorg,
    ReorgTracker,
    ScanResult,
    Transfer,
    TxState,
    TxStatus,
)

__all__ = [
    "Block",
    "BroadcastResult",
    "ChainAdapter",
    "Direction",
    "FeeEstimate",
    "Reorg",
    "ReorgTracker",
    "ScanResult",
    "Transfer",
    "TxState",
    "TxStatus",
]
