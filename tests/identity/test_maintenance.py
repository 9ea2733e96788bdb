"""Retention: stale rows go, live ones stay."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from ringfence.errors import AuthenticationFailed
from ringfence.identity import maintenance, sessions
from ringfence.store.models import AuthSession, EmailToken, LoginThrottle, RateLimitWindow, SecurityEvent, User

from .conftest import register, sign_in


def n(ctx, model) -> int:
    with ctx.store.tx() as db:
        return db.scalar(select(func.count()).select_from(model))


def test_purge_removes_only_stale_rows(ctx, clock):
    register(ctx)
    old_token = sign_in(ctx).session.token
    sessions.logout(ctx, old_token)
    with pytest.raises(AuthenticationFailed):
        sign_in(ctx, email="ghost@example.com")
    assert n(ctx, LoginThrottle) == 1 and n(ctx, RateLimitWindow) >= 1 and n(ctx, EmailToken) == 1
    clock.advance(maintenance.ENDED_RETENTION_S + 1)
    live = sign_in(ctx).session.token
    report = maintenance.purge_expired(ctx)
    assert report.deleted["sessions"] == 1 and report.deleted["login_throttle"] == 1
    assert report.deleted["email_tokens"] == 1
    sessions.authenticate(ctx, live)  # the live session survived
    assert n(ctx, AuthSession) == 1 and n(ctx, User) == 1
    events_before = n(ctx, SecurityEvent)
    assert maintenance.purge_expired(ctx).deleted["security_events"] == 0
    clock.advance(maintenance.EVENT_RETENTION_S)
    assert maintenance.purge_expired(ctx).deleted["security_events"] == events_before - 1  # the latest sign_in stays
