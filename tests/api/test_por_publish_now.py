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
from .por_gate_source import ENTERED, FAIL, HOLD

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
    with AdminClient(srv.base, load_key(_key(srv, "ada"))) as client:  # an operator, with a field it does not take
        with pytest.raises(AdminError) as refused:
            client.post("/por/publish", {"snapshot": "old"})
    assert refused.value.http_status == 400 and refused.value.field == "body", refused.value
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


def _publish_in_thread(srv: Server, staff_id: str, results: dict[str, Any]) -> threading.Thread:
    def run() -> None:
        try:
            with AdminClient(srv.base, load_key(_key(srv, staff_id)), timeout_s=120) as client:
                results[staff_id] = client.post("/por/publish", {})["entry"]
        except AdminError as err:
            results[staff_id] = err

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_request_for_another_state_while_a_requested_proof_is_built_is_refused(srv: Server) -> None:
    """One requested build at a time: while ada's proof is held mid-build and the state moves on, ben's request
    (another state: it cannot join) is answered 429 at once, reads and builds nothing; ada's is published.
    (Was: ben's built a second full proof beside it, as would any number of requests.)"""
    before, entered = _history(srv), len(_entered(srv))
    hold = srv.data / HOLD
    hold.touch()
    results: dict[str, Any] = {}
    try:
        thread = _publish_in_thread(srv, "ada", results)
        _wait(lambda: len(_entered(srv)) == entered + 1, "ada's proof to reach its reserve source", srv)
        staff = str(srv.data / "demo-staff.json")
        moved = invoke("halts", "raise", "por-busy-test", "--scope-kind", "asset", "--scope", "USDT", "--level",
                       "WITHDRAWALS_PAUSED", "--reason", "a new state", "--key", staff + "#ada", "--url", srv.base)
        assert moved.returncode == 0, moved.stdout + moved.stderr
        with AdminClient(srv.base, load_key(_key(srv, "ben")), timeout_s=20) as client:
            with pytest.raises(AdminError) as busy:
                client.post("/por/publish", {})
        assert busy.value.http_status == 429 and busy.value.code == "RF_POR_BUSY", busy.value
        assert len(_entered(srv)) == entered + 1 and "ben" not in results
    finally:
        hold.unlink()
    thread.join(120)
    assert isinstance(results["ada"], dict), results
    after = _history(srv)
    assert after[:-1] == before and after[-1] == results["ada"]
    lifted = invoke("halts", "lift", "por-busy-test", "--reason", "done", "--key", staff + "#ada", "--key", staff + "#ben",
                    "--url", srv.base)
    assert lifted.returncode == 0, lifted.stdout + lifted.stderr
    # once it is published, a request builds again
    out = invoke("por", "publish-now", "--key", _key(srv, "ben"), "--url", srv.base, "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["n"] == after[-1]["n"] + 1


def test_a_build_that_fails_is_a_clear_error_to_its_caller_and_the_one_that_joined_it(srv: Server) -> None:
    """A build that fails on an error of no ringfence type (its folder cannot be made, as on a full disk): the
    request that built it and the one that joined it both get a 500 that says the proof was not built and
    why, and nothing is published. (Was: a bare "Internal Server Error".)"""
    before, entered = _history(srv), len(_entered(srv))
    hold, fail = srv.data / HOLD, srv.data / FAIL
    hold.touch()
    results: dict[str, Any] = {}
    threads = []
    try:
        threads.append(_publish_in_thread(srv, "ada", results))
        _wait(lambda: len(_entered(srv)) == entered + 1, "ada's proof to reach its reserve source", srv)
        joins = srv.log_text().count("por.joined")
        threads.append(_publish_in_thread(srv, "ben", results))
        _wait(lambda: srv.log_text().count("por.joined") == joins + 1, "ben's request to join ada's build", srv)
        fail.touch()
    finally:
        hold.unlink()
    for thread in threads:
        thread.join(120)
    fail.unlink()
    for staff_id in ("ada", "ben"):
        err = results[staff_id]
        assert isinstance(err, AdminError) and err.http_status == 500, err
        assert "nothing was published: FileExistsError" in err.message, err.message
    assert _history(srv) == before
    for stray in (srv.data / "por").glob(".tmp-*"):  # what the test put in the way
        stray.unlink()
    assert len(_entered(srv)) == entered + 1


def test_a_cli_request_that_times_out_says_the_proof_may_still_be_published(srv: Server) -> None:
    """--timeout-s shorter than the build: the command says the node did not answer in time and that the proof
    may still come (was: "cannot reach URL: timed out", though the node was reached and published it)."""
    before, entered = _history(srv), len(_entered(srv))
    hold = srv.data / HOLD
    hold.touch()
    try:
        out = invoke("por", "publish-now", "--key", _key(srv, "ada"), "--url", srv.base, "--timeout-s", "2")
        assert out.returncode == 2, out.stdout + out.stderr
        said = " ".join(out.stderr.split())
        assert "did not answer within 2 s" in said and "may still be done" in said and "cannot reach" not in said, said
    finally:
        hold.unlink()
    _wait(lambda: len(_history(srv)) == len(before) + 1, "the proof the timed-out request asked for", srv)
    assert len(_entered(srv)) == entered + 1


def test_a_replayed_or_stale_signed_request_publishes_nothing(srv: Server) -> None:
    """The endpoint's signature check is every admin endpoint's (api/admin.py `endpoint`): the same signed
    request sent twice publishes once (401 X-RF-Nonce the second time); one signed two minutes ago, none."""
    from ringfence.staff.requests import request_message, signed_headers

    key = load_key(_key(srv, "ada"))
    path, body = "/admin/v1/por/publish", b"{}"
    headers = {**signed_headers(key, "POST", path, "", body), "Content-Type": "application/json"}
    before = _history(srv)
    first = httpx.post(srv.base + path, content=body, headers=headers, timeout=120)
    assert first.status_code == 200, first.text
    replay = httpx.post(srv.base + path, content=body, headers=headers, timeout=120)
    assert replay.status_code == 401 and replay.json()["field"] == "X-RF-Nonce", replay.text
    ts, nonce = time.time_ns() // 1_000_000 - 120_000, "ab" * 16
    stale = {"X-RF-Staff": "ada", "X-RF-Timestamp": str(ts), "X-RF-Nonce": nonce, "Content-Type": "application/json",
             "X-RF-Signature": key.sign_bytes(request_message("POST", path, "", ts, nonce, body))}
    old = httpx.post(srv.base + path, content=body, headers=stale, timeout=120)
    assert old.status_code == 401 and old.json()["field"] == "X-RF-Timestamp", old.text
    assert _history(srv) == [*before, first.json()["entry"]]
