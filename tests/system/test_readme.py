"""The README's Python examples run as written, as scripts, and print nothing but their own output.

Each runs in a fresh interpreter with no logging configured, as a new user's script would: the
library must not add a single line to stdout or stderr (it logs through ``logging`` and leaves the
decision to the application).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import clean_env

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def run_script(tmp_path: Path, code: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "example.py"
    script.write_text(code)
    return subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path, env=clean_env()
    )


def test_the_readme_has_python_examples() -> None:
    assert len(BLOCKS) >= 4


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
        "from resource_router.observability.logs import get_logger\n"
        "get_logger('resource_router.ownership.registry').warning('sweep.failed', error='boom')\n"
        "get_logger('resource_router.transport.hub').error('pubsub.reader_failed')\n"
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
    assert register.startswith("resource_router.ownership.grants resource.register ")
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


SH_BLOCKS = re.findall(r"```sh\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.real_redis
def test_the_replica_block_works_when_pasted(redis_url: str, namespace: str) -> None:
    """The README's two-replica block, as a user pastes it (on free ports and the suite's Redis): it
    waits for the replicas and the instance before it routes, so the curl answers the first time."""
    from tests.support.redis_server import free_port

    (block,) = [b for b in SH_BLOCKS if "serve --port 8001" in b]
    bin_dir = str(Path(sys.executable).parent)
    script = block.replace(".venv/bin/", bin_dir + "/").replace("redis://localhost:6379/0", redis_url)
    for port in ("8001", "8002"):
        script = script.replace(port, str(free_port()))
    wrapped = (
        "set -u\n"
        f"export RESOURCE_ROUTER_NAMESPACE={namespace}\n"
        "trap 'kill $(jobs -p) 2>/dev/null; wait' EXIT\n"
        f"{script}\n"
        "echo\n"  # curl's answer has no newline of its own
    )
    out = subprocess.run(
        ["bash", "-c", wrapped], capture_output=True, text=True, timeout=90, cwd=README.parent, env=clean_env()
    )
    assert out.returncode == 0, out.stderr
    answer = json.loads(next(line for line in out.stdout.splitlines() if line.startswith('{"result"')))
    assert answer["result"]["echo"] == {"hello": "world"}
    assert (answer["instance_id"], answer["result"]["resource_id"]) == ("echo-1", "user-1")
