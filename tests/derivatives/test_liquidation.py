"""Liquidation by liquidity: partial IOC steps inside a band, cool-down, insurance for a bankrupt
remainder, and spot balances and holds byte-identical throughout."""

from __future__ import annotations

import pytest

from ringfence.derivatives.commands import LiquidateAccount, PlacePerpOrder, SetLeverage
from ringfence.derivatives.liquidation import COOLDOWN_NS, liquidation_targets
from ringfence.derivatives.state import account_summary, derivatives_state
from ringfence.engine.core import CommandRejected
from ringfence.trading.state import trading_state

from .perpworld import PERP, USDT, order, perp_world, price, qty, rejected, with_index


def _spot_rows(d):
    ledger = d.engine.ledger
    accounts = sorted(a.as_row() for a in ledger.iter_accounts() if a.segment == "spot")
    holds = sorted((h.id, h.remaining) for h in ledger.open_holds() if ledger.account(h.debit_id).segment == "spot")
    return accounts, holds


def _all_rows(d):
    ledger = d.engine.ledger
    positions = sorted((k, p.size) for k, p in derivatives_state(d.engine).positions.items())
    book = sorted((oid, o.leaves) for oid, o in trading_state(d.engine).markets[PERP].orders.items())
    return (sorted(a.as_row() for a in ledger.iter_accounts()), sorted((h.id, h.remaining) for h in ledger.open_holds()),
            positions, book)


def test_an_account_below_maintenance_is_reduced_in_steps_and_spot_is_never_touched():
    d = perp_world(owners=("alice", "bob", "carol", "dave"), usdt=10_000)
    d.fund("alice", "USDT", 5_000 * USDT)  # spot money of the liquidated user: never touched
    assert not rejected(d.place("alice", "BUY", price("30000"), qty("0.01")))  # ... nor her resting spot order's hold
    quote = with_index(d)
    quote("60000")
    for o in ("alice", "bob"):
        assert not rejected(d.apply(SetLeverage(o, PERP, 20)))
    assert not rejected(order(d, "bob", "SELL", "60000", "2"))
    order(d, "alice", "BUY", "60000", "2")  # 120k notional at 20x on a 10k wallet
    order(d, "alice", "BUY", "50000", "0.01")  # a resting perpetual order: cancelled by the liquidation
    spot_before = _spot_rows(d)
    # not below maintenance: refused, nothing changes
    assert isinstance(rejected(d.apply(LiquidateAccount("alice", "USDT"))), CommandRejected)
    # the market falls; carol and dave bid inside the band
    quote("55200")
    order(d, "carol", "BUY", "55200", "0.3")
    order(d, "dave", "BUY", "55100", "0.3")
    order(d, "dave", "SELL", "55200", "0.0001")  # last trade 55200: the mark follows the index
    s = account_summary(d.engine, "alice")
    assert s["cross_equity"] < s["cross_maint"]
    assert liquidation_targets(d.engine) == [("alice", "USDT")]
    ev = d.apply(LiquidateAccount("alice", "USDT"))
    step = [e for e in ev if type(e).__name__ == "LiquidationStep"][0]
    assert type(ev[0]).__name__ == "OrderCanceled"  # her open orders went first
    assert 0 < step.filled == step.ordered <= step.depth_in_band // 2 + qty("0.0001")
    assert derivatives_state(d.engine).positions[("alice", PERP)].size == qty("2") - step.filled
    # cooling down: refused until the cool-down is over, and the worker does not ask
    assert isinstance(rejected(d.apply(LiquidateAccount("alice", "USDT"))), CommandRejected)
    assert liquidation_targets(d.engine) == []
    d.ts_ns += COOLDOWN_NS
    quote("55200")
    ev = d.apply(LiquidateAccount("alice", "USDT"))
    assert [e for e in ev if type(e).__name__ == "LiquidationStep"][0].filled > 0
    d.engine.check_invariants()
    assert _spot_rows(d) == spot_before  # spot balances and holds byte-identical


