"""The ``vitdex`` command: thin wrappers over the indexer and the search service."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from vitdex.config import Settings, load_settings
from vitdex.errors import VitdexError

F = TypeVar("F", bound=Callable[..., Any])

err_console = Console(stderr=True)
out_console = Console()


@dataclass
class Context:
    """What the group options resolve to, shared by every command."""

    overrides: dict[str, Any]
    verbose: int

    def settings(self) -> Settings:
        """Settings from the environment with the CLI flags on top."""
        return load_settings(**self.overrides)


def _handle_errors(func: F) -> F:
    """Turn a :class:`VitdexError` into a one-line message and its exit code."""
    import functools

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except VitdexError as exc:
            # click.echo never wraps lines (rich would, at 80 columns off a terminal).
            click.secho("error: ", fg="red", bold=True, err=True, nl=False)
            click.echo(exc.message, err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted; everything committed so far is kept", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _open_catalog(settings: Settings) -> Any:
    from vitdex.db.jobs import catalog_sessions

    return catalog_sessions(settings.storage.resolved_database_url)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", type=click.Path(path_type=Path), help="Data folder [VITDEX_HOME].")
@click.option("--database-url", help="SQLAlchemy URL of the catalog [VITDEX_DATABASE_URL].")
@click.option("--model", help="Hub id or local folder of a ViT checkpoint [VITDEX_MODEL].")
@click.option("--spaces", help="Comma-separated layer specs, e.g. cls,cls@8 [VITDEX_SPACES].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), help="[VITDEX_DEVICE]")
@click.option(
    "--precision",
    type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
    help="[VITDEX_PRECISION]",
)
@click.option("--batch-size", type=int, help="Images per forward pass [VITDEX_BATCH_SIZE].")
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
@click.version_option(package_name="vitdex")
@click.pass_context
def cli(
    ctx: click.Context,
    home: Path | None,
    database_url: str | None,
    model: str | None,
    spaces: str | None,
    device: str | None,
    precision: str | None,
    batch_size: int | None,
    verbose: int,
) -> None:
    """vitdex: index photo folders with ViT embeddings and search them."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    ctx.obj = Context(
        overrides={
            "home": home,
            "database_url": database_url,
            "model": model,
            "spaces": spaces,
            "device": device,
            "precision": precision,
            "batch_size": batch_size,
        },
        verbose=verbose,
    )


# ------------------------------------------------------------------ progress


class RateColumn(ProgressColumn):
    """Images per second."""

    def render(self, task: Task) -> Text:
        """The task's speed as img/s."""
        speed = task.finished_speed or task.speed
        return Text(f"{speed:6.1f} img/s" if speed else "   -- img/s", style="cyan")


