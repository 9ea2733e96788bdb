"""Accounts: sign-up, e-mail verification, sign-in with lockout, password / e-mail / anti-phishing changes.

Invariants:
- Sign-up and sign-in never reveal whether an e-mail is registered: sign-up answers the same either
  way (the owner of an existing address gets a notice instead), sign-in failures share one message,
  unknown e-mails cost a full argon2 computation and are locked out exactly like known ones.
- A user gets its `account_id` ("u_" + 24 hex) at sign-up; it never changes. The ledger account is
  created later from it.
- Bad input raises a ValidationError naming the field and changes nothing. The only state a failed
  sign-in changes is its throttle counters and a `sign_in_failed` event, committed on purpose.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Callable

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from ..errors import AccountFrozen, AuthenticationFailed, Conflict, Forbidden, RateLimited, RingfenceError, Unauthorized, ValidationError
from ..store.models import AuthSession, EmailToken, KnownDevice, User
from . import mail, sessions, throttle
from .context import IdentityContext
from ..i18n import N_, normalize_locale
from .events import credential_changed, record_event
from .fields import PASSWORD_MAX_CHARS, normalize_email, validate_anti_phishing_code, validate_ip, validate_user_agent
from .passwords import check_password_policy
from .sealing import new_token

__all__ = [
    "SignUpReceipt",
    "LoginResult",
    "sign_up",
    "verify_email",
    "resend_verification",
    "check_claim_link",
    "claim_pending_account",
    "request_password_reset",
    "check_reset_link",
    "reset_password",
    "ResetDone",
    "login",
    "change_password",
    "request_email_change",
    "confirm_email_change",
    "set_anti_phishing_code",
    "note_sign_in",
    "LOGIN_FAILED_MESSAGE",
]

LOGIN_FAILED_MESSAGE = "the e-mail or password is incorrect"
SIGN_UP_MESSAGE = N_("check your inbox: we sent a link to confirm the address")
RESEND_MESSAGE = N_("if an account with this address is waiting for its confirmation, we sent it a new link")
#: A link from `/verify-email/new` (the resend): it confirms the address only together with a new password,
#: so whoever started a pending account with somebody else's address loses it to the mailbox's owner.
CLAIM_PURPOSE = "verify_claim"
#: `/forgot-password`: the same answer for every address (no probing of registered ones)
RESET_MESSAGE = N_("if a confirmed account uses this address, we sent it a link to choose a new password")
RESET_PURPOSE = "password_reset"
RESET_LINK_TTL_S = 30 * 60  # a mailed password link is worth an account: short-lived
#: One requester's (one IP's) requests for one address an hour; past it the requester is refused, the
#: same for every address. A budget per requester, not per address: a stranger spending his cannot
#: refuse the owner hers (intruder review, session 12: the address's 5 an hour, spent by a stranger at
#: the top of the hour, left the owner without a working link for up to 30 minutes).
RESEND_PER_ADDRESS_PER_HOUR = 5
#: What protects an address from being mail-bombed from many IPs: a link is mailed only while fewer than
#: `LIVE_LINKS_MAX` unused, unexpired links of its kind are out (so at most that many mails per link
#: lifetime, whoever asks). Every link goes to the owner's mailbox and a new one ends none of the others,
#: so whenever a request mails nothing, `LIVE_LINKS_MAX` working links are already in her mailbox; the
#: moment one of them expires, anyone's next request (hers) mails a new one. Using any of them ends the
#: others.
LIVE_LINKS_MAX = 5
#: where a web route puts work to run after its answer is sent (Starlette's `BackgroundTasks.add_task`)
Later = Callable[[Callable[[], None]], None]


@dataclass(frozen=True)
class SignUpReceipt:
    """Identical for new and already-registered e-mails, so sign-up cannot be used to probe."""

    message: str


@dataclass(frozen=True)
class LoginResult:
    session: sessions.IssuedSession
    second_factor_required: bool
    methods: tuple[str, ...]
    account_id: str | None


def _raise_pending(err: RingfenceError | None) -> None:
    if err is not None:
        raise err


def _email_token(ctx: IdentityContext, db: Session, user: User, *, purpose: str, email: str, ttl_s: int | None = None) -> str:
    token = new_token()
    db.add(EmailToken(
        user_id=user.id, purpose=purpose, token_hash=ctx.sealer.token_digest(token), email=email,
        expires_at_s=ctx.now() + (ctx.settings.identity_email_token_ttl_s if ttl_s is None else ttl_s),
    ))
    return token


def sign_up(ctx: IdentityContext, email: object, password: object, *, ip: object, locale: str | None = None) -> SignUpReceipt:
    """Register an e-mail + password and mail a verification link (in `locale`, the page's language,
    which becomes the profile's). Rate-limited per IP."""
    addr = normalize_email(email)
    pw = check_password_policy(password, email=addr)
    client_ip = validate_ip(ip)
    now = ctx.now()
    pending: RingfenceError | None = None
    with ctx.store.tx() as db:
        pending = throttle.hit(db, bucket=f"signup-ip:{client_ip}", limit=ctx.settings.identity_signup_per_ip_per_hour,
                               window_s=3600, now_s=now)
        if pending is None:
            existing = db.scalars(select(User).where(User.email == addr)).first()
            if existing is not None:
                # the same argon2 work as a new account's (result discarded): the answer's time must not
                # tell an existing address from a new one
                ctx.passwords.hash(pw)
                if existing.email_verified:
                    mail.enqueue(ctx, db, existing, "signup_existing", {})
                else:  # maybe somebody else's account on her address: she can take it over
                    # its first link (which confirms the password set at that sign-up, maybe a stranger's)
                    # stops working: from now on only a resent link, which sets her own password, confirms.
                    # Resent links stay: a stranger signing up again must not void the one she holds.
                    _end_links(db, existing.id, now, "verify")
                    mail.enqueue(ctx, db, existing, "signup_existing_pending",
                                 {"link": f"{ctx.settings.identity_public_url}/verify-email/new"})
            else:
                user = User(
                    account_id="u_" + secrets.token_hex(12), email=addr, email_verified=False,
                    password_hash=ctx.passwords.hash(pw), created_at_s=now, totp_enabled=False, totp_last_step=0,
                    mfa_failures=0, mfa_locked_until_s=0, withdrawals_locked_until_s=0, frozen=False,
                    locale=normalize_locale(locale),
                )
                db.add(user)
                try:
                    with db.begin_nested():
                        db.flush()
                except IntegrityError as exc:  # a concurrent sign-up won the race for this e-mail
                    raise Conflict("sign-up raced with another request; retry", field="email") from exc
                record_event(db, user_id=user.id, kind="signed_up", at_s=now, ip=client_ip)
                token = _email_token(ctx, db, user, purpose="verify", email=addr)
                mail.enqueue(ctx, db, user, "verify_email", {"link": f"{ctx.settings.identity_public_url}/verify-email?token={token}"})
    _raise_pending(pending)
    return SignUpReceipt(SIGN_UP_MESSAGE)


def set_locale(ctx: IdentityContext, token: object, locale: object) -> str:
    """The signed-in user's language (the selector on any page): pages and e-mails use it."""
    chosen = normalize_locale(locale)
    if chosen is None:
        raise ValidationError("is not a language with a catalogue (GET /i18n/locales)", field="locale")
    info = sessions.authenticate(ctx, token)
    with ctx.store.tx() as db:
        user = db.get(User, info.user_id)
        assert user is not None
        user.locale = chosen
    return chosen


def profile_locale(ctx: IdentityContext, token: object) -> str | None:
    """The signed-in user's language, or None (not signed in, or never chosen)."""
    if not token:
        return None
    try:
        info = sessions.authenticate(ctx, token)
    except RingfenceError:
        return None
    with ctx.store.tx() as db:
        user = db.get(User, info.user_id)
        return user.locale if user is not None else None


def usable_email_token(ctx: IdentityContext, db: Session, token: object, purpose: str) -> EmailToken:
    """The e-mailed link's row if it can still be used for `purpose`; reads only (a page shown from
    the link's GET, which must change nothing, asks this before it offers its button)."""
    if not isinstance(token, str) or not 16 <= len(token) <= 128:
        raise ValidationError("must be the token from the e-mail link", field="token")
    row = db.scalars(select(EmailToken).where(EmailToken.token_hash == ctx.sealer.token_digest(token))).first()
    if row is None or row.purpose != purpose or row.used_at_s is not None or row.expires_at_s < ctx.now():
        raise Unauthorized("this link is invalid, already used or expired; request a new one", field="token")
    return row


def _consume_email_token(ctx: IdentityContext, db: Session, token: object, purpose: str) -> EmailToken:
    row = usable_email_token(ctx, db, token, purpose)
    _use(db, row, ctx.now())
    return row


def _lock_email_token(ctx: IdentityContext, db: Session, token: object) -> None:
    """Before anything is read in the transaction, a write to the link's row that changes nothing: two
    uses of one link then run one after the other (PostgreSQL: the row's lock; SQLite: the database's,
    taken at the first statement, so the second use waits and then reads the first's result instead of
    failing on a stale snapshot)."""
    if isinstance(token, str) and 16 <= len(token) <= 128:
        db.execute(update(EmailToken).where(EmailToken.token_hash == ctx.sealer.token_digest(token))
                   .values(used_at_s=EmailToken.used_at_s).execution_options(synchronize_session=False))


def _use(db: Session, row: EmailToken, now: int) -> None:
    """Mark the link used, only if nobody did since it was read (a conditional UPDATE, its row count
    checked): of two concurrent uses, whatever the store and however many processes share it, one wins
    and the other is refused as a used link."""
    done = db.execute(update(EmailToken).where(EmailToken.id == row.id, EmailToken.used_at_s.is_(None))
                      .values(used_at_s=now).execution_options(synchronize_session=False))
    if getattr(done, "rowcount", 0) != 1:
        raise Unauthorized("this link is invalid, already used or expired; request a new one", field="token")
    set_committed_value(row, "used_at_s", now)


def check_verification_link(ctx: IdentityContext, token: object) -> str:
    """The address the sign-up link would confirm, or the error `verify_email` would raise; reads
    only (the link's GET page asks this before it shows its button: a mail scanner confirms nothing)."""
    with ctx.store.tx() as db:
        return usable_email_token(ctx, db, token, "verify").email


def _end_links(db: Session, user_id: int, now: int, *purposes: str) -> None:
    """Every unused mailed link of the account with one of `purposes` stops working."""
    db.execute(update(EmailToken).where(EmailToken.user_id == user_id, EmailToken.purpose.in_(purposes),
                                        EmailToken.used_at_s.is_(None)).values(used_at_s=now))


def _live_links(db: Session, user_id: int, now: int, purpose: str) -> int:
    """How many unused, unexpired links of `purpose` the account has out (see `LIVE_LINKS_MAX`)."""
    return len(db.scalars(select(EmailToken.id).where(EmailToken.user_id == user_id, EmailToken.purpose == purpose,
                                                      EmailToken.used_at_s.is_(None), EmailToken.expires_at_s >= now)
                          .limit(LIVE_LINKS_MAX)).all())


def _mail_target(db: Session, addr: str) -> User | None:
    """The account of `addr`, locked until the transaction ends: two requests for one address count its
    live links one after the other, so no more than `LIVE_LINKS_MAX` go out. On PostgreSQL the user's row
    (FOR UPDATE); on SQLite the database, by a first statement that writes (and changes nothing), since
    SQLite's deferred transactions would otherwise both read, then both write. Not a write to the users
    table: that would move the API key generation (store/key_generation.py) with every request."""
    db.execute(update(EmailToken).where(EmailToken.id < 0).values(used_at_s=EmailToken.used_at_s)
               .execution_options(synchronize_session=False))
    return db.scalars(select(User).where(User.email == addr).with_for_update()).first()


def _end_sign_up_links(db: Session, user: User, now: int) -> None:
    """Every unused sign-up link of `user` (the first one and any resent one) stops working."""
    _end_links(db, user.id, now, "verify", CLAIM_PURPOSE)


def verify_email(ctx: IdentityContext, token: object) -> str:
    """Confirm the sign-up e-mail from its link. Returns the user's account_id."""
    with ctx.store.tx() as db:
        row = _consume_email_token(ctx, db, token, "verify")
        user = db.get(User, row.user_id)
        assert user is not None
        user.email_verified = True
        _end_sign_up_links(db, user, ctx.now())
        record_event(db, user_id=user.id, kind="email_verified", at_s=ctx.now())
        return user.account_id


def _claimable(ctx: IdentityContext, db: Session, token: object) -> tuple[EmailToken, User]:
    row = usable_email_token(ctx, db, token, CLAIM_PURPOSE)
    user = db.get(User, row.user_id)
    assert user is not None
    if user.email_verified or user.frozen or user.email != row.email:
        raise Unauthorized("this link is invalid, already used or expired; request a new one", field="token")
    return row, user


def check_claim_link(ctx: IdentityContext, token: object) -> str:
    """The address a resent sign-up link would confirm, or the error `claim_pending_account` would
    raise; reads only (the link's GET page asks this before it shows its form)."""
    with ctx.store.tx() as db:
        return _claimable(ctx, db, token)[0].email


def claim_pending_account(ctx: IdentityContext, token: object, password: object, *, ip: object = "127.0.0.1",
                          locale: str | None = None) -> str:
    """Confirm a pending account's address from a resent link (`/verify-email/new`) and set the password
    its mailbox's owner chooses, in one transaction: a password set at sign-up (perhaps by someone else,
    before the owner came) stops working and every session of the account ends. The account's language
    becomes `locale`, the claiming page's (as `sign_up` does), not the one the first sign-up chose,
    which may have been the stranger's. Returns the account_id."""
    client_ip = validate_ip(ip)
    with ctx.store.tx() as db:
        _lock_email_token(ctx, db, token)
        row, user = _claimable(ctx, db, token)
        pw = check_password_policy(password, email=user.email)
        now = ctx.now()
        _use(db, row, now)
        user.password_hash = ctx.passwords.hash(pw)
        user.locale = normalize_locale(locale) or user.locale
        user.email_verified = True
        _end_sign_up_links(db, user, now)
        db.execute(update(AuthSession).where(AuthSession.user_id == user.id, AuthSession.revoked_at_s.is_(None))
                   .values(revoked_at_s=now))
        record_event(db, user_id=user.id, kind="email_verified", at_s=now, ip=client_ip)
        return user.account_id


def resend_verification(ctx: IdentityContext, email: object, *, ip: object, later: Later | None = None) -> SignUpReceipt:
    """A new sign-up link for an account whose address is not confirmed yet (its link was used, lost
    or expired: `/verify-email/new`). The same answer whether or not such an account exists (no
    probing of registered addresses); rate-limited per requester (`_throttle_mail_request`), and an
    address gets a new link only while fewer than `LIVE_LINKS_MAX` of its links are out. The
    account's first sign-up link (which confirms the password set at sign-up, maybe a stranger's) stops
    working: a resent link confirms only together with a new password (`claim_pending_account`). Earlier
    resent links stay valid: a stranger asking again cannot void the one the owner holds. `later` (the
    web route's background tasks) takes the look-up and the mail, so the answer's time is the same for
    every address. The mail is in the account's language, never the asker's (intruder review: a stranger
    chose the language of the owner's mail); the claim then sets the claimer's."""
    addr = normalize_email(email)
    _throttle_mail_request(ctx, addr, validate_ip(ip), "verify-resend")

    def send() -> None:
        with ctx.store.tx() as db:
            user = _mail_target(db, addr)
            if user is not None and not user.email_verified and not user.frozen:
                _end_links(db, user.id, ctx.now(), "verify")
                if _live_links(db, user.id, ctx.now(), CLAIM_PURPOSE) < LIVE_LINKS_MAX:
                    # this link also sets a new password (the mailbox's owner takes over a pending account
                    # someone else may have started with her address)
                    token = _email_token(ctx, db, user, purpose=CLAIM_PURPOSE, email=addr)
                    mail.enqueue(ctx, db, user, "verify_claim",
                                 {"link": f"{ctx.settings.identity_public_url}/verify-email/claim?token={token}"})

    _now_or_later(later, send)
    return SignUpReceipt(RESEND_MESSAGE)


def _throttle_mail_request(ctx: IdentityContext, addr: str, client_ip: str, kind: str) -> None:
    """Count a request that may mail `addr` a link against the requester's budgets only: per IP (as
    sign-ups) and per IP and address (`RESEND_PER_ADDRESS_PER_HOUR`). Nobody else's requests count, so a
    stranger cannot spend the owner's; what keeps a stranger with many IPs from filling one inbox is
    `LIVE_LINKS_MAX`, decided after the answer. Raises RateLimited, the same for every address; its wait
    is to the end of the fixed clock hour (`throttle.hit`), which tells nothing of anyone's requests. The
    count is kept either way; a refused request mails nothing and ends no link."""
    now = ctx.now()
    pending: RingfenceError | None = None
    with ctx.store.tx() as db:
        pending = throttle.hit(db, bucket=f"{kind}-ip:{client_ip}", limit=ctx.settings.identity_signup_per_ip_per_hour,
                               window_s=3600, now_s=now)
        if pending is None:
            over = throttle.hit(db, bucket=f"{kind}:" + ctx.sealer.token_digest(f"{kind}:{client_ip}|{addr}")[:64],
                                limit=RESEND_PER_ADDRESS_PER_HOUR, window_s=3600, now_s=now)
            if over is not None:
                retry_s = over.details["retry_after_s"]
                pending = RateLimited(f"too many requests for this address; retry in {retry_s} s. If we mailed it a "
                                      "link in the last hour, that link still works until it expires", retry_after_s=retry_s)
    _raise_pending(pending)


def _now_or_later(later: Later | None, work: Callable[[], None]) -> None:
    if later is None:
        work()
    else:
        later(work)


def request_password_reset(ctx: IdentityContext, email: object, *, ip: object, later: Later | None = None) -> SignUpReceipt:
    """`/forgot-password`: mail a single-use link (`RESET_LINK_TTL_S`) that sets a new password, only to a
    confirmed, unfrozen account with fewer than `LIVE_LINKS_MAX` reset links out; the earlier links stay
    valid (a stranger asking again cannot void the owner's) until one of them is used. The same answer
    whether or not such an account exists, rate-limited per requester as `resend_verification`; with `later` the
    look-up, the link and the mail run after the answer, so its time does not tell either."""
    addr = normalize_email(email)
    _throttle_mail_request(ctx, addr, validate_ip(ip), "pw-reset")

    def send() -> None:
        with ctx.store.tx() as db:
            user = _mail_target(db, addr)
            if (user is not None and user.email_verified and not user.frozen
                    and _live_links(db, user.id, ctx.now(), RESET_PURPOSE) < LIVE_LINKS_MAX):
                token = _email_token(ctx, db, user, purpose=RESET_PURPOSE, email=addr, ttl_s=RESET_LINK_TTL_S)
                mail.enqueue(ctx, db, user, "password_reset",
                             {"link": f"{ctx.settings.identity_public_url}/reset-password?token={token}",
                              "minutes": RESET_LINK_TTL_S // 60})

    _now_or_later(later, send)
    return SignUpReceipt(RESET_MESSAGE)


@dataclass(frozen=True)
class ResetLink:
    """What the reset page asks for: `needs` is "" (the password only), "code" (an authenticator or
    recovery code) or "support" (a passkey-only account without recovery codes: no reset by mail)."""

    email: str
    needs: str


def _resettable(ctx: IdentityContext, db: Session, token: object) -> tuple[EmailToken, User, str]:
    from ..store.models import RecoveryCode

    row = usable_email_token(ctx, db, token, RESET_PURPOSE)
    user = db.get(User, row.user_id)
    assert user is not None
    if not user.email_verified or user.frozen or user.email != row.email:
        raise Unauthorized("this link is invalid, already used or expired; request a new one", field="token")
    methods = _second_factor_methods(db, user)
    needs = ""
    if "totp" in methods:
        needs = "code"
    elif "passkey" in methods:  # a passkey cannot be checked on a mailed link's page: a recovery code can
        has_codes = db.scalars(select(RecoveryCode.id).where(RecoveryCode.user_id == user.id,
                                                             RecoveryCode.used_at_s.is_(None)).limit(1)).first()
        needs = "code" if has_codes is not None else "support"
    return row, user, needs


def check_reset_link(ctx: IdentityContext, token: object) -> ResetLink:
    """What the reset link's page must ask for, or the error `reset_password` would raise; reads only."""
    with ctx.store.tx() as db:
        row, _user, needs = _resettable(ctx, db, token)
        return ResetLink(row.email, needs)


@dataclass(frozen=True)
class ResetDone:
    """What a password reset did that its page tells: `api_keys_revoked` keys stopped working."""

    account_id: str
    api_keys_revoked: int


def reset_password(ctx: IdentityContext, token: object, password: object, code: object = "", *,
                   ip: object = "127.0.0.1") -> ResetDone:
    """Set a new password from a `/forgot-password` link (single use). An account with a second factor
    also needs its code (authenticator, or a recovery code; checked and throttled as at sign-in).
    A reset says the old password may be known to someone: as the freeze link does (`events.end_access`),
    every session and every API key of the account stop working; the sign-in lockout of the address
    is lifted (an attacker's wrong guesses must not keep the owner out once she proved the mailbox and
    chose a new password); and the change counts as a credential change (withdrawals locked, a notice
    mail with a freeze link that says the API keys were revoked)."""
    from .events import end_access
    from .second_factor import _guarded

    client_ip = validate_ip(ip)
    pending: RingfenceError | None = None
    keys = 0
    with ctx.store.tx() as db:
        _lock_email_token(ctx, db, token)
        row, user, needs = _resettable(ctx, db, token)
        if needs == "support":
            raise Forbidden("this account signs in with a passkey only and has no recovery codes: "
                            "contact support to reset its password", field="token")
        pw = check_password_policy(password, email=user.email)
        if needs:
            if not isinstance(code, str) or not code.strip():
                raise ValidationError("must be the 6-digit code from your authenticator app or a recovery code", field="code")
            method = "totp" if code.strip().isdigit() and "totp" in _second_factor_methods(db, user) else "recovery_code"
            pending = _guarded(ctx, db, user, method=method, value=code, purpose="password_reset", ip=client_ip)
        if pending is None:
            now = ctx.now()
            _use(db, row, now)  # atomic: a concurrent use of the same link (another process) is refused here
            user.password_hash = ctx.passwords.hash(pw)
            _end_links(db, user.id, now, RESET_PURPOSE)
            keys = end_access(db, user, now)
            if keys:
                record_event(db, user_id=user.id, kind="api_key_revoked", at_s=now, ip=client_ip,
                             detail=f"{keys} by the password reset")
            throttle.clear_failures(db, _login_key(ctx, user.email))
            credential_changed(ctx, db, user, change="password_changed", ip=client_ip, template="password_reset_done",
                               extra={"api_keys": keys})
    _raise_pending(pending)  # a wrong code: its failure counted (committed), nothing else changed
    return ResetDone(user.account_id, keys)


def _login_key(ctx: IdentityContext, addr: str) -> str:
    """The key a sign-in's failures and lockout are counted under (a keyed hash of the address)."""
    return ctx.sealer.token_digest("login:" + addr)


def note_sign_in(ctx: IdentityContext, db: Session, user: User, *, ip: str, user_agent: str, country: str | None) -> None:
    """Record the sign-in; alert on a new device/IP or a new country (not on the very first sign-in)."""
    now = ctx.now()
    record_event(db, user_id=user.id, kind="sign_in", at_s=now, ip=ip, device=user_agent)
    known = set(db.scalars(select(KnownDevice.fingerprint).where(KnownDevice.user_id == user.id).limit(10_000)).all())
    # Fingerprints are "d" + hash(ip|agent) or "c" + hash(country). The first of each kind is learnt
    # silently (a first sign-in is not "new"); later unseen ones raise an event (and mail for devices).
    fps = [("d", hashlib.sha256(f"{ip}|{user_agent}".encode()).hexdigest()[:63])]
    if country:
        fps.append(("c", hashlib.sha256(f"country|{country.upper()}".encode()).hexdigest()[:63]))
    for kind, digest in fps:
        fp = kind + digest
        if fp in known:
            continue
        first_of_kind = not any(k.startswith(kind) for k in known)
        db.add(KnownDevice(user_id=user.id, fingerprint=fp, first_seen_at_s=now))
        if first_of_kind:
            continue
        if kind == "d":
            record_event(db, user_id=user.id, kind="new_device_sign_in", at_s=now, ip=ip, detail=user_agent,
                         device=user_agent)
            mail.enqueue(ctx, db, user, "new_sign_in", {"ip": ip, "device": user_agent or "unknown"})
        else:
            record_event(db, user_id=user.id, kind="new_country_sign_in", at_s=now, ip=ip, detail=str(country).upper(),
                         device=user_agent)


def _second_factor_methods(db: Session, user: User) -> tuple[str, ...]:
    from ..store.models import WebAuthnCredential

    methods: list[str] = []
    if sessions.factor_confirmation_pending(db, user):
        return ()  # an unconfirmed first factor does not count (it may be an intruder's): password only
    if user.totp_enabled:
        methods += ["totp", "recovery_code"]
    if db.scalars(select(WebAuthnCredential.id).where(WebAuthnCredential.user_id == user.id).limit(1)).first() is not None:
        methods.append("passkey")
    return tuple(methods)


def login(
    ctx: IdentityContext, email: object, password: object, *, ip: object, user_agent: object = "",
    country: str | None = None,
) -> LoginResult:
    """Check e-mail + password. Returns a full session, or a short pending one if a second factor is on."""
    addr = normalize_email(email)
    if not isinstance(password, str) or not password or len(password) > PASSWORD_MAX_CHARS:
        raise ValidationError(f"must be 1..{PASSWORD_MAX_CHARS} characters", field="password")
    client_ip = validate_ip(ip)
    agent = validate_user_agent(user_agent)
    if country is not None and (not isinstance(country, str) or len(country) != 2 or not country.isalpha()):
        raise ValidationError("must be a two-letter ISO country code", field="country")
    s = ctx.settings
    now = ctx.now()
    key = _login_key(ctx, addr)
    pending: RingfenceError | None = None
    result: LoginResult | None = None
    with ctx.store.tx() as db:
        pending = throttle.hit(db, bucket=f"login-ip:{client_ip}", limit=s.identity_login_per_ip_per_min, window_s=60, now_s=now)
        if pending is None and (remaining := throttle.lockout_remaining_s(db, key, now)) > 0:
            pending = RateLimited(f"too many failed sign-ins for this e-mail; try again in {remaining} s", retry_after_s=remaining)
        if pending is None:
            user = db.scalars(select(User).where(User.email == addr)).first()
            if user is None:
                ctx.passwords.verify_dummy(password)
                ok = False
            else:
                ok = ctx.passwords.verify(user.password_hash, password)
            if not ok:
                lock_s = throttle.record_failure(db, key, now, free_failures=s.identity_lockout_free_failures,
                                                 base_s=s.identity_lockout_base_s, max_s=s.identity_lockout_max_s)
                if user is None:  # no account to record it on: the monitoring stream still sees the attempt
                    from ..monitoring.stream import add_in_tx

                    add_in_tx(db, "sign_in_failed_unknown", source="identity", at_ms=now * 1000, ip=client_ip, device=agent)
                if user is not None:
                    record_event(db, user_id=user.id, kind="sign_in_failed", at_s=now, ip=client_ip, device=agent)
                    if lock_s:
                        record_event(db, user_id=user.id, kind="account_locked", at_s=now, ip=client_ip, detail=f"{lock_s} s")
                pending = AuthenticationFailed(LOGIN_FAILED_MESSAGE)
            else:
                assert user is not None
                if not user.email_verified:
                    pending = Forbidden("confirm your e-mail address first: use the link we sent you", field="email")
                elif user.frozen:
                    pending = AccountFrozen()
                else:
                    throttle.clear_failures(db, key)
                    if ctx.passwords.needs_rehash(user.password_hash):
                        user.password_hash = ctx.passwords.hash(password)
                    methods = _second_factor_methods(db, user)
                    if methods:
                        issued = sessions.issue(ctx, db, user, ip=client_ip, user_agent=agent, mfa_pending=True)
                        result = LoginResult(issued, True, methods, None)
                    else:
                        issued = sessions.issue(ctx, db, user, ip=client_ip, user_agent=agent)
                        note_sign_in(ctx, db, user, ip=client_ip, user_agent=agent, country=country)
                        result = LoginResult(issued, False, (), user.account_id)
    _raise_pending(pending)
    assert result is not None
    return result


def change_password(
    ctx: IdentityContext, token: object, current_password: object, new_password: object, *, ip: object = "127.0.0.1"
) -> sessions.IssuedSession:
    """Change the password: ends every other session, rotates this one, locks withdrawals."""
    client_ip = validate_ip(ip)
    if not isinstance(current_password, str) or len(current_password) > PASSWORD_MAX_CHARS:
        raise ValidationError(f"must be 1..{PASSWORD_MAX_CHARS} characters", field="current_password")
    with ctx.store.tx() as db:
        row, user = sessions.load_session(ctx, db, token)
        pw = check_password_policy(new_password, email=user.email, field="new_password")
        if not ctx.passwords.verify(user.password_hash, current_password):
            raise AuthenticationFailed("the current password is incorrect", field="current_password")
        now = ctx.now()
        user.password_hash = ctx.passwords.hash(pw)
        _end_links(db, user.id, now, RESET_PURPOSE)  # a password link from before the change is void
        db.execute(update(AuthSession).where(AuthSession.user_id == user.id, AuthSession.revoked_at_s.is_(None))
                   .values(revoked_at_s=now))
        issued = sessions.issue(ctx, db, user, ip=row.ip, user_agent=row.user_agent, second_factor_at_s=row.second_factor_at_s)
        credential_changed(ctx, db, user, change="password_changed", ip=client_ip)
        return issued


def request_email_change(ctx: IdentityContext, token: object, new_email: object) -> None:
    """Send a confirmation link to the new address. Needs a fresh second factor, so an account without
    one that counts (none, or a first one not yet confirmed from the current address) cannot: the
    password alone must not move the account's mailbox, where every recovery and alert goes."""
    addr = normalize_email(new_email, field="new_email")
    info = sessions.authenticate(ctx, token)
    sessions.require_fresh_second_factor(info)
    with ctx.store.tx() as db:
        user = db.get(User, info.user_id)
        assert user is not None
        taken = db.scalars(select(User.id).where(User.email == addr)).first() is not None
        if addr == user.email:
            raise ValidationError("is already your e-mail address", field="new_email")
        if not taken:  # a taken address silently gets nothing: no probing of registered e-mails
            user.pending_email = addr
            link_token = _email_token(ctx, db, user, purpose="change", email=addr)
            mail.enqueue(ctx, db, user, "email_change_confirm",
                         {"link": f"{ctx.settings.identity_public_url}/confirm-email?token={link_token}"}, to_addr=addr)


def _current_change(db: Session, row: EmailToken) -> User:
    user = db.get(User, row.user_id)
    assert user is not None
    if user.pending_email != row.email:  # a later request replaced it: only the newest link counts
        raise Unauthorized("this link is no longer current; request the change again", field="token")
    return user


def check_email_change_link(ctx: IdentityContext, token: object) -> str:
    """The new address the change link would set, or the error `confirm_email_change` would raise;
    reads only (the link's GET page asks this before it shows its button)."""
    with ctx.store.tx() as db:
        row = usable_email_token(ctx, db, token, "change")
        _current_change(db, row)
        return row.email


def confirm_email_change(ctx: IdentityContext, token: object, *, ip: object = "127.0.0.1") -> str:
    """Set the new address from its link: the old address is told (with the freeze link) and
    withdrawals lock as for every credential change. Returns the new address."""
    client_ip = validate_ip(ip)
    with ctx.store.tx() as db:
        row = _consume_email_token(ctx, db, token, "change")
        user = _current_change(db, row)
        if db.scalars(select(User.id).where(User.email == row.email)).first() is not None:
            raise Conflict("this e-mail address is already in use", field="new_email")
        old = user.email
        user.email = row.email
        user.pending_email = None
        # a password link mailed to the old address must not come back to life if the address does
        _end_links(db, user.id, ctx.now(), RESET_PURPOSE)
        # Tell the old address too, with the freeze link: the person who lost the mailbox must see it.
        credential_changed(ctx, db, user, change="email_changed", ip=client_ip, also_notify=(old,))
        return user.email


def set_anti_phishing_code(ctx: IdentityContext, token: object, code: object, *, ip: object = "127.0.0.1") -> None:
    """Set the code shown in every e-mail. Needs a fresh second factor when 2FA is on."""
    value = validate_anti_phishing_code(code)
    client_ip = validate_ip(ip)
    info = sessions.authenticate(ctx, token)
    if info.second_factor_enabled:
        sessions.require_fresh_second_factor(info)
    with ctx.store.tx() as db:
        user = db.get(User, info.user_id)
        assert user is not None
        user.anti_phishing_code = value
        credential_changed(ctx, db, user, change="anti_phishing_changed", ip=client_ip)
