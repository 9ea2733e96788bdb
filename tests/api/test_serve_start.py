"""`ringfence serve` refused at start: one line per problem, exit 2, no traceback, and nothing created
(a real `ringfence serve` process; the refusals come before the data folder is made)."""

import os
import subprocess
import sys

import pytest

SECRET = "ab" * 32


def serve(tmp_path, *args, **env):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RINGFENCE_")}
    clean.update(env)
    return subprocess.run([sys.executable, "-m", "ringfence.cli", "serve", "--data", str(tmp_path / "d"), "--port", "1",
                           *args], capture_output=True, text=True, env=clean, timeout=120)


@pytest.mark.parametrize("mode", ["staging", "PROD"])
def test_a_bad_mode_is_one_line_naming_the_variable_and_the_allowed_values(tmp_path, mode):
    out = serve(tmp_path, RINGFENCE_MODE=mode)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and "ValidationError" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "RINGFENCE_MODE" in lines[0] and "'dev'" in lines[0] and "'prod'" in lines[0], lines
    assert not (tmp_path / "d").exists()


def test_every_bad_variable_is_named_on_its_own_line(tmp_path):
    out = serve(tmp_path, RINGFENCE_IDENTITY_ARGON2_TIME_COST="x", RINGFENCE_API_BAN_S="0", RINGFENCE_MODE="test")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 3, lines
    for name in ("RINGFENCE_IDENTITY_ARGON2_TIME_COST", "RINGFENCE_API_BAN_S", "RINGFENCE_MODE"):
        assert sum(name + ":" in line for line in lines) == 1, (name, lines)
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(("env", "args", "named"), [
    ({"RINGFENCE_MODE": "prod"}, (), "RINGFENCE_IDENTITY_SECRET_KEY_HEX"),
    ({"RINGFENCE_MODE": "prod", "RINGFENCE_IDENTITY_SECRET_KEY_HEX": SECRET, "RINGFENCE_IDENTITY_ORIGIN": "http://x"}, (),
     "RINGFENCE_IDENTITY_ORIGIN"),
    ({"RINGFENCE_MODE": "prod", "RINGFENCE_IDENTITY_SECRET_KEY_HEX": SECRET, "RINGFENCE_IDENTITY_ORIGIN": "https://x"},
     ("--demo",), "RINGFENCE_CUSTODY_CHAINS"),
    ({"RINGFENCE_MODE": "prod", "RINGFENCE_IDENTITY_SECRET_KEY_HEX": SECRET, "RINGFENCE_IDENTITY_ORIGIN": "https://x"},
     ("--replicate", "nats://127.0.0.1:4222/RFSTART"), "--peers"),
    ({"RINGFENCE_MODE": "prod", "RINGFENCE_IDENTITY_SECRET_KEY_HEX": SECRET, "RINGFENCE_IDENTITY_ORIGIN": "https://x",
      "RINGFENCE_IDENTITY_SMTP_HOST": "127.0.0.1", "RINGFENCE_IDENTITY_SMTP_PORT": "1"}, (), "RINGFENCE_IDENTITY_SMTP_HOST"),
    ({}, ("--replicate", "nats://127.0.0.1:4222/RF", "--standby", "nats://127.0.0.1:4222/RF"), "--standby"),
    ({}, ("--replicate", "http://127.0.0.1:4222/RF"), "--replicate"),
])
def test_a_refused_start_leaves_no_folder_behind(tmp_path, env, args, named):
    out = serve(tmp_path, *args, **env)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr and named in out.stderr, out.stderr
    assert not (tmp_path / "d").exists()


def test_prod_mode_names_every_problem_in_one_refused_start(tmp_path):
    # an operator fixes them all at once instead of meeting them one start at a time
    out = serve(tmp_path, "--demo", RINGFENCE_MODE="prod", RINGFENCE_IDENTITY_ORIGIN="http://x",
                RINGFENCE_IDENTITY_ARGON2_MEMORY_KIB="1024")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    named = ("RINGFENCE_IDENTITY_SECRET_KEY_HEX", "RINGFENCE_IDENTITY_ARGON2_MEMORY_KIB", "RINGFENCE_IDENTITY_ORIGIN",
             "RINGFENCE_IDENTITY_SMTP_HOST", "RINGFENCE_CUSTODY_CHAINS")
    assert len(lines) == len(named), lines
    for name, line in zip(named, lines):
        assert line.startswith("error: " + name + ":"), (name, lines)
    assert not (tmp_path / "d").exists()
