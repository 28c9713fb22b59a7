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


# ---------------------------------------------------------------- across lines, then cut

KEY_BODY = [
    "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun",
    "VTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u+qKhbwKfBstIs+bMY2Zkp18gnTxK",
    "LxoS2tFczGkPLPgizskuemMghRniWaoLcyehkd3qqGElvW/VDL5AaWTg0nLVkjRo",
    "9z+40RQzuVaE8AkAFmxZzow3x+VJYKdjykkJ0iT9wCS0DRTXu269V264Vf/3jvre",
    "dZ2Hg3MU5mNw==",
]
KEY = ["-----BEGIN RSA PRIVATE KEY-----", *KEY_BODY, "-----END RSA PRIVATE KEY-----"]


def assert_no_key_body(out):
    text = "\n".join(out)
    for line in KEY_BODY:
        assert line[:12] not in text


def test_a_private_key_split_across_log_lines_is_masked_line_for_line():
    tail = ["starting app", "loaded key:", *KEY, "listening on :8080"]
    out = Redactor().lines(tail)
    assert_no_key_body(out)
    assert len(out) == len(tail), "one output line per input line"
    assert out[:2] == ["starting app", "loaded key:"]
    assert out[2] == KEY[0] and out[-2] == KEY[-1], "the markers say what was there"
    assert out[3:-2] == [MASK] * len(KEY_BODY)
    assert out[-1] == "listening on :8080"


def test_a_tail_that_starts_inside_a_key_masks_the_body_above_its_end():
    tail = [*KEY[3:], "key loaded", "ready"]
    out = Redactor().lines(tail)
    assert_no_key_body(out)
    assert out[-3:] == [KEY[-1], "key loaded", "ready"]


def test_a_key_cut_short_is_masked_up_to_the_first_ordinary_line():
    text = "\n".join(["boot", *KEY[:4], "2024-06-07 worker 3 started on port 8080"])
    out = Redactor().text(text).split("\n")
    assert_no_key_body(out)
    assert out[0] == "boot"
    assert out[-1] == "2024-06-07 worker 3 started on port 8080"


def test_a_key_in_one_text_or_behind_escaped_newlines_is_masked():
    joined = "\n".join(KEY)
    escaped = '{"private_key": "' + "\\n".join(KEY) + '\\n", "client_email": "svc@x.iam"}'
    for text in (f"key:\n{joined}\nok", escaped, "\r\n".join(KEY)):
        assert_no_key_body([Redactor().text(text)])
    assert "svc@x.iam" in Redactor().text(escaped)


def test_items_holding_several_lines_keep_the_item_count():
    items = ["a", "\n".join(KEY[:3]), "\n".join(KEY[3:]), "z"]
    out = Redactor().lines(items)
    assert len(out) == 4 and out[0] == "a" and out[-1] == "z"
    assert_no_key_body(out)


TOKEN = "ghp_" + "Zq3R7wX9" * 4 + "aB1c"  # the generated shape of a GitHub token


def test_clip_redacts_before_it_cuts():
    text = "x" * 480 + f" using {TOKEN} rest"
    assert TOKEN[:12] in Redactor().text(text[:500]), "cutting first leaks the token's head"
    out = Redactor().clip(text, 500)
    assert len(out) <= 500 and TOKEN[:12] not in out and TOKEN[4:12] not in out


def test_lines_cut_each_line_after_redaction():
    long = "y" * 490 + f" {TOKEN}"
    out = Redactor().lines([long, "short"], max_len=500)
    assert [len(line) <= 500 for line in out] == [True, True]
    assert TOKEN[4:12] not in out[0]
    assert out[1] == "short"


AWS_ID = "AKIA" + "Q7RT2M4ZXW8PL3KD"
AWS_SECRET = "Vq9/wT3+" + "kM2xR8nL" * 4


