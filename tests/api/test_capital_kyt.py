"""KYT-tainted deposits in a real `ringfence serve --demo` process (issue 15): the unmodified ccxt
client sees a deposit from the demo's tainted wallet (funded by an address on the sample blacklist)
quarantined with its reason (Binance status 8, "waiting for the user"); it is not spendable (an
order and a withdrawal that need it are refused); the user files a source-of-funds declaration
(signed `POST /sapi/v1/capital/deposit/sourceOfFunds`); analyst ben releases it through the staff
console; then it is spendable. A second tainted deposit goes back to its sender instead: two
different analysts sign `ringfence review return`, the exchange pays amount − fee back on chain,
and refusals (the same analyst twice, a staff member without the analyst role, an unknown
deposit) change nothing. KYT screens withdrawal destinations too: an address-book entry that
lands on the operator's blacklist (RINGFENCE_KYT_BLACKLIST, re-read without a restart) sends a
withdrawal to it to a human with the reason, and an analyst rejects it (status 3).
"""

from __future__ import annotations

import json
import math
import re
from decimal import Decimal

import httpx

import ccxt
import pytest

from .conftest import Invoked, Server, invoke
from ringfence.staff.decisions import read_key_file
from ringfence.staff.requests import signed_headers

from .test_capital import ENV, chain_balance, cli, client, signed, staff_key, wait_for, withdraw_key


@pytest.fixture(scope="module")
def money(tmp_path_factory):
    root = tmp_path_factory.mktemp("kyt")
    blacklist = root / "blacklist.csv"  # the operator's own list, on top of the shipped sample
    blacklist.write_text("# chain,address,category,source\n")
    srv = Server(root / "data", env={**ENV, "RINGFENCE_KYT_BLACKLIST": str(blacklist), "RINGFENCE_SHIELD_CHECK_EVERY_S": "1"})
    srv.blacklist = blacklist  # type: ignore[attr-defined]
    yield srv
    assert srv.stop() == 0, "the server did not shut down cleanly on SIGTERM"


def review(base: str, *args: str) -> Invoked:
    """`ringfence review ...` in this process (conftest.invoke: polled in loops; tests/staff/test_review_live.py runs
    `review` as a process)."""
    return invoke("review", *args, "--url", base)


def queued(money: Server, txid: str) -> dict | None:
    out = review(money.base, "list", "--key", staff_key(money.data, "cy"), "--json")
    assert out.returncode == 0, out.stderr
    return next((d for d in json.loads(out.stdout)["deposits"] if d["txid"] == txid), None)


def tainted_deposit(money: Server, ex: ccxt.binance, amount: str) -> tuple[str, dict]:
    address = ex.fetch_deposit_address("ETH")["address"]
    paid = invoke("chain", "pay", "--data", str(money.data), "--asset", "ETH", "--to", address, "--amount", amount,
                  "--from", "tainted")
    assert paid.returncode == 0, paid.stderr
    txid = paid.stdout.strip()

    def quarantined():
        rows = [d for d in ex.fetch_deposits("ETH") if d["txid"] == txid]
        return rows and rows[0]["info"]["status"] == 8 and rows[0]

    try:
        return txid, wait_for("the tainted deposit to be quarantined", quarantined)
    except AssertionError:
        print([d["info"] for d in ex.fetch_deposits("ETH")])
        raise


def free(ex: ccxt.binance, asset: str) -> Decimal:
    return Decimal(str(ex.fetch_balance()[asset]["free"] or 0))


