"""Auto-deleveraging and isolated liquidation in the engine: a position bankrupt in an illiquid book
with an insurance fund too small is closed against the opposite side in ADL order at its
bankruptcy price; money is conserved; spot and the cross wallet of an isolated position are never
touched; replay gives the same state hash."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from ringfence.derivatives.adl import adl_quantile, adl_ranking, bankruptcy_price
from ringfence.derivatives.commands import LiquidateAccount, LiquidatePosition, PlacePerpOrder, SetLeverage, SetMarginType
from ringfence.derivatives.liquidation import liquidation_targets
from ringfence.derivatives.state import account_summary, derivatives_state
from ringfence.engine.core import CommandRejected
from ringfence.trading.state import market_of

from .perpworld import PERP, USDT, order, perp_world, price, qty, rejected, transfer, with_index


def _size(d, owner):
    pos = derivatives_state(d.engine).positions.get((owner, PERP))
    return pos.size if pos is not None else 0


def _spot_rows(d):
    """Every spot account and every spot hold, as plain rows (byte-identical or not)."""
    ledger = d.engine.ledger
    accounts = sorted(a.as_row() for a in ledger.iter_accounts() if a.segment == "spot")
    holds = sorted((h.id, h.remaining) for h in ledger.open_holds() if ledger.account(h.debit_id).segment == "spot")
    return accounts, holds


def _money(d, owners):
    """Σ users' derivatives equity (wallet + margins + unrealised PnL at mark) + insurance + fees."""
    ledger = d.engine.ledger
    users = sum(account_summary(d.engine, o)["equity"] for o in owners)
    return users + ledger.insurance("USDT", "derivatives").balance + ledger.fees("USDT", "derivatives").balance


def _set_mark(d, quote, px):
    """Move the index and print a trade at `px` (a self-trade of `eve`): the mark follows, and the
    book is left as it was."""
    quote(px)
    order(d, "eve", "BUY", px, "0.0001")
    order(d, "eve", "SELL", px, "0.0001")


def _world(shorts, longs_extra=(), usdt=10_000):
    owners = ("alice", "eve", *(o for o, _, _ in shorts), *(o for o, _, _ in longs_extra))
    d = perp_world(owners=owners, usdt=usdt)
    quote = with_index(d)
    quote("60000")
    assert not rejected(d.apply(SetLeverage("alice", PERP, 20)))
    for o, _, wallet_usdt in (*shorts, *longs_extra):  # each keeps `wallet_usdt` in its futures wallet
        if wallet_usdt > usdt:
            d.fund(o, "USDT", (wallet_usdt - usdt) * USDT)
            assert not rejected(transfer(d, o, (wallet_usdt - usdt) * USDT))
        elif wallet_usdt < usdt:
            assert not rejected(transfer(d, o, (usdt - wallet_usdt) * USDT, "UMFUTURE_MAIN"))
        assert not rejected(d.apply(SetLeverage(o, PERP, 50)))
    for o, size, _ in shorts:
        assert not rejected(order(d, o, "SELL", "60000", size))
    for o, size, _ in longs_extra:
        assert not rejected(order(d, o, "BUY", "60000", size))
    total = sum(qty(s) for _, s, _ in shorts) - sum(qty(s) for _, s, _ in longs_extra)
    assert not rejected(d.apply(PlacePerpOrder("alice", PERP, "BUY", price=price("60000"), quantity=total)))
    assert _size(d, "alice") == total
    return d, quote


