"""Monitoring and market integrity (docs/monitoring.md).

* `stream` — the event stream: one durable outbox table (`monitoring_events`) every part writes to,
  off the engine's hot path (identity in its own transactions, the API edge and the engine's batch
  subscriber through a background writer).
* `rules` — rules as data (thresholds, velocities, sequences, wash trading, spoofing), pure and
  deterministic over the stream, an explanation on every hit; `backtest` replays a recorded stream.
* `models` — behavioural models: per-account baselines learnt online (devices, networks, countries,
  sign-in hours, sensitive actions, endpoints, withdrawal amounts and destinations, order sizes),
  an event's score with the features that drove it; the `behaviour` rule type raises alerts on it.
* `geoip` — the country of a client IP from a configured MMDB file.
* `cases` — alerts grouped into cases per account, the analyst workflow and signed account actions.
* `service` — the worker `ringfence serve` runs: reads the stream from its cursor, scores each
  event, stores alerts and cases.
"""
