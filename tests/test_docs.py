"""Examples in docs/ are tests: every ```python block in these documents runs and its asserts hold."""

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"


def python_blocks(name):
    text = (DOCS / name).read_text()
    return re.findall(r"```python\n(.*?)```", text, re.S)


@pytest.mark.parametrize("doc", ["ledger.md", "engine.md", "staff.md"])
def test_doc_examples_run(doc):
    blocks = python_blocks(doc)
    assert blocks, f"{doc} has no python example"
    for block in blocks:
        exec(compile(block, f"docs/{doc}", "exec"), {})


def test_trading_order_status_example_runs():
    """docs/trading.md's other example needs a live `MarketData`; the order status one stands alone."""
    text = (DOCS / "trading.md").read_text()
    section = text.split("### Order status", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "docs/trading.md lost its order status example"
    exec(compile(blocks[0], "docs/trading.md#order-status", "exec"), {})
