"""Read-only evidence a runbook asks for, gathered for the LLM and redacted before it is used:
fields of `docker inspect` (environment values always masked), a log tail, PromQL results."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from shared.containers import env_secret_values
from shared.docker_api import DockerGateway
from shared.errors import DockerError
from shared.events import HealthAlertEvent
from shared.log import get_logger
from shared.redaction import Redactor
from shared.runbooks import InspectDiagnostic, LogsDiagnostic, PromQLDiagnostic, Runbook

__all__ = ["DiagnosticsCollector", "pick", "redact_inspect"]

log = get_logger(__name__)


def pick(data: Any, path: str) -> Any:
    """`State.Health.Status` from nested dicts; None when any step is missing."""
    node = data
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def redact_inspect(fields: dict[str, Any], redactor: Redactor) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path, value in fields.items():
        if path.endswith("Env") and isinstance(value, list):
            out[path] = redactor.env(str(v) for v in value)
        else:
            out[path] = redactor.data(value, key=path.rsplit(".", 1)[-1])
    # Whole sub-trees may hold an Env list (e.g. "Config"): mask it wherever it is.
    for value in out.values():
        if isinstance(value, dict) and isinstance(value.get("Env"), list):
            value["Env"] = redactor.env(str(v) for v in value["Env"])
    return out


class DiagnosticsCollector:
    def __init__(
        self,
        docker: DockerGateway | None,
        redactor: Redactor,
        prometheus_url: str | None = None,
        http: httpx.AsyncClient | None = None,
        timeout_s: float = 5.0,
    ) -> None:
        self.docker = docker
        self.redactor = redactor
        self.prometheus_url = prometheus_url.rstrip("/") if prometheus_url else None
        self.http = http
        self.timeout_s = timeout_s

    async def collect(
        self, alert: HealthAlertEvent, runbook: Runbook
    ) -> tuple[dict[str, Any], Redactor]:
        """The evidence, redacted, and the redactor scoped to the container (its environment
        values are masked too) for everything else derived from it, the LLM's answer included."""
        container = alert.subject.container_id or alert.subject.container_name
        out: dict[str, Any] = {}
        redactor = self.redactor
        raw: dict[str, Any] | None = None
        if container and self.docker and runbook.diagnostics:
            try:
                raw = await self.docker.inspect_raw(container)
                env = (raw.get("Config") or {}).get("Env") or []
                redactor = self.redactor.scoped(env_secret_values(env))
            except DockerError as exc:
                out["error:inspect"] = f"could not inspect: {exc}"
        for diagnostic in runbook.diagnostics:
            try:
                if isinstance(diagnostic, InspectDiagnostic) and raw is not None:
                    picked = {f: pick(raw, f) for f in diagnostic.fields}
                    out["inspect"] = redact_inspect(picked, redactor)
                elif isinstance(diagnostic, LogsDiagnostic) and container and self.docker:
                    lines = await self.docker.logs_tail(container, diagnostic.tail)
                    out["logs"] = "\n".join(redactor.lines(lines, max_len=500))
                elif isinstance(diagnostic, PromQLDiagnostic) and self.prometheus_url and self.http:
                    out[f"promql:{diagnostic.name}"] = await self._promql(alert, diagnostic)
            except (DockerError, httpx.HTTPError, ValueError, TimeoutError) as exc:
                out[f"error:{diagnostic.type}"] = f"could not collect: {exc}"
                log.info("analyzer.diagnostic_failed", type=diagnostic.type, error=str(exc))
        return out, redactor

    async def _promql(self, alert: HealthAlertEvent, diagnostic: PromQLDiagnostic) -> Any:
        assert self.http is not None
        subject = alert.subject
        query = (
            diagnostic.query.replace("{container}", subject.container_name or "")
            .replace("{service}", subject.service or "")
            .replace("{host}", subject.host)
        )
        response = await asyncio.wait_for(
            self.http.get(f"{self.prometheus_url}/api/v1/query", params={"query": query}),
            timeout=self.timeout_s,
        )
        response.raise_for_status()
        data = response.json().get("data", {})
        return self.redactor.data(data.get("result", [])[:20])
