"""Second factors: TOTP, one-time recovery codes, WebAuthn passkeys; completing sign-in; step-up.

Invariants:
- TOTP accepts the current 30 s step and one step either side (clock drift), and only a step later
  than the last accepted one, so a code can never be used twice (replay).
- TOTP seeds are AES-GCM sealed; recovery codes are stored as keyed hashes and work once each.
- WebAuthn challenges are single-use and expire after 5 minutes; a passkey's signature counter must
  increase (a cloned authenticator is rejected by the `webauthn` package).
- Passing a second factor rotates the session token (new token, old revoked) and stamps
  `second_factor_at_s`, which `sessions.require_fresh_second_factor` checks before sensitive actions.
- Wrong codes are rate-limited per user and locked out with exponential backoff; the failure counter,
  the lock and a `second_factor_failed` event are the only state a failed attempt changes.
- Enabling/disabling a factor is a credential change: withdrawal lock + e-mail with freeze link.
- The FIRST second factor of an account (none counts yet) is enrolled pending: it counts (sessions,
  step-up, trading, API keys) only after the single-use, expiring link mailed to the account's
  address (with the anti-phishing code and the freeze link) is confirmed (`confirm_first_factor`).
  Someone holding only a stolen password can enrol a factor but never make it count.
- Staff can require a second-factor reset (`require_reset`, a monitoring analyst's signed decision):
  every factor, recovery code and session goes; the user signs in with the password and must enrol
  a factor again, which is then a FIRST factor (confirmed from the account's e-mail) before any
  sensitive action (trading in the browser, API keys, withdrawals) is allowed.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass

import pyotp
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

# `webauthn` (0.1-0.15 s of CPU to import) is imported inside the four passkey functions: every `serve` and
# many CLI processes import this module, few of them ever see a passkey

from ..errors import AuthenticationFailed, Conflict, NotFound, RateLimited, RingfenceError, ValidationError
from ..store.models import EmailToken, RecoveryCode, User, WebAuthnChallenge, WebAuthnCredential
from . import mail, sessions, throttle
from .accounts import _consume_email_token, _email_token, note_sign_in, usable_email_token
from .context import IdentityContext
from .events import credential_changed, freeze_link, record_event
from .fields import validate_ip, validate_label
from .sealing import constant_time_equal

__all__ = [
    "TotpEnrollment",
    "begin_totp_enrollment",
    "confirm_totp_enrollment",
    "disable_totp",
    "regenerate_recovery_codes",
    "begin_passkey_registration",
    "finish_passkey_registration",
    "remove_passkey",
    "begin_passkey_challenge",
    "complete_login",
    "step_up",
    "confirm_first_factor",
    "require_reset",
    "RECOVERY_CODE_COUNT",
    "TOTP_STEP_S",
    "TOTP_DRIFT_STEPS",
]

TOTP_STEP_S = 30
TOTP_DRIFT_STEPS = 1
RECOVERY_CODE_COUNT = 10
CHALLENGE_TTL_S = 300
CREDENTIAL_JSON_MAX_CHARS = 16 * 1024
PASSKEYS_PER_USER_MAX = 20
_TOTP_RE = re.compile(r"^\d{6}$")
_RECOVERY_RE = re.compile(r"^[0-9a-f]{12}$")
_SEAL_PURPOSE = "totp-seed:{user_id}"


@dataclass(frozen=True)
class TotpEnrollment:
    secret_base32: str  # shown once, as a QR code of `provisioning_uri`
    provisioning_uri: str


def _seal_purpose(user: User) -> str:
    return _SEAL_PURPOSE.format(user_id=user.id)


def _totp_for(ctx: IdentityContext, user: User) -> pyotp.TOTP:
    assert user.totp_secret_enc is not None
    secret = ctx.sealer.unseal(user.totp_secret_enc, purpose=_seal_purpose(user)).decode()
    return pyotp.TOTP(secret, interval=TOTP_STEP_S)


def _match_totp_step(totp: pyotp.TOTP, code: str, now_s: int) -> int | None:
    """The step (counter) whose code equals `code`, within the drift window, compared in constant time."""
    current = now_s // TOTP_STEP_S
    found: int | None = None
    for step in range(current - TOTP_DRIFT_STEPS, current + TOTP_DRIFT_STEPS + 1):
        if constant_time_equal(totp.at(step * TOTP_STEP_S), code):
            found = step
    return found


def _mail_first_factor_confirmation(ctx: IdentityContext, db: Session, user: User, *, factor: str, ip: str) -> None:
    """A first second factor was just enrolled: mail the single-use confirmation link (and the freeze link)."""
    token = _email_token(ctx, db, user, purpose=sessions.FACTOR_CONFIRM_PURPOSE, email=user.email)
    mail.enqueue(ctx, db, user, "second_factor_confirm", {
        "factor": factor, "ip": ip or "unknown",
        "link": f"{ctx.settings.identity_public_url}/security/confirm-factor?token={token}",
        "hours": max(1, ctx.settings.identity_email_token_ttl_s // 3600),
        "freeze_link": freeze_link(ctx, db, user, reason="first_factor_enrolled"),
    })


def _drop_pending_confirmations(db: Session, user: User) -> None:
    """The last factor was removed: a confirmation link left over must not confirm a later enrolment."""
    if not sessions.has_enrolled_factor(db, user):
        db.execute(delete(EmailToken).where(EmailToken.user_id == user.id, EmailToken.purpose == sessions.FACTOR_CONFIRM_PURPOSE,
                                            EmailToken.used_at_s.is_(None)))


def check_first_factor_link(ctx: IdentityContext, token: object) -> None:
    """Raise what `confirm_first_factor` would for a link that is malformed, used or expired; reads
    only (the link's GET page asks before it shows its confirm button)."""
    with ctx.store.tx() as db:
        usable_email_token(ctx, db, token, sessions.FACTOR_CONFIRM_PURPOSE)


def confirm_first_factor(ctx: IdentityContext, token: object, *, ip: object = "127.0.0.1") -> str:
    """Consume the e-mailed link that confirms a first second factor; from now on it counts. Returns the account_id."""
    client_ip = validate_ip(ip)
    with ctx.store.tx() as db:
        row = _consume_email_token(ctx, db, token, sessions.FACTOR_CONFIRM_PURPOSE)
        user = db.get(User, row.user_id)
        assert user is not None
        if user.frozen:
            raise Conflict("this account is frozen; contact support", field="token")
        if not sessions.has_enrolled_factor(db, user):
            raise Conflict("the second factor this link confirms was removed; set one up again", field="token")
        now = ctx.now()
        for other in db.scalars(select(EmailToken).where(
                EmailToken.user_id == user.id, EmailToken.purpose == sessions.FACTOR_CONFIRM_PURPOSE, EmailToken.used_at_s.is_(None))):
            other.used_at_s = now
        record_event(db, user_id=user.id, kind="second_factor_confirmed", at_s=now, ip=client_ip)
        return user.account_id


def _require_2fa_change_allowed(ctx: IdentityContext, db: Session, info: sessions.SessionInfo) -> User:
    if info.second_factor_enabled:
        sessions.require_fresh_second_factor(info)
    user = db.get(User, info.user_id)
    assert user is not None
    return user


def begin_totp_enrollment(ctx: IdentityContext, token: object) -> TotpEnrollment:
    info = sessions.authenticate(ctx, token)
    with ctx.store.tx() as db:
        user = _require_2fa_change_allowed(ctx, db, info)
        if user.totp_enabled:
            raise Conflict("an authenticator app is already set up; disable it first", field="totp")
        secret = pyotp.random_base32()
        user.totp_secret_enc = ctx.sealer.seal(secret.encode(), purpose=_seal_purpose(user))
        uri = pyotp.TOTP(secret, interval=TOTP_STEP_S).provisioning_uri(name=user.email, issuer_name=ctx.settings.identity_rp_name)
        return TotpEnrollment(secret, uri)


def _new_recovery_codes(ctx: IdentityContext, db: Session, user: User) -> list[str]:
    db.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user.id))
    codes = [secrets.token_hex(6) for _ in range(RECOVERY_CODE_COUNT)]
    for code in codes:
        db.add(RecoveryCode(user_id=user.id, code_hash=ctx.sealer.token_digest("recovery:" + code)))
    return [f"{c[:4]}-{c[4:8]}-{c[8:]}" for c in codes]


