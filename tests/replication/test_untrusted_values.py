"""Fourth intruder review (session 15) of the replication: values read from NATS, against the real JetStream.

F1/F6: a promotion request, the leader record, an approval token or a fence's grant is written by
whoever holds a credential (rf-operator, rf-node) or a stolen node key. Nested 60 KB JSON raised
RecursionError, a 5000-digit EXPIRES_NS a ValueError (CPython's int digit limit): a standby died on
every start, `replication status` printed a traceback. Now each is refused with one line.
F3: an unverified leader record with a huge epoch raised every later epoch: no promotion was
possible. Now the next epoch comes only from verified sources. Each test fails without its fix.
"""

from __future__ import annotations

import json

import pytest

from ringfence.replication import (Fenced, Refused, Replicator, leader_of, parse_target, promote, request_key)

from .conftest import NATS_URL, key_of, peers_of, running, standby
from .test_residual_risks import _approvals, _grant, _intruder_fence, _staffed_primary

NESTED = ("[" * 30000 + "]" * 30000).encode()  # 60 KB: the bucket takes up to 64 KiB
HUGE_TOKEN = "ada:" + "ab" * 16 + ":" + "9" * 5000 + ":" + "cd" * 64  # a 5000-digit EXPIRES_NS


def _cli(*args: str) -> tuple[int, str]:
    from typer.testing import CliRunner

    from ringfence.cli import app

    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "300"})
    return result.exit_code, " ".join(result.output.split()) + (repr(result.exception) if result.exception and
                                                                  not isinstance(result.exception, SystemExit) else "")


@pytest.mark.parametrize("value", ["nested", "huge expiry", "not utf-8", "deep object"])
def test_a_junk_promotion_request_is_refused_and_the_standby_keeps_following(tmp_path, stream, value):
    """F1: rf-operator writes junk to promote.b: the standby answers `refused` naming why, and follows on."""
    node, replicator, keys = _staffed_primary(tmp_path, stream)
    target = parse_target(f"{NATS_URL}/{stream}")
    with running(node, replicator), standby(target, tmp_path, "b", peers=peers_of("a", "b")) as follower:
        follower.poll()
        body = {"nested": NESTED,
                "huge expiry": json.dumps({"epoch": 2, "node": "b", "status": "requested", "approvals": [HUGE_TOKEN]}).encode(),
                "not utf-8": b'{"epoch": 2, "status": "requested", "approvals": ["\xff\xfe"]}',
                "deep object": json.dumps({"status": "requested", "epoch": 2, "approvals": [],
                                           "x": json.loads("[" * 500 + "]" * 500)}).encode()}[value]
        replicator.link.call(replicator.kv.put(request_key("b"), body))
        seen: list[str] = []
        follower.on_progress = seen.append
        leader, revision = leader_of(follower.link, follower.kv)
        assert follower.consider_promotion(leader, revision) is False
        answer = json.loads(follower.link.call(follower.kv.get(request_key("b"))).value)
        assert answer["status"] == "refused", answer
        assert seen and seen[-1].split(" ", 1)[-1].startswith("standby b: promotion refused: ") and "\n" not in seen[-1], seen
        node.execute(__import__("ringfence.ledger.commands", fromlist=["OpenAccount"]).OpenAccount("bob", "BTC"))
        follower.poll()  # still following
        assert follower.engine.state_hash() == node.read(lambda e: e.state_hash())


def test_a_junk_leader_record_is_unreadable_and_status_says_so(tmp_path, stream):
    """F1: rf-node writes nested JSON as the leader record: leader_of calls it unreadable (no
    RecursionError), `replication status` prints it with exit 1 (forged), no traceback."""
    node, replicator, _ = _staffed_primary(tmp_path, stream)
    with running(node, replicator):
        replicator.link.call(replicator.kv.put("leader", NESTED))
        record, revision = leader_of(replicator.link, replicator.kv)
        assert record is not None and record.get("unreadable") and revision > 0, record
        peers = tmp_path / "peers.json"
        peers.write_text(json.dumps({n: key_of(n).public_key().public_bytes_raw().hex() for n in ("a", "b")}))
        code, out = _cli("replication", "status", "--nats", f"{NATS_URL}/{stream}", "--peers", str(peers))
        assert code == 1 and '"unreadable": true' in out and '"leader_signature": "forged"' in out, out
        assert "Traceback" not in out and "RecursionError" not in out, out


