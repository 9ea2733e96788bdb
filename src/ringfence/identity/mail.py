"""Every e-mail the exchange sends: one composer, a transactional outbox, and an SMTP delivery worker.

Invariants:
- `enqueue` is the only code that creates `OutboxMessage` rows, and it always goes through
  `compose`, which puts the user's anti-phishing code in the subject and the first body line of
  every message (or says that none is set). No template can skip it: templates only supply text.
- Messages flagged sensitive (security alerts, withdrawal confirmations, ticket replies, ...) are
  PGP-encrypted to the user's registered key when there is one; the anti-phishing code stays in the
  subject so it is visible before decrypting.
- The outbox row is written in the same transaction as the change it announces (transactional
  outbox). Delivery retries with exponential backoff and gives up (`dead`) after a bounded number of
  attempts. Bodies are plain text; template parameters are single-line strings or ints.
"""

from __future__ import annotations

import smtplib
import ssl
import string
from dataclasses import dataclass
from typing import Callable
from email.message import EmailMessage

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..errors import ConfigError, ValidationError
from ..i18n import DEFAULT, N_, format_time, normalize_locale, translations
from ..settings import Settings
from ..store.models import OutboxMessage, User
from .context import IdentityContext

__all__ = ["TEMPLATES", "Template", "compose", "enqueue", "deliver_due", "DeliveryReport", "PARAM_MAX_CHARS",
           "probe_smtp", "smtp_problem", "EVENT_LABELS", "event_label"]

PARAM_MAX_CHARS = 512
MULTILINE_PARAM_MAX_CHARS = 20_000
DELIVERY_BATCH_MAX = 200


@dataclass(frozen=True)
class Template:
    subject: str
    body: str
    sensitive: bool
    multiline_fields: tuple[str, ...] = ()  # body-only fields that may span lines
    label_fields: tuple[str, ...] = ()  # fields holding a security-event kind: shown as its label, translated
    factor_fields: tuple[str, ...] = ()  # fields naming a second factor ("totp", "passkey:NAME"): translated
    time_fields: tuple[str, ...] = ()  # Unix seconds: written as the reader's locale writes a date and time (UTC)
    duration_fields: tuple[str, ...] = ()  # whole seconds: a length of time in the reader's words ("10 minutes")


#: What each security-event kind (`events.EVENT_KINDS`, the machine identifier kept in the data) is
#: called in an e-mail's `{change}` and in the security centre's event list, in the reader's language.
EVENT_LABELS: dict[str, str] = {
    "password_changed": N_("password changed"),
    "email_changed": N_("e-mail address changed"),
    "totp_enabled": N_("authenticator app turned on"),
    "totp_disabled": N_("authenticator app turned off"),
    "recovery_codes_regenerated": N_("new recovery codes made"),
    "passkey_added": N_("passkey added"),
    "passkey_removed": N_("passkey removed"),
    "api_key_created": N_("API key created"),
    "anti_phishing_changed": N_("anti-phishing code changed"),
    "pgp_key_changed": N_("PGP key changed"),
    "withdrawal_address_changed": N_("withdrawal address requested"),  # at the request, before its link (mail.py)
    "signed_up": N_("signed up"),
    "email_verified": N_("e-mail address confirmed"),
    "sign_in": N_("signed in"),
    "new_device_sign_in": N_("sign-in from a new device"),
    "new_country_sign_in": N_("sign-in from a new country"),
    "sign_in_failed": N_("failed sign-in"),
    "second_factor_failed": N_("wrong second-factor code"),
    "recovery_code_used": N_("recovery code used"),
    "session_revoked": N_("session ended"),
    "logout_everywhere": N_("signed out everywhere"),
    "account_frozen": N_("account frozen"),
    "account_locked": N_("sign-in locked after failed attempts"),
    "api_key_revoked": N_("API key revoked"),
    "second_factor_confirmed": N_("second factor confirmed"),
    "second_factor_reset": N_("second factors removed by an analyst: set one up again"),
}


