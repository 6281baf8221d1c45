"""`vitdex worker` says what it serves and what it did: a start line (queue, catalog with
its password hidden, model, device) and one line per job (id, kind, end state, seconds);
and neither its log nor `vitdex index` carries Pillow's bomb warning for a file that
vitdex refuses with its own reason.

A real worker process (``--burst``) on a Redis of the test's own (never the shared one).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import OwnRedis, as_json, run_vitdex
from tests.photos import make_bomb_png, make_photo
from vitdex.config import load_settings
from vitdex.db import jobs as job_sql
from vitdex.jobs.queue import RqQueue, make_queue, rq_queue_name
from vitdex.jobs.worker import redacted_url


@pytest.fixture
def own_redis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, vitdex_env: dict[str, str]
) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path)
    server.start()
    monkeypatch.setenv("VITDEX_REDIS_URL", server.url)
    monkeypatch.setenv("VITDEX_QUEUE_NAME", f"vitdex-test-{uuid.uuid4().hex[:10]}")
    try:
        yield server
    finally:
        server.kill()


def _submit_index_job(folder: Path) -> int:
    settings = load_settings()
    sessions = job_sql.catalog_sessions(settings.storage.resolved_database_url)
    with sessions() as session:
        job, _ = job_sql.enqueue_job_row(session, "index", {"paths": [str(folder)]})
        session.commit()
        job_id = job.id
    queue = make_queue(settings)
    assert isinstance(queue, RqQueue)
    queue.submit(job_id, kind="index")
    queue.close()
    return job_id


def test_redacted_url_hides_the_password_only() -> None:
    url = "postgresql://vitdex:hunter2@db.example:5432/catalog"
    assert redacted_url(url) == "postgresql://vitdex:***@db.example:5432/catalog"
    assert redacted_url("sqlite:////tmp/a.db") == "sqlite:////tmp/a.db"


def test_worker_logs_its_start_and_each_job(own_redis: OwnRedis, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    for i in range(3):
        make_photo(photos / f"p{i}.jpg", seed=i)
    # 150 MP: past the 100 MP limit but under twice it, where Pillow warns, not refuses.
    make_bomb_png(photos / "wide.png", size=(15000, 10000))
    job_id = _submit_index_job(photos)
    missing = _submit_index_job(tmp_path / "gone")

    log = run_vitdex("worker", "--burst").stderr
    settings = load_settings()
    start = (
        f"worker started: queue {rq_queue_name(settings)}, "
        f"catalog {redacted_url(settings.storage.resolved_database_url)}, "
        f"model {settings.model.model}, device cpu"
    )
    assert start in log, log[-3000:]
    assert re.search(rf"job {job_id} \(index\): succeeded in \d+\.\d s", log), log[-3000:]
    assert re.search(rf"job {missing} \(index\): failed in \d+\.\d s", log), log[-3000:]
    assert "DecompressionBombWarning" not in log and "decompression bomb" not in log
    assert _failures() == {"wide.png": TOO_LARGE}


TOO_LARGE = "file is too large: 15000x10000 = 150.0 MP > VITDEX_MAX_MEGAPIXELS=100"


def _failures() -> dict[str, str]:
    failures = as_json(run_vitdex("status", "--json"))["failures"]
    return {Path(f["path"]).name: f["error"] for f in failures}


def test_index_output_has_no_pillow_bomb_warning(
    vitdex_env: dict[str, str], tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    make_photo(photos / "ok.jpg")
    make_bomb_png(photos / "wide.png", size=(15000, 10000))
    done = run_vitdex("index", str(photos), "--no-progress")
    assert "DecompressionBombWarning" not in done.stderr, done.stderr
    assert "decompression bomb" not in done.stderr + done.stdout
    assert _failures() == {"wide.png": TOO_LARGE}
