"""Hot <-> cold rebalancing decided by the engine from the policy's thresholds.

The policy's `balancing` section gives, per asset, the band of the hot wallet's share of the
asset's reserves (hot + warm + cold custody, as the ledger books them): `hot_min_bp`,
`hot_target_bp`, `hot_max_bp`. A worker (`custody.rebalance.Rebalancer`) proposes a move with
`AuthorizeRebalance`; the engine decides from its own ledger and the active policy:

* a **drain** (hot -> warm/cold) only while hot holds more than `hot_max_bp`, and at most down to
  `hot_target_bp`;
* a **refill** (warm/cold -> hot) only while hot holds less than `hot_min_bp`, at most up to
  `hot_target_bp` and at most what the source wallet holds;
* one rebalance of an asset at a time (none authorized or signed and not yet recorded);
* an asset without a band in the active policy: refused (default deny).

An authorized transfer is a `TransferRec` in state `authorized`; the worker then signs exactly it
(`RecordTransferSigned` with the same id, asset, wallets and amount) and the chain executes it.
Once the asset has a band, every hot <-> warm/cold transfer of it must have been authorized (a
precheck of `RecordTransferSigned`, so journals written before this rule replay unchanged).
"""

from __future__ import annotations

from typing import Any

from ..engine.commands import Command, Event
from ..engine.core import Engine
from ..engine.module import Effect
from ..errors import Conflict, Forbidden, ValidationError
from ..ledger.model import SYSTEM_OWNER
from .module import MODULE, custody_scopes
from .state import CustodyState, TransferRec, _asset_cfg, _check_amount, _check_id, _ev, _wallet, custody_state

__all__ = ["AuthorizeRebalance", "rebalance_kind", "hot_share", "needs_authorization"]

RESERVE_TIERS = ("hot", "warm", "cold")


def rebalance_kind(from_tier: str, to_tier: str) -> str:
    """`drain` (hot -> warm/cold), `refill` (warm/cold -> hot), else ''."""
    if from_tier == "hot" and to_tier in ("warm", "cold"):
        return "drain"
    if from_tier in ("warm", "cold") and to_tier == "hot":
        return "refill"
    return ""


def _held(engine: Engine, asset: str, wallet: str) -> int:
    account = engine.ledger.find(SYSTEM_OWNER, asset, "custody", wallet)
    return 0 if account is None else account.credits_posted - account.debits_posted


def hot_share(engine: Engine, s: CustodyState, asset: str, hot_wallet: str) -> tuple[int, int]:
    """(hot wallet's holding, the asset's reserves in hot + warm + cold wallets), from the ledger."""
    chain = s.assets[asset].chain
    reserves = sum(_held(engine, asset, w.name) for w in s.wallets.values() if w.chain == chain and w.tier in RESERVE_TIERS)
    return _held(engine, asset, hot_wallet), reserves


def needs_authorization(s: CustodyState, asset: str, from_wallet: str, to_wallet: str) -> bool:
    """A hot <-> warm/cold transfer of an asset the active policy gives a band."""
    policy = s.policy()
    src, dst = s.wallets.get(from_wallet), s.wallets.get(to_wallet)
    if policy is None or src is None or dst is None or policy.band(asset) is None:
        return False
    return bool(rebalance_kind(src.tier, dst.tier))


class AuthorizeRebalance(Command, tag="custody.rebalance.authorize/1"):
    """A worker proposes moving `amount_minor` between a hot wallet and a warm/cold one."""

    transfer_id: str
    asset: str
    from_wallet: str
    to_wallet: str
    amount_minor: int