def format_duration(seconds: int, locale: str) -> str:
    """A length of time in the reader's words ("10 minutes", "1 day"), as the pages write it (identity/web.py)."""
    import datetime as dt

    from babel.dates import format_timedelta

    return format_timedelta(dt.timedelta(seconds=seconds), threshold=1, locale=locale)


def event_label(kind: str, gettext: Callable[[str], str]) -> str:
    """The label of a security-event kind through `gettext`; an unknown kind as itself."""
    return gettext(EVENT_LABELS[kind]) if kind in EVENT_LABELS else kind


def factor_label(factor: str, gettext: Callable[[str], str]) -> str:
    """A second factor as `second_factor.py` names it ("totp", "passkey:NAME") in the reader's language."""
    kind, _, name = factor.partition(":")
    if kind == "totp":
        return gettext(N_("Authenticator app"))
    if kind == "passkey":
        return gettext(N_("passkey '{name}'")).replace("{name}", name)
    return factor


TEMPLATES: dict[str, Template] = {
    "verify_email": Template(
        N_("Confirm your e-mail address"),
        N_("Welcome to ringfence. Confirm this address to activate your account:\n{link}\n\n"
        "The link works once and expires in 24 hours. If you did not sign up, ignore this message."),
        False,
    ),
    "signup_existing": Template(
        N_("Sign-up attempt with your e-mail address"),
        N_("Someone tried to create a ringfence account with this address, which already has one.\n"
        "If it was you, sign in instead. If not, you can ignore this message; nothing was changed."),
        False,
    ),
    "signup_existing_pending": Template(
        N_("Sign-up attempt with your e-mail address"),
        N_("Someone tried to create a ringfence account with this address. An account with this address was "
        "started earlier and is not confirmed yet; if you did not start it, someone else did.\n"
        "You can take it over: ask for a new link here, and choose your own password on the page it opens "
        "(any password set before stops working):\n{link}\n\n"
        "If you do not want an account, you can ignore this message."),
        False,
    ),
    "verify_claim": Template(
        N_("Your new confirmation link (the sign-up link no longer works)"),
        N_("This is a re-sent link, as you asked. The link in your sign-up e-mail no longer works; this one does, as does any "
        "other re-sent link that has not expired (using one ends the others).\n"
        "Confirm this address and choose the password of your account:\n"
        "{link}\n\nAny password set before for this account stops working. The link works once and expires "
        "in 24 hours. If you did not ask for it, ignore this message."),
        False,
    ),
    "password_reset": Template(
        N_("Choose a new password"),
        N_("Someone (hopefully you) asked to reset the password of your ringfence account. Choose a new one here:\n"
        "{link}\n\nThe link works once and expires in {minutes} minutes. Resetting signs the account out "
        "everywhere, revokes its API keys (create new ones afterwards if you use the API) and locks withdrawals "
        "for a while. If you did not ask for it, ignore this message: your "
        "password stays as it is."),
        False,
    ),
    "email_change_confirm": Template(
        N_("Confirm your new e-mail address"),
        N_("Confirm that this address should become the e-mail of your ringfence account:\n{link}"),
        False,
    ),
    "new_sign_in": Template(
        N_("New sign-in to your account"),
        N_("Your account was signed in from a new device or network.\nIP: {ip}\nDevice: {device}\n\n"
        "If this wasn't you, change your password and contact support."),
        True,
    ),
    "credential_changed": Template(
        N_("Security change on your account: {change}"),
        N_("This security setting of your account changed: {change}.\nIP: {ip}\n"
        "For your protection withdrawals are locked until {locked_until}.\n\n"
        "If this wasn't you, freeze your account now with one click:\n{freeze_link}"),
        True,
        label_fields=("change",),
        time_fields=("locked_until",),
    ),
    "password_reset_done": Template(  # credential_changed's notice after a reset by mailed link (accounts.reset_password)
        N_("Security change on your account: {change}"),
        N_("The password of your account was reset from a link mailed to this address.\nIP: {ip}\n"
        "Every session was signed out and every API key of the account was revoked (API keys revoked: {api_keys}): "
        "if you use the API, create new keys in the security centre.\n"
        "For your protection withdrawals are locked until {locked_until}.\n\n"
        "If this wasn't you, freeze your account now with one click:\n{freeze_link}"),
        True,
        label_fields=("change",),
        time_fields=("locked_until",),
    ),
    "second_factor_confirm": Template(
        N_("Confirm your new second factor"),
        N_("Someone signed in to your account with your password and set up its first second factor: {factor}.\nIP: {ip}\n\n"
        "Until it is confirmed from this e-mail it does not count: no trading, no API keys, no withdrawals.\n"
        "If it was you, confirm it (the link works once, for {hours} hours):\n{link}\n\n"
        "If it was NOT you, do not click that link: your password is known to someone else. Freeze your account "
        "with one click, then contact support and change your password:\n{freeze_link}"),
        True,
        factor_fields=("factor",),
    ),
    "account_frozen": Template(
        N_("Your account is frozen"),
        N_("Your account was frozen from a 'this wasn't me' link. All sessions and API keys were "
        "stopped and withdrawals are disabled. Contact support to recover the account."),
        True,
    ),
    "second_factor_failed": Template(
        N_("Failed second-factor attempts"),
        N_("Several wrong second-factor codes were entered for your account.\nIP: {ip}\n"
        "If this wasn't you, your password is known to someone else: change it now."),
        True,
    ),
    "withdrawal_confirmation": Template(
        N_("Confirm your withdrawal"),
        N_("Someone signed in to your account asked to withdraw {amount} {asset} to this address:\n{address}\n"
        "Fee: {fee} {asset}\nThe address receives: {received} {asset}\n\n"
        "If it was you, confirm it (the link works once, until {expires_at}):\n{link}\n\n"
        "If it was not you, do not click that link: freeze your account with one click, then change your password:\n"
        "{freeze_link}"),
        True,
        time_fields=("expires_at",),
    ),
    # sent when the address is asked for, before its link is pressed: the warning comes while the owner can
    # still stop it (a freeze link); it says what was asked, not that the address was added
    "withdrawal_address_requested": Template(
        N_("Security notice: a withdrawal address was requested"),
        N_("Someone signed in to your account (with your second factor) asked to add a withdrawal address.\nIP: {ip}\n"
        "It is added only when the link in the separate confirmation e-mail is pressed; until then nothing is added.\n"
        "For your protection withdrawals are locked until {locked_until}.\n\n"
        "If this wasn't you, freeze your account now with one click:\n{freeze_link}"),
        True,
        time_fields=("locked_until",),
    ),
    "withdrawal_address_confirmation": Template(
        N_("Confirm a new withdrawal address"),
        N_("Someone signed in to your account (with your second factor) asked to add this {asset} withdrawal address:\n"
        "{address}\nNetwork: {network}\nIP: {ip}\n\nIf it was you, confirm it (the link works for 30 minutes):\n{link}\n\n"
        "After confirmation the address cools for {cooling} before it can receive withdrawals.\n\n"
        "If it was not you, do not click that link: freeze your account with one click, then change your password:\n"
        "{freeze_link}"),
        True,
        duration_fields=("cooling",),
    ),
    "ticket_reply": Template(N_("Reply to your support ticket #{ticket_id}"), "{reply}", True, ("reply",)),
}


