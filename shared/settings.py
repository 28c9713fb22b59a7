"""The one settings object. Every knob is an environment variable (12-factor); `.env.example`
documents each with its default. Later sections (one per agent) are mixed into `Settings`.

Names follow what operators already know: `REDIS_URL`, `DOCKER_HOST` and the SDKs' own variables
are read unprefixed; HemoStat's own knobs carry the `HEMOSTAT_` prefix.
"""

from __future__ import annotations

import difflib
import os
import re
import socket
from enum import StrEnum
from pathlib import Path
from typing import Any, Self, TypeVar, cast
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.errors import ConfigError
from shared.model import describe_validation_error

__all__ = [
    "DEFAULT_REDIS_URL",
    "DEFAULT_ROUTES",
    "ENV_PREFIX",
    "SECTIONS",
    "AgentSettings",
    "AlertSettings",
    "AnalyzerSettings",
    "BusSettings",
    "CoreSettings",
    "DashboardSettings",
    "LLMProvider",
    "LogFormat",
    "MetricsSettings",
    "MonitorSettings",
    "RemediationScope",
    "ResponderSettings",
    "Settings",
    "StatsSource",
    "env_name",
    "load_settings",
    "parse_addresses",
]

ENV_PREFIX = "HEMOSTAT_"
DEFAULT_REDIS_URL = "redis://localhost:6379/0"


class LogFormat(StrEnum):
    AUTO = "auto"  # console on a TTY, JSON otherwise (containers, pipes)
    JSON = "json"
    CONSOLE = "console"


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True)


_SectionT = TypeVar("_SectionT", bound=_Section)


def parse_addresses(text: str) -> list[tuple[str, int]]:
    """`host:port,host:port,...` (an IPv6 host in brackets: `[::1]:26379`)."""
    addresses = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{item!r} is not host:port")
        addresses.append((host, int(port)))
    if not addresses:
        raise ValueError("no sentinel address (host:port,host:port,...)")
    return addresses


