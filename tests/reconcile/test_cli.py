"""`ringfence reconcile run|status|history` driven as a user would, in a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ringfence.ledger.commands import CreateTransfers, OpenAccount, RegisterAsset
from ringfence.ledger.model import Transfer
from ringfence.reconcile.reconciler import DEPOSIT_TRANSFER_CODE
from ringfence.app import new_node

RINGFENCE = [sys.executable, "-m", "ringfence.cli"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(RINGFENCE + list(args), capture_output=True, text=True, timeout=300)


def _make(path: Path, *, double_credit: bool) -> None:
    with new_node(path, fsync=False) as node:
        node.execute(RegisterAsset("BTC", 8, "crypto", "bitcoin"))
        node.execute(OpenAccount("alice", "BTC"))
        world, alice = node.engine.ledger.world("BTC").id, node.engine.ledger.get("alice", "BTC").id
        node.execute(CreateTransfers([Transfer(1, world, alice, 5_000, code=DEPOSIT_TRANSFER_CODE, user_data=0xABC)]))
        if double_credit:  # a second transfer id for the same chain deposit: an injected bug
            node.execute(CreateTransfers([Transfer(2, world, alice, 5_000, code=DEPOSIT_TRANSFER_CODE, user_data=0xABC)]))


def test_run_status_history_on_a_clean_and_a_broken_journal(tmp_path):
    clean = tmp_path / "clean"
    _make(clean, double_credit=False)
    out = _cli("reconcile", "run", str(clean))
    assert out.returncode == 0, out.stderr
    assert "reconciled:" in out.stdout
    out = _cli("reconcile", "status", str(clean))
    assert out.returncode == 0 and "no active halts" in out.stdout

    broken = tmp_path / "broken"
    _make(broken, double_credit=True)
    out = _cli("reconcile", "run", str(broken))
    assert out.returncode == 3, out.stdout + out.stderr
    assert "duplicate_credit" in out.stdout and "halt raised" in out.stdout
    out = _cli("reconcile", "status", str(broken), "--json")
    status = json.loads(out.stdout)
    [halt] = status["active_halts"]
    assert (halt["scope_kind"], halt["scope"], halt["level"]) == ("asset", "BTC", "WITHDRAWALS_PAUSED")
    assert json.loads(halt["evidence"])["subject"] == "deposit:abc"
    assert status["runs"][0]["mismatches"] == 1
    out = _cli("reconcile", "run", str(broken))  # seen again: same halt, not a second one
    assert out.returncode == 3 and "halt active" in out.stdout
    out = _cli("reconcile", "history", str(broken), "--json")
    [incident] = json.loads(out.stdout)
    assert incident["kind"] == "duplicate_credit" and incident["seen_count"] == 2
    out = _cli("reconcile", "history", str(broken))
    assert "duplicate_credit" in out.stdout


def test_bad_dir_is_a_clear_error(tmp_path):
    out = _cli("reconcile", "run", str(tmp_path / "nope"))
    assert out.returncode == 2 and "DIR:" in out.stderr
    assert "Example:" in _cli("reconcile", "run", "--help").stdout


def test_operators_lift_a_halt_from_the_command_line(tmp_path):
    import time

    from ringfence.staff.decisions import write_key_file
    from ringfence.staff.desk import StaffDesk

    from .conftest import operator_keys

    keys = operator_keys(3)
    data = tmp_path / "node"
    with new_node(data, fsync=False) as node:
        node.execute(StaffDesk(keys, time.time_ns).genesis({k: ["operator"] for k in keys}, 2))
    _make(data, double_credit=True)
    assert _cli("reconcile", "run", str(data)).returncode == 3
    [halt] = json.loads(_cli("reconcile", "status", str(data), "--json").stdout)["active_halts"]
    files = {}
    for name, key in keys.items():
        files[name] = tmp_path / f"{name}.key"
        write_key_file(files[name], key)
    sigs = []
    for name in ("op1", "op3"):
        out = _cli("reconcile", "approve", halt["halt_id"], "--raised-seq", str(halt["raised_seq"]),
                   "--reason", "double credit reversed", "--key", str(files[name]))
        assert out.returncode == 0, out.stderr
        sigs.append(out.stdout.strip())
    out = _cli("reconcile", "lift", str(data), halt["halt_id"], "--reason", "double credit reversed", "--approval", sigs[0])
    assert out.returncode == 1 and "rule 'quorum'" in out.stderr and "needs 2" in out.stderr
    out = _cli("reconcile", "lift", str(data), halt["halt_id"], "--reason", "another reason",
               "--approval", sigs[0], "--approval", sigs[1])
    assert out.returncode == 1 and "signature-valid" in out.stderr
    out = _cli("reconcile", "lift", str(data), halt["halt_id"], "--reason", "double credit reversed",
               "--approval", sigs[0], "--approval", sigs[1])
    assert out.returncode == 0 and "lifted" in out.stdout, out.stderr
    assert json.loads(_cli("reconcile", "status", str(data), "--json").stdout)["active_halts"] == []
    out = _cli("reconcile", "lift", str(data), halt["halt_id"], "--reason", "double credit reversed",
               "--approval", sigs[0], "--approval", sigs[1])
    assert out.returncode == 1  # replaying the same approvals lifts nothing