@pytest.mark.parametrize("body", ["huge expiry", "nested grant"])
def test_a_fence_with_a_junk_grant_is_refused_in_one_line(tmp_path, stream, body):
    """F6: a fence signed with b's stolen key whose grant holds a 5000-digit expiry (or nests deep):
    standby c refuses it (`Refused`, naming the fence), it does not die of a ValueError/RecursionError."""
    node, replicator, _ = _staffed_primary(tmp_path, stream)
    with running(node, replicator), standby(parse_target(f"{NATS_URL}/{stream}"), tmp_path, "c",
                                            peers=peers_of("a", "b", "c")) as follower:
        follower.poll()
        grant = {"huge expiry": _grant(stream, "b", 2, approvals=[HUGE_TOKEN, HUGE_TOKEN]),
                 "nested grant": b'{"format": "ringfence-grant-v1", "epoch": 2, "node": "b", "approvals": '
                                 + b"[" * 5000 + b"]" * 5000 + b"}"}[body]
        _intruder_fence(replicator, node, "b", 2, grant)
        last_seq = follower.engine.last_seq
        with pytest.raises(Refused, match="a fence of node 'b' opening epoch 2 is not granted") as refused:
            follower.poll()
        assert "\n" not in str(refused.value) and len(str(refused.value)) < 1000, refused.value
        assert follower.fence_epoch == 1 and follower.engine.last_seq == last_seq  # 1: the opener's epoch (message 1), no fence since


@pytest.mark.parametrize("forged_epoch", [999999999999999999, 5000])
def test_a_forged_leader_record_does_not_raise_the_next_epoch(tmp_path, stream, forged_epoch):
    """F3: rf-node writes an unsigned record naming a at a huge epoch: a fences itself (as designed);
    the operators still promote b at the next genuine epoch, 2 (its signed record replaces the forged
    one), and a, restarted, is told b leads (the way out, docs/resilience.md)."""
    node, replicator, keys = _staffed_primary(tmp_path, stream, "?lease_ms=400")
    target = parse_target(f"{NATS_URL}/{stream}")
    peers = peers_of("a", "b")
    with running(node, replicator), standby(target, tmp_path, "b", peers=peers) as follower:
        follower.poll()
        replicator.link.call(replicator.kv.put("leader", json.dumps({"epoch": forged_epoch, "node": "a"}).encode()))
        for _ in range(100):
            if node.failed is not None:
                break
            __import__("time").sleep(0.05)
        assert isinstance(node.failed, Fenced) and "forged leader record" in str(node.failed), node.failed
        follower.poll()
        leader, _ = leader_of(follower.link, follower.kv)
        assert follower._next_epoch(leader) == 2  # the standby's side: the forged epoch is not counted
        record = promote(target, "b", _approvals(keys, stream, "b", 2), epoch=2, peers=peers)
        assert record["epoch"] == 2
        assert follower.follow_until_promoted() == 2
        assert follower.memory.highest() == 2
        leader, _ = leader_of(follower.link, follower.kv)
        assert leader is not None and (leader["node"], leader["epoch"]) == ("b", 2)
    with pytest.raises(Fenced, match="node 'b' is the primary at epoch 2"):
        Replicator(target, "a", tmp_path / "a2", key=key_of("a"), peers=peers).close()


