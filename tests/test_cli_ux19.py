"""Session 19: commands that open the identity store say a bad RINGFENCE_DATABASE_URL in one line (exit 2)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

RINGFENCE = [sys.executable, "-m", "ringfence.cli"]


@pytest.mark.parametrize("command", [["identity", "migrate"], ["identity", "purge"], ["identity", "deliver-mail", "--once"],
                                     ["staff", "login", "ada", "--email", "ada@example.com", "--out", "{tmp}/ada.json"]])
@pytest.mark.parametrize("url, says", [
    ("postgres://rf:secret@127.0.0.1:5432/rf", "RINGFENCE_DATABASE_URL: must be a sqlite:/// or postgresql+psycopg:// URL"),
    ("postgresql+psycopg://rf:secret@127.0.0.1:1/rf", "RINGFENCE_DATABASE_URL: cannot open the database"),
])
def test_a_bad_database_url_is_one_clean_line_with_exit_2(tmp_path, command, url, says):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RINGFENCE_")}
    env.update(RINGFENCE_DATABASE_URL=url, COLUMNS="300", PYTHONPATH=os.pathsep.join(os.path.abspath(p) for p in sys.path if p))  # this run's sources, from tmp_path too
    args = [a.replace("{tmp}", str(tmp_path)) for a in command]
    out = subprocess.run(RINGFENCE + args, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
                         stdin=subprocess.DEVNULL)
    text = out.stdout + out.stderr
    assert out.returncode == 2, text
    assert "Traceback" not in text and says in text, text
    assert "secret" not in text  # the password is never printed
    assert not (tmp_path / "ada.json").exists()


def test_the_resilience_doc_says_what_serve_does_with_a_standby_and_demo(tmp_path):
    """docs/resilience.md said a promoted standby of a --demo primary runs no index feed (it does, since
    the demo feed's keys come with the stream: tests/replication/test_replication.py) and did not say that a
    standby refuses --demo, nor how to delete a stream. It quotes serve's own refusal, checked here."""
    from pathlib import Path

    doc = " ".join((Path(__file__).parent.parent / "docs" / "resilience.md").read_text().split())
    assert "runs no index feed, so its markets go REDUCE_ONLY" not in doc
    assert "carries the demo's index feed on" in doc and "*Deleting a stream.*" in doc and "stream rm KV_RF-leader" in doc
    env = {k: v for k, v in os.environ.items() if not k.startswith("RINGFENCE_")}
    env.update(COLUMNS="300", PYTHONPATH=os.pathsep.join(os.path.abspath(p) for p in sys.path if p))
    out = subprocess.run(RINGFENCE + ["serve", "--data", str(tmp_path / "b"), "--standby", "nats://127.0.0.1:4222/S19D",
                                      "--demo"], capture_output=True, text=True, timeout=120, env=env, stdin=subprocess.DEVNULL)
    said = " ".join((out.stdout + out.stderr).split())
    quoted = "--demo: a standby takes its state from the primary's stream; --demo is for a primary"
    assert out.returncode == 2 and quoted in said, said
    assert f"(`{quoted}`, exit 2)" in doc
