"""LLM clients (Anthropic, OpenAI and any OpenAI-compatible server) and the strict parsing of
their answers. Every way an answer can be unusable becomes an `LLMError` with a short reason; the
Analyzer then keeps the rules' decision and records the reason."""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agents.analyzer.prompt import Prompt
from shared.errors import LLMError
from shared.model import describe_validation_error
from shared.runbooks import Runbook
from shared.settings import AnalyzerSettings, LLMProvider

__all__ = [
    "DEFAULT_MODELS",
    "LLMClient",
    "LLMResult",
    "LLMVerdict",
    "ask",
    "build_client",
    "describe_client",
    "parse_verdict",
    "resolve_provider",
]

DEFAULT_MODELS = {LLMProvider.ANTHROPIC: "claude-sonnet-4-6", LLMProvider.OPENAI: "gpt-5.4-mini"}
# Keys an answer may not carry: the runbook alone fixes what runs and with which arguments.
_FORBIDDEN_KEYS = {"argv", "command", "cmd", "params", "args", "exec", "script"}


class LLMVerdict(BaseModel):
    """The only answer shape we accept; strict types (a confidence as a string is refused)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    root_cause: str = Field(min_length=1, max_length=2000)
    action_id: str | None
    confidence: float = Field(strict=True, ge=0.0, le=1.0)
    false_alarm: bool = Field(strict=True)
    explanation: str = Field(default="", max_length=4000)


class LLMClient(Protocol):
    provider: str
    model: str

    async def complete(self, prompt: Prompt) -> str: ...


def resolve_provider(settings: AnalyzerSettings) -> LLMProvider:
    if settings.llm_provider is not LLMProvider.AUTO:
        return settings.llm_provider
    if settings.anthropic_api_key:
        return LLMProvider.ANTHROPIC
    if settings.openai_api_key or settings.openai_base_url:
        return LLMProvider.OPENAI
    return LLMProvider.NONE


def build_client(settings: AnalyzerSettings) -> LLMClient | None:
    """The configured client, or None for rules only (no provider, or no credentials)."""
    provider = resolve_provider(settings)
    if provider is LLMProvider.NONE:
        return None
    model = settings.llm_model or DEFAULT_MODELS[provider]
    # The SDKs are imported only when one is configured: a rules-only Analyzer stays small.
    from agents.analyzer.providers import AnthropicClient, OpenAIClient

    if provider is LLMProvider.ANTHROPIC:
        if not settings.anthropic_api_key:
            return None
        return AnthropicClient(settings, model)
    if not (settings.openai_api_key or settings.openai_base_url):
        return None
    return OpenAIClient(settings, model)


_FENCED = re.compile(r"```(?:json)?\s*(\{.*\})\s*```", re.DOTALL)


def parse_verdict(text: str, runbook: Runbook) -> LLMVerdict:
    """Strictly parse an answer; the chosen action must be one the runbook allows."""
    if not text.strip():
        raise LLMError("empty_response", "the model returned no text")
    fenced = _FENCED.search(text)
    candidate = fenced.group(1) if fenced else text.strip()
    if not candidate.startswith("{"):
        start, end = candidate.find("{"), candidate.rfind("}")
        if start < 0 or end <= start:
            raise LLMError("invalid_json", f"no JSON object in the answer: {text[:120]!r}")
        candidate = candidate[start : end + 1]
    try:
        data = json.loads(candidate)
    except json.JSONDecodeError as exc:
        raise LLMError("invalid_json", f"{exc.msg} at char {exc.pos}") from exc
    if not isinstance(data, dict):
        raise LLMError("invalid_json", "the answer is not a JSON object")
    smuggled = _FORBIDDEN_KEYS & set(data)
    if smuggled:
        raise LLMError(
            "argv_not_allowed",
            f"the answer carries {sorted(smuggled)}; commands and arguments come from the "
            "runbook only",
        )
    try:
        verdict = LLMVerdict.model_validate(data)
    except ValidationError as exc:
        bad_confidence = any(
            e["loc"][:1] == ("confidence",) and e["type"] != "missing" for e in exc.errors()
        )
        reason = "confidence_invalid" if bad_confidence else "schema_mismatch"
        raise LLMError(reason, describe_validation_error(exc)) from exc
    if verdict.action_id is not None and runbook.action(verdict.action_id) is None:
        allowed = [a.id for a in runbook.actions]
        raise LLMError(
            "action_not_allowed",
            f"{verdict.action_id!r} is not one of the runbook's actions {allowed}",
        )
    return verdict


@dataclass(frozen=True)
class LLMResult:
    verdict: LLMVerdict
    latency_ms: float
    raw: str


async def ask(client: LLMClient, prompt: Prompt, runbook: Runbook, budget_s: float) -> LLMResult:
    """One analysis within `budget_s` (SDK retries included)."""
    started = time.monotonic()
    try:
        text = await asyncio.wait_for(client.complete(prompt), timeout=budget_s)
    except TimeoutError as exc:
        raise LLMError("timeout", f"no answer within {budget_s:.0f}s") from exc
    verdict = parse_verdict(text, runbook)
    return LLMResult(verdict, (time.monotonic() - started) * 1000, text)


def describe_client(client: Any) -> str:
    return f"{client.provider}:{client.model}" if client is not None else "none"
