"""A FROST signer as its own process: HTTP on 127.0.0.1 (Starlette + uvicorn) in front of one `SignerNode`.

Run: RINGFENCE_SIGNER_PASSPHRASE=... RINGFENCE_SIGNER_TOKEN=... \
     python -m ringfence.keys.signer_server --store ./s1 --identifier 1 --name signer-1 --port 7301 --create

Security defaults: binds to 127.0.0.1 only unless `--host` says otherwise; every request needs the bearer
token (compared in constant time; at least 24 characters); request bodies are capped at 1 MiB; the
passphrase and token come from the environment, never from argv (argv is visible in `ps`). Error
responses carry the ringfence error code and field, never secrets or stack traces.
"""

from __future__ import annotations

import argparse
import hmac
import os
from pathlib import Path
from typing import Any

from ..errors import RingfenceError, Unauthorized, ValidationError
from .signer_node import SignerNode, open_node

__all__ = ["create_app", "main", "MIN_TOKEN_CHARS"]

MIN_TOKEN_CHARS = 24
MAX_BODY_BYTES = 1 << 20


def _proofs(body: dict[str, Any]) -> dict[int, str]:
    proofs = body.get("transport_proofs") or {}
    if not isinstance(proofs, dict):
        raise ValidationError("an object of identifier -> proof", field="transport_proofs")
    return {int(k): str(v) for k, v in proofs.items()}


