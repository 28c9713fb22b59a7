from __future__ import annotations

import json

import pytest

from shared.errors import InvalidEventError
from shared.events import EVENT_CLASSES, Channel, EventType, encode_event, parse_event
from tests.support import factories


@pytest.mark.parametrize("event", factories.every_event_type(), ids=lambda e: e.type)
def test_every_event_type_round_trips_on_its_channel(event):
    decoded = parse_event(encode_event(event), channel=event.channel)
    assert decoded == event
    assert type(decoded) is type(event)
    assert event.channel == EventType(event.type).channel


def test_every_channel_has_an_event_type():
    assert {t.channel for t in EventType} == set(Channel)
    assert Channel.HEALTH_ALERT == "hemostat:health_alert"
    assert Channel.REMEDIATION_NEEDED == "hemostat:remediation_needed"
    assert Channel.REMEDIATION_COMPLETE == "hemostat:remediation_complete"
    assert Channel.FALSE_ALARM == "hemostat:false_alarm"


def test_every_event_type_has_its_one_class():
    assert set(EVENT_CLASSES) == set(EventType)
    for kind, cls in EVENT_CLASSES.items():
        assert cls.model_fields["type"].default == kind.value


def test_events_are_frozen():
    event = factories.health_alert()
    with pytest.raises(ValueError, match="frozen"):
        event.severity = "info"


def test_ids_sort_by_creation_and_idempotency_key_defaults_to_id():
    events = [factories.health_alert() for _ in range(50)]
    assert [e.id for e in events] == sorted(e.id for e in events)
    assert all(e.idempotency_key == e.id for e in events)
    assert factories.health_alert(idempotency_key="k").idempotency_key == "k"


def _mutated(**changes):
    data = json.loads(encode_event(factories.health_alert()))
    for path, value in changes.items():
        target = data
        keys = path.split("__")
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
    return json.dumps(data)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("{not json", "malformed JSON"),
        ("", "malformed JSON"),
        (None, "no 'event' field"),
        ('{"type": "health_alert"}', "source: Field required"),
        (_mutated(type="exploded"), "does not match any of the expected tags"),
        (_mutated(payload__kind="crush"), "payload.kind"),
        (_mutated(schema_version=2), "schema_version"),
        (_mutated(unexpected="x"), "unexpected: Extra inputs are not permitted"),
        (_mutated(payload__surprise=1), "payload.surprise: Extra inputs are not permitted"),
        (_mutated(occurred_at="2024-01-01T00:00:00"), "occurred_at: Input should have timezone"),
    ],
)
def test_invalid_events_are_rejected_with_the_reason(raw, message):
    with pytest.raises(InvalidEventError, match=message.replace("(", r"\(")):
        parse_event(raw)


def test_bytes_that_are_not_utf8_are_rejected_as_such():
    raw = encode_event(factories.health_alert()).encode()
    assert parse_event(raw) == parse_event(raw.decode()), "UTF-8 bytes are read like text"
    with pytest.raises(InvalidEventError, match=r"not valid UTF-8: .* byte 0xff in position 1"):
        parse_event(b'{\xff"type": "health_alert"}')


def test_event_on_the_wrong_channel_is_rejected():
    raw = encode_event(factories.health_alert())
    with pytest.raises(InvalidEventError, match="does not belong on channel"):
        parse_event(raw, channel=Channel.FALSE_ALARM)


def test_confidence_must_be_a_number_in_unit_interval():
    data = json.loads(encode_event(factories.remediation_needed()))
    data["payload"]["analysis"]["confidence"] = 1.5
    with pytest.raises(InvalidEventError, match="confidence"):
        parse_event(json.dumps(data))
    data["payload"]["analysis"]["confidence"] = 0.5
    assert parse_event(json.dumps(data)).payload.analysis.confidence == 0.5