def test_tainted_deposit_quarantined_declared_released_then_spendable(money: Server) -> None:
    key = withdraw_key(money.data)
    ex = client(money.base, key)
    before = free(ex, "ETH")
    txid, row = tainted_deposit(money, ex, "5")
    assert row["amount"] == 5.0 and row["status"] != "ok", row  # ccxt passes Binance's 8 through unmapped
    assert "1 hop" in row["info"]["info"] and "blacklisted" in row["info"]["info"], row["info"]

    # not spendable: the balance did not grow, an order and a withdrawal that need it are refused
    assert free(ex, "ETH") == before
    need = before + 2  # more than was free, less than free + the quarantined 5
    with pytest.raises(ccxt.InsufficientFunds):
        ex.create_order("ETH/USDT", "limit", "sell", float(need), 3_100)  # float-ok: ccxt's API
    dest = key["withdraw_addresses"]["ETH"]
    res = signed(money, key, "POST", "/sapi/v1/capital/withdraw/apply", {"coin": "ETH", "address": dest, "amount": str(need)})
    assert res.status_code == 400 and res.json()["code"] == -4026, res.text
    assert free(ex, "ETH") == before

    # the release is refused until the user has declared where the funds come from
    d = queued(money, txid)
    assert d is not None and d["state"] == "quarantined" and d["score"] == 90 and d["declaration"] == ""
    ref = f"ethereum:{txid}:{d['index']}"
    out = review(money.base, "release", ref, "--reason", "bank trail checked", "--key", staff_key(money.data, "ben"))
    assert out.returncode == 1 and "source-of-funds" in out.stderr, out.stdout + out.stderr

    bad = signed(money, key, "POST", "/sapi/v1/capital/deposit/sourceOfFunds", {"txId": txid, "declaration": "car"})
    assert bad.status_code == 400 and "declaration" in bad.text, bad.text
    unknown = signed(money, key, "POST", "/sapi/v1/capital/deposit/sourceOfFunds", {"txId": "0x" + "ab" * 32,
                                                                                     "declaration": "Sold my car to a neighbour."})
    assert unknown.status_code == 400 and unknown.json()["code"] == -1100, unknown.text
    filed = signed(money, key, "POST", "/sapi/v1/capital/deposit/sourceOfFunds",
                   {"txId": txid, "declaration": "Sold my car to a private buyer; the contract is attached."})
    assert filed.status_code == 200 and filed.json()["filed"] == 1, filed.text
    assert queued(money, txid)["declaration"].startswith("Sold my car")
    assert free(ex, "ETH") == before, "a declaration alone releases nothing"

    # an analyst (ben) releases it through the staff console; pol (policy admin) may not
    out = review(money.base, "release", ref, "--reason", "contract and bank trail verified", "--key", staff_key(money.data, "pol"))
    assert out.returncode == 1 and "analyst" in out.stderr, out.stdout + out.stderr
    out = review(money.base, "release", ref, "--reason", "contract and bank trail verified", "--key", staff_key(money.data, "ben"))
    assert out.returncode == 0 and "deposit.released" in out.stdout, out.stdout + out.stderr
    assert queued(money, txid) is None

    row = next(d for d in ex.fetch_deposits("ETH") if d["txid"] == txid)
    assert row["info"]["status"] in (6, 1), row["info"]
    assert free(ex, "ETH") == before + 5
    order = ex.create_order("ETH/USDT", "limit", "sell", float(need), 3_100)  # float-ok: ccxt's API
    assert order["status"] == "open" and order["amount"] == float(need)  # float-ok: ccxt's API
    ex.cancel_order(order["id"], "ETH/USDT")


