"""``vitdex index``, ``similar``, ``classify``, ``status`` and ``doctor``: the photo catalog
and its search, thin wrappers over the indexer and the search service."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from vitdex.cli.common import (
    Context,
    handle_errors,
    open_catalog,
    print_index_report,
    print_json,
    print_line,
    print_table,
    progress_bar,
)

if TYPE_CHECKING:
    from vitdex.filters import SearchFilter
    from vitdex.search.results import LabelScore, QueryResult
    from vitdex.search.service import SearchService


@click.command()
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
@handle_errors
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

    settings = obj.settings
    sessions = open_catalog(settings)
    embedder = Embedder.from_settings(settings.model)
    with progress_bar(not no_progress) as bar:
        indexer = Indexer(settings, sessions, embedder, progress=bar)
        report = indexer.run(list(paths), reembed=reembed, retry_failed=retry_failed)
    if as_json:
        print_json(report.to_dict())
        return
    print_index_report(report.to_dict(), embedder)


def _check_head_labels(
    _ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> tuple[str, ...]:
    from vitdex.filters import split_head_label

    try:
        return tuple(":".join(split_head_label(v)) for v in values)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param=param) from None


#: ``--head-label HEAD:LABEL``: photos a head labelled so (repeatable: all of them).
head_label_option = click.option(
    "--head-label",
    "head_labels",
    multiple=True,
    callback=_check_head_labels,
    help="Only photos head HEAD labelled LABEL, as HEAD:LABEL (any case; repeatable).",
)


def filter_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The metadata filter options ``similar`` and ``searches save`` share."""
    options = [
        click.option(
            "--library", "libraries", type=int, multiple=True, help="Only this library id."
        ),
        click.option("--folder", help="Only photos below this folder."),
        click.option("--taken-after", type=click.DateTime(), help="Only photos taken at or after."),
        click.option("--taken-before", type=click.DateTime(), help="Only photos taken before."),
        click.option("--camera-make", help="Only photos from this camera make (EXIF; any case)."),
        click.option("--camera-model", help="Only photos from this camera model (EXIF; any case)."),
        click.option("--label", help="Only photos with this predicted label in their top 5."),
        click.option(
            "--tag",
            "tags",
            multiple=True,
            help="Only photos with this tag (repeatable: all of them).",
        ),
        click.option(
            "--hide-duplicates", is_flag=True, help="Leave out photos marked as duplicates."
        ),
        head_label_option,
    ]
    for option in reversed(options):
        command = option(command)
    return command


def build_filter(
    libraries: tuple[int, ...] = (),
    folder: str | None = None,
    taken_after: datetime | None = None,
    taken_before: datetime | None = None,
    camera_make: str | None = None,
    camera_model: str | None = None,
    label: str | None = None,
    tags: tuple[str, ...] = (),
    hide_duplicates: bool = False,
    head_labels: tuple[str, ...] = (),
) -> SearchFilter:
    """The :class:`SearchFilter` of :func:`filter_options`' values (a folder made absolute,
    as the catalog records paths)."""
    from vitdex.filters import SearchFilter

    if any(not t.strip() for t in tags):
        raise click.BadParameter("a tag cannot be empty", param_hint="--tag")
    return SearchFilter(
        library_ids=libraries,
        path_prefix=str(Path(folder).expanduser().resolve()) if folder else None,
        taken_after=taken_after,
        taken_before=taken_before,
        camera_make=camera_make,
        camera_model=camera_model,
        label=label,
        tags=tags,
        hide_duplicates=hide_duplicates,
        head_labels=head_labels,
    )


def split_examples(values: Sequence[str]) -> tuple[list[int], list[Path]]:
    """``--not`` values as catalog ids (all digits) and file paths (anything else; write
    ``./12`` for a file named 12)."""
    ids = [int(v) for v in values if v.isascii() and v.isdigit()]
    files = [Path(v) for v in values if not (v.isascii() and v.isdigit())]
    return ids, files


