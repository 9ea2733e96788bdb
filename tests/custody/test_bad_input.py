"""Bad input: each gets a clear error naming the field, and leaves no hold and no state change."""

from __future__ import annotations

import hashlib

import pytest

from ringfence.custody.commands import RequestWithdrawal
from ringfence.custody.withdrawals import parse_withdrawal
from ringfence.errors import RingfenceError, ValidationError

from .flows import fund_btc, outside_btc_address

TOKEN = hashlib.sha256(b"t").hexdigest()


def _req(wid="b1", asset="BTC", address=None, amount=10_000_000, fee=10_000, wallet="btc_hot", account="alice"):
    return RequestWithdrawal(wid, account, asset, wallet, address or outside_btc_address(1), amount, fee, TOKEN)


def _refused(net, command, field, code=None):
    before = net.node.engine.state_hash()
    pending = len(net.ledger.pending)
    with pytest.raises(RingfenceError) as exc:
        net.node.execute(command)
    assert exc.value.field == field, (exc.value.field, str(exc.value))
    if code:
        assert exc.value.code == code
    assert net.node.engine.state_hash() == before, "a refused request changed the state"
    assert len(net.ledger.pending) == pending, "a refused request left a hold behind"
    return exc.value


@pytest.fixture
def funded(net):
    fund_btc(net, "alice", 100_000_000)
    return net


MAINNET = "bc1qcr8te4kr609gcawutmrza0j4xv80jy8z306fyu"


def test_bad_addresses(funded) -> None:
    good = outside_btc_address(1)
    bad_checksum = good[:-1] + ("q" if good[-1] != "q" else "p")
    e = _refused(funded, _req(address=bad_checksum), "address", "RF_INVALID_ADDRESS")
    assert e.details["rule"] == "checksum"
    e = _refused(funded, _req(address=MAINNET), "address", "RF_INVALID_ADDRESS")
    assert "wrong network" in str(e)
    _refused(funded, _req(asset="ETH", wallet="eth_hot", fee=10**15, amount=10**17,
                          address="0x52908400098527886E0F7030069857D2E4169EE7".replace("E", "e", 1)), "address")


def test_unsupported_asset_limits_and_amounts(funded) -> None:
    _refused(funded, _req(asset="DOGE"), "asset", "RF_UNSUPPORTED_ASSET")
    _refused(funded, _req(amount=40_000), "amount_minor", "RF_INVALID_AMOUNT")  # below the 50,000 sat minimum
    e = _refused(funded, _req(amount=6 * 10**8), "amount_minor", "RF_INVALID_AMOUNT")  # above 5 BTC
    assert "maximum" in str(e)
    _refused(funded, _req(amount=-5), "amount_minor", "RF_INVALID_AMOUNT")
    _refused(funded, _req(amount=0), "amount_minor")
    _refused(funded, _req(fee=0), "fee_minor")  # the fee is explicit and must match the asset's fee
    _refused(funded, _req(wallet="btc_cold"), "wallet")
    _refused(funded, _req(amount=99_995_000), "amount_minor", "RF_INSUFFICIENT_FUNDS")
    with pytest.raises(ValidationError) as exc:  # a float never reaches the engine
        funded.node.execute(_req(amount=1.5))
    assert "amount_minor" in str(exc.value)


@pytest.mark.parametrize("text,why", [("NaN", "NaN"), ("-1", "negative"), ("1e5", "exponent"), ("0", "greater than zero"),
                                      ("0.000000001", "decimal places"), ("", "empty"), ("inf", "")])
def test_gateway_amount_parsing(funded, text, why) -> None:
    with pytest.raises(RingfenceError) as exc:
        parse_withdrawal(funded.node.engine, asset="BTC", address=outside_btc_address(1), amount=text)
    assert exc.value.field == "amount" and why.lower() in str(exc.value).lower()
    assert parse_withdrawal(funded.node.engine, asset="BTC", address=outside_btc_address(1), amount="0.5")[2] == 50_000_000


def test_second_withdrawal_racing_for_the_same_funds(funded) -> None:
    net = funded
    first = _req("r1", amount=60_000_000)
    second = _req("r2", amount=60_000_000)
    results = net.node.execute_many([first, second], raise_rejected=False)
    assert not isinstance(results[0], Exception)
    # The second is refused (precheck sees the first's hold in the same batch) and holds nothing.
    with pytest.raises(RingfenceError) as exc:
        net.node.execute(second)
    assert exc.value.code == "RF_INSUFFICIENT_FUNDS" and exc.value.field == "amount_minor"
    assert "r2" not in net.state.withdrawals
    assert len([p for p in net.ledger.pending.values() if p.status == "pending"]) == 1
    assert net.ledger.find("alice", "BTC").available == 100_000_000 - 60_000_000 - 10_000
    # The same id again is a retry, not a second hold.
    net.node.execute(first)
    assert len([p for p in net.ledger.pending.values() if p.status == "pending"]) == 1
    net.node.engine.check_invariants()
