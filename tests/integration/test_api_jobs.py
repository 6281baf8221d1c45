"""Libraries, jobs and clusters over HTTP, with jobs on the in-process queue."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from tests.helpers import wait_for_job
from tests.photos import make_photo
from vitdex.api import create_app

Client = TestClient[Litestar]


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    root = tmp_path / "allowed"
    for i in range(12):
        make_photo(root / "lib" / ("x" if i < 6 else "y") / f"p{i:02d}.jpg", size=(96, 72), seed=i)
    (tmp_path / "outside").mkdir()
    make_photo(tmp_path / "outside" / "secret.jpg", seed=50)
    (root / "escape").symlink_to(tmp_path / "outside", target_is_directory=True)
    return root


@pytest.fixture
def client(
    vitdex_env: dict[str, str], photos: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Client]:
    monkeypatch.setenv("VITDEX_ALLOWED_ROOTS", str(photos))
    with TestClient(create_app(), raise_server_exceptions=False) as c:
        yield c


def test_library_lifecycle(client: Client, photos: Path) -> None:
    created = client.post("/api/v1/libraries", json={"path": str(photos / "lib")})
    assert created.status_code == 202, created.text
    body = created.json()
    lib_id, job_id = body["library"]["id"], body["job"]["id"]
    job = wait_for_job(client, job_id)
    assert job["state"] == "succeeded", job
    assert (job["done"], job["total"], job["counts"]["embedded"]) == (12, 12, 12)
    assert job["progress"] == 1.0

    libs = client.get("/api/v1/libraries").json()["libraries"]
    assert [(lib["id"], lib["images"]["indexed"]) for lib in libs] == [(lib_id, 12)]
    assert client.get(f"/api/v1/libraries/{lib_id}").json()["root"] == str(photos / "lib")

    make_photo(photos / "lib" / "x" / "new.jpg", size=(96, 72), seed=77)
    rescan = client.post(f"/api/v1/libraries/{lib_id}/scan")
    assert rescan.status_code == 202
    job = wait_for_job(client, rescan.json()["job"]["id"])
    assert (job["counts"]["embedded"], job["counts"]["unchanged"]) == (1, 12)

    listed = client.get("/api/v1/jobs", params={"kind": "index"}).json()
    assert listed["total"] == 2 and all(j["state"] == "succeeded" for j in listed["jobs"])
    # cancelling a finished job is refused, naming its state, and changes nothing
    refused = client.delete(f"/api/v1/jobs/{job_id}")
    assert refused.status_code == 409, refused.text
    assert "already succeeded" in refused.json()["detail"]
    assert client.get(f"/api/v1/jobs/{job_id}").json()["state"] == "succeeded"

    removed = client.delete(f"/api/v1/libraries/{lib_id}")
    assert removed.status_code == 200 and removed.json()["images_removed"] == 13
    assert client.get("/api/v1/images").json()["total"] == 0
    assert (photos / "lib" / "x" / "p00.jpg").exists()  # the photos themselves stay
    assert client.get(f"/api/v1/libraries/{lib_id}").status_code == 404
    assert client.get("/api/v1/status").status_code == 404


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("{outside}", 403),
        ("{root}/lib/../../outside", 403),
        ("{root}/escape", 403),
        ("{root}/nope", 404),
        ("relative/path", 400),
        ("{root}/lib/x/p00.jpg", 400),
    ],
)
def test_library_paths_are_confined(client: Client, photos: Path, path: str, status: int) -> None:
    raw = path.format(root=photos, outside=photos.parent / "outside")
    response = client.post("/api/v1/libraries", json={"path": raw})
    assert response.status_code == status, response.text
    assert response.json()["detail"]


def test_no_allowed_roots_means_no_libraries(vitdex_env: dict[str, str], photos: Path) -> None:
    with TestClient(create_app(), raise_server_exceptions=False) as c:
        response = c.post("/api/v1/libraries", json={"path": str(photos / "lib")})
    assert response.status_code == 403
    assert "VITDEX_ALLOWED_ROOTS" in response.json()["detail"]


def test_clusters(client: Client, photos: Path) -> None:
    job = client.post("/api/v1/libraries", json={"path": str(photos / "lib")}).json()["job"]
    assert wait_for_job(client, job["id"])["state"] == "succeeded"
    started = client.post("/api/v1/clusters", json={"space": "cls", "k": 3})
    assert started.status_code == 202, started.text
    done = wait_for_job(client, started.json()["job"]["id"])
    assert done["state"] == "succeeded", done
    run_id = done["counts"]["run_id"]
    run = client.get(f"/api/v1/clusters/{run_id}", params={"members_limit": 2}).json()
    assert run["k"] == 3 and run["n_images"] == 12
    assert sum(c["size"] for c in run["clusters"]) == 12
    for cluster in run["clusters"]:
        assert len(cluster["members"]) == min(2, cluster["size"])
        assert cluster["medoid_image_id"] in [m["image_id"] for m in cluster["members"]]
        for member in cluster["members"]:
            # Enough to show the member: its file's path and a thumbnail that answers.
            image = client.get(f"/api/v1/images/{member['image_id']}").json()
            assert member["path"] == image["path"]
            assert member["thumbnail_url"] == f"/api/v1/images/{member['image_id']}/thumbnail"
            thumb = client.get(member["thumbnail_url"])
            assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    runs = client.get("/api/v1/clusters").json()
    assert runs["total"] == 1

    filtered = client.post(
        "/api/v1/clusters",
        json={"space": "cls", "k": 2, "filter": {"folder": str(photos / "lib" / "x")}},
    )
    done = wait_for_job(client, filtered.json()["job"]["id"])
    assert done["state"] == "succeeded", done
    assert client.get(f"/api/v1/clusters/{done['counts']['run_id']}").json()["n_images"] == 6

    # A filter value no photo has says so, on the job and on every filtered answer.
    missed = client.post("/api/v1/clusters", json={"filter": {"camera_make": "aple"}})
    failed = wait_for_job(client, missed.json()["job"]["id"])
    assert failed["state"] == "failed"
    assert "no photo has camera make 'aple'" in failed["error"], failed
    labels = [row["label"] for row in client.get("/api/v1/labels").json()["labels"]]
    shout = labels[0].upper()  # labels are exact: another case misses, and is close
    page = client.get("/api/v1/images", params={"label": shout, "camera_make": "aple"})
    assert page.status_code == 200 and page.json()["total"] == 0
    notes = {n["field"]: n for n in page.json()["filter_notes"]}
    assert notes["camera_make"]["close"] == [] and notes["camera_make"]["common"] == []
    assert notes["label"]["close"][0] == labels[0], notes
    assert notes["label"]["message"].startswith(f"no photo has label '{shout}'; close values: ")
    hits = client.post("/api/v1/similar", params={"label": "nosuchlabel"}, json={"image_id": 1})
    assert hits.status_code == 200 and hits.json()["hits"] == []
    (note,) = hits.json()["filter_notes"]
    assert note["field"] == "label" and set(note["common"]) <= set(labels) and note["common"]
    assert client.get("/api/v1/images").json()["filter_notes"] == []

    assert client.post("/api/v1/clusters", json={"space": "nope"}).status_code == 404
    assert client.post("/api/v1/clusters", json={"k": 1}).status_code == 400
    assert client.post("/api/v1/clusters", json={"k": "many"}).status_code == 400
    assert client.get("/api/v1/clusters/999").status_code == 404
    assert client.get("/api/v1/jobs/999").status_code == 404
    assert client.delete("/api/v1/jobs/999").status_code == 404


def test_jobs_left_over_resume_when_the_api_starts(
    vitdex_env: dict[str, str], photos: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without Redis the API runs jobs itself; a restart picks up what was left."""
    from vitdex.config import load_settings
    from vitdex.db import ensure_schema, make_engine, session_factory
    from vitdex.db import jobs as job_rows
    from vitdex.db.models import JobState

    monkeypatch.setenv("VITDEX_ALLOWED_ROOTS", str(photos))
    engine = make_engine(load_settings().storage.resolved_database_url)
    ensure_schema(engine)
    with session_factory(engine)() as session:
        queued, _ = job_rows.enqueue_job_row(session, "index", {"paths": [str(photos / "lib")]})
        interrupted, _ = job_rows.enqueue_job_row(
            session, "index", {"paths": [str(photos / "lib" / "x")]}
        )
        interrupted.state = JobState.RUNNING  # its process died mid-run
        session.commit()
        ids = [queued.id, interrupted.id]
    engine.dispose()
    with TestClient(create_app(), raise_server_exceptions=False) as client:
        finished = [wait_for_job(client, job_id) for job_id in ids]
    assert [job["state"] for job in finished] == ["succeeded", "succeeded"]
    assert finished[0]["counts"]["embedded"] == 12


