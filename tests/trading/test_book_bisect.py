"""The book's own `_bisect_left` (what the compiled build uses on its price lists) finds the
index `bisect.bisect_left` finds, for every list and price: the pure-Python build keeps `bisect`,
so the two builds must agree on every insertion and removal point."""

from __future__ import annotations

from bisect import bisect_left

from hypothesis import given, strategies as st

from ringfence.trading.book import _bisect_left


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
