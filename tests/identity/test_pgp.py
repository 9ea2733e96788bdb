"""PGP: registering a key (and refusing malformed ones), encrypted notifications, secure tickets."""

from __future__ import annotations

import shutil
import subprocess
import tempfile

import gnupg
import pytest
from sqlalchemy import select

from ringfence.errors import SecondFactorRequired, ValidationError
from ringfence.identity import api_keys, pgp_keys
from ringfence.store.models import SecureTicket, User

from .conftest import enable_totp, outbox, snapshot


class GpgHome:
    """A short-lived GNUPGHOME with a short path (gpg-agent socket paths are limited)."""

    def __init__(self) -> None:
        self.path = tempfile.mkdtemp(prefix="g", dir="/tmp")
        self.gpg = gnupg.GPG(gnupghome=self.path)
        self.gpg.encoding = "utf-8"

    def new_key(self, email: str) -> str:
        inp = self.gpg.gen_key_input(key_type="EDDSA", key_curve="ed25519", subkey_type="ECDH", subkey_curve="cv25519",
                                     name_real="test", name_email=email, no_protection=True, expire_date=0)
        key = self.gpg.gen_key(inp)
        assert key.fingerprint, key.stderr
        return key.fingerprint

    def close(self) -> None:
        subprocess.run(["gpgconf", "--homedir", self.path, "--kill", "gpg-agent"], check=False, capture_output=True)
        shutil.rmtree(self.path, ignore_errors=True)


@pytest.fixture
def server_keyring(ctx):
    home = tempfile.mkdtemp(prefix="s", dir="/tmp")
    ctx.settings.identity_gnupg_home = home
    exchange = GpgHome.__new__(GpgHome)
    exchange.path, exchange.gpg = home, gnupg.GPG(gnupghome=home)
    ctx.settings.identity_exchange_pgp_fingerprint = exchange.new_key("support@ringfence.local")
    yield ctx.keyring
    ctx.keyring.close()
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def user_gpg():
    home = GpgHome()
    yield home
    home.close()


def user_row(ctx) -> User:
    with ctx.store.tx() as db:
        return db.scalars(select(User)).one()


def test_register_key_then_sensitive_mail_is_encrypted(ctx, clock, server_keyring, user_gpg):
    totp, token, _ = enable_totp(ctx, clock)
    fp = user_gpg.new_key("alice@example.com")
    assert pgp_keys.register_pgp_key(ctx, token, user_gpg.gpg.export_keys(fp)) == fp
    alert = outbox(ctx, template="credential_changed")[-1]
    assert not alert.encrypted  # the alert about the key change went out before the key took effect
    api_keys.create_api_key(ctx, token)  # a sensitive change -> encrypted alert
    alert = outbox(ctx, template="credential_changed")[-1]
    assert alert.encrypted and "-----BEGIN PGP MESSAGE-----" in alert.body and "api key" not in alert.body
    plain = user_gpg.gpg.decrypt(alert.body)
    assert plain.ok and "API key created" in str(plain) and "Anti-phishing code" in str(plain)


@pytest.mark.parametrize("bad", [
    "",
    "hello",
    "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmQINBGZZZZZZnotakey\n=abcd\n-----END PGP PUBLIC KEY BLOCK-----\n",
    "-----BEGIN PGP PRIVATE KEY BLOCK-----\nxyz\n-----END PGP PRIVATE KEY BLOCK-----",
    "-----BEGIN PGP PUBLIC KEY BLOCK-----\n" + "A" * 70_000,
    None,
])
def test_malformed_pgp_key_rejected_and_nothing_changes(ctx, clock, server_keyring, bad):
    totp, token, _ = enable_totp(ctx, clock)
    mails_before = len(outbox(ctx))
    before = snapshot(ctx)
    with pytest.raises(ValidationError) as err:
        pgp_keys.register_pgp_key(ctx, token, bad)
    assert err.value.field == "pgp_public_key"
    after = snapshot(ctx)
    # authenticate() refreshes the session's last_seen; nothing else may change
    assert {k: v for k, v in after.items() if k != "identity_sessions"} == \
        {k: v for k, v in before.items() if k != "identity_sessions"}
    row = user_row(ctx)
    assert row.pgp_fingerprint is None and row.pgp_public_key is None and len(outbox(ctx)) == mails_before


def test_two_keys_in_one_block_rejected(ctx, clock, server_keyring, user_gpg):
    totp, token, _ = enable_totp(ctx, clock)
    a, b = user_gpg.new_key("a@example.com"), user_gpg.new_key("b@example.com")
    with pytest.raises(ValidationError):
        pgp_keys.register_pgp_key(ctx, token, user_gpg.gpg.export_keys([a, b]))
    assert user_row(ctx).pgp_fingerprint is None


def test_key_change_needs_fresh_second_factor(ctx, clock, server_keyring, user_gpg):
    totp, token, _ = enable_totp(ctx, clock)
    clock.advance(301)
    fp = user_gpg.new_key("alice@example.com")
    with pytest.raises(SecondFactorRequired):
        pgp_keys.register_pgp_key(ctx, token, user_gpg.gpg.export_keys(fp))
    assert user_row(ctx).pgp_fingerprint is None


def test_secure_ticket_round_trip_and_encrypted_reply(ctx, clock, server_keyring, user_gpg):
    totp, token, _ = enable_totp(ctx, clock)
    fp = user_gpg.new_key("alice@example.com")
    pgp_keys.register_pgp_key(ctx, token, user_gpg.gpg.export_keys(fp))
    published = pgp_keys.exchange_public_key(ctx)
    imported = user_gpg.gpg.import_keys(published)
    assert imported.count == 1
    secret_text = "my withdrawal to bc1q... looks wrong"
    cipher = str(user_gpg.gpg.encrypt(secret_text, imported.fingerprints[0], always_trust=True))
    ticket_id = pgp_keys.submit_secure_ticket(ctx, token, cipher)
    with ctx.store.tx() as db:
        assert secret_text not in db.get(SecureTicket, ticket_id).ciphertext
    assert pgp_keys.read_secure_ticket(ctx, ticket_id) == secret_text
    pgp_keys.reply_to_ticket(ctx, ticket_id, "We checked it.\nAll fine.")
    reply = outbox(ctx, template="ticket_reply")[-1]
    assert reply.encrypted and "We checked it." in str(user_gpg.gpg.decrypt(reply.body))


def test_ticket_not_for_the_exchange_key_rejected(ctx, clock, server_keyring, user_gpg):
    totp, token, _ = enable_totp(ctx, clock)
    other = user_gpg.new_key("someone@example.com")
    cipher = str(user_gpg.gpg.encrypt("hello", other, always_trust=True))
    for bad in (cipher, "plain text", "-----BEGIN PGP MESSAGE-----\n" + "A" * 300_000):
        with pytest.raises(ValidationError) as err:
            pgp_keys.submit_secure_ticket(ctx, token, bad)
        assert err.value.field == "ciphertext"
    with ctx.store.tx() as db:
        assert db.scalars(select(SecureTicket)).all() == []
