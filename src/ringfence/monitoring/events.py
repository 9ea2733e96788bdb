"""A monitoring event: what happened, to which account, from where, when, with what data.

Events are plain data (`Event`) with a JSON form (`to_json` / `from_json`, one object per line in a
recorded stream). `data` holds only integers, strings and booleans: amounts are integer minor units.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..errors import ValidationError

__all__ = ["Event", "ENGINE_KINDS", "EDGE_KINDS", "from_json", "to_json"]

#: Kinds taken from the engine's committed batches (the journal's outputs).
ENGINE_KINDS = frozenset({"order_placed", "order_canceled", "trade", "deposit_credited", "withdrawal_requested"})
#: Kinds the API edge and the staff API publish (identity's kinds are identity.events.EVENT_KINDS).
EDGE_KINDS = frozenset({"api_call", "staff_action"})
_MAX_TEXT = 512


@dataclass(frozen=True)
class Event:
    id: int
    kind: str
    at_ms: int
    account_id: str = ""
    ip: str = ""
    device: str = ""
    source: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def num(self, name: str) -> int:
        value = self.data.get(name, 0)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "at_ms": self.at_ms, "account_id": self.account_id, "ip": self.ip,
                "device": self.device, "source": self.source, "data": self.data}


def to_json(e: Event) -> str:
    return json.dumps(e.as_dict(), separators=(",", ":"), sort_keys=True)


def from_json(line: str, where: str = "event") -> Event:
    """One recorded event; a malformed line is a ValidationError naming `where` and the field."""
    try:
        raw = json.loads(line)
    except ValueError:
        raise ValidationError("is not a JSON object", field=where) from None
    if not isinstance(raw, dict):
        raise ValidationError("is not a JSON object", field=where)
    for name in ("id", "at_ms"):
        v = raw.get(name)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValidationError("must be a non-negative integer", field=f"{where}.{name}")
    if not isinstance(raw.get("kind"), str) or not raw["kind"]:
        raise ValidationError("must be a non-empty string", field=f"{where}.kind")
    texts = {}
    for name in ("account_id", "ip", "device", "source"):
        v = raw.get(name, "")
        if not isinstance(v, str) or len(v) > _MAX_TEXT:
            raise ValidationError(f"must be a string of at most {_MAX_TEXT} characters", field=f"{where}.{name}")
        texts[name] = v
    data = raw.get("data", {})
    if not isinstance(data, dict) or not all(isinstance(v, (int, str, bool)) for v in data.values()):
        raise ValidationError("must be an object of integers, strings and booleans (no floats)", field=f"{where}.data")
    return Event(raw["id"], raw["kind"], raw["at_ms"], data=data, **texts)
