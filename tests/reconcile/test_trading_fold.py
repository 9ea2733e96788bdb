"""With the trading package: fills, fees and the shield-fund split fold independently."""

from __future__ import annotations

import io

import pytest

from rich.console import Console

import ringfence.trading.demo as trading_demo

from ringfence.errors import Halted
from ringfence.risk.halts import Halt, active_halts
from ringfence.reconcile.reconciler import ReconcileSettings, Reconciler


def test_fills_fold_without_mismatch_and_a_shield_change_is_named(node):
    trading_demo._setup(node)
    trading_demo.run_trading_demo(node, Console(file=io.StringIO()))
    rec = Reconciler(node, settings=ReconcileSettings(confirm_reads=1))
    report = rec.run_once()
    assert report.mismatches == [] and report.notes == []
    assert rec.fold.book.trading_owners  # trades were folded
    node.engine.ledger.insurance("USDT", "spot").credits_posted += 1
    report = rec.run_once()
    kinds = {(m.kind, m.details.get("path")) for m in report.mismatches}
    assert ("shield_mismatch", "shadow") in kinds and ("shield_mismatch", "replay") in kinds
    levels = {(h["scope_kind"], h["scope"], h["level"]) for h in active_halts(node.engine)}
    assert ("segment", "spot", "REDUCE_ONLY") in levels


def test_reduce_only_segment_allows_cancels_only(node):
    from ringfence.trading.commands import CancelAll, PlaceOrder

    trading_demo._setup(node)
    trading_demo.run_trading_demo(node, Console(file=io.StringIO()))
    node.execute(Halt("ro", "segment", "spot", "REDUCE_ONLY", "test", "{}"))
    with pytest.raises(Halted, match="REDUCE_ONLY"):
        node.execute(PlaceOrder("demo-bob", trading_demo.SYMBOL, "SELL", price=6_105_000, quantity=100))
    node.execute(CancelAll("demo-bob", trading_demo.SYMBOL))
