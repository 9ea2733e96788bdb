"""`chains/bitcoin/rawtx.py` against python-bitcointx on random transactions: the BIP-143 digest of
every input, the txid, the signed serialisation and the parsed inputs/outputs are the same."""

from __future__ import annotations

import pytest
from bitcointx.core import COutPoint, CMutableTransaction, CTransaction, CTxIn, CTxInWitness, CTxOut, b2lx, lx
from bitcointx.core.script import CScript, CScriptWitness, SIGHASH_ALL, SIGVERSION_WITNESS_V0, SignatureHash
from hypothesis import given, seed, settings, strategies as st

from ringfence.chains.bitcoin.rawtx import UnsignedTx, parse, varint
from ringfence.errors import ValidationError

txids = st.binary(min_size=32, max_size=32).map(lambda b: b.hex())
scripts = st.one_of(st.binary(min_size=20, max_size=20).map(lambda h: b"\x00\x14" + h),
                    st.binary(min_size=32, max_size=32).map(lambda h: b"\x51\x20" + h),
                    st.binary(min_size=0, max_size=300))
coins = st.lists(st.tuples(txids, st.integers(0, 2**32 - 1), st.integers(0, 21 * 10**14)), min_size=1, max_size=30)
outs = st.lists(st.tuples(scripts, st.integers(0, 21 * 10**14)), min_size=1, max_size=30)


def _bitcointx(inputs, outputs) -> CMutableTransaction:
    return CMutableTransaction([CTxIn(COutPoint(lx(t), n)) for t, n, _ in inputs], [CTxOut(v, CScript(s)) for s, v in outputs])


@seed(15)
@settings(max_examples=60, deadline=None)
@given(coins, outs, st.binary(min_size=20, max_size=20))
def test_digests_txid_serialisation_and_parse_match_bitcointx(inputs, outputs, h160) -> None:
    print("seed 15:", len(inputs), "inputs,", len(outputs), "outputs")
    ours = UnsignedTx([(t, n) for t, n, _ in inputs], outputs)
    theirs = _bitcointx(inputs, outputs)
    code = b"\x76\xa9\x14" + h160 + b"\x88\xac"
    for i, (_, _, amount) in enumerate(inputs):
        want = SignatureHash(CScript(code), theirs, i, SIGHASH_ALL, amount=amount, sigversion=SIGVERSION_WITNESS_V0)
        assert ours.bip143_digest(i, code, amount) == bytes(want), f"input {i}"
    assert ours.txid() == b2lx(theirs.GetTxid())
    witnesses = [[bytes([i % 256]) * (70 + i % 3), bytes(33)] for i in range(len(inputs))]
    theirs.wit.vtxinwit = [CTxInWitness(CScriptWitness(w)) for w in witnesses]
    raw = ours.serialize(witnesses)
    assert raw == theirs.serialize()
    back = CTransaction.deserialize(raw)
    assert parse(raw) == ([(b2lx(i.prevout.hash), i.prevout.n) for i in back.vin],
                          [(bytes(o.scriptPubKey), o.nValue) for o in back.vout])
    stripped = theirs.to_immutable().serialize(include_witness=False)  # no witness: parsed the same
    assert parse(stripped) == parse(raw)


def test_varint_sizes() -> None:
    assert [len(varint(n)) for n in (0, 0xFC, 0xFD, 0xFFFF, 0x10000, 0xFFFFFFFF, 0x100000000)] == [1, 1, 3, 3, 5, 5, 9]


def test_parse_refuses_truncated_and_trailing_bytes() -> None:
    raw = UnsignedTx([("11" * 32, 0)], [(b"\x00\x14" + bytes(20), 5)]).serialize([[b"\x01", b"\x02"]])
    with pytest.raises(ValidationError):
        parse(raw[:-1])
    with pytest.raises(ValidationError):
        parse(raw + b"\x00")
    with pytest.raises(ValidationError):
        UnsignedTx([], [(b"", 1)])