def test_a_bankrupt_position_in_an_empty_book_is_deleveraged_in_adl_order():
    # Three shorts with the same entry and PnL %: the one with the least equity (the highest
    # effective leverage) goes first. frank is long beside alice and is never touched.
    d, quote = _world(shorts=[("bob", "2", 10_000), ("carol", "2", 5_000), ("dave", "2", 3_000)],
                      longs_extra=[("frank", "3", 200_000)])
    ledger = d.engine.ledger
    insurance = ledger.insurance("USDT", "derivatives")
    d.fund("alice", "USDT", 5_000 * USDT)  # alice's spot money and her resting spot order: never touched
    assert not rejected(d.place("alice", "BUY", price("30000"), qty("0.01")))
    _set_mark(d, quote, "56000")  # alice: 3 BTC long from 60000 on a 10,000 wallet: -12,000 at mark
    s = account_summary(d.engine, "alice")
    assert s["cross_equity"] < 0 and -s["cross_equity"] > insurance.balance  # the fund cannot cover it
    p = derivatives_state(d.engine).perps[PERP]
    ranking = adl_ranking(d.engine, p, long_side=False)
    assert [o for o, _ in ranking] == ["dave", "carol", "bob"]
    assert [adl_quantile(ranking, o) for o in ("dave", "carol", "bob")] == [4, 3, 1]
    positions = derivatives_state(d.engine).positions
    collateral = ledger.get("alice", "USDT", "available", "derivatives").balance + positions[("alice", PERP)].margin
    bk = bankruptcy_price(p, positions[("alice", PERP)].size, positions[("alice", PERP)].cost, collateral, market_of(d.engine, PERP).tick)
    money_before, spot_before, insurance_before = _money(d, ("alice", "bob", "carol", "dave", "eve", "frank")), _spot_rows(d), insurance.balance
    assert liquidation_targets(d.engine) == [("alice", "USDT")]
    ev = d.apply(LiquidateAccount("alice", "USDT"))
    adl = [e for e in ev if type(e).__name__ == "AutoDeleveraged"]
    assert [(e.counterparty, e.quantity, e.rank) for e in adl] == [("dave", qty("2"), 0), ("carol", qty("1"), 1)]
    assert all(e.price == bk and e.owner == "alice" and e.side == "SELL" for e in adl)
    assert price("56000") < bk < price("60000")  # the shorts give up the profit alice could not pay
    assert (_size(d, "alice"), _size(d, "dave"), _size(d, "carol"), _size(d, "bob"), _size(d, "frank")) == (
        0, 0, -qty("1"), -qty("2"), qty("3"))
    assert insurance.balance == insurance_before  # nothing from the fund, no fee
    wallet = ledger.get("alice", "USDT", "available", "derivatives").balance
    assert 0 <= wallet < 3 * 10_000  # alice lost her collateral, not more: the dust of one tick × 3 BTC
    # conserved: Σ equity + insurance + fees, to the unrealised PnL's rounding (a minor unit a position)
    assert abs(_money(d, ("alice", "bob", "carol", "dave", "eve", "frank")) - money_before) <= 8
    assert _spot_rows(d) == spot_before
    d.engine.check_invariants()
    _the_reconcilers_shadow_book_agrees(d)


def _the_reconcilers_shadow_book_agrees(d):
    """The reconciler's independent fold of every command and its events (the ADL closes come as
    `PositionChanged` events at the bankruptcy price, no fee) gives every account's balance."""
    from ringfence.reconcile.reconciler import JournalFold, ReconcileSettings, read_live, reconcile_internal

    fold = JournalFold("/nonexistent")  # fed from the driver's log below, not from a journal
    fold.engine = d.engine  # (names -> ids only; the replay half of the check is the same engine)
    for seq, (command, _, events) in enumerate(d.log, start=1):
        fold._fold(command, events, seq)
    fold.last_seq = d.engine.last_seq
    assert fold.book.unmodelled == {}, fold.book.unmodelled
    mismatches = reconcile_internal(read_live(d.engine), fold, ReconcileSettings())
    assert [m.evidence() for m in mismatches if m.details.get("path") == "shadow"] == []


