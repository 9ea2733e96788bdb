"""`DerivativesState`, the derivatives module's state (`engine.components["derivatives"]`).

A native class, compiled with the hot path (`ringfence.native.COMPILED`): the contract reads its
fields on every perpetual order and fill (the perpetual, the position book, the reduce-only
flags), and compiled code reads a native class's fields as C fields where a Python object's cost
a generic attribute lookup each. Its position book and isolated set subclass `dict` and `set`,
which mypyc does not compile, and live in `positions.py`. The snapshot, the restore and the
invariants are in `state.py`, which re-exports this class.
"""

from __future__ import annotations

from typing import Any

from ..engine.module import NEVER
from .margin import Perp
from .positions import IsolatedSet, PositionBook

__all__ = ["DerivativesState"]


class DerivativesState:
    """What the derivatives module keeps: the listed perpetuals, the positions, each owner's
    leverage and margin type, the liquidation and reduce-only bookkeeping, the conditional orders."""

    def __init__(self, engine: Any = None) -> None:
        self.engine: Any = engine
        self.perps: dict[str, Perp] = {}
        self.leverage: dict[tuple[str, str], int] = {}
        #: Counts the changes of `leverage` (`SetLeverage`; a restore assigns a new dict): the contract's
        #: `Seat` keeps an owner's setting while this and the dict are those it read it from.
        self.leverage_version: int = 0
        self.next_tran_id: int = 1
        #: (owner, asset) -> sequencer time before which no next liquidation step runs.
        self.liq_next_ns: dict[tuple[str, str], int] = {}
        #: Set by `PlacePerpOrder` around its call into trading (never outside one command).
        self.reduce_only: bool = False
        #: (owner, symbol) of the isolated position a `LiquidatePosition` step is closing (within it
        #: only): its order's hold is borrowed from the position's margin and its fills pay only from that.
        self.liquidating_isolated: tuple[str, str] | None = None
        #: (owner, symbol) of the position any liquidation step is closing (within it only): its
        #: order's hold is capped at the collateral left (the fee at a fill is capped the same way).
        self.liquidating: tuple[str, str] | None = None
        #: symbol -> ids of the open reduce-only orders on it (pruned as they end).
        self.reduce_only_orders: dict[str, set[int]] = {}
        #: algo id -> untriggered conditional order (`conditional.py`), ids ascending.
        self.conditional: dict[int, Any] = {}
        #: Set while conditional orders are being fired (their own fills must not fire them again).
        self.firing: bool = False
        #: Sequencer time of the next check of every conditional order (while there are any).
        self.conditional_check_ns: int = 0
        #: Derived, never in a snapshot: (symbol, on the mark) -> the group's `TriggerIndex` (conditional.py).
        self.conditional_groups: dict[tuple[str, bool], Any] = {}
        #: Derived too: (owner, symbol) -> how many open; (owner, client algo id) -> algo id.
        self.conditional_count: dict[tuple[str, str], int] = {}
        self.conditional_ids: dict[tuple[str, str], int] = {}
        #: The positions' columnar mirror for the margin sweep (`columns.py`): derived data, built on the
        #: first `margin_check` and brought up to date from `positions.dirty` at each; never in a snapshot.
        self.columns: Any = None
        #: The engine's trading state, read at the first perpetual order (`contract.handle_place_perp_order`:
        #: a dict lookup less per order). Not state: the engine replaces its states only all at once (a
        #: restore makes this state anew), so the one read is the engine's for this state's whole life.
        self.trading: Any = None
        # (`positions`' and `isolated`' storage; the contract reads these directly, a property call less)
        self._positions: PositionBook = PositionBook()
        self._isolated: IsolatedSet = IsolatedSet(book=self._positions)

    # Whatever is assigned (`_restore`, a test), `positions` is a `PositionBook` and `isolated` an
    # `IsolatedSet` tied to it, so the mirror sees every change; a new book gets a new mirror.

    @property
    def positions(self) -> PositionBook:
        """(owner, symbol) -> the position (one-way mode: one per owner and market)."""
        return self._positions

    @positions.setter
    def positions(self, value: Any) -> None:
        self._positions = value if isinstance(value, PositionBook) else PositionBook(value)
        self._isolated.book = self._positions
        self._positions.dirty.update(self._isolated)
        self.columns = None

    @property
    def isolated(self) -> IsolatedSet:
        """The (owner, symbol) of every market an owner trades isolated (the rest is cross)."""
        return self._isolated

    @isolated.setter
    def isolated(self, value: Any) -> None:
        self._isolated = value if isinstance(value, IsolatedSet) else IsolatedSet(value)
        self._isolated.book = self._positions
        self._positions.dirty.update(self._isolated)

    def next_funding_ns(self) -> int:
        return min((p.next_funding_ns for p in self.perps.values()), default=NEVER)

    def check_invariants(self) -> None:
        from .state import check_invariants  # (state.py imports this module)

        check_invariants(self)
