"""The book's own `_bisect_left` and `_bisect_near` (what the compiled build uses on its price
lists) find the index `bisect.bisect_left` finds, for every list and price: the pure-Python build
keeps `bisect`, so the two builds must agree on every insertion and removal point. `notional`
(price times quantity over the scale, split to stay in short integers) is the plain product."""

from __future__ import annotations

from bisect import bisect_left

from hypothesis import given, strategies as st

from ringfence.trading.book import _bisect_left, _bisect_near, notional


@given(st.lists(st.integers(min_value=0, max_value=10**30), max_size=200), st.integers(min_value=0, max_value=10**30))
def test_bisect_left_agrees_with_the_standard_library(prices: list[int], price: int) -> None:
    prices.sort()
    assert _bisect_left(prices, price) == bisect_left(prices, price)


@given(st.lists(st.integers(min_value=1, max_value=2**40).map(lambda k: k * 10_000), min_size=1, max_size=300, unique=True))
def test_bisect_left_finds_every_present_price(prices: list[int]) -> None:
    prices.sort()
    for i, price in enumerate(prices):
        assert _bisect_left(prices, price) == i
        assert _bisect_left(prices, price + 1) == i + 1
        assert _bisect_left(prices, price - 1) == i


@given(st.lists(st.integers(min_value=0, max_value=10**30), max_size=60), st.integers(min_value=0, max_value=10**30), st.data())
def test_bisect_near_agrees_with_the_standard_library_from_any_start(prices: list[int], price: int, data: st.DataObject) -> None:
    """`_bisect_near` (an amend's move: a search outward from the old price's index) finds what
    `bisect_left` finds from every start index, near the price or not."""
    prices.sort()
    i = data.draw(st.integers(min_value=0, max_value=len(prices)))
    assert _bisect_near(prices, price, i) == bisect_left(prices, price)


@given(st.lists(st.integers(min_value=1, max_value=400), min_size=1, max_size=300, unique=True), st.data())
def test_bisect_near_finds_a_price_a_few_levels_away(ticks: list[int], data: st.DataObject) -> None:
    prices = sorted(t * 10_000 for t in ticks)
    i = data.draw(st.integers(min_value=0, max_value=len(prices) - 1))
    price = prices[i] + data.draw(st.integers(min_value=-60_000, max_value=60_000))
    assert _bisect_near(prices, price, i) == bisect_left(prices, price)


@given(st.integers(min_value=0, max_value=10**30), st.integers(min_value=0, max_value=10**30), st.integers(min_value=0, max_value=30))
def test_notional_is_the_rounded_down_product(price: int, qty: int, decimals: int) -> None:
    """`notional` (the split form the compiled build keeps in short integers) is `price * qty // scale`."""
    scale = 10**decimals
    assert notional(price, qty, scale) == price * qty // scale
