"""Durable-and-replicated ledger transfers (NATS JetStream) against the local-only baseline, same run.

Usage: python bench/replicate.py [--smoke] [--seed N] [--nats nats://127.0.0.1:4222]
   or, over TLS as prod connects (a private nats-server of `ringfence replication nats-config`, made,
       run and deleted by): python bench/replicate_tls.py [--port 4333] [--smoke] [--modes ...]
   or, against a TLS server of your own (user rf-node, the password from RINGFENCE_NATS_PASSWORD):
       python bench/replicate.py --nats "tls://rf-node@HOST:PORT/STREAM?tls_ca=CA" (docs/resilience.md)
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
Each run uses its own stream (or the one `--nats` names), deleted afterwards;
the result line says which transport ran (`"transport": "tls"` or `"plain"`). `--modes a,b` runs only the modes named.

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
from urllib.parse import unquote, urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, percentile_us  # noqa: E402
from ledger import BATCH, SWITCH_INTERVAL_US, closed_loop, open_loop, prepared_node, transfer_stream  # noqa: E402

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from ringfence.replication import Replicator, guarded_client, parse_target  # noqa: E402


def _stream_url(nats_url: str, stream: str, **options: int) -> str:
    """`--nats` (nats://HOST:PORT or tls://[USER@]HOST:PORT[/STREAM]?tls_ca=CA) with `stream` as its path and
    the bench's `options` merged into its query (the bench's win over the same keys in `--nats`)."""
    parsed = urlsplit(nats_url)
    query = [part for part in parsed.query.split("&") if part and part.partition("=")[0] not in options]
    query += [f"{key}={value}" for key, value in options.items()]
    return urlunsplit((parsed.scheme, parsed.netloc, f"/{stream}", "&".join(query), ""))


def _stream_name(nats_url: str) -> str:
    """The stream a replicated mode runs on: the one `--nats` names (a server whose users may use that
    stream only, as `replication nats-config` writes them; deleted before and after each mode), else
    a new random one per mode."""
    return urlsplit(nats_url).path.strip("/") or "RFBENCH" + secrets.token_hex(4).upper()


def _transport(nats_url: str) -> str:
    return "tls" if parse_target(_stream_url(nats_url, "RFBENCH"), "--nats").servers.startswith("tls://") else "plain"


def _delete(nats_url: str, stream: str) -> None:
    """Delete the run's stream and its leadership bucket, through the client the replication code
    uses (`guarded_client`: on tls:// the CONNECT and its password go over TLS only, verified against
    `tls_ca`), as the user in `--nats` (its password from RINGFENCE_NATS_PASSWORD, as the nodes read it)."""
    target = parse_target(_stream_url(nats_url, stream), "--nats")

    async def go() -> None:
        import ssl

        from nats.js.errors import NotFoundError

        from ringfence.replication.auth import inbox_prefix

        tls = ({"tls": ssl.create_default_context(cafile=target.tls_ca or None)} if target.servers.startswith("tls://")
               else {})
        nc = guarded_client()
        await nc.connect(target.servers, connect_timeout=3, allow_reconnect=False,
                         inbox_prefix=inbox_prefix(unquote(urlsplit(target.servers).username or "")), **tls)
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
    stream = _stream_name(nats_url)
    if urlsplit(nats_url).path.strip("/"):
        _delete(nats_url, stream)  # a fixed stream: what an interrupted run left
    replicator = Replicator(parse_target(_stream_url(nats_url, stream, state_hash_every=every, state_hash_later=int(later),
                                                     state_digest=int(digest)), "--nats"), "bench",
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
        #: per request, when it was submitted and its batch's index; per batch, when the sequencer
        #: took it and when `_commit` returned (its requests answered): `_Stages`
        self.req_at: list[int] = []
        self.req_k: list[int] = []
        self.c0: list[int] = []
        self.c1: list[int] = []
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
            k = len(self.sizes)
            for item in items:  # (an Ack since session 18; a (command, raw, ack) tuple in older sources)
                ack = item[2] if type(item) is tuple else item
                at = self._submitted.pop(id(ack), None)
                if at is not None:
                    self.ns["queue_wait"].append(started - at)
                    self.req_at.append(at)
                    self.req_k.append(k)
            self.sizes.append(len(items))
            self.c0.append(started)
            commit(items)
            ended = clock()
            self.c1.append(ended)
            self.ns["batch"].append(ended - started)

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


class _Stages:
    """Where the tail's time goes, stage by stage (`breakdown.tail_stages`): per batch, the
    sequencer's steps (`begin`, the local write + fsync, the wait for the state digest, the apply,
    the wait for the stream's ack in `finish`, answering) and the replication path on the NATS
    loop (the hop to the loop, signing and queueing the message, its flush to the socket, the
    round trip through nats-server until the ack's bytes are read, the ack's processing), and per
    request its wait in the queue. The requests whose time in the node (submitted to answered) is
    in the top 1 % are the tail: the report gives each stage's p50 over them — of their own batch
    and of the batch they waited behind — beside the p50 over all requests. Classic group commit
    only (a pipelined node answers on other threads). Wraps methods on the instances, as `_Probe`."""

    def __init__(self, node, replicator: Replicator, probe: "_Probe") -> None:  # type: ignore[no-untyped-def]
        clock = time.perf_counter_ns
        self.probe = probe
        names = ("b0", "b1", "f0", "f1", "w0", "w1", "n0", "n1", "d0", "d1", "L", "S", "F", "R", "A")
        self.at: dict[str, dict[int, int]] = {name: {} for name in names}
        self.k_of: dict[int, int] = {}  # first_seq -> batch index (`_Probe.sizes`)
        at, k_of = self.at, self.k_of

        def batch() -> int:
            return len(probe.sizes) - 1

        def around(owner, name: str, start: str, end: str, key_of_args=None) -> None:  # type: ignore[no-untyped-def]
            inner = getattr(owner, name)

            def wrapper(*args):  # type: ignore[no-untyped-def]
                k = batch()
                at[start][k] = clock()
                try:
                    return inner(*args)
                finally:
                    at[end][k] = clock()

            setattr(owner, name, wrapper)

        begin = replicator.begin

        def begin_mapped(first_seq, *rest):  # type: ignore[no-untyped-def]
            k_of[first_seq] = batch()
            return begin(first_seq, *rest)

        replicator.begin = begin_mapped  # type: ignore[method-assign]
        around(replicator, "begin", "b0", "b1")
        around(node.writer, "append_record", "f0", "f1")
        around(replicator, "written", "w0", "w1")
        around(replicator, "finish", "n0", "n1")
        if hasattr(replicator, "answered"):  # session 21: the state digest after the batch is answered
            around(replicator, "answered", "d0", "d1")
        # the NATS loop's side, keyed by the batch's first sequence number
        send_record, send, stored = replicator._send_record, replicator._send, replicator._stored
        unflushed: list[int] = []
        last_read = [0]

        async def send_record_stamped(settle, kind, first_seq, *rest):  # type: ignore[no-untyped-def]
            at["L"][first_seq] = clock()
            return await send_record(settle, kind, first_seq, *rest)

        async def send_stamped(data, headers):  # type: ignore[no-untyped-def]
            waiting = await send(data, headers)
            seq = int(headers.get("Rf-First-Seq", 0))
            at["S"][seq] = clock()
            unflushed.append(seq)
            return waiting

        def stored_stamped(first_seq, want, reply):  # type: ignore[no-untyped-def]
            at["R"][first_seq], at["A"][first_seq] = last_read[0], clock()
            return stored(first_seq, want, reply)

        replicator._send_record, replicator._send, replicator._stored = send_record_stamped, send_stamped, stored_stamped  # type: ignore[method-assign]
        direct = getattr(replicator, "_direct", None)
        if direct is not None:  # the sequencer's own connection (session 21): sent and read on the sequencer
            publish, fill = direct.publish, direct._fill

            def publish_stamped(subject, reply, headers, payload):  # type: ignore[no-untyped-def]
                seq = int(headers.get("Rf-First-Seq", 0))
                at["L"][seq] = at["S"][seq] = clock()
                try:
                    return publish(subject, reply, headers, payload)
                finally:
                    at["F"][seq] = clock()

            def fill_stamped(deadline):  # type: ignore[no-untyped-def]
                fill(deadline)
                last_read[0] = clock()

            direct.publish, direct._fill = publish_stamped, fill_stamped
        transport = replicator.link.nc._transport
        writelines, read = transport.writelines, transport.read

        def writelines_stamped(payload):  # type: ignore[no-untyped-def]
            result = writelines(payload)
            now = clock()
            for seq in unflushed:
                at["F"][seq] = now
            unflushed.clear()
            return result

        async def read_stamped(size):  # type: ignore[no-untyped-def]
            data = await read(size)
            last_read[0] = clock()
            return data

        transport.writelines, transport.read = writelines_stamped, read_stamped
        self._ctx = _ctx_switches("self")
        self._server = _server_pid()
        self._server_before = _sched_of(self._server) if self._server else {}

    def report(self) -> dict:
        probe, at = self.probe, self.at
        by_seq = {name: {self.k_of[s]: v for s, v in at[name].items() if s in self.k_of} for name in ("L", "S", "F", "R", "A")}
        stamps = {**{name: at[name] for name in ("b0", "b1", "f0", "f1", "w0", "w1", "n0", "n1", "d0", "d1")}, **by_seq}
        c0 = probe.c0
        # when the batch's requests were answered: before `answered` (its digest) where the node calls it
        c1 = [at["d0"].get(k, end) for k, end in enumerate(probe.c1)]
        spans = {  # stage: (from, to) per batch
            "prep": ("c0", "b0"), "begin": ("b0", "b1"), "to_fsync": ("b1", "f0"), "write_fsync": ("f0", "f1"),
            "digest_wait": ("w0", "w1"), "apply": ("w1", "n0"), "finish_wait": ("n0", "n1"), "answer": ("n1", "c1"),
            "digest_after_answer": ("d0", "d1"),
            "rep_to_loop": ("b0", "L"), "rep_sign_queue": ("L", "S"), "rep_flush": ("S", "F"),
            "rep_server_rtt": ("F", "R"), "rep_ack_process": ("R", "A"), "rep_ack_to_sequencer": ("A", "n1"),
        }

        def span(k: int, name: str) -> int | None:
            a, b = spans[name]
            x = c0[k] if a == "c0" else stamps[a].get(k)
            y = c1[k] if b == "c1" else stamps[b].get(k)
            return None if x is None or y is None else y - x

        n = len(probe.req_at)
        in_node = [c1[k] - t for t, k in zip(probe.req_at, probe.req_k) if k < len(c1)]
        if not in_node:
            return {}
        cut = sorted(in_node)[int(len(in_node) * 0.99)]
        tail = [i for i in range(len(in_node)) if in_node[i] >= cut]

        def p50(values: list[int]) -> int:
            return sorted(values)[len(values) // 2] // 1000 if values else -1

        def stages(indices: list[int], shift: int) -> dict:
            out = {}
            ks = [probe.req_k[i] + shift for i in indices if probe.req_k[i] + shift >= 0]
            for name in spans:
                out[name] = p50([v for k in ks if (v := span(k, name)) is not None])
            out["batch_requests"] = p50([probe.sizes[k] * 1000 for k in ks])
            out["replication_last"] = round(sum(1 for k in ks if stamps["A"].get(k, 0) > stamps["n0"].get(k, 1 << 62))
                                            / max(1, len(ks)), 2)
            return out

        queue = [c0[probe.req_k[i]] - probe.req_at[i] for i in range(len(in_node))]
        ctx = _ctx_switches("self")
        server_after = _sched_of(self._server) if self._server else {}
        names = {t.native_id: t.name.partition("_")[0] for t in threading.enumerate()}
        switches: dict[str, list[int]] = {}
        for tid, (vol, invol) in ctx.items():
            before = self._ctx.get(tid, (0, 0))
            row = switches.setdefault(names.get(tid, "other"), [0, 0])
            row[0] += vol - before[0]
            row[1] += invol - before[1]
        server = {"cpu_ms": sum(v[0] - self._server_before.get(t, (0, 0, 0, 0))[0] for t, v in server_after.items()) // 1_000_000,
                  "runqueue_wait_ms": sum(v[1] - self._server_before.get(t, (0, 0, 0, 0))[1] for t, v in server_after.items()) // 1_000_000,
                  "ctx_voluntary": sum(v[2] - self._server_before.get(t, (0, 0, 0, 0))[2] for t, v in server_after.items()),
                  "ctx_involuntary": sum(v[3] - self._server_before.get(t, (0, 0, 0, 0))[3] for t, v in server_after.items())}
        return {"requests": n, "tail_cut_us": cut // 1000, "tail_requests": len(tail),
                "queue_wait_us": {"all_p50": p50(queue), "tail_p50": p50([queue[i] for i in tail])},
                "own_batch_p50_us": {"all": stages(list(range(len(in_node))), 0), "tail": stages(tail, 0)},
                "batch_waited_behind_p50_us": {"all": stages(list(range(len(in_node))), -1), "tail": stages(tail, -1)},
                "ctx_switches_by_thread": {k: {"voluntary": v[0], "involuntary": v[1]} for k, v in sorted(switches.items())},
                "nats_server": server}


def _ctx_switches(pid: str) -> dict[int, tuple[int, int]]:
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = dict(line.split(":", 1) for line in (task / "status").read_text().splitlines() if "ctxt" in line)
            out[int(task.name)] = (int(fields["voluntary_ctxt_switches"]), int(fields["nonvoluntary_ctxt_switches"]))
        except (OSError, KeyError, ValueError):
            continue
    return out


def _server_pid() -> int:
    """The local nats-server's pid (its threads' run-queue wait belongs in the picture), or 0."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if (proc / "comm").read_text().strip() == "nats-server":
                    return int(proc.name)
            except OSError:
                continue
    return 0


