"""Alerts, cases and the analyst workflow.

Invariants:
* every alert belongs to a case: the open (or escalated) case of its account, or a new one;
* a case moves open → escalated → closed (or open → closed); a closed case takes no further step
  (409) and closing needs a reason category (`CLOSE_REASONS`) and a note;
* every step is logged with the staff member whose signed request took it (`monitoring_case_actions`);
* an action on the account (`ACCOUNT_ACTIONS`: freeze it, pause its withdrawals) also needs the
  analyst's signed decision (action `monitoring.<action>`, subject `[case_id, account_id, reason]`),
  verified against the staff register (role analyst, not expired) and usable once. The engine has
  no command to freeze an account or pause one account's withdrawals (halts pause markets, assets
  or segments, docs/staff.md), so the decision is recorded with its signature in the case log and
  carried out by the identity service: a freeze revokes sessions and API keys and refuses sign-ins
  and withdrawals until support unfreezes; a pause locks withdrawals for `PAUSE_S`; a second-factor
  reset (`require_2fa_reset`) is identity's own `second_factor.require_reset` (factors and sessions
  removed, withdrawals locked, the user enrols again); a `report` records a suspicious-activity
  report in the case (no change to the account), exported by `case_report` as a JSON document.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from ..errors import Conflict, NotFound, ValidationError
from ..store import Store
from ..store.models import ApiKey, AuthSession, MonitoringAlert, MonitoringCase, MonitoringCaseAction, MonitoringCursor, User
from .rules import Hit, features_json

__all__ = ["store_hits", "CursorMoved", "list_alerts", "list_cases", "case_detail", "step", "account_action", "CLOSE_REASONS",
           "ACCOUNT_ACTIONS", "action_subject", "case_report", "REPORT_FORMAT"]

SEVERITY_RANK = {"low": 1, "medium": 2, "high": 3}
CLOSE_REASONS = ("false_positive", "confirmed_abuse", "resolved", "duplicate", "reported")
STEPS = ("assign", "note", "escalate", "close")
ACCOUNT_ACTIONS = ("freeze_account", "pause_withdrawals", "require_2fa_reset", "report")
NEEDS_IDENTITY = ("freeze_account", "pause_withdrawals", "require_2fa_reset")  # actions on a customer's account
REPORT_FORMAT = "ringfence-suspicious-activity-report/1"
PAUSE_S = 24 * 3600
MAX_NOTE = 2_000
MAX_LIST = 500


class CursorMoved(RuntimeError):
    """The stored cursor is not where this scorer left it: another scorer (a second process on the same
    store, a scorer process of an engine that died still finishing its last step) stored the alerts of
    these events first. Nothing of this scorer's step was written; it must load the cursor anew."""


def store_hits(store: Store, hits: list[Hit], now_ms: int, *, cursor: tuple[str, int, int] | None = None) -> list[int]:
    """Store alerts; each joins its account's open case or opens one. Returns the case ids touched.
    `cursor` (name, event id, the position it was read at) is moved in the same transaction, only
    from that position (one conditional UPDATE, or the INSERT of a cursor not stored yet, whose
    primary key refuses a second): else CursorMoved and nothing is written, so two scorers on one
    stream never store the same event's alerts twice."""
    touched: list[int] = []
    with store.tx() as db:
        if cursor is not None:
            name, position, expected = cursor
            moved = db.connection().execute(update(MonitoringCursor).where(
                MonitoringCursor.name == name, MonitoringCursor.position == expected).values(position=position)).rowcount
            if moved != 1:
                stored = db.scalar(select(MonitoringCursor.position).where(MonitoringCursor.name == name))
                if stored is not None or expected != 0:
                    raise CursorMoved(f"the monitoring cursor {name!r} is at {stored}, not at {expected} where this scorer read it")
                db.add(MonitoringCursor(name=name, position=position))
                db.flush()  # a concurrent first INSERT fails here (IntegrityError), before any alert is added
        for h in hits:
            case = db.scalars(select(MonitoringCase).where(MonitoringCase.account_id == h.account_id[:40],
                                                           MonitoringCase.status != "closed")
                              .order_by(MonitoringCase.id.desc()).limit(1)).first()
            if case is None:
                case = MonitoringCase(account_id=h.account_id[:40], status="open", severity=h.severity, assignee="",
                                      opened_at_ms=now_ms, updated_at_ms=now_ms, closed_reason="")
                db.add(case)
                db.flush()
            elif SEVERITY_RANK[h.severity] > SEVERITY_RANK.get(case.severity, 0):
                case.severity = h.severity
            case.updated_at_ms = now_ms
            db.add(MonitoringAlert(rule=h.rule, severity=h.severity, account_id=h.account_id[:40], explanation=h.explanation,
                                   evidence=json.dumps(list(h.evidence)), at_ms=h.at_ms, case_id=case.id, score=h.score,
                                   features=json.dumps(features_json(h.features))))
            touched.append(case.id)
    return touched


