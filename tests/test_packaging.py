"""The wheel ships the Lua scripts and works from a scratch virtual environment."""

from __future__ import annotations

import os
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import resource_router
from resource_router.scripts import SCRIPT_NAMES, script_source

ROOT = Path(__file__).resolve().parents[1]


def test_every_script_has_a_header_and_loads() -> None:
    for name in SCRIPT_NAMES:
        body = (ROOT / "lua" / f"{name}.lua").read_text()
        assert body.startswith(f"-- {name}"), name
        assert "KEYS[1]" in body and "Returns" in body, name
        assert script_source(name).startswith("-- Shared helpers")
    with pytest.raises(KeyError):
        script_source("drop_everything")


def test_public_names_are_exported() -> None:
    public = {n for n in vars(resource_router) if not n.startswith("_") and n[:1].isupper()}
    assert public <= set(resource_router.__all__)
    assert all(hasattr(resource_router, n) for n in resource_router.__all__)
    assert list(resource_router.__all__) == sorted(resource_router.__all__, key=str)


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
