"""Ledger rules, one behaviour per test: every result code that moves no money moves no money."""

import pytest

from ringfence.errors import UnknownAsset, ValidationError
from ringfence.ledger.commands import CreateTransfers, OpenAccount, RegisterAsset
from ringfence.ledger.model import INTERNAL_ID_BASE, AccountFlags, Transfer, TransferFlags
from ringfence.app import new_engine

P, POST, VOID, L = TransferFlags.PENDING, TransferFlags.POST_PENDING, TransferFlags.VOID_PENDING, TransferFlags.LINKED


class Harness:
    def __init__(self, *extra_modules):
        self.engine = new_engine(*extra_modules)
        self.seq = 0
        self.now = 1_000
        self.run(RegisterAsset("BTC", 8, "crypto", "bitcoin"))
        self.run(RegisterAsset("USDT", 6, "crypto", "ethereum"))
        for owner in ("alice", "bob"):
            for asset in ("BTC", "USDT"):
                self.run(OpenAccount(owner, asset))
        led = self.engine.ledger
        self.world = led.world("BTC").id
        self.alice = led.get("alice", "BTC").id
        self.bob = led.get("bob", "BTC").id
        self.alice_usdt = led.get("alice", "USDT").id

    def run(self, command, advance=1):
        self.seq += 1
        self.now += advance
        return self.engine.apply(command, self.seq, self.now)

    def transfers(self, *ts, advance=1):
        (event,) = [e for e in self.run(CreateTransfers(list(ts)), advance) if type(e).__name__ == "TransfersCreated"]
        return dict(event.failures)

    def bal(self, account_id):
        a = self.engine.ledger.account(account_id)
        return (a.balance, a.debits_pending, a.credits_pending)


@pytest.fixture
def h():
    harness = Harness()
    assert harness.transfers(Transfer(1, harness.world, harness.alice, 1_000)) == {}
    return harness


def test_deposit_and_transfer(h):
    assert h.transfers(Transfer(2, h.alice, h.bob, 300)) == {}
    assert h.bal(h.alice)[0] == 700 and h.bal(h.bob)[0] == 300 and h.bal(h.world)[0] == -1_000
    h.engine.check_invariants()


def test_overdraft_rejected_and_changes_nothing(h):
    before = h.engine.ledger.snapshot_state()
    assert h.transfers(Transfer(2, h.alice, h.bob, 1_001)) == {0: "exceeds_credits"}
    assert h.bal(h.alice) == (1_000, 0, 0) and h.bal(h.bob) == (0, 0, 0)
    assert 2 not in h.engine.ledger.transfers
    assert h.engine.ledger.snapshot_state() == before  # only the engine's position moved
    h.engine.check_invariants()


def test_idempotency_same_body_applied_once(h):
    t = Transfer(2, h.alice, h.bob, 100)
    assert h.transfers(t) == {}
    assert h.transfers(t) == {0: "exists"}
    assert h.bal(h.bob)[0] == 100
    assert h.transfers(Transfer(2, h.alice, h.bob, 101)) == {0: "exists_with_different_fields"}
    assert h.bal(h.bob)[0] == 100