def _alert(a: MonitoringAlert) -> dict[str, Any]:
    return {"alert_id": a.id, "rule": a.rule, "severity": a.severity, "account_id": a.account_id,
            "explanation": a.explanation, "evidence": json.loads(a.evidence), "at_ms": a.at_ms, "case_id": a.case_id,
            "score": a.score, "features": json.loads(a.features or "[]")}


def _case(c: MonitoringCase, alerts: int) -> dict[str, Any]:
    return {"case_id": c.id, "account_id": c.account_id, "status": c.status, "severity": c.severity, "assignee": c.assignee,
            "opened_at_ms": c.opened_at_ms, "updated_at_ms": c.updated_at_ms, "closed_reason": c.closed_reason,
            "alerts": alerts}


def _limit(limit: object) -> int:
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_LIST:
        raise ValidationError(f"must be an integer from 1 to {MAX_LIST}", field="limit")
    return limit


def list_alerts(store: Store, *, limit: int = 100, account_id: str = "", rule: str = "") -> list[dict[str, Any]]:
    q = select(MonitoringAlert).order_by(MonitoringAlert.id.desc()).limit(_limit(limit))
    if account_id:
        q = q.where(MonitoringAlert.account_id == account_id)
    if rule:
        q = q.where(MonitoringAlert.rule == rule)
    with store.tx() as db:
        return [_alert(a) for a in db.scalars(q)]


def list_cases(store: Store, *, status: str = "", limit: int = 100) -> list[dict[str, Any]]:
    if status and status not in ("open", "escalated", "closed", "active"):
        raise ValidationError("must be open, escalated, closed or active (open and escalated)", field="status")
    q = select(MonitoringCase).order_by(MonitoringCase.id.desc()).limit(_limit(limit))
    if status == "active":
        q = q.where(MonitoringCase.status != "closed")
    elif status:
        q = q.where(MonitoringCase.status == status)
    with store.tx() as db:
        cases = list(db.scalars(q))
        counts = dict(db.execute(select(MonitoringAlert.case_id, func.count()).where(
            MonitoringAlert.case_id.in_([c.id for c in cases])).group_by(MonitoringAlert.case_id)).all())
        return [_case(c, int(counts.get(c.id, 0))) for c in cases]


def case_detail(store: Store, case_id: int) -> dict[str, Any]:
    with store.tx() as db:
        c = db.get(MonitoringCase, case_id)
        if c is None:
            raise NotFound(f"no case {case_id}", field="case_id")
        alerts = [_alert(a) for a in db.scalars(select(MonitoringAlert).where(MonitoringAlert.case_id == case_id)
                                                   .order_by(MonitoringAlert.id).limit(MAX_LIST))]
        actions = [{"staff_id": a.staff_id, "action": a.action, "detail": a.detail, "decision": a.decision, "at_ms": a.at_ms}
                   for a in db.scalars(select(MonitoringCaseAction).where(MonitoringCaseAction.case_id == case_id)
                                       .order_by(MonitoringCaseAction.id))]
        return {**_case(c, len(alerts)), "alert_list": alerts, "actions": actions}


def _text(value: object, field: str, *, required: bool = True, max_chars: int = MAX_NOTE) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()) or len(value) > max_chars:
        raise ValidationError(f"must be a non-empty string of at most {max_chars} characters", field=field)
    return value.strip()


def step(store: Store, case_id: int, staff_id: str, action: str, body: dict[str, Any], now_ms: int,
         is_analyst: Callable[[str], bool]) -> dict[str, Any]:
    """One workflow step (assign, note, escalate, close); validates everything before changing anything."""
    if action not in STEPS:
        raise ValidationError(f"must be one of {', '.join(STEPS)}", field="action")
    detail = ""
    if action == "assign":
        assignee = _text(body.get("assignee"), "assignee", max_chars=64)
        if not is_analyst(assignee):
            raise ValidationError(f"{assignee!r} is not an active analyst", field="assignee")
        detail = assignee
    elif action == "note":
        detail = _text(body.get("note"), "note")
    elif action == "escalate":
        detail = _text(body.get("note"), "note")
    else:
        reason = body.get("reason")
        if reason not in CLOSE_REASONS:
            raise ValidationError(f"must be one of {', '.join(CLOSE_REASONS)}", field="reason")
        detail = f"{reason}: {_text(body.get('note'), 'note')}"
    with store.tx() as db:
        c = db.get(MonitoringCase, case_id)
        if c is None:
            raise NotFound(f"no case {case_id}", field="case_id")
        if c.status == "closed":
            raise Conflict(f"case {case_id} is closed ({c.closed_reason})", field="case_id")
        if action == "escalate" and c.status == "escalated":
            raise Conflict(f"case {case_id} is already escalated", field="case_id")
        if action == "assign":
            c.assignee = detail
        elif action == "escalate":
            c.status = "escalated"
        elif action == "close":
            c.status = "closed"
            c.closed_reason = detail
        c.updated_at_ms = now_ms
        db.add(MonitoringCaseAction(case_id=case_id, staff_id=staff_id, action=action, detail=detail, decision="",
                                    decision_nonce=None, at_ms=now_ms))
    return case_detail(store, case_id)


