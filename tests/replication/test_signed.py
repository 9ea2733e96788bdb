"""Who a standby trusts (intruder review of #21, F1 and F2), against the real NATS JetStream.

F1: anyone who can publish on the stream's subject computed the next record with
`journal.encode_record`, published it with an empty state hash, and the standby applied it; an
old batch's payload was appended to the standby's journal before it failed to apply. F2: a leader
record written by anyone with access to the KV bucket, naming the standby, promoted it.
Each test here fails without the signatures, the state check and the decode-before-append.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ringfence.app import new_node
from ringfence.journal.journal import encode_record, scan_all
from ringfence.ledger.commands import CreateTransfers, OpenAccount, RegisterAsset
from ringfence.ledger.model import Transfer
from ringfence.replication import Fenced, Refused, Replicator, leader_of, parse_target, promote, sign_message

from .conftest import NATS_URL, key_of, peers_of, running, standby


def _primary(tmp_path, stream, query=""):
    node = new_node(tmp_path / "a")
    node.open()
    node.start()
    replicator = Replicator(parse_target(f"{NATS_URL}/{stream}{query}"), "a", key=key_of("a"))
    replicator.attach(node)
    node.execute(RegisterAsset("BTC", 8, "crypto", "bitcoin"))
    node.execute_many([OpenAccount("alice", "BTC"), OpenAccount("bob", "BTC")])
    world, alice = node.read(lambda e: (e.ledger.world("BTC").id, e.ledger.get("alice", "BTC").id))
    for i in range(1, 4):
        node.execute(CreateTransfers([Transfer(i, world, alice, 1000 * i)]))
    return node, replicator


def _journal_bytes(node_dir: Path) -> dict[str, bytes]:
    """The journal's segments as written (a segment is pre-zeroed: its zero tail is not data)."""
    return {p.name: p.read_bytes().rstrip(b"\0") for p in sorted((node_dir / "journal").iterdir()) if p.name[0].isdigit()}


def _forge_next(replicator, stream: str, payload: bytes, count: int, **extra: str) -> dict[str, str]:
    """F1 as the intruder did it: the next record after the stream's last one, via encode_record."""
    last = replicator.link.call(replicator.link.js.get_msg(stream, replicator.stream_seq)).headers
    first_seq = int(last["Rf-First-Seq"]) + int(last["Rf-Count"])
    prev = bytes.fromhex(last["Rf-Hash"])
    _, digest = encode_record(payload, first_seq, count, prev)
    return {"Rf-Kind": "batch", "Rf-Epoch": last["Rf-Epoch"], "Rf-First-Seq": str(first_seq), "Rf-Count": str(count),
            "Rf-Prev-Hash": prev.hex(), "Rf-Hash": digest.hex(), "Rf-State-Hash": "", "Nats-Msg-Id": f"forged-{first_seq}",
            "Nats-Expected-Last-Sequence": str(replicator.stream_seq), **extra}


def _publish(replicator, headers: dict[str, str], payload: bytes) -> int:
    ack = replicator.link.call(replicator.link.js.publish(replicator.target.subject, payload, headers=headers,
                                                          stream=replicator.target.stream))
    replicator.stream_seq = int(ack.seq)
    return int(ack.seq)


def _a_batch(replicator, stream: str, seq: int) -> tuple[bytes, int]:
    msg = replicator.link.call(replicator.link.js.get_msg(stream, seq))
    return msg.data, int(msg.headers["Rf-Count"])


@pytest.mark.parametrize("signer", ["none", "untrusted-key-as-a", "untrusted-node", "second-node-in-the-epoch"])
def test_a_forged_next_record_with_an_empty_state_hash_is_refused_and_nothing_is_appended(tmp_path, stream, signer):
    with (running(*_primary(tmp_path, stream)) as (node, replicator),
          standby(replicator.target, tmp_path, peers=peers_of("a", "b", "c")) as follower):
        assert follower.poll() == replicator.stream_seq
        before = _journal_bytes(tmp_path / "b")
        applied = follower.engine.last_seq
        payload, count = _a_batch(replicator, stream, replicator.stream_seq)  # a well-formed batch, time not behind
        headers = _forge_next(replicator, stream, payload, count)
        forged_at = replicator.stream_seq + 1
        headers["Rf-Pos"] = str(forged_at)
        if signer == "untrusted-key-as-a":  # a valid-looking signature from a key not in the peers file
            sign_message(Ed25519PrivateKey.generate(), "a", stream, headers, payload)
        elif signer == "untrusted-node":
            sign_message(Ed25519PrivateKey.generate(), "eve", stream, headers, payload)
        elif signer == "second-node-in-the-epoch":  # a peer, but epoch 1 is a's
            headers["Rf-Outcome-Next"] = "1"
            sign_message(key_of("c"), "c", stream, headers, payload)
        _publish(replicator, headers, payload)
        reason = {"none": "not signed", "untrusted-key-as-a": "not that of node 'a'",
                  "untrusted-node": "'eve', which is not in the peers file",
                  "second-node-in-the-epoch": "signed by 'c', but 'a' leads that epoch"}[signer]
        with pytest.raises(Refused, match=f"stream message {forged_at} refused: .*{reason}.*nothing of it was appended"):
            follower.poll()
        assert follower.engine.last_seq == applied
        assert _journal_bytes(tmp_path / "b") == before
        records, report = scan_all(tmp_path / "b" / "journal")  # what `ringfence journal verify` reads
        assert records[-1].last_seq == applied


