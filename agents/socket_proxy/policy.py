"""The socket proxy's policy: which Docker API calls pass, in which mode, with which query
parameters and bodies. Pure: no I/O, so every decision can be tested without a socket.

A request passes when a rule allows its method and path (after an optional
`/v1.NN` prefix at or above 1.24), every query parameter is one the rule names, appears once
and has an allowed value, and the rule's required parameters are present. Anything else is a
`RequestRefused(403, rule, reason)` naming the rule (or check) that refused it."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any
from urllib.parse import parse_qsl

from agents.socket_proxy.bodies import (
    Prepare,
    check_exec_create,
    check_exec_start,
    mask_container,
    mask_service,
    prepare_clone,
    prepare_scale,
)
from shared.errors import ConfigError, RequestRefused

__all__ = [
    "MIN_API_VERSION",
    "Allowed",
    "Body",
    "Mode",
    "Param",
    "Policy",
    "Rule",
    "Scrub",
    "build_policy",
]

# Before API 1.24, `POST /containers/{id}/start` took a HostConfig (binds, privileged, ...):
# any older version prefix would turn "start" into "reconfigure and start".
MIN_API_VERSION = (1, 24)

_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}"  # a container name or id, never '.' or '..'
_ID = rf"(?P<id>{_NAME})"
_VERSIONED = re.compile(r"/v(?P<version>[0-9.][^/]*)(?P<rest>/.*)")
_VERSION = re.compile(r"(?P<major>[0-9]{1,3})\.(?P<minor>[0-9]{1,3})")
_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


class Mode(StrEnum):
    READ = "read"  # Monitor, Analyzer
    ACT = "act"  # Responder


class Body(Enum):
    NONE = "none"  # no body, or an empty one
    JSON = "json"  # a JSON object, parsed, checked and re-serialised


def _values(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


# Exact spellings: each is false (or true) both to Docker's BoolValue and to Go's ParseBool.
FALSE = _values(r"0|false|False")
BOOL = _values(r"0|1|false|true|False|True")
SECONDS = _values(r"[0-9]{1,5}")
TIME = _values(r"[0-9A-Za-z:.+-]{1,40}")  # unix seconds[.nanos], RFC 3339 or a duration
ANY = _values(r"[\s\S]{0,8192}")  # filters: they only narrow what an allowed call returns


@dataclass(frozen=True)
class Param:
    values: re.Pattern[str]
    hint: str = ""  # said when the value is refused


class Scrub(Enum):
    """Whose environment values are scrubbed out of an answer, found from the path's id."""

    NONE = "none"
    CONTAINER = "container"  # the id is the container's
    EXEC = "exec"  # the id is an exec's: its container is asked of Docker


@dataclass(frozen=True)
class Rule:
    name: str
    methods: frozenset[str]
    path: re.Pattern[str]  # full match on the path without its version prefix
    query: Mapping[str, Param] = field(default_factory=dict)
    required: frozenset[str] = frozenset()
    body: Body = Body.NONE
    check: Callable[[dict[str, Any], str], None] | None = None  # refuses by raising
    prepare: Prepare | None = None  # rebuilds the body from Docker's own data
    answer: Callable[[Any], Any] | None = None  # rewrites a 2xx JSON answer (masking)
    # The answer is a container's output (a log, an exec's): its env values are scrubbed out.
    scrub: Scrub = Scrub.NONE


def _rule(
    name: str, methods: str, path: str, query: Mapping[str, Param] | None = None, **kw: Any
) -> Rule:
    return Rule(name, frozenset(methods.split()), re.compile(path), query or {}, **kw)


@dataclass(frozen=True)
class Allowed:
    rule: Rule
    params: Mapping[str, str]  # from the path, e.g. {"id": ...}
    target: str  # what is forwarded: the path and query exactly as checked


@dataclass(frozen=True)
class Policy:
    mode: Mode
    rules: tuple[Rule, ...]
    flags: frozenset[str] = frozenset()

    def describe(self) -> list[str]:
        return [f"{'|'.join(sorted(r.methods))} {r.path.pattern} ({r.name})" for r in self.rules]

    def decide(self, method: str, path: str, query: str) -> Allowed:
        bare = _strip_version(path)
        for rule in self.rules:
            match = rule.path.fullmatch(bare)
            if match and method in rule.methods:
                _check_query(rule, query)
                target = f"{path}?{query}" if query else path
                return Allowed(rule, match.groupdict(), target)
        flags = "".join(f" --{f}" for f in sorted(self.flags))
        raise RequestRefused(
            403, "policy", f"{method[:16]} {bare[:80]} is not allowed in mode {self.mode}{flags}"
        )


def _strip_version(path: str) -> str:
    versioned = _VERSIONED.fullmatch(path)
    if not versioned:
        return path
    version = versioned.group("version")
    parsed = _VERSION.fullmatch(version)
    if not parsed:
        raise RequestRefused(403, "api-version", f"malformed API version {version[:16]!r}")
    if (int(parsed.group("major")), int(parsed.group("minor"))) < MIN_API_VERSION:
        floor = ".".join(map(str, MIN_API_VERSION))
        raise RequestRefused(403, "api-version", f"v{version} is below the minimum {floor}")
    return versioned.group("rest")


