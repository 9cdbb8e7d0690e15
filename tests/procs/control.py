"""Start, stop and SIGKILL instance processes (``tests/procs/instance_proc.py``) from async tests."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

__all__ = ["InstanceProcess", "start_all"]


class InstanceProcess:
    def __init__(self, instance_id: str, proc: asyncio.subprocess.Process, stderr_path: Path) -> None:
        self.instance_id = instance_id
        self.proc = proc
        self.stderr_path = stderr_path
        self.ready: dict[str, Any] = {}

    @classmethod
    async def start(
        cls,
        url: str,
        namespace: str,
        service: str,
        instance_id: str,
        *,
        ttl: float = 2.0,
        resources: list[str] | tuple[str, ...] = (),
        log_path: Path | None = None,
        exec_delay: float = 0.0,
        placement: str | None = None,
        rebalance: bool = False,
        serial: bool = False,
        idle_timeout: float | None = None,
        timeout: float = 30.0,
    ) -> InstanceProcess:
        fd, name = tempfile.mkstemp(prefix=f"rr-{instance_id}-", suffix=".stderr")
        os.close(fd)
        stderr_path = Path(name)
        args = [
            sys.executable,
            "-m",
            "tests.procs.instance_proc",
            "--url",
            url,
            "--namespace",
            namespace,
            "--service",
            service,
            "--instance-id",
            instance_id,
            "--ttl",
            str(ttl),
            "--resources",
            ",".join(resources),
            "--exec-delay",
            str(exec_delay),
        ]
        if log_path is not None:
            args += ["--log", str(log_path)]
        if placement is not None:
            args += ["--placement", placement] + (["--rebalance"] if rebalance else [])
        if serial:
            args.append("--serial")
        if idle_timeout is not None:
            args += ["--idle-timeout", str(idle_timeout)]
        err = os.open(stderr_path, os.O_WRONLY | os.O_TRUNC)
        try:
            proc = await asyncio.create_subprocess_exec(
                *args,
                cwd=str(ROOT),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
        finally:
            os.close(err)
        self = cls(instance_id, proc, stderr_path)
        try:
            line = await self._read_line("READY ", timeout)
        except BaseException:
            await self.kill()
            raise
        self.ready = json.loads(line)
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    async def _read_line(self, prefix: str, timeout: float) -> str:
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.proc.stdout.readline()
                if not raw:
                    raise RuntimeError(
                        f"instance process {self.instance_id} exited before {prefix.strip()}:\n{self.stderr()}"
                    )
                line = raw.decode().strip()
                if line.startswith(prefix):
                    return line[len(prefix) :]

    async def stop(self, timeout: float = 20.0) -> dict[str, Any]:
        """Graceful exit: close stdin, wait for STOPPED and the exit."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            line = await self._read_line("STOPPED ", timeout)
            async with asyncio.timeout(timeout):
                await self.proc.wait()
        finally:
            err = self.stderr()
            await self.kill()
        assert self.proc.returncode == 0, err
        return dict(json.loads(line))

    async def terminate(self, timeout: float = 30.0) -> dict[str, Any]:
        """SIGTERM: the process drains (its resources go to other volunteers), then exits gracefully."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            line = await self._read_line("STOPPED ", timeout)
            async with asyncio.timeout(timeout):
                await self.proc.wait()
        finally:
            err = self.stderr()
            await self.kill()
        assert self.proc.returncode == 0, err
        return dict(json.loads(line))

    def pause(self) -> None:
        """SIGSTOP: the process stops at once, its sockets keep receiving (as in a GC pause)."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after ``pause``."""
        self.proc.send_signal(signal.SIGCONT)

    async def kill(self) -> None:
        """SIGKILL (no cleanup at all) and reap the process; idempotent."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()
        if self.proc.stdout is not None:
            await self.proc.stdout.read()
        self.stderr_path.unlink(missing_ok=True)


async def start_all(specs: list[dict[str, Any]]) -> list[InstanceProcess]:
    """Start several processes at once; if one fails, kill the others."""
    results = await asyncio.gather(*(InstanceProcess.start(**spec) for spec in specs), return_exceptions=True)
    procs = [r for r in results if isinstance(r, InstanceProcess)]
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        for p in procs:
            await p.kill()
        raise errors[0]
    return procs
