"""`ringfence audit withdrawal ID --data DIR`: re-verify a withdrawal's decisions offline, from the journal.

The auditor replays the node's journal from the beginning (no snapshot: every command is seen) and
collects, for one withdrawal:

* the policy decision: the rule that matched, its reasons, the facts it saw and the policy text
  that was active when the decision was applied;
* every staff decision about it (approvals, rejections, manual reviews) with its signature,
  whether the engine accepted it, and an independent check of that signature: the decision's
  canonical message is rebuilt from the journaled withdrawal fields and verified against the
  signer's key as registered at that sequence number (added before it, not yet removed), with the
  role held and the expiry after the command's sequencer time;
* the staff keys valid when those decisions were applied;
* the signing, broadcast and settlement records (txid).

Nothing is written; it works while `serve` runs (it reads the journal like `journal verify`).
Exit status 0 when every accepted staff decision verifies, 3 when one does not, 1 on errors.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import typer
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from rich.console import Console

from ..cli_paths import tty_console
from ..errors import RingfenceError
from .decisions import decision_message

__all__ = ["audit_app", "audit_withdrawal", "recent_decisions", "AUDIT_MAX_ROWS"]

audit_app = typer.Typer(help="Offline audits from a node's journal.\n\nExample: ringfence audit withdrawal w-123 --data ./ringfence-data",
                        no_args_is_help=True)
console = tty_console(width=160)
EXIT_UNVERIFIED = 3

_SIGNED = {
    "ApproveWithdrawalSigned": ("withdrawal.approve", "approve"),
    "RejectWithdrawal": ("withdrawal.reject", "reject"),
    "ResolveManualReviewSigned": ("withdrawal.manual_review", "manual_review"),
}
_RECORDS = ("RequestWithdrawal", "ConfirmWithdrawalEmail", "RecordRiskReview", "DecideWithdrawal", "AuthorizeSigning",
            "RecordSignedTx", "RecordSignedBatch", "RecordBroadcast", "SettleWithdrawal", "FailWithdrawal", "CancelWithdrawal",
            "ApproveWithdrawal", "ResolveManualReview")


def _role_of(name: str, command: Any) -> str:
    if name == "ApproveWithdrawalSigned":
        return str(command.role)
    return "approver" if name == "RejectWithdrawal" else "analyst"


def _subject(name: str, command: Any, w: Any) -> list[Any]:
    from ..custody.staff_cmds import approve_subject, manual_review_subject, reject_subject

    if name == "ApproveWithdrawalSigned":
        return approve_subject(w, command.role)
    if name == "RejectWithdrawal":
        return reject_subject(w, command.reason)
    return manual_review_subject(w, command.approve, command.reason)


def audit_withdrawal(data_dir: Path, withdrawal_id: str) -> dict[str, Any]:
    """The audit record of one withdrawal, every signature re-verified (see the module docstring)."""
    from ..app import replay_journal
    from ..custody.state import custody_state
    from ..engine.core import CommandRejected
    from .state import staff_of

    seen: list[dict[str, Any]] = []
    policy_at_decision: dict[str, str] = {}

    def on_batch(engine: Any, batch: Any, outputs: list[list[Any]]) -> None:
        for i, command in enumerate(batch.commands):
            name = type(command).__name__
            named = getattr(command, "withdrawal_id", None) == withdrawal_id or withdrawal_id in getattr(command, "withdrawal_ids", ())
            if not named or (name not in _SIGNED and name not in _RECORDS):
                continue
            events = outputs[i] if i < len(outputs) else []
            rejected = next((e for e in events if isinstance(e, CommandRejected)), None)
            seen.append({"seq": batch.first_seq + i, "ts_ns": batch.ts_ns, "command": command, "name": name,
                         "accepted": rejected is None, "refusal": rejected.message if rejected is not None else ""})
            if name == "DecideWithdrawal" and rejected is None:
                policy_at_decision["text"] = custody_state(engine).policy_text

    engine, _, _ = replay_journal(data_dir, use_snapshots=False, on_batch=on_batch)
    w = custody_state(engine).withdrawals.get(withdrawal_id)
    if w is None:
        raise RingfenceError(f"the journal in {data_dir} records no withdrawal {withdrawal_id!r}")
    staff = staff_of(engine)
    rec = SimpleNamespace(id=w.id, asset=w.asset, wallet=w.wallet, address=w.address, amount_minor=w.amount_minor)
    decisions, keys_used = [], set()
    for item in seen:
        if item["name"] not in _SIGNED:
            continue
        c, (action, kind) = item["command"], _SIGNED[item["name"]]
        sig = c.decision
        role = _role_of(item["name"], c)
        member = staff.members.get(sig.staff_id)
        checks = {"registered": member is not None}
        if member is not None:
            keys_used.add(member.staff_id)
            checks["key_valid_at_seq"] = member.valid_at(item["seq"])
            checks["role_held"] = role in member.roles
            checks["not_expired"] = sig.expires_ns > item["ts_ns"]
            try:
                Ed25519PublicKey.from_public_bytes(bytes.fromhex(member.public_key)).verify(
                    bytes.fromhex(sig.signature),
                    decision_message(action, _subject(item["name"], c, rec), sig.staff_id, sig.nonce, sig.expires_ns))
                checks["signature"] = True
            except (InvalidSignature, ValueError):
                checks["signature"] = False
        decisions.append({
            "seq": item["seq"], "kind": kind, "staff_id": sig.staff_id, "role": role, "accepted": item["accepted"],
            "refusal": item["refusal"], "nonce": sig.nonce, "expires_ns": sig.expires_ns, "signature": sig.signature,
            "checks": checks, "verified": all(checks.values()),
        })
    accepted = [d for d in decisions if d["accepted"]]
    # Decisions journaled before staff signatures existed carry a bare name: nothing to verify.
    unsigned = [{"seq": i["seq"], "command": i["name"]} for i in seen
                if i["name"] in ("ApproveWithdrawal", "ResolveManualReview") and i["accepted"]]
    return {
        "withdrawal_id": w.id, "account_id": w.account_id, "asset": w.asset, "wallet": w.wallet, "address": w.address,
        "amount_minor": str(w.amount_minor), "state": w.state, "txid": w.txid,
        "policy": {"rule": w.rule, "action": w.decision, "reasons": list(w.decision_reasons),
                   "required_approvals": w.required_approvals, "roles": list(w.approver_roles),
                   "facts": json.loads(w.facts_json) if w.facts_json else None,
                   "policy_text": policy_at_decision.get("text", "")},
        "decisions": decisions,
        "staff_keys": [staff.members[s].as_dict() for s in sorted(keys_used)],
        "records": [{"seq": i["seq"], "command": i["name"], "accepted": i["accepted"]} for i in seen if i["name"] in _RECORDS],
        "unsigned_legacy_decisions": unsigned,
        "verified": all(d["verified"] for d in accepted) and not unsigned,
        "journal_seq": engine.last_seq,
    }


@audit_app.command("withdrawal")
def withdrawal(
    withdrawal_id: str = typer.Argument(..., help="The withdrawal id."),
    data: Path = typer.Option(..., "--data", help="The node's data directory (`serve --data DIR`); read only."),
    as_json: bool = typer.Option(False, "--json", help="Print the audit record as JSON."),
) -> None:
    """Re-verify a withdrawal offline: the policy rule, each approval's signature, the staff keys valid then.

    Example: ringfence audit withdrawal w-123 --data ./ringfence-data
    """
    from ..cli_paths import require_node_dir

    node_dir = require_node_dir(data, "--data")
    try:
        record = audit_withdrawal(node_dir, withdrawal_id)
    except RingfenceError as err:
        Console(stderr=True).print(f"[bold red]error:[/] {err}")
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(record, indent=2))
    else:
        p = record["policy"]
        console.print(f"withdrawal {record['withdrawal_id']}: {record['amount_minor']} {record['asset']} minor from "
                      f"{record['wallet']} to {record['address']} for {record['account_id']} — {record['state']}"
                      + (f", txid {record['txid']}" if record["txid"] else ""))
        console.print(f"policy rule {p['rule'] or '(default)'!r} -> {p['action']}: {'; '.join(p['reasons'])}"
                      + (f" (needs {p['required_approvals']} of roles {', '.join(p['roles'])})" if p["required_approvals"] else ""))
        for d in record["decisions"]:
            mark = "[green]verified[/]" if d["verified"] else f"[red]NOT verified {d['checks']}[/]"
            status = "accepted" if d["accepted"] else f"refused ({d['refusal']})"
            console.print(f"  seq {d['seq']}: {d['kind']} by {d['staff_id']} as {d['role']} — {status}; signature "
                          f"{d['signature'][:24]}… nonce {d['nonce']} — {mark}")
        for k in record["staff_keys"]:
            console.print(f"  key of {k['staff_id']} ({', '.join(k['roles'])}): {k['public_key']} valid from seq "
                          f"{k['added_seq'] + 1}" + (f" to {k['removed_seq'] - 1}" if k["removed_seq"] else ""))
        console.print("[bold green]every accepted staff decision verifies[/]" if record["verified"]
                      else "[bold red]an accepted staff decision does not verify[/]")
    if not record["verified"]:
        raise typer.Exit(EXIT_UNVERIFIED)


# ------------------------------------------------------------------------------- the live audit trail

#: How far back the staff console's audit trail looks (commands), and how many rows it answers at most.
AUDIT_WINDOW = 50_000
AUDIT_MAX_ROWS = 500


def recent_decisions(node_dir: Path, upto_seq: int, limit: int = 100, window: int = AUDIT_WINDOW) -> list[dict[str, Any]]:
    """The staff decisions journaled in the last `window` commands up to `upto_seq`, newest first
    (at most `limit`): every command a staff member submitted (source `staff:ID`) or that carries
    staff signatures (`approvals`, `decision`), with who signed it, its first field (what it is
    about) and its reason. Read-only: it reads the journal like `ringfence journal sources`."""
    from ..app import new_engine
    from ..journal.journal import scan

    if not 1 <= limit <= AUDIT_MAX_ROWS:
        raise RingfenceError(f"limit is 1..{AUDIT_MAX_ROWS}", field="limit")
    from_seq = max(1, upto_seq - window + 1)
    codec = new_engine().codec
    rows: list[dict[str, Any]] = []
    for record in scan(node_dir / "journal", decode_from_seq=from_seq):
        if record.last_seq < from_seq:
            continue
        batch = codec.batch.decode(record.payload)
        sources = getattr(batch, "sources", None) or []
        for i, command in enumerate(batch.commands):
            seq = batch.first_seq + i
            if seq < from_seq or seq > upto_seq:
                continue
            source = sources[i] if i < len(sources) else ""
            signed = [s.staff_id for s in getattr(command, "approvals", None) or [] if hasattr(s, "staff_id")]
            decider = getattr(getattr(command, "decision", None), "staff_id", None)
            if isinstance(decider, str):
                signed.append(decider)
            if not signed and not source.startswith("staff:"):
                continue
            fields = command.__struct_fields__
            about = getattr(command, fields[0]) if fields else ""
            inner = getattr(about, "__struct_fields__", None)  # a signed form of a command (ListMarketSigned.market,
            if inner:                                          # RegisterAssetSigned.asset): what that one is about
                about = getattr(about, inner[0])
            rows.append({"seq": seq, "command": type(command).__name__, "source": source, "signed_by": signed,
                         "about": about if isinstance(about, (str, int)) and not isinstance(about, bool) else "",
                         "reason": str(getattr(command, "reason", "") or "")[:300]})
    return rows[::-1][:limit]
