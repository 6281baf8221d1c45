"""``vitdex demo``: index sample photos offline and show similar and classify results."""

from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console

from vitdex.cli.common import (
    Context,
    handle_errors,
    open_catalog,
    out_console,
    print_index_report,
    progress_bar,
)
from vitdex.errors import VitdexError

if TYPE_CHECKING:
    from vitdex.config import Settings

DEMO_HOME = Path("demo-home")


@click.command()
@click.option(
    "--photos",
    type=int,
    default=24,
    show_default=True,
    help="How many photos to generate beside the shipped samples.",
)
@click.option(
    "--train",
    is_flag=True,
    help="Then train a few steps on a tiny RANDOM Stable Diffusion base (no weights needed), "
    "convert and register the checkpoint.",
)
@click.pass_obj
@handle_errors
def demo(obj: Context, photos: int, train: bool) -> None:
    """Index sample photos (offline) and show similar and classify results."""
    settings = run_demo(obj, generated=photos, console=out_console)
    if train:
        train_demo(settings, out_console)


def _pick_model(settings_model: str, home: Path, console: Console) -> tuple[str, bool]:
    """The configured model if it loads, else a random ViT-B/16 saved under ``home``."""
    from rich.panel import Panel

    from vitdex.errors import ModelLoadError
    from vitdex.indexer.embedder import Embedder
    from vitdex.testing.vit import build_random_vit

    try:
        Embedder(settings_model, spaces=["cls"]).load()
        return settings_model, False
    except ModelLoadError as exc:
        folder = home / "random-vit-b16"
        if not (folder / "config.json").is_file():
            build_random_vit(folder, preset="base", seed=0)
        console.print(
            Panel(
                f"Could not load {settings_model!r}:\n{exc.message}\n\n"
                f"Falling back to a RANDOMLY INITIALISED ViT-B/16 saved in {folder}.\n"
                "Its labels are meaningless and its neighbours only reflect low-level "
                "colour and layout. Point --model (VITDEX_MODEL) at a real checkpoint "
                "folder for real results.",
                title="demo: no pretrained model available",
                border_style="yellow",
            )
        )
        return str(folder.resolve()), True


def run_demo(obj: Context, *, generated: int, console: Console) -> Settings:
    """Build the sample folder, index it, and print similar and classify results.

    The catalog goes to the chosen home (``--home``, ``VITDEX_HOME``), else to
    ``./demo-home``; the model is the configured one if it loads. Returns the settings the
    demo ran with (its home and model), for the training part.
    """
    from vitdex.cli.samples import make_sample_folder, shipped_photos
    from vitdex.indexer.embedder import Embedder
    from vitdex.indexer.pipeline import Indexer
    from vitdex.search.service import SearchService

    base = obj.settings
    home = base.storage.home if obj.home_given else DEMO_HOME.resolve()
    photos = home / "photos"
    if not photos.is_dir():
        console.print(f"writing sample photos to {photos} ...")
        paths = make_sample_folder(photos, generated)
        console.print(
            f"{len(paths)} photos ({len(shipped_photos())} real ones shipped with "
            "scikit-image, each with edited copies, plus generated scenes)"
        )
    model, random_weights = _pick_model(base.model.model, home, console)
    settings = obj.settings_with(home=home, model=model)
    sessions = open_catalog(settings)
    embedder = Embedder.from_settings(settings.model)

    console.rule("vitdex index")
    with progress_bar(True) as bar:
        report = Indexer(settings, sessions, embedder, progress=bar).run([photos])
    print_index_report(report.to_dict(), embedder)

    service = SearchService(settings, sessions)
    # A cat and a cup of coffee: what a reader recognises at once, ImageNet classes too.
    preferred = [photos / "shipped" / f"{n}-original.jpg" for n in ("chelsea", "coffee")]
    queries = [p for p in preferred if p.is_file()] or sorted((photos / "generated").glob("*.jpg"))[
        :2
    ]
    console.rule("vitdex similar")
    for result in service.similar(queries, k=5):
        console.print(f"[bold]{result.query}[/] (space {result.space})", highlight=False)
        for hit in result.hits:
            console.print(f"  {hit.score:.4f}  {hit.path}", highlight=False)
    if embedder.has_classifier:
        console.rule(
            "vitdex classify" + (" (RANDOM WEIGHTS: labels meaningless)" if random_weights else "")
        )
        for item in service.classify(queries, k=3):
            console.print(f"[bold]{item.query}[/]", highlight=False)
            for scored in item.labels:
                console.print(f"  {scored.score:7.2%}  {scored.label}", highlight=False)
    console.rule()
    prefix = (
        f"VITDEX_HOME={shlex.quote(str(home))} VITDEX_MODEL={shlex.quote(model)} {invocation()}"
    )
    # Plain echo: these are commands to copy, so they must not be wrapped.
    click.echo(
        f"catalog and vectors are in {home}; try:\n"
        f"  {prefix} status\n"
        f"  {prefix} similar {shlex.quote(str(queries[0]))}"
    )
    return settings


