"""HemoStat's one exception tree.

Every error HemoStat raises on purpose is a ``HemoStatError``. Boundaries (Redis, Docker, LLM
SDKs, HTTP) wrap the library's exception with ``raise ... from`` so callers handle one family and
the original cause stays in the traceback.

    HemoStatError
    ├── ConfigError            settings or a file the operator wrote is invalid
    │   └── RunbookError       a runbook failed validation (file, field, reason)
    ├── InvalidEventError      bytes on a channel are not a valid event envelope
    ├── InvalidPayload         a webhook body (Alertmanager's) is not a valid payload
    ├── BusError               the event bus could not do what was asked
    │   ├── BusUnavailable     Redis is unreachable (after bounded retries)
    │   └── NotReplicated      a write is on the primary but too few replicas confirmed it (WAIT)
    ├── DockerError            the Docker engine refused or failed a call
    │   ├── DockerUnavailable  the daemon cannot be reached
    │   └── ContainerNotFound  the target container does not exist
    ├── LLMError               the LLM gave no usable answer (the rules decision stands)
    ├── ActionRejected         the Responder's gate refused to book an action (lease, claim, phase)
    ├── ApprovalError          an approval decision could not be applied (expired, decided, ...)
    ├── NotificationError      a notification channel's send failed (its delivery says how)
    ├── RequestRefused         an HTTP server of ours refused a request (HTTP status, rule)
    └── AgentCrashed           a core task of an agent ended; the process exits non-zero
"""

from __future__ import annotations

__all__ = [
    "ActionRejected",
    "AgentCrashed",
    "ApprovalError",
    "BusError",
    "BusUnavailable",
    "ConfigError",
    "ContainerNotFound",
    "DockerError",
    "DockerUnavailable",
    "HemoStatError",
    "InvalidEventError",
    "InvalidPayload",
    "LLMError",
    "NotReplicated",
    "NotificationError",
    "RequestRefused",
    "RunbookError",
]


class HemoStatError(Exception):
    """Base class of every error HemoStat raises on purpose."""


class ConfigError(HemoStatError):
    """Settings or an operator-written file are invalid."""


class RunbookError(ConfigError):
    """A runbook failed validation; the message names the file, the field and the reason."""


class InvalidEventError(HemoStatError):
    """Bytes read from a channel are not a valid event (bad JSON or envelope/payload mismatch)."""


class InvalidPayload(HemoStatError):
    """A webhook's request body is not a valid payload (the Alertmanager v4 webhook's)."""


class BusError(HemoStatError):
    """The event bus could not complete an operation."""


class BusUnavailable(BusError):
    """Redis could not be reached, even after bounded retries."""


class NotReplicated(BusError):
    """A write reached the primary, but fewer replicas than required confirmed it in time (Redis
    WAIT): a failover now could lose it, so it must not be acknowledged as done."""

    def __init__(self, message: str, *, confirmed: int, wanted: int) -> None:
        super().__init__(message)
        self.confirmed = confirmed
        self.wanted = wanted


class DockerError(HemoStatError):
    """The Docker engine refused or failed a call."""


class DockerUnavailable(DockerError):
    """The Docker daemon cannot be reached."""


class ContainerNotFound(DockerError):
    """The container a request names does not exist."""


class LLMError(HemoStatError):
    """The LLM gave no usable answer; ``reason`` is a short machine-readable cause."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class ActionRejected(HemoStatError):
    """An action was refused at the last moment; ``guard`` names what refused it (the Responder's
    gate: ``reason`` is lease_lost, claim_lost or phase_<x>)."""

    def __init__(self, guard: str, reason: str) -> None:
        super().__init__(f"{guard}: {reason}")
        self.guard = guard
        self.reason = reason


class ApprovalError(HemoStatError):
    """An approval decision could not be applied (unknown, expired or already decided)."""


class NotificationError(HemoStatError):
    """A notification channel's send failed; the channel retries what can be retried and records
    the rest as a failed delivery, so it never reaches the agent."""


class RequestRefused(HemoStatError):
    """An HTTP server of ours (the Docker socket proxy, the chat interactions endpoint) refused a
    request: ``status`` is the HTTP answer (400 malformed, 403 outside the policy, 408 too slow,
    411 no length, 413 too large, 431 head too large, 503 too many connections), ``rule`` names
    the rule or check that refused it."""

    def __init__(self, status: int, rule: str, reason: str) -> None:
        super().__init__(f"{rule}: {reason}")
        self.status = status
        self.rule = rule
        self.reason = reason


class AgentCrashed(HemoStatError):
    """A core task of the agent ended unexpectedly; the process should exit non-zero."""
