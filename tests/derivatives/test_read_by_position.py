"""A perpetual's order is read by field position when placed (`trading.orders.read_by_position`),
as a spot order is: the same fields as reading them one by one, and a reordered command refused."""

from __future__ import annotations

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


def _shape(names: tuple[str, ...], class_attributes: dict[str, object]) -> type:
    """A frozen Struct with PlacePerpOrder's fields (their types and defaults) in the order `names`."""
    fields = {f.name: f for f in msgspec.structs.fields(PlacePerpOrder)}
    spec = [(n, fields[n].type) if fields[n].required else (n, fields[n].type, fields[n].default) for n in names]
    return msgspec.defstruct("Shape", spec, frozen=True, namespace=dict(class_attributes))


PERP = PlacePerpOrder.__struct_fields__
_Reordered = _shape((PERP[1], PERP[0], *PERP[2:]), {"quote_amount": 0, "stp": "NONE"})  # owner and symbol swapped
_WithQuote = _shape(PERP, {"stp": "NONE"})  # no class attribute quote_amount


@pytest.mark.parametrize("cls", [_Reordered, _WithQuote])
def test_a_command_whose_fields_are_not_in_that_order_is_refused(cls: type) -> None:
    with pytest.raises(ImportError, match="by field position"):
        orders.read_by_position(cls)
    assert cls not in orders._no_quote_types


def test_the_same_shape_is_accepted() -> None:
    """The control for the refusals above: PlacePerpOrder's fields in its order, with both class attributes."""
    same = _shape(PERP, {"quote_amount": 0, "stp": "NONE"})
    orders.read_by_position(same)
    assert same in orders._no_quote_types
    orders._no_quote_types.discard(same)
