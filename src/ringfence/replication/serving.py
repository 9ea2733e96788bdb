"""How `ringfence serve --replicate URL` and `--standby URL` use the replication package.

Kept apart from api/serve.py so that file only calls `before_build` and `after_build`.
A standby follows the stream into `DIR/engine` until an operator promotes it, then serves as the
replicating primary on the same folder. It keeps the API read models warm as it follows (each
batch it applies is fed to them), so at promotion the exchange takes over its engine and read
models as they are instead of replaying the journal.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError
from . import Follower, Replicator, parse_target

__all__ = ["before_build", "after_build"]


def before_build(data: Path, replicate: str | None, standby: str | None, node_id: str | None, port: int, demo: bool,
                 say: Callable[[str], None], host: str = "127.0.0.1") -> tuple[Replicator | None, Any]:
    """Validate the options; as a standby, follow the stream until promoted; then, as the primary,
    connect and claim leadership (refused at once when another node leads) before anything opens.

    Returns the replicator and, for a promoted standby, its `WarmStart` (api/service.py): the
    engine and the API read models it kept current batch by batch as it followed, which the
    exchange takes over instead of replaying the journal (None otherwise)."""
    if replicate and standby:
        raise ConfigError("give --replicate (primary) or --standby (follower), not both", field="--standby")
    if standby and demo:
        raise ConfigError("a standby takes its state from the primary's stream; --demo is for a primary", field="--demo")
    ident = node_id or f"{socket.gethostname()}-{port}"
    if not (replicate or standby):
        return None, None
    target = parse_target(replicate or standby or "", "--replicate" if replicate else "--standby")
    if standby:
        import signal
        import sys

        # a stopped standby closes its journal and lock cleanly (exit 0), as a stopped server does
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        from ..api.service import ReadModels, WarmStart

        _import_the_server()  # now, not after the promotion: part of a quick take-over (RTO)
        models = ReadModels()
        follower = Follower(target, data / "engine", ident, on_progress=say, on_batch=models.feed)
        status = StandbyStatus(follower, host, port, models)
        say(f"standby {ident}: following stream {target.stream} at {target.display}; status on "
            f"http://{host}:{port}/v1/standby; promote with: "
            f"ringfence replication promote --nats {target.display_url()} --node-id {ident}")
        try:
            follower.follow_until_promoted()
            engine, position, lock = follower.hand_over()
        finally:
            status.close()  # frees the port for the server that starts next
            follower.close()
        say(f"standby {ident}: promoted: serving with the engine and API read models kept warm at sequence "
            f"{engine.last_seq} (no journal replay)")
        try:
            return Replicator(target, ident, data / "engine"), WarmStart(engine, position, lock, models)
        except BaseException:
            lock.release()
            raise
    return Replicator(target, ident, data / "engine"), None


def _import_the_server() -> None:
    """Import what the server builds after a promotion (the web app, identity, custody, workers):
    seconds of a cold start on a loaded machine, paid while following instead of inside the RTO."""
    import importlib

    for name in ("ringfence.api.app", "ringfence.api.auth", "ringfence.api.binance", "ringfence.api.demo",
                 "ringfence.identity.context", "ringfence.store", "ringfence.custody.runtime",
                 "ringfence.index.worker", "ringfence.derivatives.worker", "ringfence.identity.delivery"):
        importlib.import_module(name)


class StandbyStatus:
    """While following, the standby's port answers `GET /v1/standby` (its progress, as JSON) and
    `GET /readyz` with 503 (a load balancer must not send clients to it). Nothing else; no writes."""

    def __init__(self, follower: Follower, host: str, port: int, models: Any = None) -> None:
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        def snapshot() -> dict[str, Any]:
            # plain ints and strings written by the follower thread; a read may be one batch old
            return {"role": "standby", "node": follower.node_id, "stream": follower.target.stream,
                    "applied_seq": follower.engine.last_seq, "stream_seq": follower.stream_seq,
                    "fence_epoch": follower.fence_epoch, "batches_applied": follower.batches_applied,
                    "state_hash": follower.last_state_hash, "outcomes_checked": follower.outcomes_checked,
                    "digests_checked": follower.digests_checked, "read_models_seq": models.last_seq if models is not None else None}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path not in ("/v1/standby", "/readyz"):
                    self.send_error(404)
                    return
                body = json.dumps(dict(snapshot(), ready=False) if self.path == "/readyz" else snapshot()).encode()
                self.send_response(200 if self.path == "/v1/standby" else 503)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                return None  # quiet: the standby logs its own progress

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer((host, port), Handler)
        threading.Thread(target=self.server.serve_forever, name="ringfence-standby-status", daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def after_build(exchange: Any, replicator: Replicator | None, say: Callable[[str], None]) -> None:
    """As the primary: bring the stream up to the journal, then hook every batch."""
    if replicator is None:
        return
    target, ident = replicator.target, replicator.node_id
    caught_up = replicator.attach(exchange.node)
    say(f"replicating to stream {target.stream} at {target.display} as {ident}, epoch {replicator.epoch} "
        f"({caught_up} records published to catch up); a batch is acknowledged after fsync and the stream's ack")
    return None
