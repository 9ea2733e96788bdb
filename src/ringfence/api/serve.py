"""`ringfence serve`: the exchange as one process on the embedded default.

Journal and snapshots under `DIR/engine`, identity (users, API keys) in SQLite at
`DIR/identity.sqlite3` (or PostgreSQL via `RINGFENCE_DATABASE_URL`). On start the engine recovers
from its journal and the read models are rebuilt from it; SIGTERM or Ctrl-C shuts down cleanly
(uvicorn drains requests, then the sequencer finishes its batch and the journal is closed).
"""

from __future__ import annotations

import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import typer
from ..cli_paths import tty_console

if TYPE_CHECKING:
    import socket

__all__ = ["serve"]

console = tty_console(width=140)
#: The sequencer shares the interpreter with the HTTP workers: a short GIL switch interval lets it
#: run as soon as a request is queued (the default 5 ms would sit in every acknowledgement).
SWITCH_INTERVAL_S = 0.0002
#: The cyclic collector's youngest-generation threshold once serving (Python's default is 700). The
#: collector counts containers created and not yet freed; an order leaves some for a while (the
#: outbox's queued events until its next flush, order records, replay-guard entries, futures in
#: flight), so at 700 it ran every ~15 orders, each time promoting what was merely in flight into the
#: older generations, whose collections are the long pauses (bench/profile_api.py, 10 s of orders:
#: 335 young, 30 middle and 3 full collections, up to 42 ms each on a loaded machine). A wider
#: window: far fewer collections, fewer objects promoted. Garbage cycles still go, later.
GC_YOUNG_THRESHOLD = 20_000


def serving_gc_threshold() -> tuple[int, int, int]:
    """The cyclic collector's thresholds once serving (`freeze_startup_heap` sets them): the youngest
    generation every GC_YOUNG_THRESHOLD allocations, the older two as they were. bench/ledger.py
    runs its node with these, so that it measures the serving path as `serve` runs it."""
    import gc

    _, middle, old = gc.get_threshold()
    return GC_YOUNG_THRESHOLD, middle, old


def freeze_startup_heap() -> dict[str, int]:
    """Move everything start-up built (engine state, read models, the app, the libraries' own
    objects: some 270,000 tracked objects in `serve --demo`) out of the cyclic collector's way
    (`gc.freeze`), once, just before serving.

    A full collection scans every tracked object while holding the GIL: in `serve --demo` that is
    ~160 ms of CPU (1.2-1.8 s of wall clock on this loaded 2-core machine), during which the
    sequencer, the event loop and the market-data fan-out all stand still (issue #18 item 6: GC
    pauses in the tail). Frozen objects are never scanned again; later full collections scan only
    what was allocated since. What start-up built lives as long as the process anyway; an object
    of it that dies is still freed by reference counting (only a cycle among frozen objects would
    stay, which start-up garbage has had a full collection to clear just before). From then on the
    youngest generation is collected every GC_YOUNG_THRESHOLD allocations, not 700. Returns the
    counts and the CPU time of a full collection before and after, for the start-up log.
    """
    import gc
    import time

    started = time.process_time_ns()
    gc.collect()
    before_us = (time.process_time_ns() - started) // 1000
    gc.freeze()
    started = time.process_time_ns()
    gc.collect()
    after_us = (time.process_time_ns() - started) // 1000
    gc.set_threshold(*serving_gc_threshold())
    return {"frozen": gc.get_freeze_count(), "full_collection_cpu_us_before": before_us,
            "full_collection_cpu_us_after": after_us}


# ---------------------------------------------------------------- custody runtime (issue 15) ----
# Everything custody adds to `serve` is in this block and the lines marked "custody" below.


def no_chains(text: str) -> bool:
    """RINGFENCE_CUSTODY_CHAINS unset or `none`: what parse_chain_settings reads as no chains, told without importing
    the custody runtime (its chains, wallets and policy modules: about 0.07 s of CPU a start without chains)."""
    return not text.strip() or text.strip().lower() == "none"


