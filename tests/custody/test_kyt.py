"""KYT: blacklisted exploit sender frozen and reported; 1-hop taint quarantined until a source-of-funds
declaration and an analyst's release (or freeze); 2-hop taint scored but credited; pluggable scorer."""

from __future__ import annotations

import pytest

from ringfence.custody.commands import DepositReported, FileSourceOfFunds
from ringfence.custody.kyt import Blacklist, BlacklistFile, BuiltinScorer, KytInput, KytResult, sample_blacklist
from ringfence.errors import RingfenceError

from .conftest import balance

EXPLOIT_KEY = 9  # eth-tester dev key 9 is on the sample blacklist as an exploit address


def _dep(net, txid):
    return next(d for d in net.state.deposits.values() if d.txid == txid)


def test_sample_blacklist_loads_and_rejects_bad_lines(tmp_path) -> None:
    bl = sample_blacklist()
    assert len(bl) == 3
    assert bl.lookup("ethereum", "0xf7edc8fa1ecc32967f827c9043fcae6ba73afa5c")[0] == "exploit"
    bad = tmp_path / "bad.csv"
    bad.write_text("ethereum,0xabc\n")
    with pytest.raises(RingfenceError) as exc:
        Blacklist.load(bad)
    assert exc.value.field == "blacklist" and "line 1" in str(exc.value)
    bad.write_text("ethereum,0xabc,stolen,x\n")
    with pytest.raises(RingfenceError):
        Blacklist.load(bad)


def test_exploit_sender_is_frozen_and_reported(net) -> None:
    addrs = net.open_user("gus")
    txid = net.eth_send(addrs["ethereum"], 10**18, dev_key=EXPLOIT_KEY)
    net.eth_mine(3)
    events = []
    orig = net.node.execute
    net.node.execute = lambda c: (lambda ev: (events.extend(ev), ev)[1])(orig(c))  # record events
    net.eth_watcher.poll()
    d = _dep(net, txid)
    assert d.state == "frozen" and d.score == 100 and d.category == "exploit"
    assert balance(net, "gus", "ETH") == 0 and balance(net, "gus", "ETH", "frozen") == 10**18
    reports = [e for e in events if isinstance(e, DepositReported)]
    assert len(reports) == 1 and reports[0].category == "exploit"
    net.node.engine.check_invariants()


def test_one_hop_taint_quarantines_until_declaration_and_analyst_release(net) -> None:
    addrs = net.open_user("hana")
    # The exploit address funds a mule, which deposits to hana: one hop of taint.
    from eth_account import Account

    mule_key = bytes.fromhex("5a" * 32)
    mule = Account.from_key(mule_key).address
    net.eth_send(mule, 3 * 10**18, dev_key=EXPLOIT_KEY)
    raw = net.dev.sign_transfer(mule_key, addrs["ethereum"], 10**18)
    txid = net.eth.broadcast(raw).txid
    net.eth_mine(3)
    net.eth_watcher.poll()
    d = _dep(net, txid)
    assert d.state == "quarantined" and d.score == 90, d.reasons
    assert "1 hop" in d.reasons[0]
    assert balance(net, "hana", "ETH") == 0 and balance(net, "hana", "ETH", "quarantine") == 10**18
    key = ("ethereum", txid, d.index)
    with pytest.raises(RingfenceError) as exc:  # no declaration yet
        net.execute(net.sign("review_deposit", *key, "ana", "release", "looks fine"))
    assert exc.value.field == "decision_kind"
    with pytest.raises(RingfenceError) as exc:  # an approver is not an analyst
        net.execute(net.sign("review_deposit", *key, "tom", "release", "mine"))
    assert "role-required" in str(exc.value)
    net.execute(FileSourceOfFunds(*key, "hana", "Salary paid by my employer via an OTC desk; invoice #42 attached."))
    net.execute(net.sign("review_deposit", *key, "ana", "release", "invoice checked"))
    assert d.state == "credited" and balance(net, "hana", "ETH") == 10**18
    assert balance(net, "hana", "ETH", "quarantine") == 0
    net.node.engine.check_invariants()


def test_quarantine_can_be_frozen_by_analyst(net) -> None:
    class Always95:
        def score(self, item: KytInput) -> KytResult:
            return KytResult(95, ("custom scorer says mixer",))

    net.scorer = Always95()
    net._make_workers()
    addrs = net.open_user("ivan")
    net.btc_fund_miner()
    txid = net.btc_send(addrs["bitcoin"], 30_000_000)
    net.btc_mine(2)
    net.btc_watcher.poll()
    d = _dep(net, txid)
    assert d.state == "quarantined"
    net.execute(FileSourceOfFunds("bitcoin", txid, d.index, "ivan", "from a friend, no paperwork"))
    net.execute(net.sign("review_deposit", "bitcoin", txid, d.index, "ana", "freeze", "declaration not credible"))
    assert d.state == "frozen" and balance(net, "ivan", "BTC", "frozen") == 30_000_000
    net.node.engine.check_invariants()


