"""HemoStat dashboard: `streamlit run dashboard/app.py` (configured by the agents' settings).

Layout only: every number comes from `dashboard.data`, read inside the auto-refreshing fragment
so that everything visible is re-read from Redis on each refresh."""

from __future__ import annotations

import time
from typing import Any

import pandas as pd
import streamlit as st
from redis import Redis
from redis.exceptions import RedisError

from dashboard import auth, data
from shared.container_state import read_snapshots
from shared.errors import ApprovalError, HemoStatError, NotReplicated
from shared.heartbeat import read_heartbeats
from shared.redaction import Redactor
from shared.redis_client import client_key, connect_sync, describe
from shared.settings import Settings, load_settings

PAGES = ["Overview", "Containers", "Incidents", "Approvals", "Audit", "Hosts", "Agents"]
STAGE_ICON = {
    "alert": "🚨",
    "decision": "🧠",
    "approval": "✋",
    "remediation": "🛠️",
    "escalation": "📣",
    "notification": "✉️",
}


@st.cache_resource
def _client(key: str, _settings: Settings) -> Redis:
    """One client per Redis configuration (`key`); streamlit does not hash `_settings`."""
    return connect_sync(_settings)


def main() -> None:
    st.set_page_config(page_title="HemoStat", page_icon="🩺", layout="wide")
    try:
        settings = load_settings()
    except HemoStatError as exc:
        st.error(f"Configuration error: {exc}")
        st.stop()
    redactor = Redactor(settings.secret_values())
    st.sidebar.title("🩺 HemoStat")
    page = st.sidebar.radio("Page", PAGES, key="page")
    st.sidebar.caption(f"Re-reads Redis every {settings.dashboard_refresh_s:.0f} s.")
    redis = _client(client_key(settings), settings)
    body = st.fragment(run_every=settings.dashboard_refresh_s)(_render)
    body(page, redis, settings, redactor)


def _render(page: str, redis: Redis, settings: Settings, redactor: Redactor) -> None:
    try:
        redis.ping()
        PAGE_FUNCS[page](redis, settings, redactor)
        bad = data.malformed()
        if bad:
            where = ", ".join(f"{channel} ({n})" for channel, n in sorted(bad.items()))
            st.warning(
                f"Malformed entries were skipped in {where}: they are not shown here; the "
                "agents dead-letter them (see Agents → dead letters)."
            )
    except (RedisError, OSError) as exc:
        where = redactor.text(describe(settings))
        st.error(
            f"Redis is unreachable at {where}: {redactor.text(str(exc))}. "
            "The dashboard shows data again as soon as it is back."
        )


def _table(rows: list[dict[str, Any]], redactor: Redactor, key: str) -> None:
    st.dataframe(pd.DataFrame(data.safe(redactor, rows)), hide_index=True, width="stretch", key=key)


# ---------------------------------------------------------------- pages


def overview_page(redis: Redis, settings: Settings, redactor: Redactor) -> None:
    st.header("Overview")
    o = data.overview(redis, time.time())
    _dry_run_banner(redis)
    if o.monitored == 0 and not any(o.agents_up.values()):
        st.info(
            "Nothing to show yet: no agent has reported and no container was seen. "
            "Start HemoStat with `make run` (or `make up`) and this page fills itself."
        )
    row = st.columns(5)
    row[0].metric("Monitored containers", o.monitored)
    row[1].metric("Healthy", o.healthy)
    row[2].metric("Unhealthy", o.unhealthy)
    row[3].metric("Open incidents", o.open_incidents)
    row[4].metric("Pending approvals", o.pending_approvals)
    row = st.columns(5)
    row[0].metric("Remediations (1 h)", o.remediations_hour)
    row[1].metric("Remediations (24 h)", o.remediations_day)
    rate = "-" if o.success_rate_day is None else f"{100 * o.success_rate_day:.0f}%"
    row[2].metric(
        "Success rate (24 h)", rate, help=f"{o.succeeded_day} succeeded, {o.failed_day} failed"
    )
    row[3].metric("Dry runs (24 h)", o.dry_runs_day)
    row[4].metric("False alarms (24 h)", o.false_alarms_day)
    up = sum(1 for n in o.agents_up.values() if n)
    st.metric("Agents up", f"{up}/{len(o.agents_up)}")
    missing = [a for a, n in o.agents_up.items() if not n]
    if missing and up:
        st.warning(f"No live instance of: {', '.join(missing)}")
    outcomes = data.outcomes_over_time(redis, time.time())
    st.subheader("Remediation outcomes per hour")
    if outcomes:
        st.bar_chart(pd.DataFrame(outcomes).set_index("hour").fillna(0))
    else:
        st.caption("No remediation in the last 24 hours.")


