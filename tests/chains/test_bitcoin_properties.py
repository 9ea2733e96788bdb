"""Property tests: UTXO-set invariants of the simulator over random transaction sequences.

Random sequences of valid sends, double spends, overspends, bad signatures, rebroadcasts, mining and
reorgs. After every step: value is conserved (UTXO total == sum of subsidies; every coinbase pays
exactly subsidy + the fees of its block), no output is spent twice in the chain or the mempool, and
a rejected transaction changed nothing. Seeded (HYPOTHESIS_SEED below) and derandomised.
"""

from __future__ import annotations

from collections import Counter

from bitcointx.core import CTransaction, b2lx
from hypothesis import given, seed, settings
from hypothesis import strategies as st

from ringfence.chains.bitcoin.simulator import BitcoinSimulator
from ringfence.errors import TransactionRejected

from .btc_keys import key, p2wpkh_script, sign_p2wpkh

HYPOTHESIS_SEED = 20261126
STATS: Counter = Counter()  # what the random runs exercised, printed with -s
KEYS = [key(i) for i in range(4)]
SPKS = [p2wpkh_script(k) for k in KEYS]
MINER = bytes.fromhex("0014" + "cd" * 20)

op_st = st.one_of(
    st.tuples(st.just("send"), st.integers(0, 3), st.integers(0, 3), st.integers(1, 99), st.integers(200, 3_000)),
    st.tuples(st.just("double"), st.integers(0, 3)),
    st.tuples(st.just("over"), st.integers(0, 3)),
    st.tuples(st.just("badsig"), st.integers(0, 3)),
    st.tuples(st.just("rebroadcast"), st.integers(0, 50)),
    st.tuples(st.just("mine"), st.integers(1, 3), st.booleans()),
    st.tuples(st.just("reorg"), st.integers(1, 4), st.integers(1, 2), st.booleans()),
)


def _spendable(sim: BitcoinSimulator, owner: int):
    """Confirmed, mature coins of `owner` not already spent by a mempool transaction."""
    spent_in_pool = {op for c in sim.mempool.values() for op, _, _ in c.spent}
    out = []
    for op, coin in sorted(sim.utxos(SPKS[owner]).items()):
        mature = not coin.coinbase or sim.height + 1 - coin.height >= sim.coinbase_maturity
        if mature and op not in spent_in_pool:
            out.append((op, coin))
    return out


def _snapshot(sim):
    return (sim.height, sim.utxo_value_total(), tuple(sim.mempool), sim.blocks[-1].block_hash)


def _check_block_fees(sim: BitcoinSimulator, coin_values: dict) -> None:
    for block in sim.blocks[1:]:
        fees = 0
        for tx in block.txs[1:]:
            fees += sum(coin_values[(b2lx(i.prevout.hash), i.prevout.n)] for i in tx.vin) - sum(o.nValue for o in tx.vout)
        assert block.txs[0].vout[0].nValue == block.subsidy_sat + fees == sim.subsidy(block.height) + block.fees_sat


def _expect_reject(sim, raw, reason):
    before = _snapshot(sim)
    try:
        sim.submit(raw)
    except TransactionRejected as exc:
        assert exc.details["reason"] == reason, (reason, exc)
        STATS[reason] += 1
    else:
        raise AssertionError(f"expected {reason} rejection")
    assert _snapshot(sim) == before, "a rejected transaction changed state"


@seed(HYPOTHESIS_SEED)
@settings(max_examples=60, deadline=None, derandomize=True, print_blob=True)
@given(ops=st.lists(op_st, min_size=5, max_size=25))
def test_utxo_invariants_hold_over_random_sequences(ops):
    print(f"hypothesis seed {HYPOTHESIS_SEED}")
    sim = BitcoinSimulator(coinbase_maturity=2)
    for spk in SPKS:
        sim.mine(1, spk)
    sim.mine(2, MINER)
    seen_txs: list[bytes] = []
    coin_values: dict = {}
    for op in ops:
        kind = op[0]
        if kind == "send":
            _, src, dst, pct, fee = op
            coins = _spendable(sim, src)
            if coins:
                (outpoint, coin) = coins[0]
                amount = coin.value_sat * pct // 100
                change = coin.value_sat - amount - fee
                if amount >= 1_000 and change >= 1_000:
                    raw = sign_p2wpkh([(outpoint, coin.value_sat, KEYS[src])], [(SPKS[dst], amount), (SPKS[src], change)])
                    txid, known = sim.submit(raw)
                    assert not known
                    STATS["send"] += 1
                    seen_txs.append(raw)
        elif kind == "double":
            pooled = [c for c in sim.mempool.values() if any(spk == SPKS[op[1]] for _, _, spk in c.spent)]
            if pooled:
                outpoint, value, _ = pooled[0].spent[0]
                raw = sign_p2wpkh([(outpoint, value, KEYS[op[1]])], [(MINER, value - 7_777)])
                _expect_reject(sim, raw, "double_spend")
        elif kind == "over":
            coins = _spendable(sim, op[1])
            if coins:
                outpoint, coin = coins[0]
                raw = sign_p2wpkh([(outpoint, coin.value_sat, KEYS[op[1]])], [(MINER, coin.value_sat + 1)])
                _expect_reject(sim, raw, "overspend")
        elif kind == "badsig":
            coins = _spendable(sim, op[1])
            if coins:
                outpoint, coin = coins[0]
                wrong = KEYS[(op[1] + 1) % 4]
                raw = sign_p2wpkh([(outpoint, coin.value_sat, KEYS[op[1]])], [(MINER, coin.value_sat - 1_000)], sign_with=[wrong])
                _expect_reject(sim, raw, "bad_signature")
        elif kind == "rebroadcast":
            if seen_txs:
                raw = seen_txs[op[1] % len(seen_txs)]
                txid = b2lx(CTransaction.deserialize(raw).GetTxid())
                was_known = txid in sim.mempool or txid in sim.tx_height
                before = _snapshot(sim)
                try:
                    _, known = sim.submit(raw)
                except TransactionRejected as exc:  # it vanished in a reorg and now conflicts
                    assert not was_known and exc.details["reason"] in ("double_spend", "missing_inputs")
                    assert _snapshot(sim) == before
                else:
                    assert known == was_known  # idempotent: a known tx is never a second send
                    if known:
                        assert _snapshot(sim) == before
                STATS[f"rebroadcast_known={was_known}"] += 1
        elif kind == "mine":
            sim.mine(op[1], MINER, include_mempool=op[2])
        elif kind == "reorg":
            _, depth, extra, include = op
            depth = min(depth, sim.height - 1)
            if depth >= 1:
                sim.reorganize(sim.height - depth + 1, depth + extra, MINER, include_mempool=include)
                STATS["reorg"] += 1
        for outpoint, coin in sim.coins.items():
            coin_values[outpoint] = coin.value_sat
        sim.check_invariants()
        _check_block_fees(sim, coin_values)
        assert sum(sim.balance(s) for s in SPKS + [MINER]) == sim.utxo_value_total()


def test_property_run_exercised_every_kind_of_step():
    """Guards against a generator that silently stops producing interesting sequences."""
    if not STATS:
        test_utxo_invariants_hold_over_random_sequences()
    print(dict(STATS))
    for kind in ("send", "double_spend", "overspend", "bad_signature", "reorg", "rebroadcast_known=True"):
        assert STATS[kind] > 0, (kind, dict(STATS))
