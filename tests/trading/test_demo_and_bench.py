"""The demo session and the benchmark's smoke mode run for real."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from ringfence.trading.demo import run_trading_demo
from ringfence.app import new_node

ROOT = Path(__file__).resolve().parents[2]


def test_demo_session_shows_fills_fees_shield_and_book(tmp_path: Path) -> None:
    console = Console(record=True, width=200)
    with new_node(tmp_path / "demo") as node:
        out = run_trading_demo(node, console)
        state_hash = node.engine.state_hash()  # type: ignore[union-attr]
    text = console.export_text()
    for needle in ("Fills", "shield fund", "order book", "POST_ONLY_WOULD_TAKE", "PRICE_OUTSIDE_BAND", "demo-alice"):
        assert needle in text, needle
    assert out["trades"] == 3
    assert out["shield_usdt"] > 0 and out["shield_btc"] > 0
    # the session is durable: recovery from the journal gives the same state
    with new_node(tmp_path / "demo") as again:
        assert again.recovery is not None and again.recovery.state_hash == state_hash


def test_cli_trading_demo_runs(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "ringfence"
    res = subprocess.run([str(exe), "trading", "demo", "--data", str(tmp_path / "d")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "shield" in res.stdout
    res = subprocess.run([str(exe), "trading", "book", "BTCUSDT", "--data", str(tmp_path / "d")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "bids" in res.stdout, res.stderr


def test_bench_smoke_prints_one_json_line() -> None:
    res = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "matching.py"), "--smoke", "--no-record", "--commands", "4000", "--latency-seconds", "0.1"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [line for line in res.stdout.splitlines() if line.strip()]
    assert len(lines) == 1
    data = json.loads(lines[0])
    assert data["bench"] == "matching" and data["throughput_per_s"] > 0 and data["baseline"]["throughput_per_s"] > 0
    assert data["workload"]["commands"] == 4000
    # compiled (if this tree is built) vs pure Python (a RINGFENCE_PURE=1 child) vs durable, in one line
    assert data["hot_path"] in ("compiled", "pure")
    assert data["pure_python_raw"]["throughput_per_s"] > 0 and data["exchange_core"]["raw_pure_python_per_s"] > 0
