"""The CLI as a user runs it: its output and exit codes. A real `ringfence` process for every command family
(demo, journal, sim, serve, help, the chain groups, the benchmark); the many refusals of bad input and help
pages beside them run the same command code in this process (`invoke`: typer's runner, no interpreter
start-up, about 0.5 s of CPU each)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

RINGFENCE = [sys.executable, "-m", "ringfence.cli"]


def run(*args, cwd=None):
    return subprocess.run(RINGFENCE + list(args), capture_output=True, text=True, cwd=cwd, timeout=300)


class Invoked:
    """What `invoke` returns: the exit code and the two streams, as a finished process has them."""

    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def invoke(*args: str, env: dict[str, str] | None = None) -> Invoked:
    """`ringfence ARGS` in this process (typer's runner: the same command code, its own stdout and stderr;
    `env` set while it runs). An exception the command let out is in stderr as the traceback a process
    would have printed (with exit code 1), so the tests' "no Traceback" checks hold here too."""
    import traceback

    from typer.testing import CliRunner

    from ringfence.cli import app

    result = CliRunner().invoke(app, list(args), env=env)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "Traceback (most recent call last):\n" + "".join(traceback.format_exception(result.exception))
    return Invoked(result.exit_code, result.stdout, stderr)


def test_demo_then_verify_and_replay(tmp_path):
    data = tmp_path / "demo"
    out = run("demo", "--data", str(data), "--seed", "3")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "exceeds_credits" in text and "balances unchanged: yes" in text
    hashes = re.findall(r"\b[0-9a-f]{64}\b", text)
    assert len(hashes) >= 2 and hashes[-1] == hashes[-2], "replay hash must equal the live hash"
    assert "replay matches" in text
    # same seed, same hash; the demo folder is reused safely
    again = run("demo", "--data", str(data), "--seed", "3")
    assert re.findall(r"\b[0-9a-f]{64}\b", again.stdout)[-1] == hashes[-1]
    verify = run("journal", "verify", str(data))
    assert verify.returncode == 0 and "journal: OK" in verify.stdout
    assert hashes[-1] in verify.stdout and "seconds" in verify.stdout
    replay = run("journal", "replay", str(data))
    assert replay.returncode == 0, replay.stderr
    assert hashes[-1] in replay.stdout and "matches" in replay.stdout


def test_verify_reports_corruption_with_exit_1(tmp_path):
    data = tmp_path / "demo"
    assert invoke("demo", "--data", str(data)).returncode == 0  # `demo` as a process: test_demo_then_verify_and_replay
    seg = sorted((data / "journal").iterdir())[0]
    raw = bytearray(seg.read_bytes())
    raw[100] ^= 0x01
    seg.write_bytes(bytes(raw))
    out = invoke("journal", "verify", str(data))  # `journal verify` and `replay` as processes: test_demo_then_verify_and_replay
    assert out.returncode == 1
    assert "CORRUPT" in out.stdout and seg.name in out.stdout
    replay = invoke("journal", "replay", str(data))
    assert replay.returncode == 1 and "not a torn tail" in replay.stderr


def test_replay_to_a_sequence_prints_the_state_hash_there(tmp_path):
    from ringfence.app import replay_journal

    data = tmp_path / "demo"
    assert invoke("demo", "--data", str(data)).returncode == 0  # `demo` as a process: test_demo_then_verify_and_replay
    node = data / "engine" if (data / "engine").is_dir() else data
    end = replay_journal(node, use_snapshots=False)[0]
    assert end.last_seq >= 4
    to_seq = end.last_seq // 2
    there = replay_journal(node, use_snapshots=False, until_seq=to_seq)[1].state_hash
    assert there != end.state_hash()
    for how in ("--full", "--from-snapshot"):
        out = invoke("journal", "replay", str(data), "--to-seq", str(to_seq), how)
        assert out.returncode == 0, out.stderr
        assert re.findall(r"\b[0-9a-f]{64}\b", out.stdout) == [there], out.stdout
        assert f"{to_seq:,}" in out.stdout and end.state_hash() not in out.stdout
    last = invoke("journal", "replay", str(data), "--to-seq", str(end.last_seq))  # up to and including the last one
    assert last.returncode == 0 and end.state_hash() in last.stdout, last.stderr
    assert "DIFFERS" not in last.stdout and "snapshot @" in last.stdout  # the demo's snapshot is at its end
    for bad in ("0", "-3", "1.5", "abc", str(end.last_seq + 1)):
        out = invoke("journal", "replay", str(data), "--to-seq", bad)
        assert out.returncode == 2, (bad, out.stdout, out.stderr)
        assert "--to-seq" in out.stderr and "Traceback" not in out.stderr, (bad, out.stderr)
    beyond = invoke("journal", "replay", str(data), "--to-seq", str(end.last_seq + 1))
    assert f"{end.last_seq:,}" in beyond.stderr, beyond.stderr  # where the journal ends


