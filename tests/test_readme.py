"""The README's Python examples run as written (on the embedded memory:// default)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_python_examples() -> None:
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index: int) -> None:
    code = "import structlog, logging\n"
    code += "structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))\n"
    code += BLOCKS[index]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    printed = out.stdout.strip().splitlines()
    assert printed, "the example prints its result"
    for line in printed:
        assert "Traceback" not in line
    if index == 0:
        assert printed[0].startswith("['user-1', 'user-2'] {'user-1': ")
        assert printed[1] == "node-1"
    if index == 1:
        assert printed[0].startswith("{'user': 'user-1', 'token': ")
