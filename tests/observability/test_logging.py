"""The library's logger: standard ``logging`` records with an event name and structured fields."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from resource_router import ResourceRegistry
from resource_router.observability.logs import ROOT_LOGGER, Logger, get_logger
from tests.support.logs import capture_logs


class Boom:
    """A field value whose rendering must never happen when the level is off."""

    def __str__(self) -> str:
        raise AssertionError("rendered although the level is off")


def test_fields_reach_the_record_and_the_message(caplog: pytest.LogCaptureFixture) -> None:
    log = get_logger("resource_router.probe")
    with caplog.at_level(logging.DEBUG, logger=ROOT_LOGGER):
        log.info("probe.event", resource_id="user-1", note="two words", duration_ms=1.5)
    (record,) = caplog.records
    assert record.name == "resource_router.probe"
    assert (record.levelno, record.event, record.fields) == (  # type: ignore[attr-defined]
        logging.INFO,
        "probe.event",
        {"resource_id": "user-1", "note": "two words", "duration_ms": 1.5},
    )
    assert record.getMessage() == 'probe.event resource_id=user-1 note="two words" duration_ms=1.5'
    assert record.funcName == "test_fields_reach_the_record_and_the_message"  # the caller, not the adapter


def test_bind_adds_context_and_calls_override_it() -> None:
    base = get_logger("resource_router.probe")
    bound = base.bind(instance_id="i-1", service_name="svc")
    assert isinstance(bound, Logger) and bound.name == "resource_router.probe"
    with capture_logs() as logs:
        bound.warning("probe.bound", instance_id="i-2", reason="x")
        base.error("probe.plain")
    assert [(e["event"], e["log_level"]) for e in logs] == [("probe.bound", "warning"), ("probe.plain", "error")]
    assert (logs[0]["instance_id"], logs[0]["service_name"], logs[0]["reason"]) == ("i-2", "svc", "x")
    assert "instance_id" not in logs[1]


def test_exception_keeps_the_traceback(caplog: pytest.LogCaptureFixture) -> None:
    log = get_logger("resource_router.probe")
    with caplog.at_level(logging.DEBUG, logger=ROOT_LOGGER):
        try:
            raise ValueError("broken")
        except ValueError:
            log.exception("probe.failed", operation="probe")
    (record,) = caplog.records
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None and record.exc_info[0] is ValueError
    assert 'raise ValueError("broken")' in caplog.text


def test_nothing_is_built_below_the_level(caplog: pytest.LogCaptureFixture) -> None:
    log = get_logger("resource_router.probe")
    with caplog.at_level(logging.WARNING, logger=ROOT_LOGGER):
        log.debug("probe.hidden", value=Boom())
        log.info("probe.hidden", value=Boom())
        assert not log.is_enabled_for(logging.INFO)
    assert caplog.records == []
    logging.getLogger(ROOT_LOGGER).addHandler(handler := logging.NullHandler())
    try:
        with caplog.at_level(logging.INFO, logger=ROOT_LOGGER):
            log.info("probe.shown", value=1)  # rendered lazily: only a formatting handler calls str()
        assert [r.getMessage() for r in caplog.records] == ["probe.shown value=1"]
    finally:
        logging.getLogger(ROOT_LOGGER).removeHandler(handler)


async def test_each_module_logs_under_its_own_name(registry: ResourceRegistry) -> None:
    with capture_logs() as logs:
        await registry.register_instance("svc", "i1", ttl=5)
        await registry.register_resource("svc", "i1", ["a"])
    names: dict[str, Any] = {e["event"]: e["logger"] for e in logs}
    assert names["instance.register"] == "resource_router.ownership.leases"
    assert names["resource.register"] == "resource_router.ownership.grants"


def test_the_package_logger_has_only_a_null_handler() -> None:
    root = logging.getLogger(ROOT_LOGGER)
    assert [type(h) for h in root.handlers] == [logging.NullHandler]
    assert root.level == logging.NOTSET  # the application decides
