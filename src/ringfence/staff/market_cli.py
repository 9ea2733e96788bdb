"""`ringfence market ...`: markets and fees on a live node, through its admin API (docs/staff.md).

Listing, delisting, fee tiers, an account's fee tier and a reference price are decisions of the
staff operator quorum: each operator signs the same change (against the node's trading change
counter, `GET /admin/v1/markets` `version`), one of them submits with the others' tokens — the same
flow as `ringfence halts lift` (`--key` repeatable, `--approval TOKEN`, `--sign-only`). A market's
status is a halt on that market: one operator makes it REDUCE_ONLY or HALTED, and only the operator
quorum makes it ACTIVE again (it lifts the market's halts).

Amounts are decimal strings in the asset's units (`--tick-size 0.01` USDT, `--lot-size 0.00001`
BTC) and are turned into minor units with the asset's decimals the node reports; nothing is rounded.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import typer
from rich.table import Table

from ..errors import RingfenceError
from .cli import (
    APPROVALS,
    KEY,
    KEYS,
    SIGN_ONLY,
    TTL,
    URL,
    _client,
    _expires,
    _keys,
    _print_events,
    _quorum_submit,
    _run,
    console,
    err_console,
)
from .console import AdminClient
from .decisions import format_approval

__all__ = ["market_app"]

market_app = typer.Typer(
    help="Markets and fees on a live node: list, add, delist, status, fees, account-fee, ref-price.\n\n"
         "Listing, delisting, fees and reference prices need the operator quorum; a market's status is a halt\n"
         "(one operator stops, the quorum reopens).\n\n"
         "Example: ringfence market list --key ./ringfence-data/serve/demo-staff.json#ada --url http://127.0.0.1:8000",
    no_args_is_help=True)

REASON = typer.Option(..., "--reason", help="Why (every approver signs the same text; kept in the journal).")


def _fail(field: str, message: str) -> None:
    err_console.print(f"[bold red]error:[/] {field}: {message}")
    raise typer.Exit(2)


def _minor(text: str, decimals: int, field: str, *, allow_zero: bool = False) -> int:
    from ..money import parse_amount

    try:
        return parse_amount(text, decimals, field=field, allow_zero=allow_zero)
    except RingfenceError as err:
        _fail(field, f"{text!r}: {err}")
        raise AssertionError from err  # unreachable


def _rate_ppm(text: str, field: str) -> int:
    """A fee rate as a decimal fraction (`0.001` = 0.1 %) in millionths."""
    return _minor(text, 6, field, allow_zero=True)


def _rate(ppm: int | str) -> str:
    """A rate in millionths as `--maker`/`--taker` take it, with the percentage: 200 → `0.0002 (0.02 %)`."""
    return f"{_fmt(str(ppm), 6)} ({_fmt(str(ppm), 4)} %)"


def _view(client: AdminClient) -> dict[str, Any]:
    return _run(lambda: client.get("/markets"))  # type: ignore[no-any-return]


def _decimals(view: dict[str, Any], asset: str, field: str) -> int:
    decimals = view["assets"].get(asset)
    if decimals is None:
        _fail(field, f"unknown asset {asset!r}; known: {', '.join(sorted(view['assets']))}")
    return int(decimals)


def _market_row(view: dict[str, Any], symbol: str) -> dict[str, Any]:
    for m in view["markets"]:
        if m["symbol"] == symbol:
            return m  # type: ignore[no-any-return]
    err_console.print(f"[bold red]refused:[/] symbol: no market {symbol!r} is listed (see `ringfence market list`)")
    raise typer.Exit(1)


def _fmt(minor: str, decimals: int) -> str:
    from ..money import format_amount

    return format_amount(int(minor), decimals, trim=True)


# ------------------------------------------------------------------------------------- read


@market_app.command("list")
def list_markets(key: str = KEY, url: str = URL, as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Every market with its filters, status (halts included) and reference price; the fee tiers and the accounts on one.

    Example: ringfence market list --key ./ringfence-data/serve/demo-staff.json#ada --url http://127.0.0.1:8000
    """
    with _client(key, url) as client:
        view = _view(client)
    if as_json:
        typer.echo(json.dumps(view, indent=2))
        return
    table = Table(title=f"{len(view['markets'])} market(s) (trading change counter {view['version']})")
    for col in ("symbol", "segment", "status", "tick size", "lot size", "min qty", "min notional", "band", "reference",
                "open orders"):
        table.add_column(col, overflow="fold")
    for m in view["markets"]:
        qd, bd = view["assets"][m["quote"]], view["assets"][m["base"]]
        band = f"±{m['band_ppm'] / 10_000:g} %" if m["band_ppm"] else "none"  # float-ok: display of a ppm
        table.add_row(m["symbol"], m["segment"], m["status"], _fmt(m["tick_size"], qd), _fmt(m["lot_size"], bd),
                      _fmt(m["min_qty"], bd), _fmt(m["min_notional"], qd), band,
                      _fmt(m["reference_price"], qd) + (" (index)" if m["indexed"] else ""), str(m["open_orders"]))
    console.print(table)
    tiers = ", ".join(f"tier {t['tier']}: maker {_rate(t['maker_rate_ppm'])}, taker {_rate(t['taker_rate_ppm'])}"
                      for t in view["fee_tiers"])
    console.print(f"fee tiers: {tiers}")
    if view["account_tiers"]:
        console.print("accounts on a tier: " + ", ".join(f"{a['account']} → {a['tier']}" for a in view["account_tiers"]))


