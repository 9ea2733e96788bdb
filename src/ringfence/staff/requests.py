"""Authenticating a staff member's request to the admin API by an Ed25519 signature over it.

A request carries four headers:

* `X-RF-Staff` — the staff id;
* `X-RF-Timestamp` — milliseconds since the epoch, within `WINDOW_MS` of the server's clock;
* `X-RF-Nonce` — 16-64 lowercase hex characters, never seen before within the window;
* `X-RF-Signature` — Ed25519 (hex) over `request_message(...)`: the domain, method, path, query
  string, timestamp, nonce and SHA-256 of the body, one per line.

This authenticates who submits a request and that nobody changed or replayed it. It does not
replace the decision signatures inside the commands a request carries: those are verified by the
engine against the staff register, with their own nonces and expiry.
"""

from __future__ import annotations

import collections
import hashlib
import secrets
import threading
import time

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..errors import AuthenticationFailed
from .decisions import HEX_SIG_RE, NONCE_RE, StaffKey

__all__ = ["REQUEST_DOMAIN", "WINDOW_MS", "request_message", "signed_headers", "RequestVerifier"]

REQUEST_DOMAIN = "ringfence/admin-request/v1"
WINDOW_MS = 60_000
MAX_NONCES = 100_000


def request_message(method: str, path: str, query: str, timestamp_ms: int, nonce: str, body: bytes) -> bytes:
    return "\n".join([REQUEST_DOMAIN, method.upper(), path, query, str(timestamp_ms), nonce,
                      hashlib.sha256(body).hexdigest()]).encode()


def signed_headers(key: StaffKey, method: str, path: str, query: str, body: bytes) -> dict[str, str]:
    ts = time.time_ns() // 1_000_000
    nonce = secrets.token_hex(16)
    return {"X-RF-Staff": key.staff_id, "X-RF-Timestamp": str(ts), "X-RF-Nonce": nonce,
            "X-RF-Signature": key.sign_bytes(request_message(method, path, query, ts, nonce, body))}


class RequestVerifier:
    """Checks request signatures; remembers nonces for the window (bounded), thread-safe.

    The nonces live in memory, so a request signed before this process started is refused (its nonce
    may have been seen by the previous process): a restart never reopens a replay window. When the
    store is full of nonces still inside the window, new requests are refused rather than a live
    nonce forgotten."""

    def __init__(self, *, window_ms: int = WINDOW_MS, clock_ms: "collections.abc.Callable[[], int] | None" = None) -> None:
        self.window_ms = window_ms
        self.clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self.not_before_ms = self.clock_ms()
        self._seen: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._lock = threading.Lock()

    def verify(self, headers: dict[str, str], method: str, path: str, query: str, body: bytes,
               public_key_of: "collections.abc.Callable[[str], str | None]") -> str:
        """The staff id of a correctly signed, fresh request; raises `AuthenticationFailed` otherwise.

        `public_key_of(staff_id)` returns the active member's key (None if unknown or removed)."""
        staff_id = headers.get("x-rf-staff", "")
        ts_text, nonce, sig = headers.get("x-rf-timestamp", ""), headers.get("x-rf-nonce", ""), headers.get("x-rf-signature", "")
        if not staff_id or not (ts_text.isascii() and ts_text.isdigit()) or not NONCE_RE.fullmatch(nonce) or not HEX_SIG_RE.fullmatch(sig):
            raise AuthenticationFailed("staff requests carry X-RF-Staff, X-RF-Timestamp (ms), X-RF-Nonce (hex) and "
                                       "X-RF-Signature (Ed25519 hex)", field="X-RF-Signature")
        now = self.clock_ms()
        ts = int(ts_text)
        if abs(now - ts) > self.window_ms:
            raise AuthenticationFailed(f"X-RF-Timestamp is more than {self.window_ms // 1000} s from the server's clock",
                                       field="X-RF-Timestamp")
        if ts < self.not_before_ms:
            raise AuthenticationFailed("X-RF-Timestamp is from before the server started; sign the request again",
                                       field="X-RF-Timestamp")
        key_hex = public_key_of(staff_id)
        try:
            if key_hex is None:
                raise InvalidSignature
            Ed25519PublicKey.from_public_bytes(bytes.fromhex(key_hex)).verify(
                bytes.fromhex(sig), request_message(method, path, query, ts, nonce, body))
        except InvalidSignature:
            # one message for an unknown member and a bad signature: nothing to probe
            raise AuthenticationFailed("the request signature does not verify for an active staff member",
                                       field="X-RF-Signature") from None
        with self._lock:
            while self._seen and next(iter(self._seen.values())) < now - 2 * self.window_ms:
                self._seen.popitem(last=False)
            marker = f"{staff_id}/{nonce}"
            if marker in self._seen:
                raise AuthenticationFailed("this request was already received (a replay)", field="X-RF-Nonce")
            if len(self._seen) >= MAX_NONCES:
                raise AuthenticationFailed(f"more than {MAX_NONCES} staff requests in {2 * self.window_ms // 1000} s; "
                                           "try again shortly", field="X-RF-Nonce")
            self._seen[marker] = now
        return staff_id