def test_an_exact_copy_of_a_signed_message_is_a_replay(tmp_path, stream):
    with (running(*_primary(tmp_path, stream)) as (node, replicator),
          standby(replicator.target, tmp_path, peers=peers_of("a", "b")) as follower):
        follower.poll()
        old = replicator.link.call(replicator.link.js.get_msg(stream, 2))
        at = _publish(replicator, dict(old.headers, **{"Nats-Msg-Id": "replayed",
                                                      "Nats-Expected-Last-Sequence": str(replicator.stream_seq)}), old.data)
        before = _journal_bytes(tmp_path / "b")
        with pytest.raises(Refused, match=f"stream message {at} refused: signed for stream sequence '2', stored at {at}: "
                                          "a replayed message"):
            follower.poll()
        assert _journal_bytes(tmp_path / "b") == before


def test_without_signature_checks_an_old_payload_is_refused_before_it_is_appended(tmp_path, stream):
    """Dev mode without --peers checks no signature; the rest still holds: the old batch's payload
    as the next record (a valid chain) is decoded and refused before `append` (it was appended,
    then the standby died on 'sequencer time went backwards'), and a batch with no state check at
    all is refused."""
    with running(*_primary(tmp_path, stream)) as (node, replicator):
        with standby(replicator.target, tmp_path) as follower:
            follower.poll()
            before = _journal_bytes(tmp_path / "b")
            applied = follower.engine.last_seq
            payload, count = _a_batch(replicator, stream, 2)  # an early batch: its sequencer time is in the past
            time.sleep(0.01)
            at = _publish(replicator, _forge_next(replicator, stream, payload, count, **{"Rf-Outcome-Next": "1"}), payload)
            with pytest.raises(Refused, match=f"stream message {at} refused: .*sequencer time goes backwards"):
                follower.poll()
            assert follower.engine.last_seq == applied and _journal_bytes(tmp_path / "b") == before
            records, _ = scan_all(tmp_path / "b" / "journal")
            assert records[-1].last_seq == applied
        with standby(replicator.target, tmp_path, "c") as follower:
            with pytest.raises(Refused, match=f"stream message {at} refused: .*sequencer time goes backwards"):
                follower.poll()  # a fresh standby reads the whole stream: the same refusal, same place


def test_a_batch_with_no_state_check_is_refused(tmp_path, stream):
    """F1's record (empty Rf-State-Hash, nothing promising a later check) is refused by the state
    check alone, even where no signature is checked (dev mode without --peers)."""
    with (running(*_primary(tmp_path, stream)) as (node, replicator),
          standby(replicator.target, tmp_path) as follower):
        follower.poll()
        before = _journal_bytes(tmp_path / "b")
        payload, count = _a_batch(replicator, stream, replicator.stream_seq)
        at = _publish(replicator, _forge_next(replicator, stream, payload, count), payload)
        with pytest.raises(Refused, match=f"stream message {at} refused: the batch carries no state check"):
            follower.poll()
        assert _journal_bytes(tmp_path / "b") == before