class CoreSettings(_Section):
    """Core: where Redis and Docker are, naming, logging."""

    redis_url: SecretStr | None = Field(
        default=None,
        validation_alias="REDIS_URL",
        description="Redis URL (redis://[:password@]host:port/db; rediss:// for TLS). Unset: "
        "agents use redis://localhost:6379/0 and `hemostat run` starts a private redis-server. "
        "With HEMOSTAT_REDIS_SENTINELS only its scheme, user, password and db count: the "
        "sentinels say where the primary is.",
    )
    redis_sentinels: str | None = Field(
        default=None,
        description="Redis Sentinel addresses, host:port,host:port,... Agents ask the sentinels "
        "where the primary is, and ask again after a failover. Unset: REDIS_URL's host.",
    )
    redis_sentinel_service: str = Field(
        default="mymaster",
        min_length=1,
        description="The name the sentinels monitor the primary under (sentinel monitor NAME).",
    )
    redis_sentinel_password: SecretStr | None = Field(
        default=None,
        description="The sentinels' own password (their requirepass), if any; the data "
        "servers' password is REDIS_URL's.",
    )
    redis_tls_ca_file: Path | None = Field(
        default=None,
        description="CA certificate (PEM) that signed the Redis servers' and sentinels' "
        "certificates; needs rediss:// in REDIS_URL (unset: the system's trusted CAs). With "
        "sentinels, TLS is used for them too.",
    )
    redis_tls_cert_file: Path | None = Field(
        default=None,
        description="Client certificate (PEM) for servers that require one (tls-auth-clients "
        "yes), with HEMOSTAT_REDIS_TLS_KEY_FILE.",
    )
    redis_tls_key_file: Path | None = Field(
        default=None, description="Private key (PEM) of HEMOSTAT_REDIS_TLS_CERT_FILE."
    )
    redis_wait_replicas: int = Field(
        default=0,
        ge=0,
        description="What HemoStat acknowledges to the outside (the Alertmanager webhook's 200, "
        "an approval or denial) is first confirmed on this many replicas (Redis WAIT), so a "
        "failover cannot lose it; when fewer confirm in time the webhook answers 503 and a "
        "decision reports it. Costs one replica round trip per acknowledgement. 0: off.",
    )
    redis_wait_timeout_ms: int = Field(
        default=1_000,
        ge=1,
        le=10_000,
        description="How long an acknowledgement waits for HEMOSTAT_REDIS_WAIT_REPLICAS "
        "(the most a slow or missing replica adds to it).",
    )
    docker_host: str | None = Field(
        default=None,
        validation_alias="DOCKER_HOST",
        description="Docker engine address as the docker CLI reads it (unset: the local socket).",
    )
    host_name: str = Field(
        default_factory=socket.gethostname,
        description="Name of this Docker host in events (default: the machine's hostname).",
    )
    instance: str | None = Field(
        default=None,
        description="Instance (consumer) name of this agent process (default: <host>-<pid>). "
        "Keep it stable across restarts to resume this instance's pending messages at once.",
    )
    watch_label: str | None = Field(
        default=None,
        description="Only containers carrying this label (KEY or KEY=VALUE) exist for this "
        "HemoStat: the Monitor watches nothing else and the Responder touches nothing else. "
        "For several HemoStats on one engine (one per compose project, a canary beside prod).",
    )
    log_level: str = Field(default="INFO", description="DEBUG, INFO, WARNING or ERROR.")
    log_format: LogFormat = Field(
        default=LogFormat.AUTO,
        description="auto (console on a TTY, else JSON), json, console.",
    )
    state_dir: Path = Field(
        default=Path(".state"), description="Local state for `hemostat run` (Redis data, logs)."
    )

    @field_validator("redis_sentinels")
    @classmethod
    def _sentinel_addresses(cls, value: str | None) -> str | None:
        if value is not None:
            parse_addresses(value)
        return value

    @model_validator(mode="after")
    def _redis_transport(self) -> Self:
        url = self.redis_url.get_secret_value() if self.redis_url else DEFAULT_REDIS_URL
        scheme = urlsplit(url).scheme
        if scheme not in ("redis", "rediss", "unix"):
            raise ValueError("REDIS_URL must start with redis://, rediss:// (TLS) or unix://")
        if self.redis_sentinels and scheme == "unix":
            raise ValueError("HEMOSTAT_REDIS_SENTINELS needs a redis:// or rediss:// REDIS_URL")
        files = {
            "HEMOSTAT_REDIS_TLS_CA_FILE": self.redis_tls_ca_file,
            "HEMOSTAT_REDIS_TLS_CERT_FILE": self.redis_tls_cert_file,
            "HEMOSTAT_REDIS_TLS_KEY_FILE": self.redis_tls_key_file,
        }
        for name, path in files.items():
            if path is None:
                continue
            # Refused here, not at connect time: a TLS setting that is silently unused, or a
            # missing file, would otherwise look like "Redis unavailable" retried for ever.
            if scheme != "rediss":
                raise ValueError(f"{name} is set but REDIS_URL is not rediss:// (TLS)")
            if not path.is_file():
                raise ValueError(f"{name}: {path} is not a readable file")
        if (self.redis_tls_cert_file is None) != (self.redis_tls_key_file is None):
            raise ValueError(
                "HEMOSTAT_REDIS_TLS_CERT_FILE and HEMOSTAT_REDIS_TLS_KEY_FILE go together"
            )
        return self

    def redis_sentinel_addresses(self) -> list[tuple[str, int]]:
        return parse_addresses(self.redis_sentinels) if self.redis_sentinels else []


