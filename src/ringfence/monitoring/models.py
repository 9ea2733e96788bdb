"""Behavioural models: per-account baselines learnt online, and a score with the features that drove it.

Every account has a profile (`Profile`) learnt from its own events as they come (online: each event
is scored against the history before it, then added to it). The score of an event is the sum of its
features' contributions, each in **milli-bits of surprise** (an integer; 1,000 = one bit, i.e. an
event half as likely as expected), capped per feature so no single feature decides alone:

| feature | what is compared | learnt from |
|---|---|---|
| `device` | the user agent | every trusted event with one |
| `network` | the client's IPv4 /24 (IPv6 /48) | every trusted event with an IP |
| `country` | `data.country` (when identity or a GeoIP database gave one) | trusted events with one |
| `hour` | the hour of day (UTC) of a sign-in, ±1 h | sign-ins |
| `action` | a sensitive kind (API key, password, withdrawal address, 2FA changes) vs how often this account does it | every event |
| `endpoint` | an API route | `api_call` events |
| `amount` | a withdrawal's amount vs the account's largest earlier one in that asset (log2 of the ratio) | withdrawals |
| `destination` | a withdrawal address vs the account's earlier destinations | withdrawals |
| `order_size` | an order's notional vs the account's largest earlier one (log2 of the ratio) | orders |

A categorical feature seen `c` times among `n` observations with `K` distinct values scores
`log2((n + K + 1) / (c + 1)) - log2(K + 1)`, floored at 0: add-one smoothing with one slot for a value
never seen, less what a uniform pick among the known values (and a new one) would cost. With no
history it scores 0 (nothing is unusual for an account that has done nothing); a never-seen device
after ten events from one device scores 2.58 bits; a device used half the time scores 0.

Events that do not show the account's owner — failed sign-ins, failed second factors, a lock-out —
are scored but never learnt (a credential stuffer's device must not become familiar by failing).

Deterministic: no clock, no randomness; the same events in the same order give the same scores (the
logarithm is IEEE-754 double arithmetic rounded to integer milli-bits; no float touches an amount:
amounts are compared as integers and only their ratio's logarithm is a float). Memory is bounded:
at most `MAX_ACCOUNTS` profiles (the least recently seen is dropped), `MAX_VALUES` values per feature.

Why no library: `river` (0.26.1, installable here) brings scipy and narwhals into the server for what
is, per account, a handful of counters; its anomaly detectors (HalfSpaceTrees, one-class SVM) score
a feature vector against the whole population and give no per-feature attribution, which an analyst
needs on every alert. scikit-learn fits batches, not per-account online updates. The counters here
are the same statistics (frequencies with Laplace smoothing, running maxima), kept in plain dicts.
"""

from __future__ import annotations

import collections
import functools
import math
from dataclasses import dataclass
from typing import Any

from .events import Event

__all__ = ["Profile", "Baselines", "Assessment", "FEATURES", "UNTRUSTED_KINDS", "SENSITIVE_KINDS", "SIGN_IN_KINDS", "network_of"]

FEATURES = ("device", "network", "country", "hour", "action", "endpoint", "amount", "destination", "order_size")
#: per-event cap of each feature's contribution, milli-bits
CAPS = {"device": 5_000, "network": 5_000, "country": 6_000, "hour": 2_000, "action": 4_000, "endpoint": 3_000,
        "amount": 6_000, "destination": 4_000, "order_size": 5_000}
UNTRUSTED_KINDS = frozenset({"sign_in_failed", "sign_in_failed_unknown", "second_factor_failed", "account_locked"})
SIGN_IN_KINDS = frozenset({"sign_in", "new_device_sign_in", "new_country_sign_in", "sign_in_failed", "second_factor_failed"})
SENSITIVE_KINDS = frozenset({"api_key_created", "password_changed", "withdrawal_address_changed", "totp_disabled",
                             "totp_reset", "passkey_removed", "email_changed", "api_key_scopes_changed"})
