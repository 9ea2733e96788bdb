"""The deterministic simulation: seeded, reproducible, and it really checks something."""

import os
import random

import pytest

from ringfence.sim import SimulationFailure, run_simulation


def test_simulation_runs_clean_and_is_reproducible(tmp_path):
    seed = int(os.environ.get("RINGFENCE_SIM_SEED", random.SystemRandom().randrange(1 << 30)))
    print(f"sim seed={seed}")
    first = run_simulation(seed, 1_500, tmp_path / "a")
    second = run_simulation(seed, 1_500, tmp_path / "b")
    assert first.state_hash == second.state_hash
    assert first.crashes > 0 and first.torn_tails > 0 and first.snapshots > 0
    assert first.commands_rejected > 0 and first.transfers_failed > 0
    assert first.commands_acknowledged > 500


def test_simulation_catches_a_ledger_bug(tmp_path, monkeypatch):
    """Plant a bug that creates money on one path; the simulation must name the seed and step."""
    from ringfence.ledger.ledger import Ledger

    original = Ledger._capture

    def leaky_capture(self, p, amount):
        original(self, p, amount)
        p.credit.credits_posted += 1  # one minor unit out of thin air

    monkeypatch.setattr(Ledger, "_capture", leaky_capture)
    with pytest.raises(SimulationFailure) as info:
        run_simulation(3, 2_000, tmp_path)
    assert "seed=3" in str(info.value) and "ringfence sim --seed 3" in str(info.value)
