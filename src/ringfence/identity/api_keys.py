"""API keys: HMAC-SHA256 keys (secret shown once, sealed at rest) and Ed25519 keys (public key only).

Invariants:
- Creating a key needs a signed-in session with a fresh second factor; it is a credential change
  (security event, withdrawal lock, e-mail with freeze link).
- The HMAC secret is returned once by `create_api_key` and stored only AES-GCM sealed (bound to the
  key's hash); the API key itself is stored as a keyed hash plus an 8-character display prefix.
- `verify_api_request` reads the key row on every call (no cache); the API process goes through
  `key_cache.VerifiedKeyCache`, which keeps verified keys in memory and drops them before the next
  request whenever a revocation, scope, allow-list, expiry or freeze change commits, so those take
  effect on the very next request either way. Signatures are compared in constant time.
- Scopes are a subset of read/trade/withdraw; `withdraw` keys must carry an IP allow-list.
- Binance-style signing: HMAC key -> signature = hex(HMAC_SHA256(secret, payload));
  Ed25519 key -> signature = base64(Ed25519_sign(private_key, payload)).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import func, select, update


from ..errors import AccountFrozen, Conflict, Forbidden, NotFound, Unauthorized, ValidationError
from ..signatures import ED25519_SIGNATURE_BASE64_CHARS, HMAC_SIGNATURE_HEX_CHARS, decode_signature  # noqa: F401  (one copy, shared with the gateways)
from ..store.models import ApiKey, User
from . import sessions
from .context import IdentityContext
from .events import credential_changed, record_event
from .fields import validate_ip, validate_label

__all__ = [
    "SCOPES",
    "CreatedApiKey",
    "ApiKeyView",
    "ApiPrincipal",
    "create_api_key",
    "revoke_api_key",
    "list_api_keys",
    "verify_api_request",
    "hmac_signature",
    "decode_signature",
    "principal_for_key",
    "parse_ed25519_public_key",
    "register_ed25519_key",
]

SCOPES = ("read", "trade", "withdraw")
KEYS_PER_USER_MAX = 30
ALLOWLIST_MAX_ENTRIES = 30
EXPIRY_MAX_S = 365 * 86400
EXPIRY_MIN_S = 3600
PAYLOAD_MAX_BYTES = 64 * 1024
LAST_USED_RESOLUTION_S = 60
_DUMMY_SECRET = secrets.token_bytes(32)


@dataclass(frozen=True)
class CreatedApiKey:
    key_id: int
    api_key: str
    secret: str | None  # HMAC keys only; shown ONCE, never retrievable again
    kind: str
    scopes: tuple[str, ...]
    expires_at_s: int | None


@dataclass(frozen=True)
class ApiKeyView:
    key_id: int
    key_prefix: str
    kind: str
    label: str
    scopes: tuple[str, ...]
    ip_allowlist: tuple[str, ...]
    created_at_s: int
    expires_at_s: int | None
    revoked_at_s: int | None
    last_used_at_s: int | None


@dataclass(frozen=True)
class ApiPrincipal:
    account_id: str
    user_id: int
    key_id: int
    scopes: tuple[str, ...]
    #: "hmac" or "ed25519" (the WebSocket API's session.logon accepts Ed25519 keys only, as Binance's)
    kind: str = "hmac"
    #: when the key stops working (unix seconds), or None
    expires_at_s: int | None = None


def hmac_signature(secret: str, payload: bytes | str) -> str:
    """hex(HMAC_SHA256(secret, payload)) — what a client computes to sign a request."""
    data = payload.encode() if isinstance(payload, str) else payload
    return hmac.new(secret.encode(), data, hashlib.sha256).hexdigest()


def _validate_scopes(scopes: object) -> tuple[str, ...]:
    if isinstance(scopes, str) or not isinstance(scopes, (list, tuple, set, frozenset)) or not scopes:
        raise ValidationError(f"must be a non-empty list drawn from {list(SCOPES)}", field="scopes")
    out = set()
    for s in scopes:
        if s not in SCOPES:
            raise ValidationError(f"must be a non-empty list drawn from {list(SCOPES)}", field="scopes")
        out.add(s)
    return tuple(sorted(out))


def _validate_allowlist(entries: object) -> tuple[str, ...]:
    if entries is None:
        return ()
    if isinstance(entries, str) or not isinstance(entries, (list, tuple)):
        raise ValidationError("must be a list of IP addresses or CIDR networks", field="ip_allowlist")
    if len(entries) > ALLOWLIST_MAX_ENTRIES:
        raise ValidationError(f"must have at most {ALLOWLIST_MAX_ENTRIES} entries", field="ip_allowlist")
    out: list[str] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, str) or len(entry) > 64:
            raise ValidationError("must be an IP address or CIDR network like 203.0.113.0/24", field=f"ip_allowlist[{i}]")
        try:
            out.append(str(ipaddress.ip_network(entry.strip(), strict=True)))
        except ValueError as exc:
            raise ValidationError(
                f"must be an IP address or CIDR network like 203.0.113.0/24 ({exc})", field=f"ip_allowlist[{i}]"
            ) from exc
    return tuple(out)


#: The widest network a withdraw key may trust (as Binance: withdrawals only from trusted IPs). An
#: allow-list of 0.0.0.0/0 would keep the rule's words and drop its point.
WITHDRAW_MIN_PREFIX = {4: 24, 6: 56}


def _require_narrow_allowlist_for_withdraw(scopes: tuple[str, ...], allow: tuple[str, ...]) -> None:
    if "withdraw" not in scopes:
        return
    if not allow:
        raise ValidationError("a key with the withdraw scope must be restricted to trusted IPs", field="ip_allowlist")
    for i, entry in enumerate(allow):
        net = ipaddress.ip_network(entry)
        widest = WITHDRAW_MIN_PREFIX[net.version]
        if net.prefixlen < widest:
            raise ValidationError(
                f"{entry} is too wide for a key with the withdraw scope: at most /{widest} for IPv{net.version} "
                "(name the trusted addresses or networks)", field=f"ip_allowlist[{i}]")


ED25519_PUBLIC_KEY_BYTES = 32
ED25519_PUBLIC_KEY_MAX_CHARS = 1024
_ED25519_FORMS = "paste the public half as PEM (-----BEGIN PUBLIC KEY-----) or as base64 of its 32 raw bytes"


def parse_ed25519_public_key(public_key: object) -> bytes:
    """The 32 raw bytes of an Ed25519 public key given as PEM (SubjectPublicKeyInfo) or base64.

    Every refusal says what was wrong (length, encoding, key type) and never echoes the input:
    a private key pasted by mistake is refused without being repeated anywhere.
    """
    if not isinstance(public_key, str) or not public_key.strip():
        raise ValidationError(f"is required: {_ED25519_FORMS}", field="public_key")
    if len(public_key) > ED25519_PUBLIC_KEY_MAX_CHARS:
        raise ValidationError(f"must be at most {ED25519_PUBLIC_KEY_MAX_CHARS} characters; {_ED25519_FORMS}", field="public_key")
    text = public_key.strip()
    if "PRIVATE KEY" in text:
        raise ValidationError(
            "this is a PRIVATE key: never send it to anyone. Register the public half "
            "(openssl pkey -in key.pem -pubout)", field="public_key")
    if text.startswith("-----"):
        if not text.startswith("-----BEGIN PUBLIC KEY-----") or not text.endswith("-----END PUBLIC KEY-----"):
            raise ValidationError(f"is not a PEM public key; {_ED25519_FORMS}", field="public_key")
        try:
            key = serialization.load_pem_public_key(text.encode())
        except (ValueError, TypeError) as exc:
            raise ValidationError(f"the PEM block does not decode to a public key; {_ED25519_FORMS}", field="public_key") from exc
        if not isinstance(key, Ed25519PublicKey):
            kind = type(key).__name__.removeprefix("_").replace("PublicKey", "") or "another"
            raise ValidationError(f"is a {kind} key, not Ed25519; generate one with `openssl genpkey -algorithm ed25519`",
                                  field="public_key")
        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    try:
        raw = base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise ValidationError(f"is neither PEM nor valid base64; {_ED25519_FORMS}", field="public_key") from exc
    if base64.b64encode(raw).decode() != text:  # one key, one spelling (no stray padding bits)
        raise ValidationError(f"is not canonical base64; {_ED25519_FORMS}", field="public_key")
    if len(raw) != ED25519_PUBLIC_KEY_BYTES:
        raise ValidationError(
            f"decodes to {len(raw)} bytes; an Ed25519 public key is {ED25519_PUBLIC_KEY_BYTES} bytes "
            f"(44 base64 characters); {_ED25519_FORMS}", field="public_key")
    try:
        Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:  # pragma: no cover - every 32-byte string loads; kept for other backends
        raise ValidationError("is not a valid Ed25519 public key", field="public_key") from exc
    return raw


_parse_ed25519_public_key = parse_ed25519_public_key


def _refuse_registered_public_key(db: Any, raw_public: bytes | None) -> None:
    """One Ed25519 public key belongs to one API key, for ever (as on Binance): a second registration
    of the same key, by anyone and even after the first was revoked, would let a request signed for
    one key be replayed under another."""
    if raw_public is None:
        return
    taken = db.scalar(select(func.count()).select_from(ApiKey).where(ApiKey.public_key == raw_public))
    if taken:
        raise Conflict("this Ed25519 public key is already registered; generate a new key pair for each API key", field="public_key")


def create_api_key(
    ctx: IdentityContext,
    token: object,
    *,
    kind: str = "hmac",
    scopes: object = ("read",),
    label: object = "api key",
    ip_allowlist: object = None,
    expires_in_s: int | None = None,
    public_key: object = None,
    ip: object = "127.0.0.1",
    max_factor_age_s: int = 300,
) -> CreatedApiKey:
    """Create a key. Needs a fresh second factor. The HMAC secret is in the result and nowhere else."""
    if kind not in ("hmac", "ed25519"):
        raise ValidationError("must be 'hmac' or 'ed25519'", field="kind")
    scope_t = _validate_scopes(scopes)
    name = validate_label(label)
    allow = _validate_allowlist(ip_allowlist)
    client_ip = validate_ip(ip)
    _require_narrow_allowlist_for_withdraw(scope_t, allow)
    if expires_in_s is not None and (not isinstance(expires_in_s, int) or not EXPIRY_MIN_S <= expires_in_s <= EXPIRY_MAX_S):
        raise ValidationError(f"must be between {EXPIRY_MIN_S} and {EXPIRY_MAX_S} seconds", field="expires_in_s")
    raw_public = _parse_ed25519_public_key(public_key) if kind == "ed25519" else None
    if kind == "hmac" and public_key is not None:
        raise ValidationError("is only for ed25519 keys", field="public_key")

    info = sessions.authenticate(ctx, token)
    sessions.require_fresh_second_factor(info, max_factor_age_s)
    now = ctx.now()
    with ctx.store.tx() as db:
        user = db.get(User, info.user_id)
        assert user is not None
        n = db.scalar(select(func.count()).select_from(ApiKey).where(ApiKey.user_id == user.id, ApiKey.revoked_at_s.is_(None)))
        if n >= KEYS_PER_USER_MAX:
            raise Conflict(f"at most {KEYS_PER_USER_MAX} active API keys per account; revoke one first", field="api_key")
        _refuse_registered_public_key(db, raw_public)
        api_key = secrets.token_hex(32)
        key_hash = ctx.sealer.token_digest("apikey:" + api_key)
        secret = secrets.token_hex(32) if kind == "hmac" else None
        row = ApiKey(
            user_id=user.id, key_hash=key_hash, key_prefix=api_key[:8], kind=kind,
            secret_enc=ctx.sealer.seal(secret.encode(), purpose="apikey:" + key_hash) if secret else None,
            public_key=raw_public, scopes=",".join(scope_t), ip_allowlist=",".join(allow), label=name,
            created_at_s=now, expires_at_s=now + expires_in_s if expires_in_s else None,
        )
        db.add(row)
        db.flush()
        credential_changed(ctx, db, user, change="api_key_created", ip=client_ip)
        return CreatedApiKey(row.id, api_key, secret, kind, scope_t, row.expires_at_s)


def register_ed25519_key(
    ctx: IdentityContext,
    token: object,
    public_key: object,
    *,
    scopes: object = ("read",),
    label: object = "ed25519 key",
    ip_allowlist: object = None,
    expires_in_s: int | None = None,
    ip: object = "127.0.0.1",
) -> CreatedApiKey:
    """Register the public half of an Ed25519 key pair the user generated (as on Binance).

    The private key never reaches us; requests are signed base64(Ed25519_sign(private, payload)).
    Same rules as any key: a signed-in session with a fresh second factor, a security event, the
    withdrawal lock and an e-mail with a freeze link.
    """
    return create_api_key(ctx, token, kind="ed25519", scopes=scopes, label=label, ip_allowlist=ip_allowlist,
                          expires_in_s=expires_in_s, public_key=public_key, ip=ip)


def _view(row: ApiKey) -> ApiKeyView:
    return ApiKeyView(
        row.id, row.key_prefix, row.kind, row.label, tuple(row.scopes.split(",")),
        tuple(x for x in row.ip_allowlist.split(",") if x), row.created_at_s, row.expires_at_s, row.revoked_at_s,
        row.last_used_at_s,
    )


def list_api_keys(ctx: IdentityContext, token: object) -> list[ApiKeyView]:
    info = sessions.authenticate(ctx, token)
    with ctx.store.tx() as db:
        rows = db.scalars(select(ApiKey).where(ApiKey.user_id == info.user_id).order_by(ApiKey.id).limit(1000))
        return [_view(r) for r in rows]


def revoke_api_key(ctx: IdentityContext, token: object, key_id: int, *, ip: object = "127.0.0.1") -> None:
    """Revoke a key (no step-up needed: revoking only ever reduces access). Effective immediately."""
    client_ip = validate_ip(ip)
    info = sessions.authenticate(ctx, token)
    with ctx.store.tx() as db:
        row = db.get(ApiKey, key_id) if isinstance(key_id, int) else None
        if row is None or row.user_id != info.user_id:
            raise NotFound("no such API key on your account", field="key_id")
        if row.revoked_at_s is None:
            row.revoked_at_s = ctx.now()
            record_event(db, user_id=info.user_id, kind="api_key_revoked", at_s=ctx.now(), ip=client_ip, detail=row.key_prefix)


def _ip_allowed(key: "KeySnapshot", client_ip: str) -> bool:
    if not key.allow:
        return True
    addr = _parsed_ip(client_ip)
    return any(addr in net for net in key.allow)


@functools.lru_cache(maxsize=4096)
def _parsed_ip(client_ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The client's address parsed (a few microseconds each time otherwise; clients repeat)."""
    return ipaddress.ip_address(client_ip)


