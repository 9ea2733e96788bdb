"""A gateway's taught keys (api/relay.py `_GatewayKeys`), without processes: what it claims is exactly
what verifies with the key as taught at the generation it last heard, and nothing after the
generation moves on until it is taught again. The engine's side (a claim believed only at its
current generation) is driven through real gateways in test_gateways.py."""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import quote

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from ringfence.api import relay

KEY = "k" * 64
SECRET = bytes(range(32))
QUERY = b"symbol=BTCUSDT&side=BUY&type=LIMIT&timeInForce=IOC&quantity=0.001&price=60000.00&timestamp=1700000000000"


def hmac_signed(secret: bytes, query: bytes) -> bytes:
    return query + b"&signature=" + hmac.new(secret, query, hashlib.sha256).hexdigest().encode()


def taught(generation: list[int] = [1, 7]) -> relay._GatewayKeys:  # noqa: B006 (read only)
    keys = relay._GatewayKeys()
    keys.heard(relay.GEN, generation)
    keys.heard(relay.KEY, [KEY, generation, "hmac", SECRET])
    return keys


def test_a_taught_hmac_key_is_checked_and_a_wrong_signature_is_left_to_the_engine():
    keys = taught()
    assert keys.check(KEY, hmac_signed(SECRET, QUERY), b"") == [KEY, hmac_signed(SECRET, QUERY).rsplit(b"=", 1)[1].decode(), [1, 7]]
    # the signature over the body as well as the query (Binance: query + body, in that order)
    body = b"newClientOrderId=abc"
    signed = hmac.new(SECRET, QUERY + body, hashlib.sha256).hexdigest()
    assert keys.check(KEY, QUERY, body + b"&signature=" + signed.encode()) is not None
    assert keys.check(KEY, hmac_signed(b"x" * 32, QUERY), b"") is None  # another secret
    assert keys.check(KEY, hmac_signed(SECRET, QUERY).replace(b"60000", b"60001"), b"") is None  # other bytes
    assert keys.check(KEY, QUERY, b"") is None  # no signature
    assert keys.check("j" * 64, hmac_signed(SECRET, QUERY), b"") is None  # a key it was not taught
    assert keys.check(KEY, hmac_signed(SECRET, QUERY) + b"&signature=" + b"0" * 64, b"") is None  # two signatures
    assert keys.check(KEY, hmac_signed(SECRET, QUERY), "é".encode()) is None  # not ASCII


def test_a_new_generation_forgets_the_keys_and_a_key_taught_at_an_old_one_is_not_kept():
    keys = taught([1, 7])
    keys.heard(relay.GEN, [2, 7])  # e.g. a key revoked: the engine moved on
    assert keys.check(KEY, hmac_signed(SECRET, QUERY), b"") is None and not keys.keys
    keys.heard(relay.KEY, [KEY, [1, 7], "hmac", SECRET])  # taught before the change, arriving after it
    assert keys.check(KEY, hmac_signed(SECRET, QUERY), b"") is None
    keys.heard(relay.KEY, [KEY, [2, 7], "hmac", SECRET])
    assert keys.check(KEY, hmac_signed(SECRET, QUERY), b"")[2] == [2, 7]
    keys.heard(relay.GEN, [2, 7])  # the same generation again: nothing forgotten
    assert keys.check(KEY, hmac_signed(SECRET, QUERY), b"") is not None


def test_an_ed25519_key_is_checked_with_its_public_key():
    private = Ed25519PrivateKey.generate()
    public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    keys = relay._GatewayKeys()
    keys.heard(relay.GEN, [0, 1])
    keys.heard(relay.KEY, [KEY, [0, 1], "ed25519", public])
    sig = base64.b64encode(private.sign(QUERY)).decode()
    assert keys.check(KEY, QUERY + b"&signature=" + quote(sig, safe="").encode(), b"") == [KEY, sig, [0, 1]]
    other = base64.b64encode(Ed25519PrivateKey.generate().sign(QUERY)).decode()
    assert keys.check(KEY, QUERY + b"&signature=" + quote(other, safe="").encode(), b"") is None


@settings(max_examples=200, deadline=None)
@given(query=st.binary(max_size=200).map(lambda b: b.hex().encode()), secret=st.binary(min_size=1, max_size=64),
       tamper=st.booleans(), generation=st.lists(st.integers(0, 3), min_size=2, max_size=2))
def test_a_claim_is_made_exactly_when_the_signature_verifies_with_the_current_key(query, secret, tamper, generation):
    keys = taught([1, 1])
    keys.heard(relay.GEN, generation)
    keys.heard(relay.KEY, [KEY, generation, "hmac", SECRET])
    signed = hmac_signed(secret if tamper else SECRET, b"a=" + query)
    claim = keys.check(KEY, signed, b"")
    # (HMAC pads short keys with zeros: another secret can sign alike, and is then as good)
    valid = signed == hmac_signed(SECRET, b"a=" + query)
    assert (claim is not None) == valid
    if claim is not None:
        assert claim[0] == KEY and claim[2] == generation


@settings(max_examples=1000, deadline=None)
@given(text=st.one_of(st.text(alphabet="ab=&%+;2 0é", max_size=60),
                      st.lists(st.sampled_from(["a=1", "", "b", "=", "c=", "d=%41", "e=+"]), max_size=80).map("&".join)))
def test_the_engines_parameter_split_gives_parse_qsls_pairs(text):
    """api/gateway.py `_parse_qsl` (a fast path the engine uses for every request) is `parse_qsl` as
    the engine calls it: the same pairs, and the same refusal of more than MAX_PARAMS + 1 fields."""
    from urllib.parse import parse_qsl

    from ringfence.api.gateway import MAX_PARAMS, _parse_qsl

    def outcome(parse):
        try:
            return parse()
        except ValueError:
            return "too many fields"

    assert outcome(lambda: _parse_qsl(text)) == outcome(
        lambda: parse_qsl(text, keep_blank_values=True, strict_parsing=False, max_num_fields=MAX_PARAMS + 1))
