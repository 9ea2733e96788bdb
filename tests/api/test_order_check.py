"""`check_place` through `Node.read`: every placement check, between batches, nothing journaled.

This is what `POST /api/v3/order/test` runs (issue #13 item 10); the API tests drive it through a
real server, these pin the engine side: a check agrees with what placing the same command does,
changes nothing, and a stopped node still answers reads at once (the API then refuses as `submit` does).
"""

from __future__ import annotations

import pytest

from ringfence.app import new_node
from ringfence.engine.node import Node
from ringfence.errors import NotDurable
from ringfence.ledger.commands import CreateTransfers, OpenAccount, RegisterAsset, Transfer
from ringfence.trading.commands import ListMarket, OrderAccepted, OrderRejected, PlaceOrder, SetReferencePrice
from ringfence.trading.orders import check_place

PRICE = 61_000 * 10**6  # 61000 USDT per BTC


@pytest.fixture()
def node(tmp_path):
    n = new_node(tmp_path / "engine", fsync=False)
    n.open()
    n.execute_many([RegisterAsset("BTC", 8, "crypto", "bitcoin"), RegisterAsset("USDT", 6, "crypto", "ethereum")])
    n.execute(ListMarket("BTCUSDT", "BTC", "USDT", "spot", tick_size=10_000, lot_size=10_000, min_qty=10_000, min_notional=5 * 10**6))
    n.execute(SetReferencePrice("BTCUSDT", PRICE))
    n.execute(OpenAccount("ann", "USDT", "available", "spot"))
    usdt = n.engine.ledger.get("ann", "USDT", "available", "spot")
    n.execute(CreateTransfers([Transfer(1, n.engine.ledger.world("USDT").id, usdt.id, 1_000 * 10**6)]))
    n.start()
    yield n
    n.close()


def check(node: Node, command: PlaceOrder) -> OrderRejected | None:
    def run(engine):  # type: ignore[no-untyped-def]
        engine.precheck(command)
        return check_place(engine, command)

    return node.read(run)


@pytest.mark.parametrize(
    "changes, reason",
    [
        ({}, None),
        ({"price": PRICE + 1}, "PRICE_NOT_ON_TICK"),
        ({"quantity": 15_000}, "QTY_NOT_ON_LOT"),
        ({"price": PRICE // 2}, "PRICE_OUTSIDE_BAND"),
        ({"quantity": 10_000, "price": 40_000 * 10**6}, "PRICE_OUTSIDE_BAND"),
        ({"quantity": 10_000}, None),  # 6.1 USDT >= 5
        ({"order_type": "STOP_LIMIT", "stop_price": 10**24}, "PRICE_OUTSIDE_BAND"),
        ({"quantity": 10**8}, "INSUFFICIENT_BALANCE"),  # 61000 USDT, ann has 1000
    ],
)
def test_a_check_agrees_with_placing_and_journals_nothing(node, changes, reason):
    command = PlaceOrder("ann", "BTCUSDT", "BUY", **{"order_type": "LIMIT", "price": PRICE, "quantity": 1_000_000, **changes})
    seq = node.engine.last_seq
    rejected = check(node, command)
    assert node.engine.last_seq == seq
    assert (rejected.reason if rejected else None) == reason
    placed = node.execute(command)
    outcome = next(e for e in placed if isinstance(e, (OrderAccepted, OrderRejected)))
    assert isinstance(outcome, OrderRejected) == (reason is not None)
    if reason is not None:
        assert (outcome.reason, outcome.field, outcome.message) == (rejected.reason, rejected.field, rejected.message)


def test_a_stopped_node_answers_a_read_at_once_and_refuses_commands(node):
    seq = node.engine.last_seq
    node.failed = RuntimeError("injected: the journal could not be written")
    assert node.read(lambda engine: engine.last_seq) == seq
    with pytest.raises(NotDurable):
        node.submit(PlaceOrder("ann", "BTCUSDT", "BUY", order_type="LIMIT", price=PRICE, quantity=1_000_000)).result()
