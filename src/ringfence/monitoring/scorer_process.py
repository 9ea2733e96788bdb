"""The monitoring scorer in a process of its own (`ringfence serve`'s default, `RINGFENCE_MONITORING_SCORER=process`).

Scoring every event of the stream (rules, the behavioural model, the link graph) was the largest of
the engine process's background costs under orders, 104-141 us of CPU per order on the GIL the
event loop and the sequencer share (issue 18, session 22). Here it runs in a child of the engine
process with the same code (`service.Monitor`, without the outbox) on the same store: it reads the
events the engine process's outbox writes (and identity's), from the stored cursor, and stores the
alerts with the cursor moved in the same transaction, only from where it read it (`cases.store_hits`).

* Crash or restart: nothing is acknowledged but a stored cursor with its alerts. A scorer process
  that dies is started again by the engine process (`keep_running`, on its monitoring thread's poll,
  after a back-off); it warms its windows from the events before the stored cursor and scores on
  after it, as a restarted server did. The engine process dying ends it too (PR_SET_PDEATHSIG, then
  its last step as on SIGTERM); should a new server's scorer start meanwhile, the one that stores
  second finds the cursor moved (CursorMoved), writes nothing, and loads again from the cursor.
* Stuck: a scorer process that is alive but answers no question (deadlocked) is asked `scorer_status`
  every CHECK_EVERY_S by `keep_running`; after `missed_answers` unanswered in a row
  (RINGFENCE_MONITORING_SCORER_MISSED_ANSWERS, 18 by default: 3 minutes and more) it is killed
  (SIGKILL) and started again as one that ended. Until it first answers after a start it is warming (its windows are
  warmed before its questions are answered, as long as the stream's longest window takes): its
  silence is not counted then.
* Stop: the engine process writes the outbox's queue first, then sends SIGTERM; the scorer scores
  what is there in one last step and exits (after STOP_TIMEOUT_S it is killed: the events after the
  stored cursor are scored at the next start).
* Queries: the admin API's links, baselines, model and progress live in this process's memory; the
  engine process asks over a socket pair made at each start (no path in the file system, nobody
  else can connect), one JSON line each way, one question at a time, answered by a thread here.

The configuration, the database URL with any password in it, goes to the child on its stdin, not on
its command line; its environment is only what a Python process needs to run (`child_env`): none of
the engine process's secrets (RINGFENCE_DATABASE_URL with its password, the NATS passwords, the
identity keys...), which the scorer never reads (it reads no `Settings`: its configuration is the
`ScorerConfig` on its stdin), and which any process of this user's could read in /proc/PID/environ
for as long as it lives.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import structlog

from ..errors import RingfenceError

__all__ = ["ScorerConfig", "ScorerProcess", "ScorerUnavailable", "child_env"]

log = structlog.get_logger("ringfence.monitoring")

#: how long the engine process waits for an answer of the scorer process (its turn to ask included): under
#: the 10 s the console's client waits (staff/console.py), so a scorer that is stuck answers 503, not a timeout
ASK_TIMEOUT_S = 5
#: how long the scorer process may take for its last step once told to stop
STOP_TIMEOUT_S = 30
#: restarts of a scorer process that ended back off from 1 s, doubling up to this
MAX_BACKOFF_MS = 30_000
#: how often `keep_running` asks a running scorer process whether it still answers
CHECK_EVERY_S = 10
#: unanswered checks in a row after which a scorer process that answered once since its start is killed
MISSED_ANSWERS = 18
#: the scorer process's niceness: on a machine short of cores the engine and gateway processes, which
#: answer orders, run first, and the scorer takes what they leave (its lag shows in /admin/v1/monitoring);
#: on the engine process's GIL it was paced to MONITOR_SHARE_PERMILLE of it instead (pacing.py)
SCORER_NICE = 10
#: a question or an answer longer than this is refused (the clusters of a large link graph fit)
MAX_LINE_BYTES = 64 * 1024 * 1024


class ScorerUnavailable(RingfenceError, ConnectionError):
    code = "RF_MONITORING_SCORER_UNAVAILABLE"
    http_status = 503
    default_message = "the monitoring scorer process is not answering; try again shortly"


@dataclass(frozen=True)
class ScorerConfig:
    database_url: str
    rules: str = ""
    poll_ms: int = 200
    geoip: str = ""
    liquidity_accounts: tuple[str, ...] = ()


#: what the scorer process keeps of the engine process's environment: the interpreter's own settings and
#: paths, the locale, and libpq's (PGSSLMODE, PGPASSFILE...: how to reach the database it was given) but
#: PGPASSWORD, which goes into the database URL on its stdin instead (`_handed_over`)
CHILD_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "VIRTUAL_ENV",
             "SSL_CERT_FILE", "SSL_CERT_DIR")
CHILD_ENV_PREFIXES = ("LC_", "PYTHON", "PG", "COVERAGE_")


def child_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The scorer process's environment: CHILD_ENV and CHILD_ENV_PREFIXES of `environ` (os.environ), nothing else."""
    environ = dict(os.environ if environ is None else environ)
    return {k: v for k, v in environ.items()
            if (k in CHILD_ENV or k.startswith(CHILD_ENV_PREFIXES)) and k != "PGPASSWORD"}


