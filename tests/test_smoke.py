from __future__ import annotations

import resource_router
from resource_router import ResourceRegistry


async def test_register_and_lookup_round_trip(registry: ResourceRegistry) -> None:
    await registry.register_instance("svc", "i1", ttl=5)
    resp = await registry.register_resource("svc", "i1", ["a"])
    owner = await registry.get_resource_owner("svc", "a")
    assert owner.owner_instance_id == "i1"
    assert owner.fencing_token == resp.fencing_tokens["a"]


def test_all_is_complete() -> None:
    public = {n for n in dir(resource_router) if not n.startswith("_") and n[0].isupper()}
    assert public <= set(resource_router.__all__)
