"""A real `ringfence serve --demo` process on a free port, shared by the API tests of a module."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from launcher import spawn_cli
from pgtest import profile_database_url

from ringfence.settings import Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_taken(log: str, port: int) -> bool:
    """Whether a server's log says it could not listen on `port` because something else holds it (serve's own
    check at start, or uvicorn's bind once the node is built)."""
    text = " ".join(log.split()).lower()  # a console may wrap the line
    return str(port) in text and "address already in use" in text


def early_in_a_window(seconds_left: float = 20) -> None:  # float-ok: seconds
    """Until at least `seconds_left` are left in the rate limiter's one-minute window (api/gateway.py
    RateLimiter: fixed windows on the monotonic clock, which processes here share). A window that ends
    mid-test gives the client a fresh budget: the 429 or the ban never comes within the requests sent,
    or the counts start again (a chance of a few in a hundred for a test that runs a few seconds, as on
    a loaded CI machine)."""
    while time.monotonic() % 60 > 60 - seconds_left:
        time.sleep(0.5)


def has_ipv6_loopback() -> bool:
    """Whether this machine can bind ::1 (serve then also holds [::1]:PORT for a loopback --host)."""
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


#: the addresses a `serve --host` form holds (listening.py `twin_of`): a loopback host both loopbacks, a wildcard
#: host both wildcards (which cover the loopbacks); the node answers on 127.0.0.1 and [::1] for each
HELD_ADDRESSES = {"127.0.0.1": ("127.0.0.1", "::1"), "localhost": ("127.0.0.1", "::1"), "::1": ("127.0.0.1", "::1"),
                  "0.0.0.0": ("127.0.0.1", "::1", "0.0.0.0", "::"), "::": ("127.0.0.1", "::1", "0.0.0.0", "::")}


def url_of(address: str, port: int) -> str:
    return f"http://[{address}]:{port}" if ":" in address else f"http://{address}:{port}"


