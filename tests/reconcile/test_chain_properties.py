"""Property: legitimate deposit/credit/reorg/withdrawal sequences never look like a shortfall, in
any interleaving the custody flows allow; an unexplained outflow above tolerance always does once
nothing is in flight. (A dict-backed chain here, to explore many interleavings quickly; the same
checks on the real local chains are in test_chain_faults.py.)"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ringfence.money import Asset, AssetClass
from ringfence.reconcile.reconciler import ReconcileSettings, WalletSpec, reconcile_chain
from ringfence.app import new_engine


class DictChain:
    def __init__(self) -> None:
        self.balance_minor = 0

    def current_height(self) -> int:
        return 1

    def block_hash(self, height: int) -> str:
        return "00" * 32

    def balance(self, address: str, height: int | None = None, asset: str | None = None) -> int:
        return self.balance_minor


class Flows:
    """The custody flows' bookkeeping, reduced to what reconciliation sees."""

    def __init__(self) -> None:
        self.engine = new_engine()
        self.engine.ledger.register_asset(Asset("BTC", 8, AssetClass.CRYPTO, None))
        self.ledger = self.engine.ledger
        self.custody = self.ledger.custody("BTC", "hot")
        self.onchain = self.ledger.open_system_account("BTC", "onchain", "-")
        self.chain = DictChain()
        self.deposits: dict[int, dict] = {}  # id -> amount, credited, on_chain
        self.withdrawals: dict[int, int] = {}  # id -> amount incl. fee, broadcast (in flight)
        self.next_id = 1

    def in_flight_withdrawals(self, asset: str, wallet: str) -> int:
        return sum(self.withdrawals.values())

    def pending_deposits(self, asset: str, wallet: str) -> int:
        return sum(d["amount"] for d in self.deposits.values())

    def step(self, op: tuple) -> None:
        kind, n, amount = op
        ids = sorted(self.deposits)
        if kind == "see":
            self.deposits[self.next_id] = {"amount": amount, "credited": False, "on_chain": True}
            self.next_id += 1
            self.chain.balance_minor += amount
        elif kind == "credit" and ids:
            d = self.deposits[ids[n % len(ids)]]
            if d["on_chain"] and not d["credited"]:
                d["credited"] = True
                self.ledger.move(self.onchain, self.custody, d["amount"])
        elif kind == "final" and ids:
            key = ids[n % len(ids)]
            if self.deposits[key]["credited"] and self.deposits[key]["on_chain"]:
                del self.deposits[key]
        elif kind == "reorg" and ids:
            d = self.deposits[ids[n % len(ids)]]
            if d["on_chain"]:
                d["on_chain"] = False
                self.chain.balance_minor -= d["amount"]
        elif kind == "reverse" and ids:
            key = ids[n % len(ids)]
            d = self.deposits[key]
            if not d["on_chain"]:
                if d["credited"]:
                    self.ledger.move(self.custody, self.onchain, d["amount"])
                del self.deposits[key]
        elif kind == "broadcast":
            held = self.custody.balance - sum(self.withdrawals.values()) - self.pending_deposits("BTC", "hot")
            if 0 < amount <= held and amount <= self.chain.balance_minor:
                self.withdrawals[self.next_id] = amount
                self.next_id += 1
                self.chain.balance_minor -= amount
        elif kind == "settle" and self.withdrawals:
            key = sorted(self.withdrawals)[n % len(self.withdrawals)]
            self.ledger.move(self.custody, self.onchain, self.withdrawals.pop(key))

    def status(self, tolerance: int = 0) -> str:
        spec = WalletSpec("hot", "BTC", "bitcoin", self.chain, ("addr",))
        [row], _ = reconcile_chain(self.ledger, [spec], self, ReconcileSettings(tolerances_minor={"BTC": tolerance}))
        return row.status


ops = st.lists(st.tuples(st.sampled_from(["see", "credit", "final", "reorg", "reverse", "broadcast", "settle"]),
                         st.integers(0, 20), st.integers(1, 10_000)), max_size=60)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(ops)
def test_legitimate_flows_never_look_like_a_shortfall(steps):
    flows = Flows()
    for op in steps:
        flows.step(op)
        assert flows.status() == "OK", (op, flows.chain.balance_minor, flows.custody.balance)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(ops, st.integers(1, 10**6), st.integers(0, 100))
def test_an_outflow_above_tolerance_is_a_shortfall_once_nothing_is_pending(steps, leak, tolerance):
    flows = Flows()
    for op in steps:
        flows.step(op)
    for key in list(flows.deposits):  # every deposit reaches finality (credited) or is reversed
        d = flows.deposits.pop(key)
        if d["on_chain"] and not d["credited"]:
            flows.ledger.move(flows.onchain, flows.custody, d["amount"])
        elif not d["on_chain"] and d["credited"]:
            flows.ledger.move(flows.custody, flows.onchain, d["amount"])
    while flows.withdrawals:
        flows.step(("settle", 0, 0))
    assert flows.status(tolerance) == "OK"
    flows.chain.balance_minor -= leak
    assert flows.status(tolerance) == ("SHORTFALL" if leak > tolerance else "OK")
