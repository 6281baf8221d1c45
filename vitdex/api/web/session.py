"""Browser sessions for the web pages: a signed HttpOnly cookie and its CSRF token.

With ``VITDEX_API_KEYS`` set, a person signs in once with a key; the app answers with a
cookie that proves it until it expires. The cookie holds no key, only an expiry and a
random CSRF token, signed with a secret derived from the configured keys: every
``vitdex serve`` worker derives the same secret, and changing the keys signs everybody
out. A request authenticated by the cookie that changes something must repeat the token
in the ``X-CSRF-Token`` header, which another site's page cannot read, so it cannot
forge one (the cookie alone is not enough).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "COOKIE",
    "CSRF_HEADER",
    "SAFE_METHODS",
    "Session",
    "issue",
    "read",
    "valid_key",
]

COOKIE = "vitdex_session"
CSRF_HEADER = "x-csrf-token"
#: Methods that change nothing: they need no CSRF token.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: How long a sign-in lasts.
MAX_AGE_S = 7 * 24 * 3600
_VERSION = "v1"


@dataclass(frozen=True)
class Session:
    """A valid session: when it ends and the token state-changing requests must repeat."""

    expires: int
    csrf: str


def _secret(keys: Sequence[str]) -> bytes:
    material = "\n".join(sorted(keys)).encode()
    return hashlib.sha256(b"vitdex web session\n" + material).digest()


def _sign(keys: Sequence[str], payload: str) -> str:
    mac = hmac.new(_secret(keys), payload.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def issue(keys: Sequence[str], now: float | None = None) -> tuple[str, Session]:
    """A new cookie value and the session it stands for."""
    expires = int(now if now is not None else time.time()) + MAX_AGE_S
    csrf = secrets.token_urlsafe(24)
    payload = f"{_VERSION}.{expires}.{csrf}"
    return f"{payload}.{_sign(keys, payload)}", Session(expires, csrf)


def read(keys: Sequence[str], value: str | None, now: float | None = None) -> Session | None:
    """The session a cookie value proves, or None (absent, forged, expired, old keys)."""
    if not keys or not value:
        return None
    parts = value.split(".")
    if len(parts) != 4 or parts[0] != _VERSION:
        return None
    payload = ".".join(parts[:3])
    if not hmac.compare_digest(_sign(keys, payload), parts[3]):
        return None
    try:
        expires = int(parts[1])
    except ValueError:
        return None
    if expires < (now if now is not None else time.time()):
        return None
    return Session(expires, parts[2])


def valid_key(keys: Sequence[str], given: str | None) -> bool:
    """Whether ``given`` is one of ``keys`` (compared in constant time against each)."""
    if given is None:
        return False
    return any(hmac.compare_digest(given.encode(), key.encode()) for key in keys)
