"""The code of docs/sharding.md, run as written on 8 devices, block after block.

The page's examples are plain ```python blocks (not doctests: they need 8 devices); the
complete multi-process script (```python title="multihost.py") is run by
tests/test_multiprocess.py instead.
"""

import re
from pathlib import Path

import jax

PAGE = Path(__file__).parents[2] / "docs" / "sharding.md"


def code_blocks(text):
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_sharding_page_runs():
    blocks = code_blocks(PAGE.read_text())
    assert len(blocks) >= 4
    namespace = {"__name__": "sharding_docs"}
    with jax.enable_x64(False):  # the page's numbers are float32, as a user's would be
        for block in blocks:
            exec(compile(block, str(PAGE), "exec"), namespace)
