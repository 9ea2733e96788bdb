"""A seeded simulator of five venues quoting one symbol (the demo's feed; tests' incident replays).

Each `step(now_ns)` is one round of quotes (the worker calls it once a second). Deterministic for a
given seed and step count (its `random.Random(seed)` is outside the engine). Behaviours:

* a random walk of the true price: each step moves it by a uniform integer in ±`walk_ppm`;
* every venue adds its own noise (±`noise_ppm`);
* a wick: with probability `wick_chance_ppm` per step, one venue (never the stale or depegged
  one) prints `wick_ppm` away (−30 % by default) for `wick_steps` steps;
* a stale venue: the last venue falls silent for `stale_steps` out of every `stale_every` steps;
* a depeg: the fourth venue's quote currency slips, so its prices sit `depeg_ppm` above the
  others for `depeg_steps` out of every `depeg_every` steps.
Prices are integers (quote minor units per whole base unit), rounded down to `tick`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from .commands import SubmitQuote
from .feeds import FeedSigner, demo_feed_key
from .price import PPM

__all__ = ["SimSettings", "VenueSimulator", "demo_venues"]


def demo_venues(symbol: str, n: int = 5) -> list[str]:
    return [f"sim{i + 1}" for i in range(n)]


@dataclass(frozen=True)
class SimSettings:
    walk_ppm: int = 300
    noise_ppm: int = 200
    wick_chance_ppm: int = 5_000
    wick_ppm: int = -300_000
    wick_steps: int = 10
    stale_every: int = 180
    stale_steps: int = 40
    depeg_every: int = 300
    depeg_steps: int = 60
    depeg_ppm: int = 30_000


@dataclass
class VenueSimulator:
    symbol: str
    start_price_minor: int
    seed: int
    tick: int = 1
    settings: SimSettings = SimSettings()
    signers: list[FeedSigner] = field(default_factory=list)
    steps: int = 0
    #: What happened, for the console and the tests: `(step, kind, venue)`.
    log: list[tuple[int, str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.price = self.start_price_minor
        if not self.signers:
            self.signers = [FeedSigner(v, demo_feed_key(v)) for v in demo_venues(self.symbol)]
        self.wick_venue = -1
        self.wick_left = 0

    def _walk(self) -> None:
        s = self.settings
        self.price = max(self.tick, self.price + self.price * self.rng.randint(-s.walk_ppm, s.walk_ppm) // PPM)

    def venue_price(self, i: int) -> int | None:
        """Venue `i`'s price at the current step, or None when it is silent."""
        s = self.settings
        n = len(self.signers)
        stale_venue, depeg_venue = n - 1, min(3, n - 1)
        if i == stale_venue and self.steps % s.stale_every >= s.stale_every - s.stale_steps:
            return None
        p = self.price + self.price * self.rng.randint(-s.noise_ppm, s.noise_ppm) // PPM
        if i == depeg_venue and self.steps % s.depeg_every >= s.depeg_every - s.depeg_steps:
            p += self.price * s.depeg_ppm // PPM
        if i == self.wick_venue and self.wick_left > 0:
            p = self.price + self.price * s.wick_ppm // PPM
        return max(self.tick, p // self.tick * self.tick)

    def step(self, now_ns: int) -> list[SubmitQuote]:
        """One round: move the price, maybe start a wick, and sign each venue's quote."""
        s = self.settings
        self.steps += 1
        self._walk()
        if self.wick_left > 0:
            self.wick_left -= 1
        elif self.rng.randrange(PPM) < s.wick_chance_ppm and len(self.signers) > 2:
            self.wick_venue = self.rng.randrange(len(self.signers) - 2)
            self.wick_left = s.wick_steps
            self.log.append((self.steps, "wick", self.signers[self.wick_venue].venue))
        quotes = []
        for i, signer in enumerate(self.signers):
            p = self.venue_price(i)
            if p is not None:
                quotes.append(signer.quote(self.symbol, p, now_ns))
        return quotes
