"""Deposit records and their lifecycle (the state the `custody` engine component keeps).

A deposit is keyed by `(chain, txid, index)` (`deposit_key`). Lifecycle:

    seen ──credit──► credited (available) ──finalize──► final
      │        └───► quarantined ──release──► credited / ──freeze──► frozen
      │        └───► frozen (blacklisted sender, reported)
      └─reorg──► dropped            credited/quarantined/frozen ──reorg before final──► reversed
                                    quarantined/frozen ──return to sender──► returned

A reversed or dropped deposit may be seen again (the transaction re-mined in the new branch); it
then starts over at `seen`. Invariant (property-tested): the net amount credited for a key is 0 or
its amount, never more — a deposit is never credited twice and never reversed twice.

Ledger model (docs/custody.md, "Money flow"): a credit moves `world -> <user>:<kind>` (the user's
claim) AND `onchain -> custody:<wallet>` (what our wallet holds); a reversal undoes both. So user
liabilities and custody holdings are both visible and each pair sums to zero.
"""

from __future__ import annotations

import msgspec

__all__ = ["DepositRec", "deposit_key", "ACTIVE_STATES", "CREDITED_STATES"]

#: States in which the deposit's amount is on the user's side of the ledger.
CREDITED_STATES = ("credited", "quarantined", "frozen", "final")
#: States that count as "seen on chain and not yet final" for reconciliation.
ACTIVE_STATES = ("seen", "credited", "quarantined", "frozen")


def deposit_key(chain: str, txid: str, index: int) -> str:
    return f"{chain}:{txid}:{index}"


class DepositRec(msgspec.Struct, array_like=True):
    key: str
    chain: str
    txid: str
    index: int
    asset: str
    account_id: str
    wallet: str
    address: str
    amount_minor: int
    height: int
    block_hash: str
    state: str = "seen"
    score: int = 0
    reasons: list[str] = []
    category: str = ""
    credited_kind: str = ""  # "available" | "quarantine" | "frozen" while credited
    final: bool = False
    declaration: str = ""
    reviewed_by: str = ""
    shortfall_minor: int = 0  # what a reversal could not take back (the user had spent it)
    times_credited: int = 0
    times_reversed: int = 0
    seen_ns: int = 0  # the sequencer's time when the deposit was first observed (Binance's insertTime)
    sender: str = ""  # the first sending address KYT saw (where "return to sender" pays)
    return_id: str = ""  # the withdrawal that returns it to the sender, once two analysts decided so
    return_by: list[str] = []  # analysts who signed "return to sender" (refund_cmds.py)
    return_reasons: list[str] = []
    release_by: list[str] = []  # analysts who signed the release of a frozen deposit (RELEASE_FROZEN_QUORUM)
