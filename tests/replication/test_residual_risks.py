"""Third intruder review of #21 (signed replication): the residual risks, against the real NATS JetStream.

R1: a fence signed by any node of the peers file opened a new epoch: a stolen node key promoted its
own node. A fence now carries its grant (the operators' approvals, or a lease take-over) and every
node checks it against its own replica's staff register. R2: a replayed older genuine leader record
of the same epoch reset an auto-promoting standby's lease clock. R3 (rf-operator's grant) is in
test_nats_services; R4 (promote without --peers) in test_operator_ux. Each test fails without its fix.
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from ringfence import replication
from ringfence.app import new_node
from ringfence.ledger.commands import OpenAccount, RegisterAsset
from ringfence.replication import (KIND_FENCE, PROMOTE_ACTION, Fenced, NatsLink, Refused, Replicator,
                                   _headers, parse_target, promote, promote_subject, sign_leader, sign_message)
from ringfence.staff.decisions import StaffKey, format_approval
from ringfence.staff.demo import DEMO_QUORUM, DEMO_STAFF
from ringfence.staff.desk import StaffDesk

from .conftest import NATS_URL, key_of, peers_of, running, standby


def _staffed_primary(tmp_path, stream, query=""):
    """Primary a with the demo's staff register (operators ada and ben, quorum 2) and a little traffic."""
    node = new_node(tmp_path / "a")
    node.open()
    node.start()
    replicator = Replicator(parse_target(f"{NATS_URL}/{stream}{query}"), "a", key=key_of("a"), peers=peers_of("a", "b", "c"))
    replicator.attach(node)
    keys = {s: StaffKey.generate(s) for s in DEMO_STAFF}
    node.execute(StaffDesk(keys, time.time_ns).genesis(DEMO_STAFF, DEMO_QUORUM))
    node.execute(RegisterAsset("BTC", 8, "crypto", "bitcoin"))
    node.execute(OpenAccount("alice", "BTC"))
    return node, replicator, keys


def _approvals(keys, stream: str, node: str, epoch: int, who=("ada", "ben")) -> list[str]:
    expires = time.time_ns() + 600 * 10**9
    return [format_approval(keys[s].sign(PROMOTE_ACTION, promote_subject(stream, node, epoch), expires)) for s in who]


def _intruder_fence(replicator: Replicator, node: object, signer: str, epoch: int, body: bytes) -> None:
    """What a holder of `signer`'s node key and the rf-node credential can publish: a fence signed by it."""
    last = int(replicator.link.call(replicator.link.js.stream_info(replicator.target.stream)).state.last_seq)
    headers = _headers(KIND_FENCE, epoch, node.last_seq + 1, 0, replicator.last_hash, replicator.last_hash, "", last)
    headers["Rf-Pos"] = str(last + 1)
    sign_message(key_of(signer), signer, replicator.target.stream, headers, body)
    replicator.link.call(replicator.link.js.publish(replicator.target.subject, body, headers=headers,
                                                    stream=replicator.target.stream))


def _grant(stream: str, node: str, epoch: int, **fields) -> bytes:
    """A fence's grant as `fence_grant` writes it (spelt out: the test also runs against code without it)."""
    return json.dumps({"format": "ringfence-grant-v1", "epoch": epoch, "node": node, **fields}, sort_keys=True,
                      separators=(",", ":")).encode()


@pytest.mark.parametrize("forgery", ["no grant", "no approvals", "approvals for another node", "one operator",
                                     "take-over without leases"])
def test_a_stolen_node_key_cannot_open_an_epoch(tmp_path, stream, forgery):
    """R1: the intruder holds node b's key (and the rf-node credential): b's signed leader record and
    b's signed fence at epoch 2, without the operators' quorum. Standby c refuses the fence, appends
    nothing and names why; the primary, deposed by the record, says the epoch was not granted."""
    node, replicator, keys = _staffed_primary(tmp_path, stream, "?lease_ms=400")
    with running(node, replicator), standby(parse_target(f"{NATS_URL}/{stream}"), tmp_path, "c",
                                            peers=peers_of("a", "b", "c")) as follower:
        follower.poll()
        assert follower.engine.state_hash() == node.read(lambda e: e.state_hash())
        body = {"no grant": b"",
                "no approvals": _grant(stream, "b", 2, approvals=[]),
                "approvals for another node": _grant(stream, "b", 2, approvals=_approvals(keys, stream, "c", 2)),
                "one operator": _grant(stream, "b", 2, approvals=_approvals(keys, stream, "b", 2, who=("ada",))),
                "take-over without leases": _grant(stream, "b", 2, took_over_from="a")}[forgery]
        grant = json.loads(body) if body else {}
        record = {"epoch": 2, "node": "b", "lease_ms": 0, "renewed_at_ns": time.time_ns(), "renewal": 0,
                  **{k: v for k, v in grant.items() if k in ("approvals", "took_over_from")}}
        replicator.link.call(replicator.kv.put("leader", sign_leader(key_of("b"), stream, record)))
        deadline = time.monotonic() + 5
        while node.failed is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert isinstance(node.failed, Fenced), node.failed
        if forgery != "take-over without leases":  # (the primary's URL has a lease: a take-over is plausible to it)
            assert "that the operators did not grant" in str(node.failed), node.failed
        _intruder_fence(replicator, node, "b", 2, body)
        last_seq = follower.engine.last_seq
        with pytest.raises(Refused, match="a fence of node 'b' opening epoch 2 is not granted") as refused:
            follower.poll()
        expected = {"no grant": "carries no grant", "no approvals": "needs 2 distinct operators",
                    "approvals for another node": "approvals do not verify", "one operator": "needs 2 distinct operators",
                    "take-over without leases": "neither lease_ms nor auto_promote"}[forgery]
        assert expected in str(refused.value), refused.value
        assert follower.fence_epoch == 1 and follower.engine.last_seq == last_seq  # epoch 1: a's opener's