class BusSettings(_Section):
    """Event bus (Redis Streams)."""

    stream_maxlen: int = Field(
        default=100_000,
        ge=100,
        description="Approximate length bound of each channel's stream (MAXLEN ~): an event is "
        "trimmed once about this many newer ones follow it; if still pending, it is dead-lettered.",
    )
    dead_letter_maxlen: int = Field(
        default=100_000, ge=100, description="Approximate length bound of the dead-letter stream."
    )
    dead_letter_excerpt_bytes: int = Field(
        default=65_536,
        ge=256,
        description="Bytes of a dead-lettered payload kept (with its full size and SHA-256).",
    )
    bus_block_ms: int = Field(
        default=1_000, ge=10, le=30_000, description="How long one read blocks waiting for events."
    )
    bus_max_deliveries: int = Field(
        default=5, ge=1, description="Deliveries of a failing event before it is dead-lettered."
    )
    bus_claim_idle_ms: int = Field(
        default=30_000,
        ge=100,
        description="Idle time after which a dead consumer's pending event is reclaimed.",
    )
    bus_reclaim_interval_s: float = Field(
        default=5.0, gt=0, description="How often each consumer looks for events to reclaim."
    )
    bus_retry_backoff_s: float = Field(
        default=0.5, ge=0, description="First retry delay of a failed handler (doubles each time)."
    )
    bus_handler_timeout_s: float = Field(
        default=900.0,
        gt=0,
        description="A handler running longer is cancelled, retried, then dead-lettered. Generous: "
        "a Responder restart may wait a runbook's stop_timeout_s (<= 600 s), then verify.",
    )
    bus_concurrency: int = Field(
        default=16, ge=1, le=1024, description="Handlers running at once per agent process."
    )


class AgentSettings(_Section):
    """Agent lifecycle."""

    heartbeat_interval_s: float = Field(
        default=5.0, gt=0, description="How often each agent refreshes its heartbeat key."
    )
    heartbeat_ttl_s: float = Field(
        default=20.0, gt=0, description="Heartbeat key TTL: an agent silent this long is down."
    )
    shutdown_grace_s: float = Field(
        default=20.0, ge=0, description="On SIGTERM, how long in-flight handlers may still run."
    )


class StatsSource(StrEnum):
    AUTO = "auto"  # cgroup files when visible, else the Docker stats API
    CGROUP = "cgroup"
    API = "api"


class MonitorSettings(_Section):
    """Monitor agent: detection."""

    monitor_poll_interval_s: float = Field(
        default=30.0, gt=0, description="Seconds between resource polls of every container."
    )
    monitor_cpu_threshold: float = Field(
        default=85.0, gt=0, le=100, description="CPU % of the container's allowance that alerts."
    )
    monitor_memory_threshold: float = Field(
        default=80.0, gt=0, le=100, description="Memory % of the container's limit that alerts."
    )
    monitor_sustained_samples: int = Field(
        default=3, ge=1, description="Consecutive samples over a threshold before alerting."
    )
    monitor_hysteresis: float = Field(
        default=5.0, ge=0, description="Points under the threshold a value must fall to clear."
    )
    monitor_realert_interval_s: float = Field(
        default=1800.0, gt=0, description="While a problem lasts, re-alert at most this often."
    )
    monitor_min_alert_gap_s: float = Field(
        default=10.0,
        ge=0,
        description="New alerts of one kind per container at most this often.",
    )
    monitor_restart_loop_count: int = Field(
        default=3, ge=2, description="Unplanned deaths within the window that make a restart loop."
    )
    monitor_restart_loop_window_s: float = Field(
        default=300.0, gt=0, description="Window of the restart-loop detector."
    )
    monitor_recovery_window_s: float = Field(
        default=60.0, ge=0, description="Running (and healthy) this long after a crash = recovered."
    )
    monitor_baseline_enabled: bool = Field(
        default=True, description="Flag values far above a container's own EWMA baseline."
    )
    monitor_baseline_min_samples: int = Field(
        default=20, ge=2, description="Samples learned before the baseline judges."
    )
    monitor_baseline_z: float = Field(
        default=4.0, gt=0, description="Standard deviations above the baseline that are unusual."
    )
    monitor_baseline_min_delta: float = Field(
        default=15.0, ge=0, description="...and at least this many points above it."
    )
    monitor_stats_source: StatsSource = Field(
        default=StatsSource.AUTO, description="auto, cgroup or api."
    )
    monitor_stats_concurrency: int = Field(
        default=16, ge=1, le=128, description="Docker API calls in flight at once."
    )
    monitor_log_tail_lines: int = Field(
        default=20, ge=0, le=500, description="Log lines (redacted) attached to an alert."
    )
    monitor_events_stall_grace_s: float = Field(
        default=10.0,
        gt=0,
        description="A container start or stop no Docker event reported, older than this, means "
        "the event stream stalled: it is reopened and the gap caught up.",
    )
    monitor_include_stack: bool = Field(
        default=False, description="Also watch HemoStat's own containers (label hemostat.stack)."
    )
    cgroup_root: Path = Field(
        default=Path("/sys/fs/cgroup"), description="Where the host's cgroup filesystem is mounted."
    )
    proc_root: Path = Field(
        default=Path("/proc"), description="Where the host's /proc is (for network counters)."
    )
    webhook_host: str = Field(
        default="127.0.0.1",
        description="Alertmanager webhook bind address (beyond loopback it requires "
        "HEMOSTAT_WEBHOOK_TOKEN; the compose stack sets both).",
    )
    webhook_port: int = Field(
        default=8090, ge=0, le=65535, description="Alertmanager webhook port (0: disabled)."
    )
    webhook_token: SecretStr | None = Field(
        default=None,
        description="The webhook requires `Authorization: Bearer <token>`; mandatory when it "
        "listens beyond loopback.",
    )
    webhook_rate_per_s: float = Field(
        default=20.0, gt=0, description="Webhook requests per second per client (burst: 2x)."
    )


