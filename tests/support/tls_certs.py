"""A throw-away CA and a server certificate for 127.0.0.1/localhost, made with the ``openssl`` CLI."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

__all__ = ["make_certs", "openssl_binary"]


def openssl_binary() -> str | None:
    return shutil.which("openssl")


def _run(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certs(directory: Path, name: str = "test") -> tuple[str, str, str]:
    """(server cert, server key, CA cert) files in ``directory``; the CA is named ``name``."""
    ca_key, ca, key, csr, cert, ext = (
        f"{name}-ca.key",
        f"{name}-ca.crt",
        f"{name}-server.key",
        f"{name}-server.csr",
        f"{name}-server.crt",
        f"{name}-ext.cnf",
    )
    days, rsa = ("-days", "1"), ("-newkey", "rsa:2048", "-nodes")
    _run("req", "-x509", *rsa, *days, "-subj", f"/CN={name}-ca", "-keyout", ca_key, "-out", ca, cwd=directory)
    _run("req", *rsa, "-subj", "/CN=127.0.0.1", "-keyout", key, "-out", csr, cwd=directory)
    (directory / ext).write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _run("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", *days, "-extfile", ext,
         "-out", cert, cwd=directory)  # fmt: skip
    return str(directory / cert), str(directory / key), str(directory / ca)
