"""Strict decimal parsing: every rejection rule, exact round trips, no floats accepted."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringfence.errors import DuplicateAsset, InvalidAmount, UnknownAsset, ValidationError
from ringfence.money import MAX_AMOUNT, Asset, AssetClass, AssetRegistry, format_amount, parse_amount


@pytest.mark.parametrize(
    "text, decimals, expected",
    [
        ("0", 8, 0),
        ("1", 8, 100_000_000),
        ("0.00000001", 8, 1),
        ("61000.00000000", 2, 6_100_000),  # trailing zeros past the precision are exact
        ("12.5", 0, None),
        ("1.5", 0, None),
        ("10", 0, 10),
        ("123456789.123456789012345678", 18, 123456789123456789012345678),
    ],
)
def test_parse_exact(text, decimals, expected):
    if expected is None:
        with pytest.raises(InvalidAmount, match="decimal places"):
            parse_amount(text, decimals)
    else:
        assert parse_amount(text, decimals) == expected


@pytest.mark.parametrize(
    "text, rule",
    [
        ("NaN", "NaN"),
        ("nan", "NaN"),
        ("-NaN", "NaN"),
        ("Infinity", "infinity"),
        ("inf", "infinity"),
        ("-inf", "infinity"),
        ("1e5", "exponent"),
        ("1.5E-3", "exponent"),
        ("", "empty"),
        (" 1", "spaces"),
        ("1 ", "spaces"),
        ("+1", "'\\+'"),
        ("-1", "negative"),
        (".5", "digit before"),
        ("5.", "after the decimal point"),
        ("01", "leading zeros"),
        ("1,000", "thousands"),
        ("0x10", "plain decimal"),
        ("1.000000001", "decimal places"),
        ("1" * 81, "longer than"),
        (str(2**127), "too large"),
    ],
)
def test_parse_rejects_with_named_field_and_rule(text, rule):
    with pytest.raises(InvalidAmount, match=rule) as info:
        parse_amount(text, 8, field="quantity")
    assert info.value.field == "quantity"
    assert str(info.value).startswith("quantity")
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("value", [1.5, float("nan"), 10, True, None, b"1"])
def test_parse_rejects_non_strings(value):
    with pytest.raises(InvalidAmount, match="decimal string"):
        parse_amount(value, 8, field="price")


def test_negative_and_zero_rules():
    assert parse_amount("-1.5", 1, allow_negative=True) == -15
    assert parse_amount("-0", 1, allow_negative=True) == 0
    with pytest.raises(InvalidAmount, match="greater than zero"):
        parse_amount("0.000", 3, allow_zero=False)


def test_boundary_of_2_127():
    limit = MAX_AMOUNT  # 2**127 - 1
    assert parse_amount(str(limit), 0) == limit
    with pytest.raises(InvalidAmount, match="too large"):
        parse_amount(str(limit + 1), 0)
    with pytest.raises(InvalidAmount, match="too large"):
        parse_amount("-" + str(limit + 1), 0, allow_negative=True)


@given(st.integers(min_value=-MAX_AMOUNT, max_value=MAX_AMOUNT), st.integers(min_value=0, max_value=30))
def test_format_parse_round_trip(minor, decimals):
    text = format_amount(minor, decimals)
    assert parse_amount(text, decimals, allow_negative=True) == minor
    trimmed = format_amount(minor, decimals, trim=True)
    assert parse_amount(trimmed, decimals, allow_negative=True) == minor


@given(st.text(max_size=40))
def test_parse_never_crashes_and_never_returns_out_of_range(text):
    try:
        value = parse_amount(text, 8, allow_negative=True)
    except InvalidAmount as err:
        assert err.field == "amount"
    else:
        assert -MAX_AMOUNT <= value <= MAX_AMOUNT


def test_format_examples():
    assert format_amount(150_000_000, 8) == "1.50000000"
    assert format_amount(150_000_000, 8, trim=True) == "1.5"
    assert format_amount(-5, 2) == "-0.05"
    assert format_amount(7, 0) == "7"
    with pytest.raises(ValidationError):
        format_amount(1.5, 2)  # type: ignore[arg-type]


def test_asset_registry():
    reg = AssetRegistry()
    btc = Asset("BTC", 8, AssetClass.CRYPTO, "bitcoin")
    reg.register(btc)
    assert reg.register(Asset("BTC", 8, AssetClass.CRYPTO, "bitcoin")) == btc
    with pytest.raises(DuplicateAsset):
        reg.register(Asset("BTC", 6, AssetClass.CRYPTO, "bitcoin"))
    with pytest.raises(UnknownAsset) as info:
        reg.get("DOGE")
    assert isinstance(info.value, KeyError)
    assert "DOGE" in str(info.value)
    assert btc.parse("0.1") == 10_000_000
    assert btc.format(10_000_000, trim=True) == "0.1"


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"code": "btc", "decimals": 8}, "asset"),
        ({"code": "BTC", "decimals": -1}, "decimals"),
        ({"code": "BTC", "decimals": 31}, "decimals"),
        ({"code": "BTC", "decimals": True}, "decimals"),
        ({"code": "TOOLONGASSETCODE", "decimals": 2}, "asset"),
    ],
)
def test_asset_validation(kwargs, field):
    with pytest.raises(ValidationError) as info:
        Asset(asset_class=AssetClass.CRYPTO, **kwargs)
    assert info.value.field == field


def _parsed(text: object, decimals: int, **flags: bool) -> tuple[str, object]:
    from ringfence.errors import InvalidAmount

    try:
        return "ok", parse_amount(text, decimals, field="f", **flags)
    except InvalidAmount as err:
        return "error", (err.message, err.field)


_amount_texts = st.one_of(st.sampled_from(["0", "-0", "-0.0", "0.00", "1", "-1", "1.5", "-1.50", "60000.00", "0.0010", "1.123456789",
                                           "01", "1.", "+1", "", " 1", "1e3"]),
                          st.from_regex(r"-?(0|[1-9][0-9]{0,6})(\.[0-9]{1,10})?", fullmatch=True))


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(_amount_texts, st.integers(0, 9), st.booleans(), st.booleans()), min_size=1, max_size=12))
def test_parse_amount_answers_the_same_whatever_it_parsed_before(calls: list[tuple[str, int, bool, bool]]) -> None:
    """`parse_amount` keeps the texts it parsed (an order's price and quantity repeat): each call, whatever
    came before it (the same text under other flags, other decimals), answers exactly what a first parse
    does: the value, or the same refusal (negative, zero, precision...)."""
    import ringfence.money as money

    for text, decimals, allow_negative, allow_zero in calls:
        warm = _parsed(text, decimals, allow_negative=allow_negative, allow_zero=allow_zero)
        kept = dict(money._PARSED)
        money._PARSED.clear()
        try:
            cold = _parsed(text, decimals, allow_negative=allow_negative, allow_zero=allow_zero)
        finally:
            money._PARSED.clear()
            money._PARSED.update(kept)
        assert warm == cold, (text, decimals, allow_negative, allow_zero)
