"""The auditor: a second, simple, obviously-correct account of what every command should do.

TigerBeetle's VOPR checks the replica against an auditor that knows what each reply must be. This is
ours. It is written from the documented rules (docs/ledger.md, docs/trading.md, docs/custody.md,
risk/halts.py's docstring), never from the engine's code: no engine, ledger, trading or custody
module is imported here. Plain dicts and lists, linear scans, a book sorted from scratch every time.

It predicts, for one command at a time, whether the command is refused (and with which error code),
which events it produces (trading events in a normalised form, ledger result codes), and what it
does to:

* every ledger account's posted balance and pending debits/credits (users' `available`, `quarantine`
  and `frozen`, the fee and shield ("insurance") accounts, `world`, `clearing`, `custody`, `onchain`);
* open orders (owner, side, price, what is left, what is held for them, resting or armed stop);
* client two-phase transfers, deposits, withdrawals (their state machine), halts and the operator set;
* the index of each indexed symbol (value, frozen or not, which venues quoted);
* linear perpetuals: derivatives wallets, margin accounts, positions (size, cost, margin, realised
  PnL), the PnL pool, fees and insurance, funding rounds (perps.py).

The runner compares all of this with the engine after every step. Money is `int` throughout.
"""

from __future__ import annotations

from .books import Bal, Expect, ModelError, Refuse
from .custody import CustodyModel, CustodyRules
from .halts import HaltsModel
from .index import IndexModel
from .ledger import LedgerModel
from .perps import PerpRules, PerpsModel
from .trading import MarketRules, MOrder, TradingModel

__all__ = ["Model", "Expect", "Bal", "MOrder", "MarketRules", "CustodyRules", "PerpRules", "ModelError", "Refuse"]


class Model(LedgerModel, TradingModel, CustodyModel, HaltsModel, IndexModel, PerpsModel):
    """The expected state of one shard: one class per domain (books.py has the money primitives)."""

    def __init__(self) -> None:
        self._init_books()
        self._init_ledger()
        self._init_trading()
        self._init_custody()
        self._init_halts()
        self._init_index()
        self._init_perps()
