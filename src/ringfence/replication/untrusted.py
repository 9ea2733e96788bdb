"""Decoding values that others may write to NATS (fourth intruder review of the replication, F1/F6).

A promotion request (`promote.NODE`, written with the operator's credential), the leader record
(a node's credential), the standby's answer to a request and a fence's grant (a node key) are JSON
that nobody vouches for until it is checked. `json.loads` of such a value raised RecursionError
(60 KB of nested brackets), ValueError (a number past CPython's 4300-digit limit) or
UnicodeDecodeError, and the node or command reading it died with a traceback on every start.
`loads` bounds the size first, catches every decoding error and refuses nesting deeper than any
value ringfence writes, as one `UnreadableValue` (a `ValidationError`, so a `ValueError` too) with
one short reason. Numbers inside are read with `epochs.bounded_int` (at most 18 digits).
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import ValidationError

__all__ = ["UnreadableValue", "loads", "MAX_REQUEST_BYTES", "MAX_RECORD_BYTES", "MAX_GRANT_BYTES",
           "MAX_ANSWER_BYTES", "MAX_DEPTH"]

#: a promotion request: an epoch and at most 32 approval tokens of ~250 characters
MAX_REQUEST_BYTES = 16 * 1024
#: the leader record: it carries the approvals of the promotion that opened its epoch
MAX_RECORD_BYTES = 16 * 1024
#: a fence's grant: the same approvals
MAX_GRANT_BYTES = 16 * 1024
#: the standby's answer to a request: the request, its verdict and a reason
MAX_ANSWER_BYTES = 32 * 1024
#: no value ringfence writes nests deeper than 3 (an object of lists of strings)
MAX_DEPTH = 8


class UnreadableValue(ValidationError):
    code = "RF_UNREADABLE_VALUE"
    default_message = "a value read from NATS is not the JSON expected"


def _too_deep(value: Any, depth: int) -> bool:
    if depth > MAX_DEPTH:
        return True
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return any(_too_deep(child, depth + 1) for child in children)


def loads(value: bytes | str | None, limit_bytes: int, what: str = "the value") -> Any:
    """`value` decoded as JSON, or `UnreadableValue` naming `what` and why: more than `limit_bytes`,
    not UTF-8, not JSON, a number of more than 4300 digits, nested more than MAX_DEPTH levels."""
    if value is None:
        raise UnreadableValue(f"{what} is empty", field=what)
    if len(value) > limit_bytes:
        raise UnreadableValue(f"{what} is {len(value)} bytes, more than the {limit_bytes} allowed", field=what)
    try:
        data = json.loads(value)
    except RecursionError:
        raise UnreadableValue(f"{what} is nested too deeply", field=what) from None
    except UnicodeDecodeError:
        raise UnreadableValue(f"{what} is not UTF-8", field=what) from None
    except (ValueError, TypeError, MemoryError) as err:  # JSONDecodeError; int() past the digit limit
        raise UnreadableValue(f"{what} is not JSON ({str(err)[:100]})", field=what) from None
    if _too_deep(data, 0):
        raise UnreadableValue(f"{what} is nested more than {MAX_DEPTH} levels", field=what)
    return data
