"""Mail that arrives: the outbox delivery worker `ringfence serve` runs, and the demo's mail catcher.

* `MailDelivery` is a supervised background thread: every `identity_mail_poll_ms` it sends what is
  due (`mail.deliver_due`, with its retries and back-off per message). A failing round (database
  gone, a bug) is logged and retried after a growing pause, capped at a minute; it never takes the
  exchange down and never stops for good. `stop()` ends it between rounds.
* `prepare_for_serve` decides at start: outside dev mode the SMTP server is probed (connect, TLS,
  login) and a misconfiguration is a `ConfigError` that stops `serve` before it listens; in dev
  mode an unreachable server is a warning (mail stays queued and is retried); with `--demo` in dev
  mode a local catcher (aiosmtpd, a real SMTP hop on a free port) receives every message and
  `/dev/mail` shows it, so a newcomer can click the verification link.
* The catcher keeps the newest `CATCHER_MAX_MESSAGES` messages in memory; nothing leaves the machine.
"""

from __future__ import annotations

import collections
import email
import email.policy
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy.exc import SQLAlchemyError

from ..errors import RingfenceError
from .context import IdentityContext
from .mail import deliver_due, probe_smtp

__all__ = ["MailDelivery", "MailCatcher", "CaughtMail", "MailSetup", "prepare_for_serve", "CATCHER_MAX_MESSAGES"]

CATCHER_MAX_MESSAGES = 200
SUPERVISOR_MAX_PAUSE_S = 60
log = structlog.get_logger("ringfence.mail")


@dataclass(frozen=True)
class CaughtMail:
    number: int
    mail_from: str
    to: tuple[str, ...]
    subject: str
    body: str
    received_at_s: int


class MailCatcher:
    """A local SMTP server (aiosmtpd) on 127.0.0.1 that keeps what it receives, for the demo."""

    def __init__(self, clock: Callable[[], int]) -> None:
        self.clock = clock  # the identity context's clock (integer Unix seconds)
        self._messages: collections.deque[CaughtMail] = collections.deque(maxlen=CATCHER_MAX_MESSAGES)
        self._lock = threading.Lock()
        self._count = 0
        self._controller: Any = None
        self.port = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 (aiosmtpd hook)
        parsed = email.message_from_bytes(envelope.original_content or envelope.content, policy=email.policy.default)
        part = parsed.get_body(preferencelist=("plain",)) if parsed.is_multipart() else parsed
        body = part.get_content() if part is not None else ""  # type: ignore[union-attr]
        with self._lock:
            self._count += 1
            self._messages.append(CaughtMail(self._count, str(envelope.mail_from), tuple(envelope.rcpt_tos),
                                             str(parsed.get("Subject", "")), str(body), self.clock()))
        return "250 OK"

    def start(self) -> None:
        from aiosmtpd.controller import Controller

        # aiosmtpd's Controller(port=0) fails its own start-up check: pick a free port first.
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def messages(self) -> list[CaughtMail]:
        """Newest first."""
        with self._lock:
            return list(reversed(self._messages))


class MailDelivery:
    """The outbox delivery loop on its own thread, supervised (see the module docstring)."""

    def __init__(self, ctx: IdentityContext, poll_ms: int) -> None:
        assert poll_ms > 0
        self.ctx = ctx
        self.poll_s = poll_ms / 1000  # float-ok: a sleep interval, not money
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.sent_total = 0
        self.rounds = 0
        self.last_error = ""

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="ringfence-mail", daemon=True)
            self._thread.start()

    def stop(self, timeout_s: int = 15) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def run_once(self) -> None:
        report = deliver_due(self.ctx)
        self.rounds += 1
        self.sent_total += report.sent
        if report.failed or report.dead:
            self.last_error = report.last_error
            log.warning("mail.delivery_failed", failed=report.failed, dead=report.dead, error=report.last_error)

    def _run(self) -> None:
        pause_s = self.poll_s
        while not self._stop.is_set():
            try:
                self.run_once()
                pause_s = self.poll_s
            except (SQLAlchemyError, RingfenceError, OSError) as exc:  # supervised: logged, retried after a back-off
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                log.error("mail.worker_round_failed", error=self.last_error)
                pause_s = min(max(pause_s * 2, 1), SUPERVISOR_MAX_PAUSE_S)
            except Exception as exc:  # supervised: an unexpected bug must not end mail for good; logged, retried
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                log.exception("mail.worker_crashed")
                pause_s = min(max(pause_s * 2, 1), SUPERVISOR_MAX_PAUSE_S)
            self._stop.wait(pause_s)


@dataclass
class MailSetup:
    """What `ringfence serve` runs for mail; `summary` is the line it prints at start."""

    delivery: MailDelivery | None
    catcher: MailCatcher | None
    summary: str
    warnings: list[str] = field(default_factory=list)

    def start(self) -> None:
        if self.delivery is not None:
            self.delivery.start()

    def stop(self) -> None:
        if self.delivery is not None:
            self.delivery.stop()
        if self.catcher is not None:
            self.catcher.stop()


def prepare_for_serve(ctx: IdentityContext, *, demo: bool, smtp_configured: bool) -> MailSetup:
    """Probe or start what mail needs; raise ConfigError (serve exits non-zero) when misconfigured.

    `smtp_configured`: RINGFENCE_IDENTITY_SMTP_HOST was set explicitly (then the demo uses it too).
    """
    s = ctx.settings
    if s.identity_mail_poll_ms == 0:
        return MailSetup(None, None, "mail: not delivered by serve (RINGFENCE_IDENTITY_MAIL_POLL_MS=0); "
                                     "run `ringfence identity deliver-mail` beside it")
    catcher = None
    if demo and s.mode == "dev" and not smtp_configured:
        catcher = MailCatcher(ctx.now)
        catcher.start()
        s.identity_smtp_host, s.identity_smtp_port = "127.0.0.1", catcher.port
        s.identity_smtp_security, s.identity_smtp_username, s.identity_smtp_password = "none", "", ""
    where = f"{s.identity_smtp_host}:{s.identity_smtp_port}"
    warnings: list[str] = []
    try:
        probe_smtp(s)
    except RingfenceError as err:
        if s.mode != "dev":
            if catcher is not None:
                catcher.stop()
            raise
        warnings.append(f"mail: {err.message}. Messages stay queued and are retried; "
                        "`serve --demo` catches them locally at /dev/mail")
    summary = (f"mail: delivered every {s.identity_mail_poll_ms} ms to the local catcher {where}; read it at /dev/mail"
               if catcher is not None else f"mail: delivered every {s.identity_mail_poll_ms} ms to {where}")
    return MailSetup(MailDelivery(ctx, s.identity_mail_poll_ms), catcher, summary, warnings)