class Intruder:
    """Another local user's socket after the node's port (intruder review of #21, F1): a thread tries to bind
    `host`:`port` (127.0.0.1; ::1: intruder review of #22; either family's wildcard: issue #21's IPv6 finding) and
    listen on it in a tight loop, from `start()` until `stop()`, alternately without and with SO_REUSEADDR (an
    unprivileged user may set it) and, on IPv6, with and without IPV6_V6ONLY. When it wins it keeps the port,
    listening, as the intruder did (a server of its own there would then get the node's clients). `won`: the
    attempts that bound and listened; `refused`: the errno of each one that did not."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        import threading

        self.port, self.host, self.won, self.refused = port, host, [], []
        self.held: socket.socket | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="intruder", daemon=True)

    def start(self) -> "Intruder":
        self._thread.start()
        return self

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            s = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
            if attempt % 2:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if ":" in self.host:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, attempt // 2 % 2)
            try:
                s.bind((self.host, self.port))
                s.listen(16)
            except OSError as err:
                s.close()
                self.refused.append(err.errno)
            else:
                self.won.append(f"attempt {attempt} on {self.host} ({'with' if attempt % 2 else 'without'} SO_REUSEADDR)")
                self.held = s
                return
            attempt += 1
            time.sleep(0.0005)  # a few thousand attempts a second: any gap of a millisecond or more is found

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        if self.held is not None:
            self.held.close()


#: argon2id at the least cost dev mode accepts (settings.py), for servers whose tests are not about that cost
ARGON2_TEST_COST = {"RINGFENCE_IDENTITY_ARGON2_MEMORY_KIB": "1024", "RINGFENCE_IDENTITY_ARGON2_TIME_COST": "1",
                    "RINGFENCE_IDENTITY_ARGON2_PARALLELISM": "1"}
#: the production default (settings.py), for a server whose test is about the cost of a password hash
ARGON2_DEFAULT_COST = {name: str(Settings.model_fields[name.removeprefix("RINGFENCE_").lower()].default) for name in ARGON2_TEST_COST}


#: The demo without its local chains and custody (serve's own setting, "none": no chains even with --demo), for
#: servers whose tests use no chain, deposit, withdrawal or proof of reserves: a start 2-3 s instead of 7-8 s on
#: a loaded machine (no Ethereum libraries, simulated chains, signer and HSM processes), and no blocks mined,
#: reconciled and signed beside the test while it runs.
NO_CHAINS = {"RINGFENCE_CUSTODY_CHAINS": "none"}


#: The test machine's PostgreSQL (127.0.0.1:5432, trust, no TLS) for a node in prod mode: taken on the operator's statement
#: that the path to the database and this machine have no other users (store/transport.py)
DATABASE_PLAIN_OK = {"RINGFENCE_DATABASE_PLAIN_OK": "1"}


class Server:
    def __init__(self, data: Path, env: dict[str, str] | None = None, args: tuple[str, ...] = (), demo: bool = True,
                 retries: int = 2, chains: bool = True) -> None:
        self.data = data
        self.started_with = (env, args, demo, chains)  # for restart()
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = open(data.parent / f"serve-{self.port}.log", "w")
        # RINGFENCE_POR_EVERY_S=0: one proof at start only, so a test's proof and root file always match
        # (tests of the schedule set their own interval). The demo's index feed journals quotes every
        # second; tests that check that a refusal journals nothing turn it off unless they ask for it
        # (tests/index/ does).
        full_env = dict(os.environ, RINGFENCE_RECONCILE_EVERY_MS="1000", PYTHONUNBUFFERED="1", RINGFENCE_POR_EVERY_S="0",
                        RINGFENCE_DEMO_FEED="0")
        if demo:
            # The demo's mail catcher gets the outbox every 200 ms, not every 2 s: tests that wait for
            # an e-mail at /dev/mail wait for the message, not for the poll (a test may set its own).
            full_env["RINGFENCE_IDENTITY_MAIL_POLL_MS"] = "200"
        if not chains:
            full_env.update(NO_CHAINS)
        full_env.update(env or {})
        if full_env.get("RINGFENCE_MODE", "dev") == "dev":
            # Every password hash (the demo's six staff logins at start, each sign-up and sign-in of a test)
            # at the least dev mode allows, as tests/identity/conftest.py does: argon2id at 64 MiB, t=3, p=4
            # cost 0.25 s of CPU each, about 2 s of every demo start, several times that with three xdist
            # workers on two cores. Tests about that cost (tests/api/test_password_work.py) set their own.
            for name, value in ARGON2_TEST_COST.items():
                full_env.setdefault(name, value)
        # The suite's store profile (tests/pgtest.py): on `postgresql` every server gets a database
        # of its own unless the test chose one. `database_url` is where this server's identity is.
        if "RINGFENCE_DATABASE_URL" not in full_env and (url := profile_database_url(data)) is not None:
            full_env["RINGFENCE_DATABASE_URL"] = url
        self.database_url = full_env.get("RINGFENCE_DATABASE_URL") or f"sqlite:///{(data / 'identity.sqlite3').resolve()}"
        # what a `ringfence` command run beside this server needs to find its store (`--data DIR` alone
        # finds DIR/identity.sqlite3; on PostgreSQL the command reads RINGFENCE_DATABASE_URL, as serve does).
        # The machine's PostgreSQL is 127.0.0.1:5432 without TLS, which prod mode takes only on the operator's
        # word that nobody else uses this machine (store/transport.py; tests/store/test_database_path.py)
        self.store_env = {} if self.database_url.startswith("sqlite") else {"RINGFENCE_DATABASE_URL": self.database_url,
                                                                           **DATABASE_PLAIN_OK}
        if not self.database_url.startswith("sqlite"):
            for name, value in DATABASE_PLAIN_OK.items():
                full_env.setdefault(name, value)
        self.argv = ["serve", *(["--demo"] if demo else []), "--data", str(data), "--port", str(self.port), *args]
        # a real `python -m ringfence.cli serve` process, forked from this worker's launcher with the
        # third-party libraries imported (tests/launcher.py; RINGFENCE_TEST_LAUNCHER=0: a plain Popen)
        self.proc = spawn_cli(self.argv, full_env, self.log)
        deadline = time.time() + 120  # a demo start takes 10-20 s; far longer only on a machine loaded many times over
        while time.time() < deadline:
            if self.proc.poll() is not None:
                text = Path(self.log.name).read_text()
                if port_taken(text, self.port) and retries > 0:
                    # free_port() only found the port free: another xdist worker's process can bind it in the
                    # 10-20 s before this server listens. Again on a new port (a restart of whatever the first
                    # try wrote, as a test's own restarts are); any other early exit is the test's failure
                    self.log.close()
                    self.__init__(data, env, args, demo, retries - 1, chains)  # type: ignore[misc]
                    return
                raise RuntimeError(f"server exited early; see {self.log.name}:\n" + text[-3000:])
            try:
                if httpx.get(self.base + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            self.proc.kill()  # never leave a server running that no test will stop
            self.proc.wait(20)
            self.log.close()
            raise RuntimeError("server did not become ready; reproduce with: ringfence " + " ".join(self.argv) + "\n"
                               + Path(self.log.name).read_text()[-2000:])
        entries = json.loads((data / "demo-keys.json").read_text()) if demo else []
        self.keys = {k["account"]: k for k in entries if k.get("kind", "hmac") == "hmac"}
        self.ed25519_keys = {k["account"]: k for k in entries if k.get("kind") == "ed25519"}

    def log_text(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()

    def restart(self) -> None:
        """Stop this server (asserting a clean exit on SIGTERM) and start it again on the same data with the
        same settings, on a new port (`base` changes): what a module's tests see of a restart."""
        assert self.stop() == 0, "the server did not shut down cleanly on SIGTERM"
        env, args, demo, chains = self.started_with
        self.__init__(self.data, env, args, demo, 2, chains)  # type: ignore[misc]

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = -9
        self.log.close()
        return code


