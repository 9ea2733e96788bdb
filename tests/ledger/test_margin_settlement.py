"""`Ledger.settle_margin_side` (one side of a perpetual fill as one linked call) against the same
postings made one by one with `capture_and_return` and `move`: the same counters on every account
and hold when they succeed; when one of them would fail (an overdraft), the linked call refuses
and changes nothing."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as hs

from ringfence.errors import InvariantViolation, ValidationError
from ringfence.ledger.ledger import Ledger
from ringfence.money import Asset

SEG = "derivatives"


def _ledger(wallet_minor: int, margin_minor: int, pool_minor: int, insurance_minor: int, hold_minor: int) -> tuple[Ledger, dict[str, Any], int]:
    led = Ledger()
    led.register_asset(Asset("USDT", 6, "crypto", "ethereum"))
    world = led.world("USDT")
    a = {
        "wallet": led.open_account("alice", "USDT", "available", SEG)[0],
        "margin": led.open_account("alice", "USDT", "margin", SEG)[0],
        "pool": led.open_system_account("USDT", "pnl_btcusdtperp", SEG),
        "insurance": led.insurance("USDT", SEG),
        "fees": led.fees("USDT", SEG),
        "clearing": led.open_system_account("USDT", "clr_btcusdtperp", SEG),
    }
    for name, amount in (("wallet", wallet_minor + hold_minor), ("margin", margin_minor), ("pool", pool_minor), ("insurance", insurance_minor)):
        led.move(world, a[name], amount)
    hold = led.hold(a["wallet"], a["clearing"], hold_minor)
    return led, a, hold


def _state(led: Ledger) -> list[Any]:
    return [a.as_row() for a in led.iter_accounts()] + [(p.id, p.amount, p.remaining, p.status) for p in led.pending.values()]


amount = hs.integers(0, 5_000)


@settings(max_examples=300, deadline=None)
@given(start=hs.tuples(amount, amount, amount, amount, hs.integers(1, 5_000)),
       legs=hs.tuples(amount, amount, amount, amount, amount, amount, amount, amount, amount))
def test_one_linked_call_posts_what_the_postings_one_by_one_post(start: tuple[int, ...], legs: tuple[int, ...]) -> None:
    take, released, gain, paid, covered, fee_net, shield, post, _ = legs
    take = min(take, start[4])
    if gain and paid:  # a fill realises a gain or a loss, not both
        paid = 0
    one, a1, h1 = _ledger(*start)
    two, a2, h2 = _ledger(*start)
    # One by one, as the contract used to post them.
    sequential_ok = True
    try:
        if take:
            one.capture_and_return(h1, take)
        for debit, credit, x in (("margin", "wallet", released), ("pool", "wallet", gain), ("wallet", "pool", paid),
                                 ("insurance", "pool", covered), ("wallet", "fees", fee_net), ("wallet", "insurance", shield),
                                 ("wallet", "margin", post)):
            one.move(a1[debit], a1[credit], x)
    except InvariantViolation:
        sequential_ok = False
    before = _state(two)
    try:
        two.settle_margin_side(h2, take, a2["wallet"], a2["margin"], released, a2["pool"], gain, paid, a2["insurance"], covered,
                               a2["fees"], fee_net, shield, post)
        linked_ok = True
    except InvariantViolation:
        linked_ok = False
    assert linked_ok == sequential_ok, (start, legs)
    if linked_ok:
        assert _state(two) == _state(one)
    else:
        assert _state(two) == before  # refused before the first posting


def test_a_negative_leg_or_a_foreign_hold_is_refused() -> None:
    led, a, hold = _ledger(1_000, 0, 0, 0, 100)
    before = _state(led)
    for bad in ({"gain": -1}, {"take": 101}):
        kw = {"take": 0, "gain": 0} | bad
        try:
            led.settle_margin_side(hold, kw["take"], a["wallet"], a["margin"], 0, a["pool"], kw["gain"], 0, a["insurance"], 0, a["fees"], 0, 0, 0)
        except InvariantViolation:
            pass
        else:
            raise AssertionError(f"{bad} was accepted")
        assert _state(led) == before


def test_the_hold_record_handed_in_is_the_holds_own_or_ignored() -> None:
    """`settle_margin_side(..., hold=record)` (`open_hold_record`'s, what a perpetual fill passes)
    posts what the call without it posts; a record of another hold is not used (the id is looked up),
    and a record that no longer covers the capture is refused like the looked-up one."""
    one, a1, h1 = _ledger(1_000, 0, 0, 0, 100)
    two, a2, h2 = _ledger(1_000, 0, 0, 0, 100)
    one.settle_margin_side(h1, 40, a1["wallet"], a1["margin"], 0, a1["pool"], 0, 0, a1["insurance"], 0, a1["fees"], 3, 1, 20)
    rec = two.open_hold_record(h2)
    assert (rec.id, rec.amount, rec.remaining) == (h2, 100, 100)
    two.settle_margin_side(h2, 40, a2["wallet"], a2["margin"], 0, a2["pool"], 0, 0, a2["insurance"], 0, a2["fees"], 3, 1, 20, rec)
    assert _state(two) == _state(one) and rec.remaining == 60
    # Another hold's record for hold h2: h2's own is used (60 left of it, not the other's 100).
    other = two.hold(a2["wallet"], a2["clearing"], 100)
    two.settle_margin_side(h2, 60, a2["wallet"], a2["margin"], 0, a2["pool"], 0, 0, a2["insurance"], 0, a2["fees"], 0, 0, 0,
                           two.open_hold_record(other))
    assert two.open_hold_record(h2).status == "posted" and two.open_hold_record(other).remaining == 100
    before = _state(two)
    try:
        two.settle_margin_side(h2, 1, a2["wallet"], a2["margin"], 0, a2["pool"], 0, 0, a2["insurance"], 0, a2["fees"], 0, 0, 0,
                               two.open_hold_record(h2))
    except InvariantViolation:
        pass
    else:
        raise AssertionError("a capture from a posted hold was accepted")
    assert _state(two) == before


def test_open_beside_is_open_account_of_the_same_owner_asset_and_segment() -> None:
    led, a, _ = _ledger(1_000, 0, 0, 0, 100)
    iso = led.open_beside(a["wallet"], "isolated")
    assert (iso.owner, iso.asset, iso.kind, iso.segment, iso.flags) == ("alice", "USDT", "isolated", SEG, a["wallet"].flags)
    assert led.open_account("alice", "USDT", "isolated", SEG) == (iso, False)
    assert led.open_beside(a["wallet"], "margin") is a["margin"]  # found, not opened again
    assert led.open_beside(a["pool"], "pnl_ethusdtperp").flags == led.open_system_account("USDT", "clr_ethusdtperp", SEG).flags
    n = len(led.accounts)
    try:
        led.open_beside(a["wallet"], "Not A Kind")
    except ValidationError as e:
        assert e.field == "kind", e
    else:
        raise AssertionError("a bad kind was accepted")
    assert len(led.accounts) == n
