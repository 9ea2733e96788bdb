"""Per-order work of the engine's event loop made cheaper, with the same results (issue 18).

* `OrderRecord` takes its enum members from a dict by value instead of calling each enum: the same
  member (the same object) for a value given as a string or as a member, Enum's own ValueError for
  a value that is none.
* `order_status_transition` takes a member of `OrderStatus` as it is (the read model passes
  members), any other value through `OrderStatus(...)` as before: for every pair of statuses,
  members, strings and values that are none, the same member or the same InvariantViolation.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringfence.api.orders import OrderRecord
from ringfence.trading.commands import OrderAccepted
from ringfence.errors import InvariantViolation
from ringfence.trading.vocabulary import (
    ORDER_STATE_TABLE,
    OrderStatus,
    OrderType,
    SelfTradePrevention,
    Side,
    TimeInForce,
    order_status_transition,
)

ENUMS = {"side": Side, "order_type": OrderType, "tif": TimeInForce, "stp": SelfTradePrevention}


def _accepted(side: Any, order_type: Any, tif: Any, stp: Any) -> OrderAccepted:
    return OrderAccepted("BTCUSDT", 7, "ann", "c1", side, order_type, tif, 1, 2, 0, 0, stp, 2)


def _value(enum: Any) -> Any:
    """A member's value as the engine's events carry it (a str), or the member itself."""
    return st.sampled_from(list(enum)).flatmap(lambda m: st.sampled_from([m.value, m]))


@settings(max_examples=200, deadline=None)
@given(side=_value(Side), order_type=_value(OrderType), tif=_value(TimeInForce), stp=_value(SelfTradePrevention))
def test_an_order_record_has_the_members_the_enums_give(side: Any, order_type: Any, tif: Any, stp: Any) -> None:
    record = OrderRecord.of(_accepted(side, order_type, tif, stp), 5)
    for field, value in (("side", side), ("order_type", order_type), ("tif", tif), ("stp", stp)):
        got, want = getattr(record, field), ENUMS[field](value)
        assert got is want and type(got) is ENUMS[field], (field, value, got)
    assert record.working == (record.order_type not in (OrderType.STOP_LIMIT, OrderType.STOP_MARKET))


@pytest.mark.parametrize("field", sorted(ENUMS))
def test_a_value_no_member_has_raises_the_enums_own_error(field: str) -> None:
    values = {"side": "BUY", "order_type": "LIMIT", "tif": "GTC", "stp": "NONE"}
    values[field] = "buy"  # lower case: no member's value
    with pytest.raises(ValueError) as raised:
        OrderRecord.of(_accepted(**values), 5)
    with pytest.raises(ValueError) as reference:
        ENUMS[field]("buy")
    assert str(raised.value) == str(reference.value)


def _transition_reference(current: Any, new: Any) -> Any:
    """`order_status_transition` as it was: `OrderStatus(new)` whatever `new` is."""
    try:
        allowed = ORDER_STATE_TABLE[current]
        target = OrderStatus(new)
    except (KeyError, ValueError):
        raise InvariantViolation(f"order status {current!s} -> {new!s}: unknown status") from None
    if target not in allowed:
        raise InvariantViolation(f"illegal order status transition {current!s} -> {new!s}")
    return target


def _outcome(fn: Any, current: Any, new: Any) -> tuple[str, Any]:
    try:
        return "ok", fn(current, new)
    except InvariantViolation as err:
        return "error", str(err)


STATUS_VALUES = [*OrderStatus, *(s.value for s in OrderStatus), "NEWISH", ""]


@pytest.mark.parametrize("current", STATUS_VALUES)
@pytest.mark.parametrize("new", STATUS_VALUES)
def test_a_status_transition_is_what_it_was(current: Any, new: Any) -> None:
    got, want = _outcome(order_status_transition, current, new), _outcome(_transition_reference, current, new)
    assert got == want
    if got[0] == "ok":
        assert got[1] is want[1] and type(got[1]) is OrderStatus
