"""A new user's check of #21, against the real NATS JetStream: `replication promote` that gave up (no verdict
within --wait-s) left its request in NATS, valid for --ttl-s; a standby started a minute later took it and
deposed the healthy primary. Now a request `promote` reports as failed is withdrawn before it exits
(revision-checked), a standby takes a request only by first writing over that same revision, and a standby
that finds a withdrawn request says so once and does nothing. Each test fails on the code before the fix.
"""

from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager

import pytest

from ringfence import replication
from ringfence.ledger.commands import OpenAccount
from ringfence.replication import Follower, PromotionRefused, parse_target, promote

from .conftest import NATS_URL, key_of, peers_of, running
from .test_residual_risks import _approvals, _staffed_primary

PEERS = ("a", "b", "c")


def _follow_for(follower: Follower, seconds: float) -> int:  # float-ok: seconds
    """`follow_until_promoted` for `seconds`: the epoch it took, or 0."""
    stop = threading.Event()
    timer = threading.Timer(seconds, stop.set)
    timer.start()
    try:
        return follower.follow_until_promoted(stop)
    finally:
        timer.cancel()


@contextmanager
def _staffed_pair(tmp_path, stream, **follower_options):  # type: ignore[no-untyped-def]
    """Primary a (staff ada and ben) running, and standby b that has read its stream: (node, replicator, keys,
    target, follower); b is closed at the end."""
    node, replicator, keys = _staffed_primary(tmp_path, stream)
    target = parse_target(f"{NATS_URL}/{stream}")
    with running(node, replicator):
        follower = Follower(target, tmp_path / "b", "b", key=key_of("b"), peers=peers_of(*PEERS), **follower_options)
        try:
            follower.poll()
            yield node, replicator, keys, target, follower
        finally:
            follower.close()


def test_a_promotion_that_timed_out_is_not_taken_by_a_standby_started_later(tmp_path, stream):
    """`promote` to standby b, not running, --wait-s 1: refused, and it says the request is withdrawn. Standby
    b started afterwards (a fresh folder) catches up, says once that the request was withdrawn, and does not
    promote; primary a keeps the leader record and keeps serving."""
    node, replicator, keys = _staffed_primary(tmp_path, stream)
    target = parse_target(f"{NATS_URL}/{stream}")
    with running(node, replicator):
        before = json.loads(replicator.link.call(replicator.kv.get("leader")).value)
        with pytest.raises(PromotionRefused, match="standby b did not answer within 1 s") as refused:
            promote(target, "b", _approvals(keys, stream, "b", 2), wait_s=1, peers=peers_of(*PEERS))
        assert "The request is withdrawn: a standby that starts later does not act on it" in str(refused.value)
        said: list[str] = []
        follower = Follower(target, tmp_path / "b", "b", key=key_of("b"), peers=peers_of(*PEERS), on_progress=said.append)
        try:
            assert _follow_for(follower, 3) == 0  # before the fix: 2, the healthy primary deposed
            assert follower.engine.state_hash() == node.read(lambda e: e.state_hash())
        finally:
            follower.close()
        withdrawn = [line for line in said if "was withdrawn by the operator's `replication promote`" in line]
        assert len(withdrawn) == 1, said
        assert "promotion request for epoch 2" in withdrawn[0] and "not acted on" in withdrawn[0], withdrawn
        assert json.loads(replicator.link.call(replicator.kv.get("leader")).value)["epoch"] == before["epoch"]
        node.execute(OpenAccount("bob", "BTC"))  # still the primary: the stream takes its batches
        assert node.failed is None and replicator.lost is None


def test_a_request_withdrawn_while_the_standby_checks_it_is_not_taken(tmp_path, stream):
    """The race, standby side: b reads the request, and while it catches up the operator withdraws it
    (`replication.withdraw`, as `promote --withdraw` does). b's revision-checked take fails: it does not write
    the leader record, and says why."""
    said: list[str] = []
    with _staffed_pair(tmp_path, stream, on_progress=said.append) as (node, replicator, keys, target, follower):
        promote(target, "b", _approvals(keys, stream, "b", 2), peers=peers_of(*PEERS))  # wait_s=0: only written
        poll = follower.poll
        withdrawn: list[str] = []

        def catch_up_while_withdrawn() -> None:
            withdrawn.append(replication.withdraw(target, "b"))
            poll()

        follower.poll = catch_up_while_withdrawn  # type: ignore[method-assign]
        leader, revision = replication.leader_of(follower.link, follower.kv)
        assert follower.consider_promotion(leader, revision) is False
        assert withdrawn and withdrawn[0].startswith("withdrew the pending promotion request of b (epoch 2)"), withdrawn
        assert any("changed before this standby took it" in line for line in said), said
        assert json.loads(replicator.link.call(replicator.kv.get("leader")).value)["node"] == "a"
        assert "nothing to withdraw" in replication.withdraw(target, "b")


