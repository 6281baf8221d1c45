"""Random-weight Stable Diffusion pipelines built from configs, saved as diffusers folders.

Used by the tests (a tiny pipeline that trains at 32-64 px in seconds) and by the training
benchmark (the real SD 1.5 architecture with random weights: the same compute, no
download). The folders load with ``from_pretrained`` exactly like a hub checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vitdex.training.bases import SD_VERSIONS

__all__ = ["build_random_sd", "write_tiny_tokenizer"]

#: Versions a random pipeline can be built for.


def _byte_symbols() -> list[str]:
    # Byte-level BPE maps each byte to a printable character (GPT-2's table, used by CLIP).
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    extra = 0
    symbols = {}
    for b in range(256):
        if b in printable:
            symbols[b] = chr(b)
        else:
            symbols[b] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


def write_tiny_tokenizer(folder: Path) -> Path:
    """Save a CLIP BPE tokenizer with a small vocabulary (bytes, a few words) to ``folder``.

    CLIP's real vocabulary is 49,408 entries; this one has every byte (alone and as a
    word end), the special tokens and merges for a few words the tests use, so any text
    tokenizes, just into more pieces.
    """
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = _byte_symbols()
    vocab_list = chars + [c + "</w>" for c in chars]
    words = ["a", "photo", "of", "sks", "dog", "cat", "person", "the"]
    merges: list[str] = []
    for word in words:
        # Merge left to right: "p h", "ph o", "pho t", ... and the last one with "</w>".
        pieces = [*word[:-1], word[-1] + "</w>"]
        while len(pieces) > 1:
            merged = pieces[0] + pieces[1]
            rule = f"{pieces[0]} {pieces[1]}"
            if rule not in merges:
                merges.append(rule)
            if merged not in vocab_list:
                vocab_list.append(merged)
            pieces = [merged, *pieces[2:]]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(vocab_list)}
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", "utf-8")
    # The fast tokenizer takes merges as pairs (its annotation says strings).
    pairs: Any = [tuple(rule.split(" ")) for rule in merges]
    tokenizer = CLIPTokenizer(vocab=vocab, merges=pairs, model_max_length=77)
    tokenizer.save_pretrained(folder)
    return folder


def _text_config(preset: str, *, hidden: int, projection: int, vocab_size: int) -> dict[str, Any]:
    if preset == "tiny":
        return {
            "hidden_size": hidden,
            "intermediate_size": hidden * 2,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "projection_dim": projection,
            "vocab_size": vocab_size,
            "max_position_embeddings": 77,
            "bos_token_id": vocab_size - 2,
            "eos_token_id": vocab_size - 1,
            "pad_token_id": vocab_size - 1,
        }
    # SD 1.5's text encoder: OpenAI CLIP ViT-L/14.
    return {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_attention_heads": 12,
        "num_hidden_layers": 12,
        "projection_dim": 768,
        "vocab_size": vocab_size,
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",
    }


def build_random_sd(
    folder: Path, *, version: str = "sd15", preset: str = "tiny", seed: int = 0
) -> Path:
    """Save a random-weight Stable Diffusion pipeline of ``version`` to ``folder``.

    ``preset="tiny"``: a UNet with 2 levels of 32/64 channels, a 2-level VAE and a
    2-layer CLIP text encoder (hidden 32) with a small vocabulary: a 64 px training step
    takes well under a second on a CPU. ``preset="full"`` (``sd15`` only): SD 1.5's
    architecture (860M UNet, ViT-L text encoder) with the hub tokenizer's vocabulary size,
    for benchmarks on a GPU. The structure per version follows the real models: SD 2.x has
    linear projections in its transformers and a GELU (OpenCLIP) text encoder, ``sd21``
    predicts ``v``, SDXL has two text encoders and size/crop conditioning.
    """
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    if version not in SD_VERSIONS:
        raise ValueError(f"unknown version {version!r}; choose one of {', '.join(SD_VERSIONS)}")
    if preset not in ("tiny", "full"):
        raise ValueError(f"unknown preset {preset!r}; choose tiny or full")
    if preset == "full" and version != "sd15":
        raise ValueError("the full preset is built for sd15 only")
    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)

    tokenizer_dir = write_tiny_tokenizer(folder / "tokenizer")
    vocab_size = len(json.loads((tokenizer_dir / "vocab.json").read_text("utf-8")))
    if preset == "full":
        vocab_size = 49408

    sd2 = version in ("sd21-base", "sd21")
    hidden = 32
    text_cfg = _text_config(preset, hidden=hidden, projection=hidden, vocab_size=vocab_size)
    if sd2:
        text_cfg["hidden_act"] = "gelu"
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_cfg))

    if preset == "full":
        unet = UNet2DConditionModel(
            sample_size=64,
            cross_attention_dim=768,
            attention_head_dim=8,
        )
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2,
            latent_channels=4,
            sample_size=512,
        )
    else:
        unet_kwargs: dict[str, Any] = {
            "block_out_channels": (32, 64),
            "layers_per_block": 1,
            "sample_size": 8,
            "in_channels": 4,
            "out_channels": 4,
            "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
            "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
            "cross_attention_dim": hidden,
            "attention_head_dim": 8 if not sd2 else (2, 4),
            "norm_num_groups": 32,
        }
        if sd2:
            unet_kwargs["use_linear_projection"] = True
        if version == "sdxl":
            # Two text encoders concatenated (32 + 64 wide; single-file readers tell them
            # apart by width, as with the real 768 + 1280); pooled text + 6 size ids.
            unet_kwargs.update(
                cross_attention_dim=hidden + 2 * hidden,
                use_linear_projection=True,
                addition_embed_type="text_time",
                addition_time_embed_dim=8,
                projection_class_embeddings_input_dim=2 * hidden + 6 * 8,
                transformer_layers_per_block=(1, 2),
                attention_head_dim=(2, 4),
            )
        unet = UNet2DConditionModel(**unet_kwargs)
        vae = AutoencoderKL(
            block_out_channels=(32, 64),
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=32,
            sample_size=32,
        )

    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="v_prediction" if version == "sd21" else "epsilon",
    )
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    pipe: Any
    if version == "sdxl":
        text_encoder_2 = CLIPTextModelWithProjection(
            CLIPTextConfig(
                **{
                    **text_cfg,
                    "hidden_act": "gelu",
                    "hidden_size": 2 * hidden,
                    "intermediate_size": 4 * hidden,
                    "projection_dim": 2 * hidden,
                }
            )
        )
        pipe = StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer,
            unet=unet,
            scheduler=scheduler,
        )
    else:
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder
