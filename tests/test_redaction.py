from __future__ import annotations

import pytest

from shared.redaction import MASK, Redactor, is_secret_key

SECRETS = [
    "postgres://app:hunter2hunter2@db:5432/app",
    "Authorization: Bearer abcdefghijklmnopqrstuvwxyz012345",
    "OPENAI_API_KEY=sk-proj-ABCDEFGHIJKLMNOPQRSTUVWX",
    "anthropic key sk-ant-api03-ABCDEFGHIJKLMNOPQRSTUV used",
    "slack xoxb-123456789012-abcdefghijkl",
    "https://hooks.slack.com/services/T000/B000/XXXXXXXXXXXXXXXX",
    "https://discord.com/api/webhooks/123456789/abcDEF_ghiJKL-mno",
    "aws AKIAIOSFODNN7EXAMPLE",
    "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
    'config {"password": "s3cr3t-value"}',
    "DB_PASSWORD=s3cr3t-value",
    "client_secret: s3cr3t-value",
    "token=s3cr3t-value&user=bob",
    "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N",
]


LEAKS = [
    "hunter2hunter2",
    "abcdefghijklmnopqrstuvwxyz012345",
    "s3cr3t-value",
    "ABCDEFGHIJKLMNOPQRSTUV",
    "XXXXXXXXXXXXXXXX",
    "abcDEF_ghiJKL",
    "AKIAIOSFODNN7EXAMPLE",
    "xoxb-123456789012",
    "dozjgNryP4J3jVmNHl0w5N",
    "ghp_abcdef",
]


@pytest.mark.parametrize("text", SECRETS)
def test_secret_shapes_are_masked(text):
    out = Redactor().text(text)
    assert MASK in out
    for secret in LEAKS:
        assert secret not in out


@pytest.mark.parametrize(
    "text",
    [
        "container web-1 exited with code 137",
        "GET /healthz 200 in 3ms",
        "input_tokens=512 output_tokens=40",
        "restarting container abc123 after 3 failures",
        "see https://example.com/docs/page",
    ],
)
def test_ordinary_text_passes_unchanged(text):
    assert Redactor().text(text) == text


def test_registered_literal_is_masked_anywhere():
    redactor = Redactor(["canary-7f3a9b"])
    assert redactor.text("log: value=canary-7f3a9b!") == f"log: value={MASK}!"
    redactor.register("ab")  # too short to register: would mask ordinary words
    assert redactor.text("about") == "about"


def test_nested_data_masks_by_key_and_by_value():
    data = {
        "api_key": "plain",
        "nested": {"DB_PASSWORD": 123, "note": "url redis://:pw123456@r:6379"},
        "list": ["token=abcdef123", "fine"],
        "count": 3,
        "author": "alice",
    }
    out = Redactor().data(data)
    assert out["api_key"] == MASK
    assert out["nested"]["DB_PASSWORD"] == MASK
    assert "pw123456" not in out["nested"]["note"]
    assert out["list"] == [f"token={MASK}", "fine"]
    assert out["count"] == 3
    assert out["author"] == "alice"


def test_env_values_are_all_masked():
    assert Redactor().env(["PATH=/bin", "X=1", "NOVALUE"]) == [
        f"PATH={MASK}",
        f"X={MASK}",
        "NOVALUE",
    ]


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("password", True),
        ("DB_PASSWORD", True),
        ("authToken", True),
        ("api-key", True),
        ("SLACK_WEBHOOK_URL", True),
        ("input_tokens", False),
        ("author", False),
        ("container_name", False),
        ("passport", False),
    ],
)
def test_secret_key_names(key, secret):
    assert is_secret_key(key) is secret


def test_a_scoped_redactor_masks_one_containers_env_values_and_leaves_the_base_alone():
    from shared.containers import env_secret_values

    values = env_secret_values(["PATH=/usr/local/bin:/bin", "APP_SETTING=plainvalue42", "N=1"])
    assert values == ("plainvalue42",), "PATH and short values are not treated as secrets"
    base = Redactor()
    scoped = base.scoped(values)
    assert scoped.text("loaded plainvalue42 from disk") == f"loaded {MASK} from disk"
    assert base.text("loaded plainvalue42 from disk") == "loaded plainvalue42 from disk"
    assert base.scoped([]) is base
