"""Every ```python block in docs/custody.md runs, in order, in one namespace."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "custody.md"


def test_docs_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 3
    namespace: dict = {}
    for n, block in enumerate(blocks):
        exec(compile(block, f"docs/custody.md[python block {n}]", "exec"), namespace)