def _check_query(rule: Rule, query: str) -> None:
    if not query:
        pairs: list[tuple[str, str]] = []
    else:
        # Go's query parser would read these differently (or not at all): no ambiguity.
        if ";" in query:
            raise RequestRefused(403, rule.name, "';' in the query")
        if _ESCAPE.search(query):
            raise RequestRefused(403, rule.name, "malformed percent-escape in the query")
        pairs = parse_qsl(query, keep_blank_values=True, max_num_fields=32)
    seen: set[str] = set()
    for name, value in pairs:
        param = rule.query.get(name)
        if param is None:
            raise RequestRefused(403, rule.name, f"query parameter {name[:40]!r} not allowed")
        if name in seen:  # Docker reads the first, a checker might read the last
            raise RequestRefused(403, rule.name, f"query parameter {name!r} given twice")
        seen.add(name)
        if not param.values.fullmatch(value):
            hint = f": {param.hint}" if param.hint else ""
            raise RequestRefused(403, rule.name, f"{name}={value[:40]!r} not allowed{hint}")
    missing = sorted(rule.required - seen)
    if missing:
        raise RequestRefused(403, rule.name, f"query parameter(s) {', '.join(missing)} required")


def _read_rules() -> list[Rule]:
    return [
        _rule("ping", "GET HEAD", r"/_ping"),
        _rule("version", "GET", r"/version"),
        _rule("info", "GET", r"/info"),
        _rule(
            "containers.list",
            "GET",
            r"/containers/json",
            {
                "all": Param(BOOL),
                "limit": Param(_values(r"-?[0-9]{1,6}")),
                "size": Param(BOOL),
                "trunc_cmd": Param(BOOL),
                "since": Param(_values(_NAME)),
                "before": Param(_values(_NAME)),
                "filters": Param(ANY),
            },
        ),
        _rule(
            "containers.inspect",
            "GET",
            rf"/containers/{_ID}/json",
            {"size": Param(BOOL)},
            answer=mask_container,
        ),
        _rule(
            "containers.logs",
            "GET",
            rf"/containers/{_ID}/logs",
            {
                "stdout": Param(BOOL),
                "stderr": Param(BOOL),
                "timestamps": Param(BOOL),
                "details": Param(BOOL),
                "tail": Param(_values(r"all|[0-9]{1,7}")),
                "since": Param(TIME),
                "until": Param(TIME),
                "follow": Param(FALSE, "logs are read as a bounded tail, never followed"),
            },
            scrub=Scrub.CONTAINER,
        ),
        _rule(
            "containers.stats",
            "GET",
            rf"/containers/{_ID}/stats",
            {"stream": Param(BOOL), "one-shot": Param(BOOL)},
        ),
        _rule(
            "events",
            "GET",
            r"/events",
            {"since": Param(TIME), "until": Param(TIME), "filters": Param(ANY)},
        ),
    ]


def _act_rules(allow_volume_removal: bool) -> list[Rule]:
    stop_wait = {"t": Param(SECONDS)}
    volumes = (
        Param(BOOL)
        if allow_volume_removal
        else Param(FALSE, "removing volumes needs --allow-volume-removal")
    )
    return [
        _rule("containers.restart", "POST", rf"/containers/{_ID}/restart", stop_wait),
        _rule("containers.stop", "POST", rf"/containers/{_ID}/stop", stop_wait),
        # No query and no body: before 1.24 a body here was a HostConfig.
        _rule("containers.start", "POST", rf"/containers/{_ID}/start"),
        _rule(
            "containers.remove",
            "DELETE",
            rf"/containers/{_ID}",
            # The Docker SDK always sends all three; only their false spellings pass.
            {
                "v": volumes,
                "force": Param(FALSE, "a running container is never force-removed"),
                "link": Param(FALSE, "links are never removed"),
            },
        ),
    ]


def _exec_rules() -> list[Rule]:
    return [
        _rule(
            "exec.create",
            "POST",
            rf"/containers/{_ID}/exec",
            body=Body.JSON,
            check=check_exec_create,
        ),
        _rule(
            "exec.start",
            "POST",
            rf"/exec/{_ID}/start",
            body=Body.JSON,
            check=check_exec_start,
            scrub=Scrub.EXEC,
        ),
        _rule("exec.inspect", "GET", rf"/exec/{_ID}/json"),
    ]


def _scale_rules() -> list[Rule]:
    return [
        _rule(
            "containers.create",
            "POST",
            r"/containers/create",
            {"name": Param(_values(r"/?[A-Za-z0-9][A-Za-z0-9_.-]{0,127}"))},
            required=frozenset({"name"}),
            body=Body.JSON,
            prepare=prepare_clone,
        ),
        _rule(
            "services.inspect",
            "GET",
            rf"/services/{_ID}",
            {"insertDefaults": Param(BOOL)},
            answer=mask_service,
        ),
        _rule(
            "services.update",
            "POST",
            rf"/services/{_ID}/update",
            {"version": Param(_values(r"[0-9]{1,20}"))},
            required=frozenset({"version"}),
            body=Body.JSON,
            prepare=prepare_scale,
        ),
    ]


def build_policy(
    mode: Mode | str,
    *,
    allow_exec: bool = False,
    allow_scale: bool = False,
    allow_volume_removal: bool = False,
) -> Policy:
    """`read`: the Monitor's and Analyzer's calls. `act`: those plus the Responder's restart,
    stop, start and remove; exec, scale and volume removal only when asked for by flag."""
    try:
        mode = Mode(mode)
    except ValueError as exc:
        raise ConfigError(f"socket proxy mode must be read or act, not {mode!r}") from exc
    flags = {
        name
        for name, on in (
            ("allow-exec", allow_exec),
            ("allow-scale", allow_scale),
            ("allow-volume-removal", allow_volume_removal),
        )
        if on
    }
    if mode is Mode.READ and flags:
        raise ConfigError(f"--{', --'.join(sorted(flags))} only make sense with --mode act")
    rules = _read_rules()
    if mode is Mode.ACT:
        rules += _act_rules(allow_volume_removal)
        if allow_exec:
            rules += _exec_rules()
        if allow_scale:
            rules += _scale_rules()
    return Policy(mode, tuple(rules), frozenset(flags))
