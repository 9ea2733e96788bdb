"""Readers on other threads see the engine between batches, never a batch half applied.

Two tests against a real `Node` (journal on disk, sequencer thread running):

* deterministic: the sequencer is paused after the first command of a two-command batch (a test
  hook on `engine.apply`); while it is paused a `node.read` waits, `node.last_seq` and the first
  command's `Ack` still show the batch before, and once released the read returns the state after
  the whole batch;
* stress: a writer thread submits thousands of orders, cancels and transfers (posted, pending,
  posted-from-pending, voided) while a reader thread keeps checking, through `node.read`, every
  engine invariant (each asset sums to zero, holds equal open reservations and open orders, the
  book is never crossed) and that `last_seq` never goes back. The GIL switch interval is cut to
  10 us so that, without the gate, the reader is interrupted mid-read all the time.

To see what readers saw before `Node.read` existed (reading `node.engine` directly, as the API and
the reconciler did), run this file as a script:

    PYTHONPATH=src python tests/journal/test_node_reads.py --direct

It prints the torn views the same reader finds without the gate (and `--gate` for the gated run).
"""

from __future__ import annotations

import itertools
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from ringfence.app import new_node
from ringfence.engine.node import Node
from ringfence.errors import InvariantViolation
from ringfence.ledger.commands import CreateTransfers, OpenAccount, RegisterAsset
from ringfence.ledger.model import Transfer, TransferFlags
from ringfence.trading.commands import CancelAll, ListMarket, PlaceOrder
from ringfence.trading.state import trading_state

SYMBOL = "BTCUSDT"
USERS = [f"u{i}" for i in range(12)]
PRICE = 61_000 * 10**6  # USDT minor units per whole BTC
TICK = 10**6
LOT = 10**4


def _open(path: Path, **kwargs: Any) -> Node:
    ticks = itertools.count(1)
    node = new_node(path, fsync=False, clock=lambda: next(ticks) * 1_000_000, **kwargs)
    node.open()
    node.execute_many([RegisterAsset("BTC", 8, "crypto", "bitcoin"), RegisterAsset("USDT", 6, "crypto", "ethereum")])
    node.execute(ListMarket(SYMBOL, "BTC", "USDT", "spot", tick_size=TICK, lot_size=LOT, min_qty=LOT, band_ppm=0))
    node.execute_many([OpenAccount(u, a) for u in USERS for a in ("BTC", "USDT")])
    ledger = node.engine.ledger
    deposits = []
    for i, u in enumerate(USERS):
        deposits.append(Transfer(1_000 + 2 * i, ledger.world("BTC").id, ledger.get(u, "BTC").id, 50 * 10**8))
        deposits.append(Transfer(1_001 + 2 * i, ledger.world("USDT").id, ledger.get(u, "USDT").id, 3_000_000 * 10**6))
    node.execute(CreateTransfers(deposits))
    return node


def _balance(engine: Any, owner: str, asset: str) -> tuple[int, int]:
    account = engine.ledger.get(owner, asset)
    return account.credits_posted - account.debits_posted, account.debits_pending


# ----------------------------------------------------------------------------- deterministic


