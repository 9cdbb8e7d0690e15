"""``tests/floors.py``: the constraints of the oldest pass pin each declared dependency to its floor."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.floors import PYPROJECT, floors

ROOT = Path(__file__).resolve().parents[2]


def _write(tmp_path: Path, dependencies: list[str], extras: dict[str, list[str]] | None = None) -> Path:
    lines = ["[project]", f"dependencies = {dependencies!r}", "[project.optional-dependencies]"]
    lines += [f"{name} = {reqs!r}" for name, reqs in (extras or {}).items()]
    path = tmp_path / "pyproject.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_every_runtime_and_extra_dependency_is_pinned_to_its_floor() -> None:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    pins = floors()
    names = {line.split("==", 1)[0] for line in pins}
    declared = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        declared += extra
    assert len(names) == len(pins)  # typer, named by two extras, is pinned once
    assert {req.split("[", 1)[0].split(">=", 1)[0].strip() for req in declared} == names
    assert "redis==5.2.1" in pins  # the oldest supported redis-py
    assert not [line for line in pins if "[" in line or ">" in line or "<" in line]


def test_markers_are_kept_and_upper_bounds_and_extras_dropped(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        ["redis[hiredis]>=5.2.1,<9", "tenacity>=8.3,!=8.4.0"],
        {"a": ["uvloop>=0.19; sys_platform != 'win32'", "typer>=0.17.5"], "b": ["typer>=0.17.5"]},
    )
    assert floors(path) == [
        "redis==5.2.1",
        "tenacity==8.3",
        "uvloop==0.19; sys_platform != 'win32'",
        "typer==0.17.5",
    ]


@pytest.mark.parametrize(
    ("dependencies", "extras", "error"),
    [
        (["redis<9"], None, "declares no lower bound"),
        (["typer>=0.17"], {"cli": ["typer>=0.18"]}, "two floors"),
    ],
)
def test_a_range_without_one_floor_is_an_error(
    tmp_path: Path, dependencies: list[str], extras: dict[str, list[str]] | None, error: str
) -> None:
    with pytest.raises(ValueError, match=error):
        floors(_write(tmp_path, dependencies, extras))


def test_runs_as_a_script() -> None:
    out = subprocess.run(
        [sys.executable, "tests/floors.py"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert out.splitlines()[1:] == floors()
    assert out.startswith("#")
