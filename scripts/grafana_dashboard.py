"""Writes grafana/dashboards/hemostat-overview.json (a test keeps the file equal to this output).

The dashboard is built with grafana-foundation-sdk, Grafana's own typed builders (the `dev` extra
pins the build made for the Grafana image in docker-compose.yml), so every field is one Grafana's
schema knows; this file only says which panels, queries and units.

python scripts/grafana_dashboard.py
"""

from __future__ import annotations

import json
from pathlib import Path

from grafana_foundation_sdk.builders import common, dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef

DATASOURCE = DataSourceRef(type_val="prometheus", uid="hemostat-prometheus")
OUT = Path(__file__).resolve().parent.parent / "grafana" / "dashboards" / "hemostat-overview.json"

# (row, [(title, kind, unit, [(expr, legend)])])
ROWS: list[tuple[str, list[tuple[str, str, str, list[tuple[str, str]]]]]] = [
    ("Containers", [
        ("Monitored containers", "stat", "none", [("count(hemostat_container_monitored == 1)", "")]),
        ("Unhealthy containers", "stat", "none",
         [('count(hemostat_container_health{state="unhealthy"} == 1) or vector(0)', "")]),
        ("Open alerts", "stat", "none", [("sum(hemostat_container_open_alerts)", "")]),
        ("CPU % of allowance", "timeseries", "percent",
         [("hemostat_container_cpu_percent", "{{container}}")]),
        ("Memory % (of limit, or of host)", "timeseries", "percent",
         [("hemostat_container_memory_percent", "{{container}} ({{limit}})")]),
        ("Memory working set", "timeseries", "bytes",
         [("hemostat_container_memory_bytes", "{{container}}")]),
        ("Restarts (1h)", "timeseries", "none",
         [("increase(hemostat_container_restarts_total[1h])", "{{container}}")]),
    ]),
    ("Pipeline", [
        ("Health alerts by kind", "timeseries", "ops",
         [("sum by (kind) (rate(hemostat_health_alerts_total[5m]))", "{{kind}}")]),
        ("Decisions by method and outcome", "timeseries", "ops",
         [("sum by (method, outcome) (rate(hemostat_decisions_total[5m]))", "{{method}} {{outcome}}")]),
        ("Remediations by action and status (1h)", "timeseries", "none",
         [("sum by (action, status) (increase(hemostat_remediations_total[1h]))", "{{action}} {{status}}")]),
        ("False alarms (1h)", "timeseries", "none",
         [("sum by (kind) (increase(hemostat_false_alarms_total[1h]))", "{{kind}}")]),
        ("LLM fallbacks to rules (1h)", "timeseries", "none",
         [("sum by (reason) (increase(hemostat_llm_fallbacks_total[1h]))", "{{reason}}")]),
    ]),
    ("Latencies", [
        ("Detection (event → alert)", "timeseries", "s", [
            ("histogram_quantile(0.5, sum by (le) (rate(hemostat_detection_latency_seconds_bucket[5m])))", "p50"),
            ("histogram_quantile(0.95, sum by (le) (rate(hemostat_detection_latency_seconds_bucket[5m])))", "p95"),
        ]),
        ("Analysis (alert → decision)", "timeseries", "s", [
            ("histogram_quantile(0.95, sum by (le, method) (rate(hemostat_analysis_latency_seconds_bucket[5m])))", "p95 {{method}}"),
        ]),
        ("Remediation (request → outcome)", "timeseries", "s", [
            ("histogram_quantile(0.95, sum by (le, action) (rate(hemostat_remediation_latency_seconds_bucket[5m])))", "p95 {{action}}"),
        ]),
        ("End to end (failure → remediated)", "timeseries", "s", [
            ("histogram_quantile(0.95, sum by (le) (rate(hemostat_end_to_end_latency_seconds_bucket[5m])))", "p95"),
        ]),
        ("Notification delivery", "timeseries", "s", [
            ("histogram_quantile(0.95, sum by (le, channel) (rate(hemostat_notification_latency_seconds_bucket[5m])))", "p95 {{channel}}"),
        ]),
    ]),
    ("Guards and approvals", [
        ("Guard rejections (1h)", "timeseries", "none",
         [("sum by (guard) (increase(hemostat_guard_rejections_total[1h]))", "{{guard}}")]),
        ("Escalations (1h)", "timeseries", "none",
         [("sum by (guard) (increase(hemostat_escalations_total[1h]))", "{{guard}}")]),
        ("Approvals pending", "stat", "none", [("hemostat_approvals_pending", "")]),
        ("Approvals by state (1h)", "timeseries", "none",
         [("sum by (state) (increase(hemostat_approvals_total[1h]))", "{{state}}")]),
    ]),
    ("Notifications", [
        ("Deliveries by channel and status (1h)", "timeseries", "none",
         [("sum by (channel, status) (increase(hemostat_notifications_total[1h]))", "{{channel}} {{status}}")]),
    ]),
    ("Agent health", [
        ("Live instances per agent", "timeseries", "none", [("hemostat_agent_up", "{{agent}}")]),
        ("Heartbeat age", "timeseries", "s",
         [("hemostat_agent_heartbeat_age_seconds", "{{agent}} {{instance}}")]),
        ("Degraded instances", "stat", "none", [("sum(hemostat_agent_degraded)", "")]),
        ("Handler errors", "timeseries", "ops",
         [("sum by (agent) (rate(hemostat_agent_handler_errors_total[5m]))", "{{agent}}")]),
        ("Consumer lag", "timeseries", "none", [("hemostat_consumer_lag", "{{group}} ← {{channel}}")]),
        ("Pending (read, unacknowledged)", "timeseries", "none",
         [("hemostat_consumer_pending", "{{group}} ← {{channel}}")]),
        ("Dead letters", "timeseries", "none", [
            ("hemostat_dead_letter_length", "in stream"),
            ("sum by (channel) (increase(hemostat_dead_letters_total[1h]))", "new (1h) {{channel}}"),
        ]),
    ]),
]  # fmt: skip


