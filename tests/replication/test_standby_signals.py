"""A standby started in the background by a non-interactive shell stops on SIGINT (a new user's check of #21).

Such a shell starts a background job with SIGINT ignored; a primary still stopped on it (uvicorn installs its own
handler), a following standby did not: the user's `kill -INT` seemed to stop it, and a promotion meant for a
stopped node was taken. While it follows, `serve --standby` now installs handlers for SIGINT and SIGTERM that stop
the follower between two batches and exit 0 with its stop line. Here with the machine's NATS, a real process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from api.conftest import NO_CHAINS, free_port

from .conftest import NATS_URL, peers_file


def _ignore_sigint() -> None:  # as a shell without job control starts a background job
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_standby_started_with_sigint_ignored_stops_on_the_signal(tmp_path, stream, sig):
    b = tmp_path / "b"
    b.mkdir()
    env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="400", **NO_CHAINS, **peers_file(tmp_path, b=b))
    log_path = tmp_path / "standby.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "ringfence.cli", "serve", "--data", str(b), "--port",
                                 str(free_port()), "--standby", f"{NATS_URL}/{stream}", "--node-id", "b"],
                                stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=_ignore_sigint)
        try:
            deadline = time.time() + 90
            while "following stream" not in log_path.read_text():
                assert proc.poll() is None and time.time() < deadline, log_path.read_text()[-3000:]
                time.sleep(0.1)
            proc.send_signal(sig)
            code = proc.wait(10)  # raises TimeoutExpired when the signal was ignored
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = " ".join(log_path.read_text().split())
    assert code == 0, text[-3000:]
    assert f"standby b: stopped ({sig.name}) at sequence 0, journal closed; it follows the stream no more and " \
           "takes no promotion" in text, text[-3000:]
    assert "Traceback" not in text, text[-3000:]


@pytest.mark.parametrize("role", ["--replicate", "--standby"])
def test_prod_mode_names_the_missing_peers_file_and_first_primary_at_once(tmp_path, role):
    """docs/resilience.md: prod mode "names every missing item at once"; without --peers, the missing
    first_primary= was named only once the peers file was there (check_options raised on the first)."""
    from api.test_serve_start import serve

    out = serve(tmp_path, role, "nats://127.0.0.1:4222/RFSTART", RINGFENCE_MODE="prod")
    said = " ".join(out.stderr.split())
    assert out.returncode == 2 and "Traceback" not in said, said
    assert "--peers: a replicated node outside dev mode needs a peers file" in said, said
    assert f"first_primary: a replicated node outside dev mode needs first_primary=NODE in its {role} URL" in said, said
    assert not (tmp_path / "d").exists()  # refused before anything was made