@pytest.mark.parametrize(
    "transfer, code",
    [
        (Transfer(0, 8, 9, 1), "id_must_not_be_zero"),
        (Transfer(INTERNAL_ID_BASE, 8, 9, 1), "id_out_of_range"),
        (Transfer(-5, 8, 9, 1), "id_out_of_range"),
        (Transfer(7, 999, 9, 1), "debit_account_not_found"),
        (Transfer(7, 8, 999, 1), "credit_account_not_found"),
        (Transfer(7, 8, 8, 1), "accounts_must_be_different"),
        (Transfer(7, 8, 9, 0), "amount_must_not_be_zero"),
        (Transfer(7, 8, 9, -1), "amount_out_of_range"),
        (Transfer(7, 8, 9, 2**127), "amount_out_of_range"),
        (Transfer(7, 8, 9, 1, flags=64), "flags_invalid"),
        (Transfer(7, 8, 9, 1, flags=P | POST), "flags_are_mutually_exclusive"),
        (Transfer(7, 8, 9, 1, timeout_ns=5), "timeout_reserved_for_pending_transfer"),
        (Transfer(7, 8, 9, 1, flags=P, timeout_ns=10**30), "timeout_out_of_range"),
        (Transfer(7, 8, 9, 1, pending_id=3), "pending_id_must_be_zero"),
        (Transfer(7, 0, 0, 1, flags=POST), "pending_id_must_not_be_zero"),
        (Transfer(7, 0, 0, 1, flags=POST, pending_id=12345), "pending_transfer_not_found"),
    ],
)
def test_each_rejection_code_changes_nothing(h, transfer, code):
    # account ids in the table: remap 8 -> alice, 9 -> bob
    remap = {8: h.alice, 9: h.bob}
    t = Transfer(
        transfer.id,
        remap.get(transfer.debit_account_id, transfer.debit_account_id),
        remap.get(transfer.credit_account_id, transfer.credit_account_id),
        transfer.amount,
        transfer.pending_id,
        transfer.timeout_ns,
        transfer.flags,
    )
    before = [h.bal(a) for a in (h.alice, h.bob, h.world)]
    assert h.transfers(t) == {0: code}
    assert [h.bal(a) for a in (h.alice, h.bob, h.world)] == before
    h.engine.check_invariants()


def test_assets_must_match(h):
    assert h.transfers(Transfer(9, h.alice, h.alice_usdt, 1)) == {0: "assets_must_match"}


def test_linked_chain_all_or_nothing(h):
    failures = h.transfers(
        Transfer(10, h.alice, h.bob, 400, flags=L),
        Transfer(11, h.alice, h.bob, 400, flags=L),
        Transfer(12, h.alice, h.bob, 400),  # this one overdraws: the chain fails whole
        Transfer(13, h.alice, h.bob, 1),  # independent, succeeds
    )
    assert failures == {0: "linked_event_failed", 1: "linked_event_failed", 2: "exceeds_credits"}
    assert h.bal(h.alice)[0] == 999 and h.bal(h.bob)[0] == 1
    assert not {10, 11, 12} & set(h.engine.ledger.transfers)
    # the ids of a failed chain are free to be used again
    assert h.transfers(Transfer(10, h.alice, h.bob, 5)) == {}


def test_open_chain_fails(h):
    failures = h.transfers(Transfer(20, h.alice, h.bob, 1, flags=L))
    assert failures == {0: "linked_event_chain_open"}
    assert h.bal(h.bob)[0] == 0


def test_two_phase_post_partial_then_rest_then_no_double_spend(h):
    assert h.transfers(Transfer(30, h.alice, h.bob, 600, flags=P)) == {}
    assert h.bal(h.alice) == (1_000, 600, 0)
    assert h.engine.ledger.account(h.alice).available == 400
    # the reservation blocks spending it elsewhere
    assert h.transfers(Transfer(31, h.alice, h.bob, 401)) == {0: "exceeds_credits"}
    assert h.transfers(Transfer(32, 0, 0, 200, pending_id=30, flags=POST)) == {}
    assert h.bal(h.alice) == (800, 400, 0) and h.bal(h.bob) == (200, 0, 400)
    assert h.transfers(Transfer(33, 0, 0, 401, pending_id=30, flags=POST)) == {0: "exceeds_pending_transfer_amount"}
    assert h.transfers(Transfer(34, 0, 0, 0, pending_id=30, flags=POST)) == {}  # 0 = the rest
    assert h.bal(h.alice) == (400, 0, 0) and h.bal(h.bob) == (600, 0, 0)
    assert h.transfers(Transfer(35, 0, 0, 0, pending_id=30, flags=VOID)) == {0: "pending_transfer_already_posted"}
    h.engine.check_invariants()