def _handed_over(config: ScorerConfig) -> dict[str, Any]:
    """What goes to the scorer process on its stdin: `config`, with PGPASSWORD (a password the docs let the
    operator give that way, docs/resilience.md) in a PostgreSQL URL that has none, as libpq would use it."""
    out = asdict(config)
    password = os.environ.get("PGPASSWORD")
    if password and config.database_url.startswith("postgres"):
        from sqlalchemy.engine import make_url

        url = make_url(config.database_url)
        if url.password is None:
            out["database_url"] = url.set(password=password).render_as_string(hide_password=False)
    return out


class ScorerProcess:
    """The engine process's handle on its scorer process: starts it, starts it again when it ended,
    asks it what only it knows, stops it."""

    def __init__(self, config: ScorerConfig, *, missed_answers: int = MISSED_ANSWERS,
                 check_every_s: float = CHECK_EVERY_S) -> None:  # float-ok: seconds
        if not isinstance(missed_answers, int) or missed_answers < 1:
            raise ValueError("missed_answers is a whole number of at least 1")
        self.config = config
        self.missed_answers, self.check_every_ms = missed_answers, int(check_every_s * 1000)
        #: checks unanswered in a row; whether it answered since its start (before: warming, not counted)
        self._missed, self._answered = 0, False
        self._check_at_ms = 0
        #: scorer processes killed for not answering
        self.killed_unanswering = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._conn: socket.socket | None = None
        #: what was read of the socket past the last answer taken (an answer arrives in pieces, or after its question timed out)
        self._buffer = bytearray()
        self._ask_lock = threading.Lock()
        self._life_lock = threading.Lock()
        self._asked = 0
        self._stopping = False
        self.starts = 0
        self._backoff_ms = 0
        self._restart_at_ms = 0
        self._started_ms = 0

    # ------------------------------------------------------------------ lifecycle (engine process)

    def start(self) -> None:
        from ..custody.btc_signing import spawn_child  # PR_SET_PDEATHSIG from a thread that lives as long as this process

        with self._life_lock:
            if self._stopping:
                return
            ours, theirs = socket.socketpair()
            try:
                proc = spawn_child([sys.executable, "-m", "ringfence.monitoring.scorer_process", str(theirs.fileno())],
                                   pass_fds=(theirs.fileno(),), stdin=subprocess.PIPE, env=child_env())
            finally:
                theirs.close()
            assert proc.stdin is not None
            try:
                proc.stdin.write(json.dumps(_handed_over(self.config)).encode())
                proc.stdin.close()
            except OSError:  # it died at once: seen by keep_running
                pass
            self.proc, self._conn, self._buffer = proc, ours, bytearray()
            self.starts += 1
            self._started_ms = time.monotonic_ns() // 1_000_000
            self._missed, self._answered = 0, False
            self._check_at_ms = self._started_ms + self.check_every_ms
        log.info("monitoring.scorer_process_started", pid=proc.pid, starts=self.starts)

    def keep_running(self) -> None:
        """Start the scorer process again if it ended: after a back-off of 1 s, doubled (up to
        MAX_BACKOFF_MS) each time it ends again within a minute of its start. One that runs is asked
        every `check_every_ms`; after `missed_answers` unanswered in a row it is killed (then started
        again as one that ended)."""
        proc = self.proc
        if self._stopping or proc is None:
            return
        now_ms = time.monotonic_ns() // 1_000_000
        if proc.poll() is None:
            if self._backoff_ms and now_ms - self._started_ms > 60_000:
                self._backoff_ms = 0
            if now_ms >= self._check_at_ms:
                self._check_answers(proc)
                self._check_at_ms = time.monotonic_ns() // 1_000_000 + self.check_every_ms
            return
        if not self._restart_at_ms:  # seen ended just now
            self._backoff_ms = min(MAX_BACKOFF_MS, max(1_000, self._backoff_ms * 2))
            self._restart_at_ms = now_ms + self._backoff_ms
            log.error("monitoring.scorer_process_ended", pid=proc.pid, returncode=proc.returncode, restart_in_ms=self._backoff_ms)
            return
        if now_ms >= self._restart_at_ms:
            self._restart_at_ms = 0
            self._close_conn()
            self.start()

    def _check_answers(self, proc: subprocess.Popen[bytes]) -> None:
        try:
            self.ask("scorer_status")  # (an answer resets the count: `ask`)
            return
        except ScorerUnavailable:
            pass
        if not self._answered or self._stopping or proc.poll() is not None:
            return  # warming (not counted), stopping, or ended (restarted as usual)
        self._missed += 1
        if self._missed < self.missed_answers:
            return
        log.error("monitoring.scorer_process_unanswering", pid=proc.pid, missed_answers=self._missed,
                  every_ms=self.check_every_ms, action="killed (SIGKILL); started again after the back-off")
        self.killed_unanswering += 1
        self._missed = 0
        proc.kill()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:  # (seen ended on a later poll)
            pass

    def stop(self) -> None:
        with self._life_lock:
            self._stopping = True
            proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning("monitoring.scorer_process_killed", pid=proc.pid, after_s=STOP_TIMEOUT_S)
                proc.kill()
                proc.wait(10)
        self._close_conn()

    def _close_conn(self) -> None:
        with self._ask_lock:
            if self._conn is not None:
                self._conn.close()
            self._conn, self._buffer = None, bytearray()

    # ------------------------------------------------------------------ questions (engine process)

    def ask(self, op: str, *args: Any) -> Any:
        """The scorer process's answer to `op` (a method of its Monitor: clusters, baseline, model_status,
        scorer_status); ScorerUnavailable if it is not running or does not answer within ASK_TIMEOUT_S,
        waiting for an earlier question included. A question that timed out leaves the socket usable:
        its late answer is skipped by the next question (a file object of the socket is not: after one
        timeout it refuses every later read, which made every question 503 until the scorer restarted)."""
        deadline = time.monotonic() + ASK_TIMEOUT_S
        if not self._ask_lock.acquire(timeout=ASK_TIMEOUT_S):
            raise ScorerUnavailable("the monitoring scorer process did not answer: busy with an earlier question")
        try:
            conn = self._conn
            if conn is None or self.proc is None or self.proc.poll() is not None:
                raise ScorerUnavailable("the monitoring scorer process is not running (it is started again shortly)")
            self._asked += 1
            asked = self._asked
            try:
                conn.settimeout(max(0.001, deadline - time.monotonic()))
                conn.sendall(json.dumps({"id": asked, "op": op, "args": list(args)}).encode() + b"\n")
                while True:  # an answer to an earlier question that timed out is skipped
                    answer = json.loads(self._line(conn, deadline))
                    if answer.get("id") == asked:
                        break
            except (OSError, ValueError) as err:
                raise ScorerUnavailable(f"the monitoring scorer process did not answer: {type(err).__name__}") from None
        finally:
            self._ask_lock.release()
        self._answered, self._missed = True, 0  # it answers (an error it caught included): alive
        if "error" in answer:
            raise ScorerUnavailable(f"the monitoring scorer process failed to answer: {answer['error']}")
        return answer["result"]

    def _line(self, conn: socket.socket, deadline: float) -> bytes:  # float-ok: monotonic seconds
        """The next line of the socket, read until `deadline`; what follows it stays in the buffer."""
        buffer, looked = self._buffer, 0
        while (end := buffer.find(b"\n", looked)) < 0:
            if len(buffer) > MAX_LINE_BYTES:
                raise ValueError("the scorer process's answer is too long")
            looked = len(buffer)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer in time")
            conn.settimeout(left)
            chunk = conn.recv(1 << 20)
            if not chunk:
                raise ConnectionError("the scorer process closed its socket")
            buffer += chunk
        line = bytes(buffer[:end + 1])
        del buffer[:end + 1]
        return line

    def status(self, fallback: dict[str, Any]) -> dict[str, Any]:
        """The scorer's own figures (`Monitor.scorer_status`) with its process's, or `fallback`'s while it is away."""
        try:
            out: dict[str, Any] = self.ask("scorer_status")
        except ScorerUnavailable as err:
            out = {**fallback, "unavailable": str(err)}
        proc = self.proc
        out["process"] = {"pid": proc.pid if proc is not None else None,
                          "running": proc is not None and proc.poll() is None, "starts": self.starts,
                          "restarts": max(0, self.starts - 1), "killed_unanswering": self.killed_unanswering,
                          "warming": proc is not None and proc.poll() is None and not self._answered,
                          "missed_answers": self._missed}
        return out


