"""Every name HemoStat uses in Redis, in one place (arq's `constants.py`).

A reader answers "what does HemoStat keep in Redis?" here. Prefixes end with ':' and take an id.
"""

from __future__ import annotations

__all__ = [
    "ACTIONS",
    "ALERT_OUTBOX",
    "ALERT_OUTBOX_DATA",
    "ALERT_OUTBOX_LEASED",
    "ALERT_STORM",
    "ALERT_STORMS_OPEN",
    "ALERT_STORM_ACTIVE",
    "ALERT_STORM_RECENT",
    "APPROVAL_FATIGUE",
    "DEATHS",
    "DEFERRED",
    "GUARD",
    "HOSTS",
    "INTERACTION_SEEN",
    "LEASE",
    "MONITOR_CURSOR",
    "MONITOR_SENT",
    "ORPHANS",
    "ORPHAN_DATA",
    "PROPOSAL",
    "PROPOSALS",
    "PROPOSALS_BY_INCIDENT",
    "PROPOSALS_PENDING",
    "PROPOSAL_BY_REQUEST",
    "REQUEST",
    "RESTARTS",
    "VERIFY_DUE",
    "on_host",
]

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

# ---- Approvals
PROPOSAL = "hemostat:proposal:"  # hash per proposal
PROPOSALS = "hemostat:proposals"  # zset: id -> created_at
PROPOSALS_PENDING = "hemostat:proposals:pending"  # zset: id -> expires_at
PROPOSAL_BY_REQUEST = "hemostat:proposal:req:"  # string: request key -> proposal id
PROPOSALS_BY_INCIDENT = "hemostat:proposals:incident:"  # set per incident: its proposal ids
# hash per (container, action): pending proposal, last unanswered one, per-incident denials and
# expiries (the approval fatigue rules)
APPROVAL_FATIGUE = "hemostat:approval:fatigue:"

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

# ---- Fleet
HOSTS = "hemostat:hosts"  # hash: host -> JSON (watched state, since, last seen, agents)


def on_host(host: str, container_id: str) -> str:
    """The key part for a container on a host (guards, leases, deaths)."""
    return f"{host}/{container_id}"
