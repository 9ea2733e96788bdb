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
from ringfence.ledger.account import Account
from ringfence.ledger.digest import DIGEST_TAG, _account_key, full_digest
from ringfence.ledger.ledger import Ledger, Pending
from ringfence.ledger.model import Transfer, TransferFlags

from .test_engine_api import USERS, fresh, user

op = st.tuples(
    st.sampled_from(["move", "hold", "resize", "resize_to", "capture", "release", "end", "fill",
                     "transfer", "pending", "post", "void", "chain", "expire", "open", "restart"]),
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
    for a in led.iter_accounts():  # what the digest keeps on each record is that account's own
        assert a.digest_key == _account_key(a), a
        assert _counters(a) == [a.digest_debits_pending, a.digest_debits_posted, a.digest_credits_pending,
                                a.digest_credits_posted], a
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
            elif kind == "restart":  # a restart (or a halt's rebuild): a ledger from the snapshot,
                # digested from nothing and then incrementally again, on new objects at the same ids
                led = Ledger.from_snapshot(led.snapshot_state())
                c = led.open_clearing("btcusdt", "BTC", "USDT", "spot")
                if fee_pm % 2:
                    led.digest()
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


def test_a_cached_key_is_used_only_for_the_object_it_was_computed_from():
    """The digest keeps each account's and pending transfer's identity hash by id; an object put in
    another's place at the same id (different identity fields) is hashed afresh, not taken for the
    one cached there."""
    led, c = fresh()
    hold = led.hold(user(led, "alice", "USDT"), c.quote, 10)
    led.digest()
    old = user(led, "bob", "BTC")
    other = Account(old.id, "bob", "BTC", "available", "margin", old.flags)  # another segment, same id
    other.credits_posted, other.debits_posted = old.credits_posted, old.debits_posted
    led.accounts[old.id] = other
    led._dirty.add(other)
    p = led.pending[hold]
    twin = Pending(p.id, p.debit, p.credit, p.amount, p.expires_at_ns + 1)  # another deadline, same id
    led.pending[hold] = twin
    led._dirty.add(twin)
    assert led.digest() == full_digest(led)


def _counters(a: Account) -> list[int]:
    return [a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted]


_FIELDS = ("debits_pending", "debits_posted", "credits_pending", "credits_posted")


@seed(20261206)
@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["add", "swap_accounts", "swap_fields", "pending_amount", "pending_remaining",
                        "pending_status", "pending_swap"]),
       st.integers(0, 1_000), st.integers(0, 1_000), st.integers(0, 3), st.integers(0, 3),
       st.integers(-(1 << 127), 1 << 127).filter(bool))
def test_any_change_of_a_counter_changes_the_digest(kind, i, j, f, g, delta):
    """The account and pending sums are linear in the counters (ledger/digest.py): what a plain sum
    of counters would miss — two accounts' counters swapped, two counters of one account swapped,
    a value moved from one account to another, a huge or a negative difference — still changes
    the digest."""
    led, c = fresh()
    holds = [led.hold(user(led, u, "USDT"), c.quote, 10 + k) for k, u in enumerate(USERS)]
    led.capture(holds[0], 3)
    before = full_digest(led)
    accounts = [a for a in led.iter_accounts()]
    a, b = accounts[i % len(accounts)], accounts[j % len(accounts)]
    p, q = led.pending[holds[i % 3]], led.pending[holds[j % 3]]
    if kind == "add":  # one counter moves (a value moved between accounts is two of these)
        setattr(a, _FIELDS[f], getattr(a, _FIELDS[f]) + delta)
    elif kind == "swap_accounts":
        if _counters(a) == _counters(b):
            return
        va, vb = _counters(a), _counters(b)
        for name, x, y in zip(_FIELDS, vb, va):
            setattr(a, name, x)
            setattr(b, name, y)
    elif kind == "swap_fields":
        x, y = getattr(a, _FIELDS[f]), getattr(a, _FIELDS[g])
        if x == y:
            return
        setattr(a, _FIELDS[f], y)
        setattr(a, _FIELDS[g], x)
    elif kind == "pending_amount":
        p.amount += delta
    elif kind == "pending_remaining":
        p.remaining += delta
    elif kind == "pending_status":
        statuses = ["pending", "posted", "voided", "expired"]
        p.status = statuses[(statuses.index(p.status) + 1 + f % 3) % 4]
    else:  # two pending transfers' amounts and what remains of them swapped
        if (p.amount, p.remaining) == (q.amount, q.remaining):
            return
        p.amount, q.amount, p.remaining, q.remaining = q.amount, p.amount, q.remaining, p.remaining
    assert full_digest(led) != before


def test_the_digest_names_its_version():
    """v2 (linear account and pending sums, transfers folded in one encoding) digests differently
    from v1: a replica of the other version must be told apart (`Rf-Digest-Format`, test_follower)."""
    assert DIGEST_TAG == b"ringfence-ledger-digest-v2"