def test_tainted_deposit_returned_to_sender_by_two_analysts(money: Server) -> None:
    key = withdraw_key(money.data)
    ex = client(money.base, key)
    before = free(ex, "ETH")
    txid, _row = tainted_deposit(money, ex, "2")
    d = queued(money, txid)
    assert d is not None and d["state"] == "quarantined" and d["sender"].startswith("0x")
    sender = d["sender"]
    ref = f"ethereum:{txid}:{d['index']}"
    sender_before = chain_balance(money.data, "ETH", sender)

    out = review(money.base, "return", ref, "--reason", "no plausible source of funds", "--key", staff_key(money.data, "ben"))
    assert out.returncode == 0 and "1/2 analysts" in out.stdout, out.stdout + out.stderr

    # refusals change nothing: ben again, pol (no analyst role), an unknown deposit
    out = review(money.base, "return", ref, "--reason", "again", "--key", staff_key(money.data, "ben"))
    assert out.returncode == 1 and "distinct-people" in out.stderr, out.stdout + out.stderr
    out = review(money.base, "return", ref, "--reason", "policy says so", "--key", staff_key(money.data, "pol"))
    assert out.returncode == 1 and "analyst" in out.stderr, out.stdout + out.stderr
    out = review(money.base, "return", f"ethereum:0x{'cd' * 32}:0", "--reason", "x", "--key", staff_key(money.data, "cy"))
    assert out.returncode == 1 and "no quarantined or frozen deposit" in out.stderr, out.stdout + out.stderr
    unchanged = queued(money, txid)
    assert unchanged["state"] == "quarantined" and unchanged["return_by"] == ["ben"]
    assert free(ex, "ETH") == before and chain_balance(money.data, "ETH", sender) == sender_before

    out = review(money.base, "return", ref, "--reason", "sender funded by an exploit", "--key", staff_key(money.data, "cy"))
    assert out.returncode == 0 and "deposit.returned" in out.stdout, out.stdout + out.stderr
    assert queued(money, txid) is None

    def rts():
        return next((w for w in ex.fetch_withdrawals("ETH") if w["id"].startswith("rts-") and w["address"].lower() == sender.lower()), None)

    # destination KYT screens the return: the sender was funded by the blacklisted exploit address
    # (one hop, 90, above the deposits' quarantine line), so a human looks once more before coins leave
    held = wait_for("the return to wait for a human", lambda: (r := rts()) and r["info"]["status"] not in (0, 4) and r)
    assert held["info"]["status"] == 2 and held["info"]["info"] == "under review", held["info"]  # the finding: staff only
    assert "was funded by blacklisted" in " ".join(admin(money, f"/admin/v1/withdrawals/{held['id']}", "cy")["risk_reasons"])
    assert chain_balance(money.data, "ETH", sender) == sender_before
    out = review(money.base, "approve", held["id"], "--reason", "the tainted wallet is the victim's; pay it back",
                 "--key", staff_key(money.data, "ben"))
    assert out.returncode == 0, out.stdout + out.stderr
    done = wait_for("the return to settle on chain", lambda: (r := rts()) and r["info"]["status"] == 6 and r, 90)
    assert done["txid"] and done["fee"]["cost"] == 0.001
    assert chain_balance(money.data, "ETH", sender) - sender_before == Decimal("2") - Decimal("0.001")
    row = next(r for r in ex.fetch_deposits("ETH") if r["txid"] == txid)
    assert row["info"]["status"] == 2 and "returned to sender" in row["info"]["info"], row["info"]
    assert free(ex, "ETH") == before, "the returned deposit was never spendable"


def test_faucet_tainted_option_is_eth_only(money: Server) -> None:
    out = invoke("chain", "pay", "--data", str(money.data), "--asset", "BTC", "--to", "bcrt1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqdku202",
                 "--amount", "0.1", "--from", "tainted")
    assert out.returncode == 2 and "ETH only" in out.stderr, out.stderr
    out = invoke("chain", "pay", "--data", str(money.data), "--asset", "ETH", "--to", "0x" + "11" * 20, "--amount", "0.1",
                 "--from", "mixer")
    assert out.returncode == 2 and "from" in out.stderr, out.stderr



