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
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError, RingfenceError

__all__ = ["EpochMemory", "EpochBackwards", "epoch_above", "MEMORY_FILE", "bounded_int", "MAX_DIGITS"]

MEMORY_FILE = "replication-epoch.json"
#: A number read from a header or a KV value others may write (an epoch, a lease, a sequence) has at
#: most this many digits: int() of a 4300-digit string raises (CPython's limit), and a forged huge
#: epoch would raise every later claim (intruder review of #21, I6b).
MAX_DIGITS = 18
_log = logging.getLogger("ringfence.replication")


def bounded_int(value: object) -> int | None:
    """`value` as a non-negative int when it is one (not a bool) below 10**MAX_DIGITS, or a string of
    1..MAX_DIGITS ASCII digits; None for anything else (junk: the caller ignores or refuses it)."""
    if type(value) is int:
        return value if 0 <= value < 10**MAX_DIGITS else None
    if isinstance(value, str) and 0 < len(value) <= MAX_DIGITS and value.isascii() and value.isdigit():
        return int(value)
    return None


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
        if self.path is not None and os.path.lexists(self.path):
            from ..owned import read_own_file

            try:  # a file of this user's in a folder others cannot write: one planted could hold back the epoch
                data = json.loads(read_own_file(self.path, "--data", "leadership epoch memory", private=False))
                if not isinstance(data, dict) or not all(isinstance(k, str) and type(v) is int and v >= 0
                                                         for k, v in data.items()):
                    raise ValueError("not an object of stream -> epoch")
            except ConfigError:  # (whose it is, where: said as it is)
                raise
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
        from ..nodekey import write_private

        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_private(self.path, (json.dumps(self._all, sort_keys=True) + "\n").encode())


def _epoch_of(msg: Any, seq: int, stream: str, peers: Mapping[str, Any] | None) -> int:
    """The epoch of stream message `seq`; 0 (ignored, with a warning) for junk: an epoch that is not
    1..MAX_DIGITS digits, or, given `peers`, a message not signed by one of them."""
    from . import signed_bytes
    from ..nodekey import verify

    headers = msg.headers or {}
    epoch = bounded_int(headers.get("Rf-Epoch", ""))
    if epoch is None:
        _log.warning("replication: stream message %d has no valid Rf-Epoch (at most %d digits): not counted as an epoch",
                     seq, MAX_DIGITS)
        return 0
    if peers is not None:
        public = peers.get(str(headers.get("Rf-Node", "")))
        try:
            raw = bytes.fromhex(str(headers.get("Rf-Sig", "")))
        except ValueError:
            raw = b""
        if public is None or not verify(public, raw, signed_bytes(stream, headers, msg.data or b"")):
            _log.warning("replication: stream message %d is not signed by a node of the peers file: its epoch %d "
                         "is not counted", seq, epoch)
            return 0
    return epoch


async def _stream_epoch(link: Any, scan: bool, peers: Mapping[str, Any] | None = None) -> tuple[int, int]:
    """(highest epoch, the stream sequence of a message carrying it) among the newest message, or
    every message with `scan`; (0, 0) for an empty stream. Junk (`_epoch_of`) counts as epoch 0."""
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
        epoch = _epoch_of(msg, seq, link.target.stream, peers)
        if epoch > best[0]:
            best = (epoch, seq)
    return best


def epoch_above(link: Any, memory: EpochMemory, leader: dict[str, Any] | None, *, want: int | None = None,
                fence_epoch: int = 0, scan: bool = False, held: bool = False,
                peers: Mapping[str, Any] | None = None) -> int:
    """The epoch to claim: `want`, or (None) the highest epoch seen + 1. Seen: the leader record,
    `fence_epoch` (a follower's newest fence), the stream's newest message (every message with
    `scan`) and this node's `memory`. A `want` not above all of them is refused (`EpochBackwards`,
    naming where the higher epoch was seen); with `held` (a primary resuming its own epoch) it
    may equal it. Given `peers`, only stream messages signed by one of them count. The caller
    remembers the epoch (`memory.see`) once its claim has succeeded."""
    epoch_seen, seq = link.call(_stream_epoch(link, scan, peers), 30 + (600 if scan else 0))
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
