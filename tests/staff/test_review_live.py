"""Review queues and policy votes through the console against a real `ringfence serve` process, then
the withdrawal audited offline from the journal.

The data directory is prepared first (staff genesis, an ETH hot wallet, a policy, two withdrawals
waiting for people), then served; the console lists the queue, approves (one identity holding two
roles counts once), rejects a manual review, votes on a policy; `ringfence audit withdrawal`
re-verifies every approval's signature against the keys registered at that sequence. Each command group
runs in a `ringfence` process of its own at least once (a refusal and an acceptance among them); the other
calls run the same command code in this process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ringfence.app import new_node
from ringfence.staff.decisions import write_key_file
from tests.api.conftest import Invoked, Server, invoke

from .rig import POLICY, Rig


def process(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`ringfence ARGS` in a process of its own: its real exit code and streams."""
    return subprocess.run([sys.executable, "-m", "ringfence.cli", *args], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, COLUMNS="200", **(env or {})))


def cli(*args: str, env: dict[str, str | None] | dict[str, str] | None = None) -> Invoked:
    """`ringfence ARGS` in this process (tests/api/conftest.py invoke: the same command code without a Python start
    per call); each command group also runs once in a process of its own (`process`)."""
    return invoke(*args, env=env)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("review")
    data = root / "data"
    with new_node(data / "engine", fsync=False) as node:
        rig = Rig(node=node).custody()
        rig.withdrawal("w-big", 2 * 10**18)  # rule large-eth: 2 approvals, roles approver or operator
        rig.withdrawal("w-huge", 6 * 10**18)  # rule review-huge: manual review
        rig.withdrawal("w-page", 3 * 10**18 + 7)  # approved in the browser (an amount past 2**53)
        # a tainted deposit for alice: quarantined until a declaration and an analyst's release
        from ringfence.custody.commands import CreditDeposit, FileSourceOfFunds, ObserveDeposit

        txid = "0x" + "7a" * 32
        rig.run(ObserveDeposit("ethereum", txid, 0, "ETH", "0x" + "01" * 20, 5 * 10**18, 2, "0x" + "cc" * 32))
        rig.run(CreditDeposit("ethereum", txid, 0, 1, 90, ["1 hop from a sanctioned address"]))
        rig.run(FileSourceOfFunds("ethereum", txid, 0, "alice", "Salary from my employer, payslips attached."))
    for staff_id, key in rig.keys.items():
        write_key_file(root / f"{staff_id}.key", key)
    srv = Server(data, demo=False)
    yield srv, root
    assert srv.stop() == 0


def test_review_approve_reject_and_policy_votes_then_audit(prepared) -> None:
    srv, keys = prepared
    url = ("--url", srv.base)
    queue = json.loads(process("review", "list", "--key", str(keys / "ana.key"), "--json", *url).stdout)
    by_id = {w["withdrawal_id"]: w for w in queue["withdrawals"]}
    assert by_id["w-big"]["rule"] == "large-eth" and by_id["w-big"]["required_approvals"] == 2
    assert by_id["w-huge"]["state"] == "manual_review"
    # amounts in the asset's decimals next to the exact minor units (w-page is past 2**53: no float)
    assert (by_id["w-big"]["amount"], by_id["w-big"]["amount_minor"]) == ("2", str(2 * 10**18))
    assert by_id["w-page"]["amount"] == "3.000000000000000007"
    assert queue["deposits"][0]["amount"] == "5" and queue["deposits"][0]["amount_minor"] == str(5 * 10**18)
    table = cli("review", "list", "--key", str(keys / "ana.key"), *url).stdout
    assert "3.000000000000000007 ETH" in table and "minor" not in table, table

    assert cli("review", "approve", "w-big", "--role", "approver", "--key", str(keys / "mal.key"), *url).returncode == 0
    out = process("review", "approve", "w-big", "--role", "operator", "--key", str(keys / "mal.key"), *url)
    assert out.returncode == 1 and "rule 'distinct-people'" in out.stderr, out.stderr
    out = cli("review", "approve", "w-big", "--role", "operator", "--key", str(keys / "ben.key"), *url)
    assert out.returncode == 0 and "approved" in out.stdout, out.stderr

    out = cli("review", "reject", "w-huge", "--reason", "user did not confirm", "--key", str(keys / "ada.key"), *url)
    assert out.returncode == 1 and "rule 'role-required'" in out.stderr  # ada is no analyst
    out = cli("review", "reject", "w-huge", "--reason", "user did not confirm", "--key", str(keys / "ana.key"), *url)
    assert out.returncode == 0 and "withdrawal.rejected" in out.stdout, out.stderr

    policy = keys / "policy.json"
    policy.write_text(json.dumps(POLICY | {"approval_ttl_s": 1800}))
    assert process("policy", "propose", "p-next", str(policy), "--key", str(keys / "pat.key"), *url).returncode == 0
    out = process("policy", "approve", "p-next", "--key", str(keys / "pat.key"), *url)
    assert out.returncode == 1 and "rule 'never-the-initiator'" in out.stderr
    assert cli("policy", "approve", "p-next", "--key", str(keys / "pia.key"), *url).returncode == 0
    assert cli("policy", "approve", "p-next", "--key", str(keys / "pol.key"), *url).returncode == 0
    shown = json.loads(cli("policy", "show", "--key", str(keys / "pol.key"), "--json", *url).stdout)
    assert {p["proposal_id"]: p["state"] for p in shown["proposals"]}["p-next"] == "scheduled"

    # offline audit (read-only, while the server runs)
    out = process("audit", "withdrawal", "w-big", "--data", str(srv.data), "--json")
    assert out.returncode == 0, out.stderr
    record = json.loads(out.stdout)
    assert record["policy"]["rule"] == "large-eth" and record["policy"]["policy_text"]
    accepted = [d for d in record["decisions"] if d["accepted"]]
    assert [(d["staff_id"], d["role"]) for d in accepted] == [("mal", "approver"), ("ben", "operator")]
    assert all(d["verified"] and len(d["signature"]) == 128 for d in accepted)
    assert len(record["decisions"]) == 2  # mal's second approval was refused at the edge: never journaled
    assert {k["staff_id"] for k in record["staff_keys"]} >= {"mal", "ben"}
    assert record["verified"] is True
    out = cli("audit", "withdrawal", "w-big", "--data", str(srv.data))
    assert out.returncode == 0 and "verified" in out.stdout and "large-eth" in out.stdout


