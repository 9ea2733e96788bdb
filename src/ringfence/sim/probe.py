"""The one place where the simulation reads the engine's state, in the auditor's plain shapes.

Everything the auditor compares goes through these functions, so a refactor of the engine's
internals (the module split, the ledger API) touches only this file. Reads only; never mutates.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from ..engine.commands import encode
from ..engine.core import Engine

__all__ = ["accounts", "account_ids", "orders", "markets", "best_prices", "clearing_pending", "client_pendings",
           "withdrawals", "withdrawal_holds", "internal_transfers", "next_nonces", "deposits", "frozen_accounts",
           "halts", "shard_halted", "operators", "index", "positions", "perps", "perp_settings", "liquidation_cooldowns", "domain_state",
           "first_state_difference"]

_INTERNAL_ID_BASE = 1 << 127


def accounts(engine: Engine) -> dict[tuple[str, str, str, str], tuple[int, int, int]]:
    """(owner, asset, kind, segment) -> (posted balance, debits pending, credits pending), nonzero only."""
    out = {}
    for a in engine.ledger.iter_accounts():
        row = (a.credits_posted - a.debits_posted, a.debits_pending, a.credits_pending)
        if row != (0, 0, 0):
            out[(a.owner, a.asset, a.kind, a.segment)] = row
    return out


def account_ids(engine: Engine) -> dict[int, tuple[str, str, str, str]]:
    return {a.id: (a.owner, a.asset, a.kind, a.segment) for a in engine.ledger.iter_accounts()}


def user_flags_ok(engine: Engine) -> list[str]:
    """Names of user accounts that do not carry the no-overdraft flag (should be none)."""
    return [a.name for a in engine.ledger.iter_accounts() if a.owner != "system" and not a.flags & 1]


def orders(engine: Engine) -> dict[str, dict[int, tuple[Any, ...]]]:
    """symbol -> order id -> (owner, side, price, leaves, held, resting) for every open order."""
    trading = engine.components["trading"]
    ledger = engine.ledger
    out: dict[str, dict[int, tuple[Any, ...]]] = {}
    for symbol, m in trading.markets.items():
        rows = {}
        for o in m.orders.values():
            held = ledger.hold_remaining(o.hold_id)
            rows[o.id] = (o.owner, "BUY" if o.is_buy else "SELL", o.price, o.leaves, held, o.level is not None)
        out[symbol] = rows
    return out


def markets(engine: Engine) -> dict[str, tuple[Any, ...]]:
    """symbol -> (status, reduced by the band timer, last price outside the band, reference price, last price)."""
    return {s: (m.status, m.auto_reduce, m.out_of_band, m.ref_price, m.last_price)
            for s, m in engine.components["trading"].markets.items()}


def best_prices(engine: Engine) -> dict[str, tuple[int, int]]:
    return {s: (m.best_bid(), m.best_ask()) for s, m in engine.components["trading"].markets.items()}


def clearing_pending(engine: Engine) -> dict[str, tuple[int, int]]:
    """symbol -> (pending credits of its base clearing account, of its quote clearing account)."""
    out = {}
    for s, m in engine.components["trading"].markets.items():
        out[s] = (m.clearing.base.credits_pending, m.clearing.quote.credits_pending)
    return out


def client_pendings(engine: Engine, known: Iterable[int] = ()) -> dict[int, tuple[str, int]]:
    """Client-made pending transfers (ids below the engine's internal range) -> (status, remaining):
    every open one, and each of `known` (the ids the auditor expects, open or ended) — the ledger
    lists only open holds, and answers for an ended one by id. An id it does not know is absent."""
    ledger = engine.ledger
    ids = {h.id for h in ledger.open_holds() if h.id < _INTERNAL_ID_BASE} | set(known)
    out = {}
    for pid in sorted(ids):
        h = ledger.pending_hold(pid)
        if h is not None:
            out[pid] = (h.status, h.remaining)
    return out


def withdrawals(engine: Engine) -> dict[str, tuple[str, int]]:
    """withdrawal id -> (state, Ethereum nonce or -1)."""
    return {w.id: (w.state, w.nonce) for w in engine.components["custody"].withdrawals.values()}


def internal_transfers(engine: Engine) -> dict[str, tuple[str, int]]:
    """Sweeps, fundings and reserved nonces: id -> (state, amount, or the nonce for a reservation)."""
    return {t.id: (t.state, t.amount_minor) for t in engine.components["custody"].transfers.values()}


def next_nonces(engine: Engine) -> dict[str, int]:
    return {w.name: w.next_nonce for w in engine.components["custody"].wallets.values() if w.chain == "ethereum"}


def withdrawal_holds(engine: Engine) -> dict[str, int]:
    """asset -> amount + fee of every withdrawal that has not ended (what its hold must reserve)."""
    out: dict[str, int] = {}
    for w in engine.components["custody"].withdrawals.values():
        if w.state not in ("settled", "failed", "denied", "rejected"):
            out[w.asset] = out.get(w.asset, 0) + w.amount_minor + w.fee_minor
    return out


def deposits(engine: Engine) -> dict[str, tuple[str, bool]]:
    return {d.key: (d.state, d.final) for d in engine.components["custody"].deposits.values()}


def frozen_accounts(engine: Engine) -> set[str]:
    return set(engine.components["custody"].withdrawals_frozen)


def halts(engine: Engine) -> dict[str, tuple[str, str, str]]:
    return {h.halt_id: (h.scope_kind, h.scope, h.level) for h in engine.components["halts"].active.values()}


def halt_raised_seq(engine: Engine, halt_id: str) -> int:
    return engine.components["halts"].active[halt_id].raised_seq  # type: ignore[no-any-return]


def shard_halted(engine: Engine) -> tuple[int, str] | None:
    """(sequence, error) if a broken invariant halted the shard, else None."""
    return engine.halted

def index(engine: Engine) -> dict[str, tuple[int, bool, tuple[str, ...]]]:
    """symbol -> (index, frozen for want of live sources, venues that have quoted)."""
    state = engine.components["index"]
    return {sym: (s.index_minor, s.short, tuple(sorted(s.quotes))) for sym, s in state.symbols.items()}


def operators(engine: Engine) -> tuple[int, int, list[str]]:
    """(staff register version, operator quorum, active operators)."""
    s = engine.components["staff"]
    return s.version, s.quorum, sorted(m.staff_id for m in s.members.values() if m.status == "active" and "operator" in m.roles)


def domain_state(engine: Engine) -> bytes:
    """Everything but the sequencer's stamps, canonically encoded (see `first_state_difference`).

    The ledger's expiry index (`[0][5]`) is left out too: it is derived from the pending transfers'
    deadlines (which stay in) and the sequencer's clock sweeps stale entries from it whenever time
    passes, even for a command that is then rejected."""
    state = engine.snapshot_state()[3:]
    ledger = list(state[0])
    ledger[5] = None
    return encode([ledger, *state[1:]])


def first_state_difference(before: bytes, after: bytes) -> str | None:
    """None if two `domain_state`s are equal, else the path of their first difference."""
    if before == after:
        return None

    def named(data: bytes) -> dict[str, Any]:  # [ledger, [[component, state], ...]] -> by name
        ledger, components = msgspec.json.decode(data)
        return {"ledger": ledger, **{name: state for name, state in components}}

    return _first_difference_in(named(before), named(after), "state")


def _first_difference_in(before: Any, after: Any, path: str) -> str | None:
    if type(before) is not type(after):
        return f"{path}: {before!r} -> {after!r}"
    if isinstance(before, list):
        for i, (b, a) in enumerate(zip(before, after)):
            diff = _first_difference_in(b, a, f"{path}[{i}]")
            if diff is not None:
                return diff
        if len(before) != len(after):
            return f"{path}: {len(before)} items -> {len(after)} items ({(after[len(before):] or before[len(after):])[:3]!r})"
        return None
    if isinstance(before, dict):
        for k in sorted(set(before) | set(after), key=repr):
            diff = _first_difference_in(before.get(k), after.get(k), f"{path}[{k!r}]")
            if diff is not None:
                return diff
        return None
    return None if before == after else f"{path}: {before!r} -> {after!r}"


def positions(engine: Engine) -> dict[tuple[str, str], tuple[int, ...]]:
    """(owner, perpetual) -> (size, cost, margin, margin added by hand, realised PnL)."""
    st = engine.components.get("derivatives")
    if st is None:
        return {}
    return {k: (p.size, p.cost, p.margin, p.extra, p.realized) for k, p in st.positions.items()}


def perps(engine: Engine) -> dict[str, tuple[int, ...]]:
    """perpetual -> (open interest, last funding rate, last and next funding time)."""
    st = engine.components.get("derivatives")
    if st is None:
        return {}
    return {s: (p.open_interest, p.last_rate_ppm, p.last_funding_ns, p.next_funding_ns) for s, p in st.perps.items()}


def perp_settings(engine: Engine) -> tuple[dict[tuple[str, str], int], set[tuple[str, str]]]:
    """(leverage set per (owner, perpetual), the isolated (owner, perpetual) pairs)."""
    st = engine.components.get("derivatives")
    if st is None:
        return {}, set()
    return dict(st.leverage), set(st.isolated)


def liquidation_cooldowns(engine: Engine) -> dict[tuple[str, str], int]:
    """(owner, asset or isolated symbol) -> sequencer time before which no next liquidation step runs."""
    st = engine.components.get("derivatives")
    return {} if st is None else dict(st.liq_next_ns)
