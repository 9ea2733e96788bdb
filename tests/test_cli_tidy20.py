"""Session 20's tidy list, each as a user meets it: a real `ringfence` process, its output and exit code.

* `journal sources --from-seq N` past the journal's end says so (it printed nothing at all);
* a mistyped `--data` is refused instead of becoming a tree of new folders (the quick start's
  `./ringfence-data/serve` in a fresh clone still works);
* `monitoring backtest/export --data` answer a missing or wrong data directory, and a bad database URL,
  as the other commands do (`cli_paths`: one `error:` line naming the option, exit 2).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

RINGFENCE = [sys.executable, "-m", "ringfence.cli"]
SRC = str(Path(__file__).resolve().parents[1] / "src")


def run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`ringfence ARGS` as a process of this checkout's sources, no RINGFENCE_ variable of the caller's."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("RINGFENCE_")}
    base.update(PYTHONPATH=SRC, COLUMNS="300", **(env or {}))
    return subprocess.run(RINGFENCE + list(args), capture_output=True, text=True, cwd=cwd, env=base, timeout=300,
                          stdin=subprocess.DEVNULL)


def _node_with_commands(path: Path, n: int) -> None:
    """A node directory whose journal holds `n` commands (n=0: an opened node, nothing journaled)."""
    from ringfence.app import new_node
    from ringfence.ledger.commands import OpenAccount, RegisterAsset

    node = new_node(path)
    node.open()
    try:
        commands = [RegisterAsset("BTC", 8, "crypto", "bitcoin")] + [OpenAccount(f"u{i}", "BTC") for i in range(n - 1)]
        for command in commands[:n]:
            node.execute(command)
    finally:
        node.close()


def test_journal_sources_past_the_end_says_where_the_journal_ends(tmp_path):
    _node_with_commands(tmp_path / "n", 3)
    listed = run("journal", "sources", str(tmp_path / "n"), "--from-seq", "2")
    assert listed.returncode == 0 and [line[:9] for line in listed.stdout.splitlines()] == ['{"seq": 2', '{"seq": 3'], listed
    assert listed.stderr == ""
    for past in ("4", "1000"):
        out = run("journal", "sources", str(tmp_path / "n"), "--from-seq", past)
        # exit 0 as `journal verify` of an empty journal; stdout stays JSON lines only (callers parse every line)
        assert out.returncode == 0 and out.stdout == "", out
        assert f"no commands from sequence {int(past):,}: the journal ends at 3" in out.stderr, out
    _node_with_commands(tmp_path / "empty", 0)
    out = run("journal", "sources", str(tmp_path / "empty"))
    assert out.returncode == 0 and out.stdout == "", out
    assert "no commands from sequence 1: the journal is empty" in out.stderr, out
