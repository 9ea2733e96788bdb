"""The custody chain pass paced with the chain lock freed during its pauses (session 20): what the
custody workers do during a pause is in none of the figures the pass compares, and a pass that
found a shortfall frees the lock no more until its halt is submitted (code review, session 20)."""

from __future__ import annotations

import threading
import time
from typing import Any

from ringfence.pacing import unlocked_sleep
from ringfence.reconcile.reconciler import ReconcileSettings, Reconciler, WalletSpec
from ringfence.risk.halts import active_halts

from .custody_sim import SimCreditDeposit, SimCustody


class FakeChain:
    """A chain whose balances are kept per height; `mine` adds a block moving balances."""

    def __init__(self, balances: dict[str, int]) -> None:
        self.height = 5
        self.history = {5: dict(balances)}
        self.reads = 0

    def current_height(self) -> int:
        return self.height

    def block_hash(self, height: int) -> str:
        return "00" * 32

    def balance(self, address: str, height: int | None = None, asset: str | None = None) -> int:
        assert height is not None
        self.reads += 1
        return self.history[height].get(address, 0)

    def mine(self, delta: dict[str, int]) -> None:
        balances = dict(self.history[self.height])
        for address, d in delta.items():
            balances[address] = balances.get(address, 0) + d
        self.height += 1
        self.history[self.height] = balances


class HookPacer:
    """A pacer that pauses at every look and runs `hook` during the pause."""

    def __init__(self, hook: Any) -> None:
        self.hook = hook
        self.ticks = 0

    def restart(self) -> None:
        pass

    def tick(self) -> None:
        self.ticks += 1
        self.hook(self.ticks)


def _custody(node: Any, btc: int, eth: int) -> None:
    node.execute(SimCreditDeposit("BTC", "btc_hot", "alice", btc, "tx-b", 0))
    node.execute(SimCreditDeposit("ETH", "eth_hot", "alice", eth, "tx-e", 0))


def test_a_withdrawal_mined_on_the_second_chain_during_a_pause_is_in_neither_side(node: Any) -> None:
    """The engine's figures are read before the pass; the second chain's height was fixed only when
    the pass reached its first wallet, after the first chain's reads and their pauses: a withdrawal
    of 40 recorded in flight and mined there meanwhile read as a shortfall of 40 (the chain after it,
    the figures before it)."""
    _custody(node, 10, 100)
    btc, eth = FakeChain({"b1": 10}), FakeChain({"e1": 100})
    custody = SimCustody()

    def withdrawal_worker(tick: int) -> None:  # the chain lock is free during the pause
        if tick == 1:
            custody.in_flight[("ETH", "eth_hot")] = {"w1": 40}
            eth.mine({"e1": -40})

    wallets = [WalletSpec("btc_hot", "BTC", "bitcoin", btc, ("b1",)), WalletSpec("eth_hot", "ETH", "ethereum", eth, ("e1",))]
    rec = Reconciler(node, wallets=wallets, custody=custody, settings=ReconcileSettings(confirm_reads=1),
                     pacer=HookPacer(withdrawal_worker))  # type: ignore[arg-type]
    report = rec.run_once(internal=False)
    assert eth.height == 6 and rec.pacer.ticks >= 1  # type: ignore[union-attr]
    assert report.mismatches == [] and report.halts_submitted == [] and active_halts(node.engine) == []
    assert [(r.wallet, r.height, r.chain_minor, r.in_flight_minor) for r in report.chain_rows] == [
        ("btc_hot", 5, 10, 0), ("eth_hot", 5, 100, 0)]  # the heights of when the figures were read
    # the next pass sees the withdrawal on both sides
    again = rec.run_once(internal=False)
    assert again.mismatches == [] and again.chain_rows[1].height == 6 and again.chain_rows[1].in_flight_minor == 40


def test_a_pass_that_found_a_shortfall_keeps_the_chain_lock_until_its_halt_is_submitted(node: Any, monkeypatch: Any) -> None:
    """The pass runs under the custody chain lock and frees it while it pauses (`unlocked_sleep`).
    Once a read found a shortfall, a pause in the rest of the read, in the confirming read or before
    the halt let the withdrawal worker sign and broadcast more of the short asset before the halt
    landed: from the read that finds it to the submitted halt, the lock stays held."""
    _custody(node, 10, 100)
    btc = FakeChain({"b1": 6, "b2": 0})  # 4 short
    eth = FakeChain({"e1": 100, "e2": 0, "e3": 0})
    wallets = [WalletSpec("btc_hot", "BTC", "bitcoin", btc, ("b1", "b2")),
               WalletSpec("eth_hot", "ETH", "ethereum", eth, ("e1", "e2", "e3"))]
    lock = threading.RLock()
    halts: list[str] = []
    real_execute = node.execute

    def execute(command: Any, *args: Any, **kwargs: Any) -> Any:
        result = real_execute(command, *args, **kwargs)
        if type(command).__name__ == "Halt":
            halts.append(command.halt_id)
        return result

    monkeypatch.setattr(node, "execute", execute)
    taken: list[tuple[int, bool]] = []  # each time the worker had the lock: balance reads so far, halt submitted
    stop = threading.Event()

    def withdrawal_worker() -> None:
        while not stop.is_set():
            with lock:
                taken.append((btc.reads + eth.reads, bool(halts)))
            time.sleep(0.001)

    sleep = unlocked_sleep(lock)

    def pause(_tick: int) -> None:  # frees the lock until the worker has had it once
        before = len(taken)
        deadline = time.monotonic() + 5
        while len(taken) == before and time.monotonic() < deadline:
            sleep(0.002)

    rec = Reconciler(node, wallets=wallets, custody=SimCustody(), pacer=HookPacer(pause))  # type: ignore[arg-type]
    worker = threading.Thread(target=withdrawal_worker)
    with lock:  # as the custody runtime's Supervised step holds it around the pass
        worker.start()
        report = rec.run_once(internal=False)
    stop.set()
    worker.join(5)
    [m] = report.mismatches
    assert (m.subject, m.expected_minor, m.actual_minor) == ("custody:btc_hot:BTC", 10, 6)
    assert report.halts_submitted == halts == [m.halt_id]
    assert (1, False) in taken  # the pause between b1 and b2 (nothing found yet) freed the lock
    # b2's read found the shortfall: from there to the halt the worker never had the lock
    assert [t for t in taken if t[0] >= 2 and not t[1]] == []
    assert btc.reads + eth.reads == 10  # both reads were whole


