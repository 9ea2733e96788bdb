"""The canonical text of an API request's signature, without the identity service: `identity/api_keys.py`
(which re-exports it) and the gateway processes of `serve --gateways` (api/relay.py) use this one copy."""

from __future__ import annotations

import base64
import binascii

__all__ = ["ED25519_SIGNATURE_BASE64_CHARS", "HMAC_SIGNATURE_HEX_CHARS", "decode_signature"]

HMAC_SIGNATURE_HEX_CHARS = 64
ED25519_SIGNATURE_BASE64_CHARS = 88
_HEX = frozenset("0123456789abcdefABCDEF")


def decode_signature(kind: str, signature: str) -> bytes | None:
    """The signature's bytes, or None when `signature` is not the one canonical text for them.

    HMAC: exactly 64 hex digits (either case, as Binance accepts; `bytes.fromhex` alone would also
    skip whitespace). Ed25519: standard base64 of 64 bytes, padded, and canonical — re-encoding
    the bytes must give back the very text sent, so non-zero padding bits, the URL-safe alphabet,
    missing padding and embedded newlines are all refused. Whatever passes is what gets verified,
    and the replay guard keys on the signed payload, so no other spelling of an accepted request
    can run again.
    """
    if kind == "hmac":
        if len(signature) != HMAC_SIGNATURE_HEX_CHARS or not _HEX.issuperset(signature):
            return None
        return bytes.fromhex(signature)
    if kind == "ed25519":
        if len(signature) != ED25519_SIGNATURE_BASE64_CHARS or not signature.isascii():
            return None
        try:
            raw = base64.b64decode(signature, validate=True)
        except (binascii.Error, ValueError):
            return None
        if len(raw) != 64 or base64.b64encode(raw).decode() != signature:
            return None
        return raw
    return None
