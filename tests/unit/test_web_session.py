"""The web session cookie: what it proves and what it refuses."""

from __future__ import annotations

from vitdex.api.web import session
from vitdex.api.web.pages.common import local_path

KEYS = ["alpha", "beta"]


def test_a_cookie_proves_a_session_until_it_expires() -> None:
    value, issued = session.issue(KEYS, now=1_000)
    assert session.read(KEYS, value, now=1_001) == issued
    # Key order does not matter: every worker derives the same secret.
    assert session.read(list(reversed(KEYS)), value, now=1_001) == issued
    assert session.read(KEYS, value, now=1_000 + session.MAX_AGE_S + 1) is None
    assert "alpha" not in value and "beta" not in value


def test_forged_or_foreign_cookies_prove_nothing() -> None:
    value, _ = session.issue(KEYS, now=1_000)
    version, expires, csrf, sig = value.split(".")
    later = f"{version}.{int(expires) + 10**9}.{csrf}.{sig}"
    assert session.read(KEYS, later, now=1_001) is None  # a longer life, same signature
    assert session.read(KEYS, f"{version}.{expires}.other.{sig}", now=1_001) is None
    assert session.read(["alpha"], value, now=1_001) is None  # the keys changed
    assert session.read([], value, now=1_001) is None
    for junk in ("", "x", "v1.1.2", "v2.1.2.3", "v1.notanumber.c.s"):
        assert session.read(KEYS, junk, now=1_001) is None
    assert session.issue(KEYS)[1].csrf != session.issue(KEYS)[1].csrf


def test_next_never_leaves_the_site() -> None:
    assert local_path("/photos/3?x=1") == "/photos/3?x=1"
    for bad in ("//evil.example", "https://evil.example/", "evil", "/\\evil", None, ""):
        assert local_path(bad) == "/"
