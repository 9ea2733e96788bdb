"""`ringfence demo`: a seeded scenario on the embedded default, shown step by step.

Assets of each class, user accounts, deposits from the outside world, a transfer, a two-phase
hold (posted in part, the rest voided), a rejected overdraft that changes nothing, balances with
the per-asset zero-sum check, the state hash, and a replay of the journal that prints the same
hash. The node's clock and entropy are seeded too, so the same seed prints the same state hash on
every machine.
"""

from __future__ import annotations

import random
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .engine.node import Node
from .ledger.commands import CreateTransfers, OpenAccount, RegisterAsset
from .ledger.model import Transfer, TransferFlags
from .money import format_amount, parse_amount
from .app import new_node, replay_journal

__all__ = ["run_demo", "DEMO_ASSETS", "balances_table"]

DEMO_ASSETS = (
    ("BTC", 8, "crypto", "bitcoin"),
    ("ETH", 18, "crypto", "ethereum"),
    ("USDT", 6, "crypto", "ethereum"),
    ("AAPLX", 4, "tokenized", ""),
    ("USD", 2, "fiat", ""),
)


def seeded_node(data: Path, seed: int) -> Node:
    rng = random.Random(seed)
    clock = [1_767_225_600_000_000_000]  # 2026-01-01T00:00:00Z; advanced by seeded steps

    def now() -> int:
        clock[0] += rng.randrange(100_000, 2_000_000)
        return clock[0]

    node = new_node(data, clock=now, entropy=lambda n: rng.randbytes(n))
    node.open()
    return node


def balances_table(node: Node, owners: tuple[str, ...] | None = None, title: str = "balances") -> Table:
    ledger = node.engine.ledger
    table = Table(title=title)
    for column in ("account", "asset", "balance", "reserved", "available"):
        table.add_column(column, justify="right" if column in ("balance", "reserved", "available") else "left")
    totals: dict[str, int] = {}
    for account in ledger.iter_accounts():
        totals[account.asset] = totals.get(account.asset, 0) + account.balance
        if account.balance == 0 and account.debits_pending == 0 and account.credits_pending == 0:
            continue
        if owners is not None and account.owner not in owners and account.owner != "system":
            continue
        decimals = ledger.assets.get(account.asset).decimals
        table.add_row(
            account.name,
            account.asset,
            format_amount(account.balance, decimals),
            format_amount(account.debits_pending, decimals),
            format_amount(account.available, decimals),
        )
    table.add_section()
    for asset, total in sorted(totals.items()):
        table.add_row("sum of all accounts", asset, f"[green]{total}[/]" if total == 0 else f"[red]{total}[/]", "", "")
    return table


