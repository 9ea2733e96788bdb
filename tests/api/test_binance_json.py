"""Binance routes render their JSON with msgspec (api/binance.py `BinanceJSON`): the bytes must be
exactly Starlette's JSONResponse's (json.dumps, ensure_ascii=False, compact), or the same error, for
any content a handler could return — floats and other types go through json.dumps itself."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.responses import JSONResponse

from ringfence.api.binance import BinanceJSON, _plain
from ringfence.trading.vocabulary import OrderType, Side

_leaf = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**80), max_value=2**80),
                  st.text(), st.floats(), st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),
                  st.sampled_from(list(OrderType) + list(Side)))
_tree = st.recursive(_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.tuples(inner, inner),
    st.dictionaries(st.one_of(st.text(max_size=5), st.integers(), st.booleans()), inner, max_size=4)), max_leaves=24)


def _rendered(cls: type, content: object) -> object:
    try:
        return cls(content).body
    except Exception as err:  # noqa: BLE001 - the error itself is compared
        return type(err)


@settings(max_examples=400, deadline=None)
@given(_tree)
def test_the_same_bytes_or_the_same_error_as_starlette(content: object) -> None:
    assert _rendered(BinanceJSON, content) == _rendered(JSONResponse, content)


def test_only_plain_content_skips_json_dumps() -> None:
    assert _plain({"symbol": "BTCUSDT", "fills": [{"qty": "1", "tradeId": 7}], "isWorking": True, "x": None})
    assert _plain({"type": OrderType.LIMIT_MAKER, "side": Side.SELL})  # the vocabulary's StrEnums: their value
    assert not _plain({"price": 1.5})
    assert not _plain({1: "int key"})
    assert not _plain([("a", "tuple")])
    nested: object = "leaf"
    for _ in range(12):
        nested = [nested]
    assert not _plain(nested)  # deeper than the check goes: json.dumps answers
    assert BinanceJSON(nested).body == JSONResponse(nested).body


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([{}, {"code": -1003, "msg": "x"}, [1, "a"]]), st.sampled_from([100, 199, 200, 201, 204, 304, 400, 418, 429, 500, 503]),
       st.sampled_from([None, {"Retry-After": "5"}, {"content-type": "text/plain"}, {"Content-Length": "3"}, {}]))
def test_the_same_headers_as_starlette(content: object, status: int, headers: dict[str, str] | None) -> None:
    """`BinanceJSON.init_headers` builds an answer's headers itself when it has none of its own: the same
    list (names, values, order) as Starlette's JSONResponse for every status and headers argument."""
    assert BinanceJSON(content, status_code=status, headers=headers).raw_headers == \
        JSONResponse(content, status_code=status, headers=headers).raw_headers
