"""Every Python block of README.md runs as written, on a fresh process each.

Blocks run in a temporary directory (they may write files) with
``DEPENGINE_GPU=sim``, as the README says to do where a GPU is named.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BLOCKS = re.findall(r"^```python\n(.*?)^```", (ROOT / "README.md").read_text(), re.M | re.S)


def test_the_readme_has_python_blocks():
    assert len(BLOCKS) >= 4


@pytest.mark.timeout(180)
@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index, tmp_path):
    env = dict(os.environ, DEPENGINE_GPU="sim", PYTHONPATH=str(ROOT))
    env.pop("DEPENGINE_PROFILE", None)
    out = subprocess.run([sys.executable, "-c", BLOCKS[index]], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=170)
    assert out.returncode == 0, f"README block {index} failed:\n{BLOCKS[index]}\n{out.stderr[-3000:]}"
