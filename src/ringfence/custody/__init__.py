"""Custody: wallets, addresses, signing (threshold, multisig, HSM) and the policy engine.

Invariant for the whole package: no single server, person or stolen database can move funds.
Signing lives in `ringfence.keys`; every signer there sits behind one narrow interface.
"""
