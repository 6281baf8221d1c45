"""Single-file conversion: the original SD layout, read back by diffusers itself.

The tiny pipelines go all the way: converted, written, loaded with ``from_single_file``,
compared tensor by tensor and by a fixed-seed render. The real SD 1.5, 2.1 and SDXL
architectures are checked on the meta device (shapes, no memory): every key lands where
the original checkpoints have it and diffusers' own reader maps it back.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from vitdex.devices import resolve_device
from vitdex.errors import ConfigError
from vitdex.training.convert import (
    CheckpointValidationError,
    ConversionError,
    clip_to_ldm,
    convert,
    detect_version,
    inference_yaml,
    openclip_to_ldm,
    sha256_file,
    unet_to_ldm,
    vae_to_ldm,
    validate_checkpoint,
)

PREFIXES = {
    "sd15": ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer."),
    "sd21-base": ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.model."),
    "sd21": ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.model."),
    "sdxl": (
        "model.diffusion_model.",
        "first_stage_model.",
        "conditioner.embedders.0.transformer.",
        "conditioner.embedders.1.model.",
    ),
}


def _config(folder: Path, component: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((folder / component / "config.json").read_text())
    return data


@pytest.mark.parametrize("version", ["sd15", "sd21-base", "sd21", "sdxl"])
def test_tiny_pipeline_round_trips_through_from_single_file(
    tiny_sd_factory: Callable[[str], Path], tmp_path: Path, version: str
) -> None:
    source = tiny_sd_factory(version)
    assert detect_version(source) == version
    result = convert(source, tmp_path / f"{version}.safetensors")

    assert result.version == version and result.format == "safetensors" and not result.half
    assert result.sha256 == sha256_file(result.path)
    assert result.size_bytes == result.path.stat().st_size
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file was renamed away
    state = load_file(result.path)
    assert len(state) == result.tensors
    assert {k.split(".")[0] for k in state} <= {
        "model",
        "first_stage_model",
        "cond_stage_model",
        "conditioner",
    }
    for prefix in PREFIXES[version]:
        assert any(k.startswith(prefix) for k in state), prefix
    with safe_open(str(result.path), "pt") as fh:
        meta = fh.metadata()
    assert meta["modelspec.prediction_type"] == ("v" if version == "sd21" else "epsilon")

    # diffusers reads it back equal, tensor by tensor, and renders the same sample.
    report = validate_checkpoint(result.path, source)
    assert report.sample_max_diff <= 1e-4
    expected = {"unet", "vae", "text_encoder"} | (
        {"text_encoder_2"} if version == "sdxl" else set()
    )
    assert set(report.tensors) == expected
    assert report.tensors["unet"] == len(
        load_file(source / "unet" / "diffusion_pytorch_model.safetensors")
    )

    yaml_file = tmp_path / f"{version}.yaml"
    if version not in ("sd21", "sd21-base"):
        assert result.yaml_path is None and not yaml_file.exists()
        return
    assert result.yaml_path == yaml_file  # same stem: how AUTOMATIC1111 finds it
    original = yaml.safe_load(yaml_file.read_text())
    params = original["model"]["params"]
    assert params.get("parameterization") == ("v" if version == "sd21" else None)
    assert params["cond_stage_config"]["target"].endswith("FrozenOpenCLIPEmbedder")
    # diffusers' own YAML reader rebuilds the UNet and VAE architecture from it.
    from diffusers.loaders.single_file_utils import (
        create_unet_diffusers_config_from_ldm,
        create_vae_diffusers_config_from_ldm,
    )

    unet = _config(source, "unet")
    rebuilt = create_unet_diffusers_config_from_ldm(original, state)
    for key in (
        "block_out_channels",
        "down_block_types",
        "up_block_types",
        "layers_per_block",
        "cross_attention_dim",
        "attention_head_dim",
        "use_linear_projection",
        "in_channels",
        "out_channels",
    ):
        assert (
            list(rebuilt[key]) == list(unet[key])
            if isinstance(unet[key], list)
            else (rebuilt[key] == unet[key])
        ), key
    vae = _config(source, "vae")
    rebuilt_vae = create_vae_diffusers_config_from_ldm(original, state)
    assert rebuilt_vae["block_out_channels"] == vae["block_out_channels"]
    assert rebuilt_vae["layers_per_block"] == vae["layers_per_block"]
    assert rebuilt_vae["scaling_factor"] == vae["scaling_factor"]


def test_half_ckpt_holds_fp16_and_validates_against_the_rounded_source(
    tiny_sd_factory: Callable[[str], Path], tmp_path: Path
) -> None:
    source = tiny_sd_factory("sd21")
    result = convert(source, tmp_path / "half.ckpt", half=True, fmt="ckpt")
    assert result.format == "ckpt" and result.half
    assert result.yaml_path == tmp_path / "half.yaml"
    loaded = torch.load(result.path, map_location="cpu", weights_only=True)
    assert set(loaded) == {"state_dict"}
    tensors = loaded["state_dict"]
    assert all(t.dtype == torch.float16 for t in tensors.values() if t.is_floating_point())
    # Conversion is exact up to the fp16 rounding of each weight.
    full = load_file(source / "vae" / "diffusion_pytorch_model.safetensors")
    assert torch.equal(
        tensors["first_stage_model.decoder.conv_out.weight"], full["decoder.conv_out.weight"].half()
    )

    report = validate_checkpoint(result.path, source, half=True)
    assert report.sample_max_diff <= 1e-4
    # The same file is not the full-precision source: validation must say so.
    with pytest.raises(CheckpointValidationError, match="do not load back equal"):
        validate_checkpoint(result.path, source, half=False)


def test_validation_catches_a_corrupted_tensor(
    tiny_sd_factory: Callable[[str], Path], tmp_path: Path
) -> None:
    source = tiny_sd_factory("sd15")
    result = convert(source, tmp_path / "model.safetensors")
    state = load_file(result.path)
    key = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    state[key] = state[key].clone()
    state[key][0, 0] += 1e-3  # one weight, barely
    save_file(state, str(result.path))
    with pytest.raises(CheckpointValidationError) as info:
        validate_checkpoint(result.path, source)
    assert "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight" in str(
        info.value.message
    )

    # A file diffusers cannot read at all fails validation too, with a clear message.
    result.path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointValidationError, match="cannot load"):
        validate_checkpoint(result.path, source)


def test_refuses_what_it_cannot_write_faithfully(
    tiny_sd_factory: Callable[[str], Path], tmp_path: Path
) -> None:
    source = tiny_sd_factory("sd15")
    with pytest.raises(ConversionError, match="sd15 model"):
        convert(source, tmp_path / "a.safetensors", version="sd21")
    with pytest.raises(ConfigError, match=r"must end in \.ckpt"):
        convert(source, tmp_path / "a.safetensors", fmt="ckpt")
    with pytest.raises(ConversionError, match="not a diffusers folder"):
        convert(tmp_path, tmp_path / "a.safetensors")
    (tmp_path / "taken.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match="exists"):
        convert(source, tmp_path / "taken.safetensors")
    assert (tmp_path / "taken.safetensors").read_bytes() == b""

    # One device rule for validation as for training and indexing (vitdex.devices).
    with pytest.raises(ConfigError, match="invalid device 'tpu'"):
        resolve_device("tpu")
    assert resolve_device("cpu") == torch.device("cpu")
    if torch.backends.mps.is_available():
        assert resolve_device("mps") == torch.device("mps")
    else:
        with pytest.raises(ConfigError, match="no MPS support"):
            resolve_device("mps")
    with pytest.raises(ConfigError, match="invalid device 'tpu'"):
        validate_checkpoint(tmp_path / "a.safetensors", source, device="tpu")

    unet = load_file(source / "unet" / "diffusion_pytorch_model.safetensors")
    unet["extra_head.weight"] = torch.zeros(1)
    with pytest.raises(ConversionError, match=r"extra_head\.weight"):
        unet_to_ldm(unet, _config(source, "unet"))


# ----------------------------------------------------------------- the real architectures

SD15_UNET: dict[str, Any] = {
    "sample_size": 64,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}
SD21_UNET: dict[str, Any] = {
    "sample_size": 96,
    "cross_attention_dim": 1024,
    "attention_head_dim": [5, 10, 20, 20],
    "use_linear_projection": True,
    "upcast_attention": True,
}
SDXL_UNET: dict[str, Any] = {
    "sample_size": 128,
    "cross_attention_dim": 2048,
    "attention_head_dim": [5, 10, 20],
    "use_linear_projection": True,
    "block_out_channels": [320, 640, 1280],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "transformer_layers_per_block": [1, 2, 10],
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}
SD_VAE: dict[str, Any] = {
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 2,
    "sample_size": 512,
}
CLIP_L = {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12}
OPENCLIP_H = {"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16}
OPENCLIP_BIG_G = {"hidden_size": 1280, "intermediate_size": 5120, "num_attention_heads": 20}


def _meta_text(cls: Any, layers: int, act: str, **dims: Any) -> Any:
    from transformers import CLIPTextConfig

    config = CLIPTextConfig(
        num_hidden_layers=layers, hidden_act=act, vocab_size=49408, projection_dim=1280, **dims
    )
    return cls(config)


def _real_checkpoint(version: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The real architecture's weights as meta tensors, in both layouts."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    unet: Any
    vae: Any
    with torch.device("meta"):
        unet = UNet2DConditionModel(
            **{"sd15": SD15_UNET, "sd21": SD21_UNET, "sdxl": SDXL_UNET}[version]
        )
        vae = AutoencoderKL(**SD_VAE)
        if version == "sd15":
            texts = {
                "cond_stage_model.transformer.": (
                    "clip",
                    _meta_text(CLIPTextModel, 12, "quick_gelu", **CLIP_L),
                )
            }
        elif version == "sd21":
            # diffusers keeps 23 of OpenCLIP ViT-H's 24 layers (SD 2 reads the penultimate).
            texts = {
                "cond_stage_model.model.": (
                    "openclip",
                    _meta_text(CLIPTextModel, 23, "gelu", **OPENCLIP_H),
                )
            }
        else:
            texts = {
                "conditioner.embedders.0.transformer.": (
                    "clip",
                    _meta_text(CLIPTextModel, 12, "quick_gelu", **CLIP_L),
                ),
                "conditioner.embedders.1.model.": (
                    "openclip",
                    _meta_text(CLIPTextModelWithProjection, 32, "gelu", **OPENCLIP_BIG_G),
                ),
            }
    state = {
        "model.diffusion_model." + k: v
        for k, v in unet_to_ldm(unet.state_dict(), unet.config).items()
    }
    state.update(
        {"first_stage_model." + k: v for k, v in vae_to_ldm(vae.state_dict(), vae.config).items()}
    )
    sources: dict[str, Any] = {"unet": unet, "vae": vae, "texts": texts}
    for prefix, (kind, model) in texts.items():
        mapped = (
            clip_to_ldm(model.state_dict())
            if kind == "clip"
            else openclip_to_ldm(model.state_dict())
        )
        state.update({prefix + k: v for k, v in mapped.items()})
    return state, sources


# Keys and shapes as the original checkpoints (v1-5-pruned, v2-1_768, sd_xl_base_1.0) have them.
KNOWN_KEYS: dict[str, dict[str, tuple[int, ...]]] = {
    "sd15": {
        "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
        "model.diffusion_model.input_blocks.3.0.op.weight": (320, 320, 3, 3),
        "model.diffusion_model.input_blocks.4.0.skip_connection.weight": (640, 320, 1, 1),
        "model.diffusion_model.input_blocks.11.0.emb_layers.1.weight": (1280, 1280),
        "model.diffusion_model.middle_block.1.proj_in.weight": (1280, 1280, 1, 1),
        "model.diffusion_model.middle_block.2.out_layers.3.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.2.1.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.5.2.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.11.0.skip_connection.weight": (320, 640, 1, 1),
        "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.attn2.to_k.weight": (
            320,
            768,
        ),
        "model.diffusion_model.time_embed.2.weight": (1280, 1280),
        "model.diffusion_model.out.2.weight": (4, 320, 3, 3),
        "first_stage_model.encoder.down.3.block.1.conv2.weight": (512, 512, 3, 3),
        "first_stage_model.encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
        "first_stage_model.decoder.mid.attn_1.proj_out.weight": (512, 512, 1, 1),
        "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight": (128, 256, 1, 1),
        "first_stage_model.decoder.up.3.upsample.conv.weight": (512, 512, 3, 3),
        "first_stage_model.decoder.norm_out.weight": (128,),
        "first_stage_model.quant_conv.weight": (8, 8, 1, 1),
        "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.weight": (768, 3072),
        "cond_stage_model.transformer.text_model.final_layer_norm.weight": (768,),
    },
    "sd21": {
        "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight": (
            320,
            1024,
        ),
        "model.diffusion_model.input_blocks.1.1.proj_in.weight": (320, 320),
        "cond_stage_model.model.positional_embedding": (77, 1024),
        "cond_stage_model.model.token_embedding.weight": (49408, 1024),
        "cond_stage_model.model.transformer.resblocks.22.attn.in_proj_weight": (3072, 1024),
        "cond_stage_model.model.transformer.resblocks.22.attn.in_proj_bias": (3072,),
        "cond_stage_model.model.transformer.resblocks.0.mlp.c_fc.weight": (4096, 1024),
        "cond_stage_model.model.ln_final.bias": (1024,),
    },
    "sdxl": {
        "model.diffusion_model.label_emb.0.0.weight": (1280, 2816),
        "model.diffusion_model.input_blocks.4.1.transformer_blocks.1.attn1.to_q.weight": (
            640,
            640,
        ),
        "model.diffusion_model.input_blocks.8.1.transformer_blocks.9.ff.net.2.weight": (
            1280,
            5120,
        ),
        "model.diffusion_model.middle_block.1.transformer_blocks.9.norm3.weight": (1280,),
        "model.diffusion_model.output_blocks.2.2.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.8.0.skip_connection.weight": (320, 640, 1, 1),
        "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight": (
            77,
            768,
        ),
        "conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight": (
            3840,
            1280,
        ),
        "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias": (1280,),
        "conditioner.embedders.1.model.text_projection": (1280, 1280),
    },
}
MODEL_TYPE = {"sd15": "v1", "sd21": "v2", "sdxl": "xl_base"}
# Tensors per component in the original files (SD 1.5's text encoder without position_ids).
UNET_TENSORS = {"sd15": 686, "sd21": 686, "sdxl": 1680}


@pytest.mark.parametrize("version", ["sd15", "sd21", "sdxl"])
def test_real_architectures_land_on_the_original_keys(version: str) -> None:
    from diffusers.loaders import single_file_utils as sfu

    state, sources = _real_checkpoint(version)
    for key, shape in KNOWN_KEYS[version].items():
        assert key in state, key
        assert tuple(state[key].shape) == shape, key
    assert sum(k.startswith("model.diffusion_model.") for k in state) == UNET_TENSORS[version]
    assert sum(k.startswith("first_stage_model.") for k in state) == 248
    assert sfu.infer_diffusers_model_type(state) == MODEL_TYPE[version]

    # diffusers' readers map every key back to where it came from, with its shape.
    unet, vae = sources["unet"], sources["vae"]
    back = sfu.convert_ldm_unet_checkpoint(state, dict(unet.config))
    expected = unet.state_dict()
    assert set(back) == set(expected)
    assert all(back[k].shape == expected[k].shape for k in expected)
    back = sfu.convert_ldm_vae_checkpoint(state, dict(vae.config))
    expected = vae.state_dict()
    assert set(back) == set(expected)
    assert all(back[k].shape == expected[k].shape for k in expected)
    for prefix, (kind, model) in sources["texts"].items():
        expected = {k: v for k, v in model.state_dict().items() if not k.endswith("position_ids")}
        if kind == "clip":
            back = sfu.convert_ldm_clip_checkpoint(state, prefix)
        else:
            back = sfu.convert_open_clip_checkpoint(model, state, prefix=prefix)
        if not hasattr(model, "text_model"):
            back = {k.removeprefix("text_model."): v for k, v in back.items()}
        assert set(back) == set(expected), prefix
        assert all(back[k].shape == expected[k].shape for k in expected), prefix


def test_sd21_yaml_is_stabilitys_v2_inference_v(tmp_path: Path) -> None:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    # Only the configs matter: write SD 2.1's three as a folder would have them.
    unet: Any
    vae: Any
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD21_UNET)
        vae = AutoencoderKL(**SD_VAE)
    scheduler: Any = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="v_prediction",
    )
    parts: list[tuple[str, Any]] = [("unet", unet), ("vae", vae), ("scheduler", scheduler)]
    for name, part in parts:
        part.save_config(tmp_path / name)
    text = inference_yaml(tmp_path, "sd21")
    params = yaml.safe_load(text)["model"]["params"]
    assert params["parameterization"] == "v"
    assert (params["linear_start"], params["linear_end"], params["timesteps"]) == (
        0.00085,
        0.012,
        1000,
    )
    assert (params["image_size"], params["channels"], params["scale_factor"]) == (96, 4, 0.18215)
    net = params["unet_config"]["params"]
    assert net == {
        "use_checkpoint": True,
        "use_fp16": True,
        "image_size": 32,
        "in_channels": 4,
        "out_channels": 4,
        "model_channels": 320,
        "attention_resolutions": [4, 2, 1],
        "num_res_blocks": 2,
        "channel_mult": [1, 2, 4, 4],
        "num_head_channels": 64,
        "use_spatial_transformer": True,
        "use_linear_in_transformer": True,
        "transformer_depth": 1,
        "context_dim": 1024,
        "legacy": False,
    }
    dd = params["first_stage_config"]["params"]["ddconfig"]
    assert (dd["ch"], dd["ch_mult"], dd["num_res_blocks"], dd["z_channels"]) == (
        128,
        [1, 2, 4, 4],
        2,
        4,
    )
    assert params["cond_stage_config"]["params"]["layer"] == "penultimate"
    base = inference_yaml(tmp_path, "sd21-base")
    assert "parameterization" not in yaml.safe_load(base)["model"]["params"]