def _dry_run_banner(redis: Redis) -> None:
    beats = [b for b in read_heartbeats(redis) if b.agent == "responder"]
    if any(b.details.get("dry_run") for b in beats):
        st.warning("DRY-RUN: the Responder evaluates and records everything and changes nothing.")


def containers_page(redis: Redis, settings: Settings, redactor: Redactor) -> None:
    st.header("Containers")
    rows = data.containers(redis, time.time())
    if not rows:
        st.info("No container seen yet — the Monitor writes a snapshot of each one every poll.")
        return
    cols = st.columns(4)
    text = cols[0].text_input("Filter by name", key="container_filter")
    on = _host_filter(cols[1], rows, "container_hosts")
    states = sorted({r["status"] for r in rows})
    chosen = cols[2].multiselect("Status", states, default=states, key="container_status")
    healths = sorted({r["health"] for r in rows})
    wanted = cols[3].multiselect("Health", healths, default=healths, key="container_health")
    shown = [
        r
        for r in data.filter_hosts(rows, on)
        if text.lower() in r["name"].lower() and r["status"] in chosen and r["health"] in wanted
    ]
    st.caption(f"{len(shown)} of {len(rows)} containers (click a column header to sort)")
    _table(shown, redactor, "containers_table")
    st.subheader("CPU and memory over time")
    by_name = {r["name"]: r for r in rows}
    snapshots = {s.name: s.id for s in read_snapshots(redis, time.time(), 300)}
    busiest = sorted(rows, key=lambda r: -(r["cpu %"] or 0))[:5]
    pick = st.multiselect(
        "Containers", sorted(by_name), default=[r["name"] for r in busiest], key="chart_containers"
    )
    series = data.samples(redis, [snapshots[n] for n in pick if n in snapshots])
    for metric, label in (("cpu", "CPU %"), ("mem", "Memory %")):
        frame = _series_frame(series, {snapshots[n]: n for n in pick if n in snapshots}, metric)
        if frame is not None:
            st.caption(label)
            st.line_chart(frame)


def _host_filter(where: Any, rows: list[dict[str, Any]], key: str) -> list[str]:
    """A host multiselect (empty: every host)."""
    names = sorted({str(r["host"]) for r in rows})
    return list(where.multiselect("Host", names, default=[], key=key, placeholder="all hosts"))


def _series_frame(
    series: dict[str, list[dict[str, float]]], names: dict[str, str], metric: str
) -> pd.DataFrame | None:
    frames = []
    for container_id, rows in series.items():
        points = [(pd.to_datetime(r["t"], unit="s"), r[metric]) for r in rows if metric in r]
        if points:
            frame = pd.DataFrame(points, columns=["time", names[container_id]]).set_index("time")
            frames.append(frame)
    return pd.concat(frames, axis=1).sort_index() if frames else None