def _render(text: str, params: dict[str, object], *, multiline_fields: tuple[str, ...] = ()) -> str:
    used = {name for _, name, _, _ in string.Formatter().parse(text) if name}
    clean: dict[str, str] = {}
    for key in used:
        if key not in params:
            raise ValidationError("is required by this template", field=f"params.{key}")
        value = params[key]
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            raise ValidationError("template parameters must be strings or integers", field=f"params.{key}")
        s = str(value)
        multiline = key in multiline_fields
        limit = MULTILINE_PARAM_MAX_CHARS if multiline else PARAM_MAX_CHARS
        if len(s) > limit:
            raise ValidationError(f"must be at most {limit} characters", field=f"params.{key}")
        if not multiline and any(ch in s for ch in "\r\n"):
            raise ValidationError("must be a single line", field=f"params.{key}")
        clean[key] = s
    return text.format(**clean)


def compose(ctx: IdentityContext, user: User | None, template: str, params: dict[str, object], *,
            locale: str | None = None) -> tuple[str, str, bool]:
    """Return (subject, body, encrypted) for `template`, with the anti-phishing code in both; in `locale`
    when it is given (the language of the page that asked for the mail), else in the user's."""
    tpl = TEMPLATES.get(template)
    if tpl is None:
        raise ValidationError(f"must be one of {sorted(TEMPLATES)}", field="template")
    # in the user's language (their profile's; English without one): the same placeholders in every
    # catalogue (tests/i18n/test_catalogues.py), so a translation cannot drop the link or the code
    locale = normalize_locale(locale) or normalize_locale(getattr(user, "locale", None)) or DEFAULT
    gettext = translations(locale).gettext
    labelled = {k: event_label(v, gettext) for k, v in params.items() if k in tpl.label_fields and isinstance(v, str)}
    labelled |= {k: factor_label(v, gettext) for k, v in params.items() if k in tpl.factor_fields and isinstance(v, str)}
    labelled |= {k: format_time(v, locale) for k, v in params.items() if k in tpl.time_fields and isinstance(v, int)}
    labelled |= {k: format_duration(v, locale) for k, v in params.items() if k in tpl.duration_fields and isinstance(v, int)}
    params = {**params, **labelled}  # the kind's label in the reader's language; the caller's data keeps the kind
    subject = _render(gettext(tpl.subject), params)
    body = _render(gettext(tpl.body), params, multiline_fields=tpl.multiline_fields)
    code = user.anti_phishing_code if user is not None else None
    if code:
        subject = f"[{code}] {subject}"
        header = gettext(N_("Anti-phishing code: {code}\n(ringfence always shows this code. A message without it is "
                            "not from us.)")).format(code=code) + "\n\n"
    else:
        header = gettext(N_("Anti-phishing code: not set. Set one in your security centre so you can recognise our "
                            "e-mails.")) + "\n\n"
    body = header + body
    encrypted = False
    if tpl.sensitive and user is not None and user.pgp_fingerprint:
        body = ctx.keyring.encrypt(body, user.pgp_fingerprint)
        encrypted = True
    return subject, body, encrypted


