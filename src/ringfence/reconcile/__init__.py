"""Reconciliation: ledger vs chain every block, engine vs an independent recomputation.

`reconcile.reconciler` holds the checks, incidents and the worker; `reconcile.cli` the
`ringfence reconcile` commands. A mismatch becomes a `Halt` command (`risk.halts`), never a
direct change of state.
"""
