"""LoRA extraction on real (tiny) Stable Diffusion models, checked the way users load it.

Each test changes a copy of a tiny random base, writes it as a single-file checkpoint
with the real converter, extracts a LoRA, loads the base with diffusers and
``pipe.load_lora_weights(file)``, and compares the text encoder output and the UNet noise
prediction on fixed inputs with the changed model's own. Tolerance: relative error
(Frobenius, over the whole output tensor) ≤ 1e-3 when the rank holds the whole change.
"""

from __future__ import annotations

import itertools
import logging
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from litestar import Litestar
from litestar.testing import TestClient
from safetensors import safe_open

from tests.helpers import wait_for_job
from vitdex.api import create_app
from vitdex.config import Settings, load_settings
from vitdex.db import checkpoints as db
from vitdex.errors import ConfigError, ConflictError, NotFoundError
from vitdex.training.bases import load_base
from vitdex.training.convert import convert, sha256_file
from vitdex.training.lora import extract_and_register, extract_lora
from vitdex.training.registry import delete_checkpoint, list_checkpoints, open_sessions

pytestmark = pytest.mark.slow

TOLERANCE = 1e-3
COVERED = ("to_q", "to_k", "to_v", "to_out.0", "ff.net", "proj_in", "proj_out")
TEXT_COVERED = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
Client = TestClient[Litestar]


def _covered_layers(
    pipe: Any, *, convs: bool = False, unet: bool = True
) -> Iterator[torch.nn.Linear | torch.nn.Conv2d]:
    """The layers a kohya LoRA covers (the tests' own list, not the code's)."""
    for name, module in pipe.unet.named_modules() if unet else ():
        if not isinstance(module, torch.nn.Linear | torch.nn.Conv2d):
            continue
        in_transformer = "attentions." in name and any(part in name for part in COVERED)
        in_resnet = convs and ("resnets." in name or "samplers." in name)
        if in_transformer or in_resnet:
            yield module
    for encoder in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)):
        if encoder is None:
            continue
        for name, module in encoder.named_modules():
            if isinstance(module, torch.nn.Linear) and name.endswith(TEXT_COVERED):
                yield module


