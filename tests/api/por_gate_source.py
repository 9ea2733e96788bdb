"""A reserve source for `serve` in tests that can hold a proof mid-build, loaded by the server process
through RINGFENCE_POR_RESERVE_SOURCES=api.por_gate_source:factory.

Each call appends the snapshot id it was asked for to DATA/por-gate-entered (one line per proof
built), then, while DATA/por-gate-hold exists, waits (up to 60 s): a test holds a proof in its build
to send a second request for the same state while it is being built. If DATA/por-gate-fail exists
then, it makes the rest of that build fail (a file where the build's temporary folder goes: its
`mkdir` raises FileExistsError, an error of no ringfence type, as a full disk would). It has no
wallets: every proof it serves carries empty reserve evidence.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ringfence.solvency.reserve_source import ReserveEvidence

HOLD = "por-gate-hold"
ENTERED = "por-gate-entered"
FAIL = "por-gate-fail"


class GateSource:
    name = "test gate"

    def __init__(self, data: Path) -> None:
        self.hold = data / HOLD
        self.entered = data / ENTERED

    def evidence(self, snapshot_id_hex: str) -> ReserveEvidence:
        with self.entered.open("a", encoding="utf-8") as f:
            f.write(snapshot_id_hex + "\n")
        deadline = time.monotonic() + 60
        while self.hold.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        if (self.hold.parent / FAIL).exists():
            (self.hold.parent / "por" / f".tmp-{snapshot_id_hex[:32]}").write_text("in the way\n")
        return ReserveEvidence()


def factory(exchange: Any, data: Path) -> GateSource:
    return GateSource(Path(data))