def create_app(node: SignerNode, token: str) -> Any:
    """The signer's HTTP API. Starlette itself, not FastAPI on top of it: a signer has fourteen JSON routes
    and no generated schema, and FastAPI's import and per-route models were half of each signer process's
    start (~0.3 s of CPU of ~0.6 s; `serve --demo` starts three of them). Each handler runs in the thread
    pool, as FastAPI ran these synchronous ones; errors keep their shapes: a ringfence error its code and
    status, a missing field or a bad value 400, an unknown path FastAPI's `{"detail": ...}`."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.middleware.base import BaseHTTPMiddleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    if len(token) < MIN_TOKEN_CHARS:
        raise ValidationError(f"must be at least {MIN_TOKEN_CHARS} characters", field="RINGFENCE_SIGNER_TOKEN")
    expected = f"Bearer {token}".encode()

    async def _guard(request: Request, call_next: Any) -> Any:
        if request.url.path != "/health":
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                return JSONResponse(Unauthorized("missing or wrong bearer token").to_dict(), status_code=401)
            if int(request.headers.get("content-length") or 0) > MAX_BODY_BYTES:
                return JSONResponse(ValidationError("request body too large", field="body").to_dict(), status_code=413)
        return await call_next(request)

    async def _rf(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RingfenceError)
        return JSONResponse(exc.to_dict(), status_code=exc.http_status)

    async def _missing(_: Request, exc: Exception) -> Response:
        return JSONResponse({"code": "RF_VALIDATION", "message": "missing field or no ceremony in progress",
                             "field": str(exc.args[0]) if exc.args else None}, status_code=400)

    async def _value(_: Request, exc: Exception) -> Response:
        return JSONResponse({"code": "RF_VALIDATION", "message": str(exc)[:300]}, status_code=400)

    async def _http(_: Request, exc: Exception) -> Response:  # 404, 405: as FastAPI answered them
        assert isinstance(exc, HTTPException)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    def get(answer: Any) -> Any:
        async def endpoint(request: Request) -> Response:
            return JSONResponse(await run_in_threadpool(answer, **request.path_params))
        return endpoint

    def post(answer: Any) -> Any:
        """A route whose body is one JSON object (FastAPI's `body: dict[str, Any]`; anything else is a 422)."""
        async def endpoint(request: Request) -> Response:
            try:
                body = await request.json()
            except ValueError:
                body = None
            if not isinstance(body, dict):
                return JSONResponse({"code": "RF_VALIDATION", "message": "the request body must be a JSON object",
                                     "field": "body"}, status_code=422)
            return JSONResponse(await run_in_threadpool(answer, body))
        return endpoint

    def health() -> dict[str, Any]:
        return {"ok": True, "name": node.name}

    def identity() -> dict[str, Any]:
        return node.identity()

    def key(key_id: str) -> dict[str, Any]:
        return node.public_package(key_id)

    def commit(body: dict[str, Any]) -> dict[str, Any]:
        return {"commitments": node.commit(body["key_id"], int(body.get("count", 1)))}

    def sign(body: dict[str, Any]) -> dict[str, Any]:
        return node.sign(key_id=body["key_id"], scheme=body["scheme"], message=bytes.fromhex(body["message"]),
                         nonce_id=body["nonce_id"], commitments=body["commitments"], approval=body.get("approval"),
                         request_id=str(body["request_id"]))

    def dkg1(body: dict[str, Any]) -> dict[str, Any]:
        return node.dkg_round1(body["key_id"], body["ciphersuite"], int(body["threshold"]),
                               [int(x) for x in body["participants"]],
                               {int(k): v for k, v in body["transport_keys"].items()}, _proofs(body))

    def dkg2(body: dict[str, Any]) -> dict[str, Any]:
        return {"sealed": node.dkg_round2(body["key_id"], body["packages"])}

    def dkg3(body: dict[str, Any]) -> dict[str, Any]:
        return node.dkg_finish(body["key_id"], body["sealed"], str(body["actor"]))

    def ref1(body: dict[str, Any]) -> dict[str, Any]:
        return node.refresh_round1(body["key_id"], {int(k): v for k, v in body["transport_keys"].items()}, _proofs(body))

    def ref2(body: dict[str, Any]) -> dict[str, Any]:
        return {"sealed": node.refresh_round2(body["key_id"], body["packages"])}

    def ref3(body: dict[str, Any]) -> dict[str, Any]:
        return node.refresh_finish(body["key_id"], body["sealed"], str(body["actor"]))

    def rs1(body: dict[str, Any]) -> dict[str, Any]:
        return node.reshare_deal(body["key_id"], [int(x) for x in body["quorum"]],
                                 [int(x) for x in body["new_participants"]], int(body["new_threshold"]),
                                 {int(k): v for k, v in body["transport_keys"].items()}, _proofs(body))

    def rs2(body: dict[str, Any]) -> dict[str, Any]:
        return node.reshare_receive(body["key_id"], body["old_public"], [int(x) for x in body["quorum"]],
                                    [int(x) for x in body["new_participants"]], int(body["new_threshold"]),
                                    body["packages"], body["sealed"], str(body["actor"]))

    def retire(body: dict[str, Any]) -> dict[str, Any]:
        node.retire(body["key_id"], str(body["actor"]), str(body["reason"]))
        return {"ok": True}

    routes = [Route("/health", get(health), methods=["GET"]), Route("/v1/identity", get(identity), methods=["GET"]),
              Route("/v1/keys/{key_id}", get(key), methods=["GET"])]
    routes += [Route(path, post(answer), methods=["POST"]) for path, answer in (
        ("/v1/commit", commit), ("/v1/sign", sign), ("/v1/dkg/round1", dkg1), ("/v1/dkg/round2", dkg2),
        ("/v1/dkg/finish", dkg3), ("/v1/refresh/round1", ref1), ("/v1/refresh/round2", ref2),
        ("/v1/refresh/finish", ref3), ("/v1/reshare/deal", rs1), ("/v1/reshare/receive", rs2), ("/v1/retire", retire))]
    return Starlette(routes=routes, middleware=[Middleware(BaseHTTPMiddleware, dispatch=_guard)],
                     exception_handlers={RingfenceError: _rf, KeyError: _missing, ValueError: _value, HTTPException: _http})


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="ringfence FROST signer process (reference implementation)")
    ap.add_argument("--store", required=True, type=Path)
    ap.add_argument("--identifier", required=True, type=int)
    ap.add_argument("--name", required=True)
    ap.add_argument("--port", required=True, type=int)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--create", action="store_true", help="create the share store if it does not exist")
    ap.add_argument("--policy-public-key", default=None, help="hex Ed25519 key; if set, sign only with attestations")
    ap.add_argument("--peer-certs", type=Path, default=None,
                    help="the other signers' pinned certificates, DIR/signer-N.crt (read at every ceremony): this "
                         "signer seals shares only to transport keys signed by a pinned peer")
    ap.add_argument("--coordinator-cert", type=Path, default=None,
                    help="mutual TLS: the coordinator's pinned certificate (PEM); the only client accepted. This "
                         "signer's own Ed25519 certificate is STORE/tls.crt (created on first start)")
    args = ap.parse_args(argv)
    if args.peer_certs is not None and args.coordinator_cert is None:
        ap.error("--peer-certs needs --coordinator-cert (the signer's own certificate is what its peers pin)")
    passphrase = os.environ.get("RINGFENCE_SIGNER_PASSPHRASE", "")
    token = os.environ.get("RINGFENCE_SIGNER_TOKEN", "")
    node = open_node(args.store, passphrase, args.identifier, args.name, create=args.create,
                     policy_public_key=bytes.fromhex(args.policy_public_key) if args.policy_public_key else None)
    import uvicorn

    ssl_args: dict[str, Any] = {}
    if args.coordinator_cert is not None:
        import ssl

        from .tls import _check_pin, ensure_identity, load_identity_key

        _check_pin(args.coordinator_cert, "coordinator")
        me = ensure_identity(args.store, args.name, passphrase)
        node.pin_peers(load_identity_key(me), args.peer_certs)
        ssl_args = {"ssl_certfile": str(me.cert), "ssl_keyfile": str(me.key), "ssl_keyfile_password": me.password,
                    "ssl_ca_certs": str(args.coordinator_cert), "ssl_cert_reqs": ssl.CERT_REQUIRED}
    uvicorn.run(create_app(node, token), host=args.host, port=args.port, log_level="warning", access_log=False,
                **ssl_args)


if __name__ == "__main__":
    main()
