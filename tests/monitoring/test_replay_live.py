"""The synthetic typologies replayed through a live `ringfence serve --demo`'s API (issue 20, item 8):
`ringfence monitoring replay` signs accounts up on the sign-up page, confirms them from /dev/mail,
turns on TOTP, creates API keys, funds them with faucet deposits on the local chain, trades and
cancels through the Binance REST API, guesses passwords from a bot, takes an account over from a new
device and network, adds a withdrawal address and structures withdrawals, lists thin markets by the
operator quorum and pumps and dumps one (a large buyer on the other) — then reads the alerts back from
GET /admin/v1/alerts as an analyst and scores precision and recall per typology over its own accounts.
Smoke size (20 accounts, one server); a
bigger run: `python bench/monitoring_live.py --users 60 --seed 1001`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from ringfence.monitoring.feedback import Decision, learn
from ringfence.monitoring.replay import LIVE_TYPOLOGIES, plan
from tests.api.conftest import Invoked, Server, invoke
from tests.monitoring.test_live import admin, poll

SRC = str(Path(__file__).resolve().parents[2] / "src")
ARGS = ("--forwarded-allow-ips", "127.0.0.1")
ENV: dict[str, str] = {}  # the server's settings (filled by the fixture)
STORE_ENV: dict[str, str] = {}  # where the commands find the server's store (its `store_env`; filled by the fixture)


def ringfence(*args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=SRC, **STORE_ENV)
    return subprocess.run([sys.executable, "-m", "ringfence.cli", *args], capture_output=True, text=True, env=env, timeout=timeout)


def here(*args: str) -> Invoked:
    """`ringfence ARGS` in this process (tests/api/conftest.py invoke: the same command code without a Python start of
    1-2 s of CPU); the replay and the first `replay-rules` run as processes (`ringfence`)."""
    return invoke(*args, env=STORE_ENV)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    rules = tmp_path_factory.mktemp("rules") / "replay-rules.json"
    made = ringfence("monitoring", "replay-rules", str(rules))
    assert made.returncode == 0, made.stdout + made.stderr
    ENV.update({
        "RINGFENCE_MONITORING_POLL_MS": "50", "RINGFENCE_MONITORING_RULES": str(rules),
        "RINGFENCE_CUSTODY_BLOCK_INTERVAL_MS": "500", "RINGFENCE_CUSTODY_POLL_MS": "200",
        # time compressed like the rules: a new address cools 0 s (not a day), a credential change locks withdrawals
        # 1 s (not a day)
        "RINGFENCE_CUSTODY_ADDRESS_COOLING_S": "0", "RINGFENCE_IDENTITY_WITHDRAWAL_LOCK_S": "1",
        # cheap password hashes (dev mode only; refused below 19 MiB outside it): about 40 sign-ups and sign-ins
        "RINGFENCE_IDENTITY_ARGON2_MEMORY_KIB": "1024", "RINGFENCE_IDENTITY_ARGON2_TIME_COST": "1",
        "RINGFENCE_IDENTITY_ARGON2_PARALLELISM": "1"})
    srv = Server(tmp_path_factory.mktemp("replay") / "data", args=ARGS, env=ENV)
    STORE_ENV.update(srv.store_env)
    yield srv
    assert srv.stop() == 0, "the server did not shut down cleanly on SIGTERM"


def test_the_plan_is_seeded_and_labels_every_typology() -> None:
    a, b = plan(7, 20), plan(7, 20)
    assert [(x.typology, x.device, x.ip, x.role) for x in a] == [(x.typology, x.device, x.ip, x.role) for x in b]
    assert {x.typology for x in a} >= set(LIVE_TYPOLOGIES)
    assert [(x.typology, x.device) for x in plan(8, 20)] != [(x.typology, x.device) for x in a]
    with pytest.raises(ValueError, match="at least 20"):
        plan(1, 19)
    for seed in range(40):  # the smallest size holds every typology and confounder for any seed
        assert {x.role for x in plan(seed, 20)} >= {"big_buyer", "ask_maker", "bid_maker", "pair", "withdrawer"}


@pytest.fixture(scope="module")
def replayed(server, tmp_path_factory) -> dict:
    seed = 1001
    print(f"replay seed {seed}")
    out = tmp_path_factory.mktemp("replay") / "replay.jsonl"
    run = ringfence("monitoring", "replay", "--data", str(server.data), "--url", server.base, "--seed", str(seed),
                    "--users", "20", "--out", str(out))
    print(run.stdout)
    assert run.returncode == 0, run.stdout + run.stderr + server.log_text()[-3000:]
    assert "precision" in run.stdout and "account_takeover" in run.stdout, run.stdout
    return json.loads(out.read_text())  # type: ignore[no-any-return]


def test_typologies_replayed_through_the_api_are_caught_on_the_analyst_endpoints(server, replayed, tmp_path) -> None:
    result = replayed
    table = result["typologies"]
    assert set(table) == set(LIVE_TYPOLOGIES)
    for typ, row in table.items():  # the goal: recall >= 0.9 at precision >= 0.8, for each typology
        assert row["accounts"] >= 1 and row["recall_permille"] >= 900 and row["precision_permille"] >= 800, (typ, row, result)
    labels = result["accounts"]
    assert len(labels) == 20 and {"new_phone", "forgetful", "pair", "big_order", "withdrawer", "big_buyer"} <= set(labels.values())

    # the thin markets were listed by the operator quorum and traded: the pump's alert names its whole group
    listed = {m["symbol"]: m for m in admin(server, "GET", "/admin/v1/markets").json()["markets"]}
    assert len(result["thin_markets"]) == 2 and all(listed[s]["band_ppm"] == 0 for s in result["thin_markets"]), listed
    group = {acc for acc, label in labels.items() if label == "pump"}
    [pump] = [a for a in admin(server, "GET", "/admin/v1/alerts?rule=pump-and-dump&limit=100").json()["alerts"] if a["account_id"] in labels]
    assert pump["account_id"] in group and all(acc in pump["explanation"] for acc in group), (pump, group)
    assert result["thin_markets"][0] in pump["explanation"], pump
    # the large buyer's market took the same path (up 30%, then 25% off the peak) and raised no pump alert: sold down by another
    prices = [int(t["price"].replace(".", "")) for t in httpx.get(server.base + "/api/v3/trades",
                                                                   params={"symbol": result["thin_markets"][1]}).json()]
    assert min(prices) * 13 <= max(prices) * 10 and prices[-1] * 100 <= max(prices) * 75, prices

    # the tainted deposit reached the stream although it went to quarantine (score above the line), not to available
    export = tmp_path / "stream.jsonl"
    done = here("monitoring", "export", "--data", str(server.data), "--out", str(export))
    assert done.returncode == 0, done.stdout + done.stderr
    deposits = [json.loads(x) for x in export.read_text().splitlines() if '"deposit_credited"' in x]
    [tainted] = [acc for acc, label in labels.items() if label == "tainted_deposit"]
    quarantined = [d for d in deposits if d["account_id"] == tainted and d["data"]["asset"] == "ETH"]
    assert len(quarantined) == 1 and quarantined[0]["data"]["state"] == "quarantined" and quarantined[0]["data"]["score"] > 85, quarantined
    # every account's USDT from the faucet, the BTC of those who withdraw, the ask maker's ETH
    ordinary = [d for d in deposits if d["account_id"] in labels and d not in quarantined]
    movers = sum(1 for label in labels.values() if label in ("structuring", "withdrawer"))
    assert len(ordinary) == 20 + movers + 1 and all(d["data"]["state"] == "credited" and d["data"]["score"] < 50 for d in ordinary), ordinary


def test_closing_cases_teaches_the_model_its_weights(server, replayed, tmp_path) -> None:
    """An analyst closes the stuffed account's case as a false positive and the taken-over account's as
    confirmed abuse: the model's feature weights move by exactly what the pure learning rule gives for
    those alerts (GET /admin/v1/model, `ringfence monitoring model`), and a back-test with the learnt
    weights scores the false positive's sign-in failures lower."""
    labels = {label: acc for acc, label in replayed["accounts"].items() if label in ("account_takeover", "credential_stuffing")}
    model = admin(server, "GET", "/admin/v1/model").json()
    assert set(model["weights"].values()) == {1000} and model["decisions_total"] == 0, model
    assert admin(server, "GET", "/admin/v1/model", staff="ada").status_code == 403  # analysts only

    def account_alerts(account: str) -> list[dict]:  # all in the account's one open case; those with a score teach
        return admin(server, "GET", f"/admin/v1/alerts?account_id={account}&limit=100").json()["alerts"][::-1]  # oldest first

    stuffed = account_alerts(labels["credential_stuffing"])
    taken = account_alerts(labels["account_takeover"])
    expected = []
    for alerts, reason, label in ((stuffed, "false_positive", -1), (taken, "confirmed_abuse", 1)):
        [case_id] = {a["case_id"] for a in alerts}
        r = admin(server, "POST", f"/admin/v1/cases/{case_id}/close", {"reason": reason, "note": "replay: labelled by the test"})
        assert r.status_code == 200, r.text
        expected += [Decision(0, case_id, a["alert_id"], label, a["score"], tuple((f["feature"], f["contribution"]) for f in a["features"]))
                     for a in alerts if a["score"] > 0]
        if reason == "false_positive":
            n = len(expected)
            poll(lambda: admin(server, "GET", "/admin/v1/model").json()["decisions_total"] == n, "the first decision")  # noqa: B023
            first = admin(server, "GET", "/admin/v1/model").json()
            assert first["weights"] == learn(expected), first
            assert first["weights"]["device"] < 1000 and first["weights"]["network"] < 1000, first
            weights = tmp_path / "model.json"
            cli = here("monitoring", "model", "--key", f"{server.data / 'demo-staff.json'}#cy", "--url", server.base, "--json")
            assert cli.returncode == 0 and json.loads(cli.stdout)["weights"] == first["weights"], cli.stdout + cli.stderr
            weights.write_text(cli.stdout)
    final = poll(lambda: (lambda m: m if m["decisions_total"] == len(expected) else None)(admin(server, "GET", "/admin/v1/model").json()),
                 "both decisions")
    assert final["weights"] == learn(expected) and final["weights"] != learn([]), final  # replayable: the pure rule, same order
    assert [(d["case_id"], d["alert_id"], d["label"]) for d in final["decisions"]] == \
        [(d.case_id, d.alert_id, "confirmed_abuse" if d.label > 0 else "false_positive") for d in expected]

    # the stream back-tested with the weights after the false positive: the stuffed account's failures score lower
    rules = tmp_path / "rules.json"
    assert here("monitoring", "replay-rules", str(rules)).returncode == 0

    def stuffing_scores(*extra: str) -> list[int]:
        run = here("monitoring", "backtest", "--rules", str(rules), "--data", str(server.data), "--json", *extra)
        assert run.returncode == 0, run.stdout + run.stderr
        hits = [json.loads(x) for x in run.stdout.splitlines()[:-1]]
        return [h["score"] for h in hits if h["rule"] == "behaviour-failed-sign-ins" and h["account_id"] == labels["credential_stuffing"]]

    plain, learnt = stuffing_scores(), stuffing_scores("--weights", str(weights))
    assert plain and (not learnt or max(learnt) < max(plain)), (plain, learnt)


def test_the_learnt_weights_are_what_the_case_log_rebuilds(server) -> None:
    """The weights live in memory; at start the worker rebuilds them from the case log
    (`feedback.decisions_after(store, 0)`, Monitor.start): read from the server's own database, the
    logged decisions give exactly the weights the running worker shows (no restart: one is 20 s)."""
    from ringfence.monitoring.feedback import decisions_after
    from ringfence.store import Store

    live = admin(server, "GET", "/admin/v1/model").json()
    store = Store.from_url(server.database_url)
    logged = decisions_after(store, 0)
    store.engine.dispose()
    assert live["decisions_total"] == len(logged) > 0
    assert learn(logged) == live["weights"] != learn([]), live
    assert [d.as_dict() for d in logged] == live["decisions"]
