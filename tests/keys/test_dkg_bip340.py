"""DKG, refresh, reshare, t-1 refusal, BIP-340 output and Taproot key-path spends."""

from __future__ import annotations

import itertools
import random

import coincurve
import pytest
from bitcointx.core import COutPoint, CMutableTransaction, CTxIn, CTxInWitness, CTxOut, CTxWitness, lx
from bitcointx.core.script import CScript, CScriptWitness
from bitcointx.core.key import XOnlyPubKey
from bitcointx.wallet import P2TRCoinAddress
from hypothesis import given, settings, strategies as st

from ringfence.keys import dkg, frost, taproot
from ringfence.keys.frost import FROST_ED25519_SHA512, FROST_SECP256K1_SHA256, ThresholdKeyPackage


def frost_sign(kps: dict[int, ThresholdKeyPackage], quorum: list[int], msg: bytes) -> bytes:
    cs = next(iter(kps.values())).suite
    pairs = {i: frost.commit(cs, i, kps[i].secret_share) for i in quorum}
    comms = [pairs[i][1] for i in sorted(quorum)]
    shares = {i: frost.sign_share(kps[i], pairs[i][0], msg, comms) for i in quorum}
    kp = kps[quorum[0]]
    return frost.aggregate(cs, comms, msg, kp.group_public_key, shares, kp.verifying_shares)


@pytest.mark.parametrize("cs", [FROST_SECP256K1_SHA256, FROST_ED25519_SHA512], ids=["secp256k1", "ed25519"])
@pytest.mark.parametrize("t,n", [(2, 3), (3, 5)])
def test_dkg_every_quorum_signs(cs: frost.Ciphersuite, t: int, n: int) -> None:
    kps = dkg.run_dkg(cs, t, list(range(1, n + 1)), b"key:test")
    pk = kps[1].group_public_key
    assert all(cs.group.eq(kp.group_public_key, pk) for kp in kps.values())
    for quorum in itertools.combinations(range(1, n + 1), t):
        sig = frost_sign(kps, list(quorum), b"msg")
        assert frost.verify(cs, b"msg", sig, pk)


@pytest.mark.parametrize("t,n", [(2, 3), (3, 5)])
def test_t_minus_one_shares_cannot_sign(t: int, n: int) -> None:
    cs = FROST_SECP256K1_SHA256
    kps = dkg.run_dkg(cs, t, list(range(1, n + 1)), b"key:t-1")
    few = list(range(1, t))
    pairs = {i: frost.commit(cs, i, kps[i].secret_share) for i in few}
    comms = [pairs[i][1] for i in few]
    with pytest.raises(ValueError, match="at least"):
        frost.sign_share(kps[1], pairs[1][0], b"m", comms)
    # Even a signer that lies about the threshold cannot produce a valid signature with t-1 shares.
    cheat = {i: ThresholdKeyPackage(cs.name, i, kps[i].secret_share, len(few), kps[i].group_public_key,
                                    kps[i].verifying_shares) for i in few}
    shares = {i: frost.sign_share(cheat[i], pairs[i][0], b"m", comms) for i in few}
    with pytest.raises((frost.InvalidShare, ValueError)):
        frost.aggregate(cs, comms, b"m", kps[1].group_public_key, shares, kps[1].verifying_shares)
    # And interpolating t-1 shares yields some other key, never the group key.
    n_ = cs.group.order
    guess = sum(frost.derive_interpolating_value(cs, few, i) * kps[i].secret_share for i in few) % n_
    assert not cs.group.eq(cs.group.base_mul(guess), kps[1].group_public_key)


def test_dkg_bad_proof_of_knowledge_names_culprit() -> None:
    cs = FROST_SECP256K1_SHA256
    parts = {i: dkg.DkgParticipant(cs.name, i, 2, [1, 2, 3], b"ctx") for i in (1, 2, 3)}
    r1 = {i: p.round1() for i, p in parts.items()}
    bad = r1[2]
    r1[2] = dkg.Round1Package(2, bad.commitments, bad.pok_r, (bad.pok_mu + 1) % cs.group.order)
    with pytest.raises(dkg.DkgError) as exc:
        parts[1].round2(r1)
    assert exc.value.culprit == 2


def test_dkg_bad_share_names_culprit() -> None:
    cs = FROST_SECP256K1_SHA256
    parts = {i: dkg.DkgParticipant(cs.name, i, 2, [1, 2, 3], b"ctx") for i in (1, 2, 3)}
    r1 = {i: p.round1() for i, p in parts.items()}
    r2 = {i: p.round2(r1) for i, p in parts.items()}
    with pytest.raises(dkg.DkgError) as exc:
        parts[1].finish({2: r2[2][1], 3: (r2[3][1] + 1) % cs.group.order})
    assert exc.value.culprit == 3


@pytest.mark.parametrize("cs", [FROST_SECP256K1_SHA256, FROST_ED25519_SHA512], ids=["secp256k1", "ed25519"])
def test_refresh_keeps_public_key_and_invalidates_old_shares(cs: frost.Ciphersuite) -> None:
    old = dkg.run_dkg(cs, 2, [1, 2, 3], b"key:refresh")
    new = dkg.run_refresh(old)
    pk = old[1].group_public_key
    assert all(cs.group.eq(kp.group_public_key, pk) for kp in new.values())
    assert all(new[i].secret_share != old[i].secret_share for i in old)
    assert frost.verify(cs, b"m", frost_sign(new, [1, 3], b"m"), pk)
    mixed = {1: old[1], 3: new[3]}
    with pytest.raises((frost.InvalidShare, ValueError)):
        frost_sign(mixed, [1, 3], b"m")


