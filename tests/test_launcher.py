"""tests/launcher.py: servers forked from a pre-imported launcher are processes of their own, with the exit code,
the signals and exactly the environment of each request."""

import os
import signal
import subprocess
import sys

import launcher
import pytest
from api.conftest import Server


@pytest.fixture(autouse=True)
def launcher_on(monkeypatch):
    monkeypatch.setenv("RINGFENCE_TEST_LAUNCHER", "1")


def _why_popen() -> str:
    """Why this process's launcher would not start a server with this process's environment (a test that left a
    variable read at start or import changed: the CI run of c90be03 fell back to Popen here)."""
    own = launcher._LAUNCHER
    if own is None:
        return "no launcher was started"
    return f"differences from the launcher's environment (launcher's, this process's): {own.differences(dict(os.environ, PYTHONUNBUFFERED='1'))}"


def run(tmp_path, name: str, argv: list[str], **env: str) -> tuple[object, int, str]:
    log = open(tmp_path / name, "w")
    proc = launcher.spawn_cli(argv, dict(os.environ, PYTHONUNBUFFERED="1", **env), log)
    code = proc.wait(120)
    log.close()
    return proc, code, (tmp_path / name).read_text()


def test_exit_code_and_output(tmp_path) -> None:
    proc, code, text = run(tmp_path, "bad.log", ["no-such-command"])
    assert isinstance(proc, launcher.Launched) and proc.pid != os.getpid(), _why_popen()
    assert code == 2 and proc.returncode == 2 and proc.poll() == 2, text
    assert "No such command" in text
    proc, code, text = run(tmp_path, "help.log", ["--help"])
    assert code == 0 and "serve" in text


def width(tmp_path, name: str, own: launcher.Launcher, env: dict[str, str]) -> int:
    """The widest line of `ringfence --help` run by `own` with `env` (rich reads COLUMNS when it prints)."""
    with open(tmp_path / name, "w") as log:
        assert own.spawn([sys.executable, "-m", "ringfence.cli", "--help"], env, log.fileno(), log.fileno()).wait(120) == 0
    return max(map(len, (tmp_path / name).read_text().splitlines()))


def test_environment_is_each_requests_own(tmp_path, monkeypatch) -> None:
    # a launcher started with COLUMNS=230: a request without it gets the default width, one with it the
    # width it asked for, and the next one without it the default again
    monkeypatch.setenv("COLUMNS", "230")
    own = launcher.Launcher()
    try:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        del env["COLUMNS"]
        narrow = width(tmp_path, "a.log", own, env)
        assert width(tmp_path, "b.log", own, dict(env, COLUMNS="230")) > 200 > narrow
        assert width(tmp_path, "c.log", own, env) == narrow
    finally:
        own.close()


def test_a_variable_read_at_import_falls_back_to_popen(tmp_path) -> None:
    proc, code, _ = run(tmp_path, "seed.log", ["--help"], PYTHONHASHSEED="7")
    assert isinstance(proc, subprocess.Popen) and code == 0


def test_signals_go_to_the_server(tmp_path) -> None:
    srv = Server(tmp_path / "data", demo=False, chains=False)
    assert isinstance(srv.proc, launcher.Launched), _why_popen()
    assert os.path.exists(f"/proc/{srv.proc.pid}")
    srv.proc.send_signal(signal.SIGKILL)
    assert srv.proc.wait(20) == -signal.SIGKILL
    srv.log.close()
    again = Server(tmp_path / "data", demo=False, chains=False)
    assert again.stop() == 0, again.log_text()[-2000:]  # SIGTERM: serve's own clean shutdown