def _check_code_format(code: object, *, field: str = "code") -> str:
    if not isinstance(code, str) or not _TOTP_RE.fullmatch(code.strip()):
        raise ValidationError("must be the 6-digit code from your authenticator app", field=field)
    return code.strip()


def confirm_totp_enrollment(
    ctx: IdentityContext, token: object, code: object, *, ip: object = "127.0.0.1"
) -> tuple[sessions.IssuedSession, list[str]]:
    """Turn TOTP on with a first valid code. Returns the rotated session and the recovery codes (shown once)."""
    value = _check_code_format(code)
    client_ip = validate_ip(ip)
    with ctx.store.tx() as db:
        row, user = sessions.load_session(ctx, db, token)
        if user.totp_enabled or user.totp_secret_enc is None:
            raise Conflict("start the authenticator set-up first", field="totp")
        now = ctx.now()
        step = _match_totp_step(_totp_for(ctx, user), value, now)
        if step is None:
            raise AuthenticationFailed("the code is not correct; check the time on your phone and retry", field="code")
        first = not sessions.has_second_factor(db, user)
        user.totp_enabled = True
        user.totp_last_step = step
        codes = _new_recovery_codes(ctx, db, user)
        credential_changed(ctx, db, user, change="totp_enabled", ip=client_ip)
        if first:
            _mail_first_factor_confirmation(ctx, db, user, factor="totp", ip=client_ip)
        issued = sessions.rotate(ctx, db, row, user, second_factor_at_s=now)
        return issued, codes


