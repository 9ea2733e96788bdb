"""Retention: delete identity rows that can no longer matter, so no table grows without bound.

Deleted (each older than its horizon, measured from the identity clock): ended sessions (revoked or
expired, 30 days), used or expired e-mail/freeze tokens (30 days), expired WebAuthn challenges,
rate-limit windows (1 day), idle login-throttle entries whose lock is over (1 day), sent or dead
outbox messages (30 days), security events (`identity_event_retention_days`, default 365).
Never deleted: users, credentials, API keys (revoked keys stay for the audit trail), recovery codes.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import and_, delete, or_

from ..store.models import (
    AuthSession,
    EmailToken,
    FreezeToken,
    LoginThrottle,
    OutboxMessage,
    RateLimitWindow,
    SecurityEvent,
    WebAuthnChallenge,
)
from .context import IdentityContext

__all__ = ["PurgeReport", "purge_expired", "ENDED_RETENTION_S", "EVENT_RETENTION_S"]

DAY_S = 86400
ENDED_RETENTION_S = 30 * DAY_S
EVENT_RETENTION_S = 365 * DAY_S


@dataclass(frozen=True)
class PurgeReport:
    deleted: dict[str, int]


def purge_expired(ctx: IdentityContext, *, event_retention_s: int = EVENT_RETENTION_S) -> PurgeReport:
    assert event_retention_s >= 30 * DAY_S, "keep security events at least 30 days"
    now = ctx.now()
    old = now - ENDED_RETENTION_S
    statements = {
        "sessions": delete(AuthSession).where(or_(AuthSession.expires_at_s < old, AuthSession.revoked_at_s < old)),
        "email_tokens": delete(EmailToken).where(or_(EmailToken.expires_at_s < old, EmailToken.used_at_s < old)),
        "freeze_tokens": delete(FreezeToken).where(or_(FreezeToken.expires_at_s < old, FreezeToken.used_at_s < old)),
        "webauthn_challenges": delete(WebAuthnChallenge).where(WebAuthnChallenge.expires_at_s < now),
        "rate_limits": delete(RateLimitWindow).where(RateLimitWindow.window_start_s < now - DAY_S),
        "login_throttle": delete(LoginThrottle).where(
            and_(LoginThrottle.locked_until_s < now, LoginThrottle.last_failure_at_s < now - DAY_S)),
        "outbox": delete(OutboxMessage).where(
            and_(OutboxMessage.status.in_(("sent", "dead")), OutboxMessage.created_at_s < old)),
        "security_events": delete(SecurityEvent).where(SecurityEvent.at_s < now - event_retention_s),
    }
    deleted: dict[str, int] = {}
    with ctx.store.tx() as db:
        for name, stmt in statements.items():
            deleted[name] = int(db.execute(stmt).rowcount or 0)
    return PurgeReport(deleted)
