"""The outbox's `data` text (`monitoring.stream._data`, msgspec for the plain flat objects the API and
the engine publish) is exactly `json.dumps(data, separators=(",", ":"), sort_keys=True)`, for any
object: escapes, non-ASCII, DEL, big integers, floats, nested values and non-string keys included."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from ringfence.monitoring.stream import _data
from ringfence.trading.vocabulary import OrderType, Side

_text = st.one_of(st.text(max_size=12), st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x80), max_size=12),
                  st.sampled_from(["/api/v3/order", 'a"b', "a\\b", "\x7f", "é", "\n", "1e16", ""]))
_scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**130), max_value=2**130), _text,
                     st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(list(OrderType) + list(Side)))
_values = st.one_of(_scalars, st.lists(_scalars, max_size=3), st.dictionaries(_text, _scalars, max_size=3))


def _expected(data: Any) -> str:
    return json.dumps(data or {}, separators=(",", ":"), sort_keys=True)


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(_text, _values, max_size=8))
def test_the_text_is_json_dumps_for_any_object(data: dict[str, Any]) -> None:
    assert _data(data) == _expected(data)


@pytest.mark.parametrize("data", [
    None, {}, {"method": "POST", "endpoint": "/api/v3/order", "status": 200, "weight": 1, "key_prefix": "abcdefgh", "error": False},
    {"seq": 7, "symbol": "BTCUSDT", "order_id": 2**70, "price": -1, "touch_bp": 0}, {2: "a", 10: "b"},
    {"seq": 9, "order_type": OrderType.LIMIT, "side": Side.BUY},  # an order_placed event's StrEnums (msgspec too)
    {"device": "curl\x7f"}, {"device": "ümlaut"}, {"x": 1.5}, {"x": float("nan")}, {"x": True, "y": None},
])
def test_the_events_the_exchange_publishes(data: Any) -> None:
    assert _data(data) == _expected(data)
