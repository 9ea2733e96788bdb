"""A perpetual's order is read by field position when placed (`trading.orders.read_by_position`),
as a spot order is: the same fields as reading them one by one, and a reordered command refused."""

from __future__ import annotations

from typing import ClassVar

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringfence.derivatives import contract  # noqa: F401  (registers PlacePerpOrder)
from ringfence.derivatives.commands import PlacePerpOrder
from ringfence.trading import orders

FIELDS = ("owner", "symbol", "side", "order_type", "tif", "price", "quantity", "quote_amount", "stop_price",
          "client_order_id", "stp")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=8), st.text(max_size=8), st.sampled_from(["BUY", "SELL"]), st.sampled_from(["LIMIT", "MARKET"]),
       st.sampled_from(["GTC", "IOC", "FOK"]), st.integers(0, 2**80), st.integers(0, 2**80), st.integers(0, 2**63),
       st.text(max_size=8), st.integers(0, 1))
def test_a_perpetual_order_read_by_position_is_read_as_field_by_field(owner: str, symbol: str, side: str, typ: str,
                                                                      tif: str, price: int, qty: int, stop: int,
                                                                      coid: str, reduce_only: int) -> None:
    c = PlacePerpOrder(owner, symbol, side, typ, tif, price, qty, stop, coid, reduce_only)
    assert PlacePerpOrder in orders._no_quote_types
    f = orders._fields_of(c)
    assert [getattr(f, name) for name in FIELDS] == [getattr(c, name) for name in FIELDS]


class _Reordered(msgspec.Struct, frozen=True):
    quote_amount: ClassVar[int] = 0
    stp: ClassVar[str] = "NONE"
    symbol: str
    owner: str
    side: str = "BUY"
    order_type: str = "LIMIT"
    tif: str = "GTC"
    price: int = 0
    quantity: int = 0
    stop_price: int = 0
    client_order_id: str = ""
    reduce_only: int = 0


class _WithQuote(msgspec.Struct, frozen=True):
    stp: ClassVar[str] = "NONE"
    owner: str
    symbol: str
    side: str = "BUY"
    order_type: str = "LIMIT"
    tif: str = "GTC"
    price: int = 0
    quantity: int = 0
    stop_price: int = 0
    client_order_id: str = ""
    reduce_only: int = 0


@pytest.mark.parametrize("cls", [_Reordered, _WithQuote])
def test_a_command_whose_fields_are_not_in_that_order_is_refused(cls: type) -> None:
    with pytest.raises(ImportError, match="by field position"):
        orders.read_by_position(cls)
    assert cls not in orders._no_quote_types
