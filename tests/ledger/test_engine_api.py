"""The ledger's engine-side API (hold, resize_hold, capture, release, end_hold, move, settle_fill):
each call neither creates nor destroys a minor unit, never overdraws a user account, and refuses
(with `InvariantViolation`, which halts the shard) anything its pre-conditions do not allow —
leaving the ledger as it was.

One test per function checks the per-asset sums around a single call; a seeded hypothesis
property then drives random sequences of all of them (valid and invalid) and checks, after every
call, that each asset's balances and pending amounts sum to zero and no user account is overdrawn.
"""

from __future__ import annotations

import pytest

from ringfence.errors import ValidationError
from hypothesis import given, note, seed, settings
from hypothesis import strategies as st

from ringfence.errors import InvariantViolation
from ringfence.ledger.ledger import ClearingAccounts, Ledger
from ringfence.ledger.model import AccountFlags
from ringfence.money import Asset, AssetClass

USERS = ["alice", "bob", "carol"]


def fresh() -> tuple[Ledger, ClearingAccounts]:
    led = Ledger()
    led.register_asset(Asset("BTC", 8, AssetClass.CRYPTO, "bitcoin"))
    led.register_asset(Asset("USDT", 6, AssetClass.CRYPTO, "ethereum"))
    for u in USERS:
        for a in ("BTC", "USDT"):
            led.move(led.world(a), led.open_account(u, a, "available", "spot")[0], 1_000_000)
    return led, led.open_clearing("btcusdt", "BTC", "USDT", "spot")


def sums(led: Ledger) -> dict[str, tuple[int, int]]:
    """Per asset: (sum of posted balances, sum of pending credits - debits). Both must be zero."""
    out: dict[str, tuple[int, int]] = {}
    for a in led.iter_accounts():
        posted, pending = out.get(a.asset, (0, 0))
        out[a.asset] = (posted + a.balance, pending + a.credits_pending - a.debits_pending)
    return out


def state(led: Ledger) -> list:
    return led.snapshot_state()


def assert_conserved(led: Ledger) -> None:
    assert all(v == (0, 0) for v in sums(led).values()), sums(led)
    for a in led.iter_accounts():
        if a.flags & AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS:
            assert a.debits_posted + a.debits_pending <= a.credits_posted, f"{a.name} overdrawn"
    led.check_invariants()


def user(led: Ledger, owner: str, asset: str):
    return led.get(owner, asset)


# ------------------------------------------------------------------ one test per function


def test_move_conserves_and_refuses_an_overdraft():
    led, _ = fresh()
    led.move(user(led, "alice", "BTC"), user(led, "bob", "BTC"), 400)
    assert user(led, "bob", "BTC").balance == 1_000_400
    assert_conserved(led)
    before = state(led)
    with pytest.raises(InvariantViolation):
        led.move(user(led, "alice", "BTC"), user(led, "bob", "BTC"), 2_000_000)
    with pytest.raises(InvariantViolation):
        led.move(user(led, "alice", "BTC"), user(led, "bob", "USDT"), 1)
    assert state(led) == before


def test_hold_reserves_without_moving_and_respects_available():
    led, c = fresh()
    alice = user(led, "alice", "USDT")
    assert led.can_hold(alice, 1_000_000) and not led.can_hold(alice, 1_000_001)
    hid = led.hold(alice, c.quote, 600_000)
    assert (alice.balance, alice.available, led.hold_remaining(hid)) == (1_000_000, 400_000, 600_000)
    view = led.pending_hold(hid)
    assert view is not None and (view.debit_id, view.credit_id, view.asset, view.status) == (alice.id, c.quote.id, "USDT", "pending")
    assert_conserved(led)
    before = state(led)
    for bad in (0, -1, 400_001):
        with pytest.raises(InvariantViolation):
            led.hold(alice, c.quote, bad)
    assert state(led) == before


def test_resize_hold_grows_within_available_and_shrinks_above_zero():
    led, c = fresh()
    alice = user(led, "alice", "USDT")
    hid = led.hold(alice, c.quote, 500_000)
    led.resize_hold(hid, 300_000)
    assert (led.hold_remaining(hid), alice.available) == (800_000, 200_000)
    led.resize_hold(hid, -700_000)
    assert (led.hold_remaining(hid), alice.available) == (100_000, 900_000)
    assert_conserved(led)
    before = state(led)
    for bad in (900_001, -100_000, -100_001):
        with pytest.raises(InvariantViolation):
            led.resize_hold(hid, bad)
    assert state(led) == before


