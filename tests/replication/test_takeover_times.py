"""The standby's lines on the leadership changing (a lease taken over, a promotion) carry the UTC
time, ISO 8601 to the second with Z: an operator reading the node's console (or a log collected
from it) learns when the standby took over, without a clock of their own beside it. The engine
reads no wall clock for this: the time is the console's."""

from __future__ import annotations

import calendar
import re
import threading
import time

from ringfence.ledger.commands import RegisterAsset
from ringfence.replication import parse_target

from .conftest import NATS_URL, attached_primary, peers_of, standby

STAMPED = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ) standby b: ")


def _stamp_s(line: str) -> int:
    found = STAMPED.match(line)
    assert found, f"no UTC time at the start of: {line!r}"
    return calendar.timegm(time.strptime(found.group(1), "%Y-%m-%dT%H:%M:%SZ"))


def test_a_lease_take_over_and_the_promotion_are_stamped_with_the_utc_time(tmp_path, stream):
    node, replicator = attached_primary(tmp_path, stream, "?lease_ms=300", peers_of("a", "b"))
    node.execute(RegisterAsset("BTC", 8, "crypto", "bitcoin"))
    seen: list[str] = []
    try:
        with standby(parse_target(f"{NATS_URL}/{stream}?auto_promote=1"), tmp_path, "b", peers=peers_of("a", "b")) as follower:
            follower.on_progress = seen.append
            follower.poll()
            before_s = int(time.time())
            replicator.close()  # the primary stops renewing: its lease runs out
            stop, result = threading.Event(), []
            runner = threading.Thread(target=lambda: result.append(follower.follow_until_promoted(stop)))
            runner.start()
            runner.join(15)
            stop.set()
            runner.join(5)
            after_s = int(time.time()) + 1
            assert result == [2], seen
    finally:
        node.close()
        replicator.close()
    claimed = [line for line in seen if "claimed epoch 2" in line]
    promoted = [line for line in seen if "promoted at epoch 2" in line]
    assert len(claimed) == 1 and len(promoted) == 1, seen
    for line in claimed + promoted:
        assert before_s <= _stamp_s(line) <= after_s, (line, before_s, after_s)
    assert not any(STAMPED.match(line) for line in seen if "applied through sequence" in line), \
        "progress lines are left as they were"
