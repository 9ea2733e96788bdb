"""`margin.exact_product`, the perpetual path's multiplication (compiled: one 64-bit machine
multiplication when the product fits in 62 bits, told by constant bounds or one division, Python's
otherwise), is `a * b` for any ints: around every
power of two up to 2**66 (where a 64-bit product would wrap), negative, and far past 64 bits. tests/derivatives/test_fast_path.py checks the fills that use it against the old code."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as hs

from ringfence.derivatives.margin import exact_product

#: ±(2**k + d): the operands whose bit lengths sit at the fast path's edge, and any int.
near_powers = hs.builds(lambda k, d, sign: sign * ((1 << k) + d), hs.integers(0, 66), hs.integers(-3, 3), hs.sampled_from([1, -1]))
ints = near_powers | hs.integers(-(1 << 130), 1 << 130) | hs.integers(-(1 << 40), 1 << 40)


@settings(max_examples=2_000, deadline=None)
@given(a=ints, b=ints)
@example(a=(1 << 31) - 1, b=(1 << 30) + 1)  # bit lengths 31 + 31 = 62: past the fast path
@example(a=(1 << 30) - 1, b=(1 << 31) - 1)  # 30 + 31 = 61: on it, the largest products
@example(a=-(1 << 60), b=1)
@example(a=(1 << 32) + 1, b=(1 << 32) - 1)  # would wrap in 64 bits
@example(a=60_000 * 10**6, b=500_000)  # a price times a quantity
@example(a=(1 << 62) - 1, b=1)  # the division's edge: the largest fast product, and just past it
@example(a=(1 << 62) - 1, b=-1)
@example(a=1 << 62, b=1)
@example(a=(1 << 31) + 1, b=(1 << 31) - 1)  # (2**62 - 1: fast) and one more unit on each
@example(a=(1 << 31) + 1, b=1 << 31)
@example(a=1 << 61, b=2)  # 2**62: past it
@example(a=1 << 61, b=0)
@example(a=-(1 << 31), b=(1 << 31) - 1)
def test_exact_product_is_the_product(a: int, b: int) -> None:
    assert exact_product(a, b) == a * b
    assert exact_product(b, a) == a * b
