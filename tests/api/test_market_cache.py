"""`Exchange.listed_market`: a market is read from the engine once per applied batch, not once per
ask (issue 18: an order asked two or three times, each a read between batches with the halt checks),
and the next batch's change is seen at once: the cache is keyed by the sequence number it was read
at, which moves only when a whole batch is in."""

from __future__ import annotations

from ringfence.api.demo import seed_demo
from ringfence.api.service import Exchange
from ringfence.index.worker import refresh_demo_feed
from ringfence.risk.halts import Halt


def _counting_reads(ex: Exchange) -> list[int]:
    calls = [0]
    read = ex.read

    def counted(fn):  # type: ignore[no-untyped-def]
        calls[0] += 1
        return read(fn)

    ex.read = counted  # type: ignore[method-assign]
    return calls


def test_a_market_is_read_once_per_batch_and_the_next_batch_is_seen(tmp_path) -> None:
    ex = Exchange(tmp_path / "data")
    ex.open()
    try:
        refresh_demo_feed(ex.node)
        seed_demo(ex.node)
        reads = _counting_reads(ex)
        first = ex.listed_market("BTCUSDT")
        assert first is not None and first.status == "ACTIVE" and first.symbol == "BTCUSDT"
        assert ex.listed_market("BTCUSDT") is first and ex.market("BTCUSDT") is first and ex.has_market("BTCUSDT")
        assert reads[0] == 1, "no batch was applied between them: one read of the engine"

        ex.node.execute(Halt("test-btc", "market", "BTCUSDT", "HALTED", "a halt in the next batch (test)", "{}"))
        halted = ex.market("BTCUSDT")
        assert halted.status == "HALTED" and reads[0] == 2
        assert ex.listed_market("BTCUSDT") is halted and reads[0] == 2

        # an unknown symbol is never kept: asked again, it is read again (and still unknown)
        assert ex.listed_market("NOPEUSDT") is None and ex.listed_market("NOPEUSDT") is None and reads[0] == 4
        assert not ex.has_market("NOPEUSDT")
        try:
            ex.market("NOPEUSDT")
        except KeyError:
            pass
        else:
            raise AssertionError("market() of an unknown symbol raises KeyError, as before")
    finally:
        ex.close()
