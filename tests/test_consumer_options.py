"""ConsumerOptions: the consumer's tuning as one value, built from the settings."""

from __future__ import annotations

import dataclasses

import pytest

from shared.bus import Bus
from shared.eventbus import ConsumerOptions
from shared.events import Channel
from shared.stub_bus import StubBus
from tests.support.stub import stub_settings


async def _nothing(event) -> None:
    return None


def test_from_settings_takes_every_bus_setting_and_the_grace():
    settings = stub_settings(
        bus_concurrency=7,
        bus_block_ms=250,
        bus_max_deliveries=2,
        bus_claim_idle_ms=1_500,
        bus_reclaim_interval_s=0.5,
        bus_retry_backoff_s=0.1,
        bus_handler_timeout_s=30.0,
        shutdown_grace_s=3.0,
    )
    assert ConsumerOptions.from_settings(settings) == ConsumerOptions(
        concurrency=7,
        block_ms=250,
        max_deliveries=2,
        claim_idle_ms=1_500,
        reclaim_interval_s=0.5,
        retry_backoff_s=0.1,
        handler_timeout_s=30.0,
        grace_s=3.0,
    )
    assert ConsumerOptions.from_settings(settings, concurrency=3).concurrency == 3


def test_the_defaults_are_the_settings_defaults():
    # tests.conftest.make_settings shrinks five of them for tests; the rest are the defaults.
    shrunk = {
        "block_ms": 100,
        "claim_idle_ms": 1_000,
        "reclaim_interval_s": 0.2,
        "retry_backoff_s": 0.05,
        "grace_s": 5.0,
    }
    expected = dataclasses.replace(ConsumerOptions(), **shrunk)
    assert ConsumerOptions.from_settings(stub_settings()) == expected


def test_it_is_frozen_and_refuses_what_cannot_work():
    options = ConsumerOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.concurrency = 2  # type: ignore[misc]
    with pytest.raises(ValueError, match="concurrency"):
        ConsumerOptions(concurrency=0)
    with pytest.raises(ValueError, match="max_deliveries"):
        ConsumerOptions(max_deliveries=0)


@pytest.mark.parametrize("bus", [Bus(None), StubBus()], ids=["redis", "stub"])  # type: ignore[arg-type]
def test_both_buses_build_consumers_from_options_and_named_overrides(bus):
    options = ConsumerOptions(concurrency=4, max_deliveries=2)
    consumer = bus.consumer(
        group="g",
        name="c",
        channels=[Channel.HEALTH_ALERT],
        handler=_nothing,
        options=options,
        max_deliveries=3,
    )
    assert consumer.options == dataclasses.replace(options, max_deliveries=3)
    assert (consumer.concurrency, consumer.max_deliveries) == (4, 3)
    with pytest.raises(TypeError):
        bus.consumer(
            group="g", name="c", channels=[Channel.HEALTH_ALERT], handler=_nothing, block=1
        )
    from_settings = bus.consumer_from_settings(
        stub_settings(bus_max_deliveries=4),
        group="g",
        name="c",
        channels=[Channel.HEALTH_ALERT],
        handler=_nothing,
        concurrency=2,
    )
    assert (from_settings.concurrency, from_settings.max_deliveries) == (2, 4)
