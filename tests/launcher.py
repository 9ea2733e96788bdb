"""A pre-imported launcher ("zygote") for the test servers: `ringfence serve` without 2-5 s of third-party imports.

Each pytest process (each xdist worker) starts, on its first server, one launcher: a fresh `python` (not a fork of
pytest) that imports the heavy third-party libraries the server needs (PRELOAD; none of ringfence's own modules),
starts no thread, and listens on a Unix socket. A test's server is then one request: argv, the environment, the
working directory and the stdout/stderr descriptors; the launcher forks, and the child makes its environment exactly
the request's, changes directory, takes the descriptors as 1 and 2, puts every signal back as a fresh interpreter has
it, and runs `ringfence.cli` as `python -m ringfence.cli ARGV` would (runpy's -m path: `__main__`, sys.argv, sys.path[0]
the working directory); its exit code is the process's (after the interpreter's own exit steps: non-daemon threads,
atexit, flushing). The server is a real, separate process running the real serve code; only its imports were done
before the fork. `spawn()` returns a Popen-like `Launched` (pid, poll, wait, send_signal, terminate, kill,
returncode): signals go straight to the child's pid; the launcher, its parent, reaps it and reports the status.

What differs from a Popen start, and why it does not matter here:
- The parent pid is the launcher's (same process group and session as a Popen child of pytest: neither calls setsid).
- The hash seed is the launcher's, the same for every server of a worker (Popen children each draw their own): the
  servers must not depend on it (nothing in ringfence sets or reads PYTHONHASHSEED). `random` reseeds itself in a
  forked child (os.register_at_fork); `secrets`, `uuid4` and `tempfile` read the OS. numpy is not preloaded (its
  BLAS starts threads at import, and its global generator would not be reseeded after a fork).
- Module-level environment reads of the preloaded libraries saw the launcher's environment: the launcher records
  every variable read while importing (`READ`), and `spawn()` falls back to a plain Popen for any request whose
  value of one of those (or of any PYTHON*/LC_*/LANG variable, read by the interpreter at start) differs.

`RINGFENCE_TEST_LAUNCHER=0` turns it off: every server is a plain `python -m ringfence.cli` Popen.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO, Any

#: What the launcher imports before forking: the third-party modules `ringfence serve` imports (measured with
#: `python -X importtime -m ringfence.cli serve --demo`), by the names ringfence imports them under. Not numpy
#: (threads at import, see above), not ringfence's own modules (some read the environment at import), not
#: coincurve or embit (each randomizes a secp256k1 context with os.urandom at import: the children would share
#: its blinding seed; 3 ms of import).
PRELOAD = (
    "click", "typer", "typer.core", "typer.main", "typer.rich_utils", "rich.console", "rich.table", "rich.progress",
    "rich.markup", "rich.text", "pydantic", "pydantic_settings", "structlog", "msgspec", "msgspec.json",
    "sqlalchemy", "sqlalchemy.orm", "sqlalchemy.exc", "sqlalchemy.engine", "sqlalchemy.dialects.sqlite",
    "sqlalchemy.dialects.postgresql", "sqlalchemy.ext.asyncio",
    "fastapi", "fastapi.routing", "fastapi.responses", "fastapi.exceptions", "fastapi.middleware.cors",
    "starlette.applications", "starlette.routing", "starlette.requests", "starlette.responses",
    "starlette.middleware", "starlette.middleware.base", "starlette.exceptions", "starlette.concurrency",
    "uvicorn", "uvicorn.config", "uvicorn.server", "uvicorn.main", "uvicorn.protocols.http.httptools_impl",
    "uvicorn.protocols.websockets.websockets_sansio_impl", "uvicorn.lifespan.on", "uvicorn.loops.auto",
    "websockets", "websockets.http11", "websockets.frames", "anyio", "anyio.to_thread",
    "httpx", "cryptography", "cryptography.exceptions", "cryptography.hazmat.primitives",
    "cryptography.hazmat.primitives.asymmetric.ed25519", "cryptography.hazmat.primitives.asymmetric.x25519",
    "cryptography.hazmat.primitives.ciphers.aead", "cryptography.hazmat.primitives.serialization",
    "cryptography.hazmat.primitives.kdf.hkdf", "cryptography.hazmat.primitives.kdf.scrypt", "cryptography.x509.oid",
    "argon2", "argon2.exceptions", "prometheus_client", "prometheus_client.core", "prometheus_client.exposition",
    "babel", "babel.core", "babel.numbers", "babel.dates", "babel.support", "jinja2", "markupsafe", "pyotp",
    "aiosmtpd.controller", "python_multipart", "watchfiles", "uvloop",
    "httptools", "orjson", "opentelemetry.trace",
    "opentelemetry.propagate", "mypy_extensions", "smtplib", "sqlite3", "ssl", "asyncio", "http.server",
    "concurrent.futures", "logging.handlers", "email.message", "email.policy", "decimal", "csv", "zoneinfo",
)

#: the variables the interpreter itself reads at start (never preloaded state, but the launcher's own start)
_START_PREFIXES = ("PYTHON", "LC_", "LANG")
#: os.environ at import (pytest collects before any test patches it): the launcher's environment
_BASE_ENV = dict(os.environ)


class Launched:
    """A server started by the launcher, with what the tests use of subprocess.Popen."""

    def __init__(self, conn: socket.socket, pid: int, args: list[str]) -> None:
        self.conn, self.pid, self.args = conn, pid, args
        self.returncode: int | None = None
        self._buffer = b""

    def _read_status(self, timeout: float | None) -> None:  # float-ok: seconds
        self.conn.settimeout(timeout)
        try:
            while b"\n" not in self._buffer:
                chunk = self.conn.recv(4096)
                if not chunk:
                    raise RuntimeError(f"the test launcher went away before process {self.pid} exited")
                self._buffer += chunk
        except (TimeoutError, BlockingIOError):
            return
        self.returncode = int(json.loads(self._buffer.split(b"\n", 1)[0])["status"])
        self.conn.close()

    def poll(self) -> int | None:
        if self.returncode is None:
            self._read_status(0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:  # float-ok: seconds
        if self.returncode is None:
            self._read_status(timeout)
            if self.returncode is None:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # as Popen: never signal a pid the launcher has reaped (and the OS may reuse)
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Launcher:
    """The client side: this process's launcher process, started on first use and stopped at exit."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="rf-launcher-")
        self.path = os.path.join(self.dir, "sock")
        # the worker's environment as it was when this module was imported (collection), not as a test that
        # starts the first server has patched it (e.g. LC_ALL): every later server would fall back to Popen
        self.env = dict(_BASE_ENV, PYTHONUNBUFFERED="1")  # what the test servers set
        here = str(Path(__file__).resolve().parent)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", f"import sys; sys.path.insert(0, {here!r}); import launcher; launcher.zygote({self.path!r})"],
            stdout=subprocess.PIPE, env=self.env)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            os.rmdir(self.dir)
            raise RuntimeError(f"the test launcher did not start (exit {self.proc.wait()})")
        #: the variables the preloaded imports read, as the launcher had them (None: unset)
        self.read: dict[str, str | None] = json.loads(line)["read"]
        self.proc.stdout.close()
        atexit.register(self.close)

    def compatible(self, env: dict[str, str]) -> bool:
        """Whether a process with `env` would have seen at start what the launcher saw."""
        return not self.differences(env)

    def differences(self, env: dict[str, str]) -> dict[str, tuple[str | None, str | None]]:
        """The variables read at start or import whose value in `env` is not the launcher's: (launcher's, env's)."""
        names = set(self.read) | {n for n in (*env, *self.env) if n.startswith(_START_PREFIXES)}
        return {n: (self.env.get(n), env.get(n)) for n in sorted(names) if env.get(n) != self.env.get(n)}

    def spawn(self, args: list[str], env: dict[str, str], stdout: int, stderr: int, cwd: str | None = None) -> Launched:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(self.path)
        message = json.dumps({"argv": args, "env": env, "cwd": cwd or os.getcwd()}).encode() + b"\n"
        socket.send_fds(conn, [message], [stdout, stderr])
        buffer = b""
        while b"\n" not in buffer:
            chunk = conn.recv(4096)
            if not chunk:
                raise RuntimeError("the test launcher closed the connection without starting the process")
            buffer += chunk
        line, rest = buffer.split(b"\n", 1)
        launched = Launched(conn, int(json.loads(line)["pid"]), args)
        launched._buffer = rest
        return launched

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        try:
            os.unlink(self.path)
            os.rmdir(self.dir)
        except OSError:
            pass