def test_api_jobs_run_on_a_real_rq_worker(
    vitdex_env: dict[str, str],
    photos: Path,
    monkeypatch: pytest.MonkeyPatch,
    rq_redis: tuple[Any, str],
) -> None:
    import subprocess
    import sys

    monkeypatch.setenv("VITDEX_ALLOWED_ROOTS", str(photos))
    with TestClient(create_app(), raise_server_exceptions=False) as client:
        assert client.get("/ready").json()["ready"] is True
        body = client.post("/api/v1/libraries", json={"path": str(photos / "lib")}).json()
        job_id = body["job"]["id"]
        assert client.get(f"/api/v1/jobs/{job_id}").json()["state"] == "queued"
        again = client.post(f"/api/v1/libraries/{body['library']['id']}/scan").json()
        assert again["job"]["id"] == job_id  # the same scan is not queued twice
        metrics = client.get("/metrics").text
        assert "vitdex_queue_depth 1.0" in metrics
        worker = subprocess.run(
            [sys.executable, "-m", "vitdex", "worker", "--burst"],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert worker.returncode == 0, worker.stderr[-3000:]
        job = client.get(f"/api/v1/jobs/{job_id}").json()
        assert job["state"] == "succeeded", job
        assert job["counts"]["embedded"] == 12
        assert client.get("/api/v1/images").json()["total"] == 12