def test_promote_without_epoch_proposes_the_next_genuine_epoch(tmp_path, stream):
    """F3: with a forged record at a huge epoch, `promote` (no --epoch) asks for the next genuine epoch
    and returns only once the record is b's own, verified (a forged record naming b is no promotion)."""
    node, replicator, keys = _staffed_primary(tmp_path, stream)
    target = parse_target(f"{NATS_URL}/{stream}")
    peers = peers_of("a", "b")
    with running(node, replicator), standby(target, tmp_path, "b", peers=peers) as follower:
        follower.poll()
        replicator.link.call(replicator.kv.put("leader", json.dumps({"epoch": 10**17, "node": "b"}).encode()))
        request = promote(target, "b", _approvals(keys, stream, "b", 2), peers=peers, wait_s=0)
        assert request["epoch"] == 2, request
        with pytest.raises(Exception, match="did not answer"):  # the forged record names b: not taken as done
            promote(target, "b", _approvals(keys, stream, "b", 2), peers=peers, wait_s=0.5)


def test_the_promote_command_ignores_a_forged_record(tmp_path, stream):
    """F3, the intruder's own steps: a forged record names a at a huge epoch; `replication promote
    --node-id b --key ada --key ben` (no --epoch) promotes b at epoch 2 and says the record was ignored."""
    import threading

    from ringfence.staff.decisions import write_key_file

    node, replicator, keys = _staffed_primary(tmp_path, stream, "?lease_ms=400")
    target = parse_target(f"{NATS_URL}/{stream}")
    peers = peers_of("a", "b")
    peers_path = tmp_path / "peers.json"
    peers_path.write_text(json.dumps({n: key_of(n).public_key().public_bytes_raw().hex() for n in ("a", "b")}))
    for who in ("ada", "ben"):
        write_key_file(tmp_path / f"{who}.json", keys[who])
    with running(node, replicator), standby(target, tmp_path, "b", peers=peers) as follower:
        follower.poll()
        replicator.link.call(replicator.kv.put("leader", json.dumps({"epoch": 999999999999999999, "node": "a"}).encode()))
        stop, result = threading.Event(), []
        thread = threading.Thread(target=lambda: result.append(follower.follow_until_promoted(stop)))
        thread.start()
        try:
            code, out = _cli("replication", "promote", "--nats", f"{NATS_URL}/{stream}", "--peers", str(peers_path),
                             "--node-id", "b", "--key", str(tmp_path / "ada.json"), "--key", str(tmp_path / "ben.json"),
                             "--wait-s", "30")
        finally:
            thread.join(30)
            stop.set()
        assert code == 0 and "promoted b at epoch 2 (was an unverified record)" in out, out
        assert "the leader record (naming 'a') does not carry a valid signature" in out, out
        assert result == [2]


def test_a_primary_fenced_by_a_forged_record_comes_back_as_a_promoted_standby(tmp_path, stream):
    """F3, the other way out (docs/resilience.md): the primary a, fenced by a forged record at a huge
    epoch, is restarted with --standby on its own data and promoted at epoch 2; it leads again."""
    node, replicator, keys = _staffed_primary(tmp_path, stream, "?lease_ms=400")
    target = parse_target(f"{NATS_URL}/{stream}")
    peers = peers_of("a", "b")
    with running(node, replicator):
        replicator.link.call(replicator.kv.put("leader", json.dumps({"epoch": 999999999999999999, "node": "a"}).encode()))
        for _ in range(100):
            if node.failed is not None:
                break
            __import__("time").sleep(0.05)
        assert isinstance(node.failed, Fenced), node.failed
        state = node.read(lambda e: e.state_hash())
    with pytest.raises(Fenced, match="The way out: promote a standby"):
        Replicator(target, "a", tmp_path / "a2", key=key_of("a"), peers=peers).close()
    with standby(target, tmp_path, "a", peers=peers) as follower:  # a's own data folder, as `serve --standby`
        follower.poll()
        assert follower.engine.state_hash() == state
        promote(target, "a", _approvals(keys, stream, "a", 2), peers=peers)
        assert follower.follow_until_promoted() == 2
        leader, _ = leader_of(follower.link, follower.kv)
        assert leader is not None and (leader["node"], leader["epoch"]) == ("a", 2)