_LAUNCHER: Launcher | None = None


def enabled() -> bool:
    return os.environ.get("RINGFENCE_TEST_LAUNCHER", "1") != "0"


def spawn_cli(argv: list[str], env: dict[str, str], stdout: IO[Any], stderr: IO[Any] | int | None = None
              ) -> Launched | subprocess.Popen[bytes]:
    """`python -m ringfence.cli ARGV` with `env`, its stdout to `stdout` and its stderr to `stderr` (None or
    subprocess.STDOUT: the same file): through this process's launcher, or a plain Popen when the launcher is off
    (RINGFENCE_TEST_LAUNCHER=0) or `env` differs from the launcher's in a variable read at start or import."""
    global _LAUNCHER
    command = [sys.executable, "-m", "ringfence.cli", *argv]
    if enabled():
        if _LAUNCHER is None:
            _LAUNCHER = Launcher()
        if _LAUNCHER.compatible(env):
            err = stdout if stderr in (None, subprocess.STDOUT) else stderr
            assert not isinstance(err, int)
            return _LAUNCHER.spawn(command, env, stdout.fileno(), err.fileno())
    return subprocess.Popen(command, stdout=stdout, stderr=subprocess.STDOUT if stderr is None else stderr, env=env)


# ---- the launcher process ----

class _Audited(os._Environ):  # type: ignore[type-arg]
    """os.environ while the preloaded modules import: records each variable read."""

    read: set[str] = set()

    def __getitem__(self, key: str) -> str:
        _Audited.read.add(key)
        return super().__getitem__(key)

    def __iter__(self):  # type: ignore[no-untyped-def]
        _Audited.read.add("*")  # a module that reads the whole environment: every request falls back to Popen
        return super().__iter__()


