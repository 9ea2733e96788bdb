"""Proof of solvency on the API: the public root and report at `/por`, the offline verifier page at
`/por/verify`, and each signed-in user's own proof at `/v1/por/proof` (never anyone else's: the
account comes from the signature, not from a parameter).

Published proofs live in `DIR/por`: the scheduled publisher inside `ringfence serve` writes
`DIR/por/<n>/` and `DIR/por/history.json` (`/por/history`); a proof written by
`ringfence por publish DIR/por …` directly into `DIR/por` is served while no scheduled one exists.
`/por/history/<n>/<file>` serves a kept proof's public files, never its per-user store.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

from .binance import ERROR_RESPONSES
from .headers import inline_page_csp

__all__ = ["build_por_router"]


def build_por_router(por_dir: Path, gate: Any) -> APIRouter:
    from ..solvency.publisher import PUBLIC_FILES, current_dir, read_history

    router = APIRouter(tags=["proof of solvency"])

    def missing() -> JSONResponse:
        return JSONResponse({"code": -1000, "msg": "No proof has been published yet; run `ringfence por publish`."}, status_code=404)

    def page(path: Path | None = None, html: str | None = None) -> Response:
        # read per request: the scheduled publisher (or `ringfence por publish`) replaces proofs while the server runs
        if html is None:
            assert path is not None
            html = path.read_text(encoding="utf-8")
        return HTMLResponse(html, headers={"Content-Security-Policy": inline_page_csp(html), "Cache-Control": "no-cache"})

    def history() -> dict[str, Any]:
        try:
            return read_history(por_dir)
        except (OSError, ValueError):
            return {"proofs": []}

    def proof_dir(n: int | None) -> Path | None:
        """The folder of proof `n` (None: the newest); None when it is not (or no longer) kept."""
        if n is None:
            try:
                return current_dir(por_dir)
            except (OSError, ValueError):
                return por_dir
        if any(p["n"] == n for p in history()["proofs"]):
            return por_dir / str(n)
        return None

    @router.get("/por", response_class=HTMLResponse, summary="Proof of solvency: newest proof, coverage per asset over time, shield fund rule, every kept proof")
    async def report() -> Response:
        from ..solvency.history_page import render_por_page

        doc = history()
        if doc["proofs"]:
            head = por_dir / str(doc["proofs"][-1]["n"])
            try:
                latest = json.loads((head / "reserves.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                latest = {}
            return page(html=render_por_page(doc, latest, doc))
        path = por_dir / "report.html"
        return page(path) if path.exists() else missing()

    @router.get("/por/history", summary="Every kept proof: number, time, journal position, root, coverage per asset, shield rule, files")
    async def por_history() -> Response:
        doc = history()
        return JSONResponse({"format": doc.get("format"), "every_s": doc.get("every_s"), "keep": doc.get("keep"),
                             "reserve_sources": doc.get("reserve_sources", []), "proofs": doc["proofs"]},
                            headers={"Cache-Control": "no-cache"})

    @router.get("/por/history/{n}/{name}", summary="One file of a kept proof (root.json, reserves.json, report.html, evidence.json)",
                responses={404: {"description": "no such proof or file"}})
    async def por_file(n: int, name: str) -> Response:
        where = proof_dir(n) if n >= 1 else None
        if where is None or name not in PUBLIC_FILES or not (where / name).is_file():
            return JSONResponse({"code": -1000, "msg": f"Proof {n} has no public file {name[:40]!r}; see /por/history."}, status_code=404)
        if name.endswith(".html"):
            return page(where / name)
        return FileResponse(where / name, media_type="application/json")

    @router.get("/por/root.json", summary="The newest published Merkle-sum root file")
    async def root() -> Response:
        where = proof_dir(None)
        path = (where or por_dir) / "root.json"
        return FileResponse(path, media_type="application/json") if path.exists() else missing()

    @router.get("/por/reserves.json", summary="Newest reserves, liabilities, coverage per asset and the shield fund")
    async def reserves() -> Response:
        where = proof_dir(None)
        path = (where or por_dir) / "reserves.json"
        return FileResponse(path, media_type="application/json") if path.exists() else missing()

    @router.get("/por/verify", response_class=HTMLResponse, summary="The offline proof verifier (works without the network)")
    async def verifier() -> Response:
        from ..solvency import verifier_page_path

        return page(verifier_page_path())

    @router.get("/v1/por/proof", summary="Your own inclusion proof (signed like /api/v3/account); `snapshot=n` for a kept older proof",
                responses=ERROR_RESPONSES)
    async def my_proof(snapshot: int | None = Query(None, ge=1, description="Proof number from /por/history (default: the newest)"),
                       owner: str = Depends(gate.caller("read", weight=10))) -> Response:
        where = proof_dir(snapshot)
        if where is None:
            return JSONResponse({"code": -1000, "msg": f"Proof {snapshot} is not kept; see /por/history."}, status_code=404)
        if not (where / "proofs").exists():
            return missing()
        from ..solvency import proof_for

        try:
            proof = proof_for(owner, where / "proofs")
        except KeyError:
            return JSONResponse({"code": -1000, "msg": "Your account is not in the published snapshot (it held nothing then)."}, status_code=404)
        except (OSError, ValueError):  # pruned between the history read and this one
            return JSONResponse({"code": -1000, "msg": f"Proof {snapshot} is no longer kept; see /por/history."}, status_code=404)
        return JSONResponse(proof, headers={"Cache-Control": "no-store"})

    return router
