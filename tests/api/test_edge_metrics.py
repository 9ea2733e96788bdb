"""`/metrics` is not public outside dev mode (issue #13 item 9), against real `serve` processes:
with RINGFENCE_API_METRICS_TOKEN set, only `Authorization: Bearer <token>` reads it; in prod mode
without a token it is closed; in dev mode without a token it stays open (tests/api/test_rest.py).

Reproduce by hand: `RINGFENCE_API_METRICS_TOKEN=$(openssl rand -hex 24) ringfence serve --demo`,
then `curl -i localhost:8000/metrics` answers 401.
"""

from __future__ import annotations

import secrets

import httpx
import pytest

from .conftest import Server

TOKEN = secrets.token_hex(24)


@pytest.fixture(scope="module")
def token_server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("metrics") / "data", env={"RINGFENCE_API_METRICS_TOKEN": TOKEN})
    yield srv
    assert srv.stop() == 0


@pytest.mark.parametrize("authorization", [
    None,
    "",
    "Bearer",
    "Bearer " + TOKEN[:-1],
    "Bearer " + TOKEN + "0",
    "Bearer " + TOKEN.upper(),
    "Basic " + TOKEN,
    TOKEN,
], ids=["none", "empty", "bearer-alone", "one-short", "one-long", "upper-case", "basic", "no-scheme"])  # the token is random
def test_metrics_need_the_bearer_token(token_server, authorization):
    headers = {} if authorization is None else {"Authorization": authorization}
    r = httpx.get(token_server.base + "/metrics", headers=headers)
    assert r.status_code == 401, r.text[:200]
    assert r.headers["www-authenticate"].startswith("Bearer") and "ringfence_" not in r.text


def test_metrics_with_the_token(token_server):
    for scheme in ("Bearer", "bearer"):
        r = httpx.get(token_server.base + "/metrics", headers={"Authorization": f"{scheme} {TOKEN}"})
        assert r.status_code == 200 and "ringfence_engine_last_seq" in r.text


def test_prod_mode_without_a_token_keeps_metrics_closed(tmp_path_factory):
    env = {
        "RINGFENCE_MODE": "prod",
        "RINGFENCE_IDENTITY_SECRET_KEY_HEX": secrets.token_hex(32),
        "RINGFENCE_IDENTITY_ORIGIN": "https://exchange.example",
        "RINGFENCE_API_METRICS_TOKEN": "",
        # prod mode probes SMTP at start (tests/api/test_serve_mail.py); this test has no mail server
        "RINGFENCE_IDENTITY_MAIL_POLL_MS": "0",
        "RINGFENCE_IDENTITY_SMTP_HOST": "mail.exchange.example",  # (never reached: no delivery here)
    }
    srv = Server(tmp_path_factory.mktemp("prod") / "data", env=env, demo=False)
    try:
        r = httpx.get(srv.base + "/metrics")
        assert r.status_code == 401 and "RINGFENCE_API_METRICS_TOKEN" in r.json()["msg"], r.text[:200]
        assert httpx.get(srv.base + "/healthz").status_code == 200
    finally:
        assert srv.stop() == 0


def test_a_short_token_is_refused_at_start(tmp_path):
    import subprocess
    import sys

    from .conftest import free_port

    r = subprocess.run([sys.executable, "-m", "ringfence.cli", "serve", "--data", str(tmp_path / "data"), "--port", str(free_port())],
                       check=False, capture_output=True, text=True, timeout=60, env={**__import__("os").environ, "RINGFENCE_API_METRICS_TOKEN": "short"})
    assert r.returncode != 0 and "RINGFENCE_API_METRICS_TOKEN" in r.stdout + r.stderr, r.stdout + r.stderr


def test_readyz_shows_custody_detail_only_with_the_metrics_token(token_server):
    """`serve --demo` runs custody (local chains): /readyz names each worker's state for everyone,
    but chain heights, worker errors, reconciliation evidence and the shield vault only with the token."""
    public = httpx.get(token_server.base + "/readyz").json()["custody"]
    assert public["running"] is True and public["workers"] and set(public["workers"].values()) <= {"starting", "running", "backing_off", "stopped"}
    assert not {"chains", "chain_reconciliation", "shield"} & set(public), public
    assert "last_error" not in str(public)
    full = httpx.get(token_server.base + "/readyz", headers={"Authorization": f"Bearer {TOKEN}"}).json()["custody"]
    assert "chains" in full and all("last_error" in w for w in full["workers"].values()), full