class BarProgress:
    """Draws the index run on stderr: a counter while scanning, then a bar with ETA."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._scan: TaskID | None = None
        self._work: TaskID | None = None

    def scanning(self, files: int) -> None:
        """Update the scan counter (throttled: every 100 files)."""
        if self._scan is None:
            self._scan = self._progress.add_task("scanning", total=None)
        if files % 100 == 0:
            self._progress.update(self._scan, completed=files, description="scanning")

    def begin(self, total: int) -> None:
        """Switch from scanning to the work bar."""
        if self._scan is not None:
            self._progress.update(self._scan, visible=False)
        self._work = self._progress.add_task("indexing", total=total)

    def advance(self, n: int) -> None:
        """Move the bar."""
        if self._work is not None:
            self._progress.advance(self._work, n)

    def stage(self, description: str, total: float | None = None) -> Callable[..., None]:
        """A new bar; returns ``update(completed, total=None, description=None)``."""
        task = self._progress.add_task(description, total=total)

        def update(
            completed: float, total: float | None = None, description: str | None = None
        ) -> None:
            self._progress.update(task, completed=completed, total=total, description=description)

        return update


def _updater(bar: BarProgress | None, description: str, total: float | None) -> Callable[..., None]:
    """``bar.stage(...)``, or a no-op when there is no bar."""
    if bar is None:
        return lambda *_args, **_kwargs: None
    return bar.stage(description, total)


@contextmanager
def _progress(enabled: bool) -> Iterator[BarProgress | None]:
    if not enabled:
        yield None
        return
    progress = Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=False,
    )
    with progress:
        yield BarProgress(progress)


# ------------------------------------------------------------------ commands


@cli.command()
@click.argument(
    "paths",
    nargs=-1,
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@click.option("--reembed", is_flag=True, help="Re-embed everything (after a model change).")
@click.option("--retry-failed", is_flag=True, help="Try failed files again even if unchanged.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.pass_obj
@_handle_errors
def index(
    obj: Context,
    paths: tuple[Path, ...],
    as_json: bool,
    reembed: bool,
    retry_failed: bool,
    no_progress: bool,
) -> None:
    """Index the photos under PATHS (folders); re-runs only cost time for changes."""
    from vitdex.indexer.embedder import Embedder
    from vitdex.indexer.pipeline import Indexer

    settings = obj.settings()
    sessions = _open_catalog(settings)
    embedder = Embedder.from_settings(settings.model)
    show = not no_progress and (err_console.is_terminal or not as_json)
    with _progress(show) as bar:
        indexer = Indexer(settings, sessions, embedder, progress=bar)
        report = indexer.run(list(paths), reembed=reembed, retry_failed=retry_failed)
    if as_json:
        _print_json(report.to_dict())
        return
    _print_report(report.to_dict(), embedder)


def _print_report(data: dict[str, Any], embedder: Any) -> None:
    parts = [
        f"scanned {data['scanned']}",
        f"embedded {data['embedded']}",
        f"unchanged {data['unchanged']}",
    ]
    for key in ("reused", "moved", "deleted", "repaired"):
        if data[key]:
            parts.append(f"{key} {data[key]}")
    parts.append(f"failed {data['failed']}")
    out_console.print(", ".join(parts) + f" in {data['elapsed']:.1f} s", highlight=False)
    if data["embedded"]:
        out_console.print(
            f"{data['images_per_s']:.1f} images/s on {embedder.device} ({embedder.precision});"
            " seconds per stage: " + ", ".join(f"{k} {v:.2f}" for k, v in data["timings"].items()),
            highlight=False,
        )
    for failure in data["failures"][:20]:
        out_console.print(f"  failed: {failure['path']}: {failure['error']}", highlight=False)
    if len(data["failures"]) > 20:
        out_console.print(f"  ... and {len(data['failures']) - 20} more (vitdex status)")


@cli.command()
@click.argument("images", nargs=-1, type=click.Path(path_type=Path))
@click.option("--id", "ids", type=int, multiple=True, help="Query by catalog image id.")
@click.option("-k", "k", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--space", help="Space to search (default: the first configured one).")
@click.option("--include-self", is_flag=True, help="Keep the query image in its own hits.")
@click.option("--library", "libraries", type=int, multiple=True, help="Only this library id.")
@click.option("--folder", help="Only photos below this folder.")
@click.option("--taken-after", type=click.DateTime(), help="Only photos taken at or after.")
@click.option("--taken-before", type=click.DateTime(), help="Only photos taken before.")
@click.option("--camera-make", help="Only photos from this camera make (EXIF).")
@click.option("--camera-model", help="Only photos from this camera model (EXIF).")
@click.option("--label", help="Only photos with this predicted label in their top 5.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.pass_obj
@_handle_errors
def similar(
    obj: Context,
    images: tuple[Path, ...],
    ids: tuple[int, ...],
    k: int,
    space: str | None,
    include_self: bool,
    libraries: tuple[int, ...],
    folder: str | None,
    taken_after: datetime | None,
    taken_before: datetime | None,
    camera_make: str | None,
    camera_model: str | None,
    label: str | None,
    as_json: bool,
) -> None:
    """List the indexed photos closest to each IMAGE (a file) or --id."""
    from vitdex.search.service import SearchService
    from vitdex.vectors.store import SearchFilter

    if not images and not ids:
        raise click.UsageError("give at least one IMAGE or --id")
    flt = SearchFilter(
        library_ids=libraries,
        path_prefix=str(Path(folder).expanduser().resolve()) if folder else None,
        taken_after=taken_after,
        taken_before=taken_before,
        camera_make=camera_make,
        camera_model=camera_model,
        label=label,
    )
    settings = obj.settings()
    service = SearchService(settings, _open_catalog(settings))
    results = service.similar(images, ids, k=k, space=space, include_self=include_self, filter=flt)
    if as_json:
        _print_json([r.to_dict() for r in results])
        return
    for result in results:
        table = Table(title=f"{result.query}  (space {result.space})", title_justify="left")
        table.add_column("#", justify="right")
        table.add_column("score", justify="right")
        table.add_column("id", justify="right")
        table.add_column("path", overflow="fold")
        table.add_column("label")
        for rank, hit in enumerate(result.hits, start=1):
            label = hit.labels[0][0] if hit.labels else ""
            table.add_row(str(rank), f"{hit.score:.4f}", str(hit.image_id), hit.path, label)
        out_console.print(table)


@cli.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False))
@click.option("-k", "k", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.pass_obj
@_handle_errors
def classify(obj: Context, images: tuple[Path, ...], k: int, as_json: bool) -> None:
    """Top-k labels of each IMAGE from the checkpoint's classifier."""
    from vitdex.search.service import SearchService

    settings = obj.settings()
    service = SearchService(settings, _open_catalog(settings))
    results = service.classify(images, k=k)
    if as_json:
        _print_json([r.to_dict() for r in results])
        return
    for result in results:
        out_console.print(f"[bold]{result.query}[/]", highlight=False)
        for label, score in result.labels:
            out_console.print(f"  {score:7.2%}  {label}", highlight=False)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.option(
    "--failed",
    "max_failed",
    type=int,
    default=50,
    show_default=True,
    help="How many failed files to list.",
)
@click.pass_obj
@_handle_errors
def status(obj: Context, as_json: bool, max_failed: int) -> None:
    """What is indexed: images, spaces and their vectors, failed files and why."""
    from vitdex.indexer.status import collect_status

    settings = obj.settings()
    data = collect_status(settings, _open_catalog(settings), max_failed=max_failed)
    if as_json:
        _print_json(data)
        return
    out_console.print(
        f"home {data['home']}\ncatalog {data['database']}\nmodel {data['model']}",
        highlight=False,
    )
    by = data["by_status"]
    out_console.print(
        f"images {data['images']}: {by['indexed']} indexed, {by['pending']} pending, "
        f"{data['failed']} failed ({by['missing']} missing files forgotten)",
        highlight=False,
    )
    table = Table(title="spaces", title_justify="left")
    columns = ("name", "vectors", "in store", "index", "RAM B/vec", "mapped B/vec", "dim", "model")
    for col in columns:
        table.add_column(col)

    def per_vector(value: Any) -> str:
        return f"{value:,.0f}" if isinstance(value, int | float) else "-"

    for sp in data["spaces"]:
        store = sp["store"]
        table.add_row(
            sp["name"],
            str(sp["vectors"]),
            str(sp["store_count"]),
            f"{store.get('backend', '?')} {store.get('index_type') or ''}".strip(),
            per_vector(store.get("memory_bytes_per_vector")),
            per_vector(store.get("mapped_bytes_per_vector")),
            str(sp["dim"]),
            f"{sp['model_id']} @ {sp['model_revision'][:12]}",
        )
    out_console.print(table)
    if data["libraries"]:
        out_console.print("libraries: " + ", ".join(lib["root"] for lib in data["libraries"]))
    if data["failures"]:
        out_console.print(f"failed files ({len(data['failures'])} most recent):")
        for item in data["failures"]:
            # One plain line per file, never cut, so it can be grepped.
            click.echo(f"  {item['path']}: {item['error'] or 'unknown error'}")


