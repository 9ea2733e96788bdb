"""Bitcoin coin selection (`wallets.plan_spend` / `choose_coins`, shared by every Bitcoin wallet),
property-tested: no coin is used twice or invented, inputs = outputs + change + fee, the change
goes back to the wallet's own address (last output), the smallest single coin that covers a
payment is the one spent, and a wallet funded with one coin per payment pays every payment from
one coin whatever the order (largest-first broke big coins on small payments and left later ones
waiting for change to confirm: the custody bench's BTC withdrawals ran at 0.005x the chain)."""

from __future__ import annotations

import pytest
from hypothesis import given, seed, settings, strategies as st

from ringfence.chains.bitcoin.adapter import BitcoinAdapter, Utxo
from ringfence.chains.bitcoin.rawtx import parse
from ringfence.chains.bitcoin.simulator import BitcoinSimulator
from ringfence.custody.wallets import DUST_SAT, MAX_INPUTS, P2WPKH_INPUT_VB, TX_OVERHEAD_VB, btc_raw_unsigned, \
    choose_coins, plan_spend
from ringfence.errors import InsufficientFunds

ADAPTER = BitcoinAdapter(BitcoinSimulator(), network="regtest")  # only its address <-> script conversion
OUTPUT_VB = CHANGE_VB = 31


def _addr(n: int) -> str:
    from ringfence.custody.wallets import p2wpkh_address

    return p2wpkh_address(bytes([2]) + n.to_bytes(32, "big"))


OWN = _addr(0)
DESTS = [_addr(n) for n in range(1, 6)]
coin_values = st.lists(st.integers(1, 5 * 10**8), min_size=0, max_size=40)


def _coins(values: list[int]) -> list[Utxo]:
    return [Utxo(f"{n:064x}", n % 3, v, 100 + n % 7, False) for n, v in enumerate(values)]


def _plan(coins, outputs, rate=2):
    return plan_spend(coins, outputs, from_address=OWN, fee_rate_sat_per_vb=rate, input_vb=P2WPKH_INPUT_VB,
                      outputs_vb=OUTPUT_VB * len(outputs), change_vb=CHANGE_VB)


@seed(15)
@settings(max_examples=300, deadline=None)
@given(coin_values, st.lists(st.tuples(st.sampled_from(DESTS), st.integers(DUST_SAT, 3 * 10**8)), min_size=1, max_size=8),
       st.integers(1, 50))
def test_a_spend_conserves_value_uses_each_coin_once_and_returns_change_to_itself(values, outputs, rate) -> None:
    print("seed 15:", len(values), "coins,", len(outputs), "outputs, rate", rate)
    coins = _coins(values)
    want = sum(v for _, v in outputs)
    fee_for = lambda n: (TX_OVERHEAD_VB + P2WPKH_INPUT_VB * n + OUTPUT_VB * len(outputs) + CHANGE_VB) * rate  # noqa: E731
    best = sorted(values, reverse=True)[:MAX_INPUTS]
    reachable = any(sum(best[:k]) >= want + fee_for(k) for k in range(1, len(best) + 1))
    try:
        spend = _plan(coins, outputs, rate)
    except InsufficientFunds:
        assert not reachable, "refused a payment the wallet's coins cover"
        return
    assert reachable
    ids = [(u.txid, u.vout) for u in spend.coins]
    assert len(set(ids)) == len(ids), "a coin used twice"
    assert set(ids) <= {(u.txid, u.vout) for u in coins}, "a coin the wallet does not have"
    assert sum(u.value_sat for u in spend.coins) == want + spend.change_sat + spend.fee_sat
    assert spend.outputs == outputs
    assert fee_for(len(spend.coins)) <= spend.fee_sat < fee_for(len(spend.coins)) + DUST_SAT  # dust change goes to the fee
    assert spend.change_sat == 0 or spend.change_sat >= DUST_SAT
    singles = [v for v in values if v >= want + fee_for(1)]
    if singles:  # the smallest coin that pays it all, alone
        assert [u.value_sat for u in spend.coins] == [min(singles)]
    # the transaction pays exactly the outputs, in order, then the change to the wallet itself
    inputs, paid = parse(btc_raw_unsigned(ADAPTER, spend, OWN).serialize([[b"\x01"]] * len(spend.coins)))
    assert inputs == ids
    assert paid[:len(outputs)] == [(ADAPTER.script_of_address(a), v) for a, v in outputs]
    assert paid[len(outputs):] == ([(ADAPTER.script_of_address(OWN), spend.change_sat)] if spend.change_sat else [])


@seed(16)
@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(10**5, 2 * 10**7), min_size=1, max_size=60), st.randoms(use_true_random=False))
def test_one_coin_per_payment_pays_every_payment_from_one_coin_in_any_order(payments, rnd) -> None:
    """The bench's hot wallet: one coin of (payment + 0.001 BTC) per payment, payments in any order,
    each spend removing its coin (its change is unconfirmed, so not spendable yet)."""
    print("seed 16:", len(payments), "payments")
    coins = _coins([p + 10**5 for p in payments])
    order = list(payments)
    rnd.shuffle(order)
    for amount in order:
        spend = _plan(coins, [(DESTS[0], amount)])
        assert len(spend.coins) == 1, "a payment waited for (or broke) more than one coin"
        coins.remove(spend.coins[0])
    assert coins == []


def test_largest_first_when_no_single_coin_covers() -> None:
    coins = _coins([5, 40, 10, 30, 20])
    picked = choose_coins(coins, 55, lambda n: 0)
    assert [u.value_sat for u in picked] == [40, 30]


def test_a_coin_listed_twice_is_refused() -> None:
    from ringfence.errors import ValidationError

    (c,) = _coins([10**6])
    with pytest.raises(ValidationError):
        _plan([c, c], [(DESTS[0], 10_000)])