@pytest.fixture(scope="module")
def server(request, tmp_path_factory):
    """The module's demo server; without its chains where the module says `SERVER_CHAINS = False` (NO_CHAINS)."""
    srv = Server(tmp_path_factory.mktemp("serve") / "data", chains=getattr(request.module, "SERVER_CHAINS", True))
    yield srv
    assert srv.stop() == 0, "the server did not shut down cleanly on SIGTERM"


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`ringfence ARGS` in a child process with this checkout's sources (the console, the faucet); `env` is
    added to this process's environment (a server's `store_env`, for a command that reads its store)."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"), **(env or {}))
    return subprocess.run([sys.executable, "-m", "ringfence.cli", *args], capture_output=True, text=True, env=env, timeout=60)


class Invoked:
    """What `invoke` returns: the exit code and the two streams, as a finished process has them."""

    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def invoke(*args: str, env: dict[str, str | None] | dict[str, str] | None = None) -> Invoked:
    """`ringfence ARGS` in this process (typer's runner: the same command code as `cli`, its own stdout and stderr,
    `env` set while it runs, a None value unset; COLUMNS=200), without a Python start of 1-2 s of CPU per call (the console's many calls,
    the faucet's balance polled in a loop). An exception the command let out is in stderr as the traceback a
    process would have printed (exit code 1). A file whose calls run here still runs each command group once in a
    real process (`cli`)."""
    import traceback

    from typer.testing import CliRunner

    from ringfence.cli import app

    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200", **(env or {})})
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "Traceback (most recent call last):\n" + "".join(traceback.format_exception(result.exception))
    return Invoked(result.exit_code, result.stdout, stderr)
