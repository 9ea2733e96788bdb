"""The error hierarchy: stable unique codes, HTTP statuses, stdlib parents."""

from ringfence import errors


def test_codes_are_unique_and_prefixed():
    codes = errors.error_codes()
    assert len(codes) >= 15
    seen = {}
    stack = [errors.RingfenceError]
    while stack:
        cls = stack.pop()
        assert cls.code.startswith("RF_"), cls
        if "code" in cls.__dict__:  # a subclass may share its parent's code; two definitions may not
            assert seen.setdefault(cls.code, cls) is cls, f"duplicate code {cls.code}"
        stack.extend(cls.__subclasses__())


def test_stdlib_parents_and_field():
    err = errors.InvalidAmount("must not be negative", field="quantity")
    assert isinstance(err, ValueError) and isinstance(err, errors.RingfenceError)
    assert err.http_status == 400
    assert str(err) == "quantity: must not be negative"
    assert err.to_dict() == {"code": "RF_INVALID_AMOUNT", "message": "must not be negative", "field": "quantity"}
    assert isinstance(errors.UnknownAccount("x"), KeyError)
    assert isinstance(errors.Forbidden(), PermissionError)
    assert isinstance(errors.InvariantViolation(), AssertionError)
