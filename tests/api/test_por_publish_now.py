"""`ringfence por publish-now` / POST /admin/v1/por/publish on a live `ringfence serve --demo`: an operator
publishes a proof of solvency now, besides the schedule, and gets its history entry; two requests for
the same state while its proof is being built get one proof (the second joins the first's build).

The server's reserve source (tests/api/por_gate_source.py) can hold a proof in its build: the test
holds the first request's proof there, sends the second (the CLI, in a process of its own) and waits
until the server logs that it joined, then lets the build finish.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from ringfence.staff.console import AdminClient, AdminError, load_key

from .conftest import Server, invoke
from .por_gate_source import ENTERED, HOLD

TESTS = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def srv(tmp_path_factory):  # type: ignore[no-untyped-def]
    env = {"RINGFENCE_POR_RESERVE_SOURCES": "api.por_gate_source:factory",
           "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    server = Server(tmp_path_factory.mktemp("por-now") / "data", env=env, chains=False)
    yield server
    assert server.stop() == 0, "the server did not shut down cleanly on SIGTERM"


def _key(srv: Server, staff_id: str) -> str:
    return f"{srv.data / 'demo-staff.json'}#{staff_id}"


def _history(srv: Server) -> list[dict[str, Any]]:
    return httpx.get(srv.base + "/por/history", timeout=10).json()["proofs"]  # type: ignore[no-any-return]


def _entered(srv: Server) -> list[str]:
    path = srv.data / ENTERED
    return path.read_text().split() if path.exists() else []


def _wait(fn, what: str, srv: Server, timeout_s: int = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = time.time() + timeout_s
    while not fn():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}; server log:\n{srv.log_text()[-3000:]}")
        time.sleep(0.05)


def test_an_operator_publishes_a_proof_now_with_the_cli(srv: Server) -> None:
    before = _history(srv)
    assert before, "serve publishes one proof at start"
    out = invoke("por", "publish-now", "--key", _key(srv, "ada"), "--url", srv.base, "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    entry = json.loads(out.stdout)
    after = _history(srv)
    assert entry["n"] == before[-1]["n"] + 1 and after[-1] == entry and len(after) == len(before) + 1
    assert entry["reserves_note"].startswith("reserves proven from 0 addresses (test gate)")
    root = httpx.get(f"{srv.base}/por/history/{entry['n']}/root.json", timeout=10).json()
    assert root["root"]["hash"] == entry["root_hash"]
    table = invoke("por", "publish-now", "--key", _key(srv, "ben"), "--url", srv.base)
    assert table.returncode == 0, table.stdout + table.stderr
    assert f"proof {entry['n'] + 1} published" in table.stdout and "USDT: liabilities" in table.stdout
    assert _history(srv)[-1]["n"] == entry["n"] + 1


def test_only_an_operator_may_and_nothing_is_published_on_a_refusal(srv: Server) -> None:
    before = _history(srv)
    out = invoke("por", "publish-now", "--key", _key(srv, "cy"), "--url", srv.base)  # approver and analyst
    assert out.returncode == 2 and "publishing a proof of solvency is for operators" in " ".join(out.stderr.split())
    unsigned = httpx.post(srv.base + "/admin/v1/por/publish", json={}, timeout=10)
    assert unsigned.status_code == 401, unsigned.text
    assert _history(srv) == before


def test_two_requests_for_one_state_get_one_proof(srv: Server) -> None:
    before, entered = _history(srv), len(_entered(srv))
    hold = srv.data / HOLD
    hold.touch()
    results: dict[str, Any] = {}

    def first() -> None:
        try:
            with AdminClient(srv.base, load_key(_key(srv, "ada")), timeout_s=120) as client:
                results["first"] = client.post("/por/publish", {})["entry"]
        except AdminError as err:  # pragma: no cover - said by the assertion below
            results["first"] = err

    thread = threading.Thread(target=first)
    try:
        thread.start()
        _wait(lambda: len(_entered(srv)) == entered + 1, "the first proof's build to reach its reserve source", srv)
        joins = srv.log_text().count("por.joined")
        second = subprocess.Popen([sys.executable, "-m", "ringfence.cli", "por", "publish-now", "--key", _key(srv, "ben"),
                                   "--url", srv.base, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env=dict(os.environ))
        _wait(lambda: srv.log_text().count("por.joined") == joins + 1 or second.poll() is not None,
              "the second request to join the first's build", srv)
        assert second.poll() is None, "the second request returned while the first proof was held"
    finally:
        hold.unlink()
    stdout, stderr = second.communicate(timeout=120)
    thread.join(120)
    assert second.returncode == 0, stderr
    assert results["first"] == json.loads(stdout), "the two requests got different proofs"
    after = _history(srv)
    assert after[:-1] == before and after[-1] == results["first"] and after[-1]["n"] == before[-1]["n"] + 1
    assert len(_entered(srv)) == entered + 1, "the proof of that state was built twice"
