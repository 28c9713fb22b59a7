"""The Alert agent: tells people what happened — routed by event type and severity, deduplicated
per (container, kind, outcome) within a window, redacted — and keeps the event history the
dashboard reads. With no channel configured it still keeps history and says notifications are off.

With a Slack signing secret or a Discord public key (and HEMOSTAT_INTERACTIONS_PORT) it also
serves the interactions endpoint (`interactions.py`): approval requests carry Approve / Deny
buttons, and a verified click by an allowed user decides like the CLI and the dashboard do.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import httpx
from redis.asyncio import Redis

from agents.alert.channels import (
    AppriseNotifier,
    Delivery,
    DiscordNotifier,
    Limits,
    Notifier,
    NtfyNotifier,
    SlackNotifier,
)
from agents.alert.interactions import DiscordVerifier, Interactions, SlackVerifier
from agents.alert.interactions_http import InteractionsServer
from agents.alert.message import Notification, render, render_storm
from agents.alert.routing import parse_routes, route
from agents.alert.store import AlertStore
from agents.alert.storm import Noted, StormPolicy, StormStore, bundles, member_of
from agents.base import BaseAgent, periodic
from shared import keys
from shared.clock import Clock
from shared.errors import ConfigError
from shared.events import Channel, Event, RemediationCompleteEvent, RemediationStatus, parse_event
from shared.log import Logger
from shared.redaction import Redactor
from shared.runbooks import Runbooks, load_runbooks
from shared.settings import AlertSettings, Settings, env_name

__all__ = [
    "AlertAgent",
    "build",
    "build_channels",
    "build_interactions",
    "button_platforms",
    "chat_approval_problems",
]


class AlertAgent(BaseAgent):
    name = "alert"
    consumes = (
        Channel.REMEDIATION_COMPLETE,
        Channel.FALSE_ALARM,
        Channel.APPROVAL_REQUEST,
        Channel.ESCALATION,
    )

    def __init__(
        self,
        *,
        channels: list[Notifier],
        runbooks: Runbooks | None = None,
        http: httpx.AsyncClient | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        s = self.settings
        self.channels = {c.name: c for c in channels}
        self.routes = parse_routes(s.alert_routes)
        self.runbooks = runbooks
        self.http = http
        self.store = AlertStore(
            self.redis,
            history_maxlen=s.alert_history_maxlen,
            per_type_maxlen=s.alert_history_per_type_maxlen,
        )
        self.counts: dict[str, int] = {}
        self.storms = StormStore(self.redis, StormPolicy.from_settings(s))
        self.interactions: Interactions | None = None
        if s.slack_signing_secret or s.discord_public_key:
            if self.http is None:
                self.http = httpx.AsyncClient(follow_redirects=False)  # Slack's response_url
            self.interactions = build_interactions(
                s.section(AlertSettings),
                self.redis,
                self.http,
                Redactor(s.secret_values()),
                self.clock,
                self.log,
            )
        self.interactions_server: InteractionsServer | None = None

    def partition_key(self, event: Event) -> str | None:
        # Keeps one container's messages in order (and its dedup decisions consistent).
        return event.subject.container_id or event.subject.container_name

    def health_details(self) -> dict[str, Any]:
        details = super().health_details() | {"channels": sorted(self.channels), **self.counts}
        if self.interactions_server is not None and self.interactions is not None:
            details["interactions"] = {
                "port": self.interactions_server.port,
                **self.interactions.counts,
            }
        return details

    async def on_start(self) -> None:
        s = self.settings
        for problem in chat_approval_problems(s):
            self.log.warning("alert.no_buttons", reason=problem)
        if not s.interactions_port:
            return
        if self.interactions is None:
            raise ConfigError(
                f"{env_name('interactions_port')} is set, but neither "
                f"{env_name('slack_signing_secret')} nor {env_name('discord_public_key')}: "
                "the interactions endpoint would have nothing to verify a click with"
            )
        self.interactions_server = InteractionsServer(
            s.interactions_host,
            s.interactions_port,
            self.interactions.handle,
            asyncio.get_running_loop(),
            paths=self.interactions.paths,
        )
        self.interactions_server.start()
        self.log.info(
            "alert.interactions_listening",
            host=s.interactions_host,
            port=self.interactions_server.port,
            paths=sorted(self.interactions.paths),
            buttons=sorted(button_platforms(s)),
        )

    async def on_started(self) -> None:
        if not self.channels:
            self.log.warning(
                "alert.notifications_off",
                reason="no channel configured (SLACK_WEBHOOK_URL, DISCORD_WEBHOOK_URL, "
                "NTFY_URL+NTFY_TOPIC, APPRISE_URLS); history is still kept",
            )
        else:
            self.log.info("alert.channels", channels=sorted(self.channels))

    async def on_stop(self) -> None:
        if self.interactions_server is not None:
            await asyncio.to_thread(self.interactions_server.stop)
        if self.interactions is not None:
            await self.interactions.aclose()
        if self.http is not None:
            await self.http.aclose()

    @periodic(3600)
    async def trim(self) -> None:
        await self.store.trim_by_age(self.settings.alert_history_days)

    def _count(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    async def handle(self, event: Event) -> None:
        # Keyed by what the event means, not by its id: a producer that retried a publish sends
        # a new event with the same idempotency key, and people must hear about it once.
        seen = keys.ALERT_SEEN + event.idempotency_key
        if await self.redis.exists(seen):
            return  # a redelivery (or a retried publish) of an event already notified
        await self.store.remember(event)
        notification = render(event, self.settings.dashboard_url)
        targets = self._targets(notification)
        if _quiet(event):
            # People already answered (fatigue rules): history and dashboard only.
            await self.store.log_delivery(
                notification, Delivery("*", "quiet", 0, "suppressed by the approval rules", 0)
            )
        elif targets and self._bundles(event, notification):
            await self._note(event, notification, targets)
        elif targets:
            await self._notify(notification, targets)
        await self.redis.set(seen, "1", ex=86_400)

    def _targets(self, n: Notification) -> frozenset[str]:
        return route(
            self.routes,
            n.event_type,
            n.severity,
            frozenset(self.channels),
            self._runbook_channels(n.runbook_id),
        )

    def _bundles(self, event: Event, n: Notification) -> bool:
        if not self.storms.policy.enabled or not bundles(event):
            return False
        runbook = self.runbooks.get(n.runbook_id) if self.runbooks and n.runbook_id else None
        return runbook is None or runbook.notify.storm

    async def _note(self, event: Event, n: Notification, targets: frozenset[str]) -> None:
        now = self.clock.time()
        noted, storm_id = await self.storms.note(event, member_of(event, now), targets, now)
        if noted is Noted.ALONE:
            await self._notify(n, targets)
            return
        if noted is Noted.HELD:
            return  # the outbox sends it alone unless a storm takes it first
        self._count("bundled")
        await self.store.log_delivery(n, Delivery("*", "bundled", 0, f"storm {storm_id}", 0))
        self.log.info("alert.bundled", storm=storm_id, container=n.container, started=noted)
        if noted is Noted.STARTED:
            await self.flush()  # a storm is told at once

    @periodic(lambda self: self.settings.alert_outbox_poll_s)
    async def flush(self) -> None:
        """Send what is due in the outbox: failures no storm took, and storms' messages."""
        now = self.clock.time()
        if not self.storms.policy.enabled:
            return
        await self.storms.end_quiet(now)
        for item, data in await self.storms.due(now):
            kind, _, ident = item.partition(":")
            if kind == "single":
                event = parse_event(data["event"])
                n = render(event, self.settings.dashboard_url)
                await self._notify(n, frozenset(data.get("targets", [])))
            else:
                view = await self.storms.view(ident)
                if view is not None and view.channels:
                    n = render_storm(view, ending=kind == "end", now=now)
                    await self._deliver(n, view.channels & frozenset(self.channels))
                    self._count("storm_" + kind)
            await self.storms.sent(item)

    async def _notify(self, n: Notification, targets: frozenset[str]) -> None:
        window = n.dedup_window_s
        if window is None:
            window = self.settings.alert_dedup_window_s
        send, suppressed = await self.store.admit(n.dedup_key, window, self.clock.time())
        if not send:
            self._count("deduplicated")
            await self.store.log_delivery(
                n, Delivery("*", "deduplicated", 0, f"{suppressed} suppressed in this window", 0)
            )
            self.log.info("alert.deduplicated", key=n.dedup_key, suppressed_so_far=suppressed)
            return
        await self._deliver(replace(n, suppressed=suppressed), targets)

    async def _deliver(self, n: Notification, targets: frozenset[str]) -> None:
        results = await asyncio.gather(
            *(self.channels[name].deliver(n) for name in sorted(targets))
        )
        for delivery in results:
            self._count(delivery.status)
            await self.store.log_delivery(n, delivery)
            log = self.log.info if delivery.status == "sent" else self.log.warning
            log(
                "alert.delivery",
                channel=delivery.channel,
                status=delivery.status,
                attempts=delivery.attempts,
                detail=delivery.detail,
                event_id=n.event_id,
                container=n.container,
            )

    def _runbook_channels(self, runbook_id: str | None) -> frozenset[str]:
        if not runbook_id or self.runbooks is None:
            return frozenset()
        runbook = self.runbooks.get(runbook_id)
        return frozenset(runbook.notify.channels) if runbook else frozenset()


