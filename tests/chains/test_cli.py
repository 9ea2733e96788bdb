"""`ringfence chains ...` through the real Typer app."""

from __future__ import annotations

from typer.testing import CliRunner

from ringfence.cli import app

runner = CliRunner()
ZPUB = "zpub6rFR7y4Q2AijBEqTUquhVz398htDFrtymD9xYYfG1m4wAcvPhXNfE3EfH1r1ADqtfSdVCToUG868RvUUkgDKf31mGDtKsAYz2oz2AGutZYs"


def test_derive_address_prints_the_bip84_vector():
    result = runner.invoke(app, ["chains", "derive-address", ZPUB, "--index", "0"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "bc1qcr8te4kr609gcawutmrza0j4xv80jy8z306fyu"


def test_validate_address_names_the_problem():
    ok = runner.invoke(app, ["chains", "validate-address", "0x9858effd232b4033e47d90003d41ec34ecaeda94", "--chain", "ethereum"])
    assert ok.exit_code == 0 and ok.output.strip() == "0x9858EfFD232B4033E47d90003D41EC34EcaEda94"
    bad = runner.invoke(app, ["chains", "validate-address", "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4", "--network", "regtest"])
    assert bad.exit_code == 2 and "wrong network" in bad.output


def test_regtest_demo_runs_end_to_end():
    result = runner.invoke(app, ["chains", "regtest-demo"])
    assert result.exit_code == 0, result.output
    assert "already_known=True" in result.output
    assert "now pending, 0 confirmations" in result.output
    assert "recipient has 150000000 sat" in result.output


def test_every_chains_command_has_help_with_an_example():
    for cmd in ("derive-address", "validate-address", "regtest-demo"):
        result = runner.invoke(app, ["chains", cmd, "--help"])
        assert result.exit_code == 0 and "Example: ringfence chains" in result.output