def action_subject(case_id: int, account_id: str, reason: str) -> list[Any]:
    """What an analyst signs (action `monitoring.<action>`) to act on a case's account."""
    return [case_id, account_id, reason]


def account_action(store: Store, case_id: int, staff_id: str, action: str, reason: str, token: str,
                   verify: Callable[[str, list[Any]], Any], now_ms: int, now_s: int, identity: Any = None) -> dict[str, Any]:
    """Freeze the case's account, pause its withdrawals, require a second-factor reset, or file a
    suspicious-activity report, on the analyst's signed decision.

    `verify(action_name, subject)` checks the decision signature against the staff register (and
    raises); the nonce is then stored unique, so a token works once. `identity` is the identity
    service's context (a second-factor reset goes through its API)."""
    if action not in ACCOUNT_ACTIONS:
        raise ValidationError(f"must be one of {', '.join(ACCOUNT_ACTIONS)}", field="action")
    reason = _text(reason, "reason", max_chars=2_000 if action == "report" else 500)
    if action == "require_2fa_reset" and identity is None:
        raise Conflict("this node runs no identity service to reset second factors in", field="action")
    with store.tx() as db:
        c = db.get(MonitoringCase, case_id)
        if c is None:
            raise NotFound(f"no case {case_id}", field="case_id")
        if c.status == "closed":
            raise Conflict(f"case {case_id} is closed ({c.closed_reason})", field="case_id")
        account_id = c.account_id
    sig = verify("monitoring." + action, action_subject(case_id, account_id, reason))
    try:
        with store.tx() as db:
            user = db.scalars(select(User).where(User.account_id == account_id)).first()
            if user is None and action in NEEDS_IDENTITY:
                raise NotFound(f"account {account_id!r} has no identity record to act on", field="account_id")
            from ..identity.events import record_event

            if action == "report":
                pass  # the report is the case log entry below (with its signed decision): nothing changes on the account
            elif action == "require_2fa_reset":
                from ..identity.second_factor import require_reset

                assert user is not None
                require_reset(identity, db, user, by=f"{staff_id} (case {case_id})")
            elif action == "freeze_account":
                assert user is not None
                user.frozen = True
                db.execute(update(AuthSession).where(AuthSession.user_id == user.id, AuthSession.revoked_at_s.is_(None))
                           .values(revoked_at_s=now_s))
                db.execute(update(ApiKey).where(ApiKey.user_id == user.id, ApiKey.revoked_at_s.is_(None)).values(revoked_at_s=now_s))
                record_event(db, user_id=user.id, kind="account_frozen", at_s=now_s, detail=f"by {staff_id} (case {case_id}): {reason}")
            else:
                assert user is not None
                user.withdrawals_locked_until_s = max(user.withdrawals_locked_until_s, now_s + PAUSE_S)
            c2 = db.get(MonitoringCase, case_id)
            assert c2 is not None
            c2.updated_at_ms = now_ms
            db.add(MonitoringCaseAction(case_id=case_id, staff_id=staff_id, action=action, detail=reason, decision=token,
                                        decision_nonce=f"{sig.staff_id}/{sig.nonce}"[:64], at_ms=now_ms))
    except IntegrityError:
        raise Conflict("this decision token was already used (a replay); sign the action again", field="decision") from None
    return case_detail(store, case_id)


def case_report(store: Store, case_id: int, now_ms: int) -> dict[str, Any]:
    """The case's suspicious-activity report as one JSON document (`REPORT_FORMAT`): the subject
    account, every report filed on the case (the analyst, the narrative, the signed decision), the
    alerts with their explanations and evidence, and the case log. NotFound until a report is filed."""
    detail = case_detail(store, case_id)
    reports = [a for a in detail["actions"] if a["action"] == "report"]
    if not reports:
        raise NotFound(f"no suspicious-activity report was filed on case {case_id}; file one with the action report",
                       field="case_id")
    return {
        "format": REPORT_FORMAT, "generated_at_ms": now_ms,
        "case": {k: detail[k] for k in ("case_id", "account_id", "status", "severity", "assignee", "opened_at_ms",
                                        "updated_at_ms", "closed_reason")},
        "subject": {"account_id": detail["account_id"]},
        "reports": [{"filed_by": a["staff_id"], "filed_at_ms": a["at_ms"], "narrative": a["detail"],
                     "signed_decision": a["decision"], "signed_action": "monitoring.report",
                     "signed_subject": action_subject(case_id, detail["account_id"], a["detail"])} for a in reports],
        "alerts": [{k: al[k] for k in ("alert_id", "rule", "severity", "account_id", "explanation", "evidence", "at_ms",
                                        "score", "features")} for al in detail["alert_list"]],
        "case_log": detail["actions"],
    }
