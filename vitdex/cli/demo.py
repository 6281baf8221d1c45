"""``vitdex demo``: index sample photos offline and show similar and classify results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.panel import Panel

from vitdex.config import load_settings
from vitdex.errors import ModelLoadError

DEMO_HOME = Path("demo-home")


def _pick_model(settings_model: str, home: Path, console: Console) -> tuple[str, bool]:
    """The configured model if it loads, else a random ViT-B/16 saved under ``home``."""
    from vitdex.indexer.embedder import Embedder, build_random_vit

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
                "colour and layout. Point VITDEX_MODEL at a real checkpoint folder for "
                "real results.",
                title="demo: no pretrained model available",
                border_style="yellow",
            )
        )
        return str(folder.resolve()), True


def run_demo(overrides: dict[str, Any], *, generated: int, console: Console) -> None:
    """Build the sample folder, index it, and print similar and classify results."""
    from vitdex.cli.main import BarProgress, _open_catalog, _print_report, _progress
    from vitdex.cli.samples import make_sample_folder, shipped_photos
    from vitdex.indexer.embedder import Embedder
    from vitdex.indexer.pipeline import Indexer
    from vitdex.search.service import SearchService

    base = load_settings(**overrides)
    home = base.storage.home if overrides.get("home") or _env_home() else DEMO_HOME.resolve()
    photos = home / "photos"
    if not photos.is_dir():
        console.print(f"writing sample photos to {photos} ...")
        paths = make_sample_folder(photos, generated)
        console.print(
            f"{len(paths)} photos ({len(shipped_photos())} real ones shipped with "
            "scikit-image, each with edited copies, plus generated scenes)"
        )
    model, random_weights = _pick_model(base.model.model, home, console)
    settings = load_settings(**{**overrides, "home": home, "model": model})
    sessions = _open_catalog(settings)
    embedder = Embedder.from_settings(settings.model)

    console.rule("vitdex index")
    with _progress(True) as bar:
        assert isinstance(bar, BarProgress)
        report = Indexer(settings, sessions, embedder, progress=bar).run([photos])
    _print_report(report.to_dict(), embedder)

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
            for label, score in item.labels:
                console.print(f"  {score:7.2%}  {label}", highlight=False)
    console.rule()
    # Plain echo: these are commands to copy, so they must not be wrapped.
    click.echo(
        f"catalog and vectors are in {home}; try:\n"
        f"  VITDEX_HOME={home} VITDEX_MODEL={model} vitdex status\n"
        f"  VITDEX_HOME={home} VITDEX_MODEL={model} vitdex similar {queries[0]}"
    )


def _env_home() -> bool:
    import os

    return bool(os.environ.get("VITDEX_HOME"))
