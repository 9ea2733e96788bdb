"""The behavioural model (monitoring/models.py) and the pump detector: scores are deterministic for a
stream (hypothesis), never negative, zero without history; a never-seen device scores, a familiar one
does not; failed sign-ins are never learnt; a behaviour alert carries its features; a pump by a small
linked group on a thin market is flagged, a rally bought by many unrelated accounts is not."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings, strategies as st

from ringfence.errors import ValidationError
from ringfence.monitoring.events import Event
from ringfence.monitoring.models import Baselines, network_of
from ringfence.monitoring.rules import Scorer, parse_rules
from ringfence.monitoring.synth import generate

KINDS = ("sign_in", "api_call", "sign_in_failed", "password_changed", "withdrawal_requested", "order_placed")


def rules(*extra: dict) -> object:
    return parse_rules(json.dumps({"version": 1, "rules": list(extra)}))


TAKEOVER = {"name": "takeover", "type": "behaviour", "severity": "high", "window_s": 3600, "score_gte": 6000, "min_history": 3,
            "settle_s": 60,
            "match": {"kind": ["sign_in", "api_call", "password_changed", "api_key_created", "withdrawal_requested"]}}
STUFFING = {"name": "stuffing", "type": "behaviour", "window_s": 600, "score_gte": 8000, "min_history": 1, "settle_s": 60,
            "match": {"kind": ["sign_in_failed"]}}

streams = st.lists(
    st.tuples(st.sampled_from(KINDS), st.integers(0, 600_000), st.sampled_from(("u1", "u2")), st.sampled_from(("d1", "d2", "d3")),
              st.sampled_from(("10.0.0.1", "10.0.1.9", "2001:db8::1")), st.integers(1, 10**9), st.sampled_from(("a1", "a2"))),
    max_size=60,
).map(lambda rows: [Event(i + 1, k, sum(r[1] for r in rows[: i + 1]), account_id=u, device=d, ip=ip,
                          data={"amount_minor": v, "notional_minor": v, "asset": "BTC", "address": addr, "endpoint": "/api/v3/" + d})
                    for i, (k, _, u, d, ip, v, addr) in enumerate(rows)])


def scores(events: list[Event]) -> list[tuple[int, tuple]]:
    model = Baselines(settle_ms=60_000)
    out = []
    for e in events:
        a = model.assess(e)
        out.append((a.score, a.contributions))
        model.learn(e)
    return out


@settings(max_examples=25, deadline=None)
@given(streams)
def test_the_same_stream_gives_the_same_scores_and_hits(events) -> None:
    first, again = scores(events), scores(list(events))
    assert first == again
    for score, contributions in first:
        assert score >= 0 and score == sum(c[1] for c in contributions)
        assert all(mb > 0 for _, mb, _ in contributions)
    hits = [[h.as_dict() for e in events for h in s.process(e)] for s in (Scorer(rules(TAKEOVER, STUFFING)) for _ in range(2))]
    assert hits[0] == hits[1]
    for h in hits[0]:
        assert h["score"] >= 6000 and h["features"] and h["evidence"]


@settings(max_examples=4, deadline=None)
@given(st.integers(0, 10**9))
def test_the_same_seed_gives_the_same_scores_and_alerts(seed: int) -> None:
    from ringfence.monitoring.rules import default_rules

    runs = []
    for _ in range(2):
        data, scorer = generate(seed, 120), Scorer(default_rules())
        runs.append([(scorer.assess(e).score if e.account_id else 0, [h.as_dict() for h in scorer.process(e)]) for e in data.events])
    assert runs[0] == runs[1] and any(score for score, _ in runs[0])


@settings(max_examples=40, deadline=None)
@given(streams)
def test_an_account_without_history_scores_nothing_and_failures_are_never_learnt(events) -> None:
    model = Baselines(settle_ms=0)
    for e in events:
        if model.profile(e.account_id) is None:
            assert model.assess(e).score == 0
        model.learn(e)
    for account in ("u1", "u2"):
        p = model.profile(account)
        if p is not None:
            trusted = [e for e in events if e.account_id == account and e.kind != "sign_in_failed"]
            assert p.events == len(trusted) and p.kinds.get("sign_in_failed", 0) == 0


def _ev(i: int, kind: str, at_s: int, device: str = "phone", ip: str = "10.1.2.3", account: str = "ann", **data: object) -> Event:
    return Event(i, kind, at_s * 1000, account_id=account, device=device, ip=ip, data=dict(data))


def test_a_new_device_and_network_score_and_a_familiar_one_does_not() -> None:
    model = Baselines(settle_ms=60_000)
    history = [_ev(i, "api_call", i * 10, endpoint="/api/v3/order") for i in range(1, 11)]
    for e in history:
        model.learn(e)
    assert model.assess(_ev(20, "api_call", 3_600, endpoint="/api/v3/order")).score == 0
    odd = model.assess(_ev(21, "api_call", 3_600, device="evil/1", ip="185.1.2.3", endpoint="/sapi/v1/capital/withdraw/apply"))
    assert {f for f, _, _ in odd.contributions} == {"device", "network", "endpoint"}
    device = [c for c in odd.contributions if c[0] == "device"][0]
    assert device[1] == 2585 and "evil/1 seen 0 of 10 times" in device[2]  # log2(12) - log2(2), in milli-bits
    # the intruder's device is not familiar while it is used (settle_ms): the next event scores it again
    model.learn(_ev(21, "api_call", 3_600, device="evil/1", ip="185.1.2.3"))
    assert any(f == "device" for f, _, _ in model.assess(_ev(22, "api_call", 3_610, device="evil/1", ip="185.1.2.3")).contributions)
    assert network_of("185.1.2.3") == "185.1.2.0/24" and network_of("2001:db8:1:2::1") == "2001:db8:1::/48"


def test_a_takeover_raises_one_behaviour_alert_with_its_features_and_a_new_phone_does_not() -> None:
    scorer = Scorer(rules(TAKEOVER))
    events = [_ev(i, "api_call", i * 10, endpoint="/api/v3/order") for i in range(1, 11)]
    events += [_ev(11, "sign_in", 2_000), _ev(12, "sign_in", 3_000, device="new-phone")]  # a new phone, same home network
    events += [_ev(13, "sign_in", 9_000, device="evil/1", ip="185.1.2.3"),
               _ev(14, "password_changed", 9_100, device="evil/1", ip="185.1.2.3"),
               _ev(15, "withdrawal_requested", 9_200, device="", ip="", asset="BTC", amount_minor=50_000_000, address="bc1qx")]
    hits = [h for e in events for h in scorer.process(e)]
    assert [h.evidence[-1] for h in hits] in ([14], [15]), [h.explanation for h in hits]
    [hit] = hits
    features = {f for f, _, _ in hit.features}
    assert {"device", "network", "action"} <= features and hit.score >= 6000
    assert "new-phone" not in hit.explanation and 12 not in hit.evidence
    as_json = hit.as_dict()["features"]
    assert as_json[0]["feature"] == hit.features[0][0] and as_json[0]["contribution"] == hit.features[0][1]


def test_failed_sign_ins_from_a_stranger_add_up_and_the_owners_own_do_not() -> None:
    scorer = Scorer(rules(STUFFING))
    events = [_ev(i, "sign_in", i * 10) for i in range(1, 6)]
    events += [_ev(10 + i, "sign_in_failed", 4_000 + i) for i in range(8)]  # the owner, locked out on their own phone
    events += [_ev(20 + i, "sign_in_failed", 5_000 + i, device="bot/1.0", ip="45.1.1.1") for i in range(5)]
    hits = [h for e in events for h in scorer.process(e)]
    assert len(hits) == 1 and all(i >= 20 for i in hits[0].evidence), [h.explanation for h in hits]


@pytest.mark.parametrize("change, field", [
    ({"score_gte": 0}, "rules[0].score_gte"),
    ({"top": 99}, "rules[0].top"),
    ({"settle_s": -1}, "rules[0].settle_s"),
    ({"match": {"kind": []}}, "rules[0].match.kind"),
    ({"field": "amount_minor"}, "rules[0]"),
])
def test_a_bad_behaviour_rule_names_the_field(change: dict, field: str) -> None:
    with pytest.raises(ValidationError) as err:
        rules({**TAKEOVER, **change})
    assert err.value.field == field


PUMP = {"name": "pump", "type": "pump", "window_s": 3600, "rise_bp": 2000, "dump_bp": 1500, "max_quote_minor": 50_000_000_000,
        "max_group": 3, "group_share_bp": 7000, "min_trades": 6}


def _trade(i: int, at_s: int, taker: str, maker: str, side: str, price: int, symbol: str = "THINUSDT", device: str = "") -> Event:
    qty = 1_000 * 100_000_000
    return Event(i, "trade", at_s * 1000, account_id=taker, device=device,
                 data={"symbol": symbol, "maker_owner": maker, "taker_side": side, "price": price, "quantity": qty,
                       "quote_qty": price * qty // 100_000_000})


def _market(buyers: list[str], sellers: list[str], symbol: str = "THINUSDT", device: str = "") -> list[Event]:
    events, price, i = [], 1_000_000, 0
    for k, b in enumerate(buyers):
        i += 1
        price = price * 106 // 100
        events.append(_trade(i, 60 * k, b, f"mm{k}", "BUY", price, symbol, device))
    for k, s in enumerate(sellers):
        i += 1
        price = price * 92 // 100
        events.append(_trade(i, 60 * (len(buyers) + k), s, f"mm{k}", "SELL", price, symbol, device))
    return events


def test_a_pump_by_a_small_linked_group_is_flagged_and_a_broad_rally_is_not() -> None:
    scorer = Scorer(rules(PUMP))
    group = ["p1", "p2"]
    for n, a in enumerate(group):
        scorer.process(Event(100 + n, "sign_in", 0, account_id=a, device="farm/1"))
    hits = [h for e in _market(group * 5, group * 2, device="farm/1") for h in scorer.process(e)]
    assert len(hits) == 1 and {hits[0].account_id, *hits[0].related} == {"p1", "p2"}
    assert "linked: device=farm/1" in hits[0].explanation and "rose" in hits[0].explanation
    scorer = Scorer(rules(PUMP))
    rally = _market([f"b{i}" for i in range(10)], [f"s{i}" for i in range(4)])
    assert [h for e in rally for h in scorer.process(e)] == []
    scorer = Scorer(rules({**PUMP, "max_quote_minor": 1_000_000}))  # not a thin market: the same pump is no pump here
    assert [h for e in _market(group * 5, group * 2) for h in scorer.process(e)] == []


def test_the_generator_labels_pump_groups_on_thin_markets() -> None:
    data = generate(3, 400)
    pumps = {a for a, t in data.truth.items() if t == "pump"}
    assert len(pumps) >= 2
    thin = {e.data["symbol"] for e in data.events if e.kind == "trade" and e.account_id in pumps and e.device.startswith("pump/")}
    assert thin and all(s.startswith("THIN") for s in thin)


def test_geoip_reads_a_country_database_written_here(tmp_path) -> None:
    from ringfence.errors import ConfigError
    from ringfence.monitoring.geoip import GeoIP, write_country_db
    from ringfence.monitoring.service import Monitor

    path = write_country_db(tmp_path / "c.mmdb", {"10.0.0.0/8": "DE", "10.1.2.0/24": "FR", "185.1.2.0/24": "RU"})
    geo = GeoIP(path)
    got = {ip: geo.country(ip) for ip in ("10.9.9.9", "10.1.2.3", "185.1.2.200", "185.1.3.1", "2001:db8::1", "not an ip")}
    assert got == {"10.9.9.9": "DE", "10.1.2.3": "FR", "185.1.2.200": "RU", "185.1.3.1": "", "2001:db8::1": "", "not an ip": ""}
    geo.close()
    (tmp_path / "junk.mmdb").write_bytes(b"not a database")
    with pytest.raises(ConfigError) as err:
        Monitor(None, None, parse_rules('{"version": 1, "rules": []}'), geoip=str(tmp_path / "junk.mmdb"))  # type: ignore[arg-type]
    assert err.value.field == "RINGFENCE_MONITORING_GEOIP"
