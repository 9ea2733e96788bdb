"""De-identified export of the event stream for outside models (issue 20, item 7).

* **Keyed pseudonyms**: an account becomes `HMAC-SHA256(key, "account:" + id)` (first 16 bytes, hex).
  The key lives in a key file (`{"key_id", "key_hex"}`, mode 0600) that stays inside the exchange;
  rotate it by writing a new file: pseudonyms from different keys do not link, and every record
  names the `key_id` it was made with. The other side of a trade is pseudonymised the same way.
* **Generalised fields**: time to the hour, IPv4 to its /24 (IPv6 to its /48), the device (user
  agent) to its first product token, amounts to a power-of-two bucket, KYT scores to tens. Free
  text (details, addresses, transaction ids, API key prefixes) is dropped.
* **k-anonymity**: the quasi-identifiers of a record are (kind, hour, network, device family); a
  record whose combination is shared by fewer than `k` distinct pseudonyms is suppressed. The
  report gives the k the export achieves (the smallest group left) and how many were suppressed.
* **Data dictionary**: `DICTIONARY` names every exported field and its sensitivity class.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import ipaddress
import json
import os
import secrets
from pathlib import Path
from typing import Any, Iterable

from ..errors import ConfigError, ValidationError
from .events import Event

__all__ = ["DICTIONARY", "PseudonymKey", "deidentify", "new_key_file", "read_key_file"]

DICTIONARY: dict[str, dict[str, str]] = {
    "pseudonym": {"class": "pseudonymous identifier", "description": "keyed HMAC of the account id; links records within one key_id only"},
    "key_id": {"class": "non-identifying", "description": "which pseudonym key made the pseudonyms"},
    "kind": {"class": "quasi-identifier", "description": "the event kind (sign_in, api_call, trade, ...)"},
    "hour": {"class": "quasi-identifier (generalised)", "description": "event time truncated to the hour (Unix ms)"},
    "network": {"class": "quasi-identifier (generalised)", "description": "IPv4 /24 or IPv6 /48 of the client, '' if none"},
    "device_family": {"class": "quasi-identifier (generalised)", "description": "first product token of the user agent"},
    "counterparty": {"class": "pseudonymous identifier", "description": "the other side of a trade, pseudonymised with the same key"},
    "endpoint": {"class": "non-identifying", "description": "API route template"},
    "status": {"class": "non-identifying", "description": "HTTP status of an API call"},
    "symbol": {"class": "non-identifying", "description": "market"},
    "side": {"class": "non-identifying", "description": "BUY or SELL"},
    "asset": {"class": "non-identifying", "description": "asset code"},
    "amount_bucket": {"class": "sensitive (generalised)", "description": "floor(log2) of the amount or quantity in minor units"},
    "score_bucket": {"class": "sensitive (generalised)", "description": "KYT score rounded down to tens"},
}
_KEEP = ("endpoint", "status", "symbol", "side", "asset")


class PseudonymKey:
    def __init__(self, key_id: str, key: bytes) -> None:
        if len(key) < 32:
            raise ValidationError("a pseudonym key has at least 32 bytes", field="key_hex")
        self.key_id, self._key = key_id, key

    def pseudonym(self, account_id: str) -> str:
        return hmac.new(self._key, b"account:" + account_id.encode(), hashlib.sha256).hexdigest()[:32]


def new_key_file(path: Path) -> PseudonymKey:
    """A new pseudonym key in `path` (0600, nodekey.write_private); a file there is never overwritten."""
    from ..nodekey import write_private

    if os.path.lexists(path):
        raise ValidationError(f"{path} exists; rotate by naming a new file", field="--key-file")
    key = PseudonymKey("pk-" + secrets.token_hex(4), secrets.token_bytes(32))
    write_private(path, json.dumps({"key_id": key.key_id, "key_hex": key._key.hex()}).encode())
    return key


def read_key_file(path: Path) -> PseudonymKey:
    """The pseudonym key in `path`: a file of this user's, not a symbolic link, 0600, in a folder no other
    user may write (owned.read_own_file: a key another user planted, or knows, would let them link the
    pseudonyms of an export back to accounts)."""
    from ..owned import read_own_file

    try:
        raw = json.loads(read_own_file(path, "--key-file", "pseudonym key file"))
        return PseudonymKey(str(raw["key_id"]), bytes.fromhex(raw["key_hex"]))
    except ConfigError:  # (whose it is, a link, readable by others; said as it is)
        raise
    except (OSError, ValueError, KeyError, TypeError):
        raise ValidationError('must be a readable JSON file {"key_id", "key_hex"}', field="--key-file") from None


def _network(ip: str) -> str:
    if not ip:
        return ""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return "invalid"
    prefix = 24 if addr.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def _family(device: str) -> str:
    return device.split("/", 1)[0].split(" ", 1)[0][:32] if device else ""


def _bucket(value: object) -> int | None:
    return value.bit_length() - 1 if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def deidentify(events: Iterable[Event], key: PseudonymKey, *, k: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The de-identified records (only those whose quasi-identifiers at least `k` pseudonyms share)
    and a report: k achieved, records in, kept, suppressed."""
    if not isinstance(k, int) or not 1 <= k <= 1000:
        raise ValidationError("must be an integer from 1 to 1000", field="k")
    records: list[dict[str, Any]] = []
    for e in events:
        if not e.account_id:
            continue
        r: dict[str, Any] = {"pseudonym": key.pseudonym(e.account_id), "key_id": key.key_id, "kind": e.kind,
                             "hour": e.at_ms - e.at_ms % 3_600_000, "network": _network(e.ip), "device_family": _family(e.device)}
        for name in _KEEP:
            if name in e.data and isinstance(e.data[name], (int, str)):
                r[name] = e.data[name]
        amount = _bucket(e.data.get("amount_minor", e.data.get("quantity")))
        if amount is not None:
            r["amount_bucket"] = amount
        score = e.data.get("score")
        if isinstance(score, int) and not isinstance(score, bool):
            r["score_bucket"] = score - score % 10
        maker = e.data.get("maker_owner")
        if e.kind == "trade" and isinstance(maker, str) and maker:
            r["counterparty"] = key.pseudonym(maker)
        records.append(r)
    groups: dict[tuple[Any, ...], set[str]] = collections.defaultdict(set)
    for r in records:
        groups[(r["kind"], r["hour"], r["network"], r["device_family"])].add(r["pseudonym"])
    kept = [r for r in records if len(groups[(r["kind"], r["hour"], r["network"], r["device_family"])]) >= k]
    sizes = [len(groups[(r["kind"], r["hour"], r["network"], r["device_family"])]) for r in kept]
    report = {"k_required": k, "k_achieved": min(sizes) if sizes else 0, "records_in": len(records), "records_out": len(kept),
              "suppressed": len(records) - len(kept), "key_id": key.key_id,
              "quasi_identifiers": ["kind", "hour", "network", "device_family"]}
    return kept, report