class _CountedPasses:
    """Passes over BTC (b1, b2) and ETH (e1, e2, e3) against ledgers of 10 and 100, b1 holding `btc_b1`,
    by one reconciler: each pass's report, the balance reads of that pass done at each of its pauses,
    and its reads in all."""

    def __init__(self, node: Any, btc_b1: int) -> None:
        _custody(node, 10, 100)
        self.btc, self.eth = FakeChain({"b1": btc_b1, "b2": 0}), FakeChain({"e1": 100, "e2": 0, "e3": 0})
        wallets = [WalletSpec("btc_hot", "BTC", "bitcoin", self.btc, ("b1", "b2")),
                   WalletSpec("eth_hot", "ETH", "ethereum", self.eth, ("e1", "e2", "e3"))]
        self.seen: list[int] = []
        self.before = 0
        self.rec = Reconciler(node, wallets=wallets, custody=SimCustody(),
                              pacer=HookPacer(lambda _tick: self.seen.append(self.reads() - self.before)))  # type: ignore[arg-type]

    def reads(self) -> int:
        return self.btc.reads + self.eth.reads

    def run(self) -> tuple[Any, list[int], int]:
        self.seen.clear()
        self.before = self.reads()
        report = self.rec.run_once(internal=False)
        return report, list(self.seen), self.reads() - self.before


def _counted_pass(node: Any, btc_b1: int) -> tuple[Any, list[int], int]:
    """One counted pass (`_CountedPasses`)."""
    return _CountedPasses(node, btc_b1).run()


def test_a_clean_pass_frees_the_lock_between_any_two_reads(node: Any) -> None:
    report, seen, _ = _counted_pass(node, 10)
    assert report.mismatches == [] and seen == [1, 2, 3, 4]  # a pause between any two of the 5 reads


def test_a_surplus_records_an_incident_and_the_pass_keeps_pausing(node: Any) -> None:
    """A surplus halts nothing (an incident): a wallet that stays in surplus must not make every later
    pass run its reads, the confirming read included, as one unpaced burst under the lock (the
    session-20 review found that any mismatch stopped the pauses)."""
    report, seen, reads = _counted_pass(node, 14)  # BTC 4 over
    [m] = report.mismatches
    assert m.kind == "hot_wallet_surplus" and report.halts_submitted == [] and active_halts(node.engine) == []
    # both reads (the first and the confirming one) pause between any two of their 5 balance reads
    assert seen == [1, 2, 3, 4, 6, 7, 8, 9] and reads == 10


def test_a_shortfall_already_halted_or_lifted_by_quorum_keeps_no_lock_and_a_new_one_does(node: Any, operators: Any) -> None:
    """The response raises no halt for a shortfall whose halt is active, or was lifted by an operator
    quorum on the same evidence: such a shortfall made every pass while it lasted, its confirming read
    included, one unpaced burst under the chain lock (the session-20 review). A new shortfall (other
    amounts: a new halt) still keeps the lock from the read that finds it to its halt."""
    from .conftest import desk_for

    passes = _CountedPasses(node, 6)  # BTC 4 short
    first, seen, reads = passes.run()
    [m] = first.mismatches
    assert first.halts_submitted == [m.halt_id] and [h["halt_id"] for h in active_halts(node.engine)] == [m.halt_id]
    assert seen == [1] and reads == 10  # found at b2: no pause from there on, the confirming read included
    again, seen, reads = passes.run()
    assert again.mismatches == [m] and again.halts_already_active == [m.halt_id] and again.halts_submitted == []
    assert seen == [1, 2, 3, 4, 6, 7, 8, 9] and reads == 10  # both reads pause between any two balance reads
    node.execute(desk_for(node, operators).lift(node.engine, m.halt_id, "loss written off", ["op1", "op2"]))
    lifted, seen, reads = passes.run()
    assert lifted.acknowledged == [m.halt_id] and lifted.halts_submitted == [] and active_halts(node.engine) == []
    assert seen == [1, 2, 3, 4, 6, 7, 8, 9] and reads == 10
    passes.btc.mine({"b1": -1})  # it leaks again: 5 short, a new halt
    leak, seen, reads = passes.run()
    [n] = leak.mismatches
    assert n.halt_id != m.halt_id and leak.halts_submitted == [n.halt_id]
    assert seen == [1] and reads == 10