def test_resize_hold_to_grows_if_affordable_refuses_without_change_and_shrinks():
    led, c = fresh()
    alice, bob = user(led, "alice", "USDT"), user(led, "bob", "USDT")
    hid = led.hold(alice, c.quote, 500_000)
    assert led.resize_hold_to(hid, alice, 500_000)  # already what it needs: nothing to do
    assert led.resize_hold_to(hid, alice, 800_000)
    assert (led.hold_remaining(hid), alice.available, led.pending_hold(hid).amount) == (800_000, 200_000, 800_000)  # type: ignore[union-attr]
    before = state(led)
    assert not led.resize_hold_to(hid, alice, 1_000_001)  # would overdraw alice: refused, nothing changed
    assert state(led) == before
    assert led.resize_hold_to(hid, alice, 100_000)
    assert (led.hold_remaining(hid), alice.available) == (100_000, 900_000)
    assert_conserved(led)
    before = state(led)
    for payer, need in ((alice, 0), (alice, -1), (bob, 200_000)):  # nothing left, or not the payer's hold
        with pytest.raises(InvariantViolation):
            led.resize_hold_to(hid, payer, need)
    assert state(led) == before
    led.end_hold(hid)
    assert led.resize_hold_to(hid, alice, 0)  # a hold that is gone, asked for nothing
    assert not led.resize_hold_to(hid, alice, 2_000_000)  # ... asked for more than alice has
    with pytest.raises(InvariantViolation):
        led.resize_hold_to(hid, alice, 1)
    assert led.pending_hold(hid) is None


def test_capture_posts_part_of_a_hold_and_never_more():
    led, c = fresh()
    alice = user(led, "alice", "USDT")
    hid = led.hold(alice, c.quote, 500_000)
    led.capture(hid, 200_000)
    assert (alice.balance, led.hold_remaining(hid), c.quote.balance) == (800_000, 300_000, 200_000)
    led.move(c.quote, user(led, "bob", "USDT"), 200_000)  # clearing passes it on
    assert_conserved(led)
    before = state(led)
    for bad in (0, 300_001):
        with pytest.raises(InvariantViolation):
            led.capture(hid, bad)
    assert state(led) == before
    led.capture(hid, 300_000)
    assert led.pending_hold(hid).status == "posted"  # type: ignore[union-attr]
    with pytest.raises(InvariantViolation):
        led.capture(hid, 1)


def test_release_and_end_hold_give_back_what_remains():
    led, c = fresh()
    alice = user(led, "alice", "USDT")
    hid = led.hold(alice, c.quote, 500_000)
    led.capture(hid, 100_000)
    led.move(c.quote, user(led, "bob", "USDT"), 100_000)
    assert led.release(hid) == 400_000
    assert (alice.available, led.release(hid)) == (900_000, 0)
    assert led.end_hold(hid) == 0 and led.pending_hold(hid) is None
    other = led.hold(alice, c.quote, 1_000)
    assert led.end_hold(other) == 1_000 and alice.available == 900_000
    assert_conserved(led)
    with pytest.raises(InvariantViolation):
        led.end_hold(other)  # already forgotten
    with pytest.raises(InvariantViolation):
        led.end_hold(5)  # a client's pending transfer id: kept for idempotency


def test_settle_fill_moves_both_legs_fees_and_shield_and_clears_clearing():
    led, c = fresh()
    buyer_pay, seller_pay = user(led, "alice", "USDT"), user(led, "bob", "BTC")
    bh, sh = led.hold(buyer_pay, c.quote, 300_000), led.hold(seller_pay, c.base, 1_000)
    led.settle_fill(c, bh, sh, user(led, "alice", "BTC"), user(led, "bob", "USDT"), 1_000, 300_000, 3, 0, 300, 30)
    assert user(led, "alice", "BTC").balance == 1_000_000 + 1_000 - 3
    assert user(led, "bob", "USDT").balance == 1_000_000 + 300_000 - 300
    assert (c.base_fees.balance, c.base_shield.balance, c.quote_fees.balance, c.quote_shield.balance) == (3, 0, 270, 30)
    assert c.base.balance == 0 and c.quote.balance == 0
    assert led.pending_hold(bh).status == "posted" and led.pending_hold(sh).status == "posted"  # type: ignore[union-attr]
    assert_conserved(led)


@pytest.mark.parametrize("args", [
    (2_000, 300_000, 3, 0, 300, 30),   # more base than the seller's hold
    (1_000, 300_001, 3, 0, 300, 30),   # more quote than the buyer's hold
    (1_000, 300_000, 1_001, 0, 300, 30),  # buyer's fee above what the buyer receives
    (1_000, 300_000, 3, 4, 300, 30),   # shield share above the fee
    (1_000, 300_000, 3, 0, -1, 0),     # negative fee
    (0, 300_000, 0, 0, 300, 30),       # nothing delivered
])
def test_settle_fill_refuses_a_fill_that_does_not_add_up(args):
    led, c = fresh()
    bh, sh = led.hold(user(led, "alice", "USDT"), c.quote, 300_000), led.hold(user(led, "bob", "BTC"), c.base, 1_000)
    before = state(led)
    with pytest.raises(InvariantViolation):
        led.settle_fill(c, bh, sh, user(led, "alice", "BTC"), user(led, "bob", "USDT"), *args)
    assert state(led) == before