def test_a_forged_leader_record_naming_the_standby_does_not_promote_it(tmp_path, stream):
    """F2: a credential-less KV write naming the standby, with a made-up approval list."""
    with (running(*_primary(tmp_path, stream)) as (node, replicator),
          standby(replicator.target, tmp_path, peers=peers_of("a", "b")) as follower):
        seen: list[str] = []
        follower.on_progress = seen.append
        stop = threading.Event()
        result: list[int] = []
        runner = threading.Thread(target=lambda: result.append(follower.follow_until_promoted(stop)))
        try:
            _, revision = leader_of(replicator.link, replicator.kv)
            forged = {"epoch": 2, "node": "b", "approved_by": ["nobody"]}
            replicator.link.call(replicator.kv.update("leader", json.dumps(forged).encode(), last=revision))
            runner.start()
            time.sleep(1.5)
            stop.set()
            runner.join(10)
            assert result == [0], "the standby took the leadership on a record it did not sign"
            assert follower.fence_epoch == 1  # 1: the opener's epoch (message 1), no fence since
            info = replicator.link.call(replicator.link.js.stream_info(stream))
            assert info.state.last_seq == replicator.stream_seq, "a fence was published"
            assert any("forged leader record" in line for line in seen), seen
            # signed with another key than b's (the intruder's), it is just as forged
            _, revision = leader_of(replicator.link, replicator.kv)
            from ringfence.replication import sign_leader

            replicator.link.call(replicator.kv.update("leader", sign_leader(Ed25519PrivateKey.generate(), stream, forged),
                                                      last=revision))
            stop.clear()
            result.clear()
            runner = threading.Thread(target=lambda: result.append(follower.follow_until_promoted(stop)))
            runner.start()
            time.sleep(1.0)
            stop.set()
            runner.join(10)
            assert result == [0] and follower.fence_epoch == 1  # 1: the opener's epoch (message 1), no fence since
        finally:
            stop.set()
            runner.join(10)


def test_a_genuine_promotion_still_works_and_the_new_leader_signs(tmp_path, stream):
    with (running(*_primary(tmp_path, stream)) as (node, replicator),
          standby(replicator.target, tmp_path, peers=peers_of("a", "b")) as follower,
          standby(replicator.target, tmp_path, "c", peers=peers_of("a", "b", "c")) as watcher):
        target = replicator.target
        follower.poll()
        promote(target, "b")
        assert follower.follow_until_promoted() == 2
        leader, _ = leader_of(replicator.link, replicator.kv)
        assert leader["node"] == "b" and "sig" in leader and leader["approvals"] == []
        engine, position, lock = follower.hand_over()
        lock.release()
        # a third node reads the whole history: a's epoch 1, b's fence opening epoch 2
        watcher.poll()
        assert watcher.fence_epoch == 2 and watcher._leaders == {1: "a", 2: "b"}


def test_a_promised_outcome_digest_that_does_not_come_is_refused(tmp_path, stream):
    """`Rf-Outcome-Next` promises the outcome digest on the next batch of the same run: a next batch
    without it is refused (dev mode, no signatures: the state check alone)."""
    with (running(*_primary(tmp_path, stream)) as (node, replicator),
          standby(replicator.target, tmp_path) as follower):
        follower.poll()
        payload, count = _a_batch(replicator, stream, replicator.stream_seq)  # same sequencer time: applies
        run = {"Rf-Session": "feedfeedfeedfeed", "Rf-Outcome-Next": "1"}
        _publish(replicator, _forge_next(replicator, stream, payload, count, **run), payload)
        assert follower.poll() == 1  # applied (no signature is checked here): its outcome is now owed
        before = _journal_bytes(tmp_path / "b")
        at = _publish(replicator, _forge_next(replicator, stream, payload, count, **run), payload)
        with pytest.raises(Refused, match=f"stream message {at} refused: the outcome digest of the batch ending at "
                                          "sequence .* was promised with this batch and is not in it"):
            follower.poll()
        assert _journal_bytes(tmp_path / "b") == before


@pytest.mark.parametrize("how", ["unsigned", "signed-by-another-key", "not-json"])
def test_a_primary_refuses_to_start_on_a_forged_leader_record(tmp_path, stream, how):
    from ringfence.replication import NatsLink, sign_leader

    target = parse_target(f"{NATS_URL}/{stream}")
    link = NatsLink(target)
    try:
        kv = link.ensure_stream_and_bucket()
        record = {"epoch": 1, "node": "a", "lease_ms": 0, "renewed_at_ns": time.time_ns()}
        value = json.dumps(record).encode() if how == "unsigned" else sign_leader(Ed25519PrivateKey.generate(), stream, record)
        link.call(kv.put("leader", b"{not json" if how == "not-json" else value))
    finally:
        link.close()
    named = "'' at epoch 0" if how == "not-json" else "'a' at epoch 1"
    with pytest.raises(Fenced, match=f"forged leader record: it names {named}"):
        Replicator(target, "a", key=key_of("a"))


def test_a_primary_whose_record_is_overwritten_with_a_forgery_stops_acknowledging(tmp_path, stream):
    with running(*_primary(tmp_path, stream, "?lease_ms=300")) as (node, replicator):
        _, revision = leader_of(replicator.link, replicator.kv)
        forged = {"epoch": 1, "node": "a", "lease_ms": 300, "renewed_at_ns": time.time_ns()}
        replicator.link.call(replicator.kv.update("leader", json.dumps(forged).encode(), last=revision))
        deadline = time.monotonic() + 5
        while node.failed is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert isinstance(node.failed, Fenced) and "forged leader record" in str(node.failed), node.failed
