"""The de-identified export: k-anonymity holds on every output (hypothesis), pseudonyms are keyed."""

from __future__ import annotations

import collections

from hypothesis import given, settings, strategies as st

from ringfence.monitoring.deid import PseudonymKey, deidentify
from ringfence.monitoring.events import Event

KEY = PseudonymKey("k1", b"\x01" * 32)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(("sign_in", "api_call", "trade")), st.integers(0, 3), st.integers(0, 5),
                          st.sampled_from(("10.0.0.1", "10.0.0.9", "10.0.1.1", "", "::1")), st.sampled_from(("a/1", "b/2", ""))),
                max_size=60), st.integers(1, 4))
def test_every_kept_record_shares_its_quasi_identifiers_with_k_pseudonyms(rows, k) -> None:
    events = [Event(i + 1, kind, hour * 3_600_000 + 5, account_id=f"acct{u}", ip=ip, device=dev,
                    data={"maker_owner": "acct9", "amount_minor": 12345})
              for i, (kind, hour, u, ip, dev) in enumerate(rows)]
    kept, report = deidentify(events, KEY, k=k)
    groups = collections.defaultdict(set)
    for r in kept:
        groups[(r["kind"], r["hour"], r["network"], r["device_family"])].add(r["pseudonym"])
    assert all(len(p) >= k for p in groups.values())
    assert report["records_out"] == len(kept) and report["records_in"] == len(events)
    assert report["k_achieved"] >= k or not kept
    text = repr(kept)
    assert "acct" not in text and "10.0.0.1" not in text and "12345" not in text


def test_pseudonyms_link_within_a_key_and_not_across_keys() -> None:
    other = PseudonymKey("k2", b"\x02" * 32)
    assert KEY.pseudonym("alice") == KEY.pseudonym("alice") != KEY.pseudonym("bob")
    assert KEY.pseudonym("alice") != other.pseudonym("alice")


def test_every_monitoring_command_has_help_with_an_example_and_key_files_are_never_overwritten(tmp_path) -> None:
    from typer.testing import CliRunner

    from ringfence.cli import app

    runner = CliRunner()
    for command in ("check", "backtest", "export", "deidentify", "replay", "replay-rules", "model"):
        out = runner.invoke(app, ["monitoring", command, "--help"])
        assert out.exit_code == 0 and "Example:" in out.stdout, (command, out.stdout)
    key = tmp_path / "k.json"
    key.write_text("{}")
    out = runner.invoke(app, ["monitoring", "deidentify", "--events", str(tmp_path / "none.jsonl"), "--key-file", str(key),
                              "--new-key", "--out", str(tmp_path / "o.jsonl")])
    assert out.exit_code == 2 and "error: --key-file: " in out.output and key.read_text() == "{}"
