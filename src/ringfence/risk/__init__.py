"""Risk: the safety mechanisms that stop trading or money movement in a scope.

Today: graded, scoped halts lifted only by an operator quorum (`risk.halts`). Index and mark
prices, margin, liquidation, insurance and auto-deleveraging join here (ARCHITECTURE §7).
"""
