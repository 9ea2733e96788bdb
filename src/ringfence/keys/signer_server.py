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
import json
import os
import sys
from pathlib import Path
from typing import Any

from ..errors import RingfenceError, Unauthorized, ValidationError
from .signer_node import SignerNode, open_node

__all__ = ["create_app", "main", "MIN_TOKEN_CHARS"]

MIN_TOKEN_CHARS = 24
MAX_BODY_BYTES = 1 << 20


def _need(body: dict[str, Any], name: str) -> Any:
    if name not in body:
        raise ValidationError("missing field", field=name)
    return body[name]


def _int(body: dict[str, Any], name: str, default: int | None = None) -> int:
    """An integer field (a JSON number without a fraction, or its decimal string, as int() took them)."""
    value = body.get(name, default) if default is not None else _need(body, name)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValidationError("must be an integer", field=name)
    try:
        return int(value)
    except ValueError:
        raise ValidationError("must be an integer", field=name) from None


def _ints(body: dict[str, Any], name: str) -> list[int]:
    values = _need(body, name)
    if not isinstance(values, list):
        raise ValidationError("must be a list of integers", field=name)
    return [_int({name: v}, name) for v in values]


def _by_id(body: dict[str, Any], name: str, default: dict[str, Any] | None = None) -> dict[int, Any]:
    """An object keyed by signer identifier: {"1": ..., "2": ...}."""
    value = (body.get(name) or default) if default is not None else _need(body, name)
    if not isinstance(value, dict):
        raise ValidationError("must be an object of identifier -> value", field=name)
    return {_int({name: k}, name): v for k, v in value.items()}


def _of(body: dict[str, Any], name: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = _need(body, name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValidationError(f"must be {what}", field=name)
    return value


def _proofs(body: dict[str, Any]) -> dict[int, str]:
    return {k: str(v) for k, v in _by_id(body, "transport_proofs", {}).items()}


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
            kind = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
            if kind != "application/json" and not (kind.startswith("application/") and kind.endswith("+json")):
                return JSONResponse({"code": "RF_VALIDATION", "message": "the request body must be JSON "
                                     "(content-type application/json)", "field": "body"}, status_code=422)
            raw = bytearray()
            async for chunk in request.stream():  # the cap holds for a chunked body too (no content-length)
                raw += chunk
                if len(raw) > MAX_BODY_BYTES:
                    return JSONResponse(ValidationError("request body too large", field="body").to_dict(), status_code=413)
            try:
                body = json.loads(raw)
            except (ValueError, RecursionError):
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
        return {"commitments": node.commit(_need(body, "key_id"), _int(body, "count", 1))}

    def sign(body: dict[str, Any]) -> dict[str, Any]:
        return node.sign(key_id=_need(body, "key_id"), scheme=_of(body, "scheme", str, "a string"),
                         message=bytes.fromhex(_of(body, "message", str, "a hex string")),
                         nonce_id=_of(body, "nonce_id", str, "a string"), commitments=_of(body, "commitments", list, "a list"),
                         approval=body.get("approval"), request_id=str(_need(body, "request_id")))

    def dkg1(body: dict[str, Any]) -> dict[str, Any]:
        return node.dkg_round1(_need(body, "key_id"), _of(body, "ciphersuite", str, "a string"), _int(body, "threshold"),
                               _ints(body, "participants"), _by_id(body, "transport_keys"), _proofs(body))

    def dkg2(body: dict[str, Any]) -> dict[str, Any]:
        return {"sealed": node.dkg_round2(_need(body, "key_id"), _of(body, "packages", list, "a list"))}

    def dkg3(body: dict[str, Any]) -> dict[str, Any]:
        return node.dkg_finish(_need(body, "key_id"), _of(body, "sealed", dict, "an object"), str(_need(body, "actor")))

    def ref1(body: dict[str, Any]) -> dict[str, Any]:
        return node.refresh_round1(_need(body, "key_id"), _by_id(body, "transport_keys"), _proofs(body))

    def ref2(body: dict[str, Any]) -> dict[str, Any]:
        return {"sealed": node.refresh_round2(_need(body, "key_id"), _of(body, "packages", list, "a list"))}

    def ref3(body: dict[str, Any]) -> dict[str, Any]:
        return node.refresh_finish(_need(body, "key_id"), _of(body, "sealed", dict, "an object"), str(_need(body, "actor")))

    def rs1(body: dict[str, Any]) -> dict[str, Any]:
        return node.reshare_deal(_need(body, "key_id"), _ints(body, "quorum"), _ints(body, "new_participants"),
                                 _int(body, "new_threshold"), _by_id(body, "transport_keys"), _proofs(body))

    def rs2(body: dict[str, Any]) -> dict[str, Any]:
        return node.reshare_receive(_need(body, "key_id"), _of(body, "old_public", dict, "an object"), _ints(body, "quorum"),
                                    _ints(body, "new_participants"), _int(body, "new_threshold"),
                                    _of(body, "packages", list, "a list"), _of(body, "sealed", dict, "an object"),
                                    str(_need(body, "actor")))

    def retire(body: dict[str, Any]) -> dict[str, Any]:
        node.retire(_need(body, "key_id"), str(_need(body, "actor")), str(_need(body, "reason")))
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
    from ..listening import LISTEN_BACKLOG, ListenError, listen_on

    try:  # both families of a wildcard or loopback --host, or nothing (listening.py), before
        # the share store is opened or made: a refused start leaves nothing behind
        sockets = listen_on(args.host, args.port, lambda line: print(f"warning: {line}", file=sys.stderr, flush=True))
    except ListenError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None

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
    config = uvicorn.Config(create_app(node, token), log_level="warning", access_log=False, backlog=LISTEN_BACKLOG, **ssl_args)
    uvicorn.Server(config).run(sockets=sockets)


if __name__ == "__main__":
    main()
