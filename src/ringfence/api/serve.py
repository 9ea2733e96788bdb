"""`ringfence serve`: the exchange as one process on the embedded default.

Journal and snapshots under `DIR/engine`, identity (users, API keys) in SQLite at
`DIR/identity.sqlite3` (or PostgreSQL via `RINGFENCE_DATABASE_URL`). On start the engine recovers
from its journal and the read models are rebuilt from it; SIGTERM or Ctrl-C shuts down cleanly
(uvicorn drains requests, then the sequencer finishes its batch and the journal is closed).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer
from rich.console import Console

__all__ = ["serve"]

console = Console(width=None if sys.stdout.isatty() else 140)
#: The sequencer shares the interpreter with the HTTP workers: a short GIL switch interval lets it
#: run as soon as a request is queued (the default 5 ms would sit in every acknowledgement).
SWITCH_INTERVAL_S = 0.0002


def build(data: Path, demo: bool, public_url: str | None = None, forwarded_allow_ips: str | None = None) -> tuple[object, object, dict[str, object]]:
    from ..identity.context import IdentityContext
    from ..settings import load_settings
    from ..store import Store
    from .app import create_app
    from .auth import ApiGate, IdentityAuthenticator
    from .demo import seed_demo, write_demo_keys
    from .service import Exchange

    data.mkdir(parents=True, exist_ok=True)
    overrides: dict[str, object] = {}
    if "RINGFENCE_DATABASE_URL" not in os.environ:
        overrides["database_url"] = f"sqlite:///{(data / 'identity.sqlite3').resolve()}"
    if "RINGFENCE_IDENTITY_GNUPG_HOME" not in os.environ:
        overrides["identity_gnupg_home"] = str((data / "gpg").resolve())
    if public_url and "RINGFENCE_IDENTITY_ORIGIN" not in os.environ:
        # the sign-in pages check Origin and bind passkeys to this address
        overrides["identity_origin"] = public_url
        overrides["identity_public_url"] = public_url
    if forwarded_allow_ips is not None:
        overrides["api_forwarded_allow_ips"] = forwarded_allow_ips
    settings = load_settings(**overrides)
    ctx = IdentityContext(store=Store.from_url(settings.database_url), settings=settings)
    exchange = Exchange(data)
    exchange.open()
    info: dict[str, object] = {"recovered_seq": exchange.last_seq, "forwarded_allow_ips": settings.forwarded_allow_ips(),
                               "store": ctx.store.describe()}
    if demo:
        info["demo"] = seed_demo(exchange.node)
        info["keys"] = str(write_demo_keys(ctx, data))
        from ..solvency.pol import load_secret
        from .por import publish_from_engine

        # dev mode only (checked by load_secret): the demo's proof uses the development secret
        secret = load_secret(os.environ.get("RINGFENCE_POR_SECRET"), dev_mode=settings.mode == "dev")
        info["por"] = exchange.read(lambda engine: publish_from_engine(engine, data / "por", secret))
        # the demo state was written by direct node commands: rebuild the read models from the journal
        exchange.node.close()
        exchange = Exchange(data)
        exchange.open()
    gate = ApiGate(
        IdentityAuthenticator(ctx),
        weight_per_min=settings.api_weight_per_min,
        key_weight_per_min=settings.api_key_weight_per_min,
        ban_after=settings.api_ban_after,
        ban_s=settings.api_ban_s,
    )
    app = create_app(
        exchange,
        gate,
        cors_origins=settings.cors_origins(),
        max_body_bytes=settings.api_max_body_bytes,
        identity_ctx=ctx,
        por_dir=data / "por",
        reconcile_every_ms=settings.reconcile_every_ms,
        metrics_token=settings.metrics_token(),
        metrics_open_without_token=settings.mode == "dev",
    )
    return app, exchange, info


def serve(
    data: Path = typer.Option(Path("ringfence-data"), "--data", help="Data directory (journal and snapshots in DIR/engine, SQLite); locked while serving: other writers are refused, read-only commands (journal verify DIR) still work."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="Port to listen on."),
    demo: bool = typer.Option(False, "--demo", help="List demo markets, fund alice and bob, seed books, write DIR/demo-keys.json (HMAC keys and one Ed25519 key)."),
    forwarded_allow_ips: str | None = typer.Option(
        None,
        "--forwarded-allow-ips",
        help="Comma-separated IPs or CIDR networks of reverse proxies whose X-Forwarded-For/-Proto are believed "
        "(default: RINGFENCE_API_FORWARDED_ALLOW_IPS, else none: the TCP peer is the client).",
        show_default=False,
    ),
    # --- replication (ringfence.replication, docs/resilience.md) ---
    replicate: str | None = typer.Option(None, "--replicate", help="Primary: publish every journal batch to this NATS "
                                         "JetStream stream (nats://host:4222/STREAM) and acknowledge only after its ack."),
    standby: str | None = typer.Option(None, "--standby", help="Hot standby: follow the stream into DIR, verifying "
                                       "chain and state hash, until promoted; then serve as the primary."),
    node_id: str | None = typer.Option(None, "--node-id", help="This node's name in the leadership record "
                                       "(default: HOSTNAME-PORT)."),
) -> None:
    """Run the exchange: Binance-compatible REST + WebSocket API and the web dashboard.

    Example: ringfence serve --demo --data ./ringfence-data --port 8000

    Example (replicated): ringfence serve --data ./a --replicate nats://127.0.0.1:4222/RF --node-id a
    """
    import structlog
    import uvicorn

    from ..errors import RingfenceError

    import socket

    from ..cli_paths import fail, prepare_data_dir

    structlog.configure(processors=[structlog.processors.TimeStamper(fmt="iso"), structlog.processors.JSONRenderer()])
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    # Everything serve creates (journal, snapshots, identity database and its WAL, keys, proofs)
    # is for this user only: the identity database holds password hashes and sealed secrets.
    os.umask(0o077)
    prepare_data_dir(data)
    with socket.socket() as probe:  # refuse a busy port before recovering or writing anything
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            fail(f"--port: cannot listen on {host}:{port}: {err.strerror or err}")
    public_url = f"http://{'localhost' if host in ('127.0.0.1', 'localhost') else host}:{port}"
    try:
        # --- replication: a standby follows here until promoted; a primary hooks its node after build ---
        from ..replication.serving import after_build, before_build

        def say(line: str) -> None:
            console.print(line, soft_wrap=True)

        replicator = before_build(data, replicate, standby, node_id, port, demo, say, host)
        app, exchange, info = build(data, demo, public_url, forwarded_allow_ips)
        after_build(exchange, replicator, say)
    except RingfenceError as err:
        console.print(f"[bold red]error:[/] {err}")
        raise typer.Exit(2) from None
    console.print(f"ringfence: journal recovered to sequence {info['recovered_seq']} in {data}")
    console.print(f"identity store: {info['store']}", soft_wrap=True)
    if demo:
        d = info["demo"]
        console.print(
            f"demo: markets listed {', '.join(d['markets']) or 'earlier'}; funding transfers applied now: "
            f"{d['transfers_applied']}; market-maker orders placed now: {d['ladder_orders']}"
        )
        console.print(f"demo API keys: {info['keys']}")
        por = info["por"]
        console.print(f"proof of liabilities for {por['accounts']} accounts at {por['position']}: /por, /por/verify, /v1/por/proof")
    console.print(f"serving on {public_url}/  (dashboard /, sign-up /signup, REST /api/v3, WebSocket /ws, OpenAPI /openapi.json, metrics /metrics)")
    import signal

    # uvicorn drains and shuts down on SIGTERM, then re-raises the signal to the handler that was
    # installed before it: ours makes a clean shutdown exit with status 0.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # uvicorn believes X-Forwarded-For from 127.0.0.1 unless told otherwise: a local process could
    # then pick its own client address (escape a ban, pass a key's IP allow-list). Forwarding
    # headers count only from the proxies named in settings, and from nobody by default.
    proxies = list(info["forwarded_allow_ips"])  # type: ignore[call-overload]
    if proxies:
        console.print(f"trusting X-Forwarded-For/-Proto from: {', '.join(proxies)}")
    uvicorn.run(
        app, host=host, port=port, log_level="warning", lifespan="on", ws_max_size=65536, timeout_graceful_shutdown=10,
        proxy_headers=bool(proxies), forwarded_allow_ips=proxies or [],
    )