# ---------------------------------------------------------------------- the scorer process itself

QUESTIONS = ("clusters", "baseline", "model_status", "scorer_status")


def _answer(monitor: Any, conn: socket.socket) -> None:
    """Answer the engine process's questions until it closes its end (or this process ends). The engine
    process gone (killed, with answers unread: the socket reset) ends it quietly too: its PR_SET_PDEATHSIG
    ends this process, no traceback of this thread in the log beside it."""
    with conn, conn.makefile("rb") as reader:
        try:
            while line := reader.readline(MAX_LINE_BYTES):
                asked: Any = None
                try:
                    asked = json.loads(line)
                    if asked.get("op") not in QUESTIONS:
                        raise ValueError(f"no such question: {asked.get('op')!r}")
                    answer = {"id": asked["id"], "result": getattr(monitor, asked["op"])(*asked.get("args", ()))}
                except Exception as err:  # answered, logged; the next question is answered as usual
                    log.exception("monitoring.scorer_question_failed")
                    answer = {"id": asked.get("id") if isinstance(asked, dict) else None, "error": type(err).__name__}
                conn.sendall(json.dumps(answer, default=str).encode() + b"\n")
        except OSError as err:  # (ECONNRESET, EPIPE)
            log.info("monitoring.scorer_questions_closed", error=type(err).__name__)


