"""A Jepsen-style randomized test of the replicated journal against the real NATS JetStream.

Seeded runs of random operations on a primary (in-process `Node` + `Replicator`) and a standby
(`Follower`): client writes (transfers with unique ids), SIGKILL-like crashes of the primary
(`Node.abandon`), network partitions (the primary's NATS connection is closed), promotions of the
standby (operator `promote`, then the follower fences and becomes the primary) and a fresh standby
rejoining from the stream. The checker reads the final stream history and asserts: every
acknowledged write is in it exactly once and in the order it was acknowledged; the history is one
unbroken hash chain with no batch from a deposed epoch after its fence; and a fresh follower of the
whole stream reaches the final primary's state hash. The seed is printed; rerun one with
RINGFENCE_JEPSEN_SEEDS=<seed>.
"""

from __future__ import annotations

import os
import random

import msgspec
import pytest

from ringfence.app import new_engine, new_node
from ringfence.ledger.commands import CreateTransfers, OpenAccount, RegisterAsset
from ringfence.ledger.model import Transfer
from ringfence.replication import Follower, Replicator, parse_target, promote

from .conftest import NATS_URL, key_of, peers_of
from .test_replication import check_stream, stream_messages

SEEDS = [int(s) for s in os.environ.get("RINGFENCE_JEPSEN_SEEDS", "11,23,37").split(",")]
STEPS = 40


class Cluster:
    def __init__(self, tmp_path, stream: str) -> None:
        # n0 opens the stream: its standbys are told so (peers_of() lists node a first)
        self.tmp, self.url = tmp_path, f"{NATS_URL}/{stream}?first_primary=n0"
        self.target = parse_target(self.url)
        self.generation = 0
        self.primary_id = "n0"
        self.node = new_node(tmp_path / "n0")
        self.node.open()
        self.replicator = Replicator(self.target, "n0", key=key_of("n0"))
        self.replicator.attach(self.node)
        self.node.execute(RegisterAsset("BTC", 8, "crypto", "bitcoin"))
        self.node.execute(OpenAccount("alice", "BTC"))
        self.accounts = self.node.read(lambda e: (e.ledger.world("BTC").id, e.ledger.get("alice", "BTC").id))
        self.standby = self._new_standby()
        self.primary_alive = True
        self.partitioned = False

    def _new_standby(self) -> Follower:
        self.generation += 1
        ident = f"n{self.generation}"
        return Follower(self.target, self.tmp / ident, ident, key=key_of(ident), peers=peers_of())

    def write(self, transfer_id: int) -> bool:
        """A client write; True when acknowledged."""
        if not self.primary_alive:
            return False
        world, alice = self.accounts
        try:
            self.node.execute(CreateTransfers([Transfer(transfer_id, world, alice, 1)]))
            return True
        except Exception:  # noqa: BLE001 - any refusal (fenced, partitioned, stopped) means "not acknowledged"
            return False

    def crash(self) -> None:
        if self.primary_alive:
            self.node.abandon()
            self.primary_alive = False

    def partition(self) -> None:
        if self.primary_alive and not self.partitioned:
            self.replicator.link.disconnect()
            self.partitioned = True

    def failover(self) -> None:
        """Promote the standby; the old primary (dead or partitioned) is discarded; a new standby joins."""
        promote(self.target, self.standby.node_id)
        assert self.standby.follow_until_promoted() >= 2
        if self.primary_alive:
            assert not self.write(10**9 + self.generation), "a deposed primary acknowledged a write"
            self.node.abandon()
        self.replicator.close()
        new_dir, new_id = self.standby.node_dir, self.standby.node_id
        self.standby.close()
        self.node = new_node(new_dir)
        self.node.open()
        self.replicator = Replicator(self.target, new_id, key=key_of(new_id))
        assert self.replicator.attach(self.node) == 0
        self.primary_id, self.primary_alive, self.partitioned = new_id, True, False
        self.standby = self._new_standby()

    def close(self) -> None:
        self.standby.close()
        if self.primary_alive:
            self.node.close()
        self.replicator.close()


def history_transfer_ids(stream: str) -> list[int]:
    decode = new_engine().codec.batch.decode
    ids: list[int] = []
    for _, headers, data in check_stream(stream):
        if headers["Rf-Kind"] != "batch":
            continue
        for command in decode(data).commands:
            if isinstance(command, CreateTransfers):
                ids.extend(t.id for t in command.transfers)
    return ids


@pytest.mark.parametrize("seed", SEEDS)
def test_acknowledged_writes_survive_kills_partitions_and_promotions(tmp_path, stream, seed):
    print(f"jepsen seed={seed} (rerun: RINGFENCE_JEPSEN_SEEDS={seed})")
    rng = random.Random(seed)
    cluster = Cluster(tmp_path, stream)
    acked: list[int] = []
    next_id = 1
    faults = {"crash": 0, "partition": 0, "failover": 0}
    try:
        for _ in range(STEPS):
            op = rng.choices(["write", "poll", "crash", "partition", "failover"], weights=[12, 3, 1, 1, 2])[0]
            if op == "write":
                for _ in range(rng.randint(1, 4)):
                    if cluster.write(next_id):
                        acked.append(next_id)
                    next_id += 1
            elif op == "poll":
                cluster.standby.poll()
            elif op in ("crash", "partition"):
                getattr(cluster, op)()
                faults[op] += 1
            elif op == "failover" or not cluster.primary_alive:
                cluster.failover()
                faults["failover"] += 1
        if not cluster.primary_alive or cluster.partitioned:
            cluster.failover()
        final_hash = cluster.node.read(lambda e: e.state_hash())
        ids = history_transfer_ids(stream)
        positions = {}
        for pos, tid in enumerate(ids):
            assert tid not in positions, f"seed {seed}: transfer {tid} is in the history twice"
            positions[tid] = pos
        missing = [t for t in acked if t not in positions]
        assert not missing, f"seed {seed}: acknowledged but lost: {missing}"
        order = [positions[t] for t in acked]
        assert order == sorted(order), f"seed {seed}: acknowledged writes are out of order in the history"
        # a brand-new follower of the whole stream reaches the final primary's state
        fresh = Follower(cluster.target, tmp_path / "fresh", "fresh", key=key_of("fresh"), peers=peers_of())
        try:
            fresh.poll()
            assert fresh.engine.state_hash() == final_hash, f"seed {seed}: a fresh replica differs"
        finally:
            fresh.close()
        print(f"seed {seed}: {len(acked)} acknowledged of {next_id - 1} writes, faults {faults}, "
              f"{len(stream_messages(stream))} stream messages")
        assert len(acked) > 0
    finally:
        cluster.close()


def test_history_decoder_sees_every_transfer():
    """The checker's decoder is not vacuous: a batch of transfers decodes to their ids."""
    from ringfence.engine.commands import Batch, encode

    cmd = CreateTransfers([Transfer(7, 1, 2, 5), Transfer(8, 1, 2, 5)])
    payload = encode(Batch(1, 0, b"\0" * 32, [msgspec.Raw(encode(cmd))]))
    decoded = new_engine().codec.batch.decode(payload).commands[0]
    assert [t.id for t in decoded.transfers] == [7, 8]
