"""The operator console against a real `ringfence serve --demo` process: signed requests, signed decisions.

The server runs in its own process (the same interpreter, this worktree's sources); the console is
the `ringfence` CLI run as a subprocess, signing with the demo staff keys `serve --demo` wrote to
DIR/demo-staff.json. A lift with one operator is refused with the quorum rule and changes nothing;
two operators' signatures lift it. Requests that are unsigned, forged, stale or replayed get 401.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import httpx
import pytest

from ringfence.staff.decisions import StaffKey, read_key_file
from ringfence.staff.requests import signed_headers
from tests.api.conftest import Server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("staff") / "data")
    yield srv
    assert srv.stop() == 0, "the server did not shut down cleanly on SIGTERM"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([sys.executable, "-m", "ringfence.cli", *args], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, COLUMNS="200"))
    return out


def key(server: Server, staff_id: str) -> str:
    return f"{server.data / 'demo-staff.json'}#{staff_id}"


def test_demo_staff_file_is_private_and_covers_the_roles(server) -> None:
    path = server.data / "demo-staff.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = json.loads(path.read_text())
    roles = {e["staff_id"]: set(e["roles"]) for e in doc["staff"]}
    assert len(roles) == 6 and doc["quorum"] == 2
    assert set().union(*roles.values()) >= {"operator", "approver", "analyst", "policy_admin"}
    assert sum("operator" in r for r in roles.values()) >= 2
    assert sum("approver" in r for r in roles.values()) >= 2  # a large withdrawal needs two approvers
    admins = [s for s, r in roles.items() if "policy_admin" in r]
    assert len(admins) == 3 and all(roles[s] == {"policy_admin"} for s in admins)  # proposer + 2 approvers, no conflicts


def test_console_lists_raises_and_lifts_a_halt_with_two_operators(server) -> None:
    url = ("--url", server.base)
    out = cli("halts", "raise", "console-1", "--scope-kind", "market", "--scope", "BTCUSDT", "--level", "HALTED",
              "--reason", "console test", "--key", key(server, "ada"), *url)
    assert out.returncode == 0, out.stderr
    listed = json.loads(cli("halts", "list", "--key", key(server, "cy"), "--json", *url).stdout)
    [halt] = [h for h in listed["active"] if h["halt_id"] == "console-1"]
    assert halt["level"] == "HALTED" and json.loads(halt["evidence"]) == {"raised_by": "ada"}
    status = httpx.get(server.base + "/v1/markets").json()
    assert {m["symbol"]: m["status"] for m in status}["BTCUSDT"] == "HALTED"

    # one operator alone: refused with the rule named, the halt stays
    out = cli("halts", "lift", "console-1", "--reason", "fixed", "--key", key(server, "ada"), *url)
    assert out.returncode == 1 and "rule 'quorum'" in out.stderr, out.stderr
    # an approver who is not an operator cannot make up the second signature
    token = cli("halts", "lift", "console-1", "--reason", "fixed", "--key", key(server, "cy"), "--sign-only", *url).stdout.strip()
    out = cli("halts", "lift", "console-1", "--reason", "fixed", "--key", key(server, "ada"), "--approval", token, *url)
    assert out.returncode == 1 and "rule 'role-required'" in out.stderr, out.stderr
    assert any(h["halt_id"] == "console-1" for h in json.loads(cli("halts", "list", "--key", key(server, "ada"), "--json", *url).stdout)["active"])

    # ben signs on his own terminal; ada submits with his token
    token = cli("halts", "lift", "console-1", "--reason", "fixed", "--key", key(server, "ben"), "--sign-only", *url).stdout.strip()
    assert token.startswith("ben:")
    out = cli("halts", "lift", "console-1", "--reason", "fixed", "--key", key(server, "ada"), "--approval", token, *url)
    assert out.returncode == 0 and "lifted console-1 approved by ada, ben" in out.stdout, out.stderr
    listed = json.loads(cli("halts", "list", "--key", key(server, "ada"), "--json", *url).stdout)
    assert not any(h["halt_id"] == "console-1" for h in listed["active"])
    assert listed["recently_lifted"][0]["approvers"] == ["ada", "ben"]
    # the same token again: its nonce is spent
    out = cli("halts", "raise", "console-1", "--scope-kind", "market", "--scope", "BTCUSDT", "--reason", "again",
              "--key", key(server, "ben"), *url)
    assert out.returncode == 0, out.stderr
    out = cli("halts", "lift", "console-1", "--reason", "fixed", "--key", key(server, "ada"), "--approval", token, *url)
    assert out.returncode == 1 and ("nonce-once" in out.stderr or "signature-valid" in out.stderr), out.stderr
    out = cli("halts", "lift", "console-1", "--reason", "fixed", "--key", key(server, "ada"), "--key", key(server, "ben"), *url)
    assert out.returncode == 0, out.stderr


def test_staff_are_added_and_removed_by_the_quorum_only(server, tmp_path) -> None:
    url = ("--url", server.base)
    new_key = tmp_path / "dora.key"
    assert cli("staff", "keygen", "dora", "--out", str(new_key)).returncode == 0
    out = cli("staff", "add", "--new-key", str(new_key), "--role", "approver", "--reason", "hired",
              "--key", key(server, "ada"), *url)
    assert out.returncode == 1 and "rule 'quorum'" in out.stderr, out.stderr
    members = json.loads(cli("staff", "list", "--key", key(server, "ada"), "--json", *url).stdout)["members"]
    assert "dora" not in [m["staff_id"] for m in members]
    out = cli("staff", "add", "--new-key", str(new_key), "--role", "approver", "--reason", "hired", "--account", "u_bad id",
              "--key", key(server, "ada"), "--key", key(server, "ben"), *url)
    assert out.returncode != 0 and "member.accounts" in out.stderr, out.stderr
    out = cli("staff", "add", "--new-key", str(new_key), "--role", "approver", "--reason", "hired",
              "--account", "u_0123456789abcdef01234567", "--key", key(server, "ada"), "--key", key(server, "ben"), *url)
    assert out.returncode == 0, out.stderr
    members = json.loads(cli("staff", "list", "--key", key(server, "ada"), "--json", *url).stdout)["members"]
    assert {m["staff_id"]: m["accounts"] for m in members}["dora"] == ["u_0123456789abcdef01234567"]
    out = cli("staff", "list", "--key", str(new_key), *url)  # the new member signs requests at once
    assert out.returncode == 0 and "dora" in out.stdout
    out = cli("staff", "remove", "dora", "--reason", "left", "--key", key(server, "ada"), "--key", key(server, "ben"), *url)
    assert out.returncode == 0, out.stderr
    out = cli("staff", "list", "--key", str(new_key), *url)  # revoked: her requests are refused now
    assert out.returncode == 1 and "does not verify" in out.stderr


def _get(server: Server, path: str, headers: dict[str, str]) -> httpx.Response:
    return httpx.get(server.base + path, headers=headers)


def test_admin_requests_are_authenticated_by_signature(server) -> None:
    ada = read_key_file(server.data / "demo-staff.json", "ada")
    assert _get(server, "/admin/v1/halts", {}).status_code == 401
    good = signed_headers(ada, "GET", "/admin/v1/halts", "", b"")
    assert _get(server, "/admin/v1/halts", good).status_code == 200
    assert _get(server, "/admin/v1/halts", good).status_code == 401  # replayed nonce
    forged = signed_headers(StaffKey.generate("ada"), "GET", "/admin/v1/halts", "", b"")
    assert _get(server, "/admin/v1/halts", forged).status_code == 401
    other_path = signed_headers(ada, "GET", "/admin/v1/staff", "", b"")
    assert _get(server, "/admin/v1/halts", other_path).status_code == 401
    stale = signed_headers(ada, "GET", "/admin/v1/halts", "", b"")
    stale["X-RF-Timestamp"] = str(int(stale["X-RF-Timestamp"]) - 120_000)
    assert _get(server, "/admin/v1/halts", stale).status_code == 401
