"""The reconciler's incident store is a record, not the response: a write that fails (the disk full,
the file locked by an operator's sqlite3 shell) is logged and counted, and the pass goes on to send
the next mismatches' halts, which are engine commands. One failed write stopped the rest of the pass:
the assets after it in the list stayed open to withdrawals until the next pass."""

from __future__ import annotations

import sqlite3

from ringfence.reconcile.reconciler import Mismatch, Reconciler
from ringfence.risk.halts import active_halts

from .custody_sim import SimCustody


def test_a_failed_incident_write_does_not_stop_the_next_halts_of_the_pass(node, monkeypatch):
    rec = Reconciler(node, custody=SimCustody())
    first = Mismatch("hot_wallet_shortfall", "ETH", "hot1", 5 * 10**18, 3 * 10**18)
    second = Mismatch("hot_wallet_shortfall", "BTC", "hot2", 5 * 10**8, 4 * 10**8)
    monkeypatch.setattr(rec, "chain_pass", lambda: ([], [first, second]))
    stored = rec.incidents.record

    def record(m, action, now_ms):
        if m is first:
            raise sqlite3.OperationalError("database is locked")
        stored(m, action, now_ms)

    monkeypatch.setattr(rec.incidents, "record", record)
    report = rec.run_once(internal=False)
    assert report.halts_submitted == [first.halt_id, second.halt_id]
    assert {h["halt_id"] for h in active_halts(node.engine)} == {first.halt_id, second.halt_id}
    assert [i["halt_id"] for i in rec.incidents.incidents()] == [second.halt_id]
    assert any(first.halt_id in note and "incident not recorded" in note for note in report.notes), report.notes
    assert any("database is locked" in err for err in rec.errors), rec.errors
    assert rec.last_report is report
