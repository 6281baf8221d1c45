"""Browser tests: Playwright driving Debian's chromium (headless) against ``vitdex serve``.

Each test gets a served catalog (SQLite and PostgreSQL, like the other suites) indexed from
a small generated library, and a page whose console errors, uncaught exceptions and failed
requests fail the test. ``shot(name)`` saves a screenshot under
``test-output/browser/<test>/``: look at them.

Chromium comes from the system (``apt-get install chromium``; ``.ci/run`` and ``make
setup-browser`` install it); Playwright never downloads a browser. Without it the tests
are skipped, except under CI, where a missing browser is a failure.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import served
from tests.photos import make_photo
from vitdex.testing.browser import CHROMIUM_ARGS, chromium_path

ROOT = Path(__file__).resolve().parents[2]
OUTPUT = ROOT / "test-output" / "browser"
CAMERAS = [("Canon", "EOS R5"), ("Apple", "iPhone 15"), ("Sony", "A7 IV")]


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """One headless chromium for the whole session."""
    executable = chromium_path()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        executable = None
    if executable is None:
        reason = "no chromium or no playwright (apt-get install chromium; pip install playwright)"
        if os.environ.get("CI"):
            pytest.fail(f"browser tests cannot run under CI: {reason}")
        pytest.skip(reason)
    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def make_library(root: Path, n: int = 18) -> Path:
    """``n`` generated photos in two folders, with cameras and capture dates."""
    for i in range(n):
        folder = root / ("2023" if i % 2 else "2024") / ("trip" if i % 3 == 0 else "home")
        make_photo(
            folder / f"p{i:02d}.jpg",
            size=(160, 120),
            seed=i,
            taken_at=datetime(2023 + i % 2, 1 + i % 12, 1 + i, 12, 0, 0),
            camera=CAMERAS[i % 3],
        )
    return root


@dataclass
class Site:
    """A running ``vitdex serve`` and what it serves."""

    url: str
    env: dict[str, str]
    photos: Path
    log: Path
    keys: list[str] = field(default_factory=list)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``vitdex ARGS`` against the same catalog."""
        proc = subprocess.run(
            [sys.executable, "-m", "vitdex", *args],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=600,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"vitdex {args} exited {proc.returncode}:\n{proc.stderr}")
        return proc


def start_site(
    vitdex_env: dict[str, str], tmp_path: Path, *, keys: list[str] | None = None, index: bool = True
) -> Iterator[Site]:
    """Index a generated library and serve it (with ``keys`` as API keys)."""
    photos = make_library(tmp_path / "photos")
    env = {
        **vitdex_env,
        "VITDEX_ALLOWED_ROOTS": str(photos),
        "NO_COLOR": "1",
        "HF_HUB_OFFLINE": "1",
    }
    if keys:
        env["VITDEX_API_KEYS"] = ",".join(keys)
    site = Site("", env, photos, tmp_path / "serve.log", keys or [])
    if index:
        site.cli("index", str(photos))
    with served(env, log=site.log, start_timeout=90) as url:
        site.url = url
        yield site


@pytest.fixture
def site(vitdex_env: dict[str, str], tmp_path: Path) -> Iterator[Site]:
    """An indexed library of 18 photos, served without API keys."""
    yield from start_site(vitdex_env, tmp_path)


@dataclass
class Watch:
    """What went wrong on a page: console errors, uncaught exceptions, failed requests."""

    problems: list[str] = field(default_factory=list)
    #: Responses with these statuses on URLs matching the pattern are expected.
    allowed: list[tuple[re.Pattern[str], int]] = field(default_factory=list)

    def allow(self, pattern: str, status: int) -> None:
        """Expect ``status`` from URLs matching ``pattern`` (a flow that tests an error)."""
        self.allowed.append((re.compile(pattern), status))

    def response(self, response: Any) -> None:
        if response.status >= 400 and not any(
            p.search(response.url) and response.status == s for p, s in self.allowed
        ):
            self.problems.append(f"HTTP {response.status} {response.request.method} {response.url}")

    def failed(self, request: Any) -> None:
        # Leaving a page aborts its pending requests (a poll, a thumbnail): not a fault.
        if "ERR_ABORTED" not in str(request.failure):
            self.problems.append(f"failed: {request.method} {request.url} {request.failure}")

    def console(self, message: Any) -> None:
        if message.type == "error":
            text = message.text
            # A response already reported above shows up in the console too.
            if "Failed to load resource" in text:
                return
            self.problems.append(f"console error: {text}")


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh browser page that fails the test on console errors and failed requests."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    new = context.new_page()
    new.set_default_timeout(20_000)
    watch = Watch()
    new.on("console", watch.console)
    new.on("pageerror", lambda exc: watch.problems.append(f"uncaught: {exc}"))
    new.on("requestfailed", watch.failed)
    new.on("response", watch.response)
    new.watch = watch  # tests call page.watch.allow(...)
    yield new
    context.close()
    assert not watch.problems, "\n".join(watch.problems)


def wait_until(page: Any, script: str, arg: Any = None, timeout: float = 20_000) -> Any:
    """Poll ``script`` (an expression or a function of ``arg``) until it is truthy; its value.

    Playwright's ``wait_for_function`` evaluates its predicate with ``eval`` inside the
    page, which the pages' Content-Security-Policy forbids (no ``unsafe-eval``): this polls
    ``page.evaluate`` instead, so every flow runs under the policy users get.
    """
    deadline = time.monotonic() + timeout / 1000
    while True:
        value = page.evaluate(script, arg)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout / 1000:.0f} s waiting for: {script}")
        page.wait_for_timeout(100)


@pytest.fixture
def shot(page: Any, request: pytest.FixtureRequest) -> Callable[[str], Path]:
    """Save a full-page screenshot: ``shot("grid")`` → test-output/browser/<test>/grid.png."""
    folder = OUTPUT / re.sub(r"[^\w.-]+", "_", request.node.name)
    folder.mkdir(parents=True, exist_ok=True)

    def take(name: str) -> Path:
        path = folder / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take
