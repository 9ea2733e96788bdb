"""Proof of solvency on the API: the public root and report at `/por`, the offline verifier page at
`/por/verify`, and each signed-in user's own proof at `/v1/por/proof` (never anyone else's: the
account comes from the signature, not from a parameter).

Published proofs live in `DIR/por`: the scheduled publisher inside `ringfence serve` writes
`DIR/por/<n>/` and `DIR/por/history.json` (`/por/history`); a proof written by
`ringfence por publish DIR/por …` directly into `DIR/por` is served while no scheduled one exists.
`/por/history/<n>/<file>` serves a kept proof's public files, never its per-user store.

The security centre's "your proof" box (`build_session_por_router`, on the signed-in web session,
no API key): `GET /session/v3/por/mine` says which proof holds the user's balances, and
`GET /session/v3/por/proof?snapshot=n[&download=1]` returns that user's own proof file. The page
verifies it in the browser with `/por/verifier.js` — the script of the offline verifier page
`/por/verify` itself (one verifier, not a copy).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

from .binance import ERROR_RESPONSES
from .binance_errors import BinanceError
from .headers import inline_page_csp

__all__ = ["build_por_router", "build_session_por_router", "verifier_script"]


def verifier_script() -> str:
    """The JavaScript of the offline verifier page (`window.ringfencePor.verify(proofText, rootText)`)."""
    import re

    from ..solvency import verifier_page_path

    found = re.findall(r"<script>\n(.*?)</script>", verifier_page_path().read_text(encoding="utf-8"), re.S)
    if len(found) != 1:
        raise RuntimeError("por-verify.html must hold exactly one inline <script> block")
    return found[0]


def _kept(por_dir: Path) -> list[dict[str, Any]]:
    from ..solvency.publisher import read_history

    try:
        return list(read_history(por_dir)["proofs"])
    except (OSError, ValueError):
        return []


def _own_proof(por_dir: Path, owner: str, n: int | None) -> tuple[int | None, dict[str, Any] | JSONResponse]:
    """(proof number, `owner`'s proof) from kept proof `n` (None: the newest), or an error answer."""
    proofs = _kept(por_dir)
    if n is None:
        n = proofs[-1]["n"] if proofs else None
        where: Path | None = por_dir / str(n) if n is not None else por_dir
    else:
        where = por_dir / str(n) if any(p["n"] == n for p in proofs) else None
    if where is None:
        return n, JSONResponse({"code": -1000, "msg": f"Proof {n} is not kept; see /por/history."}, status_code=404)
    if not (where / "proofs").exists():
        return n, JSONResponse({"code": -1000, "msg": "No proof has been published yet; run `ringfence por publish`."}, status_code=404)
    from ..solvency import proof_for

    try:
        return n, proof_for(owner, where / "proofs")
    except KeyError:
        return n, JSONResponse({"code": -1000, "msg": "Your account is not in the published snapshot (it held nothing then)."}, status_code=404)
    except (OSError, ValueError):  # pruned between the history read and this one
        return n, JSONResponse({"code": -1000, "msg": f"Proof {n} is no longer kept; see /por/history."}, status_code=404)


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
    async def report(request: Request) -> Response:
        from ..i18n import direction, format_amount, format_iso_time, gettext_for, request_locale
        from ..solvency.history_page import render_por_page

        locale = request_locale(request)  # the selector's cookie, else Accept-Language (docs/i18n.md)

        doc = history()
        if doc["proofs"]:
            head = por_dir / str(doc["proofs"][-1]["n"])
            try:
                latest = json.loads((head / "reserves.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                latest = {}
            return page(html=render_por_page(doc, latest, doc, gettext_for(locale), locale.replace("_", "-"), direction(locale),
                                             lambda n: format_amount(str(int(n)), locale), lambda iso: format_iso_time(iso, locale)))
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

    @router.get("/por/verifier.js", include_in_schema=False)
    async def verifier_js() -> Response:
        return Response(verifier_script(), media_type="application/javascript", headers={"Cache-Control": "no-cache"})

    @router.get("/por/verify", response_class=HTMLResponse, summary="The offline proof verifier (works without the network)")
    async def verifier() -> Response:
        import html as html_text

        from ..solvency import verifier_page_path
        from ..solvency.report import asset_decimals

        # the assets' decimals of the newest reserves.json go into the page (an attribute, not a fetch:
        # the page loads nothing), so it shows balances as amounts; a saved copy keeps them
        where = proof_dir(None)
        try:
            decimals = asset_decimals(json.loads(((where or por_dir) / "reserves.json").read_text(encoding="utf-8")))
        except (OSError, ValueError):
            decimals = {}
        text = verifier_page_path().read_text(encoding="utf-8")
        text = text.replace("<body>", f'<body data-decimals="{html_text.escape(json.dumps(decimals, sort_keys=True))}">', 1)
        return page(html=text)

    @router.get("/v1/por/proof", summary="Your own inclusion proof (signed like /api/v3/account); `snapshot=n` for a kept older proof",
                responses=ERROR_RESPONSES)
    async def my_proof(snapshot: int | None = Query(None, ge=1, description="Proof number from /por/history (default: the newest)"),
                       owner: str = Depends(gate.caller("read", weight=10))) -> Response:
        _, proof = _own_proof(por_dir, owner, snapshot)
        if isinstance(proof, JSONResponse):
            return proof
        return JSONResponse(proof, headers={"Cache-Control": "no-store"})

    return router


def build_session_por_router(por_dir: Path, gate: Any, ctx: Any) -> APIRouter:
    """The signed-in user's own proof on the web session (cookie; read scope; GETs only)."""
    from .session_trading import NO_STORE, PREFIX, _authenticate, _refuse, _Refused

    router = APIRouter(prefix=PREFIX + "/por", tags=["web session"])

    async def owner_of(request: Request, weight: int) -> str | JSONResponse:
        try:
            await gate.charge(request, weight)
            caller = await _authenticate(ctx, request)
            gate.key_limiter.charge(f"session:{caller.session_id}", weight)
        except _Refused as refused:
            return _refuse(refused.status, refused.msg)
        except BinanceError as err:
            return JSONResponse(err.body(), status_code=err.status, headers={**err.headers, **NO_STORE})
        return str(caller.account_id)

    @router.get("/mine")
    async def mine(request: Request) -> Response:
        """Which proof holds the user's balances: {n, publishedAt, included, rootUrl, proofUrl, downloadUrl, decimals}."""
        owner = await owner_of(request, 2)
        if isinstance(owner, JSONResponse):
            return owner
        proofs = _kept(por_dir)
        n, proof = _own_proof(por_dir, owner, None)
        head = proofs[-1] if proofs else {}
        out: dict[str, Any] = {"n": n, "publishedAt": head.get("published_at"), "everyS": None, "included": not isinstance(proof, JSONResponse)}
        try:
            from ..solvency.publisher import read_history

            out["everyS"] = read_history(por_dir).get("every_s")
        except (OSError, ValueError):
            pass
        if isinstance(proof, JSONResponse):
            out["msg"] = json.loads(bytes(proof.body))["msg"]
            return JSONResponse(out, headers=NO_STORE)
        query = f"?snapshot={n}" if n is not None else ""
        # each asset's decimals in that proof (its report's), so the page shows amounts, not minor units
        kept = next((p for p in proofs if p.get("n") == n), {})
        out["decimals"] = {row["asset"]: int(row["decimals"]) for row in kept.get("assets", []) if "decimals" in row}
        out.update(rootUrl=f"/por/history/{n}/root.json" if n is not None else "/por/root.json",
                   proofUrl=f"{PREFIX}/por/proof{query}",
                   downloadUrl=f"{PREFIX}/por/proof{query}{'&' if query else '?'}download=1")
        return JSONResponse(out, headers=NO_STORE)

    @router.get("/proof")
    async def proof(request: Request, snapshot: int | None = Query(None, ge=1), download: int = Query(0, ge=0, le=1)) -> Response:
        """The user's own proof file (the same document as `/v1/por/proof`); `download=1` as an attachment."""
        owner = await owner_of(request, 10)
        if isinstance(owner, JSONResponse):
            return owner
        n, doc = _own_proof(por_dir, owner, snapshot)
        if isinstance(doc, JSONResponse):
            return doc
        headers = dict(NO_STORE)
        if download:
            headers["Content-Disposition"] = f'attachment; filename="ringfence-proof-{n if n is not None else "latest"}.json"'
        return JSONResponse(doc, headers=headers)

    return router
