"""Masking secrets before anything leaves the process: logs, prompts, notifications, metrics
labels, the dashboard.

Two nets, because neither alone is enough:
- by **key name**: a value stored under a key that names a secret (password, token, api_key, ...)
  is masked whatever it looks like;
- by **value pattern**: well-known token shapes, `KEY=value` assignments with a secret-looking key,
  credentials inside URLs and bearer tokens are masked wherever they appear in free text.
Values the operator configured as secrets (and test canaries) are registered literally.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

MASK = "***"

_SECRET_WORD = (
    r"pass(?:word|wd|phrase)?|pwd|secret|token|api[_-]?key|apikey|access[_-]?key|private[_-]?key"
    r"|credentials?|auth(?:orization)?|cookie|session[_-]?id|signature|dsn|webhook(?:[_-]?url)?"
    r"|connection[_-]?string|conn[_-]?str"
)
# A key names a secret when one of its word parts is a secret word (`DB_PASSWORD`, `authToken`).
_SECRET_KEY = re.compile(rf"(?i)(?:^|[^a-z])(?:{_SECRET_WORD})(?:$|[^a-z])|(?:{_SECRET_WORD})$")

# `KEY=value`, `key: value`, `"key": "value"` where KEY names a secret.
_ASSIGNMENT = re.compile(
    rf"""(?ix)
    (?P<key>[\w.-]*?(?:{_SECRET_WORD})(?![a-z])[\w.-]*)
    (?P<sep>["']?\s*[=:]\s*["']?)
    (?P<value>(?:bearer\s+|basic\s+)?[^\s"',;&]+)
    """
)
_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^\s:/@]*):([^\s@/]+)@")
_BEARER = re.compile(r"(?i)\b(bearer|basic|token)\s+([a-z0-9._~+/=-]{8,})")
_TOKEN_SHAPES = [
    re.compile(p)
    for p in (
        r"\bsk-(?:ant-|proj-)?[A-Za-z0-9_-]{16,}",  # OpenAI / Anthropic keys
        r"\bxox[abposr]-[A-Za-z0-9-]{10,}",  # Slack tokens
        r"\bgh[pousr]_[A-Za-z0-9]{20,}|\bgithub_pat_[A-Za-z0-9_]{20,}",  # GitHub
        r"\bglpat-[A-Za-z0-9_-]{20,}",  # GitLab
        r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",  # AWS access key id
        r"\bAIza[0-9A-Za-z_-]{35}\b",  # Google API key
        r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",  # JWT
        r"hooks\.slack\.com/services/[A-Za-z0-9/_-]+",  # Slack webhook path
        r"discord(?:app)?\.com/api/webhooks/\d+/[A-Za-z0-9_-]+",  # Discord webhook path
        r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----",
    )
]
_MIN_LITERAL = 6  # shorter registered "secrets" would mask ordinary words


def is_secret_key(key: str) -> bool:
    return bool(_SECRET_KEY.search(key))


class Redactor:
    """Masks secrets in text and in nested data. Immutable apart from `register`."""

    def __init__(self, literals: Iterable[str] = ()) -> None:
        self._literals: set[str] = set()
        self._literal_re: re.Pattern[str] | None = None
        self.register(*literals)

    def register(self, *values: str) -> None:
        """Mask these exact values wherever they appear (configured secrets, test canaries)."""
        added = {v for v in values if v and len(v) >= _MIN_LITERAL}
        if added - self._literals:
            self._literals |= added
            # Longest first so a secret that contains another is masked whole.
            ordered = sorted(self._literals, key=len, reverse=True)
            self._literal_re = re.compile("|".join(re.escape(v) for v in ordered))

    def scoped(self, values: Iterable[str]) -> Redactor:
        """A redactor that also masks `values` (e.g. one container's environment values)."""
        extra = frozenset(v for v in values if v and len(v) >= _MIN_LITERAL)
        if not extra or extra <= self._literals:
            return self
        return Redactor(self._literals | extra)

    def text(self, value: str) -> str:
        if not value:
            return value
        if self._literal_re is not None:
            value = self._literal_re.sub(MASK, value)
        for shape in _TOKEN_SHAPES:
            value = shape.sub(MASK, value)
        value = _URL_CREDENTIALS.sub(rf"\1\2:{MASK}@", value)
        value = _BEARER.sub(rf"\1 {MASK}", value)
        return _ASSIGNMENT.sub(_mask_assignment, value)

    def data(self, value: Any, *, key: str | None = None) -> Any:
        """Redact nested dicts/lists/strings; values under secret-named keys are masked whole."""
        if key is not None and is_secret_key(key) and value not in (None, "", [], {}):
            if isinstance(value, Mapping | list | tuple):
                return self.data(value)  # a secret-named container: keep shape, mask leaves
            return MASK
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {k: self.data(v, key=str(k)) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self.data(v) for v in value)
        return value

    def env(self, entries: Iterable[str]) -> list[str]:
        """Container environment (`K=V`): every value is masked; any of them may be a secret."""
        return [f"{e.split('=', 1)[0]}={MASK}" if "=" in e else e for e in entries]

    def lines(self, lines: Iterable[str]) -> list[str]:
        return [self.text(line) for line in lines]


def _mask_assignment(match: re.Match[str]) -> str:
    value = match.group("value")
    if value == MASK or value.endswith(MASK):
        return match.group(0)
    return f"{match.group('key')}{match.group('sep')}{MASK}"
