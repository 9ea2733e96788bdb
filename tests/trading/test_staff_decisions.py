"""Trading decisions of the staff operator quorum (`trading/staff_cmds.py`), in an engine.

Every refusal (one operator, a signer without the operator role, approvals signed against an old
change counter, an approver who holds the account, a bad filter) is refused at the edge and by the
handler, and leaves the domain state hash as it was. Delisting cancels every open order and ends
its hold: a hypothesis property over random books checks that no owner gains or loses a minor unit
and nothing stays held. Snapshots keep the change counter.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ringfence.engine.core import CommandRejected
from ringfence.errors import RingfenceError
from ringfence.ledger.commands import CreateTransfers, OpenAccount, RegisterAsset
from ringfence.ledger.model import Transfer
from ringfence.trading.commands import ListMarket, OrderCanceled, PlaceOrder, SetAccountFeeTier, SetFeeTier
from ringfence.trading.staff_cmds import (
    ACTIONS,
    DelistMarketSigned,
    ListMarketSigned,
    SetAccountFeeTierSigned,
    SetFeeTierSigned,
    SetReferencePriceSigned,
    account_tier_subject,
    delist_subject,
    fee_tier_subject,
    list_subject,
    reference_subject,
)
from ringfence.trading.state import trading_state
from tests.staff.rig import Rig, domain_hash

MARKET = ListMarket("BTCUSDT", "BTC", "USDT", "spot", 10_000, 10_000, 10_000, band_ppm=0)
OWNERS = ("alice", "bob", "carol")


def exchange() -> Rig:
    rig = Rig()
    rig.run(RegisterAsset("BTC", 8, "crypto", "bitcoin"))
    rig.run(RegisterAsset("USDT", 6, "crypto", "ethereum"))
    return rig


def version(rig: Rig) -> int:
    return trading_state(rig.engine).admin_version


def listed(rig: Rig, approvers: tuple[str, ...] = ("ada", "ben")) -> ListMarketSigned:
    sigs = rig.desk.signs(approvers, ACTIONS["list"], list_subject(MARKET, "listing", version(rig)))
    return ListMarketSigned(MARKET, "listing", sigs)


def fund(rig: Rig, tid: int) -> None:
    ledger = rig.engine.ledger
    for owner in OWNERS:
        for asset, amount in (("BTC", 10 * 10**8), ("USDT", 10**12)):
            rig.run(OpenAccount(owner, asset, "available", "spot"))
            acct = ledger.get(owner, asset, "available", "spot")
            rig.run(CreateTransfers([Transfer(tid, ledger.world(asset).id, acct.id, amount)]))
            tid += 1


def test_one_operator_a_non_operator_or_bad_filters_change_nothing() -> None:
    rig = exchange()
    rig.refused(listed(rig, ("ada",)), "quorum")
    rig.refused(listed(rig, ("ada", "ana")), "role-required")
    bad = ListMarket("BTCUSDT", "BTC", "USDT", "spot", 10_000, 3, 3, band_ppm=0)  # 10_000 * 3 is not a whole satoshi scale
    before = domain_hash(rig.engine)
    with pytest.raises(RingfenceError) as err:
        rig.engine.precheck(ListMarketSigned(bad, "x", rig.desk.signs(("ada", "ben"), ACTIONS["list"], list_subject(bad, "x", 0))))
    assert err.value.field == "lot_size"
    assert domain_hash(rig.engine) == before

    rig.run(listed(rig))
    assert "BTCUSDT" in trading_state(rig.engine).markets and version(rig) == 1
    tier = SetFeeTier(2, 200, 500)
    rig.refused(SetFeeTierSigned(tier, "vip", rig.desk.signs(["ben"], ACTIONS["fee_tier"], fee_tier_subject(tier, "vip", 1))), "quorum")
    # approvals collected before another decision moved the counter no longer verify
    stale = rig.desk.signs(("ada", "ben"), ACTIONS["fee_tier"], fee_tier_subject(tier, "vip", 0))
    rig.refused(SetFeeTierSigned(tier, "vip", stale), "signature-valid")
    with pytest.raises(RingfenceError) as err:  # the refusal says why an honest approver's signature failed
        rig.engine.precheck(SetFeeTierSigned(tier, "vip", stale))
    assert "change counter" in str(err.value) and "sign again" in str(err.value), str(err.value)
    rig.run(SetFeeTierSigned(tier, "vip", rig.desk.signs(("ada", "ben"), ACTIONS["fee_tier"], fee_tier_subject(tier, "vip", 1))))
    assert trading_state(rig.engine).tiers[2] == (200, 500)

    price = reference_subject("BTCUSDT", 61_000 * 10**6, "no index", 2)
    rig.refused(SetReferencePriceSigned("BTCUSDT", 61_000 * 10**6, "no index", rig.desk.signs(["ada", "mal"], "market.delist", price)),
                "signature-valid")  # signed for another action
    rig.run(SetReferencePriceSigned("BTCUSDT", 61_000 * 10**6, "no index", rig.desk.signs(["ada", "mal"], ACTIONS["reference"], price)))
    assert trading_state(rig.engine).markets["BTCUSDT"].ref_price == 61_000 * 10**6

    # snapshots keep the counter: restored, the state hash is the same
    assert rig.engine.restored(rig.engine.snapshot_bytes()).state_hash() == rig.engine.state_hash()
    assert trading_state(rig.engine.restored(rig.engine.snapshot_bytes())).admin_version == 3


def test_nobody_approves_a_fee_tier_for_their_own_account() -> None:
    rig = Rig(accounts={"ben": ["u_ben"]})  # ben is also the customer u_ben
    assignment = SetAccountFeeTier("u_ben", 0)
    subject = account_tier_subject(assignment, "friends", 0)
    rig.refused(SetAccountFeeTierSigned(assignment, "friends", rig.desk.signs(("ada", "ben"), ACTIONS["account_tier"], subject)),
                "never-the-initiator")
    rig.run(SetAccountFeeTierSigned(assignment, "friends", rig.desk.signs(("ada", "cy"), ACTIONS["account_tier"], subject)))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(OWNERS), st.booleans(), st.integers(59_990, 60_010), st.integers(1, 30),
                          st.booleans()), min_size=1, max_size=25))
def test_delisting_cancels_every_order_and_releases_every_hold(orders: list[tuple[str, bool, int, int, bool]]) -> None:
    rig = exchange()
    rig.run(listed(rig))
    fund(rig, 1)
    for owner, buy, price, lots, stop in orders:
        kw = {"order_type": "STOP_LIMIT", "stop_price": price * 10**6 + (10**9 if buy else -10**9)} if stop else {}
        rig.apply(PlaceOrder(owner, "BTCUSDT", "BUY" if buy else "SELL", price=price * 10**6, quantity=lots * 10_000, **kw))
    ledger = rig.engine.ledger
    market = trading_state(rig.engine).markets["BTCUSDT"]
    open_orders = len(market.orders)
    assert open_orders or all(not stop for *_, stop in orders), "nothing rested: the property would be vacuous"
    balances = {(o, a): ledger.get(o, a, "available", "spot").balance for o in OWNERS for a in ("BTC", "USDT")}
    rig.refused(DelistMarketSigned("BTCUSDT", "wound down", rig.desk.signs(["ada"], ACTIONS["delist"],
                                                                         delist_subject("BTCUSDT", "wound down", 1))), "quorum")
    events = rig.run(DelistMarketSigned("BTCUSDT", "wound down", rig.desk.signs(("ada", "ben"), ACTIONS["delist"],
                                                                               delist_subject("BTCUSDT", "wound down", 1))))
    assert not any(isinstance(e, CommandRejected) for e in events)
    canceled = [e for e in events if isinstance(e, OrderCanceled)]
    assert len(canceled) == open_orders and all(e.reason == "DELISTED" for e in canceled)
    assert "BTCUSDT" not in trading_state(rig.engine).markets
    for (owner, asset), balance in balances.items():
        acct = ledger.get(owner, asset, "available", "spot")
        assert acct.balance == balance, f"{owner} {asset} changed by a delisting"
        assert acct.debits_pending == 0, f"{owner} {asset} still held after a delisting"
    assert market.clearing.base.credits_pending == market.clearing.quote.credits_pending == 0
    rig.engine.check_invariants()
    # the symbol can be listed again (a new decision, against the moved counter)
    rig.run(listed(rig))
    assert not trading_state(rig.engine).markets["BTCUSDT"].orders
