"""The liabilities snapshot: per-user aggregation across segments, floor at zero, debts apart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringfence.errors import ValidationError
from ringfence.solvency.pol import build_liability_tree
from ringfence.solvency.snapshot import AssetSpec, LiabilitySnapshot, aggregate_entries

ASSETS = (AssetSpec("BTC", 8), AssetSpec("ETH", 18))

entries_st = st.lists(
    st.tuples(st.sampled_from(["a", "b", "c", "d"]), st.sampled_from(["BTC", "ETH"]),
              st.integers(min_value=-(10**30), max_value=10**30)),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(entries_st)
def test_property_floor_at_zero_and_debts_conserve_every_minor_unit(entries) -> None:
    accounts, debts, debtors = aggregate_entries(ASSETS, entries)
    for k, spec in enumerate(ASSETS):
        net = sum(e[2] for e in entries if e[1] == spec.code)
        liabilities = sum(row[k] for _, row in accounts)
        assert liabilities - debts[spec.code] == net  # nothing created or destroyed
        for account_id, row in accounts:
            own = sum(e[2] for e in entries if e[0] == account_id and e[1] == spec.code)
            assert row[k] == max(own, 0)
    assert debtors == len({a for a, row in _nets(entries).items() if any(v < 0 for v in row.values())})


def _nets(entries):
    out: dict[str, dict[str, int]] = {}
    for a, code, amount in entries:
        out.setdefault(a, {}).setdefault(code, 0)
        out[a][code] += amount
    return out


@settings(max_examples=40, deadline=None)
@given(entries_st)
def test_property_liabilities_total_equals_the_ledgers_user_balances(entries) -> None:
    snap = LiabilitySnapshot.from_entries(ASSETS, entries, position="journal:1", source_digest=b"\0" * 32)
    if not snap.accounts:
        return
    tree = build_liability_tree(snap.snapshot_id, snap.asset_codes, snap.iter_accounts(), b"k" * 32)
    for code, total in tree.totals().items():
        assert total == sum(max(v.get(code, 0), 0) for v in _nets(entries).values())


def test_snapshot_roundtrip_and_id(tmp_path: Path) -> None:
    entries = [("a", "BTC", 5), ("a", "ETH", -2), ("b", "ETH", 7)]
    snap = LiabilitySnapshot.from_entries(ASSETS, entries, position="journal:9", source_digest=b"\1" * 32)
    snap.save(tmp_path / "s.json")
    again = LiabilitySnapshot.load(tmp_path / "s.json")
    assert again.to_json() == snap.to_json()
    other = LiabilitySnapshot.from_entries(ASSETS, entries, position="journal:10", source_digest=b"\1" * 32)
    assert other.snapshot_id != snap.snapshot_id  # the id names the position


@pytest.mark.parametrize("bad", [[("", "BTC", 1)], [("a", "DOGE", 1)], [("a", "BTC", 1.0)], [("a", "BTC", True)]])
def test_bad_entries_are_rejected(bad) -> None:
    with pytest.raises(ValidationError):
        LiabilitySnapshot.from_entries(ASSETS, bad, position="journal:1", source_digest=b"\0" * 32)


def test_tampered_snapshot_file_is_rejected(tmp_path: Path) -> None:
    snap = LiabilitySnapshot.from_entries(ASSETS, [("a", "BTC", 5)], position="p", source_digest=b"\0" * 32)
    doc = snap.to_json()
    for value in ("-5", "²", "5.0", 5):
        doc["accounts"][0][1][0] = value
        (tmp_path / "s.json").write_text(json.dumps(doc))
        with pytest.raises(ValidationError):
            LiabilitySnapshot.load(tmp_path / "s.json")