def test_a_withdrawal_to_a_blacklisted_destination_is_denied_the_kyt_reason_for_staff_only(money: Server) -> None:
    """KYT on the destination: alice's cooled ETH entry is put on the operator's blacklist (the file
    is re-read while serve runs); a small withdrawal to it, which the demo's policy would send
    without a human, scores 100 and is denied by the policy's high-risk rule (status 3): the user is told a
    category, the staff view names the rule and the blacklist entry; the hold is released and nothing leaves on chain. Removing the entry
    again lets the next withdrawal through."""
    import httpx

    def kyt_loads() -> int:
        return int(httpx.get(money.base + "/readyz").json()["custody"]["kyt"]["loads"])

    key = withdraw_key(money.data)
    ex = client(money.base, key)
    dest = key["withdraw_addresses"]["ETH"]
    loads = kyt_loads()
    money.blacklist.write_text(f"ethereum,{dest},sanctions,test: SDN entry of today\n")  # type: ignore[attr-defined]
    wait_for("the blacklist to be re-read", lambda: kyt_loads() > loads)
    kyt = httpx.get(money.base + "/readyz").json()["custody"]["kyt"]
    assert kyt["error"] == "" and kyt["blacklist_entries"] == 4, kyt  # the sample's three + the new one
    before, dest_before = free(ex, "ETH"), chain_balance(money.data, "ETH", dest)
    wid = ex.withdraw("ETH", 0.1, dest)["id"]  # float-ok: ccxt's API

    def row(wid: str) -> dict | None:
        return next((w for w in ex.fetch_withdrawals("ETH") if w["id"] == wid), None)

    done = wait_for("the withdrawal to be decided", lambda: (r := row(wid)) and r["info"]["status"] not in (0, 4) and r)
    assert done["info"]["status"] == 3 and not done["txid"], done["info"]
    # the user is told a category; the rule and the KYT finding are the operators' (the staff view)
    assert done["info"]["info"] == "refused by a withdrawal rule — contact support", done["info"]
    seen = admin(money, f"/admin/v1/withdrawals/{wid}", "cy")
    assert seen["rule"] == "deny-high-risk" and seen["risk_score"] == 100, seen
    assert f"KYT: destination {dest} is blacklisted (sanctions: test: SDN entry of today)" in seen["risk_reasons"], seen
    assert free(ex, "ETH") == before and chain_balance(money.data, "ETH", dest) == dest_before

    # a broken list keeps the last good one, and the supervised kyt-blacklist worker backs off and
    # restarts, visible in /readyz and /metrics, until the file is fixed
    money.blacklist.write_text("ethereum,not-enough-fields\n")  # type: ignore[attr-defined]

    def worker() -> dict:
        return dict(httpx.get(money.base + "/readyz").json()["custody"]["workers"]["kyt-blacklist"])

    failing = wait_for("the kyt-blacklist worker to back off", lambda: (w := worker())["state"] == "backing_off" and w)
    assert failing["restarts"] >= 1 and "expected chain,address" in failing["last_error"], failing
    metrics = httpx.get(money.base + "/metrics").text
    assert 'ringfence_custody_worker_up{worker="kyt-blacklist"} 0.0' in metrics
    assert 'ringfence_custody_worker_restarts_total{worker="kyt-blacklist"}' in metrics
    kyt = httpx.get(money.base + "/readyz").json()["custody"]["kyt"]
    assert kyt["blacklist_entries"] == 4 and "the last good list stays in force" in kyt["error"], kyt

    # off the list again: the worker runs again, and the same withdrawal completes
    loads = kyt_loads()
    money.blacklist.write_text("# emptied\n")  # type: ignore[attr-defined]
    wait_for("the blacklist to be re-read", lambda: kyt_loads() > loads)
    wait_for("the kyt-blacklist worker to run again", lambda: worker()["state"] == "running")
    wid = ex.withdraw("ETH", 0.1, dest)["id"]  # float-ok: ccxt's API
    wait_for("the withdrawal to complete", lambda: (r := row(wid)) and r["info"]["status"] == 6, 90)
    assert chain_balance(money.data, "ETH", dest) - dest_before == Decimal("0.099")


