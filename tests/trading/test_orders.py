"""Order behaviour pinned down with exact minor-unit amounts."""

from __future__ import annotations

from scenario import BTC_SCALE, USDT, btcusdt, price, qty

from ringfence.engine.core import CommandRejected
from ringfence.trading.commands import (
    AmendOrder,
    CancelAll,
    CancelOrder,
    ListMarket,
    MarketStatusChanged,
    OrderCanceled,
    OrderExpired,
    OrderRejected,
    OrderRested,
    OrderTriggered,
    PlaceOrder,
    SetAccountFeeTier,
    SetFeeTier,
    SetReferencePrice,
    Trade,
)
from ringfence.trading.state import market_of
from ringfence.app import engine_from_snapshot


def two_traders(**market: object):  # type: ignore[no-untyped-def]
    d = btcusdt(**market)
    d.fund("alice", "USDT", 100_000 * USDT)
    d.fund("bob", "BTC", 2 * BTC_SCALE)
    return d


def total(d, asset):  # type: ignore[no-untyped-def]
    return sum(a.balance for a in d.engine.ledger.iter_accounts() if a.asset == asset)


def test_fill_moves_exact_amounts_fees_and_shield_share() -> None:
    d = two_traders()
    d.place("alice", "BUY", price("60000"), qty("0.5"))
    ev = d.place("bob", "SELL", price("59000"), qty("0.7"))
    trade = next(e for e in ev if isinstance(e, Trade))
    assert (trade.price, trade.quantity, trade.quote_qty) == (price("60000"), qty("0.5"), 30_000 * USDT)
    # default tier: 0.1 % maker and taker, each charged in the asset received
    assert trade.maker_fee == qty("0.0005") and trade.taker_fee == 30 * USDT
    ledger = d.engine.ledger
    assert d.balance("alice", "USDT") == (70_000 * USDT, 0)
    assert d.balance("alice", "BTC") == (qty("0.4995"), 0)
    assert d.balance("bob", "USDT") == (29_970 * USDT, 0)
    assert d.balance("bob", "BTC") == (qty("1.5"), qty("0.2"))  # 0.2 still held by the resting rest
    # 10 % of each fee to the spot shield fund, the rest to fees
    assert ledger.insurance("BTC", "spot").balance == qty("0.00005")
    assert ledger.fees("BTC", "spot").balance == qty("0.00045")
    assert ledger.insurance("USDT", "spot").balance == 3 * USDT
    assert ledger.fees("USDT", "spot").balance == 27 * USDT
    assert total(d, "BTC") == 0 and total(d, "USDT") == 0
    d.engine.check_invariants()


