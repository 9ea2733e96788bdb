"""`coalesce_diffs` (api/ws.py): a batch's depth diffs of one book go out as one message. Property: a
client that applies the coalesced diff (Binance's rule: set each level to its quantity, 0 removes it)
ends with the same book as one that applied the diffs one by one, and the update ids still chain."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ringfence.api.ws import coalesce_diffs

levels = st.lists(st.tuples(st.integers(1, 20), st.integers(0, 5)), max_size=6)


def apply(book: dict[str, dict[int, int]], diff: dict) -> None:
    for side in ("bids", "asks"):
        for price, qty in diff[side]:
            if qty:
                book[side][price] = qty
            else:
                book[side].pop(price, None)


@given(st.integers(0, 1000), st.lists(st.tuples(levels, levels), min_size=1, max_size=8), levels, levels)
def test_a_coalesced_diff_builds_the_same_book(start: int, changes, bids0, asks0) -> None:
    diffs, last = [], start
    for i, (bids, asks) in enumerate(changes):
        bids, asks = list(dict(bids).items()), list(dict(asks).items())  # a diff names each level once
        n = max(1, len(bids) + len(asks))
        diffs.append({"first_update_id": last + 1, "last_update_id": last + n, "ts_ns": 1000 + i, "bids": bids, "asks": asks})
        last += n
    one_by_one = {"bids": {p: q for p, q in bids0 if q}, "asks": {p: q for p, q in asks0 if q}}
    at_once = {side: dict(book) for side, book in one_by_one.items()}
    for diff in diffs:
        apply(one_by_one, diff)
    merged = coalesce_diffs(diffs)
    apply(at_once, merged)
    assert at_once == one_by_one
    assert (merged["first_update_id"], merged["last_update_id"]) == (start + 1, last)
    assert merged["ts_ns"] == diffs[-1]["ts_ns"]
    if len(diffs) == 1:
        assert merged is diffs[0]