def test_refresh_rejects_nonzero_constant_term() -> None:
    cs = FROST_SECP256K1_SHA256
    kps = dkg.run_dkg(cs, 2, [1, 2, 3], b"k")
    parts = {i: dkg.RefreshParticipant(kp) for i, kp in kps.items()}
    r1 = {i: p.round1() for i, p in parts.items()}
    r1[3] = dkg.Round1Package(3, (cs.group.base_mul(5),) + r1[3].commitments[1:])
    with pytest.raises(dkg.DkgError) as exc:
        parts[1].round2(r1)
    assert exc.value.culprit == 3


def test_reshare_add_and_remove_signers_keeps_key() -> None:
    cs = FROST_SECP256K1_SHA256
    kps = dkg.run_dkg(cs, 2, [1, 2, 3], b"key:reshare")
    pk = kps[1].group_public_key
    grown = dkg.run_reshare(kps, [1, 2], [1, 2, 3, 4, 5], 3)  # add signers 4 and 5, raise t to 3
    assert all(cs.group.eq(kp.group_public_key, pk) for kp in grown.values())
    assert frost.verify(cs, b"m", frost_sign(grown, [2, 4, 5], b"m"), pk)
    shrunk = dkg.run_reshare(grown, [1, 4, 5], [1, 3, 4], 2)  # remove signers 2 and 5
    assert frost.verify(cs, b"m", frost_sign(shrunk, [3, 4], b"m"), pk)
    with pytest.raises(ValueError):
        frost_sign({1: shrunk[1], 2: grown[2]}, [1, 2], b"m")


def test_reshare_dealer_cannot_change_the_key() -> None:
    cs = FROST_SECP256K1_SHA256
    kps = dkg.run_dkg(cs, 2, [1, 2, 3], b"k")
    evil = ThresholdKeyPackage(cs.name, 2, (kps[2].secret_share + 1) % cs.group.order, 2,
                               kps[2].group_public_key, kps[2].verifying_shares)
    d1 = dkg.ReshareDealer(kps[1], [1, 2], [1, 2, 3], 2).deal()
    d2 = dkg.ReshareDealer(evil, [1, 2], [1, 2, 3], 2).deal()
    with pytest.raises(dkg.DkgError) as exc:
        dkg.reshare_receive(cs, 3, kps[1], [1, 2], [1, 2, 3], 2, {1: d1[0], 2: d2[0]}, {1: d1[1][3], 2: d2[1][3]})
    assert exc.value.culprit == 2


@settings(max_examples=15, deadline=None)
@given(msg=st.binary(max_size=64), seed=st.integers(0, 2**32))
def test_property_any_quorum_any_message_bip340(msg: bytes, seed: int) -> None:
    print("seed", seed)
    rng = random.Random(seed)
    kps = _KPS_2OF3
    quorum = sorted(rng.sample([1, 2, 3], 2))
    tr = {i: frost.bip340_key_package(kps[i]) for i in kps}
    sig = frost_sign(tr, quorum, msg)
    xonly = tr[1].group_public_key[0].to_bytes(32, "big")
    assert coincurve.PublicKeyXOnly(xonly).verify(sig, msg)


_KPS_2OF3 = dkg.run_dkg(FROST_SECP256K1_SHA256, 2, [1, 2, 3], b"key:prop")


@pytest.mark.parametrize("t,n", [(2, 3), (3, 5)])
def test_bip340_signature_and_taproot_keypath_spend(t: int, n: int) -> None:
    cs = FROST_SECP256K1_SHA256
    for attempt in range(4):  # several keys so both parities of P and Q are exercised
        kps = dkg.run_dkg(cs, t, list(range(1, n + 1)), f"key:tr:{attempt}".encode())
        # BIP-340 over a 32-byte message: libsecp256k1 accepts it.
        plain = {i: frost.bip340_key_package(kp) for i, kp in kps.items()}
        msg = bytes(range(32))
        sig = frost_sign(plain, list(range(1, t + 1)), msg)
        assert coincurve.PublicKeyXOnly(plain[1].group_public_key[0].to_bytes(32, "big")).verify(sig, msg)

        # Taproot: output key computed independently by python-bitcointx from the internal key.
        internal = XOnlyPubKey(kps[1].group_public_key[0].to_bytes(32, "big"))
        addr = P2TRCoinAddress.from_xonly_pubkey(internal)
        spk = taproot.p2tr_script_pubkey(kps[1])
        assert bytes(addr.to_scriptPubKey()) == spk
        funding = CTxOut(100_000, CScript(spk))
        tx = CMutableTransaction([CTxIn(COutPoint(lx("11" * 32), 0))], [CTxOut(99_000, CScript(b"\x51\x20" + b"\x22" * 32))])
        digest = taproot.keypath_sighash(tx, 0, [funding])
        tweaked = {i: frost.bip340_key_package(kp, taproot_tweak=True) for i, kp in kps.items()}
        quorum = list(range(n - t + 1, n + 1))
        tsig = frost_sign(tweaked, quorum, digest)
        tx.wit = CTxWitness([CTxInWitness(CScriptWitness([tsig]))])
        assert taproot.verify_keypath_spend(tx, 0, [funding])
        assert XOnlyPubKey(spk[2:]).verify_schnorr(digest, tsig)
        # A signature by the untweaked key does not spend the output.
        tx.wit = CTxWitness([CTxInWitness(CScriptWitness([frost_sign(plain, quorum, digest)]))])
        assert not taproot.verify_keypath_spend(tx, 0, [funding])