def test_audit_detects_a_tampered_signature(tmp_path) -> None:
    """The auditor's check is independent of the engine's: a record whose signature does not match
    the decision (written bypassing the engine's checks) is reported as not verified."""
    from ringfence.custody.staff_cmds import ApproveWithdrawalSigned
    from ringfence.engine.node import Ack
    from ringfence.staff.audit import audit_withdrawal
    from ringfence.staff.decisions import StaffSignature

    with new_node(tmp_path / "n", fsync=False) as node:
        rig = Rig(node=node).custody()
        rig.withdrawal("w1", 2 * 10**18)
        good = rig.desk.approve_withdrawal(node.engine, "w1", "ada", "approver")
        node.execute(good)
        # a record the engine would refuse, written the way the sequencer writes (no precheck), as a
        # compromised writer would: the handler refuses it too, and the audit says so
        bad_sig = StaffSignature("ben", "ab" * 16, good.decision.expires_ns, "00" * 64)
        prepared, raw = node.prepare(ApproveWithdrawalSigned("w1", "ETH", "eth_hot", "operator", bad_sig))
        ack = Ack(command=prepared, raw=raw)
        node._write_and_apply([ack])
    record = audit_withdrawal(tmp_path / "n", "w1")
    [ok, refused] = record["decisions"]
    assert ok["verified"] and ok["accepted"]
    assert not refused["accepted"] and not refused["checks"]["signature"] and not refused["verified"]
    assert record["verified"] is True  # only accepted decisions count, and every accepted one verifies


