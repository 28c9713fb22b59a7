"""Logging: structlog everywhere, JSON in containers and console on a TTY, and every line —
ours and third-party stdlib loggers alike — passes the redaction processor last before rendering.

Only the runner calls `configure_logging`; modules just call `get_logger(__name__)`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import IO, Any

import structlog

from shared.redaction import Redactor
from shared.settings import LogFormat

__all__ = ["Logger", "RedactProcessor", "configure_logging", "get_logger"]

Logger = structlog.stdlib.BoundLogger


class RedactProcessor:
    """structlog processor masking secrets in every key and value of the event dict."""

    def __init__(self, redactor: Redactor) -> None:
        self.redactor = redactor

    def __call__(
        self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        return {
            key: self.redactor.data(value, key=key)
            if key != "event"
            else self.redactor.text(str(value))
            for key, value in event_dict.items()
        }


def configure_logging(
    level: str = "INFO",
    fmt: LogFormat = LogFormat.AUTO,
    redactor: Redactor | None = None,
    stream: IO[str] | None = None,
) -> None:
    stream = stream or sys.stderr
    redactor = redactor or Redactor()
    use_json = fmt is LogFormat.JSON or (fmt is LogFormat.AUTO and not stream.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    pre_chain: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *pre_chain,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=pre_chain,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            RedactProcessor(redactor),
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Chatty HTTP libraries log request lines (with URLs that may carry tokens) at INFO.
    for noisy in ("httpx", "httpcore", "urllib3", "docker", "openai", "anthropic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def get_logger(name: str) -> Logger:
    logger: Logger = structlog.stdlib.get_logger(name)
    return logger
