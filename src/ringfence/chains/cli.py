"""`ringfence chains ...`: derive deposit addresses, validate addresses, run the regtest walkthrough.

Heavy chain libraries are imported inside the commands so `ringfence --help` stays fast.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="chains",
    help="Chain layer, offline: deposit addresses from xpubs, address checks, a regtest walkthrough. Not `chain` "
    "(singular), which pays from and reads the local chains of a running `serve --demo`.\n\n"
    "Example: ringfence chains validate-address bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4",
    no_args_is_help=True,
)


@app.command("derive-address")
def derive_address(
    account_xpub: str = typer.Argument(..., metavar="XPUB", help="account-level extended PUBLIC key (depth 3)"),
    index: int = typer.Option(0, help="receive address index (one per user)"),
    scheme: str = typer.Option("bip84-btc", help="bip44-btc | bip84-btc | bip86-btc | bip44-eth"),
    network: str = typer.Option("mainnet", help="mainnet | testnet | signet | regtest"),
) -> None:
    """Print the deposit address number INDEX of an account xpub. Private keys are refused.

    Example: ringfence chains derive-address zpub6rFR7y4Q2AijBEqTUquhVz398htDFrtymD9xYYfG1m4wAcvPhXNfE3EfH1r1ADqtfSdVCToUG868RvUUkgDKf31mGDtKsAYz2oz2AGutZYs --index 0
    """
    from ..errors import RingfenceError
    from .derivation import derive_deposit_address

    try:
        typer.echo(derive_deposit_address(account_xpub, index, scheme, network))
    except (RingfenceError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command("validate-address")
def validate_address(
    address: str = typer.Argument(..., metavar="ADDRESS", help="The address to check."),
    chain: str = typer.Option("bitcoin", metavar="bitcoin|ethereum", help="The chain the address is for."),
    network: str = typer.Option("mainnet", metavar="NETWORK", help="The Bitcoin network the address must belong to: "
                                "mainnet, testnet, signet or regtest (not used for ethereum)."),
) -> None:
    """Check an address: its checksum, and that it is for the chain (and Bitcoin network) given. Prints the
    address in its canonical form (an Ethereum one with its EIP-55 checksum), or says exactly what is wrong.

    Example: ringfence chains validate-address 0x9858EfFD232B4033E47d90003D41EC34EcaEda94 --chain ethereum
    """
    from ..errors import RingfenceError
    from .bitcoin.address import validate_address as validate_btc
    from .ethereum import validate_eth_address

    try:
        if chain == "bitcoin":
            typer.echo(validate_btc(address, network))
        elif chain == "ethereum":
            typer.echo(validate_eth_address(address))
        else:
            typer.echo("error: chain: must be bitcoin or ethereum", err=True)
            raise typer.Exit(2)
    except RingfenceError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command("regtest-demo")
def regtest_demo() -> None:
    """Walk through a 2-of-3 multisig deposit, PSBT withdrawal and reorg on the in-process simulator.

    Example: ringfence chains regtest-demo
    """
    from ..cli_paths import tty_console
    from .walkthrough import run_walkthrough

    console = tty_console()
    for line in run_walkthrough():
        console.print(line)