@pytest.mark.parametrize(
    "args, message",
    [
        (["journal", "verify", "/nonexistent/ringfence"], "does not exist"),
        (["journal", "replay", "/"], "no journal/ folder"),
        (["sim", "--seed", "-1"], "--seed"),
        (["sim", "--seed", "1", "--steps", "0"], "steps"),
        (["demo", "--seed", "abc"], "--seed"),
        (["demo", "--data", "/etc/hostname"], "is a file"),
        (["demo", "--data", "/proc/ringfence-cannot"], "cannot create"),
        (["sim", "--seed", "1", "--steps", "5", "--data", "/etc/hostname"], "is a file"),
        (["sim", "--seed", "1", "--steps", "5", "--data", "/proc/ringfence-cannot"], "cannot create"),
        (["serve", "--data", "/etc/hostname"], "is a file"),
        (["serve", "--data", "/proc/ringfence-cannot"], "cannot create"),
        (["trading", "demo", "--data", "/etc/hostname"], "is a file"),
        (["custody", "demo", "--data", "/etc/hostname"], "is a file"),
        (["trading", "book", "BTCUSDT", "--data", "/nonexistent/ringfence"], "does not exist"),
        (["por", "snapshot", "--data", "/nonexistent/ringfence"], "does not exist"),
        (["por", "publish", "/tmp/x", "--min-leaf-count", "-3"], "--min-leaf-count"),
    ],
)
def test_bad_cli_input_is_a_clear_error(args, message):
    if args[0] == "serve":  # a free port: serve checks its port first, and 8000 (the default) may be taken on this machine
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            args = [*args, "--port", str(s.getsockname()[1])]
    out = invoke(*args)
    assert out.returncode == 2
    assert message in out.stderr + out.stdout
    assert "Traceback" not in out.stderr


def test_inspecting_an_unknown_market_is_a_clear_error_and_creates_nothing(tmp_path):
    data = tmp_path / "demo"
    assert invoke("demo", "--data", str(data)).returncode == 0  # `demo` as a process: test_demo_then_verify_and_replay
    out = run("trading", "book", "NOPE", "--data", str(data))
    assert out.returncode == 2 and "unknown market 'NOPE'" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "never").exists()
    assert invoke("trading", "book", "BTCUSDT", "--data", str(tmp_path / "never")).returncode == 2
    assert not (tmp_path / "never").exists()