def run(fd: int, config: ScorerConfig) -> int:
    from ..store import Store
    from .service import Monitor, load_rules

    os.nice(SCORER_NICE)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # Ctrl-C at `serve` in a terminal reaches the whole process group: the engine process stops this one
    # (SIGTERM) after its outbox's last write; ended by the SIGINT first it missed that write, and was
    # started again during the engine's graceful shutdown
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn = socket.socket(fileno=fd)
    store = Store.from_url(config.database_url)
    monitor = Monitor(store, None, load_rules(config.rules), poll_ms=config.poll_ms, geoip=config.geoip,
                      liquidity_accounts=config.liquidity_accounts, writes_outbox=False)
    monitor.start()  # the cursor loaded, the windows warmed: questions asked meanwhile wait (ASK_TIMEOUT_S) in the socket
    threading.Thread(target=_answer, args=(monitor, conn), name="ringfence-scorer-questions", daemon=True).start()
    log.info("monitoring.scorer_process_ready", pid=os.getpid(), cursor=monitor.cursor)
    while not stop.wait(1):
        if os.getppid() == 1:  # the engine process is gone (PR_SET_PDEATHSIG missed: a parent that ended before it was set)
            break
    # the last step has STOP_TIMEOUT_S, as the engine process gives it: an orphan (the engine process killed)
    # has no one to kill it when a step or a thread hangs (seen once in a fresh-clone test run: an orphan
    # scorer sleeping on a lock for good); the events after the stored cursor are scored on the next start
    deadline = threading.Timer(STOP_TIMEOUT_S, _give_up)
    deadline.daemon = True
    deadline.start()
    monitor.stop()  # the last step: the engine process wrote its outbox before it sent SIGTERM
    log.info("monitoring.scorer_process_stopped", cursor=monitor.cursor, events_scored=monitor.scorer.events_scored)
    store.engine.dispose()
    return 0


def _give_up() -> None:
    """The last step did not end within STOP_TIMEOUT_S: this process ends now (no thread keeps it)."""
    log.warning("monitoring.scorer_process_last_step_timed_out", after_s=STOP_TIMEOUT_S)
    sys.stdout.flush()
    os._exit(1)


def main() -> None:
    structlog.configure(processors=[structlog.processors.TimeStamper(fmt="iso"), structlog.processors.JSONRenderer()])
    fd = int(sys.argv[1])
    raw = json.loads(sys.stdin.buffer.read())
    config = ScorerConfig(**{**raw, "liquidity_accounts": tuple(raw.get("liquidity_accounts", ()))})
    code = run(fd, config)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # no thread left behind (a non-daemon one stuck on a lock) keeps an orphan scorer alive


if __name__ == "__main__":
    main()
