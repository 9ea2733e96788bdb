"""The risk review against the user's own history: every point has a reason; ~100% to a new address
is mandatory manual review; known addresses and ordinary amounts score low."""

from __future__ import annotations

from hypothesis import given, strategies as st

from ringfence.custody.withdrawals import RiskFacts, assess_risk


def _f(**kw):
    base = dict(amount_minor=1_000, balance_minor=100_000, past_amounts_minor=(900, 1_100, 1_000), known_address=True,
                seconds_since_credential_change=-1, new_device=False, new_ip=False)
    return RiskFacts(**{**base, **kw})


def test_ordinary_withdrawal_scores_zero_with_reason() -> None:
    r = assess_risk(_f())
    assert r.score == 0 and not r.manual_review and r.reasons == ("amount is in line with the user's history",)


def test_each_factor_adds_points_with_a_reason() -> None:
    r = assess_risk(_f(amount_minor=60_000, known_address=False, seconds_since_credential_change=3_600,
                       new_device=True, new_ip=True))
    assert r.score == 25 + 15 + 20 + 20 + 10 + 10
    text = " | ".join(r.reasons)
    for needle in ("median withdrawal", "60.00% of the balance", "new destination", "credentials changed 3600 s ago",
                   "new device", "new IP"):
        assert needle in text, needle


def test_nearly_everything_to_a_new_address_is_manual_review() -> None:
    assert assess_risk(_f(amount_minor=95_000, known_address=False)).manual_review
    assert not assess_risk(_f(amount_minor=94_999, known_address=False)).manual_review
    assert not assess_risk(_f(amount_minor=100_000, known_address=True)).manual_review  # a known address


@given(amount=st.integers(1, 10**20), balance=st.integers(0, 10**20), known=st.booleans(),
       since=st.integers(-1, 10**7), dev=st.booleans(), ip=st.booleans(),
       past=st.lists(st.integers(1, 10**18), max_size=5))
def test_score_bounded_and_manual_review_rule(amount, balance, known, since, dev, ip, past) -> None:
    r = assess_risk(RiskFacts(amount, balance, tuple(past), known, since, dev, ip))
    assert 0 <= r.score <= 100 and r.reasons
    share_bp = amount * 10_000 // balance if balance else 10_000
    assert r.manual_review == (share_bp >= 9_500 and not known)