class LLMProvider(StrEnum):
    AUTO = "auto"  # anthropic if ANTHROPIC_API_KEY, else openai if OPENAI_API_KEY/OPENAI_BASE_URL
    ANTHROPIC = "anthropic"
    OPENAI = "openai"  # also any OpenAI-compatible server (Ollama, vLLM) via OPENAI_BASE_URL
    NONE = "none"


class AnalyzerSettings(_Section):
    """Analyzer agent: runbooks, rules, optional LLM; the fleet's host watch."""

    runbooks_dir: Path = Field(
        default=Path("runbooks"), description="Folder of runbook YAML files (read at start)."
    )
    fleet_host_grace_s: float = Field(
        default=60.0,
        ge=0,
        description="A host without a live Monitor (or Responder) this long is escalated ('host "
        "X is no longer watched'); being watched again is told at once.",
    )
    fleet_check_interval_s: float = Field(
        default=5.0, gt=0, description="How often the hosts' edge agents are looked at."
    )
    analyzer_max_alert_age_s: float = Field(
        default=600.0,
        gt=0,
        description="Alerts detected longer ago than this (a backlog after an outage) are "
        "decided notify-only and marked stale; nothing acts on old news.",
    )
    analyzer_confidence_threshold: float = Field(
        default=0.7, ge=0, le=1, description="Below this confidence no action runs without a human."
    )
    incident_idle_ttl_s: float = Field(
        default=86_400.0, gt=0, description="An open incident with no new alert this long expires."
    )
    llm_provider: LLMProvider = Field(
        default=LLMProvider.AUTO, description="auto, anthropic, openai or none (rules only)."
    )
    llm_model: str | None = Field(
        default=None,
        description="Model (default: claude-sonnet-4-6 for anthropic, gpt-5.4-mini for openai).",
    )
    llm_timeout_s: float = Field(
        default=20.0, gt=0, description="Budget for one analysis, retries included."
    )
    llm_max_retries: int = Field(
        default=2, ge=0, le=10, description="Retries on 429/5xx (Retry-After honoured)."
    )
    llm_max_tokens: int = Field(default=1024, ge=64, description="Token limit of the answer.")
    anthropic_api_key: SecretStr | None = Field(
        default=None, validation_alias="ANTHROPIC_API_KEY", description="Anthropic API key."
    )
    anthropic_base_url: str | None = Field(
        default=None,
        validation_alias="ANTHROPIC_BASE_URL",
        description="Anthropic API base URL (unset: the SDK's default).",
    )
    openai_api_key: SecretStr | None = Field(
        default=None, validation_alias="OPENAI_API_KEY", description="OpenAI API key."
    )
    openai_base_url: str | None = Field(
        default=None,
        validation_alias="OPENAI_BASE_URL",
        description="OpenAI-compatible base URL, e.g. http://ollama:11434/v1 (unset: OpenAI).",
    )
    prometheus_url: str | None = Field(
        default=None, description="Prometheus base URL for runbook PromQL diagnostics."
    )