def disable_totp(ctx: IdentityContext, token: object, *, ip: object = "127.0.0.1") -> None:
    client_ip = validate_ip(ip)
    info = sessions.authenticate(ctx, token)
    with ctx.store.tx() as db:
        user = _require_2fa_change_allowed(ctx, db, info)
        if not user.totp_enabled:
            raise Conflict("no authenticator app is set up", field="totp")
        user.totp_enabled = False
        user.totp_secret_enc = None
        user.totp_last_step = 0
        db.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user.id))
        _drop_pending_confirmations(db, user)
        credential_changed(ctx, db, user, change="totp_disabled", ip=client_ip)


def require_reset(ctx: IdentityContext, db: Session, user: User, *, by: str) -> int:
    """Staff require the user to enrol a second factor again (in the caller's transaction, with the
    staff decision that asked for it): the authenticator app is turned off (seed and recovery codes
    dropped), every passkey and every session is removed, pending confirmation links are void. It is
    a credential change (`second_factor_reset`): withdrawals lock (relayed to the engine like every
    credential change) and the user gets the e-mail with the freeze link. API keys stay (a bot keeps
    trading); creating one, like every sensitive action, needs a second factor enrolled again.
    Returns the number of factors removed."""
    from sqlalchemy import update

    from ..store.models import AuthSession

    now = ctx.now()
    removed = int(user.totp_enabled) + len(list(db.scalars(select(WebAuthnCredential.id).where(WebAuthnCredential.user_id == user.id))))
    user.totp_enabled = False
    user.totp_secret_enc = None
    user.totp_last_step = 0
    db.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user.id))
    db.execute(delete(WebAuthnCredential).where(WebAuthnCredential.user_id == user.id))
    db.execute(delete(WebAuthnChallenge).where(WebAuthnChallenge.user_id == user.id))
    db.flush()
    _drop_pending_confirmations(db, user)
    db.execute(update(AuthSession).where(AuthSession.user_id == user.id, AuthSession.revoked_at_s.is_(None)).values(revoked_at_s=now))
    credential_changed(ctx, db, user, change="second_factor_reset", ip="")
    record_event(db, user_id=user.id, kind="session_revoked", at_s=now, detail=f"second-factor reset required by {by}"[:200])
    return removed


def regenerate_recovery_codes(ctx: IdentityContext, token: object, *, ip: object = "127.0.0.1") -> list[str]:
    client_ip = validate_ip(ip)
    info = sessions.authenticate(ctx, token)
    with ctx.store.tx() as db:
        user = _require_2fa_change_allowed(ctx, db, info)
        if not user.totp_enabled:
            raise Conflict("recovery codes belong to an authenticator-app set-up; set one up first", field="totp")
        codes = _new_recovery_codes(ctx, db, user)
        credential_changed(ctx, db, user, change="recovery_codes_regenerated", ip=client_ip)
        return codes