# ------------------------------------------------------------------------------------- quorum decisions


@market_app.command("add")
def add_market(
    symbol: str = typer.Argument(..., help="The new symbol (A-Z 0-9, e.g. ETHUSDT)."),
    base: str = typer.Option(..., "--base", help="The base asset (what is bought and sold)."),
    quote: str = typer.Option(..., "--quote", help="The quote asset (what prices are in)."),
    segment: str = typer.Option("spot", "--segment", help="The risk segment (spot, tokenized...)."),
    tick_size: str = typer.Option(..., "--tick-size", help="Price step, in the quote asset (e.g. 0.01)."),
    lot_size: str = typer.Option(..., "--lot-size", help="Quantity step, in the base asset (e.g. 0.0001)."),
    min_qty: str = typer.Option(None, "--min-qty", help="Smallest order quantity (base asset; default: one lot)."),
    max_qty: str = typer.Option(None, "--max-qty", help="Largest order quantity (base asset; default: no limit)."),
    min_notional: str = typer.Option("0", "--min-notional", help="Smallest order value, in the quote asset."),
    band_ppm: int = typer.Option(100_000, "--band-ppm", help="Price band half-width around the reference, in millionths (100000 = ±10 %; 0 = none)."),
    band_timeout_s: int = typer.Option(60, "--band-timeout-s", help="Seconds the last price may sit outside the band before the market goes REDUCE_ONLY."),
    slippage_ppm: int = typer.Option(50_000, "--slippage-ppm", help="How far from the best price a market order may fill, in millionths."),
    max_open_orders: int = typer.Option(200, "--max-open-orders", help="Open orders per account."),
    max_book_orders: int = typer.Option(200_000, "--max-book-orders", help="Orders in the whole book."),
    max_levels: int = typer.Option(20_000, "--max-levels", help="Price levels per side."),
    reason: str = REASON,
    keys: list[str] = KEYS, approvals: list[str] = APPROVALS, sign_only: bool = SIGN_ONLY, ttl_s: int = TTL, url: str = URL,
) -> None:
    """List a market with its filters (ListMarketSigned: the operator quorum signs every filter).

    Example: ringfence market add ETHUSDT --base ETH --quote USDT --tick-size 0.01 --lot-size 0.0001 --min-notional 5 --reason "listing committee 12" --key ada.key --approval ben:...
    """
    from ..trading.commands import ListMarket
    from ..trading.staff_cmds import ACTIONS, list_subject

    ks = _keys(keys)
    with AdminClient(url, ks[0]) as client:
        view = _view(client)
    bd, qd = _decimals(view, base, "--base"), _decimals(view, quote, "--quote")
    tick, lot = _minor(tick_size, qd, "--tick-size"), _minor(lot_size, bd, "--lot-size")
    market = ListMarket(
        symbol, base, quote, segment, tick, lot,
        _minor(min_qty, bd, "--min-qty") if min_qty is not None else lot,
        _minor(max_qty, bd, "--max-qty") if max_qty is not None else 10**30,
        _minor(min_notional, qd, "--min-notional", allow_zero=True), band_ppm, band_timeout_s * 10**9, slippage_ppm,
        max_open_orders, max_book_orders, max_levels)
    body: dict[str, Any] = {"market": {
        "symbol": symbol, "base": base, "quote": quote, "segment": segment, "tick_size": market.tick_size,
        "lot_size": market.lot_size, "min_qty": market.min_qty, "max_qty": market.max_qty,
        "min_notional": market.min_notional, "band_ppm": band_ppm, "band_timeout_ns": market.band_timeout_ns,
        "market_slippage_ppm": slippage_ppm, "max_open_orders_per_account": max_open_orders,
        "max_book_orders": max_book_orders, "max_price_levels": max_levels}, "reason": reason}
    _print_events(_quorum_submit(ks, approvals, ACTIONS["list"], list_subject(market, reason, view["version"]), ttl_s,
                                 sign_only, lambda c, toks: c.post("/markets", {**body, "approvals": toks}), url))


