"""Monitoring rules as data: JSON, validated, pure and deterministic over the event stream.

A rule set is a JSON document (docs/monitoring.md; the default is `data/default-rules.json`):

    {"version": 1, "rules": [{"name": "...", "type": "...", "severity": "low|medium|high", ...}, ...]}

Rule types:

* `threshold` — at least `count_gte` events matching `match` for one `group_by` key (account_id,
  ip or device) within `window_s`.
* `velocity` — the sum of the integer data field `field` over matching events reaches `sum_gte`
  within `window_s` (amounts in minor units, never floats).
* `sequence` — events matching `steps[0]`, then `steps[1]`, ... in that order for one key, the
  last no more than `window_s` after the first ("password changed, then a new withdrawal address,
  then a withdrawal within 1 h").
* `wash_trade` — a trade whose two sides are the same account (self-trade) or accounts linked by a
  shared `linked_by` attribute (ip, device) seen on any event; `min_trades` in `window_s`.
* `baseline` — the account's own history (online, per account and asset): with `field`, a value at
  least `multiple_gte` times the largest of its previous ones; with `attribute` (ip, device or a
  string data field such as `address`), a value never seen before; either only once the account
  has `min_history` earlier matching events.
* `behaviour` — the behavioural model (models.py): each event matching `match` is scored against its
  account's own baselines (devices, networks, countries, sign-in hours, sensitive actions, endpoints,
  withdrawal amounts and destinations, order sizes) once the account has `min_history` learnt events;
  the scores (milli-bits) of one account's events within `window_s` add up, and the rule fires when
  they reach `score_gte`, with the `top` features that drove the score and their contributions.
* `spoofing` — orders of at least `min_notional_minor` (quote minor units), resting within
  `max_touch_bp` of the best price on their side, cancelled unfilled within `max_life_ms`;
  `count_gte` of them in `window_s` by one account.

`match` (and each step) is `{"kind": [kinds...], "where": {data_field: value | {"gte": int} | {"lte": int}}}`.

`Scorer.process(event)` reads only the events it is given (their `at_ms`, never a clock), so the
same stream gives the same hits in the live worker and in `backtest`. Every hit names its rule and
carries an explanation sentence and the ids of the events that made it. After a hit the rule's
state for that key starts over (one alert per pattern, not one per later event).
"""

from __future__ import annotations

import collections
import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Iterable

from ..errors import ValidationError
from .events import Event
from .linking import MAX_ACCOUNTS_PER_VALUE, LinkingConfig
from .models import FEATURES, SETTLE_MS, Assessment, Baselines, describe

__all__ = ["Rule", "RuleSet", "Hit", "Scorer", "parse_rules", "default_rules", "backtest", "RULE_TYPES"]

RULE_TYPES = ("threshold", "velocity", "sequence", "wash_trade", "spoofing", "baseline", "behaviour", "pump")
SEVERITIES = ("low", "medium", "high")
GROUP_BY = ("account_id", "ip", "device")
LINK_ATTRS = ("ip", "device")
MAX_RULES = 200
MAX_STEPS = 10
MAX_WINDOW_S = 90 * 24 * 3600
MAX_RULES_BYTES = 64 * 1024
MAX_KEYS_PER_RULE = 200_000
MAX_LINK_VALUES = 200_000
MAX_PENDING_ORDERS = 200_000
MAX_BEHAVIOUR_WINDOW = 100  # scored events kept per account and behaviour rule
_COMMON = {"name", "type", "severity", "description"}
_FIELDS = {
    "threshold": {"match", "group_by", "window_s", "count_gte"},
    "velocity": {"match", "group_by", "window_s", "field", "sum_gte"},
    "sequence": {"steps", "group_by", "window_s"},
    "wash_trade": {"linked_by", "window_s", "min_trades", "ignore"},
    "spoofing": {"window_s", "count_gte", "min_notional_minor", "max_touch_bp", "max_life_ms"},
    "baseline": {"match", "field", "attribute", "multiple_gte", "min_history", "window_s"},
    "behaviour": {"match", "window_s", "score_gte", "min_history", "top", "settle_s"},
    "pump": {"window_s", "rise_bp", "dump_bp", "max_quote_minor", "max_group", "group_share_bp", "min_trades"},
}


