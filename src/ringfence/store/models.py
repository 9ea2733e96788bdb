"""SQLAlchemy 2 models for identity: users, credentials, sessions, API keys, mail outbox, events.

Invariants: no secret is stored in plaintext — passwords are argon2id hashes, session/e-mail/freeze
tokens and recovery codes are stored as keyed hashes (HMAC-SHA256), TOTP seeds and HMAC API secrets
are AES-GCM ciphertexts, Ed25519 API keys keep only the public key. Times are integer Unix seconds
(`*_at_s`), identical on SQLite and PostgreSQL. The schema is owned by the Alembic migrations in
`ringfence.store.migrations`; these models must match them (a test compares the two).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, ForeignKey, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "Base",
    "User",
    "EmailToken",
    "AuthSession",
    "LoginThrottle",
    "RateLimitWindow",
    "RecoveryCode",
    "WebAuthnCredential",
    "WebAuthnChallenge",
    "KnownDevice",
    "ApiKey",
    "ApiKeyGeneration",
    "OutboxMessage",
    "SecurityEvent",
    "FreezeToken",
    "SecureTicket",
    "MonitoringEvent",
    "MonitoringAlert",
    "MonitoringCase",
    "MonitoringCaseAction",
    "MonitoringCursor",
]


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "identity_users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(String(40), unique=True, nullable=False)
    email: Mapped[str] = mapped_column(String(254), unique=True, nullable=False)
    email_verified: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    password_hash: Mapped[str] = mapped_column(String(255), nullable=False)
    created_at_s: Mapped[int] = mapped_column(BigInteger, nullable=False)
    totp_secret_enc: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    totp_enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    totp_last_step: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    mfa_failures: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    mfa_locked_until_s: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    anti_phishing_code: Mapped[str | None] = mapped_column(String(32), nullable=True)
    pgp_public_key: Mapped[str | None] = mapped_column(Text, nullable=True)
    pgp_fingerprint: Mapped[str | None] = mapped_column(String(64), nullable=True)
    withdrawals_locked_until_s: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    frozen: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    pending_email: Mapped[str | None] = mapped_column(String(254), nullable=True)
    locale: Mapped[str | None] = mapped_column(String(16), nullable=True)  # pages and e-mails (docs/i18n.md)


class EmailToken(Base):
    """Single-use e-mail tokens: verification of a new address, confirmation of an e-mail change."""

    __tablename__ = "identity_email_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("identity_users.id", ondelete="CASCADE"), nullable=False)
    purpose: Mapped[str] = mapped_column(String(16), nullable=False)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    email: Mapped[str] = mapped_column(String(254), nullable=False)
    expires_at_s: Mapped[int] = mapped_column(BigInteger, nullable=False)
    used_at_s: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class AuthSession(Base):
    __tablename__ = "identity_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("identity_users.id", ondelete="CASCADE"), nullable=False, index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    created_at_s: Mapped[int] = mapped_column(BigInteger, nullable=False)
    last_seen_at_s: Mapped[int] = mapped_column(BigInteger, nullable=False)
    expires_at_s: Mapped[int] = mapped_column(BigInteger, nullable=False)
    mfa_pending: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    second_factor_at_s: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    revoked_at_s: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    ip: Mapped[str] = mapped_column(String(64), nullable=False)
    user_agent: Mapped[str] = mapped_column(String(256), nullable=False)


class LoginThrottle(Base):
    """Failed-login counter keyed by a hash of the e-mail (exists for unknown e-mails too)."""

    __tablename__ = "identity_login_throttle"

    key_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    locked_until_s: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    last_failure_at_s: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)


class RateLimitWindow(Base):
    __tablename__ = "identity_rate_limits"

    bucket: Mapped[str] = mapped_column(String(128), primary_key=True)
    window_start_s: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    hits: Mapped[int] = mapped_column(Integer, nullable=False, default=0)


class RecoveryCode(Base):
    __tablename__ = "identity_recovery_codes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("identity_users.id", ondelete="CASCADE"), nullable=False, index=True)
    code_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    used_at_s: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class WebAuthnCredential(Base):
    __tablename__ = "identity_webauthn_credentials"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("identity_users.id", ondelete="CASCADE"), nullable=False, index=True)
    credential_id: Mapped[bytes] = mapped_column(LargeBinary, unique=True, nullable=False)
    public_key: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    sign_count: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    label: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at_s: Mapped[int] = mapped_column(BigInteger, nullable=False)


class WebAuthnChallenge(Base):
    __tablename__ = "identity_webauthn_challenges"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("identity_users.id", ondelete="CASCADE"), nullable=False, index=True)
    purpose: Mapped[str] = mapped_column(String(16), nullable=False)
    challenge: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    expires_at_s: Mapped[int] = mapped_column(BigInteger, nullable=False)


class KnownDevice(Base):
    __tablename__ = "identity_known_devices"
    __table_args__ = (UniqueConstraint("user_id", "fingerprint", name="uq_identity_known_devices_user_fp"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("identity_users.id", ondelete="CASCADE"), nullable=False)
    fingerprint: Mapped[str] = mapped_column(String(64), nullable=False)
    first_seen_at_s: Mapped[int] = mapped_column(BigInteger, nullable=False)


class ApiKey(Base):
    __tablename__ = "identity_api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("identity_users.id", ondelete="CASCADE"), nullable=False, index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    key_prefix: Mapped[str] = mapped_column(String(12), nullable=False)
    kind: Mapped[str] = mapped_column(String(8), nullable=False)  # "hmac" | "ed25519"
    secret_enc: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    public_key: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    scopes: Mapped[str] = mapped_column(String(64), nullable=False)  # comma-separated, sorted
    ip_allowlist: Mapped[str] = mapped_column(Text, nullable=False, default="")  # comma-separated CIDRs
    label: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at_s: Mapped[int] = mapped_column(BigInteger, nullable=False)
    expires_at_s: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    revoked_at_s: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    last_used_at_s: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class OutboxMessage(Base):
    __tablename__ = "identity_outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("identity_users.id", ondelete="SET NULL"), nullable=True)
    to_addr: Mapped[str] = mapped_column(String(254), nullable=False)
    subject: Mapped[str] = mapped_column(String(255), nullable=False)
    body: Mapped[str] = mapped_column(Text, nullable=False)
    template: Mapped[str] = mapped_column(String(40), nullable=False)
    encrypted: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    status: Mapped[str] = mapped_column(String(8), nullable=False, default="pending")  # pending|sent|dead
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    next_attempt_at_s: Mapped[int] = mapped_column(BigInteger, nullable=False, index=True)
    last_error: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at_s: Mapped[int] = mapped_column(BigInteger, nullable=False)
    sent_at_s: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class SecurityEvent(Base):
    __tablename__ = "identity_security_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("identity_users.id", ondelete="CASCADE"), nullable=True, index=True)
    kind: Mapped[str] = mapped_column(String(40), nullable=False)
    ip: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    detail: Mapped[str] = mapped_column(String(512), nullable=False, default="")
    at_s: Mapped[int] = mapped_column(BigInteger, nullable=False)


class FreezeToken(Base):
    __tablename__ = "identity_freeze_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("identity_users.id", ondelete="CASCADE"), nullable=False)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    reason: Mapped[str] = mapped_column(String(40), nullable=False)
    expires_at_s: Mapped[int] = mapped_column(BigInteger, nullable=False)
    used_at_s: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class SecureTicket(Base):
    __tablename__ = "identity_secure_tickets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("identity_users.id", ondelete="CASCADE"), nullable=False, index=True)
    ciphertext: Mapped[str] = mapped_column(Text, nullable=False)
    created_at_s: Mapped[int] = mapped_column(BigInteger, nullable=False)


# ---------------------------------------------------------------- monitoring (docs/monitoring.md)


class MonitoringEvent(Base):
    """The monitoring stream's durable outbox: one row per event, in `id` order (the stream order).
    Identity writes its rows in the same transaction as the change they describe; the API edge and
    the engine's batch subscriber write theirs in batches off the request path. Every row is written
    by `monitoring.stream._write_events`: on PostgreSQL it takes an advisory lock first, so ids
    become visible in id order (the readers' cursor would pass an id committed late)."""

    __tablename__ = "monitoring_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(40), nullable=False)
    source: Mapped[str] = mapped_column(String(16), nullable=False)
    user_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    account_id: Mapped[str] = mapped_column(String(40), nullable=False, default="")
    ip: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    device: Mapped[str] = mapped_column(String(256), nullable=False, default="")
    at_ms: Mapped[int] = mapped_column(BigInteger, nullable=False, index=True)
    data: Mapped[str] = mapped_column(Text, nullable=False, default="{}")


class MonitoringAlert(Base):
    __tablename__ = "monitoring_alerts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    rule: Mapped[str] = mapped_column(String(64), nullable=False)
    severity: Mapped[str] = mapped_column(String(8), nullable=False)
    account_id: Mapped[str] = mapped_column(String(40), nullable=False, index=True)
    explanation: Mapped[str] = mapped_column(Text, nullable=False)
    evidence: Mapped[str] = mapped_column(Text, nullable=False, default="[]")
    at_ms: Mapped[int] = mapped_column(BigInteger, nullable=False)
    # a behaviour rule's score (milli-bits) and its features: [{"feature", "contribution", "detail"}] (migration 0004_models)
    score: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0, server_default="0")
    features: Mapped[str] = mapped_column(Text, nullable=False, default="[]", server_default="[]")
    case_id: Mapped[int | None] = mapped_column(ForeignKey("monitoring_cases.id", ondelete="SET NULL"), nullable=True, index=True)


