"""Monitoring on the admin API (`/admin/v1`, staff-signed requests like every admin endpoint):

* `GET /admin/v1/alerts?limit=&account_id=&rule=` — newest alerts with their explanation and evidence;
* `GET /admin/v1/cases?status=open|escalated|closed|active&limit=` — cases; `GET /admin/v1/cases/{id}`
  — one case with its alerts and its log;
* `POST /admin/v1/cases/{id}/assign|note|escalate|close` — the analyst workflow;
* `POST /admin/v1/cases/{id}/actions` — `{"action": "freeze_account"|"pause_withdrawals"|
  "require_2fa_reset"|"report", "reason", "decision"}`: an action on the analyst's signed decision (cases.py);
* `GET /admin/v1/cases/{id}/report` — the case's suspicious-activity report as a JSON document;
* `GET /admin/v1/baselines?account_id=` — the behavioural model's baseline of one account;
* `GET /admin/v1/model` — the model's feature weights learnt from case decisions (feedback.py);
* `GET /admin/v1/monitoring` — the worker: rules, cursor, lag, outbox counters.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

from ..errors import ValidationError
from ..staff.decisions import ANALYST
from ..staff.state import StaffRefused
from . import cases

__all__ = ["install"]


def _query_int(value: str | None, name: str, default: int) -> int:
    if value is None or value == "":
        return default
    if not (value.isascii() and value.isdigit() and len(value) <= 6):
        raise ValidationError("must be a whole number", field=name)
    return int(value)


def install(endpoint: Callable[..., Any], exchange: Any, monitor: Any, parse_decision: Callable[[str, dict[str, Any]], Any]) -> None:
    store = monitor.store

    def query(body: dict[str, Any]) -> dict[str, str]:
        return body.get("__query__", {})  # type: ignore[no-any-return]

    def analysts_only(caller: str) -> None:
        """Alerts, cases, links and baselines describe customers (devices, networks, hours, amounts):
        analysts read them; an operator or a policy admin has no need to."""
        if not is_analyst(caller):
            raise StaffRefused("role-required", f"{caller!r} is no analyst: monitoring data about customers is for analysts",
                               field="X-RF-Staff")

    @endpoint("GET", "/alerts", "Monitoring alerts, newest first (rule, severity, account, explanation, evidence event ids)")
    async def get_alerts(caller: str, body: dict[str, Any]) -> Any:
        analysts_only(caller)
        q = query(body)
        return {"alerts": cases.list_alerts(store, limit=_query_int(q.get("limit"), "limit", 100),
                                            account_id=q.get("account_id", ""), rule=q.get("rule", ""))}

    @endpoint("GET", "/cases", "Monitoring cases, newest first (status open|escalated|closed|active)")
    async def get_cases(caller: str, body: dict[str, Any]) -> Any:
        analysts_only(caller)
        q = query(body)
        return {"cases": cases.list_cases(store, status=q.get("status", ""), limit=_query_int(q.get("limit"), "limit", 100))}

    @endpoint("GET", "/cases/{case_id}", "One case: its alerts and its log of analyst steps")
    async def get_case(caller: str, body: dict[str, Any], case_id: str) -> Any:
        analysts_only(caller)
        return cases.case_detail(store, _query_int(case_id, "case_id", 0))

    @endpoint("GET", "/cases/{case_id}/report", "The case's suspicious-activity report (filed with the action report) "
              "as a JSON document: the subject, the signed reports, the alerts with their evidence, the case log")
    async def get_case_report(caller: str, body: dict[str, Any], case_id: str) -> Any:
        analysts_only(caller)
        return {"report": cases.case_report(store, _query_int(case_id, "case_id", 0), time.time_ns() // 1_000_000)}

    @endpoint("GET", "/links", "Linked-account clusters (shared IP, device, withdrawal destination, deposit source, "
              "trades between them); ?account_id= for one account's cluster")
    async def get_links(caller: str, body: dict[str, Any]) -> Any:
        analysts_only(caller)
        account = query(body).get("account_id", "")
        if account:
            return {"cluster": await asyncio.to_thread(monitor.clusters, account)}
        return {"clusters": await asyncio.to_thread(monitor.clusters)}

    @endpoint("GET", "/baselines", "The behavioural model's baseline of one account (?account_id=): its devices, networks, "
              "countries, sign-in hours, endpoints, withdrawals and orders as learnt")
    async def get_baseline(caller: str, body: dict[str, Any]) -> Any:
        analysts_only(caller)
        account = query(body).get("account_id", "")
        if not account:
            raise ValidationError("name the account whose baseline to show", field="account_id")
        return {"baseline": await asyncio.to_thread(monitor.baseline, account)}

    @endpoint("GET", "/model", "The behavioural model's feature weights learnt from analysts' case decisions (closed as "
              "confirmed_abuse or false_positive), with every decision that moved them")
    async def get_model(caller: str, body: dict[str, Any]) -> Any:
        analysts_only(caller)
        return await asyncio.to_thread(monitor.model_status)

    @endpoint("GET", "/monitoring", "The monitoring worker: rules, cursor, lag, outbox counters")
    async def get_monitoring(caller: str, body: dict[str, Any]) -> Any:
        return await asyncio.to_thread(monitor.status)

    def is_analyst(staff_id: str) -> bool:
        """An active staff member with the analyst role: who works cases and whom a case is assigned to."""
        from ..staff import staff_of

        def read(engine: Any) -> bool:
            m = staff_of(engine).members.get(staff_id)
            return m is not None and m.status == "active" and ANALYST in m.roles

        return bool(exchange.read(read))

    def publish(caller: str, what: str, case_id: int) -> None:
        monitor.outbox.publish("staff_action", source="admin", data={"staff_id": caller, "action": what, "case_id": case_id})

    for name in cases.STEPS:
        def make(step_name: str) -> None:
            @endpoint("POST", f"/cases/{{case_id}}/{step_name}", f"Case workflow: {step_name} (signed staff request)")
            async def case_step(caller: str, body: dict[str, Any], case_id: str) -> Any:
                cid = _query_int(case_id, "case_id", 0)
                if not is_analyst(caller):  # an operator or a policy admin must not close or take over a case
                    raise StaffRefused("role-required", f"{caller!r} is no analyst: cases are worked by analysts", field="X-RF-Staff")
                out = cases.step(store, cid, caller, step_name, body, time.time_ns() // 1_000_000, is_analyst)
                publish(caller, "case." + step_name, cid)
                return {"accepted": "case." + step_name, **out}

            case_step.__name__ = f"case_{step_name}"

        make(name)

    @endpoint("POST", "/cases/{case_id}/actions",
              "Freeze the case's account, pause its withdrawals, require a second-factor reset, or file a suspicious-activity "
              "report (the analyst's signed decision, recorded in the case)")
    async def case_action(caller: str, body: dict[str, Any], case_id: str) -> Any:
        from ..staff.state import check_decision

        cid = _query_int(case_id, "case_id", 0)
        sig = parse_decision(caller, body)
        action, reason = body.get("action"), body.get("reason")
        if not isinstance(action, str):
            raise ValidationError(f"must be one of {', '.join(cases.ACCOUNT_ACTIONS)}", field="action")

        def verify(action_name: str, subject: list[Any]) -> Any:
            exchange.read(lambda engine: check_decision(engine, action_name, subject, sig, ANALYST))
            return sig

        token = body["decision"]
        out = cases.account_action(store, cid, caller, action, reason if isinstance(reason, str) else "", token, verify,
                                   time.time_ns() // 1_000_000, time.time_ns() // 1_000_000_000,
                                   identity=getattr(monitor, "identity", None))
        publish(caller, "case." + action, cid)
        return {"accepted": "case." + action, **out}