@dataclass(frozen=True)
class Match:
    kinds: frozenset[str]
    where: tuple[tuple[str, str, Any], ...] = ()

    def __call__(self, e: Event) -> bool:
        if e.kind not in self.kinds:
            return False
        for name, op, want in self.where:
            have = e.data.get(name)
            if op == "eq":
                if have != want or type(have) is not type(want):
                    return False
            elif not isinstance(have, int) or isinstance(have, bool):
                return False
            elif op == "gte" and have < want:
                return False
            elif op == "lte" and have > want:
                return False
        return True

    def describe(self) -> str:
        kinds = "/".join(sorted(self.kinds))
        conds = [f"{n} {'=' if op == 'eq' else '≥' if op == 'gte' else '≤'} {v}" for n, op, v in self.where]
        return kinds + (f" ({', '.join(conds)})" if conds else "")


@dataclass(frozen=True)
class Rule:
    name: str
    type: str
    severity: str
    description: str = ""
    match: Match | None = None
    steps: tuple[Match, ...] = ()
    group_by: str = "account_id"
    window_s: int = 3600
    count_gte: int = 1
    field: str = ""
    sum_gte: int = 0
    linked_by: tuple[str, ...] = ()
    ignore: frozenset[str] = frozenset()
    min_trades: int = 1
    min_notional_minor: int = 0
    max_touch_bp: int = 10_000
    max_life_ms: int = 0
    attribute: str = ""
    multiple_gte: int = 0
    min_history: int = 0
    score_gte: int = 0
    top: int = 5
    settle_s: int = SETTLE_MS // 1000
    rise_bp: int = 0
    dump_bp: int = 0
    max_quote_minor: int = 0
    max_group: int = 0
    group_share_bp: int = 0


@dataclass(frozen=True)
class RuleSet:
    version: int
    rules: tuple[Rule, ...]
    linking: LinkingConfig = LinkingConfig()

    def max_window_ms(self) -> int:
        return max((r.window_s for r in self.rules), default=0) * 1000


@dataclass(frozen=True)
class Hit:
    rule: str
    severity: str
    account_id: str
    at_ms: int
    explanation: str
    evidence: tuple[int, ...]
    related: tuple[str, ...] = ()  # other accounts the hit names (the other side of a wash trade)
    score: int = 0  # a behaviour rule's score, milli-bits
    features: tuple[tuple[str, int, str], ...] = ()  # (feature, contribution in milli-bits, what was unusual), strongest first

    def as_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "severity": self.severity, "account_id": self.account_id, "at_ms": self.at_ms,
                "explanation": self.explanation, "evidence": list(self.evidence), "related": list(self.related),
                "score": self.score, "features": features_json(self.features)}


def features_json(features: tuple[tuple[str, int, str], ...] | list[Any]) -> list[dict[str, Any]]:
    return [{"feature": f, "contribution": mb, "detail": d} for f, mb, d in features]


# ------------------------------------------------------------------------------------------ parsing


def _int(raw: dict[str, Any], name: str, where: str, *, low: int = 1, high: int = 2**62) -> int:
    v = raw.get(name)
    if not isinstance(v, int) or isinstance(v, bool) or not low <= v <= high:
        raise ValidationError(f"must be an integer from {low} to {high}", field=f"{where}.{name}")
    return v


def _match(raw: Any, where: str) -> Match:
    if not isinstance(raw, dict) or set(raw) - {"kind", "where"}:
        raise ValidationError('must be {"kind": [...], "where": {...}}', field=where)
    kinds = raw.get("kind")
    if isinstance(kinds, str):
        kinds = [kinds]
    if not isinstance(kinds, list) or not kinds or not all(isinstance(k, str) and k for k in kinds):
        raise ValidationError("must be a non-empty list of event kinds", field=f"{where}.kind")
    conds: list[tuple[str, str, Any]] = []
    for name, want in sorted((raw.get("where") or {}).items()):
        at = f"{where}.where.{name}"
        if isinstance(want, dict):
            if len(want) != 1 or next(iter(want)) not in ("gte", "lte"):
                raise ValidationError('must be a value, {"gte": int} or {"lte": int}', field=at)
            op, value = next(iter(want.items()))
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValidationError("bounds are integers (minor units, counts, codes)", field=f"{at}.{op}")
            conds.append((name, op, value))
        elif isinstance(want, (int, str, bool)):
            conds.append((name, "eq", want))
        else:
            raise ValidationError("must be an integer, string or boolean (no floats)", field=at)
    return Match(frozenset(kinds), tuple(conds))


