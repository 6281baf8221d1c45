"""A real uvicorn server (``vitdex serve``) in a subprocess, asked over HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from tests.helpers import index_folder, served
from tests.photos import make_photo


@pytest.fixture
def server(vitdex_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """Index 6 photos, start ``vitdex serve`` on a free port; stop it afterwards."""
    lib = tmp_path / "lib"
    for i in range(6):
        make_photo(lib / f"p{i}.jpg", size=(96, 72), seed=i, taken_at=datetime(2023, 1, 1 + i))
    index_folder(lib)

    with served({**vitdex_env, "VITDEX_API_KEYS": "secret"}) as base:
        yield base


def test_served_over_http(server: str) -> None:
    auth = {"Authorization": "Bearer secret"}
    with httpx.Client(base_url=server, timeout=30) as client:
        assert client.get("/ready").json()["ready"] is True
        assert client.get("/api/v1/images").status_code == 401

        page = client.get("/api/v1/images", headers=auth).json()
        assert page["total"] == 6
        first = page["images"][0]["id"]

        started = time.perf_counter()
        similar = client.get(f"/api/v1/images/{first}/similar", params={"k": 3}, headers=auth)
        print(f"first similar over HTTP (opens the store): {time.perf_counter() - started:.3f} s")
        assert similar.status_code == 200, similar.text
        assert len(similar.json()["hits"]) == 3
        assert first not in [h["image_id"] for h in similar.json()["hits"]]

        bad = client.post(
            "/api/v1/similar",
            headers=auth,
            files={"file": ("x.jpg", b"not a photo", "image/jpeg")},
        )
        assert bad.status_code == 422 and "not an image" in bad.json()["detail"]

        metrics = client.get("/metrics").text
        assert "vitdex_images_indexed 6.0" in metrics
        assert "vitdex_http_requests_total" in metrics
        assert "/api/v1/similar" in client.get("/schema/openapi.json").json()["paths"]


def test_no_torch_until_a_query_needs_the_model(vitdex_env: dict[str, str]) -> None:
    """Browsing and health checks never import the model code."""
    code = (
        "import sys\n"
        "from litestar.testing import TestClient\n"
        "from vitdex.api import create_app\n"
        "with TestClient(create_app()) as c:\n"
        "    for p in ('/health', '/ready', '/metrics', '/api/v1/images', '/api/v1/labels'):\n"
        "        assert c.get(p).status_code == 200, p\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **vitdex_env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert out.stdout.strip().splitlines()[-1] == "False", out.stderr[-2000:]
