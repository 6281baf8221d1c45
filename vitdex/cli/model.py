"""``vitdex model fetch``: put a real checkpoint in a folder that an offline machine can use;
``vitdex export-model``: export the configured model for ONNX Runtime or OpenVINO.

On a connected machine it downloads only the files vitdex reads (a ViT checkpoint, or a
Stable Diffusion base as a diffusers folder), loads what it fetched from that folder alone to
prove it is complete, and prints the setting to use once the folder is copied over. A local
folder is accepted as the source too (copied with the same file selection), which is how the
check is exercised without a network.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
import shutil
import time
from pathlib import Path
from typing import Any

import click

from vitdex.cli.common import Context, handle_errors, print_json
from vitdex.errors import ConfigError, ModelLoadError

#: What a ViT checkpoint needs; the embedder reads nothing else.
VIT_PATTERNS = ("config.json", "model.safetensors", "preprocessor_config.json")
#: A diffusers folder: the index, each component's configs/tokenizer files, its weights.
SD_PATTERNS = (
    "model_index.json",
    "*/*.json",
    "*/*.txt",
    "*/diffusion_pytorch_model.safetensors",
    "*/model.safetensors",
)
#: The fp16 variant's weights (half the download), renamed to the plain names afterwards.
SD_FP16_PATTERNS = (
    "model_index.json",
    "*/*.json",
    "*/*.txt",
    "*/diffusion_pytorch_model.fp16.safetensors",
    "*/model.fp16.safetensors",
)
#: Training and generation run without the safety checker; it would add 1.2 GB.
SD_IGNORE = ("safety_checker/*", "feature_extractor/*")

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


@click.group("model")
def model_group() -> None:
    """Fetch real checkpoints for offline machines."""


@model_group.command("fetch")
@click.argument("source")
@click.option(
    "--to",
    "target",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder to write the checkpoint to (copy it to the offline machine).",
)
@click.option("--revision", help="Hub branch, tag or commit to fetch.")
@click.option(
    "--kind",
    type=click.Choice(["auto", "vit", "sd"]),
    default="auto",
    show_default=True,
    help="ViT checkpoint or Stable Diffusion base; auto: a model_index.json means sd.",
)
@click.option("--fp16", is_flag=True, help="Stable Diffusion: fetch the fp16 variant's weights.")
@handle_errors
def fetch_command(source: str, target: Path, revision: str | None, kind: str, fp16: bool) -> None:
    """Download SOURCE (hub id, or a local folder) into --to, check it loads, print its use."""
    local = Path(source).expanduser()
    if local.is_dir():
        if revision is not None:
            raise ConfigError("--revision is for hub ids; a local folder has no revisions")
        kind = _local_kind(local) if kind == "auto" else kind
        _copy_selected(local, target, _patterns(kind, fp16))
    elif _HUB_ID.match(source):
        _require_hub(source)
        kind = _hub_kind(source, revision) if kind == "auto" else kind
        _download(source, revision, target, _patterns(kind, fp16))
    else:
        raise ConfigError(f"{source!r} is neither an existing folder nor a hub id (owner/name)")
    if fp16:
        _drop_variant_suffix(target)
    click.echo(f"fetched {source} into {target}; checking it loads offline ...")
    verify_folder(target, kind)
    shown = shlex.quote(str(target.resolve()))
    click.echo("ok. On the offline machine, after copying the folder to the same path:")
    if kind == "vit":
        click.echo(f"  export VITDEX_MODEL={shown}")
    else:
        click.echo(f"  vitdex train DATASET --base {shown} ...")


def _patterns(kind: str, fp16: bool) -> tuple[str, ...]:
    if kind == "vit":
        if fp16:
            raise ConfigError("--fp16 is for Stable Diffusion bases; ViT checkpoints are small")
        return VIT_PATTERNS
    return SD_FP16_PATTERNS if fp16 else SD_PATTERNS


def _local_kind(folder: Path) -> str:
    return "sd" if (folder / "model_index.json").is_file() else "vit"


def _hub_failure(source: str, exc: Exception) -> ModelLoadError:
    """One message per way a hub call fails, each saying what to do next."""
    from vitdex.indexer.models import hub_endpoint, hub_offline

    name = type(exc).__name__
    if "RepositoryNotFound" in name or "GatedRepo" in name:
        return ModelLoadError(
            f"the hub has no accessible repository {source!r} (wrong id, private or gated: "
            "log in with `hf auth login` and accept its licence)"
        )
    if "RevisionNotFound" in name:
        return ModelLoadError(f"{source!r} has no such revision: {exc}")
    if hub_offline():
        why = "HF_HUB_OFFLINE is set"
    else:
        why = f"{hub_endpoint()} cannot be reached ({name})"
    return ModelLoadError(
        f"cannot fetch {source!r}: {why}. `vitdex model fetch` downloads, so run it on a "
        "connected machine, then copy the --to folder here"
    )


def _require_hub(source: str) -> None:
    """Fail in seconds offline: huggingface_hub would retry an unreachable host for ~30 s."""
    from vitdex.indexer.models import hub_endpoint, hub_offline, hub_reachable

    if hub_offline() or not hub_reachable(hub_endpoint()):
        raise _hub_failure(source, ConnectionError("unreachable"))


def _hub_kind(source: str, revision: str | None) -> str:
    from huggingface_hub import HfApi

    try:
        files = HfApi().list_repo_files(source, revision=revision)
    except Exception as exc:  # connection, auth, missing repo: all end in a message
        raise _hub_failure(source, exc) from exc
    return "sd" if "model_index.json" in files else "vit"


def _download(source: str, revision: str | None, target: Path, patterns: tuple[str, ...]) -> None:
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(
            source,
            revision=revision,
            local_dir=target,
            allow_patterns=list(patterns),
            ignore_patterns=list(SD_IGNORE),
        )
    except Exception as exc:
        raise _hub_failure(source, exc) from exc


def _copy_selected(source: Path, target: Path, patterns: tuple[str, ...]) -> None:
    """Copy the files of ``source`` that the hub download would have fetched."""
    if target.resolve() == source.resolve():
        raise ConfigError("--to must differ from the source folder")
    copied = 0
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source).as_posix()
        wanted = any(fnmatch.fnmatch(rel, p) for p in patterns)
        if path.is_file() and wanted and not any(fnmatch.fnmatch(rel, p) for p in SD_IGNORE):
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target / rel)
            copied += 1
    if not copied:
        raise ModelLoadError(f"{source} has none of the checkpoint files ({', '.join(patterns)})")


def _drop_variant_suffix(folder: Path) -> None:
    """``x.fp16.safetensors`` → ``x.safetensors``, so the folder loads without ``variant``."""
    for path in folder.glob("*/*.fp16.safetensors"):
        path.replace(path.with_name(path.name.replace(".fp16.safetensors", ".safetensors")))


def verify_folder(folder: Path, kind: str) -> None:
    """Load ``folder`` with no network as vitdex will offline; ModelLoadError if it cannot.

    A download can stop half-way or a repository can lack safetensors weights; finding that
    out here, on the connected machine, is what makes the copied folder trustworthy.
    """
    if kind == "vit":
        missing = [n for n in ("config.json", "model.safetensors") if not (folder / n).is_file()]
        if missing:
            raise ModelLoadError(
                f"{folder} lacks {', '.join(missing)}: the repository may have no safetensors "
                "weights (vitdex reads only model.safetensors)"
            )
        from vitdex.indexer.embedder import Embedder

        Embedder(str(folder.resolve()), spaces=["cls"], device="cpu", precision="fp32").load()
        return
    if not (folder / "model_index.json").is_file():
        raise ModelLoadError(f"{folder} has no model_index.json: not a diffusers folder")
    from vitdex.training.bases import load_base

    load_base(folder.resolve())


@click.command("export-model")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["onnx", "openvino"]),
    required=True,
    help="onnx (run by ONNX Runtime) or openvino (OpenVINO IR).",
)
@click.option("--int8", is_flag=True, help="Quantize to int8 (same as --precision int8).")
@click.option(
    "--precision",
    type=click.Choice(["fp32", "bf16", "int8"]),
    help="Precision to run and measure (default fp32; openvino also runs bf16).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.pass_obj
@handle_errors
def export_model_command(
    obj: Context, fmt: str, int8: bool, precision: str | None, as_json: bool
) -> None:
    """Export the configured model (every configured space an output) under VITDEX_HOME.

    The runtimes load it from there; they export it themselves on first use, so this only
    moves that minute out of the first index run. Prints where it wrote, the sizes, and
    each space's agreement (least cosine to torch fp32 on the probe photos).
    """
    if int8 and precision not in (None, "int8"):
        raise ConfigError(f"--int8 and --precision {precision} contradict each other")
    chosen = "int8" if int8 else (precision or "fp32")
    runtime = "onnxruntime" if fmt == "onnx" else "openvino"
    data = _export(obj, runtime, chosen)
    if as_json:
        print_json(data)
        return
    verb = "reused" if data["reused"] else f"exported in {data['export_seconds']:.1f} s"
    click.echo(f"{data['model']} as {fmt} {data['stored_precision']}: {verb}")
    click.echo(f"  {data['folder']}")
    for name, size in data["files"].items():
        click.echo(f"  {name}: {size / 1e6:.1f} MB")
    figures = data["agreement"]
    click.echo(
        f"agreement of {data['runtime']} with torch fp32 (bound {figures['bound']}): "
        + ", ".join(f"{space} {value:.6f}" for space, value in figures["per_space"].items())
    )


def _export(obj: Context, runtime: str, precision: str) -> dict[str, Any]:
    import calendar

    from vitdex.indexer.embedder import Embedder

    settings = obj.settings
    started = int(time.time())
    m = settings.model
    embedder = Embedder(
        m.model,
        revision=m.model_revision,
        spaces=m.spaces,
        device="cpu",
        precision=precision,
        batch_size=m.batch_size,
        runtime=runtime,
        home=settings.storage.home,
    )
    figures = embedder.agreement  # loads: exports when missing, measures when new
    export = embedder.export()
    if export is None:  # pragma: no cover - an export runtime always has one
        raise ModelLoadError(f"no {runtime} export was written")
    meta = export.meta
    made = calendar.timegm(time.strptime(str(meta["exported_at"]), "%Y-%m-%dT%H:%M:%SZ"))
    return {
        "model": embedder.model_id,
        "revision": meta["revision"],
        "runtime": embedder.runtime_label,
        "format": meta["format"],
        "stored_precision": meta["precision"],
        "folder": str(export.folder),
        "file": str(export.model_file),
        "files": meta["files"],
        "outputs": dict(zip(meta["outputs"], [s["name"] for s in meta["spaces"]], strict=False)),
        "export_seconds": meta["export_seconds"],
        "reused": made < started,
        "agreement": figures,
    }
