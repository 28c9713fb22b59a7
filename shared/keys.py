"""Every name HemoStat uses in Redis, in one place (arq's `constants.py`).

A reader answers "what does HemoStat keep in Redis?" here. Prefixes end with ':' and take an id.
Nothing else spells a `hemostat:` name (tests/test_keys.py fails on one): the event streams are
here and shared/events.py's `Channel` names them; the two chat button ids share the namespace.
"""

from __future__ import annotations

__all__ = [
    "ACTIONS",
    "ALERTMANAGER_SEEN",
    "ALERT_DEDUP",
    "ALERT_OUTBOX",
    "ALERT_OUTBOX_DATA",
    "ALERT_OUTBOX_LEASED",
    "ALERT_SEEN",
    "ALERT_STORM",
    "ALERT_STORMS_OPEN",
    "ALERT_STORM_ACTIVE",
    "ALERT_STORM_RECENT",
    "ALERT_SUPPRESSED",
    "ANALYZER_CLAIM",
    "APPROVAL_DECISION",
    "APPROVAL_FATIGUE",
    "APPROVAL_REQUEST",
    "AUDIT",
    "CHANNEL_PREFIX",
    "CHAT_APPROVE",
    "CHAT_DENY",
    "CONTAINER",
    "CONTAINERS",
    "DASHBOARD_FAILURES",
    "DASHBOARD_LOCKED",
    "DEAD_LETTER",
    "DEATHS",
    "DEFERRED",
    "ESCALATION",
    "FALSE_ALARM",
    "GUARD",
    "HEALTH_ALERT",
    "HEARTBEAT",
    "HISTORY",
    "HISTORY_OF_TYPE",
    "HOSTS",
    "INCIDENT",
    "INCIDENTS",
    "INCIDENT_OPEN",
    "INCIDENT_RESOLVED",
    "INTERACTION_SEEN",
    "LEASE",
    "MONITOR_CURSOR",
    "MONITOR_SENT",
    "NOTIFICATIONS",
    "ORPHANS",
    "ORPHAN_DATA",
    "PROPOSAL",
    "PROPOSALS",
    "PROPOSALS_BY_INCIDENT",
    "PROPOSALS_PENDING",
    "PROPOSAL_BY_REQUEST",
    "REMEDIATION_COMPLETE",
    "REMEDIATION_NEEDED",
    "REQUEST",
    "RESTARTS",
    "SAMPLES",
    "VERIFY_DUE",
    "on_host",
]

# ---- Event streams: one per event type (shared/events.py's `Channel` is these), dead letters
CHANNEL_PREFIX = "hemostat:"  # + an event type's value is its stream
HEALTH_ALERT = "hemostat:health_alert"
REMEDIATION_NEEDED = "hemostat:remediation_needed"
REMEDIATION_COMPLETE = "hemostat:remediation_complete"
FALSE_ALARM = "hemostat:false_alarm"
APPROVAL_REQUEST = "hemostat:approval_request"
APPROVAL_DECISION = "hemostat:approval_decision"
ESCALATION = "hemostat:escalation"
INCIDENT_RESOLVED = "hemostat:incident_resolved"
DEAD_LETTER = "hemostat:dead_letter"  # stream: what no handler could take (+ ":excerpt:<hash>")
AUDIT = "hemostat:audit"  # stream: one record per executed or refused action (shared/audit.py)

# ---- Every agent
HEARTBEAT = "hemostat:heartbeat:"  # string per agent instance ("<agent>:<instance>"), with a TTL

# ---- Container state, written by the Monitor (shared/container_state.py)
CONTAINER = "hemostat:container:"  # hash per container id: the latest snapshot (TTL)
CONTAINERS = "hemostat:containers"  # zset: container id -> last update (unix seconds)
SAMPLES = "hemostat:samples:"  # stream per container id: recent samples for charts (TTL)

# ---- Responder: one record per request (idempotency), scheduled verifications, guard state
REQUEST = "hemostat:responder:req:"  # hash: phase, claim, outcome, verification plan
# Per host: only that host's Responders look at its containers.
VERIFY_DUE = "hemostat:responder:verify:"  # zset per host: request record key -> next check
DEFERRED = "hemostat:responder:deferred:"  # zset per host: request record key -> decide again
ORPHANS = "hemostat:responder:orphans"  # zset: request record key -> when to check it was taken
ORPHAN_DATA = "hemostat:responder:orphans:data"  # hash: request record key -> the request
# Guard state per container on a host (`on_host()`): the same name, or even the same id, on two
# hosts never shares a lease, a cooldown or a breaker.
LEASE = "hemostat:lease:"  # string: the token of who acts on a container (SET NX PX)
GUARD = "hemostat:guard:"  # hash per container: cooldown_until:<type>, failures:<type>, ...
ACTIONS = "hemostat:actions:"  # zset per container: executed actions (circuit breaker)
RESTARTS = "hemostat:restarts:"  # zset per container: our restarts (crash-loop guard)
DEATHS = "hemostat:deaths:"  # zset per container: unplanned deaths, written by the Monitor