def custody_runtime(data: Path, settings: object, demo: bool, ctx: object) -> object | None:
    """The custody runtime when chains are configured (or `--demo`), else None (no chains: no
    deposits or withdrawals, canDeposit/canWithdraw false)."""
    text = getattr(settings, "custody_chains", "") or ("BTC=local,ETH=local,USDT=local" if demo else "")
    if no_chains(text):
        return None
    from ..custody.runtime import CustodyRuntime, parse_chain_settings
    from ..errors import ConfigError

    assets = parse_chain_settings(text)
    if not assets:
        return None
    if getattr(settings, "mode", "dev") != "dev":
        raise ConfigError("the local in-process chains are for dev mode only", field="RINGFENCE_CUSTODY_CHAINS")
    return CustodyRuntime(
        data, assets, demo=demo,
        block_interval_ms=settings.custody_block_interval_ms,  # type: ignore[attr-defined]
        poll_ms=settings.custody_poll_ms,  # type: ignore[attr-defined]
        address_cooling_s=settings.custody_address_cooling_s,  # type: ignore[attr-defined]
        security_lock_s=settings.identity_withdrawal_lock_s,  # type: ignore[attr-defined]
        identity_ctx=ctx,
        shield_sweep_every_s=settings.shield_sweep_every_s,  # type: ignore[attr-defined]
        shield_value_asset=settings.shield_value_asset,  # type: ignore[attr-defined]
        kyt_blacklist=getattr(settings, "kyt_blacklist", ""),
    )


def custody_admin_url(host: str, port: int) -> str:
    """Where `ringfence chain ...` reaches this server (the faucet answers loopback only): 127.0.0.1 for a wildcard
    or loopback host of either family, which serve holds with 127.0.0.1 (listening.py `twin_of`)."""
    from ..listening import twin_of

    if twin_of(host) is not None:
        return f"http://127.0.0.1:{port}"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


# ------------------------------------------------------------ end of the custody runtime block ----


def settings_overrides(data: Path, demo: bool, public_url: str | None = None,
                       forwarded_allow_ips: str | None = None) -> dict[str, object]:
    """What serve sets on top of the environment (the embedded stores in DIR, the demo's short waits):
    computed without touching DIR, so that `serve` checks its settings before it creates anything."""
    overrides: dict[str, object] = {}
    if "RINGFENCE_DATABASE_URL" not in os.environ:
        overrides["database_url"] = f"sqlite:///{(data / 'identity.sqlite3').resolve()}"
    if "RINGFENCE_IDENTITY_GNUPG_HOME" not in os.environ:
        overrides["identity_gnupg_home"] = str((data / "gpg").resolve())
    if public_url and "RINGFENCE_IDENTITY_ORIGIN" not in os.environ:
        # the sign-in pages check Origin and bind passkeys to this address; the mail's links follow it unless
        # RINGFENCE_IDENTITY_PUBLIC_URL says otherwise (settings.py): with RINGFENCE_IDENTITY_ORIGIN set, that origin
        overrides["identity_origin"] = public_url
    if forwarded_allow_ips is not None:
        overrides["api_forwarded_allow_ips"] = forwarded_allow_ips
    if demo and "RINGFENCE_POR_EVERY_S" not in os.environ:
        overrides["por_every_s"] = 30  # the demo shows the schedule working within a minute
    # the demo's waits are minutes, not a day, so a newcomer sees a new address cool down and a
    # withdrawal go out after turning on 2FA (production keeps 24 h; both are settings)
    if demo and "RINGFENCE_CUSTODY_ADDRESS_COOLING_S" not in os.environ:
        overrides["custody_address_cooling_s"] = 600
    if demo and "RINGFENCE_IDENTITY_WITHDRAWAL_LOCK_S" not in os.environ:
        overrides["identity_withdrawal_lock_s"] = 600
    if demo and "RINGFENCE_SHIELD_SWEEP_EVERY_S" not in os.environ:
        overrides["shield_sweep_every_s"] = 60  # custody: the demo's trades reach the shield vault within a minute
    return overrides


