"""Deterministic simulation (in the spirit of TigerBeetle's VOPR) of one durable engine shard.

`run_simulation(seed, steps, data_dir)` drives a real `Node` on real files with a seeded stream
of valid and invalid commands, crashes it at random points (abandoning the process state, often
leaving a torn half-written batch at the journal's end), restarts it through recovery, takes
snapshots, and after every step checks:

* the ledger invariants (`check_invariants`: conservation, no overdraft, reservations consistent);
* that an independent model of acknowledged transfers agrees with every balance;
* after a crash, that the recovered state hash equals the hash before the crash (everything that
  was acknowledged survived, nothing unacknowledged appeared);
* at the end, that a full replay of the journal from genesis reproduces the live state hash.

Everything random comes from `random.Random(seed)`, including the node's clock and entropy, so a
seed reproduces a run exactly. A violation raises `SimulationFailure` naming the seed and step.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .engine.node import Node
from .errors import RingfenceError
from .journal.journal import encode_record, segment_paths
from .ledger.commands import CreateTransfers, OpenAccount, RegisterAsset
from .ledger.model import Transfer, TransferFlags
from . import app
from .app import replay_journal

__all__ = ["run_simulation", "SimulationFailure", "SimulationResult"]

OWNERS = ("ann", "ben", "cat", "dan", "eve")
ASSETS = (("BTC", 8, "crypto", "bitcoin"), ("USDT", 6, "crypto", "ethereum"), ("AAPLX", 4, "tokenized", ""))


class SimulationFailure(AssertionError):
    def __init__(self, seed: int, step: int, what: str) -> None:
        super().__init__(f"simulation seed={seed} failed at step {step}: {what}\n"
                         f"reproduce with: ringfence sim --seed {seed} --steps {step + 1}")
        self.seed, self.step, self.what = seed, step, what


@dataclass
class SimulationResult:
    seed: int
    steps: int
    commands_acknowledged: int = 0
    commands_rejected: int = 0
    transfers_failed: int = 0
    crashes: int = 0
    torn_tails: int = 0
    snapshots: int = 0
    state_hash: str = ""
    counts: dict[str, int] = field(default_factory=dict)


def run_simulation(
    seed: int,
    steps: int,
    data_dir: Path,
    *,
    crash_probability_pct: int = 4,
    on_step: Callable[[int], None] | None = None,
) -> SimulationResult:
    rng = random.Random(seed)
    clock_ns = [1_700_000_000_000_000_000]

    def clock() -> int:
        clock_ns[0] += rng.randrange(1_000, 5_000_000)
        return clock_ns[0]

    def entropy(n: int) -> bytes:
        return rng.randbytes(n)

    def new_node() -> Node:
        node = app.new_node(data_dir, clock=clock, entropy=entropy, segment_bytes=rng.choice([2_000, 64_000, 1 << 26]))
        node.open()
        return node

    result = SimulationResult(seed, steps)
    node = new_node()
    node.execute_many([RegisterAsset(*a) for a in ASSETS])
    node.execute_many([OpenAccount(o, a[0]) for o in OWNERS for a in ASSETS])
    ledger = node.engine.ledger
    model: dict[int, int] = {a.id: a.balance for a in ledger.iter_accounts()}
    next_id = [1]

    def fail(step: int, what: str) -> None:
        raise SimulationFailure(seed, step, what)

    def account_ids(asset: str) -> list[int]:
        return [node.engine.ledger.get(o, asset).id for o in OWNERS]

    for step in range(steps):
        ledger = node.engine.ledger
        asset = rng.choice(ASSETS)[0]
        users = account_ids(asset)
        world = ledger.world(asset).id
        action = rng.choices(
            ["deposit", "transfer", "withdraw", "hold", "post", "void", "linked", "duplicate", "invalid", "snapshot", "crash"],
            weights=[14, 22, 8, 10, 8, 5, 6, 5, 10, 2, crash_probability_pct],
        )[0]
        result.counts[action] = result.counts.get(action, 0) + 1

        def tid() -> int:
            next_id[0] += 1
            return next_id[0]

        batch: list[Transfer] | None = None
        if action == "deposit":
            batch = [Transfer(tid(), world, rng.choice(users), rng.randrange(1, 10**9))]
        elif action == "transfer":
            a, b = rng.sample(users, 2)
            batch = [Transfer(tid(), a, b, rng.randrange(1, 10**9))]
        elif action == "withdraw":
            batch = [Transfer(tid(), rng.choice(users), world, rng.randrange(1, 10**9))]
        elif action == "hold":
            a, b = rng.sample(users, 2)
            timeout = rng.choice([0, 0, 3_000_000, 50_000_000])
            batch = [Transfer(tid(), a, b, rng.randrange(1, 10**9), flags=TransferFlags.PENDING, timeout_ns=timeout)]
        elif action in ("post", "void"):
            open_ids = [h.id for h in ledger.open_holds() if h.id < 1 << 127]
            target = rng.choice(open_ids) if open_ids and rng.random() < 0.8 else rng.randrange(1, next_id[0] + 2)  # float-ok: coin flip
            flag = TransferFlags.POST_PENDING if action == "post" else TransferFlags.VOID_PENDING
            amount = rng.choice([0, rng.randrange(1, 10**9)])
            batch = [Transfer(tid(), 0, 0, amount, pending_id=target, flags=flag)]
        elif action == "linked":
            a, b, c = rng.sample(users, 3)
            batch = [
                Transfer(tid(), world, a, rng.randrange(1, 10**6), flags=TransferFlags.LINKED),
                Transfer(tid(), a, b, rng.randrange(1, 2 * 10**6), flags=TransferFlags.LINKED),
                Transfer(tid(), b, c, rng.randrange(1, 10**6)),
            ]
        elif action == "duplicate":
            known = list(ledger.transfers.values())
            if known:
                t = rng.choice(known)
                batch = [t if rng.random() < 0.5 else Transfer(t.id, t.debit_account_id, t.credit_account_id, t.amount + 1)]  # float-ok
        elif action == "invalid":
            bad = rng.choice(
                [
                    CreateTransfers([Transfer(tid(), world, users[0], 1.5)]),  # type: ignore[arg-type]
                    CreateTransfers([Transfer(tid(), world, users[0], "7")]),  # type: ignore[arg-type]
                    CreateTransfers([]),
                    OpenAccount("ann", "NOPE"),
                    OpenAccount("Not Valid", asset),
                    RegisterAsset("BTC", 2, "crypto"),
                ]
            )
            before = node.engine.state_hash()
            try:
                node.execute(bad)
            except RingfenceError:
                result.commands_rejected += 1
            else:
                fail(step, f"invalid command {bad!r} was accepted")
            if node.engine.state_hash() != before:
                fail(step, f"a rejected command {type(bad).__name__} changed the state")
        elif action == "snapshot":
            node.snapshot()
            result.snapshots += 1
        elif action == "crash":
            before = node.engine.state_hash()
            last_seq = node.engine.last_seq
            writer = node.writer
            assert writer is not None
            if rng.random() < 0.7:  # float-ok: die in the middle of writing the next batch
                record, _ = encode_record(rng.randbytes(rng.randrange(10, 400)), writer.next_seq, 1, writer.last_hash)
                cut = rng.randrange(1, len(record))
                tail = segment_paths(data_dir / "journal")[-1]
                with open(tail, "ab") as fh:
                    fh.write(record[:cut])
                result.torn_tails += 1
            node.abandon()  # the process dies: no clean close, and the kernel drops its flock
            node = new_node()
            result.crashes += 1
            if node.engine.last_seq != last_seq or node.engine.state_hash() != before:
                fail(step, f"recovery after a crash lost or invented state (seq {last_seq} -> {node.engine.last_seq})")
        if batch is not None:
            before_pending = {h.id: h.remaining for h in ledger.open_holds()}
            events = node.execute(CreateTransfers(batch))
            result.commands_acknowledged += 1
            _update_model(node, batch, events, before_pending, model)
            result.transfers_failed += sum(len(getattr(e, "failures", ())) for e in events)
        try:
            node.engine.check_invariants()
        except AssertionError as err:
            fail(step, f"invariant: {err}")
        for account in node.engine.ledger.iter_accounts():
            if model.get(account.id, 0) != account.balance:
                fail(step, f"balance of {account.name} is {account.balance}, the model says {model.get(account.id, 0)}")
        if on_step is not None:
            on_step(step)
    live = node.engine.state_hash()
    node.close()
    replayed, _, _ = replay_journal(data_dir, use_snapshots=False)
    if replayed.state_hash() != live:
        fail(steps, "a full replay of the journal does not reproduce the live state hash")
    result.state_hash = live
    return result


def _update_model(node: Node, batch: list[Transfer], events: list, before_pending: dict[int, int], model: dict[int, int]) -> None:
    failed = set()
    for event in events:
        if type(event).__name__ == "TransfersCreated":
            failed = {i for i, _ in event.failures}
    ledger = node.engine.ledger
    for index, t in enumerate(batch):
        if index in failed:
            continue
        if t.flags & TransferFlags.POST_PENDING:
            p = ledger.pending_hold(t.pending_id)
            assert p is not None
            moved = before_pending[t.pending_id] - p.remaining
            model[p.debit_id] = model.get(p.debit_id, 0) - moved
            model[p.credit_id] = model.get(p.credit_id, 0) + moved
        elif not t.flags & (TransferFlags.PENDING | TransferFlags.VOID_PENDING):
            model[t.debit_account_id] = model.get(t.debit_account_id, 0) - t.amount
            model[t.credit_account_id] = model.get(t.credit_account_id, 0) + t.amount
