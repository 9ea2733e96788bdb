"""The engine's side of the operators' decisions over the vaults and the keys (custody/vault_cmds.py):
a refill out of a warm/cold vault and a change of a threshold key's signer set are accepted only with
the operator quorum's signatures over exactly what is decided; every refusal names its rule or field
and leaves the state hash unchanged. (The live flows: tests/api/test_btc_frost_hot.py.)"""

from __future__ import annotations

import pytest

from ringfence.custody.commands import AuthorizeVaultRefillSigned, RecordTransferSigned, RecordTreasuryFunding
from ringfence.custody.state import CustodyState
from ringfence.custody.vault_cmds import (CancelVaultRefillSigned, ReshareSignersSigned, cancel_refill_subject,
                                          refill_subject, reshare_subject, signer_set)
from ringfence.errors import RingfenceError

TXID = "ab" * 32


def _refused(net, command, match: str) -> None:
    before = net.node.engine.state_hash()
    with pytest.raises(RingfenceError, match=match):
        net.execute(command)
    assert net.node.engine.state_hash() == before, f"a refusal ({match}) changed the state"


def _refill(net, signers, *, rid="warm-1", src="btc_warm", amount=1_000_000, fee=500, signed_amount=None):
    subject = refill_subject(rid, "BTC", src, "btc_hot", amount if signed_amount is None else signed_amount)
    return AuthorizeVaultRefillSigned(rid, "BTC", src, "btc_hot", amount, fee, TXID,
                                      net.desk.signs(signers, "vault.refill", subject))


def test_a_vault_refill_needs_the_operator_quorum_over_exactly_it(net) -> None:
    net.execute(RecordTreasuryFunding("warm-seed", "BTC", "btc_warm", 5_000_000, "cd" * 32))
    _refused(net, _refill(net, ["tina"]), "rule 'quorum'")
    _refused(net, _refill(net, ["tina", "ana"]), "rule 'role-required'")
    _refused(net, _refill(net, ["tina", "tom"], signed_amount=999), "rule 'signature-valid'")
    _refused(net, _refill(net, ["tina", "tom"], src="btc_deposit"), "out of a warm or cold vault")
    _refused(net, _refill(net, ["tina", "tom"], amount=5_000_000), "has 5000000 BTC booked")
    # a transfer out of a vault that nobody decided is refused before the journal
    _refused(net, RecordTransferSigned("x-1", "BTC", "btc_cold", "btc_hot", 1, 0, TXID, "00"), "needs a decision first")

    events = net.execute(_refill(net, ["tina", "tom"]))
    rec = net.state.transfers["warm-1"]
    assert (rec.state, rec.txid, rec.amount_minor, rec.network_fee_minor) == ("authorized", TXID, 1_000_000, 500)
    detail = events[-1].detail
    assert detail[0] == TXID and detail[1] == f"seq={net.node.engine.last_seq}" and detail[2:] == [
        "approved_by=tina", "approved_by=tom"]
    _refused(net, _refill(net, ["tina", "tom"]), "is taken")
    # the signed transfer must be the authorized transaction, wallets and amount
    _refused(net, RecordTransferSigned("warm-1", "BTC", "btc_warm", "btc_hot", 1_000_000, 500, "ef" * 32, "00"),
             "is not the one authorized")
    _refused(net, RecordTransferSigned("warm-1", "BTC", "btc_warm", "btc_hot", 999_999, 500, TXID, "00"),
             "does not match")
    net.execute(RecordTransferSigned("warm-1", "BTC", "btc_warm", "btc_hot", 1_000_000, 500, TXID, "00"))
    assert net.state.transfers["warm-1"].state == "signed"

    def cancel(rid, who, reason="holder unreachable"):
        return CancelVaultRefillSigned(rid, "BTC", reason, net.desk.sign(who, "vault.refill.cancel",
                                                                         cancel_refill_subject(rid, reason)))

    _refused(net, cancel("warm-1", "tina"), "is signed, not authorized")  # a signed refill is on its way
    net.execute(_refill(net, ["tina", "tom"], rid="warm-2", amount=100_000))
    _refused(net, cancel("warm-2", "ana"), "rule 'role-required'")
    net.execute(cancel("warm-2", "tina"))  # one operator: dropping a refill moves nothing
    assert net.state.transfers["warm-2"].state == "cancelled"
    _refused(net, RecordTransferSigned("warm-2", "BTC", "btc_warm", "btc_hot", 100_000, 500, TXID, "00"), "was cancelled")


def test_a_signer_set_change_is_an_operator_decision_for_one_generation(net) -> None:
    signers = [[1, "11" * 32], [2, "22" * 32], [4, "44" * 32]]

    def reshare(who, *, generation=0, threshold=2, pairs=signers):
        subject = reshare_subject("btc-hot", generation, pairs, threshold, "replace 3")
        return ReshareSignersSigned("btc-hot", generation, pairs, threshold, "replace 3",
                                    net.desk.signs(who, "keys.reshare", subject))

    _refused(net, reshare(["tina"]), "rule 'quorum'")
    _refused(net, reshare(["tina", "tom"], threshold=1), "no single signer may sign alone")
    _refused(net, reshare(["tina", "tom"], pairs=[[1, "11" * 32], [1, "22" * 32]]), "distinct")
    _refused(net, reshare(["tina", "tom"], generation=1), "at generation 0")
    net.execute(reshare(["tina", "tom"]))
    assert signer_set(net.node.engine, "btc-hot") == (1, signers, 2)
    _refused(net, reshare(["tina", "tom"]), "at generation 1")  # a decision applies to one change only
    # the signer sets travel in the snapshot (and a state without them snapshots as before)
    s = net.state
    assert CustodyState.restore(s.snapshot()).signer_sets == s.signer_sets
    assert len(CustodyState().snapshot()) == 15