def build(data: Path, demo: bool, public_url: str | None = None, forwarded_allow_ips: str | None = None,
          admin_url: str | None = None, warm: object = None, pipeline: bool = False) -> tuple[object, object, dict[str, object]]:
    """The app and exchange on `data`. `warm`: a promoted standby's engine and read models (replication/serving.py), taken over
    instead of replaying the journal. `pipeline`: the engine node's pipelined group commit (docs/journal.md)."""
    from ..identity.context import IdentityContext
    from ..settings import load_settings
    from ..store import Store, record_location
    from .app import create_app
    from .auth import ApiGate, IdentityAuthenticator
    from .binance import stp_defaults
    from .demo import seed_demo, write_demo_keys
    from .service import Exchange

    data.mkdir(parents=True, exist_ok=True)
    settings = load_settings(**settings_overrides(data, demo, public_url, forwarded_allow_ips))
    ctx = IdentityContext(store=Store.from_url(settings.database_url), settings=settings)
    record_location(data, ctx.store.engine)  # for `backup create` on this directory
    # mail (identity/delivery.py): probe SMTP (a ConfigError outside dev mode), or the demo's catcher
    from ..identity.delivery import prepare_for_serve

    ctx.mail_setup = prepare_for_serve(ctx, demo=demo, smtp_configured="RINGFENCE_IDENTITY_SMTP_HOST" in os.environ)
    ctx.demo = demo
    exchange = Exchange(data, pipeline=pipeline)
    exchange.open(warm)  # type: ignore[arg-type]
    info: dict[str, object] = {"recovered_seq": exchange.last_seq, "forwarded_allow_ips": settings.forwarded_allow_ips(),
                               "mail": ctx.mail_setup, "store": ctx.store.describe()}
    custody = custody_runtime(data, settings, demo, ctx)  # custody
    withdraw_addresses = None
    if demo:
        from ..index.worker import refresh_demo_feed  # stale demo quotes would leave seeding REDUCE_ONLY

        refresh_demo_feed(exchange.node)
        info["demo"] = seed_demo(exchange.node)
        from ..staff.demo import seed_demo_staff  # the demo genesis quorum, keys in DIR/demo-staff.json

        staff = seed_demo_staff(exchange.node, data, ctx)
        if custody is not None:  # custody: chains, wallets, policy, treasury; alice's address book
            info["custody"] = custody.bootstrap(exchange.node)  # type: ignore[attr-defined]
            withdraw_addresses = custody.add_demo_address_book(exchange.node, "alice")  # type: ignore[attr-defined]
        info["keys"] = str(write_demo_keys(ctx, data, withdraw_addresses))
        info["keys"] = f"{info['keys']}; demo staff {', '.join(staff['staff'])} (operator quorum 2; console /admin): {staff['file']}"
        # the demo state was written by direct node commands: rebuild the read models from the journal
        exchange.node.close()
        exchange = Exchange(data, pipeline=pipeline)
        exchange.open()
    elif custody is not None:
        info["custody"] = custody.bootstrap(exchange.node)  # type: ignore[attr-defined]
    admin_token = ""
    if custody is not None and demo and admin_url:
        from .chain_admin import write_admin_file

        admin_token = write_admin_file(data, admin_url)  # custody: the demo faucet's token (0600)
    gate = ApiGate(
        IdentityAuthenticator(ctx),
        weight_per_min=settings.api_weight_per_min,
        key_weight_per_min=settings.api_key_weight_per_min,
        ban_after=settings.api_ban_after,
        ban_s=settings.api_ban_s,
    )
    from ..i18n.fiat import FiatRates, load_or_create_token

    por_box: dict[str, Any] = {}  # the proof of solvency publisher, started below once the app is built
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
        custody=custody,
        chain_admin_token=admin_token,
        monitoring_rules=settings.monitoring_rules,
        monitoring_poll_ms=settings.monitoring_poll_ms,
        monitoring_flush_ms=settings.monitoring_flush_ms,
        monitoring_geoip=settings.monitoring_geoip,
        monitoring_scorer=settings.monitoring_scorer,
        monitoring_scorer_missed_answers=settings.monitoring_scorer_missed_answers,
        stp=stp_defaults(settings.trading_stp_default, settings.trading_stp_markets),
        # display-only fiat rates (docs/i18n.md): the last pushed, or the demo's offline source
        fiat_rates=FiatRates.open(data, demo=demo),
        rates_token=load_or_create_token(data),
        por_publisher=lambda: por_box.get("publisher"),
    )
    # proof of solvency on a schedule and the shield fund rule (issue 15, items 6-7; the block below).
    # The custody runtime proves its own wallets' reserves (signed by their signers, one height per
    # chain); its shield sweeper is one of its supervised workers (custody/runtime.py).
    sources = [custody.reserve_source(exchange.read)] if custody is not None else []  # type: ignore[attr-defined]
    por = info["por"] = start_por_publisher(exchange, data, settings, reserve_sources=sources)
    por_box.update(por)  # POST /admin/v1/por/publish reaches its publisher (api/admin.py)
    info["api_gate"] = gate  # serve --gateways: its authenticator teaches the gateways their keys (api/relay.py)
    register_por_metrics(app, exchange, data, settings)
    return app, exchange, info


# ---------------------------------------------------------------- proof of solvency on a schedule


