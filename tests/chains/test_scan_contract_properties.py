"""Property: a watcher that follows `scan` (and undoes blocks on `Reorg`) always agrees with the chain.

This is the contract deposit watchers rely on: applying every reported transfer, and dropping those
of blocks at or above a reported fork height, reproduces each watched address's on-chain balance
after any random sequence of payments, mining and reorgs (including double-spend replacements).
"""

from __future__ import annotations

from hypothesis import given, seed, settings
from hypothesis import strategies as st

from ringfence.chains.adapter import Direction
from ringfence.chains.bitcoin.adapter import BitcoinAdapter
from ringfence.chains.bitcoin.simulator import BitcoinSimulator

from .btc_keys import key, p2wpkh_script, sign_p2wpkh

HYPOTHESIS_SEED = 7
KEYS = [key(10 + i) for i in range(3)]
SPKS = [p2wpkh_script(k) for k in KEYS]
MINER = bytes.fromhex("0014" + "ef" * 20)

_pay = st.tuples(st.just("pay"), st.integers(0, 2), st.integers(0, 2), st.integers(1, 90))
step_st = st.one_of(
    _pay,
    _pay,
    st.tuples(st.just("mine"), st.integers(1, 2)),
    st.tuples(st.just("reorg"), st.integers(1, 3), st.booleans(), st.booleans()),
    st.tuples(st.just("scan"),),
)


class ModelWatcher:
    """What a deposit watcher does with scan results, minus the ledger."""

    def __init__(self, adapter: BitcoinAdapter, watched: list[str]) -> None:
        self.adapter, self.watched = adapter, watched
        self.since = 0
        self.by_height: dict[int, list] = {}
        self.reorgs = 0

    def poll(self) -> None:
        while True:
            result = self.adapter.scan(self.since, self.watched)
            if result.reorg is not None:
                self.reorgs += 1
                for h in [h for h in self.by_height if h >= result.reorg.fork_height]:
                    del self.by_height[h]
            for block in result.blocks:
                self.by_height[block.height] = list(block.transfers)
            self.since = result.scanned_to_height
            if self.since >= result.tip_height:
                return

    def balance(self, address: str) -> int:
        total = 0
        for transfers in self.by_height.values():
            for t in transfers:
                if t.address == address:
                    total += t.amount_minor if t.direction is Direction.IN else -t.amount_minor
        return total


@seed(HYPOTHESIS_SEED)
@settings(max_examples=100, deadline=None, derandomize=True)
@given(steps=st.lists(step_st, min_size=3, max_size=20))
def test_watcher_following_scan_matches_chain_balances(steps):
    print(f"hypothesis seed {HYPOTHESIS_SEED}")
    sim = BitcoinSimulator(coinbase_maturity=1)
    btc = BitcoinAdapter(sim)
    addrs = [btc.address_of_script(s) for s in SPKS]
    for spk in SPKS:
        sim.mine(1, spk)
    sim.mine(1, MINER)
    watcher = ModelWatcher(btc, addrs)
    for step in steps:
        if step[0] == "pay":
            _, src, dst, pct = step
            pool_spent = {op for c in sim.mempool.values() for op, _, _ in c.spent}
            coins = [(op, c) for op, c in sorted(sim.utxos(SPKS[src]).items()) if op not in pool_spent]
            if coins:
                op, coin = coins[0]
                amount = max(1_000, coin.value_sat * pct // 100)
                change = coin.value_sat - amount - 1_000
                if change >= 1_000:
                    sim.submit(sign_p2wpkh([(op, coin.value_sat, KEYS[src])], [(SPKS[dst], amount), (SPKS[src], change)]))
        elif step[0] == "mine":
            sim.mine(step[1], MINER)
        elif step[0] == "reorg":
            _, depth, include, steal = step
            depth = min(depth, sim.height - 1)
            if depth < 1:
                continue
            fork = sim.height - depth + 1
            replacement = ()
            if steal:  # double-spend one coin spent in the replaced blocks, paying the miner instead
                for block in sim.blocks[fork:]:
                    for tx in block.txs[1:]:
                        op = (tx.vin[0].prevout.hash[::-1].hex(), tx.vin[0].prevout.n)
                        coin = sim.coin(op)
                        if coin is not None and coin.height < fork and coin.script_pubkey in SPKS:
                            owner = KEYS[SPKS.index(coin.script_pubkey)]
                            replacement = (sign_p2wpkh([(op, coin.value_sat, owner)], [(MINER, coin.value_sat - 2_000)]),)
                            break
                    if replacement:
                        break
            sim.reorganize(fork, depth + 1, MINER, replacement_txs=replacement, include_mempool=include)
        watcher.poll()
        for addr in addrs:
            assert watcher.balance(addr) == btc.balance(addr), (addr, step)
    sim.check_invariants()


def test_reorgs_were_exercised():
    """The generator must actually produce reorgs that the watcher sees."""
    sim = BitcoinSimulator(coinbase_maturity=1)
    btc = BitcoinAdapter(sim)
    sim.mine(3, SPKS[0])
    watcher = ModelWatcher(btc, [btc.address_of_script(SPKS[0])])
    watcher.poll()
    sim.reorganize(2, 3, MINER)
    watcher.poll()
    assert watcher.reorgs == 1
    assert watcher.balance(btc.address_of_script(SPKS[0])) == btc.balance(btc.address_of_script(SPKS[0])) == sim.subsidy(1)
