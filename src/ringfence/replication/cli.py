"""`ringfence replication promote|status`: the operator's side of leadership."""

from __future__ import annotations

import json
import sys

import typer
from rich.console import Console

from ..cli_paths import fail
from ..errors import RingfenceError

app = typer.Typer(help="Leadership of a replicated journal (NATS JetStream).\n\n"
                  "Example: ringfence replication status --nats nats://127.0.0.1:4222/RF", no_args_is_help=True)
console = Console(width=None if sys.stdout.isatty() else 140)


@app.command("promote")
def promote_cmd(
    nats: str = typer.Option(..., "--nats", help="The stream: nats://host:4222/STREAM."),
    node_id: str = typer.Option(..., "--node-id", help="The standby to make primary (its serve --node-id)."),
) -> None:
    """Make a standby the primary at the next fencing epoch (a revision-checked KV update).

    The standby catches up with the stream, publishes a fence, and starts serving; the old
    primary's next batch is refused by the stream and it stops acknowledging.

    Example: ringfence replication promote --nats nats://127.0.0.1:4222/RF --node-id b
    """
    from . import parse_target, promote

    try:
        record = promote(parse_target(nats, "--nats"), node_id)
    except RingfenceError as err:
        fail(str(err), 1)
    previous = record["previous"]
    was = f"{previous['node']} at epoch {previous['epoch']}" if previous else "nobody"
    console.print(f"promoted {node_id} at epoch {record['epoch']} (was {was})")


@app.command("status")
def status_cmd(nats: str = typer.Option(..., "--nats", help="The stream: nats://host:4222/STREAM.")) -> None:
    """Print the leader record and the stream's last sequence as JSON.

    Example: ringfence replication status --nats nats://127.0.0.1:4222/RF
    """
    from . import NatsLink, leader_of, parse_target

    try:
        link = NatsLink(parse_target(nats, "--nats"))
    except RingfenceError as err:
        fail(str(err), 1)
    try:
        kv = link.ensure_stream_and_bucket()
        leader, revision = leader_of(link, kv)
        info = link.call(link.js.stream_info(link.target.stream))
        typer.echo(json.dumps({"leader": leader, "revision": revision, "stream": link.target.stream,
                               "messages": info.state.messages, "last_stream_seq": info.state.last_seq}))
    finally:
        link.close()
