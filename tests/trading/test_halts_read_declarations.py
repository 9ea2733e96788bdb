"""Halts read what trading declares (issue 14, item 4): scopes and effects, not class names.

The bug this pins: halts compared an amend with `getattr(order, "quantity")`, which `Order` does
not have, so it fell back to `leaves` and a reducing amend of a partly filled order was refused
under REDUCE_ONLY. And `SetMarketStatus`, a second halt without a quorum, is retired."""

from __future__ import annotations

from typing import Any

import pytest

from ringfence.app import new_node, replay_journal
from ringfence.engine.core import CommandRejected
from ringfence.engine.module import Effect
from ringfence.engine.node import Ack
from ringfence.errors import Forbidden, NotFound
from ringfence.risk.halts import Halt, market_status
from ringfence.trading.commands import AmendOrder, CancelOrder, OrderAmended, PlaceOrder, SetMarketStatus
from ringfence.trading.module import amend_effect

from scenario import Driver, btcusdt, price, qty  # type: ignore[import-not-found]


def _partly_filled() -> tuple[Driver, int]:
    """alice bids 1 BTC at 30,000 and 0.4 of it fills: qty 1.0, leaves 0.6."""
    d = btcusdt()
    d.fund("alice", "USDT", 100_000 * 10**6)
    d.fund("bob", "BTC", 10 * 10**8)
    [accepted, *_] = d.place("alice", "BUY", price("30000"), qty("1"))
    order_id = accepted.order_id
    d.place("bob", "SELL", price("30000"), qty("0.4"))
    order = d.engine.components["trading"].markets["BTCUSDT"].orders[order_id]
    assert (order.qty, order.leaves) == (qty("1"), qty("0.6"))
    return d, order_id


def _refused(events: list[Any]) -> CommandRejected | None:
    return next((e for e in events if isinstance(e, CommandRejected)), None)


def test_a_halted_book_is_frozen_but_for_cancels() -> None:
    d, oid = _partly_filled()
    d.apply(Halt("m", "market", "BTCUSDT", "HALTED", "test"))
    refused = _refused(d.apply(AmendOrder("alice", "BTCUSDT", oid, 0, qty("0.8"))))
    assert refused is not None and refused.code == "RF_HALTED"  # even a reducing amend
    assert _refused(d.apply(CancelOrder("alice", "BTCUSDT", oid))) is None


def test_a_reducing_amend_of_a_partly_filled_order_passes_reduce_only() -> None:
    d, oid = _partly_filled()
    d.apply(Halt("m", "market", "BTCUSDT", "REDUCE_ONLY", "test"))
    # 0.8 total is below the order's 1.0 (but above its 0.6 leaves): it reduces risk.
    assert amend_effect(d.engine, AmendOrder("alice", "BTCUSDT", oid, 0, qty("0.8"))) is Effect.REDUCES_RISK
    events = d.apply(AmendOrder("alice", "BTCUSDT", oid, 0, qty("0.8")))
    assert _refused(events) is None, events
    assert any(isinstance(e, OrderAmended) and e.leaves == qty("0.4") for e in events)
    # what adds or moves exposure is refused: more quantity, a new price, a new order
    for adds in (AmendOrder("alice", "BTCUSDT", oid, 0, qty("0.9")), AmendOrder("alice", "BTCUSDT", oid, price("29000"), qty("0.5")),
                 PlaceOrder("alice", "BTCUSDT", "BUY", price=price("30000"), quantity=qty("0.1"))):
        refused = _refused(d.apply(adds))
        assert refused is not None and refused.code == "RF_HALTED", adds
    assert _refused(d.apply(CancelOrder("alice", "BTCUSDT", oid))) is None


def test_an_amend_of_someone_elses_order_counts_as_opening_risk() -> None:
    d, oid = _partly_filled()
    assert amend_effect(d.engine, AmendOrder("bob", "BTCUSDT", oid, 0, qty("0.8"))) is Effect.OPENS_RISK
    assert amend_effect(d.engine, AmendOrder("alice", "BTCUSDT", oid + 99, 0, qty("0.8"))) is Effect.OPENS_RISK


def test_withdrawals_paused_does_not_stop_trading_and_a_segment_halt_does() -> None:
    d, _ = _partly_filled()
    d.apply(Halt("w", "asset", "BTC", "WITHDRAWALS_PAUSED", "test"))
    assert market_status(d.engine, "BTCUSDT") == "ACTIVE"
    assert _refused(d.place("alice", "BUY", price("30000"), qty("0.1"))) is None
    d.apply(Halt("s", "segment", "spot", "REDUCE_ONLY", "test"))
    assert market_status(d.engine, "BTCUSDT") == "REDUCE_ONLY"
    assert _refused(d.place("alice", "BUY", price("30000"), qty("0.1"))).code == "RF_HALTED"  # type: ignore[union-attr]
    d.apply(Halt("v", "venue", "*", "HALTED", "test"))
    assert market_status(d.engine, "BTCUSDT") == "HALTED"
    with pytest.raises(NotFound):
        market_status(d.engine, "ETHUSDT")


def test_set_market_status_is_refused_at_the_edge_but_old_records_replay(tmp_path) -> None:
    node = new_node(tmp_path / "n", fsync=False)
    node.open()
    setup = btcusdt()
    for command, _, _ in setup.log:
        node.execute_many([command])
    with pytest.raises(Forbidden, match="LiftHalt with an operator quorum"):
        node.execute(SetMarketStatus("BTCUSDT", "HALTED"))
    assert market_status(node.engine, "BTCUSDT") == "ACTIVE"
    # A record an older release journaled (no precheck then): written the way the sequencer writes.
    old = SetMarketStatus("BTCUSDT", "HALTED")
    prepared, raw = node.prepare(old)
    ack = Ack(command=prepared, raw=raw)
    node._write_and_apply([ack])
    assert ack.events is not None and type(ack.events[0]).__name__ == "MarketStatusChanged"
    assert market_status(node.engine, "BTCUSDT") == "HALTED"  # the view shows the legacy status
    live = node.engine.state_hash()
    node.close()
    replayed, _, _ = replay_journal(tmp_path / "n", use_snapshots=False)
    assert replayed.state_hash() == live
    assert market_status(replayed, "BTCUSDT") == "HALTED"