def test_a_bankrupt_remainder_is_paid_by_the_insurance_fund_when_it_can():
    from ringfence.derivatives.adl import bankruptcy_price
    from ringfence.trading.state import market_of

    d = perp_world(owners=("alice", "bob", "carol"), usdt=10_000)
    quote = with_index(d)
    quote("60000")
    for o, lev in (("alice", 20), ("bob", 20), ("carol", 50)):
        assert not rejected(d.apply(SetLeverage(o, PERP, lev)))
    assert not rejected(order(d, "bob", "SELL", "60000", "3"))
    order(d, "alice", "BUY", "60000", "3")  # 180k at 20x on a 10k wallet
    insurance = d.engine.ledger.insurance("USDT", "derivatives")
    quote("56000")  # a 4k fall on 3 BTC = 12k loss > 10k wallet
    order(d, "bob", "SELL", "56000", "0.0001")
    order(d, "carol", "BUY", "56000", "0.0001")
    st = derivatives_state(d.engine)
    pos = st.positions[("alice", PERP)]
    collateral = d.engine.ledger.get("alice", "USDT", "available", "derivatives").balance + pos.margin
    bk = bankruptcy_price(st.perps[PERP], pos.size, pos.cost, collateral, market_of(d.engine, PERP).tick)
    # carol bids two ticks under alice's bankruptcy price, enough for the whole position in one step:
    # closing there loses 0.02 USDT a BTC more than alice has, which the fund (a tenth of the fees so
    # far) can pay
    assert not rejected(d.apply(PlacePerpOrder("carol", PERP, "BUY", price=bk - 2 * 10_000, quantity=qty("7"))))
    before = insurance.balance
    assert before > 0
    ev = d.apply(LiquidateAccount("alice", "USDT"))
    changed = [e for e in ev if type(e).__name__ == "PositionChanged" and e.owner == "alice"]
    assert changed and sum(e.insurance_covered for e in changed) > 0
    fills = [e for e in ev if type(e).__name__ == "PositionChanged"]
    covered = sum(e.insurance_covered for e in fills)
    assert insurance.balance == before + sum(e.fee // 10 for e in fills) - covered  # the fund paid (its shield share aside)
    assert ("alice", PERP) not in st.positions  # closed in the book whole, nothing left to deleverage
    assert not [e for e in ev if type(e).__name__ == "AutoDeleveraged"]
    d.engine.check_invariants()


def test_a_liquidation_never_sells_past_the_bankruptcy_price_the_fund_cannot_pay():
    d = perp_world(owners=("alice", "bob", "carol"), usdt=10_000)
    quote = with_index(d)
    quote("60000")
    for o, lev in (("alice", 20), ("bob", 20), ("carol", 50)):
        assert not rejected(d.apply(SetLeverage(o, PERP, lev)))
    assert not rejected(order(d, "bob", "SELL", "60000", "3"))
    order(d, "alice", "BUY", "60000", "3")
    quote("56000")
    assert not rejected(order(d, "carol", "BUY", "55900", "5"))  # bids far under the bankruptcy price
    order(d, "bob", "SELL", "56000", "0.0001")
    order(d, "carol", "BUY", "56000", "0.0001")
    insurance = d.engine.ledger.insurance("USDT", "derivatives")
    before = insurance.balance
    ev = d.apply(LiquidateAccount("alice", "USDT"))
    step = [e for e in ev if type(e).__name__ == "LiquidationStep"][0]
    assert step.filled == 0 and step.limit_price > price("56000")  # the order stopped at the bankruptcy price
    assert [e.counterparty for e in ev if type(e).__name__ == "AutoDeleveraged"] == ["bob"]
    assert insurance.balance == before  # the fund paid nothing; bob gave up the profit alice could not pay
    d.engine.check_invariants()


@pytest.mark.parametrize("kind,where", [("market", PERP), ("segment", "derivatives"), ("asset", "USDT"), ("asset", "BTC"),
                                        ("venue", "*")])
def test_a_halt_holds_a_liquidation_and_it_proceeds_after_the_lift(kind, where):
    """HALTED on the account's market, its segment, its margin asset, the market's base asset (found by
    the intruder review) or the venue: the liquidation is
    refused and changes nothing, and the worker would not submit it; REDUCE_ONLY lets it through;
    after the lift it proceeds. Before, a liquidation traded in a halted book (it declared only the
    segment and the asset, as a constant REDUCES_RISK, which passes even HALTED)."""
    from ringfence.risk.halts import Halt, refusal_of
    from tests.derivatives.test_conditional_halts import _desk, _lift

    d = perp_world(owners=("alice", "bob", "carol", "dave"), usdt=10_000)
    quote = with_index(d)
    desk = _desk(d)
    quote("60000")
    for o in ("alice", "bob"):
        assert not rejected(d.apply(SetLeverage(o, PERP, 20)))
    assert not rejected(order(d, "bob", "SELL", "60000", "2"))
    order(d, "alice", "BUY", "60000", "2")
    quote("55200")
    order(d, "carol", "BUY", "55200", "0.3")
    order(d, "dave", "BUY", "55100", "0.3")
    order(d, "dave", "SELL", "55200", "0.0001")
    assert liquidation_targets(d.engine) == [("alice", "USDT")]
    liquidate = LiquidateAccount("alice", "USDT")

    assert not rejected(d.apply(Halt("h", kind, where, "HALTED", "incident")))
    before = _all_rows(d)
    refusal = rejected(d.apply(liquidate))
    assert isinstance(refusal, CommandRejected) and "HALTED" in refusal.message, refusal
    assert _all_rows(d) == before  # balances, holds, positions and the book as they were
    assert refusal_of(d.engine, liquidate) is not None  # what the worker asks before it submits
    _lift(d, desk, "h")

    assert not rejected(d.apply(Halt("r", kind, where, "REDUCE_ONLY", "incident")))
    assert refusal_of(d.engine, liquidate) is None
    ev = d.apply(liquidate)
    assert not rejected(ev), ev
    assert [e for e in ev if type(e).__name__ == "LiquidationStep"][0].filled > 0
    d.engine.check_invariants()
