"""Leadership epochs never go backwards (intruder review of #21, F3).

The leader record (`{"epoch", "node"}` in the KV bucket) is one place an epoch is kept, and one
that can be rewritten or erased: a node whose record says "nobody leads" must not claim epoch 1
again while the stream holds fences and batches of epoch 3. So whatever claims leadership (a first
claim, a lease takeover, a promotion) takes an epoch strictly above the highest one it can see:

* the leader record;
* the stream: every message carries its writer's epoch (`Rf-Epoch`); a follower has read them all
  (its `fence_epoch`), a primary reads the newest message, and, when the leader record is missing,
  every message;
* this node's own memory, `DATA/engine/replication-epoch.json` (`{"STREAM": epoch}`): the highest
  epoch it ever saw or held, kept across restarts, so an erased record and an emptied view cannot
  talk it into an old epoch either.

A primary resuming its own leadership (the record names it) needs its epoch to be no lower than
any of those: a record rewritten to a lower epoch is refused, not served.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError, RingfenceError

__all__ = ["EpochMemory", "EpochBackwards", "epoch_above", "MEMORY_FILE"]

MEMORY_FILE = "replication-epoch.json"


class EpochBackwards(RingfenceError, PermissionError):
    code = "RF_EPOCH_BACKWARDS"
    http_status = 409
    default_message = "a leadership epoch may never go backwards"


class EpochMemory:
    """The highest epoch this node saw or held for `stream`, in `node_dir/replication-epoch.json`
    (kept in memory only without a `node_dir`). Written (fsynced) only when it grows."""

    def __init__(self, node_dir: Path | None, stream: str) -> None:
        self.path = node_dir / MEMORY_FILE if node_dir is not None else None
        self.stream = stream
        self._all: dict[str, int] = {}
        if self.path is not None and self.path.exists():
            try:
                data = json.loads(self.path.read_text())
                if not isinstance(data, dict) or not all(isinstance(k, str) and type(v) is int and v >= 0
                                                         for k, v in data.items()):
                    raise ValueError("not an object of stream -> epoch")
            except (ValueError, OSError) as err:
                raise ConfigError(f"{self.path} is unreadable ({err}): it remembers the highest leadership epoch this "
                                  "node saw; restore it from a backup, or write the highest epoch of every stream as "
                                  '{"STREAM": EPOCH}', field="--data") from None
            self._all = data

    def highest(self) -> int:
        return self._all.get(self.stream, 0)

    def see(self, epoch: int) -> None:
        if epoch <= self.highest():
            return
        self._all[self.stream] = epoch
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, (json.dumps(self._all, sort_keys=True) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def _epoch_of(msg: Any) -> int:
    value = (msg.headers or {}).get("Rf-Epoch", "")
    return int(value) if value.isascii() and value.isdigit() else 0


async def _stream_epoch(link: Any, scan: bool) -> tuple[int, int]:
    """(highest epoch, the stream sequence of a message carrying it) among the newest message, or
    every message with `scan`; (0, 0) for an empty stream."""
    from nats.js.errors import NotFoundError

    state = (await link.js.stream_info(link.target.stream)).state
    last = int(state.last_seq)
    seqs = range(last, int(state.first_seq) - 1, -1) if scan else range(last, last - 1, -1)
    best = (0, 0)
    for seq in seqs:
        if seq <= 0:
            break
        try:
            msg = await link.js.get_msg(link.target.stream, seq)
        except NotFoundError:
            continue  # (the stream denies deletes; a gap is not ours to explain here)
        epoch = _epoch_of(msg)
        if epoch > best[0]:
            best = (epoch, seq)
    return best


def epoch_above(link: Any, memory: EpochMemory, leader: dict[str, Any] | None, *, want: int | None = None,
                fence_epoch: int = 0, scan: bool = False, held: bool = False) -> int:
    """The epoch to claim: `want`, or (None) the highest epoch seen + 1. Seen: the leader record,
    `fence_epoch` (a follower's newest fence), the stream's newest message (every message with
    `scan`) and this node's `memory`. A `want` not above all of them is refused (`EpochBackwards`,
    naming where the higher epoch was seen); with `held` (a primary resuming its own epoch) it
    may equal it. The caller remembers the epoch (`memory.see`) once its claim has succeeded."""
    epoch_seen, seq = link.call(_stream_epoch(link, scan), 30 + (600 if scan else 0))
    candidates = [(int((leader or {}).get("epoch", 0)), "in the leader record"),
                  (fence_epoch, "in a fence this standby read from the stream"),
                  (epoch_seen, f"on stream message {seq}"),
                  (memory.highest(), f"in this node's {memory.path or 'memory'}")]
    floor, where = max(candidates, key=lambda c: c[0])
    epoch = floor + 1 if want is None else want
    if epoch < floor or (epoch == floor and not held):
        if held:
            raise EpochBackwards(f"the leader record gives this node epoch {epoch}, but epoch {floor} was seen {where}: "
                                 "the record was rewritten or another node led since; start this node with --standby "
                                 f"and promote one at epoch {floor + 1} or above", field="epoch")
        raise EpochBackwards(f"epoch {epoch} is not above epoch {floor}, seen {where}: epochs never go backwards; "
                             f"the next epoch is {floor + 1}", field="epoch")
    return epoch