def _quiet(event: Event) -> bool:
    return (
        isinstance(event, RemediationCompleteEvent)
        and event.payload.status is RemediationStatus.SUPPRESSED
    )


def button_platforms(settings: AlertSettings) -> frozenset[str]:
    """Where approval requests carry Approve / Deny: the endpoint is on and can verify a click
    (signing secret / public key) and allow someone (a non-empty approver list)."""
    if not settings.interactions_port:
        return frozenset()
    platforms = set()
    if settings.slack_signing_secret and settings.slack_approvers:
        platforms.add("slack")
    if settings.discord_public_key and settings.discord_approvers:
        platforms.add("discord")
    return frozenset(platforms)


def chat_approval_problems(settings: AlertSettings) -> list[str]:
    """Half-done chat-approval settings, said once at start (no buttons is the safe result)."""
    problems = []
    for secret, approvers in (
        ("slack_signing_secret", "slack_approvers"),
        ("discord_public_key", "discord_approvers"),
    ):
        if not getattr(settings, secret):
            continue
        if not getattr(settings, approvers):
            problems.append(
                f"{env_name(secret)} is set but {env_name(approvers)} is empty: "
                "nobody could approve, so no buttons are sent"
            )
        elif not settings.interactions_port:
            problems.append(
                f"{env_name(secret)} is set but {env_name('interactions_port')} is 0: "
                "no endpoint to receive clicks, so no buttons are sent"
            )
    return problems


