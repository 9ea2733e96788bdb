"""A real signer process (`python -m ringfence.keys.signer_server`) given bad HTTP input: every answer is a
clear JSON error (never a 500, never a traceback), the 1 MiB cap holds however the body is sent, and only a
JSON object sent as JSON is read (what FastAPI's `body: dict[str, Any]` let through, nothing more)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import TOKEN, SignerProcs

AUTH = {"Authorization": f"Bearer {TOKEN}"}
POSTS = ["/v1/commit", "/v1/sign", "/v1/dkg/round1", "/v1/dkg/round2", "/v1/dkg/finish", "/v1/refresh/round1",
         "/v1/refresh/round2", "/v1/refresh/finish", "/v1/reshare/deal", "/v1/reshare/receive", "/v1/retire"]
FIELDS = ["key_id", "count", "scheme", "message", "nonce_id", "commitments", "approval", "request_id", "ciphersuite",
          "threshold", "participants", "transport_keys", "transport_proofs", "packages", "sealed", "actor", "quorum",
          "new_participants", "new_threshold", "old_public", "reason"]


@pytest.fixture(scope="module")
def signer(signer_procs: SignerProcs) -> Iterator[httpx.Client]:
    url = signer_procs.start(7)
    with httpx.Client(base_url=url, headers=AUTH, timeout=30) as client:
        yield client


def _clear_error(r: httpx.Response) -> dict:
    # (a ringfence error keeps its own status: a key this signer does not hold is RF_KEY_STORE, 500)
    assert r.status_code in (400, 404, 409, 413, 422) or r.headers["content-type"] == "application/json", (r.status_code, r.text[:500])
    body = r.json()
    assert body["code"].startswith("RF_") and body["message"], body
    assert "Traceback" not in r.text and TOKEN not in r.text
    return body


def test_a_body_over_the_cap_is_refused_with_or_without_a_content_length(signer: httpx.Client) -> None:
    big = json.dumps({"key_id": "k", "pad": "x" * (1 << 20)}).encode()
    r = signer.post("/v1/commit", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and _clear_error(r)["field"] == "body"

    def chunks() -> Iterator[bytes]:  # chunked transfer encoding: no content-length to check up front
        for i in range(0, len(big), 65536):
            yield big[i:i + 65536]

    r = signer.post("/v1/commit", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and _clear_error(r)["field"] == "body"
    # a small chunked body is read as any other
    r = signer.post("/v1/commit", content=iter([b'{"key_id": ', b'"nope"}']), headers={"content-type": "application/json"})
    assert r.status_code != 413 and _clear_error(r)


@pytest.mark.parametrize("raw", [b"", b"[]", b"[1, 2]", b'"key_id"', b"1", b"null", b"true", b"{", b"{'a': 1}",
                                 b'{"key_id": "k"} x', b"\xff\xfe", b"NaN", b"[" * 100_000 + b"]" * 100_000])
def test_a_body_that_is_not_one_json_object_is_a_422_naming_the_body(signer: httpx.Client, raw: bytes) -> None:
    r = signer.post("/v1/commit", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422 and _clear_error(r)["field"] == "body"


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
def test_a_json_object_sent_as_another_content_type_is_refused(signer: httpx.Client, content_type: str) -> None:
    r = signer.post("/v1/commit", content=b'{"key_id": "k", "count": 1}', headers={"content-type": content_type})
    assert r.status_code == 422 and _clear_error(r)["field"] == "body"


JSON = st.recursive(st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30)
                    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
                    max_leaves=12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(POSTS), body=st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), JSON, max_size=12))
def test_any_json_object_gets_a_clear_error_and_changes_nothing(signer: httpx.Client, path: str, body: dict) -> None:
    """The signer holds no key: every request names something it does not have, or a value it cannot take."""
    r = signer.post(path, json=body)
    _clear_error(r)
    assert signer.get("/v1/identity").status_code == 200


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(POSTS), body=st.fixed_dictionaries({name: JSON for name in FIELDS}))
def test_every_field_present_with_any_json_value_gets_a_clear_error(signer: httpx.Client, path: str, body: dict) -> None:
    """Every field a route reads is there, each of any JSON type: the wrong types are named, never a 500."""
    before = signer.get("/v1/identity").json()
    _clear_error(signer.post(path, json=body))
    assert signer.get("/v1/identity").json() == before


@pytest.fixture(scope="module")
def keyed(signer_procs: SignerProcs, signer: httpx.Client) -> httpx.Client:
    """Signers 7 and 8 holding one 2-of-2 key, "fz": the sign route then reads every field it is given."""
    from ringfence.keys import frost
    from ringfence.keys.coordinator import ThresholdCoordinator

    signer_procs.start(8)
    ThresholdCoordinator({i: signer_procs.url[i] for i in (7, 8)}, TOKEN).create_key("fz", frost.FROST_SECP256K1_SHA256.name, 2, [7, 8])
    return signer


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scheme=st.sampled_from(["frost-secp256k1-bip340", "taproot-keypath"]) | JSON, message=st.just("ab" * 32) | JSON,
       nonce_id=JSON, commitments=st.lists(st.dictionaries(st.sampled_from(["identifier", "hiding", "binding"]) | st.text(max_size=4),
                                                           JSON, max_size=4), max_size=3) | JSON,
       approval=JSON, request_id=JSON)
def test_a_sign_request_for_a_held_key_with_any_field_values_gets_a_clear_error(keyed: httpx.Client, scheme, message, nonce_id,
                                                                               commitments, approval, request_id) -> None:
    before = keyed.get("/v1/keys/fz").json()
    r = keyed.post("/v1/sign", json={"key_id": "fz", "scheme": scheme, "message": message, "nonce_id": nonce_id,
                                     "commitments": commitments, "approval": approval, "request_id": request_id})
    _clear_error(r)
    assert keyed.get("/v1/keys/fz").json() == before
