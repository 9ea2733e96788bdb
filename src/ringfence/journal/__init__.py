"""Append-only, hash-chained command journal with group commit and crash recovery."""