def test_two_phase_void_returns_funds(h):
    assert h.transfers(Transfer(40, h.alice, h.bob, 600, flags=P)) == {}
    assert h.transfers(Transfer(41, 0, 0, 0, pending_id=40, flags=VOID)) == {}
    assert h.bal(h.alice) == (1_000, 0, 0) and h.bal(h.bob) == (0, 0, 0)
    assert h.transfers(Transfer(42, 0, 0, 0, pending_id=40, flags=POST)) == {0: "pending_transfer_already_voided"}
    assert h.transfers(Transfer(43, h.bob, 0, 0, pending_id=40, flags=VOID)) == {0: "pending_transfer_already_voided"}


def test_pending_expires_in_sequencer_time(h):
    assert h.transfers(Transfer(50, h.alice, h.bob, 500, flags=P, timeout_ns=1_000)) == {}
    assert h.bal(h.alice)[1] == 500
    events = h.run(CreateTransfers([Transfer(51, h.alice, h.bob, 1)]), advance=2_000)
    assert any(type(e).__name__ == "TransferExpired" and e.pending_id == 50 and e.released == 500 for e in events)
    assert h.bal(h.alice) == (999, 0, 0)
    assert h.transfers(Transfer(52, 0, 0, 0, pending_id=50, flags=POST)) == {0: "pending_transfer_expired"}
    h.engine.check_invariants()


def test_post_must_name_same_accounts(h):
    assert h.transfers(Transfer(60, h.alice, h.bob, 10, flags=P)) == {}
    assert h.transfers(Transfer(61, h.bob, 0, 0, pending_id=60, flags=POST)) == {
        0: "pending_transfer_has_different_accounts"
    }


def test_account_rules():
    harness = Harness()
    led = harness.engine.ledger
    events = harness.run(OpenAccount("carol", "BTC", "available", "spot", 0))
    acct = led.get("carol", "BTC")
    assert acct.flags & AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS  # forced on user accounts
    assert events[0].created is True
    assert harness.run(OpenAccount("carol", "BTC"))[0].created is False
    rejected = harness.run(OpenAccount("carol", "DOGE"))[0]
    assert type(rejected).__name__ == "CommandRejected" and rejected.field == "asset"
    rejected = harness.run(OpenAccount("Bad Owner!", "BTC"))[0]
    assert rejected.field == "owner"
    rejected = harness.run(OpenAccount("carol", "BTC", "available", "moon"))[0]
    assert rejected.field == "segment"
    with pytest.raises(UnknownAsset):
        led.open_account("carol", "DOGE", "available", "spot")
    with pytest.raises(ValidationError):
        led.open_account("carol", "BTC", "available", "spot", AccountFlags.ALL)


def test_system_accounts_per_segment():
    harness = Harness()
    led = harness.engine.ledger
    assert led.segments == ["spot", "derivatives", "tokenized"]
    for segment in led.segments:
        assert led.insurance("BTC", segment).name == f"insurance:{segment}:BTC"
        assert led.fees("USDT", segment).owner == "system"
    assert led.world("BTC").name == "world:BTC"


def test_custody_accounts_and_guards():
    from ringfence.engine.module import Module
    from ringfence.errors import Halted

    planted = Module("test-guard")
    armed = []

    @planted.guard
    def refuse_bob(engine, command):
        if armed and getattr(command, "owner", None) == "bob":
            raise Halted("bob's scope is halted", field="owner")

    harness = Harness(planted)
    led = harness.engine.ledger
    hot = led.custody("BTC", "btc_hot")
    assert hot.name == "custody:btc_hot:BTC" and hot.owner == "system"
    assert led.custody("BTC", "btc_hot") is hot
    with pytest.raises(ValidationError):
        led.custody("BTC", "Hot Wallet")

    armed.append(True)
    (event,) = harness.run(OpenAccount("bob", "USDT", "available", "tokenized"))
    assert type(event).__name__ == "CommandRejected" and event.code == "RF_HALTED"
    assert led.find("bob", "USDT", "available", "tokenized") is None
    with pytest.raises(Halted):
        harness.engine.precheck(OpenAccount("bob", "BTC"))
    assert harness.run(OpenAccount("carol", "BTC"))[0].created
