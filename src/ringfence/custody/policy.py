"""Withdrawal policy as data: JSON rules, validated, first match wins, default deny.

A policy is a JSON document (see docs/custody.md):

    {"version": 1, "approval_ttl_s": 86400,
     "rules": [{"name": "...", "when": {...conditions...}, "action": {...}}, ...]}

`evaluate(policy, facts)` is pure and deterministic: it reads only the `Facts` it is given (the
engine builds them from its own state inside `apply`), never a clock. Every decision names the rule
that matched and carries the reasons (each condition that held). When no rule matches the answer is
`deny` with reason "no rule matched (default deny)".

Invariants: amounts are integers in the withdrawal asset's minor unit; shares are basis points
(1/100 of a percent) so no float is ever involved; a policy that fails validation is refused as a
whole with an error naming the JSON path of the first problem.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..errors import ValidationError

__all__ = ["Policy", "Rule", "Facts", "Decision", "HotBand", "parse_policy", "evaluate", "ACTIONS", "MAX_RULES"]

MAX_RULES = 200
MAX_POLICY_BYTES = 64 * 1024
MAX_APPROVALS = 10
MAX_DELAY_S = 30 * 24 * 3600
ACTIONS = ("allow", "approvals", "delay", "manual_review", "deny")
TIERS = ("deposit", "hot", "warm", "cold", "shield")

_INT_CONDITIONS = {
    "amount_minor_gt", "amount_minor_gte", "amount_minor_lt", "amount_minor_lte",
    "wallet_share_bp_gt", "wallet_share_bp_gte", "wallet_share_bp_lt",
    "balance_share_bp_gte",
    "allow_list_age_s_lt", "allow_list_age_s_gte",
    "risk_score_gte", "risk_score_lt",
}
_LIST_CONDITIONS = {"asset", "wallet_tier", "wallet"}
_BOOL_CONDITIONS = {"allow_listed", "manual_review_flagged"}
_VELOCITY_CONDITIONS = {"user_velocity", "wallet_velocity"}
_ALL_CONDITIONS = _INT_CONDITIONS | _LIST_CONDITIONS | _BOOL_CONDITIONS | _VELOCITY_CONDITIONS
_AMOUNT_CONDITIONS = {c for c in _INT_CONDITIONS if c.startswith("amount_")} | _VELOCITY_CONDITIONS


@dataclass(frozen=True)
class Velocity:
    window_s: int
    amount_minor_gt: int


@dataclass(frozen=True)
class Rule:
    name: str
    when: dict[str, Any]
    action: str
    approvals: int = 0
    roles: tuple[str, ...] = ()
    delay_s: int = 0


@dataclass(frozen=True)
class HotBand:
    """The hot wallet's share of an asset's reserves (basis points), from the policy's `balancing`
    section: above `max_bp` hot drains to cold down to `target_bp`; below `min_bp` cold refills it
    up to `target_bp` (`custody.rebalance`)."""

    asset: str
    min_bp: int
    target_bp: int
    max_bp: int


@dataclass(frozen=True)
class Policy:
    version: int
    approval_ttl_s: int
    rules: tuple[Rule, ...]
    text: str  # canonical JSON (sorted keys), what the engine journals and hashes
    balancing: tuple[HotBand, ...] = ()

    def band(self, asset: str) -> HotBand | None:
        return next((b for b in self.balancing if b.asset == asset), None)

    def velocity_windows(self) -> set[int]:
        out: set[int] = set()
        for r in self.rules:
            for k in _VELOCITY_CONDITIONS:
                if k in r.when:
                    out.add(r.when[k].window_s)
        return out


@dataclass(frozen=True)
class Facts:
    """What the policy sees about one withdrawal (all integers/strings; built inside the engine)."""

    asset: str
    amount_minor: int
    wallet: str
    wallet_tier: str
    wallet_balance_minor: int
    user_balance_minor: int  # the user's available balance before this hold
    allow_listed: bool
    allow_list_age_s: int  # -1 when not allow-listed
    risk_score: int
    manual_review_flagged: bool
    #: window_s -> amount already withdrawn in that window (excluding this one)
    user_velocity_minor: dict[int, int] = field(default_factory=dict)
    wallet_velocity_minor: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    action: str
    rule: str
    reasons: tuple[str, ...]
    approvals: int = 0
    roles: tuple[str, ...] = ()
    delay_s: int = 0


def _err(path: str, msg: str) -> ValidationError:
    return ValidationError(msg, field=f"policy.{path}")


def _int(v: Any, path: str, lo: int = 0, hi: int = 2**127 - 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise _err(path, f"must be an integer {lo}..{hi}")
    return v


def _parse_when(raw: Any, path: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise _err(path, "must be an object of conditions")
    out: dict[str, Any] = {}
    for k, v in raw.items():
        p = f"{path}.{k}"
        if k not in _ALL_CONDITIONS:
            raise _err(p, f"unknown condition; allowed: {', '.join(sorted(_ALL_CONDITIONS))}")
        if k in _INT_CONDITIONS:
            hi = 10_000 if "_bp_" in k else (100 if k.startswith("risk") else 2**127 - 1)
            out[k] = _int(v, p, 0, hi)
        elif k in _LIST_CONDITIONS:
            if not isinstance(v, list) or not v or not all(isinstance(x, str) and x for x in v) or len(v) > 50:
                raise _err(p, "must be a non-empty list of up to 50 strings")
            if k == "wallet_tier" and any(x not in TIERS for x in v):
                raise _err(p, f"tiers are {', '.join(TIERS)}")
            out[k] = tuple(v)
        elif k in _BOOL_CONDITIONS:
            if not isinstance(v, bool):
                raise _err(p, "must be true or false")
            out[k] = v
        else:
            if not isinstance(v, dict) or set(v) != {"window_s", "amount_minor_gt"}:
                raise _err(p, "must be {\"window_s\": N, \"amount_minor_gt\": N}")
            out[k] = Velocity(_int(v["window_s"], p + ".window_s", 1, 90 * 86400),
                              _int(v["amount_minor_gt"], p + ".amount_minor_gt"))
    if any(k in _AMOUNT_CONDITIONS for k in out) and len(out.get("asset", ())) != 1:
        raise _err(path, "amount and velocity conditions are in minor units of one asset: add \"asset\": [ONE]")
    return out


def _parse_action(raw: Any, path: str) -> tuple[str, int, tuple[str, ...], int]:
    if not isinstance(raw, dict) or "type" not in raw:
        raise _err(path, f"must be an object with a \"type\" of {', '.join(ACTIONS)}")
    kind = raw["type"]
    if kind not in ACTIONS:
        raise _err(path + ".type", f"must be one of {', '.join(ACTIONS)}")
    allowed = {"type"} | {"approvals": {"count", "roles", "delay_s"}, "delay": {"delay_s"}}.get(kind, set())
    extra = set(raw) - allowed
    if extra:
        raise _err(path, f"unknown key(s) {sorted(extra)} for action {kind}")
    count, roles, delay = 0, (), 0
    if kind == "approvals":
        count = _int(raw.get("count"), path + ".count", 1, MAX_APPROVALS)
        r = raw.get("roles")
        if not isinstance(r, list) or not r or not all(isinstance(x, str) and x for x in r):
            raise _err(path + ".roles", "must be a non-empty list of role names")
        roles = tuple(r)
        delay = _int(raw.get("delay_s", 0), path + ".delay_s", 0, MAX_DELAY_S)
    elif kind == "delay":
        delay = _int(raw.get("delay_s"), path + ".delay_s", 1, MAX_DELAY_S)
    return kind, count, roles, delay


def parse_policy(text: str | bytes | dict[str, Any]) -> Policy:
    """Validate a policy document; raise `ValidationError` naming `policy.<path>` on the first problem."""
    if isinstance(text, dict):
        raw = text
    else:
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        if len(text) > MAX_POLICY_BYTES:
            raise _err("$", f"is larger than {MAX_POLICY_BYTES} bytes")
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise _err("$", f"is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(raw, dict):
        raise _err("$", "must be a JSON object")
    extra = set(raw) - {"version", "approval_ttl_s", "rules", "description", "balancing"}
    if extra:
        raise _err("$", f"unknown key(s) {sorted(extra)}")
    if raw.get("version") != 1:
        raise _err("version", "must be 1")
    ttl = _int(raw.get("approval_ttl_s", 86400), "approval_ttl_s", 60, 30 * 86400)
    rules_raw = raw.get("rules")
    if not isinstance(rules_raw, list) or not 1 <= len(rules_raw) <= MAX_RULES:
        raise _err("rules", f"must be a list of 1..{MAX_RULES} rules")
    rules = []
    names: set[str] = set()
    for i, r in enumerate(rules_raw):
        p = f"rules[{i}]"
        if not isinstance(r, dict) or set(r) - {"name", "when", "action"} or "action" not in r:
            raise _err(p, "must be {\"name\", \"when\", \"action\"}")
        name = r.get("name", f"rule-{i}")
        if not isinstance(name, str) or not 1 <= len(name) <= 64 or name in names:
            raise _err(p + ".name", "must be a unique string of 1..64 characters")
        names.add(name)
        when = _parse_when(r.get("when", {}), p + ".when")
        kind, count, roles, delay = _parse_action(r["action"], p + ".action")
        rules.append(Rule(name, when, kind, count, roles, delay))
    canonical = json.dumps(raw, sort_keys=True, separators=(",", ":"))
    return Policy(1, ttl, tuple(rules), canonical, _parse_balancing(raw.get("balancing", [])))


def _parse_balancing(raw: Any) -> tuple[HotBand, ...]:
    """`"balancing": [{"asset": "ETH", "hot_min_bp": 500, "hot_target_bp": 1000, "hot_max_bp": 2000}, ...]`."""
    if not isinstance(raw, list) or len(raw) > 50:
        raise _err("balancing", "must be a list of up to 50 {asset, hot_min_bp, hot_target_bp, hot_max_bp}")
    out: list[HotBand] = []
    for i, b in enumerate(raw):
        p = f"balancing[{i}]"
        if not isinstance(b, dict) or set(b) != {"asset", "hot_min_bp", "hot_target_bp", "hot_max_bp"}:
            raise _err(p, "must be {\"asset\", \"hot_min_bp\", \"hot_target_bp\", \"hot_max_bp\"}")
        asset = b["asset"]
        if not isinstance(asset, str) or not asset or len(asset) > 16 or any(x.asset == asset for x in out):
            raise _err(p + ".asset", "must be an asset code, once")
        lo, mid, hi = (_int(b[k], f"{p}.{k}", 0, 10_000) for k in ("hot_min_bp", "hot_target_bp", "hot_max_bp"))
        if not lo <= mid <= hi:
            raise _err(p, "need hot_min_bp <= hot_target_bp <= hot_max_bp")
        out.append(HotBand(asset, lo, mid, hi))
    return tuple(out)


def _holds(rule: Rule, f: Facts) -> tuple[bool, list[str]]:
    reasons: list[str] = []
    w = rule.when
    share_bp = (f.amount_minor * 10_000 // f.wallet_balance_minor) if f.wallet_balance_minor > 0 else 10_000
    bal_bp = (f.amount_minor * 10_000 // f.user_balance_minor) if f.user_balance_minor > 0 else 10_000
    checks: list[tuple[bool, str]] = []
    for k, v in w.items():
        if k == "asset":
            checks.append((f.asset in v, f"asset {f.asset} in {list(v)}"))
        elif k == "wallet":
            checks.append((f.wallet in v, f"wallet {f.wallet} in {list(v)}"))
        elif k == "wallet_tier":
            checks.append((f.wallet_tier in v, f"wallet tier {f.wallet_tier} in {list(v)}"))
        elif k == "amount_minor_gt":
            checks.append((f.amount_minor > v, f"amount {f.amount_minor} > {v}"))
        elif k == "amount_minor_gte":
            checks.append((f.amount_minor >= v, f"amount {f.amount_minor} >= {v}"))
        elif k == "amount_minor_lt":
            checks.append((f.amount_minor < v, f"amount {f.amount_minor} < {v}"))
        elif k == "amount_minor_lte":
            checks.append((f.amount_minor <= v, f"amount {f.amount_minor} <= {v}"))
        elif k == "wallet_share_bp_gt":
            checks.append((share_bp > v, f"{share_bp} bp of wallet {f.wallet} > {v} bp"))
        elif k == "wallet_share_bp_gte":
            checks.append((share_bp >= v, f"{share_bp} bp of wallet {f.wallet} >= {v} bp"))
        elif k == "wallet_share_bp_lt":
            checks.append((share_bp < v, f"{share_bp} bp of wallet {f.wallet} < {v} bp"))
        elif k == "balance_share_bp_gte":
            checks.append((bal_bp >= v, f"{bal_bp} bp of the user's balance >= {v} bp"))
        elif k == "allow_listed":
            checks.append((f.allow_listed == v, "destination is allow-listed" if f.allow_listed
                           else "destination is not allow-listed"))
        elif k == "allow_list_age_s_lt":
            checks.append((f.allow_listed and f.allow_list_age_s < v,
                           f"allow-list entry is {f.allow_list_age_s} s old (< {v} s)"))
        elif k == "allow_list_age_s_gte":
            checks.append((f.allow_listed and f.allow_list_age_s >= v,
                           f"allow-list entry is {f.allow_list_age_s} s old (>= {v} s)"))
        elif k == "risk_score_gte":
            checks.append((f.risk_score >= v, f"risk score {f.risk_score} >= {v}"))
        elif k == "risk_score_lt":
            checks.append((f.risk_score < v, f"risk score {f.risk_score} < {v}"))
        elif k == "manual_review_flagged":
            checks.append((f.manual_review_flagged == v, f"risk review flagged manual review: {f.manual_review_flagged}"))
        elif k == "user_velocity":
            total = f.user_velocity_minor.get(v.window_s, 0) + f.amount_minor
            checks.append((total > v.amount_minor_gt, f"user withdrew {total} in {v.window_s} s (> {v.amount_minor_gt})"))
        elif k == "wallet_velocity":
            total = f.wallet_velocity_minor.get(v.window_s, 0) + f.amount_minor
            checks.append((total > v.amount_minor_gt, f"wallet {f.wallet} sent {total} in {v.window_s} s (> {v.amount_minor_gt})"))
    for ok, why in checks:
        if not ok:
            return False, []
        reasons.append(why)
    return True, reasons


def evaluate(policy: Policy | None, facts: Facts) -> Decision:
    """First matching rule wins; no policy or no match means deny."""
    if policy is None:
        return Decision("deny", "", ("no policy is active (default deny)",))
    for rule in policy.rules:
        ok, reasons = _holds(rule, facts)
        if ok:
            reasons = reasons or ["rule has no conditions (matches everything)"]
            return Decision(rule.action, rule.name, tuple(reasons), rule.approvals, rule.roles, rule.delay_s)
    return Decision("deny", "", ("no rule matched (default deny)",))
