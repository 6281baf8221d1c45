"""The system chromium for browser tests and benchmarks, and the flags it needs here.

Playwright drives the browser the system has (Debian's ``chromium``); it never downloads
one. Machines with a closed network need the background services off, or chromium keeps
trying to reach Google at every start.
"""

from __future__ import annotations

import os
import shutil

__all__ = ["CHROMIUM_ARGS", "chromium_path"]

#: Headless, no sandbox (tests run as root in containers), no GPU, and nothing that
#: phones home.
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str | None:
    """The system chromium (``VITDEX_TEST_CHROMIUM`` overrides), or None."""
    given = os.environ.get("VITDEX_TEST_CHROMIUM")
    if given:
        return given
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None