@dataclass(frozen=True)
class KeySnapshot:
    """What the checks of one API key use, read in one transaction: the key row and its owner's
    freeze flag. The HMAC secret stays sealed (unsealed per request, a few microseconds); an
    Ed25519 key is kept parsed. `identity/key_cache.py` keeps these between requests."""

    key_id: int
    user_id: int
    account_id: str
    kind: str
    key_hash: str
    secret_enc: bytes | None
    verifier: Ed25519PublicKey | None
    scopes: tuple[str, ...]
    allow: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    expires_at_s: int | None
    revoked_at_s: int | None
    frozen: bool
    last_used_at_s: int | None


def _snapshot(row: ApiKey, account_id: str, frozen: bool) -> KeySnapshot:
    return KeySnapshot(
        row.id, row.user_id, account_id, row.kind, row.key_hash, row.secret_enc,
        Ed25519PublicKey.from_public_bytes(row.public_key) if row.kind == "ed25519" and row.public_key else None,
        tuple(row.scopes.split(",")), tuple(ipaddress.ip_network(x) for x in row.ip_allowlist.split(",") if x),
        row.expires_at_s, row.revoked_at_s, bool(frozen), row.last_used_at_s,
    )


# The work an unknown key costs: unseal a secret and compute an HMAC, exactly like a known HMAC
# key with a wrong signature, so the two answers (-2015 and -1022) take the same time.
_DUMMY_PURPOSE = "apikey:dummy"
_dummy_sealed: dict[int, bytes] = {}


