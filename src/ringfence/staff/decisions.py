"""Signed staff decisions: what a staff member signs, and how it travels.

A decision is signed with the staff member's Ed25519 key over a canonical, domain-separated
encoding: the JSON array `["ringfence/staff-decision/v1", action, subject, staff_id, nonce,
expires_ns]` with no whitespace and ASCII escapes, so the same decision is the same bytes on every
machine. `action` names what is decided (`halt.lift`, `withdrawal.approve`...; a signature for one
action never verifies for another) and `subject` holds exactly the fields of the command it
authorises (halt id, reason and the raise's sequence number; withdrawal id and role...). `nonce`
(16-64 lowercase hex characters, random per signature) and `expires_ns` (sequencer time) make each
signature usable once and only until it expires: the engine remembers every nonce until its
expiry and refuses a second use.

This file is used on both sides: the engine verifies (`decision_message`), staff tools sign
(`sign_decision`, `StaffKey`) and pass approvals around as text tokens
(`STAFF:NONCE:EXPIRES_NS:SIGNATURE`).
"""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path
from typing import Any, Sequence

import msgspec
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..errors import ValidationError
from ..owned import read_own_file

__all__ = [
    "DOMAIN",
    "ROLES",
    "OPERATOR",
    "APPROVER",
    "ANALYST",
    "POLICY_ADMIN",
    "SIGNER",
    "StaffSignature",
    "StaffEntry",
    "decision_message",
    "sign_decision",
    "StaffKey",
    "format_approval",
    "parse_approval",
    "write_key_file",
    "read_key_file",
]

DOMAIN = "ringfence/staff-decision/v1"
OPERATOR, APPROVER, ANALYST, POLICY_ADMIN, SIGNER = "operator", "approver", "analyst", "policy_admin", "signer"
#: Every staff role. A role grants one kind of decision; none grants everything.
ROLES = (OPERATOR, APPROVER, ANALYST, POLICY_ADMIN, SIGNER)
NONCE_RE = re.compile(r"[0-9a-f]{16,64}")
HEX_SIG_RE = re.compile(r"[0-9a-f]{128}")


class StaffSignature(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True, gc=False):
    """One staff member's signature over one decision (see the module docstring)."""

    staff_id: str
    nonce: str
    expires_ns: int
    signature: str


class StaffEntry(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True, gc=False):
    """A staff member as registered: id, roles, Ed25519 public key (64 lowercase hex characters), and the
    customer accounts the person holds at this exchange (declared at registration, signed by the quorum
    with the rest): never-the-initiator refuses their decisions on those accounts' withdrawals and
    deposits. Older journals (entries of three items) decode with no accounts; the signed subject of an
    entry without accounts is the three items it always was, so their signatures still verify."""

    staff_id: str
    roles: list[str]
    public_key: str
    accounts: list[str] = []


def _plain(value: Any) -> Any:
    if isinstance(value, StaffEntry):
        plain = [value.staff_id, sorted(value.roles), value.public_key]
        return plain + [sorted(value.accounts)] if value.accounts else plain
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"a decision subject holds only str, int and lists, not {type(value).__name__}")
    return value


def decision_message(action: str, subject: Sequence[Any], staff_id: str, nonce: str, expires_ns: int) -> bytes:
    """The exact bytes a staff member signs for one decision."""
    return json.dumps([DOMAIN, action, _plain(list(subject)), staff_id, nonce, expires_ns],
                      separators=(",", ":"), ensure_ascii=True).encode()


def sign_decision(key: Ed25519PrivateKey, staff_id: str, action: str, subject: Sequence[Any], expires_ns: int,
                  nonce: str | None = None) -> StaffSignature:
    nonce = nonce or secrets.token_hex(16)
    sig = key.sign(decision_message(action, subject, staff_id, nonce, expires_ns)).hex()
    return StaffSignature(staff_id, nonce, expires_ns, sig)


class StaffKey:
    """A staff member's signing key (held by the member: a key file, never the server)."""

    def __init__(self, staff_id: str, private_key: Ed25519PrivateKey) -> None:
        self.staff_id = staff_id
        self.private_key = private_key

    @classmethod
    def generate(cls, staff_id: str) -> "StaffKey":
        return cls(staff_id, Ed25519PrivateKey.generate())

    @classmethod
    def from_seed_hex(cls, staff_id: str, seed_hex: str) -> "StaffKey":
        try:
            return cls(staff_id, Ed25519PrivateKey.from_private_bytes(bytes.fromhex(seed_hex)))
        except ValueError:
            raise ValidationError("a staff key is a 32-byte Ed25519 seed as 64 hex characters", field="key") from None

    @property
    def public_hex(self) -> str:
        return self.private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()

    @property
    def seed_hex(self) -> str:
        return self.private_key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                              serialization.NoEncryption()).hex()

    def entry(self, roles: Sequence[str], accounts: Sequence[str] = ()) -> StaffEntry:
        return StaffEntry(self.staff_id, sorted(set(roles)), self.public_hex, sorted(set(accounts)))

    def sign(self, action: str, subject: Sequence[Any], expires_ns: int, nonce: str | None = None) -> StaffSignature:
        return sign_decision(self.private_key, self.staff_id, action, subject, expires_ns, nonce)

    def sign_bytes(self, message: bytes) -> str:
        return self.private_key.sign(message).hex()


