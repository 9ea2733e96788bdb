"""A FROST signer as its own process: HTTP on 127.0.0.1 (FastAPI + uvicorn) in front of one `SignerNode`.

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
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    if len(token) < MIN_TOKEN_CHARS:
        raise ValidationError(f"must be at least {MIN_TOKEN_CHARS} characters", field="RINGFENCE_SIGNER_TOKEN")
    app = FastAPI(title=f"ringfence signer {node.name}", docs_url=None, redoc_url=None, openapi_url=None)
    expected = f"Bearer {token}".encode()

    @app.middleware("http")
    async def _guard(request: Request, call_next: Any) -> Any:
        if request.url.path != "/health":
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                return JSONResponse(Unauthorized("missing or wrong bearer token").to_dict(), status_code=401)
            if int(request.headers.get("content-length") or 0) > MAX_BODY_BYTES:
                return JSONResponse(ValidationError("request body too large", field="body").to_dict(), status_code=413)
        return await call_next(request)

    @app.exception_handler(RingfenceError)
    async def _rf(_: Request, exc: RingfenceError) -> JSONResponse:
        return JSONResponse(exc.to_dict(), status_code=exc.http_status)

    @app.exception_handler(KeyError)
    async def _missing(_: Request, exc: KeyError) -> JSONResponse:
        return JSONResponse({"code": "RF_VALIDATION", "message": "missing field or no ceremony in progress",
                             "field": str(exc.args[0]) if exc.args else None}, status_code=400)

    @app.exception_handler(ValueError)
    async def _value(_: Request, exc: ValueError) -> JSONResponse:
        return JSONResponse({"code": "RF_VALIDATION", "message": str(exc)[:300]}, status_code=400)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"ok": True, "name": node.name}

    @app.get("/v1/identity")
    def identity() -> dict[str, Any]:
        return node.identity()

    @app.get("/v1/keys/{key_id}")
    def key(key_id: str) -> dict[str, Any]:
        return node.public_package(key_id)

    @app.post("/v1/commit")
    def commit(body: dict[str, Any]) -> dict[str, Any]:
        return {"commitments": node.commit(body["key_id"], int(body.get("count", 1)))}

    @app.post("/v1/sign")
    def sign(body: dict[str, Any]) -> dict[str, Any]:
        return node.sign(key_id=body["key_id"], scheme=body["scheme"], message=bytes.fromhex(body["message"]),
                         nonce_id=body["nonce_id"], commitments=body["commitments"], approval=body.get("approval"),
                         request_id=str(body["request_id"]))

    @app.post("/v1/dkg/round1")
    def dkg1(body: dict[str, Any]) -> dict[str, Any]:
        return node.dkg_round1(body["key_id"], body["ciphersuite"], int(body["threshold"]),
                               [int(x) for x in body["participants"]],
                               {int(k): v for k, v in body["transport_keys"].items()}, _proofs(body))

    @app.post("/v1/dkg/round2")
    def dkg2(body: dict[str, Any]) -> dict[str, Any]:
        return {"sealed": node.dkg_round2(body["key_id"], body["packages"])}

    @app.post("/v1/dkg/finish")
    def dkg3(body: dict[str, Any]) -> dict[str, Any]:
        return node.dkg_finish(body["key_id"], body["sealed"], str(body["actor"]))

    @app.post("/v1/refresh/round1")
    def ref1(body: dict[str, Any]) -> dict[str, Any]:
        return node.refresh_round1(body["key_id"], {int(k): v for k, v in body["transport_keys"].items()}, _proofs(body))

    @app.post("/v1/refresh/round2")
    def ref2(body: dict[str, Any]) -> dict[str, Any]:
        return {"sealed": node.refresh_round2(body["key_id"], body["packages"])}

    @app.post("/v1/refresh/finish")
    def ref3(body: dict[str, Any]) -> dict[str, Any]:
        return node.refresh_finish(body["key_id"], body["sealed"], str(body["actor"]))

    @app.post("/v1/reshare/deal")
    def rs1(body: dict[str, Any]) -> dict[str, Any]:
        return node.reshare_deal(body["key_id"], [int(x) for x in body["quorum"]],
                                 [int(x) for x in body["new_participants"]], int(body["new_threshold"]),
                                 {int(k): v for k, v in body["transport_keys"].items()}, _proofs(body))

    @app.post("/v1/reshare/receive")
    def rs2(body: dict[str, Any]) -> dict[str, Any]:
        return node.reshare_receive(body["key_id"], body["old_public"], [int(x) for x in body["quorum"]],
                                    [int(x) for x in body["new_participants"]], int(body["new_threshold"]),
                                    body["packages"], body["sealed"], str(body["actor"]))

    @app.post("/v1/retire")
    def retire(body: dict[str, Any]) -> dict[str, Any]:
        node.retire(body["key_id"], str(body["actor"]), str(body["reason"]))
        return {"ok": True}

    return app


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
