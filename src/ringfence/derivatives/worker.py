"""The liquidation worker: reads the node between batches (`margin_check`) and submits one
`LiquidateAccount` per account below maintenance; the engine decides (and refuses what no longer
applies). `ringfence serve` runs it; it never touches state itself."""

from __future__ import annotations

import threading
from typing import Any

import structlog

from ..errors import RingfenceError
from ..risk.halts import refusal_of
from .commands import LiquidateAccount, LiquidatePosition
from .liquidation import liquidation_targets

__all__ = ["LiquidationWorker", "start_liquidation_worker"]

log = structlog.get_logger("ringfence.derivatives")


class LiquidationWorker:
    def __init__(self, node: Any, interval_s: float = 1.0) -> None:  # float-ok: a poll period
        self.node = node
        self.interval_s = interval_s
        self.stop = threading.Event()
        self.submitted = 0
        self.refused = 0
        self.held = 0  # targets not submitted because a halt would refuse them
        self.thread: threading.Thread | None = None

    def round(self) -> int:
        """One pass: submit a step for every account below maintenance; returns how many."""
        def read(engine: Any) -> list[tuple[str, str, Any]]:
            if "derivatives" not in engine.components:
                return []
            perps = engine.components["derivatives"].perps
            out = []
            for owner, scope in liquidation_targets(engine):  # scope: the margin asset, or an isolated position's symbol
                command = LiquidatePosition(owner, scope) if scope in perps else LiquidateAccount(owner, scope)
                if refusal_of(engine, command) is None:
                    out.append((owner, scope, command))
                else:  # a halt holds it (liquidation.py, "Halts"): asked again at the first round after the lift
                    self.held += 1
            return out

        targets = self.node.read(read)
        for owner, scope, command in targets:
            try:
                self.node.execute(command)
                self.submitted += 1
            except RingfenceError as err:  # recovered in between, cooling down, or the node stopped
                self.refused += 1
                log.info("liquidation.refused", owner=owner, scope=scope, error=err.code)
        return len(targets)

    def run(self) -> None:
        while not self.stop.wait(self.interval_s):
            if self.node.failed is not None or self.node.writer is None:
                return
            try:
                self.round()
            except RingfenceError as err:
                log.info("liquidation.worker_stopped", error=str(err))
                return

    def start(self) -> "LiquidationWorker":
        self.thread = threading.Thread(target=self.run, name="ringfence-liquidation", daemon=True)
        self.thread.start()
        return self


def start_liquidation_worker(exchange: Any) -> LiquidationWorker:
    return LiquidationWorker(exchange.node).start()