def run_demo(data: Path, seed: int, console: Console) -> str:
    rng = random.Random(seed)
    console.rule(f"[bold]ringfence demo[/] (seed {seed}, data {data})")
    node = seeded_node(data, seed)
    ledger = node.engine.ledger

    def amount(asset: str, text: str, field: str = "amount") -> int:
        return parse_amount(text, ledger.assets.get(asset).decimals, field=field)

    console.print("[bold]1.[/] register assets of every class and open accounts for alice and bob")
    for code, decimals, klass, chain in DEMO_ASSETS:
        console.print(f"   {code:<6} {klass:<9} {decimals:>2} decimals" + (f" on {chain}" if chain else ""))
    node.execute_many([RegisterAsset(*a) for a in DEMO_ASSETS])
    node.execute_many([OpenAccount(owner, a[0]) for owner in ("alice", "bob") for a in DEMO_ASSETS])
    ids = {(a.owner, a.asset): a.id for a in ledger.iter_accounts() if a.owner != "system"}
    world = {a[0]: ledger.world(a[0]).id for a in DEMO_ASSETS}

    console.print("[bold]2.[/] deposits arrive from the outside world (debit world:<asset>)")
    deposits = [
        ("alice", "BTC", f"{rng.randrange(1, 4)}.{rng.randrange(10**8):08d}"),
        ("alice", "AAPLX", f"{rng.randrange(5, 50)}.5"),
        ("bob", "USDT", f"{rng.randrange(20_000, 90_000)}.250000"),
        ("bob", "ETH", "3.141592653589793238"),
        ("bob", "USD", "1250.75"),
    ]
    transfer_id = 1
    batch = []
    for owner, asset, text in deposits:
        minor = amount(asset, text)
        batch.append(Transfer(transfer_id, world[asset], ids[(owner, asset)], minor))
        console.print(f"   deposit {format_amount(minor, ledger.assets.get(asset).decimals)} {asset} to {owner}")
        transfer_id += 1
    node.execute(CreateTransfers(batch))

    console.print("[bold]3.[/] alice sends 0.25 BTC to bob")
    node.execute(CreateTransfers([Transfer(transfer_id, ids[("alice", "BTC")], ids[("bob", "BTC")], amount("BTC", "0.25"))]))
    transfer_id += 1

    console.print("[bold]4.[/] two-phase: bob reserves 10,000 USDT for alice (expires in 1 h), posts 6,000, voids the rest")
    hold_id = transfer_id
    node.execute(
        CreateTransfers(
            [
                Transfer(
                    hold_id,
                    ids[("bob", "USDT")],
                    ids[("alice", "USDT")],
                    amount("USDT", "10000"),
                    flags=TransferFlags.PENDING,
                    timeout_ns=3_600 * 10**9,
                )
            ]
        )
    )
    bob_usdt = ledger.account(ids[("bob", "USDT")])
    console.print(
        f"   while held: bob's USDT balance {format_amount(bob_usdt.balance, 6)}, "
        f"available {format_amount(bob_usdt.available, 6)}"
    )
    node.execute(
        CreateTransfers(
            [
                Transfer(hold_id + 1, 0, 0, amount("USDT", "6000"), pending_id=hold_id, flags=TransferFlags.POST_PENDING),
                Transfer(hold_id + 2, 0, 0, 0, pending_id=hold_id, flags=TransferFlags.VOID_PENDING),
            ]
        )
    )
    console.print(f"   after post+void: bob available {format_amount(bob_usdt.available, 6)} USDT")
    transfer_id = hold_id + 3

    console.print("[bold]5.[/] alice tries to send 500 BTC she does not have")
    before = ledger.snapshot_state()
    (result,) = node.execute(
        CreateTransfers([Transfer(transfer_id, ids[("alice", "BTC")], ids[("bob", "BTC")], amount("BTC", "500"))])
    )
    codes = ", ".join(code for _, code in result.failures)
    unchanged = ledger.snapshot_state() == before
    console.print(
        f"   [red]rejected: {codes}[/] (the ledger never lets a user account spend more than it holds); "
        f"balances unchanged: {'yes' if unchanged else 'NO'}"
    )
    if not unchanged:
        raise AssertionError("a rejected transfer changed the ledger")

    trading_demo = _optional_trading_demo()
    if trading_demo is not None:
        trading_demo(node, console)

    node.engine.check_invariants()
    console.print(balances_table(node))
    node.snapshot()
    live_hash = node.engine.state_hash()
    last_seq = node.engine.last_seq
    node.close()
    console.print(f"[bold]state hash[/] after {last_seq} commands: {live_hash}")

    console.print("[bold]6.[/] replay the journal from genesis into a fresh engine")
    replayed, report, _ = replay_journal(data, use_snapshots=False)
    same = replayed.state_hash() == live_hash
    console.print(
        f"   replayed {report.replayed_commands} commands in {report.seconds * 1000:.1f} ms -> {report.state_hash}"
    )
    console.print("   [bold green]replay matches[/]" if same else "   [bold red]REPLAY DIFFERS[/]")
    if not same:
        raise AssertionError("replay does not reproduce the state hash")
    console.print(f"journal kept in {data}; try: ringfence journal verify {data}")
    return live_hash


def _optional_trading_demo():  # type: ignore[no-untyped-def]
    try:
        from .trading.demo import run_trading_demo
    except ImportError:
        return None
    return run_trading_demo