# ---- Monitor
MONITOR_CURSOR = "hemostat:monitor:cursor:"  # string per host: the last Docker event handled (ns)
MONITOR_SENT = "hemostat:monitor:sent:"  # per alert idempotency key: one replica publishes it

# ---- Monitor: the Alertmanager webhook
ALERTMANAGER_SEEN = "hemostat:alertmanager:seen:"  # per alert dedup key: published once

# ---- Analyzer: claims and incidents (agents/analyzer/incidents.py)
ANALYZER_CLAIM = "hemostat:analyzer:claim:"  # per alert: one replica decides it
INCIDENT_OPEN = "hemostat:incident:open:"  # string per subject: its open incident's id (TTL)
INCIDENT = "hemostat:incident:"  # hash per incident id (+ ":kinds": the alert kinds firing)
INCIDENTS = "hemostat:incidents"  # zset: incident id -> opened_at

# ---- Approvals
PROPOSAL = "hemostat:proposal:"  # hash per proposal
PROPOSALS = "hemostat:proposals"  # zset: id -> created_at
PROPOSALS_PENDING = "hemostat:proposals:pending"  # zset: id -> expires_at
PROPOSAL_BY_REQUEST = "hemostat:proposal:req:"  # string: request key -> proposal id
PROPOSALS_BY_INCIDENT = "hemostat:proposals:incident:"  # set per incident: its proposal ids
# hash per (container, action): pending proposal, last unanswered one, per-incident denials and
# expiries (the approval fatigue rules)
APPROVAL_FATIGUE = "hemostat:approval:fatigue:"

# ---- Alert: what it has seen and told (agents/alert/store.py)
ALERT_SEEN = "hemostat:alert:seen:"  # per event idempotency key: handled once
ALERT_DEDUP = "hemostat:alert:dedup:"  # per dedup key: when its window ends (unix seconds)
ALERT_SUPPRESSED = "hemostat:alert:suppressed:"  # per dedup key: duplicates since the last message
HISTORY = "hemostat:history"  # stream: every event seen (bounded by length and age)
HISTORY_OF_TYPE = "hemostat:history:"  # stream per event type: the same, per type
NOTIFICATIONS = "hemostat:notifications"  # stream: one entry per channel delivery

# ---- Alert: storms and the outbox (see agents/alert/storm.py)
ALERT_STORM_RECENT = "hemostat:alert:storm:recent:"  # zset per scope: failure key -> arrival
ALERT_STORM_ACTIVE = "hemostat:alert:storm:active:"  # string per scope: its open storm's id
ALERT_STORM = "hemostat:alert:storm:"  # hash per storm id (+ ":members", ":channels")
ALERT_STORMS_OPEN = "hemostat:alert:storms"  # zset: open storm id -> its last failure
ALERT_OUTBOX = "hemostat:alert:outbox"  # zset: message item -> when it is due
ALERT_OUTBOX_DATA = "hemostat:alert:outbox:data"  # hash: message item -> JSON
ALERT_OUTBOX_LEASED = "hemostat:alert:outbox:leased"  # zset: item being sent -> lease end

# ---- Alert: chat approvals
INTERACTION_SEEN = "hemostat:interactions:seen:"  # string per signature: a replay is refused

# ---- Dashboard: sign-in throttling (dashboard/auth.py)
DASHBOARD_FAILURES = "hemostat:dashboard:failures:"  # per user: recent failed sign-ins
DASHBOARD_LOCKED = "hemostat:dashboard:locked:"  # per user: locked until (unix seconds)

# ---- Fleet
HOSTS = "hemostat:hosts"  # hash: host -> JSON (watched state, since, last seen, agents)

# ---- Not Redis: the chat buttons' action ids (Slack `action_id`, Discord `custom_id` + ":<id>")
CHAT_APPROVE = "hemostat:approve"
CHAT_DENY = "hemostat:deny"


def on_host(host: str, container_id: str) -> str:
    """The key part for a container on a host (guards, leases, deaths)."""
    return f"{host}/{container_id}"
