"""Pip constraints that pin every declared dependency to its lower bound: the oldest pass of ``make test``.

Reads ``pyproject.toml`` and prints one ``name==floor`` line (environment markers kept) for each of the
package's runtime dependencies and each dependency of its published extras, so that the oldest virtual
environment installs exactly the oldest versions the package says it supports::

    python tests/floors.py > floors.txt      # or: python -m tests.floors
    pip install -e ".[cli,gateway,memory,nats,otel,postgres]" -c floors.txt

A floor is the version of a ``>=`` clause; a dependency without one is an error (a range that names no
oldest version cannot be tested). Extras of a dependency are dropped (``redis[hiredis]>=5.2.1`` gives
``redis==5.2.1``): pip constraints cannot carry extras, and the extra's own packages are the extra's
business. A package named twice (``typer`` in the ``cli`` and the ``gateway`` extras) must have one floor.
The development tools (dependency groups) are not pinned.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"

#: ``name[extras] specifiers ; marker``
REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*([^;]*?)\s*(?:;\s*(.*?))?\s*$")
FLOOR = re.compile(r">=\s*([0-9][^,\s]*)")


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def floors(pyproject: Path = PYPROJECT) -> list[str]:
    """The constraint lines, in the order pyproject.toml declares the dependencies."""
    project = tomllib.loads(pyproject.read_text())["project"]
    requirements = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    pins: dict[tuple[str, str], str] = {}
    for requirement in requirements:
        match = REQUIREMENT.match(requirement)
        if match is None:
            raise ValueError(f"cannot read the requirement {requirement!r}")
        name, specifiers, marker = match.groups()
        floor = FLOOR.search(specifiers)
        if floor is None:
            raise ValueError(f"{requirement!r} declares no lower bound (name>=version)")
        key = (_normalized(name), marker or "")
        line = f"{name}=={floor.group(1)}" + (f"; {marker}" if marker else "")
        if pins.setdefault(key, line) != line:
            raise ValueError(f"{name} has two floors: {pins[key]!r} and {line!r}")
    return list(pins.values())


def main() -> int:
    print("# The declared lower bounds of pyproject.toml, written by tests/floors.py for the oldest pass.")
    for line in floors():
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