def _fresh_signals() -> dict[int, Any]:
    """Every signal's handler as this (fresh) interpreter has it."""
    handlers: dict[int, Any] = {}
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            if (handler := signal.getsignal(sig)) is not None:  # None: not settable from Python
                handlers[sig] = handler
        except (OSError, ValueError):
            continue
    return handlers


def zygote(path: str) -> None:
    import importlib
    import runpy
    import selectors
    import threading
    import traceback

    handlers = _fresh_signals()
    base_path = [p for p in sys.path if p != str(Path(__file__).resolve().parent)][1:]  # without -c's '' and ours
    parent = os.getppid()
    # wsgiref.handlers (imported by prometheus_client.exposition) copies the whole environment into
    # BaseHandler.os_environ at import: imported here unaudited, and that copy made again in each child
    import wsgiref.handlers

    before = os.environ.__class__
    os.environ.__class__ = _Audited
    try:
        for name in PRELOAD:
            importlib.import_module(name)
    finally:
        os.environ.__class__ = before
    own = sorted(n for n in sys.modules if n == "ringfence" or n.startswith("ringfence."))
    threads = len(os.listdir("/proc/self/task"))
    if own or threads != 1 or threading.active_count() != 1:
        raise SystemExit(f"launcher: preload imported {own} or started threads ({threads})")
    if "*" in _Audited.read:
        raise SystemExit("launcher: a preloaded module iterated the whole environment at import")
    gc_freeze = getattr(__import__("gc"), "freeze", None)
    if gc_freeze is not None:
        gc_freeze()  # the preloaded objects stay shared with the children's pages (copy-on-write)

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    sys.stdout.write(json.dumps({"read": {n: os.environ.get(n) for n in sorted(_Audited.read)}}) + "\n")
    sys.stdout.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # the pipe to the client closes; a child replaces 1 and 2 anyway
    os.close(devnull)

    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, "accept")
    children: dict[int, tuple[int, socket.socket]] = {}  # pidfd -> (pid, connection)

    def child(conn: socket.socket, request: dict[str, Any], fds: list[int]) -> None:
        code = 1
        try:
            selector.close()
            listener.close()
            for pidfd, (_, other) in children.items():
                os.close(pidfd)
                other.close()
            conn.close()
            os.dup2(fds[0], 1)
            os.dup2(fds[1], 2)
            for fd in fds:
                if fd > 2:
                    os.close(fd)
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            signal.pthread_sigmask(signal.SIG_SETMASK, set())
            os.environ.clear()
            os.environ.update(request["env"])
            wsgiref.handlers.BaseHandler.os_environ = wsgiref.handlers.read_environ()  # as its import would
            os.chdir(request["cwd"])
            sys.path[:] = [os.getcwd(), *base_path]  # as `python -m`: the working directory first
            for name in [n for n in sys.modules if n == "launcher"]:
                del sys.modules[name]
            sys.argv = [request["argv"][0], *request["argv"][3:]]  # drop "-m ringfence.cli"; runpy sets argv[0]
            try:
                runpy._run_module_as_main("ringfence.cli")  # type: ignore[attr-defined]  # what `python -m` runs
                code = 0
            except SystemExit as stop:
                if stop.code is None:
                    code = 0
                elif isinstance(stop.code, int):
                    code = stop.code
                else:
                    print(stop.code, file=sys.stderr)
                    code = 1
            except BaseException:
                traceback.print_exc()
                code = 1
            threading._shutdown()  # type: ignore[attr-defined]  # as the interpreter's exit: wait for non-daemon threads
            atexit._run_exitfuncs()
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:  # noqa: S110 - a closed stream at exit, as the interpreter ignores it
                    pass
            os._exit(code)

    while True:
        for key, _ in selector.select(timeout=1):
            if key.data == "accept":
                conn, _ = listener.accept()
                data, fds, _, _ = socket.recv_fds(conn, 1 << 20, 2)
                while not data.endswith(b"\n"):
                    more = conn.recv(1 << 20)
                    if not more:
                        break
                    data += more
                request = json.loads(data)
                pid = os.fork()
                if pid == 0:
                    child(conn, request, fds)
                for fd in fds:
                    os.close(fd)
                pidfd = os.pidfd_open(pid)
                children[pidfd] = (pid, conn)
                selector.register(pidfd, selectors.EVENT_READ, "child")
                conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
            else:
                pidfd = key.fd
                selector.unregister(pidfd)
                pid, conn = children.pop(pidfd)
                os.close(pidfd)
                _, status = os.waitpid(pid, 0)
                try:
                    conn.sendall(json.dumps({"status": os.waitstatus_to_exitcode(status)}).encode() + b"\n")
                except OSError:
                    pass  # the test side closed its end (it no longer asks)
                conn.close()
        if os.getppid() != parent:
            return  # the test process is gone: its servers stay as Popen children would, reaped by init
