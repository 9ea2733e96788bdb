"""Read model for the security centre: everything a signed-in user may see about their protection.

Never returns a secret: API keys appear by 8-character prefix, PGP keys by fingerprint, sessions by
IP/agent. Bounded lists (at most 100 sessions, 50 events, 30 keys, 20 passkeys).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from ..store.models import User, WebAuthnCredential
from . import api_keys, events, sessions
from .context import IdentityContext

__all__ = ["SecurityOverview", "PasskeyView", "overview"]


@dataclass(frozen=True)
class PasskeyView:
    passkey_id: int
    label: str
    created_at_s: int


@dataclass(frozen=True)
class SecurityOverview:
    account_id: str
    email: str
    totp_enabled: bool
    second_factor_fresh: bool
    anti_phishing_code: str | None
    pgp_fingerprint: str | None
    withdrawals_locked_until_s: int
    passkeys: list[PasskeyView]
    api_keys: list[api_keys.ApiKeyView]
    sessions: list[sessions.SessionView]
    events: list[events.SecurityEventView]
    second_factor_pending: bool = False  # a first factor waits for its e-mail confirmation


def overview(ctx: IdentityContext, token: object, *, fresh_max_age_s: int = 300) -> SecurityOverview:
    info = sessions.authenticate(ctx, token)
    fresh = info.second_factor_at_s is not None and info.checked_at_s - info.second_factor_at_s <= fresh_max_age_s
    with ctx.store.tx() as db:
        user = db.get(User, info.user_id)
        assert user is not None
        passkeys = [
            PasskeyView(c.id, c.label, c.created_at_s)
            for c in db.scalars(select(WebAuthnCredential).where(WebAuthnCredential.user_id == user.id).limit(20))
        ]
        snapshot = (user.account_id, user.email, user.totp_enabled, user.anti_phishing_code, user.pgp_fingerprint,
                    user.withdrawals_locked_until_s)
    return SecurityOverview(
        account_id=snapshot[0], email=snapshot[1], totp_enabled=snapshot[2], second_factor_fresh=fresh,
        anti_phishing_code=snapshot[3], pgp_fingerprint=snapshot[4], withdrawals_locked_until_s=snapshot[5],
        passkeys=passkeys, api_keys=api_keys.list_api_keys(ctx, token)[:30],
        sessions=sessions.list_sessions(ctx, token), events=events.recent_events(ctx, info.user_id, limit=50),
        second_factor_pending=info.second_factor_pending,
    )
