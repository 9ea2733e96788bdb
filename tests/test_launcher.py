"""tests/launcher.py: servers forked from a pre-imported launcher are processes of their own, with the exit code,
the signals and exactly the environment of each request."""

import os
import signal
import subprocess

import launcher
import pytest
from api.conftest import Server


@pytest.fixture(autouse=True)
def launcher_on(monkeypatch):
    monkeypatch.setenv("RINGFENCE_TEST_LAUNCHER", "1")


def run(tmp_path, name: str, argv: list[str], **env: str) -> tuple[object, int, str]:
    log = open(tmp_path / name, "w")
    proc = launcher.spawn_cli(argv, dict(os.environ, PYTHONUNBUFFERED="1", **env), log)
    code = proc.wait(120)
    log.close()
    return proc, code, (tmp_path / name).read_text()


def test_exit_code_and_output(tmp_path) -> None:
    proc, code, text = run(tmp_path, "bad.log", ["no-such-command"])
    assert isinstance(proc, launcher.Launched) and proc.pid != os.getpid()
    assert code == 2 and proc.returncode == 2 and proc.poll() == 2, text
    assert "No such command" in text
    proc, code, text = run(tmp_path, "help.log", ["--help"])
    assert code == 0 and "serve" in text


def test_environment_is_each_requests_own(tmp_path) -> None:
    # rich reads COLUMNS when the help is printed: a width one request set is not there for the next
    _, code, wide = run(tmp_path, "wide.log", ["--help"], COLUMNS="230")
    _, code2, narrow = run(tmp_path, "narrow.log", ["--help"])
    assert code == code2 == 0
    width = max(map(len, wide.splitlines()))
    assert width > 200 and max(map(len, narrow.splitlines())) < width, (wide, narrow)


def test_a_variable_read_at_import_falls_back_to_popen(tmp_path) -> None:
    proc, code, _ = run(tmp_path, "seed.log", ["--help"], PYTHONHASHSEED="7")
    assert isinstance(proc, subprocess.Popen) and code == 0


def test_signals_go_to_the_server(tmp_path) -> None:
    srv = Server(tmp_path / "data", demo=False, chains=False)
    assert isinstance(srv.proc, launcher.Launched)
    assert os.path.exists(f"/proc/{srv.proc.pid}")
    srv.proc.send_signal(signal.SIGKILL)
    assert srv.proc.wait(20) == -signal.SIGKILL
    srv.log.close()
    again = Server(tmp_path / "data", demo=False, chains=False)
    assert again.stop() == 0, again.log_text()[-2000:]  # SIGTERM: serve's own clean shutdown