@click.command()
@click.argument("images", nargs=-1, type=click.Path(path_type=Path))
@click.option("--id", "ids", type=int, multiple=True, help="Query by catalog image id.")
@click.option(
    "--not",
    "negatives",
    multiple=True,
    metavar="ID_OR_FILE",
    help="A negative example (catalog id or file; repeatable): combines every example "
    "into one query.",
)
@click.option(
    "--together", is_flag=True, help="One query combining every example (no --not needed)."
)
@click.option(
    "--negative-weight",
    type=click.FloatRange(0, 10),
    default=0.5,
    show_default=True,
    help="How much negatives count: mean cos(positives) - w * mean cos(negatives).",
)
@click.option(
    "-k",
    "--k",
    "k",
    type=click.IntRange(min=1),
    default=None,
    help="Hits per query [default: 10; with --min-score, every hit above it].",
)
@click.option(
    "--min-score",
    type=float,
    help="Only hits scoring at least this (the score column: cosine for one example).",
)
@click.option("--space", help="Space to search (default: the first configured one).")
@click.option("--include-self", is_flag=True, help="Keep the query image in its own hits.")
@filter_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.pass_obj
@handle_errors
def similar(
    obj: Context,
    /,
    images: tuple[Path, ...],
    ids: tuple[int, ...],
    negatives: tuple[str, ...],
    together: bool,
    negative_weight: float,
    k: int | None,
    min_score: float | None,
    space: str | None,
    include_self: bool,
    as_json: bool,
    **filters: Any,
) -> None:
    """List the indexed photos closest to each IMAGE (a file) or --id.

    With --not (or --together) every example makes ONE query instead, scored
    mean cos(x, positives) - w * mean cos(x, negatives); the examples are left out of it.
    """
    from vitdex.search.service import SearchService

    if not images and not ids:
        raise click.UsageError("give at least one IMAGE or --id")
    flt = build_filter(**filters)
    negative_ids, negative_files = split_examples(negatives)
    settings = obj.settings
    service = SearchService(settings, open_catalog(settings))
    results = service.similar(
        images,
        ids,
        k=k if k is not None or min_score is not None else 10,
        space=space,
        include_self=include_self,
        filter=flt,
        min_score=min_score,
        negative_ids=negative_ids,
        negative_files=negative_files,
        combine=together,
        negative_weight=negative_weight,
    )
    print_results(service, results, flt, as_json=as_json, min_score=min_score)


def print_results(
    service: SearchService,
    results: Sequence[QueryResult],
    flt: SearchFilter,
    *,
    as_json: bool,
    min_score: float | None,
) -> None:
    """Each query's hits as a table (or JSON), with notes on stderr: a filter value no
    photo has, and hits above the cut-off that a page size left out."""
    if any(not r.hits for r in results):
        # An empty answer from a typo looks like "nothing similar": say which value missed.
        for miss in service.filter_misses(flt):
            click.secho("note: ", fg="yellow", bold=True, err=True, nl=False)
            click.echo(miss.message, err=True)
    if min_score is not None:
        for result in results:
            if result.next_offset is not None:
                click.secho("note: ", fg="yellow", bold=True, err=True, nl=False)
                click.echo(
                    f"{result.query}: more hits score at least {min_score:g} than the "
                    f"{len(result.hits)} shown (raise --k, or leave it out for all)",
                    err=True,
                )
    if as_json:
        print_json([r.to_dict() for r in results])
        return
    for result in results:
        rows = [
            (str(rank), f"{hit.score:.4f}", str(hit.image_id), hit.path, _top_label(hit.labels))
            for rank, hit in enumerate(result.hits, start=1)
        ]
        print_table(
            f"{result.query}  (space {result.space})",
            ("#", "score", "id", "path", "label"),
            rows,
            fold={"path"},
            right={"#", "score", "id"},
        )


def _top_label(labels: Sequence[LabelScore]) -> str:
    """The most likely label of a hit, or nothing for an image without labels."""
    return labels[0].label if labels else ""