def test_taint_over_the_bitcoin_utxo_graph(net) -> None:
    from ringfence.custody.wallets import p2wpkh_address
    from ringfence.custody.kyt import ChainFundingGraph

    addrs = net.open_user("jack")
    net.btc_fund_miner()
    # A blacklist naming the miner: miner -> hop1 -> jack's deposit is two hops from the deposit's sender.
    bl = Blacklist([("bitcoin", net.miner, "sanctions", "test entry")])
    net.scorer = BuiltinScorer(bl, ChainFundingGraph({"bitcoin": net.btc}))
    net.keys["hop1"] = bytes(31) + b"\x07"
    from ringfence.custody.wallets import LocalKeySigner

    net.local = LocalKeySigner(net.keys)
    hop1 = p2wpkh_address(net.local.public_key("hop1"))
    net.btc_send(hop1, 50_000_000)
    net.btc_mine(1)
    txid = net.btc_send(addrs["bitcoin"], 20_000_000, from_key="hop1")
    net._make_workers()
    net.btc_mine(2)
    net.btc_watcher.poll()
    d = _dep(net, txid)
    # The sender (hop1) was funded by the sanctioned miner: one hop from the sender => 90, quarantined.
    assert d.state == "quarantined" and d.score == 90
    # A deposit sent directly by the sanctioned address is frozen.
    txid2 = net.btc_send(addrs["bitcoin"], 10_000_000)
    net.btc_mine(2)
    net.btc_watcher.poll()
    assert _dep(net, txid2).state == "frozen"

    # Two hops: miner -> hop1 -> hop2 -> jack: scored 60 with its path, but credited.
    net.keys["hop2"] = bytes(31) + b"\x08"
    net.local = LocalKeySigner(net.keys)
    hop2 = p2wpkh_address(net.local.public_key("hop2"))
    net.btc_send(hop2, 20_000_000, from_key="hop1")
    net.btc_mine(1)
    txid3 = net.btc_send(addrs["bitcoin"], 10_000_000, from_key="hop2")
    net._make_workers()
    net.btc_mine(2)
    net.btc_watcher.poll()
    d3 = _dep(net, txid3)
    assert d3.state == "credited" and d3.score == 60 and "2 hops" in d3.reasons[0]
    net.node.engine.check_invariants()


def test_a_blacklisted_funder_is_not_hidden_behind_many_payments_from_one_clean_funder(net) -> None:
    """The sender `hop1` was paid 60 times by one clean address (one transaction, 60 outputs) and
    once by the sanctioned miner: the funders are each named once, so the miner is one hop away
    (90, quarantined). Counted per payment, the clean funder's copies filled the fan-out (50) and
    the sanctioned one was never looked at: the deposit scored 60 (two hops, through `clean`)."""
    from ringfence.custody.kyt import ChainFundingGraph
    from ringfence.custody.wallets import LocalKeySigner, build_btc_payment, p2wpkh_address

    addrs = net.open_user("kim")
    net.btc_fund_miner()
    net.scorer = BuiltinScorer(Blacklist([("bitcoin", net.miner, "sanctions", "test entry")]),
                               ChainFundingGraph({"bitcoin": net.btc}))
    net.keys["clean"], net.keys["hop1"] = bytes(31) + b"\x09", bytes(31) + b"\x0a"
    net.local = LocalKeySigner(net.keys)
    clean, hop1 = (p2wpkh_address(net.local.public_key(k)) for k in ("clean", "hop1"))
    net.btc_send(clean, 10 * 10**8)
    net.btc_mine(1)
    raw, _, _ = build_btc_payment(net.btc, from_address=clean, key_id="clean", signer=net.local,
                                  outputs=[(hop1, 1_000_000)] * 60, fee_rate_sat_per_vb=2, request_id="fan", reason="test")
    net.btc.broadcast(raw)
    net.btc_mine(1)
    net.btc_send(hop1, 30_000_000)  # the sanctioned miner pays hop1 once, after the clean payments
    net.btc_mine(1)
    txid = net.btc_send(addrs["bitcoin"], 20_000_000, from_key="hop1")
    net._make_workers()
    net.btc_mine(2)
    net.btc_watcher.poll()
    d = _dep(net, txid)
    assert (d.state, d.score) == ("quarantined", 90), (d.state, d.score, d.reasons)
    assert "1 hop" in d.reasons[0] and net.miner in d.reasons[0]
    net.node.engine.check_invariants()


def test_blacklist_file_is_reread_when_it_changes_and_a_bad_file_keeps_the_last_good_list(tmp_path) -> None:
    path = tmp_path / "list.csv"
    dest = "0x" + "ab" * 20
    with pytest.raises(RingfenceError, match="cannot read"):
        BlacklistFile(path, sample_blacklist())
    path.write_text("ethereum,0x1234,nonsense\n")
    with pytest.raises(RingfenceError, match="category"):
        BlacklistFile(path, sample_blacklist())
    path.write_text("# nothing yet\n")
    bl = BlacklistFile(path, sample_blacklist(), check_every_s=0)
    scorer = BuiltinScorer(bl)
    assert scorer.screen_destination("ethereum", dest) == KytResult(0, ())
    assert len(bl) == len(sample_blacklist()) and bl.loads == 1
    path.write_text(f"ethereum,{dest.upper().replace('0X', '0x')},mixer,test list\n")
    got = scorer.screen_destination("ethereum", dest)
    assert got.score == 95 and got.category == "mixer" and "test list" in got.reasons[0] and bl.loads == 2
    path.write_text("bitcoin,x\n")  # broken: the last good list stays, and says why (refresh raises)
    with pytest.raises(RingfenceError, match="expected chain,address"):
        bl.refresh()
    assert scorer.screen_destination("ethereum", dest).score == 95 and "expected chain,address" in bl.error
    path.unlink()
    with pytest.raises(RingfenceError, match="cannot read"):
        bl.refresh()
    assert "cannot read" in bl.error and scorer.screen_destination("ethereum", dest).score == 95
    # the sample's entries stay in force under the file
    assert scorer.screen_destination("ethereum", "0x4CCeBa2d7D2B4fdcE4304d3e09a1fea9fbEb1528").score == 100
