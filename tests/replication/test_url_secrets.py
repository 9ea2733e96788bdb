"""What the replication commands print about a NATS URL (intruder review, session 19).

F3: nats-py sends a user name given without a password as a token (`nats://TOKEN@host`), and
`masked()` hid only passwords: `replication status --nats nats://TOKEN@…` printed the token in its
error, the serve/standby start lines and the LOCK file. F5: a URL that does not parse
(`nats://u:pw@[::1`) crashed `replication status` and `serve --replicate` with a traceback.
"""

from __future__ import annotations

import subprocess
import sys

from api.conftest import free_port


def _rf(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ringfence.cli", *args], capture_output=True, text=True, timeout=90)


def test_a_token_in_a_nats_url_is_never_printed():
    token = "TOKSECRET123"
    proc = _rf("replication", "status", "--nats", f"nats://{token}@127.0.0.1:{free_port()}/S19T")
    said = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "cannot reach NATS at nats://***@127.0.0.1" in said, said
    assert token not in said, said


def test_a_url_that_does_not_parse_is_named_never_a_traceback(tmp_path):
    for args in (("replication", "status", "--nats", "nats://u:PWSECRET@[::1"),
                 ("serve", "--data", str(tmp_path / "n"), "--port", str(free_port()), "--replicate", "nats://u:PWSECRET@[::1/S"),
                 ("serve", "--data", str(tmp_path / "n"), "--port", str(free_port()), "--replicate", "nats://h:99999/S")):
        proc = _rf(*args)
        said = proc.stdout + proc.stderr
        assert proc.returncode == 2 and "must be a nats://host:port/STREAM URL" in said, (args, said)
        assert "Traceback" not in said and "PWSECRET" not in said, said
        assert not (tmp_path / "n").exists(), args
