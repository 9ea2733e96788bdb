"""Properties of the scheduled publisher and the coverage chart (hypothesis; seeds are printed by
hypothesis on failure).

* History: whatever the number of publications and `keep`, the history lists exactly the newest
  min(count, keep) proofs with consecutive numbers ending at `count`, the disk holds exactly those
  folders, and each kept root passes the stdlib-only verifier.
* Chart: every point lies inside the plot; for one asset a higher coverage is never drawn lower;
  proofs are drawn left to right in order.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringfence.solvency.history_page import _H, _LEFT, _RIGHT, _TOP, _W, _BOTTOM, coverage_chart_svg
from ringfence.solvency.pol_builder import DEV_SECRET
from ringfence.solvency.pol_verifier import check_root_document
from ringfence.solvency.publisher import PorPublisher, read_history


@pytest.fixture(scope="module")
def demo_node(tmp_path_factory):
    from ringfence.api.demo import seed_demo
    from ringfence.app import new_node

    node = new_node(tmp_path_factory.mktemp("node"), fsync=False)
    node.open()
    seed_demo(node)
    yield node
    node.close()


@settings(max_examples=12, deadline=None)
@given(count=st.integers(1, 7), keep=st.integers(1, 4))
def test_history_keeps_the_newest_and_numbers_them_consecutively(demo_node, count, keep) -> None:
    out = Path(tempfile.mkdtemp()) / "por"
    try:
        publisher = PorPublisher(demo_node.read, out, DEV_SECRET, keep=keep)
        for _ in range(count):
            publisher.publish()
        proofs = read_history(out)["proofs"]
        expected = list(range(max(count - keep, 0) + 1, count + 1))
        assert [p["n"] for p in proofs] == expected
        assert sorted(int(d.name) for d in out.iterdir() if d.is_dir()) == expected
        for p in proofs:
            root = json.loads((out / str(p["n"]) / "root.json").read_text())
            assert check_root_document(root)["root"]["hash"] == p["root_hash"]
            assert not p["reserves_proven"] and all(a["coverage_bp"] is None for a in p["assets"])
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)


_coverage = st.one_of(st.none(), st.integers(0, 2_000_000))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.fixed_dictionaries({"BTC": _coverage, "ETH": _coverage}), min_size=1, max_size=40))
def test_chart_points_stay_inside_and_keep_their_order(rows) -> None:
    proofs = [{"n": i + 1, "published_at": f"t{i}", "assets": [{"asset": a, "coverage_bp": bp} for a, bp in row.items()]}
              for i, row in enumerate(rows)]
    svg = coverage_chart_svg(proofs)
    drawn = [(m[0], int(m[1]), int(m[2]), int(m[3])) for m in
             re.findall(r'class="coverage-point" data-asset="(\w+)" data-n="(\d+)" cx="(\d+)" cy="(\d+)"', svg)]
    expected = sorted((a, i + 1) for i, row in enumerate(rows) for a, bp in row.items() if bp is not None)
    assert sorted((a, n) for a, n, _, _ in drawn) == expected
    if not expected:
        assert 'id="coverage-chart-empty"' in svg
        return
    for _, _, x, y in drawn:
        assert _LEFT <= x <= _W - _RIGHT and _TOP <= y <= _H - _BOTTOM
    for asset in ("BTC", "ETH"):
        pts = [(n, x, y) for a, n, x, y in drawn if a == asset]
        bp = {i + 1: row[asset] for i, row in enumerate(rows)}
        assert [x for _, x, _ in pts] == sorted(x for _, x, _ in pts)
        for n1, _, y1 in pts:
            for n2, _, y2 in pts:
                if bp[n1] > bp[n2]:
                    assert y1 <= y2
