"""docs/reconcile.md: every ```python block runs and its asserts hold."""

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "reconcile.md"


def test_reconcile_doc_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) >= 2
    for block in blocks:
        exec(compile(block, "docs/reconcile.md", "exec"), {})
