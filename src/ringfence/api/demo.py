"""`ringfence serve --demo`: list demo markets, fund demo accounts, seed a live book. Idempotent.

Markets: BTCUSDT and ETHUSDT in `spot`, AAPLXUSDT (a tokenized share) in `tokenized`. Accounts
`alice` and `bob` are funded in both segments; a separate market maker `mm` keeps a resting ladder
a few ticks wide around each reference price, so a newcomer sees a live market with a spread.
Running it again changes nothing: transfers carry fixed ids (the ledger applies an id once),
listing the same market again is a no-op, and the ladder is placed only when `mm` has no orders.
API keys for alice and bob go to `DIR/demo-keys.json` (mode 0600), issued once and reused: one
HMAC key each, and one Ed25519 key for alice (the private seed is in the file, base64).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..engine.node import Node
from ..ledger.commands import CreateTransfers, OpenAccount, RegisterAsset, TransfersCreated
from ..ledger.model import Transfer
from ..money import parse_amount
from ..trading.commands import ListMarket, PlaceOrder, SetReferencePrice
from ..trading.state import trading_state

__all__ = ["seed_demo", "write_demo_keys", "DEMO_MARKETS", "DEMO_ACCOUNTS"]

ASSETS = (("BTC", 8, "crypto", "bitcoin"), ("ETH", 18, "crypto", "ethereum"), ("USDT", 6, "crypto", "ethereum"), ("AAPLX", 4, "tokenized", ""))
DEMO_ACCOUNTS = ("alice", "bob")
MARKET_MAKER = "mm"


@dataclass(frozen=True)
class DemoMarket:
    symbol: str
    base: str
    quote: str
    segment: str
    tick: str
    lot: str
    min_notional: str
    reference: str
    ladder_qty: str


DEMO_MARKETS = (
    DemoMarket("BTCUSDT", "BTC", "USDT", "spot", "0.01", "0.0001", "5", "61000.00", "0.05"),
    DemoMarket("ETHUSDT", "ETH", "USDT", "spot", "0.01", "0.0001", "5", "3000.00", "0.5"),
    DemoMarket("AAPLXUSDT", "AAPLX", "USDT", "tokenized", "0.01", "0.01", "1", "190.00", "5"),
)

# (owner, asset, segment, amount) — transfer ids are fixed so funding applies exactly once
FUNDING = (
    ("alice", "USDT", "spot", "100000"),
    ("alice", "BTC", "spot", "2"),
    ("alice", "ETH", "spot", "20"),
    ("bob", "USDT", "spot", "100000"),
    ("bob", "BTC", "spot", "2"),
    ("bob", "ETH", "spot", "20"),
    ("alice", "USDT", "tokenized", "20000"),
    ("alice", "AAPLX", "tokenized", "50"),
    ("bob", "USDT", "tokenized", "20000"),
    ("bob", "AAPLX", "tokenized", "50"),
    ("mm", "USDT", "spot", "10000000"),
    ("mm", "BTC", "spot", "100"),
    ("mm", "ETH", "spot", "1000"),
    ("mm", "USDT", "tokenized", "1000000"),
    ("mm", "AAPLX", "tokenized", "10000"),
)
FUNDING_ID_BASE = 9_000_000_000


def seed_demo(node: Node) -> dict[str, Any]:
    """Make the demo state exist; returns what was done (for the console)."""
    ledger = node.engine.ledger  # type: ignore[union-attr]
    # Only what is missing is submitted, so a restart journals nothing for a demo that exists.
    missing_assets = [RegisterAsset(*a) for a in ASSETS if a[0] not in ledger.assets]
    if missing_assets:
        node.execute_many(missing_assets)
    decimals = {code: d for code, d, _, _ in ASSETS}
    missing_accounts = [
        OpenAccount(owner, asset, "available", segment)
        for owner, asset, segment, _ in FUNDING
        if ledger.find(owner, asset, "available", segment) is None
    ]
    if missing_accounts:
        node.execute_many(missing_accounts)
    transfers = [
        Transfer(FUNDING_ID_BASE + i, ledger.world(asset).id, ledger.get(owner, asset, "available", segment).id, parse_amount(amount, decimals[asset]))
        for i, (owner, asset, segment, amount) in enumerate(FUNDING)
        if FUNDING_ID_BASE + i not in ledger.transfers
    ]
    newly_funded = 0
    if transfers:
        (funded,) = node.execute(CreateTransfers(transfers))
        newly_funded = len(transfers) - len(funded.failures)
    listed = []
    existing = trading_state(node.engine).markets  # type: ignore[arg-type]
    for m in DEMO_MARKETS:
        if m.symbol in existing:
            continue  # listed on an earlier start (and perhaps halted since: leave it as it is)
        q, b = decimals[m.quote], decimals[m.base]
        node.execute(
            ListMarket(
                symbol=m.symbol,
                base=m.base,
                quote=m.quote,
                segment=m.segment,
                tick_size=parse_amount(m.tick, q),
                lot_size=parse_amount(m.lot, b),
                min_qty=parse_amount(m.lot, b),
                min_notional=parse_amount(m.min_notional, q),
            )
        )
        node.execute(SetReferencePrice(m.symbol, parse_amount(m.reference, q)))
        listed.append(m.symbol)
    markets = trading_state(node.engine).markets  # type: ignore[arg-type]
    placed = 0
    for m in DEMO_MARKETS:
        market = markets[m.symbol]
        if market.by_owner.get(MARKET_MAKER):
            continue  # the ladder is already there
        q, b = decimals[m.quote], decimals[m.base]
        ref, tick, size = parse_amount(m.reference, q), parse_amount(m.tick, q), parse_amount(m.ladder_qty, b)
        orders = []
        for level in range(1, 6):
            # spread of 4 ticks around the reference, then a level every 2 ticks
            offset = (2 + 2 * (level - 1)) * tick
            orders.append(PlaceOrder(owner=MARKET_MAKER, symbol=m.symbol, side="BUY", price=ref - offset, quantity=size * level, client_order_id=f"mm-{m.symbol}-b{level}"))
            orders.append(PlaceOrder(owner=MARKET_MAKER, symbol=m.symbol, side="SELL", price=ref + offset, quantity=size * level, client_order_id=f"mm-{m.symbol}-s{level}"))
        node.execute_many(orders)
        placed += len(orders)
    from ..derivatives.demo import seed_perpetuals  # BTCUSDT / ETHUSDT perpetuals (docs/derivatives.md)

    return {"markets": listed, "transfers_applied": newly_funded, "ladder_orders": placed, **seed_perpetuals(node)}


#: The demo account that also gets an Ed25519 key, so clients can try Ed25519 signing.
ED25519_DEMO_ACCOUNT = "alice"


def _has_demo_keys(existing: object, want_withdraw: bool = False) -> bool:
    if not isinstance(existing, list) or not all(isinstance(e, dict) for e in existing):
        return False
    hmac_accounts = {e.get("account") for e in existing if e.get("kind", "hmac") == "hmac"}
    has_ed25519 = any(e.get("kind") == "ed25519" and e.get("private_key") for e in existing)
    has_withdraw = any("withdraw" in (e.get("scopes") or ()) for e in existing)
    return hmac_accounts >= set(DEMO_ACCOUNTS) and has_ed25519 and (has_withdraw or not want_withdraw)


#: The demo account that gets a second key with the `withdraw` scope (and 127.0.0.1 allow-listed).
WITHDRAW_DEMO_ACCOUNT = "alice"
WITHDRAW_KEY_ALLOWLIST = ("127.0.0.1/32",)


def write_demo_keys(ctx: Any, data_dir: Path, withdraw_addresses: dict[str, str] | None = None) -> Path:
    """Issue demo API keys once; keep them in DIR/demo-keys.json (0600).

    One HMAC key per demo account (`{"account", "api_key", "api_secret", "kind": "hmac"}`) and one
    Ed25519 key for alice (`{"account", "api_key", "kind": "ed25519", "private_key": <base64 of the
    32-byte seed>}`): the pair is generated here as a user would, and only its public half is
    registered with identity. A file from before Ed25519 keys gains that entry, keeping the others.

    With custody running (`withdraw_addresses`, one pre-cooled address-book entry per asset), alice
    also gets a key with the `withdraw` scope, restricted to 127.0.0.1, listed FIRST (so tools that
    keep the last key per account keep her ordinary key): `{"scopes": ["read", "trade",
    "withdraw"], "ip_allowlist": ["127.0.0.1/32"], "withdraw_addresses": {"BTC": "…", …}}`.
    """
    import base64

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from ..identity.api_keys import issue_demo_key

    path = data_dir / "demo-keys.json"
    keys: list[dict[str, Any]] = []
    if path.exists():
        try:
            existing = json.loads(path.read_text())
        except ValueError:
            existing = None
        if _has_demo_keys(existing, withdraw_addresses is not None):
            return path
        if isinstance(existing, list) and all(isinstance(e, dict) for e in existing):
            keys = [e for e in existing if e.get("kind", "hmac") == "hmac" and e.get("account") in DEMO_ACCOUNTS
                    and "withdraw" not in (e.get("scopes") or ())]
    have = {e["account"] for e in keys}
    for account in DEMO_ACCOUNTS:
        if account in have:
            continue
        created = issue_demo_key(ctx, account, f"{account}@demo.ringfence.local")
        keys.append({"account": account, "api_key": created.api_key, "api_secret": created.secret, "kind": "hmac",
                     "scopes": list(created.scopes)})
    if withdraw_addresses is not None:
        created = issue_demo_key(ctx, WITHDRAW_DEMO_ACCOUNT, f"{WITHDRAW_DEMO_ACCOUNT}@demo.ringfence.local",
                                 scopes=("read", "trade", "withdraw"), ip_allowlist=list(WITHDRAW_KEY_ALLOWLIST))
        keys.insert(0, {"account": WITHDRAW_DEMO_ACCOUNT, "api_key": created.api_key, "api_secret": created.secret,
                        "kind": "hmac", "scopes": list(created.scopes), "ip_allowlist": list(WITHDRAW_KEY_ALLOWLIST),
                        "withdraw_addresses": dict(withdraw_addresses)})
    private = Ed25519PrivateKey.generate()
    public_b64 = base64.b64encode(private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()
    seed_b64 = base64.b64encode(private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                                      serialization.NoEncryption())).decode()
    created = issue_demo_key(ctx, ED25519_DEMO_ACCOUNT, f"{ED25519_DEMO_ACCOUNT}@demo.ringfence.local",
                             kind="ed25519", public_key=public_b64)
    keys.append({"account": ED25519_DEMO_ACCOUNT, "api_key": created.api_key, "kind": "ed25519", "private_key": seed_b64,
                 "scopes": list(created.scopes)})
    from ..nodekey import write_private  # a new file of this user's: never through a .tmp or link someone put there

    write_private(path, (json.dumps(keys, indent=2) + "\n").encode())
    return path


#: What `POST /session/v3/demoFunds` gives a web user of `serve --demo` (dev mode), once per account.
WEB_USER_FUNDING = (
    ("USDT", "spot", "10000"),
    ("BTC", "spot", "0.5"),
    ("ETH", "spot", "5"),
    ("USDT", "tokenized", "5000"),
    ("AAPLX", "tokenized", "20"),
)


def web_user_transfer_id(account_id: str, index: int) -> int:
    """A fixed transfer id per (account, line), so the funds are applied once however often asked.
    In [2**62, 2**63): apart from the seeded demo ids and below msgpack's 64-bit limit."""
    import hashlib

    assert 0 <= index < 16
    digest = int.from_bytes(hashlib.sha256(account_id.encode()).digest()[:7], "big")  # 56 bits
    return 2**62 + (digest << 4) + index