@market_app.command("delist")
def delist_market(
    symbol: str = typer.Argument(..., help="The market to delist (see `market list`)."),
    reason: str = REASON,
    keys: list[str] = KEYS, approvals: list[str] = APPROVALS, sign_only: bool = SIGN_ONLY, ttl_s: int = TTL, url: str = URL,
) -> None:
    """Delist a market: every open order is canceled (reason DELISTED) and its hold released, then the market is gone.

    Works on a halted market (halt it first to stop trading while the quorum signs).
    Example: ringfence market delist ETHUSDT --reason "issuer wound down" --key ada.key --approval ben:...
    """
    from ..trading.staff_cmds import ACTIONS, delist_subject

    ks = _keys(keys)
    with AdminClient(url, ks[0]) as client:
        view = _view(client)
    _market_row(view, symbol)
    _print_events(_quorum_submit(ks, approvals, ACTIONS["delist"], delist_subject(symbol, reason, view["version"]), ttl_s,
                                 sign_only, lambda c, toks: c.post(f"/markets/{symbol}/delist",
                                                                   {"reason": reason, "approvals": toks}), url))


@market_app.command("fees")
def fee_tier(
    tier: int = typer.Argument(..., help="The tier number (0 is everyone's default)."),
    maker: str = typer.Option(..., "--maker", help="Maker rate as a fraction (0.001 = 0.1 %)."),
    taker: str = typer.Option(..., "--taker", help="Taker rate as a fraction (0.001 = 0.1 %)."),
    reason: str = REASON,
    keys: list[str] = KEYS, approvals: list[str] = APPROVALS, sign_only: bool = SIGN_ONLY, ttl_s: int = TTL, url: str = URL,
) -> None:
    """Define (or change) a fee tier's maker and taker rates (SetFeeTierSigned: operator quorum).

    Example: ringfence market fees 1 --maker 0.0005 --taker 0.0008 --reason "VIP 1 schedule" --key ada.key --key ben.key
    """
    from ..trading.commands import SetFeeTier
    from ..trading.staff_cmds import ACTIONS, fee_tier_subject

    command = SetFeeTier(tier, _rate_ppm(maker, "--maker"), _rate_ppm(taker, "--taker"))
    ks = _keys(keys)
    with AdminClient(url, ks[0]) as client:
        version = _view(client)["version"]
    body = {"tier": tier, "maker_rate_ppm": command.maker_rate_ppm, "taker_rate_ppm": command.taker_rate_ppm, "reason": reason}
    _print_events(_quorum_submit(ks, approvals, ACTIONS["fee_tier"], fee_tier_subject(command, reason, version), ttl_s,
                                 sign_only, lambda c, toks: c.post("/fees/tiers", {**body, "approvals": toks}), url))