MAX_ACCOUNTS = 200_000
#: a device, network or country becomes familiar only once it was used SETTLE_MS before the event
#: scored (a behaviour rule's `settle_s`): an intruder's device does not turn familiar by being used
#: through the intrusion
SETTLE_MS = 3_600_000
MAX_PENDING = 256
MAX_VALUES = 64
HOUR_MS = 3_600_000


@functools.lru_cache(maxsize=65_536)
def network_of(ip: str) -> str:
    """The /24 of an IPv4 address, the /48 of an IPv6 one ('' for none)."""
    if not ip:
        return ""
    if ":" in ip:
        parts = ip.split(":")
        return ":".join(parts[:3]) + "::/48"
    head, _, _ = ip.rpartition(".")
    return head + ".0/24" if head else ip


def _millibits(x_num: int, x_den: int) -> int:
    """round(1000 * log2(x_num / x_den)) for positive integers."""
    return round(1000 * math.log2(x_num / x_den))  # float-ok: a score, not money


def _rarity(counts: dict[str, int], total: int, value: str) -> int:
    """Milli-bits of surprise of `value` against `counts` (module docstring), ≥ 0."""
    k = len(counts)
    c = counts.get(value, 0)
    if (c + 1) * (k + 1) >= total + k + 1:  # as likely as a uniform pick or more: 0, without a logarithm
        return 0
    return max(0, _millibits(total + k + 1, (c + 1) * (k + 1)))


def _ratio_bits(value: int, reference: int) -> int:
    """Milli-bits by which `value` exceeds `reference` (log2 of the ratio), 0 when it does not."""
    if value <= reference or reference <= 0:
        return 0
    return _millibits(value, reference)


def _learn(counts: dict[str, int], value: str) -> None:
    if value in counts:
        counts[value] += 1
    elif len(counts) < MAX_VALUES:
        counts[value] = 1


class Profile:
    """One account's baselines (counters only)."""

    __slots__ = ("events", "pending", "devices", "device_n", "networks", "network_n", "countries", "country_n", "hours", "sign_ins",
                 "kinds", "endpoints", "endpoint_n", "w_count", "w_max", "destinations", "o_count", "o_max")

    def __init__(self) -> None:
        self.events = 0
        self.pending: collections.deque[tuple[int, str, str, str]] = collections.deque()  # (at_ms, device, network, country) not yet settled
        self.devices: dict[str, int] = {}
        self.device_n = 0
        self.networks: dict[str, int] = {}
        self.network_n = 0
        self.countries: dict[str, int] = {}
        self.country_n = 0
        self.hours = [0] * 24
        self.sign_ins = 0
        self.kinds: dict[str, int] = {}
        self.endpoints: dict[str, int] = {}
        self.endpoint_n = 0
        self.w_count: dict[str, int] = {}
        self.w_max: dict[str, int] = {}
        self.destinations: dict[str, int] = {}
        self.o_count = 0
        self.o_max = 0


@dataclass(frozen=True)
class Assessment:
    """An event's score and the features that made it: (feature, milli-bits, what was unusual)."""

    score: int
    history: int
    contributions: tuple[tuple[str, int, str], ...]
    values: tuple[str, ...] = ()  # the value each contribution is about (a device, a network, a kind...), in the same order
    repeatable: bool = False  # an event that is not learnt (a failed sign-in): each one is new evidence


def _fmt_bits(mb: int) -> str:
    return f"{mb // 1000}.{mb % 1000 // 100}"


