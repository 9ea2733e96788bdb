"""Deterministic simulation of one engine shard, checked step by step by an independent auditor.

`runner.py` is the audited loop (a real node, crashes, torn writes, recovery, snapshots, the checks
after every step); `workload.py` says what to send (every module, valid and invalid); `model/` is
the auditor, a second and deliberately simple implementation of what each command must do;
`probe.py` is the only code that reads the engine's state for the comparison. See docs/engine.md.
"""

from .runner import ACTIONS, SimulationFailure, SimulationResult, run_simulation

__all__ = ["run_simulation", "SimulationFailure", "SimulationResult", "ACTIONS"]
