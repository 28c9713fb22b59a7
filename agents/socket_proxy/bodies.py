"""What the socket proxy reads or rewrites in JSON bodies.

- Answers: container and service inspections lose their environment values (`NAME=***`), so no
  client of the proxy reads another container's secrets.
- Requests: bodies are parsed strictly and checked field by field. Docker's Go decoder matches
  field names without regard to case (Unicode folding: `"Attach\u017ftdin"` sets AttachStdin), so
  keys are compared case-folded, and keys equal under folding are refused as duplicates;
  a clone or a scale is rebuilt from Docker's own data, so masked values never round-trip and a
  client cannot smuggle more than "another copy" or "another replica count" through it.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from shared.containers import LABEL_CLONE_OF
from shared.errors import DockerError, RequestRefused

__all__ = [
    "CLONE_OF",
    "MASK",
    "MAX_REPLICAS",
    "Engine",
    "Prepare",
    "check_exec_create",
    "check_exec_start",
    "load_object",
    "mask_container",
    "mask_env",
    "mask_service",
    "prepare_clone",
    "prepare_scale",
]

MASK = "***"
CLONE_OF = LABEL_CLONE_OF  # set by DockerGateway.clone: the container a clone copies
MAX_REPLICAS = 100
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


class Engine(Protocol):
    """Docker as the proxy itself asks it (never on a client's behalf)."""

    async def get_json(self, path: str) -> tuple[int, Any]: ...


Prepare = Callable[[Engine, Mapping[str, str], dict[str, Any]], Awaitable[dict[str, Any]]]


def _refuse(rule: str, reason: str) -> RequestRefused:
    return RequestRefused(403, rule, reason)


# ---------------------------------------------------------------- answers


def mask_env(env: Any) -> Any:
    """`NAME=value` -> `NAME=***`; names stay (the Analyzer reads them), values never leave."""
    if not isinstance(env, list):
        return env
    out = []
    for entry in env:
        if isinstance(entry, str):
            name, sep, _ = entry.partition("=")
            out.append(f"{name}={MASK}" if sep else entry)
        else:
            out.append(MASK)
    return out


def mask_container(doc: Any) -> Any:
    """A container inspection with `Config.Env` masked."""
    config = doc.get("Config") if isinstance(doc, dict) else None
    if isinstance(config, dict) and "Env" in config:
        config["Env"] = mask_env(config["Env"])
    return doc


def mask_service(doc: Any) -> Any:
    """A swarm service inspection with the container spec's `Env` masked (current and previous
    spec)."""
    if not isinstance(doc, dict):
        return doc
    for key in ("Spec", "PreviousSpec"):
        spec = doc.get(key)
        task = spec.get("TaskTemplate") if isinstance(spec, dict) else None
        container = task.get("ContainerSpec") if isinstance(task, dict) else None
        if isinstance(container, dict) and "Env" in container:
            container["Env"] = mask_env(container["Env"])
    return doc


# ---------------------------------------------------------------- requests


def load_object(raw: bytes, rule: str) -> dict[str, Any]:
    """A request body as a JSON object; duplicate keys (compared as Docker compares them,
    without case) are refused so the proxy and Docker cannot read different values."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: set[str] = set()
        for key, _ in items:
            if key.casefold() in seen:
                raise RequestRefused(400, rule, f"duplicate JSON key {key!r}")
            seen.add(key.casefold())
        return dict(items)

    try:
        value = json.loads(raw, object_pairs_hook=pairs)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise RequestRefused(400, rule, f"malformed JSON body: {str(exc)[:80]}") from exc
    if not isinstance(value, dict):
        raise RequestRefused(400, rule, "the body must be a JSON object")
    return value


def _key(obj: Mapping[str, Any], name: str) -> str | None:
    folded = name.casefold()
    return next((k for k in obj if k.casefold() == folded), None)


def _get(obj: Any, name: str) -> Any:
    if not isinstance(obj, Mapping):
        return None
    key = _key(obj, name)
    return obj[key] if key is not None else None


def _only(body: Mapping[str, Any], allowed: set[str], rule: str) -> None:
    unknown = sorted(k for k in body if k.casefold() not in allowed)
    if unknown:
        raise _refuse(rule, f"field(s) {', '.join(unknown)} not allowed")


_EXEC_CREATE = {
    "attachstdin",
    "attachstdout",
    "attachstderr",
    "detachkeys",
    "tty",
    "env",
    "cmd",
    "privileged",
    "user",
    "workingdir",
    "consolesize",
    "container",  # the Docker SDK sends it; Docker ignores it
}


def check_exec_create(body: dict[str, Any], rule: str) -> None:
    _only(body, _EXEC_CREATE, rule)
    if _get(body, "Privileged") not in (None, False):
        raise _refuse(rule, "a privileged exec is never allowed")
    # The proxy never passes client bytes on after the request, so stdin could only hang.
    if _get(body, "AttachStdin") not in (None, False):
        raise _refuse(rule, "stdin is never attached")
    cmd = _get(body, "Cmd")
    if not isinstance(cmd, list) or not cmd or not all(isinstance(a, str) for a in cmd):
        raise _refuse(rule, "Cmd must be a non-empty list of strings")


def check_exec_start(body: dict[str, Any], rule: str) -> None:
    _only(body, {"detach", "tty", "consolesize"}, rule)


def _norm(value: Any) -> Any:
    """Absent, null, false, "" and empty collections are the same setting to Docker (inside
    objects too: the SDK writes out unset fields as null)."""
    if isinstance(value, dict):
        value = {k: v for k, v in ((k, _norm(v)) for k, v in value.items()) if v is not None}
    return None if value in (None, False, "", [], {}) else value


# What a clone may not gain (nor lose) relative to its source: every HostConfig field that
# reaches the host, another container's namespaces or volumes, sends its output elsewhere, or
# widens its attack surface.
PRIVILEGED_HOST_FIELDS = (
    "Binds",
    "Mounts",
    "VolumesFrom",
    "VolumeDriver",
    "LogConfig",
    "Privileged",
    "CapAdd",
    "Devices",
    "DeviceRequests",
    "DeviceCgroupRules",
    "SecurityOpt",
    "MaskedPaths",
    "ReadonlyPaths",
    "Runtime",
    "NetworkMode",
    "PidMode",
    "IpcMode",
    "UTSMode",
    "UsernsMode",
    "CgroupnsMode",
    "Cgroup",
    "CgroupParent",
    "GroupAdd",
    "Sysctls",
    "PortBindings",
    "PublishAllPorts",
    "Links",
)
# What makes the clone run the same program as its source.
_PROGRAM_FIELDS = ("Image", "Cmd", "Entrypoint", "User", "WorkingDir", "Healthcheck")


def _fill_env(sent: Any, real: list[str], rule: str) -> list[str]:
    if _norm(sent) is None and not real:
        return []
    if not isinstance(sent, list) or len(sent) != len(real):
        raise _refuse(rule, "Env must list exactly the source's variables")
    out = []
    for mine, theirs in zip(sent, real, strict=True):
        if not isinstance(mine, str):
            raise _refuse(rule, "Env entries must be strings")
        name, _, value = mine.partition("=")
        if mine == theirs:
            out.append(theirs)
        elif value == MASK and theirs.partition("=")[0] == name:
            out.append(theirs)  # the value the client was never shown
        else:
            raise _refuse(rule, f"Env {name} differs from the source's")
    return out


async def prepare_clone(
    engine: Engine, params: Mapping[str, str], body: dict[str, Any]
) -> dict[str, Any]:
    """`POST /containers/create` under `--allow-scale`: only another copy of an existing
    container (named by the `hemostat.clone-of` label). The proxy inspects the source itself,
    requires the same program (image, command, entrypoint, user, working directory,
    healthcheck), the same environment names and the same privileges, and puts back the
    environment values it masked when the client inspected the source."""
    rule = "containers.create"
    labels = _get(body, "Labels")
    source = labels.get(CLONE_OF) if isinstance(labels, dict) else None
    if not isinstance(source, str) or not _ID.fullmatch(source):
        raise _refuse(rule, f"only clones: the {CLONE_OF} label must name the source container")
    status, src = await engine.get_json(f"/containers/{source}/json")
    if status == 404:
        raise _refuse(rule, f"source container {source[:12]} not found")
    if status != 200 or not isinstance(src, dict):
        raise DockerError(f"inspect {source[:12]} for a clone: HTTP {status}")
    config = src.get("Config") or {}
    for field in _PROGRAM_FIELDS:
        if _norm(_get(body, field)) != _norm(config.get(field)):
            raise _refuse(rule, f"{field} differs from the source's")
    host, src_host = _get(body, "HostConfig"), src.get("HostConfig") or {}
    if host is not None and not isinstance(host, dict):
        raise _refuse(rule, "HostConfig must be an object")
    for field in PRIVILEGED_HOST_FIELDS:
        if _norm(_get(host, field)) != _norm(src_host.get(field)):
            raise _refuse(rule, f"HostConfig.{field} differs from the source's")
    endpoints = _get(_get(body, "NetworkingConfig"), "EndpointsConfig") or {}
    networks = (src.get("NetworkSettings") or {}).get("Networks") or {}
    if not isinstance(endpoints, dict) or not set(endpoints) <= set(networks):
        raise _refuse(rule, "a clone joins only networks its source is on")
    env_key = _key(body, "Env") or "Env"
    body[env_key] = _fill_env(body.get(env_key), list(config.get("Env") or []), rule)
    return body


async def prepare_scale(
    engine: Engine, params: Mapping[str, str], body: dict[str, Any]
) -> dict[str, Any]:
    """`POST /services/{id}/update` under `--allow-scale`: only the replica count changes. The
    body's `Mode.Replicated.Replicas` is read; everything else is the service's current spec as
    Docker holds it (never the masked copy a client saw)."""
    rule = "services.update"
    replicas = _get(_get(_get(body, "Mode"), "Replicated"), "Replicas")
    if isinstance(replicas, bool) or not isinstance(replicas, int):
        raise _refuse(rule, "Mode.Replicated.Replicas must be an integer")
    if not 0 <= replicas <= MAX_REPLICAS:
        raise _refuse(rule, f"replicas must be within 0..{MAX_REPLICAS}")
    status, service = await engine.get_json(f"/services/{params['id']}")
    if status == 404:
        raise _refuse(rule, f"service {params['id'][:24]} not found")
    if status != 200 or not isinstance(service, dict):
        raise DockerError(f"inspect service {params['id'][:24]}: HTTP {status}")
    spec = copy.deepcopy(service.get("Spec") or {})
    if "Replicated" not in (spec.get("Mode") or {}):
        raise _refuse(rule, "only replicated services scale")
    spec["Mode"] = {"Replicated": {"Replicas": replicas}}
    return spec
