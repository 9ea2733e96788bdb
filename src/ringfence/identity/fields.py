"""Validation of user-supplied identity fields. Every error names the field and says what is allowed.

Limits: e-mail <= 254 chars, password 10..128 chars, labels <= 64 printable chars without markup
characters, anti-phishing code 4..20 letters/digits/-/_. Rejecting markup characters at the edge
means a stored label can never carry a script into a page or an e-mail.
"""

from __future__ import annotations

import functools
import ipaddress
import re

from ..errors import ValidationError

__all__ = [
    "normalize_email",
    "validate_label",
    "validate_anti_phishing_code",
    "validate_ip",
    "validate_user_agent",
    "EMAIL_MAX_CHARS",
    "PASSWORD_MIN_CHARS",
    "PASSWORD_MAX_CHARS",
]

EMAIL_MAX_CHARS = 254
PASSWORD_MIN_CHARS = 10
PASSWORD_MAX_CHARS = 128
LABEL_MAX_CHARS = 64
USER_AGENT_MAX_CHARS = 256

_EMAIL_RE = re.compile(r"^[A-Za-z0-9.!#$%*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$")
_LABEL_RE = re.compile(r"^[A-Za-z0-9 .,:_()\-]{1,64}$")
_APC_RE = re.compile(r"^[A-Za-z0-9_-]{4,20}$")


def normalize_email(email: object, *, field: str = "email") -> str:
    if not isinstance(email, str):
        raise ValidationError("must be a string", field=field)
    email = email.strip()
    if len(email) > EMAIL_MAX_CHARS:
        raise ValidationError(f"must be at most {EMAIL_MAX_CHARS} characters", field=field)
    if not _EMAIL_RE.fullmatch(email):
        raise ValidationError("must be an e-mail address like name@example.com", field=field)
    return email.lower()


def validate_label(label: object, *, field: str = "label") -> str:
    if not isinstance(label, str) or not _LABEL_RE.fullmatch(label):
        raise ValidationError(
            f"must be 1..{LABEL_MAX_CHARS} characters of letters, digits, spaces and . , : _ ( ) -", field=field
        )
    return label


def validate_anti_phishing_code(code: object, *, field: str = "anti_phishing_code") -> str:
    if not isinstance(code, str) or not _APC_RE.fullmatch(code):
        raise ValidationError("must be 4..20 letters, digits, '-' or '_'", field=field)
    return code


def validate_ip(ip: object, *, field: str = "ip") -> str:
    if not isinstance(ip, str) or len(ip) > 64:
        raise ValidationError("must be an IPv4 or IPv6 address", field=field)
    canonical = _canonical_ip(ip)
    if canonical is None:
        raise ValidationError("must be an IPv4 or IPv6 address", field=field)
    return canonical


@functools.lru_cache(maxsize=4096)
def _canonical_ip(ip: str) -> str | None:
    """The address's canonical text, or None when `ip` is not one (cached: every signed request asks)."""
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        return None


def validate_user_agent(user_agent: object, *, field: str = "user_agent") -> str:
    if not isinstance(user_agent, str):
        raise ValidationError("must be a string", field=field)
    # Truncate rather than reject: browsers send long agents; strip control characters.
    cleaned = "".join(ch for ch in user_agent if ch.isprintable())
    return cleaned[:USER_AGENT_MAX_CHARS]