def test_a_read_waits_for_the_batch_being_applied(tmp_path: Path) -> None:
    node = _open(tmp_path, max_wait_us=100_000)  # the sequencer waits up to 100 ms to fill a batch
    ledger = node.engine.ledger
    u0, u1, u2 = (ledger.get(u, "USDT").id for u in USERS[:3])
    paused, release = threading.Event(), threading.Event()
    node.start()
    try:
        before_seq = node.last_seq
        before = node.read(lambda e: [_balance(e, u, "USDT") for u in USERS[:3]])
        real_apply = node.engine.apply
        calls = itertools.count()

        def apply_then_pause(command: Any, seq: int, ts_ns: int, entropy: bytes = b"") -> Any:
            events = real_apply(command, seq, ts_ns, entropy)
            if next(calls) == 0:  # after the first command of the batch: the sequencer stops here
                paused.set()
                assert release.wait(30), "the test never released the sequencer"
            return events

        node.engine.apply = apply_then_pause  # type: ignore[method-assign]
        # u0 -> u1, then u1 -> u2: between the two, u1 holds money that the batch passes on
        first = node.submit(CreateTransfers([Transfer(50_001, u0, u1, 7 * 10**6)]))
        second = node.submit(CreateTransfers([Transfer(50_002, u1, u2, 7 * 10**6)]))
        assert paused.wait(30), "the sequencer never reached the hook"
        seen: list[Any] = []
        reader = threading.Thread(target=lambda: seen.append(node.read(lambda e: (e.last_seq, [_balance(e, u, "USDT") for u in USERS[:3]]))))
        reader.start()
        reader.join(0.3)
        # half a batch is applied: nothing of it may be visible yet
        assert reader.is_alive() and seen == [], "a read ran while a batch was half applied"
        assert node.last_seq == before_seq, "last_seq moved before the batch was applied"
        assert not first.done(), "a command was acknowledged before its whole batch was applied"
        release.set()
        reader.join(30)
        assert not reader.is_alive()
        first.result(30)
        second.result(30)
        [(seq, after)] = seen
        (b0, _), (b1, _), (b2, _) = before
        assert node.last_seq == before_seq + 2
        if seq == before_seq + 2:  # the state after the whole batch
            assert after == [(b0 - 7 * 10**6, 0), (b1, 0), (b2 + 7 * 10**6, 0)]
        else:  # only if the second submit missed the batch's 100 ms window (a stalled machine)
            assert seq == before_seq + 1 and after == [(b0 - 7 * 10**6, 0), (b1 + 7 * 10**6, 0), (b2, 0)]
    finally:
        release.set()
        node.close()


def test_node_read_refuses_to_apply_from_inside_a_read(tmp_path: Path) -> None:
    """Without a sequencer thread, `execute` applies on the caller's thread: from inside a read it
    would wait for itself. It is refused instead of hanging."""
    node = _open(tmp_path)
    try:
        with pytest.raises(RuntimeError, match="inside node.read"):
            node.read(lambda e: node.execute(OpenAccount("late", "BTC")))
        node.execute(OpenAccount("late", "BTC"))  # the gate was released
        assert node.read(lambda e: e.ledger.find("late", "BTC") is not None)
    finally:
        node.close()


def test_engine_doc_example_runs() -> None:
    """The example under "How readers see state" in docs/engine.md is this test."""
    import re

    text = (Path(__file__).resolve().parents[2] / "docs" / "engine.md").read_text()
    section = text.split("## How readers see state", 1)[1].split("\n## ", 1)[0]
    [block] = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    exec(compile(block, "docs/engine.md", "exec"), {})


# ----------------------------------------------------------------------------- stress


def _write(node: Node, stop: threading.Event, seed: int, counts: dict[str, int]) -> None:
    rng = random.Random(seed)
    ledger_ids = node.read(lambda e: {u: (e.ledger.get(u, "BTC").id, e.ledger.get(u, "USDT").id) for u in USERS})
    next_id = itertools.count(100_000)
    pendings: list[tuple[int, int]] = []  # (id, amount)
    while not stop.is_set():
        acks = []
        for _ in range(200):
            owner = rng.choice(USERS)
            roll = rng.random()
            if roll < 0.5:
                side = rng.choice(("BUY", "SELL"))
                price = PRICE + rng.randint(-20, 20) * TICK
                acks.append(node.submit(PlaceOrder(owner, SYMBOL, side, price=price, quantity=rng.randint(1, 50) * LOT)))
                counts["orders"] += 1
            elif roll < 0.6:
                acks.append(node.submit(CancelAll(owner, SYMBOL)))
                counts["cancels"] += 1
            else:
                transfers = []
                for _ in range(rng.randint(1, 4)):
                    a, b = rng.sample(USERS, 2)
                    asset = rng.randrange(2)
                    debit, credit = ledger_ids[a][asset], ledger_ids[b][asset]
                    amount = rng.randint(1, 10**6)
                    kind = rng.random()
                    if kind < 0.5:
                        transfers.append(Transfer(next(next_id), debit, credit, amount))
                    elif kind < 0.8 or not pendings:
                        tid = next(next_id)
                        transfers.append(Transfer(tid, debit, credit, amount, flags=TransferFlags.PENDING))
                        pendings.append((tid, amount))
                    else:
                        pid, left = pendings.pop(rng.randrange(len(pendings)))
                        if rng.random() < 0.5:
                            transfers.append(Transfer(next(next_id), 0, 0, rng.randint(1, left), pending_id=pid,
                                                      flags=TransferFlags.POST_PENDING))
                        else:
                            transfers.append(Transfer(next(next_id), 0, 0, 0, pending_id=pid, flags=TransferFlags.VOID_PENDING))
                acks.append(node.submit(CreateTransfers(transfers)))
                counts["transfers"] += len(transfers)
        for ack in acks:
            ack.wait(60)  # rejections (a post of a pending that expired...) are fine; errors are not


