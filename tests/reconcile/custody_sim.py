"""A small stand-in for the custody flows (branch `custody`), for reconciliation tests only.

Two test-only commands move the real ledger the way the custody flows do (a credited deposit moves
world -> user and onchain -> `custody:<wallet>:<asset>`, a credit-normal account), and `SimCustody`
implements the `CustodyView` protocol from a watcher-like record of pending deposits and in-flight
withdrawals. It deliberately has no double-credit protection, so a test can inject that bug.
"""

from __future__ import annotations

from ringfence.engine.commands import Command, Event
from ringfence.engine.core import Engine
from ringfence.engine.module import Effect, Module
from ringfence.reconcile.reconciler import JournalFold, register_fold


class SimCreditDeposit(Command, tag="test.recon.credit_deposit/1"):
    asset: str
    wallet: str
    owner: str
    amount: int
    txid: str
    index: int = 0


class SimRequestWithdrawal(Command, tag="test.recon.request_withdrawal/1"):
    asset: str
    wallet: str
    owner: str
    amount: int


class SimDepositCredited(Event, tag="test.recon.deposit_credited/1"):
    txid: str
    amount: int


#: The test module: nodes of the reconciliation tests run it next to the standard modules.
MODULE = Module("test-custody-sim")
MODULE.declare_events(SimDepositCredited)


def _asset_scopes(engine: Engine, c) -> list[tuple[str, str]]:
    return [("asset", c.asset), ("asset", f"{c.asset}@{c.wallet}")]


@MODULE.handles(SimCreditDeposit, effect=Effect.NEUTRAL, scopes=_asset_scopes)
def _credit(engine: Engine, c: SimCreditDeposit) -> list[Event]:
    ledger = engine.ledger
    custody = ledger.custody(c.asset, c.wallet)
    onchain = ledger.open_account("system", c.asset, "onchain", "-")[0]
    user = ledger.find(c.owner, c.asset, "available", "spot") or ledger.open_account(c.owner, c.asset, "available", "spot")[0]
    ledger.move(ledger.world(c.asset), user, c.amount)
    ledger.move(onchain, custody, c.amount)
    return [SimDepositCredited(c.txid, c.amount)]


@MODULE.handles(SimRequestWithdrawal, effect=Effect.MOVES_FUNDS_OUT, scopes=_asset_scopes)
def _request(engine: Engine, c: SimRequestWithdrawal) -> list[Event]:
    ledger = engine.ledger
    user = ledger.get(c.owner, c.asset)
    ledger.hold(user, ledger.world(c.asset), c.amount)
    return []


def _fold_credit(fold: JournalFold, c: SimCreditDeposit, events: list, seq: int) -> None:
    find = fold.engine.ledger.find
    fold.book.post(find("system", c.asset, "world", "-").id, find(c.owner, c.asset, "available", "spot").id, c.amount)
    fold.book.post(find("system", c.asset, "onchain", "-").id, find("system", c.asset, "custody", c.wallet).id, c.amount)


def _fold_request(fold: JournalFold, c: SimRequestWithdrawal, events: list, seq: int) -> None:
    ledger = fold.engine.ledger
    tid = ledger.next_internal_id - 1  # the id the replay engine just gave the hold
    fold.book.reserve(tid, ledger.find(c.owner, c.asset, "available", "spot").id,
                      ledger.find("system", c.asset, "world", "-").id, c.amount)


register_fold("SimCreditDeposit", _fold_credit)
register_fold("SimRequestWithdrawal", _fold_request)


class SimCustody:
    """`CustodyView` backed by what the test's watcher saw."""

    def __init__(self) -> None:
        self.pending: dict[tuple[str, str], dict[str, int]] = {}
        self.in_flight: dict[tuple[str, str], dict[str, int]] = {}

    def observe(self, asset: str, wallet: str, txid: str, amount: int) -> None:
        self.pending.setdefault((asset, wallet), {})[txid] = amount

    def forget(self, asset: str, wallet: str, txid: str) -> None:
        self.pending.get((asset, wallet), {}).pop(txid, None)

    def in_flight_withdrawals(self, asset: str, wallet: str) -> int:
        return sum(self.in_flight.get((asset, wallet), {}).values())

    def pending_deposits(self, asset: str, wallet: str) -> int:
        return sum(self.pending.get((asset, wallet), {}).values())


class ReadsChain:
    """A chain whose wallet balance is given per read: `reads` (consumed, one per read of a pass), else
    `balance_minor` (the shortfall tests: tests/reconcile/test_shortfall_*.py)."""

    def __init__(self, balance_minor: int) -> None:
        self.balance_minor = balance_minor
        self.reads: list[int] = []

    def current_height(self) -> int:
        return 1

    def block_hash(self, height: int) -> str:
        return "00" * 32

    def balance(self, address: str, height: int | None = None, asset: str | None = None) -> int:
        return self.reads.pop(0) if self.reads else self.balance_minor
