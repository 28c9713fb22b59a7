"""Per-container detection state: turns Docker events, resource samples and inventory checks
into alert drafts. No I/O and no clock: every method takes `now` (unix seconds), so the whole
rule set runs under a fixed clock in tests."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

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

DELIBERATE_WINDOW_S = 15.0  # a `kill` this recent before a `die` means someone stopped it
OOM_DIE_WINDOW_S = 10.0  # the `die` after an `oom` is the same failure, reported once
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
    deaths: tuple[float, ...] = ()
    last_kill_at: float | None = None
    last_oom_at: float | None = None
    running_since: float | None = None


def _within(earlier: float | None, at: float, window_s: float) -> bool:
    return earlier is not None and 0 <= at - earlier <= window_s


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
        return self._draft(
            t,
            kind,
            Severity.INFO,
            Detector.DOCKER_EVENTS if kind in EVENT_KINDS else Detector.STATS,
            f"{t.info.name}: {kind.value} resolved ({why})",
            now,
            f"resolve:{t.info.id}:{kind.value}:{now:.3f}",
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
            t.last_kill_at = at
            return []
        if action == "start":
            t.running_since = at
            t.last_kill_at = None  # that stop (or restart) is over: the next death is unplanned
            return []
        if action == "oom":
            t.last_oom_at = at
            t.active.add(AlertKind.OOM_KILLED)
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
            self.forget(info.id)
        return []

    def _on_die(self, t: Track, attrs: dict[str, str], at: float, nano: str) -> list[AlertDraft]:
        t.running_since = None
        try:
            exit_code = int(attrs.get("exitCode", "0"))
        except ValueError:
            exit_code = -1
        oom = _within(t.last_oom_at, at, OOM_DIE_WINDOW_S)
        deliberate = not oom and _within(t.last_kill_at, at, DELIBERATE_WINDOW_S)
        if deliberate:
            return []  # stopped or restarted on purpose (by a person or by HemoStat)
        drafts: list[AlertDraft] = []
        t.deaths, looping = restart_loop(
            (*t.deaths, at), at, self.policy.restart_loop_window_s, self.policy.restart_loop_count
        )
        if exit_code != 0 and not oom:
            t.active.add(AlertKind.CRASH)
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
            t.active.add(AlertKind.RESTART_LOOP)
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
            t.active.add(AlertKind.UNHEALTHY)
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
        t.active.add(kind)
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
                send, suppressed = self._gate(t, kind.value, now, new_episode=False)
                if send:
                    drafts.append(
                        self._draft(
                            t,
                            kind,
                            Severity.CRITICAL,
                            Detector.STATS,
                            f"{info.name}: still {kind.value.replace('_', ' ')} ({info.state})",
                            now,
                            f"remind:{info.id}:{kind.value}:{now:.3f}",
                            suppressed,
                            exit_code=info.exit_code,
                        )
                    )
        return drafts

    def reconcile(self, info: ContainerInfo, now: float, since: float) -> list[AlertDraft]:
        """After (re)connecting to the daemon: problems that arose while we were not listening."""
        t = self.track(info)
        drafts: list[AlertDraft] = []
        if info.running and info.health == "unhealthy" and AlertKind.UNHEALTHY not in t.active:
            drafts += self._on_health(t, "unhealthy", now, f"reconcile-{now:.3f}")
        finished = info.finished_at.timestamp() if info.finished_at else None
        crashed = not info.running and info.exit_code not in (None, 0)
        if crashed and finished is not None and finished >= since:
            kind = AlertKind.OOM_KILLED if info.oom_killed else AlertKind.CRASH
            if kind not in t.active:
                t.active.add(kind)
                send, suppressed = self._gate(t, kind.value, now, new_episode=True)
                if send:
                    what = (
                        "was OOM-killed"
                        if info.oom_killed
                        else f"exited with code {info.exit_code}"
                    )
                    drafts.append(
                        self._draft(
                            t,
                            kind,
                            Severity.CRITICAL,
                            Detector.DOCKER_EVENTS,
                            f"{info.name} {what} while the Monitor was not listening",
                            finished,
                            f"docker:{info.id}:{kind.value}:{info.finished_at}",
                            suppressed,
                            exit_code=info.exit_code,
                            oom_killed=info.oom_killed,
                        )
                    )
        return drafts
