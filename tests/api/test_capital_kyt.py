"""KYT-tainted deposits in a real `ringfence serve --demo` process (issue 15): the unmodified ccxt
client sees a deposit from the demo's tainted wallet (funded by an address on the sample blacklist)
quarantined with its reason (Binance status 8, "waiting for the user"); it is not spendable (an
order and a withdrawal that need it are refused); the user files a source-of-funds declaration
(signed `POST /sapi/v1/capital/deposit/sourceOfFunds`); analyst ben releases it through the staff
console; then it is spendable. A second tainted deposit goes back to its sender instead: two
different analysts sign `ringfence review return`, the exchange pays amount − fee back on chain,
and refusals (the same analyst twice, a staff member without the analyst role, an unknown
deposit) change nothing.
"""

from __future__ import annotations

import json
from decimal import Decimal

import ccxt
import pytest

from .conftest import Server
from .test_capital import ENV, chain_balance, cli, client, signed, staff_key, wait_for, withdraw_key


@pytest.fixture(scope="module")
def money(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("kyt") / "data", env=ENV)
    yield srv
    assert srv.stop() == 0, "the server did not shut down cleanly on SIGTERM"


def review(base: str, *args: str):
    return cli("review", *args, "--url", base)


def queued(money: Server, txid: str) -> dict | None:
    out = review(money.base, "list", "--key", staff_key(money.data, "cy"), "--json")
    assert out.returncode == 0, out.stderr
    return next((d for d in json.loads(out.stdout)["deposits"] if d["txid"] == txid), None)


def tainted_deposit(money: Server, ex: ccxt.binance, amount: str) -> tuple[str, dict]:
    address = ex.fetch_deposit_address("ETH")["address"]
    paid = cli("chain", "pay", "--data", str(money.data), "--asset", "ETH", "--to", address, "--amount", amount,
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

    def settled():
        rows = [w for w in ex.fetch_withdrawals("ETH") if w["id"].startswith("rts-") and w["address"].lower() == sender.lower()]
        return rows and rows[0]["info"]["status"] == 6 and rows[0]

    done = wait_for("the return to settle on chain", settled, 90)
    assert done["txid"] and done["fee"]["cost"] == 0.001
    assert chain_balance(money.data, "ETH", sender) - sender_before == Decimal("2") - Decimal("0.001")
    row = next(r for r in ex.fetch_deposits("ETH") if r["txid"] == txid)
    assert row["info"]["status"] == 2 and "returned to sender" in row["info"]["info"], row["info"]
    assert free(ex, "ETH") == before, "the returned deposit was never spendable"


def test_faucet_tainted_option_is_eth_only(money: Server) -> None:
    out = cli("chain", "pay", "--data", str(money.data), "--asset", "BTC", "--to", "bcrt1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqdku202",
              "--amount", "0.1", "--from", "tainted")
    assert out.returncode == 2 and "ETH only" in out.stderr, out.stderr
    out = cli("chain", "pay", "--data", str(money.data), "--asset", "ETH", "--to", "0x" + "11" * 20, "--amount", "0.1",
              "--from", "mixer")
    assert out.returncode == 2 and "from" in out.stderr, out.stderr

