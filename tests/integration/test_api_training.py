"""``/api/v1/training-runs``: a DreamBooth run from a curated dataset, as a job, over HTTP.

Real everything at toy size: a library indexed with the tiny ViT, a dataset curated from
it, a tiny SD pipeline trained for a few steps at 32 px on the in-process queue, converted
to a single file and registered.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import TestClient
from PIL import Image

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
    for i in range(8):
        make_photo(lib / f"p{i:02d}.jpg", size=(96, 72), seed=i)
    index_folder(lib)
    monkeypatch.setenv("VITDEX_ALLOWED_ROOTS", str(allowed))
    with TestClient(create_app(), raise_server_exceptions=False) as c:
        made = c.post(
            "/api/v1/datasets",
            json={
                "name": "rex",
                "prompt": "a photo of sks dog",
                "class_prompt": "a photo of a dog",
                "seeds": [1],
                "k": 4,
                "class_count": 2,
            },
        )
        assert made.status_code == 201, made.text
        yield c


def run_body(allowed: Path, **extra: Any) -> dict[str, Any]:
    return {
        "dataset": "rex",
        "base_model": str(allowed / "sd15"),
        "resolution": 32,
        "steps": 3,
        "text_encoder_steps": 2,
        "force": True,
        "options": {"mixed_precision": "no", "device": "cpu", "save_every": 2},
        **extra,
    }


def test_training_run_to_registered_checkpoint(client: Client, allowed: Path) -> None:
    started = client.post("/api/v1/training-runs", json=run_body(allowed))
    assert started.status_code == 202, started.text
    run = started.json()
    assert run["total_steps"] == 5 and run["config"]["prior_preservation"] is True
    job = wait_for_job(client, run["job_id"])
    assert job["state"] == "succeeded", job
    assert job["done"] == 5

    done = client.get(f"/api/v1/training-runs/{run['id']}").json()
    assert done["state"] == "succeeded" and done["step"] == 5 and done["version"] == "sd15"
    assert done["loss"] is not None and done["loss"] > 0
    ckpt = done["checkpoint"]
    assert Path(ckpt["path"]).is_file() and len(ckpt["sha256"]) == 64
    row = client.get(f"/api/v1/checkpoints/{ckpt['id']}").json()
    assert row["run_id"] == run["id"] and row["dataset_id"] == done["dataset_id"]
    assert row["config"]["instance_prompt"] == "a photo of sks dog"
    assert row["status"] == "ready" and len(row["dataset_hash"]) == 64
    # The exported data stays with the run: crops + captions + kohya TOML.
    data = Path(done["output_dir"]) / "data"
    assert (data / "dataset.toml").is_file()
    assert (data / "instance" / "0000.txt").read_text().strip() == "a photo of sks dog"

    listed = client.get("/api/v1/training-runs", params={"state": "succeeded"}).json()["runs"]
    assert [r["id"] for r in listed] == [run["id"]]
    again = client.post(f"/api/v1/training-runs/{run['id']}/resume")
    assert again.status_code == 409 and "already finished" in again.json()["detail"]


def test_cancelled_run_resumes_over_http(
    client: Client, allowed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Steps take milliseconds at this size: read the cancel flag at every step.
    monkeypatch.setattr("vitdex.jobs.training.CANCEL_POLL_S", 0.0)
    started = client.post("/api/v1/training-runs", json=run_body(allowed, steps=40))
    run = started.json()
    # Cancel once training has begun (the first checkpoint marks it).
    deadline = time.monotonic() + 120
    while not list((Path(run["output_dir"]) / "checkpoints").glob("step-*")):
        assert time.monotonic() < deadline, client.get(f"/api/v1/jobs/{run['job_id']}").json()
        time.sleep(0.05)
    cancelled = client.post(f"/api/v1/training-runs/{run['id']}/cancel")
    assert cancelled.status_code == 200
    job = wait_for_job(client, run["job_id"])
    # The flag is read before every step, so the run stops long before its 42 steps.
    assert job["state"] == "cancelled", job
    stopped = client.get(f"/api/v1/training-runs/{run['id']}").json()
    assert stopped["state"] == "cancelled" and 0 < stopped["step"] < 42

    resumed = client.post(f"/api/v1/training-runs/{run['id']}/resume")
    assert resumed.status_code == 202, resumed.text
    job = wait_for_job(client, resumed.json()["job_id"])
    assert job["state"] == "succeeded", job
    final = client.get(f"/api/v1/training-runs/{run['id']}").json()
    assert final["step"] == 42 and final["checkpoint"] is not None


def test_bad_training_requests(client: Client, allowed: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    cases = [
        (run_body(allowed, dataset="nope"), 404, "no dataset"),
        (run_body(allowed, base_model=str(outside)), 403, "outside the allowed roots"),
        (run_body(allowed, base_model=str(allowed / "missing")), 404, "neither"),
        (run_body(allowed, resolution=768, force=False), 400, "768 px does not fit"),
        (run_body(allowed, options={"mode": "sideways"}), 400, "mode"),
        (run_body(allowed, options={"instance_dir": "/etc"}), 400, "set by the run"),
        (run_body(allowed, options={"no_such_setting": 1}), 400, "unknown training settings"),
    ]
    for body, status, words in cases:
        response = client.post("/api/v1/training-runs", json=body)
        assert response.status_code == status, (body, response.text)
        assert words in response.json()["detail"], response.text
    assert client.get("/api/v1/training-runs/999").status_code == 404
    assert client.post("/api/v1/training-runs/999/resume").status_code == 404
    assert client.get("/api/v1/training-runs").json()["runs"] == []


def test_the_checkpoint_hashes_the_images_it_was_trained_on(client: Client, allowed: Path) -> None:
    from vitdex.config import load_settings
    from vitdex.db import checkpoints as checkpoint_sql
    from vitdex.db.jobs import catalog_sessions

    (listed,) = client.get("/api/v1/datasets").json()["datasets"]
    shown = client.get(f"/api/v1/datasets/{listed['id']}", params={"role": "instance"}).json()
    items = [i for i in shown["items"] if i["included"]]
    assert len(items) >= 3
    # One included photo breaks after curation: the export skips it, so the model never
    # sees it and the checkpoint's dataset hash must not count it.
    broken = next(i for i in items if i["reason"] != "seed")
    Path(broken["path"]).write_bytes(b"not a photo any more")

    run = client.post("/api/v1/training-runs", json=run_body(allowed, steps=1)).json()
    assert wait_for_job(client, run["job_id"])["state"] == "succeeded"
    done = client.get(f"/api/v1/training-runs/{run['id']}").json()
    row = client.get(f"/api/v1/checkpoints/{done['checkpoint']['id']}").json()

    trained = [i["image_id"] for i in items if i["image_id"] != broken["image_id"]]
    sessions = catalog_sessions(load_settings().storage.resolved_database_url)
    with sessions() as session:
        assert row["dataset_hash"] == checkpoint_sql.images_hash(session, trained)
        assert row["dataset_hash"] != checkpoint_sql.dataset_image_hash(
            session, shown["dataset_id"]
        )


def test_losses_and_checkpoint_file(client: Client, allowed: Path) -> None:
    """``/losses`` has one point per step (recorded each step, whatever the progress
    throttle), and a run's checkpoint downloads from inside its own folder only."""
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


