"""Per-container detection state: turns Docker events, resource samples and inventory checks
into alert drafts. No I/O and no clock: every method takes `now` (unix seconds), so the whole
rule set runs under a fixed clock in tests."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from agents.monitor.causes import Cause, Seen, cause_of_death, since_last_start
from agents.monitor.detect import (
    Baseline,
    BaselinePolicy,
    GatePolicy,
    GateState,
    ThresholdPolicy,
    ThresholdState,
    Transition,
    gate,
    prune,
    restart_loop,
    step_baseline,
    step_threshold,
)
from agents.monitor.stats import Counters, Sample
from shared.containers import (
    LABEL_CPU_THRESHOLD,
    LABEL_MEMORY_THRESHOLD,
    LABEL_MONITOR,
    ContainerInfo,
    matches_label,
)
from shared.events import AlertKind, AlertStatus, Detector, Severity
from shared.settings import Settings

__all__ = ["EVENT_KINDS", "AlertDraft", "MonitorPolicy", "Track", "Tracker", "watched"]

EVENT_KINDS = (AlertKind.CRASH, AlertKind.OOM_KILLED, AlertKind.RESTART_LOOP)


@dataclass(frozen=True)
class MonitorPolicy:
    cpu: ThresholdPolicy = ThresholdPolicy(threshold=85.0)
    memory: ThresholdPolicy = ThresholdPolicy(threshold=80.0)
    baseline: BaselinePolicy | None = BaselinePolicy()
    gate: GatePolicy = GatePolicy()
    restart_loop_count: int = 3
    restart_loop_window_s: float = 300.0
    recovery_window_s: float = 60.0
    include_stack: bool = False
    watch_label: str | None = None

    @classmethod
    def from_settings(cls, s: Settings) -> MonitorPolicy:
        def threshold(value: float) -> ThresholdPolicy:
            return ThresholdPolicy(
                threshold=value,
                sustained=s.monitor_sustained_samples,
                hysteresis=s.monitor_hysteresis,
                clear_samples=s.monitor_sustained_samples,
            )

        return cls(
            cpu=threshold(s.monitor_cpu_threshold),
            memory=threshold(s.monitor_memory_threshold),
            baseline=BaselinePolicy(
                min_samples=s.monitor_baseline_min_samples,
                z=s.monitor_baseline_z,
                min_delta=s.monitor_baseline_min_delta,
            )
            if s.monitor_baseline_enabled
            else None,
            gate=GatePolicy(
                min_gap_s=s.monitor_min_alert_gap_s, realert_s=s.monitor_realert_interval_s
            ),
            restart_loop_count=s.monitor_restart_loop_count,
            restart_loop_window_s=s.monitor_restart_loop_window_s,
            recovery_window_s=s.monitor_recovery_window_s,
            include_stack=s.monitor_include_stack,
            watch_label=s.watch_label,
        )


@dataclass(frozen=True)
class AlertDraft:
    """An alert decided by the tracker; the agent adds logs and publishes it."""

    container: ContainerInfo
    kind: AlertKind
    status: AlertStatus
    severity: Severity
    detector: Detector
    summary: str
    occurred_at: float
    idempotency_key: str
    metrics: dict[str, float] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    exit_code: int | None = None
    oom_killed: bool | None = None
    uncertain: bool = False  # how it died was not seen: notify, never act

    @property
    def wants_logs(self) -> bool:
        return self.status is AlertStatus.FIRING


@dataclass
class Track:
    info: ContainerInfo
    counters: Counters | None = None
    sample: Sample | None = None
    cpu: ThresholdState = ThresholdState()
    memory: ThresholdState = ThresholdState()
    cpu_base: Baseline = Baseline()
    memory_base: Baseline = Baseline()
    gates: dict[str, GateState] = field(default_factory=dict)
    active: set[AlertKind] = field(default_factory=set)
    # When each active kind began: the same Docker event time on every Monitor replica, so
    # replicas derive the same idempotency key for its resolution.
    active_since: dict[AlertKind, float] = field(default_factory=dict)
    deaths: tuple[float, ...] = ()
    # What the daemon said since the container last started: a stopping `kill` makes the next
    # `die` deliberate however late it comes; an `oom` makes it the same failure, reported once.
    since_start: list[Seen] = field(default_factory=list)
    running_since: float | None = None


def _activate(t: Track, kind: AlertKind, at: float) -> None:
    if kind not in t.active:
        t.active_since[kind] = at
    t.active.add(kind)


def watched(info: ContainerInfo, policy: MonitorPolicy, own_id: str | None = None) -> bool:
    if info.label_false(LABEL_MONITOR) or not matches_label(info.labels, policy.watch_label):
        return False
    if info.is_stack and not policy.include_stack:
        return False
    return not (own_id and info.id.startswith(own_id))


class Tracker:
    def __init__(self, policy: MonitorPolicy) -> None:
        self.policy = policy
        self.tracks: dict[str, Track] = {}

    def track(self, info: ContainerInfo) -> Track:
        current = self.tracks.get(info.id)
        if current is None:
            current = Track(info=info)
            if info.running and info.started_at is not None:
                current.running_since = info.started_at.timestamp()
            self.tracks[info.id] = current
        else:
            current.info = info
        return current

    def _bucket(self, now: float) -> int:
        return int(now // max(1.0, self.policy.gate.realert_s))

    def forget(self, container_id: str) -> None:
        self.tracks.pop(container_id, None)

    def find_by_name(self, name: str) -> ContainerInfo | None:
        for t in self.tracks.values():
            if t.info.name == name:
                return t.info
        return None

    # ------------------------------------------------------------------ helpers

    def _gate(self, t: Track, key: str, now: float, *, new_episode: bool) -> tuple[bool, int]:
        state, send, suppressed = gate(
            t.gates.get(key, GateState()), now, self.policy.gate, new_episode=new_episode
        )
        t.gates[key] = state
        return send, suppressed

    def _draft(
        self,
        t: Track,
        kind: AlertKind,
        severity: Severity,
        detector: Detector,
        summary: str,
        at: float,
        key: str,
        suppressed: int = 0,
        status: AlertStatus = AlertStatus.FIRING,
        **extra: Any,
    ) -> AlertDraft:
        metrics = dict(extra.pop("metrics", {}))
        if suppressed:
            metrics["suppressed_repeats"] = float(suppressed)
        return AlertDraft(
            container=t.info,
            kind=kind,
            status=status,
            severity=severity if status is AlertStatus.FIRING else Severity.INFO,
            detector=detector,
            summary=summary,
            occurred_at=at,
            idempotency_key=key,
            metrics=metrics,
            **extra,
        )

    def _resolve(self, t: Track, kind: AlertKind, now: float, why: str) -> AlertDraft:
        t.active.discard(kind)
        t.gates.pop(kind.value, None)
        began = t.active_since.pop(kind, now)
        return self._draft(
            t,
            kind,
            Severity.INFO,
            Detector.DOCKER_EVENTS if kind in EVENT_KINDS else Detector.STATS,
            f"{t.info.name}: {kind.value} resolved ({why})",
            now,
            f"resolve:{t.info.id}:{kind.value}:{began:.6f}",
            status=AlertStatus.RESOLVED,
        )

    # ------------------------------------------------------------------ Docker events

    def on_event(
        self, action: str, attrs: dict[str, str], at: float, info: ContainerInfo
    ) -> list[AlertDraft]:
        """One container event from the daemon (`at` is the event's own timestamp)."""
        t = self.track(info)
        name = info.name
        nano = attrs.get("_time_nano") or f"{at:.6f}"
        if action == "kill":
            t.since_start.append(Seen(action, attrs, at))
            return []
        if action == "start":
            t.running_since = at
            t.since_start = []  # that stop (or restart) is over: the next death is its own
            return []
        if action == "oom":
            t.since_start.append(Seen(action, attrs, at))
            _activate(t, AlertKind.OOM_KILLED, at)
            send, suppressed = self._gate(t, AlertKind.OOM_KILLED.value, at, new_episode=True)
            if not send:
                return []
            limit = info.memory_limit
            detail = f" (memory limit {limit // 2**20} MiB)" if limit else " (no memory limit)"
            return [
                self._draft(
                    t,
                    AlertKind.OOM_KILLED,
                    Severity.CRITICAL,
                    Detector.DOCKER_EVENTS,
                    f"{name} was killed by the kernel OOM killer{detail}",
                    at,
                    f"docker:{info.id}:oom:{nano}",
                    suppressed,
                    oom_killed=True,
                    exit_code=137,
                )
            ]
        if action == "die":
            return self._on_die(t, attrs, at, nano)
        if action.startswith("health_status"):
            status = action.split(":", 1)[1].strip() if ":" in action else attrs.get("health", "")
            return self._on_health(t, status, at, nano)
        if action == "destroy":
            return self._on_destroy(t, at, nano)
        return []

    def _on_destroy(self, t: Track, at: float, nano: str) -> list[AlertDraft]:
        """A removed container closes its incident, whatever was still open for it."""
        self.forget(t.info.id)
        if not t.active:
            return []
        return [
            self._draft(
                t,
                AlertKind.REMOVED,
                Severity.INFO,
                Detector.DOCKER_EVENTS,
                f"{t.info.name} was removed (open: {', '.join(sorted(k.value for k in t.active))})",
                at,
                f"docker:{t.info.id}:destroy:{nano}",
                status=AlertStatus.RESOLVED,
            )
        ]

    def _on_die(self, t: Track, attrs: dict[str, str], at: float, nano: str) -> list[AlertDraft]:
        t.running_since = None
        try:
            exit_code = int(attrs.get("exitCode", "0"))
        except ValueError:
            exit_code = -1
        t.since_start.append(Seen("die", attrs, at))
        cause = cause_of_death(t.since_start, exit_code, t.info.stop_signal)
        if cause is Cause.STOPPED:
            return []  # stopped or restarted on purpose (by a person or by HemoStat)
        oom = cause is Cause.OOM
        drafts: list[AlertDraft] = []
        t.deaths, looping = restart_loop(
            (*t.deaths, at), at, self.policy.restart_loop_window_s, self.policy.restart_loop_count
        )
        if exit_code != 0 and not oom:
            _activate(t, AlertKind.CRASH, at)
            send, suppressed = self._gate(t, AlertKind.CRASH.value, at, new_episode=True)
            if send:
                drafts.append(
                    self._draft(
                        t,
                        AlertKind.CRASH,
                        Severity.CRITICAL,
                        Detector.DOCKER_EVENTS,
                        f"{t.info.name} exited with code {exit_code}",
                        at,
                        f"docker:{t.info.id}:die:{nano}",
                        suppressed,
                        exit_code=exit_code,
                        oom_killed=False,
                    )
                )
        if looping:
            new_episode = AlertKind.RESTART_LOOP not in t.active
            _activate(t, AlertKind.RESTART_LOOP, at)
            send, suppressed = self._gate(
                t, AlertKind.RESTART_LOOP.value, at, new_episode=new_episode
            )
            if send:
                window = self.policy.restart_loop_window_s
                drafts.append(
                    self._draft(
                        t,
                        AlertKind.RESTART_LOOP,
                        Severity.CRITICAL,
                        Detector.DOCKER_EVENTS,
                        f"{t.info.name} died {len(t.deaths)} times in {window:.0f}s",
                        at,
                        f"docker:{t.info.id}:loop:{nano}",
                        suppressed,
                        exit_code=exit_code,
                        metrics={"deaths_in_window": float(len(t.deaths)), "window_s": window},
                        thresholds={"deaths": float(self.policy.restart_loop_count)},
                    )
                )
        return drafts

    def _on_health(self, t: Track, status: str, at: float, nano: str) -> list[AlertDraft]:
        if status == "unhealthy":
            new_episode = AlertKind.UNHEALTHY not in t.active
            _activate(t, AlertKind.UNHEALTHY, at)
            send, suppressed = self._gate(t, AlertKind.UNHEALTHY.value, at, new_episode=new_episode)
            if not send:
                return []
            probe = f": {t.info.health_output}" if t.info.health_output else ""
            return [
                self._draft(
                    t,
                    AlertKind.UNHEALTHY,
                    Severity.CRITICAL,
                    Detector.DOCKER_EVENTS,
                    f"{t.info.name} is unhealthy{probe}",
                    at,
                    f"docker:{t.info.id}:unhealthy:{nano}",
                    suppressed,
                )
            ]
        if status == "healthy" and AlertKind.UNHEALTHY in t.active:
            return [self._resolve(t, AlertKind.UNHEALTHY, at, "health check passes again")]
        return []

    # ------------------------------------------------------------------ resource samples

    def on_sample(self, info: ContainerInfo, sample: Sample, now: float) -> list[AlertDraft]:
        t = self.track(info)
        t.sample = sample
        drafts: list[AlertDraft] = []
        cpu, memory = self.policy.cpu, self.policy.memory
        checks = (
            (AlertKind.HIGH_CPU, sample.cpu_percent, cpu, LABEL_CPU_THRESHOLD),
            (AlertKind.HIGH_MEMORY, sample.memory_percent, memory, LABEL_MEMORY_THRESHOLD),
        )
        for kind, value, policy, label in checks:
            if value is None:
                continue
            override = info.label_float(label)
            if override is not None:
                policy = replace(policy, threshold=override)
            drafts += self._threshold(t, kind, value, policy, sample, now)
        if self.policy.baseline is not None:
            for metric, value in (("cpu", sample.cpu_percent), ("memory", sample.memory_percent)):
                if value is not None:
                    drafts += self._baseline(t, metric, value, sample, now)
        return drafts

    def _threshold(
        self,
        t: Track,
        kind: AlertKind,
        value: float,
        policy: ThresholdPolicy,
        sample: Sample,
        now: float,
    ) -> list[AlertDraft]:
        state = t.cpu if kind is AlertKind.HIGH_CPU else t.memory
        state, transition = step_threshold(state, value, policy)
        if kind is AlertKind.HIGH_CPU:
            t.cpu = state
        else:
            t.memory = state
        what = "CPU" if kind is AlertKind.HIGH_CPU else "memory"
        if transition is Transition.CLEARED:
            return [self._resolve(t, kind, now, f"{what} at {value:.0f}%")]
        if not state.active:
            return []
        _activate(t, kind, now)
        send, suppressed = self._gate(
            t, kind.value, now, new_episode=transition is Transition.FIRED
        )
        if not send:
            return []
        severity = Severity.WARNING
        if kind is AlertKind.HIGH_MEMORY and value >= 95:
            severity = Severity.CRITICAL
        if kind is AlertKind.HIGH_CPU:
            of_what = "of its CPU allowance"
        elif sample.memory_limit_is_host:
            of_what = "of the host's memory (no limit set)"
        else:
            of_what = "of its limit"
        metrics = sample.metrics() | {"memory_limit_is_host": float(sample.memory_limit_is_host)}
        thresholds = {
            f"{what.lower()}_percent": policy.threshold,
            "sustained_samples": float(policy.sustained),
        }
        return [
            self._draft(
                t,
                kind,
                severity,
                Detector.STATS,
                f"{t.info.name} uses {value:.0f}% {of_what} "
                f"(threshold {policy.threshold:.0f}% for {policy.sustained} samples)",
                now,
                f"stats:{t.info.id}:{kind.value}:{now:.3f}",
                suppressed,
                metrics=metrics,
                thresholds=thresholds,
            )
        ]

    def _baseline(
        self, t: Track, metric: str, value: float, sample: Sample, now: float
    ) -> list[AlertDraft]:
        assert self.policy.baseline is not None
        current = t.cpu_base if metric == "cpu" else t.memory_base
        mean_before = current.mean
        state, transition, z = step_baseline(current, value, self.policy.baseline)
        if metric == "cpu":
            t.cpu_base = state
        else:
            t.memory_base = state
        if transition is not Transition.FIRED:
            return []
        key = f"anomaly:{metric}"
        send, suppressed = self._gate(t, key, now, new_episode=True)
        if not send:
            return []
        metrics = sample.metrics() | {
            f"{metric}_baseline": round(mean_before, 3),
            "zscore": round(z, 2),
        }
        thresholds = {"zscore": self.policy.baseline.z, "min_delta": self.policy.baseline.min_delta}
        return [
            self._draft(
                t,
                AlertKind.ANOMALY,
                Severity.INFO,
                Detector.STATS,
                f"{t.info.name}: {metric} at {value:.0f}% is unusual for it "
                f"(baseline {mean_before:.0f}%, z={z:.1f})",
                now,
                f"stats:{t.info.id}:{key}:{now:.3f}",
                suppressed,
                metrics=metrics,
                thresholds=thresholds,
            )
        ]

    # ------------------------------------------------------------------ inventory

    def on_inventory(self, info: ContainerInfo, now: float) -> list[AlertDraft]:
        """Called on every poll: recoveries, reminders for problems that last."""
        t = self.track(info)
        t.deaths = prune(t.deaths, now, self.policy.restart_loop_window_s)
        drafts: list[AlertDraft] = []
        if AlertKind.UNHEALTHY in t.active and info.health == "healthy":
            drafts.append(self._resolve(t, AlertKind.UNHEALTHY, now, "health check passes again"))
        healthy_enough = info.health in (None, "healthy")
        if info.running and t.running_since is not None and healthy_enough:
            up_for = now - t.running_since
            if up_for >= self.policy.recovery_window_s:
                for kind in EVENT_KINDS:
                    if kind in t.active:
                        drafts.append(self._resolve(t, kind, now, f"running for {up_for:.0f}s"))
        for kind in sorted(t.active):
            if kind in (AlertKind.HIGH_CPU, AlertKind.HIGH_MEMORY):
                continue  # reminders for these come with samples
            still = (kind is AlertKind.UNHEALTHY and info.health == "unhealthy") or (
                kind in EVENT_KINDS and not info.running
            )
            if still:
                held_at = t.gates.get(kind.value, GateState()).held_at
                send, suppressed = self._gate(t, kind.value, now, new_episode=False)
                if send:
                    what = kind.value.replace("_", " ")
                    if held_at is None:
                        summary = f"{info.name}: still {what} ({info.state})"
                        # One reminder per interval, the same key on every replica.
                        key = f"remind:{info.id}:{kind.value}:{self._bucket(now)}"
                    else:
                        summary = f"{info.name}: {what} again, held back by the gap; still down"
                        # The held episode's own time (Docker's): the same on every replica.
                        key = f"held:{info.id}:{kind.value}:{held_at:.3f}"
                    drafts.append(
                        self._draft(
                            t,
                            kind,
                            Severity.CRITICAL,
                            Detector.STATS,
                            summary,
                            now,
                            key,
                            suppressed,
                            exit_code=info.exit_code,
                        )
                    )
        return drafts

    def reconcile(
        self, info: ContainerInfo, now: float, since: float, history: Sequence[Seen]
    ) -> list[AlertDraft]:
        """After (re)connecting: what happened while the Monitor was not listening. `history`
        is what the daemon still remembers about this container since `since`. A death is
        judged by its own events exactly as live; a death whose events the daemon no longer has
        is reported as unknown — people are told, nothing is restarted."""
        t = self.track(info)
        drafts: list[AlertDraft] = []
        if history:
            t.since_start = since_last_start(history)
        if info.running and info.health == "unhealthy" and AlertKind.UNHEALTHY not in t.active:
            started = info.started_at.timestamp() if info.started_at else now
            drafts += self._on_health(t, "unhealthy", now, f"started-{started:.6f}")
        finished = info.finished_at.timestamp() if info.finished_at else None
        if info.running or finished is None or finished < since:
            return drafts
        segment = since_last_start(history)
        dies = [e for e in segment if e.action == "die"]
        seen_it = bool(dies) and abs(dies[-1].at - finished) <= 2.0
        cause = (
            cause_of_death(segment, info.exit_code, info.stop_signal) if seen_it else Cause.UNKNOWN
        )
        if info.oom_killed and cause is not Cause.STOPPED:
            cause = Cause.OOM  # the kernel's own record: no doubt about who killed it
        if cause in (Cause.STOPPED, Cause.CLEAN) or (
            cause is Cause.UNKNOWN and info.exit_code in (0, None)
        ):
            return drafts
        kind = AlertKind.OOM_KILLED if cause is Cause.OOM else AlertKind.CRASH
        if kind in t.active:
            return drafts
        _activate(t, kind, finished)
        send, suppressed = self._gate(t, kind.value, now, new_episode=True)
        if not send:
            return drafts
        uncertain = cause is Cause.UNKNOWN
        if kind is AlertKind.OOM_KILLED:
            what = "was OOM-killed"
        else:
            what = f"exited with code {info.exit_code}"
        summary = f"{info.name} {what} while the Monitor was not listening"
        if uncertain:
            summary += (
                "; its stop was not seen, so HemoStat cannot tell whether a person stopped it "
                "— people are told, nothing is restarted"
            )
        drafts.append(
            self._draft(
                t,
                kind,
                Severity.CRITICAL,
                Detector.DOCKER_EVENTS,
                summary,
                finished,
                f"docker:{info.id}:{kind.value}:{info.finished_at}",
                suppressed,
                exit_code=info.exit_code,
                oom_killed=info.oom_killed,
                uncertain=uncertain,
            )
        )
        return drafts
