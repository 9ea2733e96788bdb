"""Staff request nonces live in memory: a restart must not reopen a replay window, and a full nonce
store refuses new requests rather than forgetting a nonce that is still inside the window."""

from __future__ import annotations

import pytest

from ringfence.errors import AuthenticationFailed
from ringfence.staff import requests as staff_requests
from ringfence.staff.decisions import StaffKey
from ringfence.staff.requests import RequestVerifier, request_message

KEY = StaffKey.generate("ada")


def signed(ts: int, nonce: str) -> dict[str, str]:
    return {"x-rf-staff": "ada", "x-rf-timestamp": str(ts), "x-rf-nonce": nonce,
            "x-rf-signature": KEY.sign_bytes(request_message("GET", "/admin/v1/staff", "", ts, nonce, b""))}


def verify(verifier: RequestVerifier, headers: dict[str, str]) -> str:
    return verifier.verify(headers, "GET", "/admin/v1/staff", "", b"", lambda _: KEY.public_hex)


def test_a_request_seen_before_a_restart_is_refused_after_it() -> None:
    now = [1_800_000_000_000]
    before = RequestVerifier(clock_ms=lambda: now[0])
    request = signed(now[0], "aa" * 16)
    assert verify(before, request) == "ada"
    with pytest.raises(AuthenticationFailed, match="already received"):
        verify(before, request)
    now[0] += 5_000  # the process restarts 5 s later: its nonce memory is empty, the window is not over
    after = RequestVerifier(clock_ms=lambda: now[0])
    with pytest.raises(AuthenticationFailed, match="before the server started") as err:
        verify(after, request)
    assert err.value.field == "X-RF-Timestamp"
    assert verify(after, signed(now[0], "bb" * 16)) == "ada"  # signed again: accepted


def test_a_full_nonce_store_refuses_instead_of_forgetting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(staff_requests, "MAX_NONCES", 3)
    now = [1_800_000_000_000]
    verifier = RequestVerifier(clock_ms=lambda: now[0])
    first = signed(now[0], "01" * 16)
    for n, headers in enumerate([first, signed(now[0], "02" * 16), signed(now[0], "03" * 16)]):
        assert verify(verifier, headers) == "ada", n
    with pytest.raises(AuthenticationFailed, match="try again shortly"):
        verify(verifier, signed(now[0], "04" * 16))
    with pytest.raises(AuthenticationFailed, match="already received"):  # the oldest nonce is still remembered
        verify(verifier, first)
    now[0] += 2 * verifier.window_ms + 1  # the window has passed: old nonces go, new requests are served
    assert verify(verifier, signed(now[0], "05" * 16)) == "ada"
