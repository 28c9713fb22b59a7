"""HemoStat's Docker socket proxy (`hemostat socket-proxy`): the only process of the stack that
opens the Docker socket. Agents reach Docker through it over TCP; it passes on the calls its
policy allows and answers everything else with 403 and the rule that refused it.

Policy (paths with or without a `/v1.NN` prefix; versions below 1.24 and malformed ones are
refused, because before 1.24 `start` accepted a HostConfig):

  mode read (Monitor, Analyzer)
    GET|HEAD /_ping                  GET /version, /info
    GET /containers/json             all, limit, size, trunc_cmd, since, before, filters
    GET /containers/{id}/json        size; the answer's Config.Env values become `***`
    GET /containers/{id}/logs        stdout, stderr, timestamps, details, tail, since, until;
                                     follow only false
    GET /containers/{id}/stats       stream, one-shot
    GET /events                      since, until, filters
  mode act (Responder): everything in read, plus
    POST /containers/{id}/restart    t
    POST /containers/{id}/stop       t
    POST /containers/{id}/start      no query, no body
    DELETE /containers/{id}          v, force, link only false (what the Docker SDK sends);
                                     v=true only with --allow-volume-removal; never force
  --allow-exec (act)
    POST /containers/{id}/exec       JSON: Cmd, User, Env, ...; never Privileged, never stdin
    POST /exec/{id}/start            JSON: Detach, Tty
    GET /exec/{id}/json
  --allow-scale (act)
    POST /containers/create          name; only a clone of an existing container (label
                                     hemostat.clone-of): same program, same privileges, its
                                     masked environment values filled in by the proxy
    GET /services/{id}               insertDefaults; the spec's Env values become `***`
    POST /services/{id}/update       version; only the replica count is taken from the body

Requests: HTTP/1.1, one per connection; head at most 16 KiB, body at most 64 KiB (Content-Length
only: chunked request bodies are refused), each query parameter once, JSON bodies without
duplicate keys. Answers stream through as they come, except the inspections that are masked.
"""

from __future__ import annotations

from agents.socket_proxy.policy import Mode, Policy, Rule, build_policy
from agents.socket_proxy.server import ProxyConfig, SocketProxy, check, parse_address

__all__ = [
    "Mode",
    "Policy",
    "ProxyConfig",
    "Rule",
    "SocketProxy",
    "build_policy",
    "check",
    "parse_address",
]