# --- WebAuthn -------------------------------------------------------------------------------------


def _store_challenge(ctx: IdentityContext, db: Session, user: User, purpose: str, challenge: bytes) -> None:
    db.execute(delete(WebAuthnChallenge).where(WebAuthnChallenge.user_id == user.id, WebAuthnChallenge.purpose == purpose))
    db.add(WebAuthnChallenge(user_id=user.id, purpose=purpose, challenge=challenge, expires_at_s=ctx.now() + CHALLENGE_TTL_S))


def _take_challenge(ctx: IdentityContext, db: Session, user: User, purpose: str) -> bytes:
    row = db.scalars(
        select(WebAuthnChallenge).where(WebAuthnChallenge.user_id == user.id, WebAuthnChallenge.purpose == purpose)
    ).first()
    if row is None or row.expires_at_s < ctx.now():
        raise AuthenticationFailed("the passkey challenge expired or was already used; start again", field="credential")
    challenge = row.challenge
    db.delete(row)
    return challenge


def _credential_json(credential: object) -> str:
    if isinstance(credential, dict):
        credential = json.dumps(credential)
    if not isinstance(credential, str) or len(credential) > CREDENTIAL_JSON_MAX_CHARS:
        raise ValidationError(f"must be the passkey's JSON response (at most {CREDENTIAL_JSON_MAX_CHARS} characters)", field="credential")
    return credential


def begin_passkey_registration(ctx: IdentityContext, token: object) -> str:
    """Options JSON for navigator.credentials.create()."""
    info = sessions.authenticate(ctx, token)
    with ctx.store.tx() as db:
        user = _require_2fa_change_allowed(ctx, db, info)
        existing = db.scalars(select(WebAuthnCredential).where(WebAuthnCredential.user_id == user.id).limit(PASSKEYS_PER_USER_MAX)).all()
        if len(existing) >= PASSKEYS_PER_USER_MAX:
            raise Conflict(f"at most {PASSKEYS_PER_USER_MAX} passkeys per account", field="passkey")
        from webauthn import generate_registration_options, options_to_json
        from webauthn.helpers.structs import (
            AuthenticatorSelectionCriteria,
            PublicKeyCredentialDescriptor,
            ResidentKeyRequirement,
            UserVerificationRequirement,
        )

        options = generate_registration_options(
            rp_id=ctx.settings.identity_rp_id, rp_name=ctx.settings.identity_rp_name, user_name=user.email,
            user_id=user.account_id.encode(),
            exclude_credentials=[PublicKeyCredentialDescriptor(id=c.credential_id) for c in existing],
            authenticator_selection=AuthenticatorSelectionCriteria(
                resident_key=ResidentKeyRequirement.PREFERRED, user_verification=UserVerificationRequirement.PREFERRED
            ),
        )
        _store_challenge(ctx, db, user, "register", options.challenge)
        return options_to_json(options)


def finish_passkey_registration(
    ctx: IdentityContext, token: object, credential: object, *, label: object = "passkey", ip: object = "127.0.0.1"
) -> sessions.IssuedSession:
    """Verify the authenticator's attestation and store the passkey; rotates the session."""
    from webauthn import verify_registration_response
    from webauthn.helpers.exceptions import InvalidJSONStructure, InvalidRegistrationResponse

    cred_json = _credential_json(credential)
    name = validate_label(label)
    client_ip = validate_ip(ip)
    # The challenge must be consumed even when verification fails: commit that, then raise.
    pending: RingfenceError | None = None
    issued: sessions.IssuedSession | None = None
    with ctx.store.tx() as db:
        row, user = sessions.load_session(ctx, db, token)
        challenge = _take_challenge(ctx, db, user, "register")
        try:
            verified = verify_registration_response(
                credential=cred_json, expected_challenge=challenge, expected_rp_id=ctx.settings.identity_rp_id,
                expected_origin=ctx.settings.identity_origin,
            )
        except (InvalidRegistrationResponse, InvalidJSONStructure, ValueError, KeyError) as exc:
            pending = AuthenticationFailed(f"the passkey registration was not valid: {exc}", field="credential")
        else:
            if db.scalars(select(WebAuthnCredential.id).where(WebAuthnCredential.credential_id == verified.credential_id)).first():
                pending = Conflict("this passkey is already registered", field="credential")
            else:
                first = not sessions.has_second_factor(db, user)
                db.add(WebAuthnCredential(
                    user_id=user.id, credential_id=verified.credential_id, public_key=verified.credential_public_key,
                    sign_count=verified.sign_count, label=name, created_at_s=ctx.now(),
                ))
                credential_changed(ctx, db, user, change="passkey_added", ip=client_ip)
                if first:
                    _mail_first_factor_confirmation(ctx, db, user, factor=f"passkey:{name}", ip=client_ip)
                issued = sessions.rotate(ctx, db, row, user, second_factor_at_s=ctx.now())
    if pending is not None:
        raise pending
    assert issued is not None
    return issued


