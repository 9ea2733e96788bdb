"""Staff identity accounts: how a staff member signs in to the console pages (issue 16, items 1-2).

A staff member is an identity user whose `account_id` is `staff:<staff_id>` (sign-up only ever gives
`u_` + 24 hex, so no customer can become one; only `create_staff_login` makes such a user). They
sign in like everyone else (`/login`, e-mail and password, then `/login/2fa` with their TOTP code or a
passkey they registered in the security centre), and `/admin` accepts only a session that
* belongs to a `staff:` user,
* passed a second factor at sign-in (`second_factor_at_s` set: a password alone never reaches it),
* names a member the engine's staff register has `active` (removal by the quorum locks them out
  at their next request), whose roles are the register's.
Decisions are still signed with the member's Ed25519 key (the engine verifies them); the session is
who may open the console, the signature is what the engine accepts.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import pyotp
from sqlalchemy import select

from ..errors import ConfigError, Forbidden, Unauthorized, ValidationError
from ..store.models import User
from . import sessions
from .context import IdentityContext

__all__ = ["STAFF_ACCOUNT_PREFIX", "StaffLogin", "create_staff_login", "staff_of_session"]

STAFF_ACCOUNT_PREFIX = "staff:"
_STAFF_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-.")


@dataclass(frozen=True)
class StaffLogin:
    """What a new staff member is handed once: e-mail, password and the TOTP secret for their app."""

    staff_id: str
    email: str
    password: str
    totp_secret: str


def _staff_id(value: object) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= 64 or not set(value) <= _STAFF_ID_CHARS:
        raise ValidationError("must be 1-64 characters of a-z, 0-9, '_', '-', '.'", field="staff_id")
    return value


def create_staff_login(ctx: IdentityContext, staff_id: str, email: str) -> StaffLogin | None:
    """The identity account of staff member `staff_id` with a random password and TOTP on (its secret
    sealed like any user's), made by whoever runs the identity store (`ringfence staff login`,
    `serve --demo`). None if the staff member has an account already. Refused for an e-mail in use."""
    from .fields import normalize_email
    from .second_factor import _seal_purpose

    email = normalize_email(email)
    account_id = STAFF_ACCOUNT_PREFIX + _staff_id(staff_id)
    password = secrets.token_urlsafe(18)
    secret = pyotp.random_base32()
    now = ctx.now()
    with ctx.store.tx() as db:
        if db.scalars(select(User.id).where(User.account_id == account_id)).first() is not None:
            return None
        if db.scalars(select(User.id).where(User.email == email)).first() is not None:
            raise ConfigError("this e-mail address has an account already; give the staff member their own", field="email")
        user = User(account_id=account_id, email=email, email_verified=True, password_hash=ctx.passwords.hash(password),
                    created_at_s=now, totp_enabled=True, totp_last_step=0, mfa_failures=0, mfa_locked_until_s=0,
                    withdrawals_locked_until_s=0, frozen=False)
        db.add(user)
        db.flush()
        user.totp_secret_enc = ctx.sealer.seal(secret.encode(), purpose=_seal_purpose(user))
    return StaffLogin(staff_id, email, password, secret)


def staff_of_session(ctx: IdentityContext, token: object) -> str:
    """The staff id of a signed-in staff session (second factor passed at sign-in), or refused:
    Unauthorized without a valid session, Forbidden for a session that is not a staff member's or
    did not pass a second factor. The caller checks the register (`active`)."""
    info = sessions.authenticate(ctx, token)
    if not info.account_id or not info.account_id.startswith(STAFF_ACCOUNT_PREFIX):
        raise Forbidden("the staff console is for staff accounts only", field="session")
    if not info.second_factor_enabled or info.second_factor_at_s is None:
        raise Forbidden("sign in to the staff console with your second factor (TOTP or passkey)", field="session")
    return info.account_id[len(STAFF_ACCOUNT_PREFIX):]


def require_session(token: object) -> None:
    if not token:
        raise Unauthorized("sign in first: the staff console needs a staff session", field="session")