def test_almost_all_of_the_balance_to_a_new_address_waits_for_a_human_with_reasons(money: Server) -> None:
    """The risk review against the user's own history: 96 % of alice's USDT to an address she never
    paid (a cooled entry is not yet "known") waits in manual review (status 2; the reasons in the staff view only),
    whatever the policy would do alone; analyst ben rejects it (status 3), the hold is released."""
    key = withdraw_key(money.data)
    dest = key["withdraw_addresses"]["USDT"]
    def wallet() -> dict:  # config/getall reports the spot wallet's free / locked / withdrawing, as Binance
        coins = signed(money, key, "GET", "/sapi/v1/capital/config/getall", {}).json()
        return next(c for c in coins if c["coin"] == "USDT")

    before = Decimal(wallet()["free"])
    amount = int(before * Decimal("0.96"))
    res = signed(money, key, "POST", "/sapi/v1/capital/withdraw/apply",
                 {"coin": "USDT", "network": "ETH", "address": dest, "amount": str(amount)})
    assert res.status_code == 200, res.text
    wid = res.json()["id"]

    def row() -> dict | None:
        rows = signed(money, key, "GET", "/sapi/v1/capital/withdraw/history", {"coin": "USDT"}).json()
        return next((r for r in rows if r["id"] == wid), None)

    held = wait_for("the withdrawal to wait for a human", lambda: (r := row()) and r["status"] not in (0, 4) and r)
    # the user sees "under review", never the rule, the score or the signals; the reviewers see them all
    assert held["status"] == 2 and held["info"] == "under review", held
    seen = admin(money, f"/admin/v1/withdrawals/{wid}", "cy")
    why = "; ".join(seen["decision_reasons"] + seen["risk_reasons"])
    assert re.search(r"mandatory manual review: 9[5-9]\.\d\d% of the balance to a new address", why), seen
    assert "new destination address" in why and "first withdrawal of this asset" in why, seen
    during = wallet()
    assert Decimal(during["free"]) == before - amount and Decimal(during["withdrawing"]) == amount, during
    assert Decimal(during["locked"]) >= amount, during
    out = review(money.base, "list", "--key", staff_key(money.data, "cy"), "--json")
    (queued_w,) = [w for w in json.loads(out.stdout)["withdrawals"] if w["withdrawal_id"] == wid]
    assert queued_w["state"] == "manual_review", queued_w

    out = review(money.base, "reject", wid, "--reason", "user could not explain the destination", "--key", staff_key(money.data, "ben"))
    assert out.returncode == 0 and "withdrawal.rejected" in out.stdout, out.stdout + out.stderr
    done = wait_for("the rejection to show", lambda: (r := row()) and r["status"] == 3 and r)
    assert done["info"] == "refused after review — contact support" and not done["txId"], done  # not the analyst's note
    after = wallet()
    assert Decimal(after["free"]) == before and Decimal(after["withdrawing"]) == 0, after
    assert chain_balance(money.data, "USDT", dest) == 0