def test_a_granted_promotion_is_accepted_by_every_standby(tmp_path, stream):
    """R1, the other side: the operators' quorum promotes b; b's fence carries their approvals and
    standby c, which checks them against its own replica, follows b at epoch 2."""
    node, replicator, keys = _staffed_primary(tmp_path, stream)
    target = parse_target(f"{NATS_URL}/{stream}")
    with (running(node, replicator), standby(target, tmp_path, "b", peers=peers_of("a", "b", "c")) as b,
          standby(target, tmp_path, "c", peers=peers_of("a", "b", "c")) as c):
        b.poll()
        promote(target, "b", _approvals(keys, stream, "b", 2))
        assert b.follow_until_promoted() == 2
        c.poll()
        assert c.fence_epoch == 2 and c.engine.state_hash() == b.engine.state_hash()
        fence = c.link.call(c.link.js.get_msg(stream, c.stream_seq))
        assert (fence.headers["Rf-Kind"], json.loads(fence.data)["node"], len(json.loads(fence.data)["approvals"])) == \
            ("fence", "b", 2)


def test_a_replayed_leader_record_neither_renews_a_lease_nor_blocks_the_take_over(tmp_path, stream):
    """R2: the primary's lease (300 ms) runs out; an intruder with the rf-node credential puts an older
    genuine record of the same epoch back every 100 ms. Each put was a new revision, which the standby
    took for a renewal: it never took over. Now it knows the record is not newer than one it saw."""
    node = new_node(tmp_path / "a")
    node.open()
    node.start()
    url = f"{NATS_URL}/{stream}"
    replicator = Replicator(parse_target(url + "?lease_ms=300"), "a", key=key_of("a"), peers=peers_of("a", "b"))
    replicator.attach(node)
    node.execute(RegisterAsset("BTC", 8, "crypto", "bitcoin"))
    old = replicator.link.call(replicator.kv.get("leader")).value  # a genuine record, soon an old one
    time.sleep(0.5)  # a few renewals later
    attacker = NatsLink(parse_target(url))
    kv = attacker.ensure_stream_and_bucket()
    seen: list[str] = []
    stop = threading.Event()
    with standby(parse_target(url + "?auto_promote=1"), tmp_path, "b", peers=peers_of("a", "b")) as follower:
        follower.on_progress = seen.append
        follower.poll()
        replicator.close()  # the primary stops renewing: its lease runs out

        def replay() -> None:
            while not stop.wait(0.1):
                attacker.call(kv.put("leader", old))

        replayer = threading.Thread(target=replay)
        replayer.start()
        result: list[int] = []
        runner = threading.Thread(target=lambda: result.append(follower.follow_until_promoted(stop)))
        runner.start()
        try:
            deadline = time.monotonic() + 4
            while not any("claimed epoch 2" in line for line in seen) and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            stop.set()
            replayer.join(10)
            runner.join(15)
            attacker.close()
            node.close()
        assert any("claimed epoch 2" in line for line in seen), seen
        assert any("a replayed record; its lease is ignored" in line for line in seen), seen


def test_a_restarted_standby_does_not_check_again_a_fence_it_applied_past(tmp_path, stream, monkeypatch):
    """R1's compatibility: the grant is checked at the fence's position. A standby restarted later
    has a replica that moved on (here the approvals have expired in its sequencer time since): the
    fence it applied past before is history, not checked again; a new standby on a fresh folder
    checks it at its position, where the approvals were valid, and follows too."""
    node, replicator, keys = _staffed_primary(tmp_path, stream)
    target = parse_target(f"{NATS_URL}/{stream}")
    peers = peers_of("a", "b", "c", "fresh")
    expires = time.time_ns() + 3 * 10**9  # short-lived approvals
    monkeypatch.setattr(replication, "PROMOTION_MARGIN_NS", 0)  # (under the margin a promotion refuses: test_review16)
    tokens = [format_approval(keys[s].sign(PROMOTE_ACTION, promote_subject(stream, "b", 2), expires)) for s in ("ada", "ben")]
    with running(node, replicator), standby(target, tmp_path, "c", peers=peers) as c:
        with standby(target, tmp_path, "b", peers=peers) as b:
            b.poll()
            promote(target, "b", tokens)
            assert b.follow_until_promoted() == 2
            _, _, lock = b.hand_over()
            lock.release()
        c.poll()
        assert c.fence_epoch == 2
    time.sleep(max(0.0, (expires - time.time_ns()) / 1e9) + 0.2)  # the approvals expire
    primary = new_node(tmp_path / "b")
    primary.open()
    primary.start()
    leader = Replicator(target, "b", key=key_of("b"), peers=peers)
    with running(primary, leader):
        leader.attach(primary)
        primary.execute(OpenAccount("bob", "BTC"))  # sequencer time past the approvals' expiry
        with standby(target, tmp_path, "c", peers=peers) as c:  # restarted on its folder
            c.poll()
        with standby(target, tmp_path, "c", peers=peers) as c:  # again: its journal now holds that batch
            assert primary.read(lambda e: e.now_ns) > expires
            c.poll()
            assert c.fence_epoch == 2 and c.engine.state_hash() == primary.read(lambda e: e.state_hash())
        with standby(target, tmp_path, "fresh", peers=peers) as fresh:
            fresh.poll()
            assert fresh.fence_epoch == 2 and fresh.engine.state_hash() == primary.read(lambda e: e.state_hash())