def build_interactions(
    settings: AlertSettings,
    redis: Redis,
    http: httpx.AsyncClient,
    redactor: Redactor,
    clock: Clock,
    log: Logger,
) -> Interactions | None:
    """The click handler for every platform with a secret / key; None without any."""
    secret, key = settings.slack_signing_secret, settings.discord_public_key
    if not secret and not key:
        return None
    if secret and not secret.get_secret_value().strip():
        raise ConfigError(f"{env_name('slack_signing_secret')} is blank")
    return Interactions(
        redis=redis,
        http=http,
        redactor=redactor,
        log=log,
        slack=SlackVerifier(secret.get_secret_value(), clock) if secret else None,
        slack_approvers=frozenset(filter(None, settings.slack_approvers.split(","))),
        discord=DiscordVerifier(key, clock) if key else None,
        discord_approvers=frozenset(filter(None, settings.discord_approvers.split(","))),
        update_timeout_s=settings.alert_channel_timeout_s,
    )


def build_channels(
    settings: AlertSettings, http: httpx.AsyncClient, redactor: Redactor
) -> list[Notifier]:
    limits = Limits(
        timeout_s=settings.alert_channel_timeout_s,
        max_attempts=settings.alert_max_attempts,
        retry_after_cap_s=settings.alert_retry_after_cap_s,
        concurrency=settings.alert_channel_concurrency,
        failure_limit=settings.alert_channel_failure_limit,
        rest_s=settings.alert_channel_rest_s,
    )
    buttons = button_platforms(settings)
    channels: list[Notifier] = []
    if settings.slack_webhook_url:
        channels.append(
            SlackNotifier(
                http,
                settings.slack_webhook_url.get_secret_value(),
                limits,
                redactor,
                buttons="slack" in buttons,
            )
        )
    if settings.discord_webhook_url:
        channels.append(
            DiscordNotifier(
                http,
                settings.discord_webhook_url.get_secret_value(),
                limits,
                redactor,
                mention_critical=settings.discord_mention_critical,
                buttons="discord" in buttons,
            )
        )
    if settings.ntfy_url and settings.ntfy_topic:
        headers = {}
        if settings.ntfy_token:
            headers["Authorization"] = f"Bearer {settings.ntfy_token.get_secret_value()}"
        channels.append(
            NtfyNotifier(
                http,
                settings.ntfy_url.rstrip("/"),
                limits,
                redactor,
                headers=headers,
                topic=settings.ntfy_topic.get_secret_value(),
            )
        )
    if settings.apprise_urls:
        urls = [u.strip() for u in settings.apprise_urls.get_secret_value().split(",") if u.strip()]
        if urls:
            try:
                channels.append(AppriseNotifier(urls, limits, redactor))
            except ValueError as exc:
                raise ConfigError(f"APPRISE_URLS: {exc}") from exc
    return channels


def build(settings: Settings, redis: Redis) -> AlertAgent:
    redactor = Redactor(settings.secret_values())
    http = httpx.AsyncClient(follow_redirects=False)
    runbooks = load_runbooks(settings.runbooks_dir) if settings.runbooks_dir.is_dir() else None
    return AlertAgent(
        settings=settings,
        redis=redis,
        channels=build_channels(settings.section(AlertSettings), http, redactor),
        runbooks=runbooks,
        http=http,
    )
