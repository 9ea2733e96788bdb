"""How `ringfence serve --replicate URL` and `--standby URL` use the replication package.

Kept apart from api/serve.py so that file only calls `before_build` and `after_build`.
A standby follows the stream into `DIR/engine` until an operator promotes it, then serves as the
replicating primary on the same folder (its read models are rebuilt from the journal it verified).
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError
from . import Follower, Replicator, parse_target

__all__ = ["before_build", "after_build"]


def before_build(data: Path, replicate: str | None, standby: str | None, node_id: str | None, port: int, demo: bool,
                 say: Callable[[str], None]) -> Replicator | None:
    """Validate the options; as a standby, follow the stream until promoted; then, as the primary,
    connect and claim leadership (refused at once when another node leads) before anything opens."""
    if replicate and standby:
        raise ConfigError("give --replicate (primary) or --standby (follower), not both", field="--standby")
    if standby and demo:
        raise ConfigError("a standby takes its state from the primary's stream; --demo is for a primary", field="--demo")
    ident = node_id or f"{socket.gethostname()}-{port}"
    if not (replicate or standby):
        return None
    target = parse_target(replicate or standby or "", "--replicate" if replicate else "--standby")
    if standby:
        import signal
        import sys

        # a stopped standby closes its journal and lock cleanly (exit 0), as a stopped server does
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        follower = Follower(target, data / "engine", ident, on_progress=say)
        say(f"standby {ident}: following stream {target.stream} at {target.display}; promote with: "
            f"ringfence replication promote --nats {target.display_url()} --node-id {ident}")
        try:
            follower.follow_until_promoted()
        finally:
            follower.close()
    return Replicator(target, ident)


def after_build(exchange: Any, replicator: Replicator | None, say: Callable[[str], None]) -> None:
    """As the primary: bring the stream up to the journal, then hook every batch."""
    if replicator is None:
        return
    target, ident = replicator.target, replicator.node_id
    caught_up = replicator.attach(exchange.node)
    say(f"replicating to stream {target.stream} at {target.display} as {ident}, epoch {replicator.epoch} "
        f"({caught_up} records published to catch up); a batch is acknowledged after fsync and the stream's ack")
    return replicator