def panel(pid: int, title: str, kind: str, unit: str, targets: list[tuple[str, str]], stat_span: int = 12) -> stat.Panel | timeseries.Panel:  # fmt: skip
    """A stat (`stat_span` columns by 4, last value) or a time series (12 by 8); the dashboard
    places it."""
    built: stat.Panel | timeseries.Panel
    if kind == "stat":
        built = (
            stat.Panel()
            .height(4)
            .span(stat_span)
            .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]))
        )
    else:
        built = timeseries.Panel().height(8).span(12)
    built.id(pid).title(title).datasource(DATASOURCE).unit(unit)
    for i, (expr, legend) in enumerate(targets):
        built.with_target(
            prometheus.Dataquery()
            .ref_id(chr(65 + i))
            .datasource(DATASOURCE)
            .expr(expr)
            .legend_format(legend)
        )
    return built


def build() -> dashboard.Dashboard:
    # The builder lays panels out left to right, wrapping at 24 columns, and puts each row below
    # the tallest panel of the line before it.
    board = (
        dashboard.Dashboard("HemoStat overview")
        .uid("hemostat-overview")
        .tags(["hemostat"])
        .timezone("browser")
        .version(1)
        .refresh("30s")
        .time("now-6h", "now")
    )
    pid = 1
    for row, items in ROWS:
        board.with_row(dashboard.Row(row).id(pid))
        pid += 1
        # The builder wraps only once a line is full, never before a panel that would not fit:
        # every line must add up to 24 exactly. Three stats share a line; a lone one takes half.
        stats = sum(kind == "stat" for _, kind, _, _ in items)
        stat_span = 24 // stats if stats > 1 else 12
        for title, kind, unit, targets in items:
            board.with_panel(panel(pid, title, kind, unit, targets, stat_span))
            pid += 1
    return board


def render() -> str:
    return json.dumps(build().build(), cls=JSONEncoder, indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    OUT.write_text(render(), encoding="utf-8")
    print(f"wrote {OUT}")
