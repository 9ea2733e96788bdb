"""The chain-adapter interface every chain plugs into, and the value types it speaks.

Deposit watchers, withdrawal broadcasters, reconciliation and proof of reserves talk to a chain only
through `ChainAdapter`. An adapter answers questions about the chain *as it is now* and reports when
a block it already reported has been replaced (a reorg), so a watcher can reverse credits that lost
their block before finality.

Invariants:
* every amount is an `int` in the asset's minor unit (satoshi, wei); no float, no Decimal;
* `broadcast` is idempotent: the same signed transaction twice is one send, and the second call
  says `already_known=True`;
* `scan` never silently skips a replaced block: if a hash it reported earlier at some height has
  changed, the result carries a `Reorg` and the blocks from the fork height onward;
* the reorg tracker remembers at most `max_tracked_blocks` heights (a limit on everything).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Iterable, Mapping, Protocol, Sequence, runtime_checkable

from ..errors import UnsupportedAsset, ValidationError

__all__ = [
    "Direction",
    "Transfer",
    "Block",
    "Reorg",
    "ScanResult",
    "TxState",
    "TxStatus",
    "BroadcastResult",
    "FeeEstimate",
    "ChainAdapter",
    "ReorgTracker",
    "finality_depth_for",
    "MAX_SCAN_BLOCKS",
    "MAX_WATCHED_ADDRESSES",
]

#: Most blocks one `scan` returns; a watcher far behind calls again from the last height it got.
MAX_SCAN_BLOCKS = 500
#: Most addresses one `scan` may watch (bounds the per-block matching work).
MAX_WATCHED_ADDRESSES = 100_000


class Direction(str, enum.Enum):
    IN = "in"  # value arrives at a watched address (a deposit, or change coming back)
    OUT = "out"  # value leaves a watched address (a withdrawal)


@dataclass(frozen=True, slots=True)
class Transfer:
    """One movement of one asset to or from a watched address inside one transaction.

    `index` makes the transfer unique inside its transaction (the output index on Bitcoin; 0 for the
    native value of an Ethereum transaction), so `(txid, index, direction)` is a stable id a deposit
    watcher can use to credit at most once.
    """

    txid: str
    index: int
    asset: str
    address: str
    direction: Direction
    amount_minor: int
    counterparty: str | None = None
    fee_minor: int = 0

    def __post_init__(self) -> None:
        assert isinstance(self.amount_minor, int) and not isinstance(self.amount_minor, bool)
        assert self.amount_minor >= 0, "transfer amounts are non-negative; direction carries the sign"
        assert isinstance(self.fee_minor, int) and self.fee_minor >= 0
        assert self.fee_minor == 0 or self.direction is Direction.OUT, "only a sender pays a fee"


@dataclass(frozen=True, slots=True)
class Block:
    height: int
    block_hash: str
    parent_hash: str
    transfers: tuple[Transfer, ...] = ()


@dataclass(frozen=True, slots=True)
class Reorg:
    """Blocks this adapter reported before were replaced from `fork_height` upward.

    `replaced` maps each height whose hash changed to `(old_hash, new_hash)`; `new_hash` is `None`
    when the chain is now shorter than that height.
    """

    fork_height: int
    replaced: Mapping[int, tuple[str, str | None]]


@dataclass(frozen=True, slots=True)
class ScanResult:
    """What one `scan` saw. Pass `scanned_to_height` as `since_height` on the next call."""

    tip_height: int
    scanned_to_height: int
    blocks: tuple[Block, ...]
    reorg: Reorg | None = None


class TxState(str, enum.Enum):
    UNKNOWN = "unknown"  # never seen, or dropped (e.g. by a reorg) and not in the mempool
    PENDING = "pending"  # in the mempool, not in a block of the current chain
    CONFIRMED = "confirmed"  # in a block of the current chain


@dataclass(frozen=True, slots=True)
class TxStatus:
    txid: str
    state: TxState
    confirmations: int = 0
    block_height: int | None = None
    block_hash: str | None = None
    succeeded: bool | None = None  # Ethereum receipts can fail; Bitcoin txs in a block succeeded


@dataclass(frozen=True, slots=True)
class BroadcastResult:
    txid: str
    already_known: bool


@dataclass(frozen=True, slots=True)
class FeeEstimate:
    """A fee quote. `fee_rate_minor` is per `unit` (sat per vbyte; wei per gas)."""

    asset: str
    fee_rate_minor: int
    unit: str
    priority_fee_minor: int = 0  # Ethereum EIP-1559 tip per gas; 0 on Bitcoin

    def fee_for(self, size_units: int) -> int:
        if not isinstance(size_units, int) or size_units <= 0:
            raise ValidationError("size must be a positive integer number of units", field="size_units")
        return self.fee_rate_minor * size_units


@runtime_checkable
class ChainAdapter(Protocol):
    """What every chain offers the custody workers. Amounts are integer minor units."""

    chain: str  # "bitcoin", "ethereum"
    network: str  # "regtest", "mainnet", "tester", ...
    native_asset: str  # "BTC", "ETH"

    def current_height(self) -> int: ...

    def block_hash(self, height: int) -> str: ...

    def scan(self, since_height: int, watched: Iterable[str]) -> ScanResult:
        """Blocks after `since_height` up to the tip (at most MAX_SCAN_BLOCKS) with the transfers
        touching `watched`. Reports (and rewinds to) a reorg of any block reported earlier."""
        ...

    def check_reorg(self) -> Reorg | None:
        """Compare every remembered block hash with the chain now; report what changed."""
        ...

    def balance(self, address: str, height: int | None = None, asset: str | None = None) -> int: ...

    def tx_status(self, txid: str) -> TxStatus: ...

    def confirmations(self, txid: str) -> int: ...

    def broadcast(self, raw_tx: bytes) -> BroadcastResult: ...

    def estimate_fee(self, asset: str | None = None) -> FeeEstimate: ...

    def validate_address(self, address: str, field: str = "address") -> str:
        """Return the canonical form or raise InvalidAddress naming `field` and the rule broken."""
        ...

    def finality_depth(self, asset: str) -> int: ...

    def supported_assets(self) -> Sequence[str]: ...


def finality_depth_for(depths: Mapping[str, int], asset: str, chain: str) -> int:
    """Look up a per-asset confirmation depth; an asset this chain does not carry is a clear error."""
    try:
        return depths[asset]
    except KeyError:
        raise UnsupportedAsset(
            f"asset {asset!r} is not supported on {chain}; supported: {', '.join(sorted(depths))}",
            field="asset",
        ) from None


class ReorgTracker:
    """Remembers the hash reported at each recent height and spots when the chain replaced one.

    Bounded: only the newest `max_tracked_blocks` heights are kept; a reorg deeper than that cannot
    be seen (and is far beyond any finality depth this project uses).
    """

    def __init__(self, max_tracked_blocks: int = 1000) -> None:
        if max_tracked_blocks < 1:
            raise ValidationError("must be at least 1", field="max_tracked_blocks")
        self._max = max_tracked_blocks
        self._seen: dict[int, str] = {}

    def remember(self, height: int, block_hash: str) -> None:
        self._seen[height] = block_hash
        if len(self._seen) > self._max:
            for h in sorted(self._seen)[: len(self._seen) - self._max]:
                del self._seen[h]

    def forget_from(self, height: int) -> None:
        for h in [h for h in self._seen if h >= height]:
            del self._seen[h]

    def check(self, tip_height: int, hash_at) -> Reorg | None:  # hash_at: Callable[[int], str]
        """Return the replaced heights (lowest first) or None; forgets the replaced ones."""
        replaced: dict[int, tuple[str, str | None]] = {}
        # newest first: block hashes chain to their parents, so the first unchanged block means
        # every older one is unchanged too; a stable chain costs one lookup, a reorg depth + 1
        for h in sorted(self._seen, reverse=True):
            old = self._seen[h]
            new = hash_at(h) if h <= tip_height else None
            if new == old:
                break
            replaced[h] = (old, new)
        if not replaced:
            return None
        fork = min(replaced)
        # every block above the fork is on the new branch too, whether or not its hash changed
        self.forget_from(fork)
        return Reorg(fork_height=fork, replaced=replaced)

    def remembered(self) -> dict[int, str]:
        return dict(self._seen)