def test_no_adl_while_the_insurance_fund_can_cover_or_the_book_can_close():
    # not bankrupt at mark (below maintenance, equity still positive): no ADL
    d, quote = _world(shorts=[("bob", "1", 10_000)])
    _set_mark(d, quote, "55000")  # alice: 1 BTC from 60000 on 10,000: -5,000 at mark, still solvent
    ev = d.apply(LiquidateAccount("alice", "USDT"))
    assert not [e for e in ev if type(e).__name__ == "AutoDeleveraged"]
    assert _size(d, "alice") == qty("1")
    # bankrupt by a few USDT, which the insurance fund (a tenth of the fees so far) can cover: no ADL
    d, quote = _world(shorts=[("bob", "1", 10_000)])
    equity = account_summary(d.engine, "alice")["cross_equity"]
    px = (60_000 * USDT - equity - 5 * USDT) // 10_000 * 10_000  # on a tick: about 5 USDT of deficit
    _set_mark(d, quote, f"{px // USDT}.{px % USDT // 10_000:02d}")
    deficit = -account_summary(d.engine, "alice")["cross_equity"]
    assert 0 < deficit < d.engine.ledger.insurance("USDT", "derivatives").balance
    ev = d.apply(LiquidateAccount("alice", "USDT"))
    assert not [e for e in ev if type(e).__name__ == "AutoDeleveraged"] and _size(d, "alice") == qty("1")
    # bankrupt far beyond the fund, but the book holds bids above the bankruptcy price: they close it
    d, quote = _world(shorts=[("bob", "1", 10_000), ("carol", "1", 10_000)])
    _set_mark(d, quote, "45000")
    order(d, "carol", "BUY", "59900", "2")  # carol's bid, above alice's bankruptcy price (about 50,000)
    ev = d.apply(LiquidateAccount("alice", "USDT"))
    assert not [e for e in ev if type(e).__name__ == "AutoDeleveraged"]
    assert 0 < _size(d, "alice") < qty("2")  # a step closed part of it in the book
    assert -account_summary(d.engine, "alice")["cross_equity"] > d.engine.ledger.insurance("USDT", "derivatives").balance
    d.engine.check_invariants()


def test_an_isolated_position_is_liquidated_on_its_own_margin_only():
    d = perp_world(owners=("alice", "bob", "carol", "eve"), usdt=10_000)
    quote = with_index(d)
    quote("60000")
    assert not rejected(d.apply(SetMarginType("alice", PERP, "ISOLATED")))
    assert not rejected(d.apply(SetLeverage("alice", PERP, 20)))
    order(d, "bob", "SELL", "60000", "1")
    order(d, "alice", "BUY", "60000", "1")  # 3,000 of isolated margin; the rest of her wallet is cross
    ledger = d.engine.ledger
    w = ledger.get("alice", "USDT", "available", "derivatives")
    iso = ledger.get("alice", "USDT", "isolated", "derivatives")
    wallet_before, iso_before = w.balance, iso.balance
    assert iso_before == 3_000 * USDT and wallet_before > 6_000 * USDT
    quote("57200")
    order(d, "carol", "BUY", "57150", "0.4")  # bids inside the band
    order(d, "eve", "BUY", "57200", "0.0001")
    order(d, "eve", "SELL", "57200", "0.0001")
    assert liquidation_targets(d.engine) == [("alice", PERP)]  # the position, not the account
    assert isinstance(rejected(d.apply(LiquidateAccount("alice", "USDT"))), CommandRejected)  # no cross position
    ev = d.apply(LiquidatePosition("alice", PERP))
    step = [e for e in ev if type(e).__name__ == "LiquidationStep"][0]
    assert step.filled > 0 and _size(d, "alice") == qty("1") - step.filled
    assert w.balance >= wallet_before  # the cross wallet paid nothing (it may get freed margin back)
    assert iso.balance < iso_before
    d.engine.check_invariants()
    # the rest goes bankrupt in an empty book with too small a fund: ADL on its own margin only
    order(d, "carol", "SELL", "57150", "0.4")  # carol takes her bid back out of the book (closes her long)
    quote("54000")
    order(d, "eve", "BUY", "54000", "0.0001")
    order(d, "eve", "SELL", "54000", "0.0001")
    wallet_mid = w.balance
    d.ts_ns += 10 * 10**9
    quote("54000")
    ev = d.apply(LiquidatePosition("alice", PERP))
    adl = [e for e in ev if type(e).__name__ == "AutoDeleveraged"]
    assert adl and adl[0].counterparty == "bob" and _size(d, "alice") == 0
    assert wallet_mid <= w.balance  # still never debited
    assert iso.balance == 0
    d.engine.check_invariants()


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hs.integers(0, 2**32))
def test_adl_conserves_money_and_follows_the_ranking(seed):
    print("seed", seed)
    rng = random.Random(seed)
    names = ("s1", "s2", "s3", "s4")[: rng.randint(2, 4)]
    shorts = [(o, f"0.{rng.randint(5, 20):02d}", rng.choice([1_000, 2_000, 5_000, 20_000])) for o in names]
    extra = rng.choice(["", "0.03", "0.05"])  # a well-funded long beside alice: the shorts outnumber her
    longs = [("l1", extra, 200_000)] if extra else []
    d, quote = _world(shorts=shorts, longs_extra=longs, usdt=3_000)
    for o, _, _ in shorts:  # different PnL %: some shorts add at another price
        if rng.random() < 0.5:
            order(d, "eve", "BUY", "61000", "0.01")
            order(d, o, "SELL", "61000", "0.01")
            order(d, "eve", "SELL", "61000", "0.01")  # eve flat again
            order(d, "alice", "BUY", "61000", "0.01")
    owners = ("alice", "eve", *names, *(o for o, _, _ in longs))
    _set_mark(d, quote, str(rng.randint(48_000, 58_000)))
    p = derivatives_state(d.engine).perps[PERP]
    ranking = [o for o, _ in adl_ranking(d.engine, p, long_side=False)]
    sizes = {o: _size(d, o) for o in owners}
    money_before, insurance_before = _money(d, owners), d.engine.ledger.insurance("USDT", "derivatives").balance
    ev = d.apply(LiquidateAccount("alice", "USDT"))
    d.engine.check_invariants()
    adl = [e for e in ev if type(e).__name__ == "AutoDeleveraged"]
    if adl:
        hit = [e.counterparty for e in adl]
        assert hit == ranking[: len(hit)]  # in rank order, a prefix of the ranking
        assert all(_size(d, o) == 0 for o in hit[:-1])  # each fully closed before the next is touched
        assert d.engine.ledger.insurance("USDT", "derivatives").balance == insurance_before
        assert _size(d, "alice") == 0
    for o in owners:
        assert abs(_size(d, o)) <= abs(sizes[o])  # nobody's position grew
    assert abs(_money(d, owners) - money_before) <= 2 * len(owners)
    # replay: the same commands on a fresh engine give the same state hash
    from ringfence.app import new_engine

    e2 = new_engine()
    for i, (cmd, ts, _) in enumerate(d.log):
        e2.apply(cmd, i + 1, ts, b"\x00" * 32)
    assert e2.state_hash() == d.engine.state_hash()


