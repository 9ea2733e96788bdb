"""The ledger's incremental digest (ledger/digest.py) always equals the digest computed from nothing.

A seeded hypothesis property drives random sequences of every kind of ledger change — client
transfers (single-phase, pending, post, void, linked chains that fail and are undone, refusals),
expiry, and the engine-side API (move, hold, resize, capture, release, end_hold, settle_fill),
valid and invalid — and takes the digest at random points: each time, `Ledger.digest()` (updated
from what changed) must equal `full_digest` (computed from nothing) and the digest of a ledger
restored from the snapshot. A negative control shows the comparison can fail: a counter changed
behind the ledger's back (not marked dirty) makes the two differ.
"""

from __future__ import annotations

from hypothesis import given, note, seed, settings
from hypothesis import strategies as st

from ringfence.errors import InvariantViolation
from ringfence.ledger.digest import full_digest
from ringfence.ledger.ledger import Ledger
from ringfence.ledger.model import Transfer, TransferFlags

from .test_engine_api import USERS, fresh, user

op = st.tuples(
    st.sampled_from(["move", "hold", "resize", "resize_to", "capture", "release", "end", "fill",
                     "transfer", "pending", "post", "void", "chain", "expire", "open"]),
    st.integers(0, 2),  # a user
    st.integers(0, 2),  # another user
    st.sampled_from(["BTC", "USDT"]),
    st.integers(-5, 1_200_000),  # an amount
    st.integers(0, 20),  # which open hold / pending transfer
    st.integers(0, 1_000),  # fee permille
    st.booleans(),  # take the digest after this step
)


def check(led: Ledger) -> None:
    incremental = led.digest()
    assert incremental == full_digest(led), "the incremental digest differs from the full recomputation"
    assert Ledger.from_snapshot(led.snapshot_state()).digest() == incremental, "a restored ledger digests differently"


@seed(20261204)
@settings(max_examples=150, deadline=None)
@given(st.lists(op, min_size=1, max_size=60))
def test_incremental_digest_equals_the_full_recomputation(ops):
    led, c = fresh()
    led.digest()  # start tracking from here (the first call computes everything)
    holds: list[int] = []
    client_pending: list[int] = []
    next_tid = [1]
    now = [1_000]

    def tid() -> int:
        next_tid[0] += 1
        return next_tid[0]

    for kind, i, j, asset, amount, k, fee_pm, take in ops:
        a, b = user(led, USERS[i], asset), user(led, USERS[j], asset)
        clearing = c.base if asset == "BTC" else c.quote
        hid = holds[k % len(holds)] if holds else 0
        pid = client_pending[k % len(client_pending)] if client_pending else 0
        now[0] += 1_000
        try:
            if kind == "move":
                led.move(a, b if a is not b else clearing, amount)
            elif kind == "hold":
                holds.append(led.hold(a, clearing, amount))
            elif kind == "resize":
                led.resize_hold(hid, amount - 600_000)
            elif kind == "resize_to":
                led.resize_hold_to(hid, a, amount - 5)
            elif kind == "capture":
                led.capture(hid, amount)
            elif kind == "release":
                led.release(hid)
            elif kind == "end":
                led.end_hold(hid)
                holds.remove(hid)
            elif kind == "fill":
                views = [led.pending_hold(h) for h in holds]
                qh = next((v for v in views if v and v.status == "pending" and v.asset == "USDT"), None)
                bh = next((v for v in views if v and v.status == "pending" and v.asset == "BTC"), None)
                if qh is not None and bh is not None:
                    base, quote = min(bh.remaining, amount + 1), min(qh.remaining, amount + 1)
                    b_fee, s_fee = base * fee_pm // 1000, quote * fee_pm // 1000
                    led.settle_fill(c, qh.id, bh.id, user(led, USERS[j], "BTC"), user(led, USERS[i], "USDT"),
                                    base, quote, b_fee, b_fee // 10, s_fee, s_fee // 10)
            elif kind == "transfer":  # single-phase (fast path when it succeeds), or refused
                led.create_transfers([Transfer(tid(), a.id, b.id, amount)], now[0])
            elif kind == "pending":
                t = tid()
                timeout = 2_000 * (fee_pm % 3)
                fails = led.create_transfers([Transfer(t, a.id, b.id, amount, timeout_ns=timeout,
                                                       flags=TransferFlags.PENDING)], now[0])
                if not fails:
                    client_pending.append(t)
            elif kind in ("post", "void"):
                flag = TransferFlags.POST_PENDING if kind == "post" else TransferFlags.VOID_PENDING
                led.create_transfers([Transfer(tid(), 0, 0, amount % 1000, pending_id=pid, flags=flag)], now[0])
            elif kind == "chain":  # a linked chain; its last leg may fail, undoing the others
                legs = [Transfer(tid(), a.id, b.id, 1 + amount % 500, flags=TransferFlags.LINKED),
                        Transfer(tid(), b.id, a.id, 1 + amount % 300, flags=TransferFlags.LINKED | TransferFlags.PENDING),
                        Transfer(tid(), a.id, b.id, amount if fee_pm % 2 else 1)]
                led.create_transfers(legs, now[0])
            elif kind == "expire":
                now[0] += 5_000
                led.expire_due(now[0])
            else:  # open a new account (and fund it)
                new, _ = led.open_account(f"user{amount % 7}", asset, "available", "spot")
                led.move(led.world(asset), new, 1 + amount % 1000)
        except InvariantViolation as err:
            note(f"{kind} refused: {err}")
        if take:
            check(led)
    check(led)


def test_a_change_behind_the_ledgers_back_makes_the_digests_differ():
    """Negative control: the comparison above can fail."""
    led, _ = fresh()
    led.digest()
    alice = user(led, "alice", "BTC")
    alice.credits_posted += 1  # not through the ledger: nothing is marked dirty
    assert led.digest() != full_digest(led)


def test_the_digest_follows_every_change_and_only_changes():
    led, c = fresh()
    first = led.digest()
    assert led.digest() == first  # nothing changed
    hold = led.hold(user(led, "alice", "USDT"), c.quote, 10)
    second = led.digest()
    assert second != first
    led.release(hold)
    third = led.digest()
    assert third not in (first, second)  # the pending transfer is still there, voided
    led.end_hold(hold)
    assert led.digest() == full_digest(led)