def enqueue(
    ctx: IdentityContext,
    db: Session,
    user: User | None,
    template: str,
    params: dict[str, object],
    *,
    to_addr: str | None = None,
    locale: str | None = None,
) -> OutboxMessage:
    """Compose and queue one message inside the caller's transaction (in `locale`, see `compose`)."""
    address = to_addr or (user.email if user is not None else None)
    if not address:
        raise ValidationError("a recipient is required", field="to_addr")
    subject, body, encrypted = compose(ctx, user, template, params, locale=locale)
    now = ctx.now()
    msg = OutboxMessage(
        user_id=user.id if user is not None else None,
        to_addr=address,
        subject=subject,
        body=body,
        template=template,
        encrypted=encrypted,
        status="pending",
        attempts=0,
        next_attempt_at_s=now,
        created_at_s=now,
    )
    db.add(msg)
    db.flush()
    return msg


@dataclass(frozen=True)
class DeliveryReport:
    sent: int
    failed: int
    dead: int
    last_error: str = ""  # why the last failed message failed (settings named, no secrets)


def _connect(s: Settings) -> smtplib.SMTP:
    """An SMTP connection as the settings say: TLS (`ssl` / `starttls`) and login when configured."""
    host, port, timeout = s.identity_smtp_host, s.identity_smtp_port, s.identity_smtp_timeout_s
    tls = ssl.create_default_context()
    smtp = smtplib.SMTP_SSL(host, port, timeout=timeout, context=tls) if s.identity_smtp_security == "ssl" else smtplib.SMTP(host, port, timeout=timeout)
    try:
        if s.identity_smtp_security == "starttls":
            smtp.starttls(context=tls)
        if s.identity_smtp_username:
            smtp.login(s.identity_smtp_username, s.identity_smtp_password)
    except BaseException:
        smtp.close()
        raise
    return smtp