@market_app.command("account-fee")
def account_fee(
    account: str = typer.Argument(..., help="The customer account id (u_...)."),
    tier: int = typer.Option(..., "--tier", help="A defined fee tier (0: back to the default)."),
    reason: str = REASON,
    keys: list[str] = KEYS, approvals: list[str] = APPROVALS, sign_only: bool = SIGN_ONLY, ttl_s: int = TTL, url: str = URL,
) -> None:
    """Put an account on a fee tier (SetAccountFeeTierSigned: operator quorum; nobody approves their own account).

    Example: ringfence market account-fee u_0123456789abcdef01234567 --tier 1 --reason "market maker agreement" --key ada.key --approval ben:...
    """
    from ..trading.commands import SetAccountFeeTier
    from ..trading.staff_cmds import ACTIONS, account_tier_subject

    ks = _keys(keys)
    with AdminClient(url, ks[0]) as client:
        version = _view(client)["version"]
    subject = account_tier_subject(SetAccountFeeTier(account, tier), reason, version)
    body = {"account": account, "tier": tier, "reason": reason}
    _print_events(_quorum_submit(ks, approvals, ACTIONS["account_tier"], subject, ttl_s, sign_only,
                                 lambda c, toks: c.post("/fees/accounts", {**body, "approvals": toks}), url))


@market_app.command("ref-price")
def ref_price(
    symbol: str = typer.Argument(..., help="The market (see `market list`)."),
    price: str = typer.Option(..., "--price", help="The reference price in the quote asset (e.g. 61000.5); "
                              "0 on an indexed market releases the override (follow the index again)."),
    reason: str = REASON,
    keys: list[str] = KEYS, approvals: list[str] = APPROVALS, sign_only: bool = SIGN_ONLY, ttl_s: int = TTL, url: str = URL,
) -> None:
    """Set a market's band reference price (operator quorum). On a market that follows an index this is the
    index override (OverrideReferencePrice, `index` change counter); otherwise SetReferencePriceSigned.

    Example: ringfence market ref-price BTCUSDT --price 61000 --reason "feed outage" --key ada.key --approval ben:...
    """
    ks = _keys(keys)
    with AdminClient(url, ks[0]) as client:
        view = _view(client)
        row = _market_row(view, symbol)
        minor = _minor(price, view["assets"][row["quote"]], "--price", allow_zero=bool(row["indexed"]))
        if row["indexed"]:
            index_version = _run(lambda: client.get("/index"))["version"]
    if row["indexed"]:
        from ..index.auth import admin_action, admin_subject
        from ..index.commands import OverrideReferencePrice

        command = OverrideReferencePrice(symbol, minor, reason)
        body = {"symbol": symbol, "price_minor": minor, "reason": reason}
        result = _quorum_submit(ks, approvals, admin_action(command), admin_subject(command, index_version), ttl_s,
                                sign_only, lambda c, toks: c.post("/index/override", {**body, "approvals": toks}), url)
    else:
        from ..trading.staff_cmds import ACTIONS, reference_subject

        subject = reference_subject(symbol, minor, reason, view["version"])
        result = _quorum_submit(ks, approvals, ACTIONS["reference"], subject, ttl_s, sign_only,
                                lambda c, toks: c.post(f"/markets/{symbol}/reference",
                                                       {"price_minor": minor, "reason": reason, "approvals": toks}), url)
    _print_events(result)


# ------------------------------------------------------------------------------------- status (halts)

_STATUSES = ("ACTIVE", "REDUCE_ONLY", "HALTED")


def _lifter(halt_id: str, reason: str) -> Callable[[AdminClient, list[str]], Any]:
    return lambda client, tokens: client.post(f"/halts/{halt_id}/lift", {"reason": reason, "approvals": tokens})


