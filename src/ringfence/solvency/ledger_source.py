"""The ledger seam of proof of liabilities: what the exchange owes each user, at a journal position.

A user's liability per asset is the sum, over every account the user owns (every kind — available,
margin, quarantine... — and every segment), of the posted balance `credits_posted - debits_posted`.
Funds reserved by open orders or pending withdrawals are still the user's (a reservation moves
nothing until it is posted), so they count; so does each open perpetual position's unrealised PnL
at mark (derivatives equity = wallet + margin + unrealised PnL). The sum is floored at zero per user and asset; a
negative sum is reported as a debt and never reduces liabilities (LiabilitySnapshot does that).
System accounts (world, fees, insurance, custody, clearing) are the exchange's own and are left out.

The snapshot reads a state rebuilt from the journal — never the live engine — so a proof names an
exact journal position and the state hash it was taken from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from ..engine.core import Engine
from ..app import replay_journal
from ..ledger.model import SYSTEM_OWNER
from .snapshot import AssetSpec, LiabilitySnapshot

__all__ = ["liability_entries", "snapshot_from_engine", "snapshot_from_journal"]


def liability_entries(engine: Engine) -> Iterator[tuple[str, str, int]]:
    """(account_id, asset, balance_minor) for every user-owned account, then each open perpetual
    position's unrealised PnL at mark (in its margin asset; negative allowed): with the owner's
    derivatives wallet and margin accounts above, that is the owner's derivatives equity. A user
    whose sum is negative is listed as a debt (LiabilitySnapshot), never netted against another."""
    for account in engine.ledger.iter_accounts():
        if account.owner != SYSTEM_OWNER:
            yield account.owner, account.asset, account.balance
    st = engine.components.get("derivatives")
    if st is not None and st.positions:
        from ..derivatives.state import mark_of_perp, unrealized

        marks = {sym: mark_of_perp(engine, p) for sym, p in st.perps.items()}
        for (owner, sym), pos in sorted(st.positions.items()):
            p = st.perps[sym]
            yield owner, p.quote, unrealized(pos, marks[sym], p.scale)


def snapshot_from_engine(engine: Engine) -> LiabilitySnapshot:
    assets = [AssetSpec(a.code, a.decimals) for a in engine.ledger.assets]
    return LiabilitySnapshot.from_entries(
        assets,
        liability_entries(engine),
        position=f"journal:{engine.last_seq}",
        source_digest=bytes.fromhex(engine.state_hash()),
    )


def snapshot_from_journal(data_dir: Path, seq: int | None = None) -> LiabilitySnapshot:
    """Rebuild the state as of `seq` (default: the end of the journal) and snapshot it."""
    engine, _, _ = replay_journal(Path(data_dir), use_snapshots=seq is None, until_seq=seq)
    return snapshot_from_engine(engine)
