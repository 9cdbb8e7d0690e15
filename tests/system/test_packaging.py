"""The wheel ships the Lua scripts and works from a scratch virtual environment."""

from __future__ import annotations
import __future__

import os
import re
import site
import subprocess
import sys
import tomllib
import types
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

import resource_router
from resource_router.ownership.scripts import SCRIPT_NAMES, script_source

ROOT = Path(__file__).resolve().parents[2]


def test_every_script_has_a_header_and_loads() -> None:
    for name in SCRIPT_NAMES:
        body = (ROOT / "lua" / f"{name}.lua").read_text()
        assert body.startswith(f"-- {name}"), name
        assert "KEYS[1]" in body and "Returns" in body, name
        assert script_source(name).startswith("-- Shared helpers")
    with pytest.raises(KeyError):
        script_source("drop_everything")


def _documented_names() -> list[str]:
    """The first column of the README's "Public API" table."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Public API\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([A-Za-z_]\w*)` \|", section, flags=re.M)


def test_all_equals_the_documented_public_names() -> None:
    documented = _documented_names()
    assert len(documented) >= 20
    assert sorted(resource_router.__all__) == sorted(documented)
    assert list(resource_router.__all__) == sorted(resource_router.__all__, key=str)


def test_every_public_member_is_exported() -> None:
    """httpx style: what ``import resource_router`` offers beyond its submodules is exactly ``__all__``."""
    members = [
        name
        for name, value in vars(resource_router).items()
        if (not name.startswith("_") or name == "__version__")
        and not isinstance(value, types.ModuleType | __future__._Feature)
    ]
    assert sorted(members, key=str) == list(resource_router.__all__)


def test_http_bodies_live_in_the_gateway() -> None:
    from resource_router import gateway

    for name in ("ResourceRegistrationRequest", "ResourceReleaseRequest", "RouteResponse", "ErrorResponse"):
        assert name in gateway.__all__ and hasattr(gateway, name)
        assert not hasattr(resource_router, name), name


def test_version_comes_from_the_package_metadata() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert resource_router.__version__ == metadata.version("resource-router") == project["version"]


def test_metadata_for_users() -> None:
    meta = metadata.metadata("resource-router")
    classifiers = meta.get_all("Classifier") or []
    for version in ("3.11", "3.12", "3.13"):
        assert f"Programming Language :: Python :: {version}" in classifiers
    assert any(c.startswith("Development Status ::") for c in classifiers)
    assert any(c.startswith("Topic ::") for c in classifiers)
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL") or [])
    assert {"Source", "Issues", "Changelog", "Documentation"} <= set(urls)
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert (ROOT / "CHANGELOG.md").read_text().startswith("# Changelog")
    extras = set(meta.get_all("Provides-Extra") or [])
    assert {"memory", "cli", "gateway"} <= extras
    assert not {"dev", "bench"} & extras  # development tools are dependency groups, not published extras
    groups = tomllib.loads((ROOT / "pyproject.toml").read_text())["dependency-groups"]
    assert {"dev", "bench"} <= set(groups)
    core = [r for r in meta.get_all("Requires-Dist") or [] if "extra ==" not in r]
    assert not [r for r in core if r.startswith(("fakeredis", "lupa", "structlog"))], core


def test_no_file_cites_paths_outside_the_repository() -> None:
    texts = [
        ROOT / "README.md",
        ROOT / "CHANGELOG.md",
        *(ROOT / "docs").glob("*.md"),
        ROOT / "benchmarks" / "README.md",
    ]
    texts += [*(ROOT / "src").rglob("*.py"), *(ROOT / "benchmarks").glob("*.py"), *(ROOT / "examples").glob("*")]
    for path in texts:
        text = path.read_text()
        for bad in ("../shared", "shared/anchors", "/work/"):
            assert bad not in text, (path.relative_to(ROOT), bad)


@pytest.mark.slow
def test_wheel_installs_and_registers(tmp_path: Path, redis_url: str) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), str(ROOT)],
        check=True,
        timeout=300,
    )
    (wheel,) = dist.glob("resource_router-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for name in (*SCRIPT_NAMES, "_prelude"):
        assert f"resource_router/lua/{name}.lua" in names
    assert "resource_router/py.typed" in names
    for asset in ("console.html", "console.js", "console.css"):  # the operator console's page, no CDN
        assert f"resource_router/gateway/console/static/{asset}" in names

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    subprocess.run(
        [str(py), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)], check=True, timeout=300
    )
    # Dependencies come from this environment's site-packages (a .pth line), without its editable
    # install of the project: the import below must resolve to the wheel.
    scratch_site = next((venv / "lib").glob("python3*/site-packages"))
    (scratch_site / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    code = f"""
import asyncio, resource_router
from resource_router import ResourceRegistry
assert "{venv}" in resource_router.__file__, resource_router.__file__
async def main():
    for url in ("memory://wheel", "{redis_url}"):
        async with ResourceRegistry(url, namespace="wheeltest") as reg:
            await reg.register_instance("svc", "i1", ttl=5)
            resp = await reg.register_resource("svc", "i1", ["r1"])
            assert resp.success, resp
            assert (await reg.get_resource_owner("svc", "r1")).owner_instance_id == "i1"
            await reg.deregister_instance("svc", "i1")
    print("ok")
asyncio.run(main())
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([str(py), "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")


def test_the_suite_says_which_redis_it_uses() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "--no-cov",
            "tests/system/test_extras.py::test_real_urls_do_not_need_the_memory_extra",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    header = next(line for line in proc.stdout.splitlines() if line.startswith("redis: "))
    assert "memory:// (fakeredis with Lua) as the second backend" in header
    used = next(line for line in proc.stdout.splitlines() if line.startswith("redis used: "))
    where = r"\((REDIS_URL|private redis-server \S+|testcontainers)\)"
    assert re.match(rf"redis used: redis://\S+ {where} \(redis-py \S+\)$", used), used