class RemediationScope(StrEnum):
    OPT_IN = "opt_in"  # only containers labelled hemostat.remediate=true
    ALL = "all"  # every container except protected ones and HemoStat's own


class ResponderSettings(_Section):
    """Responder agent: guarded remediation."""

    dry_run: bool = Field(
        default=True, description="Evaluate and record everything, change nothing. false to act."
    )
    remediation_scope: RemediationScope = Field(
        default=RemediationScope.OPT_IN,
        description="opt_in (label hemostat.remediate=true) or all (never protected/stack).",
    )
    responder_cooldown_s: float = Field(
        default=300.0, ge=0, description="Default cooldown per container and action type."
    )
    responder_cooldown_max_s: float = Field(
        default=3600.0, ge=0, description="Cap of the cooldown's backoff after repeated failures."
    )
    responder_circuit_max_actions: int = Field(
        default=3, ge=1, description="Circuit breaker: actions per container per window."
    )
    responder_circuit_window_s: float = Field(
        default=3600.0, gt=0, description="Circuit breaker window."
    )
    responder_crash_loop_limit: int = Field(
        default=2, ge=1, description="Restarts followed by a quick death before restarts stop."
    )
    responder_crash_loop_window_s: float = Field(
        default=120.0, gt=0, description="A death this soon after our restart counts as a loop."
    )
    responder_lease_ttl_s: float = Field(
        default=30.0,
        gt=1,
        description="Per-container lease TTL while deciding (renewed); once an action is issued "
        "the lease lasts until its verification deadline.",
    )
    responder_max_request_age_s: float = Field(
        default=600.0,
        gt=0,
        description="Failures detected longer ago than this are reported as stale, not acted on.",
    )
    responder_verify_poll_s: float = Field(
        default=0.25, gt=0, description="How often scheduled verifications look at containers."
    )
    responder_defer_poll_s: float = Field(
        default=0.5,
        gt=0,
        description="A request for a container another action holds is decided again this often.",
    )
    responder_sweep_interval_s: float = Field(
        default=5.0, gt=0, description="How often approved and executing proposals are checked."
    )
    responder_orphan_deadline_s: float = Field(
        default=120.0,
        gt=0,
        description="Fleet: a request for a host with no live Responder is finished as failed "
        "(and people are told) this long after it was made.",
    )
    responder_approval_execution_deadline_s: float = Field(
        default=300.0,
        gt=0,
        description="An approved proposal not executed within this time (all Responders down, "
        "Docker unreachable) is finished as failed and people are told.",
    )
    responder_action_concurrency: int = Field(
        default=64,
        ge=1,
        description="Docker calls the Responder issues at once (restarts wait for the stop "
        "timeout; they never hold an event handler).",
    )
    responder_verify_stable_s: float = Field(
        default=3.0, ge=0, description="Without a health check, running this long = verified."
    )
    responder_exec_output_limit: int = Field(
        default=4000, ge=100, description="Characters of exec output kept (after redaction)."
    )
    audit_retention_days: float = Field(
        default=30.0, gt=0, description="Audit records are kept this long (trimmed by age)."
    )
    approval_cooldown_critical_s: float = Field(
        default=1800.0,
        ge=0,
        description="After a proposal expired unanswered or was denied, the same action on the "
        "same container is not proposed again for this long (critical alerts).",
    )
    approval_cooldown_warning_s: float = Field(
        default=7200.0, ge=0, description="The same for warning alerts."
    )
    approval_cooldown_info_s: float = Field(
        default=14400.0, ge=0, description="The same for info alerts."
    )
    approval_max_expiries: int = Field(
        default=2,
        ge=1,
        description="Proposals for one action and container that may expire unanswered in an "
        "incident; then it is not proposed again in that incident and people are told once.",
    )
    autoheal_container_label: str = Field(
        default="autoheal",
        validation_alias="AUTOHEAL_CONTAINER_LABEL",
        description="Coming from docker-autoheal: containers with this label set to true count "
        "as opted in to a restart when unhealthy (`all`: every container, as autoheal reads it; "
        "empty: off). The label autoheal.stop.timeout sets the stop timeout of that restart.",
    )


