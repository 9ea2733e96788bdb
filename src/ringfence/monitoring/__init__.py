"""Monitoring and market integrity (docs/monitoring.md).

* `stream` — the event stream: one durable outbox table (`monitoring_events`) every part writes to,
  off the engine's hot path (identity in its own transactions, the API edge and the engine's batch
  subscriber through a background writer).
* `rules` — rules as data (thresholds, velocities, sequences, wash trading, spoofing), pure and
  deterministic over the stream, an explanation on every hit; `backtest` replays a recorded stream.
* `cases` — alerts grouped into cases per account, the analyst workflow and signed account actions.
* `service` — the worker `ringfence serve` runs: reads the stream from its cursor, scores each
  event, stores alerts and cases.
"""