def remove_passkey(ctx: IdentityContext, token: object, passkey_id: int, *, ip: object = "127.0.0.1") -> None:
    client_ip = validate_ip(ip)
    info = sessions.authenticate(ctx, token)
    with ctx.store.tx() as db:
        user = _require_2fa_change_allowed(ctx, db, info)
        cred = db.get(WebAuthnCredential, passkey_id)
        if cred is None or cred.user_id != user.id:
            raise NotFound("no such passkey on your account", field="passkey_id")
        db.delete(cred)
        db.flush()
        _drop_pending_confirmations(db, user)
        credential_changed(ctx, db, user, change="passkey_removed", ip=client_ip)


def begin_passkey_challenge(ctx: IdentityContext, token: object, *, purpose: str = "login") -> str:
    """Options JSON for navigator.credentials.get(): `login` (pending session) or `step_up`."""
    if purpose not in ("login", "step_up"):
        raise ValidationError("must be 'login' or 'step_up'", field="purpose")
    with ctx.store.tx() as db:
        _, user = sessions.load_session(ctx, db, token, allow_pending=purpose == "login")
        creds = db.scalars(select(WebAuthnCredential).where(WebAuthnCredential.user_id == user.id).limit(PASSKEYS_PER_USER_MAX)).all()
        if not creds:
            raise NotFound("no passkey is registered on this account", field="passkey")
        from webauthn import generate_authentication_options, options_to_json
        from webauthn.helpers.structs import PublicKeyCredentialDescriptor, UserVerificationRequirement

        options = generate_authentication_options(
            rp_id=ctx.settings.identity_rp_id,
            allow_credentials=[PublicKeyCredentialDescriptor(id=c.credential_id) for c in creds],
            user_verification=UserVerificationRequirement.PREFERRED,
        )
        _store_challenge(ctx, db, user, purpose, options.challenge)
        return options_to_json(options)


# --- verifying a second factor ----------------------------------------------------------------------


