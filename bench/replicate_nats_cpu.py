"""CPU of the replicator's NATS loop thread ("ringfence-nats") per published batch (issue #21).

Usage: python bench/replicate_nats_cpu.py [--nats nats://127.0.0.1:4222] [--batches N] [--payload BYTES] [--note TEXT]

A `Replicator` on a fresh stream publishes N single-message batches of `--payload` random bytes the
way `Replicator.begin` does for a batch without an inline state hash (with the outcome and
state-digest headers a `state_digest=1` batch carries), the caller waiting for each stream ack as
`finish` does. Reported: the loop thread's CPU per batch (/proc schedstat, so other processes on
the machine move it little), its user and system ticks, its context switches per batch, and the
wall time per batch (which the machine's load does move). No engine, no journal: only the
replicated path's cost on the NATS thread. A/B: run it with PYTHONPATH at each tree (`sources`).
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit  # noqa: E402

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

import ringfence  # noqa: E402
from ringfence.replication import KIND_BATCH, Replicator, parse_target  # noqa: E402
from replicate import _delete  # noqa: E402  (the stream and its leader bucket, after the run)

WARM_UP = 200


def _thread_cpu_ns(tid: int) -> int:
    return int(Path(f"/proc/self/task/{tid}/schedstat").read_text().split()[0])


def _ticks(tid: int) -> tuple[int, int]:
    fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def _switches(tid: int) -> tuple[int, int]:
    lines = dict(line.split(":\t") for line in Path(f"/proc/self/task/{tid}/status").read_text().splitlines() if "ctxt" in line)
    return int(lines["voluntary_ctxt_switches"]), int(lines["nonvoluntary_ctxt_switches"])


def run(nats_url: str, batches: int, payload_bytes: int, note: str) -> dict:
    stream = "RFCPU" + secrets.token_hex(4).upper()
    replicator = Replicator(parse_target(f"{nats_url}/{stream}?state_hash_every=1000000&state_digest=1"), "bench",
                            key=Ed25519PrivateKey.generate())
    try:
        replicator._open_stream()
        tid = replicator.link._thread.native_id
        assert tid is not None
        payload = os.urandom(payload_bytes)
        extra = {"Rf-Outcome-Of": "1", "Rf-Outcome": "ab" * 32, "Rf-State-Digest-Of": "1", "Rf-State-Digest": "cd" * 32,
                 "Rf-Digest-Format": "1"}

        def publish(i: int) -> None:
            args = (KIND_BATCH, i * 100 + 1, 100, b"\1" * 32, b"\2" * 32, payload, "", dict(extra))
            if hasattr(replicator, "_publish_later"):
                replicator._publish_later(*args).result(30)
            else:  # sources before session 18
                replicator.link.submit(replicator._apublish(*args)).result(30)

        for i in range(WARM_UP):
            publish(i)
        cpu, wall, ticks, switches = _thread_cpu_ns(tid), time.perf_counter_ns(), _ticks(tid), _switches(tid)
        for i in range(WARM_UP, WARM_UP + batches):
            publish(i)
        cpu, wall = _thread_cpu_ns(tid) - cpu, time.perf_counter_ns() - wall
        ticks_after, switches_after = _ticks(tid), _switches(tid)
    finally:
        replicator.close()
        _delete(nats_url, stream)
    return {"note": note, "sources": str(Path(ringfence.__file__).parent), "batches": batches, "payload_bytes": payload_bytes,
            "nats_thread_cpu_us_per_batch": round(cpu / batches / 1000, 1), "wall_us_per_batch": round(wall / batches / 1000, 1),
            "nats_thread_user_ticks": ticks_after[0] - ticks[0], "nats_thread_system_ticks": ticks_after[1] - ticks[1],
            "voluntary_switches_per_batch": round((switches_after[0] - switches[0]) / batches, 2),
            "involuntary_switches_per_batch": round((switches_after[1] - switches[1]) / batches, 2),
            "load_average": " ".join(f"{x:.2f}" for x in os.getloadavg())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nats", default="nats://127.0.0.1:4222")
    parser.add_argument("--batches", type=int, default=2000)
    parser.add_argument("--payload", type=int, default=9000)
    parser.add_argument("--note", default="")
    parser.add_argument("--smoke", action="store_true", help="a few batches (CI)")
    args = parser.parse_args()
    emit("replicate_nats_cpu", run(args.nats, 20 if args.smoke else args.batches, args.payload, args.note), smoke=args.smoke)


if __name__ == "__main__":
    main()