def test_serve_refuses_a_busy_port_before_touching_the_journal(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = run("serve", "--demo", "--data", str(tmp_path / "d"), "--port", str(port))
    assert out.returncode == 2 and "--port" in out.stderr and "Traceback" not in out.stderr
    assert (f"error: --host 127.0.0.1 --port {port}: cannot listen on 127.0.0.1:{port}: Address already in use; held by "
            f"127.0.0.1:{port} of user ") in " ".join(out.stderr.split()), out.stderr
    assert not (tmp_path / "d" / "engine").exists()


#: (--host, the twin serve also takes, more arguments): each host form that holds both families (listening.py)
TAKEN_TWINS = [("127.0.0.1", "::1", ()), ("localhost", "::1", ()), ("::1", "127.0.0.1", ()), ("0.0.0.0", "::", ()),
               ("::", "0.0.0.0", ()), ("0.0.0.0", "::", ("--gateways", "2"))]


@pytest.mark.parametrize(("host", "twin", "args"), TAKEN_TWINS, ids=[f"{h}-{' '.join(a) or 'one-process'}" for h, _, a in TAKEN_TWINS])
def test_serve_refuses_when_the_twin_of_its_host_is_taken(tmp_path, host, twin, args):
    """A wildcard or loopback --host holds the port on both families (issue #21; intruder review of #22: another
    user's socket on [::1]:PORT got the browsers that resolve localhost to ::1), so a busy twin is refused like a
    busy port: exit 2, --host, --port, the twin and who holds it named, nothing created, never half served."""
    import socket

    with socket.socket(socket.AF_INET6 if ":" in twin else socket.AF_INET) as busy:
        if ":" in twin:
            busy.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        busy.bind((twin, 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = run("serve", "--demo", "--data", str(tmp_path / "d"), "--host", host, "--port", str(port), *args)
    text = " ".join(out.stderr.split())
    shown = f"[{twin}]:{port}" if ":" in twin else f"{twin}:{port}"
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert text.startswith(f"error: --host {host} --port {port}: cannot listen on {shown} ("), text
    assert f"--host {host} holds it too): Address already in use; held by {shown} of user " in text, text
    assert f"pid {os.getpid()} (" in text, text  # this test's own socket, named as the holder
    assert not (tmp_path / "d").exists()


def test_identity_serve_holds_both_loopbacks_and_refuses_a_taken_twin(tmp_path):
    """`ringfence identity serve --host ::1` (the sign-in pages, announced as http://localhost:PORT) holds
    127.0.0.1:PORT too, through the same function as `serve` (listening.py): no other socket gets it, the pages
    answer on both; with 127.0.0.1:PORT taken it refuses to start by name."""
    import socket
    import time

    import httpx

    env = dict(os.environ, RINGFENCE_DATABASE_URL=f"sqlite:///{tmp_path / 'identity.sqlite3'}",
               RINGFENCE_IDENTITY_GNUPG_HOME=str(tmp_path / "gpg"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = subprocess.run(RINGFENCE + ["identity", "serve", "--host", "::1", "--port", str(port)], capture_output=True,
                             text=True, timeout=120, env=env)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert (f"error: --host ::1 --port {port}: cannot listen on 127.0.0.1:{port} (IPv4 loopback, where clients that "
            f"resolve localhost to 127.0.0.1 connect; --host ::1 holds it too): Address already in use; held by "
            f"127.0.0.1:{port} of user ") in " ".join(out.stderr.split()), out.stderr
    proc = subprocess.Popen(RINGFENCE + ["identity", "serve", "--host", "::1", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 90
        while True:
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.stdout else ""
            try:
                if httpx.get(f"http://[::1]:{port}/signup", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert httpx.get(f"http://127.0.0.1:{port}/signup", timeout=10).status_code == 200
        for reuse in (0, 1):
            with socket.socket() as other:
                other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, reuse)
                with pytest.raises(OSError, match="Address already in use"):
                    other.bind(("127.0.0.1", port))
    finally:
        proc.terminate()
        proc.wait(30)


def test_demo_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    out = invoke("demo", "--data", str(tmp_path))
    assert out.returncode == 2 and "not empty" in out.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_sim_command(tmp_path):
    out = run("sim", "--seed", "11", "--steps", "400")
    assert out.returncode == 0, out.stderr
    assert "seed=11" in out.stdout and "all invariants held" in out.stdout


def test_sim_command_runs_the_perpetuals_workload(tmp_path):
    out = invoke("sim", "--seed", "3", "--steps", "300", "--workload", "perps")  # `sim` as a process: test_sim_command
    assert out.returncode == 0, out.stderr
    assert "workload=perps" in out.stdout and "all invariants held" in out.stdout
    assert "position opened" in out.stdout and "funding round" in out.stdout
    bad = invoke("sim", "--seed", "3", "--steps", "5", "--workload", "options")
    assert bad.returncode != 0 and "--workload" in bad.stderr + bad.stdout


@pytest.mark.parametrize("command", [[], ["demo"], ["sim"], ["journal"], ["journal", "verify"], ["journal", "replay"], ["version"], ["shield"], ["shield", "status"]])
def test_every_command_has_help_with_an_example(command):
    out = run(*command, "--help") if command == [] else invoke(*command, "--help")  # `ringfence --help`: a real process
    assert out.returncode == 0
    assert "Example" in out.stdout


def test_ledger_benchmark_smoke(tmp_path):
    bench = Path(__file__).resolve().parent.parent / "bench" / "ledger.py"
    out = subprocess.run([sys.executable, str(bench), "--smoke", "--dir", str(tmp_path / "b")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    import json

    line = json.loads(out.stdout.strip().splitlines()[-1])
    assert line["bench"] == "ledger" and line["smoke"] is True
    assert line["throughput_per_s"] > 0 and line["replay"]["events_per_s"] > 0
    assert line["baseline"]["throughput_per_s"] > 0 and "seed=1" in out.stderr


@pytest.mark.parametrize(
    "args, option",
    [
        (["keys", "verify-log", "--log", "{missing}"], "--log"),
        (["reconcile", "approve", "h", "--raised-seq", "1", "--reason", "r", "--operator", "o", "--key", "{missing}"], "--key"),
        (["keys", "restore", "--backup", "{missing}", "--operator-key", "{missing}", "--store", "{tmp}/store", "--operator", "a", "--reason", "r"], "--backup"),
        (["keys", "backup", "--store", "{tmp}", "--key-id", "k", "--operator-key", "{missing}", "--out", "{tmp}/o", "--operator", "a", "--reason", "r"], "--operator-key"),
        (["policy", "test", "{policy}", "--requests", "{missing}"], "--requests"),
        (["policy", "test", "{policy}", "--journal", "{missing}"], "--journal"),
    ],
)
def test_a_missing_input_file_is_an_error_naming_the_option(tmp_path, args, option):
    policy = tmp_path / "policy.json"
    policy.write_text('{"version": 1, "rules": []}')
    missing = tmp_path / "nope" / "missing.jsonl"
    filled = [a.format(missing=missing, tmp=tmp_path, policy=policy) for a in args]
    passphrases = {"RINGFENCE_OPERATOR_PASSPHRASE": "x" * 16, "RINGFENCE_STORE_PASSPHRASE": "x" * 16,
                   "RINGFENCE_SIGNER_PASSPHRASE": "x" * 16}
    if args[0] == "keys" and args[1] == "verify-log":  # one as a real process (stdin closed); the others in this one
        out = subprocess.run(RINGFENCE + filled, capture_output=True, text=True, timeout=120, env=dict(os.environ, **passphrases),
                             stdin=subprocess.DEVNULL)
    else:
        out = invoke(*filled, env=passphrases)
    message = " ".join(out.stderr.split())
    assert out.returncode == 2, out.stdout + out.stderr
    assert option in message and "does not exist" in message and "Traceback" not in out.stderr
    assert "ok: 0 entries" not in out.stdout
    assert not (tmp_path / "nope").exists()  # checking an input creates nothing


def commands_panel(text: str) -> tuple[int, list[list[str]]]:
    """The help's Commands panel: the width its descriptions may use, and each entry's description lines."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("╭─ Commands"))
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("╰"))
    body = lines[start + 1:end]
    first = body[0]
    name_end = first.index(" ", 2)
    column = name_end + len(first[name_end:]) - len(first[name_end:].lstrip())  # where the descriptions start
    room = first.rindex("│") - 1 - column  # one space of padding before the right border
    entries: list[list[str]] = []
    for line in body:
        name, description = line[1:column].strip(), line[column:line.rindex("│")].rstrip()
        if name:
            entries.append([description])
        else:
            entries[-1].append(description)
    return room, entries


@pytest.mark.parametrize("command", [[], ["chains"], ["chain"], ["journal"], ["por"]])
def test_help_reads_well_at_80_columns(command):
    """No `<bool>` beside flags (they take no value), and each command's description flows: a line breaks
    only where the next word would not fit (the docstrings' own line breaks made ragged lines)."""
    if command == []:  # a real process: the width it finds in its environment
        out = subprocess.run(RINGFENCE + [*command, "--help"], capture_output=True, text=True, timeout=120,
                             env=dict(os.environ, COLUMNS="80", TERM="dumb"))
    else:
        out = invoke(*command, "--help", env={"COLUMNS": "80", "TERM": "dumb"})
    assert out.returncode == 0, out.stderr
    assert "<bool>" not in out.stdout and re.search(r"--help +-h +Show this message", out.stdout), out.stdout
    assert max(len(line) for line in out.stdout.splitlines()) <= 80
    room, entries = commands_panel(out.stdout)
    assert len(entries) >= 2
    for entry in entries:
        for line, following in zip(entry, entry[1:]):
            assert len(line) + 1 + len(following.split()[0]) > room, (command, room, entry)  # the next word did not fit


def test_chain_and_chains_say_how_they_differ():
    chain, chains = (invoke(name, "--help").stdout for name in ("chain", "chains"))
    assert "Not `chains` (plural)" in chain and "Not `chain` (singular)" in chains


def _help(*command: str) -> str:
    """`ringfence COMMAND --help` at 80 columns, in this process (`test_help_reads_well_at_80_columns` runs one as a process)."""
    out = invoke(*command, "--help", env={"COLUMNS": "80", "TERM": "dumb"})
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.parametrize("command", [["serve"], ["chain", "pay"], ["chains", "validate-address"], ["por", "snapshot"], ["por", "verify"]])
def test_help_at_80_columns_cuts_no_option_and_names_values_as_words(command):
    """New-user review: `serve --help` cut `--forwarded-allow-ips` to `--forwarded-allo…` and help words
    with "…"; options showed Python types (`<str>`, `<list[str]>`); serve offered shell completion."""
    text = _help(*command)
    assert "…" not in text, text
    assert not re.search(r"<(str|int|path|list\[|float|bool)", text), text
    assert max(len(line) for line in text.splitlines()) <= 80
    if command == ["serve"]:
        assert "--forwarded-allow-ips" in text and "--install-completion" not in text
        assert re.search(r"--host +TEXT", text) and re.search(r"--data +PATH", text)
    if command == ["por", "snapshot"]:
        assert "TEXT..." in text  # --asset may be given again


def _words(text: str) -> str:
    """Help text as one line of words, the panels' borders left out."""
    return " ".join(text.replace("│", " ").split())


def test_chain_pay_help_says_each_default_once():
    text = _words(_help("chain", "pay"))
    assert "[default: ringfence-data]" not in text and "(default ./ringfence-data" in text  # --data: the help says it, once
    assert "faucet (default)" not in text and text.count("[default: faucet]") == 1
    assert "faucet|tainted|exploit" in text


def test_validate_address_help_says_what_it_checks():
    text = _words(_help("chains", "validate-address"))
    assert "Check an address: its checksum, and that it is for the chain (and Bitcoin network) given." in text
    assert "ADDRESS" in text and "bitcoin|ethereum" in text and "mainnet, testnet, signet or regtest (not used for ethereum)" in text


@pytest.mark.parametrize("typed, meant", [(["chains", "balance", "--asset", "BTC"], "ringfence chain balance"),
                                          (["chain", "validate-address", "x"], "ringfence chains validate-address")])
def test_a_command_of_the_other_chain_group_says_where_it_is(typed, meant):
    out = subprocess.run(RINGFENCE + typed, capture_output=True, text=True, timeout=120, env=dict(os.environ, COLUMNS="200", TERM="dumb"))
    assert out.returncode == 2 and meant in " ".join(out.stderr.split()), out.stderr
    if typed[0] == "chains":  # any other unknown command: as before (once; the same for either case)
        other = subprocess.run(RINGFENCE + ["chains", "nope"], capture_output=True, text=True, timeout=120)
        assert other.returncode == 2 and "No such command 'nope'." in other.stderr


def test_root_help_lists_each_group_as_its_own_help_says_without_importing_it():
    """`ringfence --help` lists the lazily mounted groups from cli.SUMMARY (importing all of them cost 3 s
    of CPU): each entry must be what the group's own help says, and the listing the same as with every
    group loaded. A process that only writes the root help imports no group's module."""
    import typer

    from ringfence.cli import LAZY, SUMMARY, app

    root = typer.main.get_command(app)
    assert set(SUMMARY) == set(LAZY)
    for name in LAZY:
        cmd = root.get_command(None, name)  # type: ignore[attr-defined, arg-type]
        assert cmd.short_help == SUMMARY[name], name
        assert not cmd.hidden and not cmd.deprecated and not getattr(cmd, "rich_help_panel", None), name
    probe = ("import sys, ringfence.cli as c\n"
             "try:\n    c.app(prog_name='ringfence')\nexcept SystemExit:\n    pass\n"
             "print('LOADED', sorted({m for m, _ in c.LAZY.values()} & set(sys.modules)), file=sys.stderr)")
    env = dict(os.environ, COLUMNS="100", TERM="dumb")
    lazy = subprocess.run([sys.executable, "-c", probe, "--help"], capture_output=True, text=True, timeout=120, env=env)
    assert lazy.returncode == 0 and "LOADED []" in lazy.stderr, lazy.stderr
    assert lazy.stdout == invoke("--help", env={"COLUMNS": "100", "TERM": "dumb"}).stdout  # every group loaded here
