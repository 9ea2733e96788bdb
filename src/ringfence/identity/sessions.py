"""Browser sessions: opaque random tokens, stored only as keyed hashes, with rotation and CSRF.

Invariants:
- A session token is created only by `issue` (sign-in, second-factor completion, step-up, password
  change), never accepted from the client, so a token planted before sign-in (fixation) is useless.
- Every privilege change (second factor passed, step-up, password change) revokes the old token and
  issues a new one (`rotate`); a revoked, expired or idle session is rejected on its next use.
- The CSRF token is an HMAC of the session's token digest: it changes when the session rotates and
  is checked in constant time. The cookie is `__Host-` prefixed, HttpOnly, Secure, SameSite=Strict.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ..errors import AccountFrozen, Forbidden, SecondFactorRequired, Unauthorized
from ..store.models import AuthSession, EmailToken, User, WebAuthnCredential
from ..store import key_generation
from .context import IdentityContext
from .sealing import constant_time_equal, new_token

__all__ = [
    "SessionInfo",
    "IssuedSession",
    "SESSION_COOKIE_NAME",
    "issue",
    "rotate",
    "load_session",
    "authenticate",
    "logout",
    "logout_everywhere",
    "list_sessions",
    "revoke_session",
    "csrf_token_for",
    "verify_csrf",
    "session_cookie",
    "require_fresh_second_factor",
    "has_second_factor",
    "has_enrolled_factor",
    "factor_confirmation_pending",
    "FACTOR_CONFIRM_PURPOSE",
    "PENDING_FACTOR_MESSAGE",
    "SessionView",
]

SESSION_COOKIE_NAME = "__Host-rf_session"
FACTOR_CONFIRM_PURPOSE = "factor_confirm"  # EmailToken.purpose of a first second factor's e-mail confirmation
PENDING_FACTOR_MESSAGE = ("confirm your new second factor first: open the link we e-mailed to you (it carries your "
                          "anti-phishing code); until then it does not count")
TOKEN_MAX_CHARS = 128


@dataclass(frozen=True)
class IssuedSession:
    """A newly issued token: hand `token` to the client once (cookie); only its hash is stored."""

    token: str
    csrf_token: str
    session_id: int
    expires_at_s: int


@dataclass(frozen=True)
class SessionInfo:
    session_id: int
    user_id: int
    account_id: str
    email: str
    second_factor_enabled: bool
    second_factor_at_s: int | None
    checked_at_s: int
    second_factor_pending: bool = False  # enrolled, but its first-enrolment e-mail is not confirmed yet


@dataclass(frozen=True)
class SessionView:
    session_id: int
    ip: str
    user_agent: str
    created_at_s: int
    last_seen_at_s: int
    current: bool


def has_enrolled_factor(db: Session, user: User) -> bool:
    """TOTP on or a passkey registered, whether or not the first enrolment was confirmed by e-mail."""
    if user.totp_enabled:
        return True
    return db.scalars(select(WebAuthnCredential.id).where(WebAuthnCredential.user_id == user.id).limit(1)).first() is not None


def factor_confirmation_pending(db: Session, user: User) -> bool:
    """A first second factor was enrolled and its e-mail link (`FACTOR_CONFIRM_PURPOSE`) is not used yet."""
    return db.scalars(select(EmailToken.id).where(
        EmailToken.user_id == user.id, EmailToken.purpose == FACTOR_CONFIRM_PURPOSE, EmailToken.used_at_s.is_(None),
    ).limit(1)).first() is not None


def has_second_factor(db: Session, user: User) -> bool:
    """A second factor that counts: enrolled AND (for the first one) confirmed from the account's e-mail.
    Someone holding only a stolen password can enrol a factor but not confirm it, so it never counts."""
    return has_enrolled_factor(db, user) and not factor_confirmation_pending(db, user)


def issue(
    ctx: IdentityContext, db: Session, user: User, *, ip: str, user_agent: str, mfa_pending: bool = False,
    second_factor_at_s: int | None = None,
) -> IssuedSession:
    now = ctx.now()
    token = new_token()
    digest = ctx.sealer.token_digest(token)
    ttl = ctx.settings.identity_mfa_pending_ttl_s if mfa_pending else ctx.settings.identity_session_ttl_s
    row = AuthSession(
        user_id=user.id, token_hash=digest, created_at_s=now, last_seen_at_s=now, expires_at_s=now + ttl,
        mfa_pending=mfa_pending, second_factor_at_s=second_factor_at_s, ip=ip, user_agent=user_agent,
    )
    db.add(row)
    db.flush()
    return IssuedSession(token=token, csrf_token=ctx.sealer.csrf_for(digest), session_id=row.id, expires_at_s=row.expires_at_s)


def load_session(ctx: IdentityContext, db: Session, token: object, *, allow_pending: bool = False) -> tuple[AuthSession, User]:
    """Resolve a token inside the caller's transaction (rows returned for update), or raise Unauthorized."""
    if not isinstance(token, str) or not 16 <= len(token) <= TOKEN_MAX_CHARS:
        raise Unauthorized("sign in first: the session is missing or malformed", field="session")
    now = ctx.now()
    digest = ctx.sealer.token_digest(token)
    row = db.scalars(select(AuthSession).where(AuthSession.token_hash == digest)).first()
    if row is None or not constant_time_equal(row.token_hash, digest):
        raise Unauthorized("sign in again: the session is not valid", field="session")
    if row.revoked_at_s is not None or now >= row.expires_at_s:
        raise Unauthorized("sign in again: the session ended", field="session")
    if not row.mfa_pending and now - row.last_seen_at_s > ctx.settings.identity_session_idle_s:
        raise Unauthorized("sign in again: the session was idle too long", field="session")
    if row.mfa_pending and not allow_pending:
        raise Unauthorized("complete sign-in with your second factor first", field="session")
    if not row.mfa_pending and allow_pending:
        raise Unauthorized("this session is not waiting for a second factor", field="session")
    user = db.get(User, row.user_id)
    assert user is not None
    if user.frozen:
        raise AccountFrozen()
    return row, user


