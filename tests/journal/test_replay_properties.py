"""Property: whatever commands run, a full replay and snapshot + tail replay give the live state hash."""

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from ringfence.errors import RingfenceError
from ringfence.ledger.commands import CreateTransfers, OpenAccount, RegisterAsset
from ringfence.ledger.model import Transfer, TransferFlags
from ringfence.app import new_node, replay_journal

step = st.tuples(
    st.sampled_from(["deposit", "move", "hold", "post", "void", "open", "bad", "snapshot", "batch"]),
    st.integers(0, 3),
    st.integers(0, 3),
    st.integers(0, 5_000),
)


@given(st.lists(step, min_size=1, max_size=40), st.integers(0, 2**32))
@settings(max_examples=60)
def test_replay_and_snapshot_replay_match_live(tmp_path_factory, steps, seed):
    path = tmp_path_factory.mktemp("replay")
    rng = random.Random(seed)
    clock = [10**18]

    def tick():
        clock[0] += rng.randrange(1, 10**7)
        return clock[0]

    node = new_node(path, clock=tick, entropy=rng.randbytes)
    node.open()
    node.execute_many([RegisterAsset("BTC", 8, "crypto")])
    owners = ["w", "x", "y", "z"]
    node.execute_many([OpenAccount(o, "BTC") for o in owners])
    led = node.engine.ledger
    ids = [led.get(o, "BTC").id for o in owners]
    world = led.world("BTC").id
    tid = 1
    snapshots = 0
    for kind, a, b, amount in steps:
        tid += 1
        try:
            if kind == "deposit":
                node.execute(CreateTransfers([Transfer(tid, world, ids[a], amount + 1)]))
            elif kind == "move":
                node.execute(CreateTransfers([Transfer(tid, ids[a], ids[b], amount + 1)]))
            elif kind == "hold":
                node.execute(CreateTransfers([Transfer(tid, ids[a], ids[b], amount + 1, flags=TransferFlags.PENDING, timeout_ns=rng.choice([0, 10**7]))]))
            elif kind in ("post", "void"):
                flag = TransferFlags.POST_PENDING if kind == "post" else TransferFlags.VOID_PENDING
                node.execute(CreateTransfers([Transfer(tid, 0, 0, amount % 3, pending_id=tid - 1 - b, flags=flag)]))
            elif kind == "open":
                node.execute(OpenAccount(f"n{a}{b}", "BTC"))
            elif kind == "bad":
                node.execute(OpenAccount("w", "NOPE"))
            elif kind == "snapshot":
                node.snapshot()
                snapshots += 1
            else:
                node.execute_many([CreateTransfers([Transfer(tid, world, ids[a], 5)]), CreateTransfers([Transfer(tid + 10_000, ids[a], ids[b], 3)])])
        except RingfenceError:
            pass
        node.engine.check_invariants()
    live = node.engine.state_hash()
    node.close()
    full, _, _ = replay_journal(path, use_snapshots=False)
    from_snap, report, _ = replay_journal(path)
    assert full.state_hash() == live
    assert from_snap.state_hash() == live
    assert (report.snapshot_seq > 0) == (snapshots > 0)
    reopened = new_node(path)
    reopened.open()
    assert reopened.engine.state_hash() == live
    reopened.close()
