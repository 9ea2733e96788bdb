"""A writer process for the crash test: recovers, then submits transfers forever, printing each
acknowledged transfer id (flushed) so the parent knows exactly what was acknowledged before it
sends SIGKILL. Usage: python crash_writer.py DATA_DIR SEED"""

import random
import sys
from pathlib import Path

from ringfence.errors import RingfenceError
from ringfence.ledger.commands import CreateTransfers, OpenAccount, RegisterAsset
from ringfence.ledger.model import Transfer
from ringfence.app import new_node


def main() -> None:
    data_dir, seed = Path(sys.argv[1]), int(sys.argv[2])
    rng = random.Random(seed)
    node = new_node(data_dir, segment_bytes=rng.choice([4_096, 65_536]))
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


if __name__ == "__main__":
    main()