def incidents_page(redis: Redis, settings: Settings, redactor: Redactor) -> None:
    st.header("Incidents")
    found = data.incidents(redis)
    if found:
        found = data.filter_hosts(found, _host_filter(st, found, "incident_hosts"))
    if not found:
        st.info("No incident yet. Each alert the Monitor raises opens or joins one.")
    else:
        _table(
            [{k: v for k, v in i.items() if k != "container_id"} for i in found],
            redactor,
            "incidents_table",
        )
        ids = [i["id"] for i in found]
        wanted = st.query_params.get("incident")
        index = ids.index(wanted) if wanted in ids else 0
        chosen = st.selectbox(
            "Timeline of",
            ids,
            index=index,
            key="incident_pick",
            format_func=lambda i: _incident_label(i, found),
        )
        st.subheader(f"Timeline of {chosen}")
        for entry in data.incident_timeline(redis, chosen):
            with st.container(border=True):
                stamp = entry.at.strftime("%H:%M:%S")
                st.markdown(
                    f"{STAGE_ICON.get(entry.stage, '•')} **{stamp} · {entry.stage}** — "
                    f"{redactor.text(entry.title)}"
                )
                if entry.detail:
                    st.caption(redactor.text(entry.detail))
                if entry.fields:
                    st.caption(
                        " · ".join(f"{k}: {redactor.text(v)}" for k, v in entry.fields.items())
                    )
    st.subheader("Live event feed")
    feed = data.event_feed(redis)
    if feed:
        _table(feed, redactor, "feed_table")
    else:
        st.caption("No event on any channel yet.")


def _incident_label(incident_id: str, found: list[dict[str, Any]]) -> str:
    row = next(i for i in found if i["id"] == incident_id)
    return f"{incident_id} · {row['container']} · {row['last kind']} · {row['status']}"


def approvals_page(redis: Redis, settings: Settings, redactor: Redactor) -> None:
    st.header("Approvals")
    pending, decided = data.proposals(redis)
    gate = auth.access(settings)
    actor = _signed_in(redis, settings, gate) if pending else None
    if not pending:
        st.info("No proposal waits for a decision.")
    for p in pending:
        with st.container(border=True):
            left = max(0.0, p.expires_at - time.time())
            target = p.container_name or p.container_id[:12]
            st.markdown(
                f"**{p.action_type} · {p.action_id}** on **{redactor.text(target)}** "
                f"(runbook {p.runbook_id}) — expires in {left / 60:.0f} min"
            )
            st.caption(redactor.text(p.why))
            request = p.request_event()
            st.caption(
                f"Root cause: {redactor.text(request.payload.analysis.root_cause)} "
                f"(confidence {request.payload.analysis.confidence:.2f}, "
                f"{request.payload.analysis.method.value})"
            )
            if actor is None:
                continue  # no one signed in (or no one can): nothing to press
            reason = st.text_input("Reason (for a denial)", key=f"reason-{p.id}")
            cols = st.columns(2)
            if cols[0].button("Approve", key=f"approve-{p.id}", type="primary"):
                _decide(settings, p.id, True, actor, "")
            if cols[1].button("Deny", key=f"deny-{p.id}"):
                _decide(settings, p.id, False, actor, reason or "denied on the dashboard")
    st.subheader("Decided")
    if decided:
        _table(
            [
                {
                    "proposal": p.id,
                    "state": p.state.value,
                    "container": p.container_name or p.container_id[:12],
                    "action": f"{p.action_type}:{p.action_id}",
                    "decided by": p.decided_by or "-",
                    "reason": p.decision_reason or p.outcome or "-",
                }
                for p in decided
            ],
            redactor,
            "decided_table",
        )
    else:
        st.caption("No decided proposal yet.")


