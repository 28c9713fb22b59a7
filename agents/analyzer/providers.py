"""The provider clients: the Anthropic and OpenAI SDKs (and any OpenAI-compatible server), each
mapping every SDK failure to an `LLMError` with a short reason. Imported only when configured."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import ModuleType

import anthropic
import openai

from agents.analyzer.prompt import Prompt
from shared.errors import LLMError
from shared.settings import AnalyzerSettings

__all__ = ["AnthropicClient", "OpenAIClient"]


class AnthropicClient:
    provider = "anthropic"

    def __init__(self, settings: AnalyzerSettings, model: str) -> None:
        key = settings.anthropic_api_key
        self.model = model
        self.max_tokens = settings.llm_max_tokens
        self.client = anthropic.AsyncAnthropic(
            api_key=key.get_secret_value() if key else None,
            base_url=settings.anthropic_base_url,
            timeout=settings.llm_timeout_s,
            max_retries=settings.llm_max_retries,
        )

    async def complete(self, prompt: Prompt) -> str:
        with _sdk_errors(anthropic, anthropic.AnthropicError):
            message = await self.client.messages.create(
                model=self.model,
                max_tokens=self.max_tokens,
                system=prompt.system,
                messages=[{"role": "user", "content": prompt.user}],
            )
        texts = [b.text for b in message.content if isinstance(b, anthropic.types.TextBlock)]
        return "".join(texts)

    async def aclose(self) -> None:
        await self.client.close()


class OpenAIClient:
    provider = "openai"

    def __init__(self, settings: AnalyzerSettings, model: str) -> None:
        key = settings.openai_api_key
        self.model = model
        self.max_tokens = settings.llm_max_tokens
        # OpenAI's own API wants max_completion_tokens (newer models refuse max_tokens);
        # OpenAI-compatible servers (Ollama, vLLM) know max_tokens.
        self.token_limit_field = (
            "max_tokens" if settings.openai_base_url else "max_completion_tokens"
        )
        self.client = openai.AsyncOpenAI(
            # Local OpenAI-compatible servers (Ollama, vLLM) take any key.
            api_key=key.get_secret_value() if key else "not-needed",
            base_url=settings.openai_base_url,
            timeout=settings.llm_timeout_s,
            max_retries=settings.llm_max_retries,
        )

    async def complete(self, prompt: Prompt) -> str:
        with _sdk_errors(openai, openai.OpenAIError):
            completion = await self.client.chat.completions.create(
                model=self.model,
                response_format={"type": "json_object"},
                extra_body={self.token_limit_field: self.max_tokens},
                messages=[
                    {"role": "system", "content": prompt.system},
                    {"role": "user", "content": prompt.user},
                ],
            )
        if not completion.choices:
            raise LLMError("empty_response", "no choices")
        return completion.choices[0].message.content or ""

    async def aclose(self) -> None:
        await self.client.close()


@contextlib.contextmanager
def _sdk_errors(sdk: ModuleType, base: type[Exception]) -> Iterator[None]:
    """Both SDKs come from one generator and share the error classes' names; map them alike.
    (The SDKs have already retried 429/5xx `max_retries` times when these arrive.)"""
    try:
        yield
    except sdk.APITimeoutError as exc:  # a subclass of APIConnectionError: checked first
        raise LLMError("timeout", str(exc)) from exc
    except sdk.RateLimitError as exc:
        raise LLMError("rate_limited", f"429 after retries: {exc.message}") from exc
    except sdk.APIStatusError as exc:
        raise LLMError(_status_reason(exc.status_code), exc.message) from exc
    except sdk.APIConnectionError as exc:
        raise LLMError("unreachable", str(exc)) from exc
    except base as exc:
        raise LLMError("client_error", str(exc)) from exc


def _status_reason(status: int) -> str:
    return "server_error" if status >= 500 else f"http_{status}"
