"""One ServiceInstance in its own process that counts in a resource's state (``tests/state/``).

    python -m tests.procs.state_writer --url URL --namespace NS --service S --instance-id I \
        --resource R [--ttl T] [--dsn DSN --table T]

It registers R, retrying every 20 ms until the grant is its own (a second process waits there
until the first one's lease ran out), prints ``GRANTED {"t", "token"}``, then increments the
counter in R's state as fast as it can: ``load()`` then ``save(value + 1)`` through one handle taken
at the grant (``inst.state(R)``), never taken again, so that after a pause it still writes with the
old token. Each write is journaled as ``[outcome, value, started, ended]`` (``ok``, ``stale`` or
``error``). When stdin closes it writes the journal to ``--journal`` (JSON), prints ``DONE {...}``
and exits without releasing anything (the test reads the final counter itself). ``--dsn`` keeps the state in PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from resource_router import PostgresStateStore, ResourceRouterError, ServiceInstance, StaleOwnerError
from resource_router.state import StateStore


async def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("--url", "--namespace", "--service", "--instance-id", "--resource"):
        parser.add_argument(name, required=True)
    parser.add_argument("--ttl", type=float, default=1.0)
    parser.add_argument("--dsn", default=None)
    parser.add_argument("--table", default="resource_state")
    parser.add_argument("--journal", required=True)
    args = parser.parse_args()
    store: StateStore | None = PostgresStateStore(args.dsn, table=args.table) if args.dsn else None
    inst = ServiceInstance(
        args.url, args.service, args.instance_id, ttl=args.ttl, namespace=args.namespace, state_store=store
    )
    await inst.start()
    rid = args.resource
    while True:
        response = await inst.register_resource(rid)
        if rid in response.fencing_tokens:
            break
        await asyncio.sleep(0.02)
    token = response.fencing_tokens[rid]
    print("GRANTED " + json.dumps({"t": time.time(), "token": token}), flush=True)
    handle = inst.state(rid)
    journal: list[list[Any]] = []
    stop = asyncio.Event()

    async def count() -> None:
        while not stop.is_set():
            started = time.time()
            try:
                value = (await handle.load() or 0) + 1
                await handle.save(value)
            except StaleOwnerError:
                journal.append(["stale", None, started, time.time()])
                await asyncio.sleep(0.01)
            except ResourceRouterError as exc:
                journal.append(["error", str(exc), started, time.time()])
                await asyncio.sleep(0.01)
            else:
                journal.append(["ok", value, started, time.time()])

    task = asyncio.create_task(count())
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    await reader.read()  # until stdin closes
    stop.set()
    await task
    Path(args.journal).write_text(json.dumps(journal), encoding="utf-8")  # noqa: ASYNC240 - at exit
    print("DONE " + json.dumps({"writes": len(journal)}), flush=True)
    await inst.abort()
    if store is not None:
        await store.aclose()


if __name__ == "__main__":
    asyncio.run(main())
