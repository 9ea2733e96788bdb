"""Property tests: conservation, no overdraft, idempotency and two-phase safety under random load.

Besides `check_invariants()`, every run is compared with an independent model: a dict of
balances updated only from the transfers the ledger reported as successful. If the ledger ever
moved money for a failed transfer, or moved the wrong amount, the two disagree.
"""

from hypothesis import given, note
from hypothesis import strategies as st

from ringfence.ledger.commands import CreateTransfers, OpenAccount, RegisterAsset
from ringfence.ledger.model import Transfer, TransferFlags
from ringfence.app import new_engine

OWNERS = ["a", "b", "c"]
P, POST, VOID, L = TransferFlags.PENDING, TransferFlags.POST_PENDING, TransferFlags.VOID_PENDING, TransferFlags.LINKED


def fresh():
    engine = new_engine()
    seq = [0]

    def run(command, ts):
        seq[0] += 1
        return engine.apply(command, seq[0], ts)

    run(RegisterAsset("BTC", 8, "crypto"), 1)
    for owner in OWNERS:
        run(OpenAccount(owner, "BTC"), 1)
    led = engine.ledger
    ids = [led.world("BTC").id] + [led.get(o, "BTC").id for o in OWNERS]
    return engine, run, ids


op = st.tuples(
    st.sampled_from(["plain", "pending", "post", "void", "dup", "linked"]),
    st.integers(0, 3),  # debit index
    st.integers(0, 3),  # credit index
    st.integers(-5, 2_000),  # amount
    st.integers(0, 30),  # id choice (small range => collisions and duplicates)
    st.integers(0, 3),  # time advance (x 1000 ns)
    st.booleans(),  # timeout on pending?
)


@given(st.lists(op, min_size=1, max_size=60))
def test_random_transfer_sequences_conserve_and_never_overdraw(ops):
    engine, run, ids = fresh()
    led = engine.ledger
    model = {i: 0 for i in ids}
    ts = 10
    history = {}
    for kind, d, c, amount, tid, adv, timeout in ops:
        ts += adv * 1_000
        tid += 1
        if kind == "plain":
            batch = [Transfer(tid, ids[d], ids[c], amount)]
        elif kind == "pending":
            batch = [Transfer(tid, ids[d], ids[c], amount, flags=P, timeout_ns=2_500 if timeout else 0)]
        elif kind in ("post", "void"):
            target = (tid * 7) % 31 + 1
            batch = [Transfer(tid + 100, 0, 0, max(amount, 0) % 700, pending_id=target, flags=POST if kind == "post" else VOID)]
        elif kind == "dup":
            batch = [history.get(tid, Transfer(tid, ids[d], ids[c], amount))]
        else:
            batch = [Transfer(tid, ids[d], ids[c], amount, flags=L), Transfer(tid + 200, ids[c], ids[d], amount // 2)]
        before_pending = {k: led.pending[k].remaining for k in led.pending if led.pending[k].status == "pending"}
        events = run(CreateTransfers(batch), ts)
        note(f"{kind} {batch} -> {events}")
        (result,) = [e for e in events if type(e).__name__ == "TransfersCreated"]
        failed = dict(result.failures)
        for index, t in enumerate(batch):
            if index in failed:
                continue
            history.setdefault(t.id, t)
            if t.flags & (POST | VOID):
                p = led.pending[t.pending_id]
                captured = before_pending[t.pending_id] - (p.remaining if p.status == "pending" else 0)
                if t.flags & POST:
                    model[p.debit.id] -= captured
                    model[p.credit.id] += captured
            elif not t.flags & P:
                model[t.debit_account_id] -= t.amount
                model[t.credit_account_id] += t.amount
        engine.check_invariants()
        assert {i: led.account(i).balance for i in ids} == model
        # a pending transfer never hands out more than it reserved
        for p in led.pending.values():
            assert 0 <= p.remaining <= p.amount


@given(st.lists(st.tuples(st.integers(1, 20), st.integers(1, 3), st.integers(1, 500)), min_size=1, max_size=40))
def test_replaying_the_same_batch_twice_applies_it_once(rows):
    engine, run, ids = fresh()
    run(CreateTransfers([Transfer(1_000, ids[0], ids[1], 10_000)]), 5)
    batch = [Transfer(tid, ids[1], ids[c], amount) for tid, c, amount in rows if ids[c] != ids[1]]
    if not batch:
        return
    run(CreateTransfers(batch), 6)
    balances = [engine.ledger.account(i).balance for i in ids]
    events = run(CreateTransfers(batch), 7)
    assert [engine.ledger.account(i).balance for i in ids] == balances
    codes = {code for _, code in events[0].failures}
    assert codes <= {"exists", "exists_with_different_fields", "exceeds_credits"}


@given(st.integers(1, 1_000), st.lists(st.integers(0, 1_200), min_size=1, max_size=10), st.booleans())
def test_two_phase_never_double_spends(amount, posts, void_at_end):
    engine, run, ids = fresh()
    a, b = ids[1], ids[2]
    run(CreateTransfers([Transfer(1, ids[0], a, amount)]), 2)
    run(CreateTransfers([Transfer(2, a, b, amount, flags=P)]), 3)
    # while reserved, nothing else can be spent
    assert run(CreateTransfers([Transfer(3, a, ids[3], 1)]), 4)[0].failures == [(0, "exceeds_credits")]
    total_posted = 0
    for i, x in enumerate(posts):
        events = run(CreateTransfers([Transfer(10 + i, 0, 0, x, pending_id=2, flags=POST)]), 5 + i)
        if not events[0].failures:
            p = engine.ledger.pending[2]
            total_posted = amount - p.remaining
    if void_at_end:
        run(CreateTransfers([Transfer(99, 0, 0, 0, pending_id=2, flags=VOID)]), 100)
    engine.check_invariants()
    assert engine.ledger.account(b).balance == total_posted <= amount
    assert engine.ledger.account(a).balance == amount - total_posted
