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