def test_settle_fill_refuses_legs_that_are_not_the_markets():
    led, c = fresh()
    bh, sh = led.hold(user(led, "alice", "USDT"), c.quote, 300_000), led.hold(user(led, "bob", "BTC"), c.base, 1_000)
    other = led.open_clearing("other", "BTC", "USDT", "spot")
    before = state(led)
    with pytest.raises(InvariantViolation):
        led.settle_fill(other, bh, sh, user(led, "alice", "BTC"), user(led, "bob", "USDT"), 1_000, 300_000, 0, 0, 0, 0)
    with pytest.raises(InvariantViolation):  # receiver of the wrong asset
        led.settle_fill(c, bh, sh, user(led, "alice", "USDT"), user(led, "bob", "USDT"), 1_000, 300_000, 0, 0, 0, 0)
    with pytest.raises(InvariantViolation):  # buyer and seller holds swapped
        led.settle_fill(c, sh, bh, user(led, "alice", "BTC"), user(led, "bob", "USDT"), 1_000, 300_000, 0, 0, 0, 0)
    assert state(led) == before


def test_open_system_account_and_capacity():
    led, _ = fresh()
    onchain = led.open_system_account("BTC", "onchain", "-")
    assert onchain is led.open_system_account("BTC", "onchain", "-") and onchain.flags == 0
    with pytest.raises(ValidationError):
        led.open_system_account("BTC", "Bad Kind", "-")
    n = len(list(led.iter_accounts()))
    led.max_accounts = n + 1
    assert led.can_open_accounts(1) and not led.can_open_accounts(2)


# ------------------------------------------------------------------ random sequences

op = st.tuples(
    st.sampled_from(["move", "hold", "resize", "resize_to", "capture", "release", "end", "fill"]),
    st.integers(0, 2),  # a user
    st.integers(0, 2),  # another user
    st.sampled_from(["BTC", "USDT"]),
    st.integers(-5, 1_200_000),  # an amount
    st.integers(0, 20),  # which open hold
    st.integers(0, 1_000),  # fee permille of what the receiver gets
)


@seed(20261203)
@settings(max_examples=200, deadline=None)
@given(st.lists(op, min_size=1, max_size=50))
def test_random_api_sequences_conserve_every_asset_and_never_overdraw(ops):
    led, c = fresh()
    holds: list[int] = []
    for kind, i, j, asset, amount, k, fee_pm in ops:
        a, b = user(led, USERS[i], asset), user(led, USERS[j], asset)
        clearing = c.base if asset == "BTC" else c.quote
        hid = holds[k % len(holds)] if holds else 0
        before = state(led)
        try:
            if kind == "move":
                led.move(a, b if a is not b else clearing, amount)
            elif kind == "hold":
                holds.append(led.hold(a, clearing, amount))
            elif kind == "resize":
                led.resize_hold(hid, amount - 600_000)
            elif kind == "resize_to":
                view = led.pending_hold(hid)
                payer = led.account(view.debit_id) if view is not None and i else a  # sometimes the wrong payer
                if not led.resize_hold_to(hid, payer, amount - 5):
                    assert state(led) == before, "resize_hold_to refused but changed the ledger"
            elif kind == "capture":
                p = led.pending_hold(hid)
                led.capture(hid, amount)
                assert p is not None  # (capture refuses an unknown hold)
                led.move(led.account(p.credit_id), user(led, USERS[j], p.asset), amount)  # clearing passes it on
            elif kind == "release":
                led.release(hid)
            elif kind == "end":
                led.end_hold(hid)
                holds.remove(hid)
            else:  # a fill between a USDT hold (buyer) and a BTC hold (seller)
                views = [led.pending_hold(h) for h in holds]
                qh = next((v for v in views if v and v.status == "pending" and v.asset == "USDT"), None)
                bh = next((v for v in views if v and v.status == "pending" and v.asset == "BTC"), None)
                if qh is None or bh is None:
                    continue
                base, quote = min(bh.remaining, amount + 1), min(qh.remaining, amount + 1)
                b_fee, s_fee = base * fee_pm // 1000, quote * fee_pm // 1000
                led.settle_fill(c, qh.id, bh.id, user(led, USERS[j], "BTC"), user(led, USERS[i], "USDT"),
                                base, quote, b_fee, b_fee // 10, s_fee, s_fee // 10)
        except InvariantViolation as err:
            note(f"{kind} refused: {err}")
            assert state(led) == before, f"{kind} refused but changed the ledger"
        assert_conserved(led)
