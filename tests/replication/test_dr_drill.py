"""`ringfence dr drill` end to end: both scenarios against the real NATS, report written and checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from api.conftest import ARGON2_TEST_COST, NO_CHAINS

from .conftest import NATS_URL


#: The primary's leadership lease. 500 ms was too short for a loaded CI machine: a primary starting
#: beside the suite went 500 ms without renewing (the demo's set-up and the start-up collection hold
#: the GIL), fenced itself before the partition and never became ready. The drill proves the same at
#: any length: the partitioned primary stops acknowledging within its lease.
LEASE_MS = 1500


def test_dr_drill_kill_and_partition(tmp_path, stream):
    """Both scenarios; their demo primaries start as every test server does: without custody chains
    (NO_CHAINS: the drill places BTCUSDT orders only; the chains' blocks and workers cost each start
    seconds of CPU) and with dev mode's least password-hash cost (the demo's staff logins at start)."""
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "ringfence.cli", "dr", "drill", "--nats", NATS_URL, "--seed", "5",
                           "--before", "16", "--after", "6", "--lease-ms", str(LEASE_MS), "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, **NO_CHAINS, **ARGON2_TEST_COST))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "dr drill: PASSED" in proc.stdout
    report = {r["scenario"]: r for r in json.loads((out / "report.json").read_text())}
    assert set(report) == {"kill", "partition"}
    for r in report.values():
        assert r["ok"] and r["acknowledged_lost"] == 0 and r["rpo_commands"] == 0, r
        assert r["state_hash_standby"] == r["state_hash_old_primary_at_cut"] and len(r["state_hash_standby"]) == 64
        assert r["acknowledged"] >= 8 + 6 and 0 < r["rto_ms"] < 60_000, r
    assert report["partition"]["old_primary_last_ack_after_failure_ms"] <= LEASE_MS
    page = (out / "report.html").read_text()
    assert page.count("<svg") == 2 and "SIGKILL" in page and "partition" in page and "<script" not in page
    # read as an operator would: the verdict first, then each scenario's RTO with its unit
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            view = browser.new_page()
            view.goto((out / "report.html").as_uri())
            expect(view.locator("#verdict")).to_contain_text("PASSED")
            for name in ("kill", "partition"):
                expect(view.locator(f"#{name} .rto")).to_have_text(f"{report[name]['rto_ms']:,} ms")
                expect(view.locator(f"#{name} .rpo")).to_have_text("0 commands")
                expect(view.locator(f"#{name} table.checks")).not_to_contain_text("FAIL")
        finally:
            browser.close()


def test_dr_drill_refuses_a_used_folder(tmp_path):
    (tmp_path / "x").write_text("keep")
    proc = subprocess.run([sys.executable, "-m", "ringfence.cli", "dr", "drill", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "not empty" in proc.stdout + proc.stderr
    assert (tmp_path / "x").read_text() == "keep"


def test_dr_drill_names_an_unreachable_or_bad_nats_and_makes_nothing(tmp_path):
    """New-user review (session 13): `--nats nats://127.0.0.1:1` or `http://x` printed a traceback.
    A bad URL is bad input (exit 2); a server that does not answer is a failure of the system (exit 1)."""
    for url, code in (("nats://127.0.0.1:1", 1), ("http://x", 2)):
        out = tmp_path / "never"
        proc = subprocess.run([sys.executable, "-m", "ringfence.cli", "dr", "drill", "--nats", url, "--out", str(out)],
                              capture_output=True, text=True, timeout=60)
        said = proc.stdout + proc.stderr
        assert proc.returncode == code and "--nats" in said and "Traceback" not in said, said
        assert not out.exists()
