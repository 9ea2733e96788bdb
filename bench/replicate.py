"""Durable-and-replicated ledger transfers (NATS JetStream) against the local-only baseline, same run.

Usage: python bench/replicate.py [--smoke] [--seed N] [--nats nats://127.0.0.1:4222]
   or: python bench/ledger.py --replicate nats://127.0.0.1:4222 [--smoke] [--seed N]

The same workloads as bench/ledger.py (its functions are reused), on real files with real fsync:
1. closed-loop throughput (requests of 8,190 transfers, many-account stream): local-only, then
   replicated (every batch published to a JetStream stream and acknowledged only after the stream's
   ack) with the state hash in every batch and in every 64th;
2. open-loop acknowledgement latency at 50,000 transfers/s offered (requests of 10 transfers),
   local-only and replicated: the state hash of every 64th and every 1024th batch, computed on the
   sequencer thread or off it (state_hash_later=1: a forked child hashes it, a later batch carries
   it), and chain only (state_hash_every=10^6); latency from each request's scheduled send time.
3. the same, pipelined (`Node(pipeline=True)`, modes ending `_pipelined`): the sequencer writes,
   publishes and applies the next batch while a batch's fsync and stream ack are in flight; a
   batch is acknowledged once both returned. Sources without it record the mode as unsupported.
Goal from issue 21: replicated >= 0.5x local throughput, p99 <= 5 ms at 50,000 transfers/s.
Each run uses its own stream, deleted afterwards. `--modes a,b` runs only the modes named.

Before each timed latency run the harness collects and freezes the heap it built (the prepared
node, 10,000 accounts and their funding, the pre-generated requests; `gc.freeze`, as `serve` does
before serving): a full collection over that heap paused the process for 100-400 ms in earlier
runs (`breakdown.gc.max_us`), which alone set the local-only p99.

Every latency mode also reports `breakdown`, where its p99 comes from (`_Probe`): the generator's
send lateness, each request's wait in the engine queue, the sequencer's time per batch and within
it the local write + fsync and the replica log's `begin` (start the publish) and `finish` (stream
ack, plus an inline state hash when one is due), batch sizes, garbage-collector pauses, and a
histogram of the acknowledgement latency. The load average before and after each mode is
recorded: the machine is shared, and its load moves every number here. `sched` also gives the
process's CPU per batch and by thread (`cpu_ms_by_thread`: the sequencer, the NATS loop, the
digest thread, the generator on MainThread): where the CPU goes when the cores are saturated.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import time
import random
import secrets
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, percentile_us  # noqa: E402
from ledger import BATCH, SWITCH_INTERVAL_US, closed_loop, open_loop, prepared_node, transfer_stream  # noqa: E402

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from ringfence.replication import Replicator, parse_target  # noqa: E402


def _delete(nats_url: str, stream: str) -> None:
    async def go() -> None:
        import nats
        from nats.js.errors import NotFoundError

        nc = await nats.connect(nats_url)
        try:
            for name in (stream, f"KV_{stream}-leader"):
                try:
                    await nc.jetstream().delete_stream(name)
                except NotFoundError:
                    pass  # never created
        finally:
            await nc.close()

    asyncio.run(go())


def _replicated(node, nats_url: str, every: int, later: bool = False, digest: bool = False) -> tuple[Replicator, str]:  # type: ignore[no-untyped-def]
    stream = "RFBENCH" + secrets.token_hex(4).upper()
    replicator = Replicator(parse_target(f"{nats_url}/{stream}?state_hash_every={every}&state_hash_later={int(later)}"
                                         f"&state_digest={int(digest)}"), "bench",
                            key=Ed25519PrivateKey.generate())  # signs every message, as a served node does
    replicator.attach(node)  # publishes the setup history, then hooks every batch
    return replicator, stream


class _Probe:
    """Times the sequencer's phases of one node by wrapping its methods on the instance (a few
    microseconds per batch; the wrapped methods run unchanged)."""

    HISTOGRAM_MS = (1, 2, 3, 5, 10, 20, 50, 100, 200)

    def __init__(self, node, replicator: Replicator | None) -> None:  # type: ignore[no-untyped-def]
        self.ns: dict[str, list[int]] = {k: [] for k in ("queue_wait", "batch", "write_fsync", "begin", "finish", "digest", "gc")}
        self.sizes: list[int] = []
        self._submitted: dict[int, int] = {}
        self._gc_started = 0
        clock = time.perf_counter_ns

        def timed(owner, name: str, key: str) -> None:  # type: ignore[no-untyped-def]
            inner = getattr(owner, name)

            def wrapper(*args):  # type: ignore[no-untyped-def]
                started = clock()
                try:
                    return inner(*args)
                finally:
                    self.ns[key].append(clock() - started)

            setattr(owner, name, wrapper)

        submit, commit = node.submit, node._commit
        pipelined = bool(getattr(node, "pipeline", False))

        def submit_stamped(command, source=""):  # type: ignore[no-untyped-def]
            ack = submit(command, source)
            self._submitted[id(ack)] = clock()
            return ack

        def commit_timed(items):  # type: ignore[no-untyped-def]
            started = clock()
            for item in items:  # (an Ack since session 18; a (command, raw, ack) tuple in older sources)
                ack = item[2] if type(item) is tuple else item
                at = self._submitted.pop(id(ack), None)
                if at is not None:
                    self.ns["queue_wait"].append(started - at)
            self.sizes.append(len(items))
            commit(items)
            self.ns["batch"].append(clock() - started)

        node.submit, node._commit = submit_stamped, commit_timed
        if pipelined:  # the write alone; the syncs run on the record syncer (`sync`)
            self.ns.update(write=[], sync=[])
            timed(node.writer, "write_record", "write")
            timed(node.writer, "sync_records", "sync")
        else:
            timed(node.writer, "append_record" if replicator is not None else "append", "write_fsync")
        if replicator is not None:
            timed(replicator, "begin", "begin")
            timed(replicator, "finish_later" if pipelined and hasattr(replicator, "finish_later") else "finish", "finish")
            timed(replicator, "_digest_now", "digest")
        self._gen2: list[int] = []  # full collections' pauses
        gc.callbacks.append(self._on_gc)
        self._sched = _sched_ns()
        self._cpu = os.times()
        self._wall = time.perf_counter_ns()

    def _on_gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter_ns()
        else:
            self.ns["gc"].append(time.perf_counter_ns() - self._gc_started)
            if info.get("generation") == 2:
                self._gen2.append(self.ns["gc"][-1])

    def report(self, acks_ns: list[int], lateness_ns: list[int]) -> dict:
        gc.callbacks.remove(self._on_gc)
        out: dict = {"send_lateness": _pcts(lateness_ns)}
        out.update({key: _pcts(values) for key, values in self.ns.items() if values and key != "gc"})
        sizes = sorted(self.sizes)
        out["batch_requests"] = {"p50": sizes[len(sizes) // 2], "p99": sizes[int(len(sizes) * 0.99)], "max": sizes[-1]} if sizes else {}
        out["gc"] = {"collections": len(self.ns["gc"]), "max_us": max(self.ns["gc"], default=0) // 1000,
                     "total_us": sum(self.ns["gc"]) // 1000, "full": len(self._gen2),
                     "full_max_us": max(self._gen2, default=0) // 1000}
        # How much the machine's other work kept this process off the CPU: the kernel's run-queue
        # wait of every thread (/proc schedstat: runnable, not running) against the wall time,
        # and the CPU the process used. A pause that holds the run-queue wait is not the node's.
        cpu, sched = os.times(), _sched_ns()
        wall_ms = (time.perf_counter_ns() - self._wall) // 1_000_000
        waited = {tid: sched[tid][1] - self._sched.get(tid, (0, 0))[1] for tid in sched}
        cpu_ms = int((cpu.user + cpu.system - self._cpu.user - self._cpu.system) * 1000)
        # Where the process's CPU went, by thread (the run's own threads, by `threading` name), and
        # per batch: on a loaded machine the latencies move, this does not much.
        names = {t.native_id: t.name.partition("_")[0] for t in threading.enumerate()}
        by_thread: dict[str, int] = {}
        for tid, (running, _) in sched.items():
            name = names.get(tid, "other")
            by_thread[name] = by_thread.get(name, 0) + (running - self._sched.get(tid, (0, 0))[0]) // 1_000_000
        out["sched"] = {"wall_ms": wall_ms, "cpu_ms": cpu_ms,
                        "cpu_us_per_batch": cpu_ms * 1000 // max(1, len(self.sizes)),
                        "cpu_ms_by_thread": dict(sorted(by_thread.items(), key=lambda kv: -kv[1])),
                        "runqueue_wait_ms": sum(waited.values()) // 1_000_000,
                        "runqueue_wait_max_thread_ms": max(waited.values(), default=0) // 1_000_000}
        edges = self.HISTOGRAM_MS
        counts = [0] * (len(edges) + 1)
        for ns in acks_ns:
            counts[next((i for i, edge in enumerate(edges) if ns <= edge * 1_000_000), len(edges))] += 1
        out["ack_histogram_ms"] = {**{f"<={e}": c for e, c in zip(edges, counts)}, f">{edges[-1]}": counts[-1]}
        return out


def _sched_ns() -> dict[int, tuple[int, int]]:
    """Per thread of this process: (ns on a CPU, ns waiting on a run queue) from /proc schedstat."""
    out = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            running, waiting, _ = (int(x) for x in (task / "schedstat").read_text().split())
        except (OSError, ValueError):
            continue  # the thread ended meanwhile, or no schedstat on this kernel
        out[int(task.name)] = (running, waiting)
    return out


def _pcts(samples_ns: list[int]) -> dict:
    return {"p50_us": percentile_us(samples_ns, 50), "p99_us": percentile_us(samples_ns, 99),
            "max_us": percentile_us(samples_ns, 100)}


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _hash_cost(replicator: Replicator | None, transfers: int = 0) -> dict:
    """How long the sequencer thread spent per state hash: hashing it inline, or forking the hasher;
    and per state digest, also per transfer of the run (`transfers`)."""
    out: dict = {}
    if replicator is not None and replicator.hashes:
        out.update({"state_hashes": replicator.hashes,
                    "sequencer_ms_per_state_hash": round(replicator.hash_seconds * 1000 / replicator.hashes, 2)})
    if replicator is not None and replicator.digests:
        out.update({"state_digests": replicator.digests,
                    "sequencer_us_per_state_digest": round(replicator.digest_seconds * 1e6 / replicator.digests)})
        if transfers:
            out["sequencer_digest_us_per_transfer"] = round(replicator.digest_seconds * 1e6 / transfers, 2)
    return out


#: pipelined modes: `Node(max_batches_in_flight=...)` (0: no limit)
IN_FLIGHT = 1
#: (label, state_hash_every (0: local only), state_hash_later, state_digest, pipelined).
#: `replicated_digest` is the recommended set-up: every batch's state checked through the
#: incremental digest, the full state hash left to snapshots and replay; the other modes keep the
#: earlier runs comparable.
THROUGHPUT_MODES = (("local", 0, False, False, False), ("replicated_digest", 1_000_000, False, True, False),
                    ("replicated_digest_pipelined", 1_000_000, False, True, True),
                    ("replicated_digest_hash_every_64", 64, False, True, False),
                    ("replicated_hash_every_batch", 1, False, False, False),
                    ("replicated_hash_later_every_batch", 1, True, False, False),
                    ("replicated_hash_every_64", 64, False, False, False))
LATENCY_MODES = (("local", 0, False, False, False), ("local_pipelined", 0, False, False, True),
                 ("replicated_digest", 1_000_000, False, True, False),
                 ("replicated_digest_pipelined", 1_000_000, False, True, True),
                 ("replicated_chain_only", 1_000_000, False, False, False),
                 ("replicated_chain_only_pipelined", 1_000_000, False, False, True),
                 ("replicated_digest_hash_later_every_1024", 1024, True, True, False),
                 ("replicated_hash_every_64", 64, False, False, False), ("replicated_hash_later_every_64", 64, True, False, False),
                 ("replicated_hash_every_1024", 1024, False, False, False),
                 ("replicated_hash_later_every_1024", 1024, True, False, False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds (CI)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--nats", default="nats://127.0.0.1:4222")
    parser.add_argument("--note", default="", help="a note kept in the result line (e.g. which sources ran)")
    parser.add_argument("--modes", default="", help="comma-separated mode labels to run (default: all)")
    parser.add_argument("--in-flight", type=int, default=IN_FLIGHT,
                        help=f"pipelined modes: Node(max_batches_in_flight=N), 0: no limit (default {IN_FLIGHT})")
    args = parser.parse_args()
    run(args.nats, seed=args.seed, smoke=args.smoke, note=args.note,
        modes=tuple(filter(None, args.modes.split(","))), in_flight=args.in_flight)


def _unsupported(err: BaseException) -> dict:
    return {"unsupported": f"{type(err).__name__}: {err}"}


def _options(pipelined: bool, in_flight: int) -> dict:
    if not pipelined:
        return {}
    return {"pipeline": True, **({"max_batches_in_flight": in_flight} if in_flight else {})}


def run(nats_url: str, *, seed: int = 1, smoke: bool = False, note: str = "", modes: tuple[str, ...] = (),
        in_flight: int = 0) -> None:
    from ringfence.errors import ConfigError
    print(f"seed={seed}", file=sys.stderr)
    sys.setswitchinterval(SWITCH_INTERVAL_US / 1e6)
    rng = random.Random(seed)
    accounts = 200 if smoke else 10_000
    transfers = 20_000 if smoke else 500_000
    offered, per_request = 50_000, 10
    latency_seconds = 0.25 if smoke else 3.0
    root = Path(tempfile.mkdtemp(prefix="rf-bench-replicate-"))
    import ringfence

    result: dict = {"note": note, "sources": str(Path(ringfence.__file__).parent), "seed": seed, "workload": {"accounts": accounts, "transfers": transfers, "request_size": BATCH}}
    throughput: dict = {}
    if modes:
        result["modes"] = list(modes)
    result["pipelined_max_batches_in_flight"] = in_flight
    for label, every, later, digest, pipelined in THROUGHPUT_MODES:
        if modes and label not in modes:
            continue
        node, ids, next_id = prepared_node(root / f"tp-{label}", accounts, **_options(pipelined, in_flight))
        replicator, stream = _replicated(node, nats_url, every, later, digest) if every else (None, "")
        cmds, after = transfer_stream(rng, ids, transfers, next_id, False, BATCH)
        extra, _ = transfer_stream(rng, ids, 1, after, False, BATCH)
        try:
            seconds = closed_loop(node, cmds)
            # one more request, untimed: a batch's state digest is taken in the next batch's `begin`,
            # and on a loaded machine the sequencer can take every timed request in one batch (a
            # smoke run under load then reported no digest at all)
            node.submit(extra[0]).wait(120)
            throughput[label] = {"throughput_per_s": int(transfers / seconds), "journal_records": node.batches_committed,
                                 "failed": repr(node.failed) if node.failed else None, **_hash_cost(replicator, transfers)}
        except ConfigError as err:  # these sources cannot run this mode (a pipelined replicating node)
            throughput[label] = _unsupported(err)
        finally:
            node.close()
            if replicator is not None:
                replicator.close()
                _delete(nats_url, stream)
    local = throughput.get("local", {}).get("throughput_per_s")
    for label, *_ in THROUGHPUT_MODES[1:]:
        if local and "throughput_per_s" in throughput.get(label, {}):
            throughput[label]["vs_local"] = round(throughput[label]["throughput_per_s"] / local, 2)
    result["throughput"] = throughput
    latency: dict = {}
    for label, every, later, digest, pipelined in LATENCY_MODES:
        if modes and label not in modes:
            continue
        node, ids, next_id = prepared_node(root / f"lat-{label}", accounts, **_options(pipelined, in_flight))
        replicator, stream = _replicated(node, nats_url, every, later, digest) if every else (None, "")
        n = int(offered * latency_seconds)
        cmds, _ = transfer_stream(rng, ids, n, next_id, False, per_request)
        # the harness's own heap (the prepared node, the pre-generated requests) out of the
        # collector's way, as `serve` freezes its start-up heap: collections in the run then scan
        # only what was allocated while serving
        gc.collect()
        gc.freeze()
        frozen = gc.get_freeze_count()
        probe = _Probe(node, replicator)  # after the collection above: it is the harness's, not the run's
        load_before = _load()
        try:
            lateness: list[int] = []
            samples, errors, seconds = open_loop(node, cmds, per_request, offered, lateness)
            latency[label] = {"offered_per_s": offered, "achieved_per_s": int(n / seconds),
                              "p50_us": percentile_us(samples, 50), "p99_us": percentile_us(samples, 99),
                              "max_us": percentile_us(samples, 100), "errors": len(errors),
                              "journal_records": node.batches_committed, **_hash_cost(replicator, n),
                              "gc_frozen_objects": frozen,
                              "load_average": [load_before, _load()], "breakdown": probe.report(samples, lateness)}
        except ConfigError as err:  # these sources cannot run this mode (a pipelined replicating node)
            latency[label] = _unsupported(err)
            probe.report([], [])
        finally:
            gc.unfreeze()
            node.close()
            if replicator is not None:
                replicator.close()
                _delete(nats_url, stream)
    result["latency"] = latency
    result["goal"] = {"replicated_vs_local_min": 0.5, "p99_us_max": 5000, "offered_per_s": offered}
    emit("replicate", result, smoke=smoke)


if __name__ == "__main__":
    main()
