"""``vitdex demo``: index sample photos offline and show similar and classify results."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from vitdex.cli.common import (
    BarProgress,
    Context,
    handle_errors,
    open_catalog,
    out_console,
    print_index_report,
    progress_bar,
)

DEMO_HOME = Path("demo-home")


@click.command()
@click.option(
    "--photos",
    type=int,
    default=24,
    show_default=True,
    help="How many photos to generate beside the shipped samples.",
)
@click.pass_obj
@handle_errors
def demo(obj: Context, photos: int) -> None:
    """Index sample photos (offline) and show similar and classify results."""
    run_demo(obj, generated=photos, console=out_console)


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


def run_demo(obj: Context, *, generated: int, console: Console) -> None:
    """Build the sample folder, index it, and print similar and classify results.

    The catalog goes to the chosen home (``--home``, ``VITDEX_HOME``), else to
    ``./demo-home``; the model is the configured one if it loads.
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
        assert isinstance(bar, BarProgress)
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
    # Plain echo: these are commands to copy, so they must not be wrapped.
    click.echo(
        f"catalog and vectors are in {home}; try:\n"
        f"  VITDEX_HOME={home} VITDEX_MODEL={model} vitdex status\n"
        f"  VITDEX_HOME={home} VITDEX_MODEL={model} vitdex similar {queries[0]}"
    )
