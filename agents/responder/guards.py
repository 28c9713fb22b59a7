"""The Responder's guards. The decisions are pure functions of (now, state, limits); the state
lives in Redis so that several Responder replicas see the same history:

- `hemostat:responder:req:<key>`        one request's phase and outcome (idempotency)
- `hemostat:lease:<container>`          who is acting on the container right now (SET NX PX)
- `hemostat:cooldown:<container>:<type>` set after an action; TTL = cooldown with backoff
- `hemostat:failures:<container>:<type>` consecutive failed actions (backoff exponent)
- `hemostat:actions:<container>`        executed actions (circuit breaker window)
- `hemostat:restarts:<container>`       our restarts (crash-loop guard, with the Monitor's deaths)
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from shared.containers import LABEL_REMEDIATE, ContainerInfo
from shared.settings import RemediationScope

REQUEST_PREFIX = "hemostat:responder:req:"
LEASE_PREFIX = "hemostat:lease:"
COOLDOWN_PREFIX = "hemostat:cooldown:"
FAILURES_PREFIX = "hemostat:failures:"
ACTIONS_PREFIX = "hemostat:actions:"
RESTARTS_PREFIX = "hemostat:restarts:"
ESCALATED_PREFIX = "hemostat:escalated:"
HISTORY_TTL_S = 7 * 86_400


# ---------------------------------------------------------------- pure decisions


def cooldown_seconds(base_s: float, failures: int, cap_s: float) -> float:
    """The cooldown after an action: doubles with each consecutive failure, capped."""
    return min(cap_s, base_s * (2 ** max(0, failures))) if base_s else 0.0


def actions_in_window(times: Sequence[float], now: float, window_s: float) -> int:
    return sum(1 for t in times if 0 <= now - t <= window_s)


def circuit_open(times: Sequence[float], now: float, window_s: float, max_actions: int) -> bool:
    """At most `max_actions` per container per window."""
    return actions_in_window(times, now, window_s) >= max_actions


def quick_deaths_after_restarts(
    restarts: Sequence[float], deaths: Sequence[float], window_s: float
) -> int:
    """How many of our restarts were followed by a death within `window_s`."""
    ordered = sorted(deaths)
    return sum(1 for r in restarts if any(r < d <= r + window_s for d in ordered))


@dataclass(frozen=True)
class TargetVerdict:
    allowed: bool
    detail: str


def target_policy(
    info: ContainerInfo, scope: RemediationScope, own_id: str | None = None
) -> TargetVerdict:
    """Never HemoStat's own containers or protected ones; opted-in ones only unless scope=all."""
    if own_id and info.id.startswith(own_id):
        return TargetVerdict(False, "this is the Responder's own container")
    if info.is_stack:
        return TargetVerdict(False, "HemoStat's own containers are never touched (hemostat.stack)")
    if info.is_protected:
        return TargetVerdict(False, "container is protected (hemostat.protect=true)")
    if scope is RemediationScope.OPT_IN and not info.label_true(LABEL_REMEDIATE):
        return TargetVerdict(
            False, "container has not opted in (label hemostat.remediate=true; scope is opt_in)"
        )
    return TargetVerdict(True, f"allowed (scope {scope})")


# ---------------------------------------------------------------- Redis-backed state


class RequestRecord:
    """One request's lifecycle: received → executing → done (with its outcome)."""

    def __init__(self, redis: Redis, idempotency_key: str) -> None:
        self.redis = redis
        self.key = REQUEST_PREFIX + idempotency_key

    async def begin(self, instance: str, now: float) -> dict[str, str]:
        """Claim a fresh record, or return the existing one (a redelivery)."""
        created = await self.redis.hsetnx(self.key, "phase", "received")
        if created:
            await self.redis.hset(self.key, mapping={"received_at": f"{now:.3f}", "by": instance})
            await self.redis.expire(self.key, HISTORY_TTL_S)
            return {}
        data: dict[Any, Any] = await self.redis.hgetall(self.key)
        return {str(k): str(v) for k, v in data.items()}

    async def executing(self, instance: str, now: float) -> None:
        await self.redis.hset(
            self.key, mapping={"phase": "executing", "executing_at": f"{now:.3f}", "by": instance}
        )

    async def done(self, outcome_json: str) -> None:
        await self.redis.hset(self.key, mapping={"phase": "done", "outcome": outcome_json})

    async def published(self) -> None:
        await self.redis.hset(self.key, "published", "1")


