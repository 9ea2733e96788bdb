"""Examples in docs/ are tests: every ```python block in these documents runs and its asserts hold."""

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"


def python_blocks(name):
    text = (DOCS / name).read_text()
    return re.findall(r"```python\n(.*?)```", text, re.S)


@pytest.mark.parametrize("doc", ["ledger.md", "engine.md"])
def test_doc_examples_run(doc):
    blocks = python_blocks(doc)
    assert blocks, f"{doc} has no python example"
    for block in blocks:
        exec(compile(block, f"docs/{doc}", "exec"), {})
