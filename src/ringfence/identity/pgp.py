"""PGP through Debian's GnuPG and python-gnupg: user public keys, encryption to them, secure tickets.

Invariants: a key is accepted only if GnuPG imports exactly one public key from the text (python-gnupg
does not raise on a bad import, so `count`/`fingerprints` are checked), the text holds no private key,
and a test encryption to it succeeds. Armored input is capped at 64 KiB (keys) and 256 KiB (tickets).
The keyring lives in its own GNUPGHOME (keep the path short: gpg-agent socket paths are limited);
`Keyring.close()` stops the agent.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import gnupg

from ..errors import ConfigError, ValidationError

__all__ = ["Keyring", "PGP_KEY_MAX_BYTES", "PGP_MESSAGE_MAX_BYTES"]

PGP_KEY_MAX_BYTES = 64 * 1024
PGP_MESSAGE_MAX_BYTES = 256 * 1024


class Keyring:
    def __init__(self, gnupg_home: str | os.PathLike[str]) -> None:
        if shutil.which("gpg") is None:
            raise ConfigError("GnuPG is not installed; run `make setup` (installs Debian's gnupg)", field="gpg")
        self.home = Path(gnupg_home)
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.home, 0o700)
        self.gpg = gnupg.GPG(gnupghome=str(self.home))
        self.gpg.encoding = "utf-8"

    def import_public_key(self, armored: object, *, field: str = "pgp_public_key") -> str:
        """Import one public key; return its fingerprint or raise ValidationError naming `field`."""
        if not isinstance(armored, str) or not armored.strip():
            raise ValidationError("must be an ASCII-armored PGP public key", field=field)
        if len(armored.encode()) > PGP_KEY_MAX_BYTES:
            raise ValidationError(f"must be at most {PGP_KEY_MAX_BYTES} bytes", field=field)
        if "PRIVATE KEY BLOCK" in armored:
            raise ValidationError("is a private key; paste only your PUBLIC key and keep the private key secret", field=field)
        if "-----BEGIN PGP PUBLIC KEY BLOCK-----" not in armored:
            raise ValidationError("must be an ASCII-armored PGP public key (-----BEGIN PGP PUBLIC KEY BLOCK-----)", field=field)
        scan = self.gpg.scan_keys_mem(armored)
        if len(scan) != 1 or scan[0].get("type") != "pub":
            raise ValidationError("must contain exactly one valid PGP public key", field=field)
        result = self.gpg.import_keys(armored)
        fingerprints = [fp for fp in (result.fingerprints or []) if fp]
        if result.count != 1 or len(set(fingerprints)) != 1:
            raise ValidationError("GnuPG could not import it as one valid public key", field=field)
        fingerprint = fingerprints[0]
        probe = self.gpg.encrypt("probe", fingerprint, always_trust=True, armor=True)
        if not probe.ok:
            raise ValidationError("has no usable encryption subkey (it may be expired or revoked)", field=field)
        return fingerprint

    def encrypt(self, plaintext: str, fingerprint: str) -> str:
        result = self.gpg.encrypt(plaintext, fingerprint, always_trust=True, armor=True)
        if not result.ok:
            raise ConfigError(f"GnuPG could not encrypt to the registered key: {result.status}")
        return str(result)

    def check_message(self, armored: object, *, field: str) -> str:
        if not isinstance(armored, str) or "-----BEGIN PGP MESSAGE-----" not in armored:
            raise ValidationError("must be an ASCII-armored PGP message (-----BEGIN PGP MESSAGE-----)", field=field)
        if len(armored.encode()) > PGP_MESSAGE_MAX_BYTES:
            raise ValidationError(f"must be at most {PGP_MESSAGE_MAX_BYTES} bytes", field=field)
        return armored

    def decrypt(self, armored: str, *, field: str = "ciphertext") -> str:
        result = self.gpg.decrypt(armored)
        if not result.ok:
            raise ValidationError("could not be decrypted with the exchange's key", field=field)
        return str(result)

    def recipients_of(self, armored: str) -> list[str]:
        """Key ids a message is encrypted to (without decrypting it)."""
        info = self.gpg.get_recipients(armored)
        return list(info or [])

    def export_public_key(self, fingerprint: str) -> str:
        return self.gpg.export_keys(fingerprint)

    def close(self) -> None:
        subprocess.run(["gpgconf", "--homedir", str(self.home), "--kill", "gpg-agent"], check=False, capture_output=True)
