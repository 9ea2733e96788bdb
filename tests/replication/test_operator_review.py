"""What a new operator met in the replication and DR commands (issue #21, fresh-eyes review), each
through the real command: a standby on a stream that does not exist says so, URL options are named
with their ranges, exit codes (2 bad input, 1 refused by the system), `dr drill` checks every input
before it makes anything, the SQLite identity warning, help paragraphs that the terminal wraps, the
drill report read in a real browser."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from api.conftest import free_port
from ringfence.cli import app
from ringfence.replication.drill import DrillResult, write_report

from .conftest import NATS_URL, Standby, key_of

CHROMIUM = "/usr/bin/chromium"


def _peers_file(tmp_path: Path) -> str:
    """A peers file naming node b (promote needs one)."""
    import json

    from ringfence.nodekey import public_hex

    path = tmp_path / "peers.json"
    path.write_text(json.dumps({"b": public_hex(key_of("b"))}))
    return str(path)


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "300"})
    return result.exit_code, " ".join(result.output.split())


def test_a_standby_on_a_missing_stream_says_so_once_and_warns_that_sqlite_identity_does_not_fail_over(tmp_path, stream,
                                                                                                     monkeypatch):
    monkeypatch.delenv("RINGFENCE_DATABASE_URL", raising=False)  # serve's default: SQLite in DIR
    lonely = Standby(tmp_path / "b", f"{NATS_URL}/{stream}", "b", free_port())
    try:
        text = " ".join(lonely.text().split())
        assert f"standby b: stream {stream} does not exist on {NATS_URL} (is the name right? streams here:" in text, text
        assert "creating it empty and waiting for a primary to write to it" in text, text
        assert text.count("does not exist") == 1, text
        assert "warning: the identity store (users, API keys, sessions) is SQLite" in text, text
        assert "RINGFENCE_DATABASE_URL=postgresql" in text and str(tmp_path / "b" / "identity.sqlite3") in text, text
        # a second standby, on the stream that exists now and with a shared database named: neither line
        other = Standby(tmp_path / "c", f"{NATS_URL}/{stream}", "c", free_port(),
                        env={"RINGFENCE_DATABASE_URL": "postgresql+psycopg://rf@127.0.0.1:5432/never_used"})
        try:
            said = other.text()
            assert "does not exist" not in said and "SQLite" not in said, said
        finally:
            assert other.stop() == 0
    finally:
        assert lonely.stop() == 0


@pytest.mark.parametrize("query, said", [
    ("lease_ms=5", "--nats: option lease_ms='5' is out of range: lease_ms must be 100..600000"),
    ("replicas=9", "--nats: option replicas='9' is out of range: replicas must be 1..5"),
    ("auto_promote=yes", "--nats: option auto_promote='yes' is out of range: auto_promote must be 0|1"),
    ("foo=1", "--nats: unknown option 'foo' in the URL; the options are replicas=1..5, lease_ms=100..600000, "
              "auto_promote=0|1, state_hash_every=1..1000000, state_hash_later=0|1, state_digest=0|1, tls_ca=FILE and "
              "first_primary=NODE"),
])
def test_url_options_are_named_with_their_ranges_and_exit_2(query, said):
    code, out = _cli("replication", "status", "--nats", f"{NATS_URL}/RF?{query}")
    assert code == 2 and said in out, out


def test_serve_names_the_flag_of_a_bad_url_option(tmp_path):
    for flag in ("--replicate", "--standby"):
        proc = subprocess.run([sys.executable, "-m", "ringfence.cli", "serve", "--data", str(tmp_path / "d"), "--port",
                               str(free_port()), flag, f"{NATS_URL}/RF?lease_ms=3000&foo=1"],
                              capture_output=True, text=True, timeout=60, env=dict(os.environ, COLUMNS="300"))
        out = " ".join((proc.stdout + proc.stderr).split())
        assert proc.returncode == 2 and f"{flag}: unknown option 'foo'" in out and "Traceback" not in out, out


def test_replication_commands_exit_2_for_bad_input_and_1_when_the_system_refuses(tmp_path):
    code, out = _cli("replication", "status", "--nats", "http://127.0.0.1:4222/RF")
    assert code == 2 and "--nats: must be a nats://host:port/STREAM URL" in out, out
    code, out = _cli("replication", "promote", "--nats", "http://127.0.0.1:4222/RF", "--node-id", "b")
    assert code == 2 and "--nats: must be a nats://host:port/STREAM URL" in out and "refused" not in out, out
    code, out = _cli("replication", "promote", "--nats", f"{NATS_URL}/RF", "--node-id", "b", "--key", str(tmp_path / "none"))
    assert code == 2 and "--key: no key file" in out, out
    code, out = _cli("replication", "status", "--nats", "nats://127.0.0.1:1/RF")
    assert code == 1 and "--nats: cannot reach NATS at nats://127.0.0.1:1" in out, out
    peers = _peers_file(tmp_path)
    code, out = _cli("replication", "promote", "--nats", "nats://127.0.0.1:1/RF", "--node-id", "b", "--wait-s", "1",
                     "--peers", peers)
    assert code == 1 and "refused: --nats: cannot reach NATS" in out, out
    for command in ("promote", "status", "nats-config"):
        code, out = _cli("replication", command, "--help")
        assert code == 0 and "Exit status: 0" in out and "2 bad" in out, out


@pytest.mark.parametrize("args, said", [
    (("--scenario", "bad"), "--scenario: must be kill, partition or both, not 'bad'"),
    (("--nats", f"{NATS_URL}/MYSTREAM"), "--nats: give the server only (nats://host:port)"),
    (("--nats", f"{NATS_URL}?lease_ms=100"), "--nats: give the server only (nats://host:port)"),
    (("--nats", "tls://127.0.0.1:4222"), "--nats: the partition scenario cuts a plain TCP proxy"),
    (("--nats", "tls://127.0.0.1:4222", "--scenario", "partition"), "--nats: the partition scenario cuts a plain TCP proxy"),
])
def test_dr_drill_refuses_bad_input_before_making_anything(tmp_path, args, said):
    out = tmp_path / "never"
    proc = subprocess.run([sys.executable, "-m", "ringfence.cli", "dr", "drill", *args, "--out", str(out)],
                          capture_output=True, text=True, timeout=60, env=dict(os.environ, COLUMNS="300"))
    text = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode == 2 and said in text and "Traceback" not in text, text
    assert not out.exists()


def test_dr_drill_refuses_an_out_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("keep")
    code, out = _cli("dr", "drill", "--out", str(tmp_path / "f"))
    assert code == 2 and "is a file" in out, out
    assert (tmp_path / "f").read_text() == "keep"


def test_help_paragraphs_are_whole_lines_for_the_terminal_to_wrap():
    code, out = _cli("replication", "promote", "--help")
    raw = CliRunner().invoke(app, ["replication", "promote", "--help"], env={"COLUMNS": "300"}).output
    assert code == 0 and "the standby verifies the signatures against the staff register" in raw, raw
    assert "signs the stream, the node and the epoch" in out and "``" not in out, out
    drill = CliRunner().invoke(app, ["dr", "drill", "--help"], env={"COLUMNS": "300"}).output
    assert "and (for the partition) that the primary stopped acknowledging" in drill, drill


def _results(failed: bool) -> list[DrillResult]:
    kill = DrillResult("kill", 7, acked=[(0.1, "a", "d-0"), (0.4, "a", "d-1"), (2.1, "b", "d-2")], failed_at_s=0.5,
                       promoted_at_s=1.6, first_ack_after_s=2.1, cut_seq=158, standby_hash="ab" * 32,
                       primary_hash="ab" * 32, lease_ms=1000)
    part = DrillResult("partition", 7, acked=[(0.1, "a", "d-0"), (3.3, "b", "d-2")], failed_at_s=0.5, promoted_at_s=3.0,
                       first_ack_after_s=3.3, last_old_ack_s=0.6, cut_seq=99, standby_hash="cd" * 32,
                       primary_hash=("ef" if failed else "cd") * 32, lease_ms=1000)
    if failed:
        part.lost = ["d-1"]
        part.problems = ["1 acknowledged order is missing on the new primary",
                         "the state hash at the cut-over differs between the standby and the old primary"]
    return [kill, part]


@pytest.mark.parametrize("failed", [False, True])
def test_the_drill_report_reads_for_an_operator_in_a_browser(tmp_path, failed):
    from playwright.sync_api import expect, sync_playwright

    assert Path(CHROMIUM).exists(), "Debian chromium is missing: `make setup` installs it"
    page_path = write_report(_results(failed), tmp_path)
    assert "<script" not in page_path.read_text()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(page_path.as_uri())
            expect(page).to_have_title("ringfence DR drill — " + ("FAILED" if failed else "PASSED"))
            verdict = page.locator("#verdict")
            expect(verdict).to_be_visible()
            assert verdict.bounding_box()["y"] < page.locator("#kill").bounding_box()["y"]  # the verdict comes first
            if failed:
                expect(verdict).to_contain_text("FAILED — 2 problems")
                expect(verdict).to_contain_text("partition: 1 acknowledged order is missing on the new primary")
            else:
                expect(verdict).to_contain_text("PASSED")
            expect(page.locator("#kill .rto")).to_have_text("1,600 ms")
            expect(page.locator("#partition .rto")).to_have_text("2,800 ms")
            expect(page.locator("#partition .rpo")).to_have_text("1 command" if failed else "0 commands")
            expect(page.locator("#kill svg.timeline")).to_be_visible()
            checks = page.locator("#partition table.checks tbody tr")
            expect(checks).to_have_count(4)
            expect(checks.filter(has_text="No acknowledged order lost")).to_contain_text("FAIL" if failed else "PASS")
            expect(checks.filter(has_text="stopped acknowledging within its lease")).to_contain_text("PASS")
            expect(page.locator("#kill table.checks")).not_to_contain_text("FAIL")
            expect(page.locator("details table.raw").first).to_be_hidden()  # the raw figures are folded away
        finally:
            browser.close()


def test_status_and_promote_name_a_missing_stream_and_do_not_create_it(tmp_path, stream):
    import asyncio

    import nats
    from nats.js.errors import NotFoundError

    code, out = _cli("replication", "status", "--nats", f"{NATS_URL}/{stream}")
    assert code == 1 and f"--nats: stream {stream} does not exist on {NATS_URL} (is the name right? streams here:" in out, out
    code, out = _cli("replication", "promote", "--nats", f"{NATS_URL}/{stream}", "--node-id", "b", "--wait-s", "1",
                     "--peers", _peers_file(tmp_path))
    assert code == 1 and f"refused: --nats: stream {stream} does not exist" in out and "no standby follows it" in out, out

    async def exists() -> bool:
        nc = await nats.connect(NATS_URL)
        try:
            await nc.jetstream().stream_info(stream)
            return True
        except NotFoundError:
            return False
        finally:
            await nc.close()

    assert not asyncio.run(exists())