def test_a_frozen_deposit_from_a_blacklisted_sender_return_held_by_kyt_then_released_by_two_analysts(money: Server) -> None:
    """`--from exploit` pays from the sample blacklist's exploit address itself: the deposit is frozen
    (Binance status 7) with the reason, counted in getall's `freeze` and not spendable; a second
    freeze and a release before the user's declaration are refused. Two analysts sign its return to
    the sender, but destination KYT screens the return like any withdrawal: the sender is blacklisted,
    so nothing is sent and the return waits for a human (status 2) with KYT's reason; an analyst
    rejects it and the deposit is frozen again. After the user's declaration, the release of a frozen
    deposit is a two-analyst decision: one analyst alone changes nothing (and cannot sign twice), the
    second one's signature makes it spendable."""
    key = withdraw_key(money.data)
    ex = client(money.base, key)
    address = ex.fetch_deposit_address("ETH")["address"]
    before = free(ex, "ETH")
    paid = invoke("chain", "pay", "--data", str(money.data), "--asset", "ETH", "--to", address, "--amount", "1.5", "--from", "exploit")
    assert paid.returncode == 0, paid.stderr
    txid = paid.stdout.strip()
    row = wait_for("the deposit to be frozen", lambda: (r := next((d for d in ex.fetch_deposits("ETH") if d["txid"] == txid), None))
                   and r["info"]["status"] == 7 and r)
    assert "is blacklisted (exploit" in row["info"]["info"], row["info"]
    coins = signed(money, key, "GET", "/sapi/v1/capital/config/getall", {}).json()
    eth = next(c for c in coins if c["coin"] == "ETH")
    assert Decimal(eth["freeze"]) >= Decimal("1.5") and free(ex, "ETH") == before, eth
    d = queued(money, txid)
    assert d is not None and d["state"] == "frozen" and d["score"] == 100, d
    ref, sender = f"ethereum:{txid}:{d['index']}", d["sender"]
    # no second freeze, and no release before the user's declaration
    out = review(money.base, "freeze", ref, "--reason", "again", "--key", staff_key(money.data, "ben"))
    assert out.returncode == 1 and "already frozen" in out.stderr, out.stdout + out.stderr
    out = review(money.base, "release", ref, "--reason", "looks fine", "--key", staff_key(money.data, "ben"))
    assert out.returncode == 1 and "source-of-funds" in out.stderr, out.stdout + out.stderr
    sender_before = chain_balance(money.data, "ETH", sender)
    for analyst, said in (("ben", "1/2 analysts"), ("cy", "deposit.returned")):
        out = review(money.base, "return", ref, "--reason", "funds of a bridge exploit", "--key", staff_key(money.data, analyst))
        assert out.returncode == 0 and said in out.stdout, out.stdout + out.stderr

    # destination KYT: the sender is the blacklisted exploit address, so the return waits for a human
    def held():
        rows = [w for w in ex.fetch_withdrawals("ETH") if w["id"].startswith("rts-") and w["address"].lower() == sender.lower()]
        return rows and rows[0]["info"]["status"] not in (0, 4) and rows[0]

    ret = wait_for("the return to be held by destination KYT", held)
    assert ret["info"]["status"] == 2 and ret["info"]["info"] == "under review", ret["info"]  # the finding: staff only
    assert "is blacklisted (exploit" in " ".join(admin(money, f"/admin/v1/withdrawals/{ret['id']}", "cy")["risk_reasons"])
    assert not ret["txid"] and chain_balance(money.data, "ETH", sender) == sender_before
    out = review(money.base, "list", "--key", staff_key(money.data, "cy"), "--json")
    (waiting,) = [w for w in json.loads(out.stdout)["withdrawals"] if w["withdrawal_id"] == ret["id"]]
    assert waiting["state"] == "manual_review", waiting
    out = review(money.base, "reject", ret["id"], "--reason", "sanctioned address: never pay it", "--key", staff_key(money.data, "ben"))
    assert out.returncode == 0 and "withdrawal.rejected" in out.stdout, out.stdout + out.stderr
    again = queued(money, txid)
    assert again is not None and again["state"] == "frozen" and again["return_by"] == [], again
    assert chain_balance(money.data, "ETH", sender) == sender_before and free(ex, "ETH") == before
    eth = next(c for c in signed(money, key, "GET", "/sapi/v1/capital/config/getall", {}).json() if c["coin"] == "ETH")
    assert Decimal(eth["freeze"]) >= Decimal("1.5"), eth

    # the other way out: the user's declaration, then two distinct analysts release it
    filed = signed(money, key, "POST", "/sapi/v1/capital/deposit/sourceOfFunds",
                   {"txId": txid, "declaration": "Refund of a bridge hack paid back to victims; case file attached."})
    assert filed.status_code == 200 and filed.json()["status"] == 7, filed.text
    out = review(money.base, "release", ref, "--reason", "victim refund verified with the bridge team", "--key", staff_key(money.data, "ben"))
    assert out.returncode == 0 and "1/2 analysts" in out.stdout, out.stdout + out.stderr
    one = queued(money, txid)
    assert one is not None and one["state"] == "frozen" and one["release_by"] == ["ben"], one
    assert free(ex, "ETH") == before, "one analyst alone must not make a frozen deposit spendable"
    out = review(money.base, "release", ref, "--reason", "again", "--key", staff_key(money.data, "ben"))
    assert out.returncode == 1 and "distinct-people" in out.stderr, out.stdout + out.stderr
    assert queued(money, txid)["release_by"] == ["ben"] and free(ex, "ETH") == before
    # a new declaration voids the release signatures given on the old text: each analyst signs afresh
    refiled = signed(money, key, "POST", "/sapi/v1/capital/deposit/sourceOfFunds",
                     {"txId": txid, "declaration": "Refund of a bridge hack paid back to victims; bank letter attached."})
    assert refiled.status_code == 200, refiled.text
    assert queued(money, txid)["release_by"] == [] and free(ex, "ETH") == before
    out = review(money.base, "release", ref, "--reason", "bank letter checked", "--key", staff_key(money.data, "ben"))
    assert out.returncode == 0 and "1/2 analysts" in out.stdout, out.stdout + out.stderr
    out = review(money.base, "release", ref, "--reason", "bridge team confirmed the refund", "--key", staff_key(money.data, "cy"))
    assert out.returncode == 0 and "deposit.released" in out.stdout, out.stdout + out.stderr
    assert queued(money, txid) is None and free(ex, "ETH") == before + Decimal("1.5")


