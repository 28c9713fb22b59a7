"""A table of real-format secrets, each generated here from a seeded RNG in its vendor's format
(never a real credential) inside a realistic log, env or URL line, and a table of look-alikes
(hashes, ids, digests, names) that must come through byte for byte."""

from __future__ import annotations

import base64
import random
import string
import time
from typing import NamedTuple

import pytest

from shared.redaction import MASK, Redactor

_rng = random.Random(20240607)
ALNUM = string.ascii_letters + string.digits
B64 = ALNUM + "+/"
URLSAFE = ALNUM + "-_"


def rand(n: int, alphabet: str = ALNUM) -> str:
    return "".join(_rng.choice(alphabet) for _ in range(n))


def hexs(n: int) -> str:
    return rand(n, "0123456789abcdef")


def digits(n: int) -> str:
    return rand(1, "123456789") + rand(n - 1, string.digits)


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def pem(label: str, lines: int = 6) -> tuple[str, str]:
    """A key block and its body (the secret part; the markers are public)."""
    body = "\n".join([rand(64, B64) for _ in range(lines)] + [rand(20, B64) + "=="])
    return f"-----BEGIN {label}-----\n{body}\n-----END {label}-----", body


class Case(NamedTuple):
    name: str
    text: str
    secret: str  # the distinctive part: no 8 characters of it may survive


def case(name: str, template: str, secret: str) -> Case:
    return Case(name, template.format(s=secret), secret)


_rsa, _rsa_body = pem("RSA PRIVATE KEY")
_ssh, _ssh_body = pem("OPENSSH PRIVATE KEY")
_pgp, _pgp_body = pem("PGP PRIVATE KEY BLOCK")
_jwt_sig = b64url(_rng.randbytes(32))
_jwt = (
    b64url(b'{"alg":"HS256","typ":"JWT"}')
    + "."
    + b64url(f'{{"sub":"{digits(10)}","exp":1717761600}}'.encode())
    + "."
    + _jwt_sig
)
_aws_id = "AKIA" + rand(16, string.ascii_uppercase + string.digits)
_aws_secret = rand(40, B64)
_basic = base64.b64encode(f"admin:{rand(20)}".encode()).decode()
_sas_sig = rand(43, B64) + "="
_pw_at = f"{rand(6)}@{rand(8)}"

