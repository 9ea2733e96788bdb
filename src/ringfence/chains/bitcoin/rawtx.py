"""Bitcoin transactions as bytes, for the custody hot path: the BIP-143 signature hashes of a whole
transaction at once, its serialisation and txid, and reading its inputs and outputs back.

python-bitcointx recomputes BIP-143's hashPrevouts/hashSequence/hashOutputs for every input it
hashes (so signing a transaction of n inputs costs n² hashing: 7 s for one batch of 100 withdrawals)
and goes through a class dispatcher on every attribute. Here each of those hashes is computed once
per transaction, from plain bytes. The results are the consensus ones: the tests compare every
function with python-bitcointx's on random transactions, and the Bitcoin simulator verifies every
transaction the wallets broadcast.

Scope: version 1/2 transactions whose inputs carry an empty scriptSig (native segwit spends) —
what ringfence's wallets build. `parse` reads any transaction, with or without witnesses.
"""

from __future__ import annotations

import hashlib
from ...errors import ValidationError

__all__ = ["UnsignedTx", "parse", "varint", "dsha256", "SIGHASH_ALL"]

SIGHASH_ALL = 1
SEQUENCE_FINAL = 0xFFFFFFFF


def dsha256(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def varint(n: int) -> bytes:
    if n < 0xFD:
        return bytes([n])
    if n <= 0xFFFF:
        return b"\xfd" + n.to_bytes(2, "little")
    if n <= 0xFFFFFFFF:
        return b"\xfe" + n.to_bytes(4, "little")
    return b"\xff" + n.to_bytes(8, "little")


class UnsignedTx:
    """A transaction to sign: `inputs` are (txid as displayed, vout), `outputs` (scriptPubKey, sat);
    every input has an empty scriptSig and sequence 0xffffffff."""

    def __init__(self, inputs: list[tuple[str, int]], outputs: list[tuple[bytes, int]], *, version: int = 2,
                 locktime: int = 0) -> None:
        if not inputs or not outputs:
            raise ValidationError("a transaction needs inputs and outputs", field="tx")
        self.inputs, self.outputs = list(inputs), [(bytes(s), v) for s, v in outputs]
        self.version, self.locktime = version, locktime
        self._outpoints = [bytes.fromhex(t)[::-1] + n.to_bytes(4, "little") for t, n in self.inputs]
        self._outs = b"".join(v.to_bytes(8, "little") + varint(len(s)) + s for s, v in self.outputs)
        self._seq = SEQUENCE_FINAL.to_bytes(4, "little")
        self._mid: tuple[bytes, bytes, bytes] | None = None

    # ---- BIP-143 (segwit v0) -------------------------------------------------------------------

    def bip143_digest(self, index: int, script_code: bytes, amount_sat: int) -> bytes:
        """The SIGHASH_ALL signature hash of input `index` (`script_code` as BIP-143 defines it, without
        its length; for P2WPKH `OP_DUP OP_HASH160 <h160> OP_EQUALVERIFY OP_CHECKSIG`)."""
        if self._mid is None:  # the three hashes every input's digest shares: once per transaction
            self._mid = (dsha256(b"".join(self._outpoints)), dsha256(self._seq * len(self._outpoints)), dsha256(self._outs))
        hash_prevouts, hash_sequence, hash_outputs = self._mid
        return dsha256(self.version.to_bytes(4, "little") + hash_prevouts + hash_sequence + self._outpoints[index]
                       + varint(len(script_code)) + script_code + amount_sat.to_bytes(8, "little") + self._seq
                       + hash_outputs + self.locktime.to_bytes(4, "little") + SIGHASH_ALL.to_bytes(4, "little"))

    # ---- serialisation -------------------------------------------------------------------------

    def _body(self) -> tuple[bytes, bytes]:
        ins = varint(len(self.inputs)) + b"".join(op + b"\x00" + self._seq for op in self._outpoints)
        return ins, varint(len(self.outputs)) + self._outs

    def txid(self) -> str:
        """The txid (witnesses are not part of it: known before signing)."""
        ins, outs = self._body()
        return dsha256(self.version.to_bytes(4, "little") + ins + outs + self.locktime.to_bytes(4, "little"))[::-1].hex()

    def serialize(self, witnesses: list[list[bytes]]) -> bytes:
        """The signed transaction: one witness stack per input (BIP-144 serialisation)."""
        if len(witnesses) != len(self.inputs):
            raise ValidationError("one witness per input", field="witnesses")
        ins, outs = self._body()
        wit = b"".join(varint(len(stack)) + b"".join(varint(len(item)) + item for item in stack) for stack in witnesses)
        return self.version.to_bytes(4, "little") + b"\x00\x01" + ins + outs + wit + self.locktime.to_bytes(4, "little")


def parse(raw: bytes) -> tuple[list[tuple[str, int]], list[tuple[bytes, int]]]:
    """The inputs (txid as displayed, vout) and outputs (scriptPubKey, sat) of a serialised
    transaction (with or without witnesses). Refuses truncated or trailing bytes."""
    b = memoryview(bytes(raw))
    pos = 4

    def need(n: int) -> None:
        if pos + n > len(b):
            raise ValidationError("the transaction is truncated", field="raw_tx")

    def read_varint() -> int:
        nonlocal pos
        need(1)
        first = b[pos]
        pos += 1
        size = {0xFD: 2, 0xFE: 4, 0xFF: 8}.get(first, 0)
        if not size:
            return first
        need(size)
        value = int.from_bytes(b[pos:pos + size], "little")
        pos += size
        return value

    need(2)
    segwit = b[4] == 0 and b[5] == 1
    if segwit:
        pos += 2
    inputs: list[tuple[str, int]] = []
    for _ in range(read_varint()):
        need(36)
        inputs.append((bytes(b[pos:pos + 32])[::-1].hex(), int.from_bytes(b[pos + 32:pos + 36], "little")))
        pos += 36
        n = read_varint()
        need(n + 4)
        pos += n + 4
    outputs: list[tuple[bytes, int]] = []
    for _ in range(read_varint()):
        need(8)
        value = int.from_bytes(b[pos:pos + 8], "little")
        pos += 8
        n = read_varint()
        need(n)
        outputs.append((bytes(b[pos:pos + n]), value))
        pos += n
    if segwit:
        for _ in inputs:
            for _ in range(read_varint()):
                n = read_varint()
                need(n)
                pos += n
    need(4)
    if pos + 4 != len(b):
        raise ValidationError("bytes after the transaction", field="raw_tx")
    return inputs, outputs
