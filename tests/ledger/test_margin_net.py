"""`Ledger.settle_margin_net` (one side of a perpetual fill, netted) against the scheme it replaced,
`Ledger.settle_margin_side` (kept as the reference: the hold's freed part captured and paid back,
the position's margin released and posted again, each leg posted as it is): over random fills,
every account ends with the same balance — posted, held and reserved — and every hold with the same
amount left; only the counters (how many postings made the balance) differ. A fill the old scheme
settles the netted one settles; one the netted one refuses changes nothing."""

from __future__ import annotations

from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as hs

from ringfence.errors import InvariantViolation
from ringfence.ledger.ledger import Ledger
from tests.ledger.test_margin_settlement import _ledger, _state

amount = hs.integers(0, 5_000)


def _balances(led: Ledger) -> list[Any]:
    """Every account's balance (posted, and what holds reserve on each side) and every hold's amount left."""
    return ([(a.id, a.credits_posted - a.debits_posted, a.debits_pending, a.credits_pending) for a in led.iter_accounts()]
            + sorted((p.id, p.amount, p.remaining) for p in led.pending.values()))


@settings(max_examples=400, deadline=None)
@given(start=hs.tuples(amount, amount, amount, amount, hs.integers(1, 5_000)),
       legs=hs.tuples(amount, amount, amount, amount, amount, amount, amount, amount))
@example(start=(0, 100, 0, 0, 50), legs=(50, 100, 0, 0, 0, 3, 0, 97))  # margin released, most of it posted again
@example(start=(10, 0, 0, 0, 50), legs=(50, 0, 0, 0, 0, 3, 0, 57))  # an open: the whole hold freed and more
def test_the_netted_postings_leave_every_balance_the_old_ones_leave(start: tuple[int, ...], legs: tuple[int, ...]) -> None:
    take, released, gain, paid, covered, fee_net, shield, post = legs
    take = min(take, start[4])
    released = min(released, start[1])  # a position's margin is in its margin account
    if gain and paid:  # a fill realises a gain or a loss, not both
        paid = 0
    old, a1, h1 = _ledger(*start)
    new, a2, h2 = _ledger(*start)
    try:
        old.settle_margin_side(h1, take, a1["wallet"], a1["margin"], released, a1["pool"], gain, paid, a1["insurance"], covered,
                               a1["fees"], fee_net, shield, post)
        old_ok = True
    except InvariantViolation:
        old_ok = False
    before = _state(new)
    try:
        new.settle_margin_net(new.open_hold_record(h2), take, a2["wallet"], a2["margin"], post - released, a2["pool"], gain,
                              paid, a2["insurance"], covered, a2["fees"], fee_net, shield)
        new_ok = True
    except InvariantViolation:
        new_ok = False
    assert new_ok == old_ok, (start, legs)
    if new_ok:
        assert _balances(new) == _balances(old)
        # Fewer postings: the clearing account's posted counters do not move, the margin account's by the net change.
        clearing, margin = a2["clearing"], a2["margin"]
        assert (clearing.debits_posted, clearing.credits_posted) == (a1["clearing"].debits_posted - take,
                                                                     a1["clearing"].credits_posted - take)
        assert margin.debits_posted + margin.credits_posted == a1["margin"].debits_posted + a1["margin"].credits_posted \
            - 2 * min(released, post)
    else:
        assert _state(new) == before  # refused before the first posting


def test_a_hold_freed_whole_is_released_and_one_not_open_is_refused() -> None:
    led, a, h = _ledger(1_000, 0, 0, 0, 100)
    rec = led.open_hold_record(h)
    led.settle_margin_net(rec, 100, a["wallet"], a["margin"], 40, a["pool"], 0, 0, a["insurance"], 0, a["fees"], 3, 1)
    assert (rec.remaining, rec.status) == (0, "voided")
    assert a["wallet"].available == 1_000 + 100 - 40 - 3 - 1 and a["clearing"].credits_pending == 0
    before = _state(led)
    for kw in ({"take": 1}, {"gain": -1}):
        args = {"take": 0, "gain": 0} | kw
        try:
            led.settle_margin_net(rec, args["take"], a["wallet"], a["margin"], 0, a["pool"], args["gain"], 0, a["insurance"], 0,
                                  a["fees"], 0, 0)
        except InvariantViolation:
            pass
        else:
            raise AssertionError(f"{kw} was accepted")
        assert _state(led) == before
