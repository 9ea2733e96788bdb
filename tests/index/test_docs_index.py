"""docs/index.md's python examples run, and the quote message it documents is the one signed."""

import re
from pathlib import Path

from ringfence.index.commands import quote_message

DOC = Path(__file__).resolve().parents[2] / "docs" / "index.md"


def test_index_doc_examples_run() -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) == 2, "docs/index.md lost an example"
    for block in blocks:
        exec(compile(block, "docs/index.md", "exec"), {})


def test_documented_quote_encoding_is_what_feed_keys_sign() -> None:
    assert quote_message("venue-a", "BTCUSDT", 61000000000, 17, 3) == b'["ringfence/index-quote/v1","venue-a","BTCUSDT",61000000000,17,3]'
    assert '["ringfence/index-quote/v1","<venue>","<SYMBOL>",<price_minor>,<source_ts_ns>,<seq>]' in DOC.read_text()
