"""Routing: which channels get which notifications, from one setting.

`HEMOSTAT_ALERT_ROUTES="approval_request=slack,discord,ntfy;critical=slack,discord;info=slack"`:
a selector is an event type or a severity; an event type's route wins over its severity's. A
runbook's `notify.channels` narrows the route for events of that runbook."""

from __future__ import annotations

from shared.errors import ConfigError
from shared.events import EventType, Severity

__all__ = ["CHANNELS", "SELECTORS", "Routes", "parse_routes", "route"]

CHANNELS = frozenset({"slack", "discord", "ntfy", "apprise"})
SELECTORS = frozenset({t.value for t in EventType} | {s.value for s in Severity})

Routes = dict[str, frozenset[str]]


def parse_routes(spec: str) -> Routes:
    routes: Routes = {}
    for part in (p.strip() for p in spec.split(";")):
        if not part:
            continue
        selector, sep, channels = part.partition("=")
        selector = selector.strip()
        if not sep or selector not in SELECTORS:
            raise ConfigError(
                f"HEMOSTAT_ALERT_ROUTES: {part!r}: selector must be one of {sorted(SELECTORS)}"
            )
        names = frozenset(c.strip() for c in channels.split(",") if c.strip())
        unknown = names - CHANNELS - {"all"}
        if unknown:
            raise ConfigError(
                f"HEMOSTAT_ALERT_ROUTES: {part!r}: unknown channel(s) {sorted(unknown)}; "
                f"known: {sorted(CHANNELS)}"
            )
        routes[selector] = CHANNELS if "all" in names else names
    return routes


def route(
    routes: Routes,
    event_type: str,
    severity: Severity,
    configured: frozenset[str],
    runbook_channels: frozenset[str] = frozenset(),
) -> frozenset[str]:
    chosen = routes.get(event_type)
    if chosen is None:
        chosen = routes.get(severity.value, frozenset())
    if runbook_channels:
        chosen = chosen & runbook_channels if chosen else runbook_channels
    return chosen & configured