def _ids(value: str, pattern: str, what: str) -> str:
    """A comma-separated id list, normalised; a name or a handle instead of an id is refused
    (an allowlist that silently matches nobody would refuse every approver)."""
    ids = [part.strip() for part in value.split(",") if part.strip()]
    for item in ids:
        if not re.fullmatch(pattern, item):
            raise ValueError(f"{item!r} is not {what}")
    return ",".join(ids)


# Every configured channel hears about every failure HemoStat saw (dry runs included); false
# alarms stay in the history and the dashboard. Setting routes narrows this.
DEFAULT_ROUTES = "remediation_complete=all;approval_request=all;escalation=all;false_alarm="


class AlertSettings(_Section):
    """Alert agent: notifications."""

    slack_webhook_url: SecretStr | None = Field(
        default=None, validation_alias="SLACK_WEBHOOK_URL", description="Slack incoming webhook."
    )
    discord_webhook_url: SecretStr | None = Field(
        default=None, validation_alias="DISCORD_WEBHOOK_URL", description="Discord webhook."
    )
    ntfy_url: str | None = Field(
        default=None, validation_alias="NTFY_URL", description="ntfy server, e.g. https://ntfy.sh"
    )
    ntfy_topic: SecretStr | None = Field(
        default=None, validation_alias="NTFY_TOPIC", description="ntfy topic (a secret on ntfy.sh)."
    )
    ntfy_token: SecretStr | None = Field(
        default=None, validation_alias="NTFY_TOKEN", description="ntfy access token (optional)."
    )
    apprise_urls: SecretStr | None = Field(
        default=None,
        validation_alias="APPRISE_URLS",
        description="Comma-separated apprise URLs (email, Telegram, PagerDuty, Teams, ...).",
    )
    alert_routes: str = Field(
        default=DEFAULT_ROUTES,
        description="Which channels get what: `selector=channels;...`; a selector is an event "
        "type (approval_request, escalation, remediation_complete, false_alarm) or a severity; "
        "`all` is every configured channel. By default every channel hears every failure "
        "(dry runs too) and false alarms go to the history only.",
    )
    alert_dedup_window_s: float = Field(
        default=300.0, ge=0, description="Same container, kind and outcome: one message per window."
    )
    alert_channel_timeout_s: float = Field(
        default=10.0, gt=0, description="Per-request timeout of a channel."
    )
    alert_max_attempts: int = Field(
        default=4, ge=1, le=10, description="Attempts per message and channel (timeouts, 5xx, 429)."
    )
    alert_retry_after_cap_s: float = Field(
        default=60.0, gt=0, description="Longest Retry-After (429) we wait before giving up."
    )
    alert_channel_concurrency: int = Field(
        default=4, ge=1, description="Messages in flight at once per channel."
    )
    alert_channel_failure_limit: int = Field(
        default=5, ge=1, description="Consecutive failures after which a channel rests a while."
    )
    alert_channel_rest_s: float = Field(
        default=60.0, ge=0, description="How long a failing channel is skipped before a retry."
    )
    discord_mention_critical: bool = Field(
        default=True, description="Mention @here in Discord for critical messages only."
    )
    alert_history_maxlen: int = Field(
        default=10_000, ge=100, description="Events kept in the overall history."
    )
    alert_history_per_type_maxlen: int = Field(
        default=2_000, ge=100, description="Events kept per event type."
    )
    alert_history_days: float = Field(default=7.0, gt=0, description="History retained by age.")
    dashboard_url: str | None = Field(
        default=None, description="Link to the dashboard in notifications (optional)."
    )
    alert_storm_threshold: int = Field(
        default=5,
        ge=0,
        description="Failures on one host, or of one alert kind across hosts, within the storm "
        "window that make a storm: one message per channel listing them, then one when it ends "
        "(0: never bundle). Approval requests are never bundled.",
    )
    alert_storm_window_s: float = Field(
        default=60.0, gt=0, description="The window the storm threshold counts in."
    )
    alert_storm_hold_s: float = Field(
        default=3.0,
        ge=0,
        description="Each failure message waits this long for a storm to form before it goes "
        "out alone (Alertmanager's group_wait).",
    )
    alert_outbox_poll_s: float = Field(
        default=0.5, gt=0, description="How often held messages and storms are looked at."
    )
    alert_storm_quiet_s: float = Field(
        default=60.0,
        gt=0,
        description="A storm ends after this long without a new failure in it; then one "
        "message says how it ended.",
    )
    slack_signing_secret: SecretStr | None = Field(
        default=None,
        validation_alias="SLACK_SIGNING_SECRET",
        description="The Slack app's signing secret (Basic Information → App Credentials): "
        "approval requests carry Approve / Deny buttons and every click is verified with it. "
        "Needs HEMOSTAT_SLACK_APPROVERS and HEMOSTAT_INTERACTIONS_PORT.",
    )
    slack_approvers: str = Field(
        default="",
        description="Comma-separated Slack member ids (U012AB3CD: profile → ⋮ → Copy member ID) "
        "whose Approve / Deny clicks count; everyone else is refused.",
    )
    discord_public_key: str | None = Field(
        default=None,
        validation_alias="DISCORD_PUBLIC_KEY",
        description="The Discord application's public key (hex, General Information): approval "
        "requests carry Approve / Deny buttons and every interaction is verified with it. Needs "
        "HEMOSTAT_DISCORD_APPROVERS, HEMOSTAT_INTERACTIONS_PORT and an application-owned webhook.",
    )
    discord_approvers: str = Field(
        default="",
        description="Comma-separated Discord user ids (Developer Mode → Copy User ID) whose "
        "Approve / Deny clicks count; everyone else is refused.",
    )
    interactions_host: str = Field(
        default="127.0.0.1",
        description="Address the Slack / Discord interactions endpoint listens on (put an HTTPS "
        "reverse proxy or tunnel in front: the platforms only call public HTTPS URLs).",
    )
    interactions_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Port of the interactions endpoint (POST /slack/interactions, "
        "POST /discord/interactions); 0: off, and no buttons are sent.",
    )

    @field_validator("slack_approvers")
    @classmethod
    def _slack_ids(cls, value: str) -> str:
        return _ids(value, r"[A-Z0-9]+", "a Slack member id (like U012AB3CD)")

    @field_validator("discord_approvers")
    @classmethod
    def _discord_ids(cls, value: str) -> str:
        return _ids(value, r"[0-9]+", "a Discord user id (digits, like 80351110224678912)")

    @field_validator("discord_public_key")
    @classmethod
    def _public_key(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", value.strip()):
            raise ValueError("must be the 64 hex characters Discord shows as the Public Key")
        return value.strip().lower() if value else value


class MetricsSettings(_Section):
    """Metrics exporter."""

    metrics_host: str = Field(
        default="127.0.0.1",
        description="Address /metrics listens on (the compose stack sets 0.0.0.0 on its own "
        "network, reachable by Prometheus only).",
    )
    metrics_port: int = Field(
        default=9090, ge=0, le=65535, description="Port of the exporter's /metrics (0: off)."
    )


class DashboardSettings(_Section):
    """Dashboard (Streamlit)."""

    dashboard_password: SecretStr | None = Field(
        default=None,
        description="Sign-in password of the dashboard's one user (HEMOSTAT_DASHBOARD_USER); "
        "without it or HEMOSTAT_DASHBOARD_USERS, Approve/Deny exist on loopback only.",
    )
    dashboard_user: str = Field(
        default="operator", description="The name that HEMOSTAT_DASHBOARD_PASSWORD signs in as."
    )
    dashboard_users: SecretStr | None = Field(
        default=None,
        description="`name:hash,...` from `hemostat dashboard-user NAME`: people who sign in "
        "and decide as themselves (recorded as dashboard:<name>).",
    )
    dashboard_refresh_s: float = Field(
        default=5.0, ge=1, description="How often the dashboard re-reads Redis."
    )
    dashboard_host: str = Field(
        default="127.0.0.1", description="Address `hemostat run` binds the dashboard to."
    )
    dashboard_port: int = Field(default=8501, ge=1, le=65535, description="Dashboard port.")


# Sections in the order `.env.example` lists them; later issues add one per agent.
SECTIONS: tuple[type[_Section], ...] = (
    CoreSettings,
    BusSettings,
    AgentSettings,
    MonitorSettings,
    AnalyzerSettings,
    ResponderSettings,
    AlertSettings,
    MetricsSettings,
    DashboardSettings,
)


class Settings(
    CoreSettings,
    BusSettings,
    AgentSettings,
    MonitorSettings,
    AnalyzerSettings,
    ResponderSettings,
    AlertSettings,
    MetricsSettings,
    DashboardSettings,
    BaseSettings,
):
    """All of HemoStat's configuration. Build it once at the entry point and pass it down."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        # The environment (and a .env shared with docker compose) holds many foreign variables;
        # unknown HEMOSTAT_* names are still refused by `load_settings`.
        extra="ignore",
        frozen=True,
        validate_by_name=True,
        env_ignore_empty=True,  # `KEY=` in .env means "unset", as .env.example shows
    )

    def section(self, kind: type[_SectionT]) -> _SectionT:
        """One section alone, as a small frozen value object. A component typed by its section
        (an LLM client by `AnalyzerSettings`, the notifiers by `AlertSettings`) can read nothing
        else, which mypy checks, and the entry point hands it only that: the notifiers never hold
        the LLM key, nor the LLM client a webhook."""
        values = {name: getattr(self, name) for name in kind.model_fields}
        return cast(_SectionT, kind.model_construct(**values))

    def effective_redis_url(self) -> str:
        return self.redis_url.get_secret_value() if self.redis_url else DEFAULT_REDIS_URL

    def instance_name(self) -> str:
        return self.instance or f"{self.host_name}-{os.getpid()}"

    def secret_values(self) -> list[str]:
        """Every configured secret value, so the redactor can mask it wherever it appears."""
        values = []
        for name in type(self).model_fields:
            value = getattr(self, name)
            if not isinstance(value, SecretStr) or not value.get_secret_value():
                continue
            raw = value.get_secret_value()
            url = urlsplit(raw)
            if url.scheme and url.netloc:
                if url.password:
                    values.append(url.password)
                if url.scheme.startswith("redis"):
                    continue  # only its password is secret; the address is useful in logs
            values.append(raw)
        return values


def env_name(field_name: str) -> str:
    """The environment variable that sets a field."""
    alias = Settings.model_fields[field_name].validation_alias
    return alias.upper() if isinstance(alias, str) else f"{ENV_PREFIX}{field_name}".upper()


def _known_env_names() -> set[str]:
    return {env_name(name) for name in Settings.model_fields}


def _dotenv_keys(path: Path) -> list[str]:
    if not path.is_file():
        return []
    keys = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            keys.append(line.split("=", 1)[0].removeprefix("export ").strip())
    return keys


def load_settings(env_file: str | Path | None = ".env", **overrides: Any) -> Settings:
    """Build the settings, turning every problem into a ConfigError that names the variable.

    An unknown `HEMOSTAT_*` variable is an error rather than a silent no-op: a typo such as
    `HEMOSTAT_DRYRUN=false` must not quietly leave the operator with a different system.
    """
    known = _known_env_names()
    candidates = [k for k in os.environ if k.upper().startswith(ENV_PREFIX)]
    if env_file is not None:
        candidates += [k for k in _dotenv_keys(Path(env_file)) if k.upper().startswith(ENV_PREFIX)]
    unknown = sorted({k for k in candidates if k.upper() not in known})
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name.upper(), known, n=1)
            hints.append(f"{name} (did you mean {close[0]}?)" if close else name)
        raise ConfigError("unknown setting(s): " + ", ".join(hints))
    try:
        return Settings(_env_file=env_file, **overrides)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, env_prefix=ENV_PREFIX)) from exc