def test_samples_and_validation_in_run_detail(
    client: Client, allowed: Path, tmp_path: Path
) -> None:
    """The run detail lists validation losses and samples; the sample route serves the
    run's own PNGs and refuses any path or link out of its samples folder."""
    body = run_body(
        allowed,
        steps=2,
        text_encoder_steps=0,
        options={
            "mixed_precision": "no",
            "device": "cpu",
            "save_every": 0,
            "sample_every": 2,
            "sample_steps": 2,
            "sample_prompts": ["a photo of sks dog", "sks dog in snow"],
            "validation_images": 1,
            "ema": True,
        },
    )
    started = client.post("/api/v1/training-runs", json=body)
    assert started.status_code == 202, started.text
    run = started.json()
    assert wait_for_job(client, run["job_id"])["state"] == "succeeded"
    done = client.get(f"/api/v1/training-runs/{run['id']}").json()
    assert [p["step"] for p in done["validation"]] == [0, 2]
    assert all(p["loss"] > 0 for p in done["validation"])
    assert done["peak_memory_bytes"] is None  # trained on a CPU
    assert [(s["step"], s["index"], s["seed"]) for s in done["samples"]] == [
        (2, 0, 1234),
        (2, 1, 1235),
    ]
    assert done["samples"][1]["prompt"] == "sks dog in snow"
    # The list of runs stays lean: no samples there.
    (listed,) = client.get("/api/v1/training-runs").json()["runs"]
    assert "samples" not in listed

    url = done["samples"][0]["url"]
    assert url == f"/api/v1/training-runs/{run['id']}/samples/step-00000002/00.png"
    image = client.get(url)
    assert image.status_code == 200, image.text
    assert image.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(image.content)).size == (32, 32)

    base = f"/api/v1/training-runs/{run['id']}/samples"
    samples = Path(done["output_dir"]) / "samples"
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.new("RGB", (8, 8)).save(outside / "secret.png")
    (samples / "step-00000002" / "leak.png").symlink_to(outside / "secret.png")
    (samples / "linked").symlink_to(outside)
    (samples / "notes.txt").write_text("not an image")
    refused = {
        f"{base}/step-00000002/leak.png": 403,
        f"{base}/linked/secret.png": 403,
        f"{base}/%2e%2e/result.json": 403,
        f"{base}/%2e%2e/%2e%2e": 403,
        # An encoded slash is a slash by the time routes match: no route takes these.
        f"{base}/step-00000002/..%2f..%2fresult.json": 404,
        f"{base}/%2e%2e/..%2f..%2f..%2f..%2fetc%2fpasswd": 404,
        f"{base}/step-00000002/07.png": 404,
        f"{base}/notes.txt": 404,
        f"{base}/step-00000002/notes.txt": 404,
        "/api/v1/training-runs/999/samples/step-00000002/00.png": 404,
    }
    (samples / "step-00000002" / "notes.txt").write_text("not an image either")
    for path, status in refused.items():
        reply = client.get(path)
        assert reply.status_code == status, (path, reply.status_code, reply.text)
        assert reply.headers["content-type"].startswith("application/json"), path
    # Dot segments a client sends as they are never reach a file either.
    for raw in ("../result.json", "../../../../etc/passwd", "step-00000002/../../result.json"):
        reply = client.get(f"{base}/{raw}")
        assert reply.status_code in (403, 404), (raw, reply.status_code)