def _dummy_secret(ctx: IdentityContext) -> bytes:
    key = id(ctx.sealer)
    sealed = _dummy_sealed.get(key)
    if sealed is None:
        sealed = ctx.sealer.seal(_DUMMY_SECRET.hex().encode(), purpose=_DUMMY_PURPOSE)
        if len(_dummy_sealed) > 64:  # bounded: one entry per identity context in this process
            _dummy_sealed.clear()
        _dummy_sealed[key] = sealed
    return ctx.sealer.unseal(sealed, purpose=_DUMMY_PURPOSE)


def _signature_ok(ctx: IdentityContext, key: KeySnapshot | None, payload: bytes, signature: str) -> bool:
    if key is None or key.kind == "hmac":
        secret = (
            ctx.sealer.unseal(key.secret_enc, purpose="apikey:" + key.key_hash)
            if key is not None and key.secret_enc
            else _dummy_secret(ctx)
        )
        expected = hmac.new(secret, payload, hashlib.sha256).digest()
        sent = decode_signature("hmac", signature)
        ok = hmac.compare_digest(expected, sent if sent is not None else bytes(32))
        return ok and sent is not None and key is not None
    assert key.verifier is not None
    raw = decode_signature("ed25519", signature)
    if raw is None:
        return False
    try:
        key.verifier.verify(raw, payload)
        return True
    except (InvalidSignature, ValueError):
        return False


