"""Users' PGP keys, the exchange's published key, and secure support tickets.

Invariants:
- Registering or removing a PGP key needs a fresh second factor when 2FA is on, and is a credential
  change. Its alert is queued BEFORE the key changes, so it is encrypted to the previous key (or sent
  in clear): someone who sneaks in their own key cannot hide the alert from the real owner.
- Once a key is registered, sensitive notifications are encrypted to it (see `mail.compose`).
- A secure ticket is accepted only as an armored PGP message addressed to the exchange's key
  (checked from the packet headers, without needing the private key on the web server).
"""

from __future__ import annotations

from sqlalchemy import select

from ..errors import ConfigError, NotFound, ValidationError
from ..store.models import SecureTicket, User
from . import mail, sessions
from .context import IdentityContext
from .events import credential_changed
from .fields import validate_ip

__all__ = [
    "register_pgp_key",
    "remove_pgp_key",
    "exchange_public_key",
    "submit_secure_ticket",
    "read_secure_ticket",
    "reply_to_ticket",
    "TICKETS_PER_USER_MAX",
    "REPLY_MAX_CHARS",
]

TICKETS_PER_USER_MAX = 1000
REPLY_MAX_CHARS = 20_000


def _user_for_change(ctx: IdentityContext, token: object) -> sessions.SessionInfo:
    info = sessions.authenticate(ctx, token)
    if info.second_factor_enabled:
        sessions.require_fresh_second_factor(info)
    return info


def register_pgp_key(ctx: IdentityContext, token: object, armored_public_key: object, *, ip: object = "127.0.0.1") -> str:
    """Register the user's PGP public key. Returns its fingerprint. Malformed keys change nothing."""
    client_ip = validate_ip(ip)
    info = _user_for_change(ctx, token)
    fingerprint = ctx.keyring.import_public_key(armored_public_key)
    with ctx.store.tx() as db:
        user = db.get(User, info.user_id)
        assert user is not None
        credential_changed(ctx, db, user, change="pgp_key_changed", ip=client_ip)  # encrypted to the OLD key
        user.pgp_public_key = str(armored_public_key)
        user.pgp_fingerprint = fingerprint
        return fingerprint


def remove_pgp_key(ctx: IdentityContext, token: object, *, ip: object = "127.0.0.1") -> None:
    client_ip = validate_ip(ip)
    info = _user_for_change(ctx, token)
    with ctx.store.tx() as db:
        user = db.get(User, info.user_id)
        assert user is not None
        if user.pgp_fingerprint is None:
            raise NotFound("no PGP key is registered", field="pgp_public_key")
        credential_changed(ctx, db, user, change="pgp_key_changed", ip=client_ip)
        user.pgp_public_key = None
        user.pgp_fingerprint = None


def _exchange_fingerprint(ctx: IdentityContext) -> str:
    fp = ctx.settings.identity_exchange_pgp_fingerprint
    if not fp:
        raise ConfigError("the exchange's PGP key is not configured", field="RINGFENCE_IDENTITY_EXCHANGE_PGP_FINGERPRINT")
    return fp


def exchange_public_key(ctx: IdentityContext) -> str:
    """The armored public key users encrypt secure tickets to (published on the website)."""
    armored = ctx.keyring.export_public_key(_exchange_fingerprint(ctx))
    if not armored:
        raise ConfigError("the exchange's PGP key is not in the keyring", field="RINGFENCE_IDENTITY_EXCHANGE_PGP_FINGERPRINT")
    return armored


def _exchange_key_ids(ctx: IdentityContext) -> set[str]:
    fp = _exchange_fingerprint(ctx)
    ids: set[str] = set()
    for key in ctx.keyring.gpg.list_keys(keys=[fp]):
        ids.add(key["keyid"].upper())
        for sub in key.get("subkeys", []):
            ids.add(str(sub[0]).upper())
    if not ids:
        raise ConfigError("the exchange's PGP key is not in the keyring", field="RINGFENCE_IDENTITY_EXCHANGE_PGP_FINGERPRINT")
    return ids


def submit_secure_ticket(ctx: IdentityContext, token: object, ciphertext: object) -> int:
    """Store a ticket the user encrypted to the exchange's key. Returns the ticket id."""
    info = sessions.authenticate(ctx, token)
    armored = ctx.keyring.check_message(ciphertext, field="ciphertext")
    recipients = {r.upper() for r in ctx.keyring.recipients_of(armored)}
    if not recipients & _exchange_key_ids(ctx):
        raise ValidationError("must be encrypted to the exchange's published PGP key", field="ciphertext")
    with ctx.store.tx() as db:
        n = len(db.scalars(select(SecureTicket.id).where(SecureTicket.user_id == info.user_id).limit(TICKETS_PER_USER_MAX)).all())
        if n >= TICKETS_PER_USER_MAX:
            raise ValidationError(f"at most {TICKETS_PER_USER_MAX} tickets per account", field="ciphertext")
        row = SecureTicket(user_id=info.user_id, ciphertext=armored, created_at_s=ctx.now())
        db.add(row)
        db.flush()
        return row.id


def read_secure_ticket(ctx: IdentityContext, ticket_id: int) -> str:
    """Support desk: decrypt a ticket (needs the exchange's private key in this keyring)."""
    with ctx.store.tx() as db:
        row = db.get(SecureTicket, ticket_id)
        if row is None:
            raise NotFound("no such ticket", field="ticket_id")
        return ctx.keyring.decrypt(row.ciphertext)


def reply_to_ticket(ctx: IdentityContext, ticket_id: int, reply: object) -> None:
    """Support desk: answer a ticket by e-mail (encrypted to the user's key when registered)."""
    if not isinstance(reply, str) or not reply.strip() or len(reply) > REPLY_MAX_CHARS:
        raise ValidationError(f"must be 1..{REPLY_MAX_CHARS} characters", field="reply")
    with ctx.store.tx() as db:
        row = db.get(SecureTicket, ticket_id)
        if row is None:
            raise NotFound("no such ticket", field="ticket_id")
        user = db.get(User, row.user_id)
        assert user is not None
        mail.enqueue(ctx, db, user, "ticket_reply", {"ticket_id": ticket_id, "reply": reply})
