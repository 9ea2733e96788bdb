"""Proof of solvency on the API: the public root and report at `/por`, the offline verifier page at
`/por/verify`, and each signed-in user's own proof at `/v1/por/proof` (never anyone else's: the
account comes from the signature, not from a parameter).

Published proofs live in `DIR/por` (written by `ringfence por publish DIR/por …`, or at start-up
by `ringfence serve --demo` for the demo state).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

from .binance import ERROR_RESPONSES
from .headers import inline_page_csp

__all__ = ["build_por_router", "publish_from_engine"]


def publish_from_engine(engine: Any, out_dir: Path, secret: bytes) -> dict[str, Any]:
    """Snapshot the ledger, build the tree, write root.json, proofs/, reserves.json and report.html."""
    from ..solvency.ledger_source import snapshot_from_engine
    from ..solvency.pol import build_liability_tree
    from ..solvency.report import build_report, render_html

    snap = snapshot_from_engine(engine)
    tree = build_liability_tree(snap.snapshot_id, snap.asset_codes, snap.iter_accounts(), secret, min_leaf_count=16)
    out_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(out_dir, 0o700)  # the proof store holds every user's nonce
    root = tree.root_document()
    (out_dir / "root.json").write_text(json.dumps(root, indent=1) + "\n")
    tree.write_store(out_dir / "proofs")
    report = build_report(root, snap.assets, None, {}, snap.debts_minor, snap.position)
    (out_dir / "reserves.json").write_text(json.dumps(report, indent=1) + "\n")
    (out_dir / "report.html").write_text(render_html(report))
    return {"snapshot_id": snap.snapshot_id.hex(), "position": snap.position, "accounts": tree.account_count}


def build_por_router(por_dir: Path, gate: Any) -> APIRouter:
    router = APIRouter(tags=["proof of solvency"])

    def missing() -> JSONResponse:
        return JSONResponse({"code": -1000, "msg": "No proof has been published yet; run `ringfence por publish`."}, status_code=404)

    def page(path: Path) -> Response:
        # read per request: `ringfence por publish` replaces the report while the server runs
        html = path.read_text(encoding="utf-8")
        return HTMLResponse(html, headers={"Content-Security-Policy": inline_page_csp(html), "Cache-Control": "no-cache"})

    @router.get("/por", response_class=HTMLResponse, summary="The published coverage report (root, per-asset reserves and liabilities)")
    async def report() -> Response:
        path = por_dir / "report.html"
        return page(path) if path.exists() else missing()

    @router.get("/por/root.json", summary="The published Merkle-sum root file")
    async def root() -> Response:
        path = por_dir / "root.json"
        return FileResponse(path, media_type="application/json") if path.exists() else missing()

    @router.get("/por/reserves.json", summary="Reserves, liabilities and coverage per asset")
    async def reserves() -> Response:
        path = por_dir / "reserves.json"
        return FileResponse(path, media_type="application/json") if path.exists() else missing()

    @router.get("/por/verify", response_class=HTMLResponse, summary="The offline proof verifier (works without the network)")
    async def verifier() -> Response:
        from ..solvency import verifier_page_path

        return page(verifier_page_path())

    @router.get("/v1/por/proof", summary="Your own inclusion proof (signed like /api/v3/account)", responses=ERROR_RESPONSES)
    async def my_proof(owner: str = Depends(gate.caller("read", weight=10))) -> Response:
        if not (por_dir / "proofs").exists():
            return missing()
        from ..solvency import proof_for

        try:
            proof = proof_for(owner, por_dir / "proofs")
        except KeyError:
            return JSONResponse({"code": -1000, "msg": "Your account is not in the published snapshot (it held nothing then)."}, status_code=404)
        return JSONResponse(proof, headers={"Cache-Control": "no-store"})

    return router