def start_por_publisher(exchange: Any, data: Path, settings: Any, reserve_sources: Sequence[Any] = ()) -> dict[str, Any]:
    """Publish one proof now (so /por answers as soon as the server is ready), then one every
    `settings.por_every_s` seconds on a daemon thread, into `DIR/por/<n>/` (docs/por.md).

    `reserve_sources` are custody's `ReserveSource`s (signed claims and balances at one height per
    chain); without any, each proof covers liabilities only and says "no reserve evidence". The
    publisher reads engine state only through `exchange.read` and never submits a command.
    Outside dev mode it needs RINGFENCE_POR_SECRET; without one it stays off and says why.
    """
    from ..errors import ConfigError
    from ..solvency.pol import load_secret
    from ..solvency.publisher import NodeStopped, PorPublisher

    try:
        secret = load_secret(os.environ.get("RINGFENCE_POR_SECRET"), dev_mode=settings.mode == "dev")
    except ConfigError as err:
        return {"off": str(err)}
    from ..solvency.reserve_source import load_reserve_sources

    sources = list(reserve_sources) + load_reserve_sources(settings.por_reserve_sources, exchange, data)
    from ..pacing import POR_SHARE_PERMILLE, CpuPacer

    publisher = PorPublisher(partial(held_read, exchange), data / "por", secret, sources=sources, keep=settings.por_keep,
                             value_asset=settings.shield_value_asset, every_s=settings.por_every_s,
                             alive=lambda: exchange.node.writer is not None,
                             stopped=partial(exchange.node.stopped_reason, detailed=True),
                             # the schedule's proofs are paced: one was ~50 ms of CPU in one go (docs/latency.md, session 20)
                             pacer=CpuPacer(share_permille=POR_SHARE_PERMILLE))
    from ..errors import ValidationError

    try:
        entry = publisher.publish()
    except ValidationError as err:  # a new exchange without any asset yet: nothing to prove
        publisher.start()  # the schedule publishes once there is
        return {"publisher": publisher, "waiting": str(err), "every_s": settings.por_every_s}
    except NodeStopped as err:
        return {"publisher": publisher, "off": str(err)}
    publisher.start()
    return {"publisher": publisher, "n": entry["n"], "position": entry["position"], "accounts": entry["accounts"],
            "every_s": settings.por_every_s, "reserves_proven": entry["reserves_proven"]}


def held_read(exchange: Any, fn: Callable[[Any], Any], wait_s: int = 30) -> Any:
    """`exchange.read(fn)`, returned once the node holds what it saw durably (journaled and, replicated,
    stored by the stream): an attestation (a proof of solvency) names no batch a standby never got.
    Unpipelined, a replicated batch is applied before the stream answers; if it refuses (a deposed
    primary) the node stops, and this raises `NotDurable` instead of returning that state."""
    from ..errors import NotDurable

    node = exchange.node
    result, seen = exchange.read(lambda engine: (fn(engine), engine.last_seq))
    deadline = time.monotonic() + wait_s
    while getattr(node, "durable_seq", seen) < seen and node.failed is None and time.monotonic() < deadline:
        time.sleep(0.01)
    reason = node.stopped_reason(detailed=True)
    if reason is not None or getattr(node, "durable_seq", seen) < seen:
        raise NotDurable(f"the state at journal:{seen} is not durable: {reason or f'not held within {wait_s} s'}")
    return result


def register_por_metrics(app: Any, exchange: Any, data: Path, settings: Any) -> None:
    """The newest proof and the live shield rule on /metrics (`ringfence_por_*`, `ringfence_shield_*`)."""
    from ..solvency.publisher import PorMetrics

    inner: Any = app
    while not hasattr(inner, "state") and hasattr(inner, "app"):  # through the ASGI middleware to FastAPI
        inner = inner.app
    inner.state.metrics.registry.register(PorMetrics(exchange.read, data / "por", settings.shield_value_asset))
    monitor = getattr(inner.state, "monitor", None)
    if monitor is not None and settings.shield_check_every_s:
        # the broken rule as a monitoring alert (GET /admin/v1/alerts), its live state in /admin/v1/monitoring
        from ..solvency.shield_alarm import ShieldAlarm

        monitor.system_checks.append(ShieldAlarm(exchange.read, monitor.store, settings.shield_value_asset,
                                                 settings.shield_check_every_s))


# ---------------------------------------------------------------- end of proof of solvency and shield fund


def serve_through_gateways(app: Any, data: Path, listeners: list[socket.socket], gateways: int, proxies: list[str],
                           keys: Any = None) -> None:
    """The engine process of `serve --gateways N` (api/relay.py): N gateway processes accept on
    `listeners` and relay to this process's Unix socket; they get SIGTERM when this process ends."""
    import subprocess

    import uvicorn

    from ..custody.btc_signing import spawn_child
    from .relay import EngineRelay, engine_socket_path

    from ..cli_paths import fail
    from ..errors import ConfigError
    from ..owned import make_own_folder

    path = engine_socket_path(data)
    try:  # DIR/run as it is once made: another user's run/ would let them swap the engine's socket
        make_own_folder(path.parent, "--data", "could swap the engine's socket and read or answer every gateway's "
                        "requests", f"remove {path.parent} (it is not the node's) and start again")
    except ConfigError as err:
        for listener in listeners:
            listener.close()
        fail(f"--data: {err.message}")
    fds = [listener.fileno() for listener in listeners]
    for listener in listeners:
        listener.set_inheritable(True)  # (listening since the start: `listen_on`)
    children: list[subprocess.Popen[bytes]] = []
    for index in range(1, gateways + 1):
        children.append(spawn_child([sys.executable, "-m", "ringfence.api.relay", ",".join(map(str, fds)), str(path), str(index),
                                     ",".join(proxies)],
                                    pass_fds=fds))
    # The gateways accept on their copies. This process never accepts on the public port, but it keeps its copy
    # open until it ends: the port stays the node's even if every gateway has gone (intruder review of #21, F1).
    console.print(f"gateways: {gateways} processes ({', '.join(str(c.pid) for c in children)}) relay to {path}")
    try:
        uvicorn.run(EngineRelay(app, path, keys), uds=str(path.parent / "http.sock"), log_level="warning", lifespan="on",
                    timeout_graceful_shutdown=10)
    finally:
        for listener in listeners:
            listener.close()
        for child in children:
            child.terminate()
        for child in children:
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()


