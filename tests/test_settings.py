from __future__ import annotations

import pytest

from shared.errors import ConfigError
from shared.settings import (
    DEFAULT_REDIS_URL,
    SECTIONS,
    AlertSettings,
    AnalyzerSettings,
    LogFormat,
    load_settings,
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    import os

    for key in list(os.environ):
        if key.startswith("HEMOSTAT_") or key in ("REDIS_URL", "DOCKER_HOST"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


def test_defaults():
    s = load_settings()
    assert s.effective_redis_url() == DEFAULT_REDIS_URL
    assert s.log_format is LogFormat.AUTO
    assert s.bus_max_deliveries == 5


def test_environment_and_dotenv_are_read(monkeypatch, tmp_path):
    (tmp_path / ".env").write_text("HEMOSTAT_BUS_CONCURRENCY=7\nGRAFANA_ADMIN_PASSWORD=x\n")
    monkeypatch.setenv("REDIS_URL", "redis://:pw-123456@r:6379/2")
    monkeypatch.setenv("HEMOSTAT_LOG_FORMAT", "json")
    s = load_settings()
    assert s.bus_concurrency == 7
    assert s.log_format is LogFormat.JSON
    assert s.effective_redis_url() == "redis://:pw-123456@r:6379/2"
    assert "pw-123456" not in repr(s)
    assert s.secret_values() == ["pw-123456"]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"HEMOSTAT_BUS_CONCURENCY": "3"}, "did you mean HEMOSTAT_BUS_CONCURRENCY"),
        ({"HEMOSTAT_BUS_CONCURRENCY": "zero"}, "HEMOSTAT_BUS_CONCURRENCY: Input should be a valid"),
        ({"HEMOSTAT_BUS_CONCURRENCY": "0"}, "greater than or equal to 1"),
        ({"HEMOSTAT_LOG_FORMAT": "xml"}, "HEMOSTAT_LOG_FORMAT"),
    ],
)
def test_bad_settings_name_the_variable(monkeypatch, env, message):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match=message):
        load_settings()


def test_unknown_setting_in_dotenv_is_refused(tmp_path):
    (tmp_path / ".env").write_text("HEMOSTAT_DRYRUN=false\n")
    with pytest.raises(ConfigError, match="unknown setting"):
        load_settings()


def test_env_example_documents_every_setting_with_its_default():
    from pathlib import Path

    from shared.env_example import render
    from shared.settings import Settings, env_name

    text = (Path(__file__).parent.parent / ".env.example").read_text()
    assert text == render(), "regenerate: hemostat config env-example > .env.example"
    keys = {line.split("=", 1)[0] for line in text.splitlines() if "=" in line and line[0] != "#"}
    assert {env_name(n) for n in Settings.model_fields} <= keys


def test_env_example_loads_as_is(tmp_path):
    from pathlib import Path

    source = Path(__file__).parent.parent / ".env.example"
    (tmp_path / ".env").write_text(source.read_text())
    s = load_settings()
    assert s.bus_concurrency == 16


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"HEMOSTAT_REDIS_SENTINELS": "s1:26379,s2"}, "HEMOSTAT_REDIS_SENTINELS: .*'s2' is not"),
        ({"HEMOSTAT_REDIS_SENTINELS": "s1:99999"}, "is not host:port"),
        ({"HEMOSTAT_REDIS_SENTINELS": ","}, "no sentinel address"),
        (
            {"HEMOSTAT_REDIS_SENTINELS": "s1:26379", "REDIS_URL": "unix:///run/redis.sock"},
            "HEMOSTAT_REDIS_SENTINELS needs a redis:// or rediss://",
        ),
        ({"REDIS_URL": "http://r:6379"}, "REDIS_URL must start with"),
        ({"HEMOSTAT_REDIS_TLS_CA_FILE": "ca.pem"}, "is set but REDIS_URL is not rediss://"),
        (
            {"HEMOSTAT_REDIS_TLS_CA_FILE": "missing.pem", "REDIS_URL": "rediss://r:6380"},
            "HEMOSTAT_REDIS_TLS_CA_FILE: missing.pem is not a readable file",
        ),
        (
            {"HEMOSTAT_REDIS_TLS_CERT_FILE": "ca.pem", "REDIS_URL": "rediss://r:6380"},
            "HEMOSTAT_REDIS_TLS_CERT_FILE and HEMOSTAT_REDIS_TLS_KEY_FILE go together",
        ),
        ({"HEMOSTAT_REDIS_WAIT_TIMEOUT_MS": "0"}, "HEMOSTAT_REDIS_WAIT_TIMEOUT_MS"),
        ({"HEMOSTAT_REDIS_WAIT_REPLICAS": "-1"}, "HEMOSTAT_REDIS_WAIT_REPLICAS"),
    ],
)
def test_redis_transport_settings_that_cannot_work_are_refused(monkeypatch, tmp_path, env, message):
    # A TLS file that is set but unused, or missing, would otherwise surface as "Redis
    # unavailable" retried for ever.
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match=message):
        load_settings()


def test_sentinel_settings_and_their_password(monkeypatch, tmp_path):
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setenv("REDIS_URL", "rediss://:data-pw-123456@ignored/0")
    monkeypatch.setenv("HEMOSTAT_REDIS_SENTINELS", "10.0.0.1:26379, [fd00::2]:26379,s3:26380")
    monkeypatch.setenv("HEMOSTAT_REDIS_SENTINEL_PASSWORD", "sentinel-pw-654321")
    monkeypatch.setenv("HEMOSTAT_REDIS_TLS_CA_FILE", "ca.pem")
    s = load_settings()
    assert s.redis_sentinel_addresses() == [
        ("10.0.0.1", 26379),
        ("fd00::2", 26379),
        ("s3", 26380),
    ]
    assert s.redis_sentinel_service == "mymaster"
    assert sorted(s.secret_values()) == ["data-pw-123456", "sentinel-pw-654321"]
    assert "sentinel-pw-654321" not in repr(s)


def test_a_section_is_a_small_frozen_value_holding_only_its_own_settings(tmp_path):
    settings = load_settings(
        tmp_path / "none.env",
        anthropic_api_key="sk-ant-section-test",
        slack_webhook_url="https://hooks.slack.test/T/B/secret",
    )
    analyzer = settings.section(AnalyzerSettings)
    assert type(analyzer) is AnalyzerSettings
    assert analyzer.anthropic_api_key == settings.anthropic_api_key
    assert not hasattr(analyzer, "slack_webhook_url"), "the LLM client never holds a webhook"
    alert = settings.section(AlertSettings)
    assert alert.slack_webhook_url == settings.slack_webhook_url
    assert not hasattr(alert, "anthropic_api_key"), "the notifiers never hold the LLM key"
    with pytest.raises(ValueError, match="frozen"):
        alert.alert_max_attempts = 9  # type: ignore[misc]
    for kind in SECTIONS:
        section = settings.section(kind)
        assert section.model_dump() == {n: getattr(settings, n) for n in kind.model_fields}