def _pre_authorize(engine: Engine, c: AuthorizeRebalance) -> str:
    s = custody_state(engine)
    _check_id(c.transfer_id, "transfer_id")
    cfg = _asset_cfg(s, c.asset)
    src, dst = _wallet(s, c.from_wallet, "from_wallet"), _wallet(s, c.to_wallet, "to_wallet")
    if src.chain != cfg.chain or dst.chain != cfg.chain:
        raise ValidationError(f"both wallets must be on {cfg.chain}", field="to_wallet")
    kind = rebalance_kind(src.tier, dst.tier)
    if not kind:
        raise ValidationError("a rebalance goes hot -> warm/cold (drain) or warm/cold -> hot (refill)", field="to_wallet")
    amount = _check_amount(c.amount_minor, "amount_minor")
    if c.transfer_id in s.transfers:
        raise Conflict(f"transfer id {c.transfer_id} is taken", field="transfer_id")
    policy = s.policy()
    band = policy.band(c.asset) if policy is not None else None
    if band is None:
        raise Forbidden(f"the active policy has no balancing band for {c.asset} (default deny)", field="asset")
    busy = [t.id for t in s.transfers.values() if t.asset == c.asset and t.state in ("authorized", "signed")
            and rebalance_kind(s.wallets[t.from_wallet].tier if t.from_wallet in s.wallets else "",
                               s.wallets[t.to_wallet].tier if t.to_wallet in s.wallets else "")]
    if busy:
        raise Conflict(f"rebalance {busy[0]} of {c.asset} is still in flight", field="asset")
    hot_wallet = c.from_wallet if kind == "drain" else c.to_wallet
    hot, reserves = hot_share(engine, s, c.asset, hot_wallet)
    if reserves <= 0:
        raise Conflict(f"no {c.asset} reserves booked", field="asset")
    share = hot * 10_000 // reserves
    target = reserves * band.target_bp // 10_000
    if kind == "drain":
        if hot * 10_000 <= reserves * band.max_bp:
            raise Conflict(f"hot holds {share} bp of {c.asset} reserves, not above hot_max_bp {band.max_bp}", field="amount_minor")
        if amount > hot - target:
            raise Conflict(f"a drain of at most {hot - target} brings hot to hot_target_bp {band.target_bp}", field="amount_minor")
    else:
        if hot * 10_000 >= reserves * band.min_bp:
            raise Conflict(f"hot holds {share} bp of {c.asset} reserves, not below hot_min_bp {band.min_bp}", field="amount_minor")
        room = min(target - hot, _held(engine, c.asset, c.from_wallet))
        if amount > room:
            raise Conflict(f"a refill of at most {room} (up to hot_target_bp {band.target_bp}, what {c.from_wallet} holds)",
                           field="amount_minor")
    return f"{kind}: hot held {share} bp of {c.asset} reserves (band {band.min_bp}..{band.max_bp} bp, target {band.target_bp} bp)"


@MODULE.handles(AuthorizeRebalance, precheck=_pre_authorize, effect=Effect.NEUTRAL, scopes=custody_scopes)
def _authorize(engine: Engine, c: AuthorizeRebalance) -> list[Event]:
    why = _pre_authorize(engine, c)
    s = custody_state(engine)
    s.transfers[c.transfer_id] = TransferRec(c.transfer_id, c.asset, c.from_wallet, c.to_wallet, c.amount_minor, 0, "",
                                             "authorized")
    return [_ev("rebalance.authorized", c.transfer_id, f"{c.from_wallet}->{c.to_wallet}", c.amount_minor, [why])]


def check_signed_against_authorization(engine: Engine, c: Any) -> None:
    """`RecordTransferSigned`'s rule for assets with a band (see the module docstring)."""
    s = custody_state(engine)
    t = s.transfers.get(c.transfer_id)
    if t is not None and t.state == "authorized":
        if (t.asset, t.from_wallet, t.to_wallet, t.amount_minor) != (c.asset, c.from_wallet, c.to_wallet, c.amount_minor):
            raise Conflict(f"does not match authorized rebalance {t.id} ({t.amount_minor} {t.asset} {t.from_wallet}->{t.to_wallet})",
                           field="transfer_id")
        return
    if t is None and needs_authorization(s, c.asset, c.from_wallet, c.to_wallet):
        raise Forbidden(f"a {c.from_wallet} -> {c.to_wallet} transfer of {c.asset} needs an authorized rebalance "
                        "(AuthorizeRebalance: the policy's balancing band decides)", field="transfer_id")
