"""Who may decide on the dashboard, and as whom.

- `HEMOSTAT_DASHBOARD_USERS` (`name:hash,...`, hashes from `hemostat dashboard-user NAME`) or the
  single `HEMOSTAT_DASHBOARD_PASSWORD` (its user named by `HEMOSTAT_DASHBOARD_USER`): a person
  signs in once per browser session, and every decision is recorded as that person
  (`dashboard:<name>`) — never a name typed next to the button.
- Neither configured: on a loopback address decisions are allowed as `dashboard:local`; beyond
  loopback Approve/Deny are not offered at all (a dashboard anyone on the network can reach must
  not be able to restart containers).
- Failed sign-ins are counted per user name in Redis; after `LIMIT` within `WINDOW_S` the name is
  locked until the window ends (a stored "until" value), whatever the browser session.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
import time
from dataclasses import dataclass

from redis import Redis

from shared import keys
from shared.settings import Settings

__all__ = ["Access", "access", "hash_password", "locked_for", "sign_in", "verify_hash"]

LIMIT = 5
WINDOW_S = 300.0
ITERATIONS = 600_000  # PBKDF2-SHA256, OWASP's 2023 figure


@dataclass(frozen=True)
class Access:
    can_decide: bool
    needs_sign_in: bool
    why: str = ""


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _users(settings: Settings) -> dict[str, str]:
    raw = settings.dashboard_users.get_secret_value() if settings.dashboard_users else ""
    users = {}
    for item in (i.strip() for i in raw.split(",")):
        if ":" in item:
            name, hashed = item.split(":", 1)
            users[name.strip()] = hashed.strip()
    return users


def access(settings: Settings) -> Access:
    configured = bool(_users(settings)) or bool(
        settings.dashboard_password and settings.dashboard_password.get_secret_value()
    )
    if configured:
        return Access(can_decide=True, needs_sign_in=True)
    if _loopback(settings.dashboard_host):
        return Access(can_decide=True, needs_sign_in=False)
    return Access(
        can_decide=False,
        needs_sign_in=False,
        why=f"the dashboard listens on {settings.dashboard_host} and no one can sign in: set "
        "HEMOSTAT_DASHBOARD_PASSWORD or HEMOSTAT_DASHBOARD_USERS to decide here (or use "
        "`hemostat approve` / `hemostat deny`)",
    )


def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, ITERATIONS)
    b64 = base64.urlsafe_b64encode
    return f"pbkdf2_sha256${ITERATIONS}${b64(salt).decode()}${b64(digest).decode()}"


def verify_hash(password: str, hashed: str) -> bool:
    try:
        scheme, rounds, salt, digest = hashed.split("$")
        if scheme != "pbkdf2_sha256":
            return False
        expected = base64.urlsafe_b64decode(digest)
        got = hashlib.pbkdf2_hmac(
            "sha256", password.encode(), base64.urlsafe_b64decode(salt), int(rounds)
        )
    except ValueError:
        return False
    return hmac.compare_digest(got, expected)


def locked_for(redis: Redis, user: str, now: float | None = None) -> float:
    """Seconds this user name stays locked after too many failed sign-ins (0: not locked)."""
    until = float(redis.get(keys.DASHBOARD_LOCKED + user) or 0)
    return max(0.0, until - (now or time.time()))


def sign_in(
    redis: Redis, settings: Settings, user: str, password: str, now: float | None = None
) -> str | None:
    """The signed-in name, or None (wrong, or locked). Every failure counts toward the lock."""
    at = now or time.time()
    user = user.strip() or settings.dashboard_user
    if locked_for(redis, user, at) > 0:
        return None
    users = _users(settings)
    if user in users:
        ok = verify_hash(password, users[user])
    elif settings.dashboard_password and user == settings.dashboard_user:
        expected = settings.dashboard_password.get_secret_value().encode()
        ok = hmac.compare_digest(password.encode(), expected)
    else:
        # Unknown name: spend the same effort, so timing does not tell names apart.
        verify_hash(password, hash_password("x", b"0" * 16))
        ok = False
    if ok:
        redis.delete(keys.DASHBOARD_FAILURES + user)
        return user
    key = keys.DASHBOARD_FAILURES + user
    failures = int(redis.incr(key))
    redis.expire(key, int(WINDOW_S))
    if failures >= LIMIT:
        redis.set(keys.DASHBOARD_LOCKED + user, f"{at + WINDOW_S:.3f}", ex=int(WINDOW_S) + 60)
        redis.delete(key)
    return None
