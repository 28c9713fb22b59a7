"""HemoStat dashboard: `streamlit run dashboard/app.py` (configured by the agents' settings).

Layout only: every number comes from `dashboard.queries` (proposals from `shared.approvals`), read
inside the auto-refreshing fragment so that everything visible is re-read from Redis on each
refresh; `dashboard.views` says how it reads. Every string shown passes the redactor: tables
through `views.safe`, text and the options of pickers through `redactor.text`."""

from __future__ import annotations

import time
from typing import Any

import pandas as pd
import streamlit as st
from redis import Redis
from redis.exceptions import RedisError

from dashboard import auth, queries, views
from dashboard.rows import Sample, Stage
from shared.approvals import ProposalState, decide_sync, read_recent
from shared.errors import ApprovalError, HemoStatError, NotReplicated
from shared.events import Decision
from shared.hosts import HostState
from shared.redaction import Redactor
from shared.redis_client import client_key, connect_sync, describe
from shared.settings import Settings, load_settings

__all__ = [
    "PAGES",
    "PAGE_FUNCS",
    "STAGE_ICON",
    "agents_page",
    "approvals_page",
    "audit_page",
    "containers_page",
    "hosts_page",
    "incidents_page",
    "main",
    "overview_page",
]

PAGES = ["Overview", "Containers", "Incidents", "Approvals", "Audit", "Hosts", "Agents"]
STAGE_ICON = {
    Stage.ALERT: "🚨",
    Stage.DECISION: "🧠",
    Stage.APPROVAL: "✋",
    Stage.REMEDIATION: "🛠️",
    Stage.ESCALATION: "📣",
    Stage.NOTIFICATION: "✉️",
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
        bad = queries.malformed()
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


def _table(rows: views.Table, redactor: Redactor, key: str) -> None:
    st.dataframe(
        pd.DataFrame(views.safe(redactor, rows)), hide_index=True, width="stretch", key=key
    )


# ---------------------------------------------------------------- pages


def overview_page(redis: Redis, settings: Settings, redactor: Redactor) -> None:
    st.header("Overview")
    o = queries.overview(redis, time.time())
    if queries.responder_dry_run(redis):
        st.warning("DRY-RUN: the Responder evaluates and records everything and changes nothing.")
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
    outcomes = views.outcome_table(queries.outcomes_over_time(redis, time.time()))
    st.subheader("Remediation outcomes per hour")
    if outcomes:
        st.bar_chart(pd.DataFrame(outcomes).set_index("hour").fillna(0))
    else:
        st.caption("No remediation in the last 24 hours.")


def containers_page(redis: Redis, settings: Settings, redactor: Redactor) -> None:
    st.header("Containers")
    rows = queries.containers(redis, time.time())
    if not rows:
        st.info("No container seen yet — the Monitor writes a snapshot of each one every poll.")
        return
    cols = st.columns(4)
    text = cols[0].text_input("Filter by name", key="container_filter")
    on = _host_filter(cols[1], rows, redactor, "container_hosts")
    states = sorted({r.state for r in rows})
    chosen = cols[2].multiselect(
        "Status", states, default=states, key="container_status", format_func=redactor.text
    )
    healths = sorted({views.or_dash(r.health) for r in rows})
    wanted = cols[3].multiselect(
        "Health", healths, default=healths, key="container_health", format_func=redactor.text
    )
    shown = [
        r
        for r in views.on_hosts(rows, on)
        if text.lower() in r.name.lower()
        and r.state in chosen
        and views.or_dash(r.health) in wanted
    ]
    st.caption(f"{len(shown)} of {len(rows)} containers (click a column header to sort)")
    _table(views.container_table(shown), redactor, "containers_table")
    st.subheader("CPU and memory over time")
    ids = {r.name: r.container_id for r in rows}
    busiest = sorted(rows, key=lambda r: -(r.cpu_percent or 0))[:5]
    pick = st.multiselect(
        "Containers",
        sorted(ids),
        default=[r.name for r in busiest],
        key="chart_containers",
        format_func=redactor.text,
    )
    series = queries.samples(redis, [ids[n] for n in pick])
    for metric, label in (("cpu", "CPU %"), ("mem", "Memory %")):
        frame = _series_frame(series, {ids[n]: redactor.text(n) for n in pick}, metric)
        if frame is not None:
            st.caption(label)
            st.line_chart(frame)


def _host_filter(where: Any, rows: list[Any], redactor: Redactor, key: str) -> list[str]:
    """A host multiselect (empty: every host)."""
    names = views.host_options(rows)
    return list(
        where.multiselect(
            "Host",
            names,
            default=[],
            key=key,
            placeholder="all hosts",
            format_func=redactor.text,
        )
    )


def _series_frame(
    series: dict[str, list[Sample]], names: dict[str, str], metric: str
) -> pd.DataFrame | None:
    frames = []
    for container_id, samples in series.items():
        values = ((s.t, s.cpu if metric == "cpu" else s.mem) for s in samples)
        points = [(pd.to_datetime(t, unit="s"), v) for t, v in values if v is not None]
        if points:
            frame = pd.DataFrame(points, columns=["time", names[container_id]]).set_index("time")
            frames.append(frame)
    # Containers sampled at different times (other hosts) have different indexes: align them.
    return pd.concat(frames, axis=1, sort=True).sort_index() if frames else None


def incidents_page(redis: Redis, settings: Settings, redactor: Redactor) -> None:
    st.header("Incidents")
    found = queries.incidents(redis)
    if found:
        found = views.on_hosts(found, _host_filter(st, found, redactor, "incident_hosts"))
    if not found:
        st.info("No incident yet. Each alert the Monitor raises opens or joins one.")
    else:
        _table(views.incident_table(found), redactor, "incidents_table")
        by_id = {i.id: i for i in found}
        ids = [i.id for i in found]
        wanted = st.query_params.get("incident")
        index = ids.index(wanted) if wanted in ids else 0
        chosen = st.selectbox(
            "Timeline of",
            ids,
            index=index,
            key="incident_pick",
            format_func=lambda i: redactor.text(views.incident_label(by_id[i])),
        )
        st.subheader(f"Timeline of {chosen}")
        for entry in queries.incident_timeline(redis, chosen):
            told = views.timeline_text(entry)
            with st.container(border=True):
                st.markdown(
                    f"{STAGE_ICON[entry.stage]} **{views.clock(entry.at)} · "
                    f"{entry.stage}** — {redactor.text(told.title)}"
                )
                if told.detail:
                    st.caption(redactor.text(told.detail))
                if told.fields:
                    st.caption(
                        " · ".join(f"{k}: {redactor.text(v)}" for k, v in told.fields.items())
                    )
    st.subheader("Live event feed")
    feed = views.feed_table(queries.event_feed(redis))
    if feed:
        _table(feed, redactor, "feed_table")
    else:
        st.caption("No event on any channel yet.")


def approvals_page(redis: Redis, settings: Settings, redactor: Redactor) -> None:
    st.header("Approvals")
    recent = read_recent(redis)
    pending = [p for p in recent if p.state is ProposalState.PENDING]
    decided = [p for p in recent if p.state is not ProposalState.PENDING]
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
        _table(views.decided_table(decided), redactor, "decided_table")
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
    """The CLI's mechanism: an atomic first-decision-wins CAS, then the decision event."""
    decision = Decision.APPROVED if approve else Decision.DENIED
    try:
        decide_sync(settings, proposal_id, decision, actor, reason, via="dashboard")
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
    since = time.time() - hours * 3600
    rows = queries.audit_log(redis, container=container, event=event, since=since)
    if rows:
        _table(views.audit_table(rows), redactor, "audit_table")
    else:
        st.info("No audit record matches. The Responder records every decision here.")


def hosts_page(redis: Redis, settings: Settings, redactor: Redactor) -> None:
    st.header("Hosts")
    records = queries.hosts(redis)
    if not records:
        st.info(
            "No host has reported yet: each Docker host appears here once its Monitor or "
            "Responder (HEMOSTAT_HOST_NAME) is alive."
        )
        return
    down = [r.host for r in records if r.state is not HostState.WATCHED]
    if down:
        st.warning(f"Not fully watched: {redactor.text(', '.join(down))}")
    _table(views.host_table(records, time.time()), redactor, "hosts_table")
    st.caption("`hemostat hosts forget NAME` retires a host taken out of the fleet.")


def agents_page(redis: Redis, settings: Settings, redactor: Redactor) -> None:
    st.header("Agents")
    health = queries.agent_health(redis)
    if health.beats:
        _table(views.agent_table(health.beats, time.time()), redactor, "agents_table")
    else:
        st.info("No agent has a live heartbeat.")
    st.subheader("Consumer groups")
    if health.groups:
        _table(views.group_table(health.groups), redactor, "groups_table")
    st.subheader("Dead letters")
    if health.dead_letters:
        _table(views.dead_letter_table(health.dead_letters), redactor, "dead_table")
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
