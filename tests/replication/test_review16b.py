"""Session 16's code review of the merged replication fixes, against the real NATS JetStream.

1: a replica that drifted from the primary, met by a promotion request, turned the mismatch into a
   refused request and followed on past it (and could be promoted by the next request). 2: the
   promotion fence's ack (and the stream opener's) was not checked: a forged ack made the standby
   answer `fenced` with no fence stored. 3: a NATS failure while fencing was answered `failed`
   although the fence may be in the stream. 4: a restarted primary whose leader record was deleted
   took its epoch back over a newer genuine record in the key's history. 5: an answer overwrote a
   newer request written meanwhile. Each test fails without its fix.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from ringfence.app import new_node
from ringfence.errors import JournalCorrupt
from ringfence.ledger.commands import OpenAccount
from ringfence.replication import Fenced, PromotionRefused, Replicator, leader_of, parse_target, promote

from .conftest import NATS_URL, attached_primary, key_of, peers_of, running, standby
from .test_intruder16 import forge_acks
from .test_review16 import PEERS, _approvals, _purge_leader, _staffed_primary, _wait_for_request


def _request(follower, node: str, epoch: int, approvals: list[str]) -> None:
    value = {"epoch": epoch, "node": node, "approvals": approvals, "status": "requested", "nonce": "ab" * 16,
             "requested_at_ns": time.time_ns()}
    follower.link.call(follower.kv.put(f"promote.{node}", json.dumps(value).encode()))


def test_a_drifted_standby_stops_at_a_promotion_request_and_stays_stopped(tmp_path, stream):
    """1: b's state drifts from a's; a promotion request for b arrives with a's next batch. The mismatch
    stops b (JournalCorrupt) where it used to become a refused request b followed on from; and it sticks. The
    request is answered `refused`, saying the standby stopped."""
    node, replicator, keys = _staffed_primary(tmp_path, stream)
    target = parse_target(f"{NATS_URL}/{stream}")
    with running(node, replicator), standby(target, tmp_path, "b", peers=peers_of(*PEERS)) as b:
        b.poll()
        b.engine.components["staff"].version += 1  # the standby's state drifts from the primary's
        node.execute(OpenAccount("alice", "BTC"))
        _request(b, "b", 2, _approvals(keys, stream, "b", 2, 600 * 10**9))
        leader, revision = leader_of(b.link, b.kv)
        with pytest.raises(JournalCorrupt):
            b.consider_promotion(leader, revision)
        with pytest.raises(JournalCorrupt):
            b.poll()  # never past the batch it disagrees with
        answer = json.loads(b.link.call(b.kv.get("promote.b")).value)  # the operator hears why, signed
        assert answer["status"] == "refused" and "standby b stopped" in answer["reason"], answer
        assert leader_of(b.link, b.kv)[0]["node"] == "a"


def test_a_forged_ack_of_the_promotion_fence_is_an_unknown_outcome_not_a_success(tmp_path, stream):
    """2 and 3: the stream set to no_ack (no real ack comes) and the fence's reply inbox answered with an
    ack at another sequence: the standby does not take the fence as in; `promote` reports the outcome as
    unknown (exit 1), not "promoted"."""
    node, replicator, keys = _staffed_primary(tmp_path, stream)
    target = parse_target(f"{NATS_URL}/{stream}")
    tokens = _approvals(keys, stream, "b", 2, 600 * 10**9)
    outcome: list[object] = []
    ready, stop = threading.Event(), threading.Event()

    def ask() -> None:
        try:
            outcome.append(promote(target, "b", tokens, wait_s=20, peers=peers_of(*PEERS)))
        except PromotionRefused as err:
            outcome.append(err)

    with standby(target, tmp_path, "b", peers=peers_of(*PEERS)) as b:
        b.poll()
        node.close()
        replicator.close()
        forger = threading.Thread(target=lambda: asyncio.run(forge_acks(stream, replicator.target.subject, stop, seq_offset=5,
                                                                        ready=ready)))
        asker = threading.Thread(target=ask)
        asker.start()
        try:
            _wait_for_request(b, "b")  # promote checked the stream before it asked: the attack comes after
            forger.start()
            assert ready.wait(10)
            with pytest.raises(OSError, match="is not one the stream gives"):
                b.follow_until_promoted()
            assert b.fence_epoch == 1
        finally:
            asker.join(30)
            stop.set()
            if forger.is_alive():
                forger.join(10)
    assert len(outcome) == 1 and isinstance(outcome[0], PromotionRefused), outcome
    assert "outcome is unknown" in str(outcome[0]) and "replication status" in str(outcome[0]), outcome[0]


@contextmanager
def _b_took_the_record(tmp_path, stream) -> Iterator:
    """Standby b of a staffed primary a (then stopped), b having accepted a promotion to epoch 2 and taken the
    leader record (its fence not yet published): b, for the block."""
    node, replicator, keys = _staffed_primary(tmp_path, stream)
    with standby(parse_target(f"{NATS_URL}/{stream}"), tmp_path, "b", peers=peers_of(*PEERS)) as b:
        b.poll()
        node.close()
        replicator.close()
        _request(b, "b", 2, _approvals(keys, stream, "b", 2, 600 * 10**9))
        leader, revision = leader_of(b.link, b.kv)
        assert b.consider_promotion(leader, revision)
        yield b


def test_a_restarted_primary_does_not_take_its_epoch_back_over_a_newer_record(tmp_path, stream):
    """4: b accepted a promotion to epoch 2 (its record written, its fence not yet in) and the record was
    deleted; a restarts: it refuses to write its epoch 1 back over b's accepted promotion."""
    target, peers = parse_target(f"{NATS_URL}/{stream}"), peers_of(*PEERS)
    with _b_took_the_record(tmp_path, stream) as b:  # b's record at epoch 2; no fence yet
        _purge_leader(b.link, b.kv)
    primary = new_node(tmp_path / "a")
    primary.open()
    try:
        with pytest.raises(Fenced, match=r"holds node 'b''s genuine record at epoch 2, above this node's 1"):
            Replicator(target, "a", key=key_of("a"), peers=peers).attach(primary)
    finally:
        primary.close()


