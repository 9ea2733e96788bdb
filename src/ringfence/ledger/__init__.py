"""Double-entry ledger: accounts, idempotent transfers, linked chains, two-phase holds."""

# First: choose the compiled or the pure-Python hot path (ringfence/native.py) before any of its
# modules is imported (`account` and `ledger` are compiled with trading's matching loop; the ledger
# may be imported before trading is).
from .. import native as _native

_native.activate()
