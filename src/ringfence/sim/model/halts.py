"""The auditor's halts: which scopes a command touches, what each level refuses, the operator quorum.

Restated from docs/engine.md ("Halts") and the declarations each module makes (never imported):
every command declares an effect, and a level refuses a command from the level its effect allows:

| effect | commands | refused from |
|---|---|---|
| opens risk | `PlaceOrder`; an `AmendOrder` that does not reduce | REDUCE_ONLY |
| reduces risk, always | `CancelOrder`, `CancelAll` | never |
| reduces risk, in this state | an `AmendOrder` of an open resting order of the same owner that keeps the price and lowers the total quantity | HALTED |
| moves funds out | `RequestWithdrawal`, `ApproveWithdrawal`, `AuthorizeSigning`, `RecordSignedTx`, `RecordSignedBatch` | WITHDRAWALS_PAUSED |
| neutral, admin | everything else (transfers, deposits, settlements, `SetReferencePrice`, `ListMarket`, `SetMarketStatus`, index quotes...) | HALTED |

The halt commands themselves (`Halt`, `LiftHaltSigned`...) and the staff register's commands
(`StaffGenesis`, `AddStaff`, `RemoveStaff`) are never refused by a halt; a `TradingBatch` is checked
action by action. A lift, and a change of staff, needs `threshold` (the staff quorum) distinct
active operators' valid, unexpired, unused signatures; anything less is refused for segregation of
duties (`RF_SEGREGATION_OF_DUTIES`, rule named by the engine). The model knows which approvals the
runner signed genuinely, so it needs no cryptography. A removed operator is no longer active.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .books import Books, Key, Refuse

__all__ = ["HaltsModel", "MHalt", "LEVELS", "MOVES_FUNDS_OUT", "ALWAYS_REDUCES", "HALT_COMMANDS", "NO_SCOPES"]

LEVELS = {"WITHDRAWALS_PAUSED": 1, "REDUCE_ONLY": 2, "HALTED": 3}
#: Withdrawal commands that move money towards the chain: refused from WITHDRAWALS_PAUSED.
MOVES_FUNDS_OUT = frozenset({"RequestWithdrawal", "ApproveWithdrawal", "ApproveWithdrawalSigned", "AuthorizeSigning",
                             "RecordSignedTx", "RecordSignedBatch"})
#: Commands that always reduce risk: no level refuses them.
ALWAYS_REDUCES = frozenset({"CancelOrder", "CancelAll"})
#: Commands that name a deposit (chain, txid, index): the deposit's asset and wallet are their scope.
DEPOSIT_SCOPED = frozenset({"CreditDeposit", "FinalizeDeposit", "FileSourceOfFunds", "ReviewQuarantine",
                            "ReviewQuarantineSigned", "ReturnDepositSigned", "RelocateDeposit"})
#: The halt module's own commands: never refused by a halt.
HALT_COMMANDS = frozenset({"Halt", "LiftHalt", "RegisterOperators", "LiftHaltSigned", "RaiseHaltSigned",
                           "StaffGenesis", "AddStaff", "RemoveStaff"})
DUTIES = "RF_SEGREGATION_OF_DUTIES"
#: Configuration that names no market, asset or segment as a scope (only the venue).
NO_SCOPES = frozenset({"RegisterAsset", "RegisterAssetSigned", "RegisterSegment", "SetFeeTier", "SetAccountFeeTier",
                       # the index's commands declare no scope (a quote is a fact; its config is admin)
                       "RegisterFeedKey", "ConfigureIndex", "SubmitQuote", "OverrideReferencePrice"})


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
        self.operators: set[str] = set()  # active staff operators
        self.staff_ids: set[str] = set()  # every id ever registered (ids are never reused)
        self.threshold = 0  # the staff register's quorum
        self.staff_version = 0

    def scopes(self, name: str, cmd: Any, account_keys: dict[int, Key]) -> list[tuple[str, str]]:
        """The (kind, scope) pairs a command touches, as its fields declare them.

        Per module: ledger transfers the assets and segments of the accounts they name, accounts
        their asset and segment; trading its market and, once listed, the market's segment, base
        and quote; custody its `asset`, `asset@wallet` and `segment` fields; asset, segment and fee
        tier configuration nothing but the venue. Known gaps of those declarations, mirrored here:
        a post or void names no accounts (ids 0), so it passes an asset or segment halt of the
        hold it settles. A command naming a deposit by chain, txid and index (`CreditDeposit`,
        `FinalizeDeposit`, `FileSourceOfFunds`, the quarantine review, the return, the relocation)
        touches that deposit's asset and `asset@wallet`; `ReorgDeposits` every custodied asset on
        its chain."""
        out = [("venue", "*")]
        if name in NO_SCOPES:
            return out
        if name in DEPOSIT_SCOPED:
            d = self.deposits.get(f"{cmd.chain}:{cmd.txid}:{cmd.index}")
            return out + ([("asset", d.asset), ("asset", f"{d.asset}@{d.wallet}")] if d is not None else [])
        if name == "ReorgDeposits":
            return out + [("asset", a) for a, cfg in sorted(self.custody.items()) if cfg.chain == cmd.chain]
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
        if name in HALT_COMMANDS or not self.halts:
            return
        if name == "TradingBatch":
            for action in cmd.actions:
                self.guard(action, account_keys)
            return
        refused_from = self._refused_from(name, cmd)
        if refused_from is None:
            return
        for kind, scope in self.scopes(name, cmd, account_keys):
            level = self.level_at(kind, scope)
            if level >= refused_from:
                level_name = next(n for n, rank in LEVELS.items() if rank == level)
                raise Refuse("RF_HALTED", f"{kind} {scope} is {level_name}")

    def _refused_from(self, name: str, cmd: Any) -> int | None:
        """The lowest halt level that refuses `cmd` (None: none does), by the table above."""
        if name in ALWAYS_REDUCES:
            return None
        if name == "PlaceOrder":
            return LEVELS["REDUCE_ONLY"]
        if name == "AmendOrder":
            return LEVELS["HALTED"] if self._amend_reduces(cmd) else LEVELS["REDUCE_ONLY"]
        if name in MOVES_FUNDS_OUT:
            return LEVELS["WITHDRAWALS_PAUSED"]
        return LEVELS["HALTED"]

    def _amend_reduces(self, cmd: Any) -> bool:
        """An amend reduces risk only for an open resting order of the same owner, keeping its
        price and lowering its total quantity (not what is left)."""
        m = self.markets.get(cmd.symbol)
        o = m.orders.get(cmd.order_id) if m is not None else None
        if o is None or o.owner != cmd.owner or not o.resting:
            return False
        return cmd.price in (0, o.price) and 0 < cmd.quantity < o.qty

    def halt(self, cmd: Any, seq: int) -> list[tuple[Any, ...]]:
        if cmd.halt_id in self.halts:
            return [("halt_unchanged", cmd.halt_id)]
        self.halts[cmd.halt_id] = MHalt(cmd.scope_kind, cmd.scope, cmd.level, seq)
        return [("halt_raised", cmd.halt_id, cmd.level)]

    def check_quorum(self, approvals: list[tuple[str, bool]]) -> None:
        """`approvals`: (staff id, whether the runner signed the right decision with that member's
        registered key, unexpired and with a fresh nonce). The model does no cryptography."""
        seen: list[str] = []
        for op, genuine in approvals:
            if op in seen or op not in self.operators or not genuine:
                raise Refuse(DUTIES, f"approval of {op} is duplicate, not an active operator, or not valid")
            seen.append(op)
        if len(seen) < self.threshold:
            raise Refuse(DUTIES, f"{len(seen)} of {self.threshold} approvals")

    def lift(self, halt_id: str, approvals: list[tuple[str, bool]]) -> list[tuple[Any, ...]]:
        if halt_id not in self.halts:
            raise Refuse("RF_NOT_FOUND", "no such active halt")
        self.check_quorum(approvals)
        del self.halts[halt_id]
        return [("halt_lifted", halt_id)]

    def staff_genesis(self, operators: list[str], quorum: int) -> None:
        self.operators, self.threshold, self.staff_version = set(operators), quorum, 1
        self.staff_ids |= set(operators)

    def staff_add(self, staff_id: str, roles: list[str], approvals: list[tuple[str, bool]]) -> list[tuple[Any, ...]]:
        if staff_id in self.staff_ids:
            raise Refuse(DUTIES, "ids are never reused")
        self.check_quorum(approvals)
        self.staff_ids.add(staff_id)
        if "operator" in roles:
            self.operators.add(staff_id)
        self.staff_version += 1
        return [("staff", "added", staff_id)]

    def staff_remove(self, staff_id: str, approvals: list[tuple[str, bool]]) -> list[tuple[Any, ...]]:
        if staff_id not in self.operators:
            raise Refuse("RF_NOT_FOUND", "no such active staff member")
        self.check_quorum(approvals)
        if len(self.operators) - 1 < self.threshold:
            raise Refuse(DUTIES, "the quorum would become unreachable")
        self.operators.discard(staff_id)
        self.staff_version += 1
        return [("staff", "removed", staff_id)]
