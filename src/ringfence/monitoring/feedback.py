"""Analysts' case decisions fed back into the behavioural model: learnt feature weights.

When an analyst closes a case as `confirmed_abuse` or `false_positive`, every behaviour alert in it
(an alert with a score and its features, models.py) is a labelled example. Each feature the alert
names moves its weight — per-mille, 1,000 to start — by `STEP` scaled by the feature's share of the
alert's score: up for confirmed abuse, down for a false positive, kept within `MIN_WEIGHT` ..
`MAX_WEIGHT`. The model multiplies each feature's contribution by its weight before the behaviour
rules add them up, so a feature that keeps raising false positives counts less next time, and one
that keeps catching abuse counts more (a perceptron's update on the features that fired, in integers).

Deterministic and replayable: the weights are a pure function of the ordered decisions (`learn`),
read from the case log (`monitoring_case_actions`, the close step's id is the order); the worker
rebuilds them from the log at start and applies each new decision as it is logged.
`GET /admin/v1/model` (and `ringfence monitoring model`) shows the weights and every decision that
moved them; `ringfence monitoring backtest --weights FILE` scores a recorded stream with them.
Other close reasons (`resolved`, `duplicate`, `reported`) teach nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable

from sqlalchemy import select

from ..errors import ValidationError
from ..store import Store
from ..store.models import MonitoringAlert, MonitoringCaseAction
from .models import FEATURES

__all__ = ["Decision", "STEP", "MIN_WEIGHT", "MAX_WEIGHT", "LABELS", "learn", "apply", "decisions_after", "parse_weights"]

STEP = 200  # per-mille moved by a decision on a feature that made the whole score
MIN_WEIGHT, MAX_WEIGHT = 250, 2_000
LABELS = {"confirmed_abuse": 1, "false_positive": -1}


@dataclass(frozen=True)
class Decision:
    """One labelled behaviour alert: the close step's id (the order), its case and alert, the label
    (+1 confirmed abuse, -1 false positive), the alert's score and its features' contributions."""

    action_id: int
    case_id: int
    alert_id: int
    label: int
    score: int
    features: tuple[tuple[str, int], ...]

    def as_dict(self) -> dict[str, Any]:
        return {"action_id": self.action_id, "case_id": self.case_id, "alert_id": self.alert_id,
                "label": "confirmed_abuse" if self.label > 0 else "false_positive", "score": self.score,
                "features": [{"feature": f, "contribution": c} for f, c in self.features]}


def apply(weights: dict[str, int], d: Decision) -> dict[str, int]:
    """The weights after one decision (a new dict; `weights` is not changed)."""
    out = dict(weights)
    total = max(1, sum(c for _, c in d.features))
    for feature, contribution in d.features:
        delta = STEP * contribution // total
        out[feature] = max(MIN_WEIGHT, min(MAX_WEIGHT, out.get(feature, 1000) + d.label * delta))
    return out


def learn(decisions: Iterable[Decision], start: dict[str, int] | None = None) -> dict[str, int]:
    """The weights after the decisions, in order, from `start` (every feature at 1,000 by default)."""
    weights = dict(start) if start is not None else {f: 1000 for f in FEATURES}
    for d in decisions:
        weights = apply(weights, d)
    return weights


def decisions_after(store: Store, action_id: int) -> list[Decision]:
    """The labelled decisions logged after close step `action_id`, in order: one per behaviour alert of
    each case closed as confirmed abuse or a false positive."""
    out: list[Decision] = []
    with store.tx() as db:
        closes = list(db.scalars(select(MonitoringCaseAction).where(MonitoringCaseAction.action == "close",
                                                                    MonitoringCaseAction.id > action_id)
                                 .order_by(MonitoringCaseAction.id)))
        for c in closes:
            label = LABELS.get(c.detail.split(":", 1)[0])
            if label is None:
                continue
            for a in db.scalars(select(MonitoringAlert).where(MonitoringAlert.case_id == c.case_id, MonitoringAlert.score > 0)
                                .order_by(MonitoringAlert.id)):
                feats = tuple((str(f["feature"]), int(f["contribution"])) for f in json.loads(a.features or "[]")
                              if f.get("feature") in FEATURES and int(f.get("contribution", 0)) > 0)
                if feats:
                    out.append(Decision(c.id, c.case_id, a.id, label, a.score, feats))
    return out


def parse_weights(text: str) -> dict[str, int]:
    """Weights from JSON — `{"weights": {...}}` as `GET /admin/v1/model` answers, or the bare object —
    validated: known features, integers within MIN_WEIGHT..MAX_WEIGHT."""
    try:
        raw = json.loads(text)
    except ValueError:
        raise ValidationError("is not JSON", field="weights") from None
    if isinstance(raw, dict) and isinstance(raw.get("weights"), dict):
        raw = raw["weights"]
    if not isinstance(raw, dict):
        raise ValidationError("must be an object of feature: weight (per-mille)", field="weights")
    out = {f: 1000 for f in FEATURES}
    for k, v in raw.items():
        if k not in FEATURES:
            raise ValidationError(f"unknown feature {str(k)[:40]!r}; known: {', '.join(FEATURES)}", field=f"weights.{str(k)[:40]}")
        if isinstance(v, bool) or not isinstance(v, int) or not MIN_WEIGHT <= v <= MAX_WEIGHT:
            raise ValidationError(f"must be an integer from {MIN_WEIGHT} to {MAX_WEIGHT} (per-mille)", field=f"weights.{k}")
        out[k] = v
    return out
