"""`Params` (api/gateway.py) takes a request's pairs in one dict when nothing is wrong with them and
walks them in order only when something is: the values it keeps, and the error it raises (code and
message: too many parameters, a duplicate, a value too long, whichever comes first in the order sent),
are those of the pair-by-pair walk for any list of pairs."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ringfence.api.binance_errors import BinanceError, illegal
from ringfence.api.gateway import MAX_PARAM_CHARS, MAX_PARAMS, Params


def _walk(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """The rule, pair by pair in the order sent (what `Params` did for every request before)."""
    values: dict[str, str] = {}
    for count, (name, value) in enumerate(pairs):
        if count >= MAX_PARAMS:
            raise BinanceError(-1104, f"Too many parameters; at most {MAX_PARAMS} are accepted.")
        if name in values:
            raise BinanceError(-1101, f"Duplicate values for a parameter detected: '{name}'.")
        if len(value) > MAX_PARAM_CHARS:
            raise illegal(name, f"at most {MAX_PARAM_CHARS} characters are allowed")
        values[name] = value
    return values


def _outcome(make):  # type: ignore[no-untyped-def]
    try:
        return "ok", make()
    except BinanceError as err:
        return "error", err.body(), err.status


_names = st.sampled_from(["symbol", "side", "a", "b", "", "timestamp"]) | st.text(max_size=4)
_values = st.sampled_from(["", "1", "x" * MAX_PARAM_CHARS, "x" * (MAX_PARAM_CHARS + 1)]) | st.text(max_size=6)
_pairs = st.lists(st.tuples(_names, _values), max_size=MAX_PARAMS + 3) | st.lists(
    st.tuples(st.text(min_size=1, max_size=3), st.just("1")), min_size=MAX_PARAMS - 1, max_size=MAX_PARAMS + 2, unique_by=lambda p: p[0])


@settings(max_examples=600, deadline=None)
@given(_pairs, st.booleans())
def test_params_keeps_and_refuses_as_the_pair_by_pair_walk(pairs: list[tuple[str, str]], as_generator: bool) -> None:
    mine = _outcome(lambda: dict(Params(iter(pairs) if as_generator else list(pairs)).as_sent()))
    assert mine == _outcome(lambda: _walk(pairs))


def test_the_limits_themselves() -> None:
    at_most = [(f"p{i}", "v") for i in range(MAX_PARAMS)]
    assert len(Params(at_most).as_sent()) == MAX_PARAMS
    assert _outcome(lambda: Params([*at_most, ("q", "v")]))[1]["code"] == -1104
    assert Params([("a", "x" * MAX_PARAM_CHARS)]).raw("a") == "x" * MAX_PARAM_CHARS
    assert _outcome(lambda: Params([("a", "x" * (MAX_PARAM_CHARS + 1))]))[1]["code"] == -1100
    # the first wrong pair decides: a duplicate before a long value, a long value before a duplicate
    assert _outcome(lambda: Params([("a", "1"), ("a", "2"), ("b", "x" * 999)]))[1]["code"] == -1101
    assert _outcome(lambda: Params([("b", "x" * 999), ("a", "1"), ("a", "2")]))[1]["code"] == -1100
