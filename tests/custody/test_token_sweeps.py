"""`RecordInternalTransfer`'s gas fields (a token sweep's ETH gas): bad values are refused with the
field named and change nothing. The sweep itself (gas top-up from hot, then the tokens into hot,
reconciled) runs on a live server: tests/api/test_capital.py::test_usdt_deposit_then_withdrawal_pays_gas_in_eth_and_reconciles."""

from __future__ import annotations

import pytest

from ringfence.custody.commands import RecordInternalTransfer
from ringfence.errors import RingfenceError


@pytest.mark.parametrize("gas_asset,gas,field", [("ETH", 1, "gas_asset"),   # the asset's own gas is network_fee_minor
                                                 ("BTC", 1, "gas_asset"),   # not on the asset's chain
                                                 ("", 5, "gas_asset"),      # a fee without its asset
                                                 ("ETH", -1, "gas_fee_minor")])
def test_bad_gas_fields_are_refused_and_change_nothing(net, gas_asset: str, gas: int, field: str) -> None:
    before = net.node.engine.state_hash()
    with pytest.raises(RingfenceError) as exc:
        net.execute(RecordInternalTransfer("t1", "ETH", "eth_deposit", "eth_hot", 10, 0, "0x" + "ab" * 32, gas_asset, gas))
    assert exc.value.field == field, exc.value
    assert net.node.engine.state_hash() == before
