"""``vitdex dataset ...``: curate DreamBooth instance sets from search results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from vitdex.cli.catalog import head_label_option
from vitdex.cli.common import (
    IMAGE_ID,
    Context,
    err_console,
    handle_errors,
    open_catalog,
    out_console,
    print_json,
    print_table,
    progress_bar,
    stage_updater,
)

_ROLES = click.Choice(["instance", "class"])
# Spelled out here: the CLI module stays light to import (no numpy, no faiss).
_SAMPLERS = click.Choice(["nearest", "diverse", "representative"])


@click.group("dataset")
def dataset_group() -> None:
    """Curate, audit, edit and export DreamBooth datasets."""


def _score(value: float | None) -> str:
    return "seed" if value is None else f"{value:.4f}"


def _cluster_notes(dataset: dict[str, Any]) -> dict[int, str]:
    """What the representative sampler made of each candidate: its cluster (and size)."""
    notes: dict[int, str] = {}
    for number, cluster in enumerate(dataset["params"].get("clusters") or []):
        for member in cluster.get("members", []):
            notes[member] = f" (cluster {number}, #{cluster['image_id']})"
        notes[cluster["image_id"]] = f" of cluster {number} ({cluster['size']} photos)"
    return notes


def _print_items(
    items: list[dict[str, Any]], title: str, notes: dict[int, str] | None = None
) -> None:
    notes = notes or {}
    rows = []
    for item in items:
        reason = item["reason"]
        if item["duplicate_of"] is not None:
            reason += f" of {item['duplicate_of']}"
        elif item["role"] == "instance" and item["reason"] in ("representative", "not_sampled"):
            reason += notes.get(item["image_id"], "")
        rows.append(
            (
                item["role"],
                str(item["rank"]),
                _score(item["score"]),
                str(item["image_id"]),
                "yes" if item["included"] else "-",
                reason,
                item["path"],
            )
        )
    print_table(
        title,
        ("role", "#", "score", "id", "in", "reason", "path"),
        rows,
        fold={"path"},
        right={"#", "score", "id"},
    )


def _print_summary(dataset: dict[str, Any]) -> None:
    counts = dataset["counts"]
    out_console.print(
        f"dataset {dataset['id']} {dataset['name']!r}: {counts['instance']} instance, "
        f"{counts['class']} class images ({counts['excluded']} candidates left out); "
        f"space {dataset['space']}",
        highlight=False,
    )
    click.echo(f"  prompt: {dataset['prompt']}")
    if dataset["class_prompt"]:
        click.echo(f"  class prompt: {dataset['class_prompt']}")
    words = [
        f"{k} word: {dataset[k + '_word']}" for k in ("trigger", "class") if dataset[k + "_word"]
    ]
    click.echo("  " + "; ".join([*words, f"crop mode: {dataset['crop_mode']}"]))
    params = dataset["params"]
    picked = [f"{params.get('sampler') or 'nearest'} sampler"]
    if params.get("min_distance") is not None:
        picked.append(f"min distance {params['min_distance']:g}")
    if params.get("tags"):
        picked.append("tags " + ", ".join(params["tags"]))
    if params.get("hide_duplicates"):
        picked.append("duplicates hidden")
    if params.get("head_labels"):
        picked.append("head labels " + ", ".join(params["head_labels"]))
    click.echo(f"  curated by: {'; '.join(picked)}")
    if dataset["export_path"]:
        click.echo(f"  exported to: {dataset['export_path']}")


@dataset_group.command("create")
@click.argument("name")
@click.argument("more_seeds", nargs=-1, metavar="[SEED]...")
@click.option(
    "--seed",
    "seeds",
    multiple=True,
    metavar="IMAGE_OR_ID",
    help="A seed photo of the subject: an image file or a catalog image id (repeatable; "
    "further seeds may follow as arguments).",
)
@click.option(
    "-k",
    "--k",
    "k",
    type=click.IntRange(1, 10_000),
    default=40,
    show_default=True,
    help="Nearest neighbours considered as instance candidates.",
)
@click.option(
    "--min-score",
    type=click.FloatRange(-1.0, 1.0),
    help="Leave out candidates less similar than this (cosine to the closest seed).",
)
@click.option(
    "--dedup",
    type=click.FloatRange(0.0, 1.0, min_open=True),
    default=0.95,
    show_default=True,
    help="Cosine at or above which a candidate is a near-duplicate.",
)
@click.option("--no-dedup", is_flag=True, help="Keep near-duplicates.")
@click.option(
    "--min-distance",
    type=click.FloatRange(0.0, 1.0, max_open=True),
    metavar="D",
    help="No two photos closer than this cosine distance (1 - cosine): --dedup as a "
    "distance (--min-distance 0.05 is --dedup 0.95).",
)
@click.option(
    "--sampler",
    type=_SAMPLERS,
    default="nearest",
    show_default=True,
    help="How --max photos are picked: nearest (best scores, or --mmr), diverse "
    "(farthest-point: each pick the least like those so far) or representative (one "
    "photo per k-means cluster). diverse and representative need --max.",
)
@click.option(
    "--tag",
    "tags",
    multiple=True,
    metavar="TAG",
    help="Only photos with this tag become instance candidates (repeatable: all of them).",
)
@click.option(
    "--hide-duplicates",
    is_flag=True,
    help="Leave out photos marked as duplicates in review (instance and class images).",
)
@head_label_option
@click.option(
    "--max",
    "max_items",
    type=click.IntRange(min=1),
    help="At most N instance images, seeds included.",
)
@click.option(
    "--mmr",
    type=click.FloatRange(0.0, 1.0),
    metavar="LAMBDA",
    help="Pick by maximal marginal relevance (1 = by score, lower = more diverse); "
    "matters with --max.",
)
@click.option("--space", help="Space to search (default: the first configured one).")
@click.option(
    "--prompt",
    help='Instance caption, e.g. "a photo of sks dog" [default with --trigger-word: '
    '"a photo of TRIGGER CLASS"].',
)
@click.option(
    "--class-prompt",
    help='Class caption, e.g. "a photo of a dog"; enables class images [default with '
    '--class-word: "a photo of a CLASS"].',
)
@click.option("--trigger-word", help='The subject\'s rare token, e.g. "sks".')
@click.option("--class-word", help='The subject\'s class, e.g. "dog".')
@click.option(
    "--crop-mode",
    type=click.Choice(["square", "buckets"]),
    default="square",
    show_default=True,
    help="How the export cuts photos: the subject's square, or aspect-ratio buckets.",
)
@click.option(
    "--class-count",
    type=click.IntRange(0, 10_000),
    help="Class images to draw from the index [default: 100 with --class-prompt].",
)
@click.option("--class-label", help="Only draw class images with this predicted label.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.pass_obj
@handle_errors
def create(
    obj: Context,
    name: str,
    more_seeds: tuple[str, ...],
    seeds: tuple[str, ...],
    k: int,
    min_score: float | None,
    dedup: float,
    no_dedup: bool,
    min_distance: float | None,
    sampler: str,
    tags: tuple[str, ...],
    hide_duplicates: bool,
    head_labels: tuple[str, ...],
    max_items: int | None,
    mmr: float | None,
    space: str | None,
    prompt: str | None,
    class_prompt: str | None,
    trigger_word: str | None,
    class_word: str | None,
    crop_mode: str,
    class_count: int | None,
    class_label: str | None,
    as_json: bool,
) -> None:
    """Curate dataset NAME from the neighbours of the seed photos.

    Every candidate is kept with the reason it is in or out; see `vitdex dataset show`.
    """
    from vitdex.training.curate import CurateOptions, create_dataset, parse_seed

    raw = [*seeds, *more_seeds]
    if not raw:
        raise click.UsageError("give at least one --seed (an image file or a catalog id)")
    ctx = click.get_current_context()
    dedup_given = ctx.get_parameter_source("dedup") not in (ParameterSource.DEFAULT, None)
    if min_distance is not None and dedup_given and abs(dedup - (1.0 - min_distance)) > 1e-9:
        # The options cannot tell a typed 0.95 from the default; the command line can.
        raise click.UsageError(
            f"--dedup {dedup} and --min-distance {min_distance} contradict each other "
            "(--dedup is 1 - --min-distance): give one of them"
        )
    options = CurateOptions(
        k=k,
        min_score=min_score,
        dedup=None if no_dedup else dedup,
        min_distance=min_distance,
        max_items=max_items,
        mmr=mmr,
        sampler=sampler,
        space=space,
        class_count=class_count,
        class_label=class_label,
        tags=tags,
        hide_duplicates=hide_duplicates,
        head_labels=head_labels,
    )
    settings = obj.settings
    result = create_dataset(
        settings,
        open_catalog(settings),
        name,
        [parse_seed(s) for s in raw],
        prompt=prompt,
        class_prompt=class_prompt,
        options=options,
        trigger_word=trigger_word,
        class_word=class_word,
        crop_mode=crop_mode,
    )
    if as_json:
        print_json(result)
        return
    dataset = result["dataset"]
    _print_items(result["items"], f"dataset {dataset['name']}", _cluster_notes(dataset))
    _print_summary(dataset)


@dataset_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.pass_obj
@handle_errors
def list_cmd(obj: Context, as_json: bool) -> None:
    """List datasets, newest first."""
    from vitdex.training.curate import list_datasets

    settings = obj.settings
    result = list_datasets(open_catalog(settings), limit=10_000)
    if as_json:
        print_json(result)
        return
    if not result["datasets"]:
        click.echo("no datasets yet (vitdex dataset create NAME --seed ... --prompt ...)")
        return
    columns = ("id", "name", "instance", "class", "left out", "prompt", "exported to")
    rows = [
        (
            str(ds["id"]),
            ds["name"],
            str(ds["counts"]["instance"]),
            str(ds["counts"]["class"]),
            str(ds["counts"]["excluded"]),
            ds["prompt"],
            ds["export_path"] or "",
        )
        for ds in result["datasets"]
    ]
    print_table("datasets", columns, rows, fold=set(columns))


@dataset_group.command("show")
@click.argument("dataset")
@click.option("--role", type=_ROLES, help="Only instance or only class items.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.pass_obj
@handle_errors
def show(obj: Context, dataset: str, role: str | None, as_json: bool) -> None:
    """Show DATASET (a name or an id): every candidate, in or out, and why."""
    from vitdex.training.curate import show_dataset

    settings = obj.settings
    result = show_dataset(open_catalog(settings), dataset, role=role)
    if as_json:
        print_json(result)
        return
    notes = _cluster_notes(result["dataset"])
    _print_items(result["items"], f"dataset {result['dataset']['name']}", notes)
    _print_summary(result["dataset"])


def _print_changed(result: dict[str, Any], verb: str) -> None:
    for item in result["changed"]:
        click.echo(f"{verb} {item['role']} image {item['image_id']}: {item['path']}")
    _print_summary(result["dataset"])


@dataset_group.command("include")
@click.argument("dataset")
@click.argument("image_ids", nargs=-1, required=True, type=IMAGE_ID)
@click.option(
    "--role",
    type=_ROLES,
    default="instance",
    show_default=True,
    help="Role of images that are not candidates yet.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.pass_obj
@handle_errors
def include(
    obj: Context, dataset: str, image_ids: tuple[int, ...], role: str, as_json: bool
) -> None:
    """Include IMAGE_IDS in DATASET by hand (any catalog image may be added)."""
    from vitdex.training.curate import include_images

    settings = obj.settings
    result = include_images(open_catalog(settings), dataset, list(image_ids), role=role)
    if as_json:
        print_json(result)
        return
    _print_changed(result, "included")


@dataset_group.command("exclude")
@click.argument("dataset")
@click.argument("image_ids", nargs=-1, required=True, type=IMAGE_ID)
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.pass_obj
@handle_errors
def exclude(obj: Context, dataset: str, image_ids: tuple[int, ...], as_json: bool) -> None:
    """Exclude candidates IMAGE_IDS from DATASET by hand."""
    from vitdex.training.curate import exclude_images

    settings = obj.settings
    result = exclude_images(open_catalog(settings), dataset, list(image_ids))
    if as_json:
        print_json(result)
        return
    _print_changed(result, "excluded")


@dataset_group.command("export")
@click.argument("dataset")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder to write [default: VITDEX_HOME/datasets/ID-NAME].",
)
@click.option(
    "--resolution",
    type=click.IntRange(32, 4096),
    default=512,
    show_default=True,
    help="Side of the square images (the base model's resolution).",
)
@click.option(
    "--repeats",
    type=click.IntRange(1, 10_000),
    help="kohya num_repeats of the instance images [default: class/instance ratio].",
)
@click.option("--class-repeats", type=click.IntRange(1, 10_000), default=1, show_default=True)
@click.option("--no-faces", is_flag=True, help="Do not look for faces (saliency or centre crops).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.pass_obj
@handle_errors
def export(
    obj: Context,
    dataset: str,
    out: Path | None,
    resolution: int,
    repeats: int | None,
    class_repeats: int,
    no_faces: bool,
    no_progress: bool,
    as_json: bool,
) -> None:
    """Write DATASET as square crops with caption files and a kohya dataset.toml."""
    from vitdex.training.export import export_dataset

    settings = obj.settings
    sessions = open_catalog(settings)
    show = not no_progress and (err_console.is_terminal or not as_json)
    with progress_bar(show) as bar:
        update = stage_updater(bar, "exporting", None)
        result = export_dataset(
            settings,
            sessions,
            dataset,
            out,
            resolution=resolution,
            num_repeats=repeats,
            class_repeats=class_repeats,
            detect_faces=not no_faces,
            progress=lambda done, total: update(done, total=total),
        )
    if as_json:
        print_json(result.to_dict())
        return
    for skipped in result.skipped:
        click.echo(f"  skipped image {skipped['image_id']}: {skipped['path']}: {skipped['error']}")
    methods = ", ".join(f"{n} {method}" for method, n in sorted(result.methods.items()))
    click.echo(
        f"{result.instance} instance and {result.class_images} class images at "
        f"{result.resolution} px in {result.path} (crops: {methods or 'none'})"
    )
    click.echo(f"kohya config: {result.toml}")
    if result.kohya:
        click.echo(result.kohya["note"])


@dataset_group.command("delete")
@click.argument("dataset")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.pass_obj
@handle_errors
def delete(obj: Context, dataset: str, as_json: bool) -> None:
    """Delete DATASET and its items (the photos and any exported files stay)."""
    from vitdex.training.curate import delete_dataset

    settings = obj.settings
    result = delete_dataset(open_catalog(settings), dataset)
    if as_json:
        print_json(result)
        return
    click.echo(f"deleted dataset {result['id']} {result['name']!r}")


# The caption and settings commands live apart to keep this module small.
from vitdex.cli.dataset_edit import caption_cmd, captions_group, set_cmd  # noqa: E402

dataset_group.add_command(set_cmd)
dataset_group.add_command(caption_cmd)
dataset_group.add_command(captions_group)
