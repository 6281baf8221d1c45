"""``/api/v1/training-runs/{id}/losses`` (the loss curve the run page draws) and
``/api/v1/training-runs/{id}/checkpoints/{cid}/file`` (the registered file, downloaded),
after a real run of a tiny Stable Diffusion base on the CPU."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from tests.helpers import index_folder, wait_for_job
from tests.photos import make_photo
from vitdex.api import create_app

Client = TestClient[Litestar]
pytestmark = pytest.mark.slow


@pytest.fixture
def allowed(tmp_path: Path, tiny_sd_factory: Callable[[str], Path]) -> Path:
    root = tmp_path / "allowed"
    shutil.copytree(tiny_sd_factory("sd15"), root / "sd15")
    return root


@pytest.fixture
def client(
    vitdex_env: dict[str, str], tmp_path: Path, allowed: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Client]:
    lib = tmp_path / "lib"
    for i in range(6):
        make_photo(lib / f"p{i:02d}.jpg", size=(96, 72), seed=i)
    index_folder(lib)
    monkeypatch.setenv("VITDEX_ALLOWED_ROOTS", str(allowed))
    # Every step's loss reaches the log (the writer throttles to one write a second).
    monkeypatch.setattr("vitdex.jobs.training.PROGRESS_EVERY_S", 0.0)
    with TestClient(create_app(), raise_server_exceptions=False) as c:
        made = c.post(
            "/api/v1/datasets",
            json={"name": "rex", "prompt": "a photo of sks dog", "seeds": [1], "k": 3},
        )
        assert made.status_code == 201, made.text
        yield c


def test_losses_and_checkpoint_file(client: Client, allowed: Path) -> None:
    body = {
        "dataset": "rex",
        "base_model": str(allowed / "sd15"),
        "resolution": 32,
        "steps": 3,
        "text_encoder_steps": 0,
        "force": True,
        "options": {"mixed_precision": "no", "device": "cpu"},
    }
    started = client.post("/api/v1/training-runs", json=body)
    assert started.status_code == 202, started.text
    run = started.json()
    # Before any step: no points, not an error.
    early = client.get(f"/api/v1/training-runs/{run['id']}/losses")
    assert early.status_code == 200 and early.json()["run_id"] == run["id"]
    assert wait_for_job(client, run["job_id"])["state"] == "succeeded"
    done = client.get(f"/api/v1/training-runs/{run['id']}").json()

    points = client.get(f"/api/v1/training-runs/{run['id']}/losses").json()["points"]
    steps = [p["step"] for p in points]
    assert steps == sorted(set(steps)) and steps[-1] == done["total_steps"] == 3
    assert set(steps) >= {1, 2, 3}
    assert all(p["loss"] > 0 for p in points)
    assert points[-1]["loss"] == pytest.approx(done["loss"])

    ckpt = done["checkpoint"]
    url = f"/api/v1/training-runs/{run['id']}/checkpoints/{ckpt['id']}/file"
    got = client.get(url)
    assert got.status_code == 200, got.text
    assert "attachment" in got.headers["content-disposition"]
    assert ".safetensors" in got.headers["content-disposition"]
    assert hashlib.sha256(got.content).hexdigest() == ckpt["sha256"]

    # Another run's checkpoint, an unknown one, an unknown run: 404, never a file.
    assert client.get(f"/api/v1/training-runs/{run['id']}/checkpoints/99/file").status_code == 404
    assert client.get(f"/api/v1/training-runs/99/checkpoints/{ckpt['id']}/file").status_code == 404
    assert client.get("/api/v1/training-runs/99/losses").status_code == 404
    assert client.get("/api/v1/training-runs/0/losses").status_code == 400
    bad = client.get(f"/api/v1/training-runs/{run['id']}/checkpoints/0/file")
    assert bad.status_code == 400

    # A file moved out of the run's folder is not served, whatever the row says.
    from vitdex.config import load_settings
    from vitdex.db.jobs import catalog_sessions
    from vitdex.db.models import Checkpoint

    moved = allowed / "moved.safetensors"
    shutil.copy(ckpt["path"], moved)
    sessions = catalog_sessions(load_settings().storage.resolved_database_url)
    with sessions() as session:
        session.get_one(Checkpoint, ckpt["id"]).path = str(moved)
        session.commit()
    refused = client.get(url)
    assert refused.status_code == 403 and "outside its run" in refused.json()["detail"]
    Path(ckpt["path"]).unlink()
    with sessions() as session:
        session.get_one(Checkpoint, ckpt["id"]).path = ckpt["path"]
        session.commit()
    gone = client.get(url)
    assert gone.status_code == 404 and "gone" in gone.json()["detail"]
