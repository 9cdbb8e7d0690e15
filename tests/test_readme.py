"""The README's Python examples run as written, as scripts, and print nothing but their own output.

Each runs in a fresh interpreter with no logging configured, as a new user's script would: the
library must not add a single line to stdout or stderr (it logs through ``logging`` and leaves the
decision to the application).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_gateway_replicas import clean_env

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def run_script(tmp_path: Path, code: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "example.py"
    script.write_text(code)
    return subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path, env=clean_env()
    )


def test_the_readme_has_python_examples() -> None:
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs_and_prints_only_its_own_lines(index: int, tmp_path: Path) -> None:
    code = BLOCKS[index]
    out = run_script(tmp_path, code)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    printed = out.stdout.splitlines()
    assert len(printed) == code.count("print("), printed  # one line per print call of the example
    if index == 0:
        assert printed[0].startswith("['user-1', 'user-2'] {'user-1': ")
        assert printed[1] == "node-1"
    if index == 1:
        assert printed[0].startswith("{'user': 'user-1', 'token': ")


def test_warnings_of_the_library_stay_silent_without_logging_config(tmp_path: Path) -> None:
    """Python prints unhandled warnings to stderr when nobody configured logging; not the library's."""
    code = (
        "from resource_router.tracing import get_logger\n"
        "get_logger('resource_router.registry').warning('sweep.failed', error='boom')\n"
        "get_logger('resource_router.pubsub').error('pubsub.reader_failed')\n"
        "print('done')\n"
    )
    out = run_script(tmp_path, code)
    assert (out.returncode, out.stdout, out.stderr) == (0, "done\n", "")


def test_an_application_that_configures_logging_sees_the_events(tmp_path: Path) -> None:
    code = "import logging\nlogging.basicConfig(level=logging.INFO, format='%(name)s %(message)s')\n" + BLOCKS[0]
    out = run_script(tmp_path, code)
    assert out.returncode == 0, out.stderr
    lines = out.stderr.splitlines()
    register = next(line for line in lines if "resource.register " in line)
    assert register.startswith("resource_router.registry resource.register ")
    for field in ("service_name=user-service", "instance_id=node-1", "operation=register_resource", "duration_ms="):
        assert field in register
    assert not any(" resource.lookup" in line for line in lines)  # debug events stay below INFO


_BLOCK_STRUCTLOG = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "structlog":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Block())
"""


def test_the_library_needs_no_structlog(tmp_path: Path) -> None:
    """structlog renders logs for the CLI and replicas (extras); the library itself does not import it."""
    out = run_script(tmp_path, _BLOCK_STRUCTLOG + BLOCKS[1])
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("{'user': 'user-1', 'token': ")