def check_before_start(data: Path, demo: bool, public_url: str, forwarded_allow_ips: str | None, replicate: str | None,
                       standby: str | None, peers: Path | None) -> str:
    """The settings' mode (RINGFENCE_MODE) once nothing refuses the start. What refuses a start, checked before `serve` creates anything (exit 2, one line per problem, no
    traceback): every bad RINGFENCE_ variable at once; once the variables parse, every other problem at once —
    the replication options (replication/serving.py checks them again), the prod-mode rules and the custody
    chains' mode — and, outside dev mode with nothing else wrong, the SMTP server (probed again when the mail
    delivery starts)."""
    from pydantic import ValidationError as SettingsInvalid
    from rich.markup import escape

    from ..cli_paths import fail
    from ..errors import ConfigError, RingfenceError
    from ..settings import Settings, settings_errors

    try:
        settings = Settings(**settings_overrides(data, demo, public_url, forwarded_allow_ips))  # type: ignore[arg-type]
    except SettingsInvalid as err:
        lines = settings_errors(err)
    else:
        from ..replication.serving import option_problems

        problems: list[RingfenceError] = [*option_problems(replicate, standby, demo, peers, settings.mode)]
        problems += settings.production_problems()
        chains = settings.custody_chains or ("BTC=local,ETH=local,USDT=local" if demo else "")  # as custody_runtime
        try:  # parsed in every mode: a bad value is refused before the app, identity and chain libraries load
            if not no_chains(chains):
                from ..custody.runtime import parse_chain_settings

                if parse_chain_settings(chains) and settings.mode != "dev":
                    problems.append(ConfigError("the local in-process chains are for dev mode only", field="RINGFENCE_CUSTODY_CHAINS"))
        except RingfenceError as err:
            problems.append(err)
        if not problems and settings.mode != "dev" and settings.identity_mail_poll_ms:  # the probe build makes (identity/delivery.py)
            from ..identity.mail import probe_smtp

            try:
                probe_smtp(settings)
            except RingfenceError as err:
                problems.append(err)
        lines = [str(p) for p in problems]
    if not lines:
        return str(settings.mode)
    for line in lines[:-1]:
        tty_console(stderr=True).print(f"[bold red]error:[/] {escape(line)}", soft_wrap=True)
    fail(lines[-1])
    raise AssertionError("fail exits")  # (for the type checker)


