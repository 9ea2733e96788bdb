"""The shield rule's alarm (solvency/shield_alarm.py) against a real monitoring store: for any
sequence of rule readings, with restarts anywhere, exactly one alert is stored per change
(holds -> broken: `shield-fund-rule`; broken -> holds: `shield-fund-rule-restored`), none per
repeated reading, and all of them in one case. The engine read is replaced by the sequence of
`shield_status` results (the live path is tests/api/test_capital_kyt.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from pgtest import profile_store_url
from hypothesis import strategies as st
from sqlalchemy import delete, select

from ringfence.solvency.shield_alarm import ACCOUNT, BROKEN_RULE, RESTORED_RULE, ShieldAlarm
from ringfence.store import Store
from ringfence.store.models import MonitoringAlert, MonitoringCase

# the SQL store (identity, read models) is exercised: `make test` runs this file again on PostgreSQL
pytestmark = pytest.mark.store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """SQLite, or a PostgreSQL database of its own on the suite's PostgreSQL profile (tests/pgtest.py)."""
    with profile_store_url(tmp_path_factory.mktemp("alarm")) as url:
        st = Store.from_url(url)
        yield st
        st.engine.dispose()


def reading(broken: bool, unpriced: bool) -> dict:
    hot, shield = (200, 100) if broken else (100, 200)
    return {"shield_value_minor": str(shield), "hot_value_minor": str(hot), "unpriced": ["ETH"] if unpriced else [],
            "applicable": True, "ok": None if unpriced else not broken, "value_asset": "USDT",
            "alert": broken or unpriced, "assets": []}


@settings(max_examples=40, deadline=None)
@given(steps=st.lists(st.tuples(st.booleans(), st.booleans(), st.booleans()), max_size=25))
def test_one_alert_per_change_of_the_rule_across_restarts(store: Store, steps) -> None:
    with store.tx() as db:
        db.execute(delete(MonitoringAlert))
        db.execute(delete(MonitoringCase))
    now = {"ms": 1_000}
    current: dict = {}

    def new_alarm() -> ShieldAlarm:
        return ShieldAlarm(lambda fn: (current["status"], {}), store, "USDT", every_s=1)

    alarm = new_alarm()
    expected, raised = [], False
    for broken, unpriced, restart in steps:
        if restart:
            alarm = new_alarm()  # a server restart: the state comes from the stored alerts
        current["status"] = reading(broken, unpriced)
        now["ms"] += 1_000
        assert alarm.due(now["ms"])
        alarm.check(now["ms"])
        alerting = broken or unpriced
        if alerting != raised:
            expected.append(BROKEN_RULE if alerting else RESTORED_RULE)
            raised = alerting
        assert alarm.status()["alert"] is raised
    with store.tx() as db:
        rows = db.scalars(select(MonitoringAlert).order_by(MonitoringAlert.id)).all()
        got = [(a.rule, a.severity, a.account_id) for a in rows]
        cases = {a.case_id for a in rows}
    assert [r for r, _, _ in got] == expected
    assert all(acct == ACCOUNT and sev == ("high" if r == BROKEN_RULE else "low") for r, sev, acct in got)
    assert len(cases) <= 1  # the breaches and their ends join the open case of system:shield-fund


def test_an_unpriced_asset_is_an_alert_that_says_why(store: Store) -> None:
    with store.tx() as db:
        db.execute(delete(MonitoringAlert))
    alarm = ShieldAlarm(lambda fn: (reading(False, True), {}), store, "USDT", every_s=5)
    hit = alarm.check(10_000)
    assert hit is not None and hit.rule == BROKEN_RULE and "cannot be checked: no price for ETH" in hit.explanation
    assert alarm.check(11_000) is None and not alarm.due(15_999) and alarm.due(16_000)
