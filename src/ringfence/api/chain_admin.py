"""The demo faucet's endpoint: `ringfence chain pay` / `chain balance` talk to the running server,
because the local chains live inside the `serve --demo` process.

Mounted only in demo mode. Answers only the loopback interface (the TCP peer, never a forwarded
header) and only with `Authorization: Bearer <token>`, the token `serve --demo` wrote to
`DIR/custody/admin.json` (mode 0600, with the server's URL), compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import secrets
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ..errors import RingfenceError
from ..money import format_amount, parse_amount
from ..nodekey import write_private

__all__ = ["build_chain_admin_router", "write_admin_file", "ADMIN_FILE"]

ADMIN_FILE = Path("custody") / "admin.json"


def write_admin_file(data_dir: Path, url: str) -> str:
    """A fresh token for this server run, with its URL, in DIR/custody/admin.json (0600)."""
    token = secrets.token_urlsafe(32)
    path = data_dir / ADMIN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    # a new file, never through an admin.json.tmp or a link another user put there (nodekey.write_private)
    write_private(path, json.dumps({"url": url, "token": token}).encode())
    return token


def _refuse(status: int, msg: str) -> JSONResponse:
    return JSONResponse({"code": -2015, "msg": msg}, status_code=status)


def build_chain_admin_router(runtime: Any, token: str) -> APIRouter:
    router = APIRouter(prefix="/v1/demo/chain", tags=["demo chains (loopback, token)"], include_in_schema=False)
    digest = hashlib.sha256(token.encode()).digest()

    def allowed(request: Request) -> JSONResponse | None:
        host = request.client.host if request.client else ""
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            return _refuse(403, "the demo chain endpoint answers the loopback interface only")
        scheme, _, sent = (request.headers.get("authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(hashlib.sha256(sent.strip().encode()).digest(), digest):
            return _refuse(401, "send the token from DIR/custody/admin.json as 'Authorization: Bearer <token>'")
        return None

    def decimals(asset: str) -> int:
        terms = runtime.terms.get(asset)
        if terms is None:
            raise ValueError(f"asset must be one of {', '.join(sorted(runtime.terms))}, not {asset[:20]!r}")
        return int(terms.decimals)

    @router.post("/pay")
    async def pay(request: Request) -> JSONResponse:
        refusal = allowed(request)
        if refusal is not None:
            return refusal
        try:
            body = await request.json()
            asset, to, amount = str(body["asset"]), str(body["to"]), str(body["amount"])
            source = str(body.get("from") or "faucet")
            amount_minor = parse_amount(amount, decimals(asset), field="amount", allow_zero=False)
            txid = await run_in_threadpool(runtime.chains.pay, asset, to, amount_minor, source)
        except KeyError as err:
            return JSONResponse({"code": -1100, "msg": f"{err.args[0]}: required"}, status_code=400)
        except (TypeError, ValueError) as err:  # a RingfenceError's str already starts with its field
            return JSONResponse({"code": -1100, "msg": str(err)}, status_code=400)
        except RingfenceError as err:
            return JSONResponse({"code": -1000, "msg": f"{err.code}: {err}"}, status_code=400)
        return JSONResponse({"asset": asset, "to": to, "amount": amount, "from": source, "txid": txid})

    @router.post("/broadcast")
    async def broadcast(request: Request) -> JSONResponse:
        """Send a raw signed transaction to the local chain (like a node's sendrawtransaction)."""
        refusal = allowed(request)
        if refusal is not None:
            return refusal
        try:
            body = await request.json()
            asset, raw = str(body["asset"]), bytes.fromhex(str(body["raw_tx"]))
            chain = runtime.terms[asset].chain if asset in runtime.terms else ""
            if not chain:
                raise ValueError(f"asset must be one of {', '.join(sorted(runtime.terms))}")

            def send() -> str:
                with runtime.chains.lock:
                    return str(runtime.chains.adapter(chain).broadcast(raw).txid)

            txid = await run_in_threadpool(send)
        except (KeyError, TypeError, ValueError) as err:
            return JSONResponse({"code": -1100, "msg": str(err)}, status_code=400)
        except RingfenceError as err:
            return JSONResponse({"code": -1000, "msg": f"{err.code}: {err}"}, status_code=400)
        return JSONResponse({"asset": asset, "txid": txid})

    @router.get("/balance")
    async def balance(request: Request, asset: str = "", address: str = "", height: str = "") -> JSONResponse:
        refusal = allowed(request)
        if refusal is not None:
            return refusal
        try:
            d = decimals(asset)
            if height and not (height.isascii() and height.isdigit() and len(height) <= 12):
                raise ValueError("height: must be a block height (a whole number >= 0)")
            at = int(height) if height else None
            minor = await run_in_threadpool(runtime.chains.balance, asset, address, at)
        except ValueError as err:  # a RingfenceError's str already starts with its field
            return JSONResponse({"code": -1100, "msg": str(err)}, status_code=400)
        heights = await run_in_threadpool(runtime.chains.heights)
        chain = runtime.terms[asset].chain
        return JSONResponse({"asset": asset, "address": address, "balance": format_amount(minor, d, trim=True),
                             "balance_minor": str(minor), "height": heights[chain] if at is None else at})

    return router
