"""SD 2.x conversion carries the text encoder tensors diffusers drops from a single-file base.

A real SD 2.x file holds OpenCLIP's 24th layer and ``text_projection``; SD 2 conditions
on the penultimate layer, so diffusers' folder has 23 layers and no projection, and a
file written from it alone makes AUTOMATIC1111 and ComfyUI warn about missing keys. The
base here is the tiny sd21 pipeline converted with our own converter, plus the extra
layer and projection shaped as a real SD 2 file has them.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from vitdex.errors import ConfigError
from vitdex.training.convert import ConversionError, convert, validate_checkpoint

PREFIX = "cond_stage_model.model."


def _sd2_base(source: Path, out: Path) -> dict[str, torch.Tensor]:
    """Single-file base of ``source`` with the extra OpenCLIP layer and the projection;
    returns the extra tensors."""
    convert(source, out)
    state = load_file(out)
    config = json.loads((source / "text_encoder" / "config.json").read_text())
    width, inner = int(config["hidden_size"]), int(config["intermediate_size"])
    last = f"{PREFIX}transformer.resblocks.{int(config['num_hidden_layers'])}."
    assert not any(k.startswith(last) for k in state)  # diffusers' folder lacks it
    generator = torch.Generator().manual_seed(7)
    shapes = {
        "attn.in_proj_weight": (3 * width, width),
        "attn.in_proj_bias": (3 * width,),
        "attn.out_proj.weight": (width, width),
        "attn.out_proj.bias": (width,),
        "ln_1.weight": (width,),
        "ln_1.bias": (width,),
        "ln_2.weight": (width,),
        "ln_2.bias": (width,),
        "mlp.c_fc.weight": (inner, width),
        "mlp.c_fc.bias": (inner,),
        "mlp.c_proj.weight": (width, inner),
        "mlp.c_proj.bias": (width,),
    }
    extra = {last + k: torch.randn(shape, generator=generator) for k, shape in shapes.items()}
    extra[PREFIX + "text_projection"] = torch.randn((width, width), generator=generator)
    out.unlink()
    save_file({**state, **extra}, str(out))
    return extra


def _as_run(source: Path, root: Path, base: Path) -> Path:
    """A finished run's layout: ``final/`` and the ``result.json`` naming its base."""
    final = root / "final"
    shutil.copytree(source, final)
    (root / "result.json").write_text(json.dumps({"config": {"base_model": str(base)}}))
    return final


@pytest.mark.parametrize("version", ["sd21", "sd21-base"])
def test_sd2_file_gets_the_base_files_last_layer_and_projection(
    tiny_sd_factory: Callable[[str], Path], tmp_path: Path, version: str
) -> None:
    source = tiny_sd_factory(version)
    base = tmp_path / "base.safetensors"
    extra = _sd2_base(source, base)

    # A run trained from that file: its result.json names the base.
    final = _as_run(source, tmp_path / "run", base)
    result = convert(final, tmp_path / "out.safetensors")
    assert result.carried == tuple(sorted(extra))
    written = load_file(result.path)
    for key, tensor in extra.items():
        assert written[key].dtype == tensor.dtype and torch.equal(written[key], tensor), key
    assert result.tensors == len(written)
    # diffusers reads it back as before (it ignores what SD 2 does not use).
    assert validate_checkpoint(result.path, final).sample_max_diff <= 1e-4

    # Given explicitly, to a half .ckpt: the same tensors, rounded like the rest.
    ckpt = convert(source, tmp_path / "half.ckpt", half=True, base_file=base)
    saved = torch.load(ckpt.path, weights_only=True)["state_dict"]
    for key, tensor in extra.items():
        assert torch.equal(saved[key], tensor.half()), key

    # Without a single-file base nothing is invented.
    plain = convert(source, tmp_path / "plain.safetensors")
    assert plain.carried == () and not set(extra) & set(load_file(plain.path))


def test_a_base_that_does_not_fit_is_refused(
    tiny_sd_factory: Callable[[str], Path], tmp_path: Path
) -> None:
    source = tiny_sd_factory("sd21")
    base = tmp_path / "base.safetensors"
    _sd2_base(source, base)
    state = load_file(base)
    key = PREFIX + "token_embedding.weight"
    state[key] = torch.zeros(state[key].shape[0], state[key].shape[1] * 2)
    save_file(state, str(base))
    with pytest.raises(ConversionError, match="another text encoder"):
        convert(source, tmp_path / "out.safetensors", base_file=base)
    assert not (tmp_path / "out.safetensors").exists()
    with pytest.raises(ConfigError, match="no base checkpoint file"):
        convert(source, tmp_path / "out.safetensors", base_file=tmp_path / "nope.safetensors")
    # An SD 1.x base has no OpenCLIP encoder at all.
    sd15 = tmp_path / "sd15.safetensors"
    convert(tiny_sd_factory("sd15"), sd15)
    with pytest.raises(ConversionError, match=r"no SD 2\.x"):
        convert(source, tmp_path / "out.safetensors", base_file=sd15)