def test_a_bankrupt_short_is_deleveraged_against_the_longs_at_its_bankruptcy_price():
    d = perp_world(owners=("alice", "bob", "carol", "eve"), usdt=10_000)
    quote = with_index(d)
    quote("60000")
    for o in ("alice", "bob", "carol"):
        assert not rejected(d.apply(SetLeverage(o, PERP, 50)))
    order(d, "alice", "BUY", "60000", "1")
    order(d, "carol", "BUY", "60000", "2")
    order(d, "bob", "SELL", "60000", "3")  # bob: 3 BTC short on a 10,000 wallet
    ledger = d.engine.ledger
    pos = derivatives_state(d.engine).positions[("bob", PERP)]
    collateral = ledger.get("bob", "USDT", "available", "derivatives").balance + pos.margin
    bk = bankruptcy_price(derivatives_state(d.engine).perps[PERP], pos.size, pos.cost, collateral, market_of(d.engine, PERP).tick)
    owners = ("alice", "bob", "carol", "eve")
    _set_mark(d, quote, "64000")  # -12,000 at mark
    before = _money(d, owners)
    ev = d.apply(LiquidateAccount("bob", "USDT"))
    adl = [e for e in ev if type(e).__name__ == "AutoDeleveraged"]
    # alice and carol have the same PnL % and alice the smaller position on the same wallet: less
    # effective leverage, so carol goes first
    assert [(e.counterparty, e.quantity, e.side, e.price) for e in adl] == [("carol", qty("2"), "BUY", bk), ("alice", qty("1"), "BUY", bk)]
    assert price("60000") < bk < price("64000") and _size(d, "bob") == 0
    assert abs(_money(d, owners) - before) <= 2 * len(owners)
    d.engine.check_invariants()
