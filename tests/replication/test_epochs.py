"""Epochs never go backwards (intruder review of #21, F3): a leader record erased or rewritten (here
by a NATS user without ACLs, as the machine's server allows) cannot make the next claim reuse an
old epoch; the stream's fences and the node's own memory (`DATA/replication-epoch.json`) keep the
floor. And the stream and the bucket are made without rollups, purges or message deletes; an older,
weaker stream is refused until `ringfence replication harden`."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringfence.app import new_node
from ringfence.errors import ConfigError
from ringfence.ledger.commands import OpenAccount, RegisterAsset
from ringfence.replication import Fenced, Follower, Replicator, harden, leader_of, parse_target, promote
from ringfence.replication.epochs import MEMORY_FILE, EpochMemory

from .conftest import NATS_URL, key_of, peers_of


def _superuser(coro_fn):
    """Run `coro_fn(js)` on a connection of its own (the machine's server has no ACLs)."""
    import nats

    async def go():
        nc = await nats.connect(NATS_URL, connect_timeout=3)
        try:
            return await coro_fn(nc.jetstream())
        finally:
            await nc.close()

    return asyncio.run(go())


def _memory(path):
    return json.loads((path / MEMORY_FILE).read_text())


def test_an_erased_or_rewritten_leader_record_never_brings_an_old_epoch_back(tmp_path, stream):
    target = parse_target(f"{NATS_URL}/{stream}")
    node = new_node(tmp_path / "a")
    node.open()
    node.start()
    replicator = Replicator(target, "a", tmp_path / "a", key=key_of("a"))
    follower = None
    try:
        assert replicator.epoch == 1 and _memory(tmp_path / "a") == {stream: 1}
        first_record = leader_of(replicator.link, replicator.kv)[0]  # a's genuine, signed epoch-1 record
        replicator.attach(node)
        node.execute(RegisterAsset("BTC", 8, "crypto", "bitcoin"))
        node.execute_many([OpenAccount("alice", "BTC")])
        follower = Follower(target, tmp_path / "b", "b", key=key_of("b"), peers=peers_of())
        promote(target, "b")
        assert follower.follow_until_promoted() == 2  # its fence, at epoch 2, is in the stream now
        assert _memory(tmp_path / "b") == {stream: 2}
        bucket = f"{stream}-leader"

        # rewritten lower, naming the old primary: a replay of its own genuine epoch-1 record (its
        # signature verifies), yet it may not resume at epoch 1
        async def rewrite(js):
            kv = await js.key_value(bucket)
            await kv.put("leader", json.dumps(first_record).encode())

        _superuser(rewrite)
        with pytest.raises(Fenced, match="gives this node epoch 1, but epoch 2 was seen"):
            Replicator(target, "a", tmp_path / "a", key=key_of("a"))
        # and a promotion at the record's next epoch (2 again) is refused by the standby, which names 3
        follower.link.call(follower.kv.put("promote.b", json.dumps({"epoch": 2, "node": "b", "approvals": [],
                                                                    "status": "requested"}).encode()))
        leader, revision = leader_of(follower.link, follower.kv)
        assert not follower.consider_promotion(leader, revision)
        reason = json.loads(follower.link.call(follower.kv.get("promote.b")).value)["reason"]
        assert "next epoch is 3" in reason, reason

        # erased altogether (the bucket's stream deleted): a node that never led takes no epoch, old or new
        # (a new one would have no fence: test_review16), and says to promote
        _superuser(lambda js: js.delete_stream(f"KV_{bucket}"))
        with pytest.raises(Fenced, match=r"missing \(deleted or purged\) and the stream's newest message \(\d+\) is of "
                                         r"node 'b' at epoch 2.*replication promote"):
            Replicator(target, "c", tmp_path / "c", key=key_of("c"))

        # erased, with nothing in the stream above 2: the node that led it keeps its own memory's floor
        (tmp_path / "b" / MEMORY_FILE).write_text(json.dumps({stream: 9, "OTHER": 40}))
        with pytest.raises(Fenced, match="missing .* epoch 9 was seen in this node's"):
            Replicator(target, "b", tmp_path / "b", key=key_of("b"))
        # an unreadable memory is a clear error, never a floor of 0
        (tmp_path / "e").mkdir()
        (tmp_path / "e" / MEMORY_FILE).write_text("{not json")
        with pytest.raises(ConfigError, match="replication-epoch.json is unreadable"):
            Replicator(target, "e", tmp_path / "e", key=key_of("e"))
    finally:
        if follower is not None:
            follower.close()
        node.close()
        replicator.close()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=2**40), max_size=12))
