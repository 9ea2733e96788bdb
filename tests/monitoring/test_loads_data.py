"""The scorer's JSON decoding (`monitoring.stream.loads_data`, msgspec with json.loads deciding what
msgspec refuses) gives exactly what `json.loads` gives, for any text: what the outbox wrote, and
anything else a row could hold (NaN, 1e400, lone surrogates, duplicate keys, garbage)."""

from __future__ import annotations

import json
import math

from hypothesis import given, settings, strategies as st

from ringfence.monitoring.stream import loads_data

_scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**130), max_value=2**130),
                     st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
_values = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(st.text(max_size=6), inner, max_size=4)), max_leaves=12)


def _same(a: object, b: object) -> bool:
    """Equal, with NaN equal to NaN and the types (int/float/bool) the same."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or a == b and math.copysign(1, a) == math.copysign(1, b)  # type: ignore[arg-type]
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)  # type: ignore[index]
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))  # type: ignore[arg-type]
    return a == b


def _outcome(fn, text: str):  # type: ignore[no-untyped-def]
    try:
        return ("ok", fn(text))
    except ValueError:
        return ("ValueError", None)


@settings(max_examples=400, deadline=None)
@given(_values, st.booleans(), st.booleans())
def test_what_json_dumps_writes_decodes_as_json_loads_decodes_it(value, ascii_only, sort_keys) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only, sort_keys=sort_keys, separators=(",", ":"))
    assert _same(loads_data(text), json.loads(text)), text


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=40), st.sampled_from(['{"a":1,"a":2}', '{"a":1e400}', '{"a":NaN}', '{"a":"\\ud800"}',
                                                         '{"a":-Infinity}', '{"a":1}x', ' {"a": [1, 2.5e-3]} ', "", "nul"])))
def test_any_text_gets_json_loads_answer_or_its_error(text) -> None:
    mine, theirs = _outcome(loads_data, text), _outcome(json.loads, text)
    assert mine[0] == theirs[0] and _same(mine[1], theirs[1]), (text, mine, theirs)