def key_digest(ctx: IdentityContext, api_key: str) -> str:
    """The keyed hash an API key is stored (and cached) under."""
    return ctx.sealer.token_digest("apikey:" + api_key)


def load_key(ctx: IdentityContext, digest: str) -> KeySnapshot | None:
    """The key stored under `digest` (see `key_digest`) and its owner's freeze flag, as they are
    now (one short read transaction), or None."""
    with ctx.store.tx() as db:  # one query, the same for a known and an unknown key
        found = db.execute(select(ApiKey, User.account_id, User.frozen).join(User, User.id == ApiKey.user_id).where(ApiKey.key_hash == digest)).first()
        return _snapshot(*found) if found is not None else None


def admit(key: KeySnapshot, ip: str, required_scope: str, now: int) -> ApiPrincipal:
    """The one copy of the checks every use of an API key passes, signed or key-only: not revoked,
    not expired, account not frozen, client IP on the allow-list, scope granted. The snapshot is
    read fresh from the store or comes from `key_cache`, which drops it before serving the next
    request once any of these facts changes."""
    if key.revoked_at_s is not None:
        raise Unauthorized("this API key was revoked", field="api_key")
    if key.expires_at_s is not None and now >= key.expires_at_s:
        raise Unauthorized("this API key has expired; create a new one", field="api_key")
    if key.frozen:
        raise AccountFrozen()
    if not _ip_allowed(key, ip):
        raise Forbidden(f"requests from {ip} are not on this API key's IP allow-list", field="client_ip")
    if required_scope not in key.scopes:
        raise Forbidden(f"this API key lacks the '{required_scope}' scope", field="scope")
    return ApiPrincipal(key.account_id, key.user_id, key.key_id, key.scopes, key.kind, key.expires_at_s)


