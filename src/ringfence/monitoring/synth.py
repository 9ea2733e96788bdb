"""Synthetic typologies: a seeded generator of normal users and labelled abuse, to measure the rules.

`generate(seed, users)` returns a time-ordered stream of `Event`s and the truth: which accounts
follow which typology. Normal users sign in from their own device, call the API, trade against
the market maker and each other, cancel some orders (small ones, or after a while), fail a password
now and then, change passwords, withdraw modest amounts and receive deposits with low KYT scores:
the confounders the rules must not flag. Typologies (`TYPOLOGIES`) and the rules meant to catch
them (`CATCHES`):

* `account_takeover` — a new device signs in, creates an API key, changes the password, adds a
  withdrawal address and withdraws within the hour;
* `credential_stuffing` — a burst of wrong passwords on one account;
* `wash_ring` — two or three accounts on one device trading with each other;
* `spoofer` — large orders at the touch, pulled unfilled within a second or two, repeatedly;
* `structuring` — many BTC withdrawals each below 0.5 BTC adding up to more than 2 BTC in a day;
* `tainted_deposit` — a deposit from a high-risk source (KYT score 50-100);
* `pump` — two or three accounts on one device, on a thin market of their own (a few trades an hour
  between ordinary users), buy the price up 25-60% in minutes against ordinary users' orders, then
  sell it down. The confounder: thin markets with a genuine rally, bought by many unrelated users and
  sold off the same way.

Deterministic for a seed (random.Random only; no clock). It feeds the scorer directly; `replay.py`
replays all seven through a live exchange's API (the pump on thin markets the operator quorum lists).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from .events import Event

__all__ = ["TYPOLOGIES", "CATCHES", "CATCHES_RULES_ONLY", "Synthetic", "generate", "score_typologies"]

TYPOLOGIES = ("account_takeover", "credential_stuffing", "wash_ring", "spoofer", "structuring", "tainted_deposit", "pump")
CATCHES: dict[str, tuple[str, ...]] = {
    "account_takeover": ("behaviour-account-takeover",),
    "credential_stuffing": ("behaviour-failed-sign-ins",),
    "wash_ring": ("wash-trade",),
    "spoofer": ("spoofing",),
    "structuring": ("btc-withdrawal-velocity",),
    "tainted_deposit": ("tainted-deposit",),
    "pump": ("pump-and-dump",),
}
#: what the rules alone (no behavioural model) were measured with, for the before/after table
CATCHES_RULES_ONLY: dict[str, tuple[str, ...]] = {
    **CATCHES,
    "account_takeover": ("password-address-withdrawal", "new-device-then-api-key"),
    "credential_stuffing": ("failed-sign-ins",),
}
DAY_MS = 86_400_000
BTC = 100_000_000
TOUCH_PRICE = 61_000_000_000  # 61000 USDT in USDT minor units (6 decimals); quantities in BTC minor units (8)
THIN_PRICE = 1_000_000  # 1 USDT: the thin markets' opening price (6 decimals); quantities in 8 decimals


@dataclass
class Synthetic:
    events: list[Event]
    truth: dict[str, str] = field(default_factory=dict)  # account -> typology (normal users absent)
    accounts: list[str] = field(default_factory=list)


class _Gen:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.rows: list[tuple[int, int, str, str, str, str, dict[str, object]]] = []
        self.order_id = 0
        self.n = 0

    def add(self, at: int, kind: str, account: str, ip: str = "", device: str = "", **data: object) -> None:
        self.n += 1
        self.rows.append((at, self.n, kind, account, ip, device, dict(data)))

    def oid(self) -> int:
        self.order_id += 1
        return self.order_id

    def order(self, at: int, account: str, qty: int, touch: int, life_ms: int | None, filled: bool) -> None:
        oid = self.oid()
        self.add(at, "order_placed", account, symbol="BTCUSDT", order_id=oid, side=self.rng.choice(("BUY", "SELL")),
                 price=TOUCH_PRICE, quantity=qty, notional_minor=TOUCH_PRICE * qty // 100_000_000, touch_bp=touch)
        if life_ms is not None:
            self.add(at + life_ms, "order_canceled", account, symbol="BTCUSDT", order_id=oid,
                     leaves=qty // 2 if filled else qty, reason="user")


def generate(seed: int, users: int = 1000, *, typology_share_bp: int = 300) -> Synthetic:
    """A day of activity for `users` accounts; about `typology_share_bp` / 10,000 of them abusive per typology."""
    g = _Gen(seed)
    rng = g.rng
    truth: dict[str, str] = {}
    accounts = [f"u{i:05d}" for i in range(users)]
    for acct in accounts:
        ip = f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        device = f"app/{rng.randrange(10**9)}"
        t = rng.randrange(DAY_MS // 2)
        # --- normal behaviour (everyone, abusive accounts too: they look normal most of the time)
        g.add(t, "sign_in", acct, ip, device)
        for _ in range(rng.randrange(1, 8)):
            t += rng.randrange(1_000, 600_000)
            g.add(t, "api_call", acct, ip, device, endpoint="/api/v3/order", status=200 if rng.random() < 0.97 else 400,
                  weight=1)
        for _ in range(rng.randrange(0, 5)):
            t += rng.randrange(1_000, 600_000)
            big = rng.random() < 0.1
            qty = rng.randrange(10_000_000, 40_000_000) if big else rng.randrange(10_000, 2_000_000)
            touch = rng.randrange(0, 200)
            # normal users leave orders to rest or get filled; a few cancel big orders, but slowly
            life = rng.randrange(30_000, 3_600_000) if rng.random() < 0.5 else None
            g.order(t, acct, qty, touch, life, filled=rng.random() < 0.3)
        for _ in range(rng.randrange(0, 3)):
            t += rng.randrange(1_000, 600_000)
            g.add(t, "trade", acct, ip, device, symbol="BTCUSDT", maker_owner=rng.choice(("mm", rng.choice(accounts))),
                  price=TOUCH_PRICE, quantity=rng.randrange(10_000, 1_000_000))
        if rng.random() < 0.1:  # a forgotten password: 1-3 failures, then success
            for _ in range(rng.randrange(1, 4)):
                t += rng.randrange(2_000, 30_000)
                g.add(t, "sign_in_failed", acct, ip, device)
            g.add(t + 5_000, "sign_in", acct, ip, device)
        if rng.random() < 0.02:  # a new phone, then an API key for a trading bot: legitimate, looks like a takeover
            t += rng.randrange(1_000, 600_000)
            g.add(t, "new_device_sign_in", acct, ip, f"app/{rng.randrange(10**9)}")
            t += rng.randrange(60_000, 1_800_000)
            g.add(t, "api_key_created", acct, ip, device)
        if rng.random() < 0.01:  # locked out for real: many wrong passwords in a few minutes
            for _ in range(rng.randrange(5, 9)):
                t += rng.randrange(5_000, 40_000)
                g.add(t, "sign_in_failed", acct, ip, device)
        if rng.random() < 0.05:  # a password change without any withdrawal
            t += rng.randrange(1_000, 600_000)
            g.add(t, "password_changed", acct, ip, device)
        if rng.random() < 0.2:  # modest withdrawals
            for _ in range(rng.randrange(1, 3)):
                t += rng.randrange(60_000, 3_600_000)
                g.add(t, "withdrawal_requested", acct, ip, device, asset="BTC", amount_minor=rng.randrange(BTC // 100, BTC // 2))
        if rng.random() < 0.3:
            t += rng.randrange(1_000, 600_000)
            g.add(t, "deposit_credited", acct, asset="BTC", amount_minor=rng.randrange(BTC // 100, BTC),
                  score=rng.choice((0, 0, 0, 5, 10, 20, 35)))
    # --- typologies
    for typ in TYPOLOGIES:
        if typ == "pump":
            continue  # on thin markets of their own, below
        count = max(2, users * typology_share_bp // 10_000)
        pool = [a for a in accounts if a not in truth]
        chosen = rng.sample(pool, count if typ != "wash_ring" else min(len(pool), count * 2))
        if typ == "wash_ring":
            rings = [chosen[i:i + rng.choice((2, 3))] for i in range(0, len(chosen) - 1, 3)]
            for ring in rings:
                if len(ring) < 2:
                    continue
                device = f"farm/{rng.randrange(10**9)}"
                t = DAY_MS // 2 + rng.randrange(DAY_MS // 3)
                for a in ring:
                    truth[a] = typ
                    g.add(t, "sign_in", a, f"172.16.0.{rng.randrange(1, 255)}", device)
                for _ in range(rng.randrange(2, 6)):
                    t += rng.randrange(5_000, 120_000)
                    taker, maker = rng.sample(ring, 2)
                    g.add(t, "trade", taker, "", device, symbol="BTCUSDT", maker_owner=maker, price=TOUCH_PRICE,
                          quantity=rng.randrange(100_000, 5_000_000))
            continue
        for a in chosen:
            truth[a] = typ
            t = DAY_MS // 2 + rng.randrange(DAY_MS // 3)
            if typ == "account_takeover":
                ip, device = f"185.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}", f"evil/{rng.randrange(10**6)}"
                g.add(t, "new_device_sign_in", a, ip, device)
                t += rng.randrange(10_000, 600_000)
                g.add(t, "api_key_created", a, ip, device)
                t += rng.randrange(10_000, 600_000)
                g.add(t, "password_changed", a, ip, device)
                t += rng.randrange(10_000, 600_000)
                g.add(t, "withdrawal_address_changed", a, ip, device)
                t += rng.randrange(10_000, 600_000)
                g.add(t, "withdrawal_requested", a, ip, device, asset="BTC", amount_minor=rng.randrange(BTC // 10, BTC))
            elif typ == "credential_stuffing":
                ip = f"45.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
                for _ in range(rng.randrange(5, 30)):
                    t += rng.randrange(200, 20_000)
                    g.add(t, "sign_in_failed", a, ip, "bot/1.0")
            elif typ == "spoofer":
                for _ in range(rng.randrange(3, 8)):
                    t += rng.randrange(2_000, 60_000)
                    g.order(t, a, rng.randrange(20_000_000, 100_000_000), rng.randrange(0, 30), rng.randrange(200, 2_000), filled=False)
            elif typ == "structuring":
                total = 0
                while total <= 2 * BTC + BTC // 4:
                    t += rng.randrange(60_000, 3_600_000)
                    amount = rng.randrange(BTC * 4 // 10, BTC // 2)
                    total += amount
                    g.add(t, "withdrawal_requested", a, asset="BTC", amount_minor=amount)
            elif typ == "tainted_deposit":
                g.add(t, "deposit_credited", a, asset="BTC", amount_minor=rng.randrange(BTC // 100, BTC),
                      score=rng.randrange(50, 101))
    _thin_markets(g, accounts, truth, users * typology_share_bp // 10_000)
    g.rows.sort(key=lambda r: (r[0], r[1]))
    events = [Event(i + 1, kind, at, account_id=acct, ip=ip, device=dev, source="synthetic", data=data)  # type: ignore[arg-type]
              for i, (at, _, kind, acct, ip, dev, data) in enumerate(g.rows)]
    return Synthetic(events, truth, accounts)


def _thin_trade(g: _Gen, at: int, symbol: str, taker: str, maker: str, side: str, price: int, device: str = "",
                ip: str = "") -> None:
    qty = g.rng.randrange(100, 3_000) * 100_000_000  # 100-3,000 units
    g.add(at, "trade", taker, ip, device, symbol=symbol, maker_owner=maker, taker_side=side, price=price, quantity=qty,
          quote_qty=price * qty // 100_000_000)


def _thin_markets(g: _Gen, accounts: list[str], truth: dict[str, str], pump_accounts: int) -> None:
    """Thin markets: background trades between ordinary users; one pump group per pump market, and a
    genuine rally (many unrelated buyers, then sellers) on as many other thin markets."""
    rng = g.rng
    normal = [a for a in accounts if a not in truth]
    pool = list(normal)
    groups: list[list[str]] = []
    target = max(2, pump_accounts)
    while sum(len(x) for x in groups) < target and len(pool) > 3:
        size = rng.choice((2, 3))
        members = rng.sample(pool, size)
        for m in members:
            pool.remove(m)
        groups.append(members)
    for k in range(2 * len(groups)):
        symbol = f"THIN{k}USDT"
        price = THIN_PRICE
        t = rng.randrange(DAY_MS // 8)
        start = DAY_MS // 2 + rng.randrange(DAY_MS // 3)  # like the other typologies: after most ordinary activity

        def background(t: int, price: int, until: int, symbol: str = symbol) -> tuple[int, int]:
            """A trade every 10-60 minutes between ordinary users, the price wandering ±3%."""
            while True:
                t += rng.randrange(600_000, 3_600_000)
                if t >= until:
                    return t, price
                price = max(1_000, price * rng.randrange(9_700, 10_301) // 10_000)
                taker, maker = rng.sample(normal, 2)
                _thin_trade(g, t, symbol, taker, maker, rng.choice(("BUY", "SELL")), price)

        _, price = background(t, price, start)
        t = start
        group = groups[k] if k < len(groups) else []
        others = [a for a in normal if a not in group] if group else normal
        if group:  # a pump: the group buys it up, then sells it down
            device, ip = f"pump/{rng.randrange(10**9)}", f"91.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
            for a in group:
                truth[a] = "pump"
                g.add(t, "sign_in", a, ip, device)
        # the rise (the group's buying, or many unrelated buyers), then the fall
        for i in range(rng.randrange(8, 15)):
            t += rng.randrange(20_000, 120_000)
            price = price * rng.randrange(10_300, 10_700) // 10_000
            if group:  # every member buys at least once
                _thin_trade(g, t, symbol, group[i] if i < len(group) else rng.choice(group), rng.choice(others), "BUY", price,
                            device, ip)
            else:
                taker, maker = rng.sample(normal, 2)
                _thin_trade(g, t, symbol, taker, maker, "BUY", price)
        for _ in range(rng.randrange(3, 7)):
            t += rng.randrange(10_000, 60_000)
            price = price * rng.randrange(9_000, 9_500) // 10_000
            if group:
                _thin_trade(g, t, symbol, rng.choice(group), rng.choice(others), "SELL", price, device, ip)
            else:
                taker, maker = rng.sample(normal, 2)
                _thin_trade(g, t, symbol, taker, maker, "SELL", price)
        background(t, price, DAY_MS)


def score_typologies(hits: list[tuple[str, tuple[str, ...]]], truth: dict[str, str],
                     catches: dict[str, tuple[str, ...]] | None = None) -> dict[str, dict[str, object]]:
    """Precision and recall per typology from (rule, accounts named) hits: an account counts as
    flagged for a typology when a rule meant for it (`catches`, default `CATCHES`) named the account.
    Integers only: per-mille."""
    out: dict[str, dict[str, object]] = {}
    for typ in TYPOLOGIES:
        rules = set((catches or CATCHES)[typ])
        flagged = {a for r, named in hits if r in rules for a in named}
        actual = {a for a, t in truth.items() if t == typ}
        tp = len(flagged & actual)
        out[typ] = {"accounts": len(actual), "flagged": len(flagged), "true_positives": tp,
                    "precision_permille": tp * 1000 // len(flagged) if flagged else 0,
                    "recall_permille": tp * 1000 // len(actual) if actual else 0}
    return out