def admin(money: Server, path: str, staff: str) -> dict:
    """A signed staff GET on the admin API (as `ringfence monitoring alerts` sends it)."""
    full, _, query = path.partition("?")
    headers = signed_headers(read_key_file(money.data / "demo-staff.json", staff), "GET", full, query, b"")
    res = httpx.get(money.base + path, headers=headers, timeout=10)
    assert res.status_code == 200, res.text
    return res.json()


def test_the_shield_fund_rule_broken_by_a_whale_raises_an_alert_that_clears_when_it_holds_again(money: Server) -> None:
    """CoinEx's rule (shield fund value >= hot wallet value) as an operator sees it: a whale's ETH
    deposit, swept into the hot wallet, makes the hot wallet worth more than the shield vault; the
    server raises one monitoring alert (`shield-fund-rule`, high, account system:shield-fund) readable
    at /admin/v1/alerts, and /admin/v1/monitoring (any staff member) shows the rule broken since then.
    The whale withdraws part of it (two approvers); the rule holds again: a `shield-fund-rule-restored`
    alert joins the case and the live state clears."""
    def rule(staff: str = "ada") -> dict:  # ada: an approver, no analyst — the live state is for any staff member
        return admin(money, "/admin/v1/monitoring", staff)["shield_rule"]

    start = wait_for("the shield rule to be checked", lambda: (r := rule()) and r["checks"] > 0 and r)
    assert start["alert"] is False and start["ok"] is True and start["value_asset"] == "USDT", start
    margin = int(start["shield_value_minor"]) - int(start["hot_value_minor"])  # USDT minor units
    key = withdraw_key(money.data)
    ex = client(money.base, key)
    price = int(start["prices_minor"]["ETH"])  # what the rule values one ETH at (USDT minor units)
    whale = math.ceil(Decimal(margin) / price) + 30  # whole ETH: 30 ETH more than the margin
    print(f"margin {margin} USDT minor, ETH at {price} USDT minor: deposit {whale} ETH")
    paid = invoke("chain", "pay", "--data", str(money.data), "--asset", "ETH", "--to", ex.fetch_deposit_address("ETH")["address"],
                  "--amount", str(whale))
    assert paid.returncode == 0, paid.stderr
    broken = wait_for("the shield rule alert", lambda: (r := rule()) and r["alert"] and r, 120)
    assert int(broken["hot_value_minor"]) > int(broken["shield_value_minor"]) and broken["since_ms"] > 0, broken
    # what an analyst on call runs (GET /admin/v1/alerts, signed)
    out = cli("monitoring", "alerts", "--rule", "shield-fund-rule", "--json", "--key", staff_key(money.data, "cy"),
              "--url", money.base)
    assert out.returncode == 0, out.stdout + out.stderr
    alerts = json.loads(out.stdout)["alerts"]
    assert len(alerts) == 1, alerts  # one alert for the breach, not one per check
    (alert,) = alerts
    assert alert["severity"] == "high" and alert["account_id"] == "system:shield-fund", alert
    assert "shield fund rule (shield fund value >= hot wallet value) is broken" in alert["explanation"], alert
    assert "move coins from the hot wallets" in alert["explanation"], alert
    case = admin(money, f"/admin/v1/cases/{alert['case_id']}", "cy")
    assert json.dumps(case).count("shield-fund-rule") >= 1, case

    # the whale takes 60 ETH back out (above the review threshold: two approvers)
    res = signed(money, key, "POST", "/sapi/v1/capital/withdraw/apply",
                 {"coin": "ETH", "address": key["withdraw_addresses"]["ETH"], "amount": "60"})
    assert res.status_code == 200, res.text
    wid = res.json()["id"]

    def row() -> dict | None:
        rows = signed(money, key, "GET", "/sapi/v1/capital/withdraw/history", {"coin": "ETH"}).json()
        return next((r for r in rows if r["id"] == wid), None)

    wait_for("the withdrawal to wait for approvals", lambda: (r := row()) and r["status"] == 2 and r)
    assert rule()["alert"] is True  # nothing has left yet
    for approver in ("ada", "cy"):
        out = review(money.base, "approve", wid, "--key", staff_key(money.data, approver))
        assert out.returncode == 0, out.stdout + out.stderr
    wait_for("the withdrawal to complete", lambda: (r := row()) and r["status"] == 6 and r, 90)
    held = wait_for("the shield rule to hold again", lambda: (r := rule()) and not r["alert"] and r, 60)
    assert held["ok"] is True and held["since_ms"] == 0, held
    assert int(held["shield_value_minor"]) >= int(held["hot_value_minor"]), held
    restored = admin(money, "/admin/v1/alerts?rule=shield-fund-rule-restored", "cy")["alerts"]
    assert len(restored) == 1 and restored[0]["severity"] == "low" and "holds again" in restored[0]["explanation"], restored
    assert restored[0]["case_id"] == alert["case_id"], (restored, alert)
    assert len(admin(money, "/admin/v1/alerts?rule=shield-fund-rule", "cy")["alerts"]) == 1


