"""The engine-side postings refuse to take a counter past 128 bits (`MAX_AMOUNT`), at the exact
boundary, and change nothing when they refuse: `hold`, `move`, `capture_and_return`,
`settle_margin_side` (its capture into clearing included) and `settle_fill`.

Their hot paths compare a counter with `MAX_AMOUNT` only once it is past 2**61 (a comparison with a
128-bit int is slow compiled); these tests put the counters within a few units of the limit, so a
guard that skipped the real test (or asked it the wrong way round) fails here, in pure Python and
compiled alike. The counters are set directly: nothing could fund a 128-bit balance otherwise.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from ringfence.errors import InvariantViolation
from ringfence.ledger.ledger import Ledger
from ringfence.money import MAX_AMOUNT, Asset

SEG = "derivatives"
#: How far past (> 0) or short of (<= 0) the limit the posting would take the counter.
over = hs.integers(-3, 3)


def _ledger() -> tuple[Ledger, dict[str, Any]]:
    led = Ledger()
    led.register_asset(Asset("USDT", 6, "crypto", "ethereum"))
    led.register_asset(Asset("BTC", 8, "crypto", "bitcoin"))
    a = {
        "world": led.world("USDT"),
        "wallet": led.open_account("alice", "USDT", "available", SEG)[0],
        "margin": led.open_account("alice", "USDT", "margin", SEG)[0],
        "pool": led.open_system_account("USDT", "pnl_btcusdtperp", SEG),
        "insurance": led.insurance("USDT", SEG),
        "fees": led.fees("USDT", SEG),
        "clearing": led.open_system_account("USDT", "clr_btcusdtperp", SEG),
    }
    led.move(a["world"], a["wallet"], 1_000)
    return led, a


def _state(led: Ledger) -> list[Any]:
    return [a.as_row() for a in led.iter_accounts()] + [(p.id, p.amount, p.remaining, p.status) for p in led.pending.values()]


def _refused_or_done(led: Ledger, n: int, post: Any) -> None:
    """`post()` is refused, changing nothing, when `n > 0` (past the limit by `n`); else it posts."""
    before = _state(led)
    if n > 0:
        with pytest.raises(InvariantViolation):
            post()
        assert _state(led) == before
    else:
        post()
        assert _state(led) != before


@settings(max_examples=30, deadline=None)
@given(n=over)
def test_hold_amount_and_counters_stay_within_128_bits(n: int) -> None:
    led, a = _ledger()
    # the amount itself (BTC: accounts with no counters yet)
    btc_world, btc = led.world("BTC"), led.open_account("bob", "BTC", "available", SEG)[0]
    _refused_or_done(led, n, lambda: led.hold(btc_world, btc, MAX_AMOUNT + n))
    # the debit's counters (the world account may go negative: no overdraft limit)
    led, a = _ledger()
    a["world"].debits_posted = MAX_AMOUNT - 100
    _refused_or_done(led, n, lambda: led.hold(a["world"], a["clearing"], 100 + n))
    # the credit's counters
    led, a = _ledger()
    a["clearing"].credits_posted = MAX_AMOUNT - 7
    _refused_or_done(led, n, lambda: led.hold(a["wallet"], a["clearing"], 7 + n))


@settings(max_examples=30, deadline=None)
@given(n=over)
def test_move_stays_within_128_bits(n: int) -> None:
    led, a = _ledger()
    a["world"].debits_posted = MAX_AMOUNT - 100
    _refused_or_done(led, n, lambda: led.move(a["world"], a["fees"], 100 + n))
    led, a = _ledger()
    a["fees"].credits_posted = MAX_AMOUNT - 10
    _refused_or_done(led, n, lambda: led.move(a["wallet"], a["fees"], 10 + n))


@settings(max_examples=30, deadline=None)
@given(n=over)
def test_capture_and_return_stays_within_128_bits(n: int) -> None:
    led, a = _ledger()
    hold = led.hold(a["wallet"], a["clearing"], 500)
    a["clearing"].debits_posted = MAX_AMOUNT - 5
    _refused_or_done(led, n, lambda: led.capture_and_return(hold, 5 + n))
    led, a = _ledger()
    hold = led.hold(a["wallet"], a["clearing"], 500)
    a["wallet"].credits_posted = MAX_AMOUNT - 5
    _refused_or_done(led, n, lambda: led.capture_and_return(hold, 5 + n))


@settings(max_examples=30, deadline=None)
@given(n=over, leg=hs.sampled_from(["take", "post", "fee_net", "shield", "paid"]))
def test_settle_margin_side_stays_within_128_bits(n: int, leg: str) -> None:
    led, a = _ledger()
    hold = led.hold(a["wallet"], a["clearing"], 500)
    amounts = {"take": 0, "post": 0, "fee_net": 0, "shield": 0, "paid": 0}
    amounts[leg] = 5 + n
    # the counter the leg grows, 5 short of the limit
    account, counter = {"take": ("clearing", "debits_posted"), "post": ("margin", "credits_posted"),
                        "fee_net": ("fees", "credits_posted"), "shield": ("insurance", "credits_posted"),
                        "paid": ("pool", "credits_posted")}[leg]
    setattr(a[account], counter, MAX_AMOUNT - 5)
    if leg == "take":  # (clearing is credited what it pays back: it must stay within its credits)
        a["clearing"].credits_posted = MAX_AMOUNT

    def post() -> None:
        led.settle_margin_side(hold, amounts["take"], a["wallet"], a["margin"], 0, a["pool"], 0, amounts["paid"],
                               a["insurance"], 0, a["fees"], amounts["fee_net"], amounts["shield"], amounts["post"])

    _refused_or_done(led, n, post)


@settings(max_examples=30, deadline=None)
@given(n=over, side=hs.sampled_from(["base", "quote"]))
def test_settle_fill_stays_within_128_bits(n: int, side: str) -> None:
    led = Ledger()
    led.register_asset(Asset("USDT", 6, "crypto", "ethereum"))
    led.register_asset(Asset("BTC", 8, "crypto", "bitcoin"))
    c = led.open_clearing("btcusdt", "BTC", "USDT", "spot")
    buyer_usdt, buyer_btc = led.open_account("bob", "USDT", "available", "spot")[0], led.open_account("bob", "BTC", "available", "spot")[0]
    seller_usdt, seller_btc = led.open_account("sue", "USDT", "available", "spot")[0], led.open_account("sue", "BTC", "available", "spot")[0]
    led.move(led.world("USDT"), buyer_usdt, 1_000)
    led.move(led.world("BTC"), seller_btc, 1_000)
    bh = led.hold(buyer_usdt, c.quote, 100)
    sh = led.hold(seller_btc, c.base, 10)
    clearing = c.base if side == "base" else c.quote
    fill = 10 if side == "base" else 100
    clearing.debits_posted = clearing.credits_posted = MAX_AMOUNT - fill + n
    _refused_or_done(led, n, lambda: led.settle_fill(c, bh, sh, buyer_btc, seller_usdt, 10, 100, 0, 0, 0, 0))