def _check(engine: Any) -> tuple[int, str | None]:
    """Every invariant the engine states, plus the book; returns (last_seq, what is broken)."""
    last_seq = engine.last_seq
    try:
        engine.check_invariants()  # each asset sums to zero, holds == open reservations, books
        market = trading_state(engine).markets[SYMBOL]
        bid, ask = market.best_bid(), market.best_ask()
        if bid and ask and bid >= ask:
            return last_seq, f"book crossed: bid {bid} >= ask {ask}"
    except (InvariantViolation, RuntimeError, LookupError) as err:  # what a torn read looks like: a
        # broken invariant, a dict that changed size while it was iterated, an order gone missing
        return last_seq, f"{type(err).__name__}: {err}"
    return last_seq, None


def hammer(node: Node, read: Callable[[Callable[[Any], Any]], Any], seconds: float, seed: int = 7) -> dict[str, Any]:
    """Write for `seconds` while a reader checks invariants through `read`; returns what it saw."""
    stop = threading.Event()
    counts = {"orders": 0, "cancels": 0, "transfers": 0}
    writer = threading.Thread(target=_write, args=(node, stop, seed, counts), name="writer")
    torn: list[str] = []
    reads = 0
    last = 0
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    writer.start()
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            seq, broken = read(_check)
            reads += 1
            if seq < last:
                torn.append(f"last_seq went back from {last} to {seq}")
            last = max(last, seq)
            if broken is not None:
                torn.append(f"at seq {seq}: {broken}")
    finally:
        stop.set()
        writer.join(120)
        sys.setswitchinterval(old_interval)
    return {"reads": reads, "torn": torn, "last_seq": node.last_seq, **counts}


def test_readers_never_see_a_batch_half_applied(tmp_path: Path) -> None:
    node = _open(tmp_path)
    node.start()
    try:
        seen = hammer(node, node.read, seconds=4.0)
    finally:
        node.close()
    assert seen["reads"] > 50 and seen["orders"] > 1000 and seen["transfers"] > 1000, seen
    assert seen["torn"] == [], f"{len(seen['torn'])} torn reads out of {seen['reads']}, first: {seen['torn'][:5]}"
    # the node itself stayed healthy and consistent, and replay agrees with it
    from ringfence.app import replay_journal

    replayed, _, _ = replay_journal(tmp_path, use_snapshots=False)
    assert replayed.last_seq == seen["last_seq"]


if __name__ == "__main__":  # the demonstration described in the module docstring
    import tempfile

    direct = "--gate" not in sys.argv
    with tempfile.TemporaryDirectory() as tmp:
        node = _open(Path(tmp))
        node.start()
        try:
            read = (lambda fn: fn(node.engine)) if direct else node.read
            seen = hammer(node, read, seconds=4.0)
        finally:
            node.close()
    print(f"{'direct node.engine' if direct else 'node.read'}: {seen['reads']} reads, {len(seen['torn'])} torn, "
          f"{seen['orders']} orders, {seen['transfers']} transfers, last_seq {seen['last_seq']}")
    for line in seen["torn"][:10]:
        print("  ", line[:200])
    sys.exit(1 if seen["torn"] else 0)