SECRETS = [
    case("openai legacy", "openai.AuthenticationError: Incorrect API key provided: {s}", "sk-" + rand(48)),
    case("openai project", "calling https://api.openai.com/v1/chat with {s}", "sk-proj-" + rand(120, URLSAFE)),
    case("anthropic", "retrying request with key {s} (attempt 2)", f"sk-ant-api03-{rand(93, URLSAFE)}AA"),
    case("github classic", "git push failed for token {s}", "ghp_" + rand(36)),
    case("github fine-grained", "using {s} for the api", f"github_pat_{rand(22)}_{rand(59)}"),
    case("github in url", "cloning https://x-access-token:{s}@github.com/acme/app.git", "ghs_" + rand(36)),
    case("gitlab pat", "registry login with {s} ok", "glpat-" + rand(20, URLSAFE)),
    case("gitlab runner", "runner registered: {s}", "glrt-" + rand(20, URLSAFE)),
    case("slack bot", "slack client init token={s}", f"xoxb-{digits(12)}-{digits(13)}-{rand(24)}"),
    case("slack user", "posting as {s}", f"xoxp-{digits(12)}-{digits(12)}-{digits(13)}-{hexs(32)}"),
    case("slack app-level", "socket mode connect with {s}", f"xapp-1-A{rand(10, string.ascii_uppercase)}-{digits(13)}-{hexs(64)}"),
    case("slack webhook", "POST https://hooks.slack.com/services/T{s} 200", f"{rand(8, string.ascii_uppercase)}/B{rand(10, string.ascii_uppercase)}/{rand(24)}"),
    case("slack workflow", "notify https://hooks.slack.com/workflows/T{s}", f"{rand(8, string.ascii_uppercase)}/A{rand(10, string.ascii_uppercase)}/{digits(18)}/{rand(24)}"),
    case("slack trigger", "fire https://hooks.slack.com/triggers/T{s}", f"{rand(8, string.ascii_uppercase)}/{digits(13)}/{hexs(32)}"),
    case("discord webhook", "sent to https://discord.com/api/webhooks/{s}", f"{digits(18)}/{rand(68, URLSAFE)}"),
    case("google api key", "maps client key {s} rejected", "AIza" + rand(35, URLSAFE)),
    case("google oauth secret", "oauth client configured with {s}", "GOCSPX-" + rand(28, URLSAFE)),
    case("google access token", "gcs upload using {s}", "ya29." + rand(120, URLSAFE)),
    case("jwt", "session cookie {s} expired", _jwt),
    case("aws key id", "boto3 found credentials {s} in env", _aws_id),
    case("aws bare secret", f"credentials.csv: deploy,{_aws_id},{{s}}", _aws_secret),
    case("azure AccountKey", "DefaultEndpointsProtocol=https;AccountName=acme;AccountKey={s};EndpointSuffix=core.windows.net", rand(86, B64) + "=="),
    case("azure sas sig", "GET https://acme.blob.core.windows.net/c/b?sv=2022-11-02&se=2024-06-08&sig={s}", _sas_sig),
    case("postgres url", "connecting to postgresql://app:{s}@db:5432/app", rand(20)),
    case("postgres url, @ in password", "DATABASE_URL=postgres://app:{s}@db.internal:5432/app", _pw_at),
    case("redis url", "redis error on redis://:{s}@redis:6379/0", rand(24)),
    case("redis url with user", "cache rediss://default:{s}@cache.example.com:6380", rand(24)),
    case("token-only url", "fetch https://{s}@git.example.com/acme/app.git", rand(40)),
    case("bearer header", "> Authorization: Bearer {s}", rand(40, URLSAFE)),
    case("basic header", "Authorization: Basic {s}", _basic),
    case("token scheme header", "curl -H 'Authorization: Token {s}' https://api.example.com", hexs(40)),
    case("bare bearer", "requests.get(url, headers=h) h=Bearer {s}", rand(32)),
    case("mysql -p", "exec: mysql -h db -u root -p{s} app < dump.sql", rand(16)),
    case("mysql -p quoted", "mysqladmin -u root -p'{s}' status", f"{rand(6)} {rand(6)}"),
    case("redis-cli -a", "healthcheck: redis-cli -h redis -a {s} ping", rand(24)),
    case("sshpass -p", "sshpass -p {s} ssh deploy@host uptime", rand(14)),
    case("curl -u", "curl -u admin:{s} https://registry.example.com/v2/", rand(18)),
    case("docker login --password", "docker login --password {s} registry.example.com", rand(20)),
    case("stripe live secret", "stripe.api_key set to {s}", "sk_live_" + rand(99)),
    case("stripe restricted", "charge failed using {s}", "rk_live_" + rand(24)),
    case("stripe webhook secret", "verifying signature with {s}", "whsec_" + rand(32)),
    case("npm token in npmrc", "//registry.npmjs.org/:_authToken={s}", "npm_" + rand(36)),
    case("npm token", "publishing with {s}", "npm_" + rand(36)),
    case("hugging face", "hub download using {s}", "hf_" + rand(34, string.ascii_letters)),
    case("sendgrid", "mail sent via {s}", f"SG.{rand(22, URLSAFE)}.{rand(43, URLSAFE)}"),
    case("pypi", "twine upload -u __token__ {s}", "pypi-AgEIcHlwaS5vcmc" + rand(70, URLSAFE)),
    case("telegram bot", "GET https://api.telegram.org/bot{s}/getMe", f"{digits(10)}:AA{rand(33, URLSAFE)}"),
    case("mailchimp", "mailchimp list sync with {s}", f"{hexs(32)}-us{_rng.randint(1, 21)}"),
    case("square", "square client {s}", "sq0csp-" + rand(43, URLSAFE)),
    case("twilio api key", "twilio auth {s} ok", "SK" + hexs(32)),
    Case("rsa private key", f"loaded key:\n{_rsa}\nstarting", _rsa_body),
    Case("openssh private key", _ssh, _ssh_body),
    Case("pgp private key", f"gpg import\n{_pgp}", _pgp_body),
    case("*_PASSWORD quoted with spaces", 'MYSQL_ROOT_PASSWORD="{s}"', f"{rand(7)} {rand(7)} {rand(7)}"),
    case("*_KEY hex", "ENCRYPTION_KEY={s}", hexs(64)),
    case("*_TOKEN", "export GITHUB_TOKEN={s}", rand(30)),
    case("*_SECRET single-quoted", "JWT_SECRET='{s}'", f"{rand(10)} {rand(10)}"),
    case("*_CREDENTIALS", "SERVICE_CREDENTIALS={s}", rand(32, B64)),
    case("json secret with spaces", '{{"client_secret": "{s}", "user": "bob"}}', f"{rand(8)} {rand(8)} {rand(8)}"),
    case("escaped json password", 'body="{{\\"password\\": \\"{s}\\"}}"', f"{rand(9)} {rand(9)}"),
    case("x-api-key header", "X-Api-Key: {s}", hexs(32)),
    case("cookie header", "Cookie: sessionid={s}", rand(32)),
]  # fmt: skip