def check_signed(ctx: IdentityContext, key: KeySnapshot | None, data: bytes, signature: str, ip: str, required_scope: str, now: int) -> ApiPrincipal:
    """Signature then `admit`, no I/O. An unknown key (None) costs the same work as a wrong signature."""
    signature_ok = _signature_ok(ctx, key, data, signature)
    if key is None:
        raise Unauthorized("no such API key", field="api_key")
    if not signature_ok:
        raise Unauthorized("the signature is not valid for this key and request", field="signature")
    return admit(key, ip, required_scope, now)


def last_used_due(key: KeySnapshot, now: int) -> bool:
    return key.last_used_at_s is None or now - key.last_used_at_s >= LAST_USED_RESOLUTION_S


def touch_last_used(ctx: IdentityContext, key_id: int, now: int) -> None:
    """Record that a key was used (at most once per LAST_USED_RESOLUTION_S per key)."""
    with ctx.store.tx() as db:
        # Core on the connection, not an ORM UPDATE: recording use changes nobody's access, so it
        # must not bump the key generation (store/key_generation.py) and empty every API key cache.
        table = ApiKey.__table__
        db.connection().execute(update(table).where(table.c.id == key_id).values(last_used_at_s=now))


def _check_arguments(api_key: object, client_ip: object, required_scope: str) -> str:
    """The argument checks both entry points share; returns the validated client IP."""
    if required_scope not in SCOPES:
        raise ValidationError(f"must be one of {list(SCOPES)}", field="required_scope")
    if not isinstance(api_key, str) or len(api_key) != 64:
        raise Unauthorized("the API key is missing or malformed", field="api_key")
    return validate_ip(client_ip, field="client_ip")


def check_signed_arguments(api_key: object, payload: bytes | str, signature: object, client_ip: object, required_scope: str) -> tuple[str, bytes]:
    """The argument checks of a signed request (shared with `key_cache`): the client IP and the payload's bytes."""
    ip = _check_arguments(api_key, client_ip, required_scope)
    if not isinstance(signature, str) or not 1 <= len(signature) <= 256:
        raise Unauthorized("the signature is missing or malformed", field="signature")
    data = payload.encode() if isinstance(payload, str) else payload
    if not isinstance(data, bytes) or len(data) > PAYLOAD_MAX_BYTES:
        raise ValidationError(f"must be at most {PAYLOAD_MAX_BYTES} bytes", field="payload")
    return ip, data


