"""A new user's first prod start of issue #21's list: `serve --replicate` names every missing item in one refusal, the
NATS login's (no password, plain nats://, no user) with the settings' (secret key, origin, SMTP host), before it
connects or creates anything; not one more at each start."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from api.conftest import NO_CHAINS, free_port

from .conftest import peers_file


def serve(tmp_path: Path, url: str, env: dict[str, str]) -> tuple[int, str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("RINGFENCE_")}
    full.update(COLUMNS="400", RINGFENCE_MODE="prod", **NO_CHAINS, **env)
    result = subprocess.run([sys.executable, "-m", "ringfence.cli", "serve", "--data", str(tmp_path / "node"), "--port",
                             str(free_port()), "--replicate", url, "--node-id", "a"],
                            env=full, capture_output=True, text=True, timeout=120)
    return result.returncode, " ".join((result.stdout + result.stderr).split())


def test_the_first_prod_start_names_the_nats_password_with_the_settings(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("not read before the start is allowed\n")
    peers = peers_file(tmp_path, a=tmp_path / "keys-a", b=tmp_path / "keys-b")
    port = free_port()  # nothing listens there: nothing may be connected to before every problem is named
    code, out = serve(tmp_path, f"tls://rf-node@127.0.0.1:{port}/RF?tls_ca={ca}&first_primary=a", peers)
    assert code == 2 and "Traceback" not in out, out
    for said in ("RINGFENCE_IDENTITY_SECRET_KEY_HEX: the default dev key is refused",
                 "RINGFENCE_IDENTITY_ORIGIN: must be an https:// origin",
                 "RINGFENCE_IDENTITY_SMTP_HOST: must be set outside dev mode",
                 "RINGFENCE_NATS_PASSWORD: user rf-node is given no password: set RINGFENCE_NATS_PASSWORD",
                 "rf-node.password"):
        assert said in out, (said, out)
    assert "cannot reach NATS" not in out and "replicating" not in out, out  # refused before connecting
    assert not (tmp_path / "node").exists()

    # plain nats:// and a URL without a user: both named in the same refusal, the password given now
    code, out = serve(tmp_path, f"nats://127.0.0.1:{port}/RF?first_primary=a", peers | {"RINGFENCE_NATS_PASSWORD": "pw"})
    assert code == 2 and "Traceback" not in out, out
    assert "RINGFENCE_IDENTITY_SECRET_KEY_HEX" in out and "--replicate: refusing to trust acknowledgements without TLS" in out, out
    assert "--replicate: the URL names no NATS user, and outside dev mode a NATS server without users is refused" in out, out
    assert "tls://rf-node@HOST:PORT/RF?tls_ca=CA, with its password in RINGFENCE_NATS_PASSWORD" in out, out
    assert not (tmp_path / "node").exists()


def test_a_complete_nats_login_adds_no_problem(tmp_path):
    """The same start with the password and a pinned tls:// URL: only the settings' problems are left (the check is no
    blanket refusal of --replicate)."""
    ca = tmp_path / "ca.pem"
    ca.write_text("x\n")
    peers = peers_file(tmp_path, a=tmp_path / "keys-a", b=tmp_path / "keys-b")
    code, out = serve(tmp_path, f"tls://rf-node@127.0.0.1:{free_port()}/RF?tls_ca={ca}&first_primary=a",
                      peers | {"RINGFENCE_NATS_PASSWORD": "a-password"})
    assert code == 2 and "RINGFENCE_IDENTITY_SECRET_KEY_HEX" in out, out
    assert "NATS" not in out.replace("RINGFENCE_NATS_PASSWORD", "") and "--replicate:" not in out, out
