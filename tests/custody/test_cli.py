"""`ringfence custody demo` (a real process: HSM signing runs in its own PKCS#11 process) and
`ringfence policy test FILE` (dry run with explanations; bad files get clear errors)."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from ringfence.cli import app
from ringfence.custody.localnet import DEFAULT_POLICY

runner = CliRunner()


def test_custody_demo_runs_end_to_end_with_hsm(tmp_path) -> None:
    data = tmp_path / "demo"
    cmd = [sys.executable, "-m", "ringfence.cli", "custody", "demo", "--data", str(data)]
    res = subprocess.run([sys.executable, "-c", "from ringfence.cli import main; main()", "custody", "demo", "--data",
                          str(data)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"reproduce with: {' '.join(cmd)}\n{res.stdout}\n{res.stderr}"
    line = next(x for x in res.stdout.splitlines()[::-1] if "custody demo done" in x or x.startswith('"'))
    summary = json.loads(res.stdout[res.stdout.index("custody demo done:") + len("custody demo done:"):].replace("\n", ""))
    assert summary["w1"] == "settled" and summary["w2"] == "settled" and summary["w2_review"] == "ana"
    assert summary["quarantined_score"] > 85 and summary["hsm"] is True and summary["hot_matches_chain"]
    assert summary["btc_dest"] == 50_000_000 and summary["alice_btc"] == 200_000_000 - 50_000_000 - 10_000
    assert "manual_review" in res.stdout and line
    res2 = runner.invoke(app, ["custody", "demo", "--data", str(data)])
    assert res2.exit_code == 2 and "is not empty" in " ".join(res2.output.split())


def test_policy_test_explains_each_decision(tmp_path) -> None:
    f = tmp_path / "policy.json"
    f.write_text(json.dumps(DEFAULT_POLICY))
    res = runner.invoke(app, ["policy", "test", str(f), "--json"])
    assert res.exit_code == 0, res.output
    out = {r["id"]: r for r in json.loads(res.output)}
    assert out["small-hot"]["action"] == "allow" and out["small-hot"]["rule"] == "hot-small"
    assert out["fresh-address"]["action"] == "delay" and out["fresh-address"]["rule"] == "new-address-cooling"
    assert out["large-btc"]["action"] == "approvals" and "2 from approver" in out["large-btc"]["detail"]
    assert out["risky"]["action"] == "deny" and "risk score 95 >= 90" in out["risky"]["reasons"]
    reqs = tmp_path / "reqs.json"
    reqs.write_text(json.dumps([{"id": "x", "asset": "DOGE", "amount_minor": 1, "wallet": "w", "wallet_tier": "cold",
                                 "wallet_balance_minor": 1000, "user_balance_minor": 1000, "allow_listed": False,
                                 "allow_list_age_s": -1, "risk_score": 0, "manual_review_flagged": False}]))
    res = runner.invoke(app, ["policy", "test", str(f), "-r", str(reqs)])
    assert res.exit_code == 0 and "default deny" in res.output


def test_policy_test_bad_files(tmp_path) -> None:
    f = tmp_path / "bad.json"
    f.write_text('{"version": 1, "rules": [{"name": "a", "when": {"amount_minor_gt": 5}, "action": {"type": "allow"}}]}')
    res = runner.invoke(app, ["policy", "test", str(f)])
    assert res.exit_code == 2 and "policy.rules[0].when" in res.output and "asset" in res.output
    f.write_text('{"version": 1, "rules": [{"when": {}, "action": {"type": "send-everything"}}]}')
    res = runner.invoke(app, ["policy", "test", str(f)])
    assert res.exit_code == 2 and "policy.rules[0].action.type" in res.output
    f.write_text("{not json")
    res = runner.invoke(app, ["policy", "test", str(f)])
    assert res.exit_code == 2 and "not valid JSON" in res.output
    res = runner.invoke(app, ["policy", "test", str(tmp_path / "missing.json")])
    assert res.exit_code == 2 and "cannot read" in res.output
    assert runner.invoke(app, ["policy", "test", "--help"]).output.count("Example") == 1
    assert "Example" in runner.invoke(app, ["custody", "demo", "--help"]).output


def test_policy_test_against_a_journal_redecides_recorded_withdrawals(net, tmp_path) -> None:
    from .flows import fund_btc, outside_btc_address

    fund_btc(net, "alice", 300_000_000)
    net.request("j1", "alice", "BTC", outside_btc_address(50), 10_000_000)
    net.request("j2", "alice", "BTC", outside_btc_address(51), 150_000_000)
    net.withdrawals.run_until_idle()
    strict = tmp_path / "strict.json"
    strict.write_text(json.dumps({"version": 1, "rules": [
        {"name": "small-only", "when": {"asset": ["BTC"], "amount_minor_lte": 50_000_000}, "action": {"type": "allow"}}]}))
    res = runner.invoke(app, ["policy", "test", str(strict), "--journal", str(net.data_dir), "--json"])
    assert res.exit_code == 0, res.output
    out = {r["id"]: r for r in json.loads(res.output)}
    assert out["j1"]["was"] == "allow (hot-small)" and out["j1"]["action"] == "allow"
    assert out["j2"]["was"] == "approvals (large-btc)" and out["j2"]["action"] == "deny"
    res = runner.invoke(app, ["policy", "test", str(strict), "--journal", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "--journal" in res.output and "does not exist" in res.output  # the shared DIR check
