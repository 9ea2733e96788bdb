"""Solvency: proof of liabilities and reserves, continuous reconciliation, and graded halts."""