_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Leases:
    """Per-container leases: SET NX PX, renewed while held, released only by their holder."""

    def __init__(self, redis: Redis, ttl_s: float) -> None:
        self.redis = redis
        self.ttl_ms = int(ttl_s * 1000)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    async def holder(self, container_id: str) -> str | None:
        value = await self.redis.get(LEASE_PREFIX + container_id)
        return str(value) if value else None

    @contextlib.asynccontextmanager
    async def hold(self, container_id: str, owner: str, wait_s: float = 0.0) -> AsyncIterator[bool]:
        """Yields True when the lease is ours (kept alive until the block ends), else False.
        With `wait_s`, keep trying that long (a crashed holder's lease expires by its TTL)."""
        key = LEASE_PREFIX + container_id
        token = f"{owner}:{secrets.token_hex(4)}"
        deadline = time.monotonic() + wait_s
        acquired = await self.redis.set(key, token, nx=True, px=self.ttl_ms)
        while not acquired and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            acquired = await self.redis.set(key, token, nx=True, px=self.ttl_ms)
        if not acquired:
            yield False
            return
        keeper = asyncio.create_task(self._keep(key, token))
        try:
            yield True
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            await self._release(keys=[key], args=[token])

    async def _keep(self, key: str, token: str) -> None:
        while True:
            await asyncio.sleep(self.ttl_ms / 3000)
            await self._renew(keys=[key], args=[token, self.ttl_ms])


class GuardState:
    """Cooldowns, failure counts, the circuit breaker's and crash-loop guard's histories."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def cooldown_left(self, container_id: str, action_type: str) -> float:
        ttl_ms = await self.redis.pttl(f"{COOLDOWN_PREFIX}{container_id}:{action_type}")
        return max(0.0, ttl_ms / 1000) if ttl_ms and ttl_ms > 0 else 0.0

    async def failures(self, container_id: str, action_type: str) -> int:
        raw = await self.redis.get(f"{FAILURES_PREFIX}{container_id}:{action_type}")
        return int(raw or 0)

    async def action_times(self, container_id: str, since: float) -> list[float]:
        raw: list[Any] = await self.redis.zrangebyscore(
            ACTIONS_PREFIX + container_id, since, "+inf", withscores=True
        )
        return [float(score) for _, score in raw]

    async def restart_times(self, container_id: str, since: float) -> list[float]:
        raw: list[Any] = await self.redis.zrangebyscore(
            RESTARTS_PREFIX + container_id, since, "+inf", withscores=True
        )
        return [float(score) for _, score in raw]

    async def record_action(
        self,
        container_id: str,
        action_type: str,
        now: float,
        *,
        succeeded: bool,
        cooldown_base_s: float,
        cooldown_cap_s: float,
    ) -> float:
        """Book an executed (never a dry-run) action; returns the cooldown that now applies."""
        failures_key = f"{FAILURES_PREFIX}{container_id}:{action_type}"
        failures = 0 if succeeded else await self.failures(container_id, action_type) + 1
        cooldown = cooldown_seconds(cooldown_base_s, failures, cooldown_cap_s)
        pipe = self.redis.pipeline(transaction=True)
        member = f"{now:.6f}:{action_type}"
        pipe.zadd(ACTIONS_PREFIX + container_id, {member: now})
        pipe.zremrangebyscore(ACTIONS_PREFIX + container_id, "-inf", now - HISTORY_TTL_S)
        pipe.expire(ACTIONS_PREFIX + container_id, HISTORY_TTL_S)
        if action_type == "restart":
            pipe.zadd(RESTARTS_PREFIX + container_id, {member: now})
            pipe.expire(RESTARTS_PREFIX + container_id, HISTORY_TTL_S)
        if succeeded:
            pipe.delete(failures_key)
        else:
            pipe.set(failures_key, failures, ex=HISTORY_TTL_S)
        # `now` is when the action was issued (history); the cooldown runs from its end.
        if cooldown > 0:
            pipe.set(f"{COOLDOWN_PREFIX}{container_id}:{action_type}", now, px=int(cooldown * 1000))
        await pipe.execute()
        return cooldown

    async def first_escalation(self, container_id: str, guard: str, window_s: float) -> bool:
        """True once per container and guard per window, so people are told, not spammed."""
        created = await self.redis.set(
            f"{ESCALATED_PREFIX}{container_id}:{guard}", "1", nx=True, ex=max(1, int(window_s))
        )
        return bool(created)