@cli.command()
@click.option("--repair", is_flag=True, help="Delete stray vectors, queue lost ones again.")
@click.option(
    "--wait",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="Seconds --repair waits for running writers (index, ...) before refusing.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.pass_obj
@_handle_errors
def doctor(obj: Context, repair: bool, wait: float, as_json: bool) -> None:
    """Check that the catalog and the vector stores agree (exit 1 when they do not)."""
    from vitdex.indexer.doctor import diagnose

    settings = obj.settings()
    report = diagnose(settings, _open_catalog(settings), repair=repair, wait=wait)
    if as_json:
        _print_json(report)
    else:
        for sp in report["spaces"]:
            state = "ok"
            if sp["strays"] or sp["missing"]:
                state = "repaired" if sp["repaired"] else "MISMATCH"
            click.echo(
                f"{sp['name']}: {sp['vectors_in_catalog']} in catalog, "
                f"{sp['vectors_in_store']} in store, {sp['strays']} stray, "
                f"{sp['missing']} missing: {state}"
            )
            if sp.get("advice"):
                click.echo(f"  {sp['advice']}")
        for name in report["configured_spaces_not_built"]:
            click.echo(f"{name}: configured but not built yet (run `vitdex index`)")
        click.echo("all good" if report["ok"] else "problems found (vitdex doctor --repair)")
    if not report["ok"]:
        sys.exit(1)


@cli.command()
@click.option("--space", "space_name", required=True, help="The space to rebuild.")
@click.option(
    "--index",
    "spec",
    required=True,
    help="flat | hnsw[:M=32,efConstruction=200,efSearch=128] | "
    "ivf[:nlist=N,nprobe=N,code=flat|sq8|pq,pq_m=M,rerank=R]",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.pass_obj
@_handle_errors
def reindex(obj: Context, space_name: str, spec: str, as_json: bool) -> None:
    """Rebuild a space's FAISS index as another type, from its stored vectors (no model)."""
    from vitdex.db import repo
    from vitdex.errors import ConfigError
    from vitdex.vectors.factory import open_store
    from vitdex.vectors.lease import writing

    settings = obj.settings()
    if settings.vectors.vector_backend != "faiss":
        raise ConfigError(
            "reindex builds FAISS indexes; Qdrant builds its own HNSW "
            "(tune it with VITDEX_QDRANT_HNSW_M, VITDEX_QDRANT_HNSW_EF_CONSTRUCT, "
            "VITDEX_QDRANT_QUANTIZATION)"
        )
    with _open_catalog(settings)() as session:
        space = repo.get_space(session, space_name)
    with writing(settings):  # a writer: no repair runs meanwhile
        store: Any = open_store(settings, space.name, space.dim, space.metric)
        with _progress(not as_json and err_console.is_terminal) as bar:
            update = _updater(bar, f"building {spec}", 1.0)
            result = store.reindex(
                spec, progress=lambda stage, fraction: update(fraction, description=stage)
            )
        described = store.describe()
        store.close()
    result["memory_bytes_per_vector"] = described.get("memory_bytes_per_vector")
    if as_json:
        _print_json(result)
        return
    click.echo(
        f"{space.name}: {result['index_type']} over {result['count']} vectors "
        f"in {result['build_seconds']:.1f} s"
        + (f" (not in use yet: {result['fallback']})" if result.get("fallback") else "")
    )


@cli.command("migrate-store")
@click.option("--to", "target", type=click.Choice(["faiss", "qdrant"]), required=True)
@click.option("--space", "space_names", multiple=True, help="Only these spaces.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.pass_obj
@_handle_errors
def migrate_store_cmd(
    obj: Context, target: str, space_names: tuple[str, ...], as_json: bool
) -> None:
    """Copy every stored vector to another backend, without re-embedding (resumable)."""
    import numpy as np

    from vitdex.db import repo
    from vitdex.errors import ConfigError
    from vitdex.vectors.factory import open_store
    from vitdex.vectors.lease import writing
    from vitdex.vectors.migrate import migrate_store

    settings = obj.settings()
    source_backend = settings.vectors.vector_backend
    if source_backend == target:
        raise ConfigError(
            f"the vectors are already on {target} (VITDEX_VECTOR_BACKEND={source_backend}); "
            "set VITDEX_VECTOR_BACKEND to the backend that holds them now"
        )
    sessions = _open_catalog(settings)
    results = []
    # A writer for its whole run: a repair meanwhile could change the source under it.
    with writing(settings), sessions() as session:
        spaces = [repo.get_space(session, n) for n in space_names] or repo.list_spaces(session)

        def payloads(ids: np.ndarray) -> list[dict[str, Any]]:
            return repo.payloads(session, [int(i) for i in ids])

        for space in spaces:
            src = open_store(settings, space.name, space.dim, space.metric)
            dst = open_store(settings, space.name, space.dim, space.metric, backend=target)
            with _progress(not as_json and err_console.is_terminal) as bar:
                update = _updater(bar, space.name, None)
                copied = migrate_store(src, dst, payloads=payloads, progress=update)
            dst.flush()
            results.append({"space": space.name, "copied": copied, "vectors": dst.count()})
            src.close()
            dst.close()
    if as_json:
        _print_json({"from": source_backend, "to": target, "spaces": results})
        return
    for row in results:
        click.echo(f"{row['space']}: {row['vectors']} vectors on {target} ({row['copied']} copied)")
    click.echo(f"now set VITDEX_VECTOR_BACKEND={target}")


@cli.group()
def db() -> None:
    """Catalog schema commands."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@click.pass_obj
@_handle_errors
def db_upgrade(obj: Context, revision: str) -> None:
    """Apply schema migrations to the catalog."""
    from vitdex.db.engine import current_revision, make_engine, upgrade

    settings = obj.settings()
    engine = make_engine(settings.storage.resolved_database_url)
    before = current_revision(engine)
    upgrade(engine, revision)
    after = current_revision(engine)
    click.echo(f"catalog schema: {before or 'empty'} -> {after}")


@cli.command()
@click.option(
    "--photos",
    type=int,
    default=24,
    show_default=True,
    help="How many photos to generate beside the shipped samples.",
)
@click.pass_obj
@_handle_errors
def demo(obj: Context, photos: int) -> None:
    """Index sample photos (offline) and show similar and classify results."""
    from vitdex.cli.demo import run_demo

    run_demo(obj.overrides, generated=photos, console=out_console)


def _register_commands() -> None:
    # These live beside the code they run; importing them pulls in neither torch nor FAISS.
    from vitdex.api.serve import serve_command
    from vitdex.cli.checkpoints import checkpoints_group, convert_command
    from vitdex.cli.dataset import dataset_group
    from vitdex.cli.train import train_group
    from vitdex.jobs.worker import worker_command

    cli.add_command(serve_command)
    cli.add_command(worker_command)
    cli.add_command(dataset_group)
    cli.add_command(train_group)
    cli.add_command(checkpoints_group)
    cli.add_command(convert_command)


_register_commands()


def main() -> None:
    """Entry point of the ``vitdex`` console script."""
    cli(prog_name="vitdex")


if __name__ == "__main__":
    main()
