"""Double-entry ledger: accounts, idempotent transfers, linked chains, two-phase holds."""