@market_app.command("status")
def market_status(
    symbol: str = typer.Argument(..., help="The market (see `market list`)."),
    status: str = typer.Argument(..., help="ACTIVE | REDUCE_ONLY | HALTED."),
    reason: str = REASON,
    keys: list[str] = typer.Option(..., "--key", help="Your staff key (FILE or DIR/demo-staff.json#ID); repeat for "
                                   "the quorum when making a market ACTIVE."),
    approvals: list[str] = typer.Option([], "--approval", help="For ACTIVE: another operator's token (from --sign-only); "
                                        "HALT_ID=TOKEN when the market has several halts. Repeatable."),
    sign_only: bool = SIGN_ONLY, ttl_s: int = TTL, url: str = URL,
) -> None:
    """Change a market's status. REDUCE_ONLY or HALTED: one operator raises a halt on the market (halt id
    SYMBOL.status.LEVEL). ACTIVE: the operator quorum lifts every active halt on the market.

    Example: ringfence market status BTCUSDT HALTED --reason "bad prints" --key ada.key
    Example: ringfence market status BTCUSDT ACTIVE --reason "prints corrected" --key ada.key --approval ben:...
    """
    from ..risk.halts import lift_subject, raise_subject

    status = status.upper()
    if status not in _STATUSES:
        _fail("STATUS", f"{status!r} is not one of {', '.join(_STATUSES)}")
    ks = _keys(keys)
    with AdminClient(url, ks[0]) as client:
        _market_row(_view(client), symbol)
        halts = [h for h in _run(lambda: client.get("/halts"))["active"]
                 if h["scope_kind"] == "market" and h["scope"] == symbol]
    if status != "ACTIVE":
        if sign_only:
            _fail("--sign-only", "REDUCE_ONLY and HALTED need one operator: submit them directly")
        halt_id = f"{symbol}.status.{status.lower()}"
        sig = ks[0].sign("halt.raise", raise_subject(halt_id, "market", symbol, status, reason), _expires(ttl_s))
        body = {"halt_id": halt_id, "scope_kind": "market", "scope": symbol, "level": status, "reason": reason,
                "decision": format_approval(sig)}
        with AdminClient(url, ks[0]) as client:
            _print_events(_run(lambda: client.post("/halts", body)))
        worse = [h["halt_id"] for h in halts if h["level"] == "HALTED" and status == "REDUCE_ONLY"]
        if worse:
            console.print(f"note: {symbol} stays HALTED until {', '.join(worse)} is lifted "
                          f"(`ringfence market status {symbol} ACTIVE` with the quorum, then raise REDUCE_ONLY)")
        return
    if not halts:
        console.print(f"{symbol} has no active halt: nothing to lift")
        return
    by_halt: dict[str, list[str]] = {h["halt_id"]: [] for h in halts}
    for token in approvals:
        halt_id, sep, rest = token.partition("=")
        if sep:
            if halt_id not in by_halt:
                _fail("--approval", f"{halt_id!r} is not an active halt on {symbol} ({', '.join(by_halt)})")
            by_halt[halt_id].append(rest)
        elif len(by_halt) == 1:
            by_halt[next(iter(by_halt))].append(token)
        else:
            _fail("--approval", f"{symbol} has {len(by_halt)} halts ({', '.join(by_halt)}): give HALT_ID=TOKEN")
    for h in halts:
        subject = lift_subject(h["halt_id"], reason, h["raised_seq"])
        if sign_only:
            for k in ks:
                token = format_approval(k.sign("halt.lift", subject, _expires(ttl_s)))
                typer.echo(token if len(halts) == 1 else f"{h['halt_id']}={token}")
            continue
        _print_events(_quorum_submit(ks, by_halt[h["halt_id"]], "halt.lift", subject, ttl_s, False,
                                     _lifter(h["halt_id"], reason), url))
    if not sign_only:
        with AdminClient(url, ks[0]) as client:
            console.print(f"{symbol} is now {_market_row(_view(client), symbol)['status']}")