def test_a_bare_aws_secret_is_masked_next_to_its_key_id_only():
    out = Redactor().lines(["[default]", f"id {AWS_ID}", AWS_SECRET, "", "etag", AWS_SECRET])
    assert out[2] == MASK, "the line after the key id"
    assert out[5] == AWS_SECRET, "far from any key id it is just a string"
    assert AWS_SECRET not in Redactor().text(f"{AWS_ID} {AWS_SECRET}")


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("ENCRYPTION_KEY", True),
        ("AccountKey", True),
        ("STRIPE_RESTRICTED_KEY", True),
        ("GOOGLE_CREDENTIALS", True),
        ("primary_key", False),
        ("sort_key", False),
        ("tokenizer", False),
        ("passthrough", False),
        ("keyboard_layout", False),
    ],
)
def test_more_secret_key_names(key, secret):
    assert is_secret_key(key) is secret


# ---------------------------------------------------------------- callers: redact, then cut


def test_audit_records_mask_guard_details_and_reasons():
    from shared import audit

    record = audit.AuditRecord(
        at=1.0,
        actor="responder:x",
        event="rejected",
        outcome="rejected",
        guards=[
            audit.GuardResult(guard="target_policy", passed=True, detail="allowed"),
            audit.GuardResult(guard="exec", passed=False, detail=f"argv had {TOKEN}"),
            audit.GuardResult(guard="env", passed=False, detail="value canary-a81f found"),
        ],
        reason=f"exec failed: mysql -u root -pS3cr3tPw9 app; {'z' * 1990} {TOKEN}",
    )
    out = audit.redact(record, Redactor(["canary-a81f"]))
    text = out.model_dump_json()
    for leak in (TOKEN[4:12], "S3cr3tPw9", "canary-a81f"):
        assert leak not in text
    assert out.guards[0].detail == "allowed"
    assert len(out.reason) <= audit.REASON_MAX
    assert record.guards[1].detail.endswith(TOKEN), "the caller's record is left alone"


async def test_analyzer_log_evidence_is_redacted_across_lines_then_cut():
    from agents.analyzer.diagnostics import DiagnosticsCollector
    from shared.runbooks import Runbook
    from tests.support import factories

    class Docker:
        async def inspect_raw(self, container):
            return {"Config": {"Env": ["APP_SECRET_VALUE=plainvalue42"]}}

        async def logs_tail(self, container, tail):
            return ["boot", *KEY, "q" * 490 + f" {TOKEN}", "saw plainvalue42"]

    runbook = Runbook.model_validate(
        {
            "id": "rb",
            "version": 1,
            "match": {"kinds": ["crash"]},
            "diagnostics": [{"type": "logs", "tail": 50}],
            "actions": [{"id": "notify", "type": "none"}],
            "default_action": "notify",
        }
    )
    collector = DiagnosticsCollector(Docker(), Redactor())  # type: ignore[arg-type]
    evidence, _ = await collector.collect(factories.health_alert("c1"), runbook)
    logs = evidence["logs"].split("\n")
    assert_no_key_body(logs)
    assert TOKEN[4:12] not in evidence["logs"]
    assert all(len(line) <= 500 for line in logs)
    assert logs[-1] == f"saw {MASK}"


async def test_a_channel_error_body_is_redacted_before_it_is_cut():
    import httpx

    from agents.alert.channels import Limits, SlackNotifier
    from agents.alert.message import render
    from tests.support import factories

    body = "e" * 185 + f" {TOKEN}"
    transport = httpx.MockTransport(lambda request: httpx.Response(400, text=body))
    async with httpx.AsyncClient(transport=transport) as http:
        channel = SlackNotifier(
            http, "http://slack.invalid/hook", Limits(max_attempts=1), Redactor()
        )
        delivery = await channel.deliver(render(factories.remediation_complete()))
    assert delivery.status == "failed" and delivery.detail.startswith("HTTP 400: eee")
    assert TOKEN[4:12] not in delivery.detail
