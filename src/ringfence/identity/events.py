"""Security events, the post-change withdrawal lock and the one-click "this wasn't me" freeze.

Invariants: every credential change (`CREDENTIAL_CHANGES`) in the same transaction (1) records a
security event, (2) locks withdrawals for `identity_withdrawal_lock_s` from now (never shortening an
existing lock), (3) queues an e-mail with a single-use freeze link. A freeze revokes every session
and API key (`end_access`, which a password reset shares) and disables withdrawals until support
unfreezes the account; a freeze token works once.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from ..errors import AccountFrozen, NotFound, Unauthorized, ValidationError, WithdrawalsLocked
from ..store.models import ApiKey, AuthSession, FreezeToken, SecurityEvent, User
from . import mail
from .context import IdentityContext
from .sealing import new_token

__all__ = [
    "EVENT_KINDS",
    "CREDENTIAL_CHANGES",
    "SecurityEventView",
    "record_event",
    "credential_changed",
    "end_access",
    "freeze_link",
    "freeze_account",
    "check_withdrawals_allowed",
    "recent_events",
    "authorize_withdrawal",
    "withdrawal_address_changed",
    "security_changes_since",
    "last_credential_change",
    "withdrawal_lock",
]

CREDENTIAL_CHANGES = frozenset(
    {"password_changed", "email_changed", "totp_enabled", "totp_disabled", "recovery_codes_regenerated",
     "passkey_added", "passkey_removed", "api_key_created", "anti_phishing_changed",
     "pgp_key_changed", "withdrawal_address_changed", "second_factor_reset"}
)
EVENT_KINDS = CREDENTIAL_CHANGES | {
    "signed_up", "email_verified", "sign_in", "new_device_sign_in", "new_country_sign_in", "sign_in_failed",
    "second_factor_failed", "recovery_code_used", "session_revoked", "logout_everywhere", "account_frozen",
    "account_locked", "api_key_revoked", "second_factor_confirmed",
}
DETAIL_MAX_CHARS = 512
RECENT_EVENTS_MAX = 200


@dataclass(frozen=True)
class SecurityEventView:
    kind: str
    ip: str
    detail: str
    at_s: int


def record_event(db: Session, *, user_id: int | None, kind: str, at_s: int, ip: str = "", detail: str = "",
                 device: str = "") -> None:
    """Record a security event, and the same event on the monitoring stream in the same transaction."""
    assert kind in EVENT_KINDS, f"unknown security event kind {kind!r}"
    from ..monitoring.stream import add_in_tx

    db.add(SecurityEvent(user_id=user_id, kind=kind, ip=ip[:64], detail=detail[:DETAIL_MAX_CHARS], at_s=at_s))
    add_in_tx(db, kind, source="identity", at_ms=at_s * 1000, user_id=user_id, ip=ip, device=device,
              data={"detail": detail[:DETAIL_MAX_CHARS]} if detail else None)


def credential_changed(
    ctx: IdentityContext, db: Session, user: User, *, change: str, ip: str, also_notify: tuple[str, ...] = (),
    template: str = "credential_changed", extra: dict[str, object] | None = None,
) -> int:
    """Record `change`, lock withdrawals, mail a freeze link (the notice `template`, with `extra`
    parameters beside the usual ones). Returns the lock end (Unix s)."""
    assert change in CREDENTIAL_CHANGES, change
    now = ctx.now()
    record_event(db, user_id=user.id, kind=change, at_s=now, ip=ip)
    user.withdrawals_locked_until_s = max(user.withdrawals_locked_until_s, now + ctx.settings.identity_withdrawal_lock_s)
    link = freeze_link(ctx, db, user, reason=change)
    params: dict[str, object] = {
        "change": change,  # the kind; the e-mail shows its label in the reader's language (mail.EVENT_LABELS)
        "ip": ip or "unknown", "locked_until": user.withdrawals_locked_until_s,
        "freeze_link": link, **(extra or {}),
    }
    # a withdrawal address is recorded when it is asked for (its own e-mailed link adds it): the notice
    # says it was requested, not that it changed
    if change == "withdrawal_address_changed":
        template = "withdrawal_address_requested"
        params.pop("change")
    mail.enqueue(ctx, db, user, template, params)
    for addr in also_notify:
        mail.enqueue(ctx, db, user, template, params, to_addr=addr)
    return user.withdrawals_locked_until_s


def freeze_link(ctx: IdentityContext, db: Session, user: User, *, reason: str) -> str:
    """Mint a single-use "this wasn't me" freeze token and return its link (for an e-mail)."""
    token = new_token()
    db.add(FreezeToken(user_id=user.id, token_hash=ctx.sealer.token_digest(token), reason=reason[:40],
                       expires_at_s=ctx.now() + ctx.settings.identity_freeze_token_ttl_s))
    return f"{ctx.settings.identity_public_url}/security/freeze?token={token}"


def end_access(db: Session, user: User, now: int) -> int:
    """Every session and every API key of `user` stop working now: the freeze link's cut, and a password
    reset's (whoever knew the old password may have signed in or made keys with it). Keys in the
    API process's cache go with them (the bulk UPDATE bumps the key generation, identity/key_cache.py).
    Returns how many API keys it revoked."""
    live_key = (ApiKey.user_id == user.id) & ApiKey.revoked_at_s.is_(None)
    keys = int(db.scalar(select(func.count()).select_from(ApiKey).where(live_key)) or 0)
    db.execute(update(AuthSession).where(AuthSession.user_id == user.id, AuthSession.revoked_at_s.is_(None)).values(revoked_at_s=now))
    db.execute(update(ApiKey).where(live_key).values(revoked_at_s=now))
    return keys


def freeze_account(ctx: IdentityContext, token: object, *, ip: str = "") -> str:
    """Consume a freeze token: freeze the account, revoke sessions and API keys. Returns account_id."""
    if not isinstance(token, str) or not 16 <= len(token) <= 128:
        raise ValidationError("must be the token from the e-mail link", field="token")
    now = ctx.now()
    with ctx.store.tx() as db:
        row = db.scalars(select(FreezeToken).where(FreezeToken.token_hash == ctx.sealer.token_digest(token))).first()
        if row is None or row.used_at_s is not None or row.expires_at_s < now:
            raise Unauthorized("this freeze link is invalid, used or expired; contact support", field="token")
        row.used_at_s = now
        user = db.get(User, row.user_id)
        assert user is not None
        user.frozen = True
        end_access(db, user, now)
        record_event(db, user_id=user.id, kind="account_frozen", at_s=now, ip=ip, detail=f"via freeze link after {row.reason}")
        mail.enqueue(ctx, db, user, "account_frozen", {})
        return user.account_id


def check_withdrawals_allowed(ctx: IdentityContext, account_id: str) -> None:
    """Raise AccountFrozen / WithdrawalsLocked when this account may not withdraw now."""
    now = ctx.now()
    with ctx.store.tx() as db:
        user = db.scalars(select(User).where(User.account_id == account_id)).first()
        if user is None:
            raise NotFound("no such account", field="account_id")
        if user.frozen:
            raise AccountFrozen()
        if user.withdrawals_locked_until_s > now:
            remaining = user.withdrawals_locked_until_s - now
            raise WithdrawalsLocked(
                f"withdrawals are locked for {remaining} s after a recent security change",
                locked_until_s=user.withdrawals_locked_until_s, lock_s=ctx.settings.identity_withdrawal_lock_s,
                change=_last_change(db, user.id),
            )


def _last_change(db: Session, user_id: int) -> str | None:
    # the newest credential change set the lock's end (each one locks from its own time, never shorter)
    return db.scalars(select(SecurityEvent.kind).where(SecurityEvent.user_id == user_id,
                                                       SecurityEvent.kind.in_(sorted(CREDENTIAL_CHANGES)))
                      .order_by(SecurityEvent.id.desc()).limit(1)).first()


def withdrawal_lock(ctx: IdentityContext, account_id: str) -> tuple[int, str | None]:
    """(end of the post-change withdrawal lock in Unix s, the kind of the change that set it) while
    the account's withdrawals are locked, else (0, None): what the wallet shows before a withdrawal
    is tried (the same field `check_withdrawals_allowed` refuses by)."""
    now = ctx.now()
    with ctx.store.tx() as db:
        user = db.scalars(select(User).where(User.account_id == account_id)).first()
        if user is None or user.withdrawals_locked_until_s <= now:
            return 0, None
        return user.withdrawals_locked_until_s, _last_change(db, user.id)


def last_credential_change(ctx: IdentityContext, account_id: str) -> str | None:
    """The kind of the account's newest credential change (`CREDENTIAL_CHANGES`), or None: what a
    refusal by the post-change withdrawal lock names (the engine's lock, relayed from these events,
    keeps only its end)."""
    with ctx.store.tx() as db:
        user_id = db.scalars(select(User.id).where(User.account_id == account_id)).first()
        return _last_change(db, user_id) if user_id is not None else None


def recent_events(ctx: IdentityContext, user_id: int, *, limit: int = 50) -> list[SecurityEventView]:
    limit = max(1, min(limit, RECENT_EVENTS_MAX))
    with ctx.store.tx() as db:
        rows = db.scalars(
            select(SecurityEvent).where(SecurityEvent.user_id == user_id).order_by(SecurityEvent.id.desc()).limit(limit)
        )
        return [SecurityEventView(kind=r.kind, ip=r.ip, detail=r.detail, at_s=r.at_s) for r in rows]


def authorize_withdrawal(ctx: IdentityContext, token: object, *, max_factor_age_s: int = 300) -> str:
    """The identity checks before a withdrawal (or a withdrawal-address change) from the browser:
    a valid session, a second factor passed within `max_factor_age_s`, no freeze and no post-change
    lock. Returns the account_id the custody layer should act for."""
    from . import sessions

    info = sessions.authenticate(ctx, token)
    sessions.require_fresh_second_factor(info, max_factor_age_s)
    check_withdrawals_allowed(ctx, info.account_id)
    return info.account_id


def withdrawal_address_changed(ctx: IdentityContext, token: object, *, ip: str = "", max_factor_age_s: int = 300) -> int:
    """Custody calls this when a user adds/changes a withdrawal address: needs a fresh second factor,
    records the event, locks withdrawals and mails a freeze link. Returns the lock end (Unix s)."""
    from . import sessions

    info = sessions.authenticate(ctx, token)
    sessions.require_fresh_second_factor(info, max_factor_age_s)
    with ctx.store.tx() as db:
        user = db.get(User, info.user_id)
        assert user is not None
        return credential_changed(ctx, db, user, change="withdrawal_address_changed", ip=ip)


def security_changes_since(ctx: IdentityContext, after_id: int, *, limit: int = 100) -> list[tuple[int, str, str]]:
    """Credential changes (each locks withdrawals) recorded after event `after_id`, oldest first:
    `(event id, account_id, kind)`. Custody relays them into the engine (`RecordSecurityChange`)
    so the engine's own withdrawal command enforces the lock, not only this gateway check."""
    limit = max(1, min(limit, RECENT_EVENTS_MAX))
    with ctx.store.tx() as db:
        rows = db.execute(
            select(SecurityEvent.id, User.account_id, SecurityEvent.kind)
            .join(User, User.id == SecurityEvent.user_id)
            .where(SecurityEvent.id > after_id, SecurityEvent.kind.in_(sorted(CREDENTIAL_CHANGES)))
            .order_by(SecurityEvent.id)
            .limit(limit)
        ).all()
        return [(int(r[0]), str(r[1]), str(r[2])) for r in rows]
