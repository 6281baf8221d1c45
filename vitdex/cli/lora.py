"""``vitdex lora ...``: LoRA files extracted from trained checkpoints."""

from __future__ import annotations

from pathlib import Path

import click

from vitdex.cli.common import Context, handle_errors, print_json

#: Mirrors vitdex.training.lora.MAX_RANK (not imported: it would load the package early).
_MAX_RANK = 1024


@click.group("lora")
def lora_group() -> None:
    """LoRA files: extract one from a trained checkpoint and its base."""


@lora_group.command("extract")
@click.argument("checkpoint", metavar="CHECKPOINT")
@click.option(
    "--rank",
    type=click.IntRange(1, _MAX_RANK),
    required=True,
    help="LoRA rank (dim) of the linear layers; alpha is the same (scale 1).",
)
@click.option(
    "--base",
    help="The base it was trained from: hub id, diffusers folder or single file "
    "[default: the checkpoint's registered base model].",
)
@click.option(
    "--base-config",
    type=click.Path(file_okay=False, exists=True),
    help="For a single-file --base offline: a diffusers folder of the same architecture.",
)
@click.option(
    "--conv-rank",
    type=click.IntRange(1, _MAX_RANK),
    help="Also extract the resnets' 3x3 convs at this rank (kohya's conv_dim).",
)
@click.option(
    "--no-text-encoder",
    "no_text_encoder",
    is_flag=True,
    help="Leave the text encoder(s) out: UNet layers only.",
)
@click.option("--name", help="Registry name [default: SOURCE-loraRANK].")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="File to write [default: $VITDEX_HOME/loras/NAME.safetensors].",
)
@click.option("--half", is_flag=True, help="Store fp16 weights (half the size).")
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="Where the SVDs run.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the registered LoRA as JSON.")
@click.pass_obj
@handle_errors
def extract_command(
    obj: Context,
    checkpoint: str,
    rank: int,
    base: str | None,
    base_config: str | None,
    conv_rank: int | None,
    no_text_encoder: bool,
    name: str | None,
    out: Path | None,
    half: bool,
    device: str,
    as_json: bool,
) -> None:
    """Write the difference between CHECKPOINT and its base as a kohya LoRA file.

    CHECKPOINT is a registered checkpoint (id or name), or a single file or diffusers
    folder (give a path with a slash; then --base is needed unless a checkpoint is
    registered at that path). Each layer's difference is cut to the rank by an SVD; the
    file loads in AUTOMATIC1111, ComfyUI and diffusers (load_lora_weights), and is
    registered as kind "lora" with its source. Progress goes to stderr.
    """
    from vitdex.cli.checkpoints import _print_checkpoint
    from vitdex.db.checkpoints import checkpoint_to_dict
    from vitdex.training.lora import extract_and_register

    last = -1

    def say(message: str) -> None:
        click.echo(f"{message} ...", err=True)

    def count(done: int, total: int) -> None:
        nonlocal last
        # Every tenth of the way: a real UNet has hundreds of layers.
        step = done * 10 // total
        if step != last:
            last = step
            click.echo(f"  {done}/{total} layers", err=True)

    row = extract_and_register(
        obj.settings,
        checkpoint,
        rank=rank,
        base=base,
        base_config=base_config,
        conv_rank=conv_rank,
        text_encoder=not no_text_encoder,
        name=name,
        out=out,
        half=half,
        device=device,
        say=say,
        count=count,
    )
    data = checkpoint_to_dict(row)
    if as_json:
        print_json(data)
        return
    _print_checkpoint(data)
    config = data["config"]
    click.echo(
        f"  kept      {config['energy_retained']:.2%} of the difference's energy, mean "
        f"relative error {config['mean_relative_error']:.2e} over {config['layers']} layers"
    )