class Baselines:
    """Every account's profile; `assess(e)` scores an event against the history, `learn(e)` adds it."""

    def __init__(self, max_accounts: int = MAX_ACCOUNTS, settle_ms: int = SETTLE_MS) -> None:
        self.max_accounts = max_accounts
        self.settle_ms = settle_ms
        self.profiles: collections.OrderedDict[str, Profile] = collections.OrderedDict()
        self.events_learnt = 0
        # per-mille weight of each feature, learnt from analysts' case decisions (feedback.py); 1,000 = as measured
        self.weights: dict[str, int] = {f: 1000 for f in FEATURES}

    def profile(self, account: str) -> Profile | None:
        return self.profiles.get(account)

    def _settle(self, p: Profile, now_ms: int) -> None:
        """Count the device, network and country observations made at least `settle_ms` before `now_ms`."""
        pending = p.pending
        floor = now_ms - self.settle_ms
        while pending and pending[0][0] <= floor:
            _, device, net, country = pending.popleft()
            if device:
                _learn(p.devices, device)
                p.device_n += 1
            if net:
                _learn(p.networks, net)
                p.network_n += 1
            if country:
                _learn(p.countries, country)
                p.country_n += 1

    def assess(self, e: Event) -> Assessment:
        p = self.profiles.get(e.account_id)
        if p is None or p.events == 0:
            return Assessment(0, 0, ())
        if p.pending:
            self._settle(p, e.at_ms)
        out: list[tuple[str, int, str, str]] = []  # (feature, milli-bits, what was unusual, the value); details only when > 0
        device = e.device
        if device:
            mb = _rarity(p.devices, p.device_n, device)
            if mb > 0:
                out.append(("device", min(mb, CAPS["device"]), f"device {device[:60]} seen {p.devices.get(device, 0)} of "
                            f"{p.device_n} times", device))
        net = network_of(e.ip)
        if net:
            mb = _rarity(p.networks, p.network_n, net)
            if mb > 0:
                out.append(("network", min(mb, CAPS["network"]), f"network {net} seen {p.networks.get(net, 0)} of "
                            f"{p.network_n} times", net))
        data = e.data
        country = data.get("country")
        if isinstance(country, str) and country:
            mb = _rarity(p.countries, p.country_n, country)
            if mb > 0:
                out.append(("country", min(mb, CAPS["country"]), f"country {country} seen {p.countries.get(country, 0)} of "
                            f"{p.country_n} times", country))
        kind = e.kind
        if kind == "api_call":
            ep = data.get("endpoint")
            if isinstance(ep, str) and ep:
                mb = _rarity(p.endpoints, p.endpoint_n, ep)
                if mb > 0:
                    out.append(("endpoint", min(mb, CAPS["endpoint"]), f"endpoint {ep[:60]} called {p.endpoints.get(ep, 0)} "
                                f"of {p.endpoint_n} times", ep))
        elif kind in SIGN_IN_KINDS:
            if p.sign_ins:
                h = e.at_ms // HOUR_MS % 24
                near = p.hours[h] + p.hours[(h + 1) % 24] + p.hours[(h - 1) % 24]
                # against 8 three-hour slots with one pseudo-sign-in each; 0 when the hour is as likely as any
                mb = _millibits(p.sign_ins + 8, near + 1) - 3_000
                if mb > 0:
                    out.append(("hour", min(mb, CAPS["hour"]), f"sign-in at {h:02d}h UTC; {near} of {p.sign_ins} earlier "
                                "sign-ins within an hour of it", str(h)))
        elif kind in SENSITIVE_KINDS:
            done = p.kinds.get(kind, 0)
            mb = _millibits(p.events + 2, done + 1) - 1_000
            if mb > 0:
                out.append(("action", min(mb, CAPS["action"]), f"{kind} done {done} times in {p.events} events", kind))
        elif kind == "withdrawal_requested":
            asset = str(data.get("asset", ""))
            amount = e.num("amount_minor")
            before = p.w_count.get(asset, 0)
            if amount > 0:
                if before:
                    mb = _ratio_bits(amount, p.w_max[asset])
                    if mb > 0:
                        out.append(("amount", min(mb, CAPS["amount"]), f"{amount} {asset} is more than the largest of "
                                    f"{before} earlier withdrawals ({p.w_max[asset]})", asset))
                else:
                    out.append(("amount", 1_000, f"first {asset} withdrawal ({amount})", asset))
            address = data.get("address")
            total = sum(p.w_count.values())
            if isinstance(address, str) and address and total:
                mb = _rarity(p.destinations, total, address)
                if mb > 0:
                    out.append(("destination", min(mb, CAPS["destination"]), f"address {address[:20]}… used "
                                f"{p.destinations.get(address, 0)} of {total} earlier withdrawals", address))
        elif kind == "order_placed" and p.o_count >= 3:
            notional = e.num("notional_minor")
            mb = _ratio_bits(notional, p.o_max) - 1_000
            if mb > 0:
                out.append(("order_size", min(mb, CAPS["order_size"]), f"order notional {notional} vs the largest of "
                            f"{p.o_count} earlier ({p.o_max})", ""))
        w = self.weights
        if any(w.get(c[0], 1000) != 1000 for c in out):  # learnt from case decisions: scale, and say so
            out = [(f, mb * w.get(f, 1000) // 1000, f"{detail} (weight {w.get(f, 1000)}‰)" if w.get(f, 1000) != 1000 else detail, v)
                   for f, mb, detail, v in out]
            out = [c for c in out if c[1] > 0]
        if not out:
            return Assessment(0, p.events, ())
        out.sort(key=lambda c: (-c[1], c[0], c[3]))
        return Assessment(sum(c[1] for c in out), p.events, tuple(c[:3] for c in out), tuple(c[3] for c in out),
                          kind in UNTRUSTED_KINDS)

    def learn(self, e: Event) -> None:
        if not e.account_id:
            return
        p = self.profiles.get(e.account_id)
        if p is None:
            p = self.profiles[e.account_id] = Profile()
            if len(self.profiles) > self.max_accounts:
                self.profiles.popitem(last=False)
        else:
            self.profiles.move_to_end(e.account_id)
        kind = e.kind
        if kind in UNTRUSTED_KINDS:
            return
        self.events_learnt += 1
        p.events += 1
        _learn(p.kinds, kind)
        pending = p.pending
        net = network_of(e.ip)
        country = e.data.get("country")
        if e.device or net or country:
            if len(pending) >= MAX_PENDING:  # a flood: the oldest observation counts now
                self._settle(p, pending[0][0] + self.settle_ms)
            pending.append((e.at_ms, e.device, net, country if isinstance(country, str) else ""))
        if kind in SIGN_IN_KINDS:
            p.hours[e.at_ms // HOUR_MS % 24] += 1
            p.sign_ins += 1
        if kind == "api_call":
            ep = e.data.get("endpoint")
            if isinstance(ep, str) and ep:
                _learn(p.endpoints, ep)
                p.endpoint_n += 1
        elif kind == "withdrawal_requested":
            asset = str(e.data.get("asset", ""))
            amount = e.num("amount_minor")
            if amount > 0 and (asset in p.w_count or len(p.w_count) < MAX_VALUES):
                p.w_count[asset] = p.w_count.get(asset, 0) + 1
                p.w_max[asset] = max(p.w_max.get(asset, 0), amount)
            address = e.data.get("address")
            if isinstance(address, str) and address:
                _learn(p.destinations, address)
        elif kind == "order_placed":
            p.o_count += 1
            p.o_max = max(p.o_max, e.num("notional_minor"))

    def summary(self, account: str) -> dict[str, Any] | None:
        """An account's baseline as an analyst reads it (GET /admin/v1/baselines?account_id=)."""
        p = self.profiles.get(account)
        if p is None:
            return None
        top = lambda d: sorted(d.items(), key=lambda kv: (-kv[1], kv[0]))[:10]  # noqa: E731
        return {"account_id": account, "events": p.events, "devices": top(p.devices), "networks": top(p.networks),
                "countries": top(p.countries), "sign_in_hours_utc": {h: n for h, n in enumerate(p.hours) if n},
                "endpoints": top(p.endpoints), "withdrawals": {a: {"count": n, "largest_minor": p.w_max.get(a, 0)}
                                                              for a, n in sorted(p.w_count.items())},
                "destinations": len(p.destinations), "orders": {"count": p.o_count, "largest_notional_minor": p.o_max}}


def describe(contributions: tuple[tuple[str, int, str], ...] | list[tuple[str, int, str]], top: int = 5) -> str:
    """'device 2.5 bits (device x seen 0 of 9 times); network ...' for the strongest `top` features."""
    return "; ".join(f"{f} {_fmt_bits(mb)} bits ({d})" for f, mb, d in list(contributions)[:top])
