"""The shield fund rule as a monitoring alert: CoinEx's rule (shield fund value >= hot wallet value,
custody/shield.py) checked every `RINGFENCE_SHIELD_CHECK_EVERY_S` seconds inside `ringfence serve`.

When the rule breaks (or cannot be checked: an asset held without a price), one alert
`shield-fund-rule` (severity high, account `system:shield-fund`) is stored through the monitoring
path (monitoring/cases.py: it opens or joins that account's case), readable by analysts at
`GET /admin/v1/alerts?rule=shield-fund-rule`; when the rule holds again, one alert
`shield-fund-rule-restored` (severity low) joins the same case. The live state — broken or not,
since when, both values — is in `GET /admin/v1/monitoring` (`shield_rule`, for any staff member,
operators included) and in `ringfence_shield_alert` on /metrics. A breach that lasts raises one
alert, not one per check; after a restart the newest stored alert of the two tells whether the
breach was already raised, so a restart neither repeats nor loses it.

The alarm only reads engine state (`exchange.read`) and writes the monitoring store; it never
submits a command.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from sqlalchemy import select

from ..monitoring.cases import store_hits
from ..monitoring.rules import Hit
from ..store.models import MonitoringAlert

__all__ = ["ShieldAlarm", "BROKEN_RULE", "RESTORED_RULE", "ACCOUNT"]

BROKEN_RULE = "shield-fund-rule"
RESTORED_RULE = "shield-fund-rule-restored"
ACCOUNT = "system:shield-fund"


class ShieldAlarm:
    name = "shield_rule"

    def __init__(self, read: Callable[[Callable[[Any], Any]], Any], store: Any, value_asset: str, every_s: int) -> None:
        self.read = read
        self.store = store
        self.value_asset = value_asset
        self.every_ms = max(1, every_s) * 1000
        self._checked_ms = 0
        self.raised: bool | None = None  # None until the store was read once
        self.since_ms = 0
        self.last: dict[str, Any] = {}
        self.checks = 0

    def _load(self) -> None:
        with self.store.tx() as db:
            newest = db.scalars(select(MonitoringAlert).where(MonitoringAlert.rule.in_((BROKEN_RULE, RESTORED_RULE)))
                                .order_by(MonitoringAlert.id.desc()).limit(1)).first()
            self.raised = newest is not None and newest.rule == BROKEN_RULE
            self.since_ms = newest.at_ms if self.raised and newest is not None else 0

    def due(self, now_ms: int) -> bool:
        return now_ms - self._checked_ms >= self.every_ms

    def check(self, now_ms: int | None = None) -> Hit | None:
        """Read the rule; store an alert on a change (broken <-> holds). Returns the alert stored, if any."""
        from ..custody.shield import _price, shield_status

        now_ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
        if self.raised is None:
            self._load()
        def read(engine: Any) -> tuple[dict[str, Any], dict[str, str]]:
            status = shield_status(engine, self.value_asset)
            prices = {}  # what the rule values each asset at: value-asset minor units per whole unit
            for row in status["assets"]:
                p = _price(engine, row["asset"], self.value_asset)
                if p is not None:
                    prices[row["asset"]] = str(p[0])
            return status, prices

        status, prices = self.read(read)
        self._checked_ms, self.checks = now_ms, self.checks + 1
        self.last = {**{k: status[k] for k in ("shield_value_minor", "hot_value_minor", "unpriced", "applicable", "ok",
                                               "value_asset")}, "prices_minor": prices}
        broken = bool(status["alert"])
        if broken == self.raised:
            return None
        values = (f"shield fund value {status['shield_value_minor']} vs hot wallet value {status['hot_value_minor']} "
                  f"({self.value_asset} minor units)")
        if broken:
            why = (f"cannot be checked: no price for {', '.join(status['unpriced'])}" if status["unpriced"]
                   else "is broken")
            hit = Hit(BROKEN_RULE, "high", ACCOUNT, now_ms,
                      f"CoinEx's shield fund rule (shield fund value >= hot wallet value) {why}: {values}; "
                      "move coins from the hot wallets to cold storage or pay capital into the shield vault", ())
        else:
            hit = Hit(RESTORED_RULE, "low", ACCOUNT, now_ms,
                      f"CoinEx's shield fund rule holds again: {values}", ())
        store_hits(self.store, [hit], now_ms)
        self.raised, self.since_ms = broken, (now_ms if broken else 0)
        return hit

    def status(self) -> dict[str, Any]:
        return {"rule": "shield fund value >= hot wallet value (CoinEx)", "alert": bool(self.raised),
                "since_ms": self.since_ms, "every_s": self.every_ms // 1000, "checks": self.checks, **self.last}