def test_a_withdrawal_to_an_address_funded_by_a_blacklisted_one_is_stopped_with_the_hop(money: Server) -> None:
    """Destination KYT follows taint by hops as deposits do (the same scorer): the exploit address
    pays alice's withdrawal destination, so the destination is one hop from the blacklist (90); her
    withdrawal to it is not sent (the demo policy denies risk >= 90: status 3); the staff view says why. Runs last
    in this module: the destination stays tainted."""
    key = withdraw_key(money.data)
    dest = key["withdraw_addresses"]["ETH"]
    paid = invoke("chain", "pay", "--data", str(money.data), "--asset", "ETH", "--to", dest, "--amount", "0.01", "--from", "exploit")
    assert paid.returncode == 0, paid.stderr
    wait_for("the exploit's payment to be mined", lambda: chain_balance(money.data, "ETH", dest) > 0)
    before = chain_balance(money.data, "ETH", dest)
    res = signed(money, key, "POST", "/sapi/v1/capital/withdraw/apply", {"coin": "ETH", "address": dest, "amount": "0.5"})
    assert res.status_code == 200, res.text
    wid = res.json()["id"]

    def row() -> dict | None:
        rows = signed(money, key, "GET", "/sapi/v1/capital/withdraw/history", {"coin": "ETH"}).json()
        return next((r for r in rows if r["id"] == wid), None)

    done = wait_for("the withdrawal to be stopped", lambda: (r := row()) and r["status"] not in (0, 4) and r)
    assert done["status"] == 3 and done["info"] == "refused by a withdrawal rule — contact support", done
    why = " ".join(admin(money, f"/admin/v1/withdrawals/{wid}", "cy")["risk_reasons"])  # the hop: staff only
    assert "was funded by blacklisted" in why and "1 hop" in why, why
    assert not done["txId"] and chain_balance(money.data, "ETH", dest) == before