def rotate(
    ctx: IdentityContext, db: Session, row: AuthSession, user: User, *, second_factor_at_s: int | None
) -> IssuedSession:
    """Revoke `row` and issue a fresh full session carrying the (new) second-factor time."""
    row.revoked_at_s = ctx.now()
    return issue(ctx, db, user, ip=row.ip, user_agent=row.user_agent, second_factor_at_s=second_factor_at_s)


def authenticate(ctx: IdentityContext, token: object) -> SessionInfo:
    """Resolve a session token (from the cookie) to the signed-in user, or raise Unauthorized."""
    with ctx.store.tx() as db:
        row, user = load_session(ctx, db, token)
        row.last_seen_at_s = ctx.now()
        pending = factor_confirmation_pending(db, user)
        return SessionInfo(
            session_id=row.id, user_id=user.id, account_id=user.account_id, email=user.email,
            second_factor_enabled=not pending and has_enrolled_factor(db, user), second_factor_at_s=row.second_factor_at_s,
            checked_at_s=ctx.now(), second_factor_pending=pending,
        )


def require_fresh_second_factor(session: SessionInfo, max_age_s: int = 300) -> None:
    """Raise SecondFactorRequired unless a second factor was passed within `max_age_s` of the check."""
    assert 0 < max_age_s <= 86400
    if session.second_factor_pending:
        raise SecondFactorRequired(PENDING_FACTOR_MESSAGE)
    if not session.second_factor_enabled:
        raise SecondFactorRequired("enable two-factor authentication (authenticator app or passkey) first")
    if session.second_factor_at_s is None or session.checked_at_s - session.second_factor_at_s > max_age_s:
        raise SecondFactorRequired(max_age_s=max_age_s)


def logout(ctx: IdentityContext, token: object) -> None:
    """Sign this session out. What was opened with it ends too: its listen keys and their sockets, and the
    WebSocket API connections it logged on (the key generation moves, api/access.py); the account's other
    sessions and its API keys' streams carry on."""
    with ctx.store.tx() as db:
        row, _ = load_session(ctx, db, token)
        row.revoked_at_s = ctx.now()
        key_generation.bump(db)


def logout_everywhere(ctx: IdentityContext, token: object, *, ip: str = "") -> int:
    """Revoke every session of the signed-in user (including this one). Returns how many."""
    from .events import record_event

    with ctx.store.tx() as db:
        row, user = load_session(ctx, db, token)
        now = ctx.now()
        result = db.execute(
            update(AuthSession).where(AuthSession.user_id == user.id, AuthSession.revoked_at_s.is_(None)).values(revoked_at_s=now)
        )
        record_event(db, user_id=user.id, kind="logout_everywhere", at_s=now, ip=ip)
        key_generation.bump(db)  # as `logout`: the streams of every one of them end
        return int(result.rowcount or 0)


def list_sessions(ctx: IdentityContext, token: object) -> list[SessionView]:
    now = ctx.now()
    with ctx.store.tx() as db:
        current, user = load_session(ctx, db, token)
        rows = db.scalars(
            select(AuthSession)
            .where(AuthSession.user_id == user.id, AuthSession.revoked_at_s.is_(None), AuthSession.expires_at_s > now,
                   AuthSession.mfa_pending.is_(False))
            .order_by(AuthSession.id)
            .limit(100)
        )
        return [SessionView(r.id, r.ip, r.user_agent, r.created_at_s, r.last_seen_at_s, r.id == current.id) for r in rows]


def revoke_session(ctx: IdentityContext, token: object, session_id: int) -> None:
    with ctx.store.tx() as db:
        _, user = load_session(ctx, db, token)
        target = db.get(AuthSession, session_id)
        if target is None or target.user_id != user.id:
            raise Forbidden("no such session on your account", field="session_id")
        target.revoked_at_s = ctx.now()
        key_generation.bump(db)  # as `logout`: its streams end


def csrf_token_for(ctx: IdentityContext, token: str) -> str:
    return ctx.sealer.csrf_for(ctx.sealer.token_digest(token))


def verify_csrf(ctx: IdentityContext, token: object, csrf_token: object) -> None:
    """Check the CSRF token a browser form/header sent against the session cookie."""
    if not isinstance(token, str) or not isinstance(csrf_token, str) or len(csrf_token) != 64:
        raise Forbidden("the CSRF token is missing or malformed; reload the page", field="csrf_token")
    if not constant_time_equal(csrf_token_for(ctx, token), csrf_token):
        raise Forbidden("the CSRF token does not match this session; reload the page", field="csrf_token")


def session_cookie(token: str, *, max_age_s: int) -> str:
    """The Set-Cookie header value for a session token."""
    return f"{SESSION_COOKIE_NAME}={token}; Path=/; Max-Age={int(max_age_s)}; HttpOnly; Secure; SameSite=Strict"
