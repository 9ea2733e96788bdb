"""Custody's keys and vaults on the admin API (`/admin/v1`, staff-signed requests like every admin
endpoint; docs/custody.md, docs/keys.md):

* `GET /admin/v1/vault-refills` — the vaults and their refills (newest first) with state, approvers,
  nominated holders and, while it waits for them, the PSBT (what the staff console page shows);
* `POST /admin/v1/vault-refills` — `{"from": "cold"|"warm", "amount": "1.5", "refill_id", "approvals"}`:
  the node builds the refill PSBT and submits the operator quorum's decision
  (`AuthorizeVaultRefillSigned`, verified in the engine); answers the PSBT, its txid, the journal
  sequence and the nominated holders;
* `POST /admin/v1/vault-refills/{id}/submit` — `{"psbts": [...]}` (an operator): the holders'
  signatures come back; finalised only with exactly the nominated holders, journaled
  (`RecordTransferSigned`) and then broadcast;
* `POST /admin/v1/vault-refills/{id}/cancel` — `{"reason", "decision"}` (one operator): a refill
  nobody signed is dropped (`CancelVaultRefillSigned`) and can never be signed; its coins are free;
* `GET /admin/v1/keys/{key_id}` — a threshold key's signer set: generation, threshold, each signer's
  URL and pinned certificate fingerprint;
* `POST /admin/v1/keys/{key_id}/signers` — `{"id": N}` (an operator; only when `serve` runs the
  signers itself): start signer N, holding no share yet; answers its URL and certificate;
* `POST /admin/v1/keys/{key_id}/reshare` — `{"generation", "signers": [{"id", "url"?, "certificate"?}],
  "threshold", "reason", "approvals", "remove"?}`: the operator quorum's decision (`ReshareSignersSigned`;
  `remove`, optional, must name today's holders only, checked before anything is journaled),
  then the reshare ceremony with the signer processes; old shares are unusable afterwards.

Nothing here writes the journal: every change is a command submitted through the exchange.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from starlette.concurrency import run_in_threadpool

from ..errors import Forbidden, NotFound, ValidationError
from ..money import parse_amount
from ..staff.decisions import OPERATOR

__all__ = ["install"]


def install(endpoint: Callable[..., Any], exchange: Any, custody: Any,
            callers_approvals: Callable[[str, dict[str, Any]], Any], submit: Callable[[Any], Any],
            callers_decision: Callable[[str, dict[str, Any]], Any]) -> None:
    from ..staff import staff_of

    def operator(caller: str, what: str) -> None:
        roles = exchange.read(lambda e: list(m.roles) if (m := staff_of(e).members.get(caller)) else [])
        if OPERATOR not in roles:
            raise Forbidden(f"{what} is for operators; {caller!r} holds {roles or 'no role'}", field="X-RF-Staff")

    def vault(tier: object) -> Any:
        vaults = getattr(custody, "btc_vaults", {}) or {}
        if not isinstance(tier, str) or tier not in vaults:
            raise ValidationError(f"must be one of {', '.join(sorted(vaults)) or '(no vaults on this node)'}", field="from")
        return vaults[tier]

    def text(body: dict[str, Any], name: str) -> str:
        value = body.get(name)
        if not isinstance(value, str) or not value:
            raise ValidationError("a non-empty string is required", field=name)
        return value

    def authorized(result: dict[str, Any]) -> tuple[int, list[str]]:
        for e in result["events"]:
            if e.get("kind") == "vault_refill.authorized":
                detail = e["detail"]
                return int(detail[1].removeprefix("seq=")), [d.removeprefix("approved_by=") for d in detail[2:]]
        raise ValidationError("the engine did not authorize the refill", field="approvals")

    submitting = asyncio.Lock()

    @endpoint("GET", "/vault-refills", "The vaults and their refills, newest first: state, amount, txid, approvers, "
              "nominated holders, and the PSBT of a refill awaiting the holders' signatures")
    async def list_refills(caller: str, body: dict[str, Any]) -> Any:
        vaults = getattr(custody, "btc_vaults", {}) or {}
        holders = {tier: v.holder_files(custody.data_dir) for tier, v in vaults.items()}
        rows = []
        for tier, v in sorted(vaults.items()):
            for doc in v.refills():
                selected = list((doc.get("nomination") or {}).get("selected", []))
                rows.append({"refill_id": doc["id"], "from": tier, "from_wallet": doc["from_wallet"], "to_wallet": doc["to_wallet"],
                             "amount_minor": str(doc["amount_minor"]), "fee_minor": str(doc["fee_minor"]), "txid": doc["txid"],
                             "state": doc.get("state", ""), "approved_by": list(doc.get("approved_by", [])),
                             "journal_position": doc.get("journal_position"), "nominated_holders": selected,
                             "nominated_holder_files": [holders[tier].get(fp, "") for fp in selected],
                             "psbt": doc["psbt"] if doc.get("state") == "awaiting_signatures" else ""})
        return {"vaults": [{"from": tier, "wallet": v.wallet_name, "address": v.address, "signer_type": v.signer_type}
                           for tier, v in sorted(vaults.items())],
                "refills": rows, "hot_key_id": getattr(getattr(custody, "btc_hot_signer", None), "key_id", "")}

    @endpoint("POST", "/vault-refills", "A cold/warm -> hot BTC refill (AuthorizeVaultRefillSigned: operator quorum)")
    async def create_refill(caller: str, body: dict[str, Any]) -> Any:
        from ..custody.vault_cmds import AuthorizeVaultRefillSigned

        v = vault(body.get("from", "cold"))
        amount_minor = parse_amount(text(body, "amount"), 8, field="amount", allow_zero=False)
        approvals = callers_approvals(caller, body)
        operator(caller, "a refill")  # before any work: building one holds the chain lock
        doc = await run_in_threadpool(v.build_refill, custody, text(body, "refill_id"), amount_minor)
        result = await submit(AuthorizeVaultRefillSigned(doc["id"], "BTC", doc["from_wallet"], doc["to_wallet"],
                                                         amount_minor, doc["fee_minor"], doc["txid"], approvals))
        position, approvers = authorized(result)
        doc = v.record_authorized(doc, position, approvers)
        holders = v.holder_files(custody.data_dir)
        return {**doc, "nominated_holder_files": [holders.get(fp, "") for fp in doc["nomination"]["selected"]]}

    @endpoint("POST", "/vault-refills/{refill_id}/submit", "The nominated holders' signed PSBTs of a refill (an operator)")
    async def submit_refill(caller: str, body: dict[str, Any], refill_id: str) -> Any:
        from ..custody.commands import RecordTransferSigned

        operator(caller, "submitting a refill")
        psbts = body.get("psbts")
        if not isinstance(psbts, list) or not all(isinstance(p, str) for p in psbts):
            raise ValidationError("a list of base64 PSBTs", field="psbts")
        v = vault("warm" if refill_id.startswith("warm") else "cold")
        async with submitting:  # finalise -> journal -> broadcast as one: a second submit sees the first's state
            doc, raw = await run_in_threadpool(v.finalize, refill_id, psbts)
            await submit(RecordTransferSigned(doc["id"], "BTC", doc["from_wallet"], doc["to_wallet"], int(doc["amount_minor"]),
                                              int(doc["fee_minor"]), doc["txid"], raw.hex()))
            return await run_in_threadpool(v.broadcast, custody, doc, raw)

    @endpoint("POST", "/vault-refills/{refill_id}/cancel", "Drop a refill nobody signed (CancelVaultRefillSigned: one operator)")
    async def cancel_refill(caller: str, body: dict[str, Any], refill_id: str) -> Any:
        from ..custody.vault_cmds import CancelVaultRefillSigned

        v = vault("warm" if refill_id.startswith("warm") else "cold")
        v.refill(refill_id)  # a refill of this node's
        decision = callers_decision(caller, body)
        await submit(CancelVaultRefillSigned(refill_id, "BTC", text(body, "reason"), decision))
        return await run_in_threadpool(v.cancelled, refill_id)

    # ---- threshold keys: the signer set, reshare

    def hot_key(key_id: str) -> Any:
        signer = getattr(custody, "btc_hot_signer", None)
        if signer is None or key_id != signer.key_id:
            raise NotFound(f"this node runs no threshold key {key_id!r}", field="key_id")
        return signer

    @endpoint("GET", "/keys/{key_id}", "A threshold key's signer set: generation, threshold, URLs, pinned certificates")
    async def get_key(caller: str, body: dict[str, Any], key_id: str) -> Any:
        from ..custody.btc_signing import signer_set_view
        from ..custody.vault_cmds import signer_set

        hot_key(key_id)
        generation = exchange.read(lambda e: signer_set(e, key_id)[0])
        return {**await run_in_threadpool(signer_set_view, custody), "generation": generation}

    @endpoint("POST", "/keys/{key_id}/signers", "Start a signer process holding no share yet (an operator; spawned signers only)")
    async def start_signer(caller: str, body: dict[str, Any], key_id: str) -> Any:
        from ..custody.btc_signing import start_spare_signer

        operator(caller, "starting a signer")
        hot_key(key_id)
        ident = body.get("id")
        if isinstance(ident, bool) or not isinstance(ident, int) or not 1 <= ident <= 255:
            raise ValidationError("a signer identifier 1..255", field="id")
        return await run_in_threadpool(start_spare_signer, custody, ident)

    @endpoint("POST", "/keys/{key_id}/reshare", "Change a threshold key's signers/threshold (ReshareSignersSigned: operator quorum)")
    async def reshare(caller: str, body: dict[str, Any], key_id: str) -> Any:
        from ..custody.btc_signing import reshare_hot_key, resolve_signers, signer_set_view
        from ..custody.vault_cmds import ReshareSignersSigned

        hot_key(key_id)
        entries = body.get("signers")
        if not isinstance(entries, list) or not entries or not all(isinstance(x, dict) for x in entries):
            raise ValidationError("a list of {id, url?, certificate?}", field="signers")
        threshold, generation = body.get("threshold"), body.get("generation")
        if isinstance(threshold, bool) or not isinstance(threshold, int):
            raise ValidationError("an integer", field="threshold")
        if isinstance(generation, bool) or not isinstance(generation, int):
            raise ValidationError("an integer (GET /admin/v1/keys/KEY says which)", field="generation")
        remove = body.get("remove", [])  # optional: the signers the caller means to retire, checked against today's
        if not isinstance(remove, list) or any(isinstance(i, bool) or not isinstance(i, int) for i in remove):
            raise ValidationError("a list of signer identifiers", field="remove")
        holders = await run_in_threadpool(lambda: [s["id"] for s in signer_set_view(custody)["signers"] if s["holder"]])
        absent = sorted(set(remove) - set(holders))
        kept = sorted(set(remove) & {e.get("id") for e in entries})
        if absent or kept:
            raise ValidationError(f"signer {', '.join(map(str, absent or kept))} "
                                  + ("holds no share" if absent else "is also in signers")
                                  + f"; today's signers are {', '.join(map(str, holders))}", field="remove")
        reason = text(body, "reason")
        approvals = callers_approvals(caller, body)
        operator(caller, "a reshare")  # before any work: resolving the signers writes their pinned certificates
        resolved = await run_in_threadpool(resolve_signers, custody, entries)  # id -> (url, cert path, fingerprint)
        await submit(ReshareSignersSigned(key_id, generation, [[i, fp] for i, (_, _, fp) in sorted(resolved.items())],
                                          threshold, reason, approvals))
        return await run_in_threadpool(reshare_hot_key, custody, resolved, threshold, reason, generation + 1)
