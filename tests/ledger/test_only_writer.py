"""Tidy check (TigerBeetle's tidy.zig in spirit): the ledger is the only writer of balances.

Outside `src/ringfence/ledger/` no code may reach into the ledger's private parts or its table of
pending transfers (`ledger._…`, `ledger.pending`, `led.…`), nor assign an account's counters or a
hold's `remaining`. Other packages use the engine-side API (`hold`, `capture`, `settle_fill`,
`pending_hold`, …; docs/ledger.md). A match prints the file and line to fix.

The simulation (`sim/`) is scanned like everything else: its probe reads engine state through the
public API only. Its auditor model (`sim/model/`) keeps a second, independent ledger of its own
(its own `debits_pending`, `remaining`...), so only the balance-write pattern skips it: the model
cannot reach the engine's objects, since it imports nothing but the standard library and its
siblings (`tests/test_sim.py::test_the_auditor_imports_no_engine_code`).
"""

from __future__ import annotations

import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "ringfence"
LEDGER = SRC / "ledger"
AUDITOR_MODEL = SRC / "sim" / "model"

PRIVATE_ACCESS = re.compile(r"\b(ledger|led)\.(_\w+|pending)\b")
BALANCE_WRITE = re.compile(r"\.(debits_posted|credits_posted|debits_pending|credits_pending|remaining)\s*[-+]?=(?!=)")


def scanned(skip: tuple[Path, ...] = ()) -> list[Path]:
    return [path for path in sorted(SRC.rglob("*.py")) if not any(folder in path.parents for folder in (LEDGER, *skip))]


def offenders(pattern: re.Pattern[str], skip: tuple[Path, ...] = ()) -> list[str]:
    found = []
    for path in scanned(skip):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if pattern.search(line):
                found.append(f"{path.relative_to(SRC.parent)}:{number}: {line.strip()}")
    return found


def test_nothing_outside_the_ledger_touches_its_internals() -> None:
    assert offenders(PRIVATE_ACCESS) == [], "use the ledger's engine-side API instead"


def test_nothing_outside_the_ledger_writes_a_balance() -> None:
    assert offenders(BALANCE_WRITE, skip=(AUDITOR_MODEL,)) == [], "only ringfence.ledger changes a balance"


def test_the_simulation_is_scanned() -> None:
    private = {path.relative_to(SRC).as_posix() for path in scanned()}
    writes = {path.relative_to(SRC).as_posix() for path in scanned(skip=(AUDITOR_MODEL,))}
    assert {"sim/probe.py", "sim/runner.py", "sim/workload.py", "sim/model/ledger.py"} <= private
    assert {"sim/probe.py", "sim/runner.py", "sim/workload.py"} <= writes
    assert not any(name.startswith("sim/model/") for name in writes)


def test_the_patterns_catch_what_they_are_for() -> None:
    for line in ("p = ledger.pending.pop(hold_id)", "led._open_system('BTC', 'x', '-')", "bal = led.pending[w.hold_id]"):
        assert PRIVATE_ACCESS.search(line), line
    for line in ("buyer.recv.credits_posted += q", "p.remaining -= n", "acct.debits_pending = 0"):
        assert BALANCE_WRITE.search(line), line
    for line in ("ledger.pending_hold(hid)", "if a.credits_posted == b.debits_posted:", "x = led.hold_remaining(h)"):
        assert not PRIVATE_ACCESS.search(line) and not BALANCE_WRITE.search(line), line
