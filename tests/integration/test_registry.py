"""The checkpoint registry on SQLite and PostgreSQL: convert, validate, sample, list, delete.

A training run row points at a real (tiny) diffusers folder; its dataset has real image
rows, so the recorded dataset hash is checked against the images' sha256s.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from litestar import Litestar
from litestar.testing import TestClient
from PIL import Image as PILImage
from safetensors.torch import load_file, save_file

from vitdex.api import create_app
from vitdex.config import Settings, load_settings
from vitdex.db import checkpoints as db
from vitdex.db.engine import ensure_schema, make_engine, session_factory
from vitdex.db.models import (
    Checkpoint,
    Dataset,
    DatasetItem,
    Image,
    JobState,
    Library,
    TrainingRun,
)
from vitdex.errors import ConfigError, ConflictError, NotFoundError
from vitdex.training.convert import CheckpointValidationError, convert, sha256_file
from vitdex.training.registry import (
    Check,
    Provenance,
    convert_and_register,
    delete_checkpoint,
    list_checkpoints,
    open_sessions,
    register_file,
    sample_file,
    show_checkpoint,
)

Client = TestClient[Litestar]
SAMPLE_STEPS = 3  # the grid's look does not matter here; its existence and size do


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return load_settings(home=tmp_path / "home", database_url=database_url)


def _digest(i: int) -> str:
    return hashlib.sha256(f"photo {i}".encode()).hexdigest()


@pytest.fixture
def finished_run(
    settings: Settings, tiny_sd_factory: Callable[[str], Path], tmp_path: Path
) -> tuple[int, str]:
    """A succeeded training run whose final/ is the tiny SD 1.5 pipeline, and its dataset's
    expected image hash."""
    output = tmp_path / "runs" / "dog"
    shutil.copytree(tiny_sd_factory("sd15"), output / "final")
    sessions = open_sessions(settings)
    with sessions() as session:
        lib = Library(root=str(tmp_path / "photos"))
        session.add(lib)
        session.flush()
        images = [
            Image(
                library_id=lib.id,
                path=str(tmp_path / "photos" / f"{i}.jpg"),
                sha256=_digest(i),
                size=1,
                mtime_ns=1,
            )
            for i in range(5)
        ]
        session.add_all(images)
        dataset = Dataset(name="dog", prompt="a photo of sks dog")
        session.add(dataset)
        session.flush()
        # Instances 0-2 are in, 3 was dropped as a near-duplicate; 4 is a class image.
        for rank, (image, role, included) in enumerate(
            [
                (images[2], "instance", True),
                (images[0], "instance", True),
                (images[1], "instance", True),
                (images[3], "instance", False),
                (images[4], "class", True),
            ]
        ):
            session.add(
                DatasetItem(
                    dataset_id=dataset.id,
                    image_id=image.id,
                    role=role,
                    rank=rank,
                    included=included,
                    reason="neighbour" if included else "near_duplicate",
                )
            )
        run = TrainingRun(
            dataset_id=dataset.id,
            base_model="runwayml/stable-diffusion-v1-5",
            version="sd15",
            config={"instance_prompt": "a photo of sks dog", "learning_rate": 5e-6},
            state=JobState.SUCCEEDED,
            step=40,
            total_steps=40,
            loss=0.125,
            output_dir=str(output),
        )
        session.add(run)
        session.commit()
        expected = hashlib.sha256(
            "\n".join(sorted(_digest(i) for i in range(3))).encode()
        ).hexdigest()
        return run.id, expected


def test_convert_a_run_and_register_it(settings: Settings, finished_run: tuple[int, str]) -> None:
    rid, dataset_hash = finished_run
    messages: list[str] = []
    row = convert_and_register(
        settings, run_id=rid, check=Check(sample_steps=SAMPLE_STEPS), progress=messages.append
    )
    assert isinstance(row, Checkpoint) and row.id is not None
    assert messages[0].startswith("converting") and "comparing tensors" in messages

    # The run supplied everything needed to reproduce the checkpoint.
    assert (row.name, row.status, row.run_id, row.version) == ("run-1", "ready", rid, "sd15")
    assert row.base_model == "runwayml/stable-diffusion-v1-5"
    assert row.config == {"instance_prompt": "a photo of sks dog", "learning_rate": 5e-6}
    assert (row.steps, row.final_loss) == (40, 0.125)
    assert row.dataset_id is not None and row.dataset_hash == dataset_hash

    path = Path(row.path)
    assert path == settings.storage.home / "checkpoints" / "run-1.safetensors"
    assert (row.format, row.half, row.yaml_path) == ("safetensors", False, None)
    assert row.sha256 == sha256_file(path) and row.size_bytes == path.stat().st_size
    assert any(k.startswith("model.diffusion_model.") for k in load_file(path))

    # A 2x2 grid of the model's native 16 px, with AUTOMATIC1111's parameters chunk.
    sample = Path(row.sample_path or "")
    assert sample == path.with_name("run-1.preview.png")
    with PILImage.open(sample) as grid:
        assert grid.size == (32, 32)
        parameters = grid.info["parameters"]
    assert parameters.startswith("a photo of sks dog\nSteps: 3, Sampler: DDIM")
    assert f"Model hash: {row.sha256[:10]}" in parameters

    # The same name twice is refused before anything is written.
    with pytest.raises(ConflictError, match="run-1"):
        convert_and_register(settings, run_id=rid)
    other = path.with_name("other.safetensors")
    with pytest.raises(ConflictError, match="run-1"):
        convert_and_register(settings, run_id=rid, out=other, name="run-1")
    assert not other.exists()
    with pytest.raises(ConfigError, match="invalid checkpoint name"):
        convert_and_register(settings, run_id=rid, name="../escape")

    listed = list_checkpoints(settings)
    assert listed["total"] == 1 and listed["checkpoints"][0]["sha256"] == row.sha256
    assert list_checkpoints(settings, status="invalid")["total"] == 0
    assert list_checkpoints(settings, run_id=rid)["total"] == 1
    shown = show_checkpoint(settings, "run-1")
    assert shown["id"] == row.id and shown["dataset_hash"] == dataset_hash
    assert shown["files_present"] == {"path": True, "yaml_path": None, "sample_path": True}
    assert show_checkpoint(settings, str(row.id))["name"] == "run-1"

    gone = delete_checkpoint(settings, row.id)
    assert gone["deleted_files"] == [] and path.is_file() and sample.is_file()
    with pytest.raises(NotFoundError):
        show_checkpoint(settings, row.id)


def test_run_that_has_not_finished_is_refused(
    settings: Settings, finished_run: tuple[int, str]
) -> None:
    rid, _ = finished_run
    sessions = open_sessions(settings)
    with sessions() as session:
        run = session.get_one(TrainingRun, rid)
        run.state = JobState.RUNNING
        session.commit()
        final = Path(run.output_dir) / "final"
    # A running run whose training completed (final/ written) is its own job converting.
    final.rename(final.with_name("final-moved"))
    with pytest.raises(ConflictError, match="running and has not finished training"):
        convert_and_register(settings, run_id=rid)
    with pytest.raises(NotFoundError, match="training run with id 999"):
        convert_and_register(settings, run_id=999)
    # Past int64 an id names nothing: a clean "not found", not the driver's overflow.
    with pytest.raises(NotFoundError, match="training run with id"):
        convert_and_register(settings, run_id=2**70)
    with pytest.raises(NotFoundError, match="no checkpoint with id"):
        show_checkpoint(settings, "9" * 30)
    assert list_checkpoints(settings)["total"] == 0


def test_folder_with_yaml_and_delete_with_files(
    settings: Settings, tiny_sd_factory: Callable[[str], Path], tmp_path: Path
) -> None:
    out = tmp_path / "models" / "v-model.safetensors"
    row = convert_and_register(
        settings,
        tiny_sd_factory("sd21"),
        out=out,
        half=True,
        origin=Provenance(base_model="stabilityai/stable-diffusion-2-1"),
        check=Check(sample_steps=SAMPLE_STEPS, sample_prompt="a cat"),
    )
    assert (row.name, row.version, row.half, row.status) == ("v-model", "sd21", True, "ready")
    assert row.run_id is None and row.dataset_hash is None and row.config == {}
    assert row.yaml_path == str(out.with_suffix(".yaml"))
    assert 'parameterization: "v"' in out.with_suffix(".yaml").read_text()
    assert all(t.dtype.itemsize == 2 for t in load_file(out).values())
    # Files that merely sit beside it are not the checkpoint's own.
    neighbour = out.with_name("v-model-notes.txt")
    neighbour.write_text("keep me")

    gone = delete_checkpoint(settings, "v-model", files=True)
    assert sorted(gone["deleted_files"]) == sorted(
        [str(out), str(out.with_suffix(".yaml")), str(out.with_name("v-model.preview.png"))]
    )
    assert gone["kept_files"] == {}
    assert sorted(p.name for p in out.parent.iterdir()) == ["v-model-notes.txt"]
    with pytest.raises(NotFoundError):
        delete_checkpoint(settings, "v-model")


def test_invalid_file_is_registered_as_invalid(
    settings: Settings, tiny_sd_factory: Callable[[str], Path], tmp_path: Path
) -> None:
    source = tiny_sd_factory("sd15")
    result = convert(source, tmp_path / "broken.safetensors")
    state = load_file(result.path)
    key = "first_stage_model.decoder.conv_out.weight"
    state[key] = state[key] * 1.01
    save_file(state, str(result.path))

    with pytest.raises(CheckpointValidationError, match="registered as invalid") as info:
        register_file(settings, result.path, source, name="broken")
    assert "vae.decoder.conv_out.weight" in info.value.message
    listed = list_checkpoints(settings, status="invalid")["checkpoints"]
    assert [c["name"] for c in listed] == ["broken"]
    assert listed[0]["sample_path"] is None and listed[0]["sha256"] == sha256_file(result.path)
    with pytest.raises(NotFoundError, match="no sample grid"):
        sample_file(settings, "broken")
    assert delete_checkpoint(settings, "broken", files=True)["deleted_files"] == [str(result.path)]


def test_dataset_hash_needs_every_image_hashed(
    settings: Settings, finished_run: tuple[int, str]
) -> None:
    sessions = open_sessions(settings)
    with sessions() as session:
        dataset_id = session.get_one(TrainingRun, finished_run[0]).dataset_id
        assert dataset_id is not None
        assert db.dataset_image_hash(session, dataset_id) == finished_run[1]
        session.get_one(Image, 1).sha256 = None
        session.flush()
        with pytest.raises(Exception, match="without a sha256"):
            db.dataset_image_hash(session, dataset_id)
        with pytest.raises(NotFoundError):
            db.dataset_image_hash(session, 12345)


@pytest.fixture
def client(settings: Settings) -> Iterator[Client]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def test_api(
    client: Client, settings: Settings, tiny_sd_factory: Callable[[str], Path], tmp_path: Path
) -> None:
    assert client.get("/api/v1/checkpoints").json() == {
        "total": 0,
        "limit": 50,
        "offset": 0,
        "checkpoints": [],
    }
    out = tmp_path / "api.safetensors"
    engine = make_engine(settings.storage.resolved_database_url)
    ensure_schema(engine)
    row = convert_and_register(
        session_factory(engine),
        tiny_sd_factory("sd15"),
        out=out,
        check=Check(sample_steps=SAMPLE_STEPS),
    )
    engine.dispose()

    page = client.get("/api/v1/checkpoints", params={"status": "ready"}).json()
    assert page["total"] == 1 and page["checkpoints"][0]["id"] == row.id
    assert client.get("/api/v1/checkpoints", params={"status": "nope"}).status_code == 400
    one = client.get(f"/api/v1/checkpoints/{row.id}").json()
    assert (one["name"], one["sha256"], one["path"]) == ("api", row.sha256, str(out))
    assert (one["kind"], one["source_id"], one["lora_rank"]) == ("checkpoint", None, None)
    assert client.get("/api/v1/checkpoints", params={"kind": "lora"}).json()["total"] == 0

    sample = client.get(f"/api/v1/checkpoints/{row.id}/sample")
    assert sample.status_code == 200 and sample.headers["content-type"] == "image/png"
    assert sample.content == out.with_name("api.preview.png").read_bytes()

    missing = client.get("/api/v1/checkpoints/999")
    assert missing.status_code == 404
    assert missing.json() == {"status_code": 404, "detail": "no checkpoint with id 999"}
    assert client.get("/api/v1/checkpoints/999/sample").status_code == 404
    assert client.get("/api/v1/checkpoints/0").status_code == 400

    removed = client.delete(f"/api/v1/checkpoints/{row.id}", params={"files": "true"})
    assert removed.status_code == 200, removed.text
    assert removed.json()["deleted_files"] == [str(out), str(out.with_name("api.preview.png"))]
    assert not out.exists()
    assert client.get(f"/api/v1/checkpoints/{row.id}").status_code == 404
    assert client.delete(f"/api/v1/checkpoints/{row.id}").status_code == 404