def test_approve_in_the_console_page(prepared, tmp_path) -> None:
    """The page signs the approval over the same canonical subject as the engine (amount > 2**53)."""
    from pathlib import Path

    from playwright.sync_api import expect, sync_playwright

    from tests.staff.staff_login import staff_sign_in

    srv, keys = prepared
    assert Path("/usr/bin/chromium").exists(), "Debian chromium is missing"
    logins = {}
    for who in ("ada", "ana", "pia"):  # each member's console login, made by the operator on the command line
        out = tmp_path / f"{who}-login.json"
        made = cli("staff", "login", who, "--email", f"{who}@staff.example.com", "--data", str(srv.data), "--out", str(out),
                   env=srv.store_env)
        assert made.returncode == 0, made.stdout + made.stderr
        assert out.stat().st_mode & 0o777 == 0o600 and "password" not in made.stdout
        logins[who] = json.loads(out.read_text())
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        staff_sign_in(page, srv.base, logins["ada"])  # the console needs ada's staff session
        page.fill("#keyfile", (keys / "ada.key").read_text())
        page.click("#signin")
        expect(page.locator("#who")).to_have_text("signed in as ada")
        row = page.locator('#withdrawals tr[data-withdrawal="w-page"]')
        expect(row).to_contain_text("3.000000000000000007 ETH")
        row.locator(".decide-role").fill("approver")
        row.locator(".approve").click()
        expect(page.locator("#status")).to_contain_text("accepted (ApproveWithdrawalSigned)")
        expect(page.locator('#withdrawals tr[data-withdrawal="w-page"]')).to_contain_text("1/2 ada (approver)")
        page.locator('#withdrawals tr[data-withdrawal="w-page"] .approve').click()  # ada again: one person counts once
        expect(page.locator("#status")).to_contain_text("rule 'distinct-people'")
        # ada is no analyst: the deposit stays quarantined
        deposit = page.locator("#deposits tbody tr").first
        deposit.locator(".deposit-reason").fill("payslips checked")
        deposit.locator(".release").click()
        expect(page.locator("#status")).to_contain_text("rule 'role-required'")

        analyst = browser.new_page(viewport={"width": 1400, "height": 900})
        analyst.on("pageerror", lambda e: errors.append(str(e)))
        staff_sign_in(analyst, srv.base, logins["ana"])  # the console needs ana's staff session
        analyst.fill("#keyfile", (keys / "ana.key").read_text())
        analyst.click("#signin")
        expect(analyst.locator("#who")).to_have_text("signed in as ana")
        deposit = analyst.locator("#deposits tbody tr").first
        expect(deposit).to_contain_text("5 ETH")
        deposit.locator(".deposit-reason").fill("payslips checked")
        deposit.locator(".release").click()
        expect(analyst.locator("#status")).to_contain_text("accepted (ReviewQuarantineSigned)")
        expect(analyst.locator("#deposits tbody tr")).to_have_count(0)

        policy = tmp_path / "policy.json"
        policy.write_text(json.dumps(POLICY | {"approval_ttl_s": 900}))
        assert cli("policy", "propose", "p-page", str(policy), "--key", str(keys / "pat.key"), "--url", srv.base).returncode == 0
        admin = browser.new_page(viewport={"width": 1400, "height": 900})
        admin.on("pageerror", lambda e: errors.append(str(e)))
        staff_sign_in(admin, srv.base, logins["pia"])  # the console needs pia's staff session
        admin.fill("#keyfile", (keys / "pia.key").read_text())
        admin.click("#signin")
        admin.locator('#proposals tr[data-proposal="p-page"] .approve').click()
        expect(admin.locator("#status")).to_contain_text("accepted (ApprovePolicySigned)")
        expect(admin.locator('#proposals tr[data-proposal="p-page"]')).to_contain_text("pia")
        assert not errors, errors
        browser.close()


@pytest.mark.store  # `staff login` writes to the server's store: `make test` runs this again on PostgreSQL
def test_staff_login_defaults_to_the_demo_folder_and_refuses_strangers(prepared, tmp_path) -> None:
    """`staff login` without --data uses ./ringfence-data/serve (what `make serve-demo` runs on), refuses a
    folder that is not a node's (naming --data) and a staff id the register does not hold; nothing is written."""
    srv, _ = prepared
    env = {k: v for k, v in os.environ.items() if k != "RINGFENCE_DATABASE_URL"}

    def login(cwd, *args: str, store: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "ringfence.cli", "staff", "login", *args], capture_output=True,
                              text=True, timeout=120, cwd=cwd, env=dict(env, COLUMNS="200", **(store or {})))

    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "cy-login.json"
    bare = login(empty, "cy", "--email", "cy@staff.example.com", "--out", str(out))
    assert bare.returncode == 2 and "--data: ringfence-data/serve holds no node and identity store" in bare.stderr, bare.stderr
    assert not (empty / "ringfence-data").exists() and not out.exists()
    # the refusals with --data (the folder the command runs in does not matter to them): the same command code in this
    # process (invoke), no Python start
    store = {"RINGFENCE_DATABASE_URL": srv.store_env.get("RINGFENCE_DATABASE_URL")}  # None: unset, the folder's SQLite file
    nobody = cli("staff", "login", "nobody", "--email", "nobody@example.com", "--data", str(srv.data), "--out", str(out), env=store)
    assert nobody.returncode == 2 and "'nobody' is not an active member of the staff register" in nobody.stderr
    assert "ada, ana, ben" in nobody.stderr and not out.exists(), nobody.stderr
    home = tmp_path / "home"
    (home / "ringfence-data").mkdir(parents=True)
    (home / "ringfence-data" / "serve").symlink_to(srv.data)
    # the default store: ./ringfence-data/serve's SQLite file, or the database RINGFENCE_DATABASE_URL names (the
    # suite's PostgreSQL profile, tests/pgtest.py), which then wins over the folder as it does for serve
    made = login(home, "cy", "--email", "cy@staff.example.com", "--out", str(out), store=srv.store_env)
    assert made.returncode == 0, made.stderr
    assert json.loads(out.read_text())["email"] == "cy@staff.example.com"
    again = cli("staff", "login", "cy", "--email", "cy2@staff.example.com", "--data", str(srv.data), "--out", str(tmp_path / "x"),
                env=store)
    assert again.returncode == 1 and "cy has a console login already" in again.stderr, "the same store: " + again.stderr