def verify_api_request(
    ctx: IdentityContext, api_key: object, payload: bytes | str, signature: object, client_ip: object, required_scope: str
) -> ApiPrincipal:
    """Authenticate one signed API request. Returns who it is, or raises a clear error.

    Unauthorized (field `api_key`): unknown, revoked or expired key. Unauthorized (field
    `signature`): a signature that is malformed (see `decode_signature`) or does not verify.
    Forbidden: IP not on the key's allow-list, scope missing, account frozen. ValidationError:
    malformed arguments. An unknown key costs the same work as a wrong signature.
    """
    ip, data = check_signed_arguments(api_key, payload, signature, client_ip, required_scope)
    assert isinstance(api_key, str) and isinstance(signature, str)
    now = ctx.now()
    key = load_key(ctx, key_digest(ctx, api_key))
    principal = check_signed(ctx, key, data, signature, ip, required_scope, now)
    assert key is not None
    if last_used_due(key, now):
        touch_last_used(ctx, key.key_id, now)
    return principal


def check_key_arguments(api_key: object, client_ip: object, required_scope: str) -> str:
    """The argument checks of a key-only request (shared with `key_cache`): the client IP."""
    return _check_arguments(api_key, client_ip, required_scope)


def principal_for_key(ctx: IdentityContext, api_key: object, client_ip: object, required_scope: str) -> ApiPrincipal:
    """Who owns `api_key`, for the few Binance endpoints authenticated by the key alone
    (`userDataStream`); the same revocation, expiry, freeze, IP and scope checks as a signed
    request, because both call `admit`."""
    ip = _check_arguments(api_key, client_ip, required_scope)
    assert isinstance(api_key, str)
    key = load_key(ctx, key_digest(ctx, api_key))
    if key is None:
        raise Unauthorized("no such API key", field="api_key")
    return admit(key, ip, required_scope, ctx.now())


def issue_demo_key(
    ctx: IdentityContext,
    account_id: str,
    email: str,
    *,
    scopes: tuple[str, ...] = ("read", "trade"),
    kind: str = "hmac",
    public_key: object = None,
    ip_allowlist: object = None,
    expires_in_s: int | None = None,
) -> CreatedApiKey:
    """Dev mode only: create (or reuse) a demo user with a fixed ledger `account_id` and issue it an
    HMAC key (or register an Ed25519 public key) without a session — what `ringfence serve --demo`
    hands out in demo-keys.json.

    Refused outside dev mode: real users create keys themselves behind a fresh second factor.
    """
    from ..errors import ConfigError

    if ctx.settings.mode != "dev":
        raise ConfigError("demo keys exist only in dev mode", field="RINGFENCE_MODE")
    if kind not in ("hmac", "ed25519"):
        raise ValidationError("must be 'hmac' or 'ed25519'", field="kind")
    scope_t = _validate_scopes(scopes)
    allow = _validate_allowlist(ip_allowlist)
    _require_narrow_allowlist_for_withdraw(scope_t, allow)
    raw_public = _parse_ed25519_public_key(public_key) if kind == "ed25519" else None
    now = ctx.now()
    with ctx.store.tx() as db:
        user = db.scalars(select(User).where(User.account_id == account_id)).first()
        if user is None:
            user = User(
                account_id=account_id, email=email, email_verified=True,
                # no password can match this hash: demo users sign in with their API key only
                password_hash="!demo-account-no-password", created_at_s=now, totp_enabled=False,
                totp_last_step=0, mfa_failures=0, mfa_locked_until_s=0, withdrawals_locked_until_s=0, frozen=False,
            )
            db.add(user)
            db.flush()
        _refuse_registered_public_key(db, raw_public)
        api_key = secrets.token_hex(32)
        key_hash = ctx.sealer.token_digest("apikey:" + api_key)
        secret = secrets.token_hex(32) if kind == "hmac" else None
        expires = now + expires_in_s if expires_in_s else None
        row = ApiKey(
            user_id=user.id, key_hash=key_hash, key_prefix=api_key[:8], kind=kind,
            secret_enc=ctx.sealer.seal(secret.encode(), purpose="apikey:" + key_hash) if secret else None,
            public_key=raw_public, scopes=",".join(scope_t), ip_allowlist=",".join(allow), label="demo key",
            created_at_s=now, expires_at_s=expires,
        )
        db.add(row)
        db.flush()
        return CreatedApiKey(row.id, api_key, secret, kind, scope_t, expires)
