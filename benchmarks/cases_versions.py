"""The routed-call rows again, on the oldest supported redis-py (5.2.1), in the same run.

``make test`` keeps a second virtual environment with redis-py 5.2.1 (``.venv-oldest``); this runs
``benchmarks.run --only routed_call,routed_call_uncached,nats_request_reply`` there, against the
same Redis, and adds its rows with the suffix ``@redis-py-5.2.1``. NATS is measured again in that
process so that each version's routed call has its own reference measured alongside it.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from pathlib import Path

from .common import REPO_ROOT, Ctx, child_env
from .harness import Row

__all__ = ["OLDEST_PYTHON", "SUFFIX", "run_versions"]

SUFFIX = "@redis-py-5.2.1"
IDS = ("routed_call", "routed_call_uncached", "nats_request_reply")
OLDEST_PYTHON = Path(os.environ.get("RR_OLDEST_PYTHON", REPO_ROOT / ".venv-oldest" / "bin" / "python"))
#: Checked once, when the suite is loaded (not inside the event loop).
OLDEST_AVAILABLE = OLDEST_PYTHON.exists()


async def run_versions(ctx: Ctx) -> list[Row]:
    wanted = [i for i in IDS if ctx.want(i + SUFFIX)]
    if not wanted:
        return []
    if not OLDEST_AVAILABLE:
        return [
            Row(i + SUFFIX, f"{i} on redis-py 5.2.1", "rpc", skipped="no .venv-oldest (make test creates it)")
            for i in wanted
        ]
    with tempfile.TemporaryDirectory(prefix="rr-bench-oldest-") as tmp:
        out = Path(tmp) / "rows.json"
        cmd = [str(OLDEST_PYTHON), "-m", "benchmarks.run", f"--{ctx.mode.name}", "--only", ",".join(wanted)]
        cmd += ["--redis-url", ctx.url, "--nats-url", ctx.nats_url, "--json", str(out), "--no-plots"]
        cmd += ["--results-dir", tmp]
        proc = await asyncio.create_subprocess_exec(
            *cmd, cwd=REPO_ROOT, env=child_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        output, _ = await proc.communicate()
        if proc.returncode != 0 or not out.exists():
            tail = output.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
            return [Row(i + SUFFIX, f"{i} on redis-py 5.2.1", "rpc", skipped=f"failed: {tail[0]}") for i in wanted]
        doc = json.loads(out.read_text())
    version = doc["meta"]["packages"].get("redis")
    return [
        Row.from_json(data, row_id=data["id"] + SUFFIX, label=f"{data['label']} (redis-py {version})")
        for data in doc["rows"]
        if data["id"] in wanted
    ]