def test_fees_round_up_and_split_without_losing_a_unit() -> None:
    d = two_traders()
    d.apply(SetFeeTier(1, 333, 777))
    d.apply(SetAccountFeeTier("alice", 1))
    d.apply(SetAccountFeeTier("bob", 1))
    d.place("bob", "SELL", price("30000.01"), qty("0.0001"))
    ev = d.place("alice", "BUY", price("30000.01"), qty("0.0001"))
    t = next(e for e in ev if isinstance(e, Trade))
    # notional 3.000001 USDT = 3_000_001 minor; maker (seller) fee ceil(3_000_001 * 333 / 1e6) = 1000
    assert t.quote_qty == 3_000_001
    assert t.maker_fee == -(-3_000_001 * 333 // 1_000_000) == 1000
    # taker (buyer) fee ceil(10_000 * 777 / 1e6) = ceil(7.77) = 8 satoshi
    assert t.taker_fee == 8
    ledger = d.engine.ledger
    assert ledger.insurance("BTC", "spot").balance == 0 and ledger.fees("BTC", "spot").balance == 8
    assert ledger.insurance("USDT", "spot").balance == 100 and ledger.fees("USDT", "spot").balance == 900
    assert d.balance("alice", "BTC") == (10_000 - 8, 0)
    assert total(d, "BTC") == 0 and total(d, "USDT") == 0


def test_buy_below_limit_releases_unused_quote_and_rests_with_exact_hold() -> None:
    d = two_traders()
    d.place("bob", "SELL", price("60000"), qty("0.2"))
    ev = d.place("alice", "BUY", price("61000"), qty("0.5"))
    assert any(isinstance(e, OrderRested) and e.leaves == qty("0.3") for e in ev)
    bal, held = d.balance("alice", "USDT")
    assert bal == 100_000 * USDT - 12_000 * USDT
    assert held == 18_300 * USDT  # 0.3 BTC at the 61,000 limit; the 200 saved on the fill is free again
    d.engine.check_invariants()


def test_cancel_and_cancel_all_release_holds() -> None:
    d = two_traders()
    d.place("alice", "BUY", price("100"), qty("1"))
    d.place("alice", "BUY", price("101"), qty("1"), client_order_id="mine-1")
    assert d.balance("alice", "USDT")[1] == 201 * USDT
    ev = d.apply(CancelOrder("alice", "BTCUSDT", client_order_id="mine-1"))
    assert isinstance(ev[0], OrderCanceled) and ev[0].released == 101 * USDT
    ev = d.apply(CancelAll("alice", "BTCUSDT"))
    assert [type(e) for e in ev] == [OrderCanceled] and ev[0].released == 100 * USDT
    assert d.balance("alice", "USDT") == (100_000 * USDT, 0)
    assert d.engine.ledger.pending == {} or all(p.status == "pending" for p in d.engine.ledger.pending.values())


def test_amend_keeps_priority_on_reduce_and_loses_it_on_reprice() -> None:
    d = two_traders()
    d.fund("carol", "USDT", 10_000 * USDT)
    a = d.place("alice", "BUY", price("100"), qty("2"))[0].order_id
    c = d.place("carol", "BUY", price("100"), qty("1"))[0].order_id
    m = market_of(d.engine, "BTCUSDT")
    ev = d.apply(AmendOrder("alice", "BTCUSDT", a, quantity=qty("1")))
    assert ev[0].kept_priority and [o.id for o in m.level_orders(True, price("100"))] == [a, c]
    assert d.balance("alice", "USDT")[1] == 100 * USDT
    ev = d.apply(AmendOrder("alice", "BTCUSDT", a, price=price("99")))
    ev = d.apply(AmendOrder("alice", "BTCUSDT", a, price=price("100")))
    assert not ev[0].kept_priority and [o.id for o in m.level_orders(True, price("100"))] == [c, a]
    # increasing the quantity also loses priority, and needs (and takes) a bigger hold
    ev = d.apply(AmendOrder("carol", "BTCUSDT", c, quantity=qty("3")))
    assert not ev[0].kept_priority and [o.id for o in m.level_orders(True, price("100"))] == [a, c]
    assert d.balance("carol", "USDT")[1] == 300 * USDT
    # a crossing re-price trades
    ev = d.apply(AmendOrder("alice", "BTCUSDT", a, price=price("100")))
    bob = d.place("bob", "SELL", price("200"), qty("1"))[0].order_id
    ev = d.apply(AmendOrder("alice", "BTCUSDT", a, price=price("200")))
    assert any(isinstance(e, Trade) and e.maker_order_id == bob for e in ev)
    d.engine.check_invariants()


def test_self_trade_prevention_modes() -> None:
    for mode, taker_left, maker_left in (
        ("EXPIRE_TAKER", False, True),
        ("EXPIRE_MAKER", True, False),
        ("EXPIRE_BOTH", False, False),
    ):
        d = two_traders()
        d.fund("alice", "BTC", BTC_SCALE)
        maker = d.place("alice", "SELL", price("100"), qty("1"))[0].order_id
        ev = d.place("alice", "BUY", price("100"), qty("1"), stp=mode)
        assert not any(isinstance(e, Trade) for e in ev), mode
        expired = {e.order_id for e in ev if isinstance(e, OrderExpired) and e.reason == "SELF_TRADE_PREVENTED"}
        taker = ev[0].order_id
        m = market_of(d.engine, "BTCUSDT")
        assert (maker in m.orders) == maker_left, mode
        assert (taker in m.orders) == taker_left, mode
        assert (taker in expired) != taker_left and (maker in expired) != maker_left
        d.engine.check_invariants()
    d = two_traders()
    d.fund("alice", "BTC", BTC_SCALE)
    d.place("alice", "SELL", price("100"), qty("1"))
    ev = d.place("alice", "BUY", price("100"), qty("1"), stp="NONE")
    t = next(e for e in ev if isinstance(e, Trade))
    assert t.taker_owner == t.maker_owner == "alice"


def test_fok_all_or_nothing_and_ioc_remainder_expires() -> None:
    d = two_traders()
    d.place("bob", "SELL", price("100"), qty("0.5"))
    before = d.balance("alice", "USDT")
    ev = d.place("alice", "BUY", price("100"), qty("1"), tif="FOK")
    assert isinstance(ev[-1], OrderExpired) and ev[-1].reason == "FOK_NOT_FILLABLE"
    assert d.balance("alice", "USDT") == before
    ev = d.place("alice", "BUY", price("100"), qty("1"), tif="IOC")
    assert sum(e.quantity for e in ev if isinstance(e, Trade)) == qty("0.5")
    assert isinstance(ev[-1], OrderExpired) and ev[-1].leaves == qty("0.5") and ev[-1].released == 50 * USDT
    assert d.balance("alice", "USDT") == (before[0] - 50 * USDT, 0)


def test_market_orders_by_quantity_and_by_quote_amount() -> None:
    d = two_traders()
    d.fund("alice", "BTC", BTC_SCALE)
    d.place("bob", "SELL", price("100"), qty("1"))
    d.place("bob", "SELL", price("101"), qty("1"))
    ev = d.apply(PlaceOrder("alice", "BTCUSDT", "BUY", "MARKET", quote_amount=150 * USDT))
    trades = [e for e in ev if isinstance(e, Trade)]
    # 1 BTC at 100, then floor(50 / 101 per lot) = 0.495 BTC at 101 (49.995 USDT); 0.005 USDT of dust is released
    assert [(t.price, t.quantity) for t in trades] == [(price("100"), qty("1")), (price("101"), qty("0.495"))]
    assert not any(isinstance(e, OrderExpired) for e in ev)  # FILLED: the rest cannot buy a lot
    assert d.balance("alice", "USDT") == (100_000 * USDT - 149_995_000, 0)
    ev = d.apply(PlaceOrder("alice", "BTCUSDT", "SELL", "MARKET", quantity=qty("0.1")))
    assert isinstance(ev[-1], OrderExpired) and ev[-1].reason == "NO_LIQUIDITY"
    d.place("alice", "BUY", price("90"), qty("0.1"))
    d.place("alice", "BUY", price("50"), qty("0.1"))
    d.fund("bob", "BTC", BTC_SCALE)
    ev = d.apply(PlaceOrder("bob", "BTCUSDT", "SELL", "MARKET", quantity=qty("0.2")))
    # the slippage guard (5 % below the best bid) stops the order before the 50 bid
    assert [e.price for e in ev if isinstance(e, Trade)] == [price("90")]
    assert isinstance(ev[-1], OrderExpired) and ev[-1].leaves == qty("0.1")
    d.engine.check_invariants()


def test_stop_orders_trigger_on_last_trade_price() -> None:
    d = two_traders()
    d.fund("carol", "USDT", 10_000 * USDT)
    d.place("bob", "SELL", price("100"), qty("0.1"))
    d.place("alice", "BUY", price("100"), qty("0.1"))  # last price 100
    ev = d.apply(PlaceOrder("carol", "BTCUSDT", "BUY", "STOP_LIMIT", price=price("106"), quantity=qty("0.2"), stop_price=price("105")))
    stop_id = ev[0].order_id
    assert d.balance("carol", "USDT")[1] == price("106") * qty("0.2") // BTC_SCALE
    d.place("bob", "SELL", price("105"), qty("0.3"))
    ev = d.place("alice", "BUY", price("105"), qty("0.1"))  # prints 105: the stop fires and buys 0.2
    assert any(isinstance(e, OrderTriggered) and e.order_id == stop_id for e in ev)
    assert [(e.taker_order_id, e.quantity) for e in ev if isinstance(e, Trade)][-1] == (stop_id, qty("0.2"))
    # a sell stop-market below the market
    ev = d.apply(PlaceOrder("bob", "BTCUSDT", "SELL", "STOP_MARKET", quantity=qty("0.1"), stop_price=price("95")))
    sid = ev[0].order_id
    d.place("alice", "BUY", price("95"), qty("0.2"))
    ev = d.place("bob", "SELL", price("95"), qty("0.1"))
    assert any(isinstance(e, OrderTriggered) and e.order_id == sid for e in ev)
    assert any(isinstance(e, Trade) and e.taker_order_id == sid for e in ev)
    d.engine.check_invariants()


def test_band_expires_stale_makers_and_times_out_to_reduce_only() -> None:
    d = two_traders(band_ppm=100_000, band_timeout_ns=10_000)
    d.apply(SetReferencePrice("BTCUSDT", price("100")))
    d.place("bob", "SELL", price("91"), qty("0.1"))
    d.place("bob", "SELL", price("95"), qty("0.1"))
    ev = d.apply(SetReferencePrice("BTCUSDT", price("110")))  # band now 99..121: the asks are too cheap
    ev = d.place("alice", "BUY", price("110"), qty("0.1"), tif="IOC")
    expired = [e for e in ev if isinstance(e, OrderExpired)]
    assert [e.reason for e in expired] == ["PRICE_OUTSIDE_BAND", "PRICE_OUTSIDE_BAND", "NOT_FULLY_FILLED"]
    assert not any(isinstance(e, Trade) for e in ev)
    # a trade at 100, then the reference jumps: the last price is outside the band ...
    d.place("bob", "SELL", price("100"), qty("0.1"))
    d.place("alice", "BUY", price("100"), qty("0.1"))
    d.apply(SetReferencePrice("BTCUSDT", price("120")))  # band 108..132, last 100
    ev = d.apply(
        PlaceOrder("alice", "BTCUSDT", "BUY", price=price("120"), quantity=qty("0.1")), advance_ns=20_000
    )
    assert isinstance(ev[0], MarketStatusChanged) and ev[0].status == "REDUCE_ONLY"
    assert isinstance(ev[1], OrderRejected) and ev[1].reason == "MARKET_NOT_ACTIVE"
    ev = d.apply(SetReferencePrice("BTCUSDT", price("101")))
    assert any(isinstance(e, MarketStatusChanged) and e.status == "ACTIVE" for e in ev)
    d.engine.check_invariants()


def test_list_market_rejects_fractional_notional_rules() -> None:
    d = btcusdt()
    ev = d.apply(ListMarket("ETHUSDT", "BTC", "USDT", tick_size=3, lot_size=7, min_qty=7))
    assert isinstance(ev[0], CommandRejected) and ev[0].field == "lot_size"
    ev = d.apply(ListMarket("BTCUSDT", "BTC", "USDT", tick_size=10_000, lot_size=10_000, min_qty=10_000))
    assert isinstance(ev[0], CommandRejected) and ev[0].field == "symbol"


def test_snapshot_roundtrip_keeps_book_stops_and_hash() -> None:
    d = two_traders(band_ppm=100_000)
    d.apply(SetReferencePrice("BTCUSDT", price("100")))
    d.place("bob", "SELL", price("101"), qty("0.1"))
    d.place("bob", "SELL", price("101"), qty("0.2"), client_order_id="b2")
    d.place("alice", "BUY", price("99"), qty("0.3"))
    d.apply(PlaceOrder("alice", "BTCUSDT", "BUY", "STOP_LIMIT", price=price("105"), quantity=qty("0.1"), stop_price=price("104")))
    restored = engine_from_snapshot(d.engine.snapshot_bytes())
    assert restored.state_hash() == d.engine.state_hash()
    restored.check_invariants()
    # the restored engine continues identically
    cmd = PlaceOrder("alice", "BTCUSDT", "BUY", price=price("104"), quantity=qty("0.3"))
    a = d.apply(cmd)
    b = restored.apply(cmd, d.engine.last_seq, d.ts_ns, b"\x00" * 32)
    assert a == b and restored.state_hash() == d.engine.state_hash()


def test_a_client_transfer_cannot_post_or_void_an_order_hold() -> None:
    from ringfence.ledger.commands import CreateTransfers
    from ringfence.ledger.model import Transfer, TransferFlags

    d = two_traders()
    ev = d.place("alice", "BUY", price("100"), qty("1"))
    hold_id = market_of(d.engine, "BTCUSDT").orders[ev[0].order_id].hold_id
    for tid, flags in ((555, TransferFlags.VOID_PENDING), (556, TransferFlags.POST_PENDING)):
        out = d.apply(CreateTransfers([Transfer(tid, 0, 0, 0, pending_id=hold_id, flags=flags)]))
        assert out[0].failures == [(0, "pending_transfer_not_found")]
    assert d.balance("alice", "USDT") == (100_000 * USDT, 100 * USDT)
    d.engine.check_invariants()


def test_amend_moves_keep_the_price_lists_and_levels_exact() -> None:
    """Every shape of a non-crossing move (`Market.move`): alone on its level or not, to a price
    with a level or without, with other levels between the two prices or none; a level left empty
    is dropped (its object reused at the new price) and the price lists stay sorted and exact."""
    d = two_traders()
    m = market_of(d.engine, "BTCUSDT")
    ids = {p: d.place("alice", "BUY", price(p), qty("0.1"))[0].order_id for p in ("90", "92", "94", "96")}
    second = d.place("alice", "BUY", price("94"), qty("0.2"))[0].order_id
    asks = [d.place("bob", "SELL", price(p), qty("0.1"))[0].order_id for p in ("110", "112")]

    def book() -> tuple[list[int], list[int]]:
        d.engine.check_invariants()
        assert m.bid_prices == sorted(m.bids) and m.ask_prices == sorted(m.asks)
        assert all(lv.price == p and lv.head is not None for p, lv in (*m.bids.items(), *m.asks.items()))
        return m.bid_prices, m.ask_prices

    def move(owner: str, oid: int, p: str) -> None:
        ev = d.apply(AmendOrder(owner, "BTCUSDT", oid, price=price(p)))
        assert [type(e).__name__ for e in ev] == ["OrderAmended", "OrderRested"], ev
        assert m.orders[oid].price == price(p) and m.orders[oid].level is m.bids.get(price(p), m.asks.get(price(p)))

    move("alice", ids["90"], "91")  # alone, no level between 90 and 91: the entry overwritten in place
    assert book()[0] == [price(p) for p in ("91", "92", "94", "96")]
    move("alice", ids["90"], "95")  # alone, levels 92 and 94 between
    assert book()[0] == [price(p) for p in ("92", "94", "95", "96")]
    move("alice", ids["92"], "96")  # alone, to an existing level: at its back
    assert book()[0] == [price(p) for p in ("94", "95", "96")]
    assert [o.id for o in m.level_orders(True, price("96"))] == [ids["96"], ids["92"]]
    move("alice", second, "93")  # not alone, to a new level
    assert book()[0] == [price(p) for p in ("93", "94", "95", "96")]
    assert m.bids[price("94")].total == qty("0.1")
    move("alice", ids["94"], "95")  # alone again, to an existing level
    assert book()[0] == [price(p) for p in ("93", "95", "96")] and m.bids[price("95")].total == qty("0.2")
    move("bob", asks[1], "109")  # asks: alone, below the best, no level between
    assert book()[1] == [price("109"), price("110")]
    move("bob", asks[0], "120")  # asks: alone, past the other level
    assert book()[1] == [price("109"), price("120")]
    assert d.balance("alice", "USDT")[1] == sum(o.leaves * o.price // BTC_SCALE for o in m.orders.values() if o.is_buy)


def test_amend_quantity_above_max_qty_is_refused_after_the_rules_change() -> None:
    """An amend checks the quantity against the market's rules as they are now: a lower `max_qty`
    set after the order was placed (the attribute listing sets, trading/admin.py), and a limit
    above 2**61, past the short-int shortcut (`Market.qty_cap`)."""
    d = two_traders(max_qty=qty("5"))
    m = market_of(d.engine, "BTCUSDT")
    assert m.qty_cap == qty("5")
    oid = d.place("alice", "BUY", price("100"), qty("2"))[0].order_id
    ev = d.apply(AmendOrder("alice", "BTCUSDT", oid, quantity=qty("6")))
    assert isinstance(ev[0], OrderRejected) and ev[0].reason == "QTY_ABOVE_MAX"
    m.max_qty = qty("1")
    ev = d.apply(AmendOrder("alice", "BTCUSDT", oid, price=price("99")))
    assert isinstance(ev[0], OrderRejected) and ev[0].reason == "QTY_ABOVE_MAX"
    big = 10_000 * (2**62 // 10_000)  # on the lot, above 2**61
    m.max_qty = big
    assert m.max_qty == big and m.qty_cap == 2**61
    ev = d.apply(AmendOrder("alice", "BTCUSDT", oid, quantity=big + 10_000))
    assert isinstance(ev[0], OrderRejected) and ev[0].reason == "QTY_ABOVE_MAX"
    ev = d.apply(AmendOrder("alice", "BTCUSDT", oid, quantity=big))  # allowed by the rules: the balance refuses it
    assert isinstance(ev[0], OrderRejected) and ev[0].reason == "INSUFFICIENT_BALANCE"
    restored = engine_from_snapshot(d.engine.snapshot_bytes())
    assert market_of(restored, "BTCUSDT").qty_cap == 2**61 and restored.state_hash() == d.engine.state_hash()
