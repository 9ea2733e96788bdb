"""Custody: wallets, deposit addresses, chain adapters, signing and withdrawal policy."""
