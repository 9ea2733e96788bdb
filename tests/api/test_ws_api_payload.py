"""Property: what `/ws-api/v3` verifies a signature over is byte for byte what ccxt signs.

ccxt pro signs `rawencode(keysort(params))` (JSON strings as they are, integers in decimal,
booleans `true`/`false`); the server rebuilds the payload from the parsed frame
(`WsApi.parse`, `param_text`, `signature_payload`). Any difference would refuse honest clients
(-1022) — or, worse, let two different requests share one signature. Pure functions: no server.
"""

import json

from ccxt.base.exchange import Exchange
from hypothesis import given, settings
from hypothesis import strategies as st

from ringfence.api.ws_api import WsApi, param_text, signature_payload

#: a parameter's name; never `signature`, which is the signature itself, not a signed parameter (hypothesis
#: draws string constants from the code under test, so it did try `{"signature": ""}`: ccxt signs that as
#: "signature=", the server rightly leaves it out)
NAMES = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="&="), min_size=1,
                max_size=12).filter(lambda name: name != "signature")
VALUES = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.booleans(),
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(NAMES, VALUES, max_size=12))
def test_server_payload_equals_what_ccxt_signs(params):
    frame = json.dumps({"id": "1", "method": "order.place", "params": params})
    _, _, parsed = WsApi.parse(frame)
    texts = {k: param_text(k, v) for k, v in parsed.items()}
    assert signature_payload(dict(texts, signature="x")) == Exchange.rawencode(Exchange.keysort(params)).encode()


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(NAMES, st.text(alphabet="0123456789.", min_size=1, max_size=12), min_size=1, max_size=6))
def test_decimal_literals_are_signed_as_written(params):
    """A price sent as a JSON number is read and signed as its literal text, never through a float."""
    body = ",".join(f"{json.dumps(k)}:{v}" for k, v in params.items() if v.count(".") <= 1 and v[0] != "." and v[-1] != "."
                    and (v == "0" or not v.startswith("0") or v.startswith("0.")))
    _, _, parsed = WsApi.parse('{"id":1,"method":"ping","params":{' + body + "}}")
    for k, v in parsed.items():
        assert param_text(k, v) == params[k]