def smtp_problem(s: Settings, exc: BaseException) -> str:
    """What went wrong talking to the SMTP server, naming the settings to change (never the password)."""
    where = f"{s.identity_smtp_host}:{s.identity_smtp_port}"
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return (f"the SMTP server {where} refused the login of '{s.identity_smtp_username}' "
                f"({exc.smtp_code}); check RINGFENCE_IDENTITY_SMTP_USERNAME and RINGFENCE_IDENTITY_SMTP_PASSWORD")
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return (f"the SMTP server {where} does not support what RINGFENCE_IDENTITY_SMTP_SECURITY="
                f"{s.identity_smtp_security} or the login needs ({exc}); check those settings")
    if isinstance(exc, ssl.SSLError):
        return (f"TLS with the SMTP server {where} failed ({exc.reason or exc}); check RINGFENCE_IDENTITY_SMTP_SECURITY "
                "(ssl for port 465, starttls for 587)")
    if isinstance(exc, (smtplib.SMTPServerDisconnected, smtplib.SMTPConnectError, OSError)):
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return (f"cannot reach the SMTP server {where}: {reason}; check RINGFENCE_IDENTITY_SMTP_HOST and "
                "RINGFENCE_IDENTITY_SMTP_PORT (and that the server is running)")
    return f"the SMTP server {where} answered: {exc}"


def probe_smtp(s: Settings) -> None:
    """Connect, say hello, log in (when configured) and quit; raise ConfigError saying what is wrong."""
    try:
        with _connect(s) as smtp:
            code, _ = smtp.noop()
            if code != 250:
                raise smtplib.SMTPResponseException(code, b"NOOP refused")
    except (OSError, smtplib.SMTPException) as exc:
        raise ConfigError(smtp_problem(s, exc), field="RINGFENCE_IDENTITY_SMTP_HOST") from None


def _send(ctx: IdentityContext, msg: OutboxMessage) -> None:
    s = ctx.settings
    email = EmailMessage()
    email["From"] = s.identity_mail_from
    email["To"] = msg.to_addr
    email["Subject"] = msg.subject
    email["Message-ID"] = f"<outbox-{msg.id}-{msg.created_at_s}@ringfence>"
    email.set_content(msg.body)
    with _connect(s) as smtp:
        smtp.send_message(email)


def deliver_due(ctx: IdentityContext, *, limit: int = 50) -> DeliveryReport:
    """Send up to `limit` due messages; failures are retried later with exponential backoff."""
    limit = max(1, min(limit, DELIVERY_BATCH_MAX))
    s = ctx.settings
    now = ctx.now()
    with ctx.store.tx() as db:
        ids = list(
            db.scalars(
                select(OutboxMessage.id)
                .where(OutboxMessage.status == "pending", OutboxMessage.next_attempt_at_s <= now)
                .order_by(OutboxMessage.id)
                .limit(limit)
            )
        )
    sent = failed = dead = 0
    last_error = ""
    for msg_id in ids:
        with ctx.store.tx() as db:
            q = select(OutboxMessage).where(OutboxMessage.id == msg_id, OutboxMessage.status == "pending")
            if db.bind is not None and db.bind.dialect.name == "postgresql":
                q = q.with_for_update(skip_locked=True)
            msg = db.scalars(q).first()
            if msg is None:
                continue
            try:
                _send(ctx, msg)
            except (OSError, smtplib.SMTPException) as exc:
                msg.attempts += 1
                msg.last_error = f"{type(exc).__name__}: {exc}"[:255]
                last_error = smtp_problem(s, exc)
                if msg.attempts >= s.identity_outbox_max_attempts:
                    msg.status = "dead"
                    dead += 1
                else:
                    delay = min(s.identity_outbox_backoff_base_s * 2 ** (msg.attempts - 1), s.identity_outbox_backoff_max_s)
                    msg.next_attempt_at_s = now + delay
                    failed += 1
                continue
            msg.attempts += 1
            msg.status = "sent"
            msg.sent_at_s = ctx.now()
            sent += 1
    return DeliveryReport(sent=sent, failed=failed, dead=dead, last_error=last_error)
