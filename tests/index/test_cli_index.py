"""`ringfence index` on a stopped data directory: keys, configuration, override, show --data; --help examples."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def cli(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([sys.executable, "-m", "ringfence.cli", *args], capture_output=True, text=True, timeout=120, env=dict(os.environ))
    if ok and r.returncode != 0:
        raise AssertionError(f"ringfence {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


@pytest.mark.parametrize("command", ["show", "keygen", "register-feed", "configure", "override", "approve", "feed"])
def test_every_index_command_has_help_with_an_example(command: str) -> None:
    out = cli("index", command, "--help").stdout
    assert "Example: ringfence index " + command in " ".join(out.split())


def test_register_configure_override_and_show_on_a_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for venue in ("a", "b", "c"):
        public = cli("index", "keygen", "--out", str(tmp_path / f"{venue}.key")).stdout.strip()
        assert len(public) == 64
        cli("index", "register-feed", str(data), "--venue", venue, "--public-key", public)
    assert cli("index", "keygen", "--out", str(tmp_path / "a.key"), ok=False).returncode != 0  # never overwrites a key
    cli("index", "configure", str(data), "--symbol", "BTCUSDT", "--source", "a", "--source", "b:2", "--source", "c", "--min-sources", "2")
    shown = json.loads(cli("index", "show", "--data", str(data), "--json").stdout)
    assert shown["status"] == "SHORT" and [(s["venue"], s["weight"]) for s in shown["sources"]] == [("a", 1), ("b", 2), ("c", 1)]
    assert shown["adminVersion"] == 4
    cli("index", "override", str(data), "--symbol", "BTCUSDT", "--price-minor", "61000000000", "--reason", "test")
    assert json.loads(cli("index", "show", "--data", str(data), "--json").stdout)["override"] == "61000000000"  # no market: minor units
    bad = cli("index", "configure", str(data), "--symbol", "BTCUSDT", "--source", "a", "--min-sources", "2", ok=False)
    assert bad.returncode == 1 and "min_sources" in bad.stderr + bad.stdout
    missing = cli("index", "show", "--data", str(data), "--symbol", "ETHUSDT", ok=False)
    assert missing.returncode != 0 and "ETHUSDT" in missing.stderr + missing.stdout


def test_once_staff_exist_index_changes_on_a_data_dir_need_the_operator_quorum(tmp_path: Path) -> None:
    data = tmp_path / "data"
    public = cli("index", "keygen", "--out", str(tmp_path / "a.key")).stdout.strip()
    cli("index", "register-feed", str(data), "--venue", "a", "--public-key", public)  # genesis rule: no staff yet
    keys = tmp_path / "keys"
    cli("staff", "init", "--data", str(data), "--member", "ada:operator", "--member", "ben:operator",
        "--member", "cy:analyst", "--out-dir", str(keys))
    args = ("index", "configure", str(data), "--symbol", "BTCUSDT", "--source", "a", "--min-sources", "1")
    unsigned = cli(*args, ok=False)
    assert unsigned.returncode == 1 and "quorum" in unsigned.stderr + unsigned.stdout
    analyst = cli(*args, "--key", str(keys / "ada.key"), "--key", str(keys / "cy.key"), ok=False)
    assert analyst.returncode == 1 and "role-required" in analyst.stderr + analyst.stdout
    version = 1  # one change so far (the feed key)
    # ben signs offline (index approve) and on the node's copy (--sign-only); either token completes ada's quorum
    offline = cli("index", "approve", "configure", "--version", str(version), "--symbol", "BTCUSDT", "--source", "a",
                  "--min-sources", "1", "--key", str(keys / "ben.key")).stdout.strip()
    from_dir = cli(*args, "--key", str(keys / "ben.key"), "--sign-only").stdout.strip()
    assert offline.startswith("ben:") and from_dir.startswith("ben:") and offline != from_dir
    wrong = cli("index", "approve", "configure", "--version", str(version), "--symbol", "BTCUSDT", "--source", "a",
                "--min-sources", "2", "--key", str(keys / "ben.key")).stdout.strip()  # another min_sources
    refused = cli(*args, "--key", str(keys / "ada.key"), "--approval", wrong, ok=False)
    assert refused.returncode == 1 and "signature-valid" in refused.stderr + refused.stdout
    cli(*args, "--key", str(keys / "ada.key"), "--approval", offline)
    shown = json.loads(cli("index", "show", "--data", str(data), "--json").stdout)
    assert shown["minSources"] == 1 and shown["adminVersion"] == 2
    again = cli(*args, "--key", str(keys / "ada.key"), "--approval", from_dir, ok=False)  # signed for version 1
    assert again.returncode == 1 and "signature-valid" in again.stderr + again.stdout
