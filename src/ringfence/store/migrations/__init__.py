"""Alembic migrations for the identity store (shipped inside the package, run programmatically)."""
