"""The operator console's client: signed requests to a live node's admin API (`/admin/v1`).

`AdminClient(url, key)` signs every request with the caller's staff key (`staff/requests.py`);
the decisions the requests carry are signed separately (`StaffKey.sign`), by the caller and by
whoever else approved (their tokens). Used by `ringfence staff|review|halts|policy` and by tests.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from ..cli_paths import DEFAULT_URL  # (re-exported: defined there so --url's default does not import httpx)
from ..errors import RingfenceError, ValidationError
from .decisions import StaffKey, read_key_file
from .requests import signed_headers

__all__ = ["AdminClient", "AdminError", "load_key", "open_staff_token", "TokenEd25519Key", "DEFAULT_URL"]

PREFIX = "/admin/v1"


class AdminError(RingfenceError):
    """The admin API answered with an error (its code, status and message are kept)."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(str(body.get("message", body)), field=body.get("field"))
        self.code = str(body.get("code", "RF_ERROR"))
        self.http_status = status


#: Where an HSM-held staff key's token PIN comes from (never argv: argv is visible in `ps`).
HSM_PIN_ENV = "RINGFENCE_STAFF_HSM_PIN"
#: The PKCS#11 library (SoftHSM2 unless set; its tokens are found through SOFTHSM2_CONF).
HSM_LIBRARY_ENV = "RINGFENCE_PKCS11_LIBRARY"


class TokenEd25519Key:
    """An Ed25519 key inside a PKCS#11 token, shaped like the `Ed25519PrivateKey` a `StaffKey` holds:
    `sign` runs in the token; nothing can export it (`staff keygen --hsm` made it non-extractable)."""

    def __init__(self, token: Any, label: str) -> None:
        self.token, self.label = token, label
        self._public = token.public_key(label)
        if len(self._public) != 32:
            raise ValidationError(f"{label!r} in token {token.label!r} is not an Ed25519 key", field="--key")

    def sign(self, data: bytes) -> bytes:
        return bytes(self.token.raw_sign(self.label, data, "ed25519"))

    def public_key(self) -> Any:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        return Ed25519PublicKey.from_public_bytes(self._public)

    def private_bytes(self, *args: Any) -> bytes:
        raise ValidationError("a staff key in an HSM cannot be exported", field="--key")


def open_staff_token(token_label: str) -> Any:
    """The PKCS#11 token holding staff keys, logged in with the PIN from RINGFENCE_STAFF_HSM_PIN."""
    from ..keys.hsm import SOFTHSM_LIBRARY, HsmToken

    pin = os.environ.get(HSM_PIN_ENV, "")
    if not pin:
        raise ValidationError(f"set {HSM_PIN_ENV} to the token's user PIN (it is never taken from the command line)",
                              field=HSM_PIN_ENV)
    return HsmToken(token_label, pin, library=os.environ.get(HSM_LIBRARY_ENV, SOFTHSM_LIBRARY))


def load_key(spec: str) -> StaffKey:
    """`FILE` (a staff key file), `FILE#STAFF_ID` (one member of DIR/demo-staff.json), or
    `pkcs11:TOKEN/LABEL#STAFF_ID` (an Ed25519 key in a PKCS#11 token; PIN from RINGFENCE_STAFF_HSM_PIN)."""
    if spec.startswith("pkcs11:"):
        where, _, staff_id = spec.removeprefix("pkcs11:").partition("#")
        token_label, _, label = where.partition("/")
        if not token_label or not label or not staff_id:
            raise ValidationError("an HSM key is pkcs11:TOKEN/LABEL#STAFF_ID", field="--key")
        return StaffKey(staff_id, TokenEd25519Key(open_staff_token(token_label), label))  # type: ignore[arg-type]
    file, _, staff_id = spec.partition("#")
    path = Path(file)
    if not path.is_file():
        raise ValidationError(f"no key file {file}", field="--key")
    return read_key_file(path, staff_id or None)


class AdminClient:
    def __init__(self, url: str, key: StaffKey, *, timeout_s: float = 10.0) -> None:  # float-ok: a timeout
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValidationError("--url must be http(s)://HOST:PORT", field="--url")
        self.base = f"{parts.scheme}://{parts.netloc}"
        self.key = key
        self.timeout_s = timeout_s
        self.http = httpx.Client(timeout=timeout_s)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "AdminClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, body: dict[str, Any] | None = None, query: str = "") -> Any:
        full = PREFIX + path
        raw = json.dumps(body, separators=(",", ":")).encode() if body is not None else b""
        headers = signed_headers(self.key, method, full, query, raw)  # the query string is signed too
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            response = self.http.request(method, self.base + full + (f"?{query}" if query else ""), content=raw, headers=headers)
        except httpx.ReadTimeout:  # sent and not answered: not "cannot reach" (it may well be done, or still doing it)
            raise RingfenceError(f"{self.base} did not answer within {self.timeout_s} s; what was asked may still be done: "
                                 "look before asking again") from None
        except httpx.HTTPError as err:
            raise RingfenceError(f"cannot reach {self.base}: {err}") from None
        try:
            payload = response.json()
        except ValueError:
            payload = {"message": response.text[:500]}
        if response.status_code >= 400:
            raise AdminError(response.status_code, payload if isinstance(payload, dict) else {"message": str(payload)})
        return payload

    def get(self, path: str, query: str = "") -> Any:
        return self.request("GET", path, query=query)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("POST", path, body)
