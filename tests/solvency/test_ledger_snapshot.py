"""Proof of liabilities from the ledger itself: the tree's totals equal the users' ledger balances at
the snapshot's journal position, holds count as owed, system accounts do not, and each user's proof
verifies offline and carries exactly their balances."""

import random
import subprocess
import sys

from ringfence.demo import run_demo
from ringfence.app import replay_journal
from ringfence.ledger.model import SYSTEM_OWNER
from ringfence.solvency.ledger_source import snapshot_from_engine, snapshot_from_journal
from ringfence.solvency.pol import build_liability_tree, verify_proof

SECRET = b"test-secret-for-ledger-snapshot-0123456789"


def ledger_user_totals(engine):
    totals = {}
    for account in engine.ledger.iter_accounts():
        if account.owner != SYSTEM_OWNER:
            totals[account.asset] = totals.get(account.asset, 0) + account.balance
    return totals


def test_liabilities_equal_the_ledger_user_balances(tmp_path):
    from rich.console import Console

    data = tmp_path / "node"
    data.mkdir()
    run_demo(data, 4, Console(file=open(tmp_path / "demo.txt", "w")))
    engine, _, _ = replay_journal(data, use_snapshots=False)
    snap = snapshot_from_engine(engine)
    assert snap.position == f"journal:{engine.last_seq}"
    expected = ledger_user_totals(engine)
    totals = snap.totals_minor()
    for code, amount in expected.items():
        assert totals[code] == amount  # no user is in debt in the demo, so nothing is floored
    # everything deposited (minus what the world side shows) is owed to users, except what the
    # exchange itself holds in system accounts (fees, shield fund, clearing)
    outside, house = {}, {}
    for a in engine.ledger.iter_accounts():
        if a.owner == SYSTEM_OWNER:
            bucket = outside if a.kind == "world" else house
            bucket[a.asset] = bucket.get(a.asset, 0) + a.balance
    assert totals == {code: -outside.get(code, 0) - house.get(code, 0) for code in totals}
    assert any(house.values()), "the demo trades, so fees and the shield fund hold something"

    tree = build_liability_tree(snap.snapshot_id, snap.asset_codes, snap.iter_accounts(), SECRET)
    assert [int(s) for s in tree.root_document()["root"]["sums"]] == [totals[c] for c in snap.asset_codes]
    for account_id, balances in snap.iter_accounts():
        proof = tree.proof_for(account_id)
        assert verify_proof(proof, tree.root_document())[0] is True
        assert [int(b) for b in proof["balances"]] == balances


def test_snapshot_at_an_earlier_position_and_holds_count(tmp_path):
    from rich.console import Console

    data = tmp_path / "node"
    data.mkdir()
    run_demo(data, 9, Console(file=open(tmp_path / "demo.txt", "w")))
    engine, _, _ = replay_journal(data, use_snapshots=False)
    for seq in random.Random(9).sample(range(1, engine.last_seq + 1), 5):
        at = snapshot_from_journal(data, seq)
        past, _, _ = replay_journal(data, use_snapshots=False, until_seq=seq)
        assert past.last_seq == seq and at.position == f"journal:{seq}"
        assert at.totals_minor() == {c: ledger_user_totals(past).get(c, 0) for c in at.asset_codes}


def test_por_snapshot_cli_from_a_data_directory(tmp_path):
    from rich.console import Console

    data = tmp_path / "node"
    data.mkdir()
    run_demo(data, 2, Console(file=open(tmp_path / "demo.txt", "w")))
    out = subprocess.run(
        [sys.executable, "-m", "ringfence.cli", "por", "snapshot", "--data", str(data), "--out", str(tmp_path / "s.json")],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "journal:" in out.stdout and "BTC: liabilities" in out.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "ringfence.cli", "por", "snapshot", "--data", str(data), "--balances", "x.csv"],
        capture_output=True, text=True, timeout=120,
    )
    assert bad.returncode == 2 and "exactly one" in bad.stderr
