"""Index price service and mark price (issue 17, items 1-2; docs/index.md).

Feed workers (the seeded simulator, the ccxt poller) submit `SubmitQuote` commands signed by
registered Ed25519 feed keys; the engine module computes a clamped median index per symbol, drops
stale sources, puts the market in REDUCE_ONLY through the halts module when too few are live, and
moves spot's price band to the index. `mark.mark_of` is the mark price the margin work will use.
"""

from .module import MODULE, halt_id_of

__all__ = ["MODULE", "halt_id_of"]