def _signed_in(redis: Redis, settings: Settings, gate: auth.Access) -> str | None:
    """The audit actor of this browser session, or None while no one may decide."""
    if not gate.can_decide:
        st.warning(f"Approve/Deny are not offered: {gate.why}.")
        return None
    if not gate.needs_sign_in:
        return "dashboard:local"
    user = st.session_state.get("dashboard_user")
    if user:
        st.caption(f"Signed in as **{user}**: decisions are recorded as dashboard:{user}.")
        return f"dashboard:{user}"
    with st.form("sign_in"):
        name = st.text_input("User", value=settings.dashboard_user, key="sign_in_user")
        password = st.text_input("Password", type="password", key="sign_in_password")
        if st.form_submit_button("Sign in to decide"):
            signed = auth.sign_in(redis, settings, name, password)
            if signed:
                st.session_state["dashboard_user"] = signed
                st.rerun()
            locked = auth.locked_for(redis, name.strip() or settings.dashboard_user)
            if locked:
                st.error(f"Too many failed sign-ins: try again in {locked / 60:.0f} min.")
            else:
                st.error("Wrong user or password.")
    return None


def _decide(settings: Settings, proposal_id: str, approve: bool, actor: str, reason: str) -> None:
    try:
        data.submit_decision(settings, proposal_id, approve, actor, reason)
    except ApprovalError as exc:
        st.warning(f"Refused: {exc}")
        return
    except NotReplicated as exc:
        st.error(f"Not confirmed: {exc}")
        return
    st.success(f"{'Approved' if approve else 'Denied'} {proposal_id}.")


def audit_page(redis: Redis, settings: Settings, redactor: Redactor) -> None:
    st.header("Audit log")
    cols = st.columns(3)
    container = cols[0].text_input("Container (name or id prefix)", key="audit_container")
    event = cols[1].selectbox(
        "Event",
        ["", "executed", "dry_run", "rejected", "proposed", "denied", "expired", "notified"],
        key="audit_event",
    )
    hours = cols[2].number_input(
        "Hours back", min_value=1, max_value=24 * 90, value=24, key="audit_hours"
    )
    rows = data.audit_log(redis, container=container, event=event, since=time.time() - hours * 3600)
    if rows:
        _table(rows, redactor, "audit_table")
    else:
        st.info("No audit record matches. The Responder records every decision here.")


def hosts_page(redis: Redis, settings: Settings, redactor: Redactor) -> None:
    st.header("Hosts")
    rows = data.hosts(redis, time.time())
    if not rows:
        st.info(
            "No host has reported yet: each Docker host appears here once its Monitor or "
            "Responder (HEMOSTAT_HOST_NAME) is alive."
        )
        return
    down = [r["host"] for r in rows if r["state"] != "watched"]
    if down:
        st.warning(f"Not fully watched: {', '.join(down)}")
    _table(rows, redactor, "hosts_table")
    st.caption("`hemostat hosts forget NAME` retires a host taken out of the fleet.")


def agents_page(redis: Redis, settings: Settings, redactor: Redactor) -> None:
    st.header("Agents")
    beats, groups, letters = data.agent_health(redis)
    now = time.time()
    if beats:
        _table(
            [
                {
                    "agent": b.agent,
                    "instance": b.instance,
                    "host": b.host,
                    "status": b.status.value,
                    "heartbeat age s": round(now - b.beat_at.timestamp(), 1),
                    "handled": (b.details.get("consumer") or {}).get("handled", "-"),
                    "failed": (b.details.get("consumer") or {}).get("failed", "-"),
                    "dry run": b.details.get("dry_run", "-"),
                }
                for b in sorted(beats, key=lambda b: b.agent)
            ],
            redactor,
            "agents_table",
        )
    else:
        st.info("No agent has a live heartbeat.")
    st.subheader("Consumer groups")
    if groups:
        _table(groups, redactor, "groups_table")
    st.subheader("Dead letters")
    if letters:
        _table(letters, redactor, "dead_table")
    else:
        st.caption("No dead letter: every message was handled.")


PAGE_FUNCS = {
    "Overview": overview_page,
    "Containers": containers_page,
    "Incidents": incidents_page,
    "Approvals": approvals_page,
    "Audit": audit_page,
    "Hosts": hosts_page,
    "Agents": agents_page,
}

if __name__ == "__main__":  # Streamlit runs this file as __main__
    main()
