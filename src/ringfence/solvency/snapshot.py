"""Where the liabilities come from: a snapshot of what the exchange owes each user, per asset.

Job: turn a source of per-account, per-segment amounts into the builder's input — one row per user
with one balance per asset — and into a stable 32-byte `snapshot_id`. The rule (issue #6): a user's
balance in an asset is the sum over all their accounts and segments (available + held + margin
equity), floored at zero; a negative sum is a debt, listed separately, and never reduces the
liabilities.

`LiabilitySnapshot` is the hand-off format (`snapshot.json`). Today it is made from a balances file
(`from_balances_file`, JSON or CSV); the ledger will make it from an engine snapshot at a journal
position through `from_entries(...)` with `position="journal:<seq>"` and its state hash as
`source_digest` — nothing downstream changes.

Invariants: amounts are `int` minor units; liabilities + 0 never go negative; the snapshot id is
SHA256 over the position, the source digest and the asset list, so it names exactly what was proved.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..errors import ValidationError
from ..money import Asset, AssetClass, format_amount, parse_amount

__all__ = ["SNAPSHOT_FORMAT", "AssetSpec", "LiabilitySnapshot", "aggregate_entries", "snapshot_id_for"]

SNAPSHOT_FORMAT = "ringfence-por-snapshot-v1"
MAX_BALANCES_FILE_BYTES = 4 << 30
MAX_ENTRIES = 1 << 28
MAX_POSITION_CHARS = 200
_DIGITS = re.compile(r"0|[1-9][0-9]{0,38}")


@dataclass(frozen=True)
class AssetSpec:
    """An asset in a snapshot: its code and how many decimals its minor unit has."""

    code: str
    decimals: int

    def __post_init__(self) -> None:
        Asset(self.code, self.decimals, AssetClass.CRYPTO)  # validates code and decimals


def snapshot_id_for(position: str, source_digest: bytes, assets: Iterable[AssetSpec]) -> bytes:
    """SHA256("ringfence/por/v1/snapshot" | position | source digest | asset codes and decimals)."""
    desc = json.dumps({"position": position, "source": source_digest.hex(),
                       "assets": [[a.code, a.decimals] for a in assets]}, separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(b"ringfence/por/v1/snapshot" + desc.encode("utf-8")).digest()


@dataclass
class LiabilitySnapshot:
    """Per-user balances (minor units, floored at zero) and per-asset debts, at one position."""

    snapshot_id: bytes
    position: str
    assets: tuple[AssetSpec, ...]
    accounts: list[tuple[str, list[int]]]
    debts_minor: dict[str, int] = field(default_factory=dict)
    debtor_count: int = 0

    @property
    def asset_codes(self) -> list[str]:
        return [a.code for a in self.assets]

    def iter_accounts(self) -> Iterator[tuple[str, list[int]]]:
        """The builder's input: (account_id, balances in asset order)."""
        return iter(self.accounts)

    def totals_minor(self) -> dict[str, int]:
        return {a.code: sum(row[k] for _, row in self.accounts) for k, a in enumerate(self.assets)}

    # ---- persistence ---------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "format": SNAPSHOT_FORMAT,
            "snapshot_id": self.snapshot_id.hex(),
            "position": self.position,
            "assets": [{"code": a.code, "decimals": a.decimals} for a in self.assets],
            "debts_minor": {k: str(v) for k, v in self.debts_minor.items()},
            "debtor_count": self.debtor_count,
            "accounts": [[a, [str(b) for b in row]] for a, row in self.accounts],
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        tmp = Path(str(path) + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(self.to_json(), fh, separators=(",", ":"))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "LiabilitySnapshot":
        try:
            doc = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValidationError(f"cannot read snapshot file: {exc}", field="snapshot") from None
        if not isinstance(doc, dict) or doc.get("format") != SNAPSHOT_FORMAT:
            raise ValidationError(f"not a {SNAPSHOT_FORMAT} file", field="snapshot")
        assets = tuple(AssetSpec(a["code"], a["decimals"]) for a in doc["assets"])
        accounts = []
        for account_id, row in doc["accounts"]:
            if len(row) != len(assets):
                raise ValidationError("row length differs from the asset list", field=f"accounts[{account_id}]")
            accounts.append((account_id, [_minor(v, f"accounts[{account_id}]") for v in row]))
        snapshot = cls(
            snapshot_id=bytes.fromhex(doc["snapshot_id"]), position=doc["position"], assets=assets,
            accounts=accounts, debts_minor={k: _minor(v, f"debts_minor[{k}]") for k, v in doc["debts_minor"].items()},
            debtor_count=int(doc.get("debtor_count", 0)),
        )
        if len(snapshot.snapshot_id) != 32:
            raise ValidationError("snapshot_id must be 32 bytes of hex", field="snapshot_id")
        return snapshot

    # ---- sources -------------------------------------------------------------------------

    @classmethod
    def from_entries(cls, assets: Iterable[AssetSpec], entries: Iterable[tuple[str, str, int]], *,
                     position: str, source_digest: bytes) -> "LiabilitySnapshot":
        """From (account_id, asset_code, amount_minor) rows, one per account/segment/kind.

        This is the seam for the ledger: feed it every user account balance at a journal position
        (available, held and each segment's margin equity as separate rows, negatives allowed).
        """
        assets = tuple(assets)
        if not assets:
            raise ValidationError("at least one asset is required", field="assets")
        if len({a.code for a in assets}) != len(assets):
            raise ValidationError("asset codes must not repeat", field="assets")
        if not isinstance(position, str) or not 1 <= len(position) <= MAX_POSITION_CHARS:
            raise ValidationError(f"position must be 1-{MAX_POSITION_CHARS} characters", field="position")
        accounts, debts, debtors = aggregate_entries(assets, entries)
        return cls(snapshot_id=snapshot_id_for(position, source_digest, assets), position=position,
                   assets=assets, accounts=accounts, debts_minor=debts, debtor_count=debtors)

    @classmethod
    def from_balances_file(cls, path: str | os.PathLike[str], assets: Iterable[AssetSpec] | None = None,
                           position: str | None = None) -> "LiabilitySnapshot":
        """Read a balances file (JSON or CSV; see docs/por.md) and aggregate it.

        JSON: {"position": "...", "assets": [{"code": "BTC", "decimals": 8}],
               "entries": [{"account_id": "u1", "asset": "BTC", "amount": "0.5", "segment": "spot"}]}
        CSV:  header `account_id,asset,amount[,segment]`; the assets come from `assets`.
        Amounts are decimal strings in the asset's units (negative allowed: margin losses).
        """
        position_override = position
        p = Path(path)
        try:
            size = p.stat().st_size
        except OSError as exc:
            raise ValidationError(f"cannot read balances file: {exc.strerror}", field="balances_file") from None
        if size > MAX_BALANCES_FILE_BYTES:
            raise ValidationError("balances file is larger than 4 GiB", field="balances_file")
        raw = p.read_bytes()
        digest = hashlib.sha256(raw).digest()
        text = raw.decode("utf-8")
        if p.suffix.lower() == ".csv":
            if not assets:
                raise ValidationError("a CSV balances file needs --asset CODE:DECIMALS for each asset",
                                      field="assets")
            specs = tuple(assets)
            rows = _csv_entries(text, specs)
            position = f"file:{p.name}"
        else:
            try:
                doc = json.loads(text)
            except ValueError as exc:
                raise ValidationError(f"balances file is not valid JSON: {exc}", field="balances_file") from None
            if not isinstance(doc, dict) or not isinstance(doc.get("entries"), list):
                raise ValidationError('balances JSON must be an object with an "entries" list', field="entries")
            specs = tuple(assets) if assets else tuple(
                AssetSpec(a.get("code"), a.get("decimals")) for a in doc.get("assets", [])
            )
            rows = _json_entries(doc["entries"], specs)
            position = str(doc.get("position") or f"file:{p.name}")
        return cls.from_entries(specs, rows, position=position_override or position, source_digest=digest)


def _minor(value: Any, where: str) -> int:
    if not isinstance(value, str) or not _DIGITS.fullmatch(value):
        raise ValidationError("must be a non-negative integer in minor units, as a string", field=where)
    return int(value)


def aggregate_entries(assets: tuple[AssetSpec, ...], entries: Iterable[tuple[str, str, int]]
                      ) -> tuple[list[tuple[str, list[int]]], dict[str, int], int]:
    """Sum rows per (user, asset); floor at zero; negative sums become debts. Keeps first-seen order."""
    column = {a.code: k for k, a in enumerate(assets)}
    net: dict[str, list[int]] = {}
    for count, (account_id, code, amount) in enumerate(entries):
        if count >= MAX_ENTRIES:
            raise ValidationError(f"more than {MAX_ENTRIES} entries", field="entries")
        if not isinstance(account_id, str) or not account_id:
            raise ValidationError("account_id must be a non-empty string", field=f"entries[{count}].account_id")
        k = column.get(code)
        if k is None:
            raise ValidationError(f"asset {code!r} is not in the asset list", field=f"entries[{count}].asset")
        if isinstance(amount, bool) or not isinstance(amount, int):
            raise ValidationError("amount must be an integer in minor units", field=f"entries[{count}].amount")
        row = net.get(account_id)
        if row is None:
            row = net[account_id] = [0] * len(assets)
        row[k] += amount
    debts = {a.code: 0 for a in assets}
    debtors: set[str] = set()
    accounts = []
    for account_id, row in net.items():
        floored = []
        for k, value in enumerate(row):
            if value < 0:
                debts[assets[k].code] += -value
                debtors.add(account_id)
                floored.append(0)
            else:
                floored.append(value)
        accounts.append((account_id, floored))
    return accounts, debts, len(debtors)


def _json_entries(entries: list[Any], specs: tuple[AssetSpec, ...]) -> Iterator[tuple[str, str, int]]:
    decimals = {a.code: a.decimals for a in specs}
    for i, item in enumerate(entries):
        if not isinstance(item, dict):
            raise ValidationError("each entry must be an object", field=f"entries[{i}]")
        code = item.get("asset")
        if code not in decimals:
            raise ValidationError(f"asset {code!r} is not in the asset list", field=f"entries[{i}].asset")
        amount = parse_amount(item.get("amount"), decimals[code], field=f"entries[{i}].amount", allow_negative=True)
        yield item.get("account_id"), code, amount


def _csv_entries(text: str, specs: tuple[AssetSpec, ...]) -> Iterator[tuple[str, str, int]]:
    decimals = {a.code: a.decimals for a in specs}
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or not {"account_id", "asset", "amount"} <= set(reader.fieldnames):
        raise ValidationError("CSV header must include account_id,asset,amount", field="balances_file")
    for i, row in enumerate(reader):
        code = row["asset"]
        if code not in decimals:
            raise ValidationError(f"asset {code!r} is not in the asset list", field=f"row {i + 2}.asset")
        amount = parse_amount(row["amount"], decimals[code], field=f"row {i + 2}.amount", allow_negative=True)
        yield row["account_id"], code, amount


def describe_amount(minor: int, decimals: int) -> str:
    return format_amount(minor, decimals, trim=True)
