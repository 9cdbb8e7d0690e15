"""The inspection commands: ``owner``, ``state``, ``resources``, ``instances`` and ``events``."""

from __future__ import annotations

import json
import re
from typing import Annotated

import typer

from resource_router.cli.exit_codes import EXIT_ERROR, EXIT_INVALID, EXIT_OK
from resource_router.cli.invocation import (
    JsonOpt,
    NamespaceOpt,
    RedisOpt,
    check_service,
    run_with_registry,
    settings_from,
    until_signalled,
)
from resource_router.cli.output import (
    echo,
    err,
    event_line,
    events_table,
    fail,
    instances_table,
    print_json,
    render,
    resources_table,
)
from resource_router.errors import ResourceNotFoundError
from resource_router.models import InstanceInfo, OwnershipEvent, Resource
from resource_router.ownership.registry import ResourceRegistry
from resource_router.ownership.volunteers import Volunteer
from resource_router.state.redis_state import RedisStateStore
from resource_router.state.snapshot import StateSnapshot, read_snapshot

__all__ = ["events", "instances", "owner", "resources", "state"]

_STREAM_ID = re.compile(r"\$|\d+(-\d+)?")


def owner(
    service: Annotated[str, typer.Argument(metavar="SERVICE", help="service name")],
    resource_id: Annotated[str, typer.Argument(metavar="RESOURCE_ID", help="resource id")],
    redis: RedisOpt = None,
    namespace: NamespaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show which instance owns a resource.

    Exit code 1 when nobody does.
    """
    settings = settings_from(redis, namespace)

    async def work(registry: ResourceRegistry) -> Resource | None:
        try:
            return await registry.get_resource_owner(service, resource_id)
        except ResourceNotFoundError:
            await check_service(registry, service, found=False)
            return None

    def show(resource: Resource | None) -> None:
        if resource is None:
            if as_json:
                print_json({"resource_id": resource_id, "service_name": service, "owner_instance_id": None})
            fail(f"resource {resource_id!r} of service {service!r} has no owner", EXIT_ERROR)
        elif as_json:
            print_json(resource)
        else:
            render(resources_table(f"owner of {resource_id} in {service}", [resource]))

    run_with_registry(settings, work, show)


def state(
    service: Annotated[str, typer.Argument(metavar="SERVICE", help="service name")],
    resource_id: Annotated[str, typer.Argument(metavar="RESOURCE_ID", help="resource id")],
    redis: RedisOpt = None,
    namespace: NamespaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show the state stored for a resource in Redis (read only): value, version, fencing token.

    Exit code 1 when it has none.
    """
    settings = settings_from(redis, namespace)

    async def work(registry: ResourceRegistry) -> StateSnapshot | None:
        try:
            return await read_snapshot(RedisStateStore().bind(registry), service, resource_id)
        except ResourceNotFoundError:
            await check_service(registry, service, found=False)
            return None

    def show(snapshot: StateSnapshot | None) -> None:
        if snapshot is None:
            if as_json:
                print_json({"resource_id": resource_id, "service_name": service, "value": None, "version": 0})
            fail(f"resource {resource_id!r} of service {service!r} has no stored state", EXIT_ERROR)
        elif as_json:
            print_json(snapshot)
        else:
            echo(
                f"{service}/{resource_id}: version {snapshot.version}, fencing token {snapshot.fencing_token}, "
                f"{snapshot.size} bytes"
            )
            echo(json.dumps(snapshot.value, sort_keys=True, ensure_ascii=False, indent=2))

    run_with_registry(settings, work, show)


def resources(
    service: Annotated[str, typer.Argument(metavar="SERVICE", help="service name")],
    instance: Annotated[str | None, typer.Option("--instance", "-i", help="only this instance's resources")] = None,
    redis: RedisOpt = None,
    namespace: NamespaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List the resources owned in a service (or by one instance)."""
    settings = settings_from(redis, namespace)

    async def work(registry: ResourceRegistry) -> list[Resource]:
        found = await registry.list_resources(service, instance)
        await check_service(registry, service, found=bool(found))
        return found

    def show(found: list[Resource]) -> None:
        if as_json:
            print_json(found)
        else:
            who = f" owned by {instance}" if instance else ""
            render(resources_table(f"{len(found)} resource(s) in {service}{who}", found))

    run_with_registry(settings, work, show)


def instances(
    service: Annotated[str, typer.Argument(metavar="SERVICE", help="service name")],
    redis: RedisOpt = None,
    namespace: NamespaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List the live instances of a service, and which are placement volunteers (column placement:
    their strategy, or - ).

    Exit code 1 for a service nothing ever registered in (a typo, or the wrong namespace).
    """
    settings = settings_from(redis, namespace)

    async def work(registry: ResourceRegistry) -> tuple[list[InstanceInfo], dict[str, Volunteer]]:
        found = await registry.list_instances(service)
        await check_service(registry, service, found=bool(found))
        volunteers = {v.instance_id: v for v in await registry.list_volunteers(service)} if found else {}
        return found, volunteers

    def show(result: tuple[list[InstanceInfo], dict[str, Volunteer]]) -> None:
        found, volunteers = result
        if as_json:
            print_json(
                [
                    i.model_dump(mode="json")
                    | {
                        "volunteer": {"placement": v.placement, "limit": v.limit}
                        if (v := volunteers.get(i.instance_id))
                        else None
                    }
                    for i in found
                ]
            )
        else:
            render(instances_table(f"{len(found)} live instance(s) of {service}", found, volunteers))

    run_with_registry(settings, work, show)


def events(
    service: Annotated[str, typer.Argument(metavar="SERVICE", help="service name")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new events (Ctrl-C stops)")] = False,
    count: Annotated[int, typer.Option("--count", "-c", min=1, max=10_000, help="how many recent events")] = 20,
    since: Annotated[
        str,
        typer.Option(help="with --follow: start after this stream id ('$' = only new events, '0' = replay all)"),
    ] = "$",
    redis: RedisOpt = None,
    namespace: NamespaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show the recent ownership events of a service, or follow them live.

    The events come from the service's audit stream.
    """
    settings = settings_from(redis, namespace)
    if not follow:

        async def recent(registry: ResourceRegistry) -> list[OwnershipEvent]:
            found = await registry.events.recent(service, count)
            await check_service(registry, service, found=bool(found))
            return found

        def show(found: list[OwnershipEvent]) -> None:
            if as_json:
                print_json(found)
            else:
                render(events_table(f"last {len(found)} event(s) of {service}", found))

        run_with_registry(settings, recent, show)
        return

    if not _STREAM_ID.fullmatch(since):
        fail(f"--since must be '$', '0' or a stream id like 1700000000000-0, not {since!r}", EXIT_INVALID)

    async def pump(registry: ResourceRegistry) -> None:
        async for event in registry.events.follow(service, since=since):
            if as_json:
                echo(json.dumps(event.model_dump(mode="json"), sort_keys=True, ensure_ascii=False))
            else:
                echo(event_line(event))

    async def tail(registry: ResourceRegistry) -> None:
        registry.keys.service(service)  # validate the name before announcing anything
        unknown = service not in await registry.list_services()

        def announce() -> None:
            if unknown:  # it may be about to start: follow anyway, but say so
                err().print(
                    f"note: no instance of {service!r} ever registered in namespace {registry.namespace!r} (yet)",
                    markup=False,
                    style="yellow",
                )
            err().print(f"following ownership events of {service} (Ctrl-C to stop)", markup=False, style="dim")

        await until_signalled(pump(registry), started=announce)

    try:
        run_with_registry(settings, tail)
    except KeyboardInterrupt:  # a second Ctrl-C, or a platform without loop signal handlers
        raise typer.Exit(EXIT_OK) from None
