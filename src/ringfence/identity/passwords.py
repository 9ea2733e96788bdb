"""Password hashing (argon2id) and the sign-up password policy.

Invariants: only argon2id hashes are stored; the policy rejects passwords shorter than 10 or longer
than 128 characters (the cap bounds hashing cost), passwords on the shipped common/breached list
(case-insensitive, also with trailing digits/symbols stripped), and passwords containing the e-mail's
local part. Verification runs a full argon2 computation even for unknown users (`verify_dummy`) so
response time does not reveal whether an e-mail is registered.
"""

from __future__ import annotations

import functools
import re
from importlib import resources

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from ..errors import ValidationError
from .fields import PASSWORD_MAX_CHARS, PASSWORD_MIN_CHARS

__all__ = ["PasswordPolicy", "check_password_policy", "is_common_password"]

_TRAILING_JUNK = re.compile(r"[\d!@#$%^&*.?_\-]+$")


@functools.lru_cache(maxsize=1)
def _common_passwords() -> frozenset[str]:
    text = resources.files("ringfence.identity").joinpath("data/common_passwords.txt").read_text("utf-8")
    return frozenset(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))


def is_common_password(password: str) -> bool:
    lowered = password.lower()
    common = _common_passwords()
    return lowered in common or _TRAILING_JUNK.sub("", lowered) in common


def check_password_policy(password: object, *, email: str | None = None, field: str = "password") -> str:
    if not isinstance(password, str):
        raise ValidationError("must be a string", field=field)
    if len(password) < PASSWORD_MIN_CHARS:
        raise ValidationError(f"must be at least {PASSWORD_MIN_CHARS} characters", field=field)
    if len(password) > PASSWORD_MAX_CHARS:
        raise ValidationError(f"must be at most {PASSWORD_MAX_CHARS} characters", field=field)
    if any(not ch.isprintable() for ch in password):
        raise ValidationError("must not contain control characters", field=field)
    if is_common_password(password):
        raise ValidationError("is on the list of common or breached passwords; choose another", field=field)
    if email:
        local = email.split("@", 1)[0].lower()
        if len(local) >= 4 and local in password.lower():
            raise ValidationError("must not contain your e-mail address", field=field)
    return password


class PasswordPolicy:
    """argon2id hasher. Defaults follow RFC 9106's second recommendation (64 MiB, t=3, p=4)."""

    def __init__(self, *, memory_kib: int = 65536, time_cost: int = 3, parallelism: int = 4) -> None:
        self._hasher = PasswordHasher(
            time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism, type=Type.ID
        )
        self._dummy_hash = self._hasher.hash("ringfence-dummy-password-for-timing")

    def hash(self, password: str) -> str:
        return self._hasher.hash(password)

    def verify(self, password_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def verify_dummy(self, password: str) -> None:
        self.verify(self._dummy_hash, password)

    def needs_rehash(self, password_hash: str) -> bool:
        return self._hasher.check_needs_rehash(password_hash)
