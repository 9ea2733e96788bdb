"""A writer process for the crash test: recovers, then submits transfers forever, printing each
acknowledged transfer id (flushed) so the parent knows exactly what was acknowledged before it
sends SIGKILL. Usage: python crash_writer.py DATA_DIR SEED

`python crash_writer.py --fork-server` imports all of that once and then, for each line
`run DATA_DIR SEED OUT_FIFO` on stdin, forks a writer (its stdout is OUT_FIFO) and answers
`pid N`; for `reap N` it waits for that writer to be gone and answers `reaped N`. The crash test
kills 55 writers: each is still its own process that recovers the journal from disk, but it no
longer pays for a new interpreter and its imports (most of a kill's time before)."""

import os
import random
import sys
from pathlib import Path

from ringfence.errors import RingfenceError
from ringfence.ledger.commands import CreateTransfers, OpenAccount, RegisterAsset
from ringfence.ledger.model import Transfer
from ringfence.app import new_node


def main(argv: list[str]) -> None:
    data_dir, seed = Path(argv[0]), int(argv[1])
    rng = random.Random(seed)
    # Half the writers pipeline their group commit (the next batch written while the last one's
    # fsync runs), so one journal is written and recovered by both kinds in turn.
    # Half write into pre-zeroed segments (as `serve` does): a killed writer leaves zero tails and a
    # spare behind for the next one to recover past.
    node = new_node(data_dir, segment_bytes=rng.choice([4_096, 65_536]), pipeline=rng.random() < 0.5,
                    prezero_segments=rng.random() < 0.5)
    node.open()
    if node.engine.last_seq == 0:
        node.execute_many([RegisterAsset("BTC", 8, "crypto", "bitcoin")])
        node.execute_many([OpenAccount("alice", "BTC"), OpenAccount("bob", "BTC")])
    led = node.engine.ledger
    world, alice, bob = led.world("BTC").id, led.get("alice", "BTC").id, led.get("bob", "BTC").id
    next_id = max(led.transfers, default=0) + 1
    print(f"READY {node.engine.last_seq}", flush=True)
    node.start()
    out = sys.stdout
    while True:
        acks = []
        for _ in range(rng.randrange(1, 40)):
            tid = next_id
            next_id += 2
            batch = [Transfer(tid, world, alice, rng.randrange(1, 1000)), Transfer(tid + 1, alice, bob, 1)]
            acks.append((tid, node.submit(CreateTransfers(batch))))
        for tid, ack in acks:
            try:
                ack.result(timeout=30)
            except RingfenceError as err:
                print(f"ERR {tid} {err}", flush=True)
                continue
            out.write(f"ACK {tid}\n")
            out.flush()
        if rng.randrange(20) == 0:
            node.snapshot()


def fork_server() -> None:
    """Single-threaded until it forks (imports only: no node, no thread): each child starts clean."""
    for line in sys.stdin:
        words = line.split()
        if words[:1] == ["run"]:
            data_dir, seed, fifo = words[1:4]
            pid = os.fork()
            if pid == 0:
                try:
                    out = os.open(fifo, os.O_WRONLY)
                    os.dup2(out, 1)  # sys.stdout now writes to the fifo (main flushes every line)
                    os.close(out)
                    main([data_dir, seed])
                except BaseException:
                    import traceback

                    traceback.print_exc()
                finally:
                    os._exit(1)
            print(f"pid {pid}", flush=True)
        elif words[:1] == ["reap"]:
            os.waitpid(int(words[1]), 0)
            print(f"reaped {words[1]}", flush=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["--fork-server"]:
        fork_server()
    else:
        main(sys.argv[1:])
