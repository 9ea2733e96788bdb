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