DEMO_DATASET = "demo-chelsea"
DEMO_SEED_PHOTO = Path("shipped") / "chelsea-original.jpg"


def train_demo(settings: Settings, console: Console) -> None:
    """Train, convert and register a checkpoint on the demo photos, with no weights at all.

    The base is a tiny random Stable Diffusion 1.5 built under the demo home and training
    runs 64 px for a few steps on the CPU: the point is to see the whole path (dataset →
    run → single-file checkpoint → registry) work in well under a minute, not the images.
    The dataset and the run go through the same services as ``vitdex dataset create`` and
    ``vitdex train``.
    """
    from vitdex.cli.train import run_training_job
    from vitdex.errors import NotFoundError
    from vitdex.testing.sd import build_random_sd
    from vitdex.training.curate import CurateOptions, create_dataset, show_dataset
    from vitdex.training.quiet import quiet_hub
    from vitdex.training.runs import create_run, show_run

    home = settings.storage.home
    base = home / "random-sd15-tiny"
    if not (base / "model_index.json").is_file():
        console.print(f"building a tiny RANDOM Stable Diffusion base in {base} ...")
        with quiet_hub():
            build_random_sd(base, version="sd15", preset="tiny", seed=0)
    sessions = open_catalog(settings)
    try:
        show_dataset(sessions, DEMO_DATASET)
    except NotFoundError:
        create_dataset(
            settings,
            sessions,
            DEMO_DATASET,
            [home / "photos" / DEMO_SEED_PHOTO],
            prompt="a photo of sks cat",
            options=CurateOptions(k=6),
        )
    console.rule("vitdex train (RANDOM BASE: the images it makes are noise)")
    run, job_id = create_run(
        settings,
        sessions,
        DEMO_DATASET,
        str(base),
        {
            "resolution": 64,
            "steps": 4,
            "text_encoder_steps": 2,
            "mixed_precision": "no",
            "device": "cpu",
            "force": True,
        },
    )
    run_training_job(settings, job_id, progress=True)
    shown = show_run(sessions, run.id)
    ckpt = shown["checkpoint"]
    if shown["state"] != "succeeded" or not ckpt:
        raise VitdexError(f"demo training run {run.id} ended {shown['state']}: {shown['error']}")
    click.echo(
        f"run {run.id}: {shown['step']} steps on dataset {DEMO_DATASET!r}\n"
        f"checkpoint {ckpt['id']}: {ckpt['path']}\nsha256 {ckpt['sha256']}\n"
        f"see it with: {invocation()} --home {shlex.quote(str(home))} checkpoints show {ckpt['id']}"
    )


def _shown(path: Path) -> str:
    """``path`` relative to the working folder when inside it (``./`` if bare), else absolute."""
    absolute = path.absolute()
    try:
        relative = absolute.relative_to(Path.cwd())
    except ValueError:
        return str(absolute)
    return str(relative) if len(relative.parts) > 1 else f"./{relative}"


def invocation() -> str:
    """How to run this same ``vitdex`` again from this shell, to print in hints.

    A plain ``vitdex`` only when that name on ``PATH`` is the executable now running: after
    ``make demo`` the venv is usually not activated, and a hint that says ``vitdex`` would
    then fail (or run another install). ``python -m vitdex`` runs are shown the same way.
    """
    argv0 = Path(sys.argv[0])
    if argv0.name == "__main__.py":
        return f"{shlex.quote(_shown(Path(sys.executable)))} -m vitdex"
    running = Path(shutil.which(str(argv0)) or argv0)
    on_path = shutil.which("vitdex")
    if on_path is not None and Path(on_path).resolve() == running.resolve():
        return "vitdex"
    return shlex.quote(_shown(running))
