"""The ownership view on its own: lease clock, gains and losses, hooks, idle ids (no Redis)."""

from __future__ import annotations

import asyncio

import pytest

from resource_router.errors import ActivationError
from resource_router.ownership.view import OwnershipView
from resource_router.reasons import LossReason
from resource_router.routing.admission import Admission, Refusal, Verdict

REASON_EXPIRED, REASON_RELEASED, REASON_TAKEN = LossReason.EXPIRED, LossReason.RELEASED, LossReason.TAKEN


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def may_serve(view: OwnershipView, resource_id: str | None, token: int | None) -> Verdict:
    return Admission(view).admit(resource_id, token)[0]


def view_with(clock: Clock, **owned: int) -> OwnershipView:
    view = OwnershipView(10.0, clock=clock)
    view.renewed(clock.now)
    view.set_serving(True)
    view.gain(owned)
    return view


def test_the_lease_clock_and_the_admission_rule() -> None:
    clock = Clock()
    view = view_with(clock, x=7)
    assert may_serve(view, "x", None) == 7
    assert may_serve(view, "x", 7) == 7
    assert may_serve(view, "x", 6) is Refusal.STALE_TOKEN
    assert may_serve(view, "y", None) is Refusal.NOT_OWNED
    assert may_serve(view, None, None) is None  # a call to the service, no resource
    admission = Admission(view)
    _verdict, epoch = admission.admit("x", None)
    clock.now += 9.99
    assert view.lease_valid
    assert admission.still(epoch)
    clock.now += 0.01  # the local lease ends ttl after the heartbeat was sent
    assert not view.lease_valid
    assert not admission.still(epoch)
    assert may_serve(view, "x", None) is Refusal.NOT_SERVING
    assert may_serve(view, None, None) is Refusal.NOT_SERVING
    view.renewed(clock.now)
    assert may_serve(view, "x", None) == 7
    _verdict, epoch = admission.admit("x", None)
    view.set_serving(False)
    assert not admission.still(epoch)  # every change of the view moves its epoch
    assert may_serve(view, "x", None) is Refusal.NOT_SERVING


async def test_losses_notify_once_and_deactivate_only_what_was_activated() -> None:
    clock = Clock()
    view = view_with(clock, a=1, b=2, c=3)
    lost: list[list[str]] = []
    deactivated: list[tuple[str, str]] = []
    view.on_resource_lost = lost.append

    async def on_deactivate(rid: str, reason: str) -> None:
        deactivated.append((rid, reason))

    view.on_deactivate = on_deactivate
    await view.activate("a")
    await view.activate("b")
    assert view.active == {"a", "b"}
    assert view.lose(["a", "c", "nope"], REASON_TAKEN) == ["a", "c"]
    assert view.lose(["a"], REASON_TAKEN) == []  # not twice
    await view.aclose()
    assert lost == [["a", "c"]]
    assert deactivated == [("a", REASON_TAKEN)]  # c was never activated
    assert view.owned == {"b": 2}
    # A voluntary loss does not call on_resource_lost.
    view.lose(["b"], REASON_RELEASED, involuntary=False)
    await view.aclose()
    assert lost == [["a", "c"]]
    assert deactivated == [("a", REASON_TAKEN), ("b", REASON_RELEASED)]


async def test_suspended_ids_are_not_served_until_restored_or_lost() -> None:
    clock = Clock()
    view = view_with(clock, a=1, b=2)
    lost: list[list[str]] = []
    view.on_resource_lost = lost.append
    assert view.suspend(["a", "b", "z"]) == {"a": 1, "b": 2}
    assert may_serve(view, "a", None) is Refusal.NOT_OWNED
    view.restore({"a": 1})
    assert may_serve(view, "a", None) == 1
    view.lose(["b"], REASON_TAKEN)
    assert lost == [["b"]]
    assert view.suspended == {}


async def test_activation_runs_once_for_concurrent_first_requests() -> None:
    view = view_with(Clock(), x=1)
    started = 0
    gate = asyncio.Event()

    async def on_activate(rid: str) -> None:
        nonlocal started
        started += 1
        await gate.wait()

    view.on_activate = on_activate
    waiters = [asyncio.create_task(view.activate("x")) for _ in range(5)]
    await asyncio.sleep(0.01)
    assert started == 1
    assert view.needs_activation("x")
    gate.set()
    await asyncio.gather(*waiters)
    assert started == 1
    assert not view.needs_activation("x")


async def test_a_failing_activation_fails_every_waiter_and_can_be_retried() -> None:
    view = view_with(Clock(), x=1)
    attempts = 0

    async def on_activate(rid: str) -> None:
        nonlocal attempts
        attempts += 1
        await asyncio.sleep(0.01)
        if attempts == 1:
            raise ValueError("state store down")

    view.on_activate = on_activate
    results = await asyncio.gather(*(view.activate("x") for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, ActivationError) for r in results)
    error = results[0]
    assert isinstance(error, ActivationError)
    assert isinstance(error.cause, ValueError)
    assert "state store down" in str(error)
    assert "x" not in view.active
    await view.activate("x")
    assert attempts == 2
    assert "x" in view.active


async def test_leaving_ids_wait_and_end_where_they_went() -> None:
    clock = Clock()
    view = view_with(clock, a=1, b=2, c=3)
    assert view.begin_leave(["a", "b", "zz"]) == ["a", "b"]
    assert may_serve(view, "a", None) is Refusal.MOVING
    assert set(view.leaving) == {"a", "b"}
    view.end_leave(["a", "b"], moved={"a": "i2"}, keep=["b"])
    assert view.owned == {"b": 2, "c": 3}
    assert view.moved == {"a": "i2"}
    view.gain({"a": 9})  # it came back: no more redirect
    assert view.moved == {}


def test_idle_ids_are_the_placed_ones_not_called_for_the_timeout() -> None:
    clock = Clock()
    view = view_with(clock, pinned=1)
    view.gain({"p1": 2, "p2": 3}, placed=True)
    clock.now += 5.0
    view.touch("p2")
    view.touch("pinned")  # not placed: never idle
    clock.now += 5.0
    assert view.idle(8.0) == ["p1"]
    assert sorted(view.idle(4.0)) == ["p1", "p2"]
    view.begin_leave(["p1"])
    assert view.idle(4.0) == ["p2"]
    view.pin(["p2"])
    assert view.idle(4.0) == []


def test_lease_expiry_loses_everything_on_clear() -> None:
    async def run() -> None:
        view = view_with(Clock(), a=1)
        view.suspend(["a"])
        view.gain({"b": 2})
        lost: list[list[str]] = []
        view.on_resource_lost = lost.append
        assert sorted(view.clear(REASON_EXPIRED, involuntary=True)) == ["a", "b"]
        assert view.owned == {}
        assert view.suspended == {}
        assert [sorted(x) for x in lost] == [["a", "b"]]

    asyncio.run(run())


@pytest.mark.parametrize("hook", ["sync", "async"])
async def test_hooks_may_be_plain_or_async_functions(hook: str) -> None:
    view = view_with(Clock(), x=1)
    seen: list[str] = []
    if hook == "sync":
        view.on_activate = seen.append
    else:

        async def on_activate(rid: str) -> None:
            seen.append(rid)

        view.on_activate = on_activate
    await view.activate("x")
    await view.activate("x")
    assert seen == ["x"]
