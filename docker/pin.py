"""Write pip constraints (``name==version`` lines) from a ``pip install --dry-run --report`` file.

Used by ``make constraints`` to pin what the Docker image installs; the project itself is left out.
"""

from __future__ import annotations

import json
import sys


def main(report_path: str) -> None:
    with open(report_path, encoding="utf-8") as f:
        report = json.load(f)
    pins = sorted(
        (item["metadata"]["name"], item["metadata"]["version"])
        for item in report["install"]
        if item["metadata"]["name"] != "resource-router"
    )
    print("# The Docker image's dependencies, pinned: `make constraints` rewrites this file from")
    print("# pyproject.toml (the gateway and nats extras). The image installs with `pip install -c` this file.")
    for name, version in sorted(pins, key=lambda p: p[0].lower()):
        print(f"{name}=={version}")


if __name__ == "__main__":
    main(sys.argv[1])
