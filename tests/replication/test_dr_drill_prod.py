"""`ringfence dr drill` with RINGFENCE_MODE=prod in the operator's environment (new-user review of issue #21,
session 23): its demo nodes exited 2 (`needs first_primary=NODE`, `the local in-process chains are for dev mode
only`) and the report's problem line was cut to `the server exited 2:`. The drill's nodes are a throwaway cluster
on scratch folders with the demo's data: they run in dev mode, with first_primary=a in both URLs, and a node that
exits has its own error lines on the problem line."""

from __future__ import annotations

import os

import pytest
import typer

PROD = {"RINGFENCE_MODE": "prod", "RINGFENCE_IDENTITY_SMTP_HOST": "mail.exchange.example",
        "RINGFENCE_IDENTITY_SMTP_PASSWORD": "smtp-secret", "RINGFENCE_IDENTITY_SECRET_KEY_HEX": "ab" * 32,
        "RINGFENCE_IDENTITY_ORIGIN": "https://exchange.example", "RINGFENCE_IDENTITY_GNUPG_HOME": "/srv/exchange/gpg",
        "RINGFENCE_POR_SECRET": "cd" * 32, "RINGFENCE_NATS_PASSWORD": "from-the-environment",
        "RINGFENCE_CUSTODY_CHAINS": "none"}


def test_the_drill_runs_its_nodes_in_dev_mode_without_the_exchanges_mail_keyring_or_secrets(tmp_path):
    from ringfence.replication.drill import node_env

    env = node_env(dict(os.environ, **PROD), tmp_path, None)
    assert env["RINGFENCE_MODE"] == "dev"
    for name in ("RINGFENCE_IDENTITY_SMTP_HOST", "RINGFENCE_IDENTITY_SMTP_PASSWORD", "RINGFENCE_IDENTITY_SECRET_KEY_HEX",
                 "RINGFENCE_IDENTITY_ORIGIN", "RINGFENCE_IDENTITY_GNUPG_HOME", "RINGFENCE_POR_SECRET"):
        assert name not in env, name
    assert env["RINGFENCE_DATABASE_URL"] == f"sqlite:///{(tmp_path / 'identity.sqlite3').resolve()}"
    # the operator's NATS credentials as before: the environment's password, or the URL's in its place
    assert env["RINGFENCE_NATS_PASSWORD"] == "from-the-environment"
    assert node_env(dict(os.environ, **PROD), tmp_path, "p@ss")["RINGFENCE_NATS_PASSWORD"] == "p@ss"
    assert env["RINGFENCE_CUSTODY_CHAINS"] == "none"  # the test suite's own settings still reach the nodes


def test_the_drills_nodes_pass_serves_checks_with_prod_in_the_environment(tmp_path, monkeypatch):
    """As `serve` checks its options before it makes anything: node a (--demo --replicate) and node b (--standby),
    with the drill's environment and URLs, where RINGFENCE_MODE=prod refused both."""
    from ringfence.api.serve import check_before_start
    from ringfence.replication.drill import node_env, node_urls, write_peers
    from ringfence.replication.serving import check_options

    peers = write_peers(tmp_path / "peers.json", {"a": tmp_path / "a", "b": tmp_path / "b"})
    primary, standby = node_urls("nats://rf@127.0.0.1:4222", "nats://rf@127.0.0.1:4222", "RFDRILLX", 1000, "partition")
    assert "first_primary=a" in primary and "first_primary=a" in standby and "auto_promote=1" in standby
    for name in list(os.environ):
        if name.startswith("RINGFENCE_"):
            monkeypatch.delenv(name)
    for name, value in node_env(dict(os.environ, **PROD), tmp_path, None).items():
        monkeypatch.setenv(name, value)
    assert check_before_start(tmp_path / "a", True, "", None, primary, None, peers) == "dev"
    check_options(None, standby, False, peers, "prod")  # first_primary is there even for prod's rule
    monkeypatch.setenv("RINGFENCE_MODE", "prod")  # the control: the same checks refuse the demo in prod mode
    with pytest.raises(typer.Exit):
        check_before_start(tmp_path / "a", True, "", None, primary, None, peers)
    assert not (tmp_path / "a" / "engine").exists()


def test_a_node_that_exits_puts_its_own_error_lines_on_the_problem_line(tmp_path):
    """A real `serve` refused as the user's was (prod mode, --demo, no first_primary): the problem line of the
    report carries the server's reasons, not `the server exited 2:`."""
    from ringfence.replication.drill import DrillResult, _free_port, _Proc, _wait_ready, write_peers

    peers = write_peers(tmp_path / "peers.json", {"a": tmp_path / "a", "b": tmp_path / "b"})
    env = dict(os.environ, **PROD, COLUMNS="400", RINGFENCE_REPLICATION_PEERS=str(peers))
    env.pop("RINGFENCE_CUSTODY_CHAINS")
    port = _free_port()
    node = _Proc(["serve", "--demo", "--data", str(tmp_path / "a"), "--port", str(port), "--replicate",
                  "nats://127.0.0.1:1/RFDRILLX", "--node-id", "a"], tmp_path / "primary.log", env, "node a (the primary)")
    try:
        with pytest.raises(RuntimeError) as caught:
            _wait_ready(f"http://127.0.0.1:{port}", node, 120)
    finally:
        node.stop()
    first = str(caught.value).split("\n", 1)[0]
    assert first.startswith("node a (the primary) exited 2: "), first
    assert "first_primary=NODE" in first and "RINGFENCE_CUSTODY_CHAINS: the local in-process chains" in first, first
    problem = DrillResult.could_not_run("kill", 1, 1000, str(caught.value)).problems[0]
    assert "first_primary=NODE" in problem and "RINGFENCE_CUSTODY_CHAINS" in problem, problem


def test_the_exit_reason_joins_error_lines_and_falls_back_to_the_last_line():
    from ringfence.replication.drill import exit_reason

    log = ("2026-01-01 INFO starting\nerror: first_primary: a replicated node outside dev mode needs\nfirst_primary=NODE "
           "in its --replicate URL\nerror: RINGFENCE_CUSTODY_CHAINS: for dev mode only\n")
    assert exit_reason(log) == ("first_primary: a replicated node outside dev mode needs first_primary=NODE in its "
                                "--replicate URL; RINGFENCE_CUSTODY_CHAINS: for dev mode only")
    assert exit_reason("Traceback (most recent call last):\n  File x\nValueError: boom\n") == "ValueError: boom"
    assert exit_reason("") == "(its log is empty)"