def _plant(pipe: Any, rank: int, *, seed: int = 1, unet: bool = True) -> None:
    """Add a random rank-``rank`` change (about 20% of the weights' size) to every layer."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in _covered_layers(pipe, unet=unet):
            w = module.weight
            rows, cols = w.shape[0], w[0].numel()
            a, b = torch.randn(rows, rank, generator=g), torch.randn(rank, cols, generator=g)
            delta = a @ b
            delta *= 0.2 * w.norm() / delta.norm()
            w += delta.reshape(w.shape)


def _perturb_full_rank(pipe: Any, *, convs: bool, seed: int = 2) -> None:
    """A full-rank random change (10% of each weight's size), convs included on request."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in _covered_layers(pipe, convs=convs):
            w = module.weight
            noise = torch.randn(w.shape, generator=g)
            w += noise * (0.1 * w.norm() / noise.norm())


def _trained_file(
    base: Path, tmp_path: Path, change: Callable[[Any], None], *, half: bool = False
) -> Path:
    """``base`` with ``change`` applied, saved and converted to one original-layout file."""
    pipe = load_base(base).pipeline
    change(pipe)
    pipe.save_pretrained(tmp_path / "trained", safe_serialization=True)
    out = tmp_path / ("trained-fp16.safetensors" if half else "trained.safetensors")
    return convert(tmp_path / "trained", out, half=half).path


def _outputs(pipe: Any, version: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(text encoder output, UNet noise prediction) on fixed inputs."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, pipe.text_encoder.config.vocab_size, (1, 8), generator=g)
    latents = torch.randn(1, 4, 8, 8, generator=g)
    with torch.no_grad():
        first = pipe.text_encoder(ids, output_hidden_states=True)
        if version == "sdxl":
            second = pipe.text_encoder_2(ids, output_hidden_states=True)
            context = torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1)
            added = {"text_embeds": second.text_embeds, "time_ids": torch.zeros(1, 6)}
            noise = pipe.unet(latents, 500, context, added_cond_kwargs=added).sample
            return torch.cat([first[0].flatten(), second[0].flatten()]), noise
        return first[0], pipe.unet(latents, 500, first[0]).sample


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _with_lora(base: Path, lora: Path) -> tuple[Any, list[str]]:
    """The base pipeline with the LoRA loaded by diffusers, and every warning it raised."""
    pipe = load_base(base).pipeline
    records = _Records()
    loggers = [logging.getLogger(n) for n in ("diffusers", "transformers", "peft")]
    for logger in loggers:
        logger.addHandler(records)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pipe.load_lora_weights(str(lora))
    finally:
        for logger in loggers:
            logger.removeHandler(records)
    return pipe, records.messages + [str(w.message) for w in caught]


def _lora_modules(module: torch.nn.Module) -> int:
    return sum(1 for m in module.modules() if getattr(m, "lora_A", None))


def _file_layers(path: Path, prefix: str) -> set[str]:
    with safe_open(str(path), "pt") as fh:
        return {k.split(".")[0] for k in fh.keys() if k.startswith(prefix)}  # noqa: SIM118


@pytest.mark.parametrize("version", ["sd15", "sd21-base", "sdxl"])
def test_planted_low_rank_change_is_recovered(
    version: str, tiny_sd_factory: Callable[[str], Path], tmp_path: Path
) -> None:
    base = tiny_sd_factory(version)
    trained = _trained_file(base, tmp_path, lambda p: _plant(p, 4))
    result = extract_lora(trained, base, tmp_path / "planted.safetensors", rank=4)

    expected = load_base(tmp_path / "trained").pipeline
    assert result.layers == len(list(_covered_layers(expected)))
    assert result.energy_retained > 1 - 1e-9 and result.mean_relative_error < 1e-5
    assert result.not_captured == [] and result.version == version
    pipe, complaints = _with_lora(base, result.path)
    assert complaints == []
    # Every layer in the file became a LoRA layer of the model (nothing dropped unread).
    assert _lora_modules(pipe.unet) == len(_file_layers(result.path, "lora_unet_"))
    text_layers = _file_layers(result.path, "lora_te")
    assert _lora_modules(pipe.text_encoder) + _lora_modules(
        getattr(pipe, "text_encoder_2", None) or torch.nn.Module()
    ) == len(text_layers)
    got, want = _outputs(pipe, version), _outputs(expected, version)
    base_out = _outputs(load_base(base).pipeline, version)
    for mine, theirs, before in zip(got, want, base_out, strict=True):
        assert _relative(before, theirs) > 0.01  # the change is visible ...
        assert _relative(mine, theirs) <= TOLERANCE  # ... and the LoRA carries it

    with safe_open(str(result.path), "pt") as fh:
        meta = fh.metadata()
        keys = set(fh.keys())
    assert meta["ss_network_module"] == "networks.lora"
    assert (meta["ss_network_dim"], meta["ss_network_alpha"]) == ("4", "4")
    assert meta["modelspec.architecture"].endswith("/lora")
    names = {k.split(".")[0] for k in keys}
    assert all(
        {f"{n}.lora_up.weight", f"{n}.lora_down.weight", f"{n}.alpha"} <= keys for n in names
    )
    if version == "sdxl":
        # kohya's SDXL naming: the original (sgm) UNet blocks, two text encoders.
        assert any(n.startswith("lora_unet_input_blocks_") for n in names)
        assert any(n.startswith("lora_te1_") for n in names)
        assert any(n.startswith("lora_te2_") for n in names)
    else:
        assert any(n.startswith("lora_unet_down_blocks_") for n in names)
        assert any(n.startswith("lora_te_text_model_encoder_layers_") for n in names)


def test_error_falls_with_rank_and_vanishes_at_full_rank(
    tiny_sd_factory: Callable[[str], Path], tmp_path: Path
) -> None:
    base = tiny_sd_factory("sd15")
    trained = _trained_file(base, tmp_path, lambda p: _perturb_full_rank(p, convs=True))
    expected = _outputs(load_base(tmp_path / "trained").pipeline, "sd15")
    errors: list[tuple[float, float]] = []
    # 576 = the widest flattened 3x3 conv of the tiny UNet (64 channels x 9): full rank.
    for rank in (1, 4, 16, 576):
        result = extract_lora(
            trained, base, tmp_path / f"r{rank}.safetensors", rank=rank, conv_rank=rank
        )
        pipe, complaints = _with_lora(base, result.path)
        assert complaints == []
        got = _outputs(pipe, "sd15")
        errors.append((_relative(got[0], expected[0]), _relative(got[1], expected[1])))
        print(
            f"rank {rank}: text {errors[-1][0]:.2e}, unet {errors[-1][1]:.2e}, "
            f"energy {result.energy_retained:.4f}, {result.size_bytes} bytes"
        )
    for (text_a, unet_a), (text_b, unet_b) in itertools.pairwise(errors):
        assert text_b < text_a and unet_b < unet_a
    assert max(errors[-1]) <= TOLERANCE

    # Without --conv-rank the resnets' change is left out, and counted as not captured.
    linear_only = extract_lora(trained, base, tmp_path / "linear.safetensors", rank=576)
    assert any("resnets" in name for name in linear_only.not_captured)
    pipe, _ = _with_lora(base, linear_only.path)
    assert _relative(_outputs(pipe, "sd15")[1], expected[1]) > 10 * TOLERANCE


def test_sdxl_convs_in_sgm_names_load_without_loss(
    tiny_sd_factory: Callable[[str], Path], tmp_path: Path
) -> None:
    base = tiny_sd_factory("sdxl")

    def change(pipe: Any) -> None:
        # The tiny SDXL's first up block has an upsampler but no attention, a layout the
        # real SDXL lacks and diffusers' sgm name mapping misplaces; keep it unchanged.
        upsampler = pipe.unet.up_blocks[0].upsamplers[0].conv.weight
        kept = upsampler.detach().clone()
        _perturb_full_rank(pipe, convs=True)
        with torch.no_grad():
            upsampler.copy_(kept)

    trained = _trained_file(base, tmp_path, change)
    expected = _outputs(load_base(tmp_path / "trained").pipeline, "sdxl")
    result = extract_lora(trained, base, tmp_path / "xl.safetensors", rank=576, conv_rank=576)
    names = _file_layers(result.path, "lora_unet_")
    assert any(n.endswith("_in_layers_2") for n in names)  # resnet conv1, sgm spelling
    assert any(n.endswith("_skip_connection") for n in names)
    pipe, complaints = _with_lora(base, result.path)
    assert complaints == []
    assert _lora_modules(pipe.unet) == len(names)
    for mine, theirs in zip(_outputs(pipe, "sdxl"), expected, strict=True):
        assert _relative(mine, theirs) <= TOLERANCE


def test_fp16_file_unchanged_base_and_wrong_base(
    tiny_sd_factory: Callable[[str], Path], tmp_path: Path
) -> None:
    base = tiny_sd_factory("sd15")
    # A text-encoder-only change in an fp16 file: fp16 rounding is not taken for a change.
    half = _trained_file(base, tmp_path, lambda p: _plant(p, 2, unet=False), half=True)
    result = extract_lora(half, base, tmp_path / "te.safetensors", rank=2)
    assert _file_layers(result.path, "lora_unet_") == set()
    assert result.layers == len(list(_covered_layers(load_base(base).pipeline, unet=False)))
    assert result.unchanged == len(list(_covered_layers(load_base(base).pipeline))) - result.layers

    same = convert(base, tmp_path / "same.safetensors").path
    with pytest.raises(ConfigError, match="does not differ"):
        extract_lora(same, base, tmp_path / "none.safetensors", rank=4)
    assert not (tmp_path / "none.safetensors").exists()
    with pytest.raises(ConfigError, match="does not match the base"):
        extract_lora(same, tiny_sd_factory("sdxl"), tmp_path / "x.safetensors", rank=4)
    with pytest.raises(ConfigError, match="between 1 and"):
        extract_lora(same, base, tmp_path / "x.safetensors", rank=0)
    with pytest.raises(NotFoundError):
        extract_lora(tmp_path / "gone.safetensors", base, tmp_path / "x.safetensors", rank=4)


# --------------------------------------------------------------------------- registry


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return load_settings(home=tmp_path / "home", database_url=database_url)


@pytest.fixture
def registered(
    settings: Settings, tiny_sd_factory: Callable[[str], Path], tmp_path: Path
) -> tuple[int, Path]:
    """A registered trained checkpoint (planted rank-4 change) whose base is the tiny SD."""
    base = tiny_sd_factory("sd15")
    trained = _trained_file(base, tmp_path, lambda p: _plant(p, 4))
    with open_sessions(settings)() as session:
        row = db.create_checkpoint(
            session,
            name="dog",
            base_model=str(base),
            version="sd15",
            path=str(trained),
            sha256=sha256_file(trained),
            size_bytes=trained.stat().st_size,
            file_format="safetensors",
            dataset_hash="ab" * 32,
            steps=40,
            final_loss=0.125,
            config={"learning_rate": 5e-6},
        )
        session.commit()
        return row.id, trained


def test_register_list_show_delete(settings: Settings, registered: tuple[int, Path]) -> None:
    source_id, trained = registered
    said: list[str] = []
    row = extract_and_register(settings, "dog", rank=4, say=said.append)
    out = settings.storage.home / "loras" / "dog-lora4.safetensors"
    assert (row.kind, row.source_id, row.lora_rank, row.name) == ("lora", source_id, 4, "dog-lora4")
    assert (row.path, row.sha256, row.format) == (str(out), sha256_file(out), "safetensors")
    assert (row.version, row.dataset_hash, row.steps) == ("sd15", "ab" * 32, 40)
    assert row.config["rank"] == 4 and row.config["energy_retained"] > 0.999999
    assert row.config["source_sha256"] == sha256_file(trained)
    assert any("loading the base" in line for line in said)
    with safe_open(str(out), "pt") as fh:
        assert fh.metadata()["vitdex.source_sha256"] == sha256_file(trained)

    loras = list_checkpoints(settings, kind="lora")
    assert [c["name"] for c in loras["checkpoints"]] == ["dog-lora4"]
    assert list_checkpoints(settings, kind="checkpoint")["total"] == 1
    with pytest.raises(ConflictError):
        extract_and_register(settings, "dog", rank=4)
    with pytest.raises(ConfigError, match="is a LoRA already"):
        extract_and_register(settings, "dog-lora4", rank=2)
    with pytest.raises(NotFoundError):
        extract_and_register(settings, "cat", rank=4)
    # By path: the registered row is found, so the base comes from it.
    by_path = extract_and_register(settings, str(trained), rank=2, name="by-path")
    assert by_path.source_id == source_id

    gone = delete_checkpoint(settings, "dog-lora4", files=True)
    assert gone["deleted_files"] == [str(out)] and not out.exists()
    assert trained.exists()


@pytest.fixture
def client(settings: Settings) -> Iterator[Client]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def test_api_extracts_in_a_job(
    client: Client, registered: tuple[int, Path], settings: Settings
) -> None:
    source_id, _ = registered
    url = f"/api/v1/checkpoints/{source_id}/lora"
    queued = client.post(url, json={"rank": 4, "name": "api-lora"})
    assert queued.status_code == 202, queued.text
    job = wait_for_job(client, queued.json()["job"]["id"])
    assert job["kind"] == "lora-extract" and job["state"] == "succeeded", job
    lora_id = job["counts"]["checkpoint_id"]
    shown = client.get(f"/api/v1/checkpoints/{lora_id}").json()
    assert (shown["kind"], shown["source_id"], shown["lora_rank"]) == ("lora", source_id, 4)
    assert shown["files_present"]["path"] is True
    page = client.get("/api/v1/checkpoints", params={"kind": "lora"}).json()
    assert [c["id"] for c in page["checkpoints"]] == [lora_id]
    source = client.get(f"/api/v1/checkpoints/{source_id}").json()
    assert (source["kind"], source["source_id"], source["lora_rank"]) == ("checkpoint", None, None)

    assert client.post(url, json={"rank": 4, "name": "api-lora"}).status_code == 409
    assert client.post(url, json={"rank": 0}).status_code == 400
    assert client.post(url, json={"rank": 5000}).status_code == 400
    assert client.post(url, json={}).status_code == 400
    assert client.post("/api/v1/checkpoints/999/lora", json={"rank": 4}).status_code == 404
    refused = client.post(f"/api/v1/checkpoints/{lora_id}/lora", json={"rank": 2})
    assert refused.status_code == 400 and "LoRA already" in refused.json()["detail"]
    bad_name = client.post(url, json={"rank": 2, "name": "a/b"})
    assert bad_name.status_code == 400

    with open_sessions(settings)() as session:
        db.get_checkpoint(session, source_id).base_model = str(settings.storage.home / "gone")
        session.commit()
    no_base = client.post(url, json={"rank": 3})
    assert no_base.status_code == 400 and "is gone" in no_base.json()["detail"]