LOOKALIKES = [
    "deployed commit 3f786850e387550fdab836ed7e6dc881de23001b to production",
    "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08  app.tar.gz",
    "pulled docker.io/library/nginx@sha256:0d17b565c37bcbd895e9d92315a05c1c3c9a29f762b011a10c54a66cd53c9b31",
    "container 4c01db0b339c63b2d1a7f5a4c3e0c5d9e6a1f7b2c8d4e0f3a9b5c1d7e3f9a2b6 exited with code 137",
    "request_id=2f1e6c9a-8b7d-4c3e-9f0a-1b2c3d4e5f60 status=200",
    "event 01HZX3Q5W8K0Y6V4T2R9M7N5P3 queued",
    "payload=aGVsbG8gd29ybGQ= decoded ok",
    "data: SGVsbG8sIFdvcmxkIQ==",
    "upgrading redis from 7.2.4 to 7.4.0-rc1+build.5 (v0.0.0-20240101120000-abcdef123456)",
    "2024-06-07T12:34:56.789012345Z INFO worker started",
    "pod web-7d9f8c6b5-x2x7k restarted in namespace prod",
    "/var/lib/docker/overlay2/3f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a/merged",
    "migration added primary_key_column=id to accounts",
    "tokenizer=cl100k_base model=gpt-4o",
    "passthrough=true keepalive=60",
    "input_tokens=512 output_tokens=40 max_tokens=1024",
    "key_id=k-2024-06 rotated",
    "ssh://git@github.com:22/acme/app.git and https://alice@bitbucket.org/team/repo.git",
    "arn:aws:iam::123456789012:role/deploy assumed",
    "GET http://api:8080/users/@alice 404",
    "docker run -p 8080:80 -e MODE=prod nginx:1.27",
    "etag wJalrXUtnFEMIK7MDENGbPxRfiCYzEXAMPLEKy9 cached",
    "basic authentication enabled for /admin; bearer token expired, refreshing",
    "password reset email sent to user 42",
    "mysql -h db -u app -P 3306 app",
    "redis-cli -h redis --no-auth-warning ping",
    "task-runner-2024-06-07 finished; disk-usage 71%",
    "md5=d41d8cd98f00b204e9800998ecf8427e size=0",
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGJ1Y2tldC1vZi1ieXRlcy1mb3ItdGVzdHM user@laptop",
    "-----BEGIN CERTIFICATE-----\nMIIDdzCCAl+gAwIBAgIEAgAAuTANBgkqhkiG9w0BAQUFADBaMQswCQYDVQQGEwJJ\n-----END CERTIFICATE-----",
]


def windows(secret: str, n: int = 8) -> list[str]:
    """Every run of `n` characters of the secret (or the whole of a shorter one)."""
    parts = [p for p in secret.replace("\n", " ").split(" ") if p]
    return [p[i : i + n] for p in parts for i in range(max(1, len(p) - n + 1))]


def test_the_tables_are_as_big_as_promised():
    assert len(SECRETS) >= 40
    assert len(LOOKALIKES) >= 20
    assert len({c.name for c in SECRETS}) == len(SECRETS)


@pytest.mark.parametrize("c", SECRETS, ids=[c.name for c in SECRETS])
def test_each_secret_is_masked(c):
    assert c.secret in c.text  # the case is well-formed
    out = Redactor().text(c.text)
    assert MASK in out
    leaked = [w for w in windows(c.secret) if w in out]
    assert not leaked, f"{c.name}: {out!r}"


@pytest.mark.parametrize("text", LOOKALIKES)
def test_each_lookalike_is_left_byte_for_byte(text):
    assert Redactor().text(text) == text


@pytest.mark.parametrize("c", SECRETS, ids=[c.name for c in SECRETS])
def test_each_secret_is_masked_as_log_tail_lines(c):
    out = "\n".join(Redactor().lines(c.text.split("\n")))
    assert not [w for w in windows(c.secret) if w in out], out


def test_the_pem_cases_keep_their_markers_and_line_count():
    out = Redactor().text(_rsa)
    assert out.splitlines()[0] == "-----BEGIN RSA PRIVATE KEY-----"
    assert out.splitlines()[-1] == "-----END RSA PRIVATE KEY-----"
    assert out.count("\n") == _rsa.count("\n")
    assert not [w for w in windows(_rsa_body) if w in out]


@pytest.mark.parametrize(
    "text",
    [
        "password_" * 5000,
        "a." * 20000 + " x://y",
        "eyJaaaaaaaa-" * 4000,
        "bearer " + "a" * 40000,
        'password="' + "a\\" * 20000,
        "-----BEGIN PRIVATE KEY-----\n" + "QUFB\n" * 8000,
    ],
    ids=["key-words", "dotted-run", "jwt-starts", "scheme-run", "open-quote", "dangling-pem"],
)
def test_long_adversarial_lines_stay_linear(text):
    # Lines are no longer cut before redaction, so a long line must not blow up the regexes.
    started = time.perf_counter()
    Redactor().text(text)
    assert time.perf_counter() - started < 0.25