class MonitoringCase(Base):
    __tablename__ = "monitoring_cases"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(String(40), nullable=False, index=True)
    status: Mapped[str] = mapped_column(String(12), nullable=False)  # open | escalated | closed
    severity: Mapped[str] = mapped_column(String(8), nullable=False)
    assignee: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    opened_at_ms: Mapped[int] = mapped_column(BigInteger, nullable=False)
    updated_at_ms: Mapped[int] = mapped_column(BigInteger, nullable=False)
    closed_reason: Mapped[str] = mapped_column(Text, nullable=False, default="")


class MonitoringCaseAction(Base):
    """The case's log: every analyst step with who took it; `decision` holds the signed decision
    token of an action on the account (its nonce is unique: a token is used once)."""

    __tablename__ = "monitoring_case_actions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("monitoring_cases.id", ondelete="CASCADE"), nullable=False, index=True)
    staff_id: Mapped[str] = mapped_column(String(64), nullable=False)
    action: Mapped[str] = mapped_column(String(24), nullable=False)
    detail: Mapped[str] = mapped_column(Text, nullable=False, default="")
    decision: Mapped[str] = mapped_column(Text, nullable=False, default="")
    decision_nonce: Mapped[str | None] = mapped_column(String(64), unique=True, nullable=True)
    at_ms: Mapped[int] = mapped_column(BigInteger, nullable=False)


class MonitoringCursor(Base):
    """How far a consumer of the stream has read (event id), so a restart resumes there."""

    __tablename__ = "monitoring_cursor"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    position: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)


class ApiKeyGeneration(Base):
    """One row (id 1): a counter bumped in the same transaction as any change that can withdraw an
    API key's access (revocation, scopes, IP allow-list, expiry, secret, the owner's freeze). API
    processes cache verified keys and drop the cache when it moves (identity/key_cache.py)."""

    __tablename__ = "identity_api_key_generation"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, nullable=False)