def test_an_answer_never_overwrites_a_newer_request(tmp_path, stream):
    """5: a request written after the one judged is not overwritten by the answer to the old one: it stays
    for the standby to judge next."""
    node, replicator, keys = _staffed_primary(tmp_path, stream)
    target = parse_target(f"{NATS_URL}/{stream}")
    with running(node, replicator), standby(target, tmp_path, "b", peers=peers_of(*PEERS)) as b:
        b.poll()
        _request(b, "b", 7, [])  # the wrong epoch: refused
        stale = int(b.link.call(b.kv.get("promote.b")).revision)
        b._request_rev = stale
        _request(b, "b", 2, _approvals(keys, stream, "b", 2, 600 * 10**9))  # written meanwhile
        b._answer("promote.b", {"epoch": 7}, "refused", reason="the wrong epoch")
        entry = b.link.call(b.kv.get("promote.b"))
        assert json.loads(entry.value)["status"] == "requested" and json.loads(entry.value)["epoch"] == 2
        leader, revision = leader_of(b.link, b.kv)
        assert b.consider_promotion(leader, revision)  # the newer request is judged and taken


def test_promote_says_the_standby_took_over_when_its_answers_were_overwritten(tmp_path, stream):
    """Second intruder review, R1: rf-operator overwrites every answer of the standby with junk as soon as it
    appears; the promotion happens (record and fence), and `promote` says the standby took the record for its
    request (found by the request's nonce in the record's history) — or, if it caught the signed `fenced` in
    the few milliseconds it stood, that it was promoted — never "did not answer: is it running?"."""
    node, replicator, keys = _staffed_primary(tmp_path, stream)
    target = parse_target(f"{NATS_URL}/{stream}")
    outcome: list[object] = []
    stop = threading.Event()

    def ask() -> None:
        try:
            outcome.append(promote(target, "b", _approvals(keys, stream, "b", 2, 600 * 10**9), wait_s=4,
                                   peers=peers_of(*PEERS)))
        except PromotionRefused as err:
            outcome.append(err)

    def overwrite(link, kv) -> None:
        while not stop.is_set():
            try:
                value = link.call(kv.get("promote.b")).value
            except Exception:  # noqa: BLE001 - not written yet
                value = b""
            if value and value != b"junk" and json.loads(value).get("status") != "requested":
                link.call(kv.put("promote.b", b"junk"))
            time.sleep(0.005)

    with standby(target, tmp_path, "b", peers=peers_of(*PEERS)) as b:
        b.poll()
        node.close()
        replicator.close()
        asker = threading.Thread(target=ask)
        attacker = threading.Thread(target=overwrite, args=(b.link, b.kv))
        asker.start()
        try:
            _wait_for_request(b, "b")
            attacker.start()
            assert b.follow_until_promoted() == 2
        finally:
            asker.join(30)
            stop.set()
            if attacker.is_alive():
                attacker.join(10)
    assert len(outcome) == 1, outcome
    if isinstance(outcome[0], dict):  # it read the signed 'fenced' before the junk came: true as well
        assert (outcome[0]["node"], outcome[0]["epoch"]) == ("b", 2), outcome
    else:
        assert isinstance(outcome[0], PromotionRefused), outcome
        assert "took the leader record for this promotion at epoch 2" in str(outcome[0]), outcome[0]


def test_the_request_nonce_stays_in_the_leader_record_it_is_rewritten_with(tmp_path, stream):
    """Second review of the fixes: the promoted node, serving as the primary, writes its record again (at start,
    and at each renewal with a lease); the request's nonce stays in it, so `promote` still finds it after 16
    renewals pushed the first record out of the key's history."""
    peers = peers_of(*PEERS)
    with _b_took_the_record(tmp_path, stream) as b:
        taken = leader_of(b.link, b.kv)[0]
        assert b.follow_until_promoted() == 2
        _, _, lock = b.hand_over()
        lock.release()
    primary, again = attached_primary(tmp_path, stream, peers=peers, node_id="b")
    with running(primary, again):
        record = leader_of(again.link, again.kv)[0]
        assert record["renewal"] > taken["renewal"] and record["nonce"] == taken["nonce"] == "ab" * 16, (record, taken)