def format_approval(sig: StaffSignature) -> str:
    """An approval as one text token, to hand to whoever submits the decision."""
    return f"{sig.staff_id}:{sig.nonce}:{sig.expires_ns}:{sig.signature}"


#: a staff id, as the register takes it (staff/state.py) and an approval names it: anything else is junk
STAFF_ID_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")


def parse_approval(token: str, field: str = "approval") -> StaffSignature:
    # ASCII only, the staff id as the register takes it: a token of 3,900 emoji as its staff id made a
    # promotion answer quoting it too large for the bucket (intruder review of session 16, F1)
    if not token.isascii():
        raise ValidationError("an approval is ASCII: STAFF_ID:NONCE:EXPIRES_NS:SIGNATURE", field=field)
    parts = token.strip().split(":")
    # EXPIRES_NS: nanoseconds, at most 19 digits (int() of a 5000-digit one raised a bare ValueError: intruder review, F1)
    if len(parts) != 4 or not parts[0] or not (parts[2].isascii() and parts[2].isdigit() and len(parts[2]) <= 19):
        raise ValidationError("an approval is STAFF_ID:NONCE:EXPIRES_NS:SIGNATURE (EXPIRES_NS: at most 19 digits)",
                              field=field)
    staff_id, nonce, expires, sig = parts
    if not STAFF_ID_RE.fullmatch(staff_id):
        raise ValidationError("the staff id of an approval is 1-64 characters of a-z 0-9 _ . -, starting with a letter "
                              "or digit", field=field)
    if not NONCE_RE.fullmatch(nonce) or not HEX_SIG_RE.fullmatch(sig.lower()):
        raise ValidationError("nonce is 16-64 hex characters and the signature 128 hex characters", field=field)
    return StaffSignature(staff_id, nonce, int(expires), sig.lower())


def write_key_file(path: Path, key: StaffKey) -> None:
    """Write `{"staff_id", "private_key": seed hex, "public_key"}` with mode 0600 (never wider), as a new
    file of this user's (nodekey.write_private: a `.tmp` another user made beforehand, or a symbolic link
    by that name, was written through and renamed into place, still theirs)."""
    from ..nodekey import write_private

    text = json.dumps({"staff_id": key.staff_id, "private_key": key.seed_hex, "public_key": key.public_hex}, indent=2)
    write_private(path, (text + "\n").encode())


def read_key_file(path: Path, staff_id: str | None = None) -> StaffKey:
    """Read a key file written by `write_key_file`; a file holding only a 64-hex seed needs `staff_id`.
    It must be a file of this user's, not a symbolic link, in a folder no other user owns or may write
    (owned.read_own_file: a key file another user planted, or could swap, is refused; intruder review of
    session 23, F2)."""
    try:
        text = read_own_file(path, "--key", "staff key file", private=False).decode().strip()
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else err
        raise ValidationError(f"cannot read the staff key file {path}: {reason}", field="key") from None
    if re.fullmatch(r"[0-9a-fA-F]{64}", text):
        if not staff_id:
            raise ValidationError("this key file holds a bare seed: name its staff id", field="key")
        return StaffKey.from_seed_hex(staff_id, text.lower())
    try:
        raw = json.loads(text)
    except ValueError:
        raise ValidationError(f"{path} is not a staff key file (JSON with staff_id and private_key)", field="key") from None
    if isinstance(raw, dict) and isinstance(raw.get("staff"), list):  # DIR/demo-staff.json: one entry per member
        entries = [e for e in raw["staff"] if isinstance(e, dict) and (staff_id is None or e.get("staff_id") == staff_id)]
        if len(entries) != 1:
            ids = [e.get("staff_id") for e in raw["staff"] if isinstance(e, dict)]
            raise ValidationError(f"{path} holds the keys of {ids}: choose one as --key {path}#STAFF_ID", field="key")
        raw = entries[0]
    if not isinstance(raw, dict) or not isinstance(raw.get("staff_id"), str) or not isinstance(raw.get("private_key"), str):
        raise ValidationError("a staff key file holds staff_id and private_key (64 hex characters)", field="key")
    if staff_id and staff_id != raw["staff_id"]:
        raise ValidationError(f"{path} is the key of {raw['staff_id']!r}, not {staff_id!r}", field="key")
    return StaffKey.from_seed_hex(raw["staff_id"], raw["private_key"])
