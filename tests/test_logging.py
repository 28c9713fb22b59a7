from __future__ import annotations

import io
import json
import logging

import pytest

from shared.log import configure_logging, get_logger
from shared.redaction import Redactor
from shared.settings import LogFormat

CANARY = "canary-4b1d-secret"


@pytest.fixture
def json_log():
    stream = io.StringIO()
    configure_logging("DEBUG", LogFormat.JSON, Redactor([CANARY]), stream=stream)
    yield stream
    configure_logging("INFO", LogFormat.CONSOLE, Redactor(), stream=io.StringIO())


def lines(stream):
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_secrets_are_masked_in_every_log_line(json_log):
    log = get_logger("test")
    log.info(
        "connecting to redis://:hunter2hunter2@redis:6379 "
        "with key sk-ant-api03-ABCDEFGHIJKLMNOPQRST",
        password="p4ssw0rd-value",
        headers={"Authorization": "Bearer abcdefghijklmnopqrstuvwxyz"},
        env=[f"TOKEN={CANARY}"],
        container="web-1",
    )
    try:
        raise ValueError(f"boom with {CANARY}")
    except ValueError:
        log.exception("handler failed")
    logging.getLogger("thirdparty").warning("lib says api_key=plainvalue123")
    text = json_log.getvalue()
    for secret in (
        "hunter2hunter2",
        "ABCDEFGHIJKLMNOPQRST",
        "p4ssw0rd-value",
        "abcdefghijklmnopqrstuvwxyz",
        CANARY,
        "plainvalue123",
    ):
        assert secret not in text
    first, second, third = lines(json_log)
    assert first["container"] == "web-1", "ordinary fields are left alone"
    assert first["password"] == "***"
    assert "redis://:***@redis:6379" in first["event"]
    assert "ValueError" in second["exception"]
    assert third["logger"] == "thirdparty"
    assert third["event"] == "lib says api_key=***"


def test_console_format_also_redacts():
    stream = io.StringIO()
    configure_logging("INFO", LogFormat.CONSOLE, Redactor([CANARY]), stream=stream)
    get_logger("t").info("value", secret=CANARY, note=f"x {CANARY}")
    assert CANARY not in stream.getvalue()
    assert "value" in stream.getvalue()


def test_level_filters(json_log):
    configure_logging("WARNING", LogFormat.JSON, Redactor(), stream=json_log)
    get_logger("t").info("hidden")
    get_logger("t").warning("shown")
    assert [line["event"] for line in lines(json_log)] == ["shown"]
