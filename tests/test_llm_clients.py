"""The real Anthropic and OpenAI SDK clients over real HTTP against a local server that speaks
both APIs: every way an answer can be good or unusable."""

from __future__ import annotations

import json

import pytest

from agents.analyzer.llm import ask, build_client, resolve_provider
from agents.analyzer.prompt import Prompt
from shared.errors import LLMError
from shared.runbooks import Runbooks, load_runbooks
from shared.settings import LLMProvider, Settings
from tests.support.fake_llm import FakeLLM, Reply, verdict

PROMPT = Prompt(system="sys", user="user", inputs_hash="h")


@pytest.fixture(scope="module")
def runbooks() -> Runbooks:
    from pathlib import Path

    return load_runbooks(Path(__file__).parent.parent / "runbooks")


@pytest.fixture
def fake():
    server = FakeLLM().start()
    yield server
    server.stop()


def settings_for(provider: str, fake: FakeLLM, **kw) -> Settings:
    values = {
        "llm_provider": provider,
        "llm_timeout_s": 3.0,
        "llm_max_retries": 2,
        "anthropic_api_key": "sk-ant-test-0000000000000000",
        "anthropic_base_url": fake.url,
        "openai_api_key": "sk-test-00000000000000000000",
        "openai_base_url": f"{fake.url}/v1",
    }
    return Settings(_env_file=None, **(values | kw))  # type: ignore[call-arg]


PROVIDERS = ["anthropic", "openai"]


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_good_answer(provider, fake, runbooks):
    client = build_client(settings_for(provider, fake))
    result = await ask(client, PROMPT, runbooks.get("crash-nonzero-exit"), budget_s=5)
    assert result.verdict.action_id == "restart"
    assert result.verdict.confidence == 0.9
    assert fake.paths == (["/v1/messages"] if provider == "anthropic" else ["/v1/chat/completions"])
    [body] = fake.requests
    if provider == "anthropic":
        assert body["system"] == "sys"
        assert body["messages"] == [{"role": "user", "content": "user"}]
    else:
        assert body["messages"][0] == {"role": "system", "content": "sys"}
        assert body["response_format"] == {"type": "json_object"}
    assert body["model"] == client.model
    await client.aclose()


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize(
    ("replies", "reason", "calls"),
    [
        ([Reply(status=429, retry_after="0")] * 3, "rate_limited", 3),
        ([Reply(status=500)] * 3, "server_error", 3),
        ([Reply(text="I think you should restart it.")], "invalid_json", 1),
        (
            [Reply(text='{"root_cause": "x", "action_id": "restart", "confidence": 0.9,')],
            "invalid_json",
            1,
        ),
        ([Reply(text=verdict(action_id="delete-everything"))], "action_not_allowed", 1),
        ([Reply(text=verdict(confidence="0.9"))], "confidence_invalid", 1),
        ([Reply(text=verdict(confidence=1.7))], "confidence_invalid", 1),
        (
            [Reply(text=verdict(action_id="restart", argv=["rm", "-rf", "/"]))],
            "argv_not_allowed",
            1,
        ),
        ([Reply(text=json.dumps({"root_cause": "x"}))], "schema_mismatch", 1),
        ([Reply(text="")], "empty_response", 1),
        ([Reply(status=401)], "http_401", 1),
    ],
)
async def test_unusable_answers_raise_with_a_reason(
    provider, replies, reason, calls, fake, runbooks
):
    fake.script = list(replies)
    client = build_client(settings_for(provider, fake))
    with pytest.raises(LLMError) as caught:
        await ask(client, PROMPT, runbooks.get("crash-nonzero-exit"), budget_s=10)
    assert caught.value.reason == reason
    assert len(fake.requests) == calls, "429/5xx are retried a bounded number of times"
    await client.aclose()


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_rate_limit_then_success_honours_retry_after(provider, fake, runbooks):
    fake.script = [Reply(status=429, retry_after="1")]
    client = build_client(settings_for(provider, fake))
    import time

    started = time.monotonic()
    result = await ask(client, PROMPT, runbooks.get("crash-nonzero-exit"), budget_s=10)
    assert result.verdict.action_id == "restart"
    assert len(fake.requests) == 2
    assert time.monotonic() - started >= 0.9, "waited for Retry-After"
    await client.aclose()


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_the_sdks_own_timeout_is_reported_as_a_timeout(provider, fake, runbooks):
    # The overall budget is generous: the SDK's per-request timeout is what fires.
    fake.script = [Reply(text=verdict(), delay_s=3)]
    client = build_client(settings_for(provider, fake, llm_timeout_s=0.5, llm_max_retries=0))
    with pytest.raises(LLMError) as caught:
        await ask(client, PROMPT, runbooks.get("crash-nonzero-exit"), budget_s=10)
    assert caught.value.reason == "timeout"
    assert "within" not in str(caught.value), "the SDK's error, not the budget's"
    await client.aclose()


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_an_unreachable_server_is_reported_as_unreachable(provider, fake, runbooks):
    fake.stop()  # nothing listens on its port any more
    client = build_client(settings_for(provider, fake, llm_max_retries=0))
    with pytest.raises(LLMError) as caught:
        await ask(client, PROMPT, runbooks.get("crash-nonzero-exit"), budget_s=10)
    assert caught.value.reason == "unreachable"
    await client.aclose()


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_slow_answer_times_out(provider, fake, runbooks):
    fake.script = [Reply(text=verdict(), delay_s=3)]
    client = build_client(settings_for(provider, fake, llm_max_retries=0))
    with pytest.raises(LLMError) as caught:
        await ask(client, PROMPT, runbooks.get("crash-nonzero-exit"), budget_s=1)
    assert caught.value.reason == "timeout"
    await client.aclose()


def test_a_fenced_answer_is_accepted(runbooks):
    from agents.analyzer.llm import parse_verdict

    text = "Here you go:\n```json\n" + verdict(action_id="notify") + "\n```"
    assert parse_verdict(text, runbooks.get("crash-nonzero-exit")).action_id == "notify"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, LLMProvider.NONE),
        ({"anthropic_api_key": "sk-ant-x"}, LLMProvider.ANTHROPIC),
        ({"openai_api_key": "sk-x"}, LLMProvider.OPENAI),
        ({"openai_base_url": "http://ollama:11434/v1"}, LLMProvider.OPENAI),
        ({"llm_provider": "none", "anthropic_api_key": "sk-ant-x"}, LLMProvider.NONE),
    ],
)
def test_provider_resolution(env, expected):
    settings = Settings(_env_file=None, **env)  # type: ignore[call-arg]
    assert resolve_provider(settings) is expected
    assert (build_client(settings) is None) is (expected is LLMProvider.NONE)


def test_explicit_provider_without_a_key_means_rules_only():
    settings = Settings(_env_file=None, llm_provider="anthropic")  # type: ignore[call-arg]
    assert build_client(settings) is None