def _rule(raw: Any, where: str) -> Rule:
    if not isinstance(raw, dict):
        raise ValidationError("must be an object", field=where)
    kind = raw.get("type")
    if kind not in RULE_TYPES:
        raise ValidationError(f"must be one of {', '.join(RULE_TYPES)}", field=f"{where}.type")
    unknown = set(raw) - _COMMON - _FIELDS[kind]
    if unknown:
        raise ValidationError(f"unknown field(s) {', '.join(sorted(unknown))} for a {kind} rule; allowed: "
                              f"{', '.join(sorted(_COMMON | _FIELDS[kind]))}", field=where)
    name = raw.get("name")
    if not isinstance(name, str) or not 1 <= len(name) <= 64:
        raise ValidationError("must be a string of 1-64 characters", field=f"{where}.name")
    severity = raw.get("severity", "medium")
    if severity not in SEVERITIES:
        raise ValidationError(f"must be one of {', '.join(SEVERITIES)}", field=f"{where}.severity")
    description = raw.get("description", "")
    if not isinstance(description, str) or len(description) > 500:
        raise ValidationError("must be a string of at most 500 characters", field=f"{where}.description")
    group_by = raw.get("group_by", "account_id")
    if group_by not in GROUP_BY:
        raise ValidationError(f"must be one of {', '.join(GROUP_BY)}", field=f"{where}.group_by")
    args: dict[str, Any] = {"name": name, "type": kind, "severity": severity, "description": description,
                            "group_by": group_by,
                            "window_s": 1 if kind == "baseline" and "window_s" not in raw else _int(raw, "window_s", where, high=MAX_WINDOW_S)}
    if kind == "threshold":
        args.update(match=_match(raw.get("match"), f"{where}.match"), count_gte=_int(raw, "count_gte", where, high=1_000_000))
    elif kind == "velocity":
        fld = raw.get("field")
        if not isinstance(fld, str) or not fld:
            raise ValidationError("must name an integer data field (e.g. amount_minor)", field=f"{where}.field")
        args.update(match=_match(raw.get("match"), f"{where}.match"), field=fld, sum_gte=_int(raw, "sum_gte", where))
    elif kind == "sequence":
        steps = raw.get("steps")
        if not isinstance(steps, list) or not 2 <= len(steps) <= MAX_STEPS:
            raise ValidationError(f"must be a list of 2-{MAX_STEPS} matches", field=f"{where}.steps")
        args["steps"] = tuple(_match(s, f"{where}.steps[{i}]") for i, s in enumerate(steps))
    elif kind == "wash_trade":
        linked = raw.get("linked_by", [])
        if not isinstance(linked, list) or not all(a in LINK_ATTRS for a in linked):
            raise ValidationError(f"must be a list of {', '.join(LINK_ATTRS)}", field=f"{where}.linked_by")
        ignore = raw.get("ignore", [])
        if not isinstance(ignore, list) or not all(isinstance(v, str) for v in ignore):
            raise ValidationError("must be a list of attribute values (shared NAT addresses...) that link nobody",
                                  field=f"{where}.ignore")
        args.update(linked_by=tuple(linked), ignore=frozenset(ignore), min_trades=_int(raw, "min_trades", where, high=1_000_000))
    elif kind == "baseline":
        fld, attr = raw.get("field", ""), raw.get("attribute", "")
        if not isinstance(fld, str) or not isinstance(attr, str) or bool(fld) == bool(attr):
            raise ValidationError("name exactly one of field (an integer data field: amount outliers) or attribute "
                                  "(ip, device or a string data field: never-seen values)", field=f"{where}.field")
        args.update(match=_match(raw.get("match"), f"{where}.match"), field=fld, attribute=attr,
                    min_history=_int(raw, "min_history", where, low=0, high=10_000),
                    multiple_gte=_int(raw, "multiple_gte", where, high=1_000_000) if fld else 0)
    elif kind == "behaviour":
        args.update(match=_match(raw.get("match"), f"{where}.match"), score_gte=_int(raw, "score_gte", where, high=10_000_000),
                    min_history=_int(raw, "min_history", where, low=0, high=10_000),
                    top=_int(raw, "top", where, high=len(FEATURES)) if "top" in raw else 5,
                    settle_s=_int(raw, "settle_s", where, low=0, high=7 * 86400) if "settle_s" in raw else SETTLE_MS // 1000)
    elif kind == "pump":
        args.update(rise_bp=_int(raw, "rise_bp", where, high=1_000_000), dump_bp=_int(raw, "dump_bp", where, high=10_000),
                    max_quote_minor=_int(raw, "max_quote_minor", where), max_group=_int(raw, "max_group", where, high=100),
                    group_share_bp=_int(raw, "group_share_bp", where, high=10_000),
                    min_trades=_int(raw, "min_trades", where, high=1_000_000))
    else:
        args.update(count_gte=_int(raw, "count_gte", where, high=1_000_000),
                    min_notional_minor=_int(raw, "min_notional_minor", where, low=0),
                    max_touch_bp=_int(raw, "max_touch_bp", where, low=0, high=10_000),
                    max_life_ms=_int(raw, "max_life_ms", where, high=MAX_WINDOW_S * 1000))
    return Rule(**args)


def parse_rules(text: str | bytes) -> RuleSet:
    """A validated rule set, or a ValidationError naming the JSON path of the first problem."""
    if len(text) > MAX_RULES_BYTES:
        raise ValidationError(f"a rule set is at most {MAX_RULES_BYTES} bytes", field="rules")
    try:
        raw = json.loads(text)
    except ValueError as err:
        raise ValidationError(f"is not valid JSON: {err}", field="rules") from None
    if not isinstance(raw, dict) or raw.get("version") != 1:
        raise ValidationError('must be {"version": 1, "rules": [...]}', field="rules.version")
    rules = raw.get("rules")
    if not isinstance(rules, list) or len(rules) > MAX_RULES:
        raise ValidationError(f"must be a list of at most {MAX_RULES} rules", field="rules.rules")
    parsed = tuple(_rule(r, f"rules[{i}]") for i, r in enumerate(rules))
    names = [r.name for r in parsed]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValidationError(f"rule names must be unique; repeated: {', '.join(dupes)}", field="rules")
    return RuleSet(1, parsed, _linking(raw.get("linking", {})))


def _linking(raw: Any) -> LinkingConfig:
    """The optional `linking` object: how the account-linking graph joins accounts (linking.py)."""
    allowed = {"max_accounts_per_value", "max_accounts_per_ip", "link_private_ips", "liquidity_accounts"}
    if not isinstance(raw, dict) or set(raw) - allowed:
        raise ValidationError(f"must be an object with at most {', '.join(sorted(allowed))}", field="rules.linking")
    d = LinkingConfig()
    private = raw.get("link_private_ips", d.link_private_ips)
    if not isinstance(private, bool):
        raise ValidationError("must be true or false", field="rules.linking.link_private_ips")
    liquidity = raw.get("liquidity_accounts", [])
    if not isinstance(liquidity, list) or len(liquidity) > 1000 or not all(isinstance(a, str) and 1 <= len(a) <= 64 for a in liquidity):
        raise ValidationError("must be a list of account ids (market makers: trading against them links nobody)",
                              field="rules.linking.liquidity_accounts")
    return LinkingConfig(
        max_accounts_per_value=_int(raw, "max_accounts_per_value", "rules.linking", low=2, high=MAX_ACCOUNTS_PER_VALUE)
        if "max_accounts_per_value" in raw else d.max_accounts_per_value,
        max_accounts_per_ip=_int(raw, "max_accounts_per_ip", "rules.linking", low=2, high=MAX_ACCOUNTS_PER_VALUE)
        if "max_accounts_per_ip" in raw else d.max_accounts_per_ip,
        link_private_ips=private, liquidity_accounts=frozenset(liquidity))


def default_rules() -> RuleSet:
    return parse_rules((resources.files("ringfence.monitoring") / "data" / "default-rules.json").read_text())


# ------------------------------------------------------------------------------------------ scoring


def _key(e: Event, group_by: str) -> str:
    return e.account_id if group_by == "account_id" else e.ip if group_by == "ip" else e.device


def _span(first_ms: int, last_ms: int) -> str:
    return f"{max(0, last_ms - first_ms) // 1000} s"


@dataclass
class _SeqState:
    best: list[tuple[int, tuple[int, ...]] | None] = field(default_factory=list)


class Scorer:
    """The rules' state over one stream; `process` is deterministic (no clock, no randomness)."""

    def __init__(self, ruleset: RuleSet) -> None:
        self.ruleset = ruleset
        self._windows: dict[str, collections.OrderedDict[str, collections.deque[tuple[int, int, int]]]] = {
            r.name: collections.OrderedDict() for r in ruleset.rules}
        self._sums: dict[tuple[str, str], int] = {}
        self._seq: dict[str, collections.OrderedDict[str, list[tuple[int, tuple[int, ...]] | None]]] = {
            r.name: collections.OrderedDict() for r in ruleset.rules}
        # account linking: account -> the (attribute, value) pairs it was seen with (bounded)
        self._attrs: collections.OrderedDict[str, set[tuple[str, str]]] = collections.OrderedDict()
        self._orders: collections.OrderedDict[tuple[str, int], tuple[int, int, int, int]] = collections.OrderedDict()
        self._baselines: dict[str, collections.OrderedDict[str, list[Any]]] = {}
        # the behavioural model (models.py): one set of per-account baselines shared by the behaviour rules
        behaviour = [r for r in ruleset.rules if r.type == "behaviour"]
        self.model: Baselines | None = Baselines(settle_ms=max(r.settle_s for r in behaviour) * 1000) if behaviour else None
        self._assessed: tuple[int, Assessment] | None = None
        self._behaviour_windows: dict[str, collections.OrderedDict[str, collections.deque[tuple[int, int, Assessment]]]] = {}
        self._markets: dict[str, collections.OrderedDict[str, list[Any]]] = {}  # symbol -> [trades in the window, their quote sum]
        self.events_scored = 0
        # which rules can fire on an event of each kind (the others are not even called)
        self._by_kind: dict[str, list[Any]] = collections.defaultdict(list)
        for rule in ruleset.rules:
            kinds: set[str] = set()
            if rule.match is not None:
                kinds |= rule.match.kinds
            for step in rule.steps:
                kinds |= step.kinds
            if rule.type in ("wash_trade", "pump"):
                kinds.add("trade")
            if rule.type == "spoofing":
                kinds.add("order_canceled")
            for kind in kinds:
                self._by_kind[kind].append((rule, getattr(self, "_" + rule.type)))

    # -- helpers

    def _window(self, rule: Rule, key: str) -> collections.deque[tuple[int, int, int]]:
        per = self._windows[rule.name]
        dq = per.get(key)
        if dq is None:
            dq = per[key] = collections.deque()
            if len(per) > MAX_KEYS_PER_RULE:
                old, _ = per.popitem(last=False)
                self._sums.pop((rule.name, old), None)
        return dq

    def _push(self, rule: Rule, key: str, e: Event, value: int) -> collections.deque[tuple[int, int, int]]:
        dq = self._window(rule, key)
        floor = e.at_ms - rule.window_s * 1000
        total = self._sums.get((rule.name, key), 0)
        while dq and dq[0][0] < floor:
            total -= dq.popleft()[2]
        dq.append((e.at_ms, e.id, value))
        self._sums[(rule.name, key)] = total + value
        return dq

    def _reset(self, rule: Rule, key: str) -> None:
        self._windows[rule.name].pop(key, None)
        self._sums.pop((rule.name, key), None)

    def linked(self, a: str, b: str, attrs: Iterable[str], ignore: frozenset[str]) -> list[str]:
        """The attribute values (`ip=...`) accounts `a` and `b` were both seen with."""
        wanted = set(attrs)
        shared = self._attrs.get(a, set()) & self._attrs.get(b, set())
        return sorted(f"{attr}={value}" for attr, value in shared if attr in wanted and value not in ignore)

    def _remember(self, e: Event) -> None:
        if not e.account_id:
            return
        mine = self._attrs.get(e.account_id)
        if mine is None:
            mine = self._attrs[e.account_id] = set()
            if len(self._attrs) > MAX_LINK_VALUES:
                self._attrs.popitem(last=False)
        if len(mine) < 100:
            if e.ip:
                mine.add(("ip", e.ip))
            if e.device:
                mine.add(("device", e.device))

    # -- the one entry point

    def process(self, e: Event) -> list[Hit]:
        self.events_scored += 1
        self._remember(e)
        hits: list[Hit] = []
        for rule, check in self._by_kind.get(e.kind, ()):
            hit = check(rule, e)
            if hit is not None:
                hits.append(hit)
        if e.kind == "order_placed":
            self._note_order(e)
        if self.model is not None:
            self.model.learn(e)
            self._assessed = None
        return hits

    def assess(self, e: Event) -> Assessment:
        """The behavioural model's score of `e` against its account's history before it."""
        assert self.model is not None
        cached = self._assessed
        if cached is not None and cached[0] == e.id:
            return cached[1]
        a = self.model.assess(e)
        self._assessed = (e.id, a)
        return a

    def _threshold(self, rule: Rule, e: Event) -> Hit | None:
        assert rule.match is not None
        key = _key(e, rule.group_by)
        if not key or not rule.match(e):
            return None
        dq = self._push(rule, key, e, 1)
        if len(dq) < rule.count_gte:
            return None
        ids = tuple(i for _, i, _ in dq)
        first = dq[0][0]
        self._reset(rule, key)
        return Hit(rule.name, rule.severity, e.account_id or f"{rule.group_by}:{key}", e.at_ms,
                   f"{len(ids)} {rule.match.describe()} events for {rule.group_by} {key} within {_span(first, e.at_ms)} "
                   f"(threshold: {rule.count_gte} in {rule.window_s} s)", ids)

    def _velocity(self, rule: Rule, e: Event) -> Hit | None:
        assert rule.match is not None
        key = _key(e, rule.group_by)
        if not key or not rule.match(e):
            return None
        value = e.num(rule.field)
        if value <= 0:
            return None
        dq = self._push(rule, key, e, value)
        total = self._sums[(rule.name, key)]
        if total < rule.sum_gte:
            return None
        ids = tuple(i for _, i, _ in dq)
        first = dq[0][0]
        self._reset(rule, key)
        return Hit(rule.name, rule.severity, e.account_id or f"{rule.group_by}:{key}", e.at_ms,
                   f"{rule.field} summed to {total} over {len(ids)} {rule.match.describe()} events for {rule.group_by} "
                   f"{key} within {_span(first, e.at_ms)} (limit: {rule.sum_gte} in {rule.window_s} s)", ids)

    def _sequence(self, rule: Rule, e: Event) -> Hit | None:
        key = _key(e, rule.group_by)
        if not key:
            return None
        steps = rule.steps
        if not any(s(e) for s in steps):
            return None
        per = self._seq[rule.name]
        best = per.get(key)
        if best is None:
            best = per[key] = [None] * len(steps)
            if len(per) > MAX_KEYS_PER_RULE:
                per.popitem(last=False)
        window_ms = rule.window_s * 1000
        # best[i]: the latest-starting partial match of steps 0..i (start time, event ids). Steps are
        # visited last to first so one event never fills two steps of the same match.
        for i in range(len(steps) - 1, -1, -1):
            if not steps[i](e):
                continue
            if i == 0:
                best[0] = (e.at_ms, (e.id,))
                continue
            prev = best[i - 1]
            if prev is None or e.at_ms - prev[0] > window_ms:
                continue
            cur = best[i]
            if cur is None or prev[0] >= cur[0]:
                best[i] = (prev[0], prev[1] + (e.id,))
        done = best[-1]
        if done is None:
            return None
        del per[key]
        return Hit(rule.name, rule.severity, e.account_id or f"{rule.group_by}:{key}", e.at_ms,
                   f"sequence for {rule.group_by} {key}: " + ", then ".join(s.describe() for s in steps)
                   + f", all within {_span(done[0], e.at_ms)} (window {rule.window_s} s)", done[1])

    def _wash_trade(self, rule: Rule, e: Event) -> Hit | None:
        if e.kind != "trade":
            return None
        taker, maker = e.account_id, e.data.get("maker_owner")
        if not taker or not isinstance(maker, str) or not maker:
            return None
        if taker == maker:
            why = "the same account on both sides (self-trade)"
        else:
            shared = self.linked(taker, maker, rule.linked_by, rule.ignore)
            if not shared:
                return None
            why = f"linked accounts {taker} and {maker} (shared {', '.join(shared[:3])})"
        pair = "|".join(sorted((taker, maker))) + "|" + str(e.data.get("symbol", ""))
        dq = self._push(rule, pair, e, 1)
        if len(dq) < rule.min_trades:
            return None
        ids = tuple(i for _, i, _ in dq)
        self._reset(rule, pair)
        return Hit(rule.name, rule.severity, taker, e.at_ms,
                   f"{len(ids)} trade(s) in {e.data.get('symbol', '?')} between {why} within {_span(dq[0][0], e.at_ms)}", ids,
                   related=() if maker == taker else (maker,))

    def _baseline(self, rule: Rule, e: Event) -> Hit | None:
        assert rule.match is not None
        if not e.account_id or not rule.match(e):
            return None
        asset = e.data.get("asset")
        key = f"{e.account_id}|{asset}" if isinstance(asset, str) else e.account_id
        per = self._baselines.setdefault(rule.name, collections.OrderedDict())
        state = per.get(key)
        if state is None:
            state = per[key] = [0, 0, set()]  # count, max, values seen
            if len(per) > MAX_KEYS_PER_RULE:
                per.popitem(last=False)
        count, biggest, seen = state
        hit = None
        what = "" if not isinstance(asset, str) else f" {asset}"
        if rule.field:
            value = e.num(rule.field)
            if count >= rule.min_history and biggest > 0 and value >= rule.multiple_gte * biggest:
                hit = Hit(rule.name, rule.severity, e.account_id, e.at_ms,
                          f"{rule.field} {value}{what} is {value // biggest}x the largest of this account's {count} previous "
                          f"{rule.match.describe()} events ({biggest}; outlier at {rule.multiple_gte}x)", (e.id,))
            state[0], state[1] = count + 1, max(biggest, value)
        else:
            attr = rule.attribute
            value_s = e.ip if attr == "ip" else e.device if attr == "device" else str(e.data.get(attr, ""))
            if not value_s:
                return None
            if count >= rule.min_history and value_s not in seen:
                hit = Hit(rule.name, rule.severity, e.account_id, e.at_ms,
                          f"{attr} {value_s} never seen in this account's {count} previous {rule.match.describe()} events", (e.id,))
            state[0] = count + 1
            if len(seen) < 1000:
                seen.add(value_s)
        return hit

    def _behaviour(self, rule: Rule, e: Event) -> Hit | None:
        assert rule.match is not None
        if not e.account_id or not rule.match(e):
            return None
        a = self.assess(e)
        if a.score <= 0 or a.history < rule.min_history:
            return None
        per = self._behaviour_windows.setdefault(rule.name, collections.OrderedDict())
        dq = per.get(e.account_id)
        if dq is None:
            dq = per[e.account_id] = collections.deque()
            if len(per) > MAX_KEYS_PER_RULE:
                per.popitem(last=False)
        floor = e.at_ms - rule.window_s * 1000
        while dq and dq[0][0] < floor:
            dq.popleft()
        dq.append((e.at_ms, e.id, a))
        if len(dq) > MAX_BEHAVIOUR_WINDOW:
            dq.popleft()
        total, features = _merge(dq)
        if total < rule.score_gte:
            return None
        del per[e.account_id]
        features = features[:rule.top]
        return Hit(rule.name, rule.severity, e.account_id, e.at_ms,
                   f"behaviour score {total / 1000:.1f} bits over {len(dq)} event(s) within "  # float-ok: display
                   f"{_span(dq[0][0], e.at_ms)} against this account's own history (threshold {rule.score_gte / 1000:.1f} bits): "  # float-ok
                   + describe(features, rule.top), tuple(x[1] for x in dq), score=total, features=features)

    def _pump(self, rule: Rule, e: Event) -> Hit | None:
        """A thin market whose price rose `rise_bp` within `window_s`, the rise bought mostly by a small
        group (≤ `max_group` accounts, ≥ `group_share_bp` of the buying), then fell `dump_bp` from the
        peak with the same group selling — a pump and dump."""
        symbol = str(e.data.get("symbol", ""))
        taker, maker = e.account_id, e.data.get("maker_owner")
        price, qty = e.num("price"), e.num("quantity")
        if not symbol or not taker or not isinstance(maker, str) or price <= 0 or qty <= 0:
            return None
        quote = e.num("quote_qty") or price * qty // 100_000_000
        side = e.data.get("taker_side", "BUY")
        buyer, seller = (taker, maker) if side == "BUY" else (maker, taker)
        per = self._markets.setdefault(rule.name, collections.OrderedDict())
        state = per.get(symbol)
        if state is None:
            state = per[symbol] = [collections.deque(), 0]
            if len(per) > MAX_KEYS_PER_RULE:
                per.popitem(last=False)
        dq: collections.deque[tuple[int, int, int, int, str, str]] = state[0]
        floor = e.at_ms - rule.window_s * 1000
        while dq and dq[0][0] < floor:
            state[1] -= dq.popleft()[3]
        dq.append((e.at_ms, e.id, price, quote, buyer, seller))
        state[1] += quote
        traded = state[1]
        if len(dq) < rule.min_trades or traded > rule.max_quote_minor:
            return None  # too few trades, or not a thin market (in this window)
        peak_i = max(range(len(dq)), key=lambda i: (dq[i][2], -i))
        peak = dq[peak_i][2]
        if price * 10_000 > peak * (10_000 - rule.dump_bp):
            return None  # no dump (yet)
        low_i = min(range(peak_i + 1), key=lambda i: (dq[i][2], -i))
        low = dq[low_i][2]
        if low <= 0 or (peak - low) * 10_000 < rule.rise_bp * low:
            return None
        rise = [dq[i] for i in range(low_i + 1, peak_i + 1)]
        dump = [dq[i] for i in range(peak_i + 1, len(dq))]
        bought: dict[str, int] = {}
        for t in rise:
            bought[t[4]] = bought.get(t[4], 0) + t[3]
        rise_quote = sum(bought.values())
        group: list[str] = []  # the fewest top buyers that bought group_share_bp of the rise
        group_bought = 0
        for a in sorted(bought, key=lambda a: (-bought[a], a)):
            if group_bought * 10_000 >= rule.group_share_bp * rise_quote:
                break
            group.append(a)
            group_bought += bought[a]
        if not rise_quote or len(group) > rule.max_group or group_bought * 10_000 < rule.group_share_bp * rise_quote:
            return None
        members = set(group)
        # the group also holds every other buyer of the rise or seller of the dump linked to it (shared device or IP)
        for other in sorted({t[4] for t in rise} | {t[5] for t in dump}):
            if other not in members and any(self.linked(other, m, ("ip", "device"), frozenset()) for m in group[:rule.max_group]):
                group.append(other)
                members.add(other)
        dump_quote = sum(t[3] for t in dump)
        group_sold = sum(t[3] for t in dump if t[5] in members)
        if not dump_quote or group_sold * 10_000 < rule.group_share_bp * dump_quote:
            return None
        links = sorted({v for a in group for b in group if a < b for v in self.linked(a, b, ("ip", "device"), frozenset())})
        ids = tuple(t[1] for t in dq)
        del per[symbol]
        return Hit(rule.name, rule.severity, group[0], e.at_ms,
                   f"{symbol}: price rose {(peak - low) * 100 // low}% ({low} to {peak}) within {_span(dq[low_i][0], dq[peak_i][0])} "
                   f"on a thin market ({traded} quote minor units traded in the window), "
                   f"{group_bought * 100 // rise_quote}% of the rise bought by {len(group)} account(s) {', '.join(group)}"
                   + (f" (linked: {', '.join(links[:3])})" if links else "")
                   + f", then fell {(peak - price) * 100 // peak}% from the peak with {group_sold * 100 // dump_quote}% of the "
                   f"selling by the same group", ids, related=tuple(group[1:]))

    def _note_order(self, e: Event) -> None:
        oid = e.num("order_id")
        self._orders[(str(e.data.get("symbol", "")), oid)] = (e.at_ms, e.num("quantity"), e.num("notional_minor"),
                                                              e.num("touch_bp"))
        if len(self._orders) > MAX_PENDING_ORDERS:
            self._orders.popitem(last=False)

    def _spoofing(self, rule: Rule, e: Event) -> Hit | None:
        if e.kind != "order_canceled" or not e.account_id:
            return None
        placed = self._orders.get((str(e.data.get("symbol", "")), e.num("order_id")))
        if placed is None:
            return None
        at, quantity, notional, touch = placed
        if notional < rule.min_notional_minor or touch > rule.max_touch_bp or e.num("leaves") != quantity:
            return None
        if e.at_ms - at > rule.max_life_ms:
            return None
        dq = self._push(rule, e.account_id, e, 1)
        if len(dq) < rule.count_gte:
            return None
        ids = tuple(i for _, i, _ in dq)
        self._reset(rule, e.account_id)
        return Hit(rule.name, rule.severity, e.account_id, e.at_ms,
                   f"{len(ids)} orders of at least {rule.min_notional_minor} (quote minor units) within {rule.max_touch_bp} bp of "
                   f"the touch cancelled unfilled within {rule.max_life_ms} ms of placement, in {_span(dq[0][0], e.at_ms)}", ids)


def _merge(dq: Iterable[tuple[int, int, Assessment]]) -> tuple[int, tuple[tuple[str, int, str], ...]]:
    """A window's score and its features, strongest first. The same unusual value (a new device, a
    first password change) on several learnt events counts once, at its strongest; every event that
    is not learnt (a failed sign-in) is new evidence and counts."""
    best: dict[tuple[str, str, int], tuple[int, str]] = {}
    for _, eid, a in dq:
        for (feature, mb, detail), value in zip(a.contributions, a.values):
            key = (feature, value, eid if a.repeatable else 0)
            got = best.get(key)
            if got is None or mb > got[0]:
                best[key] = (mb, detail)
    merged: dict[str, list[Any]] = {}
    for (feature, _, _), (mb, detail) in best.items():
        acc = merged.get(feature)
        if acc is None:
            merged[feature] = [mb, mb, detail]
        else:
            acc[0] += mb
            if mb > acc[1]:
                acc[1], acc[2] = mb, detail
    features = tuple(sorted(((f, v[0], v[2]) for f, v in merged.items()), key=lambda c: (-c[1], c[0])))
    return sum(f[1] for f in features), features


def backtest(ruleset: RuleSet, events: Iterable[Event], weights: dict[str, int] | None = None) -> tuple[list[Hit], int]:
    """Every hit the rule set raises over a recorded stream, and the number of events scored;
    `weights`: the behavioural model's learnt feature weights (feedback.py), per-mille."""
    scorer = Scorer(ruleset)
    if weights is not None and scorer.model is not None:
        scorer.model.weights = dict(weights)
    hits: list[Hit] = []
    for e in events:
        hits.extend(scorer.process(e))
    return hits, scorer.events_scored
