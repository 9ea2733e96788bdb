"""Property: a chain shortfall's halt names its occurrence. Over any sequence of passes that find the hot
wallet short by some amount or whole, quorum lifts and reconciler restarts, each pass raises, finds
active, or acknowledges as lifted exactly what a model of occurrences says:

* a shortfall whose amounts an active halt names is that halt (nothing new);
* otherwise it belongs to the occurrence the wallet is in (kept from pass to pass until a pass finds the
  wallet whole; one that starts takes an active halt's for the same amounts, on a restarted reconciler's
  first pass the newest quorum-lifted halt's, else is new), amounts seen before in it name the halt they
  named then, and a halt is raised unless it is active or a quorum lifted that very halt.

So a shortfall after the wallet was whole again is a new halt even with amounts a quorum lifted before,
and a lasting one is never raised again after its lift, across restarts too. (A dict-backed chain and the
test custody commands; the real local chains are in test_chain_faults.py.)"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ringfence.reconcile.reconciler import ReconcileSettings, Reconciler, WalletSpec
from ringfence.risk.halts import active_halts

from .conftest import desk_for, operator_keys, operators_node
from .custody_sim import SimCreditDeposit, SimCustody

HELD = 10**8
UNIT = 10**6


class DictChain:
    def __init__(self) -> None:
        self.balance_minor = HELD

    def current_height(self) -> int:
        return 1

    def block_hash(self, height: int) -> str:
        return "00" * 32

    def balance(self, address: str, height: int | None = None, asset: str | None = None) -> int:
        return self.balance_minor


class Model:
    """Occurrences as tokens; halts as (occurrence, amount); the wallet's occurrence as (token, amount -> token)."""

    def __init__(self) -> None:
        self.active: list[tuple[int, int]] = []
        self.lifted: list[tuple[int, int]] = []
        self.raised: list[tuple[int, int]] = []  # in the order they were raised
        self.run: tuple[int, dict[int, int]] | None = None
        self.first = True
        self.tokens = 0

    def newest(self, halts: list[tuple[int, int]], k: int) -> int | None:
        occs = [occ for occ, amount in sorted(halts, key=self.raised.index) if amount == k]
        return occs[-1] if occs else None

    def short(self, k: int) -> tuple[int, str]:
        if self.run is None:
            start = self.newest(self.active, k)
            if start is None and self.first:
                start = self.newest(self.lifted, k)
            if start is None:
                self.tokens += 1
                start = self.tokens
            self.run = (start, {})
        own, named = self.run
        if k not in named:
            held = self.newest(self.active, k)
            named[k] = own if held is None else held
        occ, self.first = named[k], False
        if (occ, k) in self.active:
            return occ, "active"
        if (occ, k) in self.lifted:
            return occ, "acknowledged"
        self.active.append((occ, k))
        self.raised.append((occ, k))
        return occ, "raised"

    def whole(self) -> None:
        self.run, self.first = None, False

    def lift(self) -> None:
        self.lifted += self.active
        self.active = []


EVENTS = st.one_of(st.tuples(st.just("short"), st.integers(1, 3)), st.tuples(st.sampled_from(["whole", "lift", "restart"]), st.just(0)))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(EVENTS, min_size=1, max_size=14))
def test_each_pass_raises_exactly_the_halts_a_model_of_occurrences_says(events: list[tuple[str, int]]) -> None:
    operators = operator_keys(3)
    with tempfile.TemporaryDirectory() as tmp:
        node = operators_node(Path(tmp), operators)
        try:
            node.execute(SimCreditDeposit("BTC", "hot1", "alice", HELD, "t-1", 0))
            chain = DictChain()
            spec = WalletSpec("hot1", "BTC", "bitcoin", chain, ("bc1-hot",))

            def reconciler() -> Reconciler:
                return Reconciler(node, wallets=[spec], custody=SimCustody(),
                                  settings=ReconcileSettings(confirm_reads=1))

            rec, model = reconciler(), Model()
            ids: dict[tuple[int, int], str] = {}  # the model's halt -> the reconciler's halt id
            for kind, k in events:
                if kind == "restart":
                    rec, model.first, model.run = reconciler(), True, None
                    continue
                if kind == "lift":
                    desk = desk_for(node, operators)
                    for halt in active_halts(node.engine):
                        node.execute(desk.lift(node.engine, halt["halt_id"], "reviewed", ["op1", "op2"]))
                    model.lift()
                    continue
                chain.balance_minor = HELD - k * UNIT if kind == "short" else HELD
                report = rec.run_once(internal=False)
                if kind == "whole":
                    model.whole()
                    assert report.mismatches == [] and report.halts_submitted == []
                    continue
                occ, want = model.short(k)
                [m] = report.mismatches
                key = (occ, k)
                got: Any = ("raised" if report.halts_submitted == [m.halt_id] else
                            "active" if report.halts_already_active == [m.halt_id] else
                            "acknowledged" if report.acknowledged == [m.halt_id] else report)
                assert got == want, (events, kind, k)
                assert ids.setdefault(key, m.halt_id) == m.halt_id  # one halt per (occurrence, amounts)
                assert sorted(h["halt_id"] for h in active_halts(node.engine)) == sorted(ids[a] for a in model.active)
            assert len(set(ids.values())) == len(ids), "two occurrences got one halt id"
        finally:
            node.close()
