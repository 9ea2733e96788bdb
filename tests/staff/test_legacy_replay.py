"""Journals from before staff identities still replay: the retired unsigned commands decode and
apply exactly as they did (their handlers stay); only a new submission is refused at the edge."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ringfence.app import new_node, replay_journal
from ringfence.custody.commands import SetApprover, custody_state
from ringfence.engine.node import Ack
from ringfence.errors import Forbidden
from ringfence.risk.halts import Halt, LiftHalt, RegisterOperators, halts_of, lift_message
from ringfence.staff import StaffKey


def _journal_as_an_old_release_did(node, command) -> list:
    """Written the way the sequencer writes a record (no edge precheck then)."""
    prepared, raw = node.prepare(command)
    ack = Ack(command=prepared, raw=raw)
    node._write_and_apply([ack])
    assert ack.events is not None
    return ack.events


def test_retired_operator_and_approver_records_replay_to_the_same_state(tmp_path) -> None:
    keys = {f"op{i}": Ed25519PrivateKey.from_private_bytes(bytes([i]) * 32) for i in (1, 2)}
    ops = [(k, StaffKey(k, v).public_hex) for k, v in keys.items()]
    with new_node(tmp_path / "n", fsync=False) as node:
        for command in (RegisterOperators(ops, 2), SetApprover("ana", ["analyst"])):
            with pytest.raises(Forbidden, match="retired"):
                node.execute(command)
            _journal_as_an_old_release_did(node, command)
        [raised] = node.execute(Halt("h", "venue", "*", "HALTED", "old incident"))
        message = lift_message("h", "fixed", raised.raised_seq)
        [lifted] = _journal_as_an_old_release_did(node, LiftHalt("h", "fixed", [(k, v.sign(message).hex()) for k, v in keys.items()]))
        assert type(lifted).__name__ == "HaltLifted"
        assert halts_of(node.engine).operators and custody_state(node.engine).approvers == {"ana": ["analyst"]}
        live = node.engine.state_hash()
    replayed, _, _ = replay_journal(tmp_path / "n", use_snapshots=False)
    assert replayed.state_hash() == live
    assert "h" not in halts_of(replayed).active