def test_a_standby_that_took_the_request_first_wins_and_promote_reports_its_outcome(tmp_path, stream, monkeypatch):
    """The race, operator side: the standby takes the request just before `promote` gives up. The withdrawal
    then fails (the key changed), and `promote` waits for the standby's verdict and returns the promotion
    (exit 0 in the CLI) instead of reporting a failure that did not happen."""
    with _staffed_pair(tmp_path, stream) as (node, replicator, keys, target, follower):
        real = replication._withdraw_own
        epochs: list[int] = []

        def standby_first(*args, **kwargs):
            epochs.append(follower.follow_until_promoted())  # it takes the request and fences
            return real(*args, **kwargs)

        monkeypatch.setattr(replication, "_withdraw_own", standby_first)
        record = promote(target, "b", _approvals(keys, stream, "b", 2), wait_s=1, peers=peers_of(*PEERS))
        assert epochs == [2] and record["node"] == "b" and record["epoch"] == 2, (epochs, record)


def test_a_deposed_primary_without_a_lease_stops_before_its_next_write(tmp_path, stream):
    """Primary a without lease_ms; the operators promote b, whose fence lands in the stream. Within the stream
    check's period (STREAM_CHECK_S) a sees the fence it did not write and stops: `node.failed` is Fenced (so
    /readyz says 503 and a command is refused before it is journaled) without any write of its own. Before,
    it stayed ready until its next write, whose client got -1007 (outcome unknown)."""
    from ringfence.replication import STREAM_CHECK_S, Fenced

    node, replicator, keys = _staffed_primary(tmp_path, stream)
    target = parse_target(f"{NATS_URL}/{stream}")
    with running(node, replicator):
        follower = Follower(target, tmp_path / "b", "b", key=key_of("b"), peers=peers_of(*PEERS))
        try:
            follower.poll()
            promote(target, "b", _approvals(keys, stream, "b", 2), peers=peers_of(*PEERS))
            assert follower.follow_until_promoted() == 2
        finally:
            follower.close()
        last_seq = node.last_seq
        deadline = time.monotonic() + 3 * STREAM_CHECK_S
        while node.failed is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert isinstance(node.failed, Fenced), node.failed
        assert "deposed: stream message" in str(node.failed) and "node 'b''s fence of epoch 2" in str(node.failed), node.failed
        with pytest.raises(Exception) as refused:
            node.execute(OpenAccount("bob", "BTC"))
        assert getattr(refused.value, "code", "") != "RF_OUTCOME_UNKNOWN", refused.value
        assert node.last_seq == last_seq  # nothing journaled


def test_a_nats_failure_while_promote_waits_still_withdraws_the_request(tmp_path, stream, monkeypatch):
    """Reading the standby's answer fails (a NATS timeout) while `promote` waits: it reads again until --wait-s
    is over and then withdraws the request as on any timeout. Before, the failure went up as "NATS failed ...
    ask again once NATS answers" (exit 1) with the request still pending for --ttl-s: a standby started later
    took a promotion reported as failed (the bug of #21 again, by another way out)."""
    from nats.errors import TimeoutError as NatsTimeout

    node, replicator, keys = _staffed_primary(tmp_path, stream)
    target = parse_target(f"{NATS_URL}/{stream}")
    ensure = replication.NatsLink.ensure_stream_and_bucket
    failed: list[str] = []

    class FlakyKV:
        def __init__(self, kv):  # type: ignore[no-untyped-def]
            self._kv = kv

        def __getattr__(self, name):  # type: ignore[no-untyped-def]
            return getattr(self._kv, name)

        def get(self, key):  # type: ignore[no-untyped-def]
            if key == replication.request_key("b") and len(failed) < 3:
                failed.append(key)

                async def timed_out():  # type: ignore[no-untyped-def]
                    raise NatsTimeout

                return timed_out()
            return self._kv.get(key)

    with running(node, replicator):
        monkeypatch.setattr(replication.NatsLink, "ensure_stream_and_bucket", lambda link: FlakyKV(ensure(link)))
        with pytest.raises(PromotionRefused, match="standby b did not answer within 1 s") as refused:
            promote(target, "b", _approvals(keys, stream, "b", 2), wait_s=1, peers=peers_of(*PEERS))
        assert "The request is withdrawn" in str(refused.value) and len(failed) == 3
        assert json.loads(replicator.link.call(replicator.kv.get("promote.b")).value)["status"] == "withdrawn"
