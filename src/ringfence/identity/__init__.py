"""Identity: users, sessions, second factors, API keys, anti-phishing e-mail, PGP, security events.

Service-level API for the gateway and web layers (all functions take an `IdentityContext` first):
`accounts` (sign-up, verification, sign-in, password/e-mail/anti-phishing changes), `sessions`
(authenticate, logout, CSRF, `require_fresh_second_factor`), `second_factor` (TOTP, recovery codes,
passkeys, completing sign-in, step-up), `api_keys` (create, revoke, `verify_api_request`), `mail`
(outbox + delivery), `pgp_keys` (user keys, secure tickets), `events` (security events, withdrawal
lock, freeze). Identity meets the ledger only at the user's `account_id` string.
"""

from __future__ import annotations

from .context import IdentityContext, system_clock

__all__ = ["IdentityContext", "system_clock"]
