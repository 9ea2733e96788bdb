"""Analysts' case decisions fed back into the behavioural model (monitoring/feedback.py): the learnt
weights are a pure function of the ordered decisions (hypothesis), stay within their bounds, move
only the features a decision names and in the label's direction; the model scales each feature's
contribution by its weight and says so; a bad weights file names the field. Through the running
exchange: tests/monitoring/test_replay_live.py::test_closing_cases_teaches_the_model_its_weights."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from ringfence.errors import ValidationError
from ringfence.monitoring.events import Event
from ringfence.monitoring.feedback import MAX_WEIGHT, MIN_WEIGHT, Decision, apply, learn, parse_weights
from ringfence.monitoring.models import FEATURES, Baselines

decisions = st.lists(st.builds(
    lambda i, label, feats: Decision(i, i, i, label, sum(c for _, c in feats), tuple(feats)),
    st.integers(1, 10**6), st.sampled_from((1, -1)),
    st.lists(st.tuples(st.sampled_from(FEATURES), st.integers(1, 6_000)), min_size=1, max_size=5, unique_by=lambda t: t[0])),
    max_size=40)


@settings(max_examples=50, deadline=None)
@given(decisions)
def test_weights_are_a_pure_function_of_the_ordered_decisions_within_bounds(ds) -> None:
    w = learn(ds)
    assert w == learn(list(ds)) and set(w) == set(FEATURES)
    assert all(MIN_WEIGHT <= v <= MAX_WEIGHT for v in w.values())
    before = learn([])
    for d in ds:  # one step at a time: only the named features move, in the label's direction
        after = apply(before, d)
        named = {f for f, _ in d.features}
        for f in FEATURES:
            if f not in named:
                assert after[f] == before[f]
            elif d.label > 0:
                assert after[f] >= before[f]
            else:
                assert after[f] <= before[f]
        before = after
    assert before == w


def test_a_false_positive_lowers_what_drove_it_and_the_model_scores_less_and_says_why() -> None:
    model = Baselines(settle_ms=0)
    for i in range(10):
        model.learn(Event(i + 1, "sign_in", i * 1000, account_id="u1", ip="10.0.0.1", device="home"))
    phone = Event(99, "sign_in", 60_000, account_id="u1", ip="10.0.0.1", device="phone")
    first = model.assess(phone)
    [(feature, mb, _)] = first.contributions
    assert feature == "device" and mb > 0
    fp = Decision(1, 7, 3, -1, mb, (("device", mb),))
    model.weights = learn([fp, fp])
    assert model.weights["device"] == 1000 - 2 * 200 and model.weights["network"] == 1000
    again = model.assess(phone)
    [(feature, scaled, detail)] = again.contributions
    assert scaled == mb * 600 // 1000 and "weight 600‰" in detail
    model.weights = learn([Decision(2, 8, 4, 1, mb, (("device", mb),))] * 20)  # confirmed abuse, many times: capped
    assert model.weights["device"] == MAX_WEIGHT and model.assess(phone).score == mb * MAX_WEIGHT // 1000


@pytest.mark.parametrize(("text", "field"), [
    ('{"weights": {"devise": 900}}', "weights.devise"), ('{"device": 100}', "weights.device"),
    ('{"device": 1.5}', "weights.device"), ('{"device": true}', "weights.device"), ("[1]", "weights"), ("nope", "weights")])
def test_a_bad_weights_file_names_the_field(text: str, field: str) -> None:
    with pytest.raises(ValidationError) as err:
        parse_weights(text)
    assert err.value.field == field


def test_weights_as_the_endpoint_answers_them_parse() -> None:
    w = parse_weights('{"weights": {"device": 800, "network": 1200}, "decisions": []}')
    assert w["device"] == 800 and w["network"] == 1200 and w["hour"] == 1000