def serve(
    data: Path = typer.Option(Path("ringfence-data"), "--data", help="Data directory (journal and snapshots in DIR/engine, SQLite); locked while serving: other writers are refused, read-only commands (journal verify DIR) still work."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on. A wildcard or loopback address holds the port on both address families: 0.0.0.0 and [::], 127.0.0.1 (or localhost) and [::1] (clients may resolve localhost to either); a machine without IPv6 gets a warning."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="Port to listen on."),
    demo: bool = typer.Option(False, "--demo", help="List demo markets, fund alice and bob, seed books, start local chains (BTC, ETH, USDT) with a faucet (`ringfence chain pay`), write DIR/demo-keys.json (HMAC keys, one Ed25519 key, alice's withdraw key and address book)."),
    forwarded_allow_ips: str | None = typer.Option(
        None,
        "--forwarded-allow-ips",
        help="Comma-separated IPs or CIDR networks of reverse proxies whose X-Forwarded-For/-Proto are believed "
        "(default: RINGFENCE_API_FORWARDED_ALLOW_IPS, else none: the TCP peer is the client).",
        show_default=False,
    ),
    # --- replication (ringfence.replication, docs/resilience.md) ---
    replicate: str | None = typer.Option(None, "--replicate", help="Primary: publish every journal batch to this NATS "
                                         "JetStream stream and acknowledge only after its ack. The stream's URL: tls:// with the server's CA pinned "
                                         "(tls_ca=) and a user, as `replication nats-config` prints it, its password in the "
                                         "environment (RINGFENCE_NATS_PASSWORD), is outside dev mode the only form accepted "
                                         "(the examples below); plain nats:// in dev mode. "
                                         "Outside dev mode the node needs staff operators first (`ringfence staff init` "
                                         "on the stopped node): refused at start without them."),
    standby: str | None = typer.Option(None, "--standby", help="Hot standby: follow the stream (a URL as "
                                       "--replicate's, the same first_primary=) into DIR, verifying "
                                       "signature (--peers), chain and state of every batch, until promoted; then serve as "
                                       "the primary."),
    node_id: str | None = typer.Option(None, "--node-id", help="This node's name in the leadership record "
                                       "(default: HOSTNAME-PORT)."),
    peers: Path | None = typer.Option(None, "--peers", envvar="RINGFENCE_REPLICATION_PEERS",
                                      help="With --replicate/--standby: the peers file ({\"NODE_ID\": \"hex public key\"}, "
                                      "lines from `ringfence replication node-key`) every stream message's signature is "
                                      "checked against; this node signs with DIR/node.key (made on first start). "
                                      "Required with --standby, and in prod mode."),
    gateways: int = typer.Option(0, "--gateways", min=0, max=32, help="Run N gateway processes on --port in front of this "
                                 "(engine) process, which then listens only on DIR/run/engine.sock (0: one process, as before). "
                                 "Checks (keys, replay, rate limits) stay in the engine, so they hold across gateways."),
    pipeline: bool = typer.Option(False, "--pipeline", help="Pipelined group commit: the engine applies the "
                                  "next batch while the last one's fsync runs; answers and feeds still wait for it, but a REST "
                                  "read may show a batch up to one fsync before it is durable (docs/journal.md). Off by default; "
                                  "ignored with --replicate/--standby, which use the classic one."),
) -> None:
    """Run the exchange: Binance-compatible REST + WebSocket API and the web dashboard.

    It also delivers the e-mail outbox every RINGFENCE_IDENTITY_MAIL_POLL_MS (2000; 0 = not here)
    over SMTP: RINGFENCE_IDENTITY_SMTP_HOST / _PORT / _SECURITY (none, starttls, ssl) / _USERNAME /
    _PASSWORD, RINGFENCE_IDENTITY_MAIL_FROM (docs/mail.md). Outside dev mode the SMTP server is
    checked at start and a wrong setting stops serve with exit 2. --demo in dev mode catches mail
    on a local SMTP server and shows it at /dev/mail.

    Identity lives in DIR/identity.sqlite3, or in PostgreSQL when RINGFENCE_DATABASE_URL names it: outside dev
    mode over TCP only with the server's certificate verified (?sslmode=verify-full&sslrootcert=CA_FILE), over a
    socket only in a directory no other user can write (?host=/var/run/postgresql), else refused with exit 2
    unless RINGFENCE_DATABASE_PLAIN_OK=1 (docs/resilience.md).

    Example: ringfence serve --demo --data ./ringfence-data --port 8000

    Example (replicated, prod mode; NATS-AUTH from `ringfence replication nats-config --out NATS-AUTH`): RINGFENCE_NATS_PASSWORD="$(cat NATS-AUTH/rf-node.password)" ringfence serve --data ./a --replicate "tls://rf-node@HOST:4222/RF?tls_ca=NATS-AUTH/ca.pem&first_primary=a" --node-id a --peers ./peers.json

    Example (replicated, dev mode): ringfence serve --data ./a --replicate "nats://127.0.0.1:4222/RF?first_primary=a" --node-id a --peers ./peers.json

    A replicated exchange outside dev mode (RINGFENCE_MODE=prod) registers its staff first, on the stopped primary:
    ringfence staff init --data ./a --member ada:operator --member ben:operator --out-dir ./keys (every promotion
    needs the operators' quorum; docs/resilience.md, 'A node key alone opens no epoch').

    Example (two gateway processes in front of the engine): ringfence serve --demo --data ./d --gateways 2
    """
    import gc

    # The cyclic collector is paused for the start (not for a standby, which may follow its stream for days):
    # start-up builds some 270,000 objects that live as long as the process (libraries, engine state, read
    # models, the app), and with the collector on every few hundred of them set off a collection, the older
    # generations' scanning all of them again (0.2-0.3 s of CPU of a 2 s `serve --demo` start, more with the
    # chains' libraries). freeze_startup_heap's full collection then frees start-up's cyclic garbage as before.
    paused = standby is None and gc.isenabled()
    if paused:
        gc.disable()
    try:
        _serve(data, host, port, demo, forwarded_allow_ips, replicate, standby, node_id, peers, gateways, pipeline)
    finally:
        if paused:
            gc.enable()  # (a start that failed; a served one turned it on again at freeze_startup_heap)


def _serve(data: Path, host: str, port: int, demo: bool, forwarded_allow_ips: str | None, replicate: str | None,
           standby: str | None, node_id: str | None, peers: Path | None, gateways: int, pipeline: bool) -> None:
    """`serve` itself (its options documented there)."""
    import gc

    import structlog
    import uvicorn

    from ..errors import RingfenceError

    import socket

    from ..cli_paths import fail, prepare_data_dir, refuse_foreign_data_dir

    structlog.configure(processors=[structlog.processors.TimeStamper(fmt="iso"), structlog.processors.JSONRenderer()])
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    # Everything serve creates (journal, snapshots, identity database and its WAL, keys, proofs)
    # is for this user only: the identity database holds password hashes and sealed secrets.
    os.umask(0o077)
    from .http_wire import check_settings

    try:
        wire = check_settings()  # the connection bounds (http_wire.py): refused here, by name, before anything starts
    except ValueError as err:
        fail(str(err))
    from ..listening import url_host

    public_url = f"http://{url_host(host)}:{port}"  # localhost for a loopback host of either family (both are held)
    mode = check_before_start(data, demo, public_url, forwarded_allow_ips, replicate, standby, peers)
    refuse_foreign_data_dir(data)  # another user's --data (or one they may write) before the port is taken
    # The node's listening sockets (listening.py: host:port and, for a wildcard or loopback host, the other address
    # family's twin), taken before anything is recovered or written and kept until the process ends: a standby's
    # status page serves on them while it follows, then the exchange (uvicorn, or the `--gateways` processes, which
    # inherit them) on the same sockets. So the port is the node's from the start until the stop (intruder review of
    # #21, F1: the standby closed its status page at the promotion and the exchange bound the port again seconds
    # later; another local user's process looping on bind() got it in between, and the node exited with no primary
    # left). A busy port (or twin) is refused here, before recovering or writing anything. A connection that arrives
    # before the exchange serves waits in the backlog and is answered once it does (`/readyz` says when).
    from rich.markup import escape

    from ..listening import ListenError, listen_on

    try:
        listeners = listen_on(host, port, lambda line: console.print(f"[yellow]warning:[/] {escape(line)}", soft_wrap=True))
    except ListenError as err:
        fail(str(err))
    prepare_data_dir(data)  # only now: a refused start leaves no folder behind
    try:
        # --- replication: a standby follows here until promoted; a primary hooks its node after build ---
        from ..replication.serving import after_build, before_build, say_replication_warnings

        def say(line: str) -> None:
            console.print(line, soft_wrap=True)

        say_replication_warnings(say)  # in order with these lines, on the same stream

        replicator, warm = before_build(data, replicate, standby, node_id, port, demo, say, host, peers=peers, mode=mode,
                                        listeners=listeners)
        app, exchange, info = build(data, demo, public_url, forwarded_allow_ips, custody_admin_url(host, port), warm=warm,
                                    pipeline=pipeline and replicator is None)
        after_build(exchange, replicator, say, promoted=warm is not None)
        exchange.source = f"gateway:{node_id or f'{socket.gethostname()}-{port}'}"  # journaled with each command
    except RingfenceError as err:
        for listener in listeners:
            listener.close()
        console.print(f"[bold red]error:[/] {escape(str(err))}")  # a field like --peers[b] is text, not markup
        raise typer.Exit(2) from None
    if warm is None:  # a promoted standby replayed nothing: its line ("kept warm at sequence N") said so
        console.print(f"ringfence: journal recovered to sequence {info['recovered_seq']} in {data}")
    pipelined = exchange.node.pipeline  # type: ignore[attr-defined]
    in_flight = exchange.node.max_batches_in_flight  # type: ignore[attr-defined]
    console.print(f"ringfence: group commit {'pipelined' if pipelined else 'classic'}, one fsync per acknowledgement"
                  f"{f' (--pipeline, at most {in_flight} batches in flight)' if pipelined else (' (replicated)' if pipeline else '')}",
                  soft_wrap=True)
    from .. import native

    console.print(f"ringfence: matching {native.describe()}", soft_wrap=True)  # compiled or pure Python, and why
    console.print(f"identity store: {info['store']}", soft_wrap=True)
    mail = info["mail"]
    for warning in mail.warnings:  # type: ignore[attr-defined]
        console.print(f"[yellow]warning:[/] {warning}")
    console.print(mail.summary)  # type: ignore[attr-defined]
    if demo:
        d = info["demo"]
        console.print(
            f"demo: markets listed {', '.join(d['markets']) or 'earlier'}; funding transfers applied now: "
            f"{d['transfers_applied']}; market-maker orders placed now: {d['ladder_orders']}"
        )
        console.print(f"demo API keys: {info['keys']}")
        if "custody" in info:
            console.print(f"custody: local chains for {', '.join(info['custody']['assets'])}; faucet: "  # type: ignore[index]
                          f"ringfence chain pay --data {data} --asset BTC --to ADDRESS --amount 0.5")
    if "custody" in info and info["custody"]["policy"] != "active":  # type: ignore[index]  # custody: no policy yet
        console.print(f"[bold yellow]custody:[/] {info['custody']['policy']}")  # type: ignore[index]
    por = info["por"]
    if "off" in por:  # type: ignore[operator]
        console.print(f"[bold yellow]proof of solvency is off:[/] {por['off']}")  # type: ignore[index]
    elif "waiting" in por:  # type: ignore[operator]
        console.print(f"proof of solvency: nothing to prove yet ({por['waiting']}); tried again every {por['every_s']} s")  # type: ignore[index]
    else:
        console.print(f"proof of solvency #{por['n']} for {por['accounts']} accounts at {por['position']}, then every "  # type: ignore[index]
                      f"{por['every_s']} s: /por, /por/history, /por/verify, /v1/por/proof")  # type: ignore[index]
    from ..index.worker import demo_feed_registered, start_demo_feed

    # the index feed simulator: five seeded venues quote BTCUSDT and ETHUSDT (docs/index.md); a
    # standby promoted from a demo primary carries its feed on
    if demo or (standby and demo_feed_registered(exchange.node.engine)):  # type: ignore[attr-defined]
        feed = start_demo_feed(exchange)
        if feed is not None:
            console.print(f"index feed: simulated venues sim1..sim5 (seed {feed.seed}) for BTCUSDT, ETHUSDT: /v1/index, /fapi/v1/premiumIndex")  # type: ignore[attr-defined]
    from ..derivatives.worker import start_liquidation_worker  # accounts below maintenance (docs/derivatives.md)

    start_liquidation_worker(exchange)
    heap = freeze_startup_heap()  # last, so that it holds everything start-up built
    gc.enable()  # paused by `serve` for the start (a no-op for a standby's, never paused)
    console.print(f"ringfence: start-up heap frozen out of the cyclic GC: {heap['frozen']:,} objects; a full collection "
                  f"took {heap['full_collection_cpu_us_before'] // 1000} ms of CPU, now {heap['full_collection_cpu_us_after'] // 1000} ms",
                  soft_wrap=True)
    console.print(f"serving on {public_url}/  (dashboard /, sign-up /signup, REST /api/v3, WebSocket /ws, WebSocket API /ws-api/v3, OpenAPI /openapi.json, metrics /metrics)")
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
    from ..listening import LISTEN_BACKLOG
    from .ws import KeepRawWebSocketSend
    from .http_wire import DeadlineHttpProtocol
    from .ws_wire import BudgetedWebSocketProtocol

    console.print(f"connections: at most {wire['max_connections']:,} per process and {wire['max_connections_per_ip']:,} per "
                  f"address (0: no bound), requests read within {wire['request_timeout_s']:g} s, responses taken within "
                  f"{wire['write_timeout_s']:g} s (docs/api.md)", soft_wrap=True)
    if gateways:
        serve_through_gateways(KeepRawWebSocketSend(app), data, listeners, gateways, proxies, info["api_gate"].auth)  # type: ignore[attr-defined]
        return
    config = uvicorn.Config(
        KeepRawWebSocketSend(app),  # lets market data be written to the WebSocket transports directly (api/ws.py)
        # No permessage-deflate: market data goes out as one pre-built frame written to every
        # subscriber (api/ws.py); compression would make each copy different and cost CPU per client.
        log_level="warning", lifespan="on", ws_max_size=65536, timeout_graceful_shutdown=10,
        ws_per_message_deflate=False, ws=BudgetedWebSocketProtocol,  # every frame a client sends is counted (ws_wire.py)
        http=DeadlineHttpProtocol,  # a request must arrive whole within a deadline (http_wire.py: slowloris)
        proxy_headers=bool(proxies), forwarded_allow_ips=proxies or [], backlog=LISTEN_BACKLOG,  # (listening.py)
    )
    server = uvicorn.Server(config)
    try:
        server.run(sockets=listeners)  # the sockets listening since the start (`listen_on`); uvicorn closes them at the end
    except KeyboardInterrupt:  # Ctrl-C: uvicorn drained and shut down (as uvicorn.run)
        pass
    if not server.started:
        sys.exit(3)  # uvicorn's STARTUP_FAILURE, as uvicorn.run exits