def test_the_epoch_memory_only_grows_and_survives_a_restart(tmp_path_factory, seen):
    path = tmp_path_factory.mktemp("mem")
    memory = EpochMemory(path, "S")
    for i, epoch in enumerate(seen):
        memory.see(epoch)
        assert memory.highest() == max(seen[: i + 1])
        assert EpochMemory(path, "S").highest() == memory.highest()  # what a restart reads
    assert EpochMemory(path, "OTHER").highest() == 0


def test_stream_and_bucket_refuse_rollups_purges_and_deletes_and_an_old_weak_stream_is_refused(tmp_path, stream):
    from nats.js.api import StorageType, StreamConfig

    target = parse_target(f"{NATS_URL}/{stream}")
    bucket = f"KV_{stream}-leader"

    # as an older ringfence made them: rollups allowed (nats-py's KV default), purges allowed
    async def weak(js):
        await js.add_stream(StreamConfig(name=stream, subjects=[target.subject], storage=StorageType.FILE))
        await js.create_key_value(bucket=f"{stream}-leader", history=16, storage=StorageType.FILE)

    _superuser(weak)
    with pytest.raises(ConfigError, match=f"stream {stream} has deny_delete=false, deny_purge=false"):
        Replicator(target, "a", key=key_of("a"))
    with pytest.raises(ConfigError, match=r"ringfence replication harden --nats"):
        Replicator(target, "a", key=key_of("a"))
    status = subprocess.run([sys.executable, "-m", "ringfence.cli", "replication", "status", "--nats", f"{NATS_URL}/{stream}"],
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stdout + status.stderr  # status only reads: it still works
    out = subprocess.run([sys.executable, "-m", "ringfence.cli", "replication", "harden", "--nats", f"{NATS_URL}/{stream}"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and f"{stream}: deny_delete=false, deny_purge=false" in out.stdout.replace("\n", " "), out.stdout + out.stderr
    assert "allow_rollup_hdrs=true" in out.stdout  # the bucket's
    assert harden(target) == []  # once is enough
    replicator = Replicator(target, "a", key=key_of("a"))
    try:
        for name in (stream, bucket):
            config = replicator.link.call(replicator.link.js.stream_info(name)).config
            assert (config.allow_rollup_hdrs, config.deny_delete, config.deny_purge) == (False, True, True), name

        # even a user without ACLs cannot roll up, purge, or delete a message
        async def attack(js):
            outcomes = []
            for subject in (f"$KV.{stream}-leader.promote.x", target.subject):
                try:
                    await js.publish(subject, b"", headers={"Nats-Rollup": "all"})
                    outcomes.append("stored")
                except Exception as err:  # noqa: BLE001 - the refusal is what the test wants; checked below
                    outcomes.append(str(err))
            for call in (js.purge_stream(bucket), js.purge_stream(stream), js.delete_msg(bucket, 1)):
                try:
                    await call
                    outcomes.append("done")
                except Exception as err:  # noqa: BLE001
                    outcomes.append(str(err))
            return outcomes

        outcomes = _superuser(attack)
        assert ["rollup not permitted" in o for o in outcomes[:2]] == [True, True], outcomes
        assert "purge not permitted" in outcomes[2] and "purge not permitted" in outcomes[3], outcomes
        assert "delete not permitted" in outcomes[4], outcomes
        assert leader_of(replicator.link, replicator.kv)[0]["epoch"] == 1  # the record is still there
    finally:
        replicator.close()


def test_a_new_stream_and_bucket_are_made_hardened(tmp_path, stream):
    replicator = Replicator(parse_target(f"{NATS_URL}/{stream}"), "a", key=key_of("a"))
    try:
        for name in (stream, f"KV_{stream}-leader"):
            config = replicator.link.call(replicator.link.js.stream_info(name)).config
            assert (config.allow_rollup_hdrs, config.deny_delete, config.deny_purge) == (False, True, True), name
        assert replicator.epoch == 1  # a brand-new stream still starts at epoch 1
    finally:
        replicator.close()
