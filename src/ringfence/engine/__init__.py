"""The deterministic engine: command/event types, the apply loop, state hash and snapshots."""