@click.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False))
@click.option("-k", "k", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.pass_obj
@handle_errors
def classify(obj: Context, images: tuple[Path, ...], k: int, as_json: bool) -> None:
    """Top-k labels of each IMAGE from the checkpoint's classifier.

    A file that is missing or not an image is named on stderr with its reason (and listed
    with an "error" in --json) while the others are classified: exit 0 when at least one
    was, else that error's code (2).
    """
    from vitdex.search.service import ClassifyFailure, SearchService

    settings = obj.settings
    service = SearchService(settings, open_catalog(settings))
    results = service.classify_each(images, k=k)
    failures = [r for r in results if isinstance(r, ClassifyFailure)]
    if as_json:
        print_json([r.to_dict() for r in results])
    for result in results:
        if isinstance(result, ClassifyFailure):
            click.secho("error: ", fg="red", bold=True, err=True, nl=False)
            click.echo(f"{result.query}: {result.error.message}", err=True)
        elif not as_json:
            print_line(result.query, style="bold")
            for item in result.labels:
                print_line(f"  {item.score:7.2%}  {item.label}")
    if len(failures) == len(results):
        sys.exit(failures[0].error.exit_code)


def _configured_line(configured: dict[str, Any]) -> str:
    """The configured layer specs and what each resolved to on this model, e.g.
    ``spaces cls (final layer), cls@2/3 -> cls@8 (layer 8 of 12)``."""
    depth = configured.get("num_layers")
    shown = []
    for item in configured["spaces"]:
        if item["space"] is None:
            shown.append(f"{item['spec']} (unresolved: {item['error']})")
            continue
        name = (
            item["space"] if item["space"] == item["spec"] else f"{item['spec']} -> {item['space']}"
        )
        where = "final layer" if item["layer"] is None else f"layer {item['layer']}"
        if item["layer"] is not None and depth:
            where += f" of {depth}"
        shown.append(f"{name} ({where})")
    return "spaces " + ", ".join(shown)


@click.command()
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
@handle_errors
def status(obj: Context, as_json: bool, max_failed: int) -> None:
    """What is indexed: images, spaces and their vectors, failed files and why."""
    from vitdex.indexer.status import collect_status

    settings = obj.settings
    data = collect_status(settings, open_catalog(settings), max_failed=max_failed)
    if as_json:
        print_json(data)
        return
    print_line(f"home {data['home']}")
    print_line(f"catalog {data['database']}")
    print_line(f"model {data['model']}")
    print_line(f"runtime {data['runtime']}, precision {data['precision']}")
    print_line(_configured_line(data["configured"]))
    by = data["by_status"]
    print_line(
        f"images {data['images']}: {by['indexed']} indexed, {by['pending']} pending, "
        f"{data['failed']} failed ({by['missing']} missing files forgotten)"
    )
    columns = (
        "name",
        "vectors",
        "in store",
        "index",
        "RAM B/vec",
        "mapped B/vec",
        "dim",
        "filled by",
        "model",
    )

    def per_vector(value: Any) -> str:
        return f"{value:,.0f}" if isinstance(value, int | float) else "-"

    rows = []
    for sp in data["spaces"]:
        store = sp["store"]
        rows.append(
            (
                sp["name"],
                str(sp["vectors"]),
                str(sp["store_count"]),
                f"{store.get('backend', '?')} {store.get('index_type') or ''}".strip(),
                per_vector(store.get("memory_bytes_per_vector")),
                per_vector(store.get("mapped_bytes_per_vector")),
                str(sp["dim"]),
                # The runtime that first wrote the space, and the agreement with torch
                # fp32 every later writer must reach.
                f"{sp['runtime'] or 'torch'} (>= {sp['min_agreement'] or 0.999:g})",
                f"{sp['model_id']} @ {sp['model_revision'][:12]}",
            )
        )
    print_table("spaces", columns, rows)
    if data["libraries"]:
        print_line("libraries: " + ", ".join(lib["root"] for lib in data["libraries"]))
    if data["failures"]:
        print_line(f"failed files ({len(data['failures'])} most recent):")
        for item in data["failures"]:
            # One plain line per file, never cut, so it can be grepped.
            click.echo(f"  {item['path']}: {item['error'] or 'unknown error'}")


@click.command()
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
@handle_errors
def doctor(obj: Context, repair: bool, wait: float, as_json: bool) -> None:
    """Check that the catalog and the vector stores agree (exit 1 when they do not)."""
    from vitdex.indexer.doctor import diagnose

    settings = obj.settings
    report = diagnose(settings, open_catalog(settings), repair=repair, wait=wait)
    if as_json:
        print_json(report)
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