async def fund_web_user(exchange: Any, account_id: str) -> dict[str, Any]:
    """Open the account's ledger accounts and fund them from `world`, through engine commands."""
    decimals = {code: d for code, d, _, _ in ASSETS}
    lines = [line for line in WEB_USER_FUNDING if line[0] in decimals]

    def missing(engine: Any) -> list[tuple[str, str]]:
        return [(a, s) for a, s, _ in lines if engine.ledger.find(account_id, a, "available", s) is None]

    for asset, segment in exchange.read(missing):
        await exchange.submit(OpenAccount(account_id, asset, "available", segment))

    def transfers(engine: Any) -> list[Transfer]:
        ledger = engine.ledger
        out = []
        for i, (asset, segment, amount) in enumerate(lines):
            tid = web_user_transfer_id(account_id, i)
            if tid not in ledger.transfers:
                out.append(Transfer(tid, ledger.world(asset).id, ledger.get(account_id, asset, "available", segment).id,
                                    parse_amount(amount, decimals[asset])))
        return out

    todo = exchange.read(transfers)
    applied = 0
    if todo:
        (created,) = [e for e in await exchange.submit(CreateTransfers(todo)) if isinstance(e, TransfersCreated)]
        applied = len(todo) - len(created.failures)
    given = [f"{amount} {asset} ({segment})" for asset, segment, amount in lines]
    return {"funded": applied > 0, "transfers": applied, "funds": ", ".join(given),  # the dashboard words it per language
            "msg": ("Demo funds added: " if applied else "You already have your demo funds: ") + ", ".join(given) + "."}
