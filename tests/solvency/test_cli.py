"""`ringfence por snapshot | publish | verify`, end to end through the real entry point."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from embit import ec, script
from embit.networks import NETWORKS
from typer.testing import CliRunner

from ringfence.cli import app
from ringfence.solvency.pol import ProofStore, verify_proof
from ringfence.solvency.reserves import ownership_message, sign_bitcoin_message
from ringfence.solvency.vectors import tamper

runner = CliRunner()
RINGFENCE = [sys.executable, "-m", "ringfence.cli"]

ENTRIES = [
    # alice: spot + margin across segments; her BTC nets to 1.2
    {"account_id": "alice", "asset": "BTC", "amount": "1.5", "segment": "spot"},
    {"account_id": "alice", "asset": "BTC", "amount": "-0.3", "segment": "derivatives"},
    {"account_id": "alice", "asset": "ETH", "amount": "2", "segment": "spot"},
    # bob owes ETH overall: a debt, floored to zero in liabilities
    {"account_id": "bob", "asset": "ETH", "amount": "1", "segment": "spot"},
    {"account_id": "bob", "asset": "ETH", "amount": "-3", "segment": "derivatives"},
    {"account_id": "bob", "asset": "BTC", "amount": "0.00000001", "segment": "spot"},
    {"account_id": "carol", "asset": "BTC", "amount": "0.5", "segment": "spot"},
]


def write_balances(tmp: Path) -> Path:
    path = tmp / "balances.json"
    path.write_text(json.dumps({"position": "journal:42", "assets": [{"code": "BTC", "decimals": 8},
                                                                     {"code": "ETH", "decimals": 18}],
                                "entries": ENTRIES}))
    return path


def test_snapshot_publish_verify(tmp_path: Path) -> None:
    balances = write_balances(tmp_path)
    snap_file = tmp_path / "snapshot.json"
    res = runner.invoke(app, ["por", "snapshot", "--balances", str(balances), "--out", str(snap_file)])
    assert res.exit_code == 0, res.output
    snap = json.loads(snap_file.read_text())
    rows = dict((a, r) for a, r in snap["accounts"])
    assert rows == {"alice": ["120000000", "2000000000000000000"], "bob": ["1", "0"], "carol": ["50000000", "0"]}
    assert snap["debts_minor"] == {"BTC": "0", "ETH": "2000000000000000000"}

    # Reserves evidence: one BTC address proven, one forged.
    snapshot_id = snap["snapshot_id"]
    net = NETWORKS["regtest"]
    k1, k2 = hashlib.sha256(b"k1").digest(), hashlib.sha256(b"k2").digest()
    a1 = script.p2wpkh(ec.PrivateKey(k1).get_public_key()).address(net)
    a2 = script.p2wpkh(ec.PrivateKey(k2).get_public_key()).address(net)
    (tmp_path / "utxos.json").write_text(json.dumps({"chain": "bitcoin", "asset": "BTC", "height": 500, "utxos": [
        {"txid": "aa" * 32, "vout": 0, "address": a1, "value_minor": "300000000", "height": 10},
        {"txid": "bb" * 32, "vout": 0, "address": a2, "value_minor": "999900000000", "height": 10}]}))
    evidence = {
        "snapshot_id": snapshot_id,
        "chains": {"bitcoin": {"type": "utxo-registry", "path": "utxos.json", "height": 400}},
        "addresses": [
            {"chain": "bitcoin", "asset": "BTC", "address": a1, "type": "bitcoin", "network": "regtest",
             "signature": sign_bitcoin_message(k1, ownership_message(snapshot_id, "bitcoin", a1))},
            {"chain": "bitcoin", "asset": "BTC", "address": a2, "type": "bitcoin", "network": "regtest",
             "signature": sign_bitcoin_message(k1, ownership_message(snapshot_id, "bitcoin", a2))},
        ],
        "shield_fund": {"BTC": "0.1"},
    }
    (tmp_path / "evidence.json").write_text(json.dumps(evidence))

    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("RINGFENCE_ENV", "RINGFENCE_POR_SECRET")}
    res = runner.invoke(app, ["por", "publish", str(out), "--snapshot", str(snap_file),
                              "--reserves", str(tmp_path / "evidence.json")], env=env)
    assert res.exit_code == 2 and "RINGFENCE_POR_SECRET" in res.output  # no default secret outside dev
    res = runner.invoke(app, ["por", "publish", str(out), "--snapshot", str(snap_file),
                              "--reserves", str(tmp_path / "evidence.json")],
                        env={**env, "RINGFENCE_POR_SECRET": "q" * 64})
    assert res.exit_code == 0, res.output
    assert "q" * 32 not in res.output
    root = json.loads((out / "root.json").read_text())
    assert root["root"]["sums"] == ["170000001", "2000000000000000000"]  # = ledger user balances, floored
    report = json.loads((out / "reserves.json").read_text())
    btc = report["assets"][0]
    assert btc["reserves_minor"] == "300000000" and btc["coverage_percent"] == "176.47"
    assert btc["shield_fund_minor"] == "10000000"
    assert report["chain_heights"] == {"bitcoin": 400}
    assert report["assets"][1]["debts_minor"] == "2000000000000000000"
    assert "<svg" in (out / "report.html").read_text()

    store = ProofStore(out / "proofs")
    proof = store.proof_for("alice")
    assert proof["balances"] == ["120000000", "2000000000000000000"]
    proof_file = tmp_path / "alice.json"
    proof_file.write_text(json.dumps(proof))

    # verify through the real console entry point
    run = subprocess.run(RINGFENCE + ["por", "verify", str(proof_file), "--root", str(out / "root.json")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.strip().splitlines()
    assert lines[-1] == "por: VALID"
    assert "Never share your nonce" in run.stdout
    assert any(line.strip().startswith("BTC") and "120000000" in line and "170000001" in line for line in lines)
    assert any(line.strip().startswith("ETH") for line in lines)

    bad_file = tmp_path / "bad.json"
    for name in ("balance", "sibling_hash", "fraction", "missing_field"):
        bad_file.write_text(json.dumps(tamper(proof, name)))
        res = runner.invoke(app, ["por", "verify", str(bad_file), "--root", str(out / "root.json")])
        assert res.exit_code == 1, name
        last = res.output.strip().splitlines()[-1]
        assert last.startswith("por: INVALID: ") and last == f"por: INVALID: {verify_proof(tamper(proof, name))[1]}"

    # a proof checked against another snapshot's root file fails
    other_root = dict(root, snapshot_id="00" * 32)
    (tmp_path / "other.json").write_text(json.dumps(other_root))
    res = runner.invoke(app, ["por", "verify", str(proof_file), "--root", str(tmp_path / "other.json")])
    assert res.exit_code == 1 and "different snapshot" in res.output


def test_csv_snapshot_and_dev_mode(tmp_path: Path) -> None:
    csv_file = tmp_path / "b.csv"
    csv_file.write_text("account_id,asset,amount,segment\nu1,BTC,0.5,spot\nu2,BTC,1,spot\nu1,BTC,0.25,margin\n")
    res = runner.invoke(app, ["por", "snapshot", "--balances", str(csv_file), "--out", str(tmp_path / "s.json")])
    assert res.exit_code == 2 and "--asset" in res.output
    res = runner.invoke(app, ["por", "snapshot", "--balances", str(csv_file), "--asset", "BTC:8",
                              "--position", "journal:1042", "--out", str(tmp_path / "s.json")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "s.json").read_text())["position"] == "journal:1042"
    res = runner.invoke(app, ["por", "publish", str(tmp_path / "o"), "--snapshot", str(tmp_path / "s.json"),
                              "--dev", "--min-leaf-count", "64"])
    assert res.exit_code == 0, res.output
    root = json.loads((tmp_path / "o" / "root.json").read_text())
    assert root["root"]["leaf_count"] == 64 and root["root"]["sums"] == ["175000000"]
    report = json.loads((tmp_path / "o" / "reserves.json").read_text())
    assert report["reserves_proven"] is False and report["assets"][0]["coverage_percent"] is None
    assert "no reserves evidence" in (tmp_path / "o" / "report.html").read_text()


@pytest.mark.parametrize("amount, fragment", [("1.123456789", "decimal places"), ("1e5", "exponent"),
                                              ("NaN", "NaN"), ("", "empty")])
def test_bad_balances_are_rejected_naming_the_row(tmp_path: Path, amount: str, fragment: str) -> None:
    csv_file = tmp_path / "b.csv"
    csv_file.write_text(f"account_id,asset,amount\nu1,BTC,{amount}\n")
    res = runner.invoke(app, ["por", "snapshot", "--balances", str(csv_file), "--asset", "BTC:8",
                              "--out", str(tmp_path / "s.json")])
    assert res.exit_code == 2
    assert "row 2.amount" in res.output and fragment in res.output
    assert not (tmp_path / "s.json").exists()


def test_verify_unreadable_and_garbage(tmp_path: Path) -> None:
    res = runner.invoke(app, ["por", "verify", str(tmp_path / "missing.json")])
    assert res.exit_code == 1 and res.output.strip().splitlines()[-1].startswith("por: INVALID: ")
    (tmp_path / "g.json").write_text("{not json")
    res = runner.invoke(app, ["por", "verify", str(tmp_path / "g.json")])
    assert res.exit_code == 1 and "not valid JSON" in res.output


def test_every_command_has_help_with_example() -> None:
    for cmd in ("snapshot", "publish", "verify"):
        res = runner.invoke(app, ["por", cmd, "--help"])
        assert res.exit_code == 0 and "Example:" in res.output


def test_docs_balances_example_and_api_helpers(tmp_path: Path) -> None:
    import re

    from ringfence.solvency import proof_for, verifier_page_path

    docs = (Path(__file__).resolve().parents[2] / "docs" / "por.md").read_text(encoding="utf-8")
    block = next(b for b in re.findall(r"```json\n(.*?)```", docs, re.S) if '"entries"' in b)
    (tmp_path / "balances.json").write_text(block)
    res = runner.invoke(app, ["por", "snapshot", "--balances", str(tmp_path / "balances.json"),
                              "--out", str(tmp_path / "s.json")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["por", "publish", str(tmp_path / "out"), "--snapshot", str(tmp_path / "s.json"),
                              "--dev", "--json-proofs"])
    assert res.exit_code == 0, res.output
    proof = proof_for("alice", tmp_path / "out" / "proofs")
    assert proof["balances"] == ["120000000", "0"]
    root = json.loads((tmp_path / "out" / "root.json").read_text())
    assert verify_proof(proof, root) == (True, "valid")
    lines = (tmp_path / "out" / "proofs-jsonl" / "00000.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [proof]
    assert "ringfencePor" in verifier_page_path().read_text(encoding="utf-8")


def test_verify_shows_amounts_with_the_asset_and_keeps_the_minor_units(tmp_path: Path) -> None:
    """With the published reserves.json (beside --root, or --reserves) the balances are decimal
    amounts with their asset, the exact minor units beside them; without it, minor units and a hint."""
    import re

    from ringfence.solvency import proof_for

    docs = (Path(__file__).resolve().parents[2] / "docs" / "por.md").read_text(encoding="utf-8")
    block = next(b for b in re.findall(r"```json\n(.*?)```", docs, re.S) if '"entries"' in b)
    (tmp_path / "balances.json").write_text(block)
    assert runner.invoke(app, ["por", "snapshot", "--balances", str(tmp_path / "balances.json"),
                               "--out", str(tmp_path / "s.json")]).exit_code == 0
    out = tmp_path / "out"
    res = runner.invoke(app, ["por", "publish", str(out), "--snapshot", str(tmp_path / "s.json"), "--dev", "--json-proofs"])
    assert res.exit_code == 0, res.output
    proof = proof_for("alice", out / "proofs")
    (tmp_path / "alice.json").write_text(json.dumps(proof))
    total = json.loads((out / "root.json").read_text())["root"]["sums"][0]
    res = runner.invoke(app, ["por", "verify", str(tmp_path / "alice.json"), "--root", str(out / "root.json")])
    assert res.exit_code == 0, res.output
    whole, frac = total[:-8] or "0", total[-8:].rjust(8, "0").rstrip("0")
    assert (f"BTC  your balance 1.2 BTC, included in total {whole}{'.' + frac if frac else ''} BTC "
            f"(minor units: 120000000 of {total})") in res.output
    assert "minor units:" in res.output and res.output.strip().splitlines()[-1] == "por: VALID"
    # a reserves file elsewhere, named with --reserves
    (out / "reserves.json").rename(tmp_path / "reserves.json")
    res = runner.invoke(app, ["por", "verify", str(tmp_path / "alice.json"), "--root", str(out / "root.json"),
                              "--reserves", str(tmp_path / "reserves.json")])
    assert res.exit_code == 0 and "your balance 1.2 BTC" in res.output
    # none: minor units, as the proof holds them, and how to see amounts
    res = runner.invoke(app, ["por", "verify", str(tmp_path / "alice.json")])
    assert res.exit_code == 0 and "your balance 120000000 (minor units)" in res.output and "--reserves" in res.output
    assert proof["balances"][0] == "120000000"  # the proof itself is unchanged: minor units