def _sched_of(pid: int) -> dict[int, tuple[int, int, int, int]]:
    """Per thread of `pid`: (ns on a CPU, ns waiting on a run queue, voluntary and involuntary switches)."""
    out = {}
    switches = _ctx_switches(str(pid))
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return {}
    for task in tasks:
        try:
            running, waiting, _ = (int(x) for x in (task / "schedstat").read_text().split())
        except (OSError, ValueError):
            continue
        out[int(task.name)] = (running, waiting, *switches.get(int(task.name), (0, 0)))
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


#: `--no-stages`: leave out `_Stages` (its wrappers add a little work on the NATS loop's path)
STAGES = True
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
    parser.add_argument("--nats", default="nats://127.0.0.1:4222",
                        help="nats://HOST:PORT, or tls://[USER@]HOST:PORT[/STREAM]?tls_ca=CA (the password from "
                             "RINGFENCE_NATS_PASSWORD); see bench/replicate_tls.py")
    parser.add_argument("--note", default="", help="a note kept in the result line (e.g. which sources ran)")
    parser.add_argument("--modes", default="", help="comma-separated mode labels to run (default: all)")
    parser.add_argument("--in-flight", type=int, default=IN_FLIGHT,
                        help=f"pipelined modes: Node(max_batches_in_flight=N), 0: no limit (default {IN_FLIGHT})")
    parser.add_argument("--no-stages", action="store_true", help="leave out the tail's stage breakdown (`_Stages`)")
    parser.add_argument("--direct", type=int, choices=(0, 1), default=None,
                        help="classic replicated modes: 1 publish on the sequencer's own NATS connection, 0 through "
                             "the link's loop (Replicator.direct_publish; default: the sources' own)")
    parser.add_argument("--digest-after-answer", type=int, choices=(0, 1), default=None,
                        help="classic: 1 the state digest on the sequencer once a batch is answered, 0 on the digest "
                             "thread during the next fsync (Replicator.digest_after_answer; default: the sources' own)")
    args = parser.parse_args()
    global STAGES
    STAGES = not args.no_stages
    for option, attribute in ((args.direct, "direct_publish"), (args.digest_after_answer, "digest_after_answer")):
        if option is not None:
            if not hasattr(Replicator, attribute):
                parser.error(f"these sources have no Replicator.{attribute}")
            setattr(Replicator, attribute, bool(option))
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
    # how a classic replicating node publishes and digests (session 21; absent in older sources)
    result["transport"] = _transport(nats_url)  # "tls" (tls://, the prod set-up) or "plain" (nats://)
    result["replicator"] = {attribute: getattr(Replicator, attribute) for attribute in ("direct_publish", "digest_after_answer")
                            if hasattr(Replicator, attribute)}
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
        stages = (_Stages(node, replicator, probe) if replicator is not None and not pipelined and STAGES
                  else None)
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
            if stages is not None:
                latency[label]["breakdown"]["tail_stages"] = stages.report()
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
