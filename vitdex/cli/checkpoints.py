"""``vitdex convert`` and ``vitdex checkpoints ...``: single-file checkpoints and their registry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from vitdex.cli.common import Context, handle_errors, print_json, print_table
from vitdex.training.bases import SD_VERSIONS


def _size(num: int) -> str:
    value = float(num)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{num} B"  # pragma: no cover - the loop always returns


def _print_checkpoint(data: dict[str, Any]) -> None:
    kind = data.get("kind") or "checkpoint"
    lines = [
        f"{kind} {data['id']} {data['name']!r}: {data['status']}",
        f"  file      {data['path']}",
        f"  sha256    {data['sha256']}",
        f"  size      {_size(data['size_bytes'])} ({data['format']}"
        + (", fp16)" if data["half"] else ")"),
        f"  version   {data['version']} from {data['base_model']}",
    ]
    if kind == "lora":
        source = data.get("source_id")
        lines.append(
            f"  lora      rank {data.get('lora_rank')}, from "
            + (f"checkpoint {source}" if source is not None else "an unregistered file")
        )
    if data.get("yaml_path"):
        lines.append(f"  yaml      {data['yaml_path']}")
    if data.get("sample_path"):
        lines.append(f"  sample    {data['sample_path']}")
    if data.get("run_id") is not None:
        lines.append(f"  run       {data['run_id']}")
    if data.get("dataset_id") is not None:
        lines.append(f"  dataset   {data['dataset_id']} (images hash {data['dataset_hash']})")
    if data.get("steps") is not None or data.get("final_loss") is not None:
        loss = data.get("final_loss")
        lines.append(
            f"  training  {data.get('steps')} steps, final loss "
            + (f"{loss:.4f}" if isinstance(loss, float) else "-")
        )
    lines.append(f"  created   {data['created_at']}")
    present = data.get("files_present") or {}
    missing = [key for key, ok in present.items() if ok is False]
    if missing:
        lines.append(f"  MISSING   {', '.join(str(data[key]) for key in missing)}")
    for line in lines:
        click.echo(line)


@click.command("convert")
@click.argument("source", metavar="RUN_OR_DIFFUSERS_DIR")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="File to write [default: $VITDEX_HOME/checkpoints/NAME.safetensors].",
)
@click.option("--half", is_flag=True, help="Store the weights as fp16 (half the size).")
@click.option("--ckpt", is_flag=True, help="Write a pickled .ckpt instead of .safetensors.")
@click.option("--name", help="Registry name [default: the file's stem].")
@click.option(
    "--version",
    "sd_version",
    type=click.Choice(SD_VERSIONS),
    help="Expected SD version [default: detected from the folder].",
)
@click.option("--base-model", help="What the model was trained from (recorded).")
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="Where validation and the sample grid run.",
)
@click.option("--sample-prompt", help="Prompt of the sample grid [default: the training prompt].")
@click.option(
    "--sample-steps",
    type=click.IntRange(1, 500),
    default=20,
    show_default=True,
    help="Denoising steps of the sample grid.",
)
@click.option(
    "--sample-size",
    type=click.IntRange(16, 4096),
    metavar="PX",
    help="Side of each grid image, a multiple of 8 [default: the base's native size]. "
    "Half the native size renders several times faster.",
)
@click.option(
    "--no-sample",
    is_flag=True,
    help="Render no sample grid (the checkpoint is still validated).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the registered checkpoint as JSON.")
@click.pass_obj
@handle_errors
def convert_command(
    obj: Context,
    source: str,
    out: Path | None,
    half: bool,
    ckpt: bool,
    name: str | None,
    sd_version: str | None,
    base_model: str | None,
    device: str,
    sample_prompt: str | None,
    sample_steps: int,
    sample_size: int | None,
    no_sample: bool,
    as_json: bool,
) -> None:
    """Write a training run (an id) or a diffusers folder as one Stable Diffusion file.

    The file has the original layout AUTOMATIC1111 and ComfyUI load (SD 2.x gets its
    inference YAML beside it). It is loaded back with diffusers and compared tensor by
    tensor and by a fixed-seed sample before it is registered; then a 2x2 fixed-seed grid
    is rendered beside it (on a CPU this dominates: --sample-size, --sample-steps or
    --no-sample make it cheaper). A folder whose name is all digits must be given as ./NAME.
    """
    from dataclasses import replace

    from vitdex.db.checkpoints import checkpoint_to_dict
    from vitdex.training.registry import Check, Provenance, convert_and_register

    run_id: int | None = None
    folder: Path | None = None
    if source.isdigit():
        run_id = int(source)
    else:
        folder = Path(source)
    fmt = "ckpt" if ckpt or (out is not None and out.suffix.lower() == ".ckpt") else "safetensors"
    check = Check(
        device=device,
        sample_prompt=sample_prompt,
        sample_steps=sample_steps,
        sample_size=sample_size,
    )
    if no_sample:
        check = replace(check, sample=False)

    def progress(message: str) -> None:
        if not as_json:
            click.echo(f"{message} ...", err=True)

    row = convert_and_register(
        obj.settings,
        folder,
        out=out,
        name=name,
        half=half,
        fmt=fmt,
        run_id=run_id,
        version=sd_version,
        origin=Provenance(base_model=base_model),
        check=check,
        progress=progress,
    )
    data = checkpoint_to_dict(row)
    if as_json:
        print_json(data)
        return
    _print_checkpoint(data)


@click.group("checkpoints")
def checkpoints_group() -> None:
    """List, show and delete registered checkpoints."""


@checkpoints_group.command("list")
@click.option("--status", type=click.Choice(["ready", "invalid"]), help="Only this status.")
@click.option("--run", "run_id", type=int, help="Only checkpoints of this training run.")
@click.option(
    "--kind", type=click.Choice(["checkpoint", "lora"]), help="Only whole models or LoRAs."
)
@click.option("--limit", type=click.IntRange(1, 10000), default=100, show_default=True)
@click.option("--offset", type=click.IntRange(min=0), default=0)
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.pass_obj
@handle_errors
def list_command(
    obj: Context,
    status: str | None,
    run_id: int | None,
    kind: str | None,
    limit: int,
    offset: int,
    as_json: bool,
) -> None:
    """Registered checkpoints and LoRAs, newest first."""
    from vitdex.training.registry import list_checkpoints

    data = list_checkpoints(
        obj.settings, status=status, run_id=run_id, kind=kind, limit=limit, offset=offset
    )
    if as_json:
        print_json(data)
        return
    if not data["checkpoints"]:
        click.echo("no checkpoints registered (vitdex convert RUN_OR_DIFFUSERS_DIR)")
        return
    rows = [
        (
            str(item["id"]),
            item["name"],
            item.get("kind") or "checkpoint",
            "-" if item.get("lora_rank") is None else str(item["lora_rank"]),
            "-" if item.get("source_id") is None else str(item["source_id"]),
            item["version"],
            item["status"],
            "-" if item["steps"] is None else str(item["steps"]),
            f"{item['final_loss']:.4f}" if isinstance(item["final_loss"], float) else "-",
            _size(item["size_bytes"]),
            item["format"] + (" fp16" if item["half"] else ""),
            (item["created_at"] or "")[:19],
        )
        for item in data["checkpoints"]
    ]
    columns = (
        "id",
        "name",
        "kind",
        "rank",
        "source",
        "version",
        "status",
        "steps",
        "loss",
        "size",
        "format",
        "created",
    )
    right = {"id", "rank", "source", "steps", "size"}
    print_table(f"checkpoints ({data['total']})", columns, rows, right=right)


@checkpoints_group.command("show")
@click.argument("ref", metavar="ID_OR_NAME")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.pass_obj
@handle_errors
def show_command(obj: Context, ref: str, as_json: bool) -> None:
    """One checkpoint: file, hash, how it was trained, and whether its files are present."""
    from vitdex.training.registry import show_checkpoint

    data = show_checkpoint(obj.settings, ref)
    if as_json:
        print_json(data)
        return
    _print_checkpoint(data)
    if data["config"]:
        click.echo(
            "  config    " + ", ".join(f"{k}={v}" for k, v in sorted(data["config"].items()))
        )


@checkpoints_group.command("delete")
@click.argument("ref", metavar="ID_OR_NAME")
@click.option("--files", is_flag=True, help="Also delete the file, its YAML and its sample grid.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.pass_obj
@handle_errors
def delete_command(obj: Context, ref: str, files: bool, as_json: bool) -> None:
    """Unregister a checkpoint (its files stay unless --files)."""
    from vitdex.training.registry import delete_checkpoint

    data = delete_checkpoint(obj.settings, ref, files=files)
    if as_json:
        print_json(data)
        return
    click.echo(f"unregistered checkpoint {data['id']} {data['name']!r}")
    for path in data["deleted_files"]:
        click.echo(f"  deleted {path}")
    for path, why in data["kept_files"].items():
        click.echo(f"  kept {path}: {why}")
    if not files:
        click.echo(f"  its file stays at {data['path']}")