def _verify_factor(
    ctx: IdentityContext, db: Session, user: User, *, method: str, value: object, purpose: str
) -> RingfenceError | None:
    """Check one factor. Returns an error to raise after commit (so counters persist), or None."""
    now = ctx.now()
    if method == "totp":
        code = _check_code_format(value)
        if not user.totp_enabled:
            raise ValidationError("no authenticator app is set up on this account", field="method")
        step = _match_totp_step(_totp_for(ctx, user), code, now)
        if step is None:
            return AuthenticationFailed("the authenticator code is not correct", field="code")
        if step <= user.totp_last_step:
            return AuthenticationFailed("this code was already used; wait for the next code", field="code")
        user.totp_last_step = step
        return None
    if method == "recovery_code":
        if not isinstance(value, str) or len(value) > 32:
            raise ValidationError("must be one of your recovery codes (like abcd-ef01-2345)", field="code")
        norm = value.strip().lower().replace("-", "").replace(" ", "")
        if not _RECOVERY_RE.fullmatch(norm):
            raise ValidationError("must be one of your recovery codes (like abcd-ef01-2345)", field="code")
        digest = ctx.sealer.token_digest("recovery:" + norm)
        row = db.scalars(select(RecoveryCode).where(
            RecoveryCode.user_id == user.id, RecoveryCode.code_hash == digest, RecoveryCode.used_at_s.is_(None))).first()
        if row is None:
            return AuthenticationFailed("the recovery code is not valid or was already used", field="code")
        row.used_at_s = now
        record_event(db, user_id=user.id, kind="recovery_code_used", at_s=now)
        return None
    if method == "passkey":
        from webauthn import verify_authentication_response
        from webauthn.helpers import base64url_to_bytes
        from webauthn.helpers.exceptions import InvalidAuthenticationResponse, InvalidJSONStructure

        cred_json = _credential_json(value)
        challenge = _take_challenge(ctx, db, user, purpose)
        try:
            raw_id = base64url_to_bytes(json.loads(cred_json)["rawId"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ValidationError("must be the passkey's JSON response with a rawId", field="credential") from exc
        cred = db.scalars(select(WebAuthnCredential).where(
            WebAuthnCredential.user_id == user.id, WebAuthnCredential.credential_id == raw_id)).first()
        if cred is None:
            return AuthenticationFailed("this passkey is not registered on this account", field="credential")
        try:
            verified = verify_authentication_response(
                credential=cred_json, expected_challenge=challenge, expected_rp_id=ctx.settings.identity_rp_id,
                expected_origin=ctx.settings.identity_origin, credential_public_key=cred.public_key,
                credential_current_sign_count=cred.sign_count,
            )
        except (InvalidAuthenticationResponse, InvalidJSONStructure, ValueError, KeyError) as exc:
            return AuthenticationFailed(f"the passkey response was not valid: {exc}", field="credential")
        cred.sign_count = verified.new_sign_count
        return None
    raise ValidationError("must be 'totp', 'recovery_code' or 'passkey'", field="method")


def _guarded(ctx: IdentityContext, db: Session, user: User, *, method: str, value: object, purpose: str, ip: str) -> RingfenceError | None:
    s = ctx.settings
    now = ctx.now()
    limited = throttle.hit(db, bucket=f"2fa-user:{user.id}", limit=s.identity_second_factor_per_user_per_min, window_s=60, now_s=now)
    if limited is not None:
        return limited
    if user.mfa_locked_until_s > now:
        return RateLimited(f"too many wrong second-factor attempts; try again in {user.mfa_locked_until_s - now} s",
                           retry_after_s=user.mfa_locked_until_s - now)
    err = _verify_factor(ctx, db, user, method=method, value=value, purpose=purpose)
    if err is None:
        user.mfa_failures = 0
        return None
    user.mfa_failures += 1
    lock_s = throttle.backoff_s(user.mfa_failures, free_failures=s.identity_lockout_free_failures,
                                base_s=s.identity_lockout_base_s, max_s=s.identity_lockout_max_s)
    if lock_s:
        user.mfa_locked_until_s = now + lock_s
    record_event(db, user_id=user.id, kind="second_factor_failed", at_s=now, ip=ip, detail=method)
    if user.mfa_failures == s.identity_lockout_free_failures:
        mail.enqueue(ctx, db, user, "second_factor_failed", {"ip": ip or "unknown"})
    return err


def complete_login(
    ctx: IdentityContext, pending_token: object, *, method: str, value: object, country: str | None = None
) -> sessions.IssuedSession:
    """Finish a sign-in that needs a second factor. The pending token is revoked; a new one is issued."""
    pending: RingfenceError | None = None
    issued: sessions.IssuedSession | None = None
    with ctx.store.tx() as db:
        row, user = sessions.load_session(ctx, db, pending_token, allow_pending=True)
        pending = _guarded(ctx, db, user, method=method, value=value, purpose="login", ip=row.ip)
        if pending is None:
            issued = sessions.rotate(ctx, db, row, user, second_factor_at_s=ctx.now())
            note_sign_in(ctx, db, user, ip=row.ip, user_agent=row.user_agent, country=country)
    if pending is not None:
        raise pending
    assert issued is not None
    return issued


def step_up(ctx: IdentityContext, token: object, *, method: str, value: object) -> sessions.IssuedSession:
    """Re-prove a second factor inside a signed-in session (before a sensitive action). Rotates the token."""
    pending: RingfenceError | None = None
    issued: sessions.IssuedSession | None = None
    with ctx.store.tx() as db:
        row, user = sessions.load_session(ctx, db, token)
        pending = _guarded(ctx, db, user, method=method, value=value, purpose="step_up", ip=row.ip)
        if pending is None:
            issued = sessions.rotate(ctx, db, row, user, second_factor_at_s=ctx.now())
    if pending is not None:
        raise pending
    assert issued is not None
    return issued


