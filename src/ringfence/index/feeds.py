"""Feed-side signing: what a feed worker holds (a venue's Ed25519 key) and the quotes it makes.

Workers run outside the engine; they read the clock and the network, sign, and submit
`SubmitQuote` commands (directly to a node in-process, or `POST /v1/index/quote`). The engine
checks everything again; a worker is trusted with nothing but its own key.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .commands import SubmitQuote, quote_message

__all__ = ["FeedSigner", "demo_feed_key"]


def demo_feed_key(venue: str) -> Ed25519PrivateKey:
    """The simulator's key for `venue`, derived from its name: for the demo's fake venues only —
    anyone can derive it, so it must never sign a real venue's prices."""
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"ringfence-demo-feed/v1/" + venue.encode()).digest())


@dataclass
class FeedSigner:
    venue: str
    key: Ed25519PrivateKey
    #: The last sequence number used per symbol (start above the engine's last accepted one).
    last_seq: dict[str, int] = field(default_factory=dict)

    @property
    def public_key_hex(self) -> str:
        from cryptography.hazmat.primitives import serialization

        raw = self.key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return raw.hex()

    def quote(self, symbol: str, price_minor: int, source_ts_ns: int) -> SubmitQuote:
        seq = self.last_seq.get(symbol, 0) + 1
        self.last_seq[symbol] = seq
        signature = self.key.sign(quote_message(self.venue, symbol, price_minor, source_ts_ns, seq)).hex()
        return SubmitQuote(self.venue, symbol, price_minor, source_ts_ns, seq, signature)
