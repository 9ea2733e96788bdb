"""Numbers in staff requests and approval tokens are ASCII digits only: `"²".isdigit()` is true and
`int("١٢")` is 12, so a Unicode digit must be refused as malformed (401 / a named field), never
read as a number or turned into a 500."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from ringfence.errors import AuthenticationFailed, ValidationError
from ringfence.staff.decisions import StaffKey, parse_approval
from ringfence.staff.requests import RequestVerifier, signed_headers

UNICODE_DIGITS = ["²", "١٢", "１２", "߃", "𝟙"]


def _headers(key: StaffKey, ts_text: str) -> dict[str, str]:
    good = signed_headers(key, "GET", "/admin/v1/staff", "", b"")
    return {k.lower(): v for k, v in good.items()} | {"x-rf-timestamp": ts_text}


@pytest.mark.parametrize("ts_text", UNICODE_DIGITS)
def test_a_unicode_digit_timestamp_is_refused_as_malformed(ts_text: str) -> None:
    key = StaffKey.generate("ada")
    verifier = RequestVerifier()
    with pytest.raises(AuthenticationFailed) as err:
        verifier.verify(_headers(key, ts_text), "GET", "/admin/v1/staff", "", b"", lambda _: key.public_hex)
    assert "X-RF-Timestamp" in str(err.value)
    # the same request with its real (ASCII) timestamp is accepted: the refusal is the digit's
    good = signed_headers(key, "GET", "/admin/v1/staff", "", b"")
    assert verifier.verify({k.lower(): v for k, v in good.items()}, "GET", "/admin/v1/staff", "", b"",
                           lambda _: key.public_hex) == "ada"


@given(st.text(alphabet=st.characters(categories=["Nd", "No"]), min_size=1, max_size=6).filter(lambda t: not t.isascii()))
def test_an_approval_token_with_non_ascii_digits_is_a_validation_error(digits: str) -> None:
    token = f"cy:{'ab' * 8}:{digits}:{'cd' * 64}"
    with pytest.raises(ValidationError) as err:
        parse_approval(token)
    assert err.value.field == "approval"
